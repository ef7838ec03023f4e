"""Eval throughput: a 200-prompt suite on two models through the vLLM inference server, sent the way an eval run
sends it, against the same requests sent one at a time.

PERF.md's goal on this machine: the eval run's way at least 3× the sequential requests' requests/s.

Setup, in a temporary ``ATELIER_DATA_DIR`` (``make run``'s embedded default, as bench/serving_concurrency.py builds
it): the starter model the tests use (``tests.conftest.starter_models_dir``) and one real random LoRA adapter of it
(``tests.factories.make_lora_adapter``), written to the inference server's registry as ``starter`` and
``adapter``; the inference server on vLLM (``python -m serving_app.engine --engine vllm --preload``, vLLM from
``.venv-vllm`` started as its child). The suite is the demo task's questions (``datasets_app/samples/demo``: the
training file's first ``--prompts`` questions), one user turn each, asked of both models: 2 × ``--prompts``
requests, greedy, ``--max-tokens`` new tokens at most.

Three passes, all through ``evals_app.generation.answer_all`` (the code an eval run uses: streamed chat
completions, ``stream_chat``):

- ``eval_run``: as ``evals_app.services._run`` sends them: ``SAVE_EVERY`` rows at a time, each answered by both
  models, with ``EVAL_CONCURRENCY`` requests in flight (vLLM batches them);
- ``unchunked``: every request handed to one ``answer_all`` with the same concurrency (no wait at the end of each
  ``SAVE_EVERY`` rows): what the chunking costs;
- ``sequential``: every request alone, one after the other (concurrency 1), the peer of the ratio.

Each pass prints a JSON line (prompts, models, requests, wall seconds, requests/s, answer tokens/s counted with
the starter model's tokenizer, errors, 1-minute load average), then a line with the ratio of requests/s, and a
table on stderr. One warm-up request per model first (not counted). Never asserts. The inference server (which
stops its vLLM process group on SIGTERM) and the temporary folder are removed at the end; ``--max-seconds`` caps
the run (exit 124).

    .venv/bin/python bench/eval_throughput.py                  # about 5-10 minutes on the 2-core machine
    .venv/bin/python bench/eval_throughput.py --prompts 50     # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from demo_flow import StepFailed, setup_django_here, stop, studio_env
from serving_concurrency import wait_for_vllm
from serving_stack import free_port, start, wait_for

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ("starter", "adapter")
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
GOAL = 3.0


def prepare_models(data_dir: Path) -> tuple[Path, Path]:
    """The tests' starter model (created once, cached) and one random LoRA adapter of it in ``data_dir``."""
    from tests.conftest import starter_models_dir
    from tests.factories import make_lora_adapter
    from training_app.engine.starter import ensure_starter_model

    starter = ensure_starter_model(starter_models_dir())
    return starter, make_lora_adapter(starter, data_dir / "adapter", seed=7)


def write_registry(path: Path, starter: Path, adapter: Path) -> None:
    entries = {
        "starter": {"base": str(starter), "adapter": None},
        "adapter": {"base": str(starter), "adapter": str(adapter)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=1), encoding="utf-8")


def suite_questions(count: int) -> list[str]:
    """The demo task's training questions, the first ``count`` of them."""
    from datasets_app.services import SAMPLES, SAMPLES_DIR

    rows = (SAMPLES_DIR / SAMPLES["support"][1]).read_text(encoding="utf-8").splitlines()
    questions = [json.loads(row)["messages"][0]["content"] for row in rows]
    if count > len(questions):
        raise StepFailed(f"--prompts: the demo file has {len(questions)} questions; ask for at most that many")
    return questions[:count]


def servables(starter: Path, adapter: Path) -> list[Any]:
    from serving_app.catalog import Servable

    return [
        Servable(key="base:1", label="starter", served_name="starter", base_path=str(starter), adapter_path=None),
        Servable(
            key="version:1", label="adapter", served_name="adapter", base_path=str(starter), adapter_path=str(adapter)
        ),
    ]


