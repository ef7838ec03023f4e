"""Training throughput on one CUDA GPU: Atelier's engine against plain Hugging Face Trainer, same scenario.

For each scenario NAME of ``../shared/bench/hf_baseline.py`` (its ``CONFIGS``: size, method, micro-batch,
gradient checkpointing, DeepSpeed stage, Liger), in one call and one after the other on the same GPU:

1. the peer: ``python hf_baseline.py NAME SEQ`` as a subprocess (``--baseline`` gives its path); its JSON
   line is read back;
2. Atelier: the same Llama config with random weights (sizes read from hf_baseline.py's ``SIZES``), built
   once on the GPU in bf16 and saved as a safetensors model folder under ``--models-dir`` with a word-level
   tokenizer whose vocabulary has exactly the config's 128,256 entries; a text JSONL file of random tokens
   drawn uniformly from that vocabulary, one document of SEQ tokens per row, so that packing makes full
   rows of SEQ tokens (the peer's batches); a ``RunConfig`` (SFT on text, LoRA r16 alpha 32 dropout 0 on
   all linear layers, or full; the same micro-batch, gradient checkpointing and DeepSpeed stage; bf16;
   packing on) run as ``python -m training_app.engine --config run.json``, or through ``accelerate launch
   --use_deepspeed --num_processes 1`` for the DeepSpeed scenarios. Its ``result.json`` and
   ``metrics.jsonl`` give tokens/s and peak memory.

Throughput is measured over the window the peer uses: hf_baseline.py runs 23 steps and divides the time
from the end of step 3 to the end of the last step by the steps in between; here the same window is read
from the engine's per-step ``metrics.jsonl`` timestamps (written after each optimizer step, once the loss
has been copied to the host) and ``num_input_tokens_seen``. Memory is ``torch.cuda.max_memory_allocated()``
at the end of training for both. MFU is tokens/s x 4N (LoRA, QLoRA) or 6N (full) FLOPs per token over
``--peak-tflops`` (default 989, H100 SXM dense bf16), attention not counted, with N the base model's
parameter count (tied embeddings once), the same N for both.

Prints one JSON line per scenario: Atelier's tokens/s, step time, peak memory GiB and MFU, the peer's same
figures, and the ratios atelier/peer. Never asserts. Progress goes to stderr.

Exit codes: 0 figures printed (a scenario that could not run prints a line with ``skipped``); 2 nothing
could run: no CUDA GPU (``torch.cuda.is_available()`` is false), or the engine's packages are missing (the
message names them and how to install them; nothing is installed); 124 the ``--max-seconds`` cap; 130
Ctrl-C. ``--dry-run`` runs on CPU instead: a tiny Llama (hidden 64, 2 layers, the same 128,256 vocabulary),
2 steps at sequence length 128, no peer: it proves the model folder, data, config and launch plumbing.

    python bench/train_throughput.py                       # 1b_lora 1b_lora_ds2 1b_full_ds2 8b_lora
    python bench/train_throughput.py 8b_lora --seq 2048
    .venv/bin/python bench/train_throughput.py --dry-run   # CPU, tiny model, 3-4 minutes
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NAMES = ["1b_lora", "1b_lora_ds2", "1b_full_ds2", "8b_lora"]
BASELINE_CANDIDATES = [
    ROOT.parent / "shared" / "bench" / "hf_baseline.py",
    ROOT / "shared" / "bench" / "hf_baseline.py",
]
# hf_baseline.py times steps 4..23: (t[-1] - t[2]) / (len(t) - 3), t[i] being the end of step i + 1.
WARMUP_STEPS = 3
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
}
# PERF.md's goals for Atelier (tokens/s; 8b_qlora also a memory goal). 1b_lora_ds2: no slower than 1b_lora.
GOALS_TOKENS_PER_S = {"1b_lora": 80_000, "1b_full_ds2": 50_000, "8b_lora": 14_000, "8b_qlora": 10_000}
GOALS_PEAK_MEM_GIB = {"8b_qlora": 16.0}
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|unk|>"]
MODEL_MARKER = "bench_model.json"
ENGINE_MODULES = ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "safetensors", "tokenizers"]
DISTRIBUTIONS = {"liger_kernel": "liger-kernel"}

_current: subprocess.Popen[bytes] | None = None  # the subprocess running now, killed on a stop


# ---- hf_baseline.py's scenarios -----------------------------------------------------------------------


def _literal(node: ast.expr) -> Any:
    """A literal, also through ``dict(key=value, ...)`` calls (hf_baseline.py's SIZES use them)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {keyword.arg: _literal(keyword.value) for keyword in node.keywords}
    if isinstance(node, ast.Dict):
        return {_literal(key): _literal(value) for key, value in zip(node.keys, node.values, strict=True) if key}
    return ast.literal_eval(node)


def read_baseline(path: Path) -> dict[str, Any]:
    """SIZES, CONFIGS and the step count of hf_baseline.py, read without running it (it trains on import)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, Any] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name) and target.id in ("SIZES", "CONFIGS", "steps"):
                found[target.id] = _literal(statement.value)
    missing = [name for name in ("SIZES", "CONFIGS") if name not in found]
    if missing:
        raise ValueError(f"{path} has no {' or '.join(missing)} (has the peer script changed?)")
    return found


# ---- children: probe the machine, build a model folder --------------------------------------------------


def child_probe(modules: list[str]) -> dict[str, Any]:
    """Which modules import here, and whether torch sees a CUDA GPU."""
    errors: dict[str, str | None] = {}
    for name in modules:
        try:
            importlib.import_module(name)
            errors[name] = None
        except Exception as exc:  # an installed package can fail for a missing dependency of its own
            errors[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    facts: dict[str, Any] = {"imports": errors, "cuda": False, "device": None}
    if errors.get("torch") is None:
        import torch

        facts["cuda"] = bool(torch.cuda.is_available())
        facts["torch"] = torch.__version__
        facts["torch_cuda"] = torch.version.cuda
        if facts["cuda"]:
            facts["device"] = torch.cuda.get_device_name(0)
    return facts


def child_build(spec_json: str, seq: str, folder: str, device: str) -> dict[str, Any]:
    """Build the random-weights Llama (bf16, like the peer) and its tokenizer into ``folder``, atomically."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    spec = json.loads(spec_json)
    vocab_size = int(spec["vocab_size"])
    target = Path(folder)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    # One token per id: the data below names ids directly, so it covers the whole vocabulary uniformly,
    # as the peer's torch.randint(0, vocab_size) batches do, and the embedding and output head keep the
    # config's 128,256 rows (the output head is a large share of the compute at this vocabulary size).
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{index}": index for index in range(len(SPECIAL_TOKENS), vocab_size)})
    bos, eos, pad, unk = SPECIAL_TOKENS
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 0)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk
    )
    if len(tokenizer) != vocab_size:
        raise RuntimeError(f"the tokenizer has {len(tokenizer)} tokens, the config {vocab_size}")

    config = LlamaConfig(max_position_embeddings=int(seq), bos_token_id=0, eos_token_id=1, pad_token_id=2, **spec)
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    facts = {
        "parameters": parameters,
        "sizes": spec,
        "seq": int(seq),
        "vocab_size": vocab_size,
        "built_on": device,
        "build_s": round(time.perf_counter() - started, 1),
    }
    (staging / MODEL_MARKER).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return facts


