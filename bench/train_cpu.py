"""DeepSpeed ZeRO-2 against plain training on CPU: the same tiny LoRA SFT job, as a time ratio.

The job is what the studio's demo trains: the starter model (``training_app.engine.starter``, a 4M-parameter
Llama, created once under ``--models-dir`` in about 50 s and reused), LoRA r16 on all linear layers, SFT on
the 60 chat rows of ``datasets_app/samples/chat.jsonl``, ``--steps`` optimizer steps (default 20) of 4 rows
at ``--seq`` tokens (default 128), fp32, on CPU. Each run is a fresh trainer process in its own folder,
started the way the studio's Celery task starts one:

1. scenario ``lora_sft_cpu_plain``: ``python -m training_app.engine --config run.json``;
2. scenario ``lora_sft_cpu_zero2``: the same config with ``deepspeed: zero2``, through
   ``accelerate launch --use_deepspeed --num_processes 1 ... -m training_app.engine --config run.json``
   (DeepSpeed's CPU accelerator over gloo).

The first DeepSpeed run of a machine JIT-builds DeepSpeed's CPU communication op with gcc (30-45 s,
cached under ``~/.cache/torch_extensions`` afterwards), so one DeepSpeed warm-up run comes first and is
not counted (``--no-warmup`` skips it). Then ``--repeat`` pairs (default 2) run in alternating order
(plain first, then ZeRO-2 first, ...). The machine is shared and noisy: the figures are medians.

Prints one JSON line per scenario (wall seconds of the whole process, ``train_runtime_seconds`` and
``tokens_per_second`` from the run's ``result.json``, medians and every run) and a final line with the
ZeRO-2/plain ratios; PERF.md's goal is at most 1.3x the time. Never asserts. Progress goes to stderr.
Stops by itself: a hard cap (``--max-seconds``, default 900) kills the trainer's process group, removes
the temporary folder and exits 124; Ctrl-C exits 130; a failed run prints its log tail and exits 1.

    .venv/bin/python bench/train_cpu.py                 # about 3-4 minutes on the 2-core machine
    .venv/bin/python bench/train_cpu.py --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_ROWS = ROOT / "datasets_app" / "samples" / "chat.jsonl"
GOAL_RATIO = 1.3
PLAIN = "lora_sft_cpu_plain"
ZERO2 = "lora_sft_cpu_zero2"

_current: subprocess.Popen[bytes] | None = None  # the trainer running now, killed on a stop


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def trainer_command(config_path: Path, *, deepspeed: bool) -> list[str]:
    """The command lines of ``training_app/engine/__main__.py`` (those the tests run on CPU)."""
    engine = ["-m", "training_app.engine", "--config", str(config_path)]
    if not deepspeed:
        return [sys.executable, *engine]
    launcher = Path(sys.executable).with_name("accelerate")
    accelerate = [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]
    if launcher.is_file():
        accelerate.append("launch")
    return [
        *accelerate,
        "--use_deepspeed",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        *engine,
    ]


def write_config(folder: Path, model: Path, options: argparse.Namespace, *, deepspeed: bool) -> Path:
    """The run config of the tiny job, in a fresh folder (a reused output folder would resume)."""
    sys.path.insert(0, str(ROOT))
    from training_app.engine.config import RunConfig

    config = RunConfig.from_dict(
        {
            "model_path": str(model),
            "train_path": str(SAMPLE_ROWS),
            "output_dir": str(folder / "out"),
            "run_dir": str(folder / "run"),
            "kind": "chat",
            "stage": "sft",
            "method": "lora",
            "deepspeed": "zero2" if deepspeed else "none",
            "max_steps": options.steps,
            "per_device_batch_size": 4,
            "max_seq_length": options.seq,
            "learning_rate": 2e-4,
            "logging_steps": 1,
            "use_cpu": True,
            "precision": "fp32",
            "generation_prompts": 2,
            "generation_max_new_tokens": 16,
        }
    )
    errors = config.validate(cuda_available=False)
    if errors:
        raise RuntimeError(f"the benchmark's run config is invalid: {errors}")
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)
    path = folder / "run.json"
    config.save(path)
    return path


def run_once(folder: Path, model: Path, options: argparse.Namespace, *, deepspeed: bool, deadline: float) -> dict:
    """Run one trainer process to the end; returns its figures (raises with the log tail if it failed)."""
    global _current
    folder.mkdir(parents=True)
    config_path = write_config(folder, model, options, deepspeed=deepspeed)
    log = folder / "train.log"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(options.threads),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    load_before = os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("wb") as out:
        _current = subprocess.Popen(
            trainer_command(config_path, deepspeed=deepspeed),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = _current.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            stop_current()
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result_file = folder / "run" / "result.json"
    if code != 0 or not result_file.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"the trainer exited with {code}; log tail:\n{tail}")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    return {
        "wall_s": wall,
        "train_runtime_s": result.get("train_runtime_seconds"),
        "tokens_per_s": result.get("tokens_per_second"),
        "tokens_seen": result.get("tokens_seen"),
        "steps": result.get("steps"),
        "zero_stage": (result.get("hardware") or {}).get("zero_stage"),
        "loss_first": result.get("train_loss_first"),
        "loss_last": result.get("train_loss_last"),
        "cpu_s": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime),
        "load_1m_before": round(load_before, 2),
    }


def stop_current() -> None:
    """Kill the running trainer's whole process group (the launcher and its workers), if any is left."""
    global _current
    process, _current = _current, None
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):  # the launcher and any worker it left behind
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def median(values: list[Any]) -> float | None:
    numbers = [float(value) for value in values if isinstance(value, int | float)]
    return statistics.median(numbers) if numbers else None


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator is not None and denominator else None


