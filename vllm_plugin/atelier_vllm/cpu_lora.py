"""Multi-LoRA on vLLM's CPU backend: every adapter slot in one matrix product, and base rows left alone.

vLLM's CPU kernels (``vllm.lora.ops.torch_ops``, used by ``PunicaWrapperCPU``) apply LoRA by gathering each
token's adapter weights (``weights[indices]``, one copy of an A or B matrix per token) and multiplying them
one token at a time, after expanding the batch's segments to per-token indices (``repeat_interleave``) again
in every layer, and once per output slice of a merged layer. Two things follow:

* **Cost.** 16 streams on 8 rank-8 adapters of the starter model ran at less than half the base model's
  tokens/s; a profile put 40 % of the forward pass in those kernels, 16 % in the index expansion alone.
* **Base rows.** A base-model token has slot index -1, which ``weights[-1]`` reads as the last slot: in a
  batch that mixes base and adapter requests with every slot taken, base answers came out with that slot's
  adapter (the GPU kernels skip -1). The inference server worked around it with an identity adapter.

Here instead, once per step (``update_metadata``), each row's slot becomes a row of a one-hot matrix
``choice`` ([tokens, slots]; an all-zero row for the base model), and a layer's LoRA is two dense products
over every slot at once:

* shrink: ``every = x @ A_all.T`` ([tokens, slots × rank]; for a merged layer such as q/k/v, every slice's A
  too), then each row keeps its own slot's ``rank`` columns (multiplied by ``choice``, summed over slots);
* expand: those columns are spread back into their slot's place (``choice × buffer``) and multiplied by every
  slot's B at once (one block-diagonal matrix for the slices of a merged layer).

The side-by-side copies of A and B are made again only after vLLM writes into its stacked weights (a
tensor's ``_version`` counts in-place writes, which is how vLLM loads an adapter into a slot). Base rows
multiply by zeros, so they get exactly nothing; greedy answers equal those of vLLM's kernels. The extra
multiply-adds over unused slots are cheap at LoRA ranks next to a weight copy per token; the copies hold the
adapters' weights again (A once, B once per slice of a merged layer, zeros between: small at LoRA ranks).

``register`` patches ``PunicaWrapperCPU`` when vLLM runs on the CPU and is a version this was written
against (``SUPPORTED_VLLM``); otherwise it logs why and leaves vLLM as it is. The kernels are plain torch
functions so that they can be tested without vLLM (``tests/test_vllm_plugin.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from atelier_vllm import logger, written_for

# vLLM versions whose PunicaWrapperCPU has the methods and metadata patched here.
SUPPORTED_VLLM = ("0.32.0",)
# What vLLM's log shows when the kernels are in place (the inference server's tests look for it).
ACTIVE_MESSAGE = "atelier: CPU multi-LoRA kernels in place"

# (what, ids of the stacked tensors, dtype) → (those tensors, their _versions when copied, the copy); see _kept
_copies: dict[tuple[Any, ...], tuple[tuple[torch.Tensor, ...], tuple[int, ...], torch.Tensor]] = {}


def _kept(kind: str, tensors: tuple[torch.Tensor, ...], dtype: torch.dtype, build: Any) -> torch.Tensor:
    """``build()``'s copy of ``tensors``, made again only after vLLM wrote into one of them."""
    key = (kind, tuple(id(tensor) for tensor in tensors), dtype)
    versions = tuple(tensor._version for tensor in tensors)
    kept = _copies.get(key)
    if kept is not None and all(a is b for a, b in zip(kept[0], tensors, strict=True)) and kept[1] == versions:
        return kept[2]
    matrix = build().to(dtype).contiguous()
    _copies[key] = (tensors, versions, matrix)
    return matrix


def slot_choice(indices: torch.Tensor, slots: int, dtype: torch.dtype) -> torch.Tensor:
    """[rows, slots]: a 1 in each row's adapter slot, an all-zero row where the index is negative (the base)."""
    choice = torch.zeros(indices.shape[0], slots, dtype=dtype, device=indices.device)
    valid = (indices >= 0).to(dtype).unsqueeze(1)
    return choice.scatter_(1, indices.clamp(min=0).long().unsqueeze(1), valid)


