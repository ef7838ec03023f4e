"""The one way a studio HTTP tool reaches the network: a request that never lands on an internal address (SSRF).

A model granted an HTTP tool chooses the URL, so every URL is hostile until checked. ``fetch`` resolves the host
once per hop, refuses unless every address it resolves to is public (or an operator allowed the host), and then
connects to the very address it checked, so a DNS answer that changes between the check and the connection
(rebinding) cannot move the request. Redirects are followed by hand and only within the host the tool called; the
whole call runs under one deadline and one cap on the answer's size.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import certifi
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALLOW_HINT = "an operator can allow an internal host by name in ATELIER_TOOL_ALLOWED_HOSTS"

# Ranges whose plain class ("link-local", "private", not global) would not tell an admin what was at stake.
_NAMED_RANGES = (
    (ipaddress.ip_network("169.254.169.254/32"), "a link-local address (cloud metadata)"),
    (ipaddress.ip_network("fd00:ec2::254/128"), "a private address (cloud metadata)"),
    (ipaddress.ip_network("100.64.0.0/10"), "a shared address (carrier-grade NAT)"),
)
# IPv6 forms that are only a wrapper around an IPv4 address: a dual-stack socket or a NAT64 gateway delivers
# the packet to that IPv4 address, so it alone decides (IPv4-mapped, IPv4-compatible, the NAT64 well-known prefix).
_IPV4_WRAPPERS = (
    ipaddress.IPv6Network("::ffff:0:0/96"),
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("64:ff9b::/96"),
)


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``: the default ``EgressPolicy.resolve``."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class EgressPolicy:
    """What one tool call may do.

    ``allowed_internal_hosts`` holds hosts (names or IP literals, IPv6 without brackets) that an operator lets through
    although they resolve to internal addresses; they match the URL's host exactly, ignoring case, so allowing
    ``127.0.0.1`` does not allow ``2130706433`` or ``localhost``. ``timeout_s`` bounds the whole call, redirects
    included. ``resolve`` maps (host, port) to IP address strings; tests replace it to play a hostile DNS server.
    """

    allowed_internal_hosts: frozenset[str] = frozenset()
    timeout_s: float = 10.0
    max_response_bytes: int = 1_000_000
    max_redirects: int = 3
    resolve: Callable[[str, int], list[str]] = resolve_host


class EgressRefused(Exception):
    """The policy forbids the request; nothing was sent to the refused target. The message says what and why."""


class EgressFailed(Exception):
    """The request was allowed but did not complete: the host is unknown or unreachable, or the answer broke off."""


class EgressTimeout(EgressFailed):
    """The call, redirects included, outlasted ``EgressPolicy.timeout_s``."""


class EgressResponseTooLarge(EgressFailed):
    """The answer's body outgrew ``EgressPolicy.max_response_bytes``; reading stopped there."""


@dataclass(frozen=True)
class EgressResponse:
    """The answer to a tool's request. ``url`` is the final URL, with the host spelled as the caller named it."""

    status: int
    headers: dict[str, str]
    body: bytes
    url: str
    redirects: int


def fetch(
    method: str,
    url: str,
    *,
    policy: EgressPolicy,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    json: Any = None,
    content: bytes | None = None,
) -> EgressResponse:
    """Send a tool's request and return the answer, following redirects only within the host it calls.

    Raises ``EgressRefused`` when the policy forbids a hop (decided before anything is sent to it),
    ``EgressTimeout`` or ``EgressResponseTooLarge`` when a limit is reached, and ``EgressFailed`` when the host
    cannot be resolved or reached. It runs its own event loop, so call it from a thread with none running (the
    tools worker). A ``Host`` header in ``headers`` is replaced by the URL's host.
    """
    return asyncio.run(_fetch(method.upper(), _parse(url), policy, httpx.Headers(headers), params, json, content))


def _tls_context() -> ssl.SSLContext:
    """What a tool's https calls are verified against: certifi's certificate authorities, as httpx takes by default
    (the environment's SSL_CERT_FILE is not read), loaded once per file. httpx loads them afresh for every client
    or transport it makes unless it is given a context: 22-24 ms of CPU per tool call."""
    return _tls_for(certifi.where())


