"""Malformed uploads become row-level problems with a line number and a hint, never an exception; the
report's counts add up; memory stays bounded. Plain engine tests: no database, no Django."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets_app.engine import formats
from datasets_app.engine.formats import PROBLEM_CODES
from datasets_app.engine.rows import ROLES, Kind
from datasets_app.engine.validate import ValidationReport, validate_file

ROOT = Path(__file__).resolve().parent.parent
GOOD_CHAT = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}'


def validate(path: Path, **options: Any) -> ValidationReport:
    report = validate_file(path, filename=path.name, out_path=path.with_name(path.name + ".rows.jsonl"), **options)
    assert_consistent(report, path.with_name(path.name + ".rows.jsonl"))
    return report


def assert_consistent(report: ValidationReport, out_path: Path) -> None:
    """The report's invariant: every row is either valid or dropped under exactly one code."""
    dropped = sum(summary.rows_dropped for summary in report.problems.values())
    assert report.total_rows == report.valid_rows + dropped
    for summary in report.problems.values():
        assert summary.count >= summary.rows_dropped
        assert len(summary.examples) == min(summary.count, 20)
        assert summary.code in PROBLEM_CODES
    json.dumps(report.to_dict(), allow_nan=False)
    if report.rows_written:
        assert len(out_path.read_bytes().splitlines()) == report.valid_rows
    else:
        assert not out_path.exists()


def only_problem(report: ValidationReport, code: str) -> dict[str, Any]:
    """The first example of ``code``, after checking it is the only code reported."""
    assert list(report.problems) == [code], report.to_dict()["problems"]
    example = report.problems[code].examples[0]
    assert example["hint"], "every problem carries a hint"
    return example


def jsonl(tmp_path: Path, *lines: str, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- One malformed row among good ones -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_line", "code", "detail"),
    [
        ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assis', "json", "cut off"),
        ('{"messages": [1 2]}', "json", "Expecting ',' delimiter"),
        ('{"messages": NaN}', "non_finite_number", "NaN"),
        ('{"score": Infinity, "messages": []}', "non_finite_number", "Infinity"),
        ('{"score": -Infinity, "messages": []}', "non_finite_number", "-Infinity"),
        ('{"score": 1e999, "messages": []}', "non_finite_number", "overflows"),
        ('{"id": ' + "7" * 5000 + ', "messages": []}', "huge_integer", "5,000 digits"),
        ('{"id": 9223372036854775808, "messages": []}', "huge_integer", "64 bits"),
        ('[{"role": "user", "content": "Hi"}]', "not_an_object", "a list"),
        ("42", "not_an_object", "a number"),
        ('"just text"', "not_an_object", "text"),
        ("[" * 100_000, "json", "nested too deeply"),
    ],
)
def test_a_malformed_jsonl_line_is_reported_at_its_line(tmp_path: Path, bad_line: str, code: str, detail: str) -> None:
    path = jsonl(tmp_path, GOOD_CHAT, GOOD_CHAT, bad_line, GOOD_CHAT)

    report = validate(path, kind=Kind.CHAT)

    example = only_problem(report, code)
    assert example["line"] == 3
    assert detail in example["detail"]
    assert (report.total_rows, report.valid_rows) == (4, 3)


def test_a_64_bit_integer_is_fine(tmp_path: Path) -> None:
    line = '{"id": 9223372036854775807, "neg": -9223372036854775808, ' + GOOD_CHAT[1:]
    report = validate(jsonl(tmp_path, line))

    assert report.problems == {}


def test_a_cut_off_line_gives_its_column(tmp_path: Path) -> None:
    report = validate(jsonl(tmp_path, GOOD_CHAT, '{"messages": [1,'))

    example = only_problem(report, "json")
    assert (example["line"], example["column"]) == (2, 17)


def test_latin1_bytes_are_an_encoding_problem_with_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n{"text": "also fine"}\n')

    report = validate(path)

    example = only_problem(report, "encoding")
    assert (example["line"], example["column"]) == (2, 14)
    assert "0xe9" in example["detail"] and "file offset 30" in example["detail"]
    assert example["hint"].startswith("Save the file as UTF-8")
    assert report.valid_rows == 2


def test_latin1_csv_row_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"prompt,completion\nCaf\xe9?,Oui\nTea?,Yes\n")

    report = validate(path)

    assert only_problem(report, "encoding")["line"] == 2
    assert report.valid_rows == 1


