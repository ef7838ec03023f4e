"""Running one tool call (tools_app/sandbox/execute.py) and sending it to the tools worker (tools_app/dispatch.py).

HTTP calls go to a real loopback server run by the test, which records what reached it; SQL calls to the real
PostgreSQL, as the SELECT-only role of tests/test_tool_sql.py. The worker tests start the real tools worker without
the database URL. What a user would notice: the request the remote side received, the text the model gets back
(capped, never holding the secret), and an outcome instead of an exception when anything goes wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import Popen
from threading import Thread
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from accounts.permissions import TeamAccess
from tests import test_tool_sql
from tests.factories import ORDER_SCHEMA
from tools_app import dispatch, services
from tools_app.models import Tool
from tools_app.sandbox.execute import TEXT_LIMIT, CallOutcome, CallSpec, execute
from training_app.engine import tool_samples

SECRET = "sk-live-LOOPBACK-5151"
# The SELECT-only role and its canary database, set up once per module (tests/test_tool_sql.py).
tool_database = test_tool_sql.tool_database


@dataclass
class Seen:
    """One request as the loopback server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Loopback:
    url: str
    requests: list[Seen] = field(default_factory=list)


def weather_report(city: str) -> dict[str, Any]:
    """What the loopback server's ``/weather`` answers for ``city``."""
    return {"city": city, "temperature": 4, "unit": "celsius", "conditions": "rainy"}


