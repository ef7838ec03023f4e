"""The studio's own starter model: a small Llama causal LM with a BPE tokenizer, trained here on CPU.

The studio reaches no model hub, so ``create_starter_model`` makes a base model from nothing: it trains a
byte-level BPE tokenizer on the bundled corpus (``corpus``), builds a four-layer Llama model from a seeded
random initialization, pretrains it briefly so that its greedy generations are made of real words, and
saves it as a Hugging Face folder (safetensors weights, tokenizer with a Llama-3 style chat template that
also renders tools, tool calls, tool results and reasoning, ``generation_config.json``) plus
``atelier_model.json``, the studio's metadata. The folder loads with
``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False, use_safetensors=True)`` and
``AutoTokenizer.from_pretrained(path)``, the code path used for hub models.

The folder appears atomically: everything is written into a hidden sibling folder that is renamed into
place at the end, so an interrupted run leaves either the previous model or none, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from training_app.engine.corpus import (
    BEGIN_OF_TEXT,
    END_OF_TEXT,
    END_OF_TURN,
    PAD,
    SPECIAL_TOKENS,
    TOOLS_PREAMBLE,
    corpus_hash,
    corpus_texts,
)
from training_app.engine.inspection import check_safe

STARTER_MODEL_NAME = "atelier-starter"
"""The starter model's name, also the name of its folder under the models directory."""

METADATA_FILE = "atelier_model.json"
"""The studio's metadata file in a model folder; it is written last, so its presence marks a complete folder."""

LICENSE = "Apache-2.0 (weights trained by this studio on its own corpus)"
DESCRIPTION = (
    "A small Llama-architecture model the studio trained on its own corpus in about a minute of CPU time. "
    "Its output is word-like, not fluent or factual: it is there to try fine-tuning without internet access."
)

DEFAULT_STEPS = 600
"""Pretraining steps of the default starter model: about a minute on two idle CPU cores (the corpus now teaches
tool calls and reasoning too, and 450 steps left greedy generation too short of words)."""

VOCAB_SIZE = 4096
CONTEXT_LENGTH = 1024
SEQUENCE_LENGTH = 256
BATCH_SIZE = 4
PEAK_LEARNING_RATE = 3e-3
WARMUP_STEPS = 10
LOSS_WINDOW = 20
"""The final loss is the mean of the last 20 steps' losses: single steps are noisy (generated text is
easier than the sample datasets' rows)."""

# Llama-3 style: BOS, then one header-delimited turn per message. The content is trimmed like
# ``corpus.format_chat`` does (the model learned the markers from that text; a test keeps them equal). Tools
# come first as a system turn listing their JSON schemas; an assistant turn is its reasoning in
# ``<think>…</think>``, its text and one ``<tool_call>{"name": …, "arguments": …}</tool_call>`` per call, joined
# by newlines. ``{% generation %}`` marks assistant text so that trainers can compute the loss on answers only.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\n' + '" + TOOLS_PREAMBLE + "' }}"
    "{% for tool in tools %}"
    "{{ '\n' + ((tool['function'] if tool['function'] is defined else tool) | tojson) }}"
    "{% endfor %}"
    "{{ '<|eot_id|>' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['content'] is string %}{% set content = message['content'] | trim %}"
    "{% else %}{% set content = '' %}{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{% set turn = namespace(parts=[]) %}"
    "{% if message['reasoning_content'] is string and message['reasoning_content'] | trim %}"
    "{% set turn.parts = turn.parts + ['<think>' + (message['reasoning_content'] | trim) + '</think>'] %}"
    "{% endif %}"
    "{% if content %}{% set turn.parts = turn.parts + [content] %}{% endif %}"
    "{% for call in message['tool_calls'] or [] %}"
    "{% set function = call['function'] if call['function'] is defined else call %}"
    "{% set arguments = function['arguments'] | default({}) %}"
    "{% set arguments = arguments if arguments is string else arguments | tojson %}"
    "{% set turn.parts = turn.parts + ['<tool_call>{\"name\": ' + (function['name'] | tojson)"
    " + ', \"arguments\": ' + arguments + '}</tool_call>'] %}"
    "{% endfor %}"
    "{% generation %}{{ turn.parts | join('\n') + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ content + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

