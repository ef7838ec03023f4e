"""Before a launch: parameters, memory per device (fits or not), tokens, time and cost of a training job.

Pure Python (no torch, no Django): the web form, the API and the worker import it.

Memory per device, in bytes (``e`` = bytes per element of the frozen weights and activations: 4 for fp32,
2 for bf16/fp16; N = all parameters, T = trainable ones, d = devices sharing a ZeRO partition):

- **weights**: full fine-tune 4·N (the engine keeps fp32 master weights); LoRA e·N; QLoRA 0.5625 bytes
  per linear-layer weight (4-bit NF4 plus a 16-bit scale per 64-weight block, bitsandbytes) plus e per
  embedding weight, plus one layer's weights dequantized to 16 bits during its matmuls.
- **trainable state** (AdamW, HF Trainer): the trainable weights' fp32 copy 4·T for adapters (a full
  fine-tune's is the weights above), their gradients 4·T and Adam's two moments 8·T.
  ZeRO-2 divides gradients and moments by d, ZeRO-3 the weights too; CPU offload (``zero3_offload``)
  moves moments and weights to host memory, leaving gradients and one layer's weights on the device.
- **activations** kept for the backward pass, per token and layer (Korthikanti et al. 2022, "Reducing
  Activation Recomputation in Large Transformer Models", adapted to Llama's SwiGLU MLP and grouped-query
  attention, with SDPA/flash attention so no seq×seq scores are stored): 8·h + 2·kv + 4·i elements of e
  bytes (h hidden size, kv the key/value width, i the MLP width); LoRA with dropout keeps a dropped-out
  copy of each targeted layer's input as well (+6·h + i for all-linear). Gradient checkpointing keeps
  only each layer's input (h) plus one layer's full activations during recomputation.
- **logits and loss**: tokens × vocabulary × (e + 12) on CUDA: the logits, their float32 copy,
  log-softmax and its gradient; with a 128k vocabulary this is often the largest term. On CPU e + 26,
  measured (see ``LOGIT_EXTRA_BYTES``).
- **runtime**: what the process holds besides the model — on CUDA the allocator's slack (0.5 GiB; the
  CUDA context itself is outside ``max_memory_allocated``); on CPU the Python process with torch,
  transformers, TRL and datasets imported, measured at about 560 MiB peak RSS on the 2-core test machine
  (``tests/test_estimator.py`` checks the total against real runs).

Tokens per micro-batch: with packing b·s; without, b × the mean tokens per row capped at s.

Time: FLOPs per token 6·N for a full fine-tune and 4·N for LoRA/QLoRA (frozen weights need no weight
gradient; ../shared/PERF.md), plus attention 12·layers·h·s (6·… for adapters' forward+input gradients).
Tokens to train ÷ (devices × FLOP/s per device), where FLOP/s is the median achieved by the team's own
finished runs on this pool when there are any, else the pool's peak × its assumed efficiency.
Cost = GPU-hours (seconds/3600 × devices) × the team's price per GPU-hour.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3
CPU_RUNTIME_BYTES = 560 * 1024**2
# Bytes per logit beyond the logits' own precision: float32 copy, log-softmax and gradients. On CPU the
# measured figure is higher: glibc's allocator keeps the loss's freed float32 buffers in the peak RSS and
# TRL computes its entropy and token-accuracy metrics from the full logits (calibrated on the runs of
# tests/test_estimator.py; the CUDA figure matches PERF.md's H100 measurements).
LOGIT_EXTRA_BYTES = {"cuda": 12, "cpu": 26}
CUDA_RUNTIME_BYTES = GIB // 2
QLORA_BYTES_PER_WEIGHT = 0.5625
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Llama-like decoder, from its config.json values."""

    parameter_count: int
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    tied_embeddings: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a Hugging Face config.json dict; the parameter count is computed from the shape."""
        hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
        heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
        shape = cls(
            parameter_count=0,
            hidden_size=hidden,
            layers=int(config.get("num_hidden_layers") or config.get("n_layer") or 0),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            intermediate_size=int(config.get("intermediate_size") or 4 * hidden),
            vocab_size=int(config.get("vocab_size") or 0),
            context_length=int(config.get("max_position_embeddings") or 0),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
        return cls(**{**asdict(shape), "parameter_count": shape.computed_parameters()})

    @classmethod
    def from_details(
        cls, parameter_count: int, details: dict[str, Any], context_length: int, vocab_size: int
    ) -> ModelShape:
        """From a registered base model: its header-counted parameters and ``inspection`` details."""
        config = dict(details.get("config") or {})
        config.setdefault("hidden_size", details.get("hidden_size"))
        config.setdefault("num_hidden_layers", details.get("layers"))
        config.setdefault("num_attention_heads", details.get("attention_heads"))
        config.setdefault("num_key_value_heads", details.get("key_value_heads"))
        config.setdefault("intermediate_size", details.get("intermediate_size"))
        config.setdefault("tie_word_embeddings", details.get("tie_word_embeddings", False))
        config["vocab_size"] = vocab_size or config.get("vocab_size")
        config["max_position_embeddings"] = context_length or config.get("max_position_embeddings")
        shape = cls.from_config({key: value for key, value in config.items() if value is not None})
        if parameter_count:
            shape = cls(**{**asdict(shape), "parameter_count": parameter_count})
        return shape

    @property
    def head_dim(self) -> int:
        return self.hidden_size // max(self.heads, 1)

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, kv, i = self.hidden_size, self.kv_width, self.intermediate_size
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def linear_parameters(self) -> int:
        """Weights in the decoder layers' linear layers (what QLoRA quantizes)."""
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    def computed_parameters(self) -> int:
        embeddings = self.vocab_size * self.hidden_size
        norms = self.layers * 2 * self.hidden_size + self.hidden_size
        head = 0 if self.tied_embeddings else embeddings
        return embeddings + self.linear_parameters() + norms + head


