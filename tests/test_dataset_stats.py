"""Dataset statistics: the documented counts on small inputs whose answers are worked out by hand."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from datasets_app.engine.curation import dedupe
from datasets_app.engine.stats import compute_stats, count_tokens_default, distribution

STORY = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk to light the great lamp, "
    "and from the gallery he watched the fishing boats return to the harbour one by one while gulls "
    "circled above the breakwater and the tide turned slowly against the rocks below the old stone tower"
)
OTHER_STORY = (
    "A baker in the mountain village rose before dawn to knead dough for the whole valley, shaping loaves "
    "of rye and spelt that the children carried home in linen sacks through the narrow lanes"
)


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def known_chat_rows() -> list[dict[str, Any]]:
    return [
        # 0: one e-mail
        chat(("user", "Hello, my email is alice@example.com"), ("assistant", "Thanks Alice, noted.")),
        # 1: row 0 again, with different spacing -> exact duplicate of 0
        chat(("user", "Hello,  my email is alice@example.com "), ("assistant", "Thanks Alice,\nnoted.")),
        # 2: a long text
        chat(("user", "Summarize: " + STORY), ("assistant", "A keeper lights a lamp.")),
        # 3: row 2 with its first word changed -> near duplicate of 2 (5-shingle Jaccard 52/54)
        chat(("user", "Summarise: " + STORY), ("assistant", "A keeper lights a lamp.")),
        # 4: three turns, one phone number and one card
        chat(
            ("system", "You are a support agent."),
            ("user", "Call me on +44 20 7946 0958 about card 4242 4242 4242 4242"),
            ("assistant", "I will call you."),
        ),
        # 5: four turns, unrelated text, one IBAN
        chat(
            ("user", OTHER_STORY),
            ("assistant", "Pay to DE89 3704 0044 0532 0130 00 please."),
            ("user", "And the second payment?"),
            ("assistant", "Same account."),
        ),
    ]


def test_counts_of_a_known_chat_dataset() -> None:
    stats = compute_stats(known_chat_rows(), kind="chat")

    assert stats["rows"] == 6
    assert stats["roles"] == {"system": 1, "user": 7, "assistant": 7, "tool": 0}
    assert stats["turns"]["histogram"] == [
        {"start": 2, "end": 2, "count": 4},
        {"start": 3, "end": 3, "count": 1},
        {"start": 4, "end": 4, "count": 1},
    ]
    assert (stats["turns"]["min"], stats["turns"]["p50"], stats["turns"]["max"]) == (2, 2, 4)
    assert stats["exact_duplicates"] == {"count": 1, "examples": [{"row": 1, "duplicate_of": 0}]}
    assert stats["near_duplicates"]["count"] == 1
    (example,) = stats["near_duplicates"]["examples"]
    assert (example["row"], example["duplicate_of"]) == (3, 2)
    assert 0.85 <= example["similarity"] <= 1


def test_pii_findings_by_kind_of_a_known_chat_dataset() -> None:
    pii = compute_stats(known_chat_rows(), kind="chat")["pii"]

    assert {kind: (entry["count"], entry["rows"]) for kind, entry in pii.items()} == {
        "email": (2, 2),
        "phone": (1, 1),
        "credit_card": (1, 1),
        "iban": (1, 1),
        "ip_address": (0, 0),
        "secret": (0, 0),
    }
    assert pii["email"]["examples"] == [
        {"row": 0, "masked": "a***@example.com"},
        {"row": 1, "masked": "a***@example.com"},
    ]
    assert pii["credit_card"]["examples"] == [{"row": 4, "masked": "**** **** **** 4242"}]
    assert pii["iban"]["examples"] == [{"row": 5, "masked": "DE89 **** **** **** **30 00"}]


def test_pii_examples_stop_at_five_per_kind() -> None:
    rows = [{"text": f"write to user{i}@example.com"} for i in range(8)]
    email = compute_stats(rows, kind="text")["pii"]["email"]
    assert (email["count"], email["rows"]) == (8, 8)
    assert [example["row"] for example in email["examples"]] == [0, 1, 2, 3, 4]


def test_token_lengths_use_the_documented_default_counter() -> None:
    rows = [{"text": "Hello, world!"}, {"prompt": "Add 2 and 2.", "completion": "4"}, {"text": ""}]
    tokens = compute_stats(rows, kind="text")["tokens"]
    # "Hello" "," "world" "!" = 4; "Add" "2" "and" "2" "." + "4" = 6; "" = 0
    assert (tokens["min"], tokens["p50"], tokens["max"], tokens["total"]) == (0, 4, 6, 10)
    assert tokens["counter"] == r"regex \w+|[^\w\s]"
    assert count_tokens_default("don't stop") == 4


def test_a_given_tokenizer_counts_the_tokens_and_is_named() -> None:
    rows = [{"text": "a b c"}, {"text": "a b c d e"}]
    tokens = compute_stats(rows, kind="text", count_tokens=lambda text: len(text), tokenizer_name="chars")["tokens"]
    assert (tokens["min"], tokens["max"], tokens["counter"]) == (5, 9, "chars")


def test_turns_and_roles_are_only_reported_for_chat() -> None:
    stats = compute_stats([{"prompt": "Hi", "completion": "Hello"}], kind="instruction")
    assert stats["turns"] is None
    assert stats["roles"] is None


def test_unknown_roles_are_counted_under_their_own_name() -> None:
    stats = compute_stats([chat(("user", "hi"), ("narrator", "…"))], kind="chat")
    assert stats["roles"] == {"system": 0, "user": 1, "assistant": 0, "tool": 0, "narrator": 1}


def test_an_empty_dataset_has_empty_statistics() -> None:
    stats = compute_stats([], kind="chat")
    assert stats["rows"] == 0
    assert stats["tokens"]["histogram"] == []
    assert stats["tokens"]["p50"] is None


def test_statistics_are_json_serializable() -> None:
    stats = compute_stats(known_chat_rows(), kind="chat")
    assert json.loads(json.dumps(stats)) == stats


def test_statistics_read_their_input_once() -> None:
    stats = compute_stats(iter(known_chat_rows()), kind="chat")
    assert stats["rows"] == 6


def test_duplicate_counts_match_what_a_near_dedupe_removes() -> None:
    rows = known_chat_rows() * 2 + [chat(("user", STORY + " again"), ("assistant", "ok"))]
    stats = compute_stats(rows, kind="chat", near_duplicate_threshold=0.8)
    run = dedupe(rows, mode="near", threshold=0.8)
    kept = list(run)
    removed = stats["exact_duplicates"]["count"] + stats["near_duplicates"]["count"]
    assert run.summary["removed"] == removed == len(rows) - len(kept)


def test_a_shared_system_prompt_does_not_make_conversations_near_duplicates() -> None:
    rows = [
        chat(("system", STORY * 3), ("user", "What is two plus two?"), ("assistant", "Four.")),
        chat(("system", STORY * 3), ("user", "Name a colour of the sky."), ("assistant", "Blue.")),
    ]
    assert compute_stats(rows, kind="chat")["near_duplicates"]["count"] == 0


def test_histogram_has_twenty_equal_bins_over_a_wide_range() -> None:
    lengths = Counter(range(1, 201))  # 1..200, once each
    summary = distribution(lengths)
    assert len(summary["histogram"]) == 20
    assert summary["histogram"][0] == {"start": 1, "end": 10, "count": 10}
    assert summary["histogram"][-1] == {"start": 191, "end": 200, "count": 10}
    assert (summary["p50"], summary["p95"], summary["mean"]) == (100, 190, 100.5)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        compute_stats([], kind="tabular")
