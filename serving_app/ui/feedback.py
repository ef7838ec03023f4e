"""Thumbs up and thumbs down under each answer of the Compare tab.

Once a column's answer is complete, a row under it offers "Thumbs up" and "Thumbs down" (plain words:
air-gapped machines often have no emoji font). What a vote is about never comes from the browser:
``stream_compare`` keeps, per column, the key of the model that answered, the conversation it was sent and
its answer in a ``gr.State`` (held on the server, never sent to the page), and ``cast_feedback`` reads it
from there. Pressing the other button changes the vote (``serving_app.feedback.record_vote``); like every
handler of the mount, it starts from the team slug in the session's state and re-checks the person and
the model.

Through Gradio's API, in the session that compared: ``feedback`` (column "1" to "4", vote "up" or "down").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404

from serving_app import feedback
from serving_app.playground import refuse, team_access
from serving_app.ui.text import refusal

# Plain words: a missing emoji glyph reads as a box.
VOTES: dict[str, str] = {"up": "Thumbs up", "down": "Thumbs down"}
ASK = "Was this answer good?"
VOTED: dict[str, str] = {
    "up": "You voted **Thumbs up** on this answer. Press Thumbs down to change your vote.",
    "down": "You voted **Thumbs down** on this answer. Press Thumbs up to change your vote.",
}
# What a service raises to refuse a vote; each becomes a message the person can act on (``_refusal``).
REFUSALS = (Http404, PermissionDenied, ValidationError)


@dataclass(frozen=True)
class FeedbackControls:
    """One column's voting row: hidden until the column's answer is complete."""

    row: gr.Row
    note: gr.Markdown
    buttons: dict[str, gr.Button]  # by vote: "up", "down"


def build_feedback(number: int) -> FeedbackControls:
    """Column ``number``'s voting row (inside the column, under its answer)."""
    with gr.Row(visible=False, equal_height=True, elem_id=f"compare-feedback-{number}") as row:
        note = gr.Markdown(ASK, elem_id=f"compare-feedback-note-{number}")
        buttons = {
            vote: gr.Button(label, size="sm", variant="secondary", min_width=80, elem_id=f"compare-{vote}-{number}")
            for vote, label in VOTES.items()
        }
    return FeedbackControls(row=row, note=note, buttons=buttons)


def wire_feedback(team: gr.State, answered: gr.State, controls: Sequence[FeedbackControls]) -> None:
    """Each button sends its column and vote from hidden choices; through the API, ``feedback`` takes both."""
    ballots = {vote: gr.Radio(list(VOTES), value=vote, visible="hidden", label="Vote") for vote in VOTES}
    numbers = [str(number) for number in range(1, len(controls) + 1)]
    first = True
    for number, control in zip(numbers, controls, strict=True):
        column = gr.Radio(numbers, value=number, visible="hidden", label="Column")
        for vote, button in control.buttons.items():
            button.click(
                cast_feedback,
                inputs=[team, column, ballots[vote], answered],
                outputs=[control.note],
                api_name="feedback" if first else f"feedback_{vote}_{number}",
                api_visibility="public" if first else "undocumented",
            )
            first = False


def vote_subject(key: str, label: str, messages: list[dict[str, str]], answer: str) -> dict[str, Any]:
    """What ``stream_compare`` keeps for a column whose answer is complete: what a vote on it records."""
    return {"key": key, "label": label, "prompt": messages, "answer": answer}


async def cast_feedback(team_slug: str, column: str, vote: str, answered: list[Any] | None, request: gr.Request) -> str:
    """Record the person's thumbs up or down on the answer now shown in ``column`` (feedback)."""
    access = await team_access(request, team_slug)
    if vote not in VOTES:
        raise refusal("Vote “up” (a good answer) or “down” (one to avoid).")
    entries = list(answered or [])
    by_number = {str(number): entry for number, entry in enumerate(entries, start=1)}
    entry = by_number.get(str(column))
    if not isinstance(entry, dict):
        raise refusal("Nothing to vote on in that column yet: send a prompt and wait for its answer.")
    try:
        await sync_to_async(feedback.record_vote)(
            access=access,
            model_key=str(entry.get("key", "")),
            prompt=entry.get("prompt") or [],
            answer=str(entry.get("answer", "")),
            label=vote == "up",
        )
    except REFUSALS as error:
        raise _refusal(error) from None
    return VOTED[vote]


def _refusal(error: Exception) -> gr.Error:
    """The message a person sees for a refused vote (as literal text: see ``refusal``)."""
    if isinstance(error, ValidationError):
        return refusal(" ".join(error.messages))
    return refuse(error)
