"""Speed settings of a training run (``training_app.engine.speed``): what each becomes on a CPU worker and why,
and the varlen attention that keeps packed rows apart. Whole runs with each setting: test_training_engine.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training_app.engine import speed
from training_app.engine.config import RunConfig


def config(**overrides: Any) -> RunConfig:
    values: dict[str, Any] = {
        "model_path": "/models/m",
        "train_path": "/data/train.jsonl",
        "output_dir": "/out",
        "run_dir": "/run",
        "packing": True,
        **overrides,
    }
    return RunConfig.from_dict(values)


def resolved(**overrides: Any) -> dict[str, speed.Setting]:
    return {s.name: s for s in speed.resolve(config(**overrides), cuda=False, model_type="llama")}


def test_on_cpu_liger_is_off_and_says_it_needs_cuda() -> None:
    liger = resolved(liger="on")["liger"]

    assert liger.value == "off"
    assert "asked for on, but" in liger.reason and "CUDA" in liger.reason


def test_packed_rows_get_varlen_attention_and_padded_rows_sdpa() -> None:
    assert resolved()["attention"].value == "varlen"
    assert "one causal SDPA call per packed row" in resolved()["attention"].reason
    unpacked = resolved(packing=False, attention="varlen")["attention"]
    assert unpacked.value == "sdpa" and "not packed" in unpacked.reason


def test_on_cuda_in_bf16_varlen_uses_the_flash_kernel_where_torch_has_it() -> None:
    kernel, why = speed.varlen_kernel(cuda=True, half=True)

    assert kernel == "PyTorch's flash varlen kernel" and why == "CUDA in half precision"
    assert speed.varlen_kernel(cuda=True, half=False)[1] == "the flash varlen kernel takes bf16 or fp16 only"


def test_compile_is_off_unless_asked_for_and_says_why() -> None:
    assert resolved()["compile"].value == "off"
    assert "choose on" in resolved()["compile"].reason
    assert resolved(torch_compile="on")["compile"].value == "on"


def test_the_optimizer_is_fused_adamw_where_this_torch_has_it_on_the_cpu() -> None:
    assert resolved()["optimizer"].value == "adamw_torch_fused"
    assert resolved(optimizer="adamw_torch")["optimizer"].value == "adamw_torch"


def test_memory_settings_carry_the_reason_the_launch_gave() -> None:
    settings = resolved(gradient_checkpointing=True, memory_reason="without it: 90 GiB of 80 GiB")

    assert settings["activation_checkpointing"].value == "on"
    assert settings["activation_checkpointing"].reason == "without it: 90 GiB of 80 GiB"


def test_an_unknown_choice_is_a_field_error() -> None:
    errors = config(liger="fast", attention="flash").validate(cuda_available=False, check_files=False)

    assert errors["liger"] == "choose one of auto, on, off"
    assert errors["attention"] == "choose one of auto, sdpa, varlen"


def test_the_settings_are_written_and_read_back(tmp_path: Path) -> None:
    settings = speed.resolve(config(), cuda=False)

    speed.write(settings, tmp_path)

    assert speed.read(tmp_path) == settings
    assert speed.read(tmp_path / "elsewhere") == []


def test_sequence_bounds_start_a_row_wherever_the_position_is_zero() -> None:
    import torch

    bounds = speed.sequence_bounds(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]))

    assert bounds.tolist() == [0, 3, 5, 9]


@pytest.fixture(scope="module")
def tiny_llama() -> Any:
    """A two-layer Llama with grouped-query attention (4 query heads, 2 key/value heads), random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=100,
        use_cache=False,
    )
    return LlamaForCausalLM(shape)


def test_varlen_attention_gives_each_packed_row_what_it_gets_alone(tiny_llama: Any) -> None:
    import torch

    rows = [torch.randint(0, 100, (length,), generator=torch.Generator().manual_seed(length)) for length in (7, 12, 5)]
    tiny_llama.set_attn_implementation("sdpa")
    alone = torch.cat([tiny_llama(input_ids=row[None]).logits[0] for row in rows])
    packed_ids = torch.cat(rows)[None]
    positions = torch.cat([torch.arange(len(row)) for row in rows])[None]

    tiny_llama.set_attn_implementation(speed.register_varlen_attention())
    try:
        packed = tiny_llama(input_ids=packed_ids, position_ids=positions).logits[0]
    finally:
        tiny_llama.set_attn_implementation("sdpa")

    assert torch.allclose(packed, alone, atol=1e-5)


