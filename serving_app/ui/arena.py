"""The Arena tab: two anonymous models answer the same conversation side by side; the vote reveals them.

The person picks a set of models (at least two); Send draws two of them at random ("Model A" and
"Model B", in random order) and streams both answers at once; Send again continues the conversation
with both; a vote ends the battle and only its answer names the models. New battle draws a new pair.

Nothing before the vote says which models are fighting: the outputs hold only the two conversations
and the words "Model A" / "Model B" (an error from the inference server is shown with the model's names
replaced), and the battle id stays on the server in a ``gr.State``. Like every handler of the mount,
each one starts from the team slug in the session's state and re-checks the person and both models
(``serving_app.arena`` resolves them through ``catalog.resolve_model`` on every call).

Through Gradio's API, in one session (one ``session_hash``): ``arena_models`` (the set picker's
choices), ``arena_send`` (what the Send button does: start or continue), ``arena_start`` (models,
prompt, max tokens: opens a battle when the session has none open and streams the first answers),
``arena_continue`` (prompt, max tokens: another turn of the open battle), ``arena_vote`` ("a", "b",
"tie" or "both_bad"; answers with the names) and ``arena_new`` (closes the session's battle so
``arena_start`` opens another).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404

from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app import arena
from serving_app.catalog import Servable, usable_models
from serving_app.inference import InferenceError, Sampling, stream_answer
from serving_app.playground import refuse, team_access
from serving_app.ui.text import markdown_text, refusal

SIDES = ("Model A", "Model B")
DEFAULT_MAX_TOKENS = 256
MAX_PROMPT = 8000
TEMPERATURE = 0.7
# Battles streaming at once across all people (each streams two answers); more wait in Gradio's queue.
CONCURRENT_BATTLES = 16
# Plain words: air-gapped machines often have no emoji font, and a missing glyph reads as a box.
VOTE_BUTTONS: dict[str, str] = {
    arena.Vote.A: "← A is better",
    arena.Vote.B: "B is better →",
    arena.Vote.TIE: "Tie",
    arena.Vote.BOTH_BAD: "Both are bad",
}
INTRO = (
    "Two anonymous models from the set you choose answer side by side. Keep chatting as long as you like, "
    "then vote: the names are shown only after your vote. Votes feed the team's leaderboard."
)

Chat = list[dict[str, str]]
LEADING_SPACE = re.compile(r"^[ \t]+", flags=re.MULTILINE)
NO_BREAK_SPACE = "\u00a0"
# What a service raises to refuse a call; each becomes a message the person can act on (``_refusal``).
REFUSALS = (Http404, PermissionDenied, ValidationError)


def build_arena(team: gr.State) -> Callable[[Any], None]:
    """The Arena tab's components, inside the playground's Blocks; returns the hook that fills the picker."""
    battle = gr.State(None)  # the open battle's id: never sent to the browser
    gr.Markdown(INTRO)
    models = gr.CheckboxGroup(
        label="Models in the arena", info="Choose at least two.", elem_id="arena-models", choices=[]
    )
    with gr.Row(equal_height=True):
        # Model answers are untrusted text: Gradio's HTML sanitizer stays on and no custom tag is kept.
        chat_a = gr.Chatbot(label=SIDES[0], elem_id="arena-a", height=420, sanitize_html=True, allow_tags=False)
        chat_b = gr.Chatbot(label=SIDES[1], elem_id="arena-b", height=420, sanitize_html=True, allow_tags=False)
    with gr.Row():
        prompt = gr.Textbox(
            label="Your message", placeholder="Ask both models something…", lines=2, scale=5, elem_id="arena-prompt"
        )
        send = gr.Button("Send", variant="primary", scale=1, elem_id="arena-send")
    with gr.Accordion("Settings", open=False):
        max_tokens = gr.Slider(16, 1024, value=DEFAULT_MAX_TOKENS, step=16, label="Max new tokens per answer")
    status = gr.Markdown(elem_id="arena-status")
    votable = gr.State(False)  # both answers of the open battle are in and it has no vote yet
    with gr.Row():
        votes = {
            choice: gr.Button(
                label, elem_id=f"arena-vote-{'bad' if choice == arena.Vote.BOTH_BAD else choice}", interactive=False
            )
            for choice, label in VOTE_BUTTONS.items()
        }
    buttons = list(votes.values())
    reveal = gr.Markdown(elem_id="arena-reveal")
    new = gr.Button("New battle", variant="secondary", elem_id="arena-new")

    turn_outputs = [chat_a, chat_b, battle, status, prompt, reveal, votable]
    # Send opens a battle when the session has none open, and otherwise continues it: one handler decides,
    # so a click never races two handlers over the same prompt. The vote buttons are off while answers stream.
    gr.on(
        [send.click, prompt.submit], vote_buttons, inputs=None, outputs=buttons, queue=False, api_visibility="private"
    ).then(
        send_turn,
        inputs=[team, models, prompt, max_tokens, battle],
        outputs=turn_outputs,
        api_name="arena_send",
        concurrency_limit=CONCURRENT_BATTLES,
        show_progress="minimal",
    ).then(vote_buttons, inputs=[votable], outputs=buttons, queue=False, api_visibility="private")
    # The same two steps by name, for API clients (hidden buttons: in the page's config, never shown).
    start_api = gr.Button(visible="hidden")
    start_api.click(
        start_battle,
        inputs=[team, models, prompt, max_tokens, battle],
        outputs=turn_outputs,
        api_name="arena_start",
        concurrency_limit=CONCURRENT_BATTLES,
    )
    continue_api = gr.Button(visible="hidden")
    continue_api.click(
        continue_battle,
        inputs=[team, prompt, max_tokens, battle],
        outputs=turn_outputs,
        api_name="arena_continue",
        concurrency_limit=CONCURRENT_BATTLES,
    )
    for number, (choice, button) in enumerate(votes.items()):
        # Each button sends its vote from a hidden choice; through the API, arena_vote takes it ("a", "b"…).
        ballot = gr.Radio(list(VOTE_BUTTONS), value=choice, visible="hidden", label="Vote")  # in the DOM, unseen
        button.click(
            cast_vote,
            inputs=[team, ballot, battle],
            outputs=[chat_a, chat_b, status, reveal],
            api_name="arena_vote" if number == 0 else f"arena_vote_{choice}",
            api_visibility="public" if number == 0 else "undocumented",
        ).success(vote_buttons, inputs=None, outputs=buttons, queue=False, api_visibility="private")
    new.click(new_battle, inputs=[team], outputs=[*turn_outputs], api_name="arena_new").then(
        vote_buttons, inputs=[votable], outputs=buttons, queue=False, api_visibility="private"
    )

    def ready(loaded: Any) -> None:
        loaded.then(fill_models, inputs=[team], outputs=[models], api_name="arena_models")

    return ready


# --- handlers ----------------------------------------------------------------------------------------


async def fill_models(team_slug: str, request: gr.Request) -> Any:
    """The set picker: every model the person may use in the team, all chosen to start with."""
    access = await team_access(request, team_slug)
    servables = await sync_to_async(usable_models)(access)
    choices = [(servable.label, servable.key) for servable in servables]
    if not access.can(Perm.USE_PLAYGROUND):
        info = f"Your role ({access.role.label}) cannot chat with models: ask an admin for the member role."
    elif len(choices) < 2:
        info = "The arena needs at least two models you may use: train a model version, or ask for a share."
    else:
        info = "Choose at least two."
    return gr.CheckboxGroup(choices=choices, value=[key for _, key in choices], info=info)


def vote_buttons(votable: bool = False) -> tuple[Any, ...]:
    """The four vote buttons, on only when there is something to vote on (both answers in, no vote yet)."""
    return tuple(gr.Button(interactive=bool(votable)) for _ in VOTE_BUTTONS)


async def send_turn(
    team_slug: str, keys: list[str], prompt: str, max_tokens: float, battle_id: int | None, request: gr.Request
) -> AsyncIterator[tuple[Any, ...]]:
    """Send: open a battle if the session has none open (``arena_start``), else another turn (``arena_continue``)."""
    turns = (
        start_battle(team_slug, keys, prompt, max_tokens, battle_id, request)
        if battle_id is None
        else continue_battle(team_slug, prompt, max_tokens, battle_id, request)
    )
    async for outputs in turns:
        yield outputs


async def start_battle(
    team_slug: str, keys: list[str], prompt: str, max_tokens: float, battle_id: int | None, request: gr.Request
) -> AsyncIterator[tuple[Any, ...]]:
    """Open a battle between two models drawn from ``keys`` and stream their first answers (arena_start)."""
    access = await team_access(request, team_slug)
    if battle_id is not None:  # the session has an open battle: continue it, or press New battle first
        yield _unchanged()
        return
    message = _message(prompt)
    try:
        contenders = await sync_to_async(arena.start_battle)(access=access, keys=list(keys or []))
    except REFUSALS as error:
        raise _refusal(error) from None
    async for outputs in _play_turn(access, contenders, message, max_tokens):
        yield outputs


async def continue_battle(
    team_slug: str, prompt: str, max_tokens: float, battle_id: int | None, request: gr.Request
) -> AsyncIterator[tuple[Any, ...]]:
    """Another turn of the session's open battle, both answers streamed (arena_continue)."""
    access = await team_access(request, team_slug)
    if battle_id is None:  # no open battle: arena_start opens one
        yield _unchanged()
        return
    message = _message(prompt)
    try:
        contenders = await sync_to_async(arena.continue_battle)(access=access, battle_id=battle_id)
    except REFUSALS as error:
        raise _refusal(error) from None
    async for outputs in _play_turn(access, contenders, message, max_tokens):
        yield outputs


