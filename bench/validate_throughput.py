"""Streamed dataset validation: throughput (MB/s, rows/s) and peak memory on generated JSON Lines files.

For each layout of ``--layouts`` (default all three) it generates a JSON Lines file of ``--size-mb``
(default 1024) in a temporary folder, with realistic conversations (system prompts, several turns,
accents, emoji and CJK text) and about 3 % invalid rows of every kind validation reports:

- ``chat``: OpenAI chat with string contents;
- ``tools``: OpenAI tool use: three JSON-schema tools declared per row, assistant ``tool_calls`` with
  JSON-text arguments (validated against the schemas), ``tool`` results and the final answer;
- ``parts``: content as OpenAI's list of parts, a third of the answers with a ``reasoning`` part and
  per-turn ``loss_weight``.

Then, for each file and each in a fresh child process so that peak memory is its own:

1. scenario ``validate_<layout>_jsonl``: ``datasets_app.engine.validate.validate_file`` on the file,
   writing the normalized rows next to it (as the validation task does);
2. peer ``json_loads_lines``: ``for line in f: json.loads(line)`` over the same file, the floor any
   Python validator pays just to parse.

Prints one JSON line per scenario on stdout (progress goes to stderr): MB/s, rows/s, peak RSS (the
child's VmHWM), CPU seconds, valid/invalid counts, the goals (≥ 30 MB/s, ≤ 300 MB RSS) and our
throughput as a ratio of the peer's. Never asserts. Stops by itself: a hard cap (``--max-seconds``,
default 1500) kills the children, removes the temporary folder and exits 124; Ctrl-C exits 130.

    .venv/bin/python bench/validate_throughput.py --size-mb 256 --layouts tools,parts
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOAL_MB_S = 30.0
GOAL_RSS_MB = 300.0
INVALID_SHARE = 0.03

WORDS = (  # noqa: SIM905 (one string is easier to read than a column of words)
    "the model data training token layer learning rate batch memory gradient loss value python function "
    "return error file system user team answer question because which would could about customer order "
    "invoice garden recipe weather travel budget meeting report schedule library museum river mountain "
    "coffee bread kitchen window morning evening history language music picture letter station"
).split()

EXTRA = ["café", "naïve", "Zürich", "façade", "東京", "データ", "🙂", "—", "«quote»", "½"]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a patient programming tutor. Keep answers short.",
    "You answer questions about the company's products politely.",
    "Reply in plain language and avoid jargon.",
]


def sentence(rng: random.Random, words: int) -> str:
    picked = [rng.choice(WORDS) if rng.random() > 0.03 else rng.choice(EXTRA) for _ in range(words)]
    return " ".join(picked).capitalize() + rng.choice([".", "?", "!", "."])


def paragraph(rng: random.Random, sentences: int, low: int, high: int) -> str:
    return " ".join(sentence(rng, rng.randint(low, high)) for _ in range(sentences))


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = [
    _tool("get_weather", "Current weather in a city.",
          {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"]),
    _tool("convert_currency", "Convert an amount between currencies.",
          {"amount": {"type": "number"}, "source": {"type": "string"}, "target": {"type": "string"}},
          ["amount", "source", "target"]),
    _tool("add_event", "Add an event to the calendar.",
          {"title": {"type": "string"}, "date": {"type": "string"}}, ["title", "date"]),
]  # fmt: skip


def tool_conversation(rng: random.Random) -> dict[str, Any]:
    """A user question, the assistant's call, the tool's result and the answer."""
    name, arguments = rng.choice(
        [
            ("get_weather", {"city": rng.choice(["Lyon", "Zürich", "東京", "Oslo"]), "unit": "celsius"}),
            ("convert_currency", {"amount": rng.randint(1, 900), "source": "EUR", "target": "JPY"}),
            (
                "add_event",
                {"title": sentence(rng, 4), "date": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"},
            ),
        ]
    )
    call_id = f"call_{rng.randrange(10**6)}"
    turns = [
        {"role": "user", "content": paragraph(rng, rng.randint(1, 2), 5, 18)},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]},
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"result": sentence(rng, 6)})},
        {"role": "assistant", "content": paragraph(rng, rng.randint(1, 4), 8, 25)},
    ]  # fmt: skip
    return {"tools": TOOLS, "messages": turns}


def parts_conversation(rng: random.Random) -> dict[str, Any]:
    """Contents as lists of parts; some answers carry reasoning, some earlier answers a loss weight of 0."""
    row = good_conversation(rng)
    for turn in row["messages"]:
        parts: list[dict[str, Any]] = [{"type": "text", "text": turn["content"]}]
        if turn["role"] == "assistant" and rng.random() < 0.33:
            parts.insert(0, {"type": "reasoning", "text": paragraph(rng, rng.randint(1, 3), 6, 16)})
        turn["content"] = parts
    answers = [turn for turn in row["messages"] if turn["role"] == "assistant"]
    if len(answers) > 1 and rng.random() < 0.5:
        answers[0]["loss_weight"] = 0
    return row


def good_conversation(rng: random.Random) -> dict[str, Any]:
    turns: list[dict[str, str]] = []
    if rng.random() < 0.3:
        turns.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        turns.append({"role": "user", "content": paragraph(rng, rng.randint(1, 3), 5, 18)})
        turns.append({"role": "assistant", "content": paragraph(rng, rng.randint(2, 8), 8, 25)})
    return {"messages": turns, "source": rng.choice(["support", "docs", "forum"])}


def bad_line(rng: random.Random, layout: str) -> bytes:
    """One invalid row, of a kind the validator reports."""
    if layout == "tools" and rng.random() < 0.5:
        row = tool_conversation(rng)
        function = row["messages"][1]["tool_calls"][0]["function"]
        if rng.random() < 0.5:
            function["name"] = "get_time"  # not declared
        else:
            function["arguments"] = "{}"  # required arguments missing
        return json.dumps(row, ensure_ascii=False).encode()
    row = good_conversation(rng)
    kind = rng.randrange(7)
    if kind == 0:
        row["messages"][-1]["content"] = "   "
    elif kind == 1:
        row["messages"][0]["role"] = "narrator"
    elif kind == 2:
        row["messages"].append({"role": "user", "content": "Thanks!"})
    elif kind == 3:
        return json.dumps(row, ensure_ascii=False).replace('"source": "', '"score": NaN, "source": "').encode()
    elif kind == 4:
        return json.dumps(row, ensure_ascii=False).encode()[:-25]  # cut off
    elif kind == 5:
        return json.dumps(row, ensure_ascii=False).encode().replace(b"e", b"\xe9", 1)  # Latin-1 byte
    else:
        row = {"conversation": row["messages"]}
    return json.dumps(row, ensure_ascii=False).encode()


LAYOUTS = {"chat": good_conversation, "tools": tool_conversation, "parts": parts_conversation}


def generate(path: Path, size_mb: int, seed: int, layout: str = "chat") -> dict[str, int]:
    """Write about ``size_mb`` MiB of JSON Lines; returns how many rows are valid and invalid."""
    rng = random.Random(seed)
    make = LAYOUTS[layout]
    good_pool = [json.dumps(make(rng), ensure_ascii=False).encode() for _ in range(4000)]
    bad_pool = [bad_line(rng, layout) for _ in range(400)]
    target = size_mb * 1024 * 1024
    written = rows = invalid = 0
    with path.open("wb") as handle:
        while written < target:
            block = []
            for _ in range(1000):
                if rng.random() < INVALID_SHARE:
                    line = rng.choice(bad_pool)
                    invalid += 1
                else:
                    line = rng.choice(good_pool)
                block.append(line)
            data = b"\n".join(block) + b"\n"
            handle.write(data)
            written += len(data)
            rows += len(block)
    return {"rows": rows, "invalid_generated": invalid}


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss would include a forking parent's)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_validate(source: str, out: str) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from datasets_app.engine.validate import validate_file

    updates = 0

    def progress(done: int, total: int) -> None:
        nonlocal updates
        updates += 1

    baseline = peak_rss_mb()
    cpu = time.process_time()
    start = time.perf_counter()
    report = validate_file(source, filename="bench.jsonl", out_path=out, progress=progress)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "cpu_s": time.process_time() - cpu,
        "peak_rss_mb": peak_rss_mb(),
        "rss_growth_mb": peak_rss_mb() - baseline,
        "rows": report.total_rows,
        "valid": report.valid_rows,
        "invalid": report.dropped_rows,
        "problems": {code: summary.rows_dropped for code, summary in report.problems.items()},
        "progress_calls": updates,
        "summary": report.summary,
    }


def child_peer(source: str) -> dict[str, Any]:
    cpu = time.process_time()
    start = time.perf_counter()
    rows = errors = 0
    with open(source, "rb") as handle:
        for line in handle:
            rows += 1
            try:
                json.loads(line)
            except ValueError:
                errors += 1
    return {
        "seconds": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "peak_rss_mb": peak_rss_mb(),
        "rows": rows,
        "errors": errors,
    }


def run_child(args: list[str], deadline: float) -> dict[str, Any]:
    remaining = max(1.0, deadline - time.monotonic())
    command = [sys.executable, __file__, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=remaining, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def busy_percent(seconds: float = 0.5) -> float | None:
    """How busy all cores were over a short window (other people's work included)."""
    try:

        def sample() -> tuple[int, int]:
            with open("/proc/stat") as stat:
                values = [int(value) for value in stat.readline().split()[1:]]
            idle = values[3] + values[4]
            return idle, sum(values)

        idle_a, total_a = sample()
        time.sleep(seconds)
        idle_b, total_b = sample()
        return round(100 * (1 - (idle_b - idle_a) / max(1, total_b - total_a)), 1)
    except OSError:
        return None


def measure(layout: str, folder: Path, size_mb_wanted: int, seed: int, deadline: float) -> list[dict[str, Any]]:
    """Generate the layout's file, validate it and parse it with the peer; the two scenarios' figures."""
    source = folder / f"{layout}.jsonl"
    print(f"generating {size_mb_wanted} MiB of {layout} rows in {folder} ...", file=sys.stderr)
    start = time.perf_counter()
    generated = generate(source, size_mb_wanted, seed, layout)
    size_mb = source.stat().st_size / (1024 * 1024)
    took = time.perf_counter() - start
    print(f"generated {size_mb:.0f} MiB, {generated['rows']:,} rows in {took:.1f} s", file=sys.stderr)

    print("validating ...", file=sys.stderr)
    busy_before = busy_percent()
    ours = run_child(["--child", "validate", str(source), str(folder / "rows.jsonl")], deadline)
    (folder / "rows.jsonl").unlink(missing_ok=True)
    print("peer: json.loads per line ...", file=sys.stderr)
    peer = run_child(["--child", "peer", str(source)], deadline)
    busy_after = busy_percent()
    source.unlink()

    scenario = f"validate_{layout}_jsonl"
    our_mb_s = size_mb / ours["seconds"]
    peer_mb_s = size_mb / peer["seconds"]
    common = {"size_mb": round(size_mb, 1), "python": sys.version.split()[0], "cpus": os.cpu_count()}
    return [
        {
            "scenario": scenario,
            "mb_per_s": round(our_mb_s, 1),
            "rows_per_s": round(ours["rows"] / ours["seconds"]),
            "seconds": round(ours["seconds"], 2),
            "cpu_s": round(ours["cpu_s"], 2),
            "peak_rss_mb": round(ours["peak_rss_mb"], 1),
            "rss_growth_mb": round(ours["rss_growth_mb"], 1),
            "rows": ours["rows"],
            "valid": ours["valid"],
            "invalid": ours["invalid"],
            "invalid_generated": generated["invalid_generated"],
            "problems": ours["problems"],
            "progress_calls": ours["progress_calls"],
            "goal_mb_per_s": GOAL_MB_S,
            "goal_peak_rss_mb": GOAL_RSS_MB,
            "peer": "json_loads_lines",
            "peer_mb_per_s": round(peer_mb_s, 1),
            "ratio_vs_peer": round(our_mb_s / peer_mb_s, 3),
            "machine_busy_pct": [busy_before, busy_after],
            **common,
        },
        {
            "scenario": "json_loads_lines",
            "peer_of": scenario,
            "mb_per_s": round(peer_mb_s, 1),
            "rows_per_s": round(peer["rows"] / peer["seconds"]),
            "seconds": round(peer["seconds"], 2),
            "cpu_s": round(peer["cpu_s"], 2),
            "peak_rss_mb": round(peer["peak_rss_mb"], 1),
            "rows": peer["rows"],
            "errors": peer["errors"],
            **common,
        },
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the generated file in MiB (default 1024)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-seconds", type=int, default=1500, help="hard cap on the whole run (default 1500)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path goes to stderr)")
    parser.add_argument(
        "--layouts",
        type=lambda value: [name for name in value.split(",") if name],
        default=list(LAYOUTS),
        help=f"comma-separated layouts to measure (default: {','.join(LAYOUTS)})",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()

    unknown = sorted(set(options.layouts) - set(LAYOUTS))
    if unknown:
        parser.error(f"unknown layout {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}")
    if options.child:
        mode, *paths = options.child
        figures = child_validate(*paths) if mode == "validate" else child_peer(*paths)
        print(json.dumps(figures))
        return 0

    folder = Path(tempfile.mkdtemp(prefix="atelier-validate-bench-"))
    deadline = time.monotonic() + options.max_seconds

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError

    def on_terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_terminate)
    signal.alarm(options.max_seconds)
    try:
        for layout in options.layouts:
            for figures in measure(layout, folder, options.size_mb, options.seed, deadline):
                print(json.dumps(figures), flush=True)
        return 0
    except (TimeoutError, subprocess.TimeoutExpired):
        print(f"stopped: the run passed its {options.max_seconds} s cap", file=sys.stderr)
        return 124
    except KeyboardInterrupt:
        return 130
    finally:
        signal.alarm(0)
        if options.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
