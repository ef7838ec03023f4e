"""Before a launch: parameters, memory per device (fits or not), tokens, time and cost of a fine-tune.

Pure Python, no torch and no Django at import time: the web process and the Celery worker import it. The
figures model what Atelier's engine really runs (``training_app.engine.trainer``: TRL's SFT/DPO trainers over
HF Trainer, PEFT adapters, fused AdamW, SDPA attention) on a Llama-like decoder. ``stack="hf_trainer"``
models the plain HF Trainer peer of ``../shared/bench/hf_baseline.py`` instead, whose runs gave PERF.md's
H100 figures; the tests check both against measurements.

Memory per device (bytes). Notation: N all parameters, T trainable ones, h hidden size, i MLP width,
q = heads × head_dim, kv = key/value heads × head_dim, L layers, V vocabulary, b micro-batch, s sequence
length, n = b·s tokens per micro-batch, d devices, a = bytes per activation element (2 under bf16/fp16,
4 under fp32), ``p`` = bytes per element of the frozen weights.

weights
    How ``trainer._load_model`` loads them: a full fine-tune keeps fp32 weights (4·N; mixed precision is
    autocast, no separate master copy); LoRA loads them in the run's precision (p·N); QLoRA stores every
    decoder linear layer in NF4, 0.5 byte per weight plus its quantization constants (bitsandbytes: one
    absmax per 64 weights, 8-bit with double quantization as the engine asks = 0.0159 byte per weight,
    fp32 without it = 0.0625), and the embeddings, head and norms in 16 bits.
trainable state
    Fused AdamW (transformers' default ``adamw_torch_fused``) keeps two moments in the parameter's dtype,
    and the gradient has that dtype too: 4 × the parameter's bytes per trainable parameter, i.e. 16 bytes
    for fp32 (PEFT up-casts adapters to fp32; TRL keeps them in bf16 for QLoRA, and in the base dtype under
    ZeRO-3). A full fine-tune's weights are the fp32 weights above; its gradients (4·N) only exist from
    the backward pass to ``optimizer.step`` (``zero_grad(set_to_none=True)``), while activations are freed
    as gradients appear, so the peak counts the larger of activations + loss and gradients, not both.
    Autocast caches a 16-bit copy of every fp32 linear weight during forward/backward (2 bytes each).
    Several processes without DeepSpeed (DDP) add one gradient bucket copy (4 bytes per trainable).
DeepSpeed (ZeRO paper, Rajbhandari et al. 2020, §3: 2 + 2 + 12 bytes per parameter in mixed precision)
    16-bit weights and gradients, fp32 master + Adam moments (12 bytes) per trainable parameter. ZeRO-2
    divides gradients and optimizer state by d; ZeRO-3 the weights too (frozen ones included) and adds the
    gathered working set (the largest of one layer and the embedding, twice for prefetching); ZeRO-3 offload
    keeps master weights, moments, gradients and parameters in host memory (``host_bytes``, not counted).
    Buffers: a reduce bucket of h² 16-bit elements, twice (DeepSpeed's "auto" size, contiguous gradients).
    With fp32 precision there is no master copy: 4 + 4 + 8 bytes.
activations
    Bytes saved for backward per token and decoder layer, counted with
    ``torch.autograd.graph.saved_tensors_hooks`` on transformers 5.23 / PEFT 0.21 Llama layers (SDPA with
    flash or memory-efficient kernels, so no s×s score matrix), see ``ACTIVATION_COEFFICIENTS``: e.g. a
    bf16 LoRA layer saves 20·h + 8·i + 4·kv bytes per token, an fp32 full fine-tune 32·h + 16·i + 8·kv;
    LoRA dropout keeps dropped-out copies of each adapter's input. Each layer adds the attention's
    log-sum-exp (4 bytes per head) and the adapters' r-wide outputs (7·r·a for all-linear). Unpacked
    batches are padded, so the attention gets a mask: K/V are repeated to q heads (GQA's saving is lost)
    and each layer keeps an additive bias of b·s²·a bytes. Gradient checkpointing keeps each layer's input
    (n·h × the residual stream's bytes) and recomputes one layer at a time during backward, after the head's
    backward: the peak counts the larger of the two. DPO puts chosen and rejected answers through the model
    together (2·b sequences); a full-fine-tune DPO also holds a frozen reference copy of the weights.
GRPO (reinforcement)
    The micro-batch counts sampled answers: b sequences of the prompt (the rows' mean length, at most s)
    plus ``max_completion_length`` tokens. Before the forward and backward passes it samples
    ``num_generations`` answers to each prompt of a generation batch (b × accumulation sequences at once),
    whose key/value cache is 2·L·kv·a bytes per token (``generation``; counted beside the activations, a
    little above the true peak, as sampling ends before backward starts). With a KL term (beta > 0) a full
    fine-tune holds a frozen reference copy of the weights (adapters switch the adapter off instead).
logits and loss
    The engine's TRL trainers score the head in tiles without materializing n × V logits (TRL's
    ``ChunkedLogProbFunction``): a projection buffer of min(n, 4096) × 32768 in the compute dtype (its
    Triton kernels on CUDA work in place), and on CPU its torch fallback's temporaries, seven fp32 tensors
    and a boolean mask of min(n, 4096) × min(V, 32768) at the peak of ``_backward_tile`` (found with the
    profiler's allocation events), plus the saved hidden states and their fp32 gradient, and a full
    fine-tune's fp32 head gradient. Plain HF Trainer materializes the logits: the fp32
    log-softmax, its gradient and the input gradient, 12·n·V bytes at the start of backward, the largest
    term with a 128k vocabulary.
runtime
    What the process holds besides tensors. CPU: peak RSS of the engine's own process training a model of a
    few thousand parameters (Python, torch, transformers, TRL, PEFT, datasets, DeepSpeed imported, the
    dataset loaded): measured ``CPU_RUNTIME_BYTES`` on the 2-core test machine (torch 2.13 CPU,
    transformers 5.23, TRL 1.16). CUDA: the CUDA context and cuBLAS workspaces, about 0.5 GiB on an H100,
    outside ``torch.cuda.max_memory_allocated`` (which the engine reports), so the tests compare without it.

A run fits when the total stays under ``FIT_SHARE`` of the device's memory: the rest absorbs the CUDA
caching allocator's fragmentation and this estimate's own error (±25% in the tests).

Steps, tokens and time (HF Trainer's arithmetic): a device sees ceil(rows / d) rows per epoch in
ceil(… / b) micro-batches, an optimizer step takes ``gradient_accumulation`` of them:
steps = ceil(epochs × ceil(micro-batches / accumulation)), or ``max_steps``. With packing the rows are
first packed into min(tokens, rows·s) / s sequences of s tokens. Tokens per micro-batch: b·s with packing,
else b × the mean tokens per row capped at s. FLOPs per token: 6·N for a full fine-tune, 4·N for
LoRA/QLoRA (frozen weights need no weight gradient; PERF.md), plus causal attention 6·L·q·s (QKᵀ and AV,
forward and backward); DPO adds the reference model's forward (2·N). GRPO trains on num_generations answers
per prompt (sequences = rows × num_generations, each prompt + answer long) and adds sampling (2·N per token)
and, with a KL term, the reference model's forward (2·N). Seconds = tokens × FLOPs per token /
(d × FLOP/s per device), the FLOP/s being the median achieved by the team's finished runs on the pool
(``achieved_flops_per_second``) or else the pool's peak × its assumed efficiency. GPU-hours = seconds /
3600 × d (a CPU pool reports device-hours too), cost = GPU-hours × the price per GPU-hour.

Time and cost are also given as a range (``seconds_low``–``seconds_high``, ``cost_low``–``cost_high``), with
its basis in ``range_basis``, because a run's speed varies (another job sharing the cores or the GPU, a
busier disk). From the team's finished runs: the time at the fastest and at the slowest of their speeds,
widened to at least ``MEASURED_SPREAD`` either side of the median's figure (one run, or a few alike, still
vary). With no finished runs the efficiency is a guess: the real one is taken to lie between a third of it
and twice it (``ASSUMED_SLOWER``, ``ASSUMED_FASTER``), so the range runs from half to three times the figure.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from studio import units
from training_app.engine.config import CONTEXT_KEYS

GIB = 1024**3
MIB = 1024**2

# Peak RSS of ``python -m training_app.engine`` training a 145k-parameter Llama (batch 1, 16 tokens) on
# the 2-core CPU test machine: the process baseline every CPU run pays (tests/test_estimator.py).
CPU_RUNTIME_BYTES = 540 * MIB
# CUDA context + cuBLAS workspaces of a torch process on an H100 (not in max_memory_allocated).
CUDA_RUNTIME_BYTES = GIB // 2
# Share of a device's memory a run may plan to use (allocator fragmentation and estimate error).
FIT_SHARE = 0.9
# The time range (module docstring): measured runs vary at least this factor either way from their median;
# an assumed efficiency may be this many times too optimistic (slower) or too pessimistic (faster).
MEASURED_SPREAD = 1.25
ASSUMED_SLOWER = 3.0
ASSUMED_FASTER = 2.0

NF4_BYTES = 0.5
NF4_CONSTANTS_DOUBLE_QUANT = 8 / 8 / 64 + 4 / (64 * 256)  # 8-bit absmax per 64 weights + fp32 per 256 blocks
NF4_CONSTANTS_PLAIN = 4 / 64  # fp32 absmax per 64 weights (hf_baseline.py's BitsAndBytesConfig)

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# Saved-for-backward bytes per token of one decoder layer as (per h, per i, per kv) coefficients, by
# (kind, residual-stream bytes, matmul-output bytes). Counted with saved_tensors_hooks (see the docstring).
#   full/4/4: fp32 weights, no autocast      full/2/2: 16-bit weights (DeepSpeed bf16, the HF peer)
#   full/4/2: fp32 weights under autocast    lora/*: frozen base, adapters on every linear layer
ACTIVATION_COEFFICIENTS: dict[tuple[str, int, int], tuple[int, int, int]] = {
    ("full", 4, 4): (32, 16, 8),
    ("full", 2, 2): (20, 8, 4),
    ("full", 4, 2): (30, 8, 4),
    ("lora", 4, 4): (20, 16, 8),
    ("lora", 2, 2): (20, 8, 4),
    ("lora", 4, 2): (20, 8, 4),
    ("lora_dropout", 4, 4): (48, 20, 8),
    ("lora_dropout", 2, 2): (32, 12, 4),
    ("lora_dropout", 4, 2): (32, 12, 4),
}
# TRL's chunked head: tokens and vocabulary per tile, and fp32 tiles alive at once in its torch fallback.
HEAD_TOKEN_TILE = 4096
HEAD_VOCAB_TILE = 32768
HEAD_CPU_TILE_BYTES = 7 * 4 + 1  # seven fp32 temporaries and one boolean mask per tile element
# Plain HF loss: fp32 log-softmax output + its gradient + the logits' gradient, bytes per token and vocabulary entry.
MATERIALIZED_LOGITS_BYTES = 12

STACKS = ("engine", "hf_trainer")


@dataclass(frozen=True)
class ModelShape:
    """The shape of a Llama-like decoder (Llama, Mistral, Qwen2 …), from its config.json values."""

    parameter_count: int
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    tied_embeddings: bool
    head_dim: int = 0  # 0: hidden_size // heads (models such as Qwen3 and Gemma set it apart)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a Hugging Face config.json dict (a multimodal one's ``text_config``); the parameter count is
        ``config["parameter_count"]`` when given, else computed from the shape (biases included)."""
        values = {**config, **(config.get("text_config") or {})}
        hidden = int(_first(values, "hidden_size", "n_embd", "d_model") or 0)
        heads = int(_first(values, "num_attention_heads", "n_head") or 1)
        shape = cls(
            parameter_count=0,
            hidden_size=hidden,
            layers=int(_first(values, "num_hidden_layers", "n_layer") or 0),
            heads=heads,
            kv_heads=int(values.get("num_key_value_heads") or heads),
            intermediate_size=int(_first(values, "intermediate_size", "n_inner") or 4 * hidden),
            vocab_size=int(values.get("vocab_size") or 0),
            context_length=int(_first(values, *CONTEXT_KEYS) or 0),
            tied_embeddings=bool(values.get("tie_word_embeddings", False)),
            head_dim=int(values.get("head_dim") or 0),
        )
        count = values.get("parameter_count") or shape.computed_parameters(
            attention_bias=bool(values.get("attention_bias") or values.get("model_type") == "qwen2"),
            mlp_bias=bool(values.get("mlp_bias")),
        )
        return replace(shape, parameter_count=int(count))

    @classmethod
    def from_details(
        cls, parameter_count: int, details: dict[str, Any], context_length: int, vocab_size: int
    ) -> ModelShape:
        """From a registered base model: its safetensors-counted parameters and ``inspection``'s details.

        Details written before ``intermediate_size`` was recorded lack it: it is then solved from the
        parameter count, assuming untied embeddings unless that leaves no room for the MLP.
        """
        values: dict[str, Any] = {
            "hidden_size": details.get("hidden_size"),
            "num_hidden_layers": details.get("layers"),
            "num_attention_heads": details.get("attention_heads"),
            "num_key_value_heads": details.get("key_value_heads"),
            "intermediate_size": details.get("intermediate_size"),
            "head_dim": details.get("head_dim"),
            "tie_word_embeddings": bool(details.get("tie_word_embeddings", False)),
            "vocab_size": vocab_size,
            "max_position_embeddings": context_length,
        }
        values = {key: value for key, value in values.items() if value is not None}
        shape = cls.from_config(values)
        if not details.get("intermediate_size") and parameter_count and shape.layers and shape.hidden_size:
            shape = shape._with_solved_mlp(parameter_count, tied_known="tie_word_embeddings" in details)
        return replace(shape, parameter_count=int(parameter_count or shape.parameter_count))

    @property
    def attention_head_dim(self) -> int:
        """Width of one attention head."""
        return self.head_dim or self.hidden_size // max(self.heads, 1)

    @property
    def query_width(self) -> int:
        """q: the width of the query (and attention output) projections."""
        return self.heads * self.attention_head_dim

    @property
    def kv_width(self) -> int:
        """kv: the width of the key and value projections (smaller than q with grouped-query attention)."""
        return self.kv_heads * self.attention_head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by PEFT module name."""
        h, q, kv, i = self.hidden_size, self.query_width, self.kv_width, self.intermediate_size
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_linear_parameters(self) -> int:
        """Weights of one decoder layer's linear layers."""
        return sum(inputs * outputs for inputs, outputs in self.linear_shapes().values())

    def linear_parameters(self) -> int:
        """Weights of all decoder layers' linear layers: what QLoRA quantizes."""
        return self.layers * self.layer_linear_parameters()

    def embedding_parameters(self) -> int:
        """The token embedding matrix (the output head is another such matrix unless tied)."""
        return self.vocab_size * self.hidden_size

    def computed_parameters(self, *, attention_bias: bool = False, mlp_bias: bool = False) -> int:
        """Parameters of the shape: embeddings, head (unless tied), linear layers, RMSNorm weights, biases."""
        h = self.hidden_size
        head = 0 if self.tied_embeddings else self.embedding_parameters()
        norms = self.layers * 2 * h + h
        biases = 0
        if attention_bias:
            biases += self.layers * (2 * self.query_width + 2 * self.kv_width)
        if mlp_bias:
            biases += self.layers * (2 * self.intermediate_size + h)
        return self.embedding_parameters() + head + self.linear_parameters() + norms + biases

    def _with_solved_mlp(self, parameter_count: int, *, tied_known: bool) -> ModelShape:
        h, layers = self.hidden_size, self.layers
        attention = 2 * h * self.query_width + 2 * h * self.kv_width
        options = (self.tied_embeddings,) if tied_known else (False, True)
        for tied in options:
            rest = parameter_count - (1 if tied else 2) * self.embedding_parameters() - h
            width = round((rest / layers - attention - 2 * h) / (3 * h))
            if width > 0:
                return replace(self, intermediate_size=width, tied_embeddings=tied)
        return self


