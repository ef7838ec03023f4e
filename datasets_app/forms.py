"""Forms for the dataset pages."""

from __future__ import annotations

from typing import Any

from django import forms

from datasets_app.engine.rows import Kind

# The normalized fields each kind needs, in the order the mapping form shows them.
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    Kind.CHAT: ("messages",),
    Kind.INSTRUCTION: ("prompt", "completion"),
    Kind.PREFERENCE: ("prompt", "chosen", "rejected"),
    Kind.TEXT: ("text",),
}
KIND_LABELS = {
    Kind.CHAT: "Chat (a list of messages with roles)",
    Kind.INSTRUCTION: "Instruction (prompt → completion)",
    Kind.PREFERENCE: "Preference (prompt, chosen, rejected) for DPO",
    Kind.TEXT: "Raw text (continued pretraining)",
}


class UploadForm(forms.Form):
    file = forms.FileField(help_text="JSON Lines, JSON, CSV or Parquet.")
    name = forms.CharField(max_length=120, required=False, help_text="Defaults to the file's name.")
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    restricted = forms.BooleanField(
        required=False,
        label="Restrict to named members",
        help_text="Only owners, admins and the members you share it with will see it.",
    )


class DatasetEditForm(forms.Form):
    name = forms.CharField(max_length=120)
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    restricted = forms.BooleanField(
        required=False, label="Restrict to named members", help_text="Owners and admins only can change this."
    )


class VersionUploadForm(forms.Form):
    file = forms.FileField(help_text="The corrected file becomes the next version.")


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
            self.fields[f"column_{field}"] = forms.ChoiceField(
                choices=choices,
                required=False,
                label=f"Column for “{field}”",
                initial=suggested.get(field, ""),
                widget=forms.Select(attrs={"data-kinds": kinds}),
            )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind")
        if kind:
            missing = [f for f in KIND_FIELDS[kind] if not data.get(f"column_{f}")]
            if missing:
                raise forms.ValidationError(f"A {kind} dataset needs a column for: {', '.join(missing)}.")
        return data

    def mapping(self) -> dict[str, Any]:
        kind = self.cleaned_data["kind"]
        return {"kind": kind, "mapping": {f: self.cleaned_data[f"column_{f}"] for f in KIND_FIELDS[kind]}}