def shrink(y: torch.Tensor, x: torch.Tensor, a_stacked: torch.Tensor, choice: torch.Tensor, scale: float) -> None:
    """``y[t, :rank] = scale * x[t] @ A[slot(t)].T``; zero for base rows. ``a_stacked``: [slots, (1,) rank, in]."""
    slots, rank, width = a_stacked.shape[0], a_stacked.shape[-2], a_stacked.shape[-1]
    weights = a_stacked.reshape(slots * rank, width)
    if weights.dtype != y.dtype:
        weights = weights.to(y.dtype)
    every = (x.to(y.dtype) @ weights.t()).view(-1, slots, rank)
    picked = torch.bmm(choice.to(y.dtype).unsqueeze(1), every).squeeze(1)
    y[:, :rank] = picked * scale


def _side_by_side(b_stacked: torch.Tensor) -> torch.Tensor:
    """Every slot's B ([slots, (1,) out, rank]) side by side: [out, slots × rank]."""
    slots, out, rank = b_stacked.shape[0], b_stacked.shape[-2], b_stacked.shape[-1]
    return b_stacked.reshape(slots, out, rank).permute(1, 0, 2).reshape(out, slots * rank)


def expand(
    y: torch.Tensor,
    x: torch.Tensor,
    b_stacked: torch.Tensor,
    choice: torch.Tensor,
    offset: int = 0,
    size: int | None = None,
    add: bool = True,
) -> None:
    """``y[t, offset:offset+size] (+)= x[t, :rank] @ B[slot(t)].T``; nothing added for base rows (and zeros
    written where ``add`` is false, as vLLM's kernel does). ``b_stacked``: [slots, (1,) out, rank]."""
    slots, out, rank = b_stacked.shape[0], b_stacked.shape[-2], b_stacked.shape[-1]
    matrix = _kept("b", (b_stacked,), y.dtype, lambda: _side_by_side(b_stacked))
    spread = (choice.to(y.dtype).unsqueeze(2) * x[:, :rank].to(y.dtype).unsqueeze(1)).reshape(-1, slots * rank)
    result = spread @ matrix.t()
    width = min(out, y.shape[1] - offset) if size is None else min(size, out)
    target = y[:, offset : offset + width]
    if add:
        target += result[:, :width]
    else:
        target.copy_(result[:, :width])


def lora_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    a_slices: tuple[torch.Tensor, ...],
    b_slices: tuple[torch.Tensor, ...],
    choice: torch.Tensor,
    scale: float,
    output_slices: tuple[int, ...],
) -> None:
    """``y[t, slice i] += scale * x[t] @ A_i[slot(t)].T @ B_i[slot(t)].T`` for every output slice of a merged
    layer (q/k/v, gate/up) in two products: every slice's A side by side, and every slice's B in one
    block-diagonal matrix. Base rows get nothing."""
    slices, slots, rank = len(a_slices), a_slices[0].shape[0], a_slices[0].shape[-2]
    dtype = y.dtype
    a_all = _kept("a", a_slices, dtype, lambda: torch.cat([a.reshape(slots * rank, a.shape[-1]) for a in a_slices]))

    def block() -> torch.Tensor:
        matrix = torch.zeros(sum(output_slices), slices * slots * rank, dtype=b_slices[0].dtype)
        row = 0
        for i, (b, width) in enumerate(zip(b_slices, output_slices, strict=True)):
            matrix[row : row + width, i * slots * rank : (i + 1) * slots * rank] = _side_by_side(b)[:width]
            row += width
        return matrix

    b_all = _kept("b-block", b_slices, dtype, block)
    picks = choice.to(dtype).view(-1, 1, slots, 1)
    every = (x.to(dtype) @ a_all.t()).view(-1, slices, slots, rank)
    picked = (every * picks).sum(2, keepdim=True) * scale
    spread = (picked * picks).reshape(-1, slices * slots * rank)
    y[:, : b_all.shape[0]] += spread @ b_all.t()