async def cast_vote(team_slug: str, choice: str, battle_id: int | None, request: gr.Request) -> tuple[Any, ...]:
    """Record the vote on the session's battle, then name both models (arena_vote)."""
    access = await team_access(request, team_slug)
    if battle_id is None:
        raise refusal("Start a battle first: choose models, type a message and press Send.")
    try:
        battle = await sync_to_async(arena.vote)(access=access, battle_id=battle_id, choice=str(choice))
        label_a, label_b = await sync_to_async(arena.reveal)(access=access, battle_id=battle.pk)
    except REFUSALS as error:
        raise _refusal(error) from None
    verdict = arena.Vote(battle.vote).label
    return (
        gr.Chatbot(label=f"{SIDES[0]}: {label_a}"),
        gr.Chatbot(label=f"{SIDES[1]}: {label_b}"),
        f"Thanks, your vote is in ({verdict}). Press **New battle** for another pair.",
        reveal_line(label_a, label_b),
    )


async def new_battle(team_slug: str, request: gr.Request) -> tuple[Any, ...]:
    """Clear the conversations and forget the session's battle: the next Send draws a new pair (arena_new)."""
    await team_access(request, team_slug)
    return (
        gr.Chatbot(value=[], label=SIDES[0]),
        gr.Chatbot(value=[], label=SIDES[1]),
        None,
        "",
        gr.skip(),
        "",
        False,
    )


