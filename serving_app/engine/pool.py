"""Loaded base models, their hot-swapped LoRA adapters, LRU eviction, and one generation at a time per base.

Each base folder is loaded once (safetensors only, ``trust_remote_code`` off). The first adapter served on it
wraps it in a ``PeftModel``; further adapters are added with ``load_adapter`` and chosen with ``set_adapter``;
the base itself runs inside ``disable_adapter()``. PEFT's adapter switching is not thread-safe, so each base
has an asyncio lock: one request at a time selects its adapter and decodes, in a thread of its own that
streams tokens back to the event loop. The lock is released by that thread when it ends, so a client that
disconnects (cancelling the request) never frees the model while a decode step is still running on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving_app.engine.generation import GenerationResult, SamplingParams, TextAssembler, decode_tokens
from training_app.engine.inspection import PICKLE_SUFFIXES, UnsafeModel, check_safe

logger = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """A registered model that cannot be served (missing or unsafe folder, incompatible adapter)."""


class QueueFull(RuntimeError):
    """Too many requests already wait for this base model."""


def folder_bytes(folder: Path) -> int:
    """Estimated memory of a model or adapter: the size of its safetensors files."""
    return sum(path.stat().st_size for path in folder.rglob("*.safetensors"))


def check_adapter_folder(folder: Path) -> None:
    """Refuse an adapter folder without ``adapter_config.json`` + safetensors weights, or with pickle files."""
    if not (folder / "adapter_config.json").is_file():
        raise ModelUnavailable(f"the adapter folder {folder} has no adapter_config.json")
    files = [path for path in folder.rglob("*") if path.is_file()]
    pickled = sorted(path.name for path in files if path.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelUnavailable(
            f"the adapter folder {folder} holds pickle files ({', '.join(pickled)}); use safetensors"
        )
    if not (folder / "adapter_model.safetensors").is_file():
        raise ModelUnavailable(f"the adapter folder {folder} has no adapter_model.safetensors")


@dataclass
class LoadedBase:
    """One base model in memory with the adapters loaded into it so far."""

    path: str
    model: Any
    tokenizer: Any
    size_bytes: int
    eos_token_ids: set[int]
    context_length: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    # adapter folder → PEFT adapter name (served names may hold characters a module name cannot).
    adapters: dict[str, str] = field(default_factory=dict)

    def activate(self, adapter: str | None) -> contextlib.AbstractContextManager[Any]:
        """Select ``adapter`` (loading it on first use) and return the context to decode in. Call under ``lock``."""
        if adapter is None:
            return self.model.disable_adapter() if self.adapters else contextlib.nullcontext()
        folder = str(Path(adapter).resolve())
        name = self.adapters.get(folder)
        if name is None:
            name = self._load_adapter(Path(folder))
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    def _load_adapter(self, folder: Path) -> str:
        from peft import PeftModel

        check_adapter_folder(folder)
        name = f"adapter_{len(self.adapters)}"
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise ModelUnavailable(f"the adapter {folder} does not fit the base model {self.path}: {exc}") from exc
        self.model.eval()
        self.adapters[str(folder)] = name
        self.size_bytes += folder_bytes(folder)
        logger.info("loaded adapter %s as %s on %s", folder, name, self.path)
        return name


def load_base(path: str) -> LoadedBase:
    """Load a base model folder and its tokenizer (blocking; run it in a thread)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    try:
        check_safe(folder)
    except (UnsafeModel, OSError, ValueError) as exc:
        raise ModelUnavailable(str(exc)) from exc
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model: Any = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=False, use_safetensors=True, dtype="auto" if device == "cuda" else torch.float32
    )
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos = eos if eos is not None else model.config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    context = int(getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length or 2048)
    return LoadedBase(
        path=path,
        model=model,
        tokenizer=tokenizer,
        size_bytes=folder_bytes(folder),
        eos_token_ids=eos_ids,
        context_length=context,
    )


@dataclass
class Event:
    """What a generation thread reports: a text ``delta``, or the end (``result`` set), or an ``error``."""

    delta: str = ""
    result: GenerationResult | None = None
    error: BaseException | None = None


@dataclass
class PoolStats:
    generations: int = 0
    cancelled: int = 0
    evictions: int = 0


