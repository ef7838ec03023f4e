"""Forms for the accounts pages; each field says what is wrong and how to fix it."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.db.models import QuerySet

from accounts.models import Membership
from accounts.roles import Role
from accounts.services import MAX_ACCEPTABLE_USE_CHARS, MAX_KEY_MAX_TOKENS, MAX_KEY_REQUESTS_PER_MINUTE

User = get_user_model()


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="Used for password resets.")

    class Meta:
        model = User
        fields = ("username", "email")
        field_classes = UserCreationForm.Meta.field_classes  # type: ignore[attr-defined]

    def clean_email(self) -> str:
        email: str = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account already uses this e-mail; log in or reset its password.")
        return email


class TeamForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="Shown in the navigation, e.g. “Support bots”.")
    slug = forms.SlugField(
        max_length=40,
        label="Address",
        help_text="Lowercase letters, digits and hyphens; the team's pages live at /t/<address>/.",
    )


class RenameTeamForm(forms.Form):
    name = forms.CharField(max_length=80)
    gpu_hour_price = forms.DecimalField(
        label="Price per GPU-hour",
        required=False,
        min_value=0,
        max_digits=8,
        decimal_places=2,
        help_text="Used for the cost estimate before a fine-tune is launched; leave empty to show no cost.",
    )
    currency = forms.RegexField(
        regex=r"^[A-Z]{3}$",
        max_length=3,
        initial="USD",
        help_text="Three capital letters (ISO 4217), e.g. USD or EUR.",
        error_messages={"invalid": "Use a three-letter currency code such as USD or EUR."},
    )
    prompt_retention_days = forms.IntegerField(
        label="Keep playground prompts (days)",
        required=False,
        min_value=1,
        max_value=3650,
        help_text="Leave empty to never store playground and arena prompts (the default). Saved comparisons "
        "and arena votes are kept regardless: their authors chose to keep them.",
    )
    acceptable_use_policy = forms.CharField(
        label="Acceptable-use policy",
        required=False,
        max_length=MAX_ACCEPTABLE_USE_CHARS,
        widget=forms.Textarea(attrs={"rows": 8}),
        help_text="Markdown. Whoever creates a team API key must accept it, and model cards show it. Changing it "
        "makes a new revision: existing keys keep the one they accepted. Leave empty for no policy.",
    )


class InvitationForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)
    email = forms.EmailField(required=False, help_text="Optional: a note of who the link is for.")

    def __init__(self, *args: Any, allowed_roles: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if allowed_roles is not None:
            role_field = self.fields["role"]
            assert isinstance(role_field, forms.ChoiceField)
            role_field.choices = [(v, label) for v, label in Role.choices if v in allowed_roles]


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="Where the token will be used, e.g. “laptop CLI”.")


class DeploymentChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.name} ({obj.model_version})"


class TeamAPIKeyForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="What will use the key, e.g. “nightly eval job”.")
    role = forms.ChoiceField(choices=[(Role.MEMBER, "Member"), (Role.VIEWER, "Viewer")], initial=Role.VIEWER)
    requests_per_minute = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_KEY_REQUESTS_PER_MINUTE,
        label="Requests per minute",
        help_text="On the OpenAI-compatible API (/v1); more get 429. Empty: the studio's default.",
    )
    max_tokens = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_KEY_MAX_TOKENS,
        label="Max tokens per request",
        help_text="The most new tokens one /v1 request may ask for; more get 400. Empty: the studio's default.",
    )
    deployments = DeploymentChoiceField(
        queryset=None,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Deployments it may call",
        help_text="Change this later on each deployment's page.",
    )
    accept_acceptable_use = forms.BooleanField(
        required=False,
        label="I accept the team's acceptable-use policy (above) for this key",
        help_text="Required while the team has a policy: the key records which revision you accepted.",
    )

    def __init__(
        self,
        *args: Any,
        deployments: QuerySet[Any] | None = None,
        acceptable_use_revision: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields["requests_per_minute"].initial = settings.API_KEY_REQUESTS_PER_MINUTE
        self.fields["max_tokens"].initial = settings.API_KEY_MAX_TOKENS
        if acceptable_use_revision is None:
            del self.fields["accept_acceptable_use"]  # the team has no policy to accept
        else:
            accept = self.fields["accept_acceptable_use"]
            accept.label = f"I accept the team's acceptable-use policy (revision {acceptable_use_revision}, above)"
        if deployments is None or not deployments.exists():
            del self.fields["deployments"]  # nothing to choose (yet)
        else:
            deployment_field = self.fields["deployments"]
            assert isinstance(deployment_field, DeploymentChoiceField)
            deployment_field.queryset = deployments


class MemberChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.user.get_username()} ({obj.role})"


class ShareForm(forms.Form):
    member = MemberChoiceField(queryset=Membership.objects.none(), empty_label=None)
    level = forms.ChoiceField(choices=[])

    def __init__(self, *args: Any, members: Any, levels: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        member_field = self.fields["member"]
        level_field = self.fields["level"]
        assert isinstance(member_field, MemberChoiceField) and isinstance(level_field, forms.ChoiceField)
        member_field.queryset = members
        level_field.choices = [(level, level.title()) for level in levels]


class AuditFilterForm(forms.Form):
    action = forms.CharField(required=False, max_length=60)
    actor = forms.CharField(required=False, max_length=150)
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
