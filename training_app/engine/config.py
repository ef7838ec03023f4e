"""The run config: the one plain-JSON document a trainer process reads, and its validation.

The studio stores it immutable with the job (``schema_version`` says which shape it has) and writes it to
``run.json`` before launching ``python -m training_app.engine --config run.json``. ``RunConfig.validate``
returns field-level messages a person can act on; the web form and the API call it too, so this module
imports neither torch nor Django at import time (a Celery worker must never import torch: CUDA cannot be
initialised in a forked child). Callers outside the trainer say whether the chosen worker pool has CUDA
(``validate(cuda_available=...)``) instead of letting it probe the local machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training_app.engine import speed

SCHEMA_VERSION = 1

KINDS = ("chat", "instruction", "preference", "feedback", "text")
STAGES = ("sft", "pretrain", "dpo", "kto", "grpo")
METHODS = ("lora", "qlora", "full")
DEEPSPEED_CHOICES = ("none", "zero2", "zero3", "zero3_offload", "custom")
# "auto": bf16 on a GPU that has it, fp16 on one that does not, fp32 on the CPU (``speed``).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "warmup_stable_decay",
)
# Which dataset kinds each stage can train on: DPO needs chosen/rejected pairs, KTO answers labelled
# desirable or not, pretraining raw text; GRPO prompts with references (a chat's last assistant turn, an
# instruction's completion), which its rewards grade the sampled answers against.
STAGE_KINDS = {
    "sft": ("chat", "instruction", "text"),
    "pretrain": ("text",),
    "dpo": ("preference",),
    "kto": ("feedback",),
    "grpo": ("chat", "instruction"),
}


def stage_for_kind(kind: str, preferred: str | None = None) -> str:
    """``preferred`` when it trains on ``kind``, else the first stage that does (SFT for unknown kinds)."""
    if preferred in STAGE_KINDS and kind in STAGE_KINDS[preferred]:
        return preferred
    return next((stage for stage, kinds in STAGE_KINDS.items() if kind in kinds), "sft")


# Dataset kinds made of conversations: the base model needs a chat template to read them.
CONVERSATION_KINDS = ("chat", "preference", "feedback")
# Keys of a model's config.json that give its context length, most specific first.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


class ConfigError(ValueError):
    """A run config that cannot run; ``errors`` maps each field (dotted for nested ones) to a message."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{name}: {message}" for name, message in self.errors.items()))


