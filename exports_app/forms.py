"""The export form on a model version's page, and the team's Hub token form."""

from __future__ import annotations

from django import forms

from exports_app.models import ModelExport


class ExportForm(forms.Form):
    format = forms.ChoiceField(choices=ModelExport.Format.choices)
    quantization = forms.ChoiceField(
        choices=ModelExport.Quantization.choices, required=False,
        help_text="GGUF and Ollama only: F16 or BF16 keep the weights; Q8_0 is about half their size.",
    )  # fmt: skip
    hub_repo = forms.CharField(
        max_length=200, required=False, label="Push to Hub repository",
        help_text="Optional, owner/name: the files are pushed there with the team's token.",
    )  # fmt: skip
    hub_private = forms.BooleanField(required=False, initial=True, label="Private repository")


class HubTokenForm(forms.Form):
    token = forms.CharField(
        max_length=400, required=False, strip=True, widget=forms.PasswordInput(render_value=False),
        help_text="A Hugging Face token with write access. Stored encrypted; never shown again. Empty keeps it.",
    )  # fmt: skip
    remove = forms.BooleanField(required=False, label="Remove the saved token")


class ApprovalSettingForm(forms.Form):
    require_approval = forms.BooleanField(
        required=False, label="Exports need approval",
        help_text="Every export waits until an owner or admin other than the person who asked approves it.",
    )  # fmt: skip


class DecisionForm(forms.Form):
    reason = forms.CharField(max_length=500, required=False)
