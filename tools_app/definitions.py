"""What a tool definition must hold, checked before it is saved.

The name the model calls, the JSON Schema of its arguments, and the settings of its kind: for HTTP, where the
request goes and where each argument travels; for SQL, which SELECT runs; for a tool imported from an MCP server,
its name there (``check_mcp_server`` checks the server itself). Every check raises one
``ValidationError`` keyed by the form field it is about (``url``, ``query``, ``parameters``…), each message saying
what to change, and reports every problem at once rather than the first.

Hosts are checked here as far as the definition shows them: a URL naming ``localhost`` or an internal IP literal is
refused unless an operator allowed it (``TOOL_ALLOWED_HOSTS``). A host *name* is resolved and checked again at every
call by the egress guard (``tools_app.sandbox.egress``), which is the check that counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import psycopg
from django.core.exceptions import ValidationError
from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for
from psycopg.conninfo import conninfo_to_dict

from tools_app.models import DESCRIPTION_MAX_LENGTH, TOOL_NAME_VALIDATOR, Tool
from tools_app.sandbox.egress import ip_literal, why_not_public
from tools_app.sandbox.sql import SqlRefused, check_fixed_query

# Bounds of the numbers a definition sets: (lowest, highest, default).
RATE_LIMIT_PER_MINUTE = (1, 10_000, 30)
HTTP_TIMEOUT_S = (1, 60, 10)
HTTP_MAX_RESPONSE_BYTES = (1_000, 2_000_000, 100_000)
SQL_TIMEOUT_MS = (100, 60_000, 5_000)
SQL_MAX_ROWS = (1, 1_000, 100)
MCP_TIMEOUT_S = (1, 60, 10)
MCP_MAX_RESPONSE_BYTES = (1_000, 2_000_000, 100_000)

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
SQL_MODES = ("fixed", "free")
URL_MAX_LENGTH = 2_000
QUERY_MAX_LENGTH = 20_000
PARAMETERS_MAX_BYTES = 16_000
SECRET_HEADERS_MAX_BYTES = 8_000
RESULT_PATH_MAX_LENGTH = 200
MCP_SERVER_NAME_MAX_LENGTH = 64
MCP_NAME_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,23}$")
REMOTE_NAME_MAX_LENGTH = 200

# What the model sends a free SELECT tool: the statement itself.
FREE_SELECT_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"sql": {"type": "string", "description": "One read-only PostgreSQL SELECT statement."}},
    "required": ["sql"],
    "additionalProperties": False,
}
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
ARGUMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESULT_PATH = re.compile(r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the HTTP client sets itself from the URL and the body: a tool may not override them.
RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
ALLOW_HINT = "An operator can allow this host by adding it to ATELIER_TOOL_ALLOWED_HOSTS."

Errors = dict[str, list[str]]


def check_definition(
    *,
    kind: str,
    name: str,
    description: str,
    risk: str,
    rate_limit_per_minute: int,
    parameters: Any,
    config: Mapping[str, Any],
    allowed_hosts: Collection[str] = (),
) -> dict[str, Any]:
    """The definition's fields, normalized (``name``, ``description``, ``risk``, ``rate_limit_per_minute``,
    ``parameters``, ``config``), or ``ValidationError`` listing every problem by field."""
    errors: Errors = {}
    name = name.strip()
    try:
        TOOL_NAME_VALIDATOR(name)
    except ValidationError as error:
        _add(errors, "name", *error.messages)
    description = description.strip()
    if not description:
        _add(errors, "description", "Describe what the tool does and when to use it: the model chooses tools by it.")
    elif len(description) > DESCRIPTION_MAX_LENGTH:
        _add(errors, "description", f"Use at most {DESCRIPTION_MAX_LENGTH} characters (this is {len(description)}).")
    if risk not in Tool.Risk.values:
        _add(errors, "risk", f"Choose one of: {', '.join(Tool.Risk.values)}.")
    _check_int(errors, "rate_limit_per_minute", rate_limit_per_minute, RATE_LIMIT_PER_MINUTE, "calls per minute")
    if kind == Tool.Kind.SQL and config.get("mode") == "free":
        parameters = FREE_SELECT_PARAMETERS  # the model writes the statement: its one argument is fixed
    schema = _check_parameters(errors, parameters)
    if kind == Tool.Kind.HTTP:
        config = _check_http(errors, config, schema, allowed_hosts)
    elif kind == Tool.Kind.SQL:
        config = _check_sql(errors, config, schema)
    elif kind == Tool.Kind.MCP:
        config = _check_mcp_tool(errors, config)
    else:
        _add(errors, "kind", f"Choose one of: {', '.join(Tool.Kind.values)}.")
    if errors:
        raise ValidationError(errors)
    return {
        "name": name,
        "description": description,
        "risk": risk,
        "rate_limit_per_minute": rate_limit_per_minute,
        "parameters": schema,
        "config": config,
    }


def check_secret_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """An HTTP tool's secret headers, checked (``ValidationError`` on ``secret_headers``; values never quoted)."""
    errors: Errors = {}
    seen: set[str] = set()
    for name, value in headers.items():
        if not HEADER_NAME.match(name):
            _add(errors, "secret_headers", f"“{name[:60]}” is not a header name: use letters, digits and hyphens.")
        elif name.lower() in RESERVED_HEADERS:
            _add(errors, "secret_headers", f"{name} is set by the studio from the URL and the body: remove it.")
        elif name.lower() in seen:
            _add(errors, "secret_headers", f"{name} is given twice: keep one line per header.")
        elif any(char in value for char in "\r\n\0") or not value.strip():
            _add(errors, "secret_headers", f"The value of {name} is empty or holds a line break: give it on one line.")
        seen.add(name.lower())
    if len(json.dumps(dict(headers))) > SECRET_HEADERS_MAX_BYTES:
        _add(errors, "secret_headers", f"Keep the secret headers under {SECRET_HEADERS_MAX_BYTES:,} bytes.")
    if errors:
        raise ValidationError(errors)
    return {name: value.strip() for name, value in headers.items()}


