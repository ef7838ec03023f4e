"""The studio's starter model, as ``manage.py create_starter_model`` makes it, loaded through the same transformers
code path as a hub model.

The model under test is the suite's own (``starter_model_path``): created by ``ensure_starter_model`` with the
default settings into a cache keyed by the hash of the code that makes it (starter.py, corpus.py), so any change
to how it is made builds and tests a fresh one, and an unchanged recipe is not trained again for every run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

from training_app.engine.corpus import SPECIAL_TOKENS, corpus_hash, corpus_texts, format_chat
from training_app.engine.inspection import PICKLE_SUFFIXES, inspect_model
from training_app.engine.starter import (
    DEFAULT_STEPS,
    METADATA_FILE,
    STARTER_MODEL_NAME,
    create_starter_model,
    ensure_starter_model,
)

# The model may have to be created (about a minute), and some tests train a few steps: not in `make test-fast`.
pytestmark = pytest.mark.slow

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def starter_path(starter_model_path: Path) -> Path:
    return starter_model_path


@pytest.fixture(scope="module")
def models_dir(starter_path: Path) -> Path:
    return starter_path.parent


@pytest.fixture(scope="module")
def metadata(starter_path: Path) -> dict[str, Any]:
    """What creation recorded beside the weights (``StarterModelInfo`` without its path)."""
    return dict(json.loads((starter_path / METADATA_FILE).read_text()))


@pytest.fixture(scope="module")
def model(starter_path: Path) -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(starter_path, trust_remote_code=False, use_safetensors=True)


@pytest.fixture(scope="module")
def tokenizer(starter_path: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(starter_path)


def test_only_safetensors_weights_are_written(starter_path: Path) -> None:
    names = {path.name for path in starter_path.iterdir()}
    assert "model.safetensors" in names
    assert not {name for name in names if Path(name).suffix in PICKLE_SUFFIXES}


def test_creation_leaves_no_staging_folder_beside_the_model(starter_path: Path) -> None:
    assert [path.name for path in starter_path.parent.iterdir() if path.is_dir()] == [STARTER_MODEL_NAME]


def test_model_loads_without_remote_code(model: LlamaForCausalLM) -> None:
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.max_position_embeddings == 1024


def test_chat_template_renders_roles_and_generation_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "How do I oil a bicycle chain?"},
        {"role": "assistant", "content": "Wipe it clean, then add a drop of oil to each link."},
        {"role": "user", "content": "How often?"},
    ]

    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # The same text the model saw during pretraining (corpus.format_chat), then an open assistant turn.
    expected = "<|begin_of_text|>" + format_chat(messages) + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert rendered == expected


def test_chat_template_renders_tools_calls_results_and_reasoning_like_the_corpus(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather «now».",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    call = {"type": "function", "id": "c1", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}
    messages = [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": "", "reasoning_content": " Check first. ", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": '{"celsius": 4}'},
        {"role": "assistant", "content": "It is 4 degrees.", "loss_weight": 0},
    ]

    rendered = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)

    assert rendered == "<|begin_of_text|>" + format_chat(messages, tools)
    assert '{"name": "get_weather", "description": "Weather «now».", "parameters":' in rendered
    assert (
        "<|start_header_id|>assistant<|end_header_id|>\n\n<think>Check first.</think>\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich"}}</tool_call><|eot_id|>'
        '<|start_header_id|>tool<|end_header_id|>\n\n{"celsius": 4}<|eot_id|>'
    ) in rendered


def test_an_answer_continues_the_generation_prompts_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """The newlines that end the prompt are the same token whether or not an answer follows."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(prompt + "<tool_call>{}</tool_call>", add_special_tokens=False)["input_ids"]

    assert answer_ids[: len(prompt_ids)] == prompt_ids


def test_the_tool_calling_sample_is_held_out_of_the_corpus() -> None:
    texts = corpus_texts()

    assert not [text for text in texts if "get_weather" in text or "convert_currency" in text]
    assert [text for text in texts if '<tool_call>{"name": "set_reminder"' in text]  # the format itself is taught


def test_chat_template_markers_are_single_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=True, add_generation_prompt=True, return_dict=False
    )

    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [token for token in tokens if token in SPECIAL_TOKENS] == [
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
    ]


def test_tokenizer_round_trips_text(tokenizer: PreTrainedTokenizerBase) -> None:
    text = "Café au lait, naïve résumé 🙂\n\tdef add(a, b):\n        return a + b  # 42 % done!"

    ids = tokenizer(text)["input_ids"]

    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_parameter_count_matches_metadata(starter_path: Path, model: LlamaForCausalLM) -> None:
    metadata = json.loads((starter_path / METADATA_FILE).read_text())

    assert metadata["parameter_count"] == sum(parameter.numel() for parameter in model.parameters())
    assert metadata["name"] == STARTER_MODEL_NAME
    assert metadata["architecture"] == "LlamaForCausalLM"
    assert metadata["context_length"] == 1024
    assert metadata["license"] == "Apache-2.0 (weights trained by this studio on its own corpus)"
    assert metadata["corpus_hash"] == corpus_hash(corpus_texts())


def test_studio_inspection_accepts_the_folder(starter_path: Path, metadata: dict[str, Any]) -> None:
    facts = inspect_model(starter_path)

    assert facts.architecture == "LlamaForCausalLM"
    assert facts.parameter_count == metadata["parameter_count"]
    assert facts.context_length == 1024
    assert "<|start_header_id|>" in facts.chat_template
    assert facts.license == metadata["license"]
    assert facts.description == metadata["description"]


def test_training_loss_dropped(metadata: dict[str, Any]) -> None:
    assert metadata["training_steps"] == DEFAULT_STEPS
    assert metadata["final_loss"] < metadata["initial_loss"] - 2.0


def test_greedy_generation_is_word_like(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase) -> None:
    vocabulary = {word for text in corpus_texts() for word in re.findall(r"[a-z']+", text.lower())}
    prompts = ["Here is a short guide to baking bread.", "Q: How often should I water my vegetable garden?\nA:"]
    words: list[str] = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
        text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
        for token in SPECIAL_TOKENS:
            text = text.replace(token, " ")
        words += [word for word in (re.sub(r"[^a-z']", "", raw.lower()) for raw in text.split()) if word]

    known = [word for word in words if word in vocabulary]
    assert len(words) >= 10, words
    assert len(known) / len(words) >= 0.6, words
    assert len(set(known)) >= 8, words  # not one word repeated


def test_same_seed_gives_identical_tokenizer_files(starter_path: Path, tmp_path: Path) -> None:
    again = create_starter_model(tmp_path / "again", steps=1, seed=0)

    for name in TOKENIZER_FILES:
        assert (Path(again.path) / name).read_bytes() == (starter_path / name).read_bytes(), name


def test_ensure_returns_the_existing_model_without_retraining(models_dir: Path, starter_path: Path) -> None:
    weights_written = (starter_path / "model.safetensors").stat().st_mtime_ns

    assert ensure_starter_model(models_dir) == starter_path
    assert (starter_path / "model.safetensors").stat().st_mtime_ns == weights_written


def test_interrupted_creation_leaves_no_model(tmp_path: Path) -> None:
    def interrupt(step: int, steps: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        create_starter_model(tmp_path / STARTER_MODEL_NAME, steps=5, progress=interrupt)

    assert list(tmp_path.iterdir()) == []