@dataclass(frozen=True)
class Pool:
    """A worker pool a job runs on: accelerator, devices (processes/GPUs) per job, memory and speed each."""

    name: str
    label: str
    accelerator: str  # "cpu" or "cuda"
    devices: int
    memory_bytes: int  # usable memory per device: GPU memory, or the host RAM share of one CPU process
    peak_flops: float  # dense peak per device, FLOP/s, for the precision used (H100 bf16: 989e12)
    efficiency: float  # assumed model-FLOPs utilization when the team has no finished runs on the pool

    @classmethod
    def from_settings(cls, name: str, spec: dict[str, Any]) -> Pool:
        """From a ``settings.TRAINING_POOLS`` entry: ``memory_gib`` (or ``memory_bytes``), ``peak_tflops``
        (or ``peak_flops``), ``devices``, ``accelerator``, ``efficiency``, ``label``."""
        memory = spec.get("memory_bytes") or float(spec.get("memory_gib", 8)) * GIB
        peak = spec.get("peak_flops") or float(spec.get("peak_tflops", 0.1)) * 1e12
        return cls(
            name=name,
            label=str(spec.get("label") or name),
            accelerator="cuda" if str(spec.get("accelerator", "cpu")).lower() in ("cuda", "gpu") else "cpu",
            devices=max(1, int(spec.get("devices", 1))),
            memory_bytes=int(memory),
            peak_flops=float(peak),
            efficiency=float(spec.get("efficiency", 0.2)),
        )

    @property
    def memory_gib(self) -> float:
        """Memory per device in GiB, as the settings give it."""
        return round(self.memory_bytes / GIB, 2)

    @property
    def device_word(self) -> str:
        """What one device is called in a sentence: a GPU, or a process on a CPU pool."""
        return "GPU" if self.accelerator == "cuda" else "process"


