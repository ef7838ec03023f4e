"""The training engine on CPU with the real libraries (TRL, PEFT, transformers, DeepSpeed, Accelerate).

The model is a tiny random Llama (hidden 64, 2 layers) with a BPE tokenizer trained here by the
``tokenizers`` library, saved as a local safetensors folder: nothing is downloaded. Runs are a few steps
at sequence length 64. Single-process runs without DeepSpeed run in this process; DeepSpeed, multi-process,
cancel and resume runs go through ``python -m training_app.engine`` or ``accelerate launch`` in their own
process group, as the studio's Celery task starts them. The first DeepSpeed run on a fresh machine
JIT-builds DeepSpeed's CPU communication op with gcc (about a minute, cached afterwards).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from training_app.engine.__main__ import main
from training_app.engine.config import ConfigError, RunConfig
from training_app.engine.reporting import ProgressClock
from training_app.engine.trainer import (
    COMPLETE_MARKER,
    is_complete_checkpoint,
    latest_complete_checkpoint,
    run,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
THINGS = ["sky", "grass", "sun", "apple", "cloud", "sea", "leaf", "stone", "river", "flower"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# ---- fixtures -------------------------------------------------------------------------------------------


def _sentences(count: int, seed: int) -> list[str]:
    pick = random.Random(seed).choice
    return [
        f"The {pick(THINGS)} is {pick(COLORS)} today and the {pick(THINGS)} looks {pick(COLORS)}." for _ in range(count)
    ]


def _chat_row(i: int) -> dict[str, Any]:
    thing, color = THINGS[i % len(THINGS)], COLORS[i % len(COLORS)]
    return {
        "messages": [
            {"role": "user", "content": f"What color is the {thing}?"},
            {"role": "assistant", "content": f"The {thing} is {color}."},
        ]
    }


def _preference_row(i: int) -> dict[str, Any]:
    thing, color, wrong = THINGS[i % len(THINGS)], COLORS[i % len(COLORS)], COLORS[(i + 3) % len(COLORS)]
    return {
        "prompt": [{"role": "user", "content": f"What color is the {thing}?"}],
        "chosen": [{"role": "assistant", "content": f"The {thing} is {color}."}],
        "rejected": [{"role": "assistant", "content": f"I do not know {wrong}."}],
    }


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny Llama with its own BPE tokenizer and chat template, and train/eval rows of every kind."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    base = tmp_path_factory.mktemp("tiny")
    special = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = _sentences(400, seed=0) + [f"What color is the {thing}?" for thing in THINGS]
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    model_dir = base / "model"
    tokenizer.save_pretrained(model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    assert (model_dir / "model.safetensors").is_file()
    return {
        "model": str(model_dir),
        "chat_train": _write_rows(base / "chat_train.jsonl", [_chat_row(i) for i in range(40)]),
        "chat_eval": _write_rows(base / "chat_eval.jsonl", [_chat_row(i) for i in range(40, 48)]),
        "preference_train": _write_rows(base / "pref_train.jsonl", [_preference_row(i) for i in range(24)]),
        "preference_eval": _write_rows(base / "pref_eval.jsonl", [_preference_row(i) for i in range(24, 28)]),
        "text_train": _write_rows(base / "text_train.jsonl", [{"text": s} for s in _sentences(40, seed=3)]),
        "text_eval": _write_rows(base / "text_eval.jsonl", [{"text": s} for s in _sentences(8, seed=4)]),
    }


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process runs on one thread: the tiny model gains nothing from two, and the cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(tiny: dict[str, str], folder: Path, **overrides: Any) -> RunConfig:
    """A chat LoRA run of a few steps at sequence length 64, on CPU, writing under ``folder``."""
    values: dict[str, Any] = {
        "model_path": tiny["model"],
        "train_path": tiny["chat_train"],
        "eval_path": tiny["chat_eval"],
        "output_dir": str(folder / "out"),
        "run_dir": str(folder / "run"),
        "kind": "chat",
        "stage": "sft",
        "method": "lora",
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "max_steps": 6,
        "learning_rate": 5e-3,
        "per_device_batch_size": 4,
        "max_seq_length": 64,
        "save_steps": 3,
        "logging_steps": 1,
        "use_cpu": True,
        "generation_prompts": 2,
        "generation_max_new_tokens": 8,
    }
    values.update(overrides)
    config = RunConfig.from_dict(values)
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    config.save(folder / "run.json")
    return config


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def metric_lines(config: RunConfig) -> list[dict[str, Any]]:
    path = Path(config.run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def training_losses(config: RunConfig) -> list[float]:
    return [line["loss"] for line in metric_lines(config) if line.get("loss") is not None]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def trainer_env() -> dict[str, str]:
    """The environment the studio gives a trainer process: one thread per process on this 2-core host."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def accelerate_command(config_path: Path, *, processes: int, deepspeed: bool, port: int) -> list[str]:
    """The launcher line the Celery task uses on CPU hosts (see training_app/engine/__main__.py)."""
    mode = ["--use_deepspeed"] if deepspeed else (["--multi_gpu"] if processes > 1 else ["--cpu"])
    return [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        *mode,
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        "-m",
        "training_app.engine",
        "--config",
        str(config_path),
    ]