def run_pass(name: str, models: list[Any], questions: list[str], *, max_tokens: int, tokenizer: Any) -> dict[str, Any]:
    """Answer every question with every model: as an eval run, unchunked, or one at a time (see the module doc)."""
    from django.conf import settings

    from evals_app import generation
    from evals_app.services import SAVE_EVERY

    def requests(chunk: list[str]) -> list[generation.Request]:
        return [generation.Request(model, [{"role": "user", "content": text}]) for model in models for text in chunk]

    started = time.monotonic()
    answers: list[generation.Generated] = []
    if name == "eval_run":
        for start_row in range(0, len(questions), SAVE_EVERY):
            chunk = requests(questions[start_row : start_row + SAVE_EVERY])
            answers += generation.answer_all(chunk, concurrency=settings.EVAL_CONCURRENCY, max_tokens=max_tokens)
    elif name == "unchunked":
        answers = generation.answer_all(
            requests(questions), concurrency=settings.EVAL_CONCURRENCY, max_tokens=max_tokens
        )
    else:
        answers = generation.answer_all(requests(questions), concurrency=1, max_tokens=max_tokens)
    wall = time.monotonic() - started
    tokens = sum(len(tokenizer(answer.text, add_special_tokens=False)["input_ids"]) for answer in answers)
    return {
        "pass": name, "prompts": len(questions), "models": len(models), "requests": len(answers),
        "wall_s": round(wall, 2), "requests_per_s": round(len(answers) / wall, 2),
        "tokens_per_s": round(tokens / wall, 1), "answer_tokens": tokens,
        "errors": sum(1 for answer in answers if answer.error), "load_1m": round(os.getloadavg()[0], 2),
        "concurrency": 1 if name == "sequential" else settings.EVAL_CONCURRENCY,
    }  # fmt: skip


def table(rows: list[dict[str, Any]], ratio: float | None) -> str:
    lines = [f"{'pass':<12}{'requests':>9}{'wall s':>9}{'req/s':>8}{'tok/s':>8}{'errors':>8}"]
    for row in rows:
        lines.append(
            f"{row['pass']:<12}{row['requests']:>9}{row['wall_s']:>9}{row['requests_per_s']:>8}"
            f"{row['tokens_per_s']:>8}{row['errors']:>8}"
        )
    lines.append(f"eval run vs sequential: {ratio}× (goal ≥ {GOAL}×)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=200, help="suite rows, each asked of both models (200)")
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per answer at most (default 48)")
    parser.add_argument("--max-seconds", type=int, default=1800, help="hard cap (default 1800)")
    options = parser.parse_args()
    if not VLLM_PYTHON.exists():
        print("vLLM is not installed: run `make vllm`", file=sys.stderr)
        return 1

    data_dir = Path(tempfile.mkdtemp(prefix="atelier-eval-throughput-"))
    processes: list[subprocess.Popen[bytes]] = []

    def on_signal(signum: int, frame: Any) -> None:
        raise TimeoutError if signum == signal.SIGALRM else KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.alarm(options.max_seconds)
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env, _ = studio_env(data_dir, data_dir / "models")
        env["ATELIER_INFERENCE_URL"] = url  # where generation sends the eval requests
        setup_django_here(env)
        print(f"embedded default in {data_dir}; load {os.getloadavg()[0]:.2f} ...", file=sys.stderr)
        starter, adapter = prepare_models(data_dir)
        registry = data_dir / "serving" / "models.json"
        write_registry(registry, starter, adapter)
        logs, log = data_dir / "vllm-logs", data_dir / "engine.log"
        command = [
            sys.executable, "-m", "serving_app.engine", "--registry", str(registry), "--port", str(port),
            "--engine", "vllm", "--vllm-python", str(VLLM_PYTHON), "--vllm-log-dir", str(logs), "--preload",
            "--vllm-max-model-len", "1024", "--vllm-max-loras", "2",
        ]  # fmt: skip
        print("vLLM (starting, 30-90 s) ...", file=sys.stderr)
        processes.append(start(command, env=env, log=log))
        wait_for(f"{url}/v1/models", processes[-1], log, 120)
        wait_for_vllm(url, processes[-1], log, logs)

        from transformers import AutoTokenizer

        from evals_app import generation

        tokenizer = AutoTokenizer.from_pretrained(str(starter))
        models = servables(starter, adapter)
        questions = suite_questions(options.prompts)
        warm_up = [generation.Request(model, [{"role": "user", "content": questions[0]}]) for model in models]
        generation.answer_all(warm_up, concurrency=1, max_tokens=options.max_tokens)
        rows = []
        for name in ("eval_run", "unchunked", "sequential"):
            print(f"{name} ...", file=sys.stderr)
            rows.append(run_pass(name, models, questions, max_tokens=options.max_tokens, tokenizer=tokenizer))
            print(json.dumps(rows[-1]), flush=True)
        ratio = round(rows[0]["requests_per_s"] / rows[-1]["requests_per_s"], 2) if rows[-1]["requests_per_s"] else None
        print(json.dumps({"eval_run_vs_sequential": ratio, "goal": GOAL, "met": bool(ratio and ratio >= GOAL)}))
        print("\n" + table(rows, ratio), file=sys.stderr)
        return 0
    except TimeoutError:
        print(f"stopped: the run passed its {options.max_seconds} s cap", file=sys.stderr)
        return 124
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except StepFailed as failure:
        print(f"failed: {failure}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        for process in reversed(processes):
            stop(process, grace=20)  # the inference server stops its vLLM process group on SIGTERM
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
