"""The graders of eval suites, gates and reinforcement rewards (training_app/engine/graders.py)."""

import pickle

import pytest

from training_app.engine.graders import (
    GRADER_TYPES,
    Answer,
    GraderSpecError,
    ToolCall,
    build,
    reward_function,
)

WEATHER_CALL = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}


def judge_replying(reply: str):
    """A judge model that always gives ``reply`` and records the messages it was sent."""

    def judge(messages: list[dict[str, str]]) -> str:
        judge.received.append(messages)
        return reply

    judge.received = []
    return judge


# Exact match


@pytest.mark.parametrize(
    ("spec", "answer", "passed"),
    [
        ({}, "Paris", True),
        ({}, "  Paris \n", True),
        ({}, "paris", False),
        ({"ignore_case": True}, "paris", True),
        ({"normalize_whitespace": False}, "Paris ", False),
    ],
)
def test_exact_match_normalizes_as_configured(spec, answer, passed):
    verdict = build({"type": "exact_match", **spec}).grade(answer, "Paris")
    assert verdict.passed is passed
    assert verdict.score == (1.0 if passed else 0.0)


def test_exact_match_reason_shows_expected_and_got():
    verdict = build({"type": "exact_match"}).grade("Lyon", "Paris")
    assert verdict.reason == "expected 'Paris', got 'Lyon'"


def test_exact_match_accepts_any_of_several_references():
    assert build({"type": "exact_match"}).grade("42", ["forty-two", 42]).passed


def test_unusable_reference_gives_a_failed_verdict_that_says_so():
    verdict = build({"type": "exact_match"}).grade("Paris", {"city": "Paris"})
    assert not verdict.passed
    assert verdict.reason == 'cannot grade this row: expected a text reference, got {"city": "Paris"}'


# Contains


def test_contains_all_scores_the_share_found_and_names_what_is_missing():
    grader = build({"type": "contains", "strings": ["refund", "30 days", "receipt"]})
    verdict = grader.grade("You can get a Refund within 30 days.")
    assert verdict.score == pytest.approx(2 / 3)
    assert not verdict.passed
    assert verdict.reason == "missing 'receipt' (found 2 of 3)"


def test_contains_any_passes_on_one_match():
    verdict = build({"type": "contains", "strings": ["sorry", "apologize"], "mode": "any"}).grade("We apologize.")
    assert (verdict.passed, verdict.reason) == (True, "contains 'apologize'")


def test_contains_looks_for_the_reference_when_no_strings_are_given():
    grader = build({"type": "contains", "ignore_case": False})
    assert grader.grade("The capital is Paris.", "Paris").passed
    assert not grader.grade("The capital is paris.", "Paris").passed


# Regex


@pytest.mark.parametrize(
    ("mode", "answer", "passed"),
    [
        ("search", "Order 12345 shipped", True),
        ("fullmatch", "Order 12345 shipped", False),
        ("fullmatch", "12345\n", True),
    ],
)
def test_regex_searches_or_matches_the_whole_answer(mode, answer, passed):
    assert build({"type": "regex", "pattern": r"\d{5}", "mode": mode}).grade(answer).passed is passed


def test_regex_reason_quotes_the_match():
    verdict = build({"type": "regex", "pattern": r"\d{5}"}).grade("Order 12345 shipped")
    assert verdict.reason == r"/\d{5}/ matches '12345'"


# JSON against a schema

PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.mark.parametrize(
    "answer",
    [
        '{"name": "Ada", "age": 36}',
        'Here it is:\n```json\n{"name": "Ada", "age": 36}\n```',
        'Sure! {"name": "Ada", "age": 36} Anything else?',
    ],
)
def test_json_schema_reads_json_alone_in_a_fence_or_in_prose(answer):
    assert build({"type": "json_schema", "schema": PERSON_SCHEMA}).grade(answer).passed


def test_json_schema_reason_names_the_failing_path():
    verdict = build({"type": "json_schema", "schema": PERSON_SCHEMA}).grade('{"name": "Ada", "age": "36"}')
    assert not verdict.passed
    assert verdict.reason == "JSON does not match the schema at $.age: '36' is not of type 'integer'"


def test_json_schema_without_extract_requires_json_alone():
    grader = build({"type": "json_schema", "schema": PERSON_SCHEMA, "extract": False})
    verdict = grader.grade('Sure! {"name": "Ada", "age": 36}')
    assert not verdict.passed
    assert verdict.reason.startswith("not valid JSON (Expecting value at line 1 column 1)")