@dataclass(frozen=True)
class Estimate:
    """What the launch form shows; ``memory_breakdown`` adds up to ``memory_bytes`` (the peak per device)."""

    total_parameters: int
    trainable_parameters: int
    memory_bytes: int
    memory_breakdown: dict[str, int]
    fits: bool
    verdict: str
    dataset_tokens: int
    optimizer_steps: int
    tokens_to_train: int
    seconds: float
    throughput_source: str
    gpu_hours: float
    cost: float | None
    device_memory_bytes: int = 0
    host_bytes: int = 0  # ZeRO-3 offload: optimizer state and parameters held in host memory
    notes: list[str] = field(default_factory=list)
    # The range around ``seconds`` and ``cost`` and what it rests on (module docstring).
    seconds_low: float = 0.0
    seconds_high: float = 0.0
    cost_low: float | None = None
    cost_high: float | None = None
    range_basis: str = ""
    # The memory settings the estimate chose ("Choose memory settings"): ``memory_plan``'s answer, or None.
    memory_plan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for the API and the job record."""
        return asdict(self)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes per device by part (only the parts alive at the peak), host bytes, and remarks."""

    breakdown: dict[str, int]
    host_bytes: int
    notes: list[str]

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())


# ---- parameters and FLOPs -----------------------------------------------------------------------------


