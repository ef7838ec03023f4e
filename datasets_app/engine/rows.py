"""The normalized row shapes: one per dataset kind, stored once per version as JSON Lines.

They are TRL's own dataset formats, so training reads a version's rows with little conversion:

- ``chat``        ``{"messages": [Message, ...], "tools": [Tool, ...]}`` (``tools`` only when the upload
                  declared tools)
- ``instruction`` ``{"prompt": str, "completion": str}``  (Alpaca ``instruction`` + ``input`` → ``prompt``);
                  when the upload has Alpaca's ``system`` or ``history`` columns, every row is
                  conversational instead: ``{"prompt": [Message, ...], "completion": [Message]}`` (the
                  prompt holds the system turn, the history's user/assistant pairs and the new user turn)
- ``preference``  ``{"prompt": [Message...], "chosen": [Message...], "rejected": [Message...]}``
                  (plain strings become ``[{"role": "user", ...}]`` / ``[{"role": "assistant", ...}]``)
- ``feedback``    ``{"prompt": [Message...], "completion": [Message...], "label": bool}``: one answer
                  labelled desirable (True) or undesirable (False), TRL's unpaired preference format (KTO)
- ``text``        ``{"text": str}``  (raw corpora for continued pretraining)

A ``Message`` always has ``role`` (``system``, ``user``, ``assistant`` or ``tool``) and ``content`` (text;
``""`` for an assistant turn that only calls tools). Optional keys, present only when the upload had them:

- ``reasoning_content`` (assistant): the model's reasoning before its answer (OpenAI ``reasoning`` or
  ``thinking`` content parts); a job setting says whether it is trained on or masked.
- ``tool_calls`` (assistant): ``[{"type": "function", "id": str (optional), "function": {"name": str,
  "arguments": {...}}}]``; ``arguments`` is a JSON object that matches the declared tool's parameters.
- ``tool_call_id`` and ``name`` (tool): which call this turn answers.
- ``loss_weight`` (assistant): ``0`` means the turn is context only, never trained on; absent means 1.

A ``Tool`` is an OpenAI function schema: ``{"type": "function", "function": {"name": str, "description":
str, "parameters": <JSON schema object>}}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, NotRequired, TypedDict


class Kind(StrEnum):
    CHAT = "chat"
    INSTRUCTION = "instruction"
    PREFERENCE = "preference"
    FEEDBACK = "feedback"
    TEXT = "text"


ROLES = ("system", "user", "assistant", "tool")


class Message(TypedDict):
    role: str
    content: str
    reasoning_content: NotRequired[str]
    tool_calls: NotRequired[list[dict[str, Any]]]
    tool_call_id: NotRequired[str]
    name: NotRequired[str]
    loss_weight: NotRequired[float]


Row = dict[str, Any]

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_json(value: Any) -> str:
    """``value`` as compact JSON text, non-ASCII kept, as rows are written."""
    return _ENCODER.encode(value)


class EncodedList(list[Any]):
    """A list that carries its own JSON text, for a value many rows repeat (a ``tools`` declaration): the row
    encoder copies the text instead of encoding the value again. Never change one after it is made."""

    __slots__ = ("json_text",)

    def __init__(self, items: Iterable[Any], json_text: str) -> None:
        super().__init__(items)
        self.json_text = json_text


def row_texts(row: Row) -> list[str]:
    """Every piece of text in a normalized row, in order (for statistics, PII scans, dedupe keys): contents,
    reasoning, and tool calls as JSON (tool declarations are left out: they repeat across rows)."""
    texts: list[str] = []
    for key in ("text", "prompt", "completion", "messages", "chosen", "rejected"):
        value = row.get(key)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            for message in value:
                if not isinstance(message, dict):
                    continue
                if message.get("reasoning_content"):
                    texts.append(str(message["reasoning_content"]))
                texts.append(str(message.get("content", "")))
                if message.get("tool_calls"):
                    texts.append(_ENCODER.encode([call.get("function") for call in message["tool_calls"]]))
    return texts


# JSON allows these raw inside strings, but str.splitlines() and some JSON Lines readers split rows on them.
_UNUSUAL_LINE_BREAKS = re.compile("[\u0085\u2028\u2029]")


def encode_row(row: Row) -> str:
    """One row as a compact JSON line (without the newline), unusual line breaks escaped as ``\\uXXXX``."""
    if any(type(value) is EncodedList for value in row.values()):
        encode = _ENCODER.encode
        text = "{" + ",".join(
            f"{encode(key)}:{value.json_text if type(value) is EncodedList else encode(value)}"
            for key, value in row.items()
        ) + "}"  # fmt: skip
    else:
        text = _ENCODER.encode(row)
    if "\u2028" in text or "\u2029" in text or "\x85" in text:  # plain searches: far quicker than the pattern
        text = _UNUSUAL_LINE_BREAKS.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
    return text


def read_rows_file(path: str | Path) -> Iterator[Row]:
    """Stream the normalized rows of a version's JSON Lines file."""
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def write_rows_file(path: str | Path, rows: Iterable[Row]) -> tuple[int, str, int]:
    """Write rows as JSON Lines atomically; returns (row count, SHA-256 of the bytes, size in bytes)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    count = size = 0
    with partial.open("wb") as out:
        for row in rows:
            line = (encode_row(row) + "\n").encode("utf-8")
            digest.update(line)
            out.write(line)
            count += 1
            size += len(line)
    os.replace(partial, target)
    return count, digest.hexdigest(), size
