"""Files other tools write load as they are: each layout of ``tests/fixtures/layouts`` (written by the project) is
detected without a mapping and normalized to the expected rows, from JSON Lines, CSV and Parquet alike, and every
field the rows do not carry is reported."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datasets_app.engine.rows import Kind
from datasets_app.engine.validate import ValidationReport, validate_file

LAYOUTS = Path(__file__).parent / "fixtures" / "layouts"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIMER = {
    "type": "function",
    "function": {
        "name": "set_timer",
        "description": "Start a kitchen timer.",
        "parameters": {
            "type": "object",
            "properties": {"minutes": {"type": "integer", "minimum": 1}},
            "required": ["minutes"],
        },
    },
}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def call(name: str, arguments: dict[str, Any], call_id: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"type": "function", "id": call_id, "function": found["function"]} if call_id else found


EXPECTED: dict[str, tuple[Kind, list[dict[str, Any]]]] = {
    "openai_parts": (
        Kind.CHAT,
        [
            {
                "messages": [
                    {"role": "system", "content": "You answer briefly."},
                    user("What is 12 times 12?"),
                    assistant("144.", reasoning_content="12 x 12 = 144."),
                ]
            },
            {
                "messages": [
                    user("Name a primary colour."),
                    assistant("Green.", loss_weight=0),
                    user("Green is not primary in paint. Try again."),
                    assistant("Red.", reasoning_content="Paint primaries: red, yellow, blue."),
                ]
            },
        ],
    ),
    "openai_tools": (
        Kind.CHAT,
        [
            {
                "messages": [
                    user("Is it raining in Lyon?"),
                    assistant("", tool_calls=[call("get_weather", {"city": "Lyon"}, "call_1")]),
                    {"role": "tool", "content": '{"sky": "rain", "temperature": 9}', "tool_call_id": "call_1"},
                    assistant("Yes, it is raining in Lyon and 9 degrees."),
                ],
                "tools": [WEATHER, TIMER],
            },
            {
                "messages": [
                    user("Set a timer for the eggs, 7 minutes."),
                    assistant("", tool_calls=[call("set_timer", {"minutes": 7}, "call_2")]),
                    {"role": "tool", "content": "timer started", "tool_call_id": "call_2"},
                    assistant("Your 7-minute timer is running."),
                ],
                "tools": [WEATHER, TIMER],
            },
        ],
    ),
    "sharegpt_tools": (
        Kind.CHAT,
        [
            {
                "messages": [
                    {"role": "system", "content": "You are a kitchen helper."},
                    user("Start a 3 minute timer please."),
                    assistant("", tool_calls=[call("set_timer", {"minutes": 3})]),
                    {"role": "tool", "content": "timer started"},
                    assistant("Done, 3 minutes on the clock."),
                ],
                "tools": [WEATHER, TIMER],
            },
            {
                "messages": [
                    {"role": "system", "content": "You are a kitchen helper."},
                    user("Hello!"),
                    assistant("Hello! What are we cooking?"),
                ],
                "tools": [WEATHER, TIMER],
            },
        ],
    ),
    "sharegpt_preference": (
        Kind.PREFERENCE,
        [
            {
                "prompt": [user("How do I boil an egg?")],
                "chosen": [assistant("Lower it into boiling water for seven minutes, then cool it in cold water.")],
                "rejected": [assistant("Microwave it in its shell.")],
            }
        ],
    ),
    "messages_preference": (
        Kind.PREFERENCE,
        [{"prompt": [user("Capital of Italy?")], "chosen": [assistant("Rome.")], "rejected": [assistant("Milan.")]}],
    ),
    "openai_preference": (
        Kind.PREFERENCE,
        [
            {
                "prompt": [user("Say hello in French.")],
                "chosen": [assistant("Bonjour !")],
                "rejected": [assistant("Hola.")],
            }
        ],
    ),
    "feedback": (
        Kind.FEEDBACK,
        [
            {"prompt": [user("2 + 2?")], "completion": [assistant("4.")], "label": True},
            {"prompt": [user("2 + 2?")], "completion": [assistant("5.")], "label": False},
        ],
    ),
    "alpaca_history": (
        Kind.INSTRUCTION,
        [
            {
                "prompt": [
                    {"role": "system", "content": "You are a gardener."},
                    user("What do I plant in spring?"),
                    assistant("Peas, lettuce and radishes."),
                    user("And in winter?"),
                ],
                "completion": [assistant("Short days, so plant garlic and wait.")],
            },
            {"prompt": [user("Name a herb.\n\nFor soup.")], "completion": [assistant("Thyme.")]},
        ],
    ),
}


def records(layout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (LAYOUTS / f"{layout}.jsonl").read_text(encoding="utf-8").splitlines()]


def cell(value: Any) -> Any:
    """A value as a flat file holds it: nested values as JSON text (how CSV and many Parquet exports keep them)."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def write_as(layout: str, fmt: str, folder: Path) -> Path:
    """The layout's fixture in ``fmt``: the JSON Lines file itself, or the same records as CSV or Parquet."""
    if fmt == "jsonl":
        return LAYOUTS / f"{layout}.jsonl"
    rows = records(layout)
    columns = list(dict.fromkeys(name for row in rows for name in row))
    path = folder / f"{layout}.{fmt}"
    if fmt == "csv":
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(columns)
            for row in rows:
                value = [cell(row.get(name)) for name in columns]
                writer.writerow(["" if v is None else ("true" if v is True else "false" if v is False else v)
                                 for v in value])  # fmt: skip
    else:
        table = pa.Table.from_pylist([{name: cell(row.get(name)) for name in columns} for row in rows])
        pq.write_table(table, path)
    return path


