"""A dataset version read as a prompt set: what to ask, and the reference answer to grade against.

The rule (the same as the eval suites'): of a chat row, the prompt is the conversation up to its last
assistant turn and the reference is that turn (its text and tool calls), the row's ``tools`` going with the
prompt; of an instruction row, the prompt is ``prompt`` (a text, or a list of messages) and the reference is
``completion`` (a text, or the assistant turn of a message list). A row without a reference is skipped.
Django-free: the trainer reads its GRPO prompts with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PromptItem:
    """One row as a prompt set sees it: its number (from 1), the prompt, and the reference.

    ``prompt`` is a text (an instruction row's plain prompt) or a list of chat messages.
    """

    row_number: int
    prompt: str | list[dict[str, Any]]
    reference_text: str
    reference_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)


def prompt_item(row_number: int, row: dict[str, Any], kind: str) -> PromptItem | None:
    """The prompt and reference of one normalized row, or None when it has no reference (or its kind none)."""
    if kind == "chat":
        messages = list(row.get("messages") or [])
        last = max((i for i, message in enumerate(messages) if message.get("role") == "assistant"), default=None)
        if last is None or last == 0:
            return None
        answer = messages[last]
        return PromptItem(
            row_number=row_number,
            prompt=messages[:last],
            reference_text=str(answer.get("content") or ""),
            reference_tool_calls=list(answer.get("tool_calls") or []),
            tools=list(row.get("tools") or []),
        )
    if kind == "instruction":
        prompt, completion = row.get("prompt"), row.get("completion")
        if not prompt:
            return None
        if isinstance(completion, list):
            assistant = [message for message in completion if message.get("role") == "assistant"]
            if not assistant:
                return None
            text, calls = str(assistant[-1].get("content") or ""), list(assistant[-1].get("tool_calls") or [])
        else:
            text, calls = str(completion or ""), []
        return PromptItem(
            row_number=row_number,
            prompt=prompt if isinstance(prompt, str) else list(prompt),
            reference_text=text,
            reference_tool_calls=calls,
            tools=list(row.get("tools") or []),
        )
    return None


def read_prompt_items(path: str | Path, kind: str, *, limit: int | None = None) -> Iterator[PromptItem]:
    """The prompt items of a JSON Lines rows file, in order (at most ``limit``)."""
    count = 0
    with Path(path).open(encoding="utf-8") as rows:
        for number, line in enumerate(rows, start=1):
            if not line.strip():
                continue
            item = prompt_item(number, json.loads(line), kind)
            if item is None:
                continue
            yield item
            count += 1
            if limit is not None and count >= limit:
                return
