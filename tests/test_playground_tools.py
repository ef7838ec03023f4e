"""Studio tools in the playground: a column on a deployment granted tools runs the studio's loop for the member
(the grants' roles apply, not their keys), shows each call as a card with the policy's decision and the result,
and a call that needs approval holds the column until a second member decides in the inbox.

The loop runs as the playground runs it (``serving_app.studio_tools.ToolRun`` with ``via="playground"`` and
``wait_for_approval``) with the scripted model of ``tests/test_tool_runtime.py``; calls run in this process
against the loopback server. ``tests/test_browser_tool_approval.py`` does the same on the real model in a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.models import AuditEvent
from accounts.permissions import TeamAccess, resolve_access
from accounts.roles import Role
from serving_app import catalog
from serving_app.comparisons import ColumnSettings
from serving_app.engine.client import StreamUpdate, ToolCall
from serving_app.models import Deployment
from serving_app.studio_tools import ToolRun
from serving_app.ui.compare import ColumnRun, StudioProgress
from tests import test_tool_runtime
from tests.factories import member
from tests.test_tool_runtime import ScriptedModel, actions, regrant
from tools_app import runtime, services
from tools_app.models import Tool, ToolApproval
from tools_app.runtime import RUNNER

# The scene of tests/test_tool_runtime.py: a deployment, a read tool and a destructive one, inline calls.
_inline_calls, deployment, lookup, delete_account = (
    test_tool_runtime._inline_calls, test_tool_runtime.deployment, test_tool_runtime.lookup,
    test_tool_runtime.delete_account,
)  # fmt: skip
loopback_server, loopback = test_tool_runtime.loopback_server, test_tool_runtime.loopback
DELETE_ALL = [("delete_account", {"account": "all"})]

pytestmark = pytest.mark.django_db


class Playground:
    """Runs the loop for a member as a playground column does, keeping what the runner reported."""

    def __init__(self, access: TeamAccess, deployment: Deployment) -> None:
        self.access, self.deployment = access, deployment
        self.reports: list[list[dict[str, Any]]] = []
        self.results: dict[str, str] = {}

    def report(self, calls: list[dict[str, Any]], results: dict[str, str]) -> None:
        self.reports.append(calls)
        self.results = results

    async def start(self, model: ScriptedModel, prompt: str = "Where is my order A-1042?") -> dict[str, Any]:
        run = ToolRun(
            access=self.access, deployment=self.deployment, messages=[{"role": "user", "content": prompt}],
            step=model, ip="10.0.0.9", via="playground", wait_for_approval=True, report=self.report,
        )  # fmt: skip
        return await RUNNER.run(run)

    def run(self, model: ScriptedModel, prompt: str = "Where is my order A-1042?") -> dict[str, Any]:
        return async_to_sync(self.start)(model, prompt)

    def outcomes(self) -> list[str]:
        """Each outcome a call went through, in order, as the column was told."""
        seen: list[str] = []
        for calls in self.reports:
            for call in calls:
                if call.get("outcome") and (not seen or seen[-1] != call["outcome"]):
                    seen.append(call["outcome"])
        return seen


@pytest.fixture
def bob_access(acme: Any, bob: Any) -> TeamAccess:
    return resolve_access(bob, acme.slug)


@pytest.fixture
def playground(bob_access: TeamAccess, deployment: Deployment) -> Playground:
    """Bob, a member, in the playground on the deployment."""
    return Playground(bob_access, deployment)


@pytest.fixture
def fast_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "APPROVAL_POLL_SECONDS", 0.05)


@pytest.fixture
def second_member(acme: Any) -> Iterator[Callable[[str], threading.Thread]]:
    """Starts a thread where Adele, an admin, decides ("approve" or "reject") the first pending call once it
    appears in the inbox, as she would from another browser."""
    adele = member(acme, Role.ADMIN, "adele")
    threads: list[threading.Thread] = []

    def decide(verdict: str) -> threading.Thread:
        def work() -> None:
            try:
                access = resolve_access(adele, acme.slug)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    pending = ToolApproval.objects.for_team(acme).filter(status=ToolApproval.Status.PENDING).first()
                    if pending is not None:
                        decision = services.approve if verdict == "approve" else services.reject
                        decision(access, str(pending.public_id), "checked with the customer")
                        return
                    time.sleep(0.05)
            finally:
                connection.close()

        thread = threading.Thread(target=work)
        thread.start()
        threads.append(thread)
        return thread

    yield decide
    for thread in threads:
        thread.join(timeout=30)


# --- the role's grant -------------------------------------------------------------------------------


def test_a_members_run_executes_a_tool_granted_to_their_role_and_the_result_reaches_the_model(
    playground: Playground, lookup: Tool, loopback: Any
) -> None:
    model = ScriptedModel([[("lookup_order", {"order_id": "A-1042"})], "Order A-1042 is on its way."])

    answer = playground.run(model)

    assert answer["choices"][0]["message"]["content"] == "Order A-1042 is on its way."
    assert model.seen[1][-1]["content"] == "/echo/A-1042"
    assert playground.outcomes() == ["executed"]
    assert list(playground.results.values()) == ["/echo/A-1042"]
    executed = AuditEvent.objects.for_team(lookup.team).get(action="tool.call_executed")
    assert (executed.details["via"], executed.actor.username) == ("playground", "bob")


def test_a_role_the_grant_leaves_out_is_denied_and_nothing_is_called(
    playground: Playground, lookup: Tool, owner: TeamAccess, loopback: Any
) -> None:
    regrant(owner, lookup, roles=[Role.OWNER, Role.ADMIN])
    model = ScriptedModel([[("lookup_order", {"order_id": "A-1042"})], "I could not look it up."])

    playground.run(model)

    [call] = playground.reports[-1]
    assert call["outcome"] == "denied" and "member" in call["reason"]
    assert loopback.requests == []
    assert actions(lookup) == ["tool.call_requested", "tool.call_denied"]


def test_a_key_grant_does_not_let_a_member_in(
    playground: Playground, lookup: Tool, owner: TeamAccess, loopback: Any
) -> None:
    # The grant names the key for /v1 and no role: the playground's members are left out.
    regrant(owner, lookup, roles=[])
    model = ScriptedModel([[("lookup_order", {"order_id": "A-1042"})], "No."])

    playground.run(model)

    assert playground.outcomes() == ["denied"] and loopback.requests == []


# --- approval in the playground ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_call_held_for_approval_runs_once_a_second_member_approves(
    playground: Playground, lookup: Tool, delete_account: Tool, loopback: Any, fast_polling: None,
    second_member: Callable[[str], threading.Thread],
) -> None:  # fmt: skip
    second_member("approve")
    model = ScriptedModel([DELETE_ALL, "The account is deleted."])

    answer = playground.run(model)

    assert playground.outcomes() == ["awaiting_approval", "approved", "executed"]
    [call] = playground.reports[-1]
    assert call["approved_by"] == "adele"
    assert [request.path for request in loopback.requests] == ["/echo/delete"]
    assert answer["choices"][0]["message"]["content"] == "The account is deleted."
    [approval] = ToolApproval.objects.for_team(delete_account.team)
    assert approval.status == ToolApproval.Status.USED and approval.requested_by.username == "bob"


@pytest.mark.django_db(transaction=True)
def test_a_rejected_call_never_runs_and_the_model_is_told_why(
    playground: Playground, lookup: Tool, delete_account: Tool, loopback: Any, fast_polling: None,
    second_member: Callable[[str], threading.Thread],
) -> None:  # fmt: skip
    second_member("reject")
    model = ScriptedModel([DELETE_ALL, "I did not delete the account."])

    playground.run(model)

    assert playground.outcomes() == ["awaiting_approval", "rejected"]
    assert loopback.requests == []
    told = model.seen[1][-1]
    assert told["role"] == "tool" and "rejected by adele: checked with the customer" in told["content"]
    assert "tool.call_executed" not in actions(delete_account)


def test_stopping_a_run_that_waits_withdraws_its_call_from_the_inbox(
    playground: Playground, delete_account: Tool, loopback: Any, fast_polling: None
) -> None:
    model = ScriptedModel([DELETE_ALL, "never reached"])

    async def stop_while_waiting() -> None:
        run = asyncio.ensure_future(playground.start(model))
        while "awaiting_approval" not in playground.outcomes():
            await asyncio.sleep(0.02)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run

    async_to_sync(stop_while_waiting)()

    [approval] = ToolApproval.objects.for_team(delete_account.team)
    assert approval.status == ToolApproval.Status.EXPIRED and approval.reason.startswith("withdrawn")
    assert AuditEvent.objects.for_team(delete_account.team).filter(action="tool.approval_withdrawn").count() == 1
    assert loopback.requests == []


# --- the column -------------------------------------------------------------------------------------


@pytest.fixture
def column() -> ColumnRun:
    servable = catalog.Servable("deployment:1", "support-bot (deployment of support v1)", "version-1", "/b", None,
                                deployment_id=1)  # fmt: skip
    return ColumnRun(0, servable, ColumnSettings(), history=[], studio=True, inbox_url="/t/acme/tools/approvals/")


def _calling(text: str = "") -> StreamUpdate:
    call = ToolCall(0, "call_1", "delete_account", '{"account": "all"}')
    return StreamUpdate("", text, 0.1, 0.2, 8, done=True, finish_reason="tool_calls", tool_calls=(call,))


def _record(outcome: str, **more: Any) -> dict[str, Any]:
    return {"id": "call_1", "tool": "delete_account", "arguments": {"account": "all"}, "risk": "destructive",
            "outcome": outcome, **more}  # fmt: skip


def test_a_column_waiting_for_approval_says_so_and_links_the_inbox(column: ColumnRun) -> None:
    column.update = _calling()
    column.progress(StudioProgress((_record("awaiting_approval", approval="a1"),)))

    [_, card] = column.chat("Delete everything")
    assert card["metadata"]["title"] == "Studio tool: delete\\_account · waiting for approval"
    assert card["metadata"]["status"] == "pending"
    assert "](/t/acme/tools/approvals/)" in card["content"]
    assert column.figures().startswith("Waiting for approval of delete\\_account")


def test_after_approval_the_card_shows_who_approved_and_the_result_then_the_answer_follows(
    column: ColumnRun,
) -> None:
    column.update = _calling("Deleting it now.")
    record = _record("executed", approved_by="adele", status=200, latency_ms=12.5)
    column.progress(StudioProgress((record,), (("call_1", '{"deleted": true}'),)))
    column.progress(StudioProgress(next_step=True))
    column.update = StreamUpdate("", "Done: the account is gone.", 0.1, 0.2, 6, done=True, finish_reason="stop")

    _, text, card, answer = column.chat("Delete everything")
    assert text["content"] == "Deleting it now."
    assert card["metadata"]["title"] == "Studio tool: delete\\_account · approved by adele · ran · status 200 · 12.5 ms"
    assert '{"deleted": true}' in card["content"] and "status" not in card["metadata"]
    assert answer == {"role": "assistant", "content": "Done: the account is gone."}


# --- which deployments a column can pick ----------------------------------------------------------------


def test_the_playground_lists_the_teams_deployments_and_resolves_them_to_their_version(
    bob_access: TeamAccess, deployment: Deployment
) -> None:
    listed = {model.key: model for model in catalog.usable_models(bob_access, deployments=True)}

    picked = listed[f"deployment:{deployment.pk}"]
    assert picked.label == f"support-bot (deployment of {deployment.model_version})"
    assert picked.served_name == f"version-{deployment.model_version.pk}"
    assert catalog.resolve_model(bob_access, picked.key) == picked
    assert f"deployment:{deployment.pk}" not in {model.key for model in catalog.usable_models(bob_access)}


def test_a_deployment_of_a_version_the_member_may_not_use_is_neither_listed_nor_resolved(
    bob_access: TeamAccess, deployment: Deployment
) -> None:
    version = deployment.model_version
    version.restricted = True
    version.save(update_fields=["restricted"])

    assert f"deployment:{deployment.pk}" not in {m.key for m in catalog.usable_models(bob_access, deployments=True)}
    with pytest.raises(Exception, match="No such model"):
        catalog.resolve_model(bob_access, f"deployment:{deployment.pk}")


def test_the_deployment_page_opens_the_playground_on_the_deployment(
    bob: Any, deployment: Deployment, client: Client
) -> None:
    client.force_login(bob)
    page = client.get(reverse("serving:deployment", args=["acme", deployment.pk])).content.decode()
    link = f'href="/t/acme/playground/?model=deployment:{deployment.pk}"'
    assert link in page

    framed = client.get(f"/t/acme/playground/?model=deployment:{deployment.pk}").content.decode()
    assert f"model=deployment%3A{deployment.pk}" in framed
