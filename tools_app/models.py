"""Tools: what a team's deployed models may call (an HTTP API, a read-only SQL query, a tool of an MCP server).

A tool is defined once per team by its owners and admins; deployments are granted tools later. What the model
sees of a tool is its name, description and the JSON Schema of its arguments (``as_openai_tool``); everything
else (where the request goes, which SELECT runs, the secret it carries) stays on the studio's side.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.models import TeamAPIKey
from accounts.roles import Role
from accounts.tenancy import TeamOwnedModel
from tools_app.fields import AuthoredJSONField

TOOL_NAME_VALIDATOR = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$",
    "Use 1–64 letters, digits, underscores or hyphens, starting with a letter or an underscore (e.g. lookup_order).",
)
DESCRIPTION_MAX_LENGTH = 1024


class McpServer(TeamOwnedModel):
    """A team's MCP server, reached over streamable HTTP: where its imported tools (``Tool`` of kind mcp) are called.

    Its secret headers (a Fernet token of ``{name: value}``, ``tools_app.secrets``) go with every request to it and
    are never shown again; ``secret_header_names`` keeps their names for the pages. ``name_prefix`` is put before
    each imported tool's name, so two servers offering a ``search`` can both be imported.
    """

    name = models.CharField(max_length=64)
    url = models.CharField(max_length=2000)
    name_prefix = models.CharField(max_length=24, blank=True)
    timeout_s = models.PositiveIntegerField(default=10)
    max_response_bytes = models.PositiveIntegerField(default=100_000)
    secret = models.BinaryField(default=b"", blank=True, editable=False)
    secret_header_names = models.JSONField(default=list, blank=True)
    imported_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["name"]
        constraints: ClassVar = [
            models.UniqueConstraint("team", Lower("name"), name="one_mcp_server_name_per_team"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def has_secret(self) -> bool:
        return len(self.secret or b"") > 0

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "?"


class Tool(TeamOwnedModel):
    """A tool the team's models may be granted: its name and argument schema for the model, its settings for the
    studio, and its secret (encrypted, ``tools_app.secrets``)."""

    class Kind(models.TextChoices):
        HTTP = "http", "HTTP API"
        SQL = "sql", "SQL query"
        MCP = "mcp", "MCP server tool"

    class Risk(models.TextChoices):
        READ = "read", "Read"
        WRITE = "write", "Write"
        DESTRUCTIVE = "destructive", "Destructive"

    name = models.CharField(max_length=64, validators=[TOOL_NAME_VALIDATOR])
    description = models.TextField(max_length=DESCRIPTION_MAX_LENGTH)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    risk = models.CharField(max_length=16, choices=Risk.choices, default=Risk.READ)
    rate_limit_per_minute = models.PositiveIntegerField(default=30)
    # A JSON Schema of ``type: object``: the arguments the model supplies (checked by ``tools_app.definitions``), kept
    # as written: the model is shown it as text (``as_openai_tool``; ``tools_app.fields``).
    parameters = AuthoredJSONField(default=dict)
    # Non-secret settings, by kind (``tools_app.definitions``). http: method, url (``{arg}`` placeholders in the
    # path), query_args, body_args, timeout_s, max_response_bytes, result_path, secret_header_names.
    # sql: mode ("fixed" or "free"), query (the fixed template, ``%(arg)s`` arguments), timeout_ms, max_rows.
    # mcp: remote_name (the tool's name on its server), annotations (the server's hints: readOnlyHint…).
    config = models.JSONField(default=dict)
    # mcp: the server the tool was imported from (its URL, limits and secret headers serve every call).
    mcp_server = models.ForeignKey(McpServer, on_delete=models.CASCADE, null=True, blank=True, related_name="tools")
    # Fernet token of the secret, or empty: http, a dict of secret headers; sql, the DSN. Never shown again.
    secret = models.BinaryField(default=b"", blank=True, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["name"]
        constraints: ClassVar = [
            # ``Lookup`` and ``lookup`` side by side would leave the model guessing: names differ by more than case.
            models.UniqueConstraint("team", Lower("name"), name="one_tool_name_per_team"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def has_secret(self) -> bool:
        return len(self.secret or b"") > 0

    @property
    def secret_header_names(self) -> list[str]:
        """The names (never the values) of an HTTP tool's secret headers."""
        return list(self.config.get("secret_header_names", [])) if self.has_secret else []

    @property
    def target_summary(self) -> str:
        """Where a call goes, in a few words: ``GET api.example.com``, ``fixed query``, ``free SELECT`` or
        ``MCP crm: search``."""
        if self.kind == Tool.Kind.HTTP:
            host = urlsplit(self.config.get("url", "")).hostname or "?"
            return f"{self.config.get('method', 'GET')} {host}"
        if self.kind == Tool.Kind.SQL:
            return "free SELECT" if self.config.get("mode") == "free" else "fixed query"
        if self.kind == Tool.Kind.MCP and self.mcp_server is not None:
            return f"MCP {self.mcp_server.name}: {self.config.get('remote_name', '?')}"
        return ""

    def as_openai_tool(self) -> dict[str, Any]:
        """What a model is shown of this tool, in the OpenAI ``tools`` format (nothing else reaches the model)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def _default_grant_roles() -> list[str]:
    return [Role.OWNER, Role.ADMIN, Role.MEMBER]


class ToolGrant(TeamOwnedModel):
    """One tool granted to one deployment: who may trigger it, within which argument bounds, and which calls wait
    for a person's approval. The rules are applied by ``tools_app.policy.decide``; the pages change them through
    ``tools_app.services`` (audited)."""

    class Approval(models.TextChoices):
        NEVER = "never", "Never"
        ALWAYS = "always", "Always"
        BY_RISK = "by_risk", "By risk (write and destructive calls)"

    deployment = models.ForeignKey("serving_app.Deployment", on_delete=models.CASCADE, related_name="+")
    tool = models.ForeignKey(Tool, on_delete=models.CASCADE, related_name="grants")
    # {argument: {"enum": [...], "pattern": "regex", "minimum": n, "maximum": n}}, checked by
    # ``tools_app.policy.check_constraints`` when saved; narrower than the tool's schema, never wider.
    argument_constraints = models.JSONField(default=dict, blank=True)
    # Team roles (``accounts.roles.Role`` values) that may trigger the tool from the playground.
    roles = models.JSONField(default=_default_grant_roles)
    # Team API keys that may trigger it through /v1; none means no key may.
    api_keys = models.ManyToManyField(TeamAPIKey, related_name="+", blank=True)
    approval = models.CharField(max_length=16, choices=Approval.choices, default=Approval.BY_RISK)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["tool__name"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["deployment", "tool"], name="one_grant_per_tool_and_deployment")
        ]

    def __str__(self) -> str:
        return f"{self.tool.name} → {self.deployment.name}"

    @property
    def argument_constraints_text(self) -> str:
        """The constraints as one line of JSON, for the pages."""
        return json.dumps(self.argument_constraints, ensure_ascii=False)


def _approval_expiry() -> datetime:
    return timezone.now() + timedelta(minutes=settings.TOOL_APPROVAL_TTL_MINUTES)


class ToolApproval(TeamOwnedModel):
    """One tool call waiting for (or given) a person's approval: bound to the exact call, usable once.

    ``binding`` is a SHA-256 of the tool, the deployment, the conversation and the exact arguments
    (``approval_binding``): the runtime recomputes it from the call it is about to make, so arguments changed after
    approval match nothing. Changed only through ``tools_app.services`` (audited); clients name it by ``public_id``.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"
        USED = "used", "Used"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tool = models.ForeignKey(Tool, on_delete=models.CASCADE, related_name="approvals")
    deployment = models.ForeignKey("serving_app.Deployment", on_delete=models.CASCADE, related_name="+")
    grant = models.ForeignKey(ToolGrant, on_delete=models.SET_NULL, null=True, blank=True, related_name="approvals")
    # The runtime's opaque id of the conversation the call belongs to.
    conversation = models.CharField(max_length=200, blank=True)
    # Exactly as the model gave them; the tool's secret never enters here.
    arguments = models.JSONField(default=dict)
    binding = models.CharField(max_length=64, editable=False)
    # Who asked: a member (the playground) or a team API key (/v1); exactly one.
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    requested_by_key = models.ForeignKey(TeamAPIKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    expires_at = models.DateTimeField(default=_approval_expiry)
    used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-created_at"]
        indexes: ClassVar = [models.Index(fields=["team", "status", "-created_at"], name="tool_approval_inbox")]

    def __str__(self) -> str:
        return f"{self.tool.name} call {self.public_id}"

    @property
    def arguments_text(self) -> str:
        """The arguments as indented JSON, for the pages (escaped by the template like any text)."""
        return json.dumps(self.arguments, indent=2, ensure_ascii=False, sort_keys=True)

    @property
    def requester_label(self) -> str:
        if self.requested_by_key_id is not None and self.requested_by_key is not None:
            return f"API key {self.requested_by_key.name} ({self.requested_by_key.display_prefix})"
        return self.requested_by.get_username() if self.requested_by is not None else "—"

    def is_expired(self, now: datetime | None = None) -> bool:
        return (now or timezone.now()) >= self.expires_at


class ToolResult(TeamOwnedModel):
    """What one call answered (the text the model read), kept only while the team's retention setting allows it
    (``Team.prompt_retention_days``: empty keeps none; older ones are deleted hourly by
    ``tools_app.tasks.purge_tool_results``). The audit trail is append-only and keeps that a call ran, never what
    it returned: ``event`` is the ``tool.call_executed`` or ``tool.call_failed`` event this result belongs to."""

    tool = models.ForeignKey(Tool, on_delete=models.CASCADE, related_name="+")
    event = models.OneToOneField("accounts.AuditEvent", on_delete=models.CASCADE, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering: ClassVar = ["-created_at"]

    def __str__(self) -> str:
        return f"result of {self.tool.name} ({self.created_at:%Y-%m-%d %H:%M})"


def approval_binding(*, tool_id: int, deployment_id: int, conversation: str, arguments: Any) -> str:
    """The hex SHA-256 that ties an approval to one exact call: tool, deployment, conversation and arguments, as
    canonical JSON (sorted keys, no spaces, UTF-8), so the same call always gives the same hash and any change in
    an argument gives another."""
    canonical = json.dumps(
        {"tool": tool_id, "deployment": deployment_id, "conversation": conversation, "arguments": arguments},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