def test_a_utf16_file_is_refused_as_a_whole(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes('{"text": "hi"}\n'.encode("utf-16"))

    report = validate(path)

    example = only_problem(report, "encoding")
    assert "UTF-16" in example["detail"] and example["scope"] == "file"
    assert not report.complete


def test_an_unpaired_surrogate_escape_is_an_encoding_problem(tmp_path: Path) -> None:
    report = validate(jsonl(tmp_path, '{"text": "ok \\ud83d\\ude00"}', '{"text": "bad \\ud800"}'))

    assert only_problem(report, "encoding")["line"] == 2
    assert report.valid_rows == 1


def test_a_truncated_json_array_keeps_the_complete_elements(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n  {"text": "one"},\n  {"text": "two"},\n  {"text": "thr', encoding="utf-8")

    report = validate(path)

    assert list(report.problems) == ["json"]
    example = report.problems["json"].examples[0]
    assert example["line"] == 3 and example["scope"] == "row"
    assert "Element 3 (starting at line 4, column 3)" in example["detail"] and "cut off" in example["detail"]
    assert (report.total_rows, report.valid_rows) == (3, 2)
    assert report.to_dict()["line_unit"] == "element"


def test_a_json_array_without_its_closing_bracket_is_a_file_problem(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[{"text": "one"}, {"text": "two"}\n', encoding="utf-8")

    report = validate(path)

    example = only_problem(report, "json")
    assert example["scope"] == "file" and "never" not in example["detail"]
    assert "before the array is closed" in example["detail"]
    assert report.valid_rows == 2 and not report.complete


def test_a_bad_json_array_element_costs_only_that_row(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[{"text": "one"},\n {"text": NaN},\n {"text": "three"}]', encoding="utf-8")

    report = validate(path)

    example = only_problem(report, "non_finite_number")
    assert example["line"] == 2 and "line 2" in example["detail"]
    assert report.valid_rows == 2


def test_a_single_json_object_is_not_an_array(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('{\n  "data": [{"text": "one"}]\n}\n', encoding="utf-8")

    report = validate(path)

    assert only_problem(report, "not_an_array")["scope"] == "file"


@pytest.mark.parametrize(
    ("messages", "code", "field", "detail"),
    [
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  \n"}], "empty_turn", "messages[1]",
         "Turn 2 (assistant) is empty"),
        ([{"role": "user", "content": None}, {"role": "assistant", "content": "Hi"}], "empty_turn", "messages[0]",
         "Turn 1 (user) is null"),
        ([{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}], "unknown_role", "messages[1]",
         "Turn 2 has the role 'bot'; allowed roles: " + ", ".join(ROLES)),
        ([{"role": "user", "content": "Hi"}], "no_assistant_turn_at_end", "messages", "ends with a user turn (turn 1)"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": {"x": 7}}], "wrong_type",
         "messages[1]", "content of type an object"),
        ([], "empty_conversation", "messages", "no turns"),
        ("not a list", "wrong_type", "messages", "must be a list of turns, not text"),
        ([{"speaker": "user", "text": "Hi"}], "missing_field", "messages[0]", "no role and content"),
    ],
)  # fmt: skip
def test_conversation_problems_name_the_turn(tmp_path: Path, messages: Any, code: str, field: str, detail: str) -> None:
    path = jsonl(tmp_path, GOOD_CHAT, json.dumps({"messages": messages}))

    report = validate(path, kind=Kind.CHAT)

    example = only_problem(report, code)
    assert (example["line"], example["field"]) == (2, field)
    assert detail in example["detail"]


def test_every_problem_in_a_row_is_counted_but_the_row_only_once(tmp_path: Path) -> None:
    turns = [{"role": "user", "content": ""}, {"role": "wizard", "content": "x"}, {"role": "user", "content": " "}]
    path = jsonl(tmp_path, GOOD_CHAT, json.dumps({"messages": turns}))

    report = validate(path)

    assert report.problems["empty_turn"].count == 2
    assert report.problems["empty_turn"].rows_dropped == 1
    assert report.problems["unknown_role"].rows_dropped == 0
    assert report.summary == "Kept 1 of 2 rows; dropped 1: 1 row with an empty turn."


def test_a_missing_field_names_the_field_and_the_columns_present(tmp_path: Path) -> None:
    path = jsonl(tmp_path, '{"instruction": "Say hi", "output": "Hi"}', '{"instruction": "Say bye", "notes": "x"}')

    report = validate(path)

    example = only_problem(report, "missing_field")
    assert example["line"] == 2 and example["field"] == "output"
    assert example["detail"] == "The field 'completion' (column 'output') is missing; this row has: instruction, notes."


def test_preference_rows_need_both_answers(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        '{"prompt": "p", "chosen": "good", "rejected": "bad"}',
        '{"prompt": "p", "chosen": "good"}',
        '{"prompt": "p", "chosen": "", "rejected": "bad"}',
    )

    report = validate(path)

    assert report.kind == Kind.PREFERENCE
    summary = report.problems["missing_chosen_or_rejected"]
    assert [example["line"] for example in summary.examples] == [2, 3]
    assert [example["field"] for example in summary.examples] == ["rejected", "chosen"]


def test_identical_answers_teach_nothing(tmp_path: Path) -> None:
    report = validate(jsonl(tmp_path, '{"prompt": "p", "chosen": "same", "rejected": "same"}'))

    assert only_problem(report, "identical_chosen_rejected")["line"] == 1


def test_empty_text_rows_are_dropped(tmp_path: Path) -> None:
    report = validate(jsonl(tmp_path, '{"text": "a"}', '{"text": "   "}'))

    assert only_problem(report, "empty_text")["line"] == 2


def test_an_oversized_line_is_skipped_without_holding_it(tmp_path: Path) -> None:
    big = json.dumps({"text": "x" * 5000})
    report = validate(jsonl(tmp_path, '{"text": "a"}', big, '{"text": "b"}'), max_row_bytes=1024)

    example = only_problem(report, "row_too_large")
    assert example["line"] == 2 and "the limit is 1,024 bytes" in example["detail"]
    assert report.valid_rows == 2


def test_an_oversized_json_element_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "x" * 5000}, {"text": "b"}]), encoding="utf-8")

    report = validate(path, max_row_bytes=1024)

    assert only_problem(report, "row_too_large")["line"] == 2
    assert report.valid_rows == 2


def test_a_row_over_the_length_cap_is_too_long(tmp_path: Path) -> None:
    report = validate(jsonl(tmp_path, '{"text": "short"}', json.dumps({"text": "y" * 500})), max_row_chars=100)

    example = only_problem(report, "row_too_long")
    assert example["line"] == 2 and "500 characters" in example["detail"] and "limit is 100" in example["detail"]


def test_csv_formula_cells_are_kept_as_text_on_input(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('prompt,completion\n=1+1,"@SUM(A1:A2)"\n+cmd,-2\n', encoding="utf-8")

    report = validate(path)

    rows = [json.loads(line) for line in path.with_name("data.csv.rows.jsonl").read_text().splitlines()]
    assert report.problems == {}
    assert rows == [{"prompt": "=1+1", "completion": "@SUM(A1:A2)"}, {"prompt": "+cmd", "completion": "-2"}]


def test_a_csv_row_with_too_many_cells_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("prompt,completion\na,b\nc,d,e\n", encoding="utf-8")

    example = only_problem(validate(path), "csv")
    assert example["line"] == 3 and "3 cells" in example["detail"]


def test_a_csv_quote_left_open_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text('prompt,completion\na,b\nc,"d\n', encoding="utf-8")

    example = only_problem(validate(path), "csv")
    assert example["line"] == 3


def test_a_csv_json_messages_column_is_parsed_strictly(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        'messages\n"[{""role"": ""user"", ""content"": ""Hi""}, {""role"": ""assistant"", ""content"": ""Yo""}]"\n'
        '"[{""role"": ""user"", ""content"": NaN}]"\n',
        encoding="utf-8",
    )

    report = validate(path)

    assert only_problem(report, "non_finite_number")["line"] == 3
    assert report.valid_rows == 1


def test_a_csv_without_rows_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("prompt,completion\n", encoding="utf-8")

    report = validate(path)

    assert only_problem(report, "empty_file")["scope"] == "file"
    assert report.total_rows == 0 and report.summary == "The file holds no rows."


def test_a_parquet_file_that_is_not_readable_is_a_file_problem(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 100 + b"PAR1")

    report = validate(path)

    assert only_problem(report, "parquet")["scope"] == "file"


def test_the_summary_says_what_was_kept_and_why_the_rest_was_dropped(tmp_path: Path) -> None:
    empty = '{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}'
    path = jsonl(tmp_path, GOOD_CHAT, GOOD_CHAT, empty, empty, '{"messages": NaN}')

    report = validate(path, kind=Kind.CHAT)

    assert report.summary == "Kept 2 of 5 rows; dropped 3: 2 rows with empty turns, 1 row with NaN or Infinity."
    assert report.to_dict()["dropped_rows"] == 3


def test_only_the_first_twenty_examples_are_kept(tmp_path: Path) -> None:
    path = jsonl(tmp_path, *(['{"text": NaN}'] * 30))

    report = validate(path, kind=Kind.TEXT)

    assert report.problems["non_finite_number"].count == 30
    assert [example["line"] for example in report.problems["non_finite_number"].examples] == list(range(1, 21))


# --- Fuzzing -----------------------------------------------------------------------------------------------

EXTENSIONS = ["data.jsonl", "data.json", "data.csv", "data.parquet", "notes.txt", "upload"]
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Content as text, as OpenAI's list of parts (text, reasoning, media, unknown), or any JSON value.
content_parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "reasoning", "thinking", "image_url", "mystery"])},
        optional={"text": st.text(max_size=10), "value": json_values},
    ),
    max_size=3,
)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {"function": st.fixed_dictionaries({"name": st.sampled_from(["get_weather", "nope", ""])},
                                           optional={"arguments": st.one_of(json_values, st.just('{"city": "Oslo"}'),
                                                                            st.just("{broken"))})},
        optional={"id": st.sampled_from(["c1", "c2"]), "type": st.just("function")},
    ),
    max_size=2,
)  # fmt: skip
tools = st.one_of(
    st.just([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]),
    st.just('[{"name": "get_weather", "parameters": {"type": "bogus"}}]'),
    json_values,
)  # fmt: skip
turns = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "tool", "gpt", "robot", "function_call", ""]),
            "content": st.one_of(st.text(max_size=30), content_parts, json_values),
        },
        optional={
            "tool_calls": tool_calls,
            "tool_call_id": st.sampled_from(["c1", "c9"]),
            "loss_weight": st.one_of(st.sampled_from([0, 1, -1, 0.5]), json_values),
            "reasoning_content": json_values,
        },
    ),
    max_size=4,
)
rows = st.one_of(
    st.fixed_dictionaries({"messages": turns}),
    st.fixed_dictionaries({"messages": turns, "tools": tools}),
    st.fixed_dictionaries({"conversations": turns, "chosen": json_values, "rejected": json_values}),
    st.fixed_dictionaries({"messages": turns, "label": json_values}),
    st.fixed_dictionaries(
        {"input": json_values, "preferred_output": json_values, "non_preferred_output": json_values}
    ),
    st.fixed_dictionaries(
        {"instruction": st.text(max_size=10), "output": st.text(max_size=10), "history": json_values},
        optional={"system": json_values, "images": json_values},
    ),
    st.fixed_dictionaries({"prompt": st.text(max_size=20), "completion": st.text(max_size=20)}),
    st.fixed_dictionaries({"text": json_values}),
    st.dictionaries(
        st.sampled_from(["text", "prompt", "chosen", "rejected", "messages", "x"]), json_values, max_size=4
    ),
)
json_lines = st.one_of(
    rows.map(json.dumps),
    json_values.map(json.dumps),
    st.sampled_from(
        ["NaN", '{"a": Infinity}', '{"a": -Infinity}', '{"a": ' + "9" * 4400 + "}", "{", "[", "]", "}{", ""]
    ),
    st.text(max_size=40),
)
file_bytes = st.one_of(
    st.binary(max_size=400),
    st.lists(json_lines, max_size=12).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    st.lists(rows, max_size=8).map(lambda items: json.dumps(items).encode()),
    st.lists(json_lines, min_size=1, max_size=8).map(
        lambda lines: ("[" + ",".join(lines)).encode("utf-8", "surrogatepass")
    ),
    st.lists(st.lists(st.text(max_size=10), max_size=4), max_size=6).map(
        lambda table: "\n".join(",".join(cells) for cells in table).encode("utf-8", "surrogatepass")
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=file_bytes, filename=st.sampled_from(EXTENSIONS), kind=st.sampled_from([None, *Kind]))
def test_fuzzed_uploads_always_give_a_consistent_report(content: bytes, filename: str, kind: Kind | None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / filename
        path.write_bytes(content)
        out_path = Path(folder) / "rows.jsonl"

        report = validate_file(path, filename=filename, out_path=out_path, kind=kind, max_row_bytes=256)

        assert isinstance(report, ValidationReport)
        assert_consistent(report, out_path)
        if report.rows_written:
            for line in out_path.read_text(encoding="utf-8").split("\n")[:-1]:
                assert isinstance(json.loads(line), dict)
        assert [p.name for p in Path(folder).iterdir() if p.name.endswith(".partial")] == []


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from datasets_app.engine.validate import validate_file

    def peak_mb():
        # VmHWM is this process's own peak. ru_maxrss would do elsewhere, but on Linux a child started by
        # fork/exec inherits the parent's peak (pytest's), which would hide any growth here.
        try:
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    validate_file(sys.argv[3], filename="warm.jsonl", out_path=sys.argv[3] + ".rows")  # import everything first
    before = peak_mb()
    report = validate_file(sys.argv[1], filename="big.jsonl", out_path=sys.argv[2])
    print(json.dumps({"growth_mb": peak_mb() - before, "total": report.total_rows, "valid": report.valid_rows,
                      "problems": {code: s.rows_dropped for code, s in report.problems.items()}}))
    """
)


def test_memory_stays_bounded_on_a_50_mb_file_with_huge_lines(tmp_path: Path) -> None:
    # Ordinary rows, a few rows just under the 8 MiB row size limit (over the length cap), one 20 MiB line.
    big = tmp_path / "big.jsonl"
    row = json.dumps({"messages": [{"role": "user", "content": "How are you? " * 20},
                                   {"role": "assistant", "content": "Fine, thanks. " * 60}]})  # fmt: skip
    near_limit = json.dumps({"messages": [{"role": "user", "content": "z" * (7 * 1024 * 1024)},
                                          {"role": "assistant", "content": "That is a lot of z."}]})  # fmt: skip
    with big.open("w", encoding="utf-8") as handle:
        for number in range(30_000):
            handle.write(row + "\n")
            if number % 10_000 == 0:
                handle.write(near_limit + "\n")
        handle.write('{"messages": [{"role": "user", "content": "' + "q" * (20 * 1024 * 1024) + '"}]}\n')
    warm = jsonl(tmp_path, GOOD_CHAT, name="warm.jsonl")

    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(big), str(tmp_path / "rows.jsonl"), str(warm)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )

    figures = json.loads(result.stdout)
    assert big.stat().st_size > 50 * 1024 * 1024
    assert figures["growth_mb"] > 0, "the measurement must see the rows being read"
    assert figures["problems"] == {"row_too_large": 1, "row_too_long": 3}
    assert figures["valid"] == 30_000
    assert figures["growth_mb"] < 100, figures


@settings(max_examples=200, deadline=None)
@given(content=file_bytes, chunk=st.integers(min_value=1, max_value=9))
def test_json_arrays_read_the_same_whatever_the_chunk_size(content: bytes, chunk: int) -> None:
    # The array splitter carries strings, escapes and depth across chunk edges: tiny chunks must agree.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.json"
        path.write_bytes(b"\xef\xbb\xbf[" + content if content[:1] != b"[" else content)
        whole = list(formats.iter_records(path, formats.Format.JSON))
        with mock.patch.object(formats, "_CHUNK_BYTES", chunk):
            pieces = list(formats.iter_records(path, formats.Format.JSON))

    assert pieces == whole


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("\nprompt,completion\na,b\n", "The first line is empty"),
        ("prompt,prompt\na,b\n", "'prompt' more than once"),
    ],
)
def test_a_csv_header_that_names_no_usable_columns_is_a_file_problem(tmp_path: Path, content: str, detail: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text(content, encoding="utf-8")

    example = only_problem(validate(path), "csv_header")
    assert example["scope"] == "file" and detail in example["detail"]


def test_an_empty_instruction_answer_names_the_turn_and_column(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path, '{"instruction": "Say hi", "input": "", "output": "Hi"}', '{"instruction": "Say bye", "output": " "}'
    )

    example = only_problem(validate(path), "empty_turn")
    assert (example["line"], example["field"]) == (2, "output")
    assert example["detail"] == "Turn 2 (assistant): the field 'completion' (column 'output') is empty."


def test_nan_in_a_parquet_row_is_rejected_like_in_json(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "a", "score": 0.5}, {"text": "b", "score": float("nan")}]), path)

    example = only_problem(validate(path), "non_finite_number")
    assert (example["line"], example["field"]) == (2, "score")
