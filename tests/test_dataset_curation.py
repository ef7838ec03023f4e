"""Curation steps: the documented row counts on known inputs, determinism, and JSON recipes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from faker import Faker

from datasets_app.engine.curation import (
    dedupe,
    filter_length,
    mix,
    mix_counts,
    redact_pii,
    split,
    validation_size,
)

Row = dict[str, Any]


def numbered(count: int, prefix: str = "row") -> list[Row]:
    return [{"text": f"{prefix} {i}"} for i in range(count)]


def paragraphs(count: int) -> list[str]:
    fake = Faker("en_US")
    fake.seed_instance(11)
    return [fake.paragraph(nb_sentences=6, variable_nb_sentences=False) for _ in range(count)]


def partition(run: Any) -> tuple[list[Row], list[Row]]:
    pairs = list(run)
    return [row for part, row in pairs if part == "train"], [row for part, row in pairs if part == "validation"]


# --- dedupe -------------------------------------------------------------------------------------------------------


def test_exact_dedupe_removes_repeats_up_to_whitespace_and_keeps_first_occurrences() -> None:
    rows = [*numbered(10), {"text": "row 3"}, {"text": " row  5 "}, {"text": "row 3"}]
    run = dedupe(rows, mode="exact")
    assert list(run) == numbered(10)
    assert run.summary == {"rows_in": 13, "rows_out": 10, "removed": 3, "exact_duplicates": 3, "near_duplicates": 0}


def test_near_dedupe_also_removes_lightly_edited_copies() -> None:
    texts = paragraphs(10)
    edited = ["Moreover " + text for text in texts[:4]]  # one extra word: 5-shingle Jaccard well above 0.85
    rows = [{"text": text} for text in texts + edited + texts[:2]]

    exact = dedupe(rows, mode="exact")
    assert len(list(exact)) == 14
    near = dedupe(rows, mode="near", threshold=0.85)
    assert list(near) == [{"text": text} for text in texts]
    assert near.summary == {"rows_in": 16, "rows_out": 10, "removed": 6, "exact_duplicates": 2, "near_duplicates": 4}


def test_near_dedupe_keeps_distinct_texts_on_the_same_topic() -> None:
    rows = [{"text": text} for text in paragraphs(30)]
    assert len(list(dedupe(rows, mode="near"))) == 30


def test_dedupe_refuses_an_unknown_mode_and_a_bad_threshold() -> None:
    with pytest.raises(ValueError):
        dedupe([], mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        dedupe([], mode="near", threshold=1.5)


# --- PII redaction ------------------------------------------------------------------------------------------------


def test_redaction_keeps_every_row_and_counts_findings_per_kind() -> None:
    rows = [
        {"prompt": "Mail me at zoe@example.com or +33 1 83 41 77 76", "completion": "Sure."},
        {"prompt": "What is 2 + 2?", "completion": "4"},
        {"prompt": "My card is 4111 1111 1111 1111", "completion": "Never share it, not even zoe@example.com."},
        {"prompt": "Nothing here", "completion": "Right."},
    ]
    run = redact_pii(rows)
    out = list(run)
    assert len(out) == 4
    assert out[0] == {"prompt": "Mail me at [EMAIL] or [PHONE]", "completion": "Sure."}
    assert out[2] == {"prompt": "My card is [CREDIT_CARD]", "completion": "Never share it, not even [EMAIL]."}
    assert out[1] == rows[1]
    assert run.summary == {
        "rows_in": 4,
        "rows_out": 4,
        "rows_changed": 2,
        "redacted": {"secret": 0, "email": 2, "credit_card": 1, "iban": 0, "ip_address": 0, "phone": 1},
    }


# --- length filter ------------------------------------------------------------------------------------------------


def test_length_filter_keeps_rows_within_inclusive_bounds() -> None:
    rows = [{"text": " ".join(["word"] * n)} for n in range(1, 11)]  # 1..10 tokens
    run = filter_length(rows, min_tokens=3, max_tokens=7)
    assert [len(row["text"].split()) for row in run] == [3, 4, 5, 6, 7]
    assert run.summary == {"rows_in": 10, "rows_out": 5, "removed": 5, "too_short": 2, "too_long": 3}


def test_length_filter_with_one_bound_and_a_named_tokenizer() -> None:
    rows = [{"text": "x" * n} for n in (5, 50, 500)]
    run = filter_length(rows, max_tokens=50, count_tokens=len, tokenizer_name="characters")
    assert len(list(run)) == 2
    assert run.recipe == {"step": "filter_length", "min_tokens": None, "max_tokens": 50, "tokenizer": "characters"}


def test_length_filter_requires_a_name_for_a_custom_tokenizer() -> None:
    with pytest.raises(ValueError):
        filter_length([], max_tokens=5, count_tokens=len)


# --- split --------------------------------------------------------------------------------------------------------


def test_split_of_1000_rows_at_10_percent_gives_exactly_100_validation_rows() -> None:
    run = split(numbered(1000), validation_fraction=0.1, seed=42)
    train, validation = partition(run)
    assert (len(train), len(validation)) == (900, 100)
    assert run.summary == {"rows_in": 1000, "train": 900, "validation": 100}
    assert sorted(row["text"] for row in train + validation) == sorted(row["text"] for row in numbered(1000))


@pytest.mark.parametrize(
    ("rows", "fraction", "expected"),
    [(1000, 0.1, 100), (1000, 0.15, 150), (15, 0.1, 2), (14, 0.1, 1), (5, 0.05, 1), (3, 0.9, 2), (1, 0.5, 0)],
)
def test_validation_size_rounds_half_up_and_leaves_a_row_on_each_side(
    rows: int, fraction: float, expected: int
) -> None:
    assert validation_size(rows, fraction) == expected


def test_the_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    first = partition(split(numbered(1000), 0.1, seed=42))
    again = partition(split(numbered(1000), 0.1, seed=42))
    other = partition(split(numbered(1000), 0.1, seed=43))
    assert first == again
    assert first[1] != other[1]
    assert len(other[1]) == 100


def test_split_streams_a_generator_when_given_the_row_count() -> None:
    run = split((row for row in numbered(200)), 0.25, seed="s", row_count=200)
    train, validation = partition(run)
    assert (len(train), len(validation)) == (150, 50)
    assert train == sorted(train, key=lambda row: int(row["text"].split()[1]))  # input order is kept


def test_split_with_a_wrong_row_count_fails() -> None:
    with pytest.raises(ValueError, match="200 rows, not the 300"):
        list(split(iter(numbered(200)), 0.1, seed=1, row_count=300))


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_split_refuses_a_fraction_outside_0_and_1(fraction: float) -> None:
    with pytest.raises(ValueError):
        split(numbered(10), fraction, seed=1)


# --- mix ----------------------------------------------------------------------------------------------------------


def test_mix_by_default_takes_the_largest_total_without_upsampling() -> None:
    open_rows, private_rows = numbered(300, "open"), numbered(1000, "private")
    run = mix([(open_rows, 0.25), (private_rows, 0.75)], seed=7)
    out = list(run)
    assert len(out) == 1200
    assert sum(row["text"].startswith("open") for row in out) == 300
    assert sum(row["text"].startswith("private") for row in out) == 900
    assert len({row["text"] for row in out}) == 1200  # no row repeated
    assert run.summary == {"rows_out": 1200, "taken": [300, 900]}
    assert run.recipe["total"] == 1200
    assert run.recipe["sources"] == [
        {"weight": 0.25, "rows": 300, "taken": 300},
        {"weight": 0.75, "rows": 1000, "taken": 900},
    ]


def test_mix_with_a_total_takes_each_share_of_it() -> None:
    out = list(mix([(numbered(300, "open"), 0.25), (numbered(1000, "private"), 0.75)], seed=7, total=400))
    assert sum(row["text"].startswith("open") for row in out) == 100
    assert sum(row["text"].startswith("private") for row in out) == 300


def test_mix_interleaves_sources_evenly_and_keeps_their_order() -> None:
    out = list(mix([(numbered(300, "open"), 0.25), (numbered(1000, "private"), 0.75)], seed=7, total=400))
    for end in range(4, 401, 4):
        assert sum(row["text"].startswith("open") for row in out[:end]) == end // 4
    private = [int(row["text"].split()[1]) for row in out if row["text"].startswith("private")]
    assert private == sorted(private)


def test_mix_is_deterministic_for_a_seed() -> None:
    sources = [(numbered(300, "open"), 0.25), (numbered(1000, "private"), 0.75)]
    assert list(mix(sources, seed=7, total=400)) == list(mix(sources, seed=7, total=400))
    assert list(mix(sources, seed=7, total=400)) != list(mix(sources, seed=8, total=400))


def test_mix_refuses_a_total_that_would_repeat_rows() -> None:
    with pytest.raises(ValueError, match="Source 1 has 300 rows"):
        mix([(numbered(300, "open"), 0.25), (numbered(1000, "private"), 0.75)], seed=7, total=2000)


def test_mix_streams_generators_when_given_row_counts() -> None:
    sources = [((row for row in numbered(90, "a")), 0.3), ((row for row in numbered(1000, "b")), 0.7)]
    run = mix(sources, seed=1, row_counts=[90, 1000])
    assert len(list(run)) == 300  # floor(90 / 0.3) = 300 exactly: weights are read as the decimals written
    assert run.summary["taken"] == [90, 210]


def test_mix_counts_add_up_by_largest_remainder() -> None:
    assert mix_counts([1, 1, 1], [100, 100, 100], total=10) == [4, 3, 3]
    assert mix_counts([0.5, 0.5, 0], [10, 40, 99]) == [10, 10, 0]


# --- recipes ------------------------------------------------------------------------------------------------------


def test_every_recipe_and_summary_is_json_serializable() -> None:
    rows = numbered(20)
    runs: list[Any] = [
        dedupe(rows),
        dedupe(rows, mode="near", threshold=0.9),
        redact_pii(rows),
        filter_length(rows, min_tokens=1),
        split(rows, 0.2, seed=3),
        mix([(rows, 1), (numbered(5, "x"), 1)], seed=3),
    ]
    for run in runs:
        list(run)
        document = {**run.recipe, "summary": run.summary}
        assert json.loads(json.dumps(document)) == document
        assert isinstance(run.recipe["step"], str)


def test_the_summary_is_only_available_after_every_row_was_read() -> None:
    run = dedupe(numbered(3))
    with pytest.raises(RuntimeError):
        _ = run.summary
    list(run)
    assert run.summary["rows_out"] == 3
