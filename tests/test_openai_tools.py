"""Studio tools end to end on CPU: the starter model served by vLLM calls a team HTTP tool through the studio's
/v1 with the official ``openai`` client; the call runs in the real tools worker (no database URL) against a
loopback server the operator allow-listed; its result goes back to the model; a write call waits for a second
member's approval and runs once when the client resumes. The model's words are nonsense, so the tests check the
calls, the server's record and the audit trail, never the text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.core.management import call_command
from django.test import override_settings
from openai import InternalServerError, OpenAI

from accounts import services as account_services
from accounts.models import AuditEvent, Team
from accounts.roles import Role
from tests import test_tool_execute
from tests.factories import full_model_version, member, starter_deployment
from tests.test_browser_playground_vllm import REMINDER_SCHEMA
from tests.test_tool_execute import Loopback, RecordingServer
from tools_app import services
from tools_app.models import Tool

loopback_server = test_tool_execute.loopback_server
FORCE_REMINDER = {"type": "function", "function": {"name": "set_reminder"}}
pytestmark = pytest.mark.django_db
T = TypeVar("T")


@dataclass(frozen=True)
class Studio:
    url: str
    key: str
    team: Team
    tool: Tool
    approver_token: str  # an admin's personal access token: approves through the studio's REST API

    def client(self) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def studio(
    vllm_studio_server: str, tools_worker: Popen[bytes], loopback_server: RecordingServer, django_db_blocker: Any,
    starter_model_path: Path, lora_adapters: list[Path],
) -> Iterator[Studio]:  # fmt: skip
    """A deployment of the starter model granted ``set_reminder``, a write tool on the loopback server (its rows
    committed: the studio's process must see them)."""
    url = f"http://127.0.0.1:{loopback_server.server_port}"
    fast_hash = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    with django_db_blocker.unblock(), override_settings(PASSWORD_HASHERS=fast_hash, TOOL_ALLOWED_HOSTS=["127.0.0.1"]):
        team, access, deployment = starter_deployment(starter_model_path, lora_adapters[0], name="assistant")
        key, secret = account_services.create_team_api_key(
            access=access, name="widget", deployments=[deployment], requests_per_minute=600
        )
        tool = services.create_tool(
            access=access, kind=Tool.Kind.HTTP, name="set_reminder", risk="write", rate_limit_per_minute=100,
            description="Remind the user to do something on a day of the week.", parameters=REMINDER_SCHEMA,
            config={"method": "POST", "url": f"{url}/echo/reminders", "query_args": [], "body_args": ["task", "day"],
                    "timeout_s": 5, "max_response_bytes": 100_000, "result_path": "path"},
        )  # fmt: skip
        services.grant_tool(access=access, tool=tool, deployment=deployment, api_keys=[key])
        _, token = account_services.create_personal_token(user=member(team, Role.ADMIN, "adele"), name="inbox")
    yield Studio(vllm_studio_server, secret, team, tool, token)
    with django_db_blocker.unblock():
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture(scope="module")
def weather_desk(
    studio: Studio, deployed_tool_tuned_path: Path, loopback_server: RecordingServer, django_db_blocker: Any
) -> str:
    """A second deployment, "weather-desk": the starter model tuned on the studio's tool sample (a full fine-tune),
    granted ``get_weather``, a read tool on the loopback server (runs without approval) that answers a weather report
    shaped as the sample's; the widget key may call both. Its name."""
    from accounts.models import TeamAPIKey
    from accounts.permissions import resolve_access
    from serving_app import deployments
    from serving_app.models import Deployment
    from training_app.engine.tool_samples import TOOLS

    url = f"http://127.0.0.1:{loopback_server.server_port}"
    [weather] = [tool["function"] for tool in TOOLS if tool["function"]["name"] == "get_weather"]
    with django_db_blocker.unblock(), override_settings(TOOL_ALLOWED_HOSTS=["127.0.0.1"]):
        access = resolve_access(Team.objects.get(slug="acme").memberships.get(role=Role.OWNER).user, "acme")
        assistant = Deployment.objects.for_team(studio.team).select_related("model_version__base_model").get()
        key = TeamAPIKey.objects.for_team(studio.team).get(name="widget")
        version = full_model_version(
            studio.team, access.user, assistant.model_version.base_model, deployed_tool_tuned_path, name="tool-helper"
        )
        deployment = deployments.create_deployment(access=access, name="weather-desk", version=version, api_keys=[key])
        tool = services.create_tool(
            access=access, kind=Tool.Kind.HTTP, name="get_weather", risk="read", rate_limit_per_minute=100,
            description=weather["description"], parameters=weather["parameters"],
            config={"method": "GET", "url": f"{url}/weather", "query_args": ["city", "unit"], "body_args": [],
                    "timeout_s": 5, "max_response_bytes": 100_000, "result_path": ""},
        )  # fmt: skip
        services.grant_tool(access=access, tool=tool, deployment=deployment, api_keys=[key])
    return deployment.name


def once_served(create: Callable[[], T], within_s: float = 300) -> T:
    """``create()``, retried as a client retries a 503 (its Retry-After) while the model's vLLM server starts: the
    tuned model is a base model of its own, whose server starts on its first request."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return create()
        except InternalServerError as error:
            if error.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(float(error.response.headers.get("Retry-After") or 5))


@pytest.fixture
def loopback(loopback_server: RecordingServer) -> Loopback:
    loopback_server.requests.clear()
    return Loopback(url=f"http://127.0.0.1:{loopback_server.server_port}", requests=loopback_server.requests)


def test_a_write_call_waits_for_a_second_member_then_runs_once_and_its_result_reaches_the_model(
    studio: Studio, loopback: Loopback
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Remind me to water the plants on Friday."}]
    client = studio.client()

    paused = client.chat.completions.create(
        model="assistant",
        messages=messages,
        tool_choice=FORCE_REMINDER,
        max_tokens=160,
        temperature=0,  # type: ignore[arg-type]
    )

    extension = paused.model_extra["atelier"]  # type: ignore[index]
    assert extension["status"] == "approval_required" and loopback.requests == []
    [call] = paused.choices[0].message.tool_calls or []
    [approval] = extension["approvals"]
    assert approval["tool"] == "set_reminder" and approval["arguments"] == json.loads(call.function.arguments)

    approved = httpx.post(
        f"{studio.url}/api/v1/teams/acme/tool-approvals/{approval['id']}/approve",
        headers={"Authorization": f"Bearer {studio.approver_token}"}, json={"reason": "asked by the user"},
    )  # fmt: skip
    assert approved.status_code == 200, approved.text
    conversation = [*messages, *extension["messages"], paused.choices[0].message.model_dump(exclude_none=True),
                    *extension["tool_results"]]  # fmt: skip
    resumed = client.chat.completions.create(
        model="assistant", messages=conversation, max_tokens=160, temperature=0,
        extra_body={"atelier": {"approvals": [approval["id"]]}},
    )  # fmt: skip

    [seen] = [request for request in loopback.requests if request.path == "/echo/reminders"][:1]
    assert json.loads(seen.body) == approval["arguments"]
    executed = resumed.model_extra["atelier"]["tool_calls"][0]  # type: ignore[index]
    assert (executed["outcome"], executed["status"]) == ("executed", 200)
    result = resumed.model_extra["atelier"]["messages"][0]  # type: ignore[index]
    assert result == {"role": "tool", "tool_call_id": call.id, "content": "/echo/reminders"}
    trail = AuditEvent.objects.for_team(studio.team).filter(target_type="tool", target_id=str(studio.tool.pk))
    assert trail.filter(action="tool.call_executed", details__call_id=call.id).count() == 1


def test_a_streamed_request_gets_the_runs_answer_and_its_calls(studio: Studio, loopback: Loopback) -> None:
    stream = studio.client().chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "Remind me to call mum on Sunday."}],
        tool_choice=FORCE_REMINDER, max_tokens=160, temperature=0, stream=True,  # type: ignore[arg-type]
    )  # fmt: skip

    chunks = list(stream)

    # A forced call ends as OpenAI's do, with "stop"; the run paused on it.
    assert chunks[-1].model_extra["atelier"]["status"] == "approval_required"  # type: ignore[index]
    assert chunks[0].choices[0].delta.tool_calls[0].function.name == "set_reminder"  # type: ignore[index]
    assert loopback.requests == []


def test_the_tool_tuned_model_calls_a_granted_read_tool_by_itself_and_answers_after_its_result(
    studio: Studio, weather_desk: str, loopback: Loopback
) -> None:
    question = [{"role": "user", "content": "Is it raining in Oslo right now?"}]
    client = studio.client()

    answer = once_served(
        lambda: client.chat.completions.create(model=weather_desk, messages=question, max_tokens=96, temperature=0)  # type: ignore[arg-type]
    )

    run = answer.model_extra["atelier"]  # type: ignore[index]
    [call] = run["tool_calls"]
    assert (call["tool"], call["outcome"], call["status"]) == ("get_weather", "executed", 200)
    [seen] = loopback.requests
    assert seen.path.startswith("/weather?city=")
    # The result went back to the model, which then answered in words rather than calling again.
    city = parse_qs(urlsplit(seen.path).query)["city"][0]
    result = run["messages"][-1]
    assert (result["role"], result["tool_call_id"]) == ("tool", call["id"])
    assert json.loads(result["content"]) == test_tool_execute.weather_report(city)
    assert run["status"] == "completed" and (answer.choices[0].message.content or "").strip()
    executed = AuditEvent.objects.for_team(studio.team).get(action="tool.call_executed", details__tool="get_weather")
    assert executed.details["deployment"] == "weather-desk" and executed.details["via"] == "api"
