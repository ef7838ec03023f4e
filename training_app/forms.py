"""The job form, built from the settings table (``presets.SETTINGS``), and the model card form.

A setting's form field is named after its key with the dot replaced (``lora.rank`` → ``lora__rank``), so
every field name is a plain HTML id; ``add_setting_errors`` puts the services' dotted error keys back
next to the right field.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from datasets_app.models import DatasetVersion
from training_app import estimator, presets
from training_app.engine import rewards
from training_app.models import BaseModel

# The settings shown at the top of the form; every other one is under "Advanced", except the goal's own
# group (GRPO's rewards and sampling), which has a card of its own shown when that goal is chosen.
MAIN_SETTINGS = ("stage",)
GOAL_GROUPS = {presets.REINFORCEMENT: "grpo"}
JSON_KINDS = {"json": (dict, "must be a JSON object ({…}) with DeepSpeed's settings"),
              "json_list": (list, "must be a JSON list ([…]) of reward specs")}  # fmt: skip


def field_name(key: str) -> str:
    """The form field of a setting (``lora.rank`` → ``lora__rank``)."""
    return key.replace(".", "__")


def setting_key(name: str) -> str:
    """The setting a form field stands for (``lora__rank`` → ``lora.rank``)."""
    return name.replace("__", ".")


class BaseModelChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        model: BaseModel = obj
        facts = [f"{_compact(model.parameter_count)} parameters"] if model.parameter_count else []
        if model.context_length:
            facts.append(f"context {model.context_length:,}")
        return f"{model.name} ({', '.join(facts)})" if facts else model.name


class KindSelect(forms.Select):
    """A select whose options carry their dataset version's kind (``data-kind``), so the page can switch the
    goal to one that trains on it (job-form.js)."""

    def create_option(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        option: dict[str, Any] = super().create_option(*args, **kwargs)
        version = getattr(option["value"], "instance", None)
        if version is not None and version.kind:
            option["attrs"]["data-kind"] = version.kind
        return option


class DatasetVersionChoiceField(forms.ModelChoiceField):
    widget = KindSelect

    def label_from_instance(self, obj: Any) -> str:
        version: DatasetVersion = obj
        rows = f"{version.row_count:,} rows" if version.row_count is not None else "rows unknown"
        return f"{version.dataset.name} v{version.number} ({version.kind or 'unknown kind'}, {rows})"


def _compact(count: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            return f"{count / size:.3g}{suffix}"
    return str(count)


def setting_field(setting: presets.Setting) -> forms.Field:
    """The form field for one setting, with its label, one-line help and default."""
    common: dict[str, Any] = {"label": setting.label, "help_text": setting.help, "required": False}
    if setting.kind == "int":
        return forms.IntegerField(**{**common, "required": True})
    if setting.kind == "optional_int":
        return forms.IntegerField(**common)
    if setting.kind == "optional_float":
        return forms.FloatField(**common)
    if setting.kind == "float":
        return forms.FloatField(**{**common, "required": True})
    if setting.kind == "bool":
        return forms.BooleanField(**common)
    if setting.kind == "choice":
        return forms.ChoiceField(**{**common, "required": True}, choices=setting.choices)
    if setting.kind == "json":
        textarea = forms.Textarea(attrs={"rows": 6, "class": "mono", "placeholder": '{"zero_optimization": {…}}'})
        return forms.CharField(**common, widget=textarea, strip=True)
    if setting.kind == "json_list":
        textarea = forms.Textarea(attrs={"rows": 5, "class": "mono", "placeholder": rewards.EXAMPLE})
        return forms.CharField(**common, widget=textarea, strip=True)
    return forms.CharField(**common, max_length=500)


class JobForm(forms.Form):
    """Launch a fine-tune: name, base model, dataset version, pool, preset and every run setting."""

    name = forms.CharField(
        max_length=120,
        required=False,
        help_text="Also the name of the model it makes; empty: “base model on dataset”.",
        widget=forms.TextInput(attrs={"placeholder": "e.g. support-assistant"}),
    )
    base_model = BaseModelChoiceField(queryset=BaseModel.objects.none(), empty_label=None)
    dataset_version = DatasetVersionChoiceField(
        queryset=DatasetVersion.objects.none(), empty_label=None, label="Dataset version"
    )
    preset = forms.ChoiceField(required=False, choices=[(p.slug, p.name) for p in presets.PRESETS])
    pool = forms.ChoiceField(label="Worker pool", choices=[])
    cloned_from = forms.IntegerField(required=False, widget=forms.HiddenInput)

    def __init__(
        self,
        *args: Any,
        base_models: QuerySet[BaseModel],
        dataset_versions: QuerySet[DatasetVersion],
        pools: dict[str, estimator.Pool],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        base_field, dataset_field, pool_field = (
            self.fields["base_model"],
            self.fields["dataset_version"],
            self.fields["pool"],
        )
        assert isinstance(base_field, forms.ModelChoiceField) and isinstance(dataset_field, forms.ModelChoiceField)
        assert isinstance(pool_field, forms.ChoiceField)
        base_field.queryset = base_models
        base_field.error_messages["invalid_choice"] = "choose one of your team's base models"
        dataset_field.queryset = dataset_versions
        dataset_field.error_messages["invalid_choice"] = "choose a ready dataset version you may train on"
        pool_field.choices = [(name, pool_label(pool)) for name, pool in pools.items()]
        for setting in presets.SETTINGS:
            self.fields[field_name(setting.key)] = setting_field(setting)
        self.fields["stage"].widget = forms.RadioSelect(choices=presets.STAGES)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for setting in presets.SETTINGS:
            if setting.kind in JSON_KINDS:
                name = field_name(setting.key)
                cleaned[name] = self._parsed_json(name, cleaned.get(name), setting)
        return cleaned

    def _parsed_json(self, name: str, raw: Any, setting: presets.Setting) -> Any:
        """A JSON setting's text parsed (empty: its default); a field error when it is not JSON of its shape."""
        if not raw:
            return copy.deepcopy(setting.default)
        shape, problem = JSON_KINDS[setting.kind]
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as error:
            self.add_error(name, f"not valid JSON: {error}")
            return None
        if not isinstance(parsed, shape):
            self.add_error(name, problem)
            return None
        return parsed

    def setting_values(self) -> dict[str, Any]:
        """The cleaned run settings as ``check_settings``/``create_job`` take them (flat, dotted keys)."""
        values: dict[str, Any] = {}
        for setting in presets.SETTINGS:
            value = self.cleaned_data.get(field_name(setting.key))
            if setting.kind in ("optional_int", "optional_float") and value in ("", None):
                value = None
            values[setting.key] = value
        return values

    def groups(self) -> list[tuple[str, list[tuple[forms.BoundField, str]]]]:
        """The "Advanced" settings by group, in the settings table's order: (field, its default shown)."""
        grouped: dict[str, list[tuple[forms.BoundField, str]]] = {}
        for setting in presets.SETTINGS:
            if setting.key not in MAIN_SETTINGS and setting.group not in GOAL_GROUPS:
                bound = self[field_name(setting.key)]
                grouped.setdefault(setting.group, []).append((bound, default_text(setting)))
        return list(grouped.items())

    def goal_fields(self, group: str) -> list[tuple[forms.BoundField, str]]:
        """The settings of one goal's own card (``GOAL_GROUPS``): (field, its default shown)."""
        return [
            (self[field_name(setting.key)], default_text(setting))
            for setting in presets.SETTINGS
            if setting.group == group
        ]

    def reinforcement_fields(self) -> list[tuple[forms.BoundField, str]]:
        """GRPO's rewards and sampling settings, for the card shown with the Reinforcement goal."""
        return self.goal_fields(presets.REINFORCEMENT)

    def advanced_has_errors(self) -> bool:
        return any(field.errors for _, fields in self.groups() for field, _ in fields)


