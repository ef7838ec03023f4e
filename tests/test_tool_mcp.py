"""MCP servers as team tools: register a server, import its tools, call them (tools_app, kind mcp).

A real MCP server (the SDK's ``MCPServer`` over streamable HTTP) runs on a loopback port for the module and records
the headers of every request that reaches it. What a user would notice: the server's tools appear among the team's
tools with the server's descriptions and schemas; calling one gives back its text, or a failed outcome when the tool
reports an error; a loopback server the operator did not allow is refused and reached by nothing; the secret headers
reach the server and no page, API answer or audit event; names that cannot be imported are reported by name; only
owners and admins register servers and import tools.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from subprocess import Popen
from typing import Any

import anyio
import pytest
import uvicorn
from cryptography.fernet import Fernet
from django.test import Client
from django.urls import reverse
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations

from accounts.models import AuditEvent, Team
from accounts.permissions import TeamAccess
from accounts.roles import Role
from tests.factories import member, sample_tool
from tools_app import dispatch, secrets, services
from tools_app.models import McpServer, Tool
from tools_app.sandbox import mcp_client
from tools_app.sandbox.execute import CallSpec, execute

Login = Callable[[Any], Client]

SECRET = "mcp-PLAINTEXT-6161"
SECRET_HEADERS = f"Authorization: Bearer {SECRET}"


# --- the MCP server ----------------------------------------------------------------------------------


@dataclass
class Remote:
    """The module's MCP server: its endpoint, and the headers of each request that reached it."""

    url: str
    port: int
    requests: list[dict[str, str]] = field(default_factory=list)


def make_server(requests: list[dict[str, str]]) -> MCPServer:
    server = MCPServer("orders")

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def lookup_order(order_id: str) -> str:
        """Look up an order's status by its number."""
        return f"Order {order_id}: shipped"

    @server.tool()
    def cancel_order(order_id: str, reason: str = "") -> str:
        """Cancel an order that has not shipped."""
        raise ToolError(f"order {order_id} has shipped: it cannot be cancelled")

    @server.tool()
    def whoami() -> str:
        """Say which credentials the caller sent."""
        return f"you sent {requests[-1].get('authorization', 'nothing')}"

    @server.tool(name="orders.export")
    def export_orders() -> str:
        """Export every order."""
        return "[]"

    @server.tool(name="bad\x00name")
    def bad_name() -> str:
        """A name the database could not even store."""
        return ""

    @server.tool()
    async def wait_for_report(seconds: float) -> str:
        """Wait for a report, then say it is ready."""
        await anyio.sleep(seconds)
        return "ready"

    return server


