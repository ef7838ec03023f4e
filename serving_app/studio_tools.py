"""The hook through which serving hands a run to the tools app: studio tools granted on a deployment.

Serving sits below tools in the apps' layers, so it cannot import ``tools_app``. Both doors into a deployment — a
/v1 request with a team API key (``serving_app.openai_api``) and a playground column with a member's session
(``serving_app.ui.compare``) — describe their run as a ``ToolRun`` and give it to the runner the tools app
registers when it is ready (``tools_app.runtime.RUNNER``). Each generation is the caller's ``step``: /v1 asks the
engine for a whole answer; the playground streams it into its column.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from accounts.permissions import TeamAccess
from serving_app.models import Deployment

# One generation of a run: (messages, tools, tool_choice) → the whole ``chat.completion``.
Step = Callable[[list[dict[str, Any]], list[dict[str, Any]], Any], Awaitable[dict[str, Any]]]
# The playground's view of a run as it goes: its studio calls (as in the answer's ``atelier.tool_calls``) and the
# results of those that ran, by call id.
Report = Callable[[list[dict[str, Any]], dict[str, str]], None]


@dataclass(frozen=True)
class ToolRun:
    """A chat run on a deployment granted studio tools.

    ``access`` is who runs it: a team API key (/v1: the grants' keys apply) or a member (the playground: the
    grants' roles apply). ``messages`` are OpenAI chat messages (dicts). ``client_tools``, ``tool_choice``,
    ``choices`` (``n``) and ``extension`` (the request's ``atelier`` field) are what the client asked for.
    With ``wait_for_approval`` a call that needs approval holds the run until a person decides (the playground);
    without it the run stops and answers ``approval_required`` (/v1).
    """

    access: TeamAccess
    deployment: Deployment
    messages: list[dict[str, Any]]
    step: Step
    ip: str | None = None
    via: Literal["api", "playground"] = "api"
    client_tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None
    choices: int = 1
    extension: Any = None
    wait_for_approval: bool = False
    report: Report | None = None


class StudioTools(Protocol):
    """What serving asks of the tools app (``tools_app.runtime.Runner``)."""

    def granted(self, deployment: Deployment) -> bool:
        """Whether ``deployment`` holds grants of studio tools (called on the database thread)."""
        ...

    async def run(self, run: ToolRun) -> dict[str, Any]:
        """Run the loop and return the final ``chat.completion`` (without usage) with its ``atelier`` field;
        raises ``serving_app.openai_api.OpenAIError`` for a request it refuses."""
        ...


_RUNNER: StudioTools | None = None


def register(runner: StudioTools | None) -> None:
    """Install the tools app's runner (None removes it: deployments then serve without studio tools)."""
    global _RUNNER
    _RUNNER = runner


def runner() -> StudioTools | None:
    return _RUNNER


def granted(deployment: Deployment) -> bool:
    """Whether a run on ``deployment`` goes through the studio tools loop (database thread)."""
    return _RUNNER is not None and _RUNNER.granted(deployment)
