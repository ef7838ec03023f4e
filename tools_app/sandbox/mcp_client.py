"""Reach a team's MCP server over streamable HTTP, through the egress guard: list its tools, call one of them.

The official SDK (``mcp``) speaks the protocol; every request it sends goes through ``_GuardedTransport``, which
does for each one what ``egress.fetch`` does for an HTTP tool: it refuses a request to another origin than the
server's (so no redirect can carry the secret headers elsewhere), resolves the host once and refuses unless every
address is public or the operator allowed the host (``egress.checked_address``), connects to the very address it
checked, and counts every answer's bytes against one cap. The whole exchange (handshake, then the listing or the
call) runs under one deadline. Nothing here raises for anything the server did: the outcome says what happened.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

import anyio
import httpx2
import mcp_types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tools_app.sandbox import egress

# A server listing more tools than this is cut there (its pages are followed up to ``MAX_LIST_PAGES``).
MAX_LISTED_TOOLS = 200
MAX_LIST_PAGES = 20
# The hints of a tool's annotations kept with an imported tool (booleans, plus its display title).
ANNOTATION_HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
_DEFAULT_PORTS = {"http": 80, "https": 443}

T = TypeVar("T")


@dataclass(frozen=True)
class ServerSpec:
    """Where an MCP server is and how it may be reached: its streamable-HTTP ``url``, the decrypted secret
    ``headers`` sent with every request, the internal hosts an operator allowed, the deadline of one exchange and
    the cap on the bytes its answers may add up to."""

    url: str
    headers: Mapping[str, str] | None = None
    allowed_hosts: tuple[str, ...] = ()
    timeout_s: float = 10.0
    max_response_bytes: int = 100_000
    resolve: Callable[[str, int], list[str]] = egress.resolve_host

    def policy(self) -> egress.EgressPolicy:
        return egress.EgressPolicy(
            allowed_internal_hosts=frozenset(self.allowed_hosts),
            timeout_s=self.timeout_s,
            max_response_bytes=self.max_response_bytes,
            resolve=self.resolve,
        )


@dataclass(frozen=True)
class RemoteTool:
    """One tool as its server lists it: its ``name`` there, ``description``, ``input_schema`` (JSON Schema) and the
    hints of its ``annotations`` (``readOnlyHint``…, ``title``)."""

    name: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ListingOutcome:
    """What came of listing a server's tools: ``tools`` when ``ok``, else ``error`` ("refused", "timeout",
    "too_large" or "failed") and ``text``, a sentence saying why. ``truncated``: the server listed more than
    ``MAX_LISTED_TOOLS``."""

    ok: bool
    tools: list[RemoteTool] = field(default_factory=list)
    error: str = ""
    text: str = ""
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ListingOutcome:
        values = {item.name: data[item.name] for item in fields(cls) if item.name in data}
        values["tools"] = [RemoteTool(**tool) for tool in values.get("tools") or []]
        return cls(**values)


@dataclass(frozen=True)
class ToolAnswer:
    """A ``tools/call`` answer: its content as text for the model, and whether the server flagged it an error."""

    text: str
    is_error: bool
    response_bytes: int


class McpFailed(egress.EgressFailed):
    """The server was reached but the exchange did not complete (a protocol error, an error it answered)."""


def list_tools(spec: ServerSpec) -> ListingOutcome:
    """The tools ``spec``'s server offers, through the egress guard; never raises."""

    async def listing(client: Client) -> tuple[list[RemoteTool], bool]:
        tools: list[RemoteTool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(_remote_tool(tool) for tool in page.tools)
            cursor = page.next_cursor
            if cursor is None or len(tools) >= MAX_LISTED_TOOLS:
                break
        return tools[:MAX_LISTED_TOOLS], len(tools) > MAX_LISTED_TOOLS or cursor is not None

    try:
        (tools, truncated), _ = _exchange(spec, listing)
    except egress.EgressFailed as error:
        return ListingOutcome(ok=False, error=_kind(error), text=str(error))
    except egress.EgressRefused as error:
        return ListingOutcome(ok=False, error="refused", text=str(error))
    return ListingOutcome(ok=True, tools=tools, truncated=truncated)


def call_tool(spec: ServerSpec, name: str, arguments: Mapping[str, Any]) -> ToolAnswer:
    """Call the tool ``name`` of ``spec``'s server with ``arguments``; its answer as text for the model.

    Raises ``egress.EgressRefused`` when the guard refused a request (nothing was sent to it), and
    ``egress.EgressFailed`` (``EgressTimeout``, ``EgressResponseTooLarge``, ``McpFailed``) when the exchange did not
    complete; a tool that ran and failed is an answer with ``is_error``.
    """

    async def calling(client: Client) -> mcp_types.CallToolResult:
        return await client.call_tool(name, dict(arguments))

    result, received = _exchange(spec, calling)
    return ToolAnswer(text=_result_text(result), is_error=bool(result.is_error), response_bytes=received)


# --- one exchange, guarded ------------------------------------------------------------------------


def _exchange(spec: ServerSpec, work: Callable[[Client], Awaitable[T]]) -> tuple[T, int]:
    """Connect to the server, run ``work`` with the connected client and return its value and the bytes received.

    Runs its own event loop, so call it from a thread with none running (the tools worker), like ``egress.fetch``.
    """
    target = _parse(spec.url)
    policy = spec.policy()
    # Checked before anything is sent: an internal host is refused at once, not after the SDK's retries.
    egress.checked_address(target.host, _port(target), policy, ascii_host=target.raw_host.decode("ascii"))
    guard = _GuardedTransport(target, policy)

    async def run() -> T:
        headers = dict(spec.headers or {})
        async with httpx2.AsyncClient(
            transport=guard, headers=headers, timeout=spec.timeout_s, follow_redirects=False, trust_env=False
        ) as http:
            with anyio.fail_after(spec.timeout_s):
                async with Client(streamable_http_client(spec.url, http_client=http), mode="legacy") as client:
                    return await work(client)

    started = time.monotonic()
    try:
        value = anyio.run(run)
    except BaseException as error:  # the SDK wraps failures in exception groups of its own
        if isinstance(error, KeyboardInterrupt | SystemExit):
            raise
        if guard.stopped is not None:
            raise guard.stopped from None
        if _is_timeout(error) or time.monotonic() - started >= spec.timeout_s:
            raise egress.EgressTimeout(
                f"failed: {target.host} did not answer within {spec.timeout_s:g} s (the limit for the whole "
                "exchange with the MCP server)"
            ) from None
        raise McpFailed(f"failed: the MCP server at {target.host} could not be used ({_describe(error)})") from None
    if guard.stopped is not None:  # a refusal the SDK swallowed (a notification's request, a closing DELETE)
        raise guard.stopped
    return value, guard.received


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx2's own default verification (the system's certificate authorities, the environment's SSL_CERT_FILE
    and SSL_CERT_DIR not read), made once: httpx2 makes one for every transport otherwise, 22 ms of CPU for each
    exchange with an MCP server."""
    return httpx2.create_ssl_context(trust_env=False)


class _GuardedTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport that sends each request only to the server's origin, at an address the egress policy
    checked, and stops reading once the answers pass the policy's byte cap. The first refusal or limit it hit is
    kept in ``stopped``, so the outcome names it even when the SDK reports something vaguer."""

    def __init__(self, target: httpx2.URL, policy: egress.EgressPolicy) -> None:
        self._origin = _origin(target)
        self._policy = policy
        self._inner = httpx2.AsyncHTTPTransport(trust_env=False, verify=_tls())
        self.stopped: egress.EgressRefused | egress.EgressFailed | None = None
        self.received = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        try:
            address = self._checked(url)
        except (egress.EgressRefused, egress.EgressFailed) as error:
            self.stopped = self.stopped or error
            raise httpx2.ConnectError(str(error), request=request) from None
        headers = request.headers.copy()
        # The cap counts bytes as they arrive: a compressed answer could inflate far past it once decoded.
        headers["Accept-Encoding"] = "identity"
        pinned = httpx2.Request(
            request.method,
            url.copy_with(host=str(address)),
            headers=headers,
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": url.raw_host.decode("ascii")},
        )
        response = await self._inner.handle_async_request(pinned)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            await response.aclose()
            self._stop(egress.EgressFailed(f"failed: {url.host} compressed its answer ({encoding}) although asked "
                                           "not to; its size could not be bounded"))  # fmt: skip
        response.stream = _CountedStream(response.stream, self)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()

    def count(self, size: int) -> None:
        """Add ``size`` received bytes; past the cap, stop the exchange."""
        self.received += size
        if self.received > self._policy.max_response_bytes:
            self._stop(
                egress.EgressResponseTooLarge(
                    f"failed: the answers from {self._origin[1]} are larger than the "
                    f"{self._policy.max_response_bytes}-byte limit; reading stopped there"
                )
            )

    def _stop(self, error: egress.EgressRefused | egress.EgressFailed) -> None:
        self.stopped = self.stopped or error
        raise error

    def _checked(self, url: httpx2.URL) -> egress.IPAddress:
        if url.scheme not in _DEFAULT_PORTS:
            raise egress.EgressRefused(f"refused: the scheme {url.scheme!r} is not allowed; only http and https")
        if url.userinfo:
            raise egress.EgressRefused("refused: the URL carries a user name or password; use secret headers")
        if _origin(url) != self._origin:
            raise egress.EgressRefused(
                f"refused: a request to {url.host}:{_port(url)} over {url.scheme} left the MCP server's origin "
                f"({self._origin[1]}:{self._origin[2]} over {self._origin[0]})"
            )
        return egress.checked_address(url.host, _port(url), self._policy, ascii_host=url.raw_host.decode("ascii"))