class RecordingApp:
    """The server's ASGI app, recording each HTTP request's headers before it is handled."""

    def __init__(self, app: Any, requests: list[dict[str, str]]) -> None:
        self.app, self.requests = app, requests

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests.append({name.decode(): value.decode() for name, value in scope["headers"]})
            if scope["path"] == "/moved":  # a redirect to the same server under another host name
                port = scope["server"][1]
                location = f"http://localhost:{port}/mcp".encode()
                await send({"type": "http.response.start", "status": 307, "headers": [(b"location", location)]})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def remote_server() -> Iterator[Remote]:
    """The MCP server on a loopback port, in a thread of this process, for the whole module."""
    requests: list[dict[str, str]] = []
    # Host checks are the studio's side here: the server answers whatever name it is reached by.
    app = make_server(requests).streamable_http_app(
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(RecordingApp(app, requests), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield Remote(url=f"http://127.0.0.1:{port}/mcp", port=port, requests=requests)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def remote(remote_server: Remote, settings: Any) -> Remote:
    """The MCP server, its record emptied, 127.0.0.1 allowed by the operator and calls run in this process."""
    remote_server.requests.clear()
    settings.TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    settings.TOOLS_EXECUTE_INLINE = True
    return remote_server


# --- helpers -----------------------------------------------------------------------------------------


def url(name: str, *args: Any) -> str:
    return reverse(f"tools:{name}", args=["acme", *args])


def text_of(response: Any) -> str:
    """The page's text (HTML-escaped quotes put back)."""
    return response.content.decode().replace("&quot;", '"').replace("&#x27;", "'")


def server_form(remote: Remote, **overrides: Any) -> dict[str, Any]:
    return {"name": "orders", "url": remote.url, "name_prefix": "", "timeout_s": 5, "max_response_bytes": 100_000,
            "secret_headers": SECRET_HEADERS, **overrides}  # fmt: skip


def register(owner: TeamAccess, remote: Remote, **overrides: Any) -> McpServer:
    fields = server_form(remote, **overrides)
    fields["secret_headers"] = {"Authorization": f"Bearer {SECRET}"} if fields["secret_headers"] else None
    return services.register_mcp_server(access=owner, **fields)


def imported(team: Team) -> dict[str, Tool]:
    return {tool.name: tool for tool in Tool.objects.for_team(team).filter(kind=Tool.Kind.MCP)}


@pytest.fixture
def client(alice: Any, login: Login) -> Client:
    return login(alice)


@pytest.fixture
def server(owner: TeamAccess, remote: Remote) -> McpServer:
    """The MCP server registered in acme, with its secret header, its tools not imported yet."""
    return register(owner, remote)


@pytest.fixture
def tools(owner: TeamAccess, server: McpServer) -> dict[str, Tool]:
    """The server's tools, imported."""
    services.import_mcp_tools(access=owner, server=server)
    return imported(owner.team)


# --- registering --------------------------------------------------------------------------------------


def test_owner_registers_a_server_and_nothing_is_sent_to_it(acme: Team, client: Client, remote: Remote) -> None:
    response = client.post(url("mcp_new"), server_form(remote))
    server = McpServer.objects.for_team(acme).get(name="orders")
    assert response.status_code == 302 and response["Location"] == url("mcp_detail", server.pk)
    assert server.has_secret and server.secret_header_names == ["Authorization"]
    assert remote.requests == []


def test_server_on_an_internal_host_is_refused_at_registration(acme: Team, client: Client, remote: Remote,
                                                               settings: Any) -> None:  # fmt: skip
    settings.TOOL_ALLOWED_HOSTS = []
    response = client.post(url("mcp_new"), server_form(remote))
    assert response.status_code == 400
    assert "127.0.0.1 is a loopback address: a tool may not call internal addresses" in text_of(response)
    assert not McpServer.objects.for_team(acme).exists()


def test_malformed_server_fields_name_the_field_and_the_fix(client: Client, remote: Remote) -> None:
    response = client.post(url("mcp_new"), server_form(remote, url="ftp://mcp.example.com/", name_prefix="9x"))
    assert response.status_code == 400
    assert "Use an http:// or https:// URL, e.g. https://mcp.example.com/mcp." in text_of(response)
    assert "Use 1–24 letters, digits, underscores or hyphens, starting with a letter" in text_of(response)


# --- importing ----------------------------------------------------------------------------------------


def test_import_adds_the_servers_tools_with_their_descriptions_and_schemas(
    acme: Team, client: Client, server: McpServer
) -> None:
    response = client.post(url("mcp_import", server.pk), follow=True)
    assert "Import from “orders”: 4 imported, 2 skipped." in text_of(response)
    tools = imported(acme)
    assert sorted(tools) == ["cancel_order", "lookup_order", "wait_for_report", "whoami"]
    lookup = tools["lookup_order"]
    assert lookup.description == "Look up an order's status by its number."
    assert lookup.parameters["properties"]["order_id"]["type"] == "string"
    assert lookup.parameters["required"] == ["order_id"]
    assert lookup.target_summary == "MCP orders: lookup_order"


def test_imported_risk_follows_the_servers_read_only_hint(tools: dict[str, Tool]) -> None:
    assert (tools["lookup_order"].risk, tools["cancel_order"].risk) == ("read", "write")


def test_a_name_that_is_not_a_function_name_is_reported_by_name(client: Client, server: McpServer) -> None:
    response = client.post(url("mcp_import", server.pk), follow=True)
    assert "Skipped “orders.export”: its name: Use 1–64 letters, digits, underscores or hyphens" in text_of(response)


def test_a_name_the_team_already_uses_is_reported_and_left_alone(
    acme: Team, alice: Any, client: Client, server: McpServer
) -> None:
    http_tool = sample_tool(acme, alice, name="Lookup_Order")
    response = client.post(url("mcp_import", server.pk), follow=True)
    assert "Skipped “lookup_order”: the team already has a tool of that name" in text_of(response)
    assert Tool.objects.for_team(acme).get(name__iexact="lookup_order").pk == http_tool.pk


def test_a_name_prefix_keeps_the_servers_tools_apart(acme: Team, alice: Any, owner: TeamAccess, remote: Remote) -> None:
    sample_tool(acme, alice, name="lookup_order")
    server = register(owner, remote, name_prefix="orders_")
    report = services.import_mcp_tools(access=owner, server=server)
    assert "orders_lookup_order" in report.created
    assert imported(acme)["orders_lookup_order"].config["remote_name"] == "lookup_order"


def test_reimport_updates_schemas_and_reports_tools_the_server_dropped(
    acme: Team, client: Client, server: McpServer, tools: dict[str, Tool]
) -> None:
    Tool.objects.for_team(acme).filter(pk=tools["lookup_order"].pk).update(parameters={"type": "object"})
    Tool.objects.create(
        team=acme, kind=Tool.Kind.MCP, mcp_server=server, name="retired", description="Gone.",
        parameters={"type": "object"}, config={"remote_name": "retired", "annotations": {}},
    )  # fmt: skip
    response = client.post(url("mcp_import", server.pk), follow=True)
    text = text_of(response)
    assert "1 updated, 3 unchanged, 2 skipped, 1 no longer offered" in text
    assert "No longer offered by the server (kept; delete them if they are gone for good): retired." in text
    assert imported(acme)["lookup_order"].parameters["required"] == ["order_id"]


def test_import_is_audited_with_what_it_did(acme: Team, tools: dict[str, Tool]) -> None:
    event = AuditEvent.objects.for_team(acme).get(action="tool.mcp_imported")
    assert event.details["created"] == ["cancel_order", "lookup_order", "wait_for_report", "whoami"]
    assert [entry.split(":")[0] for entry in event.details["skipped"]] == ["bad?name", "orders.export"]
    assert AuditEvent.objects.for_team(acme).filter(action="tool.created").count() == 4


def test_server_on_loopback_the_operator_did_not_allow_is_refused_by_egress(
    acme: Team, client: Client, server: McpServer, remote: Remote, settings: Any
) -> None:
    settings.TOOL_ALLOWED_HOSTS = []  # allowed when registered, no longer when imported
    response = client.post(url("mcp_import", server.pk), follow=True)
    assert "could not be listed: refused: 127.0.0.1 is a loopback address" in text_of(response)
    assert remote.requests == []
    assert not imported(acme)
    assert AuditEvent.objects.for_team(acme).get(action="tool.mcp_import_failed").details["error"] == "refused"


def test_a_name_resolving_to_loopback_is_refused_before_anything_is_sent(remote: Remote) -> None:
    spec = mcp_client.ServerSpec(url=f"http://mcp.test:{remote.port}/mcp", resolve=lambda host, port: ["127.0.0.1"])
    outcome = mcp_client.list_tools(spec)
    assert (outcome.ok, outcome.error) == (False, "refused")
    assert outcome.text.startswith("refused: mcp.test resolves to 127.0.0.1, a loopback address")
    assert remote.requests == []


def test_the_connection_goes_to_the_address_that_was_checked(remote: Remote) -> None:
    """mcp.test exists only in this resolver: reaching the server proves the client never resolved it again."""
    spec = mcp_client.ServerSpec(
        url=f"http://mcp.test:{remote.port}/mcp", allowed_hosts=("mcp.test",), resolve=lambda host, port: ["127.0.0.1"]
    )
    outcome = mcp_client.list_tools(spec)
    assert outcome.ok, outcome.text
    assert {request["host"] for request in remote.requests} == {f"mcp.test:{remote.port}"}


def test_answers_over_the_size_cap_stop_the_listing(remote: Remote) -> None:
    spec = mcp_client.ServerSpec(url=remote.url, allowed_hosts=("127.0.0.1",), max_response_bytes=300)
    outcome = mcp_client.list_tools(spec)
    assert (outcome.ok, outcome.error) == (False, "too_large")


def test_a_redirect_to_another_host_is_not_followed(remote: Remote) -> None:
    spec = mcp_client.ServerSpec(url=f"http://127.0.0.1:{remote.port}/moved", allowed_hosts=("127.0.0.1", "localhost"))
    outcome = mcp_client.list_tools(spec)
    assert not outcome.ok
    assert {request["host"] for request in remote.requests} == {f"127.0.0.1:{remote.port}"}


# --- calling ------------------------------------------------------------------------------------------


def test_calling_an_imported_tool_returns_its_text(tools: dict[str, Tool]) -> None:
    outcome = dispatch.run_call(tools["lookup_order"], {"order_id": "A-1042"})
    assert (outcome.ok, outcome.text, outcome.error) == (True, "Order A-1042: shipped", "")


def test_a_tool_that_reports_an_error_is_a_failed_outcome(tools: dict[str, Tool]) -> None:
    outcome = dispatch.run_call(tools["cancel_order"], {"order_id": "A-1042"})
    assert (outcome.ok, outcome.error) == (False, "tool_error")
    assert "order A-1042 has shipped: it cannot be cancelled" in outcome.text


def test_a_call_past_the_servers_timeout_times_out(remote: Remote) -> None:
    config = {"url": remote.url, "remote_name": "wait_for_report", "timeout_s": 1, "max_response_bytes": 100_000}
    spec = CallSpec(kind="mcp", name="wait_for_report", config=config, arguments={"seconds": 3}, secret=None,
                    allowed_hosts=("127.0.0.1",))  # fmt: skip
    outcome = execute(spec)
    assert (outcome.ok, outcome.error) == (False, "timeout")
    assert "did not answer within 1 s" in outcome.text


def test_the_secret_header_reaches_the_server(remote: Remote, tools: dict[str, Tool]) -> None:
    remote.requests.clear()
    assert dispatch.run_call(tools["lookup_order"], {"order_id": "A-1042"}).ok
    assert remote.requests and {request["authorization"] for request in remote.requests} == {f"Bearer {SECRET}"}


def test_a_secret_the_server_echoes_is_redacted_from_the_result(tools: dict[str, Tool]) -> None:
    outcome = dispatch.run_call(tools["whoami"], {})
    assert outcome.ok
    assert SECRET not in outcome.text and "[secret redacted]" in outcome.text


def test_calls_to_a_server_no_longer_allowed_are_refused(tools: dict[str, Tool], remote: Remote, settings: Any) -> None:
    settings.TOOL_ALLOWED_HOSTS = []
    remote.requests.clear()
    outcome = dispatch.run_call(tools["lookup_order"], {"order_id": "A-1042"})
    assert (outcome.ok, outcome.error) == (False, "refused")
    assert remote.requests == []


def test_tools_worker_lists_and_calls_the_server(
    tools_worker: Popen[bytes], owner: TeamAccess, remote: Remote, settings: Any
) -> None:
    """The studio itself opens no connection: the worker (127.0.0.1 allowed in its environment) does both."""
    settings.TOOLS_EXECUTE_INLINE = False
    server = register(owner, remote)
    report = services.import_mcp_tools(access=owner, server=server)
    assert report.created == ["cancel_order", "lookup_order", "wait_for_report", "whoami"]
    outcome = dispatch.run_call(imported(owner.team)["lookup_order"], {"order_id": "B-7"})
    assert (outcome.ok, outcome.text) == (True, "Order B-7: shipped")


# --- secrets, pages, the API --------------------------------------------------------------------------


def test_no_page_api_answer_or_audit_event_shows_the_secret(
    acme: Team, alice: Any, client: Client, bearer: Callable[..., Client], server: McpServer, tools: dict[str, Tool]
) -> None:
    pages = [url("list"), url("mcp_detail", server.pk), url("detail", tools["lookup_order"].pk),
             url("edit", tools["lookup_order"].pk), url("mcp_delete", server.pk)]  # fmt: skip
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200 and SECRET not in response.content.decode(), page
    assert "Set: Authorization" in client.get(url("mcp_detail", server.pk)).content.decode()
    answer = bearer(alice).get("/api/v1/teams/acme/mcp-servers/")
    assert answer.json()["items"][0]["secret_header_names"] == ["Authorization"]
    assert SECRET not in answer.content.decode()
    events = AuditEvent.objects.for_team(acme).values_list("details", flat=True)
    assert events and all(SECRET not in json.dumps(details) for details in events)


def test_key_rotation_re_encrypts_the_servers_secret_headers(acme: Team, owner: TeamAccess, remote: Remote,
                                                              settings: Any) -> None:  # fmt: skip
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.SECRETS_KEYS = [old_key]
    server = register(owner, remote)
    settings.SECRETS_KEYS = [new_key, old_key]
    assert services.reencrypt_secrets() == (1, [])
    settings.SECRETS_KEYS = [new_key]
    saved = McpServer.objects.for_team(acme).get(pk=server.pk)
    assert secrets.decrypt_json(saved.secret) == {"Authorization": f"Bearer {SECRET}"}


def test_tools_page_lists_the_servers_and_their_tools(client: Client, tools: dict[str, Tool]) -> None:
    html = client.get(url("list")).content.decode()
    assert 'id="mcp-servers"' in html and "orders</a>" in html
    assert "MCP orders: lookup_order" in html


def test_imported_tool_edit_changes_its_risk_and_keeps_the_servers_schema(
    acme: Team, client: Client, tools: dict[str, Tool]
) -> None:
    tool = tools["lookup_order"]
    response = client.post(url("edit", tool.pk), {"name": "lookup_order", "risk": "write", "rate_limit_per_minute": 5})
    assert response.status_code == 302
    saved = Tool.objects.for_team(acme).get(pk=tool.pk)
    assert (saved.risk, saved.rate_limit_per_minute, saved.parameters) == ("write", 5, tool.parameters)


def test_deleting_the_server_deletes_its_tools(
    acme: Team, client: Client, server: McpServer, tools: dict[str, Tool]
) -> None:
    response = client.post(url("mcp_delete", server.pk))
    assert response.status_code == 302 and response["Location"] == url("list")
    assert not McpServer.objects.for_team(acme).exists() and not imported(acme)
    event = AuditEvent.objects.for_team(acme).get(action="tool.mcp_server_deleted")
    assert event.details["tools"] == ["cancel_order", "lookup_order", "wait_for_report", "whoami"]


def test_admin_registers_and_imports_through_the_api(acme: Team, bearer: Callable[..., Client], remote: Remote) -> None:
    api = bearer(member(acme, Role.ADMIN, "adele"))
    body = {"name": "orders", "url": remote.url, "secret_headers": {"Authorization": f"Bearer {SECRET}"}}
    created = api.post("/api/v1/teams/acme/mcp-servers/", json.dumps(body), content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["secret_header_names"] == ["Authorization"] and SECRET not in created.content.decode()
    answer = api.post(f"/api/v1/teams/acme/mcp-servers/{created.json()['id']}/import")
    assert answer.status_code == 200, answer.content
    assert answer.json()["created"] == ["cancel_order", "lookup_order", "wait_for_report", "whoami"]
    assert [skipped["name"] for skipped in answer.json()["skipped"]] == ["bad?name", "orders.export"]


def test_api_import_of_a_refused_server_gets_400_naming_the_server(
    bearer: Callable[..., Client], alice: Any, server: McpServer, settings: Any
) -> None:
    settings.TOOL_ALLOWED_HOSTS = []
    answer = bearer(alice).post(f"/api/v1/teams/acme/mcp-servers/{server.pk}/import")
    assert answer.status_code == 400
    assert "refused: 127.0.0.1 is a loopback address" in " ".join(answer.json()["errors"]["server"])


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_members_and_viewers_cannot_register_a_server(
    role: str, acme: Team, login: Login, bearer: Callable[..., Client], remote: Remote
) -> None:
    user = member(acme, role, f"acme-{role}")
    page = login(user).post(url("mcp_new"), server_form(remote))
    body = json.dumps({"name": "orders", "url": remote.url})
    api = bearer(user).post("/api/v1/teams/acme/mcp-servers/", body, content_type="application/json")
    assert (page.status_code, api.status_code) == (403, 403)
    assert not McpServer.objects.for_team(acme).exists()


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_members_and_viewers_cannot_import(
    role: str, acme: Team, login: Login, bearer: Callable[..., Client], server: McpServer, remote: Remote
) -> None:
    user = member(acme, role, f"acme-{role}")
    page = login(user).post(url("mcp_import", server.pk))
    api = bearer(user).post(f"/api/v1/teams/acme/mcp-servers/{server.pk}/import")
    assert (page.status_code, api.status_code) == (403, 403)
    assert not imported(acme) and remote.requests == []


def test_members_read_the_server_page_without_the_import_button(
    acme: Team, login: Login, bob: Any, server: McpServer
) -> None:
    response = login(bob).get(url("mcp_detail", server.pk))
    assert response.status_code == 200
    assert "orders" in response.content.decode() and "Import tools" not in response.content.decode()
