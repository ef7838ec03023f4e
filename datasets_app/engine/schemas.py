"""Recognise which kind of dataset a file holds and turn each record into a normalized row (see ``rows``).

``detect_schema`` looks at column names only (from the first records) and either names one kind with
its column mapping, or, when the columns fit several kinds or none, returns ``kind=None`` with the
candidates and a suggested mapping for the column-mapping form. ``normalize`` then converts one record
with a kind and a mapping, returning the row or every problem it found in it, and notes the record's
fields that the row does not carry (``unused``), so the report can list them.

A mapping maps a normalized field name (``FIELDS``) to a source column name. The layouts other tools
write are recognised without a form: OpenAI chat (``messages``, ``tools``) and ShareGPT
(``conversations`` with ``from``/``value``, ``system``, ``tools``); Alpaca (``instruction``, ``input``,
``output``, optionally ``system`` and ``history``); preference pairs as ``chosen``/``rejected`` (text,
turn lists, or ShareGPT single turns beside ``conversations``), ``chosen_messages``/``rejected_messages``
and OpenAI's ``input``/``preferred_output``/``non_preferred_output``; unpaired feedback as a conversation
or ``prompt``/``completion`` with a boolean ``label`` (KTO); raw text. A column holding JSON text (a CSV
cell, a Parquet string column) is parsed where a list of turns is expected, with the same strict rules as
a JSON file. Turns, content parts, tool calls and tool declarations are read by ``turns.RowReader``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datasets_app.engine.formats import Problem, Record, type_name
from datasets_app.engine.rows import Kind, Message, Row, row_texts
from datasets_app.engine.turns import MEDIA_COLUMNS, RowReader, is_filled


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One normalized field of a kind, as the column-mapping form shows it."""

    name: str
    required: bool
    help: str


