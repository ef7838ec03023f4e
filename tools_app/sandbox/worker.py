"""The tools worker: a Celery app of its own that runs granted tool calls from the ``tools`` queue, and lists the
tools of a team's MCP server when an admin imports them (so the studio itself never connects to a server).

It imports no Django and is started without the studio's database URL (``make run``): all it holds is the key that
opens tool secrets, the hosts an operator allowed, and, for each call, the one tool's encrypted secret. Its whole
configuration comes from the environment:

- ``CELERY_BROKER_URL`` (default ``filesystem://``, the embedded default's broker folders under ``ATELIER_DATA_DIR``)
  and ``CELERY_RESULT_BACKEND`` (default: the broker when it is Redis, else the folder ``DATA_DIR/tool-results``);
- ``ATELIER_SECRETS_KEY`` (comma-separated Fernet keys, the first encrypts) or else the key file
  ``ATELIER_SECRETS_KEY_FILE`` (default ``DATA_DIR/secrets.key``, the studio's);
- ``ATELIER_TOOL_ALLOWED_HOSTS`` (comma-separated internal hosts an HTTP tool or an MCP server may be on).

A call runs at most once: the message is acknowledged when the worker takes it, so a worker that dies mid-call does
not run it again (the studio's wait ends and the model is told the worker did not answer).

``queue_settings`` is what both ends of the queue agree on; ``tools_app.dispatch`` builds the studio's client from it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_init
from cryptography.fernet import InvalidToken, MultiFernet
from kombu import Queue

from tools_app.sandbox import mcp_client, vault
from tools_app.sandbox.execute import CallOutcome, CallSpec, execute

logger = logging.getLogger(__name__)

QUEUE = "tools"
TASK_NAME = "atelier.tools.execute"
LIST_MCP_TASK_NAME = "atelier.tools.list_mcp"
# Results are read once by the studio, which waits at most a tool's timeout and a margin: keep them briefly.
RESULT_EXPIRES_S = 600
# The filesystem broker is polled: every 50 ms, so a call waits little for its worker.
POLLING_INTERVAL_S = 0.05
# A backstop above the longest call a definition allows (60 s for HTTP; connect, DECLARE and FETCH for SQL).
TASK_TIME_LIMIT_S = 180
RESULTS_FOLDER = "tool-results"
# As studio/settings.py: ``ATELIER_DATA_DIR``, else ``var/`` in the checkout.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "var"


def data_dir(environ: Mapping[str, str]) -> Path:
    """The studio's data folder, as ``studio/settings.py`` derives it."""
    return Path(environ.get("ATELIER_DATA_DIR") or DEFAULT_DATA_DIR).resolve()


def transport_options(broker_url: str, data: Path) -> dict[str, Any]:
    """The broker connection's options: for the filesystem broker, the studio's folders (``DATA_DIR/broker``, laid
    out as ``studio/settings.py`` lays them out), polled every ``POLLING_INTERVAL_S``."""
    if not broker_url.startswith("filesystem://"):
        return {}
    broker = data / "broker"
    for folder in ("in", "processed", "control"):
        (broker / folder).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(broker / "in"),
        "data_folder_out": str(broker / "in"),
        "processed_folder": str(broker / "processed"),
        "control_folder": str(broker / "control"),
        "store_processed": False,
        "polling_interval": POLLING_INTERVAL_S,
    }


def result_backend_url(broker_url: str, configured: str | None, data: Path) -> str:
    """Where a call's outcome waits for the studio: the configured backend, else Redis when the broker is Redis,
    else the folder ``DATA_DIR/tool-results`` (the embedded default: studio and worker on one machine)."""
    if configured:
        return configured
    if broker_url.startswith(("redis://", "rediss://")):
        return broker_url
    folder = data / RESULTS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def queue_settings(*, broker_url: str, result_backend: str | None, data: Path) -> dict[str, Any]:
    """The Celery settings both ends of the ``tools`` queue share (this worker and ``tools_app.dispatch``)."""
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport_options(broker_url, data),
        "broker_connection_retry_on_startup": True,
        "result_backend": result_backend_url(broker_url, result_backend, data),
        "result_expires": RESULT_EXPIRES_S,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": (Queue(QUEUE),),
        "task_default_queue": QUEUE,
    }


