"""The pre-launch estimator against real runs: peak memory measured on this CPU and PERF.md's H100 figures.

The CPU cases run the real trainer (``python -m training_app.engine``, its own process so the peak RSS is
that run's) on Llama models of three shapes, chosen so that a different term dominates each: the process
baseline (the starter model), the weights and optimizer state (a 27M-parameter full fine-tune), and the
logits (a 32k vocabulary at micro-batch 8 × 256 tokens). Each estimate must be within ±25%.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training_app.estimator import GIB, ModelShape, Pool, achieved_flops_per_second, estimate, trainable_parameters

ROOT = Path(__file__).resolve().parent.parent
CPU = Pool("cpu", "CPU", "cpu", 1, 8 * GIB, 0.1e12, 0.2)
H100 = Pool("h100", "1× H100 80GB", "cuda", 1, 80 * GIB, 989e12, 0.2)
# The shapes of ../shared/bench/hf_baseline.py, whose runs gave PERF.md's figures.
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True,
            "max_position_embeddings": 2048}  # fmt: skip
LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 2048}  # fmt: skip
TINY = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 300}  # fmt: skip


def within(estimated: float, measured: float, tolerance: float = 0.25) -> bool:
    return abs(estimated - measured) <= tolerance * measured


# ---- against real CPU runs ----------------------------------------------------------------------------


def _model(folder: Path, starter: Path, **shape: Any) -> Path:
    """A random Llama of ``shape`` with the starter model's tokenizer, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "model.safetensors").exists():
        return folder
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=512, pad_token_id=5, bos_token_id=0, eos_token_id=1, **shape)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (starter / name).exists():
            shutil.copy(starter / name, folder / name)
    return folder