class Handler(BaseHTTPRequestHandler):
    """``/echo…``: the request as JSON (headers included); ``/orders/…``: an order; ``/weather?city=…`` and
    ``/calendar`` (a JSON body with ``title`` and ``date``): answers shaped as the studio's tool sample's
    (``datasets_app/samples/tools.jsonl``), which the tool-tuned model learned to read; ``/missing``: 404; ``/slow``:
    answers after 2 s; ``/big/<n>``: ``n`` bytes of text."""

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen = Seen(self.command, self.path, dict(self.headers), body)
        assert isinstance(self.server, RecordingServer)
        self.server.requests.append(seen)
        path = urlsplit(self.path).path
        if path.startswith("/echo"):
            self._send(200, json.dumps({"path": seen.path, "headers": seen.headers}), "application/json")
        elif path == "/weather":
            city = parse_qs(urlsplit(self.path).query).get("city", [""])[0]
            self._send(200, json.dumps(weather_report(city)), "application/json")
        elif path == "/calendar":
            event = json.loads(body or b"{}")
            created = {"created": True, "title": event.get("title"), "date": event.get("date")}
            self._send(200, json.dumps(created), "application/json")
        elif path.startswith("/orders/"):
            order = {"data": {"items": [{"title": "shipped", "id": path.rsplit("/", 1)[1]}]}}
            self._send(200, json.dumps(order, indent=2), "application/json")
        elif path == "/missing":
            self._send(404, "no such order", "text/plain")
        elif path == "/slow":
            time.sleep(2)
            self._send(200, "late", "text/plain")
        elif path.startswith("/big/"):
            self._send(200, "x" * int(path.rsplit("/", 1)[1]), "text/plain")
        else:
            self._send(200, "plain answer", "text/plain")

    def _send(self, status: int, text: str, content_type: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[Seen] = []


@pytest.fixture(scope="module")
def loopback_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def loopback(loopback_server: RecordingServer) -> Loopback:
    """The loopback server, its record of requests emptied for this test."""
    loopback_server.requests.clear()
    return Loopback(url=f"http://127.0.0.1:{loopback_server.server_port}", requests=loopback_server.requests)


def http_call(loopback: Loopback, path: str, arguments: dict[str, Any] | None = None, **config: Any) -> CallSpec:
    """A GET of ``path`` on the loopback server with the secret header, 127.0.0.1 allowed; ``config`` overrides."""
    defaults = {"method": "GET", "url": f"{loopback.url}{path}", "timeout_s": 5, "max_response_bytes": 100_000,
                "query_args": [], "body_args": [], "result_path": ""}  # fmt: skip
    return CallSpec(
        kind="http",
        name="lookup_order",
        config={**defaults, **config},
        arguments=arguments or {},
        secret={"X-Api-Key": SECRET},
        allowed_hosts=("127.0.0.1",),
    )


# --- HTTP -----------------------------------------------------------------------------------------


def test_path_argument_stays_one_encoded_segment(loopback: Loopback) -> None:
    outcome = execute(http_call(loopback, "/echo/orders/{order_id}", {"order_id": "7/../admin?x=1#top"}))
    assert outcome.ok, outcome.text
    assert [seen.path for seen in loopback.requests] == ["/echo/orders/7%2F..%2Fadmin%3Fx%3D1%23top"]


@pytest.mark.parametrize("value", ["..", "."])
def test_path_argument_that_is_a_dot_segment_is_refused_and_nothing_is_sent(loopback: Loopback, value: str) -> None:
    outcome = execute(http_call(loopback, "/echo/orders/{order_id}", {"order_id": value}))
    assert (outcome.ok, outcome.error) == (False, "refused")
    assert "order_id" in outcome.text
    assert loopback.requests == []


def test_query_and_body_arguments_reach_the_server(loopback: Loopback) -> None:
    spec = http_call(
        loopback, "/echo", {"q": "blue shoes", "amount": 3, "note": "gift"}, method="POST", query_args=["q"],
        body_args=["amount", "note"],
    )  # fmt: skip
    assert execute(spec).ok
    [seen] = loopback.requests
    assert parse_qs(urlsplit(seen.path).query) == {"q": ["blue shoes"]}
    assert json.loads(seen.body) == {"amount": 3, "note": "gift"}


def test_secret_header_reaches_the_server(loopback: Loopback) -> None:
    execute(http_call(loopback, "/orders/7"))
    [seen] = loopback.requests
    assert seen.headers["X-Api-Key"] == SECRET


def test_secret_echoed_by_the_server_is_redacted(loopback: Loopback) -> None:
    outcome = execute(http_call(loopback, "/echo"))
    assert outcome.ok
    assert SECRET not in outcome.text
    assert json.loads(outcome.text)["headers"]["X-Api-Key"] == "[secret redacted]"


def test_json_answer_comes_back_as_compact_json(loopback: Loopback) -> None:
    outcome = execute(http_call(loopback, "/orders/7"))
    assert outcome == CallOutcome(
        ok=True, text='{"data":{"items":[{"title":"shipped","id":"7"}]}}', status=200,
        response_bytes=outcome.response_bytes, latency_ms=outcome.latency_ms,
    )  # fmt: skip
    assert outcome.response_bytes > len(outcome.text)  # the server's indented JSON


def test_a_json_answer_reaches_the_model_as_the_studios_tool_sample_shows_results(loopback: Loopback) -> None:
    # A model tuned on the tool sample reads at serving time the text it was trained on (spaced JSON made the
    # tool-tuned model call again instead of answering).
    event = {"title": "Dentist appointment", "date": "2026-12-10"}
    outcome = execute(http_call(loopback, "/calendar", event, method="POST", body_args=["title", "date"]))
    assert outcome.text == tool_samples.tool_result_text({"created": True, **event})
    rows = [json.loads(line) for line in tool_samples.SAMPLE_PATH.read_text(encoding="utf-8").splitlines()]
    results = [message["content"] for row in rows for message in row["messages"] if message["role"] == "tool"]
    assert len(results) > 200
    assert all(text == tool_samples.tool_result_text(json.loads(text)) for text in results)


def test_result_path_gives_the_model_that_value_only(loopback: Loopback) -> None:
    outcome = execute(http_call(loopback, "/orders/7", result_path="data.items.0.title"))
    assert (outcome.ok, outcome.text) == (True, "shipped")


def test_result_path_the_answer_lacks_fails_naming_it(loopback: Loopback) -> None:
    outcome = execute(http_call(loopback, "/orders/7", result_path="data.items.3.title"))
    assert (outcome.ok, outcome.error) == (False, "failed")
    assert outcome.text == "the answer has no data.items.3.title: data.items holds no '3'"


def test_error_status_comes_back_with_an_excerpt(loopback: Loopback) -> None:
    outcome = execute(http_call(loopback, "/missing"))
    assert (outcome.ok, outcome.error, outcome.status, outcome.text) == (
        False, "http_error", 404, "HTTP 404: no such order",
    )  # fmt: skip


def test_host_not_allowed_is_refused_and_the_server_sees_nothing(loopback: Loopback) -> None:
    spec = http_call(loopback, "/echo")
    outcome = execute(replace(spec, allowed_hosts=()))
    assert (outcome.ok, outcome.error) == (False, "refused")
    assert "127.0.0.1 is a loopback address" in outcome.text
    assert loopback.requests == []


def test_slow_server_times_out(loopback: Loopback) -> None:
    outcome = execute(http_call(loopback, "/slow", timeout_s=0.3))
    assert (outcome.ok, outcome.error) == (False, "timeout")
    assert "did not answer within 0.3 s" in outcome.text


def test_answer_over_the_size_cap_is_refused(loopback: Loopback) -> None:
    outcome = execute(http_call(loopback, "/big/5000", max_response_bytes=1000))
    assert (outcome.ok, outcome.error) == (False, "too_large")
    assert "larger than the 1000-byte limit" in outcome.text


def test_long_answer_is_cut_for_the_model_with_a_note(loopback: Loopback) -> None:
    outcome = execute(http_call(loopback, f"/big/{TEXT_LIMIT + 500}"))
    assert outcome.ok
    assert outcome.text == "x" * TEXT_LIMIT + "\n[truncated: 500 more characters not shown]"


def test_outcome_survives_the_json_round_trip(loopback: Loopback) -> None:
    outcome = execute(http_call(loopback, "/missing"))
    assert CallOutcome.from_dict(json.loads(json.dumps(outcome.to_dict()))) == outcome


# --- SQL ------------------------------------------------------------------------------------------


def sql_call(database: test_tool_sql.ToolDatabase, arguments: dict[str, Any], **config: Any) -> CallSpec:
    return CallSpec(
        kind="sql", name="customers", config={"mode": "fixed", "timeout_ms": 2000, "max_rows": 100, **config},
        arguments=arguments, secret=database.dsn,
    )  # fmt: skip


def test_fixed_query_binds_the_arguments(tool_database: test_tool_sql.ToolDatabase) -> None:
    query = "SELECT id, name FROM canary WHERE id = %(customer_id)s"
    outcome = execute(sql_call(tool_database, {"customer_id": 2}, query=query))
    assert (outcome.ok, outcome.text) == (True, '{"columns":["id","name"],"rows":[[2,"bob"]],"truncated":false}')


def test_free_query_runs_the_models_select_under_the_row_cap(tool_database: test_tool_sql.ToolDatabase) -> None:
    outcome = execute(sql_call(tool_database, {"sql": "SELECT n FROM numbers ORDER BY n"}, mode="free", max_rows=3))
    assert json.loads(outcome.text) == {"columns": ["n"], "rows": [[1], [2], [3]], "truncated": True}


def test_values_json_cannot_hold_come_back_as_text(tool_database: test_tool_sql.ToolDatabase) -> None:
    sql = "SELECT 1.50::numeric AS price, DATE '2024-01-02' AS day"
    outcome = execute(sql_call(tool_database, {"sql": sql}, mode="free"))
    assert json.loads(outcome.text)["rows"] == [["1.50", "2024-01-02"]]


def test_write_is_refused(tool_database: test_tool_sql.ToolDatabase) -> None:
    outcome = execute(sql_call(tool_database, {"sql": "DELETE FROM canary"}, mode="free"))
    assert (outcome.ok, outcome.error) == (False, "refused")
    assert outcome.text == "refused: only a single SELECT may run; found DELETE"


def test_database_error_never_shows_the_dsn_password(tool_database: test_tool_sql.ToolDatabase) -> None:
    outcome = execute(
        sql_call(tool_database, {"sql": f"SELECT '{test_tool_sql.READER_PASSWORD}' AS echo"}, mode="free")
    )
    assert test_tool_sql.READER_PASSWORD not in outcome.text
    assert json.loads(outcome.text)["rows"] == [["[secret redacted]"]]


# --- through the tools worker ---------------------------------------------------------------------


@pytest.fixture
def loopback_tool(owner: TeamAccess, loopback: Loopback, settings: Any) -> Tool:
    """An HTTP tool of acme on the loopback server with a secret header, saved through the services."""
    settings.TOOL_ALLOWED_HOSTS = ["127.0.0.1"]
    return services.create_tool(
        access=owner, kind=Tool.Kind.HTTP, name="lookup_order", description="Look up an order.", risk="read",
        rate_limit_per_minute=30, parameters=ORDER_SCHEMA, secret={"X-Api-Key": SECRET},
        config={"method": "GET", "url": f"{loopback.url}/orders/{{order_id}}", "query_args": [], "body_args": [],
                "timeout_s": 5, "max_response_bytes": 100_000, "result_path": "data.items.0.title"},
    )  # fmt: skip


def test_tools_worker_runs_without_the_database_url(tools_worker: Popen[bytes]) -> None:
    environment = Path(f"/proc/{tools_worker.pid}/environ").read_bytes().split(b"\0")
    names = {entry.partition(b"=")[0] for entry in environment}
    assert b"DATABASE_URL" not in names
    assert b"DJANGO_SETTINGS_MODULE" not in names


def test_call_through_the_worker_carries_the_decrypted_secret(
    tools_worker: Popen[bytes], loopback: Loopback, loopback_tool: Tool
) -> None:
    outcome = dispatch.run_call(loopback_tool, {"order_id": "A-1042"})
    assert (outcome.ok, outcome.text, outcome.status) == (True, "shipped", 200)
    [seen] = loopback.requests
    assert (seen.path, seen.headers["X-Api-Key"]) == ("/orders/A-1042", SECRET)


def test_call_nobody_takes_says_the_worker_did_not_answer(
    loopback: Loopback, loopback_tool: Tool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "QUEUE", "tools-nobody-listens")
    outcome = dispatch.run_call(loopback_tool, {"order_id": "A-1042"}, timeout_s=0.2)
    assert (outcome.ok, outcome.error) == (False, "failed")
    assert outcome.text == "the tools worker did not answer within 0.2 s; try again later"
    assert loopback.requests == []


def test_inline_execution_runs_the_call_in_the_studio(loopback: Loopback, loopback_tool: Tool, settings: Any) -> None:
    settings.TOOLS_EXECUTE_INLINE = True
    outcome = dispatch.run_call(loopback_tool, {"order_id": "A-1042"})
    assert (outcome.ok, outcome.text) == (True, "shipped")
    assert loopback.requests[0].headers["X-Api-Key"] == SECRET
