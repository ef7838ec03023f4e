"""Recognise which kind of dataset a file holds and turn each record into a normalized row (see ``rows``).

``detect_schema`` looks at column names only (from the first records) and either names one kind with
its column mapping, or, when the columns fit several kinds or none, returns ``kind=None`` with the
candidates and a suggested mapping for the column-mapping form. ``normalize`` then converts one record
with a kind and a mapping, returning the row or every problem it found in it.

A mapping maps a normalized field name (``FIELDS``: ``messages``, ``prompt``, ``input``, ``completion``,
``chosen``, ``rejected``, ``text``) to a source column name. ShareGPT conversations (``from``/``value``)
and OpenAI ones (``role``/``content``) both map to ``messages``; Alpaca's ``instruction`` and optional
``input`` map to ``prompt`` and ``input`` and become one prompt. A column holding JSON text (a CSV cell,
a Parquet string column) is parsed where a list of turns is expected, with the same strict rules as a
JSON file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datasets_app.engine.formats import Problem, Record, RowError, loads_strict, type_name
from datasets_app.engine.rows import ROLES, Kind, Message, Row, row_texts


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One normalized field of a kind, as the column-mapping form shows it."""

    name: str
    required: bool
    help: str


FIELDS: dict[Kind, tuple[FieldSpec, ...]] = {
    Kind.CHAT: (
        FieldSpec("messages", True, "The conversation: a list of {role, content} (or ShareGPT {from, value}) turns."),
    ),
    Kind.INSTRUCTION: (
        FieldSpec("prompt", True, "The instruction or question."),
        FieldSpec("input", False, "Extra input appended to the prompt after a blank line (Alpaca's 'input')."),
        FieldSpec("completion", True, "The answer the model should learn to give."),
    ),
    Kind.PREFERENCE: (
        FieldSpec(
            "prompt",
            False,
            "The prompt, as text or turns. Leave it out when chosen and rejected are whole conversations "
            "that start with the prompt.",
        ),
        FieldSpec("chosen", True, "The better answer (text or assistant turns)."),
        FieldSpec("rejected", True, "The worse answer (text or assistant turns)."),
    ),
    Kind.TEXT: (FieldSpec("text", True, "The document text, for continued pretraining."),),
}

KIND_ORDER: tuple[Kind, ...] = (Kind.PREFERENCE, Kind.CHAT, Kind.INSTRUCTION, Kind.TEXT)

# Column names the suggestion looks for, best first, per normalized field.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "messages": ("messages", "conversations", "conversation", "dialog", "dialogue", "chat", "turns"),
    "prompt": ("prompt", "instruction", "question", "query", "user", "human", "context", "source", "input"),
    "input": ("input",),
    "completion": ("completion", "output", "response", "answer", "assistant", "gpt", "target", "reply"),
    "chosen": ("chosen", "accepted", "preferred", "better", "positive"),
    "rejected": ("rejected", "dispreferred", "worse", "negative"),
    "text": ("text", "content", "document", "body", "passage", "raw"),
}
# Columns that say "this row is a task", so a ``text`` column beside them is not clearly a corpus.
_TASK_COLUMNS = frozenset(
    {"messages", "conversations", "prompt", "completion", "instruction", "output", "response", "question",
     "answer", "chosen", "rejected", "query"}
)  # fmt: skip

ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}
"""Roles accepted in a conversation (compared case-insensitively) and the role each becomes."""

_ALLOWED_ROLES = f"{', '.join(ROLES)} (ShareGPT: system, human, gpt, tool)"


@dataclass(frozen=True)
class SchemaGuess:
    """What ``detect_schema`` concluded: a kind (None when ambiguous), a mapping and the alternatives."""

    kind: Kind | None
    mapping: dict[str, str]
    candidates: list[Kind]
    reason: str
    columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value if self.kind else None,
            "mapping": dict(self.mapping),
            "candidates": [kind.value for kind in self.candidates],
            "reason": self.reason,
            "columns": list(self.columns),
        }


