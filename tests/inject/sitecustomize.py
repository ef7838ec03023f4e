"""Failure injection for the job tests: on the trainer's PYTHONPATH, it makes a real run fail on purpose.

The celery worker the tests start puts this folder on ``PYTHONPATH``, so the trainer subprocesses it
launches import this module at start-up. It does nothing unless ``ATELIER_INJECT_FAILURE_FILE`` names an
existing JSON file: ``{"kind": "oom", "after_steps": 2}`` raises CUDA's out-of-memory error from the
third training step; ``{"kind": "disk_full"}`` raises "No space left on device" while saving a
checkpoint. It patches ``transformers.Trainer`` right after that module is imported (a post-import hook),
so processes that never import transformers (the worker itself) are untouched.
"""

from __future__ import annotations

import errno
import importlib.abc
import importlib.util
import json
import os
import sys
from typing import Any


def _injection() -> dict[str, Any] | None:
    path = os.environ.get("ATELIER_INJECT_FAILURE_FILE")
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        value = json.load(handle)
    return value if isinstance(value, dict) else None


def _patch(trainer_class: Any) -> None:
    real_step, real_save = trainer_class.training_step, trainer_class._save_checkpoint
    calls = {"steps": 0}

    def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        injection = _injection()
        calls["steps"] += 1
        if injection and injection.get("kind") == "oom" and calls["steps"] > int(injection.get("after_steps", 2)):
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the tests)")
        return real_step(self, *args, **kwargs)

    def save_checkpoint(self: Any, *args: Any, **kwargs: Any) -> Any:
        injection = _injection()
        if injection and injection.get("kind") == "disk_full":
            raise OSError(errno.ENOSPC, "No space left on device (injected by the tests)")
        return real_save(self, *args, **kwargs)

    trainer_class.training_step = training_step
    trainer_class._save_checkpoint = save_checkpoint


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "transformers.trainer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            _patch(module.Trainer)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("ATELIER_INJECT_FAILURE_FILE"):
    sys.meta_path.insert(0, _PatchAfterImport())
