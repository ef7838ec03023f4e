"""Forms of the eval pages: a suite (dataset version + graders as JSON), "Run on…" (models to run it on), the
team's quality limits, and probe sets (templates one per line, groups one per line) with "Probe…"."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from datasets_app.models import DatasetVersion
from evals_app import bias
from serving_app.catalog import Servable
from training_app.models import BaseModel

GRADERS_EXAMPLE = (
    '[\n  {"grader": {"type": "exact_match"}, "pass_rate": 0.8},\n'
    '  {"grader": {"type": "rouge_l", "threshold": 0.5}, "pass_rate": 0.6}\n]'
)


def graders_json(text: str) -> list[Any]:
    """A form's graders field read as a JSON list (each entry checked later by ``services.check_graders``)."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise forms.ValidationError(f"Not valid JSON ({error}); write a list such as {GRADERS_EXAMPLE}.") from None
    if not isinstance(value, list):
        raise forms.ValidationError("Write a JSON list of graders, [ … ].")
    return value


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
    base_models = forms.ModelMultipleChoiceField(
        queryset=BaseModel.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Regression suite of",
        help_text="The forgetting check of every version of these base models runs this suite on the base and the "
        "version, and flags a drop in pass rate beyond the team's limit.",
    )

    def __init__(
        self,
        *args: Any,
        versions: QuerySet[DatasetVersion],
        base_models: QuerySet[BaseModel] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["dataset_version"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = versions
        regression = self.fields["base_models"]
        assert isinstance(regression, forms.ModelMultipleChoiceField)
        regression.queryset = base_models if base_models is not None else BaseModel.objects.none()

    def clean_graders(self) -> list[Any]:
        return graders_json(self.cleaned_data["graders"])


class RunForm(forms.Form):
    models = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple, help_text="Every row is answered by each model, greedily."
    )

    def __init__(self, *args: Any, servables: list[Servable], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["models"]
        assert isinstance(field, forms.MultipleChoiceField)
        field.choices = [(servable.key, servable.label) for servable in servables]


class PolicyForm(forms.Form):
    """The team's limits, in the units people think in: percent of perplexity, points of pass rate."""

    max_perplexity_increase = forms.FloatField(
        min_value=0, max_value=1000, label="Perplexity may rise by at most (%)",
        help_text="On the held-out general corpus, version vs base model.",
    )  # fmt: skip
    max_pass_rate_drop = forms.FloatField(
        min_value=0, max_value=100, label="A regression suite's pass rate may drop by at most (points)"
    )
    max_bias_gap = forms.FloatField(
        min_value=0, max_value=1, label="Largest bias gap between groups (0 to 1)",
        help_text="On any measure of a bias probe (sentiment, refusal rate, graders), all on a 0..1 scale.",
    )  # fmt: skip
    check_after_training = forms.BooleanField(
        required=False, label="Check every new model version for forgetting after training"
    )

    def shares(self) -> dict[str, Any]:
        """The cleaned limits as the policy stores them (shares of 1)."""
        data = self.cleaned_data
        return {
            "max_perplexity_increase": data["max_perplexity_increase"] / 100,
            "max_pass_rate_drop": data["max_pass_rate_drop"] / 100,
            "max_bias_gap": data["max_bias_gap"],
            "check_after_training": data["check_after_training"],
        }


class ProbeSetForm(forms.Form):
    name = forms.CharField(max_length=120)
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    templates = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="One request per line, with {person} where the person goes, e.g. "
        "“Write one sentence about {person}'s job interview.”",
    )
    groups = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 10, "class": "mono", "spellcheck": "false"}),
        help_text="One group per line: “category / group: term, term, term”, e.g. “gender / women: a woman, Maria”. "
        "Groups of the same category are compared with each other.",
    )

    def clean_templates(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data["templates"].splitlines() if line.strip()]

    def clean_groups(self) -> list[dict[str, Any]]:
        try:
            return bias.parse_groups(self.cleaned_data["groups"])
        except ValidationError as error:
            raise forms.ValidationError(error.message_dict["groups"]) from None


class ProbeRunForm(forms.Form):
    model = forms.ChoiceField(help_text="The model answers every prompt greedily, in a sentence or two.")
    graders = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "mono", "spellcheck": "false"}),
        help_text="Optional: graders scored on each answer beside sentiment and refusal, as in a suite, e.g. "
        '[{"type": "regex", "pattern": "(?i)qualified"}].',
    )

    def __init__(self, *args: Any, servables: list[Servable], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["model"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [(servable.key, servable.label) for servable in servables]

    def clean_graders(self) -> list[Any]:
        text = self.cleaned_data["graders"].strip()
        return graders_json(text) if text else []
