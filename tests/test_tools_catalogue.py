"""The tools catalogue at /t/<team>/tools/: owners and admins define HTTP and SQL tools, members read them.

What a user would notice: a tool saved through the page, with every change in the audit trail; bad definitions
answered with a message naming the field and the fix; a secret that, once saved, no page and no audit event shows
again; members reading but not changing; member-written text escaped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.models import AuditEvent, Team
from tests.factories import ORDER_SCHEMA, http_tool_form, sql_tool_form
from tools_app import secrets
from tools_app.definitions import FREE_SELECT_PARAMETERS
from tools_app.models import Tool

Login = Callable[[Any], Client]

HEADER_SECRET = "sk-live-PLAINTEXT-4242"
OTHER_SECRET = "key-PLAINTEXT-7373"
DSN_PASSWORD = "dsn-PLAINTEXT-9191"
SECRET_HEADERS = f"Authorization: Bearer {HEADER_SECRET}\nX-Api-Key: {OTHER_SECRET}"
DSN = f"postgresql://reader:{DSN_PASSWORD}@db.example.com:5432/sales"
PLAINTEXTS = (HEADER_SECRET, OTHER_SECRET, DSN_PASSWORD)


def url(name: str, *args: Any) -> str:
    return reverse(f"tools:{name}", args=["acme", *args])


def tool_named(team: Team, name: str) -> Tool:
    return Tool.objects.for_team(team).get(name=name)


def events(team: Team, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.for_team(team).filter(action=action).order_by("pk"))


def errors_of(response: Any) -> str:
    """The page's text, for asserting on the messages it shows (HTML-escaped quotes put back)."""
    return response.content.decode().replace("&quot;", '"').replace("&#x27;", "'")


@pytest.fixture
def client(alice: Any, login: Login) -> Client:
    return login(alice)


@pytest.fixture
def http_tool(acme: Team, client: Client) -> Tool:
    """An HTTP tool with two secret headers, created through the page by alice."""
    response = client.post(url("new_http"), http_tool_form(secret_headers=SECRET_HEADERS))
    assert response.status_code == 302, errors_of(response)
    return tool_named(acme, "lookup_order")


@pytest.fixture
def sql_tool(acme: Team, client: Client) -> Tool:
    response = client.post(url("new_sql"), sql_tool_form(dsn=DSN))
    assert response.status_code == 302, errors_of(response)
    return tool_named(acme, "order_status")


# --- creating, changing, deleting -------------------------------------------------------------------


def test_owner_creates_an_http_tool_and_lands_on_its_page(acme: Team, client: Client) -> None:
    schema = {**ORDER_SCHEMA, "properties": {**ORDER_SCHEMA["properties"], "note": {"type": "string"}}}
    form = http_tool_form(
        method="POST", url="https://api.example.com/orders/{order_id}/notes", body_args="note",
        parameters=json.dumps(schema),
    )  # fmt: skip
    response = client.post(url("new_http"), form)
    tool = tool_named(acme, "lookup_order")
    assert response.status_code == 302
    assert response["Location"] == url("detail", tool.pk)
    assert tool.kind == Tool.Kind.HTTP
    assert tool.config["method"] == "POST" and tool.config["body_args"] == ["note"]
    assert tool.target_summary == "POST api.example.com"
    assert not tool.has_secret


def test_creation_is_audited_without_the_secret(acme: Team, http_tool: Tool) -> None:
    (event,) = events(acme, "tool.created")
    assert event.target_id == str(http_tool.pk)
    assert event.details["secret"] == "set"
    assert event.details["calls"] == "GET api.example.com"


def test_owner_creates_a_fixed_sql_tool(acme: Team, sql_tool: Tool) -> None:
    assert sql_tool.config["mode"] == "fixed"
    assert sql_tool.config["query"] == "SELECT status FROM orders WHERE id = %(order_id)s"
    assert sql_tool.has_secret
    assert sql_tool.target_summary == "fixed query"


def test_free_sql_tool_gets_the_one_sql_argument_and_a_warning(acme: Team, client: Client) -> None:
    response = client.post(url("new_sql"), sql_tool_form(mode="free", query="", parameters=""), follow=True)
    tool = tool_named(acme, "order_status")
    assert tool.parameters == FREE_SELECT_PARAMETERS
    assert "the parser and the database role behind the DSN are the only guards" in response.content.decode()