def test_json_schema_rejects_an_answer_without_json():
    verdict = build({"type": "json_schema", "schema": PERSON_SCHEMA}).grade("I cannot help with that.")
    assert (verdict.score, verdict.passed) == (0.0, False)
    assert "not valid JSON" in verdict.reason


def test_json_schema_counts_the_other_problems():
    verdict = build({"type": "json_schema", "schema": PERSON_SCHEMA}).grade('{"age": "36"}')
    assert verdict.reason.endswith("(and 1 more)")
    assert verdict.details["errors"] == [
        "at $.age: '36' is not of type 'integer'",
        "at $: 'name' is a required property",
    ]


# Numeric


@pytest.mark.parametrize(
    ("spec", "answer", "reference", "passed"),
    [
        ({}, "The total is 42.", 42, True),
        ({}, "The total is 42.5.", "42", False),
        ({"absolute_tolerance": 0.5}, "about 42.5", 42, True),
        ({"absolute_tolerance": 0.1}, "1.0", 1.1, True),  # decimal arithmetic: no 0.10000000000000009 surprise
        ({"relative_tolerance": 0.01}, "1,010", 1000, True),
        ({"relative_tolerance": 0.01}, "1,011", 1000, False),
        ({"read": "last"}, "Step 1: 6 * 7. Answer: 42", 42, True),
        ({"read": "first"}, "Step 1: 6 * 7. Answer: 42", 42, False),
        ({"read": "whole"}, "-3.5e2", -350, True),
        ({"read": "whole"}, "$42", 42, False),
    ],
)
def test_numeric_compares_within_tolerance(spec, answer, reference, passed):
    assert build({"type": "numeric", **spec}).grade(answer, reference).passed is passed


def test_numeric_reason_shows_the_tolerance():
    verdict = build({"type": "numeric", "absolute_tolerance": 0.5}).grade("It is 43.1", 42)
    assert verdict.reason == "expected 42 ± 0.5, got 43.1"


def test_numeric_reason_shows_a_relative_tolerance_as_a_percentage():
    verdict = build({"type": "numeric", "relative_tolerance": 0.01}).grade("1,011", 1000)
    assert verdict.reason == "expected 1000 ± 10 (1%), got 1,011"


def test_numeric_says_when_the_answer_has_no_number():
    verdict = build({"type": "numeric"}).grade("I don't know", 42)
    assert verdict.reason == 'expected 42, found no number in "I don\'t know"'


def test_numeric_reference_that_is_not_a_number_fails_the_row():
    verdict = build({"type": "numeric"}).grade("42", "forty-two")
    assert verdict.reason == 'cannot grade this row: the reference "forty-two" is not a number'


# Tool call


@pytest.mark.parametrize(
    "answer",
    [
        Answer(tool_calls=(ToolCall("get_weather", {"unit": "celsius", "city": "Paris"}),)),
        Answer.from_completion(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                    }
                ],
            }
        ),
        Answer('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>'),
        Answer('I will call {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}} now.'),
    ],
    ids=["structured", "openai-message-with-json-arguments", "starter-model-tags", "json-in-text"],
)
def test_tool_call_passes_for_the_same_call_in_any_form(answer):
    verdict = build({"type": "tool_call"}).grade(answer, WEATHER_CALL)
    assert (verdict.score, verdict.passed) == (1.0, True)


def test_tool_call_reference_may_be_json_text():
    answer = Answer(tool_calls=(ToolCall("get_weather", {"city": "Paris", "unit": "celsius"}),))
    assert (
        build({"type": "tool_call"})
        .grade(answer, '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}')
        .passed
    )


def test_tool_call_with_wrong_arguments_scores_half_and_says_which():
    answer = Answer(tool_calls=(ToolCall("get_weather", {"city": "Lyon", "days": 3}),))
    verdict = build({"type": "tool_call"}).grade(answer, WEATHER_CALL)
    assert (verdict.score, verdict.passed) == (0.5, False)
    assert (
        verdict.reason
        == 'right tool get_weather, but city: expected "Paris", got "Lyon"; missing unit; unexpected days'
    )


def test_tool_call_subset_allows_extra_arguments():
    answer = Answer(tool_calls=(ToolCall("get_weather", {"city": "Paris", "unit": "celsius", "days": 3}),))
    assert build({"type": "tool_call", "arguments_match": "subset"}).grade(answer, WEATHER_CALL).passed