FIELDS: dict[Kind, tuple[FieldSpec, ...]] = {
    Kind.CHAT: (
        FieldSpec("messages", True, "The conversation: a list of {role, content} (or ShareGPT {from, value}) turns."),
        FieldSpec("system", False, "A system prompt put before the conversation (ShareGPT's 'system' column)."),
        FieldSpec("tools", False, "The tools the assistant may call: a list of JSON-schema function declarations."),
    ),
    Kind.INSTRUCTION: (
        FieldSpec("prompt", True, "The instruction or question."),
        FieldSpec("input", False, "Extra input appended to the prompt after a blank line (Alpaca's 'input')."),
        FieldSpec("completion", True, "The answer the model should learn to give."),
        FieldSpec("system", False, "A system prompt for every turn (Alpaca's 'system')."),
        FieldSpec("history", False, "Earlier [question, answer] pairs of the conversation (Alpaca's 'history')."),
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
    Kind.FEEDBACK: (
        FieldSpec(
            "messages", False, "The conversation, ending with the answer being judged (or use prompt and completion)."
        ),
        FieldSpec("prompt", False, "The prompt, as text or turns (with completion, instead of a conversation)."),
        FieldSpec("completion", False, "The answer being judged, as text or assistant turns."),
        FieldSpec("label", True, "true for an answer to learn from, false for one to avoid."),
    ),
    Kind.TEXT: (FieldSpec("text", True, "The document text, for continued pretraining."),),
}

KIND_ORDER: tuple[Kind, ...] = (Kind.PREFERENCE, Kind.FEEDBACK, Kind.CHAT, Kind.INSTRUCTION, Kind.TEXT)

# Column names the suggestion looks for, best first, per normalized field.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "messages": ("messages", "conversations", "conversation", "dialog", "dialogue", "chat", "turns"),
    "prompt": ("prompt", "instruction", "question", "query", "user", "human", "context", "source", "input"),
    "input": ("input",),
    "completion": ("completion", "output", "response", "answer", "assistant", "gpt", "target", "reply"),
    "chosen": ("chosen", "chosen_messages", "preferred_output", "accepted", "preferred", "better", "positive"),
    "rejected": ("rejected", "rejected_messages", "non_preferred_output", "dispreferred", "worse", "negative"),
    "text": ("text", "content", "document", "body", "passage", "raw"),
    "system": ("system", "system_prompt"),
    "tools": ("tools", "functions"),
    "history": ("history",),
    "label": ("label", "labels", "kto_tag", "desirable", "thumbs_up", "feedback"),
}
# Where a kind reads a field differently: a preference prompt is often a whole conversation column.
_KIND_SYNONYMS: dict[Kind, dict[str, tuple[str, ...]]] = {
    Kind.PREFERENCE: {"prompt": (*_SYNONYMS["prompt"], "conversations", "messages")},
}
# Pairs of columns that make a file a preference dataset, and the prompt column each layout uses.
_PREFERENCE_PAIRS = (
    ("chosen", "rejected"),
    ("chosen_messages", "rejected_messages"),
    ("preferred_output", "non_preferred_output"),
)
_PREFERENCE_PROMPTS = ("prompt", "conversations", "messages", "input")
# Columns that say "this row is a task", so a ``text`` column beside them is not clearly a corpus.
_TASK_COLUMNS = frozenset(
    {"messages", "conversations", "prompt", "completion", "instruction", "output", "response", "question",
     "answer", "chosen", "rejected", "query", "label"}
)  # fmt: skip


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
    """Kinds whose own column names are all present, with the mapping each would use.

    Chosen/rejected pairs and a feedback ``label`` settle the kind on their own: the conversation column
    beside them is the prompt (or the conversation being judged), not a chat dataset of its own.
    """
    for pair in _PREFERENCE_PAIRS:
        if pair[0] in columns or pair[1] in columns:
            mapping = {
                name: column for name, column in zip(("chosen", "rejected"), pair, strict=True) if column in columns
            }
            prompt = next((name for name in _PREFERENCE_PROMPTS if name in columns), None)
            if prompt is not None:
                mapping["prompt"] = prompt
            return [(Kind.PREFERENCE, mapping)]
    conversation = next((name for name in ("messages", "conversations") if name in columns), None)
    label = next((name for name in ("label", "kto_tag") if name in columns), None)
    if label is not None:
        if conversation is not None:
            return [(Kind.FEEDBACK, {"messages": conversation, "label": label})]
        if {"prompt", "completion"} <= columns:
            return [(Kind.FEEDBACK, {"prompt": "prompt", "completion": "completion", "label": label})]
    matches: list[tuple[Kind, dict[str, str]]] = []
    if conversation is not None:
        mapping = {"messages": conversation}
        mapping.update({name: name for name in ("system", "tools") if name in columns})
        matches.append((Kind.CHAT, mapping))
    if {"instruction", "output"} <= columns:
        mapping = {"prompt": "instruction", "completion": "output"}
        mapping.update({name: name for name in ("input", "system", "history") if name in columns})
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
        for synonym in _KIND_SYNONYMS.get(kind, {}).get(spec.name, _SYNONYMS[spec.name]):
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
        Kind.FEEDBACK: "a feedback dataset (answers labelled good or bad)",
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
    if kind is Kind.FEEDBACK:
        has_conversation = bool(mapping.get("messages"))
        has_pair = bool(mapping.get("prompt")) and bool(mapping.get("completion"))
        if has_conversation and (mapping.get("prompt") or mapping.get("completion")):
            errors.append(
                "Choose either the column holding the conversation ('messages') or the 'prompt' and 'completion' "
                "columns, not both."
            )
        elif not has_conversation and not has_pair:
            errors.append(
                "Choose the column holding the conversation ('messages'), or the 'prompt' and 'completion' columns."
            )
    columns = [column for name, column in mapping.items() if name in known and isinstance(column, str)]
    repeated = sorted({column for column in columns if columns.count(column) > 1})
    if repeated:
        errors.append(f"The column {', '.join(repr(c) for c in repeated)} is chosen for more than one field.")
    return errors


