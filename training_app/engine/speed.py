"""Speed settings of a training run: what each one is set to on this machine, and why.

The run config asks for each setting ("auto", "on", "off", or a name); ``resolve`` turns that into what
the trainer will really do on this worker, with the reason in words. Nothing that cannot work here is
attempted: a setting that needs CUDA, or a package this worker lacks, is turned off and says so. The
trainer prints the list, writes it to ``speed.json`` in the run folder and the job page shows it under
"Advanced".

- **precision**: "auto" is bf16 on a GPU that has it (Ampere and later), fp16 on an older one, fp32 on the CPU.
- **attention**: with packing, several rows share one sequence of the micro-batch. transformers' SDPA path
  then builds a block-diagonal mask over the whole flattened micro-batch (measured on an H200: 2.3× slower
  than no packing on 1B LoRA). ``varlen`` keeps the rows apart by their position ids instead: PyTorch's
  flash varlen kernel on CUDA in half precision, else one causal SDPA call per packed row. Both are exact.
- **liger**: Liger's fused kernels (linear + cross-entropy without the full logits, RMSNorm, RoPE, SwiGLU)
  through transformers' ``use_liger_kernel``, for fine-tuning and continued pretraining. Triton kernels:
  CUDA only.
- **optimizer**: PyTorch's fused AdamW where this torch has it for the device, else the loop one.
- **compile**: ``torch.compile`` of the model. Off unless asked: its compile time is paid by every run and
  it has not been measured to pay off on the studio's scenarios yet.

Activation checkpointing and the micro-batch are memory settings: the launch form's estimate chooses them
(``training_app.estimator.memory_plan``); the trainer reports them with the reason it was given.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from training_app.engine.config import RunConfig

ATTENTION_CHOICES = ("auto", "sdpa", "varlen")
SWITCH_CHOICES = ("auto", "on", "off")
OPTIMIZER_CHOICES = ("auto", "adamw_torch", "adamw_torch_fused")
# The name the varlen attention is registered under in transformers' attention and mask interfaces.
VARLEN_ATTENTION = "atelier_varlen"
# Model types Liger patches through transformers' ``use_liger_kernel`` (liger_kernel.transformers.monkey_patch).
LIGER_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "olmo2"}
)
SPEED_FILE = "speed.json"
LABELS = {
    "activation_checkpointing": "Activation checkpointing",
    "micro_batch": "Micro-batch",
    "compile": "torch.compile",
    "liger": "Liger kernels",
}
# The stages trained by TRL's SFTTrainer, on a next-token loss: the only ones that pack rows.
LANGUAGE_MODELLING = ("sft", "pretrain")


@dataclass(frozen=True)
class Setting:
    """One speed setting as the run will use it: ``value`` is what runs, ``reason`` says why in words."""

    name: str
    value: str
    reason: str

    @property
    def label(self) -> str:
        """The setting's name in words, for pages."""
        return LABELS.get(self.name, self.name.replace("_", " ").capitalize())


def resolve(config: RunConfig, *, cuda: bool, model_type: str | None = None) -> list[Setting]:
    """The speed settings ``config`` gets on this worker (``cuda``: whether the run trains on a GPU)."""
    return [
        _precision(config, cuda=cuda),
        _attention(config, cuda=cuda),
        _liger(config, cuda=cuda, model_type=model_type),
        _optimizer(config, cuda=cuda),
        _compile(config),
        Setting(
            "activation_checkpointing",
            "on" if config.gradient_checkpointing else "off",
            config.memory_reason
            or ("asked for in the run's settings" if config.gradient_checkpointing else "not asked for"),
        ),
        Setting(
            "micro_batch",
            f"{config.per_device_batch_size} × {config.gradient_accumulation} accumulation",
            config.memory_reason or "as set in the run's settings",
        ),
    ]


def values(settings: list[Setting]) -> dict[str, str]:
    return {setting.name: setting.value for setting in settings}


def write(settings: list[Setting], run_dir: str | Path) -> None:
    """``speed.json`` in the run folder: the list, for the job page and the estimator."""
    path = Path(run_dir) / SPEED_FILE
    path.write_text(json.dumps([asdict(setting) for setting in settings], indent=2), encoding="utf-8")


def read(run_dir: str | Path) -> list[Setting]:
    """The settings a run recorded; empty for runs from before they were recorded."""
    path = Path(run_dir) / SPEED_FILE
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [Setting(str(row["name"]), str(row["value"]), str(row["reason"])) for row in rows]
    except (OSError, ValueError, KeyError, TypeError):
        return []