class _CountedStream(httpx2.AsyncByteStream):
    """An answer's body, counted against the transport's cap as it streams in."""

    def __init__(self, stream: Any, guard: _GuardedTransport) -> None:
        self._stream = stream
        self._guard = guard

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self._guard.count(len(chunk))
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


# --- small helpers --------------------------------------------------------------------------------


def _parse(url: str) -> httpx2.URL:
    try:
        target = httpx2.URL(url)
    except httpx2.InvalidURL as error:
        raise egress.EgressRefused(f"refused: the URL is not valid ({error})") from None
    if target.scheme not in _DEFAULT_PORTS or not target.host:
        raise egress.EgressRefused("refused: an MCP server is reached at an http:// or https:// URL with a host")
    if target.userinfo:
        raise egress.EgressRefused("refused: the URL carries a user name or password; use secret headers")
    return target


def _port(url: httpx2.URL) -> int:
    return url.port or _DEFAULT_PORTS[url.scheme]


def _origin(url: httpx2.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, _port(url)


def _remote_tool(tool: mcp_types.Tool) -> RemoteTool:
    annotations: dict[str, Any] = {}
    if tool.annotations is not None:
        given = tool.annotations.model_dump(by_alias=True, exclude_none=True)
        annotations = {key: given[key] for key in (*ANNOTATION_HINTS, "title") if key in given}
    schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
    return RemoteTool(
        name=tool.name, description=tool.description or "", input_schema=dict(schema), annotations=annotations
    )


def _result_text(result: mcp_types.CallToolResult) -> str:
    """A ``tools/call`` result as the model reads it: its text parts joined by newlines, other parts named."""
    parts: list[str] = []
    for item in result.content:
        if isinstance(item, mcp_types.TextContent):
            parts.append(item.text)
        elif isinstance(item, mcp_types.EmbeddedResource) and isinstance(item.resource, mcp_types.TextResourceContents):
            parts.append(item.resource.text)
        else:
            parts.append(f"[{getattr(item, 'type', 'other')} content left out]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, separators=(",", ":"))
    return "\n".join(parts)


def _kind(error: egress.EgressFailed) -> str:
    if isinstance(error, egress.EgressTimeout):
        return "timeout"
    if isinstance(error, egress.EgressResponseTooLarge):
        return "too_large"
    return "failed"


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _is_timeout(error: BaseException) -> bool:
    return any(isinstance(leaf, TimeoutError | httpx2.TimeoutException) for leaf in _leaves(error))


def _describe(error: BaseException) -> str:
    """The most telling of the SDK's errors, in one line: an error the server answered, else the first one."""
    leaves = _leaves(error)
    leaf = next((leaf for leaf in leaves if type(leaf).__name__ == "MCPError"), leaves[0])
    text = str(leaf).strip().splitlines()[0] if str(leaf).strip() else ""
    return f"{type(leaf).__name__}: {text}"[:300] if text else type(leaf).__name__
