"""Send one tool call (or one MCP server's listing) to the tools worker and wait for its outcome: the studio's side
of the ``tools`` queue.

The studio never runs a tool itself: it sends the tool's settings, the model's arguments and the tool's secret,
still encrypted, to the ``tools`` queue, where a worker holding no studio credentials (``tools_app.sandbox.worker``)
opens the secret and makes the call. An operator without such a worker may set ``TOOLS_EXECUTE_INLINE`` to run
calls in the studio's own process instead.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as ResultTimeout
from django.conf import settings

from tools_app import secrets
from tools_app.models import McpServer, Tool
from tools_app.sandbox import mcp_client
from tools_app.sandbox.execute import CallOutcome, CallSpec, execute
from tools_app.sandbox.mcp_client import ListingOutcome
from tools_app.sandbox.worker import LIST_MCP_TASK_NAME, QUEUE, TASK_NAME, queue_settings

logger = logging.getLogger(__name__)

# How long past the tool's own limit the studio waits for the worker's answer (queueing, start-up, transfer).
WAIT_MARGIN_S = 10.0
# How often a result in a polled backend (the embedded default's folder) is looked for.
POLL_INTERVAL_S = 0.01
# A SQL call may take its timeout twice (the cursor's DECLARE, then its FETCH) after connecting.
SQL_CONNECT_S = 5.0


def run_call(tool: Tool, arguments: dict[str, Any], *, timeout_s: float | None = None) -> CallOutcome:
    """Run one call of ``tool`` with ``arguments`` in the tools worker and return its outcome; never raises.

    Waits ``timeout_s``, by default the tool's own limit plus ``WAIT_MARGIN_S``. When no worker answers by then
    the outcome says so (``error="failed"``) and the call is withdrawn: a worker that finds it later drops it.
    The caller has checked the call against its grant (``tools_app.policy``) first. An MCP tool is called on its
    server, with the server's URL, limits and secret headers.
    """
    config, secret = _call_settings(tool)
    if settings.TOOLS_EXECUTE_INLINE:
        return _run_inline(tool, arguments, config, secret)
    wait_s = call_limit_s(tool) + WAIT_MARGIN_S if timeout_s is None else timeout_s
    payload = {
        "kind": tool.kind,
        "name": tool.name,
        "config": config,
        "arguments": arguments,
        "secret_token": bytes(secret).decode() if secret else "",
    }
    answer = _ask_worker(TASK_NAME, payload, wait_s, what=f"tool {tool.name}", doing="the call")
    if isinstance(answer, str):
        return CallOutcome(ok=False, error="failed", text=answer)
    return CallOutcome.from_dict(answer)


def list_mcp_tools(server: McpServer, *, timeout_s: float | None = None) -> ListingOutcome:
    """The tools ``server`` offers, listed by the tools worker (or in this process under ``TOOLS_EXECUTE_INLINE``)
    through the egress guard, as a call would reach it; never raises. Waits ``timeout_s``, by default the
    server's timeout plus ``WAIT_MARGIN_S``."""
    config = {"url": server.url, "timeout_s": server.timeout_s, "max_response_bytes": server.max_response_bytes}
    if settings.TOOLS_EXECUTE_INLINE:
        try:
            headers = secrets.decrypt_json(server.secret) if server.has_secret else None
        except secrets.InvalidToken:
            logger.error("MCP server %s: no configured key opens its secret headers", server.name)
            return ListingOutcome(ok=False, error="failed", text="the server's secret headers could not be opened")
        spec = mcp_client.ServerSpec(
            url=server.url, headers=headers, allowed_hosts=tuple(settings.TOOL_ALLOWED_HOSTS),
            timeout_s=server.timeout_s, max_response_bytes=server.max_response_bytes,
        )  # fmt: skip
        return mcp_client.list_tools(spec)
    wait_s = server.timeout_s + WAIT_MARGIN_S if timeout_s is None else timeout_s
    payload = {
        "name": server.name,
        "config": config,
        "secret_token": bytes(server.secret).decode() if server.has_secret else "",
    }
    answer = _ask_worker(LIST_MCP_TASK_NAME, payload, wait_s, what=f"MCP server {server.name}", doing="the listing")
    if isinstance(answer, str):
        return ListingOutcome(ok=False, error="failed", text=answer)
    return ListingOutcome.from_dict(answer)


