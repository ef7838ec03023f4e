"""Packed rows: the engine's varlen attention against transformers' SDPA path with its block-diagonal mask.

A random-weights Llama (by default hidden 512, 4 layers, 8 heads, 2 key/value heads: about 30M parameters
without the embeddings) takes a micro-batch of rows of random lengths packed into one sequence with
position ids, as TRL's padding-free packing gives it. Each round times one forward and backward pass with
``attention=sdpa`` (transformers builds a mask over the whole packed sequence) and one with the engine's
varlen attention (``training_app.engine.speed``: one causal SDPA call per row on CPU, PyTorch's flash varlen
kernel on CUDA in bf16), alternating, in the same process. Prints one JSON line: tokens/s of each, the ratio,
and the largest logit difference between the two (they compute the same thing).

    .venv/bin/python bench/packing_attention.py                        # CPU, 8 rows x up to 1,024 tokens
    python bench/packing_attention.py --device cuda --dtype bfloat16 --rows 8 --max-len 2048
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8, help="rows packed in the micro-batch (default 8)")
    parser.add_argument("--max-len", type=int, default=1024, help="longest row in tokens (default 1024)")
    parser.add_argument("--min-len", type=int, default=64, help="shortest row in tokens (default 64)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each, after one warm-up (default 5)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training_app.engine import speed

    torch.manual_seed(options.seed)
    dtype = getattr(torch, options.dtype)
    shape = LlamaConfig(
        hidden_size=options.hidden,
        intermediate_size=options.hidden * 4,
        num_hidden_layers=options.layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=32_000,
        max_position_embeddings=max(options.max_len, 2048),
        use_cache=False,
    )
    model: Any = LlamaForCausalLM(shape)
    model = model.to(device=options.device, dtype=dtype)
    generator = torch.Generator().manual_seed(options.seed)
    lengths = torch.randint(options.min_len, options.max_len + 1, (options.rows,), generator=generator).tolist()
    ids = torch.randint(0, shape.vocab_size, (1, sum(lengths)), generator=generator).to(options.device)
    positions = torch.cat([torch.arange(length) for length in lengths])[None].to(options.device)
    varlen = speed.register_varlen_attention()

    def step(attention: str) -> tuple[float, Any]:
        model.set_attn_implementation(attention)
        model.zero_grad(set_to_none=True)
        if options.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = model(input_ids=ids, position_ids=positions).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
        loss.backward()
        if options.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, logits.detach()

    step("sdpa")
    step(varlen)  # warm-up of each
    times: dict[str, list[float]] = {"sdpa": [], varlen: []}
    logits: dict[str, Any] = {}
    for _ in range(options.rounds):
        for attention in ("sdpa", varlen):
            seconds, logits[attention] = step(attention)
            times[attention].append(seconds)
    tokens = sum(lengths)
    sdpa_rate = tokens / statistics.median(times["sdpa"])
    varlen_rate = tokens / statistics.median(times[varlen])
    print(
        json.dumps(
            {
                "device": options.device,
                "dtype": options.dtype,
                "rows": options.rows,
                "tokens": tokens,
                "row_lengths": lengths,
                "hidden": options.hidden,
                "layers": options.layers,
                "threads": torch.get_num_threads(),
                "rounds": options.rounds,
                "varlen_kernel": speed.varlen_kernel(cuda=options.device == "cuda", half=options.dtype != "float32")[0],
                "sdpa_mask_tokens_per_s": round(sdpa_rate, 1),
                "varlen_tokens_per_s": round(varlen_rate, 1),
                "ratio_varlen_over_sdpa": round(varlen_rate / sdpa_rate, 3),
                "max_logit_difference": float((logits["sdpa"] - logits[varlen]).abs().max()),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