def default_text(setting: presets.Setting) -> str:
    """A setting's default as the form states it next to the help text."""
    if setting.default is None or setting.default == []:
        return "empty"
    if isinstance(setting.default, bool):
        return "on" if setting.default else "off"
    if setting.kind == "choice":
        return next((label for value, label in setting.choices if value == setting.default), str(setting.default))
    return str(setting.default)


def pool_label(pool: estimator.Pool) -> str:
    return f"{pool.label} ({pool.devices} × {pool.memory_gib:g} GiB, {pool.accelerator.upper()})"


def initial_values(values: dict[str, Any]) -> dict[str, Any]:
    """Flat setting values (``presets.apply_preset``, ``jobs.clone_values``) as the form's initial data."""
    initial: dict[str, Any] = {}
    for key, value in values.items():
        if key not in presets.SETTINGS_BY_KEY:
            continue
        if presets.SETTINGS_BY_KEY[key].kind in JSON_KINDS:
            value = json.dumps(value, indent=2) if value else ""
        elif isinstance(value, list):
            value = ", ".join(str(item) for item in value)
        initial[field_name(key)] = value
    return initial


def as_data(initial: dict[str, Any]) -> dict[str, Any]:
    """Initial values as a browser would submit them (for an estimate of the form as first shown)."""
    data: dict[str, Any] = {}
    for name, value in initial.items():
        if value is None or value is False:
            continue
        data[name] = "on" if value is True else getattr(value, "pk", value)
    return data


def add_setting_errors(form: forms.Form, errors: dict[str, Any]) -> None:
    """Put field → message errors (dotted setting keys included) next to their fields, others on top."""
    for key, messages in errors.items():
        name = field_name(key)
        target = name if name in form.fields else None
        if target is None and key != "__all__":
            messages = [f"{key}: {message}" for message in _as_list(messages)]
        form.add_error(target, _as_list(messages))


def service_errors(error: ValidationError) -> dict[str, list[str]]:
    return error.message_dict if hasattr(error, "error_dict") else {"__all__": error.messages}


def _as_list(messages: Any) -> list[str]:
    return [str(m) for m in messages] if isinstance(messages, list | tuple) else [str(messages)]


class ModelCardForm(forms.Form):
    """The model card's free text: what the model is for, what it is not for, and where it should not be trusted.

    All three may be saved empty, but a deployment publishes the version only once all three are written.
    """

    intended_use = forms.CharField(
        label="Intended use",
        required=False,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="What this model is for and who should use it.",
    )
    out_of_scope = forms.CharField(
        label="Out of scope",
        required=False,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Uses it is not meant for, even if it seems to handle them: e.g. medical or legal advice.",
    )
    limitations = forms.CharField(
        label="Known limitations",
        required=False,
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Where it should not be trusted: topics, languages, known failure modes.",
    )


class HubModelForm(forms.Form):
    """Add a base model from the Hugging Face Hub (downloaded by a worker; safetensors only)."""

    repo_id = forms.CharField(
        label="Hub repository",
        max_length=200,
        help_text="owner/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct. Models with their own code are refused.",
        widget=forms.TextInput(attrs={"placeholder": "owner/name"}),
    )
    revision = forms.CharField(
        required=False, max_length=100, help_text="Branch, tag or commit; empty: main.", label="Revision"
    )