def _env_list(environ: Mapping[str, str], name: str) -> list[str]:
    return [item.strip() for item in environ.get(name, "").split(",") if item.strip()]


# Not the current app: a process that imports this module for ``queue_settings`` (the studio) keeps its own.
# No Django fix-up, even where DJANGO_SETTINGS_MODULE is set: this worker never loads the studio's settings.
app = Celery("atelier-tools", set_as_current=False, fixups=[])
app.conf.update(
    queue_settings(
        broker_url=os.environ.get("CELERY_BROKER_URL", "filesystem://"),
        result_backend=os.environ.get("CELERY_RESULT_BACKEND"),
        data=data_dir(os.environ),
    ),
    # At most once: acknowledged on receipt, never delivered again after a crash (a call may have side effects).
    task_acks_late=False,
    task_reject_on_worker_lost=False,
    worker_prefetch_multiplier=1,
    task_time_limit=TASK_TIME_LIMIT_S,
)


@functools.cache
def secrets_box() -> MultiFernet:
    """The box that opens tool secrets: ``ATELIER_SECRETS_KEY``'s keys, else the key file."""
    keys: list[str | bytes] = list(_env_list(os.environ, "ATELIER_SECRETS_KEY"))
    if not keys:
        path = os.environ.get("ATELIER_SECRETS_KEY_FILE") or str(data_dir(os.environ) / vault.KEY_FILE_NAME)
        keys = [vault.key_file(Path(path))]
    return vault.box(keys)


@worker_init.connect
def _check_key(sender: Any = None, **_: Any) -> None:
    """A malformed key stops this worker at start-up, not at its first call (other apps' workers are not ours)."""
    if getattr(sender, "app", None) is app:
        secrets_box()


@app.task(name=TASK_NAME)
def execute_call(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one tool call sent by the studio and return its ``CallOutcome`` as a dict.

    ``payload``: ``kind``, ``name``, ``config``, ``arguments`` and ``secret_token`` (the tool's Fernet token as
    text, or "" when it has no secret), as ``tools_app.dispatch`` builds it.
    """
    token = payload.get("secret_token") or ""
    try:
        secret = vault.decrypt_json(secrets_box(), token) if token else None
    except InvalidToken:
        logger.error("tool %s: no key of this worker opens its secret (is its key the studio's?)", payload.get("name"))
        return CallOutcome(ok=False, error="failed", text="the tool's secret could not be opened").to_dict()
    spec = CallSpec(
        kind=str(payload.get("kind", "")),
        name=str(payload.get("name", "")),
        config=dict(payload.get("config") or {}),
        arguments=dict(payload.get("arguments") or {}),
        secret=secret,
        allowed_hosts=tuple(_env_list(os.environ, "ATELIER_TOOL_ALLOWED_HOSTS")),
    )
    return execute(spec).to_dict()


@app.task(name=LIST_MCP_TASK_NAME)
def list_mcp_tools(payload: dict[str, Any]) -> dict[str, Any]:
    """List the tools of one MCP server for the studio's import and return a ``ListingOutcome`` as a dict.

    ``payload``: ``name`` (the server's, for the log), ``config`` (url, timeout_s, max_response_bytes) and
    ``secret_token`` (the server's secret headers as a Fernet token, or ""), as ``tools_app.dispatch`` builds it.
    """
    token = payload.get("secret_token") or ""
    try:
        headers = vault.decrypt_json(secrets_box(), token) if token else None
    except InvalidToken:
        logger.error("MCP server %s: no key of this worker opens its secret headers", payload.get("name"))
        return mcp_client.ListingOutcome(
            ok=False, error="failed", text="the server's secret headers could not be opened"
        ).to_dict()
    config = dict(payload.get("config") or {})
    spec = mcp_client.ServerSpec(
        url=str(config.get("url", "")),
        headers=headers if isinstance(headers, dict) else None,
        allowed_hosts=tuple(_env_list(os.environ, "ATELIER_TOOL_ALLOWED_HOSTS")),
        timeout_s=float(config.get("timeout_s") or 10),
        max_response_bytes=int(config.get("max_response_bytes") or 100_000),
    )
    return mcp_client.list_tools(spec).to_dict()