# ---- each setting ----------------------------------------------------------------------------------------


def _precision(config: RunConfig, *, cuda: bool) -> Setting:
    if config.precision != "auto":
        return Setting("precision", config.precision, "asked for")
    if not cuda:
        return Setting("precision", "fp32", "on the CPU bf16 is slower than fp32, and DeepSpeed there takes fp32 only")
    if bf16_supported():
        return Setting("precision", "bf16", "this GPU computes in bf16: tensor cores, half the activation memory")
    return Setting("precision", "fp16", "this GPU has no bf16 (older than Ampere): fp16 with loss scaling")


def bf16_supported() -> bool:
    """Whether this rank's GPU computes in bf16 (compute capability 8.0, Ampere, and later). Asks about the
    rank's own device, so that no rank sets up CUDA on GPU 0 before the distributed state picks its GPU."""
    import torch

    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(int(os.environ.get("LOCAL_RANK", "0")))[0] >= 8


def with_precision(config: RunConfig, settings: list[Setting]) -> RunConfig:
    """``config`` with an automatic precision replaced by what ``resolve`` chose."""
    if config.precision != "auto":
        return config
    chosen = next(setting.value for setting in settings if setting.name == "precision")
    return dataclasses.replace(config, precision=chosen)


def _attention(config: RunConfig, *, cuda: bool) -> Setting:
    packs = config.packing and config.stage in LANGUAGE_MODELLING
    if config.attention == "sdpa":
        why = "asked for; with packing SDPA masks the whole micro-batch" if packs else "asked for"
        return Setting("attention", "sdpa", why)
    if not packs:
        why = "asked for varlen, but rows are not packed: " if config.attention == "varlen" else ""
        return Setting("attention", "sdpa", why + "padded rows use SDPA's causal kernel")
    half = _precision(config, cuda=cuda).value in ("bf16", "fp16")
    kernel, why = varlen_kernel(cuda=cuda, half=half)
    return Setting("attention", "varlen", f"packed rows kept apart by their position ids: {kernel} ({why})")


def varlen_kernel(*, cuda: bool, half: bool) -> tuple[str, str]:
    """(which kernel the varlen attention uses, why) for a run on CUDA or not, in half precision or not."""
    if not cuda:
        return "one causal SDPA call per packed row", "the flash varlen kernel is CUDA only"
    if not half:
        return "one causal SDPA call per packed row", "the flash varlen kernel takes bf16 or fp16 only"
    if _torch_varlen() is None:
        return "one causal SDPA call per packed row", "this torch has no torch.nn.attention.varlen"
    return "PyTorch's flash varlen kernel", "CUDA in half precision"


def _liger(config: RunConfig, *, cuda: bool, model_type: str | None) -> Setting:
    if config.liger == "off":
        return Setting("liger", "off", "asked for")
    off = None
    if not cuda:
        off = "Liger's kernels are Triton kernels for CUDA; this run trains on the CPU"
    elif config.stage not in LANGUAGE_MODELLING:
        off = f"only fine-tuning and continued pretraining apply Liger here; this is {config.stage.upper()}"
    elif importlib.util.find_spec("liger_kernel") is None:
        off = "liger-kernel is not installed on this worker"
    elif model_type is not None and model_type not in LIGER_MODEL_TYPES:
        off = f"Liger has no kernels for the {model_type} architecture"
    if off is not None:
        return Setting("liger", "off", ("asked for on, but " if config.liger == "on" else "") + off)
    return Setting("liger", "on", "fused linear + cross-entropy (no full logits), RMSNorm, RoPE and SwiGLU kernels")


def _optimizer(config: RunConfig, *, cuda: bool) -> Setting:
    if config.deepspeed in ("zero3_offload",):
        return Setting("optimizer", "deepspeed_cpu_adam", "ZeRO-3 with CPU offload steps DeepSpeed's CPU Adam")
    if config.optimizer != "auto":
        return Setting("optimizer", config.optimizer, "asked for")
    if fused_adamw_available(cuda=cuda):
        return Setting("optimizer", "adamw_torch_fused", "PyTorch's fused AdamW: one kernel for all parameters")
    return Setting("optimizer", "adamw_torch", "this torch has no fused AdamW for the device")