# --- Normalizing one record ---------------------------------------------------------------------------


def _end_with_assistant(row: RowReader, field_name: str, turns: list[Message]) -> bool:
    if turns and turns[-1]["role"] != "assistant":
        row.problem(
            "no_assistant_turn_at_end",
            row.column(field_name),
            f"The {'conversation' if field_name == 'messages' else field_name + ' answer'} ends with a "
            f"{turns[-1]['role']} turn (turn {len(turns)}); it must end with an assistant turn.",
        )
        return False
    return True


def _system_turn(row: RowReader) -> list[Message] | None:
    """The mapped system prompt as a turn ([] when the row has none), None when it is not text."""
    value = row.get("system")
    if not is_filled(value):
        return []
    if not isinstance(value, str):
        row.problem(
            "wrong_type",
            row.column("system"),
            f"The field {row.describe('system')} must be text, not {type_name(value)}.",
        )
        return None
    return [{"role": "system", "content": value}] if value.strip() else []


def _normalize_chat(row: RowReader) -> Row | None:
    value = row.get("messages")
    if value is None:
        row.missing("messages")
        return None
    turns = row.turns("messages", value)
    system = _system_turn(row)
    tools = row.tools("tools")
    if turns is None or system is None or tools is None:
        return None
    if not turns:
        row.problem("empty_conversation", row.column("messages"), "The conversation has no turns.")
        return None
    if system and turns[0]["role"] == "system":
        row.unused.add(f"{row.column('system')} (the conversation has its own system turn)")
        system = []
    if not _end_with_assistant(row, "messages", turns) or not row.check_calls("messages", turns, tools):
        return None
    result: Row = {"messages": system + turns}
    if tools:
        result["tools"] = tools
    return result


def _history(row: RowReader) -> list[Message] | None:
    """Alpaca's ``history``: earlier [question, answer] pairs as user/assistant turns ([] when none)."""
    value = row.json_value("history", row.get("history"), "[")
    if not is_filled(value):
        return []
    if not isinstance(value, list):
        row.problem(
            "wrong_type",
            row.column("history"),
            f"The field {row.describe('history')} must be a list of [question, answer] pairs, not {type_name(value)}.",
        )
        return None
    turns: list[Message] = []
    for number, pair in enumerate(value, 1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t.strip() for t in pair)):
            row.problem(
                "wrong_type",
                f"{row.column('history')}[{number - 1}]",
                f"History item {number} must be a [question, answer] pair of two non-empty texts.",
            )
            return None
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _normalize_instruction(row: RowReader) -> Row | None:
    prompt = row.text("prompt", "user", 1)
    completion = row.text("completion", "assistant", 2)
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
    conversational = "system" in row.mapping or "history" in row.mapping
    system = _system_turn(row) if conversational else []
    history = _history(row) if conversational else []
    if prompt is None or completion is None or system is None or history is None:
        return None
    if extra and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    if not conversational:
        return {"prompt": prompt, "completion": completion}
    return {
        "prompt": [*system, *history, {"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": completion}],
    }


def _answer_turns(row: RowReader, name: str, code: str, what: str) -> list[Message] | None:
    """An answer field: text (one assistant turn), one turn object (ShareGPT) or a list of turns."""
    value = row.get(name)
    if value is None or value == [] or (isinstance(value, str) and not value.strip()):
        row.problem(code, row.column(name), f"The {what} ({row.describe(name)}) is missing or empty.")
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and not value.lstrip().startswith(("[", "{")):
        return [{"role": "assistant", "content": value}]
    value = row.json_value(name, value, "{")
    if isinstance(value, dict):
        value = [value]
    return row.turns(name, value)


