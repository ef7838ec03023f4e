"""The normalized row shapes: one per dataset kind, stored once per version as JSON Lines.

They are TRL's own dataset formats, so training reads a version's rows without converting them:

- ``chat``        ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}``
- ``instruction`` ``{"prompt": str, "completion": str}``  (Alpaca ``instruction`` + ``input`` → ``prompt``)
- ``preference``  ``{"prompt": [Message...], "chosen": [Message...], "rejected": [Message...]}``
                  (plain strings become ``[{"role": "user", ...}]`` / ``[{"role": "assistant", ...}]``)
- ``text``        ``{"text": str}``  (raw corpora for continued pretraining)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
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


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# JSON allows these raw inside strings, but str.splitlines() and some JSON Lines readers split rows on them.
_UNUSUAL_LINE_BREAKS = re.compile("[\u0085\u2028\u2029]")


def encode_row(row: Row) -> str:
    """One row as a compact JSON line (without the newline), unusual line breaks escaped as ``\\uXXXX``."""
    text = _ENCODER.encode(row)
    if _UNUSUAL_LINE_BREAKS.search(text):
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
