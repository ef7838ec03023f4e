"""A bound on the whitespace inside a tool call's arguments, which vLLM 0.32 leaves free.

vLLM holds a tool call's arguments to the tool's schema with an xgrammar structural tag (the inference server
starts it with ``--tool-strict-level parameter``). Its ``disable_any_whitespace`` (``--structured-outputs-config``)
reaches ``response_format`` only: between the arguments' tokens the tag's grammar allows any amount of whitespace,
and a small model that prefers a space there writes spaces until its ``max_tokens`` run out, leaving arguments that
are not JSON (vllm-project/vllm#54497). Seen with a starter model built on one thread: a forced ``get_weather`` call
wrote ``{"city": "taskthink up"`` and then whitespace for the rest of its 160 tokens.

xgrammar bounds the whitespace of each JSON-schema node of a tag (``max_whitespace_cnt``, consecutive characters).
vLLM's own tool-call tags, the ``hermes`` one the studio uses among them, build those nodes with the field's
default, which ``register`` sets to ``MAX_WHITESPACE``; the tags xgrammar builds for other models pass their own
(none) and stay as they are.
"""

from __future__ import annotations

from atelier_vllm import logger, written_for

SUPPORTED_VLLM = ("0.32.0",)
# Consecutive whitespace characters between two tokens of the arguments: room for indented JSON, none for a loop.
MAX_WHITESPACE = 8
ACTIVE_MESSAGE = f"atelier: whitespace in tool-call arguments bounded to {MAX_WHITESPACE} characters in a row"


def register() -> None:
    """vLLM's general-plugin hook (every vLLM process calls it; the API server builds the tags)."""
    try:
        import vllm
        from xgrammar.structural_tag import JSONSchemaFormat
    except ImportError:  # pragma: no cover - the plugin is only installed beside vLLM
        return
    if not written_for(vllm.__version__, SUPPORTED_VLLM, "tool-call whitespace bounds", "arguments take any"):
        return
    field = JSONSchemaFormat.model_fields["max_whitespace_cnt"]
    if field.default is None:
        field.default = MAX_WHITESPACE
        JSONSchemaFormat.model_rebuild(force=True)
    logger.info(ACTIVE_MESSAGE)
