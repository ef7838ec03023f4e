"""The forms that define a tool: one per kind, sharing what the model sees (name, description, arguments); and the
form that registers an MCP server, whose tools are imported rather than written (their edit form keeps only what the
team decides: the name, the risk and the rate limit).

A form turns text into the values ``tools_app.services`` takes (``definition()`` and ``secret()``); the service
checks what they mean. Secret fields are never rendered back, not even after a validation error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django import forms

from accounts.roles import Role
from tools_app import definitions
from tools_app.definitions import (
    HTTP_MAX_RESPONSE_BYTES,
    HTTP_METHODS,
    HTTP_TIMEOUT_S,
    MCP_MAX_RESPONSE_BYTES,
    MCP_TIMEOUT_S,
    NO_PARAMETERS,
    RATE_LIMIT_PER_MINUTE,
    SQL_MAX_ROWS,
    SQL_TIMEOUT_MS,
)
from tools_app.models import DESCRIPTION_MAX_LENGTH, Tool, ToolGrant

EXAMPLE_SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"order_id": {"type": "string", "description": "The order number, e.g. A-1042"}},
        "required": ["order_id"],
        "additionalProperties": False,
    },
    indent=2,
)


class SecretTextarea(forms.Textarea):
    """A textarea that never renders its value: what was typed into it is not sent back in the page."""

    def format_value(self, value: Any) -> None:
        return None


def _bounded(bounds: tuple[int, int, int], label: str, help_text: str) -> forms.IntegerField:
    low, high, default = bounds
    return forms.IntegerField(min_value=low, max_value=high, initial=default, label=label, help_text=help_text)


def _reject_constant(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


def header_lines(text: str) -> dict[str, str]:
    """Secret headers typed one per line as ``Name: value``; a malformed line is named by number, never quoted."""
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            # The line may be a bare token: say where it is, never what it says.
            raise forms.ValidationError(f"Line {number} is not “Name: value”: write one header per line.")
        headers[name.strip()] = value.strip()
    return headers


class ToolForm(forms.Form):
    """What every kind of tool has: what the model sees of it, its risk and its rate limit."""

    name = forms.CharField(
        max_length=64,
        help_text="The function name the model calls: 1–64 letters, digits, underscores or hyphens, starting with a "
        "letter or an underscore (e.g. lookup_order). Unique in the team, ignoring case.",
    )
    description = forms.CharField(
        max_length=DESCRIPTION_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Sent to the model with every request that may use the tool: it picks tools and fills their "
        "arguments from this text alone. Say what the tool does, when to use it and what it returns. Every team "
        f"member can read it (at most {DESCRIPTION_MAX_LENGTH:,} characters).",
    )
    risk = forms.ChoiceField(
        choices=Tool.Risk.choices,
        help_text="What one call can do. Read: only looks things up. Write: changes something that can be changed "
        "back (creates a ticket). Destructive: deletes, pays or cannot be undone. Grants and approvals key off it.",
    )
    parameters = forms.CharField(
        required=False,
        label="Parameters (JSON Schema)",
        widget=forms.Textarea(
            attrs={"rows": 10, "class": "mono", "spellcheck": "false", "placeholder": EXAMPLE_SCHEMA}
        ),
        help_text="The arguments the model supplies, as a JSON Schema of type object; the model sees it, and calls "
        "are checked against it. Give each property a type and a description. Leave empty for a tool that takes "
        'no arguments. Example: {"type": "object", "properties": {"order_id": {"type": "string"}}, '
        '"required": ["order_id"]}.',
    )
    rate_limit_per_minute = _bounded(
        RATE_LIMIT_PER_MINUTE,
        "Calls per minute",
        "The most calls of this tool per minute, across all of the team's deployments; calls beyond it are refused "
        "and the model is told to wait.",
    )

    def clean_parameters(self) -> dict[str, Any]:
        text = self.cleaned_data["parameters"].strip()
        if not text:
            return dict(NO_PARAMETERS)
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(
                f"This is not JSON: {error.msg} at line {error.lineno}, column {error.colno}."
            ) from None
        except (ValueError, RecursionError) as error:  # NaN, a number too long to read, nesting too deep
            raise forms.ValidationError(f"This JSON cannot be used: {error}.") from None
        return value  # what it means is the service's to check

    def definition(self) -> dict[str, Any]:
        """The cleaned fields as ``services.create_tool`` / ``update_tool`` take them."""
        data = self.cleaned_data
        return {
            "name": data["name"],
            "description": data["description"],
            "risk": data["risk"],
            "rate_limit_per_minute": data["rate_limit_per_minute"],
            "parameters": data["parameters"],
            "config": self.config(),
        }

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def secret(self) -> dict[str, str] | str | None:
        raise NotImplementedError

    def secret_removed(self) -> bool:
        """Whether the admin ticked the removal of the saved secret (offered on an edit when one is saved)."""
        return bool(self.cleaned_data.get("remove_secret"))

    def _offer_removal(self, tool: Tool | None, field: str, what: str) -> None:
        """On an edit, say what is saved (never its value) and offer to remove it; on a creation, no removal."""
        if tool is not None and tool.has_secret:
            self.fields[field].help_text = f"{what} Leave empty to keep it. " + self.fields[field].help_text
        else:
            del self.fields["remove_secret"]


class HttpToolForm(ToolForm):
    """An HTTP API: one request per call, built from a URL template and the model's arguments."""

    method = forms.ChoiceField(choices=[(method, method) for method in HTTP_METHODS], label="HTTP method")
    url = forms.CharField(
        max_length=definitions.URL_MAX_LENGTH,
        label="URL",
        widget=forms.TextInput(attrs={"placeholder": "https://api.example.com/orders/{order_id}", "class": "mono"}),
        help_text="http or https, with {argument} placeholders in the path only (each a required property of the "
        "schema; its value is percent-encoded). The host is fixed here: localhost and internal IP addresses are "
        "refused unless an operator allowed them (ATELIER_TOOL_ALLOWED_HOSTS), and every call resolves the host "
        "again and refuses internal addresses and redirects to other hosts. Never put credentials in the URL: every "
        "member sees it; use secret headers.",
    )
    query_args = forms.CharField(
        required=False,
        max_length=2000,
        label="Query-string arguments",
        help_text="Properties sent as ?name=value, separated by commas (e.g. status, limit); ones the model "
        "leaves out are not sent.",
    )
    body_args = forms.CharField(
        required=False,
        max_length=2000,
        label="JSON body arguments",
        help_text="Properties sent as one JSON object in the body (POST, PUT and PATCH only), separated by commas. "
        "Every property of the schema goes to exactly one place: the path, the query string or the body.",
    )
    result_path = forms.CharField(
        required=False,
        max_length=definitions.RESULT_PATH_MAX_LENGTH,
        label="Result path",
        help_text="Optional: in a JSON answer, the part the model gets, as keys and list positions joined by dots "
        "(e.g. data.items or results.0.summary). Empty: the whole answer, as text.",
    )
    timeout_s = _bounded(
        HTTP_TIMEOUT_S, "Timeout (seconds)", "The whole call, redirects included; the model is told it timed out."
    )
    max_response_bytes = _bounded(
        HTTP_MAX_RESPONSE_BYTES,
        "Response size cap (bytes)",
        "Reading stops at this size and the call fails: what the model reads costs context (100,000 bytes is about "
        "25,000 tokens).",
    )
    secret_headers = forms.CharField(
        required=False,
        widget=SecretTextarea(attrs={"rows": 3, "class": "mono", "autocomplete": "off", "spellcheck": "false"}),
        label="Secret headers",
        help_text="One per line, as Name: value (e.g. Authorization: Bearer …). Encrypted at rest, sent with every "
        "call, never shown again and never to the model; pages show only the header names. Entering any replaces "
        "all of the saved ones.",
    )
    remove_secret = forms.BooleanField(required=False, label="Remove the secret headers")

    field_order = (
        "name", "description", "risk", "method", "url", "parameters", "query_args", "body_args", "result_path",
        "timeout_s", "max_response_bytes", "rate_limit_per_minute", "secret_headers", "remove_secret",
    )  # fmt: skip

    def __init__(self, *args: Any, tool: Tool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = ", ".join(tool.secret_header_names) if tool is not None else ""
        self._offer_removal(tool, "secret_headers", f"Saved: {names}.")

    def clean_secret_headers(self) -> dict[str, str]:
        return header_lines(self.cleaned_data["secret_headers"])

    def config(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {key: data[key] for key in ("method", "url", "query_args", "body_args", "result_path", "timeout_s",
                                           "max_response_bytes")}  # fmt: skip

    def secret(self) -> dict[str, str] | None:
        return self.cleaned_data["secret_headers"] or None


class SqlToolForm(ToolForm):
    """A read-only SQL query on the team's own PostgreSQL database."""

    mode = forms.ChoiceField(
        choices=[
            ("fixed", "Fixed query: you write the SELECT, the model supplies its arguments (preferred)"),
            ("free", "Free SELECT: the model writes the statement"),
        ],
        initial="fixed",
        widget=forms.RadioSelect,
        help_text="Every query runs in a read-only transaction, after a parser check (one SELECT, no writes, no "
        "functions that reach files or other sessions), under the timeout and the row cap. In free mode the "
        "parameters schema is fixed (one argument, sql) and the parser and the database role are the only guards; "
        "describe the tables and columns the model may query in the description, since that is all it knows of them.",
    )
    query = forms.CharField(
        required=False,
        max_length=definitions.QUERY_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 6, "class": "mono", "spellcheck": "false"}),
        label="Query (fixed mode)",
        help_text="One SELECT with each argument written %(name)s, a property of the schema (e.g. SELECT status, "
        "total FROM orders WHERE id = %(order_id)s). Arguments are bound by PostgreSQL, never pasted into the text; "
        "write a literal % as %%. Leave empty in free mode.",
    )
    timeout_ms = _bounded(
        SQL_TIMEOUT_MS, "Timeout (milliseconds)", "PostgreSQL cancels the statement after this (statement_timeout)."
    )
    max_rows = _bounded(SQL_MAX_ROWS, "Row cap", "The most rows the model gets; it is told when there were more.")
    dsn = forms.CharField(
        required=False,
        max_length=2000,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        label="Database DSN",
        help_text="postgresql://role:password@host:5432/dbname, encrypted at rest and never shown again. Use a role "
        "that holds only CONNECT and SELECT on what the tool may read: it is the guard that holds if the others miss "
        "something.",
    )
    remove_secret = forms.BooleanField(
        required=False, label="Remove the DSN", help_text="The tool's calls fail until a new DSN is entered."
    )

    field_order = (
        "name", "description", "risk", "mode", "query", "parameters", "timeout_ms", "max_rows",
        "rate_limit_per_minute", "dsn", "remove_secret",
    )  # fmt: skip

    def __init__(self, *args: Any, tool: Tool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._offer_removal(tool, "dsn", "A DSN is saved.")

    def config(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {key: data[key] for key in ("mode", "query", "timeout_ms", "max_rows")}

    def secret(self) -> str | None:
        return self.cleaned_data["dsn"].strip() or None


class McpToolForm(forms.Form):
    """A tool imported from an MCP server: its description and schema are the server's (a new import updates
    them); the team decides its name, its risk and its rate limit."""

    name = ToolForm.base_fields["name"]
    risk = forms.ChoiceField(
        choices=Tool.Risk.choices,
        help_text="What one call can do; grants and approvals key off it. The import set it from the server's hints "
        "(read when it says readOnlyHint, destructive when it says destructiveHint, else write): hints a server "
        "chooses itself, so check them against what the tool really does.",
    )
    rate_limit_per_minute = ToolForm.base_fields["rate_limit_per_minute"]

    def __init__(self, *args: Any, tool: Tool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tool = tool

    def definition(self) -> dict[str, Any]:
        """The cleaned fields, with what the server gave, as ``services.update_tool`` takes them."""
        data = self.cleaned_data
        return {
            "name": data["name"],
            "description": self.tool.description,
            "risk": data["risk"],
            "rate_limit_per_minute": data["rate_limit_per_minute"],
            "parameters": self.tool.parameters,
            "config": dict(self.tool.config),
        }

    def secret(self) -> None:
        return None  # the server's secret headers serve every call of its tools

    def secret_removed(self) -> bool:
        return False


FORMS: dict[str, type[HttpToolForm] | type[SqlToolForm]] = {Tool.Kind.HTTP: HttpToolForm, Tool.Kind.SQL: SqlToolForm}


class McpServerForm(forms.Form):
    """An MCP server the team's tools can be imported from."""

    name = forms.CharField(
        max_length=definitions.MCP_SERVER_NAME_MAX_LENGTH,
        help_text="How the team knows the server (e.g. crm); unique in the team, ignoring case.",
    )
    url = forms.CharField(
        max_length=definitions.URL_MAX_LENGTH,
        label="Streamable-HTTP URL",
        widget=forms.TextInput(attrs={"placeholder": "https://mcp.example.com/mcp", "class": "mono"}),
        help_text="The server's MCP endpoint, http or https. localhost and internal IP addresses are refused unless "
        "an operator allowed them (ATELIER_TOOL_ALLOWED_HOSTS); every connection resolves the host again, refuses "
        "internal addresses and never follows a redirect to another host. Every member sees the URL: put "
        "credentials in secret headers.",
    )
    name_prefix = forms.CharField(
        required=False,
        max_length=24,
        label="Tool name prefix",
        help_text="Optional: put before the name of each tool imported from this server (e.g. crm_ makes search "
        "crm_search), so it cannot clash with the team's other tools.",
    )
    timeout_s = _bounded(
        MCP_TIMEOUT_S, "Timeout (seconds)", "One exchange with the server: connecting, then the listing or the call."
    )
    max_response_bytes = _bounded(
        MCP_MAX_RESPONSE_BYTES,
        "Response size cap (bytes)",
        "The most bytes the server's answers to one call may add up to; past it the call fails.",
    )
    secret_headers = forms.CharField(
        required=False,
        widget=SecretTextarea(attrs={"rows": 3, "class": "mono", "autocomplete": "off", "spellcheck": "false"}),
        label="Secret headers",
        help_text="One per line, as Name: value (e.g. Authorization: Bearer …). Encrypted at rest, sent with every "
        "request to the server, never shown again and never to the model; pages show only the header names.",
    )

    def clean_secret_headers(self) -> dict[str, str]:
        return header_lines(self.cleaned_data["secret_headers"])

    def settings(self) -> dict[str, Any]:
        """The cleaned fields as ``services.register_mcp_server`` takes them."""
        data = self.cleaned_data
        return {key: data[key] for key in ("name", "url", "name_prefix", "timeout_s", "max_response_bytes")} | {
            "secret_headers": data["secret_headers"] or None
        }


def initial_for(tool: Tool) -> dict[str, Any]:
    """A tool's saved definition as form values (secrets left out: they are never shown)."""
    config = dict(tool.config)
    for key in ("query_args", "body_args"):
        if key in config:
            config[key] = ", ".join(config[key])
    return {
        "name": tool.name,
        "description": tool.description,
        "risk": tool.risk,
        "rate_limit_per_minute": tool.rate_limit_per_minute,
        "parameters": json.dumps(tool.parameters, indent=2),
        **config,
    }


# --- grants ---------------------------------------------------------------------------------------

EXAMPLE_CONSTRAINTS = '{"order_id": {"pattern": "A-[0-9]{4}"}, "amount": {"minimum": 0, "maximum": 1000}}'


class KeyChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.name} ({obj.display_prefix})"


class GrantForm(forms.Form):
    """Which deployment may call a tool, triggered by whom, within which argument bounds, approved when."""

    deployment: forms.ModelChoiceField[Any] = forms.ModelChoiceField(
        queryset=None,
        empty_label=None,
        help_text="The deployment whose model is offered this tool. A deployment holds at most one grant of a tool.",
    )
    roles = forms.MultipleChoiceField(
        choices=Role.choices,
        required=False,
        initial=[Role.OWNER, Role.ADMIN, Role.MEMBER],  # as a grant made through the API: every role but viewer
        widget=forms.CheckboxSelectMultiple,
        label="Roles that may trigger it",
        help_text="Members with these roles may let the model call the tool from the playground. None ticked: no one.",
    )
    api_keys = KeyChoiceField(
        queryset=None,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="API keys that may trigger it",
        help_text="Requests to /v1 with these team keys may let the model call the tool; each key must already be "
        "allowed to call the deployment. None ticked: no /v1 request may.",
    )
    argument_constraints = forms.CharField(
        required=False,
        label="Argument constraints (JSON)",
        widget=forms.Textarea(
            attrs={"rows": 5, "class": "mono", "spellcheck": "false", "placeholder": EXAMPLE_CONSTRAINTS}
        ),
        help_text="Narrow what the model may pass, per argument of the tool's schema: enum (allowed values), "
        "pattern (a regular expression the whole string must match), minimum and maximum (numbers). Calls outside "
        f"them are refused. Example: {EXAMPLE_CONSTRAINTS}. Leave empty for none.",
    )
    approval = forms.ChoiceField(
        choices=ToolGrant.Approval.choices,
        initial=ToolGrant.Approval.BY_RISK,
        widget=forms.RadioSelect,
        label="Approval",
        help_text="Whether a person must approve each call before it runs. By risk: write and destructive tools' "
        "calls wait for approval, read tools' calls run at once.",
    )

    def __init__(self, *args: Any, deployments: Any, api_keys: Any, editing: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["deployment"].queryset = deployments  # type: ignore[attr-defined]
        self.fields["api_keys"].queryset = api_keys  # type: ignore[attr-defined]
        if editing:
            del self.fields["deployment"]

    def clean_argument_constraints(self) -> Any:
        text = self.cleaned_data["argument_constraints"].strip()
        if not text:
            return {}
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(
                f"This is not JSON: {error.msg} at line {error.lineno}, column {error.colno}. Example: "
                f"{EXAMPLE_CONSTRAINTS}."
            ) from None
        except (ValueError, RecursionError) as error:
            raise forms.ValidationError(f"This JSON cannot be used: {error}.") from None

    def settings(self) -> dict[str, Any]:
        """The cleaned fields as ``services.grant_tool`` / ``update_grant`` take them (the deployment apart)."""
        data = self.cleaned_data
        return {
            "roles": data["roles"],
            "api_keys": list(data["api_keys"]),
            "argument_constraints": data["argument_constraints"],
            "approval": data["approval"],
        }


def grant_initial(grant: ToolGrant, key_ids: Iterable[int]) -> dict[str, Any]:
    """A grant's settings as the edit form shows them (``key_ids``: its keys)."""
    constraints = json.dumps(grant.argument_constraints, indent=2) if grant.argument_constraints else ""
    return {
        "roles": grant.roles,
        "api_keys": list(key_ids),
        "argument_constraints": constraints,
        "approval": grant.approval,
    }