def test_varlen_attention_gradients_match_the_rows_alone(tiny_llama: Any) -> None:
    import torch

    rows = [torch.randint(0, 100, (length,), generator=torch.Generator().manual_seed(length)) for length in (9, 4)]

    def gradient(packed: bool) -> torch.Tensor:
        tiny_llama.zero_grad()
        if packed:
            ids = torch.cat(rows)[None]
            positions = torch.cat([torch.arange(len(row)) for row in rows])[None]
            tiny_llama(input_ids=ids, position_ids=positions).logits.sum().backward()
        else:
            sum(tiny_llama(input_ids=row[None]).logits.sum() for row in rows).backward()
        return tiny_llama.model.layers[0].self_attn.q_proj.weight.grad.clone()

    tiny_llama.set_attn_implementation("sdpa")
    expected = gradient(packed=False)
    tiny_llama.set_attn_implementation(speed.register_varlen_attention())
    try:
        got = gradient(packed=True)
    finally:
        tiny_llama.set_attn_implementation("sdpa")

    assert torch.allclose(got, expected, atol=1e-4)


def test_generation_under_varlen_attention_matches_sdpa(tiny_llama: Any) -> None:
    import torch

    prompt = torch.tensor([[1, 2, 3, 4], [0, 5, 6, 7]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])  # a padded prompt takes SDPA's mask path
    tiny_llama.set_attn_implementation("sdpa")
    expected = tiny_llama.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=6, do_sample=False)
    tiny_llama.set_attn_implementation(speed.register_varlen_attention())
    try:
        got = tiny_llama.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=6, do_sample=False)
    finally:
        tiny_llama.set_attn_implementation("sdpa")

    assert got.tolist() == expected.tolist()


def test_automatic_precision_is_fp32_on_the_cpu_and_replaces_auto_in_the_run() -> None:
    run = config(precision="auto", deepspeed="zero2", use_cpu=True)
    settings = speed.resolve(run, cuda=False)

    assert run.validate(cuda_available=False, check_files=False).get("precision") is None
    assert settings[0] == speed.Setting("precision", "fp32", settings[0].reason)
    assert "on the CPU bf16 is slower than fp32" in settings[0].reason
    assert speed.with_precision(run, settings).precision == "fp32"
    assert speed.with_precision(config(precision="bf16"), settings).precision == "bf16"


def _reference_varlen(
    query: Any, key: Any, value: Any, cu_q: Any, cu_k: Any, max_q: int, max_k: int, **options: Any
) -> Any:
    """``torch.nn.attention.varlen.varlen_attn``'s contract (tokens × heads × head size, cumulative row starts,
    causal by ``window_size=(-1, 0)`` or ``is_causal``), computed with SDPA per row: the flash kernel is
    CUDA-only, and this checks the layout the engine hands it on the CPU."""
    import torch.nn.functional as F

    assert options.get("window_size", (-1, 0)) == (-1, 0) and options.get("is_causal", True)
    assert key.shape[1] == query.shape[1] or options.get("enable_gqa")
    rows = []
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=options["scale"], enable_gqa=True)
        rows.append(out[0].transpose(0, 1))
    import torch

    return torch.cat(rows)


def _reference_varlen_2_10(query: Any, key: Any, value: Any, cu_q: Any, cu_k: Any, max_q: int, max_k: int, *,
                           scale: float | None = None, is_causal: bool = False) -> Any:  # fmt: skip
    """torch 2.10's signature: ``is_causal`` and no ``enable_gqa`` (keys and values must have every head)."""
    assert is_causal and key.shape[1] == query.shape[1]
    return _reference_varlen(query, key, value, cu_q, cu_k, max_q, max_k, scale=scale)


@pytest.mark.parametrize("kernel", [_reference_varlen, _reference_varlen_2_10], ids=["torch-2.11", "torch-2.10"])
def test_the_flash_kernels_layout_gives_what_each_row_gets_alone(kernel: Any) -> None:
    import torch

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, 19, 8, generator=generator)
    key, value = (torch.randn(1, 2, 19, 8, generator=generator) for _ in range(2))  # grouped-query: 2 kv heads
    positions = torch.cat([torch.arange(7), torch.arange(12)])[None]

    got = speed.flash_varlen(kernel, query, key, value, speed.sequence_bounds(positions), scaling=0.3)
    expected, _ = speed.varlen_attention_forward(None, query, key, value, None, scaling=0.3, position_ids=positions)

    assert got.shape == (1, 19, 4, 8)
    assert torch.allclose(got, expected, atol=1e-6)
