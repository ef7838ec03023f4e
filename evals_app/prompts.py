"""What an eval asks and expects, read from a dataset version's normalized rows (``datasets_app.engine.rows``).

- chat: the prompt is the conversation up to its last assistant turn, the reference that turn's text and tool
  calls; the row's declared ``tools`` go with the prompt.
- instruction: the prompt is ``prompt`` (a text becomes one user turn; a conversational prompt is used as is), the
  reference ``completion`` (a text, or the assistant turn of a conversational completion).

A row without an assistant turn to compare against is skipped, and said so by ``EvalItem`` counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training_app.engine.prompt_sets import prompt_item

EVAL_KINDS = ("chat", "instruction")
# The keys of a message the inference server is sent (reasoning and loss weights are training matters).
MESSAGE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


@dataclass(frozen=True)
class EvalItem:
    """One row as an eval sees it: its number (from 1), the prompt messages, and the reference."""

    row_number: int
    messages: list[dict[str, Any]]
    reference_text: str
    reference_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)

    @property
    def question(self) -> str:
        """The last user turn, for an LLM judge."""
        users = [message for message in self.messages if message.get("role") == "user"]
        return str(users[-1].get("content") or "") if users else ""

    def reference_for(self, grader_type: str) -> Any:
        """What a grader of ``grader_type`` compares against: the tool call for ``tool_call``, else the text."""
        if grader_type == "tool_call":
            calls = self.reference_tool_calls
            return calls[0] if len(calls) == 1 else calls
        return self.reference_text


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as OpenAI's API takes it: a past tool call's arguments as JSON text (rows keep an object)."""
    sent = {key: message[key] for key in MESSAGE_KEYS if key in message}
    if sent.get("tool_calls"):
        sent["tool_calls"] = [_sent_call(call) for call in sent["tool_calls"]]
    return sent


def _sent_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    if not isinstance(function.get("arguments"), str):
        function["arguments"] = json.dumps(function.get("arguments") or {}, ensure_ascii=False)
    return {**call, "type": "function", "function": function}


def item_of(row_number: int, row: dict[str, Any], kind: str) -> EvalItem | None:
    """The eval item of one normalized row, or None when the row has no reference to grade against (the rule is
    the trainer's too: ``training_app.engine.prompt_sets``, which GRPO reads its prompts with)."""
    item = prompt_item(row_number, row, kind)
    if item is None:
        return None
    if isinstance(item.prompt, str):
        messages = [{"role": "user", "content": item.prompt}]
    else:
        messages = [_message(message) for message in item.prompt]
    return EvalItem(
        row_number=row_number, messages=messages, reference_text=item.reference_text,
        reference_tool_calls=item.reference_tool_calls, tools=item.tools,
    )  # fmt: skip


def read_items(rows_path: Path, kind: str, *, limit: int | None = None) -> Iterator[EvalItem]:
    """The eval items of a version's rows file, in order (at most ``limit``)."""
    count = 0
    with rows_path.open(encoding="utf-8") as rows:
        for number, line in enumerate(rows, start=1):
            item = item_of(number, json.loads(line), kind)
            if item is None:
                continue
            yield item
            count += 1
            if limit is not None and count >= limit:
                return