def register() -> None:
    """vLLM's general-plugin hook (every vLLM process calls it): patch the CPU wrapper where it applies."""
    try:
        import vllm
        from vllm.platforms import current_platform
    except ImportError:  # pragma: no cover - the plugin is only installed beside vLLM
        return
    if not current_platform.is_cpu():
        return
    if not written_for(vllm.__version__, SUPPORTED_VLLM, "CPU multi-LoRA kernels", "vLLM's own are used"):
        return
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    if getattr(PunicaWrapperCPU, "_atelier_patched", False):
        return
    _patch(PunicaWrapperCPU)
    logger.info(ACTIVE_MESSAGE)


def _patch(wrapper: Any) -> None:
    original_update = wrapper.update_metadata

    def update_metadata(self: Any, *args: Any, **kwargs: Any) -> None:
        original_update(self, *args, **kwargs)
        self._atelier_choices = {}

    def choice(self: Any, which: str, slots: int, dtype: torch.dtype) -> torch.Tensor:
        cached = self.__dict__.setdefault("_atelier_choices", {})
        key = (which, slots, dtype)
        if key not in cached:
            indices = self.token_lora_indices if which == "tokens" else self.sampler_indices
            cached[key] = slot_choice(indices, slots, dtype)
        return cached[key]

    def shrink_tokens(self: Any, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, scale: float) -> None:
        if self.no_lora:
            return
        shrink(y, x, w_t_all, self._atelier_choice("tokens", w_t_all.shape[0], y.dtype), scale)

    def expand_tokens(self: Any, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, add_inputs: bool) -> None:
        if self.no_lora:
            return
        expand(y, x, w_t_all, self._atelier_choice("tokens", w_t_all.shape[0], y.dtype), add=add_inputs)

    def expand_slice_tokens(
        self: Any, y: torch.Tensor, x: torch.Tensor, w_t_all: torch.Tensor, y_offset: int, y_slice_size: int,
        add_inputs: bool,
    ) -> None:  # fmt: skip
        if self.no_lora:
            return
        slots = w_t_all.shape[0]
        expand(y, x, w_t_all, self._atelier_choice("tokens", slots, y.dtype), y_offset, y_slice_size, add_inputs)

    def add_lora_logits(
        self: Any, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: torch.Tensor, lora_b_stacked: torch.Tensor,
        scale: float, *, buffer: torch.Tensor | None = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        if self.no_lora:
            return
        rows = y.view(-1, y.shape[-1])
        x = x.view(-1, x.shape[-1])
        if buffer is None:
            buffer = torch.zeros((x.size(0), lora_b_stacked.size(-1)), dtype=torch.float32, device=x.device)
        picks = self._atelier_choice("sampler", lora_a_stacked.shape[0], buffer.dtype)
        shrink(buffer, x, lora_a_stacked, picks, scale)
        expand(rows, buffer, lora_b_stacked, picks, add=True)

    def add_lora_linear(
        self: Any, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...], scale: float, output_slices: tuple[int, ...], *,
        buffer: Any = None, **kwargs: Any,
    ) -> None:  # fmt: skip
        if self.no_lora:
            return
        rows = y.view(-1, y.shape[-1])
        picks = self._atelier_choice("tokens", lora_a_stacked[0].shape[0], rows.dtype)
        lora_linear(rows, x.view(-1, x.shape[-1]), lora_a_stacked, lora_b_stacked, picks, scale, output_slices)

    wrapper.update_metadata = update_metadata
    wrapper.add_lora_linear = add_lora_linear
    wrapper._atelier_choice = choice
    wrapper._shrink_prefill = wrapper._shrink_decode = shrink_tokens
    wrapper._expand_prefill = wrapper._expand_decode = expand_tokens
    wrapper._expand_slice_prefill = wrapper._expand_slice_decode = expand_slice_tokens
    wrapper.add_lora_logits = add_lora_logits
    wrapper._atelier_patched = True
