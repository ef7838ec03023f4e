"""What the playground keeps: saved side-by-side comparisons and the team's prompt presets.

A comparison is private to its author (and the team's owners and admins) until an admin shares it with
named members (``accounts.services.share_object``) or its author opens it to the whole team
(``restricted=False``). It keeps each column's settings, its JSON schema and tools included. A prompt preset
is a system prompt with sampling settings that every member of the team can apply to a playground column: a
way to customize a model without training it.

Each service is a plain function taking keyword arguments, running in one transaction and writing one
audit event. Bad input raises ``ValidationError`` keyed by the field to fix.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from guardian.shortcuts import assign_perm
from jsonschema import Draft202012Validator, SchemaError

from accounts import audit
from accounts.permissions import TeamAccess, require_object_action, visible_objects
from accounts.roles import Perm
from serving_app.inference import ENGINE_LABELS, Sampling
from serving_app.models import Comparison, PromptPreset

MIN_COLUMNS, MAX_COLUMNS = 2, 4
MAX_SYSTEM_PROMPT = 8000
MAX_JSON_SETTING = 20_000  # characters of a column's JSON schema or tools
# OpenAI's rule for a function's name; vLLM's tool parsers expect the same.
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
JSON_SCHEMA_EXAMPLE = '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}'
TOOL_EXAMPLE = '{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", …}}}'
# A saved comparison is read back whole on its page: keep it to a size a page can show.
MAX_SAVED_BYTES = 1_000_000
AUTHOR_ACTIONS = ("view", "change", "delete")


@dataclass(frozen=True)
class ColumnSettings:
    """One column's system prompt and sampling settings, checked: what a preset or a saved column holds.

    ``json_schema`` and ``tools`` are JSON text as typed ("" when unused): a schema the answer must match,
    and a list of OpenAI function declarations the model may call. A preset keeps neither.
    """

    system_prompt: str = ""
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    json_schema: str = ""
    tools: str = ""

    @classmethod
    def clean(
        cls,
        *,
        system_prompt: Any = "",
        temperature: Any = 0.7,
        top_p: Any = 1.0,
        max_tokens: Any = 256,
        seed: Any = None,
        json_schema: Any = "",
        tools: Any = "",
    ) -> ColumnSettings:
        """Check values as they come from a form or the playground; ``max_tokens`` is capped at the studio's limit.

        Raises ``ValidationError`` keyed by the setting to fix; each message names its field.
        """
        errors: dict[str, str] = {}
        schema_text, tools_text = str(json_schema or "").strip(), str(tools or "").strip()
        for field, text, check in (("json_schema", schema_text, parse_json_schema), ("tools", tools_text, parse_tools)):
            try:
                check(text)
            except ValidationError as error:
                errors[field] = " ".join(error.messages)
        system = str(system_prompt or "").strip()
        if len(system) > MAX_SYSTEM_PROMPT:
            errors["system_prompt"] = (
                f"Keep the system prompt under {MAX_SYSTEM_PROMPT} characters (it has {len(system)})."
            )
        temperature_value = _number(temperature)
        if temperature_value is None or not 0 <= temperature_value <= 2:
            errors["temperature"] = "Temperature is a number from 0 (always the likeliest word) to 2."
        top_p_value = _number(top_p)
        if top_p_value is None or not 0 < top_p_value <= 1:
            errors["top_p"] = "Top-p is a number above 0 and at most 1."
        tokens = _number(max_tokens)
        if tokens is None or tokens < 1 or tokens != int(tokens):
            errors["max_tokens"] = "Max tokens is a whole number of at least 1."
        seed_value = _number(seed) if seed not in (None, "") else None
        if seed not in (None, "") and (seed_value is None or seed_value != int(seed_value) or seed_value < 0):
            errors["seed"] = (
                "The seed is a whole number of 0 or more (leave it empty for a different answer each time)."
            )
        if errors:
            raise ValidationError(errors)
        assert temperature_value is not None and top_p_value is not None and tokens is not None
        return cls(
            system_prompt=system,
            temperature=temperature_value,
            top_p=top_p_value,
            max_tokens=min(int(tokens), settings.PLAYGROUND_MAX_TOKENS),
            seed=int(seed_value) if seed_value is not None else None,
            json_schema=schema_text,
            tools=tools_text,
        )

    @classmethod
    def of_preset(cls, preset: PromptPreset) -> ColumnSettings:
        return cls(
            system_prompt=preset.system_prompt,
            temperature=preset.temperature,
            top_p=preset.top_p,
            max_tokens=min(preset.max_tokens, settings.PLAYGROUND_MAX_TOKENS),
        )

    def sampling(self) -> Sampling:
        return Sampling(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            json_schema=parse_json_schema(self.json_schema),
            tools=tuple(parse_tools(self.tools)),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_json_schema(text: str) -> dict[str, Any] | None:
    """The JSON schema typed in a column's "JSON schema" field (None when empty).

    Raises ``ValidationError`` whose message names the field, says what is wrong and how to fix it.
    """
    if not text.strip():
        return None
    schema = _json_value("JSON schema", text)
    if not isinstance(schema, dict):
        raise ValidationError(f"JSON schema: write one JSON object, e.g. {JSON_SCHEMA_EXAMPLE}.")
    _check_schema("JSON schema: this is", schema)
    return schema


def parse_tools(text: str) -> list[dict[str, Any]]:
    """The tools typed in a column's "Tools" field, in OpenAI's shape ([] when empty).

    A declaration is ``{"type": "function", "function": {"name", "description", "parameters"}}``, or the
    ``function`` part alone. Raises ``ValidationError`` whose message names the field and the tool at fault.
    """
    if not text.strip():
        return []
    value = _json_value("Tools", text)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValidationError(f"Tools: write a JSON list of function declarations, e.g. [{TOOL_EXAMPLE}].")
    tools: list[dict[str, Any]] = []
    for number, item in enumerate(value, start=1):
        function = item.get("function", item) if isinstance(item, dict) else None
        if not isinstance(function, dict) or (isinstance(item, dict) and item.get("type", "function") != "function"):
            raise ValidationError(f"Tools: tool {number} is not a function declaration; write it as {TOOL_EXAMPLE}.")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise ValidationError(
                f"Tools: tool {number} needs a name of 1 to 64 letters, digits, _ or - (it has {json.dumps(name)})."
            )
        if any(tool["function"]["name"] == name for tool in tools):
            raise ValidationError(f"Tools: “{name}” is declared twice; give each tool its own name.")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ValidationError(f"Tools: the parameters of “{name}” must be a JSON schema object.")
        _check_schema(f"Tools: the parameters of “{name}” are", parameters)
        tools.append({"type": "function", "function": {**function, "parameters": parameters}})
    return tools


def _json_value(field: str, text: str) -> Any:
    if len(text) > MAX_JSON_SETTING:
        raise ValidationError(f"{field}: keep it under {MAX_JSON_SETTING} characters (it has {len(text)}).")
    try:
        return json.loads(text)
    except ValueError as error:
        detail = getattr(error, "msg", str(error))
        where = f" at line {error.lineno}, column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        raise ValidationError(
            f"{field}: this is not valid JSON ({detail}{where}). Check the quotes and commas, or leave it empty."
        ) from None


def _check_schema(what: str, schema: dict[str, Any]) -> None:
    """``what`` starts the message: "JSON schema: this is", "Tools: the parameters of “f” are"."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        raise ValidationError(f"{what} not a valid JSON schema ({str(error.message)[:200]}).") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --- saved comparisons --------------------------------------------------------------------------