def launch(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a trainer in its own process group, output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=trainer_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(process: subprocess.Popen[bytes], log: Path, *, timeout: float = 240) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the trainer did not finish in {timeout} s:\n{log.read_text()[-3000:]}")


def engine_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "training_app.engine", "--config", str(config_path)]


def wait_for(condition: Any, *, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the trainer exited early ({process.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def assert_process_group_gone(process: subprocess.Popen[bytes]) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)


def load_adapter(tiny: dict[str, str], folder: str | Path) -> Any:
    """Load a saved adapter over the base model the way the studio's inference server does."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny["model"], use_safetensors=True, trust_remote_code=False)
    return PeftModel.from_pretrained(base, str(folder))


# ---- runs -----------------------------------------------------------------------------------------------


def test_lora_sft_on_chat_rows_saves_a_safetensors_adapter_and_lowers_the_loss(
    tiny: dict[str, str], tmp_path: Path, one_thread: None
) -> None:
    config = make_config(tiny, tmp_path, max_steps=8, save_steps=4)

    outcome = run(config)

    assert (outcome.status, outcome.exit_code) == ("succeeded", 0)
    result = read_json(Path(config.run_dir) / "result.json")
    adapter = Path(result["artifacts"]["adapter"])
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not [p.name for p in adapter.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    assert (adapter / "tokenizer.json").is_file()
    losses = training_losses(config)
    assert len(losses) == 8
    assert losses[-1] < losses[0]
    assert result["train_loss_last"] < result["train_loss_first"]
    assert result["eval_loss_after"] < result["eval_loss_before"]
    assert result["perplexity_before"] > result["perplexity_after"] > 1
    assert len(result["generations"]) == 2
    assert {"prompt", "base", "tuned"} <= set(result["generations"][0])
    first_step = next(line for line in metric_lines(config) if line.get("loss") is not None)
    assert first_step["step"] == 1
    assert first_step["learning_rate"] > 0
    assert first_step["memory_bytes"] > 0 and first_step["memory_kind"] == "cpu_peak_rss"
    status = read_json(Path(config.run_dir) / "status.json")
    assert (status["phase"], status["step"], status["max_steps"]) == ("succeeded", 8, 8)
    assert is_complete_checkpoint(Path(config.output_dir) / "checkpoint-8")
    load_adapter(tiny, adapter)


def test_lora_sft_with_deepspeed_zero2_through_accelerate_launch(tiny: dict[str, str], tmp_path: Path) -> None:
    config = make_config(tiny, tmp_path, deepspeed="zero2")
    log = tmp_path / "train.log"

    process = launch(accelerate_command(tmp_path / "run.json", processes=1, deepspeed=True, port=free_port()), log)

    assert finish(process, log) == 0, log.read_text()[-3000:]
    result = read_json(Path(config.run_dir) / "result.json")
    assert result["hardware"]["zero_stage"] == 2
    # DeepSpeed wrote the optimizer state as its own ZeRO checkpoint: it really trained the model.
    assert list((Path(config.output_dir) / "checkpoint-6").glob("global_step6/*optim_states.pt"))
    assert (Path(result["artifacts"]["adapter"]) / "adapter_model.safetensors").is_file()
    losses = training_losses(config)
    assert losses[-1] < losses[0]


def test_full_fine_tune_with_deepspeed_zero3_through_accelerate_launch(tiny: dict[str, str], tmp_path: Path) -> None:
    config = make_config(tiny, tmp_path, deepspeed="zero3", method="full", learning_rate=1e-3)
    log = tmp_path / "train.log"

    process = launch(accelerate_command(tmp_path / "run.json", processes=1, deepspeed=True, port=free_port()), log)

    assert finish(process, log) == 0, log.read_text()[-3000:]
    result = read_json(Path(config.run_dir) / "result.json")
    assert result["hardware"]["zero_stage"] == 3
    assert result["trainable_parameters"] == result["total_parameters"]
    model_dir = Path(result["artifacts"]["model"])
    assert (model_dir / "model.safetensors").is_file()
    assert list((Path(config.output_dir) / "checkpoint-6").glob("global_step6/*optim_states.pt"))
    losses = training_losses(config)
    assert losses[-1] < losses[0]
    from transformers import AutoModelForCausalLM

    # ZeRO-3 gathered the partitioned weights into an ordinary model on save.
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    assert model.model.embed_tokens.weight.shape[1] == 64


def test_two_process_deepspeed_run_on_cpu_produces_an_adapter(tiny: dict[str, str], tmp_path: Path) -> None:
    config = make_config(tiny, tmp_path, deepspeed="zero2", per_device_batch_size=2)
    log = tmp_path / "train.log"

    process = launch(accelerate_command(tmp_path / "run.json", processes=2, deepspeed=True, port=free_port()), log)

    assert finish(process, log) == 0, log.read_text()[-3000:]
    result = read_json(Path(config.run_dir) / "result.json")
    assert result["hardware"]["processes"] == 2
    # ZeRO-2 partitioned the optimizer state over both ranks.
    shards = list((Path(config.output_dir) / "checkpoint-6").glob("global_step6/zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2
    assert (Path(result["artifacts"]["adapter"]) / "adapter_model.safetensors").is_file()
    losses = training_losses(config)
    assert losses[-1] < losses[0]


def test_dpo_on_preference_rows_produces_an_adapter(tiny: dict[str, str], tmp_path: Path, one_thread: None) -> None:
    config = make_config(
        tiny,
        tmp_path,
        kind="preference",
        stage="dpo",
        train_path=tiny["preference_train"],
        eval_path=tiny["preference_eval"],
        merge_adapter=True,
    )

    outcome = run(config)

    assert outcome.exit_code == 0
    result = read_json(Path(config.run_dir) / "result.json")
    assert (Path(result["artifacts"]["adapter"]) / "adapter_model.safetensors").is_file()
    assert (Path(result["artifacts"]["merged"]) / "model.safetensors").is_file()
    steps = [line for line in metric_lines(config) if line.get("loss") is not None]
    assert all("rewards/chosen" in line for line in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert result["perplexity_after"] is None  # a preference loss has no perplexity


def test_continued_pretraining_on_raw_text(tiny: dict[str, str], tmp_path: Path, one_thread: None) -> None:
    config = make_config(
        tiny,
        tmp_path,
        kind="text",
        stage="pretrain",
        method="full",
        packing=True,
        learning_rate=1e-3,
        train_path=tiny["text_train"],
        eval_path=tiny["text_eval"],
    )

    outcome = run(config)

    assert outcome.exit_code == 0
    result = read_json(Path(config.run_dir) / "result.json")
    assert (Path(result["artifacts"]["model"]) / "model.safetensors").is_file()
    assert result["eval_loss_after"] < result["eval_loss_before"]
    losses = training_losses(config)
    assert losses[-1] < losses[0]


def test_chat_sft_with_packing_trains_the_packed_conversations(
    tiny: dict[str, str], tmp_path: Path, one_thread: None
) -> None:
    config = make_config(tiny, tmp_path, packing=True, max_steps=4, save_steps=4)

    outcome = run(config)

    assert outcome.exit_code == 0, outcome.failure
    losses = training_losses(config)
    assert len(losses) == 4 and losses[-1] < losses[0]


# ---- cancel, SIGTERM, resume ----------------------------------------------------------------------------


# A stopped run that never exits fails the test instead of hanging it (a guard, not a measured time).
STOP_TIMEOUT = 120


def _first_training_metric(config: RunConfig) -> bool:
    return bool(training_losses(config))


def test_cancel_flag_stops_the_run_as_cancelled(tiny: dict[str, str], tmp_path: Path) -> None:
    config = make_config(tiny, tmp_path, max_steps=100_000, save_steps=100_000)
    log = tmp_path / "train.log"
    process = launch(engine_command(tmp_path / "run.json"), log)
    wait_for(lambda: _first_training_metric(config), timeout=120, process=process, log=log)

    (Path(config.run_dir) / "cancel").touch()
    returncode = finish(process, log, timeout=STOP_TIMEOUT)

    assert returncode == 3
    assert read_json(Path(config.run_dir) / "status.json")["phase"] == "cancelled"
    assert not (Path(config.run_dir) / "result.json").exists()
    assert_process_group_gone(process)


def test_sigterm_ends_the_run_as_cancelled(tiny: dict[str, str], tmp_path: Path) -> None:
    config = make_config(tiny, tmp_path, max_steps=100_000, save_steps=100_000)
    log = tmp_path / "train.log"
    process = launch(engine_command(tmp_path / "run.json"), log)
    wait_for(lambda: _first_training_metric(config), timeout=120, process=process, log=log)

    os.killpg(process.pid, signal.SIGTERM)

    assert finish(process, log, timeout=STOP_TIMEOUT) == 3
    status = read_json(Path(config.run_dir) / "status.json")
    assert status["phase"] == "cancelled"
    assert "SIGTERM" in status["message"]
    assert_process_group_gone(process)


def test_run_killed_with_sigkill_resumes_from_its_last_complete_checkpoint(
    tiny: dict[str, str], tmp_path: Path
) -> None:
    # Gradient accumulation makes each step slow enough to kill the run between checkpoints.
    config = make_config(tiny, tmp_path, max_steps=16, save_steps=4, gradient_accumulation=8)
    output = Path(config.output_dir)
    log = tmp_path / "first.log"
    process = launch(engine_command(tmp_path / "run.json"), log)
    wait_for(lambda: latest_complete_checkpoint(output) is not None, timeout=120, process=process, log=log)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = latest_complete_checkpoint(output)
    assert killed_at is not None
    steps_before_kill = len(training_losses(config))
    assert steps_before_kill < 16
    # A checkpoint cut off mid-write (no COMPLETE marker) must never be resumed from.
    torn = output / "checkpoint-15"
    torn.mkdir(exist_ok=True)
    (torn / "trainer_state.json").write_text((killed_at / "trainer_state.json").read_text())

    second_log = tmp_path / "second.log"
    assert finish(launch(engine_command(tmp_path / "run.json"), second_log), second_log) == 0

    result = read_json(Path(config.run_dir) / "result.json")
    assert result["resumed_from"] == str(killed_at)
    assert result["steps"] == 16
    assert not torn.exists()
    resumed_steps = [line["step"] for line in metric_lines(config) if line.get("loss") is not None]
    assert resumed_steps[steps_before_kill] == int(killed_at.name.split("-")[1]) + 1
    # The log history of the first attempt survived the kill (the loss before training comes from it).
    assert result["eval_loss_before"] is not None
    assert result["train_loss_last"] < result["train_loss_first"]


def test_a_checkpoint_with_a_missing_or_truncated_file_is_not_complete(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 100)
    assert not is_complete_checkpoint(folder)
    (folder / COMPLETE_MARKER).write_text(
        json.dumps({"files": {"trainer_state.json": 2, "adapter_model.safetensors": 100}})
    )
    assert is_complete_checkpoint(folder)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * 50)
    assert not is_complete_checkpoint(folder)


# ---- invalid configs and failures -----------------------------------------------------------------------


def test_invalid_configs_get_field_level_errors(tiny: dict[str, str], tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"lora": {"rank": 0}}, "lora.rank"),
        ({"learning_rate": -1e-4}, "learning_rate"),
        ({"max_seq_length": 4096}, "max_seq_length"),
        ({"stage": "dpo"}, "kind"),
        ({"deepspeed": "custom", "deepspeed_custom": {"zero_optimisation": {"stage": 2}}}, "deepspeed_custom"),
        ({"deepspeed": "custom", "deepspeed_custom": {"zero_optimization": {"bogus": 1}}}, "deepspeed_custom"),
        ({"method": "qlora"}, "method"),
    ]
    for overrides, field in cases:
        errors = make_config(tiny, tmp_path, **overrides).validate(cuda_available=False)
        assert field in errors, (overrides, errors)
    context_error = make_config(tiny, tmp_path, max_seq_length=4096).validate(cuda_available=False)
    assert "128" in context_error["max_seq_length"]
    qlora_error = make_config(tiny, tmp_path, method="qlora").validate(cuda_available=False)["method"]
    assert "CUDA" in qlora_error and "LoRA" in qlora_error
    unknown = make_config(
        tiny, tmp_path, deepspeed="custom", deepspeed_custom={"zero_optimization": {"stage": 2, "bogus": 1}}
    ).validate(cuda_available=False)["deepspeed_custom"]
    assert "zero_optimization.bogus" in unknown
    assert make_config(tiny, tmp_path).validate(cuda_available=False) == {}
    with pytest.raises(ConfigError) as unknown_field:
        RunConfig.from_dict({**make_config(tiny, tmp_path).to_dict(), "lora_rank": 8, "epochs": "two"})
    assert unknown_field.value.errors == {
        "lora_rank": "is not a setting of this trainer",
        "epochs": "has the wrong type (str)",
    }
    preset = make_config(tiny, tmp_path, deepspeed="custom", deepspeed_custom={"zero_optimization": {"stage": 3}})
    assert preset.validate(cuda_available=False) == {}


def test_feedback_data_and_kto_settings_get_field_level_errors(tiny: dict[str, str], tmp_path: Path) -> None:
    def errors(**overrides: Any) -> dict[str, str]:
        return make_config(tiny, tmp_path, **overrides).validate(cuda_available=False)

    assert "choose the KTO goal" in errors(kind="feedback", stage="sft")["kind"]
    assert "choose the KTO goal" in errors(kind="feedback", stage="dpo")["kind"]
    assert "labelled desirable or undesirable" in errors(kind="chat", stage="kto")["kind"]
    assert "micro-batch of 2" in errors(kind="feedback", stage="kto", per_device_batch_size=1)["per_device_batch_size"]
    assert "packing" in errors(kind="feedback", stage="kto", packing=True)
    assert "kto_desirable_weight" in errors(kind="feedback", stage="kto", kto_desirable_weight=-1.0)
    assert errors(kind="feedback", stage="kto", kto_undesirable_weight=2.0) == {}


def test_a_run_with_invalid_settings_fails_with_the_field_errors(tiny: dict[str, str], tmp_path: Path) -> None:
    config = make_config(tiny, tmp_path, lora={"rank": 0}, learning_rate=-1.0)

    assert main(["--config", str(tmp_path / "run.json")]) == 4

    failure = read_json(Path(config.run_dir) / "failure.json")
    assert failure["code"] == "bad_hyperparameters"
    assert "lora.rank" in failure["message"] and "learning_rate" in failure["message"]
    assert read_json(Path(config.run_dir) / "status.json")["phase"] == "failed"


def test_a_dataset_deleted_after_queueing_fails_as_a_missing_file(tiny: dict[str, str], tmp_path: Path) -> None:
    config = make_config(tiny, tmp_path, train_path=str(tmp_path / "gone.jsonl"))

    assert main(["--config", str(tmp_path / "run.json")]) == 4

    failure = read_json(Path(config.run_dir) / "failure.json")
    assert failure["code"] == "missing_file"
    assert "gone.jsonl" in failure["message"]
    assert "deleted" in failure["suggestion"]


def test_injected_out_of_memory_fails_with_a_suggestion_and_keeps_the_checkpoint(
    tiny: dict[str, str], tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from trl import SFTTrainer

    config = make_config(tiny, tmp_path, save_steps=2, per_device_batch_size=4)
    real_step = SFTTrainer.training_step
    calls = {"count": 0}

    def step_then_run_out_of_memory(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["count"] += 1
        if calls["count"] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", step_then_run_out_of_memory)

    assert main(["--config", str(tmp_path / "run.json")]) == 4

    failure = read_json(Path(config.run_dir) / "failure.json")
    assert failure["code"] == "out_of_memory"
    assert failure["message"] == "The GPU ran out of memory during training."
    assert "QLoRA" in failure["suggestion"]
    assert "micro-batch 2 with gradient accumulation 2" in failure["suggestion"]
    assert read_json(Path(config.run_dir) / "status.json")["phase"] == "failed"
    checkpoint = latest_complete_checkpoint(config.output_dir)
    assert checkpoint is not None and checkpoint.name == "checkpoint-2"
    load_adapter(tiny, checkpoint)


def test_disk_full_while_saving_fails_with_a_suggestion_and_keeps_the_previous_checkpoint(
    tiny: dict[str, str], tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trl import SFTTrainer

    config = make_config(tiny, tmp_path, save_steps=2)
    real_save = SFTTrainer._save_checkpoint
    calls = {"count": 0}

    def save_then_fill_the_disk(self: Any, model: Any, trial: Any) -> None:
        calls["count"] += 1
        if calls["count"] == 1:
            real_save(self, model, trial)
            return
        torn = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        torn.mkdir(parents=True, exist_ok=True)
        (torn / "adapter_model.safetensors").write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device", str(torn / "optimizer.pt"))

    monkeypatch.setattr(SFTTrainer, "_save_checkpoint", save_then_fill_the_disk)

    assert main(["--config", str(tmp_path / "run.json")]) == 4

    failure = read_json(Path(config.run_dir) / "failure.json")
    assert failure["code"] == "disk_full"
    assert failure["message"] == "The disk holding this run's checkpoints and model files is full."
    assert "Free space" in failure["suggestion"] and "resumes" in failure["suggestion"]
    checkpoint = latest_complete_checkpoint(config.output_dir)
    assert checkpoint is not None and checkpoint.name == "checkpoint-2"
    assert (Path(config.output_dir) / "checkpoint-4").exists()  # the torn one, ignored
    load_adapter(tiny, checkpoint)


def test_eta_follows_the_median_recent_step_and_ignores_a_slow_first_step() -> None:
    clock = ProgressClock()
    clock.start(0, now=0.0)
    for step, at in enumerate([30.0, 31.0, 32.0, 33.0, 34.0], start=1):  # a 30 s first step, then 1 s steps
        clock.step_done(step, now=at)
    assert clock.eta(5, 45) == 40.0  # 40 steps left at the median 1 s, not at the 6.8 s average
    for step in range(6, 26):  # another job shares the cores: steps take 2 s from now on
        clock.step_done(step, now=34.0 + 2 * (step - 5))
    assert clock.eta(25, 45) == 40.0  # 20 steps left at the new median 2 s


def test_a_trainers_peak_memory_is_its_own_not_the_process_that_started_it() -> None:
    """A Celery worker (or this test process) of several hundred MB starts the trainer: the trainer's reported
    peak must not include the parent's (``ru_maxrss`` survives ``execve``)."""
    import subprocess
    import sys

    ballast = bytearray(b"x") * (400 * 1024 * 1024)  # written, so resident
    code = "from training_app.engine.reporting import memory_in_use; print(memory_in_use()[0])"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)

    assert int(child.stdout) < 200 * 1024 * 1024 < len(ballast)


# ---- speed settings keep the loss ---------------------------------------------------------------------------

# The same rows, seed and global batch: a speed setting may change the order of floating-point sums, never
# what is computed. Measured here: identical to 1e-6 or closer; the tolerance leaves room for BLAS threading.
LOSS_TOLERANCE = 1e-4
SPEED_STEPS = 3


@pytest.fixture(scope="module")
def plain_packed_losses(tiny: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """The first losses of a packed run on transformers' own SDPA path (a mask over the packed micro-batch)."""
    config = make_config(
        tiny, tmp_path_factory.mktemp("plain"), packing=True, attention="sdpa", max_steps=SPEED_STEPS, eval_path=None
    )
    outcome = run(config)
    assert outcome.exit_code == 0, outcome.failure
    return training_losses(config)


@pytest.mark.parametrize(
    "speed_settings",
    [
        {"attention": "varlen"},
        {"attention": "varlen", "gradient_checkpointing": True},
        {"attention": "varlen", "per_device_batch_size": 2, "gradient_accumulation": 2},
    ],
    ids=["varlen", "varlen-checkpointing", "varlen-micro-batch-2x2"],
)
def test_a_speed_setting_keeps_the_first_losses_of_the_plain_packed_run(
    tiny: dict[str, str], tmp_path: Path, plain_packed_losses: list[float], speed_settings: dict[str, Any]
) -> None:
    config = make_config(tiny, tmp_path, packing=True, max_steps=SPEED_STEPS, eval_path=None, **speed_settings)

    outcome = run(config)

    assert outcome.exit_code == 0, outcome.failure
    losses = training_losses(config)
    assert len(losses) == len(plain_packed_losses) == SPEED_STEPS
    assert losses == pytest.approx(plain_packed_losses, abs=LOSS_TOLERANCE)
    recorded = {row["name"]: row for row in read_json(Path(config.run_dir) / "speed.json")}
    assert recorded["attention"]["value"] == "varlen"
    assert "one causal SDPA call per packed row" in recorded["attention"]["reason"]