def test_tool_call_compares_arguments_as_json_values():
    grader = build({"type": "tool_call"})
    reference = {"name": "set_volume", "arguments": {"level": 1}}
    assert grader.grade(Answer(tool_calls=(ToolCall("set_volume", {"level": 1.0}),)), reference).passed
    assert not grader.grade(Answer(tool_calls=(ToolCall("set_volume", {"level": True}),)), reference).passed


def test_tool_call_to_another_tool_scores_zero():
    verdict = build({"type": "tool_call"}).grade(Answer(tool_calls=(ToolCall("search_web", {}),)), WEATHER_CALL)
    assert (verdict.score, verdict.reason) == (0.0, "expected a call to get_weather, got search_web")


def test_tool_call_with_unparseable_arguments_says_so():
    answer = Answer.from_completion(
        {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": "{city: Paris"}}]}
    )
    verdict = build({"type": "tool_call"}).grade(answer, WEATHER_CALL)
    assert verdict.reason == "right tool get_weather, but its arguments are not a JSON object: '{city: Paris'"


def test_tool_call_without_any_call_says_so():
    verdict = build({"type": "tool_call"}).grade("It is sunny in Paris.", WEATHER_CALL)
    assert verdict.reason == "expected a call to get_weather, got no tool call: 'It is sunny in Paris.'"


# ROUGE-L and chrF: known values


@pytest.mark.parametrize(
    ("answer", "reference", "score"),
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        # LCS "the cat on the mat" = 5 words: precision 5/5, recall 5/6, F1 = 10/11
        ("the cat on the mat", "the cat sat on the mat", 10 / 11),
        # LCS "police the gunman" = 3 of 4 words each way (Lin 2004, section 3.1): F1 = 3/4
        ("police kill the gunman", "police killed the gunman", 3 / 4),
        ("a dog barked", "the cat sat on the mat", 0.0),
        ("Привет, как дела?", "привет как дела", 1.0),  # words in any script, not only ASCII
    ],
)
def test_rouge_l_known_values(answer, reference, score):
    assert build({"type": "rouge_l"}).grade(answer, reference).score == pytest.approx(score)


def test_rouge_l_stemming_matches_word_forms():
    assert build({"type": "rouge_l", "use_stemmer": True}).grade("police killed", "police kills").score == 1.0


def test_rouge_l_takes_the_best_of_several_references():
    verdict = build({"type": "rouge_l"}).grade("the cat on the mat", ["a dog", "the cat sat on the mat"])
    assert verdict.score == pytest.approx(10 / 11)


@pytest.mark.parametrize(
    ("answer", "reference", "score"),
    [
        ("The cat sat on the mat.", "The cat sat on the mat.", 1.0),
        # unigrams: P 2/2, R 2/3; bigrams: P 1/1, R 1/2; averaged then F(beta=2) = 5·(7/12)/(4 + 7/12) = 7/11
        ("ab", "abc", 7 / 11),
        ("xyz", "abc", 0.0),
    ],
)
def test_chrf_known_values(answer, reference, score):
    assert build({"type": "chrf"}).grade(answer, reference).score == pytest.approx(score)


def test_chrf_passes_against_its_threshold():
    grader = build({"type": "chrf", "threshold": 0.7})
    verdict = grader.grade("ab", "abc")
    assert (verdict.passed, verdict.reason) == (False, "chrF 0.64, below the 0.70 needed")


def test_chrf_plus_plus_also_counts_words():
    chrf = build({"type": "chrf"}).grade("the cat sat on a mat", "the cat sat on the mat").score
    chrf_plus_plus = build({"type": "chrf", "word_order": 2}).grade("the cat sat on a mat", "the cat sat on the mat")
    assert chrf_plus_plus.score != pytest.approx(chrf)
    assert chrf_plus_plus.reason.startswith("chrF++ ")


# LLM judge

JUDGE_REPLIES = [
    ('{"score": 4, "reason": "Correct but terse."}', 4, "Correct but terse."),
    ('```json\n{"score": 5, "reason": "Complete and polite."}\n```', 5, "Complete and polite."),
    ('Let me think. The answer is right.\n{"Score": "3/5", "Explanation": "Misses the policy."}', 3, None),
    ("The answer cites the policy correctly.\n\nScore: 4/5", 4, None),
    ("**Rating:** **2**\nThe answer ignores the question.", 2, None),
    ("I would rate this 3 out of 5 because it is vague.", 3, None),
    ("Rating: [[5]]", 5, None),
    ("Initial score: 2. On reflection the reference agrees, final score: 4", 4, None),
    ("4", 4, None),
    ("Score: 9", 5, None),  # above the scale: clamped to the top
]


@pytest.mark.parametrize(("reply", "score", "reason"), JUDGE_REPLIES)
def test_llm_judge_reads_scores_from_messy_replies(reply, score, reason):
    grader = build({"type": "llm_judge", "rubric": "Correct and polite."}, judge=judge_replying(reply))
    verdict = grader.grade("Refunds take 30 days.", "Within 30 days.", question="How long do refunds take?")
    assert verdict.score == pytest.approx((score - 1) / 4)
    assert verdict.passed is (score >= 4)
    if reason:
        assert verdict.reason.endswith(reason)


def test_llm_judge_normalizes_a_score_given_out_of_another_scale():
    grader = build({"type": "llm_judge", "rubric": "Correct."}, judge=judge_replying("Score: 8/10"))
    verdict = grader.grade("Paris")
    assert verdict.score == pytest.approx(0.8)
    assert verdict.reason.startswith("judge gave 8/10: ")


def test_llm_judge_reason_quotes_the_judge():
    grader = build(
        {"type": "llm_judge", "rubric": "Correct."}, judge=judge_replying('{"score": 2, "reason": "Wrong city."}')
    )
    assert grader.grade("Lyon", "Paris").reason == "judge gave 2/5: Wrong city."


def test_llm_judge_unparseable_reply_fails_and_quotes_it():
    grader = build({"type": "llm_judge", "rubric": "Correct."}, judge=judge_replying("I cannot evaluate this answer."))
    verdict = grader.grade("Paris")
    assert (verdict.score, verdict.passed) == (0.0, False)
    assert verdict.reason == "could not read a score in the judge's reply: 'I cannot evaluate this answer.'"
    assert verdict.details["reply"] == "I cannot evaluate this answer."


def test_llm_judge_sends_the_prompt_it_shows():
    judge = judge_replying('{"score": 5, "reason": "ok"}')
    grader = build({"type": "llm_judge", "rubric": "Cites the refund policy."}, judge=judge)
    verdict = grader.grade("Within 30 days.", "30 days", question="How long do refunds take?")
    shown = grader.prompt(Answer("Within 30 days."), "30 days", "How long do refunds take?")
    assert judge.received == [shown]
    assert verdict.details["prompt"] == shown
    assert "Cites the refund policy." in shown[0]["content"]
    assert shown[1]["content"] == (
        "<question>\nHow long do refunds take?\n</question>\n\n<reference>\n30 days\n</reference>\n\n"
        "<answer>\nWithin 30 days.\n</answer>"
    )


def test_llm_judge_prompt_shows_tool_calls():
    grader = build({"type": "llm_judge", "rubric": "Calls the right tool."})
    content = grader.prompt(Answer(tool_calls=(ToolCall("get_weather", {"city": "Paris"}),)))[1]["content"]
    assert 'Tool call: get_weather({"city": "Paris"})' in content


def test_llm_judge_scale_sets_the_threshold():
    grader = build(
        {"type": "llm_judge", "rubric": "Correct.", "scale_min": 0, "scale_max": 10, "threshold": 0.7},
        judge=judge_replying('{"score": 7, "reason": "Mostly right."}'),
    )
    assert grader.grade("Paris").passed


# Specs: building, round trips, errors


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "exact_match", "ignore_case": True},
        {"type": "contains", "strings": ["a", "b"], "mode": "any"},
        {"type": "regex", "pattern": "^\\d+$", "mode": "fullmatch"},
        {"type": "json_schema", "schema": PERSON_SCHEMA},
        {"type": "numeric", "absolute_tolerance": 0.5, "read": "last"},
        {"type": "tool_call", "arguments_match": "subset"},
        {"type": "rouge_l", "threshold": 0.4},
        {"type": "chrf", "word_order": 2},
        {"type": "llm_judge", "rubric": "Correct.", "model": "deployment:support-bot"},
    ],
)
def test_spec_round_trips(spec):
    grader = build(spec)
    assert build(grader.spec()) == grader
    assert grader.spec().items() >= spec.items()


