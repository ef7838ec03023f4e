"""A studio tool call as a card in a playground column: what the model asked for, what the studio decided, and
what came back.

The studio runs the calls of a deployment granted tools (``serving_app.studio_tools``); the runner reports each
call as a record (``tools_app.runtime``: id, tool, arguments, risk, outcome, reason, status, latency_ms,
approval, approved_by) and each result as text. Everything in a card is text the model, the tool or a member
wrote: names and reasons are escaped, arguments and results shown in code blocks.
"""

from __future__ import annotations

import json
from typing import Any

from serving_app.ui.text import code_block, markdown_text

# The most of a tool's result a card shows (the model gets all of it).
RESULT_SHOWN = 1_500
# What a column's figures line says while one of its calls waits for a person.
WAITING_FOR_APPROVAL = "Waiting for approval of {tool}: someone with tools.approve decides in the Approvals inbox."
# Outcomes still in progress: their cards show a spinner.
_PENDING = frozenset({"", "awaiting_approval", "approved"})


def studio_call_message(record: dict[str, Any], result: str | None, *, inbox_url: str = "") -> dict[str, Any]:
    """The chatbot message (a titled card) for one studio call (a saved comparison's has no result and no inbox
    link)."""
    outcome = str(record.get("outcome") or "")
    title = f"Studio tool: {markdown_text(record.get('tool') or 'unnamed')} · {_status(record)}"
    parts = [code_block(json.dumps(record.get("arguments"), indent=2, ensure_ascii=False), "json")]
    if outcome == "awaiting_approval" and inbox_url:
        parts.append(
            f"This {markdown_text(record.get('risk') or '')} call waits for a person: someone with the "
            f"tools.approve permission approves or rejects it in the [Approvals inbox]({inbox_url}). This column "
            "goes on by itself once they decide."
        )
    if record.get("reason") and outcome in ("denied", "failed", "rejected", "expired"):
        parts.append(f"**Why:** {markdown_text(record['reason'])}")
    if result is not None and outcome in ("executed", "failed"):
        shown = result if len(result) <= RESULT_SHOWN else result[:RESULT_SHOWN] + "…"
        parts.append("**Result** (what the model read):\n\n" + code_block(shown))
    metadata: dict[str, Any] = {"title": title}
    if outcome in _PENDING:
        metadata["status"] = "pending"
    return {"role": "assistant", "content": "\n\n".join(parts), "metadata": metadata}


def waiting_tool(records: list[dict[str, Any]]) -> str | None:
    """The name of a tool whose call waits for approval, if any."""
    return next((str(record["tool"]) for record in records if record.get("outcome") == "awaiting_approval"), None)


def _status(record: dict[str, Any]) -> str:
    outcome = str(record.get("outcome") or "")
    if outcome == "executed":
        figures = [f"status {record['status']}" if record.get("status") is not None else "",
                   f"{record['latency_ms']:g} ms" if record.get("latency_ms") is not None else ""]  # fmt: skip
        approved = f"approved by {markdown_text(record['approved_by'])}" if record.get("approved_by") else ""
        return " · ".join(filter(None, [approved, "ran", *figures]))
    if outcome == "approved":
        return f"approved by {markdown_text(record.get('approved_by') or 'someone')}, running"
    labels = {
        "": "checking the grant", "awaiting_approval": "waiting for approval", "failed": "failed",
        "denied": "denied by policy", "rejected": "rejected", "expired": "approval expired",
    }  # fmt: skip
    return labels.get(outcome, markdown_text(outcome))
