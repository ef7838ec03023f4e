"""``python -m training_app.engine --config run.json``: one trainer process.

Exit codes: 0 succeeded, 3 cancelled (cancel flag or SIGTERM), 4 failed (``run_dir/failure.json`` says why
in plain language). The studio's Celery GPU task starts it in its own process group (``start_new_session``)
with ``OMP_NUM_THREADS`` = cores / processes. Command lines verified on the 2-core CPU machine (gloo,
``use_cpu: true``; tests/test_training_engine.py runs the first two and the DeepSpeed ones):

- one process, with or without DeepSpeed (a DeepSpeed run without a launcher is a world of one)::

      python -m training_app.engine --config run.json

- DeepSpeed (ZeRO-2, ZeRO-3, offload, custom: the dict comes from the run config and is passed to
  ``TrainingArguments(deepspeed=...)``), N processes on one host, through Accelerate (torchrun inside)::

      accelerate launch --use_deepspeed --num_processes N --num_machines 1 --mixed_precision no \
          --dynamo_backend no --main_process_port PORT -m training_app.engine --config run.json

- plain data parallel (DDP) without DeepSpeed, N > 1 processes (on CPU too: the engine picks gloo)::

      accelerate launch --multi_gpu --num_processes N --num_machines 1 --mixed_precision no \
          --dynamo_backend no --main_process_port PORT -m training_app.engine --config run.json

- DeepSpeed's own launcher works as well (it appends ``--local_rank``, accepted and ignored)::

      deepspeed --num_gpus N --master_port PORT --module training_app.engine --config run.json

Do not use ``accelerate launch --cpu``: it starts one process whatever ``--num_processes`` says, and
Accelerate never selects DeepSpeed in CPU mode. On GPU hosts add ``--gpu_ids`` of the worker pool;
multi-node adds ``--num_machines``, ``--machine_rank``, ``--main_process_ip`` (or a DeepSpeed hostfile).

The launchers turn a worker's exit code 3 or 4 into 1: the studio decides from ``status.json``'s ``phase``
(and ``failure.json``), and the exit code only confirms it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path
from types import FrameType

from training_app.engine.config import ConfigError, RunConfig
from training_app.engine.reporting import EXIT_FAILED, CancelWatcher, Reporter, classify_failure


def main(argv: list[str] | None = None) -> int:
    """Run the trainer for the config file named on the command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m training_app.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path of the run config (JSON)")
    # The deepspeed launcher appends --local_rank; the same value is in the LOCAL_RANK variable we read.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)

    try:
        config = RunConfig.load(options.config)
    except (ConfigError, OSError) as exc:
        _report_unreadable_config(Path(options.config), exc)
        return EXIT_FAILED

    from training_app.engine.trainer import Terminated, global_rank, run

    watcher = CancelWatcher(config.run_dir)
    reporter = Reporter(config.run_dir, enabled=global_rank() == 0)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # The studio sends SIGTERM to the process group when the cooperative cancel did not end the run in
        # its grace period: stop now. A second SIGTERM kills the process the default way.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        watcher.request()
        with contextlib.suppress(Exception):
            reporter.status("cancelled", message="stopped by the studio (SIGTERM)")
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        outcome = run(config, watcher=watcher)
    finally:
        signal.signal(signal.SIGTERM, previous)
    _leave_process_group()
    return outcome.exit_code


def _report_unreadable_config(path: Path, exc: Exception) -> None:
    """Write failure.json where the config says the run folder is, if it can be read that far."""
    print(f"cannot read the run config {path}: {exc}", file=sys.stderr, flush=True)
    try:
        run_dir = json.loads(path.read_text(encoding="utf-8")).get("run_dir")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(run_dir, str) and run_dir:
        Reporter(run_dir).failure(classify_failure(exc), detail=str(exc))


def _leave_process_group() -> None:
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