@dataclass(frozen=True)
class Pool:
    """A worker pool a job runs on: its accelerator, devices per job, memory and speed per device."""

    name: str
    label: str
    accelerator: str
    devices: int
    memory_bytes: int
    peak_flops: float
    efficiency: float

    @classmethod
    def from_settings(cls, name: str, spec: dict[str, Any]) -> Pool:
        return cls(
            name=name,
            label=str(spec.get("label", name)),
            accelerator=str(spec.get("accelerator", "cpu")),
            devices=max(1, int(spec.get("devices", 1))),
            memory_bytes=int(float(spec.get("memory_gib", 8)) * GIB),
            peak_flops=float(spec.get("peak_tflops", 0.1)) * 1e12,
            efficiency=float(spec.get("efficiency", 0.2)),
        )

    @property
    def memory_gib(self) -> float:
        return round(self.memory_bytes / GIB, 1)

    @property
    def device_word(self) -> str:
        return "GPU" if self.accelerator == "cuda" else "process"


@dataclass(frozen=True)
class Estimate:
    total_parameters: int
    trainable_parameters: int
    memory_bytes: int
    memory_breakdown: dict[str, int]
    device_memory_bytes: int
    fits: bool
    verdict: str
    dataset_tokens: int
    optimizer_steps: int
    tokens_to_train: int
    seconds: float
    throughput_source: str
    gpu_hours: float
    cost: float | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainable_parameters(shape: ModelShape, method: str, lora: dict[str, Any]) -> int:
    """LoRA adds r·(in + out) per targeted linear layer; a full fine-tune trains everything."""
    if method == "full":
        return shape.parameter_count
    rank = int(lora.get("rank", 16))
    targets = lora.get("target_modules", "all-linear")
    names = ALL_LINEAR if targets == "all-linear" else tuple(targets)
    shapes = shape.linear_shapes()
    return shape.layers * sum(rank * sum(shapes[name]) for name in names if name in shapes)