def target_modules(lora: dict[str, Any]) -> tuple[str, ...]:
    """The decoder linear layers an adapter targets ("all-linear": all seven; unknown names are ignored)."""
    targets = lora.get("target_modules", "all-linear")
    if targets == "all-linear" or not targets:
        return ALL_LINEAR
    names = [targets] if isinstance(targets, str) else list(targets)
    return tuple(name for name in ALL_LINEAR if name in names)


def trainable_parameters(shape: ModelShape, method: str, lora: dict[str, Any]) -> int:
    """LoRA and QLoRA train r·(in + out) per targeted linear layer and layer; a full fine-tune everything."""
    if method == "full":
        return shape.parameter_count
    rank = int(lora.get("rank", 16))
    shapes = shape.linear_shapes()
    return shape.layers * sum(rank * sum(shapes[name]) for name in target_modules(lora))


def flops_per_token(
    shape: ModelShape, method: str, sequence_length: float | None, *, stage: str = "sft", kl_reference: bool = False
) -> float:
    """Training FLOPs per token: 6·N full, 4·N adapters (PERF.md), + causal attention 6·L·q·s, + DPO's
    reference forward 2·N, or KTO's 6·N (the reference on the answer, and the policy and the reference on the
    mismatched answer its KL term reads, all without gradients), or GRPO's sampling 2·N (+ 2·N for the
    reference forward with ``kl_reference``). ``sequence_length`` None leaves the attention term out."""
    dense = (6 if method == "full" else 4) * shape.parameter_count
    attention = 6 * shape.layers * shape.query_width * (sequence_length or 0)
    grpo = 2 + (2 if kl_reference else 0)
    reference = {"dpo": 2, "kto": 6, "grpo": grpo}.get(stage, 0) * shape.parameter_count
    return float(dense + attention + reference)


def achieved_flops_per_second(
    *,
    tokens_per_second: float,
    shape: ModelShape,
    method: str,
    devices: int,
    sequence_length: float | None = None,
    stage: str = "sft",
) -> float:
    """FLOP/s per device a finished run achieved: its tokens/s (all devices) × FLOPs per token / devices.

    Pass the run's sequence length (tokens per sequence) so the attention term counts as in ``estimate``.
    """
    return tokens_per_second * flops_per_token(shape, method, sequence_length, stage=stage) / max(devices, 1)


# ---- memory ------------------------------------------------------------------------------------------


def estimate_memory(
    config: dict[str, Any],
    shape: ModelShape,
    pool: Pool,
    *,
    tokens_per_row: float | None = None,
    stack: str = "engine",
) -> MemoryEstimate:
    """Peak memory per device of ``config`` (a RunConfig-shaped dict) on ``pool`` (formula: module docstring).

    ``tokens_per_row``: the dataset's mean row length; rows shorter than the sequence length mean padded
    batches (an attention mask). ``stack``: "engine" (Atelier's trainer) or "hf_trainer" (plain HF Trainer
    and PEFT as ``../shared/bench/hf_baseline.py`` runs them: materialized logits, and for QLoRA
    ``prepare_model_for_kbit_training``'s fp32 embeddings and norms, fp32 adapters, no double quantization).
    """
    if stack not in STACKS:
        raise ValueError(f"stack must be one of {', '.join(STACKS)}")
    run = _Run.read(config, shape, pool, tokens_per_row=tokens_per_row, stack=stack)
    weights = _weights(run)
    state = _trainable_state(run)
    activations = _activations(run)
    head = _head(run)
    casts = 2.0 * shape.linear_parameters() if run.autocast_casts else 0.0
    casts /= run.zero3_divisor
    buffers = _buffers(run)
    generation = _generation_cache(run)
    runtime = CUDA_RUNTIME_BYTES if run.cuda else CPU_RUNTIME_BYTES

    notes: list[str] = []
    if run.checkpointing:
        # Backward recomputes one layer at a time after the head's backward is done: the larger of the two.
        kept, recomputed = _checkpointed_activations(run)
        activations, head = (kept + recomputed, 0.0) if recomputed > head else (kept, head)
    forward_backward = activations + head + casts
    parts: dict[str, float] = {"weights": weights["device"]}
    if run.adapters:
        parts.update(trainable_weights=state["weights"], gradients=state["gradients"], optimizer=state["optimizer"])
        parts.update(activations=activations, logits=head)
    elif state["gradients"] > forward_backward:
        parts.update(gradients=state["gradients"], optimizer=state["optimizer"])
        notes.append(
            f"The peak comes with the full gradients ({units.memory(state['gradients'])}) at the optimizer step; the "
            f"activations and loss ({units.memory(forward_backward)}) are freed by then."
        )
    else:
        parts.update(optimizer=state["optimizer"], activations=activations, logits=head, weight_casts=casts)
        notes.append(
            f"The peak comes at the start of the backward pass; the gradients ({units.memory(state['gradients'])}) "
            "replace the activations as it proceeds, so they are not added."
        )
    if generation:
        parts["generation"] = generation
    parts.update(buffers=buffers, runtime=runtime)
    if run.offload:
        notes.append(
            f"ZeRO-3 offload keeps {units.memory(weights['host'] + state['host'])} in host memory per process."
        )
    breakdown = {name: math.ceil(value) for name, value in parts.items() if value > 0}
    return MemoryEstimate(breakdown=breakdown, host_bytes=int(weights["host"] + state["host"]), notes=notes)