def reveal_line(label_a: str, label_b: str) -> str:
    """Which model was which, in Markdown (the labels are model names members typed: escaped)."""
    return f"**{SIDES[0]}** was **{markdown_text(label_a)}**; **{SIDES[1]}** was **{markdown_text(label_b)}**."


# --- streaming a turn from both models -----------------------------------------------------------------


@dataclass
class _Side:
    """One model's answer as it streams in."""

    name: str
    servable: Servable
    text: str = ""
    error: str | None = None
    done: bool = False
    history: Chat = field(default_factory=list)


async def _play_turn(
    access: TeamAccess, contenders: arena.Contenders, prompt: str, max_tokens: float
) -> AsyncIterator[tuple[Any, ...]]:
    """Stream both answers to ``prompt`` side by side, then record the turn if both models answered."""
    battle = contenders.battle
    turns_before = len(battle.conversation_a)
    sides = [
        _Side(SIDES[0], contenders.a, history=list(battle.conversation_a)),
        _Side(SIDES[1], contenders.b, history=list(battle.conversation_b)),
    ]
    sampling = Sampling(max_tokens=max(1, int(max_tokens or DEFAULT_MAX_TOKENS)), temperature=TEMPERATURE)
    waiting = "Both models are answering… you can vote once both answers are in."
    yield (*_chats(sides, prompt), battle.pk, waiting, "", "", False)
    async for _ in _race(access, sides, prompt, sampling):
        yield (*_chats(sides, prompt), battle.pk, waiting, "", "", False)
    failed = [side for side in sides if side.error is not None]
    if failed:
        names = " and ".join(side.name for side in failed)
        status = f"{names} could not answer, so this turn was not kept: send your message again, or press New battle."
    else:
        try:
            await sync_to_async(arena.record_turn)(
                access=access,
                battle_id=battle.pk,
                prompt=prompt,
                answer_a=sides[0].text,
                answer_b=sides[1].text,
                turns_before=turns_before,
            )
        except REFUSALS as error:
            raise _refusal(error) from None
        status = "Both answers are in. Keep chatting, or vote below."
    yield (*_chats(sides, prompt), battle.pk, status, "", "", not failed or turns_before > 0)


