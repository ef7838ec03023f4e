"""One training run: TRL SFT, DPO, KTO or GRPO on a local safetensors model, with PEFT LoRA/QLoRA or full weights.

``run(config)`` is what ``python -m training_app.engine --config run.json`` executes in every process of
a launch (one per GPU, or per CPU process with gloo). It never raises: it returns a ``RunResult`` whose
``exit_code`` is 0 (succeeded), 3 (cancelled) or 4 (failed, with ``run_dir/failure.json``).

What happens, in order:

1. Validate the config (field-level errors end the run as ``bad_hyperparameters``).
2. Find the latest *complete* checkpoint in ``output_dir`` to resume from; delete incomplete ones. A
   checkpoint is complete once ``COMPLETE`` (a manifest of its files and sizes) is written into it, which
   the callback does after every rank finished writing; a folder without it, or with a file missing or
   truncated, is never resumed from. The callback also rotates old checkpoints, but only after the new one
   is complete (transformers' own rotation deletes old ones before the new one is known to be whole).
3. Build the training arguments first (with DeepSpeed, ZeRO-3 must be configured before the model loads),
   then the tokenizer, the datasets and the model (``trust_remote_code=False``, ``use_safetensors=True``),
   and TRL's ``SFTTrainer``, ``DPOTrainer``, ``KTOTrainer`` or ``GRPOTrainer``. Conversations for SFT (chat rows, and
   instruction rows whose prompt is a message list) are tokenized here (``conversations``): the loss is
   taken on the assistant's turns only. Preference and feedback rows are read with Python's ``json`` into
   ``datasets``' Json columns, so messages of different shapes (tool calls, reasoning) stay as written; plain
   text and string prompt/completion rows go through the ``datasets`` JSON loader. GRPO reads a prompt set
   (``prompt_sets``): each prompt rendered as the model reads it, with its reference, graded by the job's
   rewards (``rewards``, the team's graders).
4. Evaluate once before training, train (``resume_from_checkpoint``), evaluate once after.
5. Save the adapter (``output_dir/adapter``) or the whole model (``output_dir/model``) with the tokenizer,
   atomically (written to a ``.partial`` folder, then renamed).
6. On rank 0, with training memory freed: load the saved artifact back with plain transformers/PEFT (the
   proof that it loads), generate base vs tuned answers for a few held-out prompts (greedy), merge the
   adapter into ``output_dir/merged`` if asked, and write ``run_dir/result.json``.

The callback writes ``metrics.jsonl`` and ``status.json`` (see ``reporting``) and checks the cancel flag at
every optimizer step; all ranks agree on stopping through an all-reduce, so no rank waits on a collective
the others left.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import hashlib
import json
import math
import os
import platform
import re
import shutil
import socket
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training_app.engine import deepspeed_configs, speed
from training_app.engine.config import ConfigError, RunConfig
from training_app.engine.reporting import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_SUCCEEDED,
    CancelWatcher,
    DataError,
    DivergedError,
    Failure,
    ProgressClock,
    Reporter,
    classify_failure,
    describe_metrics,
    finite,
    memory_in_use,
    write_json_atomic,
)

COMPLETE_MARKER = "COMPLETE"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
MERGED_DIR = "merged"
# The columns each dataset kind trains on (the normalized rows of datasets_app.engine.rows).
KIND_COLUMNS = {
    "chat": ("messages",),
    "instruction": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "feedback": ("prompt", "completion", "label"),
    "text": ("text",),
}
# Bump when the tokenization of conversations changes: it is part of the cached datasets' fingerprint.
TOKENIZATION_VERSION = 1


class Terminated(BaseException):
    """Raised by the SIGTERM handler to unwind a run at once; the run ends as cancelled."""


@dataclass
class RunResult:
    """How a run ended: ``status`` succeeded | cancelled | failed, the process exit code, and details."""

    status: str
    exit_code: int
    result: dict[str, Any] | None = None
    failure: Failure | None = None
    resumed_from: str | None = None


@dataclass
class _RunState:
    """What the callback learns while training, read back when the run ends."""

    cancelled: bool = False
    tokens_at_start: int = 0
    summary: dict[str, float] = field(default_factory=dict)


# ---- checkpoints --------------------------------------------------------------------------------------


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-N`` folder, or None for any other name."""
    match = CHECKPOINT_PATTERN.match(path.name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: Path) -> bool:
    """True when ``path`` has a ``COMPLETE`` manifest, ``trainer_state.json``, and every listed file at its
    recorded size (a checkpoint killed mid-write, or damaged since, is not complete)."""
    marker = path / COMPLETE_MARKER
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not (path / "trainer_state.json").is_file() or not isinstance(files, dict):
        return False
    for name, size in files.items():
        try:
            if (path / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Every ``checkpoint-N`` folder in ``output_dir``, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(checkpoint_step(path), path) for path in folder.iterdir() if path.is_dir()]
    return [path for step, path in sorted((s, p) for s, p in found if s is not None)]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint to resume from, or None."""
    complete = [path for path in checkpoints(output_dir) if is_complete_checkpoint(path)]
    return complete[-1] if complete else None


def mark_checkpoint_complete(path: Path) -> None:
    """Write the ``COMPLETE`` manifest (relative path → size of every file) into a finished checkpoint."""
    files = {
        str(entry.relative_to(path)): entry.stat().st_size
        for entry in sorted(path.rglob("*"))
        if entry.is_file() and entry.name != COMPLETE_MARKER and not entry.name.endswith(".partial")
    }
    write_json_atomic(path / COMPLETE_MARKER, {"files": files, "written_at": time.time()})


def prune_checkpoints(output_dir: str | Path, *, keep: int, current: Path | None = None) -> None:
    """Delete incomplete checkpoint folders (except ``current``) and complete ones beyond the newest ``keep``."""
    complete: list[Path] = []
    for path in checkpoints(output_dir):
        if path == current or is_complete_checkpoint(path):
            complete.append(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    for path in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)


# ---- the run ------------------------------------------------------------------------------------------


def global_rank() -> int:
    """This process's rank in the launch (0 when not launched by a distributed launcher)."""
    return int(os.environ.get("RANK", "0"))


