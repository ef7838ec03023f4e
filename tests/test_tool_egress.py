"""The egress guard of HTTP tools: SSRF payloads reach nothing, allowed calls arrive intact, limits hold.

Every refusal is checked twice: the guard says why, and a real loopback listener recorded no request.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest

from tools_app.sandbox import egress
from tools_app.sandbox.egress import (
    EgressFailed,
    EgressPolicy,
    EgressRefused,
    EgressResponseTooLarge,
    EgressTimeout,
    fetch,
)

BODY = b"hello from the listener"
PUBLIC = "93.184.215.14"  # a public address: the policy lets it through; no test dials it


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Listener:
    """A real HTTP server on a loopback address that records every request and answers by path.

    ``/big`` streams an endless body, ``/stall`` answers nothing, ``/trickle`` sends a byte at a time, a path in
    ``redirects`` answers with that (status, Location); anything else answers ``BODY``.
    """

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    redirects: dict[str, tuple[int, str]] = field(default_factory=dict)
    tls_names: list[str | None] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        listener = self.server.listener
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        listener.requests.append(Received(self.command, self.path, headers, body))
        path = self.path.partition("?")[0]
        with contextlib.suppress(ConnectionError):
            if path in listener.redirects:
                status, location = listener.redirects[path]
                self.send_response(status)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path in ("/big", "/trickle"):
                self.send_response(200)
                self.end_headers()  # no Content-Length: the body runs until the server stops
                chunk, pause = (b"x" * 65536, 0.0) if path == "/big" else (b".", 0.05)
                while not listener.stop.wait(pause):
                    self.wfile.write(chunk)
                    self.wfile.flush()
            else:
                if path == "/stall":
                    listener.stop.wait(10)
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

    do_POST = do_PUT = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    listener: Listener


@contextlib.contextmanager
def listening(host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None) -> Iterator[Listener]:
    server = _Server((host, port), _Handler)
    listener = server.listener = Listener(server)
    if tls is not None:
        tls.sni_callback = lambda _socket, name, _context: listener.tls_names.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        listener.stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    with listening() as listener:
        yield listener


class ScriptedResolver:
    """A DNS server under the test's control: call n gets the n-th answer, the last answer repeats."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


STRICT = EgressPolicy(timeout_s=2, resolve=ScriptedResolver([PUBLIC]))
LOOPBACK_ALLOWED = EgressPolicy(allowed_internal_hosts=frozenset({"127.0.0.1"}), timeout_s=2)


def allowing_name(name: str, *answers: list[str]) -> tuple[EgressPolicy, ScriptedResolver]:
    resolver = ScriptedResolver(*answers)
    return EgressPolicy(allowed_internal_hosts=frozenset({name}), timeout_s=2, resolve=resolver), resolver


LOOPBACK = "127.0.0.1, a loopback address"