def test_every_grader_type_is_listed_with_its_options():
    assert list(GRADER_TYPES) == [
        "exact_match",
        "contains",
        "regex",
        "json_schema",
        "numeric",
        "tool_call",
        "rouge_l",
        "chrf",
        "llm_judge",
    ]
    mode = next(option for option in GRADER_TYPES["regex"].options if option.name == "mode")
    assert (mode.kind, mode.default, mode.choices) == ("choice", "search", ("search", "fullmatch"))
    assert all(option.help for grader_type in GRADER_TYPES.values() for option in grader_type.options)
    assert "judge" not in [option.name for option in GRADER_TYPES["llm_judge"].options]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"type": "regex", "pattern": "(ab"},
            "regex.pattern: not a valid regular expression: missing ), "
            "unterminated subpattern at position 0; escape it or fix it",
        ),
        ({"type": "regex"}, "regex.pattern: required; A Python regular expression"),
        ({"type": "bleu"}, "type: unknown grader 'bleu'; choose one of exact_match, contains, regex"),
        ({"type": "numeric", "tolerance": 1}, "numeric.tolerance: not an option; numeric takes absolute_tolerance"),
        ({"type": "numeric", "absolute_tolerance": -1}, "numeric.absolute_tolerance: must be 0 or more"),
        ({"type": "chrf", "threshold": "high"}, 'chrf.threshold: expected a number, got "high"'),
        ({"type": "rouge_l", "threshold": 50}, "rouge_l.threshold: must be between 0 and 1"),
        ({"type": "contains", "mode": "most"}, 'contains.mode: expected one of all, any, got "most"'),
        ({"type": "contains", "strings": "refund"}, 'contains.strings: expected a list of texts, got "refund"'),
        (
            {"type": "json_schema", "schema": {"type": "objekt"}},
            "json_schema.schema: not a valid JSON Schema (at $.type",
        ),
        ({"type": "llm_judge", "rubric": "x", "scale_min": 5, "scale_max": 5}, "llm_judge.scale_max: must be above"),
        ({"type": "llm_judge", "rubric": "  "}, "llm_judge.rubric: required; say what a good answer does"),
    ],
)
def test_bad_spec_error_names_the_field_and_the_fix(spec, message):
    with pytest.raises(GraderSpecError) as error:
        build(spec)
    assert str(error.value).startswith(message)