@dataclass(frozen=True)
class _Run:
    """The settings the memory formula reads, resolved once (dtypes, ZeRO stage, tokens per micro-batch)."""

    shape: ModelShape
    method: str
    adapters: bool
    cuda: bool
    devices: int
    zero_stage: int
    offload: bool
    mixed: bool  # bf16/fp16 (autocast, or 16-bit weights under DeepSpeed)
    activation_bytes: int
    residual_bytes: int
    frozen_bytes: float
    adapter_bytes: int
    rank: int
    targets: int
    dropout: bool
    batch: int
    sequence: int
    padded: bool
    checkpointing: bool
    materialized_logits: bool
    kbit_fp32: bool  # prepare_model_for_kbit_training: non-quantized weights and the residual stream in fp32
    autocast_casts: bool
    trainable: int
    dpo: bool  # a frozen reference model beside a full fine-tune: DPO, KTO, and GRPO with a KL term
    generation_sequences: int  # GRPO: answers sampled at once (0 for other goals)

    @property
    def tokens(self) -> int:
        return self.batch * self.sequence

    @property
    def zero3_divisor(self) -> int:
        return self.devices if self.zero_stage == 3 else 1

    @classmethod
    def read(
        cls, config: dict[str, Any], shape: ModelShape, pool: Pool, *, tokens_per_row: float | None, stack: str
    ) -> _Run:
        method = str(config.get("method", "lora"))
        adapters = method in ("lora", "qlora")
        precision = str(config.get("precision", "fp32"))
        if precision == "auto":  # as the trainer resolves it (engine.speed): bf16 on GPUs, fp32 on the CPU
            precision = "bf16" if pool.accelerator == "cuda" else "fp32"
        mixed = PRECISION_BYTES.get(precision, 4) == 2
        deepspeed = str(config.get("deepspeed", "none"))
        stage = _zero_stage(deepspeed, config.get("deepspeed_custom"))
        offload = deepspeed == "zero3_offload" or _custom_offload(config.get("deepspeed_custom"))
        lora = dict(config.get("lora") or {})
        hf = stack == "hf_trainer"
        kbit_fp32 = hf and method == "qlora"
        # Frozen weights: a full fine-tune loads fp32 (DeepSpeed then casts them to 16 bits under bf16/fp16);
        # adapters load in the run's precision; QLoRA's 16-bit compute dtype is bf16 even for fp32 runs.
        if method == "full":
            frozen = 2.0 if (stage and mixed) else 4.0
        elif method == "qlora":
            frozen = 2.0
        else:
            frozen = 2.0 if mixed else 4.0
        activation = 2 if (mixed or method == "qlora") else 4
        # The residual stream: fp32 for a full fine-tune's fp32 weights and after prepare_model_for_kbit_training.
        residual = 4 if (method == "full" and not (stage and mixed)) or kbit_fp32 else int(frozen)
        # PEFT up-casts adapters to fp32; TRL keeps them in bf16 for QLoRA and in the base dtype under ZeRO-3.
        fp32_adapters = adapters and (hf or (method != "qlora" and stage != 3))
        adapter = 4 if fp32_adapters else int(frozen)
        sequence = min(int(config.get("max_seq_length", 512)), shape.context_length or 10**9)
        grpo = config.get("stage") == "grpo"
        if grpo:  # the prompt (the rows' mean length, at most the sequence length) plus the sampled answer
            prompt = min(sequence, math.ceil(tokens_per_row)) if tokens_per_row else sequence
            completion = int(config.get("max_completion_length", 64))
            sequence = min(prompt + completion, shape.context_length or 10**9)
        packing = bool(config.get("packing"))
        padded = not packing and (tokens_per_row is None or tokens_per_row < sequence)
        batch = int(config.get("per_device_batch_size", 4))
        if config.get("stage") == "dpo":
            batch *= 2  # chosen and rejected answers go through the model together
        return cls(
            shape=shape,
            method=method,
            adapters=adapters,
            cuda=pool.accelerator == "cuda",
            devices=max(1, pool.devices),
            zero_stage=stage,
            offload=offload,
            mixed=mixed,
            activation_bytes=activation,
            residual_bytes=residual,
            frozen_bytes=frozen,
            adapter_bytes=adapter,
            rank=int(lora.get("rank", 16)),
            targets=len(target_modules(lora)),
            dropout=float(lora.get("dropout", 0.05)) > 0,
            batch=batch,
            sequence=sequence,
            padded=padded and not hf,
            checkpointing=bool(config.get("gradient_checkpointing")),
            materialized_logits=hf,
            kbit_fp32=kbit_fp32,
            autocast_casts=method == "full" and mixed and not stage,
            trainable=trainable_parameters(shape, method, lora),
            dpo=config.get("stage") in ("dpo", "kto") or (grpo and float(config.get("grpo_beta", 0.04)) > 0),
            generation_sequences=batch * int(config.get("gradient_accumulation", 1)) if grpo else 0,
        )


def _weights(run: _Run) -> dict[str, float]:
    """Bytes of the model's weights on the device (and in host memory under ZeRO-3 offload)."""
    shape = run.shape
    if run.method == "qlora":
        linear = shape.linear_parameters()
        constants = NF4_CONSTANTS_PLAIN if run.materialized_logits else NF4_CONSTANTS_DOUBLE_QUANT
        other = (4.0 if run.kbit_fp32 else 2.0) * (shape.parameter_count - linear)
        total = (NF4_BYTES + constants) * linear + other
    else:
        total = run.frozen_bytes * shape.parameter_count
    if run.dpo and run.method == "full":
        total *= 2  # TRL's frozen reference model for DPO and KTO (adapters switch the adapter off instead)
    if run.zero_stage != 3:
        return {"device": total, "host": 0.0}
    gathered = 2 * max(shape.layer_linear_parameters(), shape.embedding_parameters()) * min(run.frozen_bytes, 2.0)
    if run.offload:
        return {"device": gathered, "host": total / run.devices}
    return {"device": total / run.devices + gathered, "host": 0.0}


def _trainable_state(run: _Run) -> dict[str, float]:
    """Adapter weights, gradients and AdamW moments of the trainable parameters, per device."""
    count = float(run.trainable)
    size = run.adapter_bytes
    if not run.zero_stage:
        return {
            "weights": count * size if run.adapters else 0.0,  # a full fine-tune's are the weights
            "gradients": count * size,
            "optimizer": 2 * count * size,
            "host": 0.0,
        }
    # ZeRO: 16-bit weights and gradients with an fp32 master copy and moments (12 bytes) in mixed precision,
    # fp32 weights, gradients and moments otherwise; stage 2 partitions gradients and optimizer state,
    # stage 3 the weights too. Adapters' weights are their own; a full fine-tune's are in ``_weights``.
    partition = float(run.devices)
    weight_bytes = 2.0 if run.mixed else 4.0
    optimizer = (12.0 if run.mixed else 8.0) * count / partition
    weights = weight_bytes * count / (partition if run.zero_stage == 3 else 1) if run.adapters else 0.0
    gradients = weight_bytes * count / partition
    if run.offload:  # gradients go to host memory as they are reduced; the device keeps buckets only
        return {"weights": 0.0, "gradients": 0.0, "optimizer": 0.0, "host": optimizer + weights + gradients}
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "host": 0.0}