@functools.cache
def _tls_for(authorities: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=authorities)


async def _fetch(
    method: str,
    target: httpx.URL,
    policy: EgressPolicy,
    headers: httpx.Headers,
    params: Mapping[str, str] | None,
    json: Any,
    content: bytes | None,
) -> EgressResponse:
    if params:
        target = target.copy_merge_params(params)
    _check_form(target)
    origin = _origin(target)
    try:
        # asyncio's deadline cancels whatever is under way, a stalled read included; httpx's own timeout only
        # bounds each network operation, so a server trickling one byte at a time would outlive it.
        async with (
            asyncio.timeout(policy.timeout_s),
            httpx.AsyncClient(timeout=policy.timeout_s, trust_env=False, verify=_tls_context()) as client,
        ):
            for redirects in range(policy.max_redirects + 1):
                response = await _send_pinned(
                    client, method, target, _checked_address(target, policy), headers, json, content
                )
                try:
                    if not response.has_redirect_location:
                        body = await _read_capped(response, target.host, policy.max_response_bytes)
                        return EgressResponse(
                            response.status_code, dict(response.headers), body, str(target), redirects
                        )
                    target = _redirect_target(response.headers["Location"], base=target, origin=origin)
                finally:
                    await response.aclose()
                if response.status_code not in (307, 308) and method != "HEAD":
                    # As browsers do: 301, 302 and 303 repeat the request as a GET without its body.
                    method, json, content = "GET", None, None
    except (TimeoutError, httpx.TimeoutException):
        raise EgressTimeout(
            f"failed: {target.host} did not answer within {policy.timeout_s:g} s (the limit for the whole call, "
            "redirects included)"
        ) from None
    except httpx.HTTPError as error:
        raise EgressFailed(f"failed: {target.host} could not be reached ({error})") from None
    raise EgressRefused(f"refused: {origin[1]} redirected more than {policy.max_redirects} times")


def _parse(url: str, *, base: httpx.URL | None = None) -> httpx.URL:
    """The URL, or a redirect's ``Location`` read against the URL that answered; refused if it does not parse."""
    try:
        return base.join(url) if base else httpx.URL(url)
    except httpx.InvalidURL as error:
        raise EgressRefused(f"refused: the URL is not valid ({error})") from None


def _redirect_target(location: str, *, base: httpx.URL, origin: tuple[str, str, int]) -> httpx.URL:
    """Where a redirect leads, refused unless it stays on the scheme, host and port the tool called.

    Only same-origin redirects are followed, so the caller's headers (its secrets among them) are never sent to a
    host other than the one the tool was granted.
    """
    target = _parse(location, base=base)
    _check_form(target)
    if _origin(target) != origin:
        raise EgressRefused(
            f"refused: {origin[1]} redirected to another host ({target.host}:{_port(target)} over {target.scheme}); "
            "a tool follows redirects only within the host it calls"
        )
    return target


def _check_form(url: httpx.URL) -> None:
    """Refuse, before any I/O, what is not a plain http(s) URL with a host."""
    if url.scheme not in _DEFAULT_PORTS:
        raise EgressRefused(
            f"refused: the scheme {url.scheme!r} is not allowed; a tool may call only http and https URLs"
        )
    if url.userinfo:
        raise EgressRefused(
            "refused: the URL carries a user name or password (user@host); pass credentials in the tool's headers"
        )
    if not url.host:
        raise EgressRefused("refused: the URL names no host")


def _port(url: httpx.URL) -> int:
    return url.port or _DEFAULT_PORTS[url.scheme]


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, _port(url)


def _checked_address(url: httpx.URL, policy: EgressPolicy) -> IPAddress:
    return checked_address(url.host, _port(url), policy, ascii_host=url.raw_host.decode("ascii"))


