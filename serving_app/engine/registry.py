"""The registry: a JSON file mapping served model names to a base model folder and an optional LoRA adapter.

Shape (the studio writes it atomically; the server re-reads it when its mtime changes or on ``/admin/reload``)::

    {"starter": {"base": "/models/atelier-starter", "adapter": null},
     "support-bot": {"base": "/models/atelier-starter", "adapter": "/adapters/support-bot-v3"}}

A file that cannot be read keeps the last good registry in service (a half-edited file must not take every
model offline); ``Registry.problem`` says what is wrong with it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


class RegistryError(ValueError):
    """The registry file is not a JSON object of ``name → {"base": path, "adapter": path | null}``."""


@dataclass(frozen=True)
class ServedModel:
    """One served name: the base model folder and, for a fine-tune, the adapter folder applied on top."""

    name: str
    base: str
    adapter: str | None


def parse_registry(text: str) -> dict[str, ServedModel]:
    """Parse the registry's JSON text; raises ``RegistryError`` naming the entry and field at fault."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RegistryError(f"the registry is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RegistryError("the registry must be a JSON object mapping served names to {base, adapter}")
    models: dict[str, ServedModel] = {}
    for name, entry in data.items():
        if not name or not isinstance(entry, dict):
            raise RegistryError(f"entry {name!r} must be an object with 'base' and 'adapter'")
        base, adapter = entry.get("base"), entry.get("adapter")
        if not isinstance(base, str) or not base:
            raise RegistryError(f"entry {name!r}: 'base' must be the path of a model folder")
        if adapter is not None and (not isinstance(adapter, str) or not adapter):
            raise RegistryError(f"entry {name!r}: 'adapter' must be the path of an adapter folder, or null")
        models[name] = ServedModel(name=name, base=base, adapter=adapter)
    return models


class Registry:
    """The served models, re-read from ``path`` whenever the file's mtime (or size) changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.problem: str | None = None
        self._models: dict[str, ServedModel] = {}
        self._stamp: tuple[int, int] | None = None
        self.reload()

    def models(self) -> dict[str, ServedModel]:
        """The current served models (re-reads the file first if it changed since the last read)."""
        if self._file_stamp() != self._stamp:
            self.reload()
        return self._models

    def get(self, name: str) -> ServedModel | None:
        """The served model called ``name``, or None."""
        return self.models().get(name)

    def reload(self) -> None:
        """Read the file now; on failure keep the previous models and record the reason in ``problem``."""
        stamp = self._file_stamp()
        try:
            models = parse_registry(self.path.read_text(encoding="utf-8"))
        except (OSError, RegistryError) as exc:
            self.problem = f"{self.path}: {exc}"
            self._stamp = stamp  # do not re-read a broken file on every request; the next edit changes it
            logger.warning("registry not reloaded, keeping %d models: %s", len(self._models), self.problem)
            return
        self._models, self._stamp, self.problem = models, stamp, None

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)