# ---- subprocesses ---------------------------------------------------------------------------------------


def run_logged(command: list[str], log: Path, *, env: dict[str, str], timeout: float, cwd: Path = ROOT) -> int:
    """Run ``command`` in its own process group, output to ``log``; kill the group on timeout or stop."""
    global _current
    with log.open("wb") as out:
        _current = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            return _current.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            print(f"  stopped after {timeout:.0f} s (--run-timeout): {' '.join(command[:4])} ...", file=sys.stderr)
            return 124
        finally:
            stop_current()


def stop_current() -> None:
    global _current
    process, _current = _current, None
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):  # the launcher and any worker it left behind
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def child_json(arguments: list[str], log: Path, *, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run this script as a child (``--child ...``) and return the JSON object it prints last."""
    code = run_logged([sys.executable, __file__, "--child", *arguments], log, env=env, timeout=timeout)
    text = log.read_text(encoding="utf-8", errors="replace")
    if code != 0:
        raise RuntimeError(f"child {arguments[0]} exited with {code}:\n{text[-3000:]}")
    return last_json_line(text, key=None) or {}


def last_json_line(text: str, *, key: str | None) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict) and (key is None or key in value):
                    return value
    return None


def base_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---- packages -------------------------------------------------------------------------------------------


def pinned_versions() -> dict[str, str]:
    """The project's pins (pyproject.toml), to suggest the versions the engine is tested with."""
    try:
        import tomllib  # Python 3.11+; a GPU machine's interpreter may be older

        project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    except (ImportError, OSError, KeyError, ValueError):
        return {}
    pins = {}
    for requirement in project.get("dependencies", []):
        name, _, version = requirement.partition("==")
        if version:
            pins[name.split("[")[0].strip().lower()] = requirement.strip()
    return pins


def install_hint(modules: list[str]) -> str:
    pins = pinned_versions()
    distributions = [DISTRIBUTIONS.get(module, module) for module in modules]
    requirements = " ".join(f"'{pins.get(name, name)}'" for name in distributions)
    return (
        f"install with: python -m pip install {requirements}\n"
        "  (nothing was installed by this script.) On a GPU machine that reaches no package registry, build the\n"
        f"  wheels where one is reachable: python -m pip wheel -w wheels/ {requirements}, delete the torch and\n"
        "  nvidia-* wheels from wheels/ (the machine has its own CUDA torch), copy wheels/ over and run\n"
        f"  python -m pip install --no-index --find-links wheels/ {requirements}\n"
        "  (deepspeed is a source package: its wheel is pure Python and JIT-builds its ops with the machine's\n"
        "  nvcc; see ../shared/PERF.md, 'On a GPU machine')"
    )


def scenario_modules(config: tuple[Any, ...]) -> tuple[list[str], list[str]]:
    """(modules Atelier's run needs, modules the peer needs) for one CONFIGS entry."""
    _size, method, _mb, _ckpt, stage, liger = config
    engine = list(ENGINE_MODULES)
    peer = ["torch", "transformers", "peft"]
    if stage:
        engine.append("deepspeed")
        peer.append("deepspeed")
    if method == "qlora":
        engine.append("bitsandbytes")
        peer.append("bitsandbytes")
    if liger:
        peer.append("liger_kernel")
    return engine, peer


# ---- one scenario ---------------------------------------------------------------------------------------


def ensure_model(
    models_dir: Path, size: str, spec: dict[str, Any], seq: int, *, device: str, work: Path, timeout: float
) -> tuple[Path, dict[str, Any]]:
    """The cached model folder for (size, seq), built by a child process when missing or incomplete."""
    folder = models_dir / f"random-llama-{size}-seq{seq}"
    marker = folder / MODEL_MARKER
    if marker.is_file():
        facts = json.loads(marker.read_text(encoding="utf-8"))
        if facts.get("sizes") == spec:
            return folder, facts
    models_dir.mkdir(parents=True, exist_ok=True)
    print(f"  building the random-weights {size} model on {device} into {folder} ...", file=sys.stderr)
    facts = child_json(
        ["build", json.dumps(spec), str(seq), str(folder), device],
        work / f"build-{size}.log",
        env=base_env(),
        timeout=timeout,
    )
    return folder, facts


def write_rows(path: Path, *, rows: int, doc_tokens: int, vocab_size: int, seed: int) -> None:
    """Text rows of ``doc_tokens`` random vocabulary words each (one token per word)."""
    rng = random.Random(seed)
    first = len(SPECIAL_TOKENS)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            words = " ".join(f"w{rng.randrange(first, vocab_size)}" for _ in range(doc_tokens))
            handle.write(json.dumps({"text": words}) + "\n")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as RunConfig fields; a VALUE is read as JSON when it parses (false, 4, "x")."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            overrides[key] = json.loads(text)
        except ValueError:
            overrides[key] = text
    return overrides


def engine_config(
    folder: Path,
    model: Path,
    data: Path,
    config: tuple[Any, ...],
    *,
    seq: int,
    steps: int,
    cpu: bool,
    overrides: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, str]]:
    """Write ``run.json`` for Atelier's run of one scenario; returns (path, validation errors).

    ``overrides`` (``--set``) replace fields after the scenario's own, for ablations: ``packing=false``,
    ``gradient_checkpointing=false``, ``per_device_batch_size=2``, ``attention=sdpa`` (packing with
    transformers' mask instead of varlen attention), ``liger=off``, ``torch_compile=on``,
    ``optimizer=adamw_torch``. The engine's speed settings are automatic otherwise (``speed.json`` in the
    run folder says what each became and why; the JSON line carries it as ``speed``).
    """
    sys.path.insert(0, str(ROOT))
    from training_app.engine.config import RunConfig

    _size, method, mb, ckpt, stage, _liger = config
    run = RunConfig.from_dict(
        {
            "model_path": str(model),
            "train_path": str(data),
            "output_dir": str(folder / "out"),
            "run_dir": str(folder / "run"),
            "kind": "text",
            "stage": "sft",
            "method": method,
            # The peer's LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"); PEFT's dropout default is 0.
            "lora": {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
            "deepspeed": {None: "none", 2: "zero2", 3: "zero3"}.get(stage, "none"),
            "max_steps": steps,
            "learning_rate": 1e-4,
            "per_device_batch_size": mb,
            "gradient_checkpointing": bool(ckpt),
            "max_seq_length": seq,
            "packing": True,
            # bf16 as the peer on the GPU. A dry run on CPU uses fp32: the engine's DeepSpeed path on CPU
            # refuses bf16 (transformers' "Your setup doesn't support bf16/gpu"), and elsewhere it is slow there.
            "precision": "fp32" if cpu else "bf16",
            "save_steps": max(1, steps),
            "save_total_limit": 1,
            "logging_steps": 1,
            "seed": 0,
            "use_cpu": cpu,
            "generation_prompts": 0,
            **(overrides or {}),
        }
    )
    errors = run.validate(cuda_available=not cpu)
    Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    path = folder / "run.json"
    run.save(path)
    return path, errors


def engine_command(config_path: Path, *, deepspeed: bool, launcher: str) -> list[str]:
    """The engine's documented command lines (training_app/engine/__main__.py)."""
    engine = ["-m", "training_app.engine", "--config", str(config_path)]
    if not deepspeed or launcher == "python":
        return [sys.executable, *engine]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
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


def measured_window(run_dir: Path, *, micro_batch: int, seq: int) -> dict[str, Any]:
    """Step time and tokens/s over the steps after the first WARMUP_STEPS, from metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    by_step: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for text in path.read_text(encoding="utf-8").splitlines():
            line = json.loads(text)
            if line.get("loss") is not None and isinstance(line.get("step"), int):
                by_step[line["step"]] = line
    lines = [by_step[step] for step in sorted(by_step)]
    if len(lines) < 2:
        return {"window": None}
    start = next((line for line in lines if line["step"] == WARMUP_STEPS), None)
    if start is None or start is lines[-1]:
        start = lines[0]  # too few steps to skip the peer's warm-up (a dry run): measure what there is
    end = lines[-1]
    steps = end["step"] - start["step"]
    seconds = end["timestamp"] - start["timestamp"]
    first, last = start.get("num_input_tokens_seen"), end.get("num_input_tokens_seen")
    if isinstance(first, int | float) and isinstance(last, int | float):  # logged as a float
        tokens, counted = round(last - first), "num_input_tokens_seen"
    else:
        tokens, counted = steps * micro_batch * seq, "estimated: steps x micro-batch x seq"
    return {
        "window": f"steps {start['step'] + 1}-{end['step']}",
        "step_s": seconds / steps if steps else None,
        "tokens_per_s": tokens / seconds if seconds > 0 else None,
        "tokens_in_window": tokens,
        "tokens_counted": counted,
        "max_step_memory_bytes": max((line.get("memory_bytes") or 0) for line in lines),
    }


def run_peer(baseline: Path, name: str, seq: int, work: Path, *, timeout: float) -> dict[str, Any]:
    log = work / f"peer-{name}.log"
    started = time.perf_counter()
    code = run_logged([sys.executable, str(baseline), name, str(seq)], log, env=base_env(), timeout=timeout, cwd=work)
    wall = time.perf_counter() - started
    text = log.read_text(encoding="utf-8", errors="replace")
    figures = last_json_line(text, key="tokens_per_s")
    if code != 0 or figures is None:
        return {"error": f"hf_baseline.py exited with {code}", "log_tail": text[-1500:], "wall_s": round(wall, 1)}
    return {**figures, "wall_s": round(wall, 1)}


def run_engine(
    folder: Path,
    model: Path,
    config: tuple[Any, ...],
    *,
    seq: int,
    steps: int,
    cpu: bool,
    launcher: str,
    doc_tokens: int,
    vocab_size: int,
    timeout: float,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    _size, _method, mb, _ckpt, stage, _liger = config
    mb = int((overrides or {}).get("per_device_batch_size", mb))
    folder.mkdir(parents=True)
    data = folder / "train.jsonl"
    write_rows(data, rows=(steps + 1) * mb, doc_tokens=doc_tokens, vocab_size=vocab_size, seed=1)
    config_path, errors = engine_config(folder, model, data, config, seq=seq, steps=steps, cpu=cpu, overrides=overrides)
    if errors:
        return {"error": f"the run config does not validate: {errors}"}
    env = base_env()
    if cpu:
        env["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
    log = folder / "train.log"
    started = time.perf_counter()
    code = run_logged(
        engine_command(config_path, deepspeed=bool(stage), launcher=launcher), log, env=env, timeout=timeout
    )
    wall = time.perf_counter() - started
    result_file = folder / "run" / "result.json"
    if code != 0 or not result_file.is_file():
        text = log.read_text(encoding="utf-8", errors="replace")
        failure = folder / "run" / "failure.json"
        detail = json.loads(failure.read_text(encoding="utf-8")) if failure.is_file() else None
        return {"error": f"the engine exited with {code}", "failure": detail, "log_tail": text[-2500:]}
    result = json.loads(result_file.read_text(encoding="utf-8"))
    window = measured_window(folder / "run", micro_batch=mb, seq=seq)
    return {
        **window,
        "wall_s": round(wall, 1),
        "train_runtime_s": result.get("train_runtime_seconds"),
        "engine_tokens_per_s": result.get("tokens_per_second"),
        "peak_memory_bytes": result.get("peak_memory_bytes"),
        "memory_kind": result.get("memory_kind"),
        "steps": result.get("steps"),
        "loss_first_last": [result.get("train_loss_first"), result.get("train_loss_last")],
        "trainable_parameters": result.get("trainable_parameters"),
        "zero_stage": (result.get("hardware") or {}).get("zero_stage"),
        "device": (result.get("hardware") or {}).get("device"),
        "versions": result.get("versions"),
        "speed": result.get("speed"),
    }


def scenario_notes(config: tuple[Any, ...]) -> list[str]:
    _size, method, _mb, _ckpt, stage, liger = config
    notes = []
    if liger:
        notes.append("the peer runs Liger; the engine's Liger is automatic (on where liger-kernel imports on CUDA)")
    if method == "qlora":
        notes.append("the engine quantizes nf4 with double quantization, the peer without")
    if method == "full" and stage:
        notes.append("the engine loads fp32 weights, the peer bf16; DeepSpeed bf16 runs both modules in bf16")
    return notes


def gib(value: Any) -> float | None:
    return round(value / 2**30, 2) if isinstance(value, int | float) else None


def ratio(numerator: Any, denominator: Any) -> float | None:
    if isinstance(numerator, int | float) and isinstance(denominator, int | float) and denominator:
        return round(numerator / denominator, 3)
    return None


# ---- main -----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "exit codes: 0 figures printed (scenarios that could not run print a line with 'skipped');\n"
            "2 nothing could run: no CUDA GPU, or the engine's packages are missing (the message says which\n"
            "and how to install them; nothing is installed); 124 --max-seconds passed; 130 interrupted.\n"
            "Output: one JSON line per scenario on stdout, progress on stderr. See bench/README.md."
        ),
    )
    parser.add_argument(
        "names", nargs="*", help=f"scenarios of hf_baseline.py's CONFIGS (default: {' '.join(DEFAULT_NAMES)})"
    )
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 2048; 128 with --dry-run)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="Atelier's optimizer steps (default: hf_baseline.py's, 23; 2 with --dry-run); the peer runs its own",
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (default 989, H100 SXM)"
    )
    parser.add_argument(
        "--baseline", default=None, help="path of hf_baseline.py (default ../shared/bench/hf_baseline.py)"
    )
    parser.add_argument("--skip-baseline", action="store_true", help="run Atelier only (no peer, no ratios)")
    parser.add_argument("--models-dir", default=str(ROOT / "var" / "bench-models"), help="cache of the model folders")
    parser.add_argument(
        "--doc-tokens",
        type=int,
        default=None,
        help="tokens per data row (default: seq, one document per packed row, as the peer's rows; fewer packs several)",
    )
    parser.add_argument(
        "--ds-launcher",
        choices=["accelerate", "python"],
        default="accelerate",
        help="how DeepSpeed scenarios start the engine (default accelerate launch; python is a world of one)",
    )
    parser.add_argument(
        "--run-timeout", type=int, default=1800, help="cap on each subprocess in seconds (default 1800)"
    )
    parser.add_argument("--max-seconds", type=int, default=7200, help="hard cap on the whole run (default 7200)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a RunConfig field of Atelier's run, for ablations (repeatable): --set packing=false",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (its path goes to stderr)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="on CPU: a tiny model, 2 steps, no peer (checks the model folder, data, config and launch plumbing)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()

    if options.child:
        mode, *arguments = options.child
        facts = child_probe(arguments) if mode == "probe" else child_build(*arguments)
        print(json.dumps(facts))
        return 0

    baseline = (
        Path(options.baseline)
        if options.baseline
        else next((path for path in BASELINE_CANDIDATES if path.is_file()), BASELINE_CANDIDATES[0])
    )
    if not baseline.is_file():
        print(f"hf_baseline.py not found at {baseline}: give its path with --baseline", file=sys.stderr)
        return 2
    peer_script = read_baseline(baseline)
    sizes: dict[str, dict[str, Any]] = peer_script["SIZES"]
    configs: dict[str, tuple[Any, ...]] = peer_script["CONFIGS"]
    names = options.names or DEFAULT_NAMES
    unknown = [name for name in names if name not in configs]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(configs)}")
    dry = options.dry_run
    seq = options.seq or (128 if dry else 2048)
    steps = options.steps or (2 if dry else int(peer_script.get("steps", 23)))
    doc_tokens = options.doc_tokens or seq
    use_peer = not (dry or options.skip_baseline)
    try:
        overrides = parse_overrides(options.overrides)
    except ValueError as exc:
        parser.error(str(exc))

    work = Path(tempfile.mkdtemp(prefix="atelier-train-throughput-"))
    deadline = time.monotonic() + options.max_seconds

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError

    def on_terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_terminate)
    signal.alarm(options.max_seconds)

    def left() -> float:
        return min(options.run_timeout, deadline - time.monotonic())

    try:
        wanted = sorted({module for name in names for module in scenario_modules(configs[name])[0]})
        if use_peer:
            wanted = sorted({*wanted, *(module for name in names for module in scenario_modules(configs[name])[1])})
        print("probing this machine (CUDA, packages) ...", file=sys.stderr)
        probe = child_json(["probe", *wanted], work / "probe.log", env=base_env(), timeout=left())
        missing = {module: error for module, error in probe["imports"].items() if error}
        if not dry and not probe["cuda"]:
            print(
                "train_throughput.py needs an NVIDIA GPU with CUDA, and torch sees none here "
                f"(torch {probe.get('torch', 'not importable')}, CUDA build {probe.get('torch_cuda')}). "
                "Nothing was run. On this machine: bench/train_cpu.py measures ZeRO-2 against plain on CPU, "
                "and `--dry-run` checks this script's plumbing on CPU with a tiny model.",
                file=sys.stderr,
            )
            return 2
        core_missing = [module for module in ENGINE_MODULES if module in missing]
        if core_missing:
            for module in core_missing:
                print(f"missing: {module} ({missing[module]})", file=sys.stderr)
            print(
                "Atelier's engine cannot run without: " + ", ".join(core_missing) + "\n" + install_hint(core_missing),
                file=sys.stderr,
            )
            return 2
        device = "cpu" if dry else "cuda"
        print(f"device: {probe.get('device') or 'CPU'}; work folder {work}", file=sys.stderr)

        done: dict[str, dict[str, Any]] = {}
        for name in names:
            config = configs[name]
            size, method, mb, ckpt, stage, liger = config
            engine_needs, peer_needs = scenario_modules(config)
            common = {
                "scenario": name,
                "size": "tiny" if dry else size,
                "method": method,
                "micro_batch": mb,
                "grad_ckpt": ckpt,
                "deepspeed_stage": stage,
                "liger": liger,
                "seq": seq,
                "steps": steps,
                "precision": "fp32" if dry else "bf16",
                "dry_run": dry,
                "overrides": overrides,
            }
            lacking = [module for module in engine_needs if module in missing]
            if dry and method == "qlora":
                print(json.dumps({**common, "skipped": "QLoRA needs CUDA (bitsandbytes has no CPU kernels)"}))
                continue
            if lacking:
                reasons = "; ".join(f"{module}: {missing[module]}" for module in lacking)
                print(f"{name}: cannot import {reasons}\n{install_hint(lacking)}", file=sys.stderr)
                print(json.dumps({**common, "skipped": f"missing packages: {', '.join(lacking)}"}))
                continue
            print(f"{name}: seq {seq}, {steps} steps, micro-batch {mb} ...", file=sys.stderr)
            spec = TINY if dry else sizes[size]
            model, facts = ensure_model(
                Path(options.models_dir), "tiny" if dry else size, spec, seq, device=device, work=work, timeout=left()
            )
            parameters = int(facts["parameters"])
            flops_per_token = (6 if method == "full" else 4) * parameters
            peak = options.peak_tflops * 1e12

            peer: dict[str, Any] = {}
            peer_lacking = [module for module in peer_needs if module in missing]
            if use_peer and peer_lacking:
                print(
                    f"{name}: the peer misses {', '.join(peer_lacking)}\n{install_hint(peer_lacking)}", file=sys.stderr
                )
                peer = {"error": f"missing packages: {', '.join(peer_lacking)}"}
            elif use_peer:
                print(f"  peer: {baseline.name} {name} {seq} ...", file=sys.stderr)
                peer = run_peer(baseline, name, seq, work, timeout=left())
                print(f"  peer: {peer.get('tokens_per_s', peer.get('error'))} tokens/s", file=sys.stderr)

            print("  atelier: python -m training_app.engine ...", file=sys.stderr)
            ours = run_engine(
                work / name,
                model,
                config,
                seq=seq,
                steps=steps,
                cpu=dry,
                launcher=options.ds_launcher,
                doc_tokens=doc_tokens,
                vocab_size=int(spec["vocab_size"]),
                timeout=left(),
                overrides=overrides,
            )
            tokens_per_s = ours.get("tokens_per_s")
            line: dict[str, Any] = {
                **common,
                "tokens_per_s": round(tokens_per_s) if tokens_per_s else None,
                "step_s": round(ours["step_s"], 4) if ours.get("step_s") else None,
                "peak_mem_GiB": gib(ours.get("peak_memory_bytes")),
                "memory_kind": ours.get("memory_kind"),
                "mfu": round(tokens_per_s * flops_per_token / peak, 3) if tokens_per_s else None,
                "window": ours.get("window"),
                "tokens_counted": ours.get("tokens_counted"),
                "wall_s": ours.get("wall_s"),
                "train_runtime_s": ours.get("train_runtime_s"),
                "engine_tokens_per_s_whole_run": ours.get("engine_tokens_per_s"),
                "loss_first_last": ours.get("loss_first_last"),
                "speed": ours.get("speed"),
                "zero_stage": ours.get("zero_stage"),
                "params_B": round(parameters / 1e9, 3),
                "flops_per_token": flops_per_token,
                "peak_tflops": options.peak_tflops,
                "device": ours.get("device") or probe.get("device"),
                "goal_tokens_per_s": GOALS_TOKENS_PER_S.get(name),
                "goal_peak_mem_GiB": GOALS_PEAK_MEM_GIB.get(name),
                "notes": scenario_notes(config),
            }
            if "error" in ours:
                line.update({"error": ours["error"], "failure": ours.get("failure"), "log_tail": ours.get("log_tail")})
            if use_peer:
                peer_tps = peer.get("tokens_per_s")
                line.update(
                    {
                        "peer": "hf_baseline",
                        "peer_tokens_per_s": peer_tps,
                        "peer_step_s": peer.get("step_s"),
                        "peer_peak_mem_GiB": peer.get("peak_mem_GiB"),
                        "peer_mfu": round(peer_tps * flops_per_token / peak, 3) if peer_tps else None,
                        "peer_mfu_vs_989_own": peer.get("mfu_vs_989"),
                        "peer_params_B": peer.get("params_B"),
                        "peer_wall_s": peer.get("wall_s"),
                        "ratio_tokens_per_s_vs_peer": ratio(tokens_per_s, peer_tps),
                        "ratio_peak_mem_vs_peer": ratio(line["peak_mem_GiB"], peer.get("peak_mem_GiB")),
                    }
                )
                if "error" in peer:
                    line.update({"peer_error": peer["error"], "peer_log_tail": peer.get("log_tail")})
            if stage and name.endswith(f"_ds{stage}") and name[: -len(f"_ds{stage}")] in done:
                plain = done[name[: -len(f"_ds{stage}")]]
                line["ratio_vs_without_deepspeed"] = ratio(tokens_per_s, plain.get("tokens_per_s"))
            done[name] = line
            print(json.dumps(line))
            print(f"  atelier: {line['tokens_per_s']} tokens/s, {line['peak_mem_GiB']} GiB", file=sys.stderr)
            if not options.keep:
                shutil.rmtree(work / name, ignore_errors=True)  # checkpoints of a full 1B run are ~15 GB
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
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