PRE_TOKENIZER_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""How text is cut into pieces before BPE merges (Llama 3's pattern)."""

ProgressCallback = Callable[[int, int, float], None]
"""Called after each training step with (step, total steps, that step's loss)."""


@dataclass(frozen=True)
class StarterModelInfo:
    """What ``create_starter_model`` made; the same fields, except ``path``, are stored in ``atelier_model.json``.

    ``initial_loss`` is the first step's loss (about ln 4096 = 8.3 for the random initialization),
    ``final_loss`` the mean of the last ``LOSS_WINDOW`` steps' losses; ``training_seconds`` covers the
    pretraining loop only.
    """

    name: str
    path: str
    description: str
    architecture: str
    parameter_count: int
    context_length: int
    vocab_size: int
    license: str
    training_steps: int
    training_tokens: int
    initial_loss: float
    final_loss: float
    training_seconds: float
    seed: int
    corpus_hash: str
    corpus_bytes: int


def create_starter_model(
    output_dir: Path,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> StarterModelInfo:
    """Train the tokenizer and the starter model, and save them into ``output_dir`` (replacing any folder there).

    Uses torch's current thread count (the caller limits it with ``torch.set_num_threads``). The same
    ``seed`` gives the same tokenizer files; weights are reproducible on the same machine and thread
    count. ``progress`` is called after every step. Raises ``ValueError`` if ``steps`` is below 1.
    Concurrent calls for the same folder are not coordinated: processes that may race use
    ``ensure_starter_model``.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    texts = corpus_texts()  # the same corpus for every seed; the seed drives initialization and batches
    staging = output_dir.parent / f".{output_dir.name}.tmp-{uuid.uuid4().hex}"
    try:
        tokenizer = build_tokenizer(texts)
        model = _build_model(tokenizer, seed=seed)
        started = time.monotonic()
        losses, tokens_seen = _pretrain(model, tokenizer, texts, steps=steps, seed=seed, progress=progress)
        training_seconds = time.monotonic() - started
        info = StarterModelInfo(
            name=STARTER_MODEL_NAME,
            path=str(output_dir),
            description=DESCRIPTION,
            architecture="LlamaForCausalLM",
            parameter_count=sum(parameter.numel() for parameter in model.parameters()),
            context_length=CONTEXT_LENGTH,
            vocab_size=len(tokenizer),
            license=LICENSE,
            training_steps=steps,
            training_tokens=tokens_seen,
            initial_loss=round(losses[0], 4),
            final_loss=round(sum(losses[-LOSS_WINDOW:]) / len(losses[-LOSS_WINDOW:]), 4),
            training_seconds=round(training_seconds, 1),
            seed=seed,
            corpus_hash=corpus_hash(texts),
            corpus_bytes=sum(len(text.encode("utf-8")) for text in texts),
        )
        _save(model, tokenizer, info, staging)
        _replace_folder(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def ensure_starter_model(models_dir: Path, *, progress: ProgressCallback | None = None) -> Path:
    """Return the starter model folder under ``models_dir``, creating it first if it is missing or incomplete.

    Safe to call from several processes at once: a lock file makes the others wait for the one that
    creates it. Leftover staging folders of interrupted runs are removed.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / STARTER_MODEL_NAME
    if is_complete_model(target):
        return target
    with _exclusive_lock(models_dir / f".{STARTER_MODEL_NAME}.lock"):
        if not is_complete_model(target):
            for leftover in models_dir.glob(f".{STARTER_MODEL_NAME}.*-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            create_starter_model(target, progress=progress)
    return target


def is_complete_model(path: Path) -> bool:
    """Whether ``path`` is a starter model folder written to the end (metadata, config, weights, tokenizer)."""
    required = (METADATA_FILE, "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return all((path / name).is_file() for name in required)


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE tokenizer on ``texts`` and wrap it with its special tokens and chat template.

    The special tokens take ids 0 to 5 (``corpus.SPECIAL_TOKENS``); encoding plain text prepends
    ``<|begin_of_text|>`` (as Llama 3 does), the chat template adds it itself. EOS is ``<|eot_id|>``,
    the end of a turn, so that generation and chat fine-tuning stop at the end of an answer.
    """
    tokenizer = Tokenizer(models.BPE())
    # Llama 3's split: a run of newlines is one piece wherever it stands. GPT-2's would make the two newlines that
    # end a generation prompt one token but the two before an answer two tokens, so a model would be asked to
    # continue a token sequence it never saw in training.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The markers are whole special tokens; merges learned from their characters would be wasted.
    tokenizer.train_from_iterator((_without_special_tokens(text) for text in texts), trainer=trainer)
    bos_id = tokenizer.token_to_id(BEGIN_OF_TEXT)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BEGIN_OF_TEXT}:0 $A:0",
                pair=f"{BEGIN_OF_TEXT}:0 $A:0 {BEGIN_OF_TEXT}:1 $B:1",
                special_tokens=[(BEGIN_OF_TEXT, bos_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BEGIN_OF_TEXT,
        eos_token=END_OF_TURN,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=CONTEXT_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


def _without_special_tokens(text: str) -> str:
    for token in SPECIAL_TOKENS:
        text = text.replace(token, "\n")
    return text


def _build_model(tokenizer: PreTrainedTokenizerFast, *, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT_LENGTH,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        # The end of a turn ends a chat answer; the end of a document ends plain text.
        eos_token_id=[_token_id(tokenizer, END_OF_TURN), _token_id(tokenizer, END_OF_TEXT)],
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):  # seed the initialization without touching the caller's RNG
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int):
        raise TypeError(f"expected one id for {token!r}, got {token_id!r}")
    return token_id


def _pack(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """Concatenate every text as BOS, tokens, ``<|end_of_text|>`` and cut the stream into training rows."""
    end_id = _token_id(tokenizer, END_OF_TEXT)
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
        stream.extend(ids)
        stream.append(end_id)
    rows = len(stream) // SEQUENCE_LENGTH
    return torch.tensor(stream[: rows * SEQUENCE_LENGTH], dtype=torch.long).view(rows, SEQUENCE_LENGTH)


def _pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    *,
    steps: int,
    seed: int,
    progress: ProgressCallback | None,
) -> tuple[list[float], int]:
    """Train on random batches of packed rows with AdamW and a warmup-then-cosine schedule; return the losses."""
    rows = _pack(tokenizer, texts)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LEARNING_RATE, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = min(WARMUP_STEPS, steps)

    def learning_rate_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_fraction = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_fraction))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    use_bf16 = cpu_has_native_bf16()
    model.train()
    losses: list[float] = []
    for step in range(steps):
        batch = rows[torch.randint(len(rows), (BATCH_SIZE,), generator=generator)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
    model.eval()
    return losses, steps * BATCH_SIZE * SEQUENCE_LENGTH


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast is about twice as fast.

    Elsewhere bfloat16 would be emulated and slower than float32, so pretraining stays in float32. Weights
    and optimizer state are float32 either way; only the matrix products run in bfloat16.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, info: StarterModelInfo, folder: Path) -> None:
    """Write the model folder; refuse to finish unless the studio's own safety check accepts it (safetensors only)."""
    folder.mkdir(parents=True)
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=model.config.eos_token_id,
        pad_token_id=model.config.pad_token_id,
    )
    # Transformers 5 writes safetensors only (``safe_serialization`` is gone); ``check_safe`` raises
    # ``UnsafeModel`` if a pickle file ever appears, before the folder is published.
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    check_safe(folder)
    _make_readable_like_folder(folder)
    metadata = {key: value for key, value in asdict(info).items() if key != "path"}  # the folder may move
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def _make_readable_like_folder(folder: Path) -> None:
    """Give the folder's files the folder's read permissions.

    Transformers writes safetensors through a private (0600) temporary file; workers running as another
    user of the group could not read the weights otherwise.
    """
    mode = folder.stat().st_mode & 0o644 | 0o600
    for path in folder.iterdir():
        path.chmod(mode)


def _replace_folder(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing ``target`` is moved aside first, then deleted."""
    if target.exists():
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