# Literal hosts must be refused without consulting DNS: STRICT's resolver would call every name public.
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/", "127.0.0.1 is a loopback address"),
        ("http://127.0.0.1.:{port}/", "127.0.0.1. is a loopback address"),
        ("http://[::1]:{port}/", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]:{port}/", f"an IPv6 form of {LOOPBACK}"),
        ("http://[::ffff:7f00:1]:{port}/", f"an IPv6 form of {LOOPBACK}"),
        ("http://[::127.0.0.1]:{port}/", f"an IPv6 form of {LOOPBACK}"),
        ("http://[64:ff9b::7f00:1]:{port}/", f"an IPv6 form of {LOOPBACK}"),
        ("http://[2002:7f00:1::]:{port}/", f"a tunnel address for {LOOPBACK}"),
        ("http://[2001:0:808:808::80ff:fffe]:{port}/", f"a tunnel address for {LOOPBACK}"),
        ("http://2130706433:{port}/", f"2130706433 is {LOOPBACK}"),
        ("http://0x7f000001:{port}/", f"0x7f000001 is {LOOPBACK}"),
        ("http://0x7f.1:{port}/", f"0x7f.1 is {LOOPBACK}"),
        ("http://127.1:{port}/", f"127.1 is {LOOPBACK}"),
        ("http://0177.0.0.1:{port}/", "the URL is not valid (Invalid IPv4 address"),
        ("http://0.0.0.0:{port}/", "the unspecified address"),
        ("http://0:{port}/", "the unspecified address"),
        ("http://[::]:{port}/", "the unspecified address"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local address (cloud metadata)"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "(cloud metadata)"),
        ("http://[::ffff:169.254.169.254]/latest/meta-data/", "(cloud metadata)"),
        ("http://10.0.0.1/", "a private"),
        ("http://172.16.0.1/", "a private"),
        ("http://192.168.1.1/", "a private"),
        ("http://[fc00::1]/", "a private"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://198.18.0.1/", "special-purpose"),
        ("http://255.255.255.255/", "special-purpose"),
        ("http://224.0.0.1/", "a multicast address"),
        ("http://[ff02::1]/", "a multicast address"),
        ("http://[fe80::1]/", "a link-local address"),
        ("http://[fec0::1]/", "a site-local address"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:{port}/_", "only http and https"),
        ("ftp://127.0.0.1:{port}/", "only http and https"),
        ("dict://127.0.0.1:{port}/", "only http and https"),
        ("http://user@127.0.0.1:{port}/", "user name or password"),
        ("http://user:secret@example.com/", "user name or password"),
        ("http:///etc/passwd", "names no host"),
    ],
)
def test_ssrf_payload_is_refused_and_reaches_nothing(listener: Listener, url: str, reason: str) -> None:
    with pytest.raises(EgressRefused, match=r"^refused: ") as refused:
        fetch("GET", url.format(port=listener.port), policy=STRICT)
    assert reason in str(refused.value)
    assert listener.requests == []


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        (["127.0.0.1"], f"resolves to {LOOPBACK}"),
        ([PUBLIC, "127.0.0.1"], f"resolves to {LOOPBACK}"),
        (["::1", PUBLIC], "resolves to ::1, a loopback address"),
        (["::ffff:169.254.169.254"], "(cloud metadata)"),
        (["10.1.2.3"], "a private"),
    ],
)
def test_name_resolving_to_any_internal_address_is_refused(listener: Listener, answers: list[str], reason: str) -> None:
    resolver = ScriptedResolver(answers)

    with pytest.raises(EgressRefused, match=r"^refused: api\.example\.com resolves to ") as refused:
        fetch("GET", listener.url(host="api.example.com"), policy=replace(STRICT, resolve=resolver))

    assert reason in str(refused.value)
    assert resolver.calls == [("api.example.com", listener.port)]
    assert listener.requests == []


def test_localhost_from_the_system_resolver_is_refused(listener: Listener) -> None:
    with pytest.raises(EgressRefused, match=r"localhost resolves to .*, a loopback address"):
        fetch("GET", listener.url(host="localhost"), policy=EgressPolicy(timeout_s=2))
    assert listener.requests == []


def test_refusal_tells_the_admin_how_to_allow_an_internal_host(listener: Listener) -> None:
    with pytest.raises(EgressRefused, match="ATELIER_TOOL_ALLOWED_HOSTS"):
        fetch("GET", "http://169.254.169.254/latest/meta-data/", policy=STRICT)


