"""The studio's CPU multi-LoRA kernels for vLLM (``vllm_plugin/atelier_vllm/cpu_lora.py``), against the
definition of LoRA computed row by row: each row gets ``scale · x · A[slot]ᵀ · B[slot]ᵀ`` of its own adapter
slot, and a base row (slot -1) gets nothing. The kernels are plain torch; that vLLM really runs them (and
answers as PEFT does) is tested on a real vLLM server in ``tests/test_serving_vllm.py``."""

from __future__ import annotations

import torch
from atelier_vllm.cpu_lora import expand, lora_linear, shrink, slot_choice

SLOTS, RANK, WIDTH = 4, 8, 16
# Rows on slots 2, base, 0, 3, base, 2: base rows among adapters, the last slot (3) in use.
INDICES = torch.tensor([2, -1, 0, 3, -1, 2])


def stacked(*shape: int, seed: int) -> torch.Tensor:
    """vLLM's layout of one layer's weights for every slot: [slots, 1, rows, columns]."""
    return torch.randn(SLOTS, 1, *shape, generator=torch.Generator().manual_seed(seed))


def by_row(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """LoRA's output row by row: each row through its own slot's A and B; zeros for base rows."""
    rows = [
        scale * x[row] @ a[slot, 0].T @ b[slot, 0].T if slot >= 0 else torch.zeros(b.shape[-2])
        for row, slot in enumerate(INDICES.tolist())
    ]
    return torch.stack(rows)


def test_each_row_gets_its_own_adapter_and_base_rows_get_nothing() -> None:
    x, a, b = torch.randn(len(INDICES), WIDTH), stacked(RANK, WIDTH, seed=1), stacked(12, RANK, seed=2)
    choice = slot_choice(INDICES, SLOTS, torch.float32)
    buffer = torch.zeros(len(INDICES), RANK)
    y = torch.ones(len(INDICES), 20)

    shrink(buffer, x, a, choice, scale=0.5)
    expand(y, buffer, b, choice, offset=5, size=12)

    expected = torch.ones(len(INDICES), 20)
    expected[:, 5:17] += by_row(x, a, b, 0.5)
    torch.testing.assert_close(y, expected)
    assert torch.equal(y[1], torch.ones(20)) and torch.equal(y[4], torch.ones(20))  # base rows untouched


def test_a_merged_layer_adds_each_slice_of_its_own_weights() -> None:
    # q/k/v as vLLM merges them: three slices of different widths, each with its own A and B per slot.
    x = torch.randn(len(INDICES), WIDTH)
    widths = (12, 6, 6)
    a = tuple(stacked(RANK, WIDTH, seed=10 + i) for i in range(3))
    b = tuple(stacked(width, RANK, seed=20 + i) for i, width in enumerate(widths))
    y = torch.zeros(len(INDICES), sum(widths))

    lora_linear(y, x, a, b, slot_choice(INDICES, SLOTS, torch.float32), 2.0, widths)

    expected = torch.cat([by_row(x, a[i], b[i], 2.0) for i in range(3)], dim=1)
    torch.testing.assert_close(y, expected)


def test_an_adapter_loaded_into_a_slot_is_used_from_the_next_call() -> None:
    # vLLM writes a newly loaded adapter into its slot in place; the kernels' copies of B must follow.
    x, a = torch.randn(len(INDICES), WIDTH), (stacked(RANK, WIDTH, seed=3),)
    b = (stacked(10, RANK, seed=4),)
    choice = slot_choice(INDICES, SLOTS, torch.float32)
    lora_linear(torch.zeros(len(INDICES), 10), x, a, b, choice, 1.0, (10,))

    b[0][2].copy_(torch.randn(1, 10, RANK))
    a[0][2].zero_()
    y = torch.zeros(len(INDICES), 10)
    lora_linear(y, x, a, b, choice, 1.0, (10,))

    torch.testing.assert_close(y, by_row(x, a[0], b[0], 1.0))
    assert torch.equal(y[0], torch.zeros(10))  # slot 2's A is now zero: its rows get nothing