def visible_comparisons(access: TeamAccess) -> QuerySet[Comparison]:
    """The team's saved comparisons ``access`` may open: their own, the shared ones and those open to the team."""
    return visible_objects(access, Comparison.objects.for_team(access.team), "view").select_related("created_by")


def save_comparison(
    *,
    access: TeamAccess,
    title: str,
    columns: list[dict[str, Any]],
    turns: list[dict[str, Any]],
    restricted: bool = True,
    ip: str | None = None,
) -> Comparison:
    """Keep a playground session: its columns (model key, label, settings) and every turn with its figures.

    The caller has resolved the columns' model keys for ``access`` (labels come from the catalogue, not
    the client). The author gets view, change and delete on it.
    """
    access.require(Perm.USE_PLAYGROUND)
    title = title.strip()
    if not title:
        raise ValidationError({"title": "Give the comparison a title, e.g. “support tone: v3 vs base”."})
    if len(title) > 120:
        raise ValidationError({"title": f"Keep the title under 120 characters (it has {len(title)})."})
    if not MIN_COLUMNS <= len(columns) <= MAX_COLUMNS:
        raise ValidationError({"columns": f"A comparison has {MIN_COLUMNS} to {MAX_COLUMNS} models."})
    if not turns:
        raise ValidationError({"turns": "Nothing to save yet: send a prompt first."})
    size = len(json.dumps([columns, turns]).encode())
    if size > MAX_SAVED_BYTES:
        too_long = f"This conversation is too long to save ({size // 1000} KB, at most {MAX_SAVED_BYTES // 1000} KB)"
        raise ValidationError({"turns": f"{too_long}: clear it and save a shorter one."})
    now = timezone.now()
    with transaction.atomic():
        comparison = Comparison.objects.create(
            team=access.team,
            title=title,
            columns=columns,
            turns=turns,
            restricted=restricted,
            created_by=access.user,
            created_at=now,
            updated_at=now,
        )
        if access.user is not None:
            for action in AUTHOR_ACTIONS:
                assign_perm(f"{action}_comparison", access.user, comparison)
        audit.record(
            "comparison.saved",
            access=access,
            target=comparison,
            ip=ip,
            models=[column.get("label", "") for column in columns],
            turns=len(turns),
            restricted=restricted,
        )
    return comparison