def check_mcp_server(
    *,
    name: str,
    url: str,
    name_prefix: str,
    timeout_s: Any,
    max_response_bytes: Any,
    allowed_hosts: Collection[str] = (),
) -> dict[str, Any]:
    """An MCP server's settings, normalized (``name``, ``url``, ``name_prefix``, ``timeout_s``,
    ``max_response_bytes``), or ``ValidationError`` listing every problem by field. Its URL is checked as an HTTP
    tool's is (no internal host unless an operator allowed it), with no placeholders."""
    errors: Errors = {}
    name, url, name_prefix = name.strip(), url.strip(), name_prefix.strip()
    if not name:
        _add(errors, "name", "Name the server, e.g. crm: the team sees it next to each of its tools.")
    elif any(ord(char) < 32 or ord(char) == 127 for char in name):
        _add(errors, "name", "Remove the control characters (line breaks, tabs, NUL) from the name.")
    elif len(name) > MCP_SERVER_NAME_MAX_LENGTH:
        _add(errors, "name", f"Use at most {MCP_SERVER_NAME_MAX_LENGTH} characters (this is {len(name)}).")
    if url:
        placeholders = _check_url(errors, url, allowed_hosts, example="e.g. https://mcp.example.com/mcp")
        if placeholders or "{" in url or "}" in url:
            _add(errors, "url", "An MCP server's URL is fixed: remove the {placeholders}.")
    else:
        _add(errors, "url", "Give the server's streamable-HTTP endpoint, e.g. https://mcp.example.com/mcp.")
    if name_prefix and not MCP_NAME_PREFIX.match(name_prefix):
        _add(errors, "name_prefix", "Use 1–24 letters, digits, underscores or hyphens, starting with a letter or an "
             "underscore (e.g. crm_), or leave it empty.")  # fmt: skip
    _check_int(errors, "timeout_s", timeout_s, MCP_TIMEOUT_S, "seconds")
    _check_int(errors, "max_response_bytes", max_response_bytes, MCP_MAX_RESPONSE_BYTES, "bytes")
    if errors:
        raise ValidationError(errors)
    return {
        "name": name,
        "url": url,
        "name_prefix": name_prefix,
        "timeout_s": timeout_s,
        "max_response_bytes": max_response_bytes,
    }


