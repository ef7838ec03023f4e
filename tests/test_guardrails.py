"""Guard policies at /v1 and on their pages: personal data redacted both ways, blocked topics refused, answers
checked before release, every action audited, the policy versioned and edited by admins only.

The model here is a scripted OpenAI-compatible engine on a loopback port: it streams a fixed answer three
characters at a time, so an e-mail address or a blocked term is always cut across chunks, and records what it
was sent. tests/test_guard_model.py runs a real guard model; the browser test runs the real starter model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from django.urls import reverse

from accounts import services as account_services
from accounts.models import AuditEvent
from accounts.permissions import TeamAccess
from serving_app import deployments, guardrails
from serving_app.models import Deployment, GuardPolicy, UsageRecord
from training_app.models import ModelVersion

Login = Callable[[Any], Client]
EMAIL = "jane.doe@example.com"
LOCKS = [{"name": "lock picking", "terms": ["bump key", "lock pick"], "patterns": [r"pick(ing)? (a|the) lock"]}]


@dataclass
class Script:
    answer: str = "Hello there."
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def engine(settings: Any) -> Iterator[Script]:
    """The scripted engine, as the studio's inference server for this test."""
    script = Script()

    class Engine(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
            if self.path != "/v1/chat/completions":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            script.received.append(body)
            chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
            chunks += [
                {"choices": [{"index": 0, "delta": {"content": script.answer[i : i + 3]}, "finish_reason": None}]}
                for i in range(0, len(script.answer), 3)
            ]
            chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            chunks.append({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(chunks) - 2}})
            head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
            payload = b"".join(f"data: {json.dumps({**head, **c})}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    settings.INFERENCE_URL = f"http://127.0.0.1:{server.server_address[1]}"
    settings.INFERENCE_ROUTES = {}
    yield script
    server.shutdown()


@pytest.fixture
def deployment(owner: TeamAccess, model_version: ModelVersion) -> Deployment:
    return deployments.create_deployment(access=owner, name="support-bot", version=model_version)


@pytest.fixture
def api_key(owner: TeamAccess, deployment: Deployment) -> str:
    _, key = account_services.create_team_api_key(access=owner, name="widget", deployments=[deployment])
    return key


def guard(owner: TeamAccess, deployment: Deployment, **settings: Any) -> GuardPolicy:
    return guardrails.save_policy(access=owner, deployment=deployment, settings=settings)


@dataclass
class Answer:
    status_code: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)

    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(line[6:]) for line in self.body.split("\n\n") if line.startswith("data: {")]


def chat(key: str, content: str, *, stream: bool = False, **extra: Any) -> Answer:
    """One /v1 request, read to its end in the event loop that served it (as under the ASGI server)."""
    body = {"model": "support-bot", "messages": [{"role": "user", "content": content}], "stream": stream, **extra}

    async def send() -> Answer:
        response = await AsyncClient().post(
            "/v1/chat/completions", json.dumps(body), content_type="application/json",
            headers={"Authorization": f"Bearer {key}"},
        )  # fmt: skip
        if response.streaming:
            raw = b"".join([piece async for piece in response.streaming_content])
        else:
            raw = response.content
        return Answer(response.status_code, raw.decode())

    return async_to_sync(send)()


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def guard_events(deployment: Deployment) -> list[tuple[str, str, str, int]]:
    events = AuditEvent.objects.filter(team=deployment.team, action__startswith="guard.").exclude(
        action__startswith="guard.policy"
    )
    return sorted((e.action, e.details["stage"], e.details["category"], e.details["count"]) for e in events)


pytestmark = pytest.mark.django_db


# --- /v1 --------------------------------------------------------------------------------------------------------