def run(config: RunConfig, *, watcher: CancelWatcher | None = None) -> RunResult:
    """Train as ``config`` says and report into ``config.run_dir``; never raises (see ``RunResult``)."""
    rank = global_rank()
    reporter = Reporter(config.run_dir, enabled=rank == 0)
    watcher = watcher or CancelWatcher(config.run_dir)
    state = _RunState()
    resumed_from: Path | None = None
    try:
        reporter.status("starting", message="checking the configuration")
        missing = config.missing_files()
        if missing:  # deleted while the job waited: a missing file, not a wrong setting
            name, path = next(iter(missing.items()))
            raise FileNotFoundError(errno.ENOENT, f"{name} does not exist", path)
        errors = config.validate()
        if errors:
            raise ConfigError(errors)
        _process_environment(config)
        if rank == 0:
            Path(config.output_dir).mkdir(parents=True, exist_ok=True)
            prune_checkpoints(config.output_dir, keep=1_000_000)  # drop the incomplete ones only
        resumed_from = latest_complete_checkpoint(config.output_dir)
        result = _train(config, reporter=reporter, watcher=watcher, state=state, resumed_from=resumed_from)
    except Terminated:
        reporter.status("cancelled", message="stopped by the studio (SIGTERM)")
        return RunResult("cancelled", EXIT_CANCELLED, resumed_from=_name(resumed_from))
    except Exception as exc:
        failure = classify_failure(exc, config)
        detail = traceback.format_exc()
        print(detail, flush=True)  # the log tail shows the technical story; failure.json the plain one
        reporter.failure(failure, detail=detail, step=reporter.last_status.get("step"))
        if rank != 0:  # rank 0 may be the one still waiting: let the studio see why this rank stopped
            Reporter(config.run_dir).failure(failure, detail=f"rank {rank}: {detail}")
        return RunResult("failed", EXIT_FAILED, failure=failure, resumed_from=_name(resumed_from))
    if result is None:
        reporter.status("cancelled", message="cancelled at the studio's request")
        return RunResult("cancelled", EXIT_CANCELLED, resumed_from=_name(resumed_from))
    return RunResult("succeeded", EXIT_SUCCEEDED, result=result, resumed_from=_name(resumed_from))


def _name(path: Path | None) -> str | None:
    return str(path) if path else None