def summary(scenario: str, runs: list[dict[str, Any]], common: dict[str, Any]) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "runs": len(runs),
        "wall_s": rounded(median([run["wall_s"] for run in runs])),
        "train_runtime_s": rounded(median([run["train_runtime_s"] for run in runs]), 3),
        "tokens_per_s": rounded(median([run["tokens_per_s"] for run in runs]), 1),
        "cpu_s": rounded(median([run["cpu_s"] for run in runs])),
        "each_wall_s": [rounded(run["wall_s"]) for run in runs],
        "each_train_runtime_s": [rounded(run["train_runtime_s"], 3) for run in runs],
        "each_tokens_per_s": [run["tokens_per_s"] for run in runs],
        "each_load_1m_before": [run["load_1m_before"] for run in runs],
        "steps": runs[0]["steps"] if runs else None,
        "tokens_seen": runs[0]["tokens_seen"] if runs else None,
        "zero_stage": runs[0]["zero_stage"] if runs else None,
        "loss_first_last": [rounded(runs[0]["loss_first"], 4), rounded(runs[0]["loss_last"], 4)] if runs else None,
        **common,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="counted runs of each scenario (default 2)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    parser.add_argument("--seq", type=int, default=128, help="max sequence length in tokens (default 128)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP threads per trainer")
    parser.add_argument(
        "--models-dir", default=str(ROOT / "var" / "bench-models"), help="where the starter model is cached"
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the uncounted DeepSpeed warm-up run")
    parser.add_argument("--max-seconds", type=int, default=900, help="hard cap on the whole run (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path goes to stderr)")
    options = parser.parse_args()
    if options.repeat < 1 or options.steps < 1:
        parser.error("--repeat and --steps must be at least 1")

    folder = Path(tempfile.mkdtemp(prefix="atelier-train-cpu-bench-"))
    deadline = time.monotonic() + options.max_seconds

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError

    def on_terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_terminate)
    signal.alarm(options.max_seconds)
    started = time.perf_counter()
    try:
        sys.path.insert(0, str(ROOT))
        from training_app.engine.starter import ensure_starter_model

        print(f"starter model under {options.models_dir} (created once, about 50 s) ...", file=sys.stderr)
        took = time.perf_counter()
        model = ensure_starter_model(Path(options.models_dir))
        print(f"starter model ready in {time.perf_counter() - took:.1f} s: {model}", file=sys.stderr)

        warmup: dict[str, Any] | None = None
        if not options.no_warmup:
            print("warm-up DeepSpeed run (not counted: the first one JIT-builds an op) ...", file=sys.stderr)
            warmup = run_once(folder / "warmup", model, options, deepspeed=True, deadline=deadline)
            print(f"  warm-up: {warmup['wall_s']:.1f} s wall", file=sys.stderr)

        runs: dict[str, list[dict[str, Any]]] = {PLAIN: [], ZERO2: []}
        for index in range(options.repeat):
            order = (PLAIN, ZERO2) if index % 2 == 0 else (ZERO2, PLAIN)
            for scenario in order:
                print(f"run {index + 1}/{options.repeat}: {scenario} ...", file=sys.stderr)
                figures = run_once(
                    folder / f"{scenario}-{index}", model, options, deepspeed=scenario == ZERO2, deadline=deadline
                )
                runs[scenario].append(figures)
                print(
                    f"  {figures['wall_s']:.1f} s wall, {figures['train_runtime_s']} s training, "
                    f"{figures['tokens_per_s']} tokens/s",
                    file=sys.stderr,
                )

        common = {
            "seq": options.seq,
            "steps_asked": options.steps,
            "micro_batch": 4,
            "threads": options.threads,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        }
        plain = summary(PLAIN, runs[PLAIN], common)
        zero2 = summary(ZERO2, runs[ZERO2], common)
        zero2["warmup_run"] = (
            {"counted": False, "wall_s": rounded(warmup["wall_s"]), "why": "the first DeepSpeed run JIT-builds an op"}
            if warmup
            else {"counted": False, "skipped": True}
        )
        print(json.dumps(plain))
        print(json.dumps(zero2))
        pairs = list(zip(runs[PLAIN], runs[ZERO2], strict=True))
        print(
            json.dumps(
                {
                    "scenario": "zero2_vs_plain_cpu",
                    "ratio_wall": ratio(zero2["wall_s"], plain["wall_s"]),
                    "ratio_train_runtime": ratio(zero2["train_runtime_s"], plain["train_runtime_s"]),
                    "ratio_tokens_per_s": ratio(zero2["tokens_per_s"], plain["tokens_per_s"]),
                    "each_pair_ratio_wall": [ratio(z["wall_s"], p["wall_s"]) for p, z in pairs],
                    "each_pair_ratio_train_runtime": [
                        ratio(z["train_runtime_s"], p["train_runtime_s"]) for p, z in pairs
                    ],
                    "goal_ratio_max": GOAL_RATIO,
                    "ratios_are": "ZeRO-2 / plain, of the medians (time: lower is better; tokens/s: higher is better)",
                    "repeat": options.repeat,
                    "warmup_counted": False,
                    "total_s": rounded(time.perf_counter() - started, 1),
                    **common,
                }
            )
        )
        return 0
    except (TimeoutError, subprocess.TimeoutExpired):
        print(f"stopped: the run passed its {options.max_seconds} s cap", file=sys.stderr)
        return 124
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        stop_current()
        if options.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