def checked_address(host: str, port: int, policy: EgressPolicy, *, ascii_host: str | None = None) -> IPAddress:
    """The address to connect to for ``host``: its first, after every address it resolves to passed the policy.

    ``host`` is the URL's host as read (an IPv6 literal without brackets), ``ascii_host`` its IDNA form when it
    differs. The host is resolved exactly once here; the connection goes to the returned address, never to the
    name. Raises ``EgressRefused`` or ``EgressFailed`` as ``fetch`` does. Other clients that must honour the same
    policy (the MCP client, ``tools_app.sandbox.mcp_client``) call it for every request they send.
    """
    literal = ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        # The resolver blocks the event loop: a slow one overruns the deadline by its own wait, then the deadline
        # cancels the call at its next step.
        try:
            addresses = [ipaddress.ip_address(answer) for answer in policy.resolve(ascii_host or host, port)]
        except OSError as error:
            raise EgressFailed(f"failed: {host} could not be resolved ({error})") from None
        if not addresses:
            raise EgressFailed(f"failed: {host} resolves to no address")
    if host in {allowed.lower() for allowed in policy.allowed_internal_hosts}:
        return addresses[0]
    for address in addresses:
        reason = why_not_public(address)
        if reason is None:
            continue
        if literal is None:
            subject = f"{host} resolves to {address}, {reason}"
        elif host.removesuffix(".") == str(address):
            subject = f"{host} is {reason}"
        else:
            subject = f"{host} is {address}, {reason}"
        raise EgressRefused(f"refused: {subject}; {_ALLOW_HINT}")
    return addresses[0]


def ip_literal(host: str) -> IPAddress | None:
    """The address a host spells out itself, read as browsers and libc read it, or None for a name.

    ``ipaddress`` takes IPv6 and dotted quads; ``inet_aton`` takes the forms it rejects, which the system resolver
    would accept all the same: ``127.1``, ``0x7f.1``, ``0x7f000001`` and ``2130706433`` are all 127.0.0.1.
    """
    host = host.removesuffix(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def why_not_public(address: IPAddress) -> str | None:
    """Why a connection to ``address`` could reach something internal, or None for a public unicast address.

    An IPv6 address that carries an IPv4 address is judged by it: a wrapper (IPv4-mapped, IPv4-compatible, NAT64)
    by the IPv4 address alone, a tunnel (6to4, Teredo) by both its own address and the ones it embeds.
    """
    if isinstance(address, ipaddress.IPv6Address) and not (address.is_loopback or address.is_unspecified):
        if any(address in wrapper for wrapper in _IPV4_WRAPPERS):
            carried = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
            reason = why_not_public(carried)
            return reason and f"an IPv6 form of {carried}, {reason}"
        for carried in (address.sixtofour, *(address.teredo or ())):
            if carried is not None and (reason := why_not_public(carried)):
                return f"a tunnel address for {carried}, {reason}"
    for network, description in _NAMED_RANGES:
        if address in network:
            return description
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address (this host)"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_private:
        return "a private or special-purpose address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


async def _send_pinned(
    client: httpx.AsyncClient,
    method: str,
    target: httpx.URL,
    address: IPAddress,
    headers: httpx.Headers,
    json: Any,
    content: bytes | None,
) -> httpx.Response:
    """Send the request to ``address`` while it still reads, to the server, as a request for ``target``'s host.

    The URL carries the IP, so httpx does no DNS lookup of its own; ``Host`` names the host, and for https
    ``sni_hostname`` sends it in the TLS handshake and verifies the certificate against it, not against the IP.
    """
    pinned_headers = httpx.Headers(headers)
    pinned_headers["Host"] = target.netloc.decode("ascii")
    # The size cap counts bytes as they arrive; a compressed answer could inflate far past it once decoded.
    pinned_headers["Accept-Encoding"] = "identity"
    request = client.build_request(
        method,
        target.copy_with(host=str(address)),
        headers=pinned_headers,
        json=json,
        content=content,
        extensions={"sni_hostname": target.raw_host.decode("ascii")},
    )
    return await client.send(request, stream=True)


async def _read_capped(response: httpx.Response, host: str, limit: int) -> bytes:
    """The body, read as it streams in and abandoned as soon as it passes ``limit`` bytes."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > limit:
            raise EgressResponseTooLarge(
                f"failed: the answer from {host} is larger than the {limit}-byte limit; reading stopped there"
            )
    return bytes(body)