def test_rebinding_name_is_resolved_once_and_the_loopback_answer_never_used(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = ScriptedResolver([PUBLIC], ["127.0.0.1"])
    connected: list[str] = []

    async def connect_nowhere(client: Any, method: str, target: Any, address: Any, *rest: Any) -> Any:
        connected.append(str(address))  # what would be dialled; nothing leaves this machine
        raise httpx.ConnectError("not dialled in this test")

    monkeypatch.setattr(egress, "_send_pinned", connect_nowhere)

    with pytest.raises(EgressFailed):
        fetch("GET", listener.url(host="rebind.example"), policy=replace(STRICT, resolve=resolver))

    assert connected == [PUBLIC]
    assert len(resolver.calls) == 1
    assert listener.requests == []


def test_rebinding_name_answering_loopback_first_is_refused_without_a_second_lookup(listener: Listener) -> None:
    resolver = ScriptedResolver(["127.0.0.1"], [PUBLIC])

    with pytest.raises(EgressRefused, match="loopback"):
        fetch("GET", listener.url(host="rebind.example"), policy=replace(STRICT, resolve=resolver))

    assert len(resolver.calls) == 1
    assert listener.requests == []


def test_each_hop_connects_to_the_address_its_own_lookup_returned(listener: Listener) -> None:
    with listening("127.0.0.2", listener.port) as second:
        policy, resolver = allowing_name("svc.internal", ["127.0.0.1"], ["127.0.0.2"])
        listener.redirects["/start"] = (302, "/hello")

        response = fetch("GET", listener.url("/start", host="svc.internal"), policy=policy)

        assert response.body == BODY
        assert len(resolver.calls) == 2
        assert [request.path for request in listener.requests] == ["/start"]
        assert [request.path for request in second.requests] == ["/hello"]
        assert second.requests[0].headers["host"] == f"svc.internal:{listener.port}"


def test_allowed_internal_host_gets_exactly_one_request(listener: Listener) -> None:
    response = fetch("GET", listener.url("/hello"), policy=LOOPBACK_ALLOWED)

    assert (response.status, response.body, response.redirects) == (200, BODY, 0)
    assert response.url == listener.url("/hello")
    assert len(listener.requests) == 1
    assert listener.requests[0].headers["host"] == f"127.0.0.1:{listener.port}"


def test_allowed_name_matches_regardless_of_case_and_keeps_its_host_header(listener: Listener) -> None:
    policy, resolver = allowing_name("SVC.Internal", ["127.0.0.1"])

    response = fetch("GET", listener.url(host="svc.internal"), policy=policy)

    assert response.body == BODY
    assert resolver.calls == [("svc.internal", listener.port)]
    assert listener.requests[0].headers["host"] == f"svc.internal:{listener.port}"


def test_allowed_host_does_not_allow_other_spellings_of_its_address(listener: Listener) -> None:
    for url in (listener.url(host="2130706433"), listener.url(host="localhost"), listener.url(host="[::ffff:7f00:1]")):
        with pytest.raises(EgressRefused, match="loopback"):
            fetch("GET", url, policy=LOOPBACK_ALLOWED)
    assert listener.requests == []


def test_query_params_and_json_body_arrive_intact(listener: Listener) -> None:
    payload = {"question": "how much is 2 + 2?", "ids": [1, 2], "nested": {"ok": True}}

    fetch("POST", listener.url("/echo?x=1"), params={"q": "a b&c"}, json=payload, policy=LOOPBACK_ALLOWED)

    (request,) = listener.requests
    assert (request.method, request.path) == ("POST", "/echo?x=1&q=a+b%26c")
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == payload


def test_raw_content_and_headers_arrive_but_a_forged_host_header_does_not(listener: Listener) -> None:
    headers = {"Authorization": "Bearer team-secret", "Host": "internal-admin.example"}

    fetch("PUT", listener.url("/doc"), headers=headers, content=b"\x00raw bytes", policy=LOOPBACK_ALLOWED)

    (request,) = listener.requests
    assert request.body == b"\x00raw bytes"
    assert request.headers["authorization"] == "Bearer team-secret"
    assert request.headers["host"] == f"127.0.0.1:{listener.port}"


@pytest.fixture
def neighbours(listener: Listener) -> Iterator[list[Listener]]:
    """Listeners a redirect from ``listener`` might aim at: another loopback address, another port."""
    with listening("127.0.0.2", listener.port) as other_host, listening() as other_port:
        yield [other_host, other_port]


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://127.0.0.2:{port}/hello", "redirected to another host (127.0.0.2"),
        ("http://localhost:{port}/hello", "redirected to another host (localhost"),
        ("http://127.0.0.1:{other_port}/hello", "redirected to another host (127.0.0.1:{other_port}"),
        ("https://127.0.0.1:{port}/hello", "redirected to another host (127.0.0.1:{port} over https"),
        (f"http://{PUBLIC}/", f"redirected to another host ({PUBLIC}"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:{port}/_", "only http and https"),
        ("http://user@127.0.0.1:{port}/hello", "user name or password"),
    ],
)
def test_redirect_off_the_called_host_is_refused_and_reaches_nothing(
    listener: Listener, neighbours: list[Listener], location: str, reason: str
) -> None:
    ports = {"port": listener.port, "other_port": neighbours[1].port}
    listener.redirects["/go"] = (302, location.format(**ports))
    # Every target is allowed as a host: what stops the redirect is that it leaves the called host.
    policy = replace(LOOPBACK_ALLOWED, allowed_internal_hosts=frozenset({"127.0.0.1", "127.0.0.2", "localhost"}))

    with pytest.raises(EgressRefused) as refused:
        fetch("GET", listener.url("/go"), headers={"Authorization": "Bearer team-secret"}, policy=policy)

    assert reason.format(**ports) in str(refused.value)
    assert [request.path for request in listener.requests] == ["/go"]
    assert [neighbour.requests for neighbour in neighbours] == [[], []]


