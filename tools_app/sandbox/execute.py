"""Run one granted tool call and say what came of it, as text the model can read.

``execute`` takes everything the call needs in a ``CallSpec`` (the tool's settings, the model's arguments, the
decrypted secret, the hosts an operator allowed) and returns a ``CallOutcome``; it never raises for anything the
tool, the model or the remote side did. HTTP goes through the egress guard, SQL through the read-only runner, an MCP
server's tool through the MCP client behind the same guard (``mcp_client``). The text given back is capped and never
holds the secret, even when a server echoes it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tools_app.sandbox import egress, mcp_client, sql

logger = logging.getLogger(__name__)

# The most characters of a result given to the model; the rest is dropped with a note saying how much.
TEXT_LIMIT = 16_000
# How much of an error answer's body is quoted back.
ERROR_EXCERPT = 500
REDACTED = "[secret redacted]"
# A secret header's value is also redacted word by word (``Bearer <token>``: a server may echo the token alone);
# shorter words are too common to be the secret.
SECRET_WORD_MIN_LENGTH = 8
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
# What a definition left unset falls back to (the definition check normally sets them).
DEFAULT_HTTP_TIMEOUT_S = 10
DEFAULT_MAX_RESPONSE_BYTES = 100_000
DEFAULT_SQL_TIMEOUT_MS = 5_000
DEFAULT_SQL_MAX_ROWS = 100

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class CallSpec:
    """One call: the tool's ``kind`` ("http", "sql" or "mcp"), ``name`` and ``config`` (as ``tools_app.definitions``
    checked it; for mcp, with its server's url, timeout_s and max_response_bytes), the model's ``arguments``, the
    decrypted ``secret`` (HTTP and MCP: the secret headers; SQL: the DSN) and the internal hosts an operator
    allowed."""

    kind: str
    name: str
    config: dict[str, Any]
    arguments: dict[str, Any]
    secret: dict[str, str] | str | None
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallOutcome:
    """What came of a call. ``text`` is what the model is given back: the result, or a short error it can read.
    ``error`` is "" or one of "refused", "timeout", "too_large", "failed", "http_error", "tool_error" (an MCP tool
    that ran and reported an error); ``status`` is the HTTP status when a server answered."""

    ok: bool
    text: str
    status: int | None = None
    response_bytes: int = 0
    latency_ms: float = 0.0
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallOutcome:
        return cls(**{field.name: data[field.name] for field in fields(cls) if field.name in data})


class _Refused(Exception):
    """The arguments cannot make a request of this tool (a path argument missing or climbing out of its segment)."""


def execute(spec: CallSpec) -> CallOutcome:
    """Run ``spec``'s call and return its outcome, the secret redacted from its text; never raises."""
    try:
        if spec.kind == "http":
            outcome = _execute_http(spec)
        elif spec.kind == "sql":
            outcome = _execute_sql(spec)
        elif spec.kind == "mcp":
            outcome = _execute_mcp(spec)
        else:
            outcome = CallOutcome(ok=False, error="failed", text=f"the tool kind {spec.kind!r} cannot be run")
    except Exception as error:  # a bug must come back as an outcome, not end the conversation
        logger.exception("tool %s failed unexpectedly", spec.name)
        outcome = CallOutcome(ok=False, error="failed", text=f"the tool failed unexpectedly ({type(error).__name__})")
    redact = redactor(secret_values(spec.secret))
    return replace(outcome, text=_capped(redact(outcome.text)))


# --- HTTP -----------------------------------------------------------------------------------------