def set_comparison_restricted(
    *, access: TeamAccess, comparison: Comparison, restricted: bool, ip: str | None = None
) -> Comparison:
    """Open a comparison to the whole team (``restricted=False``) or make it private again: its author or an admin."""
    require_object_action(access, comparison, "view")
    if not can_change_visibility(access, comparison):
        raise PermissionDenied("Only its author or a team admin can change who may open this comparison.")
    if comparison.restricted == restricted:
        return comparison
    with transaction.atomic():
        Comparison.objects.for_team(access.team).filter(pk=comparison.pk).update(
            restricted=restricted, updated_at=timezone.now()
        )
        audit.record("comparison.updated", access=access, target=comparison, ip=ip, restricted=restricted)
    comparison.refresh_from_db()
    return comparison


def can_change_visibility(access: TeamAccess, comparison: Comparison) -> bool:
    """Whether ``access`` may open ``comparison`` to the team or make it private (its author, or an admin)."""
    if not access.can(Perm.USE_PLAYGROUND):
        return False
    return access.is_admin or (access.user is not None and comparison.created_by_id == access.user.pk)


def delete_comparison(*, access: TeamAccess, comparison: Comparison, ip: str | None = None) -> None:
    """Delete a saved comparison (its author or an admin); an audit event remains."""
    require_object_action(access, comparison, "delete")
    with transaction.atomic():
        audit.record("comparison.deleted", access=access, target=comparison, ip=ip, title=comparison.title)
        Comparison.objects.for_team(access.team).filter(pk=comparison.pk).delete()


def figures_line(answer: dict[str, Any], *, streaming: bool = False) -> str:
    """An answer's figures in one line: "TTFT 0.12 s · 185 tok/s · 64 tokens · served by vLLM".

    ``streaming``: the answer is still arriving ("12 tokens so far").
    """
    if answer.get("error"):
        return f"**No answer:** {answer['error']}"
    ttft, rate, tokens = answer.get("ttft_s"), answer.get("tokens_per_second"), answer.get("tokens") or 0
    parts = [
        f"TTFT {ttft:.2f} s" if isinstance(ttft, int | float) else "TTFT –",
        f"{rate:.0f} tok/s" if isinstance(rate, int | float) else "– tok/s",
        f"{tokens} token{'s' if tokens != 1 else ''}{' so far' if streaming else ''}",
    ]
    if answer.get("finish_reason") == "length":
        parts.append("stopped at max tokens")
    calls = len(answer.get("tool_calls") or [])
    if calls:
        parts.append(f"{calls} tool call{'s' if calls != 1 else ''}")
    if answer.get("engine") in ENGINE_LABELS:
        parts.append(ENGINE_LABELS[answer["engine"]])
    return " · ".join(parts)


# --- prompt presets -----------------------------------------------------------------------------


def team_presets(access: TeamAccess) -> QuerySet[PromptPreset]:
    """The team's prompt presets (every member sees all of them), by name."""
    return PromptPreset.objects.for_team(access.team).select_related("created_by").order_by("name")


def create_preset(*, access: TeamAccess, name: str, column: ColumnSettings, ip: str | None = None) -> PromptPreset:
    """Save a system prompt with sampling settings under a name unique in the team (the seed is not kept)."""
    access.require(Perm.USE_PLAYGROUND)
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Name the preset after what it does, e.g. “terse support agent”."})
    if len(name) > 80:
        raise ValidationError({"name": f"Keep the name under 80 characters (it has {len(name)})."})
    try:
        with transaction.atomic():
            preset = PromptPreset.objects.create(
                team=access.team,
                name=name,
                system_prompt=column.system_prompt,
                temperature=column.temperature,
                top_p=column.top_p,
                max_tokens=column.max_tokens,
                created_by=access.user,
            )
            audit.record("preset.created", access=access, target=preset, ip=ip, name=name)
    except IntegrityError as error:
        raise ValidationError({"name": f"The team already has a preset named “{name}”; pick another name."}) from error
    return preset


def delete_preset(*, access: TeamAccess, preset: PromptPreset, ip: str | None = None) -> None:
    """Delete a preset: the member who made it, or an owner or admin."""
    access.require(Perm.USE_PLAYGROUND)
    if preset.team_id != access.team.pk:
        raise ValidationError({"preset": "That preset does not belong to this team."})
    if not can_delete_preset(access, preset):
        raise PermissionDenied("Only the member who saved this preset, or a team admin, can delete it.")
    with transaction.atomic():
        audit.record("preset.deleted", access=access, target=preset, ip=ip, name=preset.name)
        PromptPreset.objects.for_team(access.team).filter(pk=preset.pk).delete()


def can_delete_preset(access: TeamAccess, preset: PromptPreset) -> bool:
    """Whether ``access`` may delete ``preset`` (its author, or an owner or admin)."""
    if not access.can(Perm.USE_PLAYGROUND):
        return False
    return access.is_admin or (access.user is not None and preset.created_by_id == access.user.pk)
