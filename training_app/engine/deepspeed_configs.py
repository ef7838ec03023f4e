"""DeepSpeed ZeRO configurations for the studio's presets, and validation of a user's custom one.

The dicts are passed for real to ``TrainingArguments(deepspeed=...)``. Values set to ``"auto"`` are filled
by transformers' DeepSpeed integration from the training arguments (micro-batch, accumulation, clipping,
precision) or from the model's hidden size (bucket sizes), so one preset fits every model.

- ``zero2``: optimizer state and gradients partitioned across ranks; the preset for LoRA on many GPUs.
- ``zero3``: parameters partitioned too, gathered layer by layer; 16-bit weights are gathered on save so
  the saved model is an ordinary safetensors checkpoint.
- ``zero3_offload``: ZeRO-3 with optimizer state and parameters in CPU memory (DeepSpeed's CPU Adam,
  JIT-built with gcc on first use): the slowest, for models that do not fit otherwise.

On CPU hosts (``use_cpu=True``, gloo) ``overlap_comm`` is off: it needs CUDA streams.
"""

from __future__ import annotations

import copy
from typing import Any

# Top-level sections of a DeepSpeed JSON config (https://www.deepspeed.ai/docs/config-json/) that a
# training run may set. DeepSpeed itself ignores unknown top-level keys silently, so a typo such as
# "zero_optimisation" would run without ZeRO: this allow-list turns it into a field error instead.
# Sections with a pydantic model in DeepSpeed (zero_optimization, bf16, fp16, ...) are checked by it.
TOP_LEVEL_KEYS = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "optimizer",
        "scheduler",
        "zero_optimization",
        "zero_allow_untested_optimizer",
        "zero_force_ds_cpu_optimizer",
        "bf16",
        "bfloat16",
        "fp16",
        "amp",
        "torch_autocast",
        "communication_data_type",
        "prescale_gradients",
        "gradient_predivide_factor",
        "sparse_gradients",
        "steps_per_print",
        "wall_clock_breakdown",
        "dump_state",
        "memory_breakdown",
        "activation_checkpointing",
        "aio",
        "flops_profiler",
        "comms_logger",
        "tensorboard",
        "wandb",
        "csv_monitor",
        "checkpoint",
        "data_types",
        "seq_parallel_communication_data_type",
        "disable_allgather",
        "dataloader_drop_last",
        "elasticity",
        "tensor_parallel",
    }
)

_PRECISION_AUTO = {"bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}
_BATCH_AUTO = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
    "steps_per_print": 1_000_000,  # the trainer's own callback reports progress
}


def zero2(*, cuda: bool = True) -> dict[str, Any]:
    """ZeRO stage 2: partitioned optimizer state and gradients."""
    return {
        **_BATCH_AUTO,
        **copy.deepcopy(_PRECISION_AUTO),
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": cuda,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "allgather_partitions": True,
            "allgather_bucket_size": 200_000_000,
            "reduce_bucket_size": "auto",
        },
    }


def zero3(*, cuda: bool = True) -> dict[str, Any]:
    """ZeRO stage 3: partitioned parameters as well; full 16-bit weights gathered when saving."""
    return {
        **_BATCH_AUTO,
        **copy.deepcopy(_PRECISION_AUTO),
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": cuda,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": 1_000_000_000,
            "stage3_max_reuse_distance": 1_000_000_000,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    }


def zero3_offload(*, cuda: bool = True) -> dict[str, Any]:
    """ZeRO-3 with optimizer state and parameters offloaded to CPU memory."""
    config = zero3(cuda=cuda)
    config["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    config["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    return config


PRESETS = {"zero2": zero2, "zero3": zero3, "zero3_offload": zero3_offload}


def build(choice: str, custom: dict[str, Any] | None = None, *, cuda: bool = True) -> dict[str, Any] | None:
    """The DeepSpeed dict for a run config's ``deepspeed`` choice, or None for "none"."""
    if choice == "none":
        return None
    if choice == "custom":
        return copy.deepcopy(custom or {})
    return PRESETS[choice](cuda=cuda)


def zero_stage(config: dict[str, Any] | None) -> int:
    """The ZeRO stage a DeepSpeed dict asks for (0 without DeepSpeed or without a zero section)."""
    if not config:
        return 0
    stage = (config.get("zero_optimization") or {}).get("stage", 0)
    return int(stage) if isinstance(stage, int) else 0


def validate_custom(custom: dict[str, Any]) -> str | None:
    """Why a custom DeepSpeed config is not acceptable, or None.

    Unknown top-level keys are refused against ``TOP_LEVEL_KEYS``; the sections DeepSpeed models with
    pydantic (``zero_optimization``, ``bf16``, ``fp16``, monitors, ...) are checked by DeepSpeed's own
    ``DeepSpeedConfig``, which forbids unknown keys inside them. ``"auto"`` values are accepted where
    transformers fills them in; batch sizes are checked by the trainer against the real world size.
    """
    unknown = sorted(key for key in custom if key not in TOP_LEVEL_KEYS)
    if unknown:
        return (
            f"unknown DeepSpeed setting {', '.join(repr(key) for key in unknown)} (see deepspeed.ai/docs/config-json)"
        )
    try:
        from deepspeed.runtime.config import DeepSpeedConfig
    except ImportError:  # a web host without DeepSpeed: the allow-list above is all we can check
        return None
    candidate = _without_auto(copy.deepcopy(custom))
    # The world size is unknown here: check the batch arithmetic for one process only.
    candidate.pop("train_batch_size", None)
    candidate.setdefault("train_micro_batch_size_per_gpu", 1)
    candidate.setdefault("gradient_accumulation_steps", 1)
    try:
        DeepSpeedConfig(candidate)
    except Exception as exc:  # pydantic ValidationError, AssertionError, ValueError from DeepSpeed's checks
        return f"DeepSpeed rejects this configuration: {_pydantic_summary(exc)}"
    return None


def _without_auto(value: Any) -> Any:
    """Drop ``"auto"`` entries (transformers fills them at launch); DeepSpeed's defaults stand in for them."""
    if isinstance(value, dict):
        return {key: _without_auto(item) for key, item in value.items() if item != "auto"}
    return value


def _pydantic_summary(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            details = errors()
        except Exception:  # not a pydantic error after all
            details = None
        if details:
            model = getattr(exc, "title", "")
            section = {
                "DeepSpeedZeroConfig": "zero_optimization",
                "DeepSpeedBF16Config": "bf16",
                "DeepSpeedFP16Config": "fp16",
                "DeepSpeedZeroOffloadParamConfig": "zero_optimization.offload_param",
                "DeepSpeedZeroOffloadOptimizerConfig": "zero_optimization.offload_optimizer",
            }.get(model, model)
            parts = []
            for detail in details[:3]:
                location = ".".join(str(part) for part in detail.get("loc", ()))
                key = f"{section}.{location}" if section and location else section or location
                message = "unknown key" if detail.get("type") == "extra_forbidden" else detail.get("msg", "")
                parts.append(f"{key}: {message}")
            return "; ".join(parts)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
