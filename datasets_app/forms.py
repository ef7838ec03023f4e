"""Forms for the dataset pages."""

from __future__ import annotations

from typing import Any

from django import forms

from datasets_app.engine.formats import TextSplit
from datasets_app.engine.rows import Kind
from datasets_app.engine.schemas import FIELDS, check_mapping

# The normalized fields of each kind, in the order the mapping form shows them.
KIND_FIELDS: dict[str, tuple[str, ...]] = {kind: tuple(spec.name for spec in FIELDS[kind]) for kind in Kind}
FIELD_HELP: dict[str, dict[str, str]] = {kind: {spec.name: spec.help for spec in FIELDS[kind]} for kind in Kind}
KIND_LABELS = {
    Kind.CHAT: "Chat (a list of messages with roles, optionally tools)",
    Kind.INSTRUCTION: "Instruction (prompt → completion)",
    Kind.PREFERENCE: "Preference (prompt, chosen, rejected) for DPO",
    Kind.FEEDBACK: "Feedback (an answer labelled good or bad) for KTO",
    Kind.TEXT: "Raw text (continued pretraining)",
}
TEXT_SPLIT_CHOICES = [
    (TextSplit.PARAGRAPHS.value, "One row per paragraph (blank lines between)"),
    (TextSplit.LINES.value, "One row per line"),
]


class UploadForm(forms.Form):
    file = forms.FileField(help_text="JSON Lines, JSON, CSV, Parquet, or plain text (.txt, .md) for pretraining.")
    name = forms.CharField(max_length=120, required=False, help_text="Defaults to the file's name.")
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    restricted = forms.BooleanField(
        required=False,
        label="Restrict to named members",
        help_text="Only owners, admins and the members you share it with will see it.",
    )
    text_split = forms.ChoiceField(
        choices=TEXT_SPLIT_CHOICES,
        initial=TextSplit.PARAGRAPHS.value,
        required=False,
        label="Plain text files",
        help_text="How a .txt or .md file is cut into rows for continued pretraining.",
    )


class DatasetEditForm(forms.Form):
    name = forms.CharField(max_length=120)
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    restricted = forms.BooleanField(
        required=False, label="Restrict to named members", help_text="Owners and admins only can change this."
    )


class VersionUploadForm(forms.Form):
    file = forms.FileField(help_text="The corrected file becomes the next version.")
    text_split = forms.ChoiceField(
        choices=TEXT_SPLIT_CHOICES, initial=TextSplit.PARAGRAPHS.value, required=False, label="Plain text files"
    )


class MappingForm(forms.Form):
    """Which column holds what, for a file whose layout validation could not settle on its own."""

    kind = forms.ChoiceField(choices=[(k.value, KIND_LABELS[k]) for k in Kind])

    def __init__(self, *args: Any, report: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        columns: list[str] = list(report.get("columns") or [])
        guess: dict[str, Any] = report.get("guess") or {}
        # A second try starts from the mapping tried last (the report of that validation has no guess).
        suggested: dict[str, str] = guess.get("mapping") or report.get("mapping") or {}
        candidates = guess.get("candidates") or ([report["kind"]] if report.get("kind") else [])
        if candidates:
            self.fields["kind"].initial = candidates[0]
        choices = [("", "—"), *((column, column) for column in columns)]
        for field in sorted({f for fields in KIND_FIELDS.values() for f in fields}):
            # data-kinds: the kinds that use this column; js/mapping-form.js shows only the chosen kind's.
            kinds = " ".join(kind for kind, fields in KIND_FIELDS.items() if field in fields)
            helps = {FIELD_HELP[kind][field] for kind in KIND_FIELDS if field in FIELD_HELP[kind]}
            self.fields[f"column_{field}"] = forms.ChoiceField(
                choices=choices,
                required=False,
                label=f"Column for “{field}”",
                initial=suggested.get(field, ""),
                help_text=" / ".join(sorted(helps)),
                widget=forms.Select(attrs={"data-kinds": kinds}),
            )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind")
        if kind:
            missing = [
                spec.name for spec in FIELDS[Kind(kind)] if spec.required and not data.get(f"column_{spec.name}")
            ]
            if missing:
                raise forms.ValidationError(f"A {kind} dataset needs a column for: {', '.join(missing)}.")
            errors = check_mapping(Kind(kind), self._chosen(kind, data))
            if errors:
                raise forms.ValidationError(errors)
        return data

    @staticmethod
    def _chosen(kind: str, data: dict[str, Any]) -> dict[str, str]:
        """The fields of ``kind`` that have a column chosen (optional ones may stay empty)."""
        return {f: data[f"column_{f}"] for f in KIND_FIELDS[kind] if data.get(f"column_{f}")}

    def mapping(self) -> dict[str, Any]:
        kind = self.cleaned_data["kind"]
        return {"kind": kind, "mapping": self._chosen(kind, self.cleaned_data)}