async def _race(access: TeamAccess, sides: Sequence[_Side], prompt: str, sampling: Sampling) -> AsyncIterator[None]:
    """Stream every side concurrently into ``sides``; yields whenever any of them changed."""
    changes: asyncio.Queue[None] = asyncio.Queue()

    async def pump(side: _Side) -> None:
        messages = [*side.history, {"role": "user", "content": prompt}]
        try:
            async for update in stream_answer(
                side.servable, messages, sampling, team=access.team, user=access.user, source="arena"
            ):
                side.text = update.text
                changes.put_nowait(None)
        except InferenceError as error:
            side.error = _anonymous(str(error), side)
        finally:
            side.done = True
            changes.put_nowait(None)

    tasks = [asyncio.create_task(pump(side)) for side in sides]
    try:
        while not all(side.done for side in sides):
            await changes.get()
            while not changes.empty():  # several tokens arrived: show them in one update
                changes.get_nowait()
            yield None
    finally:  # the person left or stopped: stop both generations
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _chats(sides: Sequence[_Side], prompt: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each side's conversation as its chatbot shows it, the answer in progress last."""
    shown = []
    for side in sides:
        answer = side.text if side.error is None else f"⚠️ {side.name} could not answer: {side.error}"
        history = [_shown(turn) for turn in side.history if turn.get("role") in ("user", "assistant")]
        shown.append([*history, {"role": "user", "content": prompt}, _shown({"role": "assistant", "content": answer})])
    return shown[0], shown[1]


def _shown(turn: dict[str, str]) -> dict[str, Any]:
    """A turn as the chatbot shows it, indentation kept: Gradio dedents a plain string (``inspect.cleandoc``) and
    Markdown drops the spaces that start a line, so an answer's leading spaces become no-break spaces in a text
    part, which is shown as given. The stored answer keeps its plain spaces."""
    if turn["role"] != "assistant":
        return turn
    text = LEADING_SPACE.sub(lambda match: match.group(0).expandtabs(4).replace(" ", NO_BREAK_SPACE), turn["content"])
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _anonymous(message: str, side: _Side) -> str:
    """An inference error's text without the model's names or folders (the server may name what it refused)."""
    servable = side.servable
    for folder in filter(None, (servable.adapter_path, servable.base_path)):
        message = message.replace(str(folder), "its folder")
    for name in (servable.served_name, servable.label, servable.key):
        message = message.replace(name, side.name)
    return message


def _message(prompt: str) -> str:
    text = (prompt or "").strip()
    if not text:
        raise refusal("Type a message for both models first.")
    if len(text) > MAX_PROMPT:
        raise refusal(f"Your message has {len(text):,} characters; the arena takes up to {MAX_PROMPT:,}. Shorten it.")
    return text


def _unchanged() -> tuple[Any, ...]:
    return tuple(gr.skip() for _ in range(7))


def _refusal(error: Exception) -> gr.Error:
    """The message a person sees for a refused arena call (as literal text: see ``refusal``)."""
    if isinstance(error, arena.NoSuchBattle):
        return refusal("No such battle of yours: press New battle to start one.")
    if isinstance(error, ValidationError):
        return refusal(" ".join(error.messages))
    return refuse(error)