def validate(path: Path, out: Path | None = None, **options: Any) -> tuple[ValidationReport, list[dict[str, Any]]]:
    out = out or path.with_name(f"{path.name}.rows.jsonl")
    report = validate_file(path, filename=path.name, out_path=out, **options)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] if report.rows_written else []
    return report, rows


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("layout", sorted(EXPECTED))
def test_each_layout_is_recognised_and_normalized(layout: str, fmt: str, tmp_path: Path) -> None:
    kind, expected = EXPECTED[layout]

    report, rows = validate(write_as(layout, fmt, tmp_path), out=tmp_path / "rows.jsonl")

    assert (report.kind, report.needs_mapping, report.problems) == (kind, False, {}), report.summary
    assert rows == expected


def test_rows_with_tools_are_written_as_the_plain_json_encoder_writes_them(tmp_path: Path) -> None:
    """Declarations are encoded once per distinct value; the bytes (and so the content hash) must not change."""
    out = tmp_path / "rows.jsonl"
    validate(LAYOUTS / "openai_tools.jsonl", out=out)

    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and all('"tools":[{"type":"function"' in line for line in lines)
    assert lines == [json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":")) for line in lines]


# (turn, whether the shortcut takes it): it takes plain text turns only and must read them as the reader does.
PLAIN_TURNS = [
    ({"role": "user", "content": "Hello"}, True),
    ({"from": "gpt", "value": "Hi there"}, True),
    ({"role": "developer", "content": "Be brief."}, True),
    ({"role": "user", "content": "a < b is true"}, True),
    ({"role": "User", "content": "Capitalised role"}, False),
    ({"role": "user", "content": "   "}, False),
    ({"role": "user", "content": "Look: <image>"}, False),
    ({"role": "tool", "content": "42"}, False),
    ({"from": "function_call", "value": '{"name": "f", "arguments": {}}'}, False),
    ({"role": "assistant", "content": "Hi", "loss_weight": 0}, False),
    ({"role": "assistant", "content": 7}, False),
    ({"role": "robot", "content": "beep"}, False),
]


@pytest.mark.parametrize(("turn", "taken"), PLAIN_TURNS)
def test_the_plain_turn_shortcut_reads_a_turn_as_the_full_reader_does(turn: dict[str, Any], taken: bool) -> None:
    from datasets_app.engine.formats import Record
    from datasets_app.engine.turns import RowReader, plain_turn

    reader = RowReader(Record(1, {"messages": [turn]}), {"messages": "messages"})
    full = reader.turn("messages[0]", 1, turn, unused_prefix="messages[]")

    shortcut = plain_turn(turn)

    assert (shortcut is not None) == taken
    if taken:
        assert shortcut == full


