"""Conversations to token ids and labels: the loss on the assistant's turns only, with any chat template.

The studio tokenizes chat rows itself instead of handing messages to TRL, for three reasons: rows carry
tools, tool calls, tool results and reasoning whose JSON shapes differ from row to row (the ``datasets`` JSON
loader would merge them into one Arrow schema and fill the gaps with nulls); a turn may be context only
(``loss_weight: 0``); and whether reasoning is trained is a job setting. Turn boundaries come from the
model's own chat template, so no template needs ``{% generation %}`` markers:

1. Render the whole conversation, and every prefix of it (``messages[:i]``), as text. Each prefix must be
   the start of the whole; a template that renders earlier turns differently once later ones follow (some
   drop the reasoning of earlier turns) cannot be split this way and is refused with a ``DataError``.
2. An assistant turn's trained text runs from the end of the prefix rendered with the generation prompt
   (the turn's header stays context) to the end of the next prefix: its reasoning, text, tool calls and
   end-of-turn token. With ``train_reasoning`` off, the block the reasoning adds (the text and the template's
   markers around it, found by rendering the turn without it) is context too.
3. Tokenize the whole text with the fast tokenizer's offsets; a token is trained when its first character
   is trained text.

Conversational instruction rows (``prompt`` messages, one ``completion`` message) are the same with only
the completion trained. Nothing here imports Django.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from training_app.engine.reporting import DataError

IGNORE_INDEX = -100
"""The label of a token the loss skips (PyTorch's cross-entropy ``ignore_index``)."""


@dataclass(frozen=True)
class TokenizedConversation:
    """One row ready for the trainer: token ids, and labels equal to the ids where trained, else -100."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def tokenize_conversation(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    train_reasoning: bool = True,
    first_trained: int = 0,
) -> TokenizedConversation:
    """Token ids and labels for ``messages``: assistant turns from index ``first_trained`` on are trained,
    unless their ``loss_weight`` is 0; every other token is labelled -100.

    ``tokenizer`` is a fast Hugging Face tokenizer with a chat template. Raises ``DataError`` when the
    template cannot be split into turns (see the module docstring) or the tokenizer gives no offsets.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("training on conversations needs a fast tokenizer (tokenizer.json), which this model lacks")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the model has no chat template, so it cannot read conversations; pick a chat model")
    messages = list(messages)
    if not messages:
        raise DataError("a conversation has no messages")

    def render(turns: list[dict[str, Any]], *, generation_prompt: bool = False) -> str:
        try:
            text = tokenizer.apply_chat_template(
                turns, tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as error:  # templates raise on conversations they do not accept (roles out of order…)
            raise DataError(f"the model's chat template refuses this conversation ({error})") from error
        return str(text)

    whole = render(messages)
    ends = [0]  # ends[i]: where the text of messages[:i] ends in ``whole``
    for count in range(1, len(messages)):
        prefix = render(messages[:count])
        if not whole.startswith(prefix):
            raise DataError(
                f"the model's chat template renders turn {count} ({messages[count - 1].get('role')}) differently "
                "once later turns follow, so the turns the loss is taken on cannot be told apart; "
                "split the conversation into one row per assistant answer"
            )
        ends.append(len(prefix))
    ends.append(len(whole))

    trained: list[tuple[int, int]] = []
    context: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if index < first_trained or message.get("role") != "assistant" or message.get("loss_weight", 1) == 0:
            continue
        start = _answer_start(whole, ends[index], _rendered_or_none(render, messages[:index]))
        trained.append((start, ends[index + 1]))
        reasoning = message.get("reasoning_content")
        if not train_reasoning and isinstance(reasoning, str) and reasoning.strip():
            without = {key: value for key, value in message.items() if key != "reasoning_content"}
            context.append(_inserted_span(whole[: ends[index + 1]], render([*messages[:index], without])))

    encoded = tokenizer(whole, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [
        token if _starts_in(offsets, trained) and not _starts_in(offsets, context) else IGNORE_INDEX
        for token, offsets in zip(input_ids, encoded["offset_mapping"], strict=True)
    ]
    return TokenizedConversation(input_ids, labels)


def tokenize_row(
    tokenizer: Any, row: dict[str, Any], *, kind: str, train_reasoning: bool = True
) -> TokenizedConversation:
    """A normalized chat row (``messages``, ``tools``) or conversational instruction row (``prompt``
    messages, ``completion`` messages) as token ids and labels; raises ``DataError`` on other shapes."""
    tools = row.get("tools") if isinstance(row.get("tools"), list) else None
    if kind == "chat":
        messages = row.get("messages")
        if not isinstance(messages, list):
            raise DataError("a chat row has no messages list")
        return tokenize_conversation(tokenizer, messages, tools=tools, train_reasoning=train_reasoning)
    prompt, completion = row.get("prompt"), row.get("completion")
    if not isinstance(prompt, list) or not isinstance(completion, list):
        raise DataError("a conversational instruction row needs prompt and completion message lists")
    return tokenize_conversation(
        tokenizer, [*prompt, *completion], tools=tools, train_reasoning=train_reasoning, first_trained=len(prompt)
    )


def tokenized_rows(
    tokenizer: Any, rows: Iterable[dict[str, Any]], *, kind: str, train_reasoning: bool, split: str
) -> Iterator[dict[str, list[int]]]:
    """``{"input_ids", "labels"}`` for each row, in order; a ``DataError`` names the split and the row."""
    for number, row in enumerate(rows, start=1):
        try:
            conversation = tokenize_row(tokenizer, row, kind=kind, train_reasoning=train_reasoning)
        except DataError as error:
            raise DataError(f"{split} row {number}: {error}") from error
        yield {"input_ids": conversation.input_ids, "labels": conversation.labels}


def _rendered_or_none(render: Any, turns: list[dict[str, Any]]) -> str | None:
    """The conversation so far with the generation prompt (an open assistant header), or None when the
    template refuses it (some templates need a user turn first)."""
    try:
        return str(render(turns, generation_prompt=True))
    except DataError:
        return None


def _answer_start(whole: str, turn_start: int, with_header: str | None) -> int:
    """Where an assistant turn's trained text starts: after its header when the template renders the header
    as its generation prompt, else where the turn starts (the header is trained too)."""
    if with_header is None or len(with_header) <= turn_start:
        return turn_start
    shared = _common_prefix(with_header, whole)
    return max(turn_start, shared)


def _inserted_span(with_part: str, without_part: str) -> tuple[int, int]:
    """The characters of ``with_part`` that ``without_part`` lacks, as one span.

    Where the block could sit at several places (``<think>…</think>\\n<tool_call>`` against ``<tool_call>``:
    the shared ``<t`` and ``\\n`` slide), the leftmost is taken, so the block starts with its opening marker.
    """
    inserted = len(with_part) - len(without_part)
    prefix = _common_prefix(with_part, without_part)
    if inserted <= 0:  # the template does not render the reasoning (or rewrites the turn): nothing to hide
        return prefix, prefix
    suffix = 0
    while suffix < len(without_part) and with_part[-1 - suffix] == without_part[-1 - suffix]:
        suffix += 1
    start = min(len(without_part) - suffix, prefix)
    return start, start + inserted


def _common_prefix(first: str, second: str) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


def _starts_in(offsets: Sequence[int], spans: list[tuple[int, int]]) -> bool:
    """Whether a token (character offsets start, end) starts inside one of ``spans``: a token that straddles a
    boundary (``</think>`` and the newline after it can be one token) goes with the text it starts in."""
    start, end = offsets[0], offsets[1]
    return end > start and any(span_start <= start < span_end for span_start, span_end in spans)