def imported_tool_name(name_prefix: str, remote_name: str) -> str:
    """The name an MCP server's tool ``remote_name`` gets in the team: the server's prefix, then its own name."""
    return f"{name_prefix}{remote_name}"


def check_dsn(dsn: str) -> str:
    """A SQL tool's DSN, checked to parse (``ValidationError`` on ``dsn``; the text is never quoted back)."""
    dsn = dsn.strip()
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error:
        # psycopg's message quotes the text, which may hold a password: say what is wrong without it.
        raise ValidationError(
            {
                "dsn": "This is not a PostgreSQL connection string: write postgresql://role:password@host:5432/dbname "
                "(or host=… dbname=… user=… password=…)."
            }
        ) from None
    return dsn


def internal_host_reason(host: str) -> str | None:
    """Why a URL's host is internal as written (``localhost``, an IP literal the egress guard would refuse), or None.

    A name is not resolved here: the egress guard resolves and checks it at every call.
    """
    name = host.removesuffix(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "a loopback name (localhost)"
    address = ip_literal(name)
    return None if address is None else why_not_public(address)


# --- the schema -----------------------------------------------------------------------------------


def _check_parameters(errors: Errors, parameters: Any) -> dict[str, Any] | None:
    """The arguments' schema, or None (after recording why) when it is unusable."""
    if not isinstance(parameters, dict):
        _add(errors, "parameters", 'Write a JSON object such as {"type": "object", "properties": {…}}.')
        return None
    text = json.dumps(parameters)
    if len(text) > PARAMETERS_MAX_BYTES:
        _add(errors, "parameters", f"Keep the schema under {PARAMETERS_MAX_BYTES:,} bytes (this is {len(text):,}).")
        return None
    if "\\u0000" in text:
        _add(errors, "parameters", r"Remove the NUL character (\u0000): the database cannot store it.")
        return None
    if parameters.get("type") != "object":
        _add(errors, "parameters", 'The top level needs "type": "object": a tool takes named arguments.')
        return None
    try:
        validator_for(parameters, default=Draft202012Validator).check_schema(parameters)
    except SchemaError as error:
        _add(errors, "parameters", f"This is not a valid JSON Schema: {error.message} (at {error.json_path}).")
        return None
    except RecursionError:
        _add(errors, "parameters", "The schema is nested too deeply: flatten it.")
        return None
    properties = parameters.get("properties", {})
    missing = [name for name in parameters.get("required", []) if name not in properties]
    if missing:
        _add(errors, "parameters", f"Required but not among the properties: {_names(missing)}. Add or unlist them.")
    return parameters


def _properties(schema: Mapping[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    return properties if isinstance(properties, dict) else {}


# --- HTTP -----------------------------------------------------------------------------------------


def _check_http(
    errors: Errors, config: Mapping[str, Any], schema: Mapping[str, Any] | None, allowed_hosts: Collection[str]
) -> dict[str, Any]:
    method = str(config.get("method", "")).upper()
    if method not in HTTP_METHODS:
        _add(errors, "method", f"Choose one of: {', '.join(HTTP_METHODS)}.")
    url = str(config.get("url", "")).strip()
    in_path = _check_url(errors, url, allowed_hosts)
    query_args, body_args = _name_list(config.get("query_args")), _name_list(config.get("body_args"))
    timeout_s, max_response_bytes = config.get("timeout_s"), config.get("max_response_bytes")
    _check_int(errors, "timeout_s", timeout_s, HTTP_TIMEOUT_S, "seconds")
    _check_int(errors, "max_response_bytes", max_response_bytes, HTTP_MAX_RESPONSE_BYTES, "bytes")
    result_path = str(config.get("result_path") or "").strip()
    if result_path and (len(result_path) > RESULT_PATH_MAX_LENGTH or not RESULT_PATH.match(result_path)):
        _add(errors, "result_path", "Write keys and list positions joined by dots, e.g. data.items.0.title.")
    if body_args and method in HTTP_METHODS and method not in METHODS_WITH_BODY:
        _add(errors, "body_args", f"A {method} request carries no body: send these in the query string, or choose "
             "POST, PUT or PATCH.")  # fmt: skip

    if schema is not None:
        _check_placement(errors, schema, in_path, query_args, body_args)
    return {
        "method": method,
        "url": url,
        "query_args": query_args,
        "body_args": body_args,
        "timeout_s": timeout_s,
        "max_response_bytes": max_response_bytes,
        "result_path": result_path,
    }


def _check_placement(
    errors: Errors, schema: Mapping[str, Any], in_path: list[str], query_args: list[str], body_args: list[str]
) -> None:
    """Every argument travels one way (path, query string or body), and every property of the schema travels."""
    properties, required = _properties(schema), set(schema.get("required", []))
    placed: dict[str, str] = {}
    for name in in_path:
        if name not in properties:
            _add(errors, "url", f"{{{name}}} is not a property of the parameters schema: add “{name}” to its "
                 "properties (and to required), or remove it from the URL.")  # fmt: skip
        elif name not in required:
            _add(errors, "url", f"{{{name}}} is in the URL path, so every call needs it: list “{name}” in the "
                 "schema's required.")  # fmt: skip
        placed.setdefault(name, "the URL path")
    for field, names, where in (("query_args", query_args, "the query string"), ("body_args", body_args, "the body")):
        for name in names:
            if name not in properties:
                _add(errors, field, f"“{name}” is not a property of the parameters schema: add it there, or remove "
                     "it here.")  # fmt: skip
            elif name in placed:
                _add(errors, field, f"“{name}” is already sent in {placed[name]}: send each argument one way.")
            placed.setdefault(name, where)
    unsent = [name for name in properties if name not in placed]
    if unsent:
        it = "them" if len(unsent) > 1 else "it"
        _add(errors, "parameters", f"The model would supply {_names(unsent)} but the request never sends {it}: put "
             f"each in the URL path as {{name}}, or list it under query-string or body arguments; or remove {it} "
             "from the schema.")  # fmt: skip


def _check_url(
    errors: Errors,
    url: str,
    allowed_hosts: Collection[str],
    example: str = "e.g. https://api.example.com/orders/{order_id}",
) -> list[str]:
    """Record what is wrong with an HTTP tool's URL template (or an MCP server's URL); return its path
    placeholders."""
    if not url:
        _add(errors, "url", f"Give the URL the tool calls, {example}.")
        return []
    if len(url) > URL_MAX_LENGTH:
        _add(errors, "url", f"Use at most {URL_MAX_LENGTH} characters.")
        return []
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 for char in url):
        _add(errors, "url", "Remove spaces and control characters (percent-encode them, e.g. %20).")
        return []
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        _add(errors, "url", f"This URL does not parse (check the brackets around an IPv6 address and the port), "
             f"{example}.")  # fmt: skip
        return []
    if parts.scheme.lower() not in ("http", "https"):
        _add(errors, "url", f"Use an http:// or https:// URL, {example}.")
        return []
    if "{" in parts.netloc or "}" in parts.netloc:
        _add(errors, "url", "Placeholders may only appear in the path: the host is fixed when the tool is defined.")
        return []
    if "@" in parts.netloc:
        _add(errors, "url", "Remove the user name and password from the URL: put credentials in the secret headers.")
    host = parts.hostname or ""
    if not host:
        _add(errors, "url", f"The URL names no host, {example}.")
    elif port == 0:
        _add(errors, "url", "Port 0 cannot be called: give the port the service listens on, or none.")
    elif host not in {allowed.lower() for allowed in allowed_hosts} and (reason := internal_host_reason(host)):
        _add(errors, "url", f"{host} is {reason}: a tool may not call internal addresses. {ALLOW_HINT}")
    if any(char in parts.query + parts.fragment for char in "{}"):
        _add(errors, "url", "Placeholders may only appear in the path: list arguments for the query string under "
             "query-string arguments.")  # fmt: skip
    if parts.fragment:
        _add(errors, "url", "Remove the #fragment: it is never sent to the server.")
    names = PLACEHOLDER.findall(parts.path)
    for name in names:
        if not ARGUMENT_NAME.match(name):
            _add(errors, "url", f"{{{name}}} is not a placeholder: write {{argument_name}} with letters, digits and "
                 "underscores.")  # fmt: skip
    if any(char in PLACEHOLDER.sub("", parts.path) for char in "{}"):
        _add(errors, "url", "A brace in the path is unmatched: write each placeholder as {name} (a literal brace "
             "as %7B or %7D).")  # fmt: skip
    return [name for name in dict.fromkeys(names) if ARGUMENT_NAME.match(name)]


# --- MCP ------------------------------------------------------------------------------------------


def _check_mcp_tool(errors: Errors, config: Mapping[str, Any]) -> dict[str, Any]:
    """An imported tool's config: its name on the server (set by the import, never by a form) and the server's
    hints."""
    remote_name = config.get("remote_name")
    if (
        not isinstance(remote_name, str)
        or not remote_name
        or len(remote_name) > REMOTE_NAME_MAX_LENGTH
        or "\x00" in remote_name
    ):
        _add(errors, "remote_name", "An MCP tool needs the name its server gives it: import it again from the server.")
    annotations = config.get("annotations")
    return {"remote_name": remote_name, "annotations": dict(annotations) if isinstance(annotations, dict) else {}}


# --- SQL ------------------------------------------------------------------------------------------


def _check_sql(errors: Errors, config: Mapping[str, Any], schema: Mapping[str, Any] | None) -> dict[str, Any]:
    mode = config.get("mode")
    query = str(config.get("query") or "").strip()
    timeout_ms, max_rows = config.get("timeout_ms"), config.get("max_rows")
    _check_int(errors, "timeout_ms", timeout_ms, SQL_TIMEOUT_MS, "milliseconds")
    _check_int(errors, "max_rows", max_rows, SQL_MAX_ROWS, "rows")
    if mode == "free":
        if query:
            _add(errors, "query", "In free mode the model writes the SELECT: leave the query empty, or choose fixed.")
    elif mode == "fixed":
        _check_fixed_query(errors, query, None if schema is None else _properties(schema))
    else:
        _add(errors, "mode", f"Choose one of: {', '.join(SQL_MODES)}.")
    return {"mode": mode, "query": query, "timeout_ms": timeout_ms, "max_rows": max_rows}


def _check_fixed_query(errors: Errors, query: str, properties: Mapping[str, Any] | None) -> None:
    """Record what is wrong with a fixed query; ``properties`` None: the schema is unusable, so skip matching it."""
    if not query:
        _add(errors, "query", "Write the SELECT the tool runs, e.g. SELECT status FROM orders WHERE id = %(order_id)s.")
        return
    if len(query) > QUERY_MAX_LENGTH:
        _add(errors, "query", f"Use at most {QUERY_MAX_LENGTH:,} characters.")
        return
    try:
        names = check_fixed_query(query)
    except SqlRefused as error:
        _add(errors, "query", f"This query cannot be a tool: {str(error).removeprefix('refused: ')}. Write one "
             "read-only SELECT with each argument as %(name)s.")  # fmt: skip
        return
    if properties is None:
        return
    for name in names:
        if name not in properties:
            _add(errors, "query", f"%({name})s is not a property of the parameters schema: add “{name}” to its "
                 "properties, or remove it from the query.")  # fmt: skip
    unused = [name for name in properties if name not in names]
    if unused:
        _add(errors, "parameters", f"The query never uses {_names(unused)}: write each as %(name)s in the query, or "
             "remove it from the schema.")  # fmt: skip


# --- small helpers --------------------------------------------------------------------------------


def _add(errors: Errors, field: str, *messages: str) -> None:
    errors.setdefault(field, []).extend(messages)


def _check_int(errors: Errors, field: str, value: Any, bounds: tuple[int, int, int], unit: str) -> None:
    low, high, _ = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _add(errors, field, f"Give a whole number of {unit} from {low:,} to {high:,}.")


def _name_list(value: Any) -> list[str]:
    """Argument names from a list, or from text separated by commas or spaces; duplicates dropped."""
    items = re.split(r"[\s,]+", value) if isinstance(value, str) else list(value or [])
    return list(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def _names(names: list[str]) -> str:
    return ", ".join(f"“{name}”" for name in names)
