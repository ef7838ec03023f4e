"""Reading uploads: every format × schema gives the same normalized rows; samples are clean; ambiguous
files ask for a column mapping. Plain engine tests: no database, no Django."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datasets_app.engine.formats import (
    Format,
    Problem,
    Record,
    UnsupportedFormat,
    detect_format,
    iter_records,
)
from datasets_app.engine.rows import Kind
from datasets_app.engine.schemas import check_mapping, detect_schema, normalize, suggest_mapping
from datasets_app.engine.validate import ValidationReport, validate_file

SAMPLES = Path(__file__).resolve().parent.parent / "datasets_app" / "samples"


# --- Writing the same logical rows in each format ------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(name for row in rows for name in row))
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            cells = [row.get(name, "") for name in columns]
            writer.writerow(
                [json.dumps(cell, ensure_ascii=False) if isinstance(cell, list) else cell for cell in cells]
            )


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path)


WRITERS = {"jsonl": write_jsonl, "json": write_json, "csv": write_csv, "parquet": write_parquet}


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


CHAT_ROWS = [
    {"messages": [turn("user", "Hi, café?"), turn("assistant", "Bonjour!\nYes, 24/7.")]},
    {"messages": [turn("system", "Be brief."), turn("user", "2+2?"), turn("assistant", "4"),
                  turn("user", "And 3+3?"), turn("assistant", "6")]},
]  # fmt: skip
SHAREGPT_ROWS = [
    {"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Teal."}]},
    {"conversations": [{"from": "system", "value": "You are kind."}, {"from": "human", "value": "Hello"},
                       {"from": "gpt", "value": "Hello! How can I help?"}]},
]  # fmt: skip
SHAREGPT_EXPECTED = [
    {"messages": [turn("user", "Name a colour."), turn("assistant", "Teal.")]},
    {"messages": [turn("system", "You are kind."), turn("user", "Hello"), turn("assistant", "Hello! How can I help?")]},
]
ALPACA_ROWS = [
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Name a prime number.", "input": "", "output": "7"},
]
ALPACA_EXPECTED = [
    {"prompt": "Translate to French.\n\nGood morning", "completion": "Bonjour"},
    {"prompt": "Name a prime number.", "completion": "7"},
]
PROMPT_COMPLETION_ROWS = [
    {"prompt": "The capital of Peru is", "completion": " Lima."},
    {"prompt": "Water boils at", "completion": " 100 °C at sea level."},
]
PREFERENCE_ROWS = [
    {"prompt": "Say hi.", "chosen": "Hi there!", "rejected": "No."},
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
]
PREFERENCE_EXPECTED = [
    {
        "prompt": [turn("user", "Say hi.")],
        "chosen": [turn("assistant", "Hi there!")],
        "rejected": [turn("assistant", "No.")],
    },
    {"prompt": [turn("user", "2+2?")], "chosen": [turn("assistant", "4")], "rejected": [turn("assistant", "5")]},
]
PREFERENCE_TURN_ROWS = [
    {
        "prompt": [turn("user", "Say hi.")],
        "chosen": [turn("assistant", "Hi there!")],
        "rejected": [turn("assistant", "No.")],
    },
    {"prompt": [turn("user", "2+2?")], "chosen": [turn("assistant", "4")], "rejected": [turn("assistant", "5")]},
]
TEXT_ROWS = [{"text": 'The first paragraph, with a comma and "quotes".'}, {"text": "Second line\nspans two lines."}]

SCHEMAS = {
    "openai_chat": (CHAT_ROWS, Kind.CHAT, CHAT_ROWS),
    "sharegpt": (SHAREGPT_ROWS, Kind.CHAT, SHAREGPT_EXPECTED),
    "alpaca": (ALPACA_ROWS, Kind.INSTRUCTION, ALPACA_EXPECTED),
    "prompt_completion": (PROMPT_COMPLETION_ROWS, Kind.INSTRUCTION, PROMPT_COMPLETION_ROWS),
    "preference_strings": (PREFERENCE_ROWS, Kind.PREFERENCE, PREFERENCE_EXPECTED),
    "preference_turns": (PREFERENCE_TURN_ROWS, Kind.PREFERENCE, PREFERENCE_EXPECTED),
    "raw_text": (TEXT_ROWS, Kind.TEXT, TEXT_ROWS),
}


def validate(path: Path, **options: Any) -> tuple[ValidationReport, list[dict[str, Any]]]:
    out = path.with_name(path.name + ".rows.jsonl")
    report = validate_file(path, filename=path.name, out_path=out, **options)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] if out.exists() else []
    return report, rows


@pytest.mark.parametrize("file_format", list(WRITERS))
@pytest.mark.parametrize("schema", list(SCHEMAS))
def test_every_format_and_schema_gives_the_same_normalized_rows(tmp_path: Path, file_format: str, schema: str) -> None:
    source_rows, kind, expected = SCHEMAS[schema]
    path = tmp_path / f"data.{file_format}"
    WRITERS[file_format](path, source_rows)

    report, rows = validate(path)

    assert report.problems == {}, report.to_dict()["problems"]
    assert report.format == Format(file_format)
    assert report.kind == kind
    assert (report.total_rows, report.valid_rows) == (len(expected), len(expected))
    assert rows == expected


@pytest.mark.parametrize(
    ("name", "kind", "count"),
    [
        ("chat.jsonl", Kind.CHAT, 60),
        ("instruction.jsonl", Kind.INSTRUCTION, 60),
        ("preference.jsonl", Kind.PREFERENCE, 40),
        ("raw_text.jsonl", Kind.TEXT, 60),
        ("feedback.jsonl", Kind.FEEDBACK, 24),
        ("tools.jsonl", Kind.CHAT, 300),
    ],
)
def test_samples_validate_with_no_problems(tmp_path: Path, name: str, kind: Kind, count: int) -> None:
    report = validate_file(SAMPLES / name, filename=name, out_path=tmp_path / "rows.jsonl")

    assert report.problems == {}
    assert report.kind == kind
    assert (report.total_rows, report.valid_rows) == (count, count)
    assert report.summary == f"All {count} rows are valid."


def test_samples_are_small() -> None:
    # The tool-call sample repeats its tool declarations on every row, as tool datasets do.
    limits = {"tools.jsonl": 512 * 1024}
    for path in SAMPLES.glob("*.jsonl"):
        assert path.stat().st_size < limits.get(path.name, 100 * 1024), path.name


def test_question_answer_columns_ask_for_a_mapping_and_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhat is 2+2?,4\nCapital of Japan?,Tokyo\n", encoding="utf-8")

    report, rows = validate(path)

    assert report.needs_mapping
    assert report.guess is not None and report.guess.kind is None
    assert report.guess.candidates[0] == Kind.INSTRUCTION
    assert report.guess.mapping == {"prompt": "question", "completion": "answer"}
    assert report.columns == ["question", "answer"]
    assert not report.rows_written and rows == []
    assert report.to_dict()["needs_mapping"] is True


def test_the_suggested_mapping_then_normalizes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nWhat is 2+2?,4\nCapital of Japan?,Tokyo\n", encoding="utf-8")

    report, rows = validate(path, kind=Kind.INSTRUCTION, mapping={"prompt": "question", "completion": "answer"})

    assert not report.needs_mapping and report.problems == {}
    assert rows == [
        {"prompt": "What is 2+2?", "completion": "4"},
        {"prompt": "Capital of Japan?", "completion": "Tokyo"},
    ]


def test_text_beside_a_prompt_column_is_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, [{"text": "Q: hi A: hello", "prompt": "hi"}])

    report, _ = validate(path)

    assert report.needs_mapping
    assert report.guess is not None
    assert report.guess.candidates == [Kind.TEXT, Kind.INSTRUCTION]
    assert "text" in report.guess.reason and "prompt" in report.guess.reason


def test_text_column_can_be_chosen_for_an_ambiguous_file(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, [{"text": "Q: hi A: hello", "prompt": "hi"}])

    report, rows = validate(path, kind="text", mapping={"text": "text"})

    assert report.problems == {} and rows == [{"text": "Q: hi A: hello"}]


def test_a_chosen_kind_without_a_mapping_uses_the_columns_names(tmp_path: Path) -> None:
    path = tmp_path / "io.jsonl"
    write_jsonl(path, [{"input": "Say yes.", "output": "Yes."}])

    report, rows = validate(path, kind=Kind.INSTRUCTION)

    assert report.mapping == {"prompt": "input", "completion": "output"}
    assert rows == [{"prompt": "Say yes.", "completion": "Yes."}]


def test_a_mapping_that_misses_a_required_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    write_jsonl(path, [{"question": "Why?", "answer": "Because."}])

    report, rows = validate(path, kind=Kind.INSTRUCTION, mapping={"prompt": "question"})

    assert report.needs_mapping and rows == []
    assert "invalid_mapping" in report.problems
    assert "completion" in report.problems["invalid_mapping"].examples[0]["detail"]


def test_chat_with_extra_columns_is_still_chat() -> None:
    guess = detect_schema([{"id": 1, "source": "web", "messages": []}])

    assert guess.kind == Kind.CHAT and guess.mapping == {"messages": "messages"}


def test_chosen_and_rejected_settle_the_kind_beside_a_conversation_column() -> None:
    guess = detect_schema([{"conversations": [], "chosen": {"from": "gpt", "value": "a"}, "rejected": "b"}])

    assert guess.kind == Kind.PREFERENCE
    assert guess.mapping == {"chosen": "chosen", "rejected": "rejected", "prompt": "conversations"}


def test_columns_with_no_known_name_still_get_a_suggestion() -> None:
    guess = detect_schema([{"body": "A long document."}])

    assert guess.kind is None
    assert Kind.TEXT in guess.candidates
    assert suggest_mapping(Kind.TEXT, ["body"]) == {"text": "body"}


def test_check_mapping_names_unknown_and_missing_fields() -> None:
    errors = check_mapping(Kind.PREFERENCE, {"chosen": "a", "answer": "b"})

    assert any("'answer' is not a field" in error for error in errors)
    assert any("'rejected'" in error for error in errors)
    assert check_mapping(Kind.PREFERENCE, {"chosen": "a", "rejected": "b"}) == []


def test_conversations_that_repeat_the_prompt_keep_only_the_answers() -> None:
    # The UltraFeedback layout: prompt as text, chosen/rejected as whole conversations.
    data = {
        "prompt": "Hi?",
        "chosen": [turn("user", "Hi?"), turn("assistant", "Hello!")],
        "rejected": [turn("user", "Hi?"), turn("assistant", "Go away.")],
    }
    row = normalize(Record(1, data), Kind.PREFERENCE, {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"})

    assert row == {
        "prompt": [turn("user", "Hi?")],
        "chosen": [turn("assistant", "Hello!")],
        "rejected": [turn("assistant", "Go away.")],
    }


def test_an_implicit_prompt_is_taken_from_the_shared_start_of_both_conversations() -> None:
    data = {
        "chosen": [turn("user", "Hi?"), turn("assistant", "Hello!")],
        "rejected": [turn("user", "Hi?"), turn("assistant", "Go away.")],
    }
    row = normalize(Record(1, data), Kind.PREFERENCE, {"chosen": "chosen", "rejected": "rejected"})

    assert isinstance(row, dict)
    assert row["prompt"] == [turn("user", "Hi?")]
    assert row["chosen"] == [turn("assistant", "Hello!")]


def test_openai_text_parts_are_joined() -> None:
    data = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                         {"role": "assistant", "content": "ok"}]}  # fmt: skip
    row = normalize(Record(1, data), Kind.CHAT, {"messages": "messages"})

    assert row == {"messages": [turn("user", "a\nb"), turn("assistant", "ok")]}


# --- Formats -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "head", "expected"),
    [
        ("data.jsonl", b'{"text": "a"}\n', Format.JSONL),
        ("data.ndjson", b'{"text": "a"}\n', Format.JSONL),
        ("data.json", b'[{"text": "a"}]', Format.JSON),
        ("data.json", b'{"text": "a"}\n{"text": "b"}\n', Format.JSONL),  # JSON Lines saved as .json
        ("data.json", b'{\n  "data": []\n}', Format.JSON),  # one object: the reader explains the problem
        ("data.jsonl", b'[\n  {"text": "a"}\n]', Format.JSON),  # an array saved as .jsonl
        ("data.CSV", b"text\nhello\n", Format.CSV),
        ("data.tsv", b"text\thello\n", Format.CSV),
        ("data.parquet", b"PAR1\x15\x04", Format.PARQUET),
        ("upload", b"PAR1\x15\x04", Format.PARQUET),
        ("upload", b'  [{"text": "a"}]', Format.JSON),
        ("upload", b'\xef\xbb\xbf{"text": "a"}\n', Format.JSONL),
    ],
)
def test_detect_format(filename: str, head: bytes, expected: Format) -> None:
    assert detect_format(filename, head) == expected


@pytest.mark.parametrize(
    ("filename", "head", "extra"),
    [
        ("notes.docx", b"PK\x03\x04...", ""),
        ("sheet.xlsx", b"PK\x03\x04...", "export the sheet as 'CSV UTF-8'"),
        ("data.jsonl.gz", b"\x1f\x8b\x08", "decompress it first"),
        ("fake.parquet", b"not parquet", "not a Parquet file"),
    ],
)
def test_detect_format_refuses_other_files_with_a_clear_message(filename: str, head: bytes, extra: str) -> None:
    with pytest.raises(UnsupportedFormat) as refused:
        detect_format(filename, head)

    message = str(refused.value)
    assert extra in message
    if "Parquet" not in extra:
        assert f"{filename} is not a supported format; upload JSON Lines, JSON, CSV, Parquet or plain text" in message


def test_an_unsupported_upload_gets_a_report_not_an_exception(tmp_path: Path) -> None:
    path = tmp_path / "notes.rtf"
    path.write_text("just some words", encoding="utf-8")

    report, rows = validate(path)

    assert list(report.problems) == ["unsupported_format"]
    assert not report.complete and rows == []
    assert "not a supported format" in report.summary


def lines_of(path: Path, file_format: Format) -> list[int]:
    return [item.line for item in iter_records(path, file_format) if isinstance(item, Record)]


def test_jsonl_lines_count_blank_lines_and_skip_them(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n   \n{"text": "b"}\r\n')

    assert lines_of(path, Format.JSONL) == [1, 4]


def test_csv_lines_are_physical_lines_including_the_header(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('text,note\n"first\nspans two lines",x\nsecond,y\n', encoding="utf-8")

    records = [item for item in iter_records(path, Format.CSV) if isinstance(item, Record)]

    assert [record.line for record in records] == [2, 4]
    assert records[0].data == {"text": "first\nspans two lines", "note": "x"}


def test_json_lines_are_element_numbers(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    write_json(path, [{"text": "a"}, {"text": "b"}, {"text": "c"}])

    assert lines_of(path, Format.JSON) == [1, 2, 3]


def test_parquet_lines_are_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    write_parquet(path, [{"text": str(number)} for number in range(600)])

    assert lines_of(path, Format.PARQUET) == list(range(1, 601))


@pytest.mark.parametrize("file_format", ["jsonl", "json", "csv"])
def test_a_utf8_bom_is_skipped(tmp_path: Path, file_format: str) -> None:
    path = tmp_path / f"data.{file_format}"
    WRITERS[file_format](path, TEXT_ROWS)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())

    report, rows = validate(path)

    assert report.problems == {} and rows == TEXT_ROWS


def test_semicolon_csv_from_a_spreadsheet_is_read(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("prompt;completion\nHello, you;Hi, there\n", encoding="utf-8")

    _, rows = validate(path)

    assert rows == [{"prompt": "Hello, you", "completion": "Hi, there"}]


def test_json_array_elements_spread_over_many_chunks_are_read(tmp_path: Path) -> None:
    # Elements larger than the reader's 1 MiB chunk, with escapes and brackets inside strings.
    rows = [{"text": ('x\\"[{' * 100_000) + str(number)} for number in range(3)]
    path = tmp_path / "big.json"
    write_json(path, rows)

    report, written = validate(path, max_row_chars=10_000_000)

    assert report.problems == {} and written == rows


def test_rows_file_hash_and_progress(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    write_jsonl(path, CHAT_ROWS * 50)
    calls: list[tuple[int, int]] = []

    report = validate_file(
        path, filename=path.name, out_path=tmp_path / "rows.jsonl", progress=lambda d, t: calls.append((d, t))
    )

    written = (tmp_path / "rows.jsonl").read_bytes()
    assert report.content_hash == hashlib.sha256(written).hexdigest()
    assert calls[-1] == (path.stat().st_size, path.stat().st_size)
    assert len(calls) <= 3  # a small file is read in well under a second: throttled to about 10 per second
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_report_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"messages": NaN}\n{"text": "x"}\n', encoding="utf-8")

    report, _ = validate(path)

    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["line_unit"] == "line"
    assert data["problems"]["non_finite_number"]["examples"][0]["line"] == 1


def test_iter_records_yields_records_and_problems_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\nnot json\n{"text": "b"}\n', encoding="utf-8")

    items = list(iter_records(path, Format.JSONL))

    assert [type(item) for item in items] == [Record, Problem, Record]
    assert isinstance(items[1], Problem) and items[1].line == 2 and items[1].code == "json"


def test_unusual_line_breaks_are_escaped_in_the_rows_file(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    write_jsonl(path, [{"text": "one\u2028two\u0085three"}])

    _, rows = validate(path)

    written = path.with_name(path.name + ".rows.jsonl").read_text(encoding="utf-8")
    assert written.splitlines() == ['{"text":"one\\u2028two\\u0085three"}']
    assert rows == [{"text": "one\u2028two\u0085three"}]