def test_columns_the_rows_do_not_carry_are_listed_with_their_row_counts(tmp_path: Path) -> None:
    report, _ = validate(LAYOUTS / "feedback.jsonl", out=tmp_path / "rows.jsonl")

    assert report.unused == {"id": 2}
    assert report.summary == "All 2 rows are valid. Not used in training: 'id' (2 rows)."
    assert report.to_dict()["unused"] == {"id": 2}


def test_unknown_keys_of_turns_are_listed_too(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "Hi", "lang": "en"}, {"role": "assistant", "content": "Hello", "score": 4}]
    path.write_text(json.dumps({"messages": turns, "source": "forum"}) + "\n", encoding="utf-8")

    report, rows = validate(path)

    assert rows == [{"messages": [user("Hi"), assistant("Hello")]}]
    assert report.unused == {"messages[].lang": 1, "messages[].score": 1, "source": 1}


def test_rows_that_need_images_are_flagged_and_the_text_rows_kept(tmp_path: Path) -> None:
    report, rows = validate(LAYOUTS / "images.jsonl", out=tmp_path / "rows.jsonl")

    assert rows == [{"messages": [user("Just text."), assistant("Fine.")]}]
    assert list(report.problems) == ["needs_media"]
    found = report.problems["needs_media"]
    assert (found.rows, found.rows_dropped) == (2, 2)
    assert "'images'" in found.examples[0]["detail"] and "text-only" in found.examples[0]["detail"]
    assert "an image ('image_url')" in found.examples[1]["detail"]
    assert report.summary.startswith("Kept 1 of 3 rows; dropped 2: 2 rows that need media.")


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ("paragraphs", ["# Sourdough notes", "Feed the starter twice a day.\nKeep it warm.", "Bake when it doubles."]),
        ("lines", ["# Sourdough notes", "Feed the starter twice a day.", "Keep it warm.", "Bake when it doubles."]),
    ],
)
def test_plain_text_becomes_one_row_per_paragraph_or_line(split: str, expected: list[str], tmp_path: Path) -> None:
    report, rows = validate(LAYOUTS / "notes.md", out=tmp_path / "rows.jsonl", text_split=split)

    assert (report.kind, report.problems) == (Kind.TEXT, {})
    assert rows == [{"text": text} for text in expected]


def test_plain_text_that_is_not_utf8_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes("Première ligne.\n\nDeuxième ligne.\n".encode("latin-1"))

    report, _ = validate(path)

    assert not report.complete and report.valid_rows == 0
    assert report.summary == (
        "Line 1, byte 6 is not valid UTF-8 (0xe8); a plain text file must be UTF-8 throughout. Reading stopped there."
    )


def conversation(*turns: dict[str, Any], tools: Any = (WEATHER,)) -> str:
    return json.dumps({"messages": list(turns), "tools": list(tools) if isinstance(tools, tuple) else tools})


def calls(name: str, arguments: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": name,
            "arguments": arguments}}]}  # fmt: skip