def _prompt_turns(row: RowReader) -> list[Message] | None:
    """The mapped prompt: text (one user turn), a list of turns, or OpenAI's ``{"messages": [...]}`` input."""
    value = row.get("prompt")
    if value is None:
        row.missing("prompt")
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and not value.lstrip().startswith(("[", "{")):
        if value.strip():
            return [{"role": "user", "content": value}]
        row.problem("empty_turn", row.column("prompt"), f"Turn 1 (user): the field {row.describe('prompt')} is empty.")
        return None
    value = row.json_value("prompt", value, "{")
    if isinstance(value, dict) and "messages" in value:  # OpenAI's preference input
        for key, extra in value.items():
            if key != "messages" and is_filled(extra):
                row.unused.add(f"{row.column('prompt')}.{key}")
        value = value["messages"]
    prompt = row.turns("prompt", value)
    if prompt == []:
        row.problem("empty_turn", row.column("prompt"), f"The prompt {row.describe('prompt')} has no turns.")
        return None
    return prompt


def _normalize_preference(row: RowReader) -> Row | None:
    prompt = _prompt_turns(row) if "prompt" in row.mapping else None
    chosen = _answer_turns(row, "chosen", "missing_chosen_or_rejected", "chosen answer")
    rejected = _answer_turns(row, "rejected", "missing_chosen_or_rejected", "rejected answer")
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


_TRUE_LABELS = frozenset({"true", "1", "yes", "y", "good", "desirable", "positive", "up"})
_FALSE_LABELS = frozenset({"false", "0", "no", "n", "bad", "undesirable", "negative", "down"})


def _label(row: RowReader) -> bool | None:
    value = row.get("label")
    if value is None:
        row.missing("label")
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_LABELS | _FALSE_LABELS:
        return value.strip().lower() in _TRUE_LABELS
    row.problem(
        "bad_label",
        row.column("label"),
        f"The label {row.describe('label')} is {str(value)[:40]!r}; use true (a good answer) or false (one to avoid).",
    )
    return None


def _normalize_feedback(row: RowReader) -> Row | None:
    label = _label(row)
    prompt: list[Message] | None
    completion: list[Message] | None
    if row.mapping.get("messages"):
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
        if len(turns) < 2:
            row.problem(
                "missing_field",
                row.column("messages"),
                "The conversation holds only the answer; the prompt it answers must come before it.",
            )
            return None
        prompt, completion = turns[:-1], turns[-1:]
    else:
        prompt = _prompt_turns(row)
        completion = _answer_turns(row, "completion", "missing_field", "answer")
        if completion is not None and not _end_with_assistant(row, "completion", completion):
            return None
    if prompt is None or completion is None or label is None or row.problems:
        return None
    return {"prompt": prompt, "completion": completion, "label": label}


def _normalize_text(row: RowReader) -> Row | None:
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
    Kind.FEEDBACK: _normalize_feedback,
    Kind.TEXT: _normalize_text,
}


def normalize(
    record: Record,
    kind: Kind,
    mapping: Mapping[str, str],
    *,
    max_row_chars: int | None = None,
    unused: dict[str, int] | None = None,
) -> Row | list[Problem]:
    """Convert one record into the normalized row of ``kind`` (``rows``), or return all its problems.

    ``mapping`` should have passed ``check_mapping``. Conversations must end with an assistant turn
    (they are for supervised fine-tuning); ``max_row_chars`` caps the row's total text length
    (``row_too_long``). ``unused``, when given, counts (per field name) the records that hold a value the
    normalized row does not carry: unmapped columns and unknown keys of turns. Never raises for bad content.
    """
    row = RowReader(record, mapping, tools_allowed=kind is Kind.CHAT)
    row.check_media()
    result = None if row.problems else _NORMALIZERS[kind](row)
    if unused is not None:
        mapped = set(mapping.values())
        for column, value in record.data.items():
            name = str(column)
            if name not in mapped and name.lower() not in MEDIA_COLUMNS and is_filled(value):
                row.unused.add(name)
        for name in row.unused:
            unused[name] = unused.get(name, 0) + 1
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
    "FieldSpec",
    "SchemaGuess",
    "check_mapping",
    "columns_of",
    "detect_schema",
    "normalize",
    "suggest_mapping",
]
