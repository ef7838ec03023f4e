"""The normalized row shapes: one per dataset kind, stored once per version as JSON Lines.

They are TRL's own dataset formats, so training reads a version's rows without converting them:

- ``chat``        ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}``
- ``instruction`` ``{"prompt": str, "completion": str}``  (Alpaca ``instruction`` + ``input`` → ``prompt``)
- ``preference``  ``{"prompt": [Message...], "chosen": [Message...], "rejected": [Message...]}``
                  (plain strings become ``[{"role": "user", ...}]`` / ``[{"role": "assistant", ...}]``)
- ``text``        ``{"text": str}``  (raw corpora for continued pretraining)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypedDict


class Kind(StrEnum):
    CHAT = "chat"
    INSTRUCTION = "instruction"
    PREFERENCE = "preference"
    TEXT = "text"


ROLES = ("system", "user", "assistant", "tool")


class Message(TypedDict):
    role: str
    content: str


Row = dict[str, Any]


def row_texts(row: Row) -> list[str]:
    """Every piece of text in a normalized row, in order (for statistics, PII scans, dedupe keys)."""
    texts: list[str] = []
    for key in ("text", "prompt", "completion", "messages", "chosen", "rejected"):
        value = row.get(key)
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts.extend(str(message.get("content", "")) for message in value if isinstance(message, dict))
    return texts