@pytest.mark.parametrize(
    ("line", "code", "detail"),
    [
        (conversation(user("Hi"), calls("get_time", {}), assistant("Noon.")), "unknown_tool",
         "Turn 2 calls 'get_time', which the row does not declare (declared: get_weather)."),
        (conversation(user("Hi"), calls("get_weather", {}), assistant("Sunny.")), "bad_tool_arguments",
         "Turn 2 calls get_weather with arguments that do not match its parameters: 'city' is a required property."),
        (conversation(user("Hi"), calls("get_weather", {"city": 3}), assistant("Sunny.")), "bad_tool_arguments",
         "3 is not of type 'string' (at arguments.city)"),
        (conversation(user("Hi"), calls("get_weather", '{"city": "Oslo"'), assistant("Sunny.")), "bad_tool_arguments",
         "Turn 2 calls get_weather with arguments that are not valid JSON"),
        (conversation(user("Hi"), calls("get_weather", {"city": "Oslo"}), assistant("Sunny."), tools=[]),
         "unknown_tool", "declared: none (the row has no 'tools')"),
        (conversation(user("Hi"), assistant("Hello"), tools='[{"name": "f", "parameters": {"type": "bogus"}}]'),
         "bad_tool_schema", "The tool 'f' has parameters that are not a valid JSON schema"),
        (conversation(user("Hi"), {"role": "tool", "tool_call_id": "c9", "content": "42"}, assistant("Hello")),
         "bad_tool_call", "Turn 2 (tool) answers the call 'c9', which no earlier turn made."),
        (conversation(user("Hi"), assistant("Hello", loss_weight=-1)), "bad_loss_weight",
         "Turn 2: 'loss_weight' is -1; it must be 0 or more."),
        (json.dumps({"messages": [user("Hi"), assistant("Yes")], "label": "maybe"}), "bad_label",
         "The label 'label' is 'maybe'; use true (a good answer) or false (one to avoid)."),
    ],
)  # fmt: skip
def test_tool_calls_labels_and_weights_are_checked_row_by_row(
    line: str, code: str, detail: str, tmp_path: Path
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(line + "\n", encoding="utf-8")

    report, rows = validate(path)

    assert rows == [] and list(report.problems) == [code], report.summary
    example = report.problems[code].examples[0]
    assert detail in example["detail"] and example["hint"]


def test_tool_calls_outside_chat_datasets_are_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    turns = [user("Weather?"), calls("get_weather", {"city": "Oslo"})]
    path.write_text(json.dumps({"messages": turns, "label": True}) + "\n", encoding="utf-8")

    report, _ = validate(path)

    assert report.kind == Kind.FEEDBACK and list(report.problems) == ["bad_tool_call"]
    assert "tool calls are trained from chat datasets only" in report.problems["bad_tool_call"].examples[0]["detail"]


# --- Round trip: normalized rows → the starter model's chat template → the tokens training sees ----------


@pytest.fixture(scope="module")
def starter_tokenizer(starter_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(starter_model_path), trust_remote_code=False)


def trained_and_context(tokenizer: Any, layout: str, row_index: int, **options: Any) -> tuple[str, str]:
    from training_app.engine.conversations import IGNORE_INDEX, tokenize_row

    kind, rows = EXPECTED[layout]
    tokens = tokenize_row(tokenizer, rows[row_index], kind=kind.value, **options)
    whole = tokenizer.decode(tokens.input_ids)
    trained = tokenizer.decode(
        [t for t, label in zip(tokens.input_ids, tokens.labels, strict=True) if label != IGNORE_INDEX]
    )
    return whole, trained


def test_tool_schemas_and_calls_reach_the_tokens_and_only_the_calls_are_trained(starter_tokenizer: Any) -> None:
    whole, trained = trained_and_context(starter_tokenizer, "openai_tools", 0)

    assert '"name": "get_weather"' in whole and '"required": ["city"]' in whole  # the declared schema, as context
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Lyon"}}</tool_call>' in trained
    assert "Yes, it is raining in Lyon and 9 degrees." in trained
    assert "Is it raining in Lyon?" not in trained and '"sky": "rain"' not in trained  # user and tool turns


def test_a_turn_with_loss_weight_0_is_context_only(starter_tokenizer: Any) -> None:
    whole, trained = trained_and_context(starter_tokenizer, "openai_parts", 1)

    assert "Green." in whole and "Green." not in trained
    assert "Red." in trained


@pytest.mark.parametrize(("train_reasoning", "reasoning_trained"), [(True, True), (False, False)])
def test_reasoning_is_trained_or_masked_by_the_setting(
    starter_tokenizer: Any, train_reasoning: bool, reasoning_trained: bool
) -> None:
    whole, trained = trained_and_context(starter_tokenizer, "openai_parts", 0, train_reasoning=train_reasoning)

    assert "12 x 12 = 144." in whole
    assert ("12 x 12 = 144." in trained) is reasoning_trained and "144." in trained


def test_alpaca_history_trains_only_the_last_answer(starter_tokenizer: Any) -> None:
    whole, trained = trained_and_context(starter_tokenizer, "alpaca_history", 0)

    assert "You are a gardener." in whole and "Peas, lettuce and radishes." in whole
    assert "Short days, so plant garlic and wait." in trained and "Peas" not in trained
