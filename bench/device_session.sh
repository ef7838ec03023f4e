#!/usr/bin/env bash
# One call on a lent GPU machine (no package registry there): install the carried wheels, record the
# machine, measure its bf16 matrix ceiling, then run train_throughput.py against hf_baseline.py.
#
# Prepared on the CPU machine (see bench/README.md, "Running on a lent GPU"):
#   .whl/   wheels for Python 3.12 of what the GPU image lacks or has older (trl, datasets, deepspeed,
#           liger-kernel, pydantic, transformers/peft at the project's pins, ...)
#   shared/bench/hf_baseline.py   a copy of ../shared/bench/hf_baseline.py (the peer)
# Usage there: bash bench/device_session.sh SECONDS SCENARIO...   (figures also under $OUT)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d)}
seconds=${1:?seconds}; shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 3; }
export PYTHONPATH=/tmp/site
# If the carried transformers or peft do not import against the image's packages, use the image's own.
for name in transformers peft; do
  python3 -c "import $name" 2>/dev/null || { echo "carried $name fails to import: using the image's"; rm -rf /tmp/site/$name /tmp/site/$name-*.dist-info; }
done
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
python3 - <<'EOF' 2>&1 | tee "$OUT/machine.txt"
import importlib, torch
for name in ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "deepspeed", "liger_kernel", "pyarrow", "tokenizers", "triton"]:
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "FAILED", type(exc).__name__, str(exc)[:200])
# The matrix ceiling on random data (METHOD.md): 8192^3 bf16, median of 20 after 5 warm-ups.
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(5):
    a @ b
times = []
for _ in range(20):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(); a @ b; end.record(); torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / 1e3)
times.sort()
print(f"bf16 matmul 8192^3: {2 * 8192**3 / times[len(times) // 2] / 1e12:.0f} TFLOP/s (median of 20)")
EOF
python3 bench/train_throughput.py --max-seconds "$seconds" --peak-tflops 989 --models-dir /tmp/bench-models \
  "$@" 2>&1 | tee "$OUT/train_throughput.log"
# Ablations (#16): ABLATE="attention=sdpa liger=off gradient_checkpointing=true" runs the engine alone on
# the first scenario once per setting, each turned back to the plain path, within what is left of SECONDS.
first=${1:-}
if [ -n "${ABLATE:-}" ] && [ -n "$first" ]; then
  for setting in $ABLATE; do
    left=$(( seconds - SECONDS ))
    [ "$left" -gt 60 ] || { echo "no time left for the ablation $setting"; break; }
    echo "ablation: $first with --set $setting (engine only, ${left}s left)"
    python3 bench/train_throughput.py --max-seconds "$left" --peak-tflops 989 --models-dir /tmp/bench-models \
      --skip-baseline --set "$setting" "$first" 2>&1 | tee -a "$OUT/train_throughput.log"
  done
fi
# The attention change alone (#16): transformers' SDPA mask against the flash varlen kernel on a packed
# micro-batch, in one process, on a 1B-wide Llama of 4 layers.
if [ $(( seconds - SECONDS )) -gt 90 ]; then
  python3 bench/packing_attention.py --device cuda --dtype bfloat16 --rows 8 --max-len 2048 --hidden 2048 \
    --layers 4 2>&1 | tee -a "$OUT/train_throughput.log"
fi
