"""Forms of the eval pages: a suite (dataset version + graders as JSON) and "Run on…" (models to run it on)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.db.models import QuerySet

from datasets_app.models import DatasetVersion
from serving_app.catalog import Servable

GRADERS_EXAMPLE = (
    '[\n  {"grader": {"type": "exact_match"}, "pass_rate": 0.8},\n'
    '  {"grader": {"type": "rouge_l", "threshold": 0.5}, "pass_rate": 0.6}\n]'
)


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        version: DatasetVersion = obj
        rows = f"{version.row_count:,} rows" if version.row_count is not None else "rows unknown"
        return f"{version.dataset.name} v{version.number} ({version.kind}, {rows})"


class SuiteForm(forms.Form):
    name = forms.CharField(max_length=120)
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    dataset_version = VersionChoiceField(
        queryset=DatasetVersion.objects.none(),
        empty_label=None,
        help_text="A ready chat or instruction version: each row's prompt is its conversation up to the last "
        "assistant turn, and that turn is the reference.",
    )
    graders = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "class": "mono", "spellcheck": "false"}),
        initial=GRADERS_EXAMPLE,
        help_text="A JSON list: each entry a grader spec (see the types below) and pass_rate, the share of rows "
        "a model must pass (0 to 1, default 0.8).",
    )

    def __init__(self, *args: Any, versions: QuerySet[DatasetVersion], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["dataset_version"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = versions

    def clean_graders(self) -> Any:
        text = self.cleaned_data["graders"]
        try:
            value = json.loads(text)
        except ValueError as error:
            raise forms.ValidationError(f"Not valid JSON ({error}); write a list such as {GRADERS_EXAMPLE}.") from None
        if not isinstance(value, list):
            raise forms.ValidationError("Write a JSON list of graders, [ … ].")
        return value


class RunForm(forms.Form):
    models = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple, help_text="Every row is answered by each model, greedily."
    )

    def __init__(self, *args: Any, servables: list[Servable], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["models"]
        assert isinstance(field, forms.MultipleChoiceField)
        field.choices = [(servable.key, servable.label) for servable in servables]