def test_same_host_redirects_within_the_limit_are_followed(listener: Listener) -> None:
    listener.redirects["/one"] = (301, listener.url("/two"))
    listener.redirects["/two"] = (302, "/three")
    listener.redirects["/three"] = (302, "hello")

    response = fetch("GET", listener.url("/one"), policy=LOOPBACK_ALLOWED)

    assert (response.body, response.redirects, response.url) == (BODY, 3, listener.url("/hello"))
    assert [request.path for request in listener.requests] == ["/one", "/two", "/three", "/hello"]


def test_more_redirects_than_the_limit_are_refused(listener: Listener) -> None:
    listener.redirects["/loop"] = (302, "/loop")

    with pytest.raises(EgressRefused, match="redirected more than 2 times"):
        fetch("GET", listener.url("/loop"), policy=replace(LOOPBACK_ALLOWED, max_redirects=2))

    assert len(listener.requests) == 3


@pytest.mark.parametrize(("status", "method", "body"), [(303, "GET", b""), (307, "POST", b'{"a":1}')])
def test_redirect_status_decides_whether_the_request_is_repeated_with_its_body(
    listener: Listener, status: int, method: str, body: bytes
) -> None:
    listener.redirects["/submit"] = (status, "/hello")

    fetch("POST", listener.url("/submit"), json={"a": 1}, policy=LOOPBACK_ALLOWED)

    assert (listener.requests[1].method, listener.requests[1].body) == (method, body)


def test_oversize_answer_stops_at_the_cap(listener: Listener) -> None:
    # The body never ends: the call can only return by giving up at the cap.
    with pytest.raises(EgressResponseTooLarge, match="larger than the 100000-byte limit"):
        fetch("GET", listener.url("/big"), policy=replace(LOOPBACK_ALLOWED, max_response_bytes=100_000))


def test_answer_exactly_at_the_cap_is_returned(listener: Listener) -> None:
    response = fetch("GET", listener.url("/hello"), policy=replace(LOOPBACK_ALLOWED, max_response_bytes=len(BODY)))
    assert response.body == BODY


@pytest.mark.parametrize("path", ["/stall", "/trickle"])
def test_answer_slower_than_the_deadline_times_out(listener: Listener, path: str) -> None:
    # /trickle keeps every single read fast, so only a deadline on the whole call stops it.
    with pytest.raises(EgressTimeout, match=r"did not answer within 0\.5 s"):
        fetch("GET", listener.url(path), policy=replace(LOOPBACK_ALLOWED, timeout_s=0.5))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for svc.internal (and its key), trusted as its own authority."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=svc.internal", "-addext", "subjectAltName=DNS:svc.internal",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_listener(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    """An https listener on 127.0.0.1 whose certificate names svc.internal; httpx trusts it for this test."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    monkeypatch.setattr(certifi, "where", lambda: str(certificate[0]))
    with listening(tls=context) as listener:
        yield listener


def test_https_connects_to_the_checked_address_and_verifies_the_name(tls_listener: Listener) -> None:
    policy, _ = allowing_name("svc.internal", ["127.0.0.1"])

    response = fetch("GET", tls_listener.url("/hello", host="svc.internal", scheme="https"), policy=policy)

    assert response.body == BODY
    assert tls_listener.tls_names == ["svc.internal"]
    assert tls_listener.requests[0].headers["host"] == f"svc.internal:{tls_listener.port}"


def test_https_certificate_for_another_name_fails(tls_listener: Listener) -> None:
    policy, _ = allowing_name("other.internal", ["127.0.0.1"])

    with pytest.raises(EgressFailed, match="certificate verify failed"):
        fetch("GET", tls_listener.url("/hello", host="other.internal", scheme="https"), policy=policy)

    assert tls_listener.requests == []