def columns_of(sample: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every column name seen in the sample, in order of first appearance."""
    seen: dict[str, None] = {}
    for data in sample:
        for name in data:
            seen.setdefault(str(name), None)
    return list(seen)


def _full_matches(columns: set[str]) -> list[tuple[Kind, dict[str, str]]]:
    """Kinds whose own column names are all present, with the mapping each would use."""
    matches: list[tuple[Kind, dict[str, str]]] = []
    if "chosen" in columns or "rejected" in columns:
        mapping = {"chosen": "chosen", "rejected": "rejected"}
        if "prompt" in columns:
            mapping["prompt"] = "prompt"
        matches.append((Kind.PREFERENCE, mapping))
    for name in ("messages", "conversations"):
        if name in columns:
            matches.append((Kind.CHAT, {"messages": name}))
            break
    if {"instruction", "output"} <= columns:
        mapping = {"prompt": "instruction", "completion": "output"}
        if "input" in columns:
            mapping["input"] = "input"
        matches.append((Kind.INSTRUCTION, mapping))
    elif {"prompt", "completion"} <= columns:
        matches.append((Kind.INSTRUCTION, {"prompt": "prompt", "completion": "completion"}))
    if "text" in columns:
        matches.append((Kind.TEXT, {"text": "text"}))
    return matches


def suggest_mapping(kind: Kind, columns: Iterable[str]) -> dict[str, str]:
    """The likeliest source column for each field of ``kind``, by name; fields with no likely column are left out."""
    available = list(columns)
    lowered = {name.lower(): name for name in available}
    used: set[str] = set()
    mapping: dict[str, str] = {}
    for spec in FIELDS[kind]:
        for synonym in _SYNONYMS[spec.name]:
            column = lowered.get(synonym)
            if column is not None and column not in used:
                mapping[spec.name] = column
                used.add(column)
                break
    if kind is Kind.TEXT and "text" not in mapping:
        text_like = [name for name in available if name not in used]
        if len(text_like) == 1:
            mapping["text"] = text_like[0]
    return mapping


def _partial_candidates(columns: list[str]) -> list[Kind]:
    """Kinds for which some column looks like one of their fields, in ``KIND_ORDER``."""
    candidates = []
    for kind in KIND_ORDER:
        required = [spec for spec in FIELDS[kind] if spec.required]
        if any(spec.name in suggest_mapping(kind, columns) for spec in required):
            candidates.append(kind)
    return candidates


def detect_schema(sample: list[dict[str, Any]]) -> SchemaGuess:
    """Recognise the kind of dataset from the column names of the first records (about 200 are plenty).

    Exactly one kind whose own column names are present (e.g. ``messages``; ``instruction`` + ``output``;
    ``prompt`` + ``completion``; ``chosen``/``rejected``; ``text``) is taken as the answer, except a
    ``text`` column beside task-like columns. Otherwise ``kind`` is None: ``candidates`` lists the
    plausible kinds, best first, and ``mapping`` suggests columns for the first of them.
    """
    columns = columns_of(sample)
    if not columns:
        return SchemaGuess(None, {}, list(KIND_ORDER), "No rows with fields were found to look at.", columns)
    column_set = set(columns)
    matches = _full_matches(column_set)
    listed = ", ".join(columns[:12]) + (", …" if len(columns) > 12 else "")
    if len(matches) == 1:
        kind, mapping = matches[0]
        others = (column_set - set(mapping.values())) & _TASK_COLUMNS
        if kind is not Kind.TEXT or not others:
            return SchemaGuess(kind, mapping, [kind], _explain(kind, mapping), columns)
        candidates = [Kind.TEXT, *(k for k in _partial_candidates(columns) if k is not Kind.TEXT)]
        return SchemaGuess(
            None,
            mapping,
            candidates,
            f"The file has a 'text' column and also {', '.join(repr(c) for c in sorted(others))}: "
            "choose whether to train on the raw text or on the task columns.",
            columns,
        )
    if len(matches) > 1:
        candidates = [kind for kind, _ in matches]
        return SchemaGuess(
            None,
            matches[0][1],
            candidates,
            f"The columns ({listed}) fit more than one kind of dataset: "
            f"{', '.join(kind.value for kind in candidates)}. Choose one.",
            columns,
        )
    candidates = _partial_candidates(columns) or list(KIND_ORDER)
    return SchemaGuess(
        None,
        suggest_mapping(candidates[0], columns),
        candidates,
        f"No column has a name the studio recognises for sure (columns: {listed}); "
        "choose the kind of dataset and which column holds each field.",
        columns,
    )


def _explain(kind: Kind, mapping: Mapping[str, str]) -> str:
    pairs = ", ".join(f"{source} → {target}" for target, source in mapping.items())
    names = {
        Kind.CHAT: "a chat dataset",
        Kind.INSTRUCTION: "an instruction dataset",
        Kind.PREFERENCE: "a preference dataset",
        Kind.TEXT: "a raw-text corpus",
    }
    return f"Recognised {names[kind]} from its columns ({pairs})."


def check_mapping(kind: Kind, mapping: Mapping[str, Any]) -> list[str]:
    """What is wrong with a (user-chosen) mapping for ``kind``, as sentences; empty when it is usable."""
    errors: list[str] = []
    known = {spec.name for spec in FIELDS[kind]}
    for name, column in mapping.items():
        if name not in known:
            errors.append(f"'{name}' is not a field of a {kind.value} dataset (fields: {', '.join(sorted(known))}).")
        elif not isinstance(column, str) or not column:
            errors.append(f"Choose a column for '{name}'.")
    for spec in FIELDS[kind]:
        if spec.required and not mapping.get(spec.name):
            errors.append(f"Choose the column that holds '{spec.name}'.")
    columns = [column for name, column in mapping.items() if name in known and isinstance(column, str)]
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:
        errors.append(f"The column {', '.join(repr(c) for c in repeated)} is chosen for more than one field.")
    return errors


# --- Normalizing one record ---------------------------------------------------------------------------


class _Row:
    """Problems found so far in one record, and the helpers that name fields in messages."""

    def __init__(self, record: Record, mapping: Mapping[str, str]) -> None:
        self.record = record
        self.mapping = mapping
        self.problems: list[Problem] = []

    def problem(self, code: str, field_name: str | None, message: str) -> None:
        self.problems.append(Problem(line=self.record.line, column=None, field=field_name, code=code, message=message))

    def column(self, name: str) -> str:
        return self.mapping.get(name, name)

    def describe(self, name: str) -> str:
        column = self.column(name)
        return f"'{name}'" if column == name else f"'{name}' (column '{column}')"

    def get(self, name: str) -> Any:
        """The mapped value, or None when the field is not mapped or the cell is absent or null."""
        column = self.mapping.get(name)
        return None if column is None else self.record.data.get(column)

    def missing(self, name: str) -> None:
        present = [str(key) for key, value in self.record.data.items() if value is not None]
        has = ", ".join(present[:12]) + (", …" if len(present) > 12 else "") if present else "no fields"
        self.problem(
            "missing_field", self.column(name), f"The field {self.describe(name)} is missing; this row has: {has}."
        )

    def text(self, name: str, role: str, turn: int) -> str | None:
        """A required text field (numbers are taken as their text); problems recorded, None when unusable."""
        value = self.get(name)
        if value is None:
            self.missing(name)
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.problem(
                "wrong_type",
                self.column(name),
                f"The field {self.describe(name)} must be text, not {type_name(value)}.",
            )
            return None
        if not value.strip():
            self.problem(
                "empty_turn", self.column(name), f"Turn {turn} ({role}): the field {self.describe(name)} is empty."
            )
            return None
        return value

    def turns(self, name: str, value: Any) -> list[Message] | None:
        """A list of turns (JSON text is parsed) with roles mapped; problems recorded, None when unusable."""
        column = self.column(name)
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = loads_strict(value)
            except RowError as error:
                code = "wrong_type" if error.code == "json" else error.code
                self.problem(
                    code,
                    column,
                    f"The field {self.describe(name)} holds text that is not a valid JSON list: {error.detail}.",
                )
                return None
        if not isinstance(value, list):
            self.problem(
                "wrong_type",
                column,
                f"The field {self.describe(name)} must be a list of turns, not {type_name(value)}.",
            )
            return None
        turns: list[Message] = []
        usable = True
        for number, turn in enumerate(value, 1):
            where = f"{column}[{number - 1}]"
            if not isinstance(turn, dict):
                self.problem(
                    "wrong_type",
                    where,
                    f"Turn {number} must be an object with a role and content, not {type_name(turn)}.",
                )
                usable = False
                continue
            if "role" in turn or "content" in turn:
                role_value, content = turn.get("role"), turn.get("content")
            elif "from" in turn or "value" in turn:
                role_value, content = turn.get("from"), turn.get("value")
            else:
                keys = ", ".join(map(str, list(turn)[:8])) or "none"
                self.problem(
                    "missing_field",
                    where,
                    f"Turn {number} has no role and content (or from and value); its keys: {keys}.",
                )
                usable = False
                continue
            role = ROLE_ALIASES.get(role_value.strip().lower()) if isinstance(role_value, str) else None
            if role is None:
                shown = "no role" if role_value is None else f"the role {role_value!r}"[:80]
                self.problem("unknown_role", where, f"Turn {number} has {shown}; allowed roles: {_ALLOWED_ROLES}.")
                usable = False
                continue
            text = _content_text(content)
            if text is None:
                self.problem(
                    "wrong_type",
                    where,
                    f"Turn {number} ({role}) has content of type {type_name(content)}; it must be text.",
                )
                usable = False
            elif not text.strip():
                empty = "null" if content is None else "empty"
                self.problem("empty_turn", where, f"Turn {number} ({role}) is {empty}.")
                usable = False
            else:
                turns.append({"role": role, "content": text})
        return turns if usable else None


def _content_text(content: Any) -> str | None:
    """Turn content as text: a string, OpenAI's list of text parts (joined), or "" for null; None if not text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    ):
        return "\n".join(part["text"] for part in content)
    return None


def _end_with_assistant(row: _Row, field_name: str, turns: list[Message]) -> bool:
    if turns and turns[-1]["role"] != "assistant":
        row.problem(
            "no_assistant_turn_at_end",
            row.column(field_name),
            f"The {'conversation' if field_name == 'messages' else field_name + ' answer'} ends with a "
            f"{turns[-1]['role']} turn (turn {len(turns)}); it must end with an assistant turn.",
        )
        return False
    return True


def _normalize_chat(row: _Row) -> Row | None:
    value = row.get("messages")
    if value is None:
        row.missing("messages")
        return None
    turns = row.turns("messages", value)
    if turns is None:
        return None
    if not turns:
        row.problem("empty_conversation", row.column("messages"), "The conversation has no turns.")
        return None
    if not _end_with_assistant(row, "messages", turns):
        return None
    return {"messages": turns}


def _normalize_instruction(row: _Row) -> Row | None:
    prompt = row.text("prompt", "user", 1)
    completion = row.text("completion", "assistant", 2)
    if prompt is None or completion is None:
        return None
    extra = row.get("input")
    if isinstance(extra, int | float) and not isinstance(extra, bool):
        extra = str(extra)
    if extra is not None and not isinstance(extra, str):
        row.problem(
            "wrong_type",
            row.column("input"),
            f"The field {row.describe('input')} must be text, not {type_name(extra)}.",
        )
        return None
    if extra and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return {"prompt": prompt, "completion": completion}


def _preference_side(row: _Row, name: str) -> list[Message] | None:
    value = row.get(name)
    if value is None or value == [] or (isinstance(value, str) and not value.strip()):
        row.problem(
            "missing_chosen_or_rejected",
            row.column(name),
            f"The {name} answer ({row.describe(name)}) is missing or empty.",
        )
        return None
    if isinstance(value, str) and not value.lstrip().startswith("["):
        return [{"role": "assistant", "content": value}]
    return row.turns(name, value)


def _normalize_preference(row: _Row) -> Row | None:
    prompt: list[Message] | None = None
    if "prompt" in row.mapping:
        value = row.get("prompt")
        if value is None:
            row.missing("prompt")
        elif isinstance(value, str) and not value.lstrip().startswith("["):
            if value.strip():
                prompt = [{"role": "user", "content": value}]
            else:
                row.problem(
                    "empty_turn", row.column("prompt"), f"Turn 1 (user): the field {row.describe('prompt')} is empty."
                )
        else:
            prompt = row.turns("prompt", value)
            if prompt == []:
                row.problem("empty_turn", row.column("prompt"), f"The prompt {row.describe('prompt')} has no turns.")
                prompt = None
    chosen = _preference_side(row, "chosen")
    rejected = _preference_side(row, "rejected")
    if chosen is None or rejected is None or row.problems:
        return None
    if prompt is None:  # an implicit prompt: the turns both conversations start with
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            row.missing("prompt")
            return None
        prompt = chosen[:shared]
    # Chosen and rejected often repeat the prompt (a whole conversation); keep only the answers.
    if chosen[: len(prompt)] == prompt and len(chosen) > len(prompt):
        chosen = chosen[len(prompt) :]
    if rejected[: len(prompt)] == prompt and len(rejected) > len(prompt):
        rejected = rejected[len(prompt) :]
    ends_ok = _end_with_assistant(row, "chosen", chosen) & _end_with_assistant(row, "rejected", rejected)
    if not ends_ok:
        return None
    if chosen == rejected:
        row.problem("identical_chosen_rejected", row.column("chosen"), "The chosen and rejected answers are the same.")
        return None
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _normalize_text(row: _Row) -> Row | None:
    value = row.get("text")
    if value is None:
        row.missing("text")
        return None
    if not isinstance(value, str):
        row.problem(
            "wrong_type", row.column("text"), f"The field {row.describe('text')} must be text, not {type_name(value)}."
        )
        return None
    if not value.strip():
        row.problem("empty_text", row.column("text"), f"The field {row.describe('text')} is empty.")
        return None
    return {"text": value}


_NORMALIZERS = {
    Kind.CHAT: _normalize_chat,
    Kind.INSTRUCTION: _normalize_instruction,
    Kind.PREFERENCE: _normalize_preference,
    Kind.TEXT: _normalize_text,
}


def normalize(
    record: Record, kind: Kind, mapping: Mapping[str, str], *, max_row_chars: int | None = None
) -> Row | list[Problem]:
    """Convert one record into the normalized row of ``kind`` (``rows``), or return all its problems.

    ``mapping`` should have passed ``check_mapping``. Conversations must end with an assistant turn
    (they are for supervised fine-tuning); ``max_row_chars`` caps the row's total text length
    (``row_too_long``). Never raises for bad content.
    """
    row = _Row(record, mapping)
    result = _NORMALIZERS[kind](row)
    if result is None or row.problems:
        return row.problems or [
            Problem(line=record.line, column=None, field=None, code="wrong_type", message="The row could not be read.")
        ]
    # A row's text cannot be longer than the bytes it was read from, so small records skip the count.
    if max_row_chars is not None and not 0 < record.size <= max_row_chars:
        length = sum(len(text) for text in row_texts(result))
        if length > max_row_chars:
            return [
                Problem(
                    line=record.line,
                    column=None,
                    field=None,
                    code="row_too_long",
                    message=f"The row has {length:,} characters of text; the limit is {max_row_chars:,}.",
                )
            ]
    return result


__all__ = [
    "FIELDS",
    "KIND_ORDER",
    "ROLE_ALIASES",
    "FieldSpec",
    "SchemaGuess",
    "check_mapping",
    "columns_of",
    "detect_schema",
    "normalize",
    "suggest_mapping",
]
