"""How a trainer process reports to the studio: files in its run folder, written atomically.

``run_dir`` holds, for the Celery task that supervises the run (and for nobody else to write):

- ``metrics.jsonl``: one JSON object per logging step (``step``, ``epoch``, ``loss``, ``eval_loss``,
  ``learning_rate``, ``grad_norm``, ``tokens_per_second``, ``memory_bytes`` + ``memory_kind``, ``timestamp``);
  each line is one ``write`` on a file opened for appending, so a reader never sees half a line.
- ``status.json``: the latest ``phase`` (starting, loading, evaluating, training, saving, succeeded,
  failed, cancelled), ``step``, ``max_steps``, ``eta_seconds``, ``message``; replaced atomically.
- ``failure.json``: ``code``, ``message``, ``suggestion`` (plain language, from ``classify_failure``) and
  the technical ``detail``.
- ``result.json``: written by the trainer at the end of a successful run.
- ``cancel``: created by the studio to ask the run to stop; ``CancelWatcher`` looks for it.

Only the main process (global rank 0) writes reports; every rank watches for the cancel flag.
"""

from __future__ import annotations

import ast
import errno
import json
import math
import os
import re
import resource
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
FAILURE_FILE = "failure.json"
RESULT_FILE = "result.json"
CANCEL_FLAG = "cancel"

PHASES = ("starting", "loading", "evaluating", "training", "saving", "succeeded", "failed", "cancelled")

# Process exit codes of ``python -m training_app.engine`` (the studio reads status.json as well, since a
# launcher such as ``accelerate launch`` may report any non-zero exit of a worker as 1).
EXIT_SUCCEEDED = 0
EXIT_CANCELLED = 3
EXIT_FAILED = 4


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never a partial one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, sort_keys=True, default=str, allow_nan=False)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def read_json(path: Path) -> Any:
    """Read a JSON report (None when it is missing or being replaced)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finite(value: Any) -> float | None:
    """A metric as a float, or None when missing or not finite (JSON has no NaN)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def memory_in_use() -> tuple[int, str]:
    """Peak memory of this process: (bytes, kind) — the GPU's max allocated if CUDA is in use, else peak RSS."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated()), "gpu_max_allocated"
    return _peak_rss(), "cpu_peak_rss"


def _peak_rss() -> int:
    """This program's peak resident memory, in bytes.

    Linux's ``VmHWM`` belongs to the address space, which ``execve`` replaces, so it counts this program only.
    ``ru_maxrss`` survives ``execve``: a trainer started by a Celery worker (or a test process) of 1.9 GB would
    report at least 1.9 GB whatever it used. It is the fallback where /proc is missing (kilobytes on Linux).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Reporter:
    """Writes a run's metrics, status, failure and result files into ``run_dir``.

    ``enabled=False`` (ranks other than 0) makes every method a no-op, so callers need no rank checks.
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.last_status: dict[str, Any] = {}
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def metric(self, **fields: Any) -> dict[str, Any]:
        """Append one metrics line (non-finite numbers become null); returns the line written."""
        line = {key: finite(value) if isinstance(value, float) else value for key, value in fields.items()}
        line.setdefault("timestamp", time.time())
        if self.enabled:
            encoded = (json.dumps(line, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
            descriptor = os.open(self.run_dir / METRICS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, encoded)
            finally:
                os.close(descriptor)
        return line

    def status(
        self,
        phase: str,
        *,
        step: int | None = None,
        max_steps: int | None = None,
        eta_seconds: float | None = None,
        message: str = "",
    ) -> None:
        """Replace status.json with the run's current phase and progress."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        self.last_status = {
            "phase": phase,
            "step": step if step is not None else self.last_status.get("step"),
            "max_steps": max_steps if max_steps is not None else self.last_status.get("max_steps"),
            "eta_seconds": None if eta_seconds is None else round(eta_seconds, 1),
            "message": message,
            "pid": os.getpid(),
            "updated_at": time.time(),
        }
        if self.enabled:
            write_json_atomic(self.run_dir / STATUS_FILE, self.last_status)

    def failure(self, failure: Failure, *, detail: str = "", step: int | None = None) -> None:
        """Write failure.json and a "failed" status carrying the plain-language message."""
        record = {**failure._asdict(), "detail": detail[-4000:], "step": step, "timestamp": time.time()}
        if self.enabled:
            write_json_atomic(self.run_dir / FAILURE_FILE, record)
        self.status("failed", step=step, message=failure.message)

    def result(self, result: dict[str, Any]) -> None:
        """Write result.json (the end-of-run summary)."""
        if self.enabled:
            write_json_atomic(self.run_dir / RESULT_FILE, result)


SUPERVISOR_PID_ENV = "ATELIER_SUPERVISOR_PID"