def _activations(run: _Run) -> float:
    """Activations saved for backward across the layers, for one micro-batch (see the docstring)."""
    shape = run.shape
    return _layer_activation_bytes(run) * run.tokens * shape.layers


def _checkpointed_activations(run: _Run) -> tuple[float, float]:
    """With gradient checkpointing: (every layer's kept input, one layer's recomputed activations)."""
    inputs = run.shape.hidden_size * run.residual_bytes * run.tokens * run.shape.layers
    return inputs, _layer_activation_bytes(run) * run.tokens


def _layer_activation_bytes(run: _Run) -> float:
    """Saved bytes per token of one decoder layer."""
    shape = run.shape
    kind = "full" if run.method == "full" else ("lora_dropout" if run.dropout else "lora")
    mixed_residual = run.residual_bytes if run.method == "full" or run.kbit_fp32 else run.activation_bytes
    key = (kind, mixed_residual, run.activation_bytes)
    per_h, per_i, per_kv = ACTIVATION_COEFFICIENTS.get(key) or ACTIVATION_COEFFICIENTS[(kind, 4, 4)]
    # K and V are saved at their own width with GQA; a padding mask makes SDPA repeat them to q's width.
    kv_width = shape.query_width if run.padded else shape.kv_width
    per_token = per_h * shape.hidden_size + per_i * shape.intermediate_size + per_kv * kv_width
    per_token += 4 * shape.heads + 8  # attention log-sum-exp (fp32 per head), RMSNorm inverse RMS
    if run.adapters:
        per_token += run.targets * run.rank * run.activation_bytes
    if run.padded:
        per_token += run.sequence * run.activation_bytes  # the additive attention bias, b·s² per layer
    return float(per_token)


def _head(run: _Run) -> float:
    """The output head and loss at the start of backward: logits (materialized or in tiles) and gradients."""
    shape = run.shape
    tokens = run.tokens
    hidden = tokens * shape.hidden_size
    head_trainable = run.method == "full"
    head_gradient = 4.0 * shape.embedding_parameters() / (run.devices if run.zero_stage >= 2 else 1)
    if run.materialized_logits:
        logits = MATERIALIZED_LOGITS_BYTES * tokens * shape.vocab_size
        cast = 2.0 * shape.embedding_parameters() if run.kbit_fp32 else 0.0  # autocast's copy of an fp32 head
        return logits + cast + (head_gradient if head_trainable else 0.0)
    # The projection buffer is always HEAD_VOCAB_TILE wide; the CPU fallback's temporaries are as wide as
    # the vocabulary (up to a tile) and fp32.
    rows = min(tokens, HEAD_TOKEN_TILE)
    tiles = rows * HEAD_VOCAB_TILE * run.activation_bytes
    if not run.cuda:
        tiles += HEAD_CPU_TILE_BYTES * rows * min(shape.vocab_size, HEAD_VOCAB_TILE)
    # The saved hidden states (compute dtype) and their fp32 gradient.
    states = hidden * (run.activation_bytes + 4)
    return tiles + states + (head_gradient if head_trainable else 0.0)


def _generation_cache(run: _Run) -> float:
    """GRPO's key/value cache while sampling a generation batch: 2·L·kv·a bytes per token of each answer."""
    if not run.generation_sequences:
        return 0.0
    shape = run.shape
    return 2.0 * shape.layers * shape.kv_width * run.activation_bytes * run.generation_sequences * run.sequence


def _buffers(run: _Run) -> float:
    """Communication buffers: DDP's gradient buckets, ZeRO's reduce bucket (hidden² elements)."""
    if run.zero_stage:
        return 2 * 2.0 * run.shape.hidden_size**2
    if run.devices > 1:
        return float(run.trainable * run.adapter_bytes)
    return 0.0


def _zero_stage(choice: str, custom: Any) -> int:
    if choice in ("zero2",):
        return 2
    if choice in ("zero3", "zero3_offload"):
        return 3
    if choice == "custom" and isinstance(custom, dict):
        stage = (custom.get("zero_optimization") or {}).get("stage", 0)
        return stage if isinstance(stage, int) and stage in (1, 2, 3) else 0
    return 0


def _custom_offload(custom: Any) -> bool:
    if not isinstance(custom, dict):
        return False
    zero = custom.get("zero_optimization") or {}
    return any((zero.get(key) or {}).get("device") in ("cpu", "nvme") for key in ("offload_optimizer", "offload_param"))