def fused_adamw_available(*, cuda: bool) -> bool:
    """Whether this torch steps a fused AdamW on the run's device: always on CUDA (torch 2.0 and later; not
    probed, so that no memory is taken on a GPU before the run picks it), tried on the CPU (torch 2.4)."""
    import torch

    if cuda:
        return True
    try:
        parameter = torch.nn.Parameter(torch.zeros(1))
        parameter.grad = torch.zeros_like(parameter)
        torch.optim.AdamW([parameter], fused=True).step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def _compile(config: RunConfig) -> Setting:
    if config.torch_compile == "on":
        return Setting("compile", "on", "asked for: the first steps pay the compile time")
    if config.torch_compile == "off":
        return Setting("compile", "off", "asked for")
    return Setting("compile", "off", "not yet measured to pay off on these models; choose on to try it")


# ---- varlen attention -------------------------------------------------------------------------------------


# Set once the flash varlen kernel has refused this process's inputs (the run then keeps the per-row loop).
_flash_refused: list[str] = []


def _torch_varlen() -> Any:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def register_varlen_attention() -> str:
    """Register the varlen attention with transformers (idempotent); returns its ``attn_implementation`` name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def mask(
        *, attention_mask: torch.Tensor | None = None, q_length: int = 0, kv_length: int = 0, **kwargs: Any
    ) -> Any:
        # No padding and as many keys as queries (training, a prompt's first pass): the attention needs no
        # mask, it is causal per packed row. Anything else (padding, a cache) gets SDPA's mask, and the
        # attention hands it to SDPA.
        if attention_mask is None and q_length == kv_length:
            return None
        return sdpa_mask(attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, **kwargs)

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, mask)
    return VARLEN_ATTENTION


def sequence_bounds(position_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative starts of the rows packed in ``position_ids`` (flattened), ending with its length (int32).

    A row starts wherever the position is 0; the first token always starts one.
    """
    import torch

    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=starts.device), starts])
    end = torch.tensor([flat.numel()], dtype=starts.dtype, device=starts.device)
    return torch.cat([starts, end]).to(torch.int32)


def varlen_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed row (query, key, value: batch × heads × tokens × head size).

    Returns batch × tokens × heads × head size, as transformers' attention functions do. Without position
    ids, with a mask (padding) or with a cache (queries and keys of different lengths) it is SDPA's.
    """
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, tokens, size = query.shape
    groups = heads // key.shape[1]
    bounds = sequence_bounds(position_ids.expand(batch, -1) if position_ids.shape[0] != batch else position_ids)
    kernel = None if _flash_refused else _torch_varlen()
    if kernel is not None and query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and dropout == 0.0:
        try:
            return flash_varlen(kernel, query, key, value, bounds, scaling=scaling), None
        except RuntimeError as error:  # a GPU or head size the flash kernel does not take: the exact loop below
            _flash_refused.append(str(error))
            print(f"varlen attention: the flash kernel refused ({error}); one SDPA call per packed row", flush=True)
    # One causal SDPA call per packed row: exact, and no mask over the whole micro-batch.
    flat_q, flat_k, flat_v = (t.transpose(0, 1).reshape(1, t.shape[1], -1, size) for t in (query, key, value))
    pieces = [
        F.scaled_dot_product_attention(
            flat_q[:, :, start:end],
            flat_k[:, :, start:end],
            flat_v[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=groups > 1,
        )
        for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
    ]
    out = torch.cat(pieces, dim=2)  # 1, heads, batch · tokens, head size
    return out.reshape(heads, batch, tokens, size).permute(1, 2, 0, 3), None


def flash_varlen(
    kernel: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: torch.Tensor,
    *,
    scaling: float | None,
) -> torch.Tensor:
    """Causal attention within each packed row through ``kernel`` (``torch.nn.attention.varlen.varlen_attn``'s
    contract: tokens × heads × head size, cumulative row starts); in and out as ``varlen_attention_forward``."""
    batch, heads, tokens, size = query.shape
    groups = heads // key.shape[1]
    # Tokens, heads, head size: all rows of the micro-batch after each other.
    flat_q, flat_k, flat_v = (t.transpose(1, 2).reshape(-1, t.shape[1], size) for t in (query, key, value))
    parameters = inspect.signature(kernel).parameters
    options: dict[str, Any] = {"scale": scaling}
    if "window_size" in parameters:  # torch 2.11 and later
        options["window_size"] = (-1, 0)
    else:  # torch 2.10
        options["is_causal"] = True
    if groups > 1:
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            flat_k, flat_v = (t.repeat_interleave(groups, dim=1) for t in (flat_k, flat_v))
    longest = int((bounds[1:] - bounds[:-1]).max())
    out = kernel(flat_q, flat_k, flat_v, bounds, bounds, longest, longest, **options)
    return out.reshape(batch, tokens, heads, size)