def flops_per_token(shape: ModelShape, method: str, seq: int) -> float:
    """Training FLOPs per token: 6N full, 4N adapters (PERF.md), plus attention's score and value matmuls."""
    dense = (6 if method == "full" else 4) * shape.parameter_count
    attention = (12 if method == "full" else 8) * shape.layers * shape.hidden_size * seq / 2
    return dense + attention


def achieved_flops_per_second(*, tokens_per_second: float, shape: ModelShape, method: str, devices: int,
                              seq: int = 512) -> float:  # fmt: skip
    """FLOP/s per device a finished run achieved (to refine later estimates on the same pool)."""
    return tokens_per_second * flops_per_token(shape, method, seq) / max(devices, 1)


def memory_breakdown(config: dict[str, Any], shape: ModelShape, pool: Pool, tokens_per_row: float) -> dict[str, int]:
    """Bytes per device by part (see the module docstring for each formula)."""
    method, precision = config.get("method", "lora"), config.get("precision", "fp32")
    lora = config.get("lora") or {}
    stage = {"zero2": 2, "zero3": 3, "zero3_offload": 3}.get(config.get("deepspeed", "none"), 0)
    offload = config.get("deepspeed") == "zero3_offload"
    devices = pool.devices
    e = 4 if precision == "fp32" else 2
    n, t = shape.parameter_count, trainable_parameters(shape, method, lora)
    h, kv, i, layers = shape.hidden_size, shape.kv_width, shape.intermediate_size, shape.layers
    layer_weights = sum(a * b for a, b in shape.linear_shapes().values())

    if method == "full":
        weights = 4.0 * n
    elif method == "qlora":
        linear = shape.linear_parameters()
        weights = QLORA_BYTES_PER_WEIGHT * linear + e * (n - linear) + 2 * layer_weights
    else:
        weights = float(e * n)
    if stage == 3:
        weights = (4.0 * layer_weights) if offload else weights / devices

    adapter_copy = 0.0 if method == "full" else 4.0 * t
    gradients = 4.0 * t / (devices if stage >= 2 else 1)
    moments = 0.0 if offload else 8.0 * t / (devices if stage >= 2 else 1)
    if stage == 3 and not offload and method != "full":
        adapter_copy /= devices

    batch, seq = int(config.get("per_device_batch_size", 4)), int(config.get("max_seq_length", 512))
    tokens = batch * (seq if config.get("packing") else min(seq, max(tokens_per_row, 1.0)))
    if config.get("stage") == "dpo":
        tokens *= 2  # chosen and rejected answers go through the model together (the reference too, frozen)
    per_layer = 8 * h + 2 * kv + 4 * i
    if method != "full" and float(lora.get("dropout", 0.0)) > 0:
        per_layer += 6 * h + i
    if config.get("gradient_checkpointing"):
        activations = tokens * e * (h * layers + per_layer)
    else:
        activations = tokens * e * per_layer * layers
    logits = tokens * shape.vocab_size * (e + LOGIT_EXTRA_BYTES.get(pool.accelerator, 12))
    runtime = CUDA_RUNTIME_BYTES if pool.accelerator == "cuda" else CPU_RUNTIME_BYTES
    parts = {
        "weights": weights,
        "trainable_weights": adapter_copy,
        "gradients": gradients,
        "optimizer": moments,
        "activations": activations,
        "logits": logits,
        "runtime": runtime,
    }
    return {name: math.ceil(value) for name, value in parts.items()}