# ---- the estimate ------------------------------------------------------------------------------------


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
    """Everything the launch form shows for ``config`` (a RunConfig-shaped dict) on ``pool``.

    ``dataset_rows`` / ``dataset_tokens``: the training split. ``observed_flops_per_second``: FLOP/s per
    device of the team's finished runs on this pool (``achieved_flops_per_second``); their median replaces
    the pool's assumed efficiency, and their spread gives the time and cost range.
    """
    method = str(config.get("method", "lora"))
    sequence = min(int(config.get("max_seq_length", 512)), shape.context_length or 10**9)
    tokens_per_row = dataset_tokens / dataset_rows if dataset_rows else float(sequence)
    plan = memory_plan(config, shape, pool, tokens_per_row=tokens_per_row) if config.get("memory_auto") else None
    if plan is not None:
        config = {**config, **{key: value for key, value in plan.items() if key != "reason"}}
    memory = estimate_memory(config, shape, pool, tokens_per_row=tokens_per_row)
    steps, tokens_to_train, tokens_per_sequence = _schedule(config, pool, dataset_rows, dataset_tokens, sequence)

    usable = [speed for speed in observed_flops_per_second or [] if speed > 0]
    if usable:
        speed = statistics.median(usable)
        runs = "run" if len(usable) == 1 else "runs"
        source = f"measured on {len(usable)} of your finished {runs} on this pool"
    else:
        speed = pool.peak_flops * pool.efficiency
        source = f"assumed {pool.efficiency:.0%} of peak ({pool.peak_flops / 1e12:g} TFLOP/s per {pool.device_word})"
    kl_reference = float(config.get("grpo_beta", 0.04)) > 0
    per_token = flops_per_token(
        shape, method, tokens_per_sequence, stage=str(config.get("stage", "sft")), kl_reference=kl_reference
    )
    work = tokens_to_train * per_token / pool.devices  # FLOPs per device

    def time_at(flops_per_second: float) -> float:
        return work / max(flops_per_second, 1.0 / pool.devices)

    seconds = time_at(speed)
    if usable:
        low = min(time_at(max(usable)), seconds / MEASURED_SPREAD)
        high = max(time_at(min(usable)), seconds * MEASURED_SPREAD)
        basis = f"from {len(usable)} finished {runs} on this pool"
    else:
        low, high = seconds / ASSUMED_FASTER, seconds * ASSUMED_SLOWER
        basis = "no finished runs on this pool yet: assumed efficiency"
    gpu_hours = seconds / 3600 * pool.devices

    def cost_of(duration: float) -> float | None:
        return round(duration / 3600 * pool.devices * price_per_gpu_hour, 2) if price_per_gpu_hour is not None else None

    cost = cost_of(seconds)
    total = memory.total
    fits = total <= FIT_SHARE * pool.memory_bytes
    return Estimate(
        total_parameters=shape.parameter_count,
        trainable_parameters=trainable_parameters(shape, method, dict(config.get("lora") or {})),
        memory_bytes=total,
        memory_breakdown=memory.breakdown,
        fits=fits,
        verdict=_verdict(config, shape, pool, total, tokens_per_row),
        dataset_tokens=dataset_tokens,
        optimizer_steps=steps,
        tokens_to_train=tokens_to_train,
        seconds=round(seconds, 1),
        throughput_source=source,
        gpu_hours=round(gpu_hours, 6),
        cost=cost,
        device_memory_bytes=pool.memory_bytes,
        host_bytes=memory.host_bytes,
        notes=memory.notes,
        seconds_low=round(low, 1),
        seconds_high=round(high, 1),
        cost_low=cost_of(low),
        cost_high=cost_of(high),
        range_basis=basis,
        memory_plan=plan,
    )


def memory_plan(config: dict[str, Any], shape: ModelShape, pool: Pool, *, tokens_per_row: float) -> dict[str, Any]:
    """Activation checkpointing only when memory needs it, and the largest micro-batch that fits.

    Keeps the rows per optimizer step (micro-batch × accumulation) as set, so the run learns the same; tries
    every micro-batch that divides them, largest first, without checkpointing, then with it (dropping it
    was worth 1.4× on 8B LoRA on an H200, more than any micro-batch). GRPO keeps its micro-batch, which
    must hold whole groups of answers. Returns the three settings and the reason in words; when nothing
    fits, the settings as they were and the verdict's advice applies.
    """
    batch = max(1, int(config.get("per_device_batch_size", 4)))
    accumulation = max(1, int(config.get("gradient_accumulation", 1)))
    rows_per_step = batch * accumulation
    if config.get("stage") == "grpo":
        micro_batches = [batch]
    else:
        micro_batches = [size for size in range(rows_per_step, 0, -1) if rows_per_step % size == 0]
    limit = FIT_SHARE * pool.memory_bytes
    where = f"{units.memory(pool.memory_bytes)} per {pool.device_word}"
    smallest_without: int | None = None
    for checkpointing in (False, True):
        for size in micro_batches:
            settings = {
                "gradient_checkpointing": checkpointing,
                "per_device_batch_size": size,
                "gradient_accumulation": rows_per_step // size,
            }
            total = estimate_memory({**config, **settings}, shape, pool, tokens_per_row=tokens_per_row).total
            if not checkpointing:
                smallest_without = total
            if total > limit:
                continue
            shape_words = f"micro-batch {size} × {rows_per_step // size} accumulation"
            if checkpointing:
                reason = (
                    f"the estimate: without checkpointing even micro-batch {micro_batches[-1]} needs about "
                    f"{units.memory(smallest_without or 0)} of {where}; with it, {shape_words} needs about "
                    f"{units.memory(total)}"
                )
            else:
                reason = (
                    f"the estimate: {shape_words} without checkpointing needs about {units.memory(total)} of {where}"
                )
            return {**settings, "reason": reason}
    return {
        "gradient_checkpointing": bool(config.get("gradient_checkpointing")),
        "per_device_batch_size": batch,
        "gradient_accumulation": accumulation,
        "reason": "the estimate found no micro-batch that fits, with or without checkpointing: see its advice",
    }


def _schedule(config: dict[str, Any], pool: Pool, rows: int, tokens: int, sequence: int) -> tuple[int, int, float]:
    """(optimizer steps, tokens to train, mean tokens per sequence), as HF Trainer counts steps."""
    batch = max(1, int(config.get("per_device_batch_size", 4)))
    accumulation = max(1, int(config.get("gradient_accumulation", 1)))
    devices = max(1, pool.devices)
    epoch_tokens = min(tokens, rows * sequence) if rows else 0
    if config.get("stage") == "grpo" and rows:
        # Each prompt is answered num_generations times; an answer is its prompt plus up to the completion.
        answers = max(2, int(config.get("num_generations", 4)))
        per_answer = min(epoch_tokens / rows, sequence) + int(config.get("max_completion_length", 64))
        rows *= answers
        epoch_tokens = int(rows * per_answer)
    if config.get("packing") and rows:
        sequences, per_sequence = max(1, math.ceil(epoch_tokens / sequence)), float(sequence)
    else:
        sequences, per_sequence = rows, (epoch_tokens / rows if rows else 0.0)
    if not sequences:
        return 0, 0, per_sequence
    micro_batches = math.ceil(math.ceil(sequences / devices) / batch)
    steps_per_epoch = max(1, math.ceil(micro_batches / accumulation))
    max_steps = config.get("max_steps")
    if max_steps:
        steps = int(max_steps)
        return steps, int(steps * batch * accumulation * devices * per_sequence), per_sequence
    epochs = float(config.get("epochs", 1.0))
    return math.ceil(epochs * steps_per_epoch), int(epochs * epoch_tokens), per_sequence


