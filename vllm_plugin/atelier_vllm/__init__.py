"""Atelier's plugin for vLLM (see ``cpu_lora`` and ``tool_calls``). Runs inside vLLM's virtualenv: imports nothing of
the studio."""

from __future__ import annotations

import logging

logger = logging.getLogger("vllm.atelier")


def written_for(version: str, supported: tuple[str, ...], change: str, otherwise: str) -> bool:
    """Whether vLLM ``version`` is one that ``change`` was written against (``supported``); if not, the log says so
    and what vLLM does ``otherwise``, and the change is left out."""
    if version in supported:
        return True
    logger.warning(
        "atelier: vLLM %s is not a version the %s were written for (%s); %s",
        version, change, ", ".join(supported), otherwise,
    )  # fmt: skip
    return False