def test_only_an_llm_judge_takes_a_judge_model():
    with pytest.raises(GraderSpecError, match="only llm_judge takes a judge model"):
        build({"type": "exact_match"}, judge=judge_replying("5"))


# Reinforcement rewards (TRL's reward function signature)


def test_reward_function_scores_plain_completions_against_the_reference_column():
    reward = reward_function(build({"type": "exact_match"}), reference_column="answer")
    rewards = reward(
        prompts=["2 + 2 =", "Capital of France?"],
        completions=["4", "Lyon"],
        answer=["4", "Paris"],
        trainer_state=None,
    )
    assert rewards == [1.0, 0.0]


def test_reward_function_reads_conversational_completions():
    reward = reward_function(build({"type": "tool_call"}))
    prompts = [[{"role": "user", "content": "Weather in Paris?"}]] * 2
    completions = [
        [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": WEATHER_CALL}]}],
        [{"role": "assistant", "content": "It is sunny."}],
    ]
    assert reward(prompts, completions, reference=[WEATHER_CALL, WEATHER_CALL]) == [1.0, 0.0]


def test_reward_function_passes_the_prompt_to_the_judge():
    judge = judge_replying('{"score": 5, "reason": "ok"}')
    reward = reward_function(build({"type": "llm_judge", "rubric": "Helpful."}, judge=judge))
    assert reward([[{"role": "user", "content": "Say hi"}]], [[{"role": "assistant", "content": "Hi!"}]]) == [1.0]
    assert "<question>\nSay hi\n</question>" in judge.received[0][1]["content"]


def test_reward_function_without_its_reference_column_names_it():
    reward = reward_function(build({"type": "exact_match"}), reference_column="answer")
    with pytest.raises(KeyError, match="needs the dataset column 'answer'"):
        reward(prompts=["2 + 2 ="], completions=["4"])


def test_reward_function_is_picklable_and_named_for_trl_logs():
    reward = pickle.loads(pickle.dumps(reward_function(build({"type": "regex", "pattern": r"\d+"}))))  # noqa: S301 (our own bytes)
    assert reward.__name__ == "regex_reward"
    assert reward(["Count"], ["3 apples"]) == [1.0]
