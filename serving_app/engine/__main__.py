"""``python -m serving_app.engine --registry models.json --host 127.0.0.1 --port N``: the inference server.

Options: ``--memory-budget-gib`` (base models are evicted least recently used first when loading another
would exceed it; sizes are estimated from the safetensors files), ``--max-tokens`` (the ceiling on
``max_tokens``), ``--max-waiting`` (requests queued per base model before 429), ``--threads`` (torch CPU
threads). It binds to loopback by default and has no authentication of its own: the studio fronts it.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until interrupted; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m serving_app.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True, help="JSON file mapping served names to {base, adapter}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008)
    parser.add_argument("--memory-budget-gib", type=float, default=None, help="evict base models over this size")
    parser.add_argument("--max-tokens", type=int, default=None, help="ceiling on a request's max_tokens")
    parser.add_argument("--max-waiting", type=int, default=32, help="queued requests per base model before 429")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log-level", default="info")
    options = parser.parse_args(argv)
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    import uvicorn

    from serving_app.engine.pool import ModelPool
    from serving_app.engine.registry import Registry
    from serving_app.engine.server import MAX_TOKENS_CEILING, create_app

    if options.threads:
        torch.set_num_threads(options.threads)
    budget = int(options.memory_budget_gib * 2**30) if options.memory_budget_gib is not None else None
    registry = Registry(options.registry)
    if registry.problem:
        print(f"warning: {registry.problem}", file=sys.stderr, flush=True)
    app = create_app(
        registry,
        ModelPool(budget_bytes=budget, max_waiting=options.max_waiting),
        max_tokens_ceiling=options.max_tokens or MAX_TOKENS_CEILING,
    )
    uvicorn.run(app, host=options.host, port=options.port, log_level=options.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