def _measure(model: Path, tmp_path: Path, **overrides: Any) -> tuple[dict[str, Any], int]:
    """Run the trainer for 2 steps on raw text (packed: every micro-batch is exactly b × s tokens)."""
    rows = [json.loads(line) for line in (ROOT / "datasets_app/samples/raw_text.jsonl").read_text().splitlines()]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": row["text"]}) + "\n" for row in rows * 8), encoding="utf-8")
    config = {
        "model_path": str(model), "train_path": str(train), "output_dir": str(tmp_path / "out"),
        "run_dir": str(tmp_path / "run"), "kind": "text", "stage": "pretrain", "method": "lora",
        "max_steps": 2, "per_device_batch_size": 2, "max_seq_length": 128, "packing": True, "save_steps": 1000,
        "use_cpu": True, "generation_prompts": 0, "lora": {"dropout": 0.05}, **overrides,
    }  # fmt: skip
    (tmp_path / "run.json").write_text(json.dumps(config), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "training_app.engine", "--config", str(tmp_path / "run.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    result_file = tmp_path / "run" / "result.json"
    assert result_file.exists(), done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(result_file.read_text())
    return config, int(result["peak_memory_bytes"])


CASES: dict[str, tuple[dict[str, Any] | None, dict[str, Any]]] = {
    # name: (model shape, run overrides)
    "starter LoRA (process baseline)": (None, {}),
    "27M full fine-tune (weights + Adam)": (
        {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
         "num_key_value_heads": 8, "vocab_size": 4096},
        {"method": "full", "lora": {}},
    ),
    "32k vocabulary, 8 × 256 tokens (logits)": (
        {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 32000},
        {"per_device_batch_size": 8, "max_seq_length": 256},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_estimate_is_within_25_percent_of_a_real_runs_peak_memory(
    case: str, starter_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shape_values, overrides = CASES[case]
    models = tmp_path_factory.getbasetemp() / "estimator-models"
    if shape_values is None:
        model = starter_model_path
    else:
        model = _model(models / str(abs(hash(case))), starter_model_path, **shape_values)
    config, measured = _measure(model, tmp_path_factory.mktemp("run"), **overrides)
    shape = ModelShape.from_config(json.loads((model / "config.json").read_text()))
    rows = len((Path(config["train_path"])).read_text().splitlines())
    result = estimate(config, shape, CPU, dataset_rows=rows, dataset_tokens=rows * 400)

    print(f"{case}: estimated {result.memory_bytes / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB")
    assert within(result.memory_bytes, measured), (result.memory_breakdown, measured)


# ---- against PERF.md's H100 figures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "method", "micro_batch", "checkpointing", "measured_gib"),
    [
        (LLAMA_1B, "lora", 8, False, 54.6),
        (LLAMA_8B, "lora", 4, True, 29.4),
        (LLAMA_8B, "qlora", 4, True, 25.0),
    ],
    ids=["1b-lora", "8b-lora-ckpt", "8b-qlora"],
)
def test_estimate_is_within_25_percent_of_perf_md_h100_figures(
    shape: dict[str, Any], method: str, micro_batch: int, checkpointing: bool, measured_gib: float
) -> None:
    config = {
        "method": method, "precision": "bf16", "per_device_batch_size": micro_batch, "max_seq_length": 2048,
        "packing": True, "gradient_checkpointing": checkpointing,
        "lora": {"rank": 16, "target_modules": "all-linear", "dropout": 0.0},
    }  # fmt: skip
    result = estimate(config, ModelShape.from_config(shape), H100, dataset_rows=1000, dataset_tokens=2_048_000)

    assert within(result.memory_bytes / GIB, measured_gib), (result.memory_bytes / GIB, result.memory_breakdown)


# ---- the arithmetic --------------------------------------------------------------------------------------


def test_parameter_count_from_the_shape_matches_transformers() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    for tied in (True, False):
        values: dict[str, Any] = {**TINY, "tie_word_embeddings": tied}
        real = LlamaForCausalLM(LlamaConfig(**values)).num_parameters()
        assert ModelShape.from_config(values).parameter_count == real


def test_lora_trainable_parameters_match_peft() -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    values: dict[str, Any] = dict(TINY)
    model = get_peft_model(LlamaForCausalLM(LlamaConfig(**values)), LoraConfig(r=8, target_modules="all-linear"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable_parameters(ModelShape.from_config(values), "lora", {"rank": 8}) == trainable


def test_steps_tokens_time_and_cost_by_hand() -> None:
    shape = ModelShape.from_config(LLAMA_1B)
    config = {"method": "lora", "precision": "bf16", "per_device_batch_size": 4, "gradient_accumulation": 2,
              "max_seq_length": 1024, "epochs": 2.0}  # fmt: skip
    result = estimate(config, shape, H100, dataset_rows=1000, dataset_tokens=500_000, price_per_gpu_hour=3.0)

    assert result.optimizer_steps == 2 * 125  # 1000 rows / (4 x 2) per step, twice
    assert result.tokens_to_train == 1_000_000
    per_token = 4 * shape.parameter_count + 8 * shape.layers * shape.hidden_size * 1024 / 2
    assert result.seconds == pytest.approx(1_000_000 * per_token / (989e12 * 0.2), rel=1e-3, abs=0.01)
    assert result.cost == pytest.approx(round(result.seconds / 3600 * 3.0, 2))
    assert "assumed 20%" in result.throughput_source


def test_the_teams_own_runs_replace_the_assumed_speed() -> None:
    shape = ModelShape.from_config(LLAMA_1B)
    config = {"method": "lora", "max_seq_length": 512, "max_steps": 10}
    measured = achieved_flops_per_second(tokens_per_second=40_000, shape=shape, method="lora", devices=1)
    result = estimate(
        config, shape, H100, dataset_rows=100, dataset_tokens=51_200, observed_flops_per_second=[measured]
    )

    assert "measured on 1" in result.throughput_source
    assert result.seconds == pytest.approx(result.tokens_to_train / 40_000, rel=0.01, abs=0.01)


def test_what_does_not_fit_says_what_to_change() -> None:
    config = {"method": "full", "precision": "bf16", "per_device_batch_size": 8, "max_seq_length": 4096}
    result = estimate(config, ModelShape.from_config(LLAMA_8B), H100, dataset_rows=10, dataset_tokens=40_000)

    assert not result.fits
    assert result.verdict.startswith("Does not fit")
    assert "use LoRA" in result.verdict and "micro-batch 4" in result.verdict


def test_zero3_across_devices_and_qlora_lower_the_memory_per_device() -> None:
    shape = ModelShape.from_config(LLAMA_8B)
    two = Pool("h100x2", "2× H100", "cuda", 2, 80 * GIB, 989e12, 0.2)
    base = {"method": "full", "precision": "bf16", "per_device_batch_size": 1, "max_seq_length": 512}
    plain = estimate(base, shape, two, dataset_rows=10, dataset_tokens=5000)
    zero3 = estimate({**base, "deepspeed": "zero3"}, shape, two, dataset_rows=10, dataset_tokens=5000)
    assert zero3.memory_breakdown["weights"] == plain.memory_breakdown["weights"] // 2
    assert zero3.memory_bytes < plain.memory_bytes

    lora = estimate({**base, "method": "lora"}, shape, H100, dataset_rows=10, dataset_tokens=5000)
    qlora = estimate({**base, "method": "qlora"}, shape, H100, dataset_rows=10, dataset_tokens=5000)
    assert qlora.memory_breakdown["weights"] < lora.memory_breakdown["weights"] / 2
