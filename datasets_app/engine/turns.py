"""Reading one record's fields: text, conversations (roles, content parts, reasoning, tool calls, loss
weights) and tool declarations, into the normalized message shapes of ``rows``.

``RowReader`` wraps one record and its column mapping and collects every problem it finds, each naming the
row, the field and the fix, and every field of the record that the normalized row will not carry
(``unused``), so that nothing is dropped without being reported. The two common spellings of a
conversation are accepted: OpenAI (``role``/``content``, ``tool_calls``, the ``tool`` role with
``tool_call_id``) and ShareGPT (``from``/``value``, ``function_call`` and ``observation`` turns whose value
is JSON text). Content may be a string or OpenAI's list of parts (``text`` parts joined; ``reasoning`` or
``thinking`` parts become the turn's ``reasoning_content``); image, audio and video parts, media columns and
``<image>``-style tags make the row ``needs_media``: this studio trains text-only models.

A tool call must name a tool the row declares, with arguments that are a JSON object valid against the
tool's parameter schema (checked with ``jsonschema``).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.exceptions import best_match

from datasets_app.engine.formats import Problem, Record, RowError, loads_strict, type_name
from datasets_app.engine.rows import ROLES, EncodedList, Message, encode_json

ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
"""Roles accepted in a conversation (compared case-insensitively) and the role each becomes."""

_ALLOWED_ROLES = f"{', '.join(ROLES)} (ShareGPT: system, human, gpt, function_call, observation)"

MEDIA_COLUMNS = frozenset({"images", "image", "videos", "video", "audios", "audio"})
"""Columns that carry media for multimodal training; a row with one filled in is ``needs_media``."""

_MEDIA_TAG = re.compile(r"<(image|video|audio)>", re.IGNORECASE)
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_REASONING_PARTS = frozenset({"reasoning", "thinking", "reasoning_text"})
_MEDIA_PARTS = {
    "image_url": "an image",
    "image": "an image",
    "input_image": "an image",
    "audio": "audio",
    "input_audio": "audio",
    "audio_url": "audio",
    "video": "a video",
    "video_url": "a video",
    "file": "a file",
    "input_file": "a file",
}
# Keys of a turn that the normalized message carries (or that only spell its role and content).
_TURN_KEYS = frozenset(
    {"role", "content", "from", "value", "tool_calls", "function_call", "tool_call_id", "name",
     "reasoning_content", "reasoning", "thinking", "loss_weight", "weight", "train"}
)  # fmt: skip
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


def is_filled(value: Any) -> bool:
    """Whether a cell holds something (not null, not an empty string, list or object)."""
    return value is not None and value != "" and value != [] and value != {}


# Exact role spellings of plain text turns (no tool turns: those carry ids and names to check).
_PLAIN_ROLES = {alias: role for alias, role in ROLE_ALIASES.items() if role != "tool" and alias != "function_call"}


def plain_turn(turn: Any) -> Message | None:
    """The most common turn, ``{"role": "user", "content": "text"}`` (or ShareGPT's ``from``/``value``) and
    nothing else, normalized without the general checks; None for anything else (``RowReader.turn`` reads it).

    It returns exactly what ``RowReader.turn`` would, so it is only a shortcut: a role spelled exactly, text
    that is not blank, and no media tag.
    """
    if type(turn) is not dict or len(turn) != 2:
        return None
    role_value, content = (
        (turn.get("role"), turn.get("content")) if "role" in turn else (turn.get("from"), turn.get("value"))
    )
    if type(content) is not str or type(role_value) is not str:
        return None
    role = _PLAIN_ROLES.get(role_value)
    if role is None or not content.strip() or ("<" in content and _MEDIA_TAG.search(content)):
        return None
    return {"role": role, "content": content}


class RowReader:
    """One record, its mapping, the problems found in it so far, and the fields it leaves unused."""

    def __init__(self, record: Record, mapping: Mapping[str, str], *, tools_allowed: bool = False) -> None:
        self.record = record
        self.mapping = mapping
        self.tools_allowed = tools_allowed
        self.problems: list[Problem] = []
        self.unused: set[str] = set()
        self.call_ids: set[str] = set()
        self.validators: Mapping[str, Draft202012Validator] = {}
        self.fast_checks: Mapping[str, Callable[[dict[str, Any]], bool]] = {}

    def problem(self, code: str, field_name: str | None, message: str) -> None:
        self.problems.append(Problem(line=self.record.line, column=None, field=field_name, code=code, message=message))

    def column(self, name: str) -> str:
        return self.mapping.get(name, name)

    def describe(self, name: str) -> str:
        column = self.column(name)
        return f"'{name}'" if column == name else f"'{name}' (column '{column}')"

    def get(self, name: str) -> Any:
        """The mapped value, or None when the field is not mapped or the cell is absent or null."""
        column = self.mapping.get(name)
        return None if column is None else self.record.data.get(column)

    def missing(self, name: str) -> None:
        present = [str(key) for key, value in self.record.data.items() if value is not None]
        has = ", ".join(present[:12]) + (", …" if len(present) > 12 else "") if present else "no fields"
        self.problem(
            "missing_field", self.column(name), f"The field {self.describe(name)} is missing; this row has: {has}."
        )

    def check_media(self) -> None:
        """A filled media column (``images``, ``videos``, ``audios``) makes the row ``needs_media``."""
        for column, value in self.record.data.items():
            if str(column).lower() in MEDIA_COLUMNS and is_filled(value):
                self.problem(
                    "needs_media",
                    str(column),
                    f"The row has {str(column)!r}: this studio trains text-only models, and the text without "
                    "them would teach the model to answer about media it cannot see.",
                )
                return

    def media_tag(self, text: str, where: str, number: int, role: str) -> bool:
        found = _MEDIA_TAG.search(text) if "<" in text else None
        if found:
            self.problem(
                "needs_media",
                where,
                f"Turn {number} ({role}) holds the tag {found.group()}, a placeholder for media this text-only "
                "studio cannot train on.",
            )
        return bool(found)

    def text(self, name: str, role: str, turn: int) -> str | None:
        """A required text field (numbers are taken as their text); problems recorded, None when unusable."""
        value = self.get(name)
        if value is None:
            self.missing(name)
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.problem(
                "wrong_type",
                self.column(name),
                f"The field {self.describe(name)} must be text, not {type_name(value)}.",
            )
            return None
        if not value.strip():
            self.problem(
                "empty_turn", self.column(name), f"Turn {turn} ({role}): the field {self.describe(name)} is empty."
            )
            return None
        if self.media_tag(value, self.column(name), turn, role):
            return None
        return value

    def json_value(self, name: str, value: Any, expected: str) -> Any:
        """``value``, or the JSON it holds when it is text starting like ``expected`` ("[" or "{")."""
        if isinstance(value, str) and value.lstrip().startswith(expected):
            try:
                return loads_strict(value)
            except RowError as error:
                code = "wrong_type" if error.code == "json" else error.code
                what = "list" if expected == "[" else "object"
                self.problem(
                    code,
                    self.column(name),
                    f"The field {self.describe(name)} holds text that is not a valid JSON {what}: {error.detail}.",
                )
                return _INVALID
        return value

    # --- conversations ----------------------------------------------------------------------------------

    def turns(self, name: str, value: Any) -> list[Message] | None:
        """A list of turns (JSON text is parsed) in normalized form; problems recorded, None when unusable."""
        column = self.column(name)
        value = self.json_value(name, value, "[")
        if value is _INVALID:
            return None
        if not isinstance(value, list):
            self.problem(
                "wrong_type",
                column,
                f"The field {self.describe(name)} must be a list of turns, not {type_name(value)}.",
            )
            return None
        turns: list[Message] = []
        usable = True
        for number, turn in enumerate(value, 1):
            message = plain_turn(turn)
            if message is None:
                message = self.turn(f"{column}[{number - 1}]", number, turn, unused_prefix=f"{column}[]")
            if message is None:
                usable = False
            else:
                turns.append(message)
        return turns if usable else None

    def turn(self, where: str, number: int, turn: Any, *, unused_prefix: str) -> Message | None:
        """One turn object in normalized form, or None (problems recorded)."""
        if not isinstance(turn, dict):
            self.problem(
                "wrong_type", where, f"Turn {number} must be an object with a role and content, not {type_name(turn)}."
            )
            return None
        if "role" in turn or "content" in turn:
            role_value, content = turn.get("role"), turn.get("content")
        elif "from" in turn or "value" in turn:
            role_value, content = turn.get("from"), turn.get("value")
        else:
            keys = ", ".join(map(str, list(turn)[:8])) or "none"
            self.problem(
                "missing_field", where, f"Turn {number} has no role and content (or from and value); its keys: {keys}."
            )
            return None
        spelled = role_value.strip().lower() if isinstance(role_value, str) else None
        role = ROLE_ALIASES.get(spelled) if spelled is not None else None
        if role is None:
            shown = "no role" if role_value is None else f"the role {role_value!r}"[:80]
            self.problem("unknown_role", where, f"Turn {number} has {shown}; allowed roles: {_ALLOWED_ROLES}.")
            return None
        for key in turn.keys() - _TURN_KEYS:
            if is_filled(turn[key]):
                self.unused.add(f"{unused_prefix}.{key}")
        if spelled == "function_call":  # ShareGPT: the value is the call as JSON text
            calls = self._sharegpt_calls(where, number, content)
            if calls is None:
                return None
            return self._with_calls(where, number, {"role": "assistant", "content": ""}, calls)
        parsed = self._content(where, number, role, content)
        if parsed is None:
            return None
        text, reasoning = parsed
        for key in ("reasoning_content", "reasoning", "thinking"):
            extra = turn.get(key)
            if isinstance(extra, str) and extra.strip():
                reasoning = f"{reasoning}\n{extra}" if reasoning else extra
            elif extra is not None and extra != "":
                self.problem(
                    "wrong_type", where, f"Turn {number} ({role}): '{key}' must be text, not {type_name(extra)}."
                )
                return None
        message: Message = {"role": role, "content": text}
        if reasoning:
            if role != "assistant":
                self.unused.add(f"{unused_prefix}.reasoning (on {role} turns)")
            else:
                message["reasoning_content"] = reasoning
        raw_calls = turn.get("tool_calls")
        if raw_calls is None and isinstance(turn.get("function_call"), dict):
            raw_calls = [{"type": "function", "function": turn["function_call"]}]
        if raw_calls not in (None, []):
            if role != "assistant":
                self.problem(
                    "bad_tool_call",
                    where,
                    f"Turn {number} is a {role} turn with tool calls; only the assistant calls tools.",
                )
                return None
            calls = self._openai_calls(where, number, raw_calls)
            if calls is None:
                return None
            with_calls = self._with_calls(where, number, message, calls)
            if with_calls is None:
                return None
            message = with_calls
        elif not text.strip():
            self.problem("empty_turn", where, f"Turn {number} ({role}) is {'null' if content is None else 'empty'}.")
            return None
        if role == "tool":
            for key in ("tool_call_id", "name"):
                value = turn.get(key)
                if isinstance(value, str) and value:
                    message[key] = value  # type: ignore[literal-required]
            call_id = message.get("tool_call_id")
            if call_id is not None and call_id not in self.call_ids:
                self.problem(
                    "bad_tool_call",
                    where,
                    f"Turn {number} (tool) answers the call {call_id!r}, which no earlier turn made.",
                )
                return None
        elif turn.get("name") not in (None, ""):
            self.unused.add(f"{unused_prefix}.name")
        return self._with_weight(where, number, message, turn, unused_prefix)

    def _content(self, where: str, number: int, role: str, content: Any) -> tuple[str, str] | None:
        """(text, reasoning) of a turn's content: a string, null, or a list of OpenAI content parts."""
        if content is None:
            return "", ""
        if isinstance(content, int | float) and not isinstance(content, bool):
            content = str(content)
        if isinstance(content, str):
            return None if self.media_tag(content, where, number, role) else (content, "")
        if not isinstance(content, list):
            self.problem(
                "wrong_type",
                where,
                f"Turn {number} ({role}) has content of type {type_name(content)}; it must be text.",
            )
            return None
        texts: list[str] = []
        reasoning: list[str] = []
        for position, part in enumerate(content, 1):
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in _MEDIA_PARTS:
                self.problem(
                    "needs_media",
                    where,
                    f"Turn {number} ({role}), part {position} is {_MEDIA_PARTS[kind]} ({kind!r}); this studio trains "
                    "text-only models.",
                )
                return None
            value = _part_text(part) if isinstance(part, dict) else None
            if kind not in _TEXT_PARTS | _REASONING_PARTS or value is None:
                shown = f"of type {kind!r}" if isinstance(kind, str) else f"of {type_name(part)}"
                self.problem(
                    "wrong_type",
                    where,
                    f"Turn {number} ({role}), part {position} is {shown}; content parts must be text, reasoning "
                    'or thinking parts with their text in "text" or "value".',
                )
                return None
            (reasoning if kind in _REASONING_PARTS else texts).append(value)
        text = "\n".join(texts)
        if self.media_tag(text, where, number, role):
            return None
        return text, "\n".join(reasoning)

    def _with_weight(
        self, where: str, number: int, message: Message, turn: dict[str, Any], unused_prefix: str
    ) -> Message | None:
        """Carry the turn's loss weight (``loss_weight``, ``weight`` or a boolean ``train``) on assistant turns."""
        weight: float | None = None
        for key in ("loss_weight", "weight", "train"):
            value = turn.get(key)
            if value is None:
                continue
            if key == "train" and isinstance(value, bool):
                weight = 1.0 if value else 0.0
            elif key != "train" and isinstance(value, int | float) and not isinstance(value, bool):
                if not math.isfinite(value) or value < 0:
                    self.problem("bad_loss_weight", where, f"Turn {number}: '{key}' is {value}; it must be 0 or more.")
                    return None
                weight = float(value)
            else:
                expected = "true or false" if key == "train" else "a number (0 means: not trained on)"
                self.problem(
                    "bad_loss_weight", where, f"Turn {number}: '{key}' must be {expected}, not {type_name(value)}."
                )
                return None
        if weight is None or weight == 1.0:
            return message
        if message["role"] != "assistant":
            if weight != 0.0:  # only assistant turns are ever trained on: a positive weight elsewhere does nothing
                self.unused.add(f"{unused_prefix}.loss_weight (on {message['role']} turns)")
            return message
        message["loss_weight"] = int(weight) if weight.is_integer() else weight
        return message

    # --- tool calls -----------------------------------------------------------------------------------

    def _with_calls(self, where: str, number: int, message: Message, calls: list[dict[str, Any]]) -> Message | None:
        if not self.tools_allowed:
            self.problem(
                "bad_tool_call",
                where,
                f"Turn {number} calls a tool; tool calls are trained from chat datasets only (with a 'tools' "
                "column declaring them).",
            )
            return None
        message["tool_calls"] = calls
        for call in calls:
            if "id" in call:
                self.call_ids.add(call["id"])
        return message

    def _sharegpt_calls(self, where: str, number: int, value: Any) -> list[dict[str, Any]] | None:
        """A ShareGPT ``function_call`` turn's value: JSON text of one call or a list of calls."""
        if isinstance(value, str):
            try:
                value = loads_strict(value)
            except RowError as error:
                self.problem(
                    "bad_tool_call",
                    where,
                    f"Turn {number} (function_call) is not valid JSON ({error.detail}); it must be "
                    '{"name": …, "arguments": {…}}.',
                )
                return None
        calls = value if isinstance(value, list) else [value]
        return self._openai_calls(where, number, calls)

    def _openai_calls(self, where: str, number: int, value: Any) -> list[dict[str, Any]] | None:
        """OpenAI ``tool_calls`` (``{"id", "type": "function", "function": {"name", "arguments"}}``, arguments
        as JSON text or an object) or bare ``{"name", "arguments"}`` calls, normalized."""
        if isinstance(value, str):
            value = self.json_value("tool_calls", value, "[")
            if value is _INVALID:
                return None
        if not isinstance(value, list):
            self.problem("bad_tool_call", where, f"Turn {number}: 'tool_calls' must be a list, not {type_name(value)}.")
            return None
        calls: list[dict[str, Any]] = []
        for position, item in enumerate(value, 1):
            function = item.get("function", item) if isinstance(item, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str) or not name.strip():
                self.problem(
                    "bad_tool_call",
                    where,
                    f"Turn {number}, call {position} has no function name; write it as "
                    '{"type": "function", "function": {"name": …, "arguments": {…}}}.',
                )
                return None
            assert isinstance(function, dict)
            arguments = function.get("arguments", function.get("parameters"))
            if arguments is None or arguments == "":
                arguments = {}
            if isinstance(arguments, str):
                try:
                    arguments = loads_strict(arguments)
                except RowError as error:
                    self.problem(
                        "bad_tool_arguments",
                        where,
                        f"Turn {number} calls {name} with arguments that are not valid JSON ({error.detail}).",
                    )
                    return None
            if not isinstance(arguments, dict):
                self.problem(
                    "bad_tool_arguments",
                    where,
                    f"Turn {number} calls {name} with arguments that are {type_name(arguments)}, not a JSON object.",
                )
                return None
            call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
                call = {"type": "function", "id": item["id"], "function": call["function"]}
            calls.append(call)
        if not calls:
            self.problem("bad_tool_call", where, f"Turn {number} (function_call) holds no call.")
            return None
        return calls

    # --- tool declarations ----------------------------------------------------------------------------

    def tools(self, name: str) -> list[dict[str, Any]] | None:
        """The row's declared tools in OpenAI's shape ([] when none); None when the declaration is unusable.

        Rows usually repeat the same declaration, so each distinct one (by its JSON text) is checked, and its
        argument validators built, once; ``check_calls`` then uses them.
        """
        value = self.get(name)
        if not is_filled(value) or (isinstance(value, str) and not value.strip()):
            return []
        last_value, declaration = _last_declaration
        if value != last_value:  # comparing with the previous row's value is cheaper than encoding it
            declaration = _declaration(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
            _remember(value, declaration)
        if declaration.error is not None:
            code, position, message = declaration.error
            where = self.column(name) if position is None else f"{self.column(name)}[{position - 1}]"
            self.problem(code, where, message.replace("{field}", self.describe(name)))
            return None
        self.validators = declaration.validators
        self.fast_checks = declaration.fast_checks
        return EncodedList(declaration.tools, declaration.json_text)

    def check_calls(self, name: str, messages: list[Message], tools: list[dict[str, Any]]) -> bool:
        """Every call names a declared tool and passes its parameter schema; problems recorded."""
        validators = self.validators if tools else {}
        fast_checks = self.fast_checks if tools else {}
        for number, message in enumerate(messages, 1):
            for call in message.get("tool_calls", ()):
                function = call["function"]
                where = f"{self.column(name)}[{number - 1}]"
                validator = validators.get(function["name"])
                if validator is None:
                    declared = ", ".join(sorted(validators)) or "none (the row has no 'tools')"
                    self.problem(
                        "unknown_tool",
                        where,
                        f"Turn {number} calls {function['name']!r}, which the row does not declare (declared: "
                        f"{declared}).",
                    )
                    return False
                error = _arguments_error(validator, function["arguments"], fast_checks.get(function["name"]))
                if error is not None:
                    self.problem(
                        "bad_tool_arguments",
                        where,
                        f"Turn {number} calls {function['name']} with arguments that do not match its parameters: "
                        f"{error}.",
                    )
                    return False
        return True


@dataclass(frozen=True)
class _Declaration:
    """One distinct ``tools`` value: its tools in OpenAI's shape and a validator per tool, or why it is unusable
    (code, 1-based position of the tool or None, message with ``{field}`` for the field's name)."""

    tools: tuple[dict[str, Any], ...] = ()
    validators: Mapping[str, Draft202012Validator] = field(default_factory=dict)
    fast_checks: Mapping[str, Callable[[dict[str, Any]], bool]] = field(default_factory=dict)
    error: tuple[str, int | None, str] | None = None
    json_text: str = "[]"  # the tools as the normalized row's JSON carries them


_last_declaration: tuple[Any, _Declaration] = (None, _Declaration())


def _remember(value: Any, declaration: _Declaration) -> None:
    global _last_declaration
    _last_declaration = (value, declaration)  # one tuple assignment: a reader in another thread sees a whole pair


@functools.lru_cache(maxsize=64)
def _declaration(text: str) -> _Declaration:
    try:
        value = loads_strict(text)
    except RowError as error:
        return _Declaration(error=("bad_tool_schema", None, f"The field {{field}} is not valid JSON: {error.detail}."))
    if not isinstance(value, list):
        return _Declaration(
            error=("bad_tool_schema", None, f"The field {{field}} must be a list of tool declarations, not "
                   f"{type_name(value)}.")
        )  # fmt: skip
    tools: list[dict[str, Any]] = []
    validators: dict[str, Draft202012Validator] = {}
    fast_checks: dict[str, Callable[[dict[str, Any]], bool]] = {}
    for position, item in enumerate(value, 1):
        function = item.get("function", item) if isinstance(item, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name.strip():
            return _Declaration(
                error=("bad_tool_schema", position, f"Tool {position} has no name; declare it as "
                       '{"type": "function", "function": {"name": …, "description": …, "parameters": {…}}}.')
            )  # fmt: skip
        assert isinstance(function, dict)
        if name in validators:
            return _Declaration(error=("bad_tool_schema", position, f"The tool {name!r} is declared twice."))
        parameters = function.get("parameters")
        if parameters is None:
            parameters = dict(_EMPTY_SCHEMA)
        if not isinstance(parameters, dict):
            return _Declaration(
                error=("bad_tool_schema", position, f"The tool {name!r} has parameters that are "
                       f"{type_name(parameters)}, not a JSON schema object.")
            )  # fmt: skip
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as error:
            return _Declaration(
                error=("bad_tool_schema", position, f"The tool {name!r} has parameters that are not a valid JSON "
                       f"schema: {str(error.message)[:200]}.")
            )  # fmt: skip
        declared: dict[str, Any] = {"name": name}
        description = function.get("description")
        if isinstance(description, str) and description:
            declared["description"] = description
        declared["parameters"] = parameters
        tools.append({"type": "function", "function": declared})
        validators[name] = Draft202012Validator(parameters)
        fast = _fast_check(parameters)
        if fast is not None:
            fast_checks[name] = fast
    return _Declaration(tuple(tools), validators, fast_checks, json_text=encode_json(tools))


# JSON types of the flat parameter schemas most tools declare, as Python checks (bool is not a number in JSON).
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda value: isinstance(value, str),
    "number": lambda value: isinstance(value, int | float) and not isinstance(value, bool),
    "integer": lambda value: (
        (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
    ),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
    "array": lambda value: isinstance(value, list),
    "object": lambda value: isinstance(value, dict),
}
_FLAT_PROPERTY_KEYS = frozenset({"type", "enum", "description", "title", "default", "examples"})
_FLAT_SCHEMA_KEYS = frozenset({"type", "properties", "required", "description", "title", "additionalProperties"})


def _fast_check(schema: dict[str, Any]) -> Callable[[dict[str, Any]], bool] | None:
    """A quick "certainly valid" test for a flat object schema (typed properties, enums, required names), or
    None when the schema uses anything more. It only ever says True where jsonschema would find no error, so a
    False (or no fast check) sends the arguments to jsonschema, which also words the message."""
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    closed = schema.get("additionalProperties", True) is False
    if (
        not set(schema) <= _FLAT_SCHEMA_KEYS
        or schema.get("type", "object") != "object"
        or schema.get("additionalProperties", True) not in (True, False)
        or not isinstance(properties, dict)
        or not isinstance(required, list)
    ):
        return None
    checks: list[tuple[str, Callable[[Any], bool] | None, list[Any] | None]] = []
    for name, rule in properties.items():
        if not isinstance(rule, dict) or not set(rule) <= _FLAT_PROPERTY_KEYS:
            return None
        kind, enum = rule.get("type"), rule.get("enum")
        if (kind is not None and kind not in _JSON_TYPES) or (enum is not None and not isinstance(enum, list)):
            return None
        checks.append((name, _JSON_TYPES.get(kind) if kind else None, enum))

    def certainly_valid(arguments: dict[str, Any]) -> bool:
        if any(name not in arguments for name in required):
            return False
        if closed and any(name not in properties for name in arguments):
            return False
        for name, is_type, enum in checks:
            if name in arguments:
                value = arguments[name]
                if (is_type is not None and not is_type(value)) or (
                    enum is not None and not any(value == option and type(value) is type(option) for option in enum)
                ):
                    return False
        return True

    return certainly_valid


class _Invalid:
    """Marks a value whose JSON text could not be parsed (the problem is already recorded)."""


_INVALID: Any = _Invalid()


def _part_text(part: dict[str, Any]) -> str | None:
    for key in ("text", "value", "reasoning", "thinking"):
        value = part.get(key)
        if isinstance(value, str):
            return value
    return None


def _arguments_error(
    validator: Draft202012Validator, arguments: dict[str, Any], fast_check: Callable[[dict[str, Any]], bool] | None
) -> str | None:
    if fast_check is not None and fast_check(arguments):
        return None
    error = best_match(validator.iter_errors(arguments))
    if error is None:
        return None
    path = "".join(f"[{part!r}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path)
    return f"{error.message[:200]}" + (f" (at arguments{path})" if path else "")


__all__ = ["MEDIA_COLUMNS", "ROLE_ALIASES", "RowReader", "is_filled"]