def _execute_http(spec: CallSpec) -> CallOutcome:
    config, arguments = spec.config, spec.arguments
    method = str(config.get("method", "GET")).upper()
    try:
        url = _fill_path(str(config.get("url", "")), arguments)
    except _Refused as error:
        return CallOutcome(ok=False, error="refused", text=str(error))
    body_args = list(config.get("body_args") or [])
    body = {name: arguments[name] for name in body_args if name in arguments}
    policy = egress.EgressPolicy(
        allowed_internal_hosts=frozenset(spec.allowed_hosts),
        timeout_s=float(config.get("timeout_s") or DEFAULT_HTTP_TIMEOUT_S),
        max_response_bytes=int(config.get("max_response_bytes") or DEFAULT_MAX_RESPONSE_BYTES),
    )
    started = time.perf_counter()
    try:
        response = egress.fetch(
            method,
            url,
            policy=policy,
            headers=spec.secret if isinstance(spec.secret, dict) else None,
            params={name: _as_text(arguments[name]) for name in config.get("query_args") or [] if name in arguments},
            json=body if method in METHODS_WITH_BODY and body_args else None,
        )
    except (egress.EgressRefused, egress.EgressFailed) as error:
        return _failure(error, _elapsed_ms(started))
    latency_ms = _elapsed_ms(started)
    measured: dict[str, Any] = {
        "status": response.status,
        "response_bytes": len(response.body),
        "latency_ms": latency_ms,
    }
    if not 200 <= response.status < 300:
        excerpt = _decoded(response.body)[:ERROR_EXCERPT]
        return CallOutcome(ok=False, error="http_error", text=f"HTTP {response.status}: {excerpt}", **measured)
    try:
        text = _response_text(response, str(config.get("result_path") or ""))
    except LookupError as error:
        return CallOutcome(ok=False, error="failed", text=str(error), **measured)
    return CallOutcome(ok=True, text=text, **measured)


def _fill_path(template: str, arguments: Mapping[str, Any]) -> str:
    """The URL with each ``{name}`` of its path replaced by that argument, percent-encoded as one path segment.

    An argument can never add a ``/``, ``?`` or ``#`` (they are encoded) nor be a ``.`` or ``..`` segment
    (refused), so it cannot reach another path of the host.
    """
    parts = urlsplit(template)

    def segment(match: re.Match[str]) -> str:
        name = match[1]
        if name not in arguments:
            raise _Refused(f"refused: the argument {name!r} is required (it is part of the URL path)")
        value = _as_text(arguments[name])
        if value in ("", ".", ".."):
            raise _Refused(f"refused: the argument {name!r} cannot be {value!r} (it is one segment of the URL path)")
        return quote(value, safe="")

    return urlunsplit(parts._replace(path=PLACEHOLDER.sub(segment, parts.path)))


def _response_text(response: egress.EgressResponse, result_path: str) -> str:
    """The answer as text for the model: the value at ``result_path`` when given, JSON as compact JSON."""
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    text = _decoded(response.body)
    looks_like_json = content_type.endswith("json") or text.lstrip()[:1] in ("{", "[")
    if not (looks_like_json or result_path):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        if result_path:
            raise LookupError(f"the answer is not JSON, so its {result_path} cannot be read") from None
        return text
    if result_path:
        value = _at_path(value, result_path)
    return value if isinstance(value, str) else _compact_json(value)


def _at_path(value: Any, path: str) -> Any:
    """The value at a dotted path of keys and list positions (``data.items.0.title``); ``LookupError`` naming the
    first step that is not there."""
    for depth, step in enumerate(path.split(".")):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            reached = ".".join(path.split(".")[:depth]) or "the top level"
            raise LookupError(f"the answer has no {path}: {reached} holds no {step!r}")
    return value


def _failure(error: Exception, latency_ms: float) -> CallOutcome:
    """The outcome of a call the egress guard or the SQL runner stopped, its message given to the model."""
    kind = next((name for error_class, name in _ERROR_KINDS if isinstance(error, error_class)), "failed")
    return CallOutcome(ok=False, error=kind, text=str(error), latency_ms=latency_ms)


# Most specific first: a timeout and a too-large answer are both ``EgressFailed``.
_ERROR_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (egress.EgressRefused, "refused"),
    (egress.EgressTimeout, "timeout"),
    (egress.EgressResponseTooLarge, "too_large"),
    (egress.EgressFailed, "failed"),
    (sql.SqlRefused, "refused"),
    (sql.SqlFailed, "failed"),
)


# --- MCP ------------------------------------------------------------------------------------------