def test_sql_form_warns_about_free_mode_before_it_is_chosen(client: Client) -> None:
    assert "the parser and the database role behind the DSN are then the only guards" in (
        client.get(url("new_sql")).content.decode()
    )


def test_edit_records_the_changed_fields_and_keeps_the_secret(acme: Team, client: Client, http_tool: Tool) -> None:
    token = bytes(http_tool.secret)
    form = http_tool_form(risk="write", url="https://api.example.com/v2/orders/{order_id}")
    response = client.post(url("edit", http_tool.pk), form)
    assert response.status_code == 302
    tool = tool_named(acme, "lookup_order")
    assert tool.risk == "write" and tool.config["url"].endswith("/v2/orders/{order_id}")
    assert bytes(tool.secret) == token
    assert tool.secret_header_names == ["Authorization", "X-Api-Key"]
    (event,) = events(acme, "tool.updated")
    assert event.details == {"changed": ["risk", "config.url"]}


def test_edit_with_nothing_changed_records_nothing(acme: Team, client: Client, http_tool: Tool) -> None:
    assert client.post(url("edit", http_tool.pk), http_tool_form()).status_code == 302
    assert events(acme, "tool.updated") == []


def test_edit_replaces_the_secret_and_says_so_in_the_audit_trail(acme: Team, client: Client, http_tool: Tool) -> None:
    client.post(url("edit", http_tool.pk), http_tool_form(secret_headers="X-Token: new-PLAINTEXT-5151"))
    tool = tool_named(acme, "lookup_order")
    assert secrets.decrypt_json(tool.secret) == {"X-Token": "new-PLAINTEXT-5151"}
    assert tool.secret_header_names == ["X-Token"]
    (event,) = events(acme, "tool.updated")
    assert event.details == {"changed": [], "secret": "replaced"}


def test_sql_edit_with_the_dsn_left_empty_keeps_it(acme: Team, client: Client, sql_tool: Tool) -> None:
    response = client.post(url("edit", sql_tool.pk), sql_tool_form(dsn="", max_rows=50))
    assert response.status_code == 302
    tool = tool_named(acme, "order_status")
    assert secrets.decrypt_json(tool.secret) == DSN and tool.config["max_rows"] == 50
    assert events(acme, "tool.updated")[0].details == {"changed": ["config.max_rows"]}


def test_edit_removes_the_secret_when_asked(acme: Team, client: Client, http_tool: Tool) -> None:
    client.post(url("edit", http_tool.pk), http_tool_form(remove_secret="on"))
    tool = tool_named(acme, "lookup_order")
    assert not tool.has_secret and tool.secret_header_names == []
    assert events(acme, "tool.updated")[0].details["secret"] == "removed"


def test_new_secret_and_removal_together_are_refused(acme: Team, client: Client, http_tool: Tool) -> None:
    response = client.post(url("edit", http_tool.pk), http_tool_form(secret_headers="X-Token: t", remove_secret="on"))
    assert response.status_code == 400
    assert "Either enter a new secret or tick “remove”, not both." in errors_of(response)
    assert tool_named(acme, "lookup_order").secret_header_names == ["Authorization", "X-Api-Key"]


def test_delete_asks_then_deletes_and_leaves_an_audit_event(acme: Team, client: Client, http_tool: Tool) -> None:
    page = client.get(url("delete", http_tool.pk))
    assert page.status_code == 200 and "Delete “lookup_order”?" in page.content.decode()
    assert Tool.objects.for_team(acme).filter(pk=http_tool.pk).exists()
    response = client.post(url("delete", http_tool.pk))
    assert response.status_code == 302 and response["Location"] == url("list")
    assert not Tool.objects.for_team(acme).filter(pk=http_tool.pk).exists()
    (event,) = events(acme, "tool.deleted")
    assert event.details == {"name": "lookup_order", "kind": "http"}


def test_list_shows_each_tool_with_its_risk_and_target(client: Client, http_tool: Tool, sql_tool: Tool) -> None:
    html = client.get(url("list")).content.decode()
    assert "lookup_order" in html and "order_status" in html
    assert '<span class="pill risk-read">Read</span>' in html
    assert "GET api.example.com" in html and "fixed query" in html
    assert "30/min" in html


def test_empty_list_explains_what_tools_are_for(client: Client) -> None:
    html = client.get(url("list")).content.decode()
    assert "No tools yet. Tools let a deployed model look things up or act for its users" in html
    assert url("new_http") in html and url("new_sql") in html