def call_limit_s(tool: Tool) -> float:
    """The longest a call of ``tool`` may run in the worker, by its own settings."""
    if tool.kind == Tool.Kind.SQL:
        return 2 * float(tool.config.get("timeout_ms") or 5_000) / 1000 + SQL_CONNECT_S
    if tool.kind == Tool.Kind.MCP and tool.mcp_server is not None:
        return float(tool.mcp_server.timeout_s)
    return float(tool.config.get("timeout_s") or 10)


def _call_settings(tool: Tool) -> tuple[dict[str, Any], bytes]:
    """What a call of ``tool`` needs: its config and its secret's Fernet token (an MCP tool's are its server's)."""
    server = tool.mcp_server if tool.kind == Tool.Kind.MCP else None
    if server is None:
        return dict(tool.config), bytes(tool.secret) if tool.has_secret else b""
    config = {
        **tool.config,
        "url": server.url,
        "timeout_s": server.timeout_s,
        "max_response_bytes": server.max_response_bytes,
    }
    return config, bytes(server.secret) if server.has_secret else b""


def _ask_worker(task: str, payload: dict[str, Any], wait_s: float, *, what: str, doing: str) -> dict[str, Any] | str:
    """The tools worker's answer to one ``task``, or a sentence saying why none came (``what``: the tool or server,
    for the log; ``doing``: what the worker was asked to do, for the sentence)."""
    try:
        result = queue_client().send_task(task, args=[payload], queue=QUEUE, expires=wait_s)
    except Exception as error:  # the broker is down or refuses the message (kombu's errors share no base class)
        logger.error("%s: the tools queue could not be reached: %r", what, error)
        _client.cache_clear()  # Celery's result consumer gives up for good after its retries: start afresh next time
        return "the tools queue could not be reached; try again later"
    try:
        # The wait is on another pool's queue, so it cannot deadlock a task that calls this.
        answer: dict[str, Any] = result.get(timeout=wait_s, interval=POLL_INTERVAL_S, disable_sync_subtasks=False)
    except ResultTimeout:
        result.revoke()
        logger.warning("%s: no tools worker answered within %g s", what, wait_s)
        return f"the tools worker did not answer within {wait_s:g} s; try again later"
    except Exception as error:  # the task itself failed in the worker (killed at its time limit, a bug)
        logger.warning("%s: the tools worker failed: %r", what, error)
        return f"the tools worker could not run {doing} ({type(error).__name__})"
    finally:
        result.forget()
    return answer


def _run_inline(tool: Tool, arguments: dict[str, Any], config: dict[str, Any], token: bytes) -> CallOutcome:
    """The call run in this process (``TOOLS_EXECUTE_INLINE``), with the studio's key and allowed hosts."""
    try:
        secret = secrets.decrypt_json(token) if token else None
    except secrets.InvalidToken:
        logger.error("tool %s: no configured key opens its secret", tool.name)
        return CallOutcome(ok=False, error="failed", text="the tool's secret could not be opened")
    spec = CallSpec(
        kind=tool.kind,
        name=tool.name,
        config=config,
        arguments=arguments,
        secret=secret,
        allowed_hosts=tuple(settings.TOOL_ALLOWED_HOSTS),
    )
    return execute(spec)


def queue_client() -> Celery:
    """The studio's client of the ``tools`` queue, on the studio's broker and the results backend the worker uses
    (not the studio's current app: the studio's own tasks keep theirs)."""
    return _client(settings.CELERY_BROKER_URL, settings.CELERY_RESULT_BACKEND, str(settings.DATA_DIR))


@functools.lru_cache(maxsize=4)
def _client(broker_url: str, result_backend: str | None, data_dir: str) -> Celery:
    client = Celery("atelier-tools-client", set_as_current=False, fixups=[])
    client.conf.update(
        queue_settings(broker_url=broker_url, result_backend=result_backend, data=Path(data_dir)),
        # A model waits on the call: with Redis gone, say so within a second or two rather than retry for 20 s.
        result_backend_transport_options={
            "retry_policy": {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}
        },
    )
    return client