def test_pii_in_a_streamed_answer_never_reaches_the_client(
    engine: Script, owner: TeamAccess, deployment: Deployment, api_key: str
) -> None:
    guard(owner, deployment)
    engine.answer = f"Write to {EMAIL} or call +44 20 7946 0958 and we will help."
    response = chat(api_key, "How do I reach you?", stream=True)
    assert response.status_code == 200
    raw = response.body
    assert "jane" not in raw and "example.com" not in raw and "7946" not in raw
    text = streamed_text([json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")])
    assert text == "Write to [EMAIL] or call [PHONE] and we will help."
    assert raw.rstrip().endswith("data: [DONE]")


def test_pii_in_the_prompt_is_replaced_before_the_model_sees_it(
    engine: Script, owner: TeamAccess, deployment: Deployment, api_key: str
) -> None:
    guard(owner, deployment)
    chat(api_key, f"I am {EMAIL}, please call me back.")
    assert engine.received[0]["messages"] == [{"role": "user", "content": "I am [EMAIL], please call me back."}]
    assert guard_events(deployment) == [("guard.redacted", "input", "email", 1)]


def test_a_blocked_topic_in_the_prompt_is_refused_without_asking_the_model(
    engine: Script, owner: TeamAccess, deployment: Deployment, api_key: str
) -> None:
    guard(owner, deployment, blocked_topics=LOCKS, refusal_message="Support can't help with that.")
    answer = chat(api_key, "How do I pick a lock on a shed?").json()
    assert answer["choices"][0]["message"]["content"] == "Support can't help with that."
    assert answer["choices"][0]["finish_reason"] == "content_filter"
    assert answer["atelier"]["guard"] == {"blocked": "input", "category": "lock picking", "revision": 1}
    assert engine.received == []
    assert guard_events(deployment) == [("guard.blocked", "input", "lock picking", 1)]


def test_a_blocked_topic_in_a_streamed_prompt_is_refused_as_a_stream(
    engine: Script, owner: TeamAccess, deployment: Deployment, api_key: str
) -> None:
    guard(owner, deployment, blocked_topics=LOCKS, refusal_message="No.")
    chunks = chat(api_key, "Where can I buy a bump key?", stream=True).chunks()
    assert streamed_text(chunks) == "No."
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


def test_a_blocked_topic_in_the_answer_ends_it_with_the_refusal(
    engine: Script, owner: TeamAccess, deployment: Deployment, api_key: str
) -> None:
    guard(owner, deployment, blocked_topics=LOCKS, refusal_message="I can't help with that.")
    engine.answer = "Sheds are often left open. " * 8 + "Otherwise a bump key opens most of them."
    chunks = chat(api_key, "My shed is locked.", stream=True).chunks()
    text = streamed_text(chunks)
    assert "bump" not in text
    assert text.endswith("I can't help with that.")
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert guard_events(deployment) == [("guard.blocked", "output", "lock picking", 1)]


def test_a_whole_answer_cut_at_the_length_cap_never_keeps_half_an_address(
    engine: Script, owner: TeamAccess, deployment: Deployment, api_key: str
) -> None:
    guard(owner, deployment, max_answer_chars=20)
    engine.answer = f"Mail {EMAIL} today, then wait for the parcel."
    answer = chat(api_key, "Where?").json()
    assert answer["choices"][0]["message"]["content"] == "Mail "  # the cap fell inside the address
    assert answer["choices"][0]["finish_reason"] == "length"
    assert "jane" not in json.dumps(answer)


def test_an_answer_is_cut_at_the_policy_s_length(
    engine: Script, owner: TeamAccess, deployment: Deployment, api_key: str
) -> None:
    guard(owner, deployment, max_answer_chars=25)
    engine.answer = "One two three four five six seven eight nine ten."
    answer = chat(api_key, "Count.").json()
    assert answer["choices"][0]["message"]["content"] == "One two three four five s"
    assert answer["choices"][0]["finish_reason"] == "length"


def test_logprobs_are_refused_on_a_guarded_deployment(
    engine: Script, owner: TeamAccess, deployment: Deployment, api_key: str
) -> None:
    guard(owner, deployment)
    response = chat(api_key, "Hi", logprobs=True)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "logprobs"
    assert not UsageRecord.objects.for_team(deployment.team).exists()


def test_a_disabled_policy_lets_everything_through(
    engine: Script, owner: TeamAccess, deployment: Deployment, api_key: str
) -> None:
    guard(owner, deployment, enabled=False)
    engine.answer = f"Mail {EMAIL}."
    assert chat(api_key, "Where?").json()["choices"][0]["message"]["content"] == f"Mail {EMAIL}."


def test_a_guard_model_that_is_gone_fails_closed(
    engine: Script, owner: TeamAccess, deployment: Deployment, api_key: str, model_version: ModelVersion
) -> None:
    guard(owner, deployment, guard_model_key=f"version:{model_version.pk}", guard_checks="input")
    GuardPolicy.objects.for_team(deployment.team).filter(deployment=deployment).update(guard_model_key="version:999999")
    answer = chat(api_key, "Hello").json()
    assert answer["choices"][0]["finish_reason"] == "content_filter"
    assert engine.received == []
    assert ("guard.check_failed", "input", "error", 1) in guard_events(deployment)


# --- the policy itself -----------------------------------------------------------------------------------------


def test_each_change_raises_the_revision_and_keeps_the_old_one(owner: TeamAccess, deployment: Deployment) -> None:
    guard(owner, deployment, blocked_topics=LOCKS)
    policy = guard(owner, deployment, refusal_message="Not here.")
    assert policy.revision == 2
    documents = [r.document for r in guardrails.revisions(policy)]
    assert [d["revision"] for d in documents] == [2, 1]
    assert documents[1]["refusal_message"] == "I can't help with that request."
    actions = list(AuditEvent.objects.filter(action__startswith="guard.policy").values_list("action", flat=True))
    assert sorted(actions) == ["guard.policy_changed", "guard.policy_created"]


def test_a_bad_pattern_is_refused_naming_the_topic(owner: TeamAccess, deployment: Deployment) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as error:
        guard(owner, deployment, blocked_topics=[{"name": "x", "patterns": ["(unclosed"]}])
    assert "Topic 1 (x): the pattern “(unclosed” is not a valid regular expression" in str(error.value)
    assert not GuardPolicy.objects.for_team(deployment.team).exists()


def test_an_admin_sets_the_policy_on_its_page(
    login: Login, alice: Any, deployment: Deployment, owner: TeamAccess
) -> None:
    url = reverse("serving:deployment_guard", args=["acme", deployment.pk])
    response = login(alice).post(url, {
        "enabled": "on", "redact_input_pii": "on", "redact_output_pii": "on",
        "blocked_topics": "lock picking: bump key, lock pick, /pick(ing)? (a|the) lock/",
        "guard_model_key": "", "guard_prompt": "Classify {content}", "guard_checks": "both",
        "max_answer_chars": "", "refusal_message": "Not here.", "fail_closed": "on",
    })  # fmt: skip
    assert response.status_code == 302
    policy = GuardPolicy.objects.for_team(deployment.team).get(deployment=deployment)
    assert policy.blocked_topics == [
        {"name": "lock picking", "terms": ["bump key", "lock pick"], "patterns": ["pick(ing)? (a|the) lock"]}
    ]
    assert policy.refusal_message == "Not here."


def test_a_member_reads_the_policy_but_cannot_change_it(
    login: Login, bob: Any, deployment: Deployment, owner: TeamAccess
) -> None:
    guard(owner, deployment, blocked_topics=LOCKS)
    url = reverse("serving:deployment_guard", args=["acme", deployment.pk])
    page = login(bob).get(url)
    assert page.status_code == 200 and "lock picking" in page.content.decode()
    assert login(bob).post(url, {"refusal_message": "x"}).status_code == 403


def test_the_api_reads_and_writes_the_policy(login: Login, alice: Any, deployment: Deployment) -> None:
    client = login(alice)
    url = f"/api/v1/teams/acme/deployments/{deployment.pk}/guard-policy"
    assert client.get(url).status_code == 404  # none yet
    response = client.put(url, json.dumps({"blocked_topics": LOCKS, "max_answer_chars": 500}), "application/json")
    assert response.status_code == 200, response.content
    assert response.json()["revision"] == 1 and response.json()["max_answer_chars"] == 500
    bad = client.put(url, json.dumps({"guard_checks": "sometimes"}), "application/json")
    assert bad.status_code == 400 and "guard_checks" in bad.content.decode()
    assert client.get(url).json()["blocked_topics"] == LOCKS


def test_guard_activity_counts_what_the_policies_did_per_day(
    engine: Script, login: Login, bob: Any, owner: TeamAccess, deployment: Deployment, api_key: str
) -> None:
    guard(owner, deployment, blocked_topics=LOCKS)
    chat(api_key, "How do I pick a lock?")
    chat(api_key, f"I am {EMAIL} and {EMAIL.replace('jane', 'john')}")
    page = login(bob).get(reverse("serving:guard_activity", args=["acme"]))
    body = page.content.decode()
    assert page.status_code == 200
    assert "jane" not in body  # counts and categories, never the text
    activity = guardrails.activity(deployment.team)
    assert activity.totals == {"guard.blocked": 1, "guard.redacted": 2}
    assert activity.per_day["guard.redacted"][-1] == 2
    api = login(bob).get("/api/v1/teams/acme/guard-activity").json()
    assert api["totals"] == {"guard.blocked": 1, "guard.redacted": 2}