def _process_environment(config: RunConfig) -> None:
    """Environment the libraries read when first imported (so before torch is)."""
    # Air-gapped by design: a model or dataset name is never resolved against a hub.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if config.use_cpu and config.deepspeed != "none":
        # DeepSpeed on CPU: no GPU may be picked up, and DeepSpeed uses its CPU accelerator.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["DS_ACCELERATOR"] = "cpu"
    if config.deepspeed != "none" and "WORLD_SIZE" not in os.environ:
        # Started without a launcher (``python -m training_app.engine``): a world of one, so DeepSpeed
        # initialises torch.distributed from the environment instead of looking for MPI.
        os.environ.update(
            {
                "RANK": "0",
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "1",
                "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port()),
            }
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _train(
    config: RunConfig,
    *,
    reporter: Reporter,
    watcher: CancelWatcher,
    state: _RunState,
    resumed_from: Path | None,
) -> dict[str, Any] | None:
    """The run proper; returns the result document, or None when cancelled."""
    import torch
    import transformers

    started = time.time()
    transformers.set_seed(config.seed)
    cuda = torch.cuda.is_available() and not config.use_cpu
    reporter.status("loading", message="loading the tokenizer, the data and the model")
    settings = speed.resolve(config, cuda=cuda, model_type=_model_type(config.model_path))
    if global_rank() == 0:
        speed.write(settings, config.run_dir)
        print("Speed settings: " + "; ".join(f"{s.name} {s.value} ({s.reason})" for s in settings), flush=True)
    chosen = speed.values(settings)
    config = speed.with_precision(config, settings)
    args = _training_arguments(config, cuda=cuda, resuming=resumed_from is not None, speed_settings=chosen)
    tokenizer = load_tokenizer(config.model_path)
    train_rows, eval_rows = load_datasets(config, tokenizer)
    model = _load_model(config, cuda=cuda, attention=chosen["attention"])
    callback = _make_callback(config, reporter=reporter, watcher=watcher, run_state=state)
    trainer = _make_trainer(config, args, model, tokenizer, train_rows, eval_rows, callback)
    trainer.remove_callback(transformers.PrinterCallback)  # it prints raw dicts; ours prints readable lines
    trainable, total = _parameter_counts(trainer.model)

    if watcher.requested():
        return None
    # The loss before training is measured inside train() (``eval_on_start``): before it, DeepSpeed has no
    # engine yet and ZeRO-1/2 cannot evaluate. A resumed run finds it in the restored log history.
    message = f"resuming from {resumed_from.name}" if resumed_from else "training"
    reporter.status("training", message=message)
    train_output = trainer.train(resume_from_checkpoint=str(resumed_from) if resumed_from else None)
    if state.cancelled or watcher.requested():
        return None
    memory, memory_kind = memory_in_use()  # the training peak, before the checks below load more models

    eval_after = None
    if eval_rows is not None:
        reporter.status("evaluating", message="measuring the validation loss after training")
        eval_after = finite(trainer.evaluate().get("eval_loss"))

    reporter.status("saving", message="saving the model files")
    artifact = _save_artifact(config, trainer, tokenizer)
    log_history = list(trainer.state.log_history)
    eval_before = next((finite(entry["eval_loss"]) for entry in log_history if "eval_loss" in entry), None)
    global_step, epoch = trainer.state.global_step, trainer.state.epoch
    tokens_seen = int(getattr(trainer.state, "num_input_tokens_seen", 0) or 0)
    world_size = int(trainer.args.world_size)
    _release(trainer, model)
    if global_rank() != 0:
        return {}

    artifacts: dict[str, str] = {("adapter" if config.uses_adapter else "model"): str(artifact)}
    reporter.status("saving", message="checking that the saved model loads, and comparing answers")
    prompts = _held_out_prompts(config, tokenizer)
    generations, merged = _compare_and_merge(config, artifact, prompts, cuda=cuda)
    if merged:
        artifacts["merged"] = str(merged)
    artifacts["tokenizer"] = str(artifact)
    losses = [entry["loss"] for entry in log_history if "loss" in entry and finite(entry["loss"]) is not None]
    runtime = state.summary.get("train_runtime")
    tokens_this_run = tokens_seen - state.tokens_at_start
    result: dict[str, Any] = {
        "schema_version": config.schema_version,
        "status": "succeeded",
        "stage": config.stage,
        "speed": chosen,
        "method": config.method,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "steps": global_step,
        "epochs": epoch,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "train_loss_mean": finite(train_output.training_loss),
        **_reward_summary(log_history),
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "perplexity_before": _perplexity(config, eval_before),
        "perplexity_after": _perplexity(config, eval_after),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "tokens_seen": tokens_seen,
        "tokens_per_second": round(tokens_this_run / runtime, 1) if runtime and tokens_this_run else None,
        "train_runtime_seconds": runtime,
        "duration_seconds": round(time.time() - started, 1),
        "peak_memory_bytes": memory,
        "memory_kind": memory_kind,
        "artifacts": artifacts,
        "generations": generations,
        "hardware": _hardware(config, world_size=world_size, cuda=cuda),
        "versions": _versions(),
    }
    reporter.result(result)
    reporter.status("succeeded", step=global_step, eta_seconds=0, message="the model is ready")
    return result


REWARD_SUMMARY_STEPS = 3


def _reward_summary(log_history: list[dict[str, Any]]) -> dict[str, float | None]:
    """A reinforcement run's mean reward over its first and its last few logged steps (None without any)."""
    rewards = [value for entry in log_history if (value := finite(entry.get("reward"))) is not None]
    if not rewards:
        return {}
    window = min(REWARD_SUMMARY_STEPS, max(1, len(rewards) // 2))
    return {
        "reward_first": round(sum(rewards[:window]) / window, 4),
        "reward_last": round(sum(rewards[-window:]) / window, 4),
    }


def _perplexity(config: RunConfig, loss: float | None) -> float | None:
    # DPO's, KTO's and GRPO's losses are not language-modelling ones: they have no perplexity.
    if loss is None or config.stage in ("dpo", "kto", "grpo") or loss > 50:
        return None
    return round(math.exp(loss), 4)


# ---- building blocks ----------------------------------------------------------------------------------


def _training_arguments(config: RunConfig, *, cuda: bool, resuming: bool, speed_settings: dict[str, str]) -> Any:
    """SFTConfig, DPOConfig, KTOConfig or GRPOConfig from the run config (creates the DeepSpeed/distributed
    state). ``speed_settings``: ``speed.values`` of the settings resolved for this run."""
    from trl import DPOConfig, KTOConfig, SFTConfig

    deepspeed = deepspeed_configs.build(config.deepspeed, config.deepspeed_custom, cuda=cuda)
    has_eval = bool(config.eval_path)
    optimizer = speed_settings["optimizer"]
    common: dict[str, Any] = {
        "output_dir": config.output_dir,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps if config.max_steps is not None else -1,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup_ratio,  # a float below 1 is a share of the steps in transformers 5
        "weight_decay": config.weight_decay,
        "per_device_train_batch_size": config.per_device_batch_size,
        "per_device_eval_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "activation_checkpointing": config.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False} if config.gradient_checkpointing else None,
        "eval_strategy": "steps" if has_eval and config.eval_steps else "no",
        "eval_steps": config.eval_steps,
        "eval_on_start": has_eval and not resuming,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        # Rotation is the callback's: transformers deletes old checkpoints before the new one is complete.
        "save_total_limit": None,
        "logging_strategy": "steps",
        "logging_steps": config.logging_steps,
        "logging_first_step": True,
        "seed": config.seed,
        "data_seed": config.seed,
        "bf16": config.precision == "bf16",
        "fp16": config.precision == "fp16",
        # Accelerate never selects DeepSpeed when told to use the CPU: for a DeepSpeed run on CPU the GPUs are
        # hidden instead (``_offline_environment``) and DeepSpeed's CPU accelerator runs it over gloo.
        "use_cpu": config.use_cpu and deepspeed is None,
        "deepspeed": deepspeed,
        "report_to": "none",
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
        "max_length": config.max_seq_length,
        # DeepSpeed's CPU Adam (ZeRO-3 offload) comes from its own config; the name here is then unused.
        "optim": optimizer if optimizer.startswith("adamw_torch") else "adamw_torch",
        "use_liger_kernel": speed_settings["liger"] == "on",
        "torch_compile": speed_settings["compile"] == "on",
    }
    if deepspeed is not None and not cuda:
        _cpu_deepspeed_state()
        common["accelerator_config"] = {"use_configured_state": True}
    if config.stage == "grpo":
        return _grpo_arguments(config, common)
    if config.stage == "dpo":
        return DPOConfig(**common, beta=config.dpo_beta)
    if config.stage == "kto":
        desirable, undesirable = kto_weights(config)
        if global_rank() == 0:
            print(f"KTO loss weights: desirable answers {desirable:g}, undesirable answers {undesirable:g}", flush=True)
        # KTO estimates its KL term from the other answers of each micro-batch, in the dataset's order.
        return KTOConfig(**common, beta=config.kto_beta, desirable_weight=desirable, undesirable_weight=undesirable)
    return SFTConfig(
        **common,
        packing=config.packing,
        dataset_text_field="text",
        dataset_kwargs={"skip_prepare_dataset": False},
    )


def _grpo_arguments(config: RunConfig, common: dict[str, Any]) -> Any:
    """GRPOConfig: ``num_generations`` sampled answers per prompt, graded by the rewards with their weights.

    The micro-batch counts answers, not prompts. GRPO has no validation loss (its loss is a policy-gradient
    term on sampled answers), so nothing is evaluated during training; the rewards' means are logged at
    every step instead (``reward``, ``rewards/<name>/mean``).
    """
    from trl import GRPOConfig

    from training_app.engine.rewards import build_rewards

    arguments = {key: value for key, value in common.items() if key != "max_length"}
    # GRPO's batches hold prompts, not token ids, so transformers cannot count tokens (and warns every step).
    arguments.update(eval_strategy="no", eval_on_start=False, include_num_input_tokens_seen="no")
    return GRPOConfig(
        **arguments,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        beta=config.grpo_beta,
        temperature=config.temperature,
        reward_weights=[reward.weight for reward in build_rewards(config.rewards)],
        log_completions=False,
    )


def _cpu_deepspeed_state() -> None:
    """Set up Accelerate's distributed state for DeepSpeed on CPU, over gloo.

    transformers asks Accelerate for a DeepSpeed state without naming a backend; on a host without CUDA,
    Accelerate then finds none and counts one process whatever the launch (DeepSpeed itself sees them
    all, and its batch-size check fails). Naming gloo here, and telling transformers to use this state,
    gives every layer the same world size.
    """
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]


def load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer (never remote code), with the end-of-sequence token as padding if it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def kto_weights(config: RunConfig) -> tuple[float, float]:
    """KTO's (desirable, undesirable) loss weights: the configured ones, else balanced from the training rows'
    labels so that both sides weigh the same in total (the KTO paper asks for a desirable-to-undesirable ratio
    between 1 and 4/3 of weight × count); the side with more rows keeps weight 1."""
    if config.kto_desirable_weight is not None or config.kto_undesirable_weight is not None:
        return config.kto_desirable_weight or 1.0, config.kto_undesirable_weight or 1.0
    desirable, undesirable = feedback_label_counts(config.train_path)
    if not desirable or not undesirable:
        missing = "undesirable (label false)" if desirable else "desirable (label true)"
        raise DataError(
            f"KTO learns from both desirable and undesirable answers, but the training rows have no {missing} one"
        )
    if desirable < undesirable:
        return round(undesirable / desirable, 4), 1.0
    return 1.0, round(desirable / undesirable, 4)


def feedback_label_counts(path: str | Path) -> tuple[int, int]:
    """(desirable, undesirable) rows of a feedback JSON Lines file."""
    desirable = undesirable = 0
    for row in _json_rows(path):
        if row.get("label") is True:
            desirable += 1
        elif row.get("label") is False:
            undesirable += 1
    return desirable, undesirable


def _json_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def load_datasets(config: RunConfig, tokenizer: Any) -> tuple[Any, Any]:
    """The train and eval datasets (eval capped at ``max_eval_rows``), only the kind's columns kept.

    Conversations for SFT become token ids and labels (``conversations``); preference and feedback rows
    keep their messages as written (Json columns); the rest goes through the ``datasets`` JSON loader.
    """
    if config.stage == "grpo":
        return prompt_dataset(config, tokenizer), None
    if _tokenized_here(config):
        return _tokenized_datasets(config, tokenizer)
    if config.kind in ("preference", "feedback"):
        return _message_datasets(config)
    from datasets import load_dataset

    files = {"train": config.train_path}
    if config.eval_path:
        files["eval"] = config.eval_path
    cache = Path(config.run_dir) / "datasets-cache"
    loaded = load_dataset("json", data_files=files, cache_dir=str(cache))
    columns = KIND_COLUMNS[config.kind]
    for split, rows in loaded.items():
        missing = [name for name in columns if name not in rows.column_names]
        if missing:
            raise DataError(f"the {split} rows have no {', '.join(missing)} field ({config.kind} data expected)")
        if len(rows) == 0:
            raise DataError(f"the {split} file has no rows")
    train = loaded["train"].select_columns(list(columns))
    eval_rows = None
    if "eval" in loaded:
        eval_rows = loaded["eval"].select_columns(list(columns))
        eval_rows = eval_rows.select(range(min(len(eval_rows), config.max_eval_rows)))
    return train, eval_rows


def prompt_dataset(config: RunConfig, tokenizer: Any) -> Any:
    """GRPO's training prompts: each row's prompt rendered as the model reads it (a conversation through the
    chat template with the row's tools, ending with an open assistant turn), its reference text, and its
    reference tool calls as JSON text (``rewards`` grades against these columns)."""
    from datasets import Dataset

    from training_app.engine.prompt_sets import read_prompt_items
    from training_app.engine.rewards import REFERENCE_COLUMN, TOOL_CALL_COLUMN

    rows = [
        {
            "prompt": render_prompt(tokenizer, item.prompt, item.tools),
            REFERENCE_COLUMN: item.reference_text,
            TOOL_CALL_COLUMN: json.dumps(item.reference_tool_calls, ensure_ascii=False),
        }
        for item in read_prompt_items(config.train_path, config.kind)
    ]
    if not rows:
        raise DataError(
            "no training row has a reference to grade against (a chat row needs an assistant turn after the "
            "prompt; an instruction row a completion)"
        )
    return Dataset.from_list(rows)


def render_prompt(tokenizer: Any, prompt: str | list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """A prompt as the text the model reads: a plain text as is, a conversation through the chat template.

    A beginning-of-text token the template writes is dropped when the tokenizer adds its own, so the prompt
    is not read with two of them.
    """
    if isinstance(prompt, str):
        return prompt
    text = str(tokenizer.apply_chat_template(prompt, tools=tools or None, add_generation_prompt=True, tokenize=False))
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos) :]
    return text


def _tokenized_here(config: RunConfig) -> bool:
    """Whether SFT rows are conversations the engine tokenizes itself: chat rows, and instruction rows whose
    prompt is a message list (the whole version is one shape or the other)."""
    if config.stage != "sft" or config.kind not in ("chat", "instruction"):
        return False
    if config.kind == "chat":
        return True
    first = next(_json_rows(config.train_path), {})
    return isinstance(first.get("prompt"), list)


def _splits(config: RunConfig) -> dict[str, tuple[str, int | None]]:
    """Each split's file and the most rows read from it."""
    splits: dict[str, tuple[str, int | None]] = {"train": (config.train_path, None)}
    if config.eval_path:
        splits["eval"] = (config.eval_path, config.max_eval_rows)
    return splits


def _rows_of(path: str, limit: int | None, *, split: str, kind: str) -> Iterator[dict[str, Any]]:
    """A split's rows (at most ``limit``), each checked for the kind's fields; a ``DataError`` names the row."""
    columns = KIND_COLUMNS[kind]
    for number, row in enumerate(_json_rows(path), start=1):
        if limit is not None and number > limit:
            return
        missing = [name for name in columns if name not in row]
        if missing:
            raise DataError(f"{split} row {number} has no {', '.join(missing)} field ({kind} data expected)")
        yield row


def _tokenized_datasets(config: RunConfig, tokenizer: Any) -> tuple[Any, Any]:
    """Chat and conversational instruction rows as ``input_ids`` and ``labels`` (-100 where not trained).

    Written once per split to Arrow files under ``run_dir`` (a resumed run finds them), keyed by the data
    file, the model's tokenizer and the settings that change the labels.
    """
    from datasets import Dataset

    cache = Path(config.run_dir) / "datasets-cache"
    loaded: dict[str, Any] = {}
    for split, (path, limit) in _splits(config).items():
        stat = Path(path).stat()
        key = [TOKENIZATION_VERSION, split, path, stat.st_size, stat.st_mtime_ns, config.model_path,
               config.kind, config.train_reasoning, limit]  # fmt: skip
        fingerprint = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
        try:
            rows = functools.partial(_tokenized_split, config, tokenizer, path, limit, split)
            loaded[split] = Dataset.from_generator(rows, cache_dir=str(cache), fingerprint=fingerprint)
        except Exception as error:  # ``datasets`` wraps what the generator raised
            data_error = _data_error_in(error)
            if data_error is not None:
                raise data_error from error
            raise
    return loaded["train"], loaded.get("eval")


def _tokenized_split(
    config: RunConfig, tokenizer: Any, path: str, limit: int | None, split: str
) -> Iterator[dict[str, list[int]]]:
    from training_app.engine.conversations import IGNORE_INDEX, tokenized_rows

    rows = trained = 0
    source = _rows_of(path, limit, split=split, kind=config.kind)
    for row in tokenized_rows(tokenizer, source, kind=config.kind, train_reasoning=config.train_reasoning, split=split):
        rows += 1
        trained += any(label != IGNORE_INDEX for label in row["labels"])
        yield row
    if rows == 0:
        raise DataError(f"the {split} file has no rows")
    if trained == 0:
        raise DataError(f"no {split} row has an assistant turn to learn from (every answer has loss_weight 0)")


def _message_datasets(config: RunConfig) -> tuple[Any, Any]:
    """Preference or feedback rows with their message lists in Json columns (exactly as written: no nulls
    for the keys other rows have). KTO's rows are shuffled once (seeded): it reads them in order, and each
    micro-batch should hold both desirable and undesirable answers."""
    from datasets import Dataset, Features

    columns = KIND_COLUMNS[config.kind]
    loaded: dict[str, Any] = {}
    for split, (path, limit) in _splits(config).items():
        rows = [{name: row[name] for name in columns} for row in _rows_of(path, limit, split=split, kind=config.kind)]
        if not rows:
            raise DataError(f"the {split} file has no rows")
        features = Features({name: _column_feature(rows, name) for name in columns})
        loaded[split] = Dataset.from_list(rows, features=features)
    train = loaded["train"]
    if config.stage == "kto":
        train = train.shuffle(seed=config.seed).flatten_indices()
    return train, loaded.get("eval")


def _column_feature(rows: list[dict[str, Any]], name: str) -> Any:
    """The column's type: bool for KTO's label, string for plain text, Json for message lists."""
    from datasets import Json, Value

    if name == "label":
        return Value("bool")
    return Value("string") if all(isinstance(row[name], str) for row in rows) else Json()


def _data_error_in(error: BaseException) -> DataError | None:
    current: BaseException | None = error
    for _ in range(10):
        if current is None:
            return None
        if isinstance(current, DataError):
            return current
        current = current.__cause__ or current.__context__
    return None


def _model_type(model_path: str) -> str | None:
    try:
        return str(json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8")).get("model_type"))
    except (OSError, ValueError, AttributeError):
        return None


def _load_model(config: RunConfig, *, cuda: bool, attention: str = "sdpa") -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    # Frozen base weights can live in half precision; a full fine-tune keeps fp32 master weights.
    dtype = half if (half is not None and config.uses_adapter) else torch.float32
    kwargs: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True, "dtype": dtype}
    if attention == "varlen":
        kwargs["attn_implementation"] = speed.register_varlen_attention()
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        compute = half or torch.bfloat16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=compute,  # lets ZeRO-3 partition the 4-bit weights
        )
        kwargs["dtype"] = compute
        if config.deepspeed == "none":
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(config.model_path, **kwargs)
    model.config.use_cache = False
    return model


