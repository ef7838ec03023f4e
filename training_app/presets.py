"""The run settings a person chooses, their defaults and help texts, and the presets that fill them.

One table (``SETTINGS``) drives the job form's "Advanced" section, the API's schema description and the
YAML view, so a setting's label, default and one-line help are written once. The values a job stores
(``TrainingJob.config``) are exactly these keys; the worker adds the file paths and turns them into the
trainer's ``RunConfig`` (``training_app.engine.config``), which validates them field by field.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

CONFIG_VERSION = 1
# Settings the studio reads at launch that the trainer never sees: the held-out share, and whether the
# estimate chooses the memory settings (it writes its choice into the trainer's settings).
LAUNCH_ONLY = frozenset({"eval_split", "memory_auto"})


@dataclass(frozen=True)
class Setting:
    """One run setting: its key (dotted for LoRA's), kind of value, default, label and one-line help."""

    key: str
    kind: str  # "int", "float", "bool", "choice", "text", "json", "json_list", "optional_int", "optional_float"
    default: Any
    label: str
    help: str
    choices: tuple[tuple[str, str], ...] = ()
    group: str = "Training"


STAGES = (
    ("sft", "Instruction / chat tuning (SFT)"),
    ("pretrain", "Continued pretraining on raw text"),
    ("dpo", "Preference tuning (DPO)"),
    ("kto", "Feedback tuning (KTO)"),
    ("grpo", "Reinforcement (GRPO): rewards grade sampled answers"),
)
METHODS = (
    ("lora", "LoRA: small adapter, base frozen"),
    ("qlora", "QLoRA: LoRA on a 4-bit base (CUDA only)"),
    ("full", "Full fine-tune: every weight"),
)
DEEPSPEED = (
    ("none", "Off"),
    ("zero2", "ZeRO-2: shard gradients and optimizer state"),
    ("zero3", "ZeRO-3: also shard the weights"),
    ("zero3_offload", "ZeRO-3 with CPU offload"),
    ("custom", "Custom JSON"),
)
SCHEDULERS = (
    ("linear", "Linear decay"),
    ("cosine", "Cosine"),
    ("constant", "Constant"),
    ("constant_with_warmup", "Constant after warmup"),
    ("cosine_with_restarts", "Cosine with restarts"),
    ("inverse_sqrt", "Inverse square root"),
)
# The group of GRPO's settings: the form shows it only when the Reinforcement goal is chosen.
REINFORCEMENT = "Reinforcement"
PRECISIONS = (
    ("auto", "Automatic: bf16 on GPUs that have it, fp16 on older ones, fp32 on the CPU"),
    ("fp32", "fp32 (CPU, safest)"),
    ("bf16", "bf16 (Ampere GPUs and newer)"),
    ("fp16", "fp16 (older GPUs)"),
)

SETTINGS: tuple[Setting, ...] = (
    Setting("stage", "choice", "sft", "Goal", "What the model should learn from the dataset.", STAGES, "Goal"),
    Setting("method", "choice", "lora", "Method", "Which weights change during training.", METHODS, "Method"),
    Setting(
        "lora.rank", "int", 16, "LoRA rank", "Size of the adapter; 8–64 is usual, higher learns more.", group="LoRA"
    ),
    Setting("lora.alpha", "int", 32, "LoRA alpha", "Scales the adapter's effect; often twice the rank.", group="LoRA"),
    Setting("lora.dropout", "float", 0.05, "LoRA dropout", "Regularizes the adapter; 0–0.1.", group="LoRA"),
    Setting(
        "lora.target_modules",
        "text",
        "all-linear",
        "Target modules",
        "all-linear, or comma-separated layer names such as q_proj, v_proj.",
        group="LoRA",
    ),
    Setting("epochs", "float", 3.0, "Epochs", "Passes over the training rows (ignored when max steps is set)."),
    Setting("max_steps", "optional_int", None, "Max steps", "Stop after this many optimizer steps; empty: by epochs."),
    Setting("learning_rate", "float", 2e-4, "Learning rate", "Step size; 1e-4–3e-4 for LoRA, 1e-5–5e-5 for full."),
    Setting("lr_scheduler", "choice", "linear", "Schedule", "How the learning rate changes over the run.", SCHEDULERS),
    Setting("warmup_ratio", "float", 0.03, "Warmup", "Share of the steps spent ramping the learning rate up."),
    Setting("weight_decay", "float", 0.0, "Weight decay", "L2 pull towards zero; 0–0.1."),
    Setting("per_device_batch_size", "int", 4, "Micro-batch", "Rows per device per step; lower it if memory is short."),
    Setting(
        "gradient_accumulation",
        "int",
        1,
        "Gradient accumulation",
        "Micro-batches per optimizer step: a larger effective batch without more memory.",
    ),
    Setting(
        "max_seq_length", "int", 512, "Sequence length", "Tokens per row; longer rows are cut (at most the context)."
    ),
    Setting("packing", "bool", False, "Packing", "Concatenate short rows into full sequences: faster, same loss."),
    Setting(
        "train_reasoning",
        "bool",
        True,
        "Train on reasoning",
        "Chat tuning: learn the assistant's reasoning too; off, it is kept as context but not learned.",
    ),
    Setting(
        "memory_auto",
        "bool",
        True,
        "Choose memory settings",
        "Let the estimate turn on gradient checkpointing only when memory needs it and pick the largest "
        "micro-batch that fits, keeping the rows per optimizer step.",
        group="Memory",
    ),
    Setting(
        "gradient_checkpointing",
        "bool",
        False,
        "Gradient checkpointing",
        "Recompute activations in the backward pass: less memory, about 30% slower (1.4× on 8B LoRA).",
        group="Memory",
    ),
    Setting("deepspeed", "choice", "none", "DeepSpeed", "Shard training state across devices.", DEEPSPEED, "Memory"),
    Setting(
        "deepspeed_custom",
        "json",
        None,
        "Custom DeepSpeed JSON",
        "Only with DeepSpeed 'Custom JSON': a DeepSpeed config object, checked against DeepSpeed's schema.",
        group="Memory",
    ),
    Setting("precision", "choice", "auto", "Precision", "Number format for training.", PRECISIONS, "Memory"),
    Setting(
        "attention",
        "choice",
        "auto",
        "Attention",
        "Automatic: packed rows use varlen attention (each row sees only itself, no mask over the micro-batch).",
        (("auto", "Automatic"), ("varlen", "Varlen (packed rows)"), ("sdpa", "SDPA with a mask")),
        "Speed",
    ),
    Setting(
        "liger",
        "choice",
        "auto",
        "Liger kernels",
        "Fused linear + cross-entropy, RMSNorm, RoPE and SwiGLU kernels (CUDA only; off on CPU, with the reason).",
        (("auto", "Automatic"), ("on", "On"), ("off", "Off")),
        "Speed",
    ),
    Setting(
        "optimizer",
        "choice",
        "auto",
        "Optimizer",
        "Automatic: PyTorch's fused AdamW where the device has it.",
        (("auto", "Automatic"), ("adamw_torch_fused", "Fused AdamW"), ("adamw_torch", "AdamW")),
        "Speed",
    ),
    Setting(
        "torch_compile",
        "choice",
        "auto",
        "torch.compile",
        "Compile the model; the first steps pay the compile time. Automatic: off until measured to pay off.",
        (("auto", "Automatic"), ("on", "On"), ("off", "Off")),
        "Speed",
    ),
    Setting(
        "eval_split",
        "float",
        0.1,
        "Validation share",
        "Share of rows held out to measure validation loss (a version's own validation split wins).",
        group="Evaluation",
    ),
    Setting(
        "eval_steps",
        "optional_int",
        None,
        "Eval interval",
        "Measure validation loss every this many steps; empty: before and after training.",
        group="Evaluation",
    ),
    Setting(
        "save_steps", "int", 50, "Checkpoint interval", "Steps between checkpoints (a restart resumes from the last)."
    ),
    Setting("seed", "int", 42, "Seed", "Makes the run repeatable."),
    Setting(
        "dpo_beta", "float", 0.1, "DPO beta", "How far DPO may move from the base model; 0.1 is usual.", group="DPO"
    ),
    Setting(
        "kto_beta", "float", 0.1, "KTO beta", "How far KTO may move from the base model; 0.1 is usual.", group="KTO"
    ),
    Setting(
        "kto_desirable_weight",
        "optional_float",
        None,
        "Desirable weight",
        "Loss weight of answers labelled desirable; empty: balanced from the label counts.",
        group="KTO",
    ),
    Setting(
        "kto_undesirable_weight",
        "optional_float",
        None,
        "Undesirable weight",
        "Loss weight of answers labelled undesirable; empty: balanced from the label counts.",
        group="KTO",
    ),
    Setting(
        "rewards",
        "json_list",
        [],
        "Rewards",
        "Graders that score each sampled answer against the row's reference, each with an optional weight: "
        'a JSON list such as [{"type": "exact_match", "ignore_case": true, "weight": 1}].',
        group=REINFORCEMENT,
    ),
    Setting(
        "num_generations",
        "int",
        4,
        "Answers per prompt",
        "GRPO samples this many answers to each prompt and learns from how their rewards differ (2 or more); "
        "micro-batch × gradient accumulation must be a multiple of it.",
        group=REINFORCEMENT,
    ),
    Setting(
        "max_completion_length",
        "int",
        64,
        "Answer length",
        "Most tokens sampled per answer: short answers train faster.",
        group=REINFORCEMENT,
    ),
    Setting(
        "grpo_beta",
        "float",
        0.04,
        "KL beta",
        "How strongly the model is held near the base model (a reference model is kept when above 0).",
        group=REINFORCEMENT,
    ),
    Setting(
        "temperature",
        "float",
        1.0,
        "Sampling temperature",
        "Higher samples more varied answers to compare; 0.7–1.0 is usual.",
        group=REINFORCEMENT,
    ),
    Setting(
        "merge_adapter",
        "bool",
        False,
        "Also save a merged model",
        "Write base + adapter as one model folder too (bigger; simpler to serve elsewhere).",
        group="Output",
    ),
)
SETTINGS_BY_KEY = {setting.key: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Preset:
    """A named starting point: the settings it changes from the defaults, and when it is unavailable."""

    slug: str
    name: str
    description: str
    values: dict[str, Any]
    needs_cuda: bool = False


PRESETS: tuple[Preset, ...] = (
    Preset(
        "quick-lora",
        "Quick LoRA",
        "A small adapter trained fast: the right first try for most chat and instruction data.",
        {"method": "lora", "lora.rank": 16, "lora.alpha": 32, "epochs": 3.0, "learning_rate": 2e-4},
    ),
    Preset(
        "narrow-lora",
        "Narrow task LoRA",
        "Quick LoRA at a 15× higher learning rate for 12 epochs: a small model learning a few fixed answers word for "
        "word (the demo's Kestrel Coffee support), on a CPU in about a minute.",
        {"method": "lora", "lora.rank": 16, "lora.alpha": 32, "epochs": 12.0, "learning_rate": 3e-3},
    ),
    Preset(
        "qlora",
        "Low-memory QLoRA",
        "LoRA on a 4-bit copy of the base model: fine-tunes large models on one GPU.",
        {
            "method": "qlora",
            "lora.rank": 16,
            "lora.alpha": 32,
            "precision": "bf16",
            "gradient_checkpointing": True,
            "learning_rate": 2e-4,
        },
        needs_cuda=True,
    ),
    Preset(
        "full-zero3",
        "Full fine-tune with ZeRO-3",
        "Every weight trains, sharded across devices with DeepSpeed ZeRO-3: most capacity, most memory.",
        {"method": "full", "deepspeed": "zero3", "learning_rate": 2e-5, "epochs": 2.0, "warmup_ratio": 0.05},
    ),
)
PRESETS_BY_SLUG = {preset.slug: preset for preset in PRESETS}


def defaults() -> dict[str, Any]:
    """Every setting at its default value (flat, dotted keys); list defaults are fresh copies."""
    return {setting.key: copy.deepcopy(setting.default) for setting in SETTINGS}


def apply_preset(slug: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The defaults, then the preset's values, then ``values`` on top (flat, dotted keys)."""
    merged = defaults()
    preset = PRESETS_BY_SLUG.get(slug)
    if preset is not None:
        merged.update(preset.values)
    merged.update(values or {})
    return merged


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat dotted keys (``lora.rank``) to the nested form a job stores and the trainer reads."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("lora."):
            nested.setdefault("lora", {})[key.removeprefix("lora.")] = value
        else:
            nested[key] = value
    return nested


def flatten(nested: dict[str, Any]) -> dict[str, Any]:
    """The nested form back to flat dotted keys (for the form and the config diff)."""
    flat = {key: value for key, value in nested.items() if key != "lora"}
    flat.update({f"lora.{key}": value for key, value in (nested.get("lora") or {}).items()})
    return flat


def diff(configs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """The settings whose values differ between the given (nested) configs: (key, one value per config)."""
    flats = [flatten(config) for config in configs]
    keys = sorted({key for flat in flats for key in flat}, key=_setting_order)
    differing: list[tuple[str, list[Any]]] = []
    for key in keys:
        values = [flat.get(key) for flat in flats]
        if len({repr(value) for value in values}) > 1:
            differing.append((key, values))
    return differing


def _setting_order(key: str) -> tuple[int, str]:
    order = list(SETTINGS_BY_KEY)
    return (order.index(key) if key in SETTINGS_BY_KEY else len(order), key)