@dataclass
class LoraSettings:
    """Low-rank adapter shape: ``rank`` r, scaling ``alpha`` (effective scale alpha / r), ``dropout``."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # "all-linear" (PEFT's shortcut: every linear layer but the output head) or module names.
    target_modules: str | list[str] = "all-linear"


@dataclass
class RunConfig:
    """Everything one training run needs; plain JSON in and out (``from_dict`` / ``to_dict``)."""

    model_path: str
    train_path: str
    output_dir: str
    run_dir: str
    eval_path: str | None = None
    kind: str = "chat"
    stage: str = "sft"
    method: str = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    deepspeed: str = "none"
    deepspeed_custom: dict[str, Any] | None = None
    epochs: float = 1.0
    # When set, the run stops after this many optimizer steps whatever ``epochs`` says.
    max_steps: int | None = None
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    per_device_batch_size: int = 4
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    max_seq_length: int = 512
    packing: bool = False
    # Speed settings (see ``speed``): asked for here, resolved per worker with the reason.
    attention: str = "auto"
    liger: str = "auto"
    optimizer: str = "auto"
    torch_compile: str = "auto"
    # Why the launch chose the checkpointing and micro-batch above (the estimate's words), empty if a person did.
    memory_reason: str = ""
    # Chat SFT: whether an assistant turn's reasoning (``reasoning_content``) is trained on or only read.
    train_reasoning: bool = True
    # None: evaluate only before and after training (when there is an eval file).
    eval_steps: int | None = None
    # Checkpoint interval in optimizer steps, and how many complete checkpoints to keep.
    save_steps: int = 200
    save_total_limit: int = 2
    logging_steps: int = 1
    seed: int = 42
    precision: str = "fp32"
    dpo_beta: float = 0.1
    kto_beta: float = 0.1
    # KTO's loss weights for desirable and undesirable answers; None balances them from the label counts.
    kto_desirable_weight: float | None = None
    kto_undesirable_weight: float | None = None
    # GRPO: reward specs (a grader spec plus an optional ``weight``; see ``rewards``), answers sampled per
    # prompt, their length in tokens, the KL coefficient towards the base model, and the sampling temperature.
    rewards: list[dict[str, Any]] = field(default_factory=list)
    num_generations: int = 4
    max_completion_length: int = 64
    grpo_beta: float = 0.04
    temperature: float = 1.0
    merge_adapter: bool = False
    use_cpu: bool = False
    # End-of-run evaluation: loss on at most this many eval rows, generations on this many prompts.
    max_eval_rows: int = 64
    generation_prompts: int = 3
    generation_max_new_tokens: int = 48
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build a config from its JSON form; raises ``ConfigError`` on unknown fields or wrong types."""
        if not isinstance(data, dict):
            raise ConfigError({"__all__": "a run config is a JSON object"})
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ConfigError(
                {"schema_version": f"this trainer reads run configs of version {SCHEMA_VERSION}, not {version!r}"}
            )
        errors: dict[str, str] = {}
        values = _typed_fields(cls, data, errors, prefix="")
        lora = data.get("lora", {})
        if not isinstance(lora, dict):
            errors["lora"] = "must be an object with rank, alpha, dropout and target_modules"
            lora = {}
        values["lora"] = LoraSettings(**_typed_fields(LoraSettings, lora, errors, prefix="lora."))
        missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in data]
        errors.update({name: "is required" for name in missing})
        if errors:
            raise ConfigError(errors)
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a config from a JSON file written by ``save``."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError({"__all__": f"{path} is not valid JSON ({exc})"}) from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (nested ``lora`` object)."""
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the JSON form atomically."""
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True), encoding="utf-8")
        os.replace(partial, target)

    @property
    def uses_adapter(self) -> bool:
        """True for LoRA and QLoRA, which train and save an adapter instead of the whole model."""
        return self.method in ("lora", "qlora")

    def validate(self, *, cuda_available: bool | None = None, check_files: bool = True) -> dict[str, str]:
        """Field-level errors (field → message); empty when the run can start.

        ``cuda_available``: whether the worker pool that will run this has CUDA; None probes this machine
        (imports torch, so only the trainer process should leave it out). ``check_files``: also check the
        model and data files exist (the web form, which validates before the dataset is exported, says no).
        A custom DeepSpeed dict is checked by DeepSpeed itself, which imports torch: fine in the web
        process, but a Celery worker that forks trainers should leave that to the trainer, which
        validates again before it loads anything.
        """
        errors: dict[str, str] = {}
        self._validate_choices(errors)
        self._validate_numbers(errors)
        self._validate_lora(errors)
        if self.stage == "grpo":
            self._validate_grpo(errors, cpu=self.use_cpu or cuda_available is False)
        if check_files:
            self._validate_files(errors)
        if self.method == "qlora" and "method" not in errors:
            reason = _qlora_unavailable_reason(cuda_available)
            if reason:
                errors["method"] = reason
        if self.precision == "fp16" and (self.use_cpu or cuda_available is False):
            errors["precision"] = "fp16 mixed precision needs a CUDA GPU; on CPU use bf16 or fp32"
        elif self.precision == "bf16" and self.deepspeed != "none" and (self.use_cpu or cuda_available is False):
            errors["precision"] = "DeepSpeed on CPU trains in fp32 only (transformers refuses bf16 there); use fp32"
        if self.deepspeed == "custom":
            if not isinstance(self.deepspeed_custom, dict) or not self.deepspeed_custom:
                errors["deepspeed_custom"] = "paste the DeepSpeed configuration as a JSON object"
            else:
                from training_app.engine.deepspeed_configs import validate_custom

                message = validate_custom(self.deepspeed_custom)
                if message:
                    errors["deepspeed_custom"] = message
        elif self.deepspeed_custom:
            errors["deepspeed_custom"] = "a custom DeepSpeed configuration is only read when DeepSpeed is 'custom'"
        return errors

    def missing_files(self) -> dict[str, str]:
        """The model folder or data files that do not exist (field → path): deleted after the job was queued."""
        paths = {"model_path": self.model_path, "train_path": self.train_path, "eval_path": self.eval_path}
        return {
            name: str(path)
            for name, path in paths.items()
            if path and not (Path(path).is_dir() if name == "model_path" else Path(path).is_file())
        }

    def _validate_choices(self, errors: dict[str, str]) -> None:
        choices = {
            "kind": KINDS,
            "stage": STAGES,
            "method": METHODS,
            "deepspeed": DEEPSPEED_CHOICES,
            "precision": PRECISIONS,
            "lr_scheduler": LR_SCHEDULERS,
            "attention": speed.ATTENTION_CHOICES,
            "liger": speed.SWITCH_CHOICES,
            "optimizer": speed.OPTIMIZER_CHOICES,
            "torch_compile": speed.SWITCH_CHOICES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                errors[name] = f"choose one of {', '.join(allowed)}"
        if "stage" not in errors and "kind" not in errors and self.kind not in STAGE_KINDS[self.stage]:
            errors["kind"] = _stage_kind_message(self.stage, self.kind)
        if self.packing and self.stage == "dpo":
            errors["packing"] = "DPO compares whole chosen/rejected answers and cannot pack rows; turn packing off"
        if self.packing and self.stage == "kto":
            errors["packing"] = "KTO scores whole answers and cannot pack rows; turn packing off"
        if self.merge_adapter and self.method == "full":
            errors["merge_adapter"] = "a full fine-tune has no adapter to merge; the saved model is already whole"
        for name in ("model_path", "train_path", "output_dir", "run_dir"):
            if not str(getattr(self, name)).strip():
                errors[name] = "is required"

    def _validate_numbers(self, errors: dict[str, str]) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("learning_rate", 0 < self.learning_rate <= 1, "must be a positive number such as 2e-4 (at most 1)"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "must be between 0 and 1 (a share of the run's steps)"),
            ("weight_decay", 0 <= self.weight_decay < 1, "must be between 0 and 1"),
            ("per_device_batch_size", self.per_device_batch_size >= 1, "must be at least 1"),
            ("gradient_accumulation", self.gradient_accumulation >= 1, "must be at least 1"),
            ("max_seq_length", self.max_seq_length >= 16, "must be at least 16 tokens"),
            ("save_steps", self.save_steps >= 1, "must be at least 1 step"),
            ("save_total_limit", self.save_total_limit >= 1, "keep at least 1 checkpoint"),
            ("logging_steps", self.logging_steps >= 1, "must be at least 1 step"),
            ("seed", self.seed >= 0, "must be 0 or more"),
            ("dpo_beta", self.dpo_beta > 0, "must be positive (0.1 is usual)"),
            ("kto_beta", self.kto_beta > 0, "must be positive (0.1 is usual)"),
            ("max_eval_rows", self.max_eval_rows >= 1, "must be at least 1"),
            ("generation_prompts", 0 <= self.generation_prompts <= 16, "must be between 0 and 16"),
            ("generation_max_new_tokens", 1 <= self.generation_max_new_tokens <= 1024, "must be between 1 and 1024"),
        ]
        if self.max_steps is None:
            checks.append(("epochs", 0 < self.epochs <= 1000, "must be between 0 and 1000, or set max_steps"))
        else:
            checks.append(
                ("max_steps", 1 <= self.max_steps <= 10_000_000, "must be between 1 and 10,000,000 (or empty)")
            )
        if self.eval_steps is not None:
            checks.append(("eval_steps", self.eval_steps >= 1, "must be at least 1 step (or empty)"))
        for name in ("kto_desirable_weight", "kto_undesirable_weight"):
            weight = getattr(self, name)
            if weight is not None:
                checks.append((name, 0 < weight <= 100, "must be a positive number (or empty: balanced from the data)"))
        if self.stage == "kto" and self.per_device_batch_size < 2:
            checks.append(
                (
                    "per_device_batch_size",
                    False,
                    "KTO compares each answer with the others of its micro-batch: use a micro-batch of 2 or more",
                )
            )
        for name, ok, message in checks:
            if not ok:
                errors[name] = message

    def _validate_lora(self, errors: dict[str, str]) -> None:
        if not self.uses_adapter:
            return
        lora = self.lora
        if not 1 <= lora.rank <= 1024:
            errors["lora.rank"] = "must be between 1 and 1024 (8–64 is usual)"
        if lora.alpha <= 0:
            errors["lora.alpha"] = "must be positive (often twice the rank)"
        if not 0 <= lora.dropout < 1:
            errors["lora.dropout"] = "must be between 0 and 1 (0.05 is usual)"
        targets = lora.target_modules
        if isinstance(targets, list) and (not targets or not all(isinstance(t, str) and t for t in targets)):
            errors["lora.target_modules"] = "name at least one module (e.g. q_proj, v_proj) or use all-linear"
        elif isinstance(targets, str) and targets != "all-linear":
            errors["lora.target_modules"] = "use all-linear or a list of module names"

    def _validate_grpo(self, errors: dict[str, str], *, cpu: bool) -> None:
        from training_app.engine.rewards import reward_problem

        problem = reward_problem(self.rewards)
        if problem:
            errors["rewards"] = problem
        checks: list[tuple[str, bool, str]] = [
            ("num_generations", 2 <= self.num_generations <= 64, "must be between 2 and 64 (GRPO compares answers)"),
            ("max_completion_length", 1 <= self.max_completion_length <= 8192, "must be between 1 and 8192 tokens"),
            ("grpo_beta", 0 <= self.grpo_beta <= 10, "must be 0 (no reference model) or a small positive number"),
            ("temperature", 0 < self.temperature <= 5, "must be above 0 (1.0 samples as the model predicts)"),
        ]
        for name, ok, message in checks:
            if not ok:
                errors.setdefault(name, message)
        completions = self.per_device_batch_size * self.gradient_accumulation
        if "num_generations" not in errors and completions % self.num_generations:
            errors["num_generations"] = (
                f"GRPO compares the {self.num_generations} answers to one prompt within a batch, so micro-batch × "
                f"gradient accumulation ({self.per_device_batch_size} × {self.gradient_accumulation} = {completions}) "
                f"must be a multiple of it: use {_divisor_hint(completions)} answers per prompt, or a micro-batch of "
                f"{self.num_generations}"
            )
        if self.packing:
            errors["packing"] = "GRPO samples whole answers to each prompt and cannot pack rows; turn packing off"
        if self.deepspeed != "none" and cpu:
            errors["deepspeed"] = (
                "GRPO with DeepSpeed needs CUDA GPUs (TRL's generation under DeepSpeed does not run on CPU); "
                "turn DeepSpeed off on a CPU pool"
            )

    def _validate_files(self, errors: dict[str, str]) -> None:
        model_error = model_folder_problem(self.model_path)
        if model_error:
            errors["model_path"] = model_error
        else:
            context = model_context_length(self.model_path)
            if context and self.max_seq_length > context and "max_seq_length" not in errors:
                errors["max_seq_length"] = (
                    f"{self.max_seq_length} tokens is longer than the model's context of {context} tokens; "
                    f"use {context} or less"
                )
            if self.kind in CONVERSATION_KINDS and not has_chat_template(self.model_path):
                errors.setdefault(
                    "kind",
                    "this model has no chat template, so it cannot read conversations; "
                    "use instruction or text data, or a chat model",
                )
        for name in ("train_path", "eval_path"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                errors[name] = f"the data file {value} does not exist (was the dataset version deleted?)"


def model_folder_problem(model_path: str) -> str | None:
    """Why a local model folder cannot be trained, or None: it must hold config.json and safetensors
    weights, and need no Python code of its own (``trust_remote_code`` is never turned on)."""
    folder = Path(model_path)
    if not folder.is_dir():
        return f"the model folder {model_path} does not exist (was the base model deleted?)"
    config_file = folder / "config.json"
    if not config_file.is_file():
        return "the model folder has no config.json"
    if not any(folder.glob("*.safetensors")):
        return "the model folder has no .safetensors weights (pickled weights are never loaded: they can run code)"
    try:
        model_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "the model's config.json cannot be read"
    if "auto_map" in model_config or any(folder.glob("*.py")):
        return "this model ships its own Python code (trust_remote_code), which Atelier never runs"
    return None


def model_context_length(model_path: str) -> int | None:
    """The model's context length in tokens, read from its config.json (None when it does not say)."""
    try:
        model_config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    for section in (model_config, model_config.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            value = section.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


def has_chat_template(model_path: str) -> bool:
    """Whether the model's tokenizer carries a chat template (needed to train on conversations)."""
    folder = Path(model_path)
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return bool(tokenizer_config.get("chat_template"))


def _qlora_unavailable_reason(cuda_available: bool | None) -> str | None:
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return (
            "QLoRA needs an NVIDIA GPU with CUDA: its 4-bit weights (bitsandbytes) have no CPU kernels. "
            "Use LoRA on this worker pool, or pick a GPU pool"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "QLoRA needs the bitsandbytes package, which is not installed on this worker; use LoRA"
    return None


def _divisor_hint(completions: int) -> str:
    """The answers-per-prompt counts (2 or more) that divide ``completions``, for a message."""
    fitting = [str(count) for count in range(2, min(completions, 64) + 1) if completions % count == 0]
    return " or ".join(fitting[:4]) if fitting else "2 (with an even micro-batch)"


def _stage_kind_message(stage: str, kind: str) -> str:
    if kind == "feedback":
        return "feedback data (answers labelled desirable or undesirable) trains with KTO; choose the KTO goal"
    if stage == "dpo":
        return f"DPO learns from preference pairs (prompt, chosen, rejected); this dataset is {kind} data"
    if stage == "kto":
        return (
            "KTO learns from answers labelled desirable or undesirable (prompt, completion, label); "
            f"this dataset is {kind} data"
        )
    if stage == "grpo":
        return (
            "reinforcement (GRPO) samples answers to prompts and grades them against references: use chat or "
            f"instruction data (the last assistant turn, or the completion, is the reference); this dataset is "
            f"{kind} data"
        )
    if stage == "pretrain":
        return f"continued pretraining reads raw text; this dataset is {kind} data (use SFT instead)"
    return "preference data trains with DPO; choose the DPO stage"


def _required(spec: dataclasses.Field[Any]) -> bool:
    return spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING


def _typed_fields(cls: type, data: dict[str, Any], errors: dict[str, str], *, prefix: str) -> dict[str, Any]:
    """The known fields of ``data`` whose JSON types fit ``cls``'s annotations; problems go to ``errors``."""
    hints = typing.get_type_hints(cls)
    names = {spec.name for spec in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "lora" and cls is RunConfig:
            continue
        if key not in names:
            errors[prefix + key] = "is not a setting of this trainer"
            continue
        if not _fits(value, hints[key]):
            errors[prefix + key] = f"has the wrong type ({type(value).__name__})"
            continue
        values[key] = _coerce(value, hints[key])
    return values


def _coerce(value: Any, annotation: Any) -> Any:
    """A JSON number as the annotated type (``_fits`` already checked an int field's value is whole)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    if float in options:
        return float(value)
    if int in options:
        return int(value)
    return value


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a (simple) annotation: str, int, float, bool, None, list[str], dict, unions."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:  # 16.0 from a form or a YAML round trip is still 16
        return isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_fits(entry, item) for entry in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    return False