def test_team_navigation_links_to_tools(client: Client) -> None:
    html = client.get(reverse("team_dashboard", args=["acme"])).content.decode()
    assert f'<a href="{url("list")}">Tools</a>' in html


def test_detail_shows_what_the_model_sees(client: Client, http_tool: Tool) -> None:
    html = client.get(url("detail", http_tool.pk)).content.decode()
    assert "&quot;name&quot;: &quot;lookup_order&quot;" in html
    assert "https://api.example.com/orders/{order_id}" in html


# --- validation: the field, and the fix ---------------------------------------------------------------


def test_invalid_json_schema_is_refused_naming_the_problem(acme: Team, client: Client) -> None:
    schema = {"type": "object", "properties": {"order_id": {"type": "strin"}}, "required": ["order_id"]}
    response = client.post(url("new_http"), http_tool_form(parameters=json.dumps(schema)))
    assert response.status_code == 400
    assert "This is not a valid JSON Schema" in errors_of(response)
    assert "$.properties.order_id.type" in errors_of(response)
    assert not Tool.objects.for_team(acme).exists()


def test_schema_that_is_not_an_object_is_refused(client: Client) -> None:
    response = client.post(url("new_http"), http_tool_form(parameters='{"type": "string"}'))
    assert response.status_code == 400
    assert 'The top level needs "type": "object"' in errors_of(response)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "object",', "This is not JSON: Expecting property name enclosed in double quotes at line 1"),
        ('{"type": "object", "maximum": NaN}', "This JSON cannot be used: NaN is not a JSON number."),
        ("[" * 100_000 + "]" * 100_000, "This JSON cannot be used"),
    ],
    ids=["truncated", "nan", "deep"],
)
def test_unreadable_parameters_get_a_message_not_a_500(client: Client, text: str, message: str) -> None:
    response = client.post(url("new_http"), http_tool_form(parameters=text))
    assert response.status_code == 400
    assert message in errors_of(response)


def test_url_placeholder_missing_from_the_schema_is_refused(client: Client) -> None:
    response = client.post(url("new_http"), http_tool_form(url="https://api.example.com/orders/{order}"))
    assert response.status_code == 400
    assert "{order} is not a property of the parameters schema: add “order” to its properties" in errors_of(response)


def test_url_placeholder_must_be_required(client: Client) -> None:
    schema = {**ORDER_SCHEMA, "required": []}
    response = client.post(url("new_http"), http_tool_form(parameters=json.dumps(schema)))
    assert "list “order_id” in the schema's required" in errors_of(response)


def test_placeholder_outside_the_path_is_refused(client: Client) -> None:
    response = client.post(url("new_http"), http_tool_form(url="https://{order_id}.example.com/"))
    assert "Placeholders may only appear in the path" in errors_of(response)


def test_property_sent_nowhere_is_refused(client: Client) -> None:
    schema = {**ORDER_SCHEMA, "properties": {**ORDER_SCHEMA["properties"], "limit": {"type": "integer"}}}
    response = client.post(url("new_http"), http_tool_form(parameters=json.dumps(schema)))
    assert "The model would supply “limit” but the request never sends it" in errors_of(response)


def test_body_arguments_on_a_get_are_refused(client: Client) -> None:
    schema = {**ORDER_SCHEMA, "properties": {**ORDER_SCHEMA["properties"], "note": {"type": "string"}}}
    response = client.post(url("new_http"), http_tool_form(parameters=json.dumps(schema), body_args="note"))
    assert "A GET request carries no body: send these in the query string" in errors_of(response)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("localhost", "a loopback name (localhost)"),
        ("[::1]", "a loopback address"),
        ("169.254.169.254", "a link-local address (cloud metadata)"),
        ("10.0.0.5", "a private or special-purpose address"),
        ("2130706433", "a loopback address"),
        ("[::ffff:192.168.1.1]", "an IPv6 form of 192.168.1.1, a private or special-purpose address"),
    ],
)
def test_internal_url_is_refused_at_definition_time(acme: Team, client: Client, host: str, reason: str) -> None:
    response = client.post(url("new_http"), http_tool_form(url=f"http://{host}:8080/orders/{{order_id}}"))
    assert response.status_code == 400
    text = errors_of(response)
    assert f"is {reason}" in text
    assert "a tool may not call internal addresses" in text
    assert "An operator can allow this host by adding it to ATELIER_TOOL_ALLOWED_HOSTS." in text
    assert not Tool.objects.for_team(acme).exists()


