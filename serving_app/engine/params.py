"""The OpenAI request parameters each endpoint takes, shared by the studio's ``/v1`` and the inference server.

vLLM serves all of them; the in-process engine ``BUILTIN_PARAMS`` only. Anything else is refused with a 400
naming it, never ignored (``unknown_params``). This module imports nothing heavy: the web process uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

BUILTIN_PARAMS = frozenset({
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
    "n", "stream", "stream_options", "user",
})  # fmt: skip
CHAT_PARAMS = BUILTIN_PARAMS - {"prompt"} | {
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "logit_bias",
}  # fmt: skip
COMPLETION_PARAMS = BUILTIN_PARAMS - {"messages", "max_completion_tokens"} | {
    "logprobs", "echo", "presence_penalty", "frequency_penalty", "logit_bias",
}  # fmt: skip
# What the in-process engine takes on each endpoint.
BUILTIN_CHAT_PARAMS = BUILTIN_PARAMS - {"prompt"}
BUILTIN_COMPLETION_PARAMS = BUILTIN_PARAMS - {"messages", "max_completion_tokens"}


def unknown_params(raw: Mapping[str, Any], allowed: Iterable[str]) -> list[str]:
    """The parameters of ``raw`` (a request body) outside ``allowed``, sorted; a null value counts as absent."""
    allowed = frozenset(allowed)
    return sorted(key for key, value in raw.items() if key not in allowed and value is not None)


def listing(names: list[str]) -> str:
    """``a``, ``b`` as a message names them: "`a`, `b`"."""
    return ", ".join(f"`{name}`" for name in names)
