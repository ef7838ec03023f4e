"""Conversations in training, with the real starter model and TRL on CPU: which tokens a chat row trains
(tools, tool calls, tool results, reasoning, context-only turns), KTO on feedback rows, and tool calling
learned from the sample dataset ``datasets_app/samples/tools.jsonl``.

The starter model's corpus never contains that sample (``corpus.HELD_OUT_SAMPLES``), and the held-out
requests are drawn with another seed (``tool_samples.held_out_cases``), so the tuned model is scored on
requests neither it nor the base model has seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from training_app.engine import tool_samples
from training_app.engine.config import RunConfig
from training_app.engine.conversations import IGNORE_INDEX, tokenize_conversation
from training_app.engine.reporting import DataError
from training_app.engine.trainer import kto_weights, load_datasets, load_tokenizer, run

pytestmark = pytest.mark.slow

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CONVERSATION = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Is it cold in Oslo?"},
    {
        "role": "assistant",
        "content": "",
        "reasoning_content": "I should check the weather first.",
        "tool_calls": [
            {"type": "function", "id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temperature": -3}'},
    {"role": "assistant", "content": "An old answer kept for context.", "loss_weight": 0},
    {"role": "user", "content": "So should I wear a coat?"},
    {"role": "assistant", "content": "Yes, it is minus three degrees."},
]


@pytest.fixture(scope="module")
def tokenizer(starter_model_path: Path) -> Any:
    return load_tokenizer(str(starter_model_path))


@pytest.fixture
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_spans(tokenizer: Any, input_ids: list[int], labels: list[int]) -> list[str]:
    """The labelled stretches of a row, decoded (each run of trained tokens is one string)."""
    spans: list[str] = []
    current: list[int] = []
    for token, label in [*zip(input_ids, labels, strict=True), (None, IGNORE_INDEX)]:
        if label != IGNORE_INDEX:
            assert label == token
            current.append(label)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans


def write_rows(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def make_config(model: Path, folder: Path, **values: Any) -> RunConfig:
    defaults: dict[str, Any] = {
        "model_path": str(model),
        "output_dir": str(folder / "out"),
        "run_dir": str(folder / "run"),
        "method": "lora",
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "per_device_batch_size": 4,
        "max_seq_length": 256,
        "save_steps": 1000,
        "use_cpu": True,
        "generation_prompts": 0,
    }
    config = RunConfig.from_dict({**defaults, **values})
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    return config


def logged_losses(config: RunConfig) -> list[float]:
    lines = (Path(config.run_dir) / "metrics.jsonl").read_text().splitlines()
    return [entry["loss"] for entry in map(json.loads, lines) if entry.get("loss") is not None]


# ---- which tokens a row trains --------------------------------------------------------------------------


def test_the_trainer_labels_only_the_assistant_turns_of_a_chat_row(
    starter_model_path: Path, tokenizer: Any, tmp_path: Path
) -> None:
    row = {"messages": CONVERSATION, "tools": [WEATHER_TOOL]}
    config = make_config(
        starter_model_path, tmp_path, kind="chat", stage="sft", train_path=write_rows(tmp_path / "t.jsonl", [row])
    )

    train, _ = load_datasets(config, tokenizer)

    input_ids, labels = train[0]["input_ids"], train[0]["labels"]
    text = tokenizer.decode(input_ids)
    assert '{"name": "get_weather", "description": "Get the current weather in a city."' in text  # the schema
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>' in text
    assert trained_spans(tokenizer, input_ids, labels) == [
        "<think>I should check the weather first.</think>\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call><|eot_id|>',
        "Yes, it is minus three degrees.<|eot_id|>",
    ]


def test_reasoning_stays_in_the_input_but_is_not_trained_when_the_setting_is_off(
    starter_model_path: Path, tokenizer: Any, tmp_path: Path
) -> None:
    row = {"messages": CONVERSATION, "tools": [WEATHER_TOOL]}
    config = make_config(
        starter_model_path, tmp_path, kind="chat", stage="sft", train_reasoning=False,
        train_path=write_rows(tmp_path / "t.jsonl", [row]),
    )  # fmt: skip

    train, _ = load_datasets(config, tokenizer)

    input_ids, labels = train[0]["input_ids"], train[0]["labels"]
    assert "<think>I should check the weather first.</think>" in tokenizer.decode(input_ids)
    spans = trained_spans(tokenizer, input_ids, labels)
    assert not any("think" in span or "check the weather" in span for span in spans), spans
    assert spans[0].strip().startswith('<tool_call>{"name": "get_weather"')
    assert spans[-1] == "Yes, it is minus three degrees.<|eot_id|>"


def test_a_conversational_instruction_row_trains_only_its_completion(tokenizer: Any) -> None:
    prompt = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
    ]
    completion = [{"role": "assistant", "content": "Green."}]

    row = tokenize_conversation(tokenizer, [*prompt, *completion], first_trained=len(prompt))

    assert trained_spans(tokenizer, row.input_ids, row.labels) == ["Green.<|eot_id|>"]


def test_a_template_that_rewrites_earlier_turns_is_refused_with_a_data_error(tokenizer: Any) -> None:
    from transformers import PreTrainedTokenizerFast

    rewriting: Any = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    # Like templates that keep only the last answer's reasoning: an earlier turn renders differently later.
    rewriting.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
        "{% if loop.last %}{{ m.get('reasoning_content', '') }}{% endif %}\n{% endfor %}"
    )
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "reasoning_content": "greet back"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye"},
    ]

    with pytest.raises(DataError, match=r"renders turn 2 .* differently"):
        tokenize_conversation(rewriting, messages)


# ---- KTO ------------------------------------------------------------------------------------------------

COLOURS = [("sky", "blue"), ("grass", "green"), ("sun", "yellow"), ("snow", "white"), ("coal", "black")]


def feedback_rows(count: int) -> list[dict[str, Any]]:
    """Two desirable answers for each undesirable one: the weights are balanced from these counts."""
    rows = []
    for index in range(count):
        thing, colour = COLOURS[index % len(COLOURS)]
        desirable = index % 3 != 0
        answer = f"The {thing} is {colour}." if desirable else f"I will not tell you about the {thing}."
        prompt = [{"role": "user", "content": f"What colour is the {thing}?"}]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}], "label": desirable})
    return rows


def test_kto_weights_are_balanced_from_the_label_counts_unless_set(tmp_path: Path) -> None:
    rows = feedback_rows(12)  # 8 desirable, 4 undesirable
    config = make_config(
        Path("-"), tmp_path, kind="feedback", stage="kto", train_path=write_rows(tmp_path / "t.jsonl", rows)
    )

    assert kto_weights(config) == (1.0, 2.0)
    config.kto_desirable_weight = 1.2
    assert kto_weights(config) == (1.2, 1.0)
    config.train_path = write_rows(tmp_path / "only-good.jsonl", [row for row in rows if row["label"]])
    config.kto_desirable_weight = None
    with pytest.raises(DataError, match=r"no undesirable \(label false\) one"):
        kto_weights(config)


def test_kto_on_feedback_rows_lowers_its_loss_and_saves_an_adapter(
    starter_model_path: Path, tmp_path: Path, one_thread: None
) -> None:
    rows = feedback_rows(48)
    config = make_config(
        starter_model_path, tmp_path, kind="feedback", stage="kto", max_steps=8, learning_rate=5e-3,
        train_path=write_rows(tmp_path / "train.jsonl", rows), eval_path=write_rows(tmp_path / "eval.jsonl", rows[:8]),
        generation_prompts=1, generation_max_new_tokens=8,
    )  # fmt: skip

    outcome = run(config)

    assert outcome.status == "succeeded", outcome.failure
    result = outcome.result or {}
    assert result["stage"] == "kto"
    assert (Path(result["artifacts"]["adapter"]) / "adapter_model.safetensors").is_file()
    losses = logged_losses(config)
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    assert result["eval_loss_after"] < result["eval_loss_before"]
    assert result["perplexity_after"] is None  # a preference loss has no perplexity
    assert result["generations"][0]["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


# ---- tool calling learned from the sample dataset -------------------------------------------------------


def tool_call_rates(model: Any, tokenizer: Any, cases: list[tool_samples.HeldOutCase]) -> dict[str, int]:
    """How the model answers held-out requests (greedy): ``parsed``, a call that parses; ``well_formed``, a
    parsed call of the tool the request needs (one the row declares) whose arguments fit that tool's
    parameters; ``exact``, a well-formed call whose argument values are the expected ones too."""
    import torch

    counts = {"parsed": 0, "well_formed": 0, "exact": 0}
    for case in cases:
        prompt = tokenizer.apply_chat_template(
            case.messages, tools=case.tools, add_generation_prompt=True, tokenize=False
        )
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        call = tool_samples.parse_tool_call(
            tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        )
        if call is None:
            continue
        counts["parsed"] += 1
        declared = {tool["function"]["name"]: tool for tool in case.tools}
        name, arguments = call
        if name == case.name and name in declared and tool_samples.arguments_fit(arguments, declared[name]):
            counts["well_formed"] += 1
            counts["exact"] += tool_samples.arguments_match(arguments, case.arguments)
    return counts


def test_tuning_on_the_tool_sample_teaches_well_formed_tool_calls(
    starter_model_path: Path, tool_tuned_model_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tool_tuned_model_path)
    cases = tool_samples.held_out_cases()
    base = tool_call_rates(AutoModelForCausalLM.from_pretrained(starter_model_path), tokenizer, cases)
    tuned = tool_call_rates(AutoModelForCausalLM.from_pretrained(tool_tuned_model_path), tokenizer, cases)
    print(f"\ntool calls on {len(cases)} held-out requests: base {base}, tuned {tuned}")
    assert tuned["parsed"] >= 1
    assert tuned["well_formed"] > base["well_formed"]