def test_internal_host_allowed_by_an_operator_is_accepted(acme: Team, client: Client, settings: Any) -> None:
    settings.TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    response = client.post(url("new_http"), http_tool_form(url="http://127.0.0.1:8080/orders/{order_id}"))
    assert response.status_code == 302
    assert tool_named(acme, "lookup_order").target_summary == "GET 127.0.0.1"


def test_operator_allowance_is_for_that_host_only(client: Client, settings: Any) -> None:
    settings.TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    response = client.post(url("new_http"), http_tool_form(url="http://localhost:8080/orders/{order_id}"))
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://files.example.com/{order_id}", "Use an http:// or https:// URL"),
        ("https://user:pw@api.example.com/{order_id}", "put credentials in the secret headers"),
        ("https:///orders/{order_id}", "The URL names no host"),
        ("https://api.example.com/orders/{order_id}#top", "Remove the #fragment"),
    ],
)
def test_malformed_url_gets_a_message_naming_the_fix(client: Client, value: str, message: str) -> None:
    response = client.post(url("new_http"), http_tool_form(url=value))
    assert response.status_code == 400
    assert message in errors_of(response)


def test_non_select_fixed_query_is_refused(acme: Team, client: Client) -> None:
    response = client.post(url("new_sql"), sql_tool_form(query="DELETE FROM orders WHERE id = %(order_id)s"))
    assert response.status_code == 400
    assert "This query cannot be a tool: only a single SELECT may run; found DELETE." in errors_of(response)
    assert not Tool.objects.for_team(acme).exists()


def test_fixed_query_argument_missing_from_the_schema_is_refused(client: Client) -> None:
    response = client.post(url("new_sql"), sql_tool_form(query="SELECT * FROM orders WHERE id = %(id)s"))
    text = errors_of(response)
    assert "%(id)s is not a property of the parameters schema: add “id” to its properties" in text
    assert "The query never uses “order_id”" in text


def test_sql_tool_needs_a_dsn(client: Client) -> None:
    response = client.post(url("new_sql"), sql_tool_form(dsn=""))
    assert "A SQL tool needs the DSN of the database it reads." in errors_of(response)


def test_malformed_dsn_is_refused_without_quoting_it(client: Client) -> None:
    response = client.post(url("new_sql"), sql_tool_form(dsn=f"host=db password {DSN_PASSWORD}"))
    assert "This is not a PostgreSQL connection string" in errors_of(response)
    assert DSN_PASSWORD not in errors_of(response)


def test_malformed_secret_header_line_is_refused_without_quoting_it(client: Client) -> None:
    response = client.post(url("new_http"), http_tool_form(secret_headers=f"Authorization: x\n{HEADER_SECRET}"))
    assert "Line 2 is not “Name: value”" in errors_of(response)
    assert HEADER_SECRET not in errors_of(response)


def test_tool_names_are_unique_in_the_team_ignoring_case(client: Client, http_tool: Tool) -> None:
    response = client.post(url("new_http"), http_tool_form(name="Lookup_Order"))
    assert response.status_code == 400
    assert "The team already has a tool named “Lookup_Order”" in errors_of(response)


def test_another_team_may_use_the_same_name(acme: Team, charlie: Any, login: Login, http_tool: Tool) -> None:
    response = login(charlie).post(reverse("tools:new_http", args=["globex"]), http_tool_form())
    assert response.status_code == 302


@pytest.mark.parametrize("name", ["1st_tool", "has space", "x" * 65, "dots.are.out"])
def test_tool_name_must_be_a_function_name(client: Client, name: str) -> None:
    response = client.post(url("new_http"), http_tool_form(name=name))
    assert response.status_code == 400
    assert "starting with a letter or an underscore" in errors_of(response) or "at most 64" in errors_of(response)


# --- secrets: encrypted at rest, never shown again ------------------------------------------------------


def test_secret_is_encrypted_in_the_database_row(http_tool: Tool, sql_tool: Tool) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret, config FROM tools_app_tool")
        rows = cursor.fetchall()
    raw = b"".join(bytes(secret) + str(config).encode() for secret, config in rows)
    assert len(rows) == 2
    for plaintext in PLAINTEXTS:
        assert plaintext.encode() not in raw
    assert secrets.decrypt_json(http_tool.secret) == {"Authorization": f"Bearer {HEADER_SECRET}",
                                                      "X-Api-Key": OTHER_SECRET}  # fmt: skip
    assert secrets.decrypt_json(sql_tool.secret) == DSN


