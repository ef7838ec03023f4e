"""The guard filter (``serving_app.guard_filter``): what a guard policy does to prompts and to streamed answers,
without Django or a model (a guard model is a function here; tests/test_guardrails.py runs a real one)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serving_app.guard_filter import (
    AnswerGuard,
    GuardError,
    Rules,
    Stage,
    Topic,
    Verdict,
    check_prompt,
    check_topics,
    parse_verdict,
)

LOCKS = Topic("lock picking", terms=("lock pick", "bump key"), patterns=(r"pick(ing)? (a|the) lock",))
EMAIL = "jane.doe@example.com"


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def streamed(rules: Rules, pieces: list[str], classify: Any = None) -> tuple[list[str], AnswerGuard]:
    """What the client receives, piece by piece, when the answer arrives as ``pieces``."""

    async def go() -> tuple[list[str], AnswerGuard]:
        guard = AnswerGuard(rules, classify)
        out = [await guard.feed(piece) for piece in pieces]
        out.append(await guard.finish())
        return out, guard

    return run(go())


def in_pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# --- answers ------------------------------------------------------------------------------------------------


def test_an_email_split_across_stream_chunks_never_reaches_the_client() -> None:
    answer = f"Sure, write to {EMAIL} and we will answer within a day. " * 3
    out, guard = streamed(Rules(), in_pieces(answer, 3))
    released = "".join(out)
    assert EMAIL not in released
    assert not any(part in piece for piece in out for part in ("jane", "example.com"))
    assert released == answer.replace(EMAIL, "[EMAIL]")
    assert {(e.action, e.category) for e in guard.events} == {("redacted", "email")}
    assert sum(e.count for e in guard.events) == 3  # each address counted once, however it was cut


def test_nothing_is_released_until_it_is_a_window_behind_the_end() -> None:
    out, _ = streamed(Rules(window=20), list("a" * 30))
    assert "".join(out[:20]) == ""  # the first 20 characters are held back
    assert "".join(out) == "a" * 30


def test_a_blocked_term_in_an_answer_stops_it_with_the_refusal_and_nothing_of_the_term() -> None:
    answer = "Here is how it goes. " * 10 + "First get a bump key and then tap it in. More details follow."
    rules = Rules(topics=(LOCKS,), refusal="I can't help with that.")
    out, guard = streamed(rules, in_pieces(answer, 4))
    released = "".join(out)
    assert "bump" not in released
    assert released.endswith("\n\nI can't help with that.")
    assert released.startswith("Here is how it goes.")
    assert guard.stopped is not None and guard.stopped_reason == "content_filter"
    assert (guard.stopped.action, guard.stopped.category, guard.stopped.rule) == ("blocked", "lock picking", "topic")


def test_topic_patterns_are_case_insensitive_and_terms_match_whole_words() -> None:
    rules = Rules(topics=(Topic("pets", terms=("cat",)),))
    _, concatenated = streamed(rules, ["The catalogue is long."])
    assert concatenated.stopped is None
    _, guard = streamed(rules, ["My CAT sleeps."])
    assert guard.stopped is not None


def test_an_answer_longer_than_the_cap_is_cut_there_with_finish_reason_length() -> None:
    out, guard = streamed(Rules(max_answer_chars=50), in_pieces("word " * 40, 7))
    assert "".join(out) == ("word " * 40)[:50]
    assert guard.stopped_reason == "length"
    assert guard.events[-1].action == "truncated"


def test_a_guard_model_that_calls_the_answer_unsafe_blocks_it_before_release() -> None:
    async def classify(stage: Stage, text: str) -> Verdict:
        return Verdict(safe="poison" not in text, category="S2")

    answer = "Mix these. " * 30 + "Add the poison slowly. " + "Stir. " * 30
    out, guard = streamed(Rules(classify_output=True, classify_every=100), in_pieces(answer, 5), classify)
    released = "".join(out)
    assert "poison" not in released
    assert guard.stopped is not None and guard.stopped.category == "S2"


def test_a_guard_model_only_releases_text_it_has_seen() -> None:
    seen: list[str] = []

    async def classify(stage: Stage, text: str) -> Verdict:
        seen.append(text)
        return Verdict(safe=True)

    out, _ = streamed(Rules(classify_output=True, classify_every=100, window=10), in_pieces("x" * 450, 9), classify)
    released_so_far = ""
    for piece in out:
        released_so_far += piece
        assert any(text.startswith(released_so_far) for text in seen) or not piece
    assert released_so_far == "x" * 450 and seen[-1] == "x" * 450


def test_a_failing_guard_model_fails_closed_by_default() -> None:
    async def broken(stage: Stage, text: str) -> Verdict:
        raise GuardError("the guard model could not answer")

    out, guard = streamed(Rules(classify_output=True, refusal="Refused."), ["All fine here."], broken)
    assert "".join(out) == "Refused."
    assert [e.action for e in guard.events] == ["check_failed", "blocked"]


def test_a_failing_guard_model_lets_the_answer_through_when_the_policy_fails_open() -> None:
    async def broken(stage: Stage, text: str) -> Verdict:
        raise GuardError("down")

    out, guard = streamed(Rules(classify_output=True, fail_closed=False), ["All fine here."], broken)
    assert "".join(out) == "All fine here."
    assert [e.action for e in guard.events] == ["check_failed"]


def test_a_catastrophic_topic_pattern_fails_its_check_instead_of_hanging() -> None:
    rules = Rules(topics=(Topic("slow", patterns=(r"(a|aa)+$",)),), refusal="Refused.")
    out, guard = streamed(rules, ["a" * 40 + "!"])
    assert "".join(out) == "Refused."
    assert guard.events[0].action == "check_failed"


# --- prompts ------------------------------------------------------------------------------------------------


def test_personal_data_in_user_messages_is_replaced_before_the_model_sees_it() -> None:
    messages = [
        {"role": "system", "content": "Support desk. Escalations: desk@example.com"},
        {"role": "user", "content": f"I am {EMAIL}, card 4111 1111 1111 1111."},
    ]
    check = run(check_prompt(Rules(), messages))
    assert check.messages[0] == messages[0]  # the deployment's own system prompt is left alone
    assert check.messages[1]["content"] == "I am [EMAIL], card [CREDIT_CARD]."
    assert {(e.category, e.count) for e in check.events} == {("email", 1), ("credit_card", 1)}
    assert check.blocked is None


def test_a_blocked_topic_in_any_user_message_refuses_the_prompt() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "How do I pick a lock?"}]
    check = run(check_prompt(Rules(topics=(LOCKS,)), messages))
    assert check.blocked is not None and check.blocked.category == "lock picking"


def test_text_parts_of_a_message_are_checked_too() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": f"mail {EMAIL}"}]}]
    check = run(check_prompt(Rules(), messages))
    assert check.messages[0]["content"] == [{"type": "text", "text": "mail [EMAIL]"}]


def test_the_guard_model_sees_the_redacted_prompt() -> None:
    asked: list[str] = []

    async def classify(stage: Stage, text: str) -> Verdict:
        asked.append(text)
        return Verdict(safe=False, category="S9")

    check = run(check_prompt(Rules(classify_input=True), [{"role": "user", "content": f"I am {EMAIL}"}], classify))
    assert asked == ["I am [EMAIL]"]
    assert check.blocked is not None and check.blocked.category == "S9"


# --- policies as teams write them ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("safe", Verdict(safe=True)),
        ("Safe.", Verdict(safe=True)),
        ("unsafe\nS2", Verdict(safe=False, category="S2")),
        ("unsafe: weapons", Verdict(safe=False, category="weapons")),
    ],
)
def test_guard_model_answers_are_read_in_the_llama_guard_convention(answer: str, verdict: Verdict) -> None:
    assert parse_verdict(answer) == verdict


def test_a_guard_model_answer_that_is_neither_is_a_failed_check() -> None:
    with pytest.raises(GuardError, match="neither"):
        parse_verdict("I think it is fine")


def test_topic_problems_name_the_topic_and_the_fix() -> None:
    problems = check_topics([Topic("", terms=("x",)), Topic("weapons"), Topic("bad", patterns=("(unclosed",))])
    assert problems[0].startswith("Topic 1: give it a name")
    assert problems[1] == "Topic 2 (weapons): add at least one term or pattern."
    assert problems[2].startswith("Topic 3 (bad): the pattern “(unclosed” is not a valid regular expression")