def _execute_mcp(spec: CallSpec) -> CallOutcome:
    config = spec.config
    server = mcp_client.ServerSpec(
        url=str(config.get("url", "")),
        headers=spec.secret if isinstance(spec.secret, dict) else None,
        allowed_hosts=spec.allowed_hosts,
        timeout_s=float(config.get("timeout_s") or DEFAULT_HTTP_TIMEOUT_S),
        max_response_bytes=int(config.get("max_response_bytes") or DEFAULT_MAX_RESPONSE_BYTES),
    )
    started = time.perf_counter()
    try:
        answer = mcp_client.call_tool(server, str(config.get("remote_name", "")), spec.arguments)
    except (egress.EgressRefused, egress.EgressFailed) as error:
        return _failure(error, _elapsed_ms(started))
    measured: dict[str, Any] = {"response_bytes": answer.response_bytes, "latency_ms": _elapsed_ms(started)}
    if answer.is_error:
        return CallOutcome(ok=False, error="tool_error", text=f"the tool reported an error: {answer.text}", **measured)
    return CallOutcome(ok=True, text=answer.text, **measured)


# --- SQL ------------------------------------------------------------------------------------------


def _execute_sql(spec: CallSpec) -> CallOutcome:
    config, arguments = spec.config, spec.arguments
    if not isinstance(spec.secret, str) or not spec.secret:
        return CallOutcome(ok=False, error="failed", text="the tool has no database to read: its DSN is not set")
    if config.get("mode") == "free":
        statement, params = arguments.get("sql"), None
        if not isinstance(statement, str):
            return CallOutcome(ok=False, error="refused", text="refused: give the SELECT statement as the sql argument")
    else:
        statement, params = str(config.get("query", "")), dict(arguments)
    started = time.perf_counter()
    try:
        result = sql.run_select(
            spec.secret,
            statement,
            params=params,
            timeout_ms=int(config.get("timeout_ms") or DEFAULT_SQL_TIMEOUT_MS),
            max_rows=int(config.get("max_rows") or DEFAULT_SQL_MAX_ROWS),
        )
    except sql.SqlToolError as error:
        return _failure(error, _elapsed_ms(started))
    latency_ms = _elapsed_ms(started)
    text = _compact_json(
        {"columns": result.columns, "rows": [list(row) for row in result.rows], "truncated": result.truncated}
    )
    return CallOutcome(ok=True, text=text, response_bytes=len(text.encode()), latency_ms=latency_ms)


# --- text -----------------------------------------------------------------------------------------


def _as_text(value: Any) -> str:
    """An argument as it travels in a URL: strings as they are, anything else as JSON (``42``, ``true``)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _decoded(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")


def _compact_json(value: Any) -> str:
    """``value`` as JSON without spaces; what JSON cannot hold as text (``_as_json_text``)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_as_json_text)


def _as_json_text(value: Any) -> str:
    """A value JSON cannot hold, as text: bytes as PostgreSQL writes a bytea (``\\x00ff``), anything else (dates,
    decimals, UUIDs) as its ``str``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def _capped(text: str) -> str:
    if len(text) <= TEXT_LIMIT:
        return text
    return f"{text[:TEXT_LIMIT]}\n[truncated: {len(text) - TEXT_LIMIT:,} more characters not shown]"


def secret_values(secret: dict[str, str] | str | None) -> list[str]:
    """The strings a result must never show: each header value and its long words; the DSN and its password."""
    if isinstance(secret, dict):
        values = [value for value in secret.values() if value]
        return values + [word for value in values for word in value.split() if len(word) >= SECRET_WORD_MIN_LENGTH]
    if isinstance(secret, str) and secret:
        try:
            password = conninfo_to_dict(secret).get("password")
        except psycopg.Error:  # an unparsable DSN is still redacted whole
            password = None
        return [secret, *([str(password)] if password else [])]
    return []


def redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """Replace every occurrence of any of ``secrets`` (the longest first) with ``REDACTED``."""
    ordered = sorted(set(secrets), key=len, reverse=True)
    if not ordered:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(secret) for secret in ordered))
    return lambda text: pattern.sub(REDACTED, text)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