def test_no_page_shows_a_saved_secret(client: Client, http_tool: Tool, sql_tool: Tool) -> None:
    pages = [url("list"), url("detail", http_tool.pk), url("edit", http_tool.pk), url("delete", http_tool.pk),
             url("detail", sql_tool.pk), url("edit", sql_tool.pk)]  # fmt: skip
    for page in pages:
        html = client.get(page).content.decode()
        for plaintext in PLAINTEXTS:
            assert plaintext not in html, page


def test_pages_show_only_that_a_secret_is_set_and_its_header_names(client: Client, http_tool: Tool) -> None:
    detail = client.get(url("detail", http_tool.pk)).content.decode()
    assert "Set: Authorization, X-Api-Key" in detail
    edit = client.get(url("edit", http_tool.pk)).content.decode()
    assert "Saved: Authorization, X-Api-Key. Leave empty to keep it." in edit
    assert "Remove the secret headers" in edit


def test_a_form_sent_back_with_errors_does_not_echo_the_secret(client: Client) -> None:
    response = client.post(url("new_http"), http_tool_form(url="ftp://x", secret_headers=SECRET_HEADERS))
    assert response.status_code == 400
    assert HEADER_SECRET not in response.content.decode()
    response = client.post(url("new_sql"), sql_tool_form(query="DROP TABLE orders", dsn=DSN))
    assert DSN_PASSWORD not in response.content.decode()


def test_no_audit_event_holds_a_secret(acme: Team, client: Client, http_tool: Tool, sql_tool: Tool) -> None:
    client.post(url("edit", http_tool.pk), http_tool_form(secret_headers="X-Token: new-PLAINTEXT-5151"))
    client.post(url("edit", sql_tool.pk), sql_tool_form(dsn="postgresql://r:other-PLAINTEXT-6161@db/sales"))
    client.post(url("delete", http_tool.pk))
    recorded = json.dumps(list(AuditEvent.objects.for_team(acme).values("details", "target_label")))
    assert recorded.count('"secret": "replaced"') == 2
    for plaintext in (*PLAINTEXTS, "new-PLAINTEXT-5151", "other-PLAINTEXT-6161"):
        assert plaintext not in recorded


def test_audit_trail_page_shows_no_secret(client: Client, http_tool: Tool) -> None:
    html = client.get(reverse("accounts:audit_log", args=["acme"])).content.decode()
    assert "tool.created" in html
    assert HEADER_SECRET not in html


# --- roles ------------------------------------------------------------------------------------------


def test_member_reads_the_catalogue_and_each_tool(bob: Any, login: Login, http_tool: Tool) -> None:
    member = login(bob)
    listing = member.get(url("list")).content.decode()
    assert "lookup_order" in listing and url("new_http") not in listing
    detail = member.get(url("detail", http_tool.pk))
    assert detail.status_code == 200
    assert url("edit", http_tool.pk) not in detail.content.decode()
    assert HEADER_SECRET not in detail.content.decode()


def test_member_cannot_create_edit_or_delete_a_tool(acme: Team, bob: Any, login: Login, http_tool: Tool) -> None:
    member = login(bob)
    before = list(Tool.objects.for_team(acme).values_list("pk", "name", "description", "updated_at"))
    for response in (
        member.get(url("new_http")),
        member.post(url("new_http"), http_tool_form(name="planted")),
        member.post(url("new_sql"), sql_tool_form(name="planted")),
        member.get(url("edit", http_tool.pk)),
        member.post(url("edit", http_tool.pk), http_tool_form(description="Changed.")),
        member.post(url("delete", http_tool.pk)),
    ):
        assert response.status_code == 403
    assert list(Tool.objects.for_team(acme).values_list("pk", "name", "description", "updated_at")) == before


def test_outsider_gets_404_on_a_tool(charlie: Any, login: Login, http_tool: Tool) -> None:
    assert login(charlie).get(url("detail", http_tool.pk)).status_code == 404


# --- member-written text is escaped -------------------------------------------------------------------


def test_description_with_a_script_is_escaped_everywhere(acme: Team, client: Client) -> None:
    client.post(url("new_http"), http_tool_form(description="Orders <script>alert(1)</script>"))
    tool = tool_named(acme, "lookup_order")
    for page in (url("list"), url("detail", tool.pk), url("edit", tool.pk)):
        html = client.get(page).content.decode()
        assert "<script>alert(1)" not in html, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, page