def _peft_config(config: RunConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _make_trainer(
    config: RunConfig,
    args: Any,
    model: Any,
    tokenizer: Any,
    train_rows: Any,
    eval_rows: Any,
    callback: Any,
) -> Any:
    from trl import DPOTrainer, KTOTrainer, SFTTrainer

    peft_config = _peft_config(config) if config.uses_adapter else None
    if config.stage == "grpo":
        from trl import GRPOTrainer

        from training_app.engine.rewards import build_rewards

        reward_funcs: list[Any] = [reward.function() for reward in build_rewards(config.rewards)]
        return GRPOTrainer(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_rows,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[callback],
        )
    trainer_class = {"dpo": DPOTrainer, "kto": KTOTrainer}.get(config.stage, SFTTrainer)
    return trainer_class(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
    )


def _parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total): total is the base model's own count, as its page reads it from the safetensors
    headers, so the LoRA matrices PEFT added are trainable but not part of it ("N trainable of M")."""
    trainable = total = 0
    for name, parameter in model.named_parameters():  # a tied weight is yielded once
        # Under ZeRO-3 a parameter is a placeholder; its real size is ds_numel.
        count = int(getattr(parameter, "ds_numel", 0) or parameter.numel())
        if parameter.requires_grad:
            trainable += count
        if "lora_" not in name:
            total += count
    return trainable, total


def _make_callback(config: RunConfig, *, reporter: Reporter, watcher: CancelWatcher, run_state: _RunState) -> Any:
    """The ``TrainerCallback`` reporting progress, checking the cancel flag, and completing checkpoints."""
    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

    clock = ProgressClock()
    last = {"status_at": 0.0, "tokens": 0, "tokens_at": 0.0}

    def agreed_stop(device: Any) -> bool:
        wanted = watcher.requested()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([1 if wanted else 0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            wanted = bool(flag.item())
        return wanted

    class ReportingCallback(TrainerCallback):
        """Metrics and status each log/step, cancel check each step, atomic checkpoints on save."""

        def on_train_begin(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            clock.start(state.global_step)
            run_state.tokens_at_start = int(state.num_input_tokens_seen or 0)
            last["tokens"], last["tokens_at"] = int(state.num_input_tokens_seen or 0), time.monotonic()
            reporter.status(
                "training",
                step=state.global_step,
                max_steps=state.max_steps,
                message=reporter.last_status.get("message", "training"),
            )

        def on_step_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
        ) -> None:
            if agreed_stop(args.device):
                run_state.cancelled = True
                control.should_training_stop = True
                control.should_save = False
                reporter.status("training", step=state.global_step, message="cancelling")
                return
            now = time.monotonic()
            clock.step_done(state.global_step, now=now)
            if now - last["status_at"] >= 1.0:
                last["status_at"] = now
                reporter.status(
                    "training",
                    step=state.global_step,
                    max_steps=state.max_steps,
                    eta_seconds=clock.eta(state.global_step, state.max_steps),
                    message=f"step {state.global_step} of {state.max_steps}",
                )

        def on_log(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            logs: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            logs = logs or {}
            if "train_loss" in logs and "loss" not in logs:  # the end-of-training summary, not a step
                run_state.summary = {key: value for key, value in logs.items() if isinstance(value, int | float)}
                if reporter.enabled:
                    print(describe_metrics(logs), flush=True)
                return
            if "loss" in logs:
                loss = finite(logs["loss"])
                if loss is None:
                    raise DivergedError(f"the training loss became {logs['loss']} at step {state.global_step}")
            tokens = int(state.num_input_tokens_seen or 0)
            now = time.monotonic()
            speed = (tokens - last["tokens"]) / (now - last["tokens_at"]) if now > last["tokens_at"] else None
            if "loss" in logs:
                last["tokens"], last["tokens_at"] = tokens, now
            memory, memory_kind = memory_in_use()
            extra = {
                key: finite(value)
                for key, value in logs.items()
                if key not in ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch")
                and isinstance(value, int | float)
                and not key.endswith(("_runtime", "_per_second", "_preparation_time"))
            }
            reporter.metric(
                step=state.global_step,
                epoch=finite(logs.get("epoch", state.epoch)),
                loss=finite(logs.get("loss")),
                eval_loss=finite(logs.get("eval_loss")),
                learning_rate=finite(logs.get("learning_rate")),
                grad_norm=finite(logs.get("grad_norm")),
                tokens_per_second=round(speed, 1) if speed and "loss" in logs else None,
                memory_bytes=memory,
                memory_kind=memory_kind,
                **extra,
            )
            if reporter.enabled:  # the log a person reads (transformers' own printer is removed)
                print(describe_metrics(logs, step=state.global_step, max_steps=state.max_steps), flush=True)

        def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
            # Every rank wrote its part of the checkpoint (optimizer shards, RNG state) before this barrier.
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if state.is_world_process_zero:
                folder = Path(config.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    mark_checkpoint_complete(folder)
                    prune_checkpoints(config.output_dir, keep=config.save_total_limit, current=folder)
                    reporter.status(
                        "training",
                        step=state.global_step,
                        message=f"checkpoint saved at step {state.global_step}",
                    )
            if dist.is_available() and dist.is_initialized():
                dist.barrier()

    return ReportingCallback()


def _save_artifact(config: RunConfig, trainer: Any, tokenizer: Any) -> Path:
    """Save the adapter or the whole model (safetensors) and the tokenizer; returns the final folder."""
    import torch.distributed as dist

    final = Path(config.output_dir) / (ADAPTER_DIR if config.uses_adapter else MODEL_DIR)
    partial = final.with_name(final.name + ".partial")
    if global_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(str(partial))  # every rank: ZeRO-3 gathers the partitioned weights
    if global_rank() == 0:
        tokenizer.save_pretrained(str(partial))
        # The Trainer pickles its arguments next to the weights; a model version carries no pickle at all.
        (partial / "training_args.bin").unlink(missing_ok=True)
        pickled = sorted(path.name for path in partial.iterdir() if path.suffix in (".bin", ".pt", ".pth", ".pkl"))
        if pickled:
            raise RuntimeError(f"the saved model contains pickle files ({', '.join(pickled)}); only safetensors")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return final


def _release(trainer: Any, model: Any) -> None:
    """Free the training memory (DeepSpeed engine, optimizer state) before the rank-0 checks load models."""
    import torch
    import torch.distributed as dist
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    with contextlib.suppress(Exception):
        trainer.accelerator.free_memory()
    del trainer, model
    # Models loaded from now on are plain ones: no ZeRO-3 partitioning at load time, no DeepSpeed state.
    unset_hf_deepspeed_config()
    AcceleratorState._reset_state(reset_partial_state=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _held_out_prompts(config: RunConfig, tokenizer: Any) -> list[str]:
    """Up to ``generation_prompts`` prompts from the eval rows (or the last train rows), rendered as text."""
    source = config.eval_path or config.train_path
    prompts: list[str] = []
    with Path(source).open(encoding="utf-8") as lines:
        for line in _tail(lines, from_end=not config.eval_path):
            if len(prompts) >= config.generation_prompts:
                break
            row = json.loads(line)
            prompt = _prompt_text(config.kind, row, tokenizer)
            if prompt:
                prompts.append(prompt)
    return prompts


def _tail(lines: Any, *, from_end: bool) -> Iterator[str]:
    if not from_end:
        yield from (line for line in lines if line.strip())
        return
    kept = [line for line in lines if line.strip()][-16:]
    yield from reversed(kept)


def _prompt_text(kind: str, row: dict[str, Any], tokenizer: Any) -> str | None:
    """The prompt of a row as the model reads it: conversations through the chat template (with the row's
    tools), ending with an open assistant turn."""
    tools = row.get("tools") if isinstance(row.get("tools"), list) else None

    def conversation(messages: list[dict[str, Any]]) -> str | None:
        if not messages:
            return None
        return str(tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False))

    if kind == "chat":
        messages = list(row.get("messages") or [])
        while messages and messages[-1].get("role") == "assistant":
            messages.pop()
        return conversation(messages)
    if kind in ("preference", "feedback", "instruction"):
        prompt = row.get("prompt")
        if isinstance(prompt, list):
            return conversation(prompt)
        return str(prompt) if prompt else None
    words = str(row.get("text") or "").split()
    return " ".join(words[: max(3, min(12, len(words) // 2))]) or None


def _compare_and_merge(
    config: RunConfig, artifact: Path, prompts: list[str], *, cuda: bool
) -> tuple[list[dict[str, str]], Path | None]:
    """Load the base and the saved tuned model with plain transformers/PEFT, answer ``prompts`` greedily with
    each, and merge the adapter into ``merged/`` if asked. Returns (generations, merged folder)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if (cuda and config.precision != "fp32") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(artifact), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def load(path: str | Path) -> Any:
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(path), trust_remote_code=False, use_safetensors=True, dtype=dtype
        )
        return model.to(device)

    base = load(config.model_path)
    base_answers = _generate(base, tokenizer, prompts, config.generation_max_new_tokens)
    merged_dir: Path | None = None
    if config.uses_adapter:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(base, str(artifact))
        tuned_answers = _generate(tuned, tokenizer, prompts, config.generation_max_new_tokens)
        if config.merge_adapter:
            merged_dir = Path(config.output_dir) / MERGED_DIR
            partial = merged_dir.with_name(merged_dir.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            merged = tuned.merge_and_unload()
            merged.save_pretrained(str(partial))
            tokenizer.save_pretrained(str(partial))
            shutil.rmtree(merged_dir, ignore_errors=True)
            os.replace(partial, merged_dir)
    else:
        del base
        gc.collect()
        tuned = load(artifact)
        tuned_answers = _generate(tuned, tokenizer, prompts, config.generation_max_new_tokens)
    return (
        [
            {"prompt": prompt, "base": before, "tuned": after}
            for prompt, before, after in zip(prompts, base_answers, tuned_answers, strict=True)
        ],
        merged_dir,
    )


def _generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers, one prompt at a time (no padding questions, and prompts are few)."""
    import torch

    model.eval()
    answers = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers


def _hardware(config: RunConfig, *, world_size: int, cuda: bool) -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    deepspeed = deepspeed_configs.build(config.deepspeed, config.deepspeed_custom, cuda=cuda)
    return {
        "device": device,
        "processes": world_size,
        "deepspeed": config.deepspeed,
        "zero_stage": deepspeed_configs.zero_stage(deepspeed),
        "precision": config.precision,
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "transformers", "peft", "trl", "accelerate", "deepspeed", "datasets"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found