class CancelWatcher:
    """Tells whether the run was asked to stop: the studio's ``run_dir/cancel`` flag, SIGTERM, or the death
    of the Celery worker that supervises the run.

    The last one matters because launchers put their workers in sessions of their own (torchrun does), so
    killing a dead supervisor's process group does not reach them: a run whose supervisor was SIGKILLed
    stops by itself at the next step, and the job's next attempt resumes from the last complete checkpoint
    instead of racing an orphan. The supervisor's pid comes from ``ATELIER_SUPERVISOR_PID``.
    """

    def __init__(self, run_dir: str | Path, *, supervisor_pid: int | None = None) -> None:
        self.flag = Path(run_dir) / CANCEL_FLAG
        self.signalled = False
        if supervisor_pid is None and os.environ.get(SUPERVISOR_PID_ENV, "").isdigit():
            supervisor_pid = int(os.environ[SUPERVISOR_PID_ENV])
        self.supervisor_pid = supervisor_pid

    def requested(self) -> bool:
        """True once a stop was asked for (a ``stat`` and a ``kill(pid, 0)``: cheap enough for every step)."""
        return self.signalled or self.flag.exists() or self.supervisor_gone()

    def supervisor_gone(self) -> bool:
        """Whether the supervising worker process no longer exists."""
        if self.supervisor_pid is None:
            return False
        try:
            os.kill(self.supervisor_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # exists, owned by someone else
            return False
        return False

    def request(self) -> None:
        """Record a stop request that did not come through the flag file (a signal)."""
        self.signalled = True


class ProgressClock:
    """Estimates the time left from the median duration of the last ``WINDOW`` steps.

    The median ignores a slow first step (loading, compilation, the first evaluation) and a single stall, and
    follows a lasting change of pace (another job sharing the cores) within half a window, so the ETA neither
    starts far too high nor swings from one report to the next.
    """

    WINDOW = 20

    def __init__(self) -> None:
        self.last_at: float | None = None
        self.last_step = 0
        self.durations: deque[float] = deque(maxlen=self.WINDOW)

    def start(self, step: int, *, now: float | None = None) -> None:
        """Start timing at ``step`` (non-zero when resuming)."""
        self.last_at = time.monotonic() if now is None else now
        self.last_step = step
        self.durations.clear()

    def step_done(self, step: int, *, now: float | None = None) -> None:
        """Record that training reached ``step`` (call it after every optimizer step)."""
        now = time.monotonic() if now is None else now
        if self.last_at is None or step <= self.last_step:
            return
        self.durations.append((now - self.last_at) / (step - self.last_step))
        self.last_at, self.last_step = now, step

    def eta(self, step: int, max_steps: int) -> float | None:
        """Seconds left, or None before the first step finished."""
        if not self.durations or max_steps <= 0:
            return None
        return max(0.0, statistics.median(self.durations) * (max_steps - step))


class Failure(NamedTuple):
    """A failure as a person reads it: a stable ``code``, what happened, and what to do about it."""

    code: str
    message: str
    suggestion: str


def classify_failure(exc: BaseException, config: Any = None) -> Failure:
    """Turn an exception from a run into a plain-language failure with a concrete suggestion.

    ``config`` (a ``RunConfig``, optional) makes suggestions specific, e.g. the micro-batch to try.
    Codes: ``out_of_memory``, ``disk_full``, ``missing_file``, ``bad_hyperparameters``, ``bad_data``,
    ``error`` (anything else).
    """
    chain = _exception_chain(exc)
    for error in chain:
        if _is_out_of_memory(error):
            return _out_of_memory(
                config, on_gpu=not isinstance(error, MemoryError) and "allocate memory" not in str(error)
            )
    for error in chain:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return Failure(
                "disk_full",
                "The disk holding this run's checkpoints and model files is full.",
                "Free space on the worker (or raise the storage quota), keep fewer checkpoints or save them less "
                "often, then launch again: the run resumes from its last complete checkpoint.",
            )
    for error in chain:
        if isinstance(error, FileNotFoundError) or (isinstance(error, OSError) and error.errno == errno.ENOENT):
            missing = getattr(error, "filename", None) or str(error)
            return Failure(
                "missing_file",
                f"A file the run needs is gone: {missing}.",
                "The base model or the dataset version may have been deleted after the job was queued. Restore "
                "it, or start a new job from a model and a dataset version that exist.",
            )
    for error in chain:
        errors = getattr(error, "errors", None)
        if isinstance(errors, dict):  # config.ConfigError (not imported: this module stays standalone)
            fields = "; ".join(f"{name}: {message}" for name, message in errors.items())
            return Failure(
                "bad_hyperparameters",
                f"The run's settings cannot work: {fields}.",
                "Clone the job, fix the highlighted settings, and launch it again.",
            )
        if isinstance(error, DivergedError):
            return Failure(
                "bad_hyperparameters",
                f"Training diverged: {error}.",
                "Lower the learning rate (try a tenth of it), add warmup (warmup ratio 0.03), or use bf16 "
                "instead of fp16.",
            )
        if isinstance(error, DataError):
            return Failure(
                "bad_data",
                f"The training data cannot be used: {error}.",
                "Check the dataset version's validation report, fix or remove the rows, and launch again.",
            )
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return Failure(
        "error",
        f"The trainer stopped with an unexpected error ({text}).",
        "Look at the end of the run's log. If it happens again, send the log to your operator.",
    )


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: the optimizer is diverging."""


class DataError(ValueError):
    """The training data cannot be turned into examples (empty, missing fields, too long)."""


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(error).__mro__):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _out_of_memory(config: Any, *, on_gpu: bool) -> Failure:
    message = f"The {'GPU' if on_gpu else 'machine'} ran out of memory during training."
    if config is None:
        return Failure(
            "out_of_memory",
            message,
            "Use QLoRA, or micro-batch 2 with more gradient accumulation, a shorter sequence length, or DeepSpeed "
            "ZeRO-3 with CPU offload.",
        )
    options: list[str] = []
    if config.method == "full":
        options.append("use LoRA or QLoRA instead of a full fine-tune")
    elif config.method == "lora":
        options.append("use QLoRA (4-bit base weights)")
    batch, accumulation = config.per_device_batch_size, config.gradient_accumulation
    if batch > 1:
        smaller = max(1, batch // 2) if batch > 2 else 1
        options.append(
            f"use micro-batch {smaller} with gradient accumulation {accumulation * batch // smaller} "
            "(same effective batch)"
        )
    if not config.gradient_checkpointing:
        options.append("turn on gradient checkpointing")
    if config.max_seq_length > 512:
        options.append(f"shorten the sequence length (now {config.max_seq_length})")
    if config.deepspeed in ("none", "zero2"):
        options.append("use DeepSpeed ZeRO-3 with CPU offload")
    if not options:
        options.append("pick a worker pool with more GPU memory")
    suggestion = "; or ".join(options)
    return Failure("out_of_memory", message, suggestion[0].upper() + suggestion[1:] + ".")


# ---- the log a person reads -------------------------------------------------------------------------------

_METRIC_LABELS = (
    ("loss", "loss"),
    ("eval_loss", "validation loss"),
    ("learning_rate", "lr"),
    ("grad_norm", "grad norm"),
    ("epoch", "epoch"),
    ("train_loss", "average loss"),
    ("train_runtime", "ran (s)"),
)
# ``path/to/file.py:123: FutureWarning: message`` — what ``warnings.warn`` prints, followed by the source line.
_WARNING_LINE = re.compile(r"^\S*\.py:\d+: \w*Warning: ")
_DICT_LINE = re.compile(r"^\{'[a-z_]+': .*\}$")
_ATTEMPT_LINE = re.compile(r"^=== (attempt \d+ on \S+?):")


def _number(value: Any) -> str:
    number = finite(value)
    if number is None:
        return str(value)
    if number != 0 and abs(number) < 1e-2:
        mantissa, exponent = f"{number:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{number:.3g}"


def describe_metrics(values: dict[str, Any], *, step: int | None = None, max_steps: int | None = None) -> str:
    """One readable log line for a logging step: ``step 5/40 · loss 2.31 · lr 1.9e-4 · grad norm 0.8``."""
    parts = [f"step {step}/{max_steps}" if step is not None and max_steps else f"step {step}"] if step else []
    if "train_loss" in values and "loss" not in values:
        parts.insert(0, "training finished")
    parts += [f"{label} {_number(values[key])}" for key, label in _METRIC_LABELS if values.get(key) is not None]
    return " · ".join(parts)


def readable_log(text: str) -> str:
    """The trainer's log as a person should read it: metric dicts as readable lines, Python warnings (with the
    server's file paths) dropped, the launch command left out; errors and everything else kept as they are."""
    lines: list[str] = []
    skip_source = False
    for line in text.splitlines():
        if skip_source:
            skip_source = False
            if line.startswith((" ", "\t")):  # the source line ``warnings.warn`` prints under the warning
                continue
        if _WARNING_LINE.match(line):
            skip_source = True
            continue
        attempt = _ATTEMPT_LINE.match(line)
        if attempt:
            lines.append(f"=== {attempt.group(1)}")
            continue
        if _DICT_LINE.match(line.strip()):
            try:
                values = ast.literal_eval(line.strip())
            except (ValueError, SyntaxError):
                values = None
            if isinstance(values, dict):
                described = describe_metrics(values)
                if described:
                    lines.append(described)
                continue
        lines.append(line)
    return "\n".join(lines)
