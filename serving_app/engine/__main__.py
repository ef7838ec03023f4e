"""``python -m serving_app.engine --registry models.json --host 127.0.0.1 --port N``: the inference server.

Options: ``--memory-budget-gib`` (base models are evicted least recently used first when loading another
would exceed it; sizes are estimated from the safetensors files), ``--max-tokens`` (the ceiling on
``max_tokens``), ``--max-waiting`` (requests queued per base model before 429), ``--threads`` (torch CPU
threads). It binds to loopback by default and has no authentication of its own: the studio fronts it.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving_app.engine.vllm_server import VllmSupervisor


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
    parser.add_argument(
        "--engine", choices=("auto", "vllm", "builtin"), default=os.environ.get("ATELIER_SERVING_ENGINE", "auto"),
        help="auto: vLLM where it is installed and can serve the model, else in-process; vllm: fail without "
        "vLLM; builtin: in-process only (ATELIER_SERVING_ENGINE)",
    )  # fmt: skip
    parser.add_argument("--vllm-python", default=None, help="vLLM's interpreter (default: .venv-vllm/bin/python)")
    parser.add_argument("--vllm-log-dir", default=None, help="where each vLLM server writes its log")
    parser.add_argument("--vllm-kv-cache-gib", type=int, default=1, help="KV cache per vLLM server, whole GiB (CPU)")
    parser.add_argument("--vllm-max-loras", type=int, default=4, help="adapters resident per base model")
    parser.add_argument("--vllm-max-lora-rank", type=int, default=64, help="the largest adapter rank vLLM serves")
    parser.add_argument("--vllm-max-bases", type=int, default=2, help="vLLM servers (base models) at once")
    parser.add_argument("--vllm-max-model-len", type=int, default=None, help="context length vLLM serves")
    parser.add_argument(
        "--vllm-url", action="append", default=[], metavar="BASE_DIR=URL",
        help="a vLLM server run elsewhere for the base model folder BASE_DIR (compose's vLLM service, another "
        "host): attached to instead of started; repeat per base model (ATELIER_VLLM_URLS, space-separated)",
    )  # fmt: skip
    parser.add_argument("--preload", action="store_true", help="start the registry's vLLM servers at start-up")
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
        vllm=_vllm(options),
        preload=options.preload,
    )
    gc.freeze()  # torch's, transformers' and the app's objects: out of the collector's way while answers stream
    uvicorn.run(app, host=options.host, port=options.port, log_level=options.log_level, access_log=False)
    return 0


def _vllm(options: argparse.Namespace) -> VllmSupervisor | None:
    """The vLLM supervisor the options ask for, or None for the in-process engine only."""
    from serving_app.engine.vllm_server import VllmSettings, VllmSupervisor, default_python

    if options.engine == "builtin":
        return None
    external = _external_servers([*os.environ.get("ATELIER_VLLM_URLS", "").split(), *options.vllm_url])
    python = options.vllm_python or default_python()
    if python is not None and not Path(python).exists():
        python = None
    if python is None and not external:
        if options.engine == "vllm":
            raise SystemExit("--engine vllm: vLLM is not installed (make vllm), or pass --vllm-python or --vllm-url")
        print("vLLM is not installed (make vllm): serving with the in-process engine", file=sys.stderr, flush=True)
        return None
    log_dir = Path(options.vllm_log_dir or Path(options.registry).resolve().parent / "vllm-logs")
    settings = VllmSettings(
        python=python,
        log_dir=log_dir,
        kv_cache_gib=options.vllm_kv_cache_gib,
        max_loras=options.vllm_max_loras,
        max_lora_rank=options.vllm_max_lora_rank,
        max_model_len=options.vllm_max_model_len,
        max_bases=options.vllm_max_bases,
        external=external,
    )
    return VllmSupervisor(settings)


def _external_servers(pairs: list[str]) -> dict[str, str]:
    """``BASE_DIR=URL`` pairs as {base folder: URL}; exits with the bad pair named."""
    servers = {}
    for pair in pairs:
        folder, _, url = pair.partition("=")
        if not folder or not url.startswith(("http://", "https://")):
            raise SystemExit(f"--vllm-url {pair!r}: write BASE_DIR=http://host:port (the base model's folder)")
        servers[folder] = url
    return servers


if __name__ == "__main__":
    sys.exit(main())
