"""What tool calls returned, kept only under the team's retention setting (``Team.prompt_retention_days``): shown on
the Tool activity page and in its API beside the call's event, deleted once older than the setting, and never
kept by a team that keeps nothing. The calls are the runtime's (``tests/test_tool_runtime.py``'s scene).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Team
from tests import test_tool_runtime
from tests.test_tool_runtime import ScriptedModel
from tools_app import services
from tools_app.models import Tool, ToolResult

_inline_calls, deployment, lookup, run = (
    test_tool_runtime._inline_calls, test_tool_runtime.deployment, test_tool_runtime.lookup, test_tool_runtime.run,
)  # fmt: skip
loopback_server, loopback = test_tool_runtime.loopback_server, test_tool_runtime.loopback
LOOKUP: list[Any] = [[("lookup_order", {"order_id": "A-1042"})], "Order A-1042 is on its way."]

pytestmark = pytest.mark.django_db


def keep_days(team: Team, days: int | None) -> None:
    team.prompt_retention_days = days
    team.save(update_fields=["prompt_retention_days"])


def executed_event(tool: Tool) -> AuditEvent:
    return AuditEvent.objects.for_team(tool.team).get(action="tool.call_executed")


def test_a_team_that_keeps_nothing_keeps_no_result(
    run: Callable[..., dict[str, Any]], lookup: Tool, bob: Any, bearer: Callable[..., Client]
) -> None:
    keep_days(lookup.team, None)

    run(ScriptedModel(LOOKUP))

    assert ToolResult.objects.for_team(lookup.team).count() == 0
    [item] = [
        i for i in bearer(bob).get("/api/v1/teams/acme/tool-activity/").json()["items"] if i["outcome"] == "executed"
    ]
    assert item["result"] is None


def test_a_kept_result_shows_on_the_activity_page_and_in_the_api(
    run: Callable[..., dict[str, Any]], lookup: Tool, bob: Any, client: Client, bearer: Callable[..., Client]
) -> None:
    keep_days(lookup.team, 7)

    run(ScriptedModel(LOOKUP))

    [kept] = ToolResult.objects.for_team(lookup.team)
    assert (kept.event, kept.text) == (executed_event(lookup), "/echo/A-1042")
    items = bearer(bob).get("/api/v1/teams/acme/tool-activity/", {"outcome": "executed"}).json()["items"]
    assert [item["result"] for item in items] == ["/echo/A-1042"]
    client.force_login(bob)
    page = client.get(reverse("tools:activity", kwargs={"team_slug": "acme"})).content.decode()
    assert '<summary class="small">Result</summary><pre class="plain mono">/echo/A-1042</pre>' in page
    assert "kept 7 days" in page


def test_results_older_than_the_setting_are_purged_and_newer_ones_stay(
    run: Callable[..., dict[str, Any]], lookup: Tool
) -> None:
    keep_days(lookup.team, 7)
    run(ScriptedModel(LOOKUP))
    run(ScriptedModel(LOOKUP))
    old, new = ToolResult.objects.for_team(lookup.team).order_by("pk")
    ToolResult.objects.for_team(lookup.team).filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=8))

    assert services.purge_tool_results() == 1

    assert list(ToolResult.objects.for_team(lookup.team)) == [new]
    assert AuditEvent.objects.for_team(lookup.team).filter(action="tool.call_executed").count() == 2  # the trail stays


def test_turning_retention_off_purges_every_kept_result(run: Callable[..., dict[str, Any]], lookup: Tool) -> None:
    keep_days(lookup.team, 30)
    run(ScriptedModel(LOOKUP))
    keep_days(lookup.team, None)

    services.purge_tool_results()

    assert ToolResult.objects.for_team(lookup.team).count() == 0