class ModelPool:
    """The base models in memory, least recently used first; ``budget_bytes`` None means no limit."""

    def __init__(self, *, budget_bytes: int | None = None, max_waiting: int = 32) -> None:
        self.budget_bytes = budget_bytes
        self.max_waiting = max_waiting
        self.stats = PoolStats()
        self._loaded: OrderedDict[str, LoadedBase] = OrderedDict()
        self._loading: dict[str, asyncio.Future[LoadedBase]] = {}
        self._load_lock = asyncio.Lock()

    def loaded(self) -> list[dict[str, Any]]:
        """What is in memory, least recently used first (for ``/admin/status``)."""
        return [
            {"base": base.path, "bytes": base.size_bytes, "adapters": sorted(base.adapters), "busy": base.lock.locked()}
            for base in self._loaded.values()
        ]

    async def base(self, path: str) -> LoadedBase:
        """The loaded base model for ``path``, loading it (and evicting others over budget) if needed."""
        key = str(Path(path).resolve())
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(self._load(key))
            self._loading[key] = future
        # Shielded: a client that goes away must not abort a load that other requests may be waiting for.
        return await asyncio.shield(future)

    async def _load(self, key: str) -> LoadedBase:
        try:
            async with self._load_lock:
                self._evict_for(folder_bytes(Path(key)))
                started = time.monotonic()
                base = await asyncio.to_thread(load_base, key)
                self._loaded[key] = base
                logger.info("loaded %s (%.0f MB) in %.1fs", key, base.size_bytes / 2**20, time.monotonic() - started)
                return base
        finally:
            self._loading.pop(key, None)

    def _evict_for(self, incoming: int) -> None:
        if self.budget_bytes is None:
            return
        while self._loaded and sum(b.size_bytes for b in self._loaded.values()) + incoming > self.budget_bytes:
            path, _ = self._loaded.popitem(last=False)
            self.stats.evictions += 1
            logger.info("evicted %s to stay within the memory budget", path)
        # An in-flight request still holds a reference to an evicted base; its memory goes when it ends.
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    async def generate(
        self,
        base: LoadedBase,
        adapter: str | None,
        prompt_ids: Sequence[int],
        params: SamplingParams,
    ) -> AsyncIterator[Event]:
        """Stream text deltas for one request, then a final event with the result. Waits its turn on the base.

        Raises ``QueueFull`` when ``max_waiting`` requests already wait for this base. Closing the iterator
        (the client went away) stops the decode loop before its next step.
        """
        if base.waiting >= self.max_waiting:
            raise QueueFull(f"{self.max_waiting} requests are already waiting for this model")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        cancel = threading.Event()
        base.waiting += 1
        try:
            await base.lock.acquire()
        finally:
            base.waiting -= 1
        try:
            worker = threading.Thread(
                target=self._run,
                args=(base, adapter, list(prompt_ids), params, cancel, _threadsafe_put(loop, queue), loop),
                name="generate",
                daemon=True,
            )
            worker.start()
        except BaseException:
            base.lock.release()
            raise
        finished = False
        try:
            while True:
                event = await queue.get()
                finished = event.result is not None or event.error is not None
                if event.error is not None:
                    raise event.error
                yield event
                if finished:
                    return
        finally:
            if not finished:
                cancel.set()
                self.stats.cancelled += 1

    def _run(
        self,
        base: LoadedBase,
        adapter: str | None,
        prompt_ids: list[int],
        params: SamplingParams,
        cancel: threading.Event,
        put: Callable[[Event], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        result = GenerationResult(prompt_tokens=len(prompt_ids))
        text = TextAssembler(base.tokenizer, params.stop)
        try:
            with base.activate(adapter):
                for token in decode_tokens(
                    base.model, prompt_ids, params, eos_token_ids=base.eos_token_ids, cancel=cancel
                ):
                    result.token_ids.append(token)
                    result.completion_tokens += 1
                    if token in base.eos_token_ids:
                        result.finish_reason = "stop"
                        break
                    delta = text.add(token)
                    if delta:
                        put(Event(delta=delta))
                    if text.stopped:
                        result.finish_reason = "stop"
                        break
            if cancel.is_set():
                return
            tail = text.finish()
            if tail:
                put(Event(delta=tail))
            result.finish_reason = result.finish_reason or "length"
            self.stats.generations += 1
            put(Event(result=result))
        except BaseException as exc:  # reported to the request; the thread must still free the model
            logger.exception("generation failed on %s", base.path)
            put(Event(error=exc))
        finally:
            with contextlib.suppress(RuntimeError):  # the event loop is closed: the server is shutting down
                loop.call_soon_threadsafe(base.lock.release)


def _threadsafe_put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Event]) -> Callable[[Event], None]:
    def put(event: Event) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return put