def _verdict(config: dict[str, Any], shape: ModelShape, pool: Pool, memory: int, tokens_per_row: float) -> str:
    """Plain words; when it does not fit, the concrete changes that would make it fit (each re-estimated)."""
    limit = FIT_SHARE * pool.memory_bytes
    where = f"per {pool.device_word}"
    if memory <= limit:
        return f"Fits: about {units.memory(memory)} of {units.memory(pool.memory_bytes)} {where}."
    fixes = _fixes(config, shape, pool, tokens_per_row, limit)
    advice = "; or ".join(fixes) if fixes else "pick a worker pool with more memory per device"
    return (
        f"Does not fit: about {units.memory(memory)} {where} needed, {units.memory(pool.memory_bytes)} available "
        f"({FIT_SHARE:.0%} usable). Try: {advice}."
    )


def _fixes(config: dict[str, Any], shape: ModelShape, pool: Pool, tokens_per_row: float, limit: float) -> list[str]:
    """Up to three changes, or smallest combinations of them, that make the run fit (each re-estimated)."""
    candidates = _candidate_changes(config, pool)

    def needed(changes: dict[str, Any]) -> int:
        return estimate_memory({**config, **changes}, shape, pool, tokens_per_row=tokens_per_row).total

    found: list[tuple[int, int, tuple[int, ...]]] = []
    for size in (1, 2, 3):
        for combination in itertools.combinations(range(len(candidates)), size):
            keys = [key for index in combination for key in candidates[index][1]]
            if len(keys) != len(set(keys)):  # two choices of the same setting
                continue
            if any(set(earlier) <= set(combination) for _, _, earlier in found):
                continue  # a smaller combination already fits
            changes = {key: value for index in combination for key, value in candidates[index][1].items()}
            total = needed(changes)
            if total <= limit:
                found.append((size, total, combination))
        if len(found) >= 3:
            break
    found.sort()
    return [
        " and ".join(candidates[index][0] for index in combination) + f" (about {units.memory(total)})"
        for _, total, combination in found[:3]
    ]


def _candidate_changes(config: dict[str, Any], pool: Pool) -> list[tuple[str, dict[str, Any]]]:
    """The settings a person can change to save memory, in words and as config changes."""
    method = config.get("method", "lora")
    batch = int(config.get("per_device_batch_size", 4))
    accumulation = int(config.get("gradient_accumulation", 1))
    candidates: list[tuple[str, dict[str, Any]]] = []
    if method == "full":
        candidates.append(("LoRA instead of a full fine-tune", {"method": "lora"}))
    if method in ("full", "lora") and pool.accelerator == "cuda":
        candidates.append(("QLoRA (4-bit base weights)", {"method": "qlora"}))
    if batch > 1:
        smaller = max(1, batch // 2) if batch > 2 else 1
        accumulate = accumulation * batch // smaller
        candidates.append(
            (
                f"micro-batch {smaller} with gradient accumulation {accumulate}",
                {"per_device_batch_size": smaller, "gradient_accumulation": accumulate},
            )
        )
    if not config.get("gradient_checkpointing"):
        candidates.append(("gradient checkpointing", {"gradient_checkpointing": True}))
    deepspeed = config.get("deepspeed", "none")
    if pool.devices > 1 and deepspeed in ("none", "zero2"):
        candidates.append((f"DeepSpeed ZeRO-3 across the {pool.devices} GPUs", {"deepspeed": "zero3"}))
    if deepspeed != "zero3_offload" and pool.accelerator == "cuda":
        candidates.append(("DeepSpeed ZeRO-3 with CPU offload", {"deepspeed": "zero3_offload"}))
    sequence = int(config.get("max_seq_length", 512))
    if sequence > 512:
        candidates.append((f"sequence length {sequence // 2}", {"max_seq_length": sequence // 2}))
    return candidates


# ---- serving ------------------------------------------------------------------------------------------

# Bytes per weight by serving precision; the key/value cache is kept in 16 bits except under fp32.
SERVING_PRECISIONS = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
# Tensor-parallel sizes a model is split over (they must divide the attention heads: powers of two).
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ServingMemory:
    """GPU memory to serve a model: ``weights`` (+ an adapter's), the key/value cache for ``concurrency``
    sequences of ``context_length`` tokens each, and the runtime a GPU process holds besides."""

    weights: int
    adapter: int
    kv_cache: int
    runtime: int
    kv_bytes_per_token: int

    @property
    def model_bytes(self) -> int:
        """What tensor parallelism splits across GPUs: weights, adapter and cache."""
        return self.weights + self.adapter + self.kv_cache

    @property
    def total(self) -> int:
        return self.model_bytes + self.runtime

    def gpus_needed(self, memory_per_gpu: int) -> int | None:
        """The fewest GPUs of ``memory_per_gpu`` bytes (1, 2, 4 or 8, split tensor-parallel) that hold it within
        ``FIT_SHARE`` of each GPU (vLLM's default ``gpu_memory_utilization`` is the same 0.9), each paying the
        runtime; None when eight are not enough."""
        for gpus in TENSOR_PARALLEL_SIZES:
            if self.model_bytes / gpus + self.runtime <= FIT_SHARE * memory_per_gpu:
                return gpus
        return None


def serving_memory(
    shape: ModelShape, *, precision: str, context_length: int, concurrency: int, adapter_bytes: int = 0
) -> ServingMemory:
    """GPU memory to serve ``shape`` at ``precision`` (``SERVING_PRECISIONS``) to ``concurrency`` requests at once,
    each up to ``context_length`` tokens (prompt + answer).

    weights = N × bytes(precision); key/value cache = 2 (K and V) × L × kv_heads × head_dim × a bytes per token
    (a = 4 under fp32, else 2), × context_length × concurrency, as vLLM reserves it for full-length sequences; plus
    ``adapter_bytes`` (a LoRA adapter's files) and the CUDA runtime (``CUDA_RUNTIME_BYTES``).
    """
    if precision not in SERVING_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(SERVING_PRECISIONS)}")
    cache_bytes = 4 if precision == "fp32" else 2
    per_token = 2 * shape.layers * shape.kv_width * cache_bytes
    return ServingMemory(
        weights=shape.parameter_count * SERVING_PRECISIONS[precision],
        adapter=max(int(adapter_bytes), 0),
        kv_cache=per_token * max(int(context_length), 0) * max(int(concurrency), 0),
        runtime=CUDA_RUNTIME_BYTES,
        kv_bytes_per_token=per_token,
    )


def _first(values: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if values.get(key):
            return values[key]
    return None