def estimate(
    config: dict[str, Any],
    shape: ModelShape,
    pool: Pool,
    *,
    dataset_rows: int,
    dataset_tokens: int,
    price_per_gpu_hour: float | None = None,
    observed_flops_per_second: list[float] | None = None,
) -> Estimate:
    """Everything the form shows before launch, for ``config`` (a RunConfig-shaped dict) on ``pool``."""
    method = str(config.get("method", "lora"))
    seq = int(config.get("max_seq_length", 512))
    tokens_per_row = dataset_tokens / dataset_rows if dataset_rows else float(seq)
    breakdown = memory_breakdown(config, shape, pool, tokens_per_row)
    memory = sum(breakdown.values())

    batch = int(config.get("per_device_batch_size", 4)) * int(config.get("gradient_accumulation", 1))
    rows_per_step = batch * pool.devices
    tokens_per_epoch = min(dataset_tokens, dataset_rows * seq) if dataset_rows else 0
    if config.get("packing") and dataset_rows:
        rows_per_epoch = max(1, math.ceil(tokens_per_epoch / seq))
    else:
        rows_per_epoch = dataset_rows
    steps_per_epoch = max(1, math.ceil(rows_per_epoch / rows_per_step)) if rows_per_epoch else 0
    max_steps = config.get("max_steps")
    if max_steps:
        steps = int(max_steps)
        tokens_to_train = int(tokens_per_epoch * steps / steps_per_epoch) if steps_per_epoch else 0
    else:
        epochs = float(config.get("epochs", 1.0))
        steps = math.ceil(steps_per_epoch * epochs)
        tokens_to_train = int(tokens_per_epoch * epochs)

    if observed_flops_per_second:
        speed = statistics.median(observed_flops_per_second)
        source = f"measured on {len(observed_flops_per_second)} of your team's finished runs on this pool"
    else:
        speed = pool.peak_flops * pool.efficiency
        source = f"assumed {pool.efficiency:.0%} of the pool's peak ({pool.peak_flops / 1e12:g} TFLOP/s per device)"
    seconds = tokens_to_train * flops_per_token(shape, method, seq) / max(speed * pool.devices, 1.0)
    gpu_hours = seconds / 3600 * pool.devices
    cost = round(gpu_hours * price_per_gpu_hour, 2) if price_per_gpu_hour is not None else None
    fits = memory <= pool.memory_bytes
    return Estimate(
        total_parameters=shape.parameter_count,
        trainable_parameters=trainable_parameters(shape, method, config.get("lora") or {}),
        memory_bytes=memory,
        memory_breakdown=breakdown,
        device_memory_bytes=pool.memory_bytes,
        fits=fits,
        verdict=_verdict(config, pool, memory, breakdown, fits),
        dataset_tokens=dataset_tokens,
        optimizer_steps=steps,
        tokens_to_train=tokens_to_train,
        seconds=round(seconds, 3),
        throughput_source=source,
        gpu_hours=round(gpu_hours, 4),
        cost=cost,
    )


def _verdict(config: dict[str, Any], pool: Pool, memory: int, breakdown: dict[str, int], fits: bool) -> str:
    used, available = memory / GIB, pool.memory_bytes / GIB
    where = f"per {pool.device_word} on {pool.label}"
    if fits:
        return f"Fits: about {used:.1f} GiB of {available:.0f} GiB {where}."
    largest = max(breakdown, key=lambda name: breakdown[name])
    options: list[str] = []
    method = config.get("method")
    if method == "full":
        options.append("use LoRA")
    if method == "lora" and pool.accelerator == "cuda":
        options.append("use QLoRA (4-bit base weights)")
    batch = int(config.get("per_device_batch_size", 4))
    if batch > 1 and largest in ("activations", "logits"):
        options.append(f"use micro-batch {max(1, batch // 2)} with twice the gradient accumulation")
    if not config.get("gradient_checkpointing") and largest == "activations":
        options.append("turn on gradient checkpointing")
    if int(config.get("max_seq_length", 512)) > 512 and largest in ("activations", "logits"):
        options.append("shorten the sequence length")
    if config.get("deepspeed") in ("none", "zero2") and largest in ("weights", "optimizer", "gradients"):
        options.append("use DeepSpeed ZeRO-3 (with CPU offload if still short)")
    if not options:
        options.append("pick a pool with more memory per device")
    advice = "; or ".join(options)
    return (
        f"Does not fit: about {used:.1f} GiB needed, {available:.0f} GiB {where} "
        f"(largest part: {largest.replace('_', ' ')}). Try: {advice}."
    )
