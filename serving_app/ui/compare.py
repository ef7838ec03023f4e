"""The playground's Compare tab: one prompt to 2–4 models side by side, the answers streamed with their figures.

Each column has its own model, system prompt, sampling settings and conversation. Every handler is async,
takes the team slug (the ``gr.State`` the page load filled) first and the ``gr.Request`` last, re-checks
the caller with ``team_access`` and resolves every model key it is given with ``catalog.resolve_models``:
anyone can call a handler through Gradio's API, so the pickers' choices are a convenience, never a
permission. Answers stream through ``inference.stream_answer``, which meters each one and keeps prompts
only where the team asked for it. Under each complete answer, Thumbs up / Thumbs down record a vote on it
(``serving_app.ui.feedback``).

Every column streams as its own task. On vLLM they all answer at once; the in-process engine answers one
column at a time per base model, so there a column says which column it waits for (``ColumnRun.waiting_for``),
and each column's figures say which engine serves it (``inference.aengine_of``). A column's optional JSON
schema and tools are sent as ``response_format`` and ``tools``; the tool calls in its answer show as cards.

A column may also try a deployment as its clients get it: where the deployment is granted studio tools, the studio
runs the loop (``serving_app.studio_tools``, the tools app's runner) for the member — the grants' roles apply —
and each studio call shows as a card with the policy's decision and its result; a call that needs approval holds
the column ("waiting for approval") until someone decides in the Approvals inbox, then the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import gradio as gr
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.urls import reverse

from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app import comparisons, guardrails, studio_tools
from serving_app.catalog import Servable, resolve_model, resolve_models, usable_models
from serving_app.comparisons import ColumnSettings, figures_line
from serving_app.guard_filter import check_prompt
from serving_app.inference import EngineInfo, InferenceError, StreamUpdate, ToolCall, aengine_of, stream_answer
from serving_app.models import Comparison, Deployment, PromptPreset
from serving_app.openai_api import OpenAIError
from serving_app.playground import refuse, team_access
from serving_app.ui.feedback import ASK, FeedbackControls, build_feedback, vote_subject, wire_feedback
from serving_app.ui.text import code_block, markdown_text, refusal
from serving_app.ui.tool_cards import WAITING_FOR_APPROVAL, studio_call_message, waiting_tool

logger = logging.getLogger(__name__)

COLUMNS = 4  # built once; the "Columns" choice shows 2, 3 or 4 of them
DEFAULT_COLUMNS = 2
MAX_PROMPT = 8000
# Comparisons streaming at once across all people (each streams 2-4 answers); more wait in Gradio's queue.
# vLLM batches them; the in-process engine would only queue them per base model.
CONCURRENT_COMPARISONS = 8
# The columns are redrawn at most this often while they stream: every redraw sends all of them to the
# browser, and one redraw per token would cost the web process more than the tokens cost the inference server.
REFRESH_SECONDS = 0.05
DEFAULTS = ColumnSettings()
UNKNOWN_ENGINE = EngineInfo("unknown", "not asked yet")
WAITING = "Waiting for the first token…"
# The in-process engine answers one column at a time per base model: a column whose base model is busy with
# another column's answer there says which one it waits for, instead of showing an empty box.
WAITING_FOR = "Waiting for column {number}: the in-process engine answers one column at a time per base model."
SETTING_FIELDS = ("system_prompt", "temperature", "top_p", "max_tokens", "seed", "json_schema", "tools")
# What reopening a comparison fills: the notice and the column count; each column's model, chat and
# figures; each column's settings; the turns a save keeps and the title.
REOPEN_OUTPUTS = 2 + 3 * COLUMNS + len(SETTING_FIELDS) * COLUMNS + 2

INTRO = (
    "Pick 2 to 4 models and type one prompt: each column answers it with its own conversation, system prompt, "
    "sampling settings and, if you like, a JSON schema or tools. Under each answer, its figures say which engine "
    "serves the model. On vLLM every column answers at the same time; where the in-process engine serves a model, "
    "columns on the same base model (its fine-tuned versions included) answer one after another. A deployment "
    "answers with the tools granted to it: the studio runs each call it is allowed, shown as a card."
)


@dataclass(frozen=True)
class SettingsControls:
    """A system prompt and sampling settings, as a column (or the "every column" panel) shows them."""

    system_prompt: gr.Textbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider
    seed: gr.Textbox
    json_schema: gr.Textbox
    tools: gr.Textbox

    def preset_fields(self) -> list[Any]:
        """What a preset sets (the seed, JSON schema and tools are left as they are)."""
        return [self.system_prompt, self.temperature, self.top_p, self.max_tokens]

    def sampling_fields(self) -> list[Any]:
        return [*self.preset_fields(), self.seed]

    def format_fields(self) -> list[Any]:
        """What shapes the answer: the JSON schema and the tools."""
        return [self.json_schema, self.tools]

    def all(self) -> list[Any]:
        """Every setting, in ``SETTING_FIELDS`` order."""
        return [*self.sampling_fields(), *self.format_fields()]


@dataclass(frozen=True)
class ColumnControls:
    """One pre-built column of the Compare tab."""

    container: gr.Column
    model: gr.Dropdown
    chatbot: gr.Chatbot
    figures: gr.Markdown
    settings: SettingsControls
    preset: gr.Dropdown
    apply_preset: gr.Button
    feedback: FeedbackControls


def build_compare(team: gr.State) -> Callable[[Any], None]:
    """Build the Compare tab inside the playground's Blocks; returns what to chain on the page load."""
    notice = gr.Markdown(INTRO, elem_id="compare-notice")
    column_count = gr.Radio(
        ["2", "3", "4"], value=str(DEFAULT_COLUMNS), label="Columns", elem_id="compare-columns", interactive=True
    )
    with gr.Accordion("Settings for every column", open=False, elem_id="compare-all-settings"):
        with gr.Row():
            shared_preset = _preset_picker("Prompt preset", "compare-preset-all")
            apply_preset_everywhere = gr.Button("Apply the preset to every column", variant="secondary")
        shared = _settings_controls("all")
        apply_to_all = gr.Button("Use these settings in every column", variant="secondary", elem_id="compare-apply-all")
        with gr.Row():
            preset_name = gr.Textbox(label="Save these settings as a preset named", max_length=80, scale=3)
            save_preset = gr.Button("Save preset", variant="secondary", scale=1, elem_id="compare-save-preset")
        preset_status = gr.Markdown()
    with gr.Row(equal_height=False):
        columns = [_build_column(number) for number in range(1, COLUMNS + 1)]
    with gr.Row():
        prompt = gr.Textbox(
            label="Prompt",
            placeholder="One prompt for every column…",
            lines=2,
            max_lines=10,
            max_length=MAX_PROMPT,
            scale=6,
            elem_id="compare-prompt",
        )
        with gr.Column(scale=1, min_width=140):
            send = gr.Button("Send", variant="primary", elem_id="compare-send")
            stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
            clear = gr.Button("Clear", variant="secondary", elem_id="compare-clear")
    with gr.Accordion("Save this comparison", open=False, elem_id="compare-save-panel"):
        with gr.Row():
            title = gr.Textbox(label="Title", max_length=120, scale=3, elem_id="compare-title")
            open_to_team = gr.Checkbox(label="Open to the whole team (otherwise only you and the admins)", scale=2)
            save = gr.Button("Save comparison", variant="secondary", scale=1, elem_id="compare-save")
        save_status = gr.Markdown(elem_id="compare-save-status")
    # Every turn with each column's answer and figures: what "Save comparison" keeps.
    turns = gr.State([])
    # Per column, the complete answer a vote would be about (model key, conversation, answer), or None.
    answered = gr.State([None] * COLUMNS)

    chats = [column.chatbot for column in columns]
    figures = [column.figures for column in columns]
    feedback_rows = [column.feedback.row for column in columns]
    feedback_notes = [column.feedback.note for column in columns]
    column_settings = [field for column in columns for field in column.settings.all()]

    generate_inputs: list[Any] = [team, prompt, column_count]
    for column in columns:
        generate_inputs += [column.model, column.chatbot, *column.settings.sampling_fields()]
    generate_inputs.append(turns)
    for column in columns:  # after the request in the handlers' signatures (see stream_compare)
        generate_inputs += column.settings.format_fields()
    generate_outputs = [*chats, *figures, turns, prompt, answered, *feedback_rows, *feedback_notes]
    sent = send.click(
        stream_compare,
        inputs=generate_inputs,
        outputs=generate_outputs,
        api_name="compare",
        concurrency_limit=CONCURRENT_COMPARISONS,
    )
    submitted = prompt.submit(
        stream_compare,
        inputs=generate_inputs,
        outputs=generate_outputs,
        api_visibility="private",
        concurrency_limit=CONCURRENT_COMPARISONS,
    )
    stop.click(None, cancels=[sent, submitted]).then(
        mark_stopped, inputs=[team, *figures], outputs=figures, api_name="stop"
    )
    clear.click(
        clear_conversation,
        inputs=[team],
        outputs=[*chats, *figures, turns, save_status, answered, *feedback_rows],
        api_name="clear",
    )
    wire_feedback(team, answered, [column.feedback for column in columns])

    column_count.change(
        show_columns,
        inputs=[team, column_count],
        outputs=[columns[2].container, columns[3].container],
        api_visibility="private",
    )
    apply_to_all.click(
        apply_settings_to_all, inputs=[team, *shared.all()], outputs=column_settings, api_visibility="private"
    )
    preset_fields = [shared.preset_fields()] + [column.settings.preset_fields() for column in columns]
    apply_preset_everywhere.click(
        apply_preset_to_all,
        inputs=[team, shared_preset],
        outputs=[field for fields in preset_fields for field in fields],
        api_name="apply_preset",
    )
    for column in columns:
        column.apply_preset.click(
            apply_preset_to_column,
            inputs=[team, column.preset],
            outputs=column.settings.preset_fields(),
            api_visibility="private",
        )
    preset_pickers = [shared_preset, *(column.preset for column in columns)]
    save_preset.click(
        save_prompt_preset,
        inputs=[team, preset_name, *shared.preset_fields()],
        outputs=[preset_status, *preset_pickers],
        api_name="save_preset",
    )
    save_inputs: list[Any] = [team, title, open_to_team, column_count]
    for column in columns:
        save_inputs += [column.model, *column.settings.sampling_fields()]
    save_inputs.append(turns)
    for column in columns:
        save_inputs += column.settings.format_fields()
    save.click(save_current_comparison, inputs=save_inputs, outputs=[save_status], api_name="save_comparison")

    def when_loaded(loaded: Any) -> None:
        loaded.then(
            fill_pickers,
            inputs=[team],
            outputs=[notice, *(column.model for column in columns), *preset_pickers],
            api_name="models",
        ).then(
            open_saved_comparison,
            inputs=[team],
            outputs=[
                notice,
                column_count,
                *(column.model for column in columns),
                *chats,
                *figures,
                *column_settings,
                turns,
                title,
            ],
            api_name="load_comparison",
        )

    return when_loaded


def _settings_controls(suffix: str) -> SettingsControls:
    return SettingsControls(
        system_prompt=gr.Textbox(
            label="System prompt",
            placeholder="e.g. You are a concise support agent for Acme.",
            lines=2,
            max_lines=8,
            max_length=comparisons.MAX_SYSTEM_PROMPT,
            elem_id=f"compare-system-{suffix}",
        ),
        temperature=gr.Slider(
            0,
            2,
            value=DEFAULTS.temperature,
            step=0.05,
            label="Temperature (0: always the likeliest)",
            elem_id=f"compare-temperature-{suffix}",
        ),
        top_p=gr.Slider(0.05, 1, value=DEFAULTS.top_p, step=0.05, label="Top-p"),
        max_tokens=gr.Slider(
            1,
            settings.PLAYGROUND_MAX_TOKENS,
            value=min(DEFAULTS.max_tokens, settings.PLAYGROUND_MAX_TOKENS),
            step=1,
            label="Max tokens",
            elem_id=f"compare-max-tokens-{suffix}",
        ),
        # A text field: Gradio's Number always shows an empty value as 0, which reads as "seed 0". Empty means a
        # fresh random seed each time; ColumnSettings.clean checks what is typed (a whole number of 0 or more).
        seed=gr.Textbox(
            "",
            label="Seed (empty: a different answer each time)",
            placeholder="random",
            max_lines=1,
            elem_classes="compare-seed",
        ),
        json_schema=gr.Textbox(
            "",
            label="JSON schema (optional: the answer will be JSON matching it; needs vLLM)",
            placeholder=comparisons.JSON_SCHEMA_EXAMPLE,
            lines=2,
            max_lines=12,
            max_length=comparisons.MAX_JSON_SETTING,
            elem_id=f"compare-schema-{suffix}",
        ),
        tools=gr.Textbox(
            "",
            label="Tools (optional: a JSON list of functions the model may call; needs vLLM)",
            placeholder=f"[{comparisons.TOOL_EXAMPLE}]",
            lines=2,
            max_lines=12,
            max_length=comparisons.MAX_JSON_SETTING,
            elem_id=f"compare-tools-{suffix}",
        ),
    )


def _preset_picker(label: str, elem_id: str) -> gr.Dropdown:
    # Custom values pass through to the handler, which looks the preset up in the caller's team.
    return gr.Dropdown(choices=[], value=None, label=label, allow_custom_value=True, elem_id=elem_id)


def _build_column(number: int) -> ColumnControls:
    with gr.Column(visible=number <= DEFAULT_COLUMNS, min_width=240, elem_id=f"compare-column-{number}") as container:
        # Custom values pass through to the handler, which resolves every key for the caller: the choices
        # are what this person may use, but a request can carry anything.
        model = gr.Dropdown(
            choices=[], value=None, label=f"Model {number}", allow_custom_value=True, elem_id=f"compare-model-{number}"
        )
        # Model output is untrusted text: the chatbot keeps its HTML sanitizer on.
        chatbot = gr.Chatbot(
            label=f"Answers {number}",
            height=420,
            buttons=["copy"],
            elem_id=f"compare-chat-{number}",
            sanitize_html=True,
            allow_tags=False,
        )
        figures = gr.Markdown("", elem_id=f"compare-figures-{number}")
        feedback = build_feedback(number)
        with gr.Accordion("Settings", open=False):
            with gr.Row():
                preset = _preset_picker("Prompt preset", f"compare-preset-{number}")
                apply = gr.Button("Apply", variant="secondary", min_width=80)
            controls = _settings_controls(str(number))
    return ColumnControls(
        container=container,
        model=model,
        chatbot=chatbot,
        figures=figures,
        settings=controls,
        preset=preset,
        apply_preset=apply,
        feedback=feedback,
    )


# --- one column's generation --------------------------------------------------------------------


@dataclass
class ColumnRun:
    """One column's answer to the current prompt, as it streams."""

    position: int
    servable: Servable
    settings: ColumnSettings
    history: list[dict[str, str]]
    engine: EngineInfo = UNKNOWN_ENGINE
    update: StreamUpdate | None = None
    error: str | None = None
    done: bool = False
    # A deployment granted studio tools: the studio runs its calls. Its answer may take several generations:
    # ``steps`` holds the earlier ones (each ended in studio calls), ``update`` the one streaming now.
    studio: bool = False
    inbox_url: str = ""
    steps: list[StreamUpdate] = field(default_factory=list)
    studio_calls: list[dict[str, Any]] = field(default_factory=list)
    studio_results: dict[str, str] = field(default_factory=dict)

    def messages(self, prompt: str) -> list[dict[str, str]]:
        """What the model is sent: the column's system prompt, its own history, then the prompt."""
        system = [{"role": "system", "content": self.settings.system_prompt}] if self.settings.system_prompt else []
        return [*system, *self.history, {"role": "user", "content": prompt}]

    def chat(self, prompt: str, waiting_for: int | None = None) -> list[dict[str, Any]]:
        """The chatbot's messages: the history, the prompt, the answer so far and a card per tool call (or which
        column it waits for). Cards and that note are titled: ``chat_history`` leaves them out of the conversation."""
        reply = [message for step in self.steps for message in self._step_messages(step, complete=True)]
        if self.update is not None:
            reply += self._step_messages(self.update, complete=self.done)
        if not reply and self.error is None and waiting_for is not None:
            note = WAITING_FOR.format(number=waiting_for)
            reply = [{"role": "assistant", "content": note, "metadata": {"title": note, "status": "pending"}}]
        return [*self.history, {"role": "user", "content": prompt}, *reply]

    def progress(self, event: StudioProgress) -> None:
        """Take the runner's news: a new generation starts, or the studio calls changed."""
        if event.next_step:
            if self.update is not None:
                self.steps.append(self.update)
            self.update = None
            return
        self.studio_calls = list(event.calls)
        self.studio_results = dict(event.results)

    def _step_messages(self, update: StreamUpdate, *, complete: bool) -> list[dict[str, Any]]:
        """One generation's text, then a card per call: a studio call's with the studio's decision and result."""
        messages: list[dict[str, Any]] = [{"role": "assistant", "content": update.text}] if update.text else []
        records = {str(record["id"]): record for record in self.studio_calls}
        for call in update.tool_calls:
            record = records.get(call_id(call))
            if record is None:
                messages.append(tool_call_message(call, complete=complete))
            else:
                result = self.studio_results.get(call_id(call))
                messages.append(studio_call_message(record, result, inbox_url=self.inbox_url))
        return messages

    def figures(self, waiting_for: int | None = None) -> str:
        """The figures line: what it waits for, or the answer's figures ("so far" while it streams), and the engine."""
        waiting_tool_name = waiting_tool(self.studio_calls) if not self.done and self.error is None else None
        if waiting_tool_name is not None:
            line = WAITING_FOR_APPROVAL.format(tool=markdown_text(waiting_tool_name))
            return " · ".join(filter(None, (line, self.engine.label)))
        if self.error is None and (self.update is None or self.update.time_to_first_token_s is None):
            line = WAITING_FOR.format(number=waiting_for) if waiting_for is not None else WAITING
            return " · ".join(filter(None, (line, self.engine.label)))
        return column_figures(self.answer(), streaming=not self.done)

    def waiting_for(self, runs: list[ColumnRun]) -> int | None:
        """The column (numbered from 1) whose answer holds the in-process engine while this one waits for it.

        Only the in-process engine answers one column at a time per base model: on vLLM nothing waits.
        """
        started = self.update is not None and (self.update.text or self.update.tool_calls)
        if self.done or self.error is not None or started or self.engine.concurrent:
            return None
        busy = (
            run for run in runs
            if run is not self and run.engine.name == self.engine.name == "in-process"
            and run.servable.base_path == self.servable.base_path and run.update is not None and not run.done
        )  # fmt: skip
        return next((run.position + 1 for run in busy), None)

    def answer(self) -> dict[str, Any]:
        """The answer as a saved comparison keeps it: text, tool calls, figures, engine, and the error if it failed."""
        update = self.update or StreamUpdate("", "", None, 0.0, 0)
        ttft, rate = update.time_to_first_token_s, update.tokens_per_second
        answer: dict[str, Any] = {
            "key": self.servable.key,
            "model": self.servable.label,
            "text": update.text,
            "ttft_s": round(ttft, 3) if ttft is not None else None,
            "tokens_per_second": round(rate, 1) if rate is not None else None,
            "tokens": update.completion_tokens,
            "finish_reason": update.finish_reason,
            "engine": self.engine.name,
        }
        if update.tool_calls:
            answer["tool_calls"] = [asdict(call) for call in update.tool_calls]
        if self.studio_calls:
            answer["studio_tool_calls"] = [dict(record) for record in self.studio_calls]
        if self.error is not None:
            answer["error"] = self.error
        return answer

    def votable(self, prompt: str) -> dict[str, Any] | None:
        """What a vote on this column's answer records, once the answer is complete (None before, or if it failed)."""
        text = self.update.text if self.update is not None else ""
        if not self.done or self.error is not None or not text.strip() or self.steps:
            return None
        return vote_subject(self.servable.key, self.servable.label, self.messages(prompt), text)


def tool_call_message(call: ToolCall, *, complete: bool = True) -> dict[str, Any]:
    """A tool call as a card in the chatbot: its function's name as the title, its arguments as a code block.

    Both are the model's text: the name escaped, the arguments shown as typed (pretty-printed once complete,
    when they are JSON).
    """
    arguments = call.arguments
    if complete:
        with contextlib.suppress(ValueError):  # not JSON: shown as the model wrote it
            arguments = json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    title = f"Tool call: {markdown_text(call.name or 'unnamed')}"
    return {"role": "assistant", "content": code_block(arguments, "json"), "metadata": {"title": title}}


@dataclass(frozen=True)
class StudioProgress:
    """A deployment column's studio calls as the runner reports them; ``next_step`` when a new generation starts
    (the one streaming so far ended in studio calls)."""

    calls: tuple[dict[str, Any], ...] = ()
    results: tuple[tuple[str, str], ...] = ()
    next_step: bool = False


# What a column's task puts on the shared queue: (position, an update | studio progress | an error message | None
# when done).
ColumnEvent = tuple[int, StreamUpdate | StudioProgress | str | None]


async def _generate(run: ColumnRun, prompt: str, access: TeamAccess, queue: asyncio.Queue[ColumnEvent]) -> None:
    """Stream one column into ``queue`` as (position, update | progress | error), then (position, None).

    A deployment's column is answered as its clients are: under its guard policy (the prompt checked first, the
    answer released only once checked), and what the policy did is audited as this member."""
    guard: guardrails.Guard | None = None
    events: list[dict[str, Any]] = []
    try:
        guard = await sync_to_async(_guard_of)(access, run.servable.deployment_id)
        messages = run.messages(prompt)
        if guard is not None:
            check = await check_prompt(guard.rules, messages, guard.classify)
            events += [event.as_dict() for event in check.events]
            if check.blocked is not None:
                queue.put_nowait((run.position, guardrails.refused_update(guard)))
                return
            messages = check.messages
        if run.studio:
            await _run_studio_tools(run, messages, access, queue, guard, events)
        else:
            updates = stream_answer(
                run.servable, messages, run.settings.sampling(), team=access.team, user=access.user,
                source="playground",
            )  # fmt: skip
            if guard is not None:
                updates = guardrails.guard_updates(guard, updates, events)
            async for update in updates:
                queue.put_nowait((run.position, update))
    except (InferenceError, OpenAIError) as error:
        queue.put_nowait((run.position, str(error)))
    except Exception:
        logger.exception("playground generation failed for %s", run.servable.served_name)
        queue.put_nowait((run.position, "Something went wrong while generating this answer; try again."))
    finally:
        queue.put_nowait((run.position, None))
        if guard is not None and events:
            await asyncio.shield(
                sync_to_async(guardrails.record)(
                    events, team=access.team, deployment_id=guard.deployment_id, revision=guard.revision,
                    via="playground", access=access,
                )
            )  # fmt: skip


def _guard_of(access: TeamAccess, deployment_id: int | None) -> guardrails.Guard | None:
    if deployment_id is None:
        return None
    deployment = Deployment.objects.for_team(access.team).filter(pk=deployment_id).first()
    return guardrails.guard_for(deployment) if deployment is not None else None


async def _run_studio_tools(
    run: ColumnRun, messages: list[dict[str, Any]], access: TeamAccess, queue: asyncio.Queue[ColumnEvent],
    guard: guardrails.Guard | None, events: list[dict[str, Any]],
) -> None:  # fmt: skip
    """A deployment column with studio tools: the tools app's runner drives the loop for this member, each
    generation streams into the column, each call's decision and result arrive as progress. The column's own
    tools (if any) are offered beside the granted ones, as a client's; a call of one of them ends the answer."""
    deployment = await (
        Deployment.objects.for_team(access.team).select_related("model_version").aget(pk=run.servable.deployment_id)
    )
    sampling = run.settings.sampling()
    generations = 0

    async def step(messages: list[dict[str, Any]], tools: list[dict[str, Any]], _choice: Any) -> dict[str, Any]:
        nonlocal generations
        if generations:
            queue.put_nowait((run.position, StudioProgress(next_step=True)))
        generations += 1
        last: StreamUpdate | None = None
        updates = stream_answer(
            run.servable, messages, replace(sampling, tools=tuple(tools)), team=access.team, user=access.user,
            source="playground",
        )  # fmt: skip
        if guard is not None:
            updates = guardrails.guard_updates(guard, updates, events)
        async for update in updates:
            last = update
            queue.put_nowait((run.position, update))
        return _completion(last, deployment.name)

    def report(calls: list[dict[str, Any]], results: dict[str, str]) -> None:
        queue.put_nowait((run.position, StudioProgress(tuple(calls), tuple(results.items()))))

    runner = studio_tools.runner()
    assert runner is not None
    await runner.run(
        studio_tools.ToolRun(
            access=access,
            deployment=deployment,
            messages=messages,
            step=step,
            via="playground",
            client_tools=[dict(tool) for tool in sampling.tools],
            wait_for_approval=True,
            report=report,
        )
    )


def call_id(call: ToolCall) -> str:
    """A call's id as the runner knows it (an engine that names none gets one by position)."""
    return call.id or f"call_{call.index}"


def _completion(update: StreamUpdate | None, model: str) -> dict[str, Any]:
    """A streamed answer as the ``chat.completion`` the runner reads: its text and its calls."""
    message: dict[str, Any] = {"role": "assistant", "content": update.text if update is not None else ""}
    calls = update.tool_calls if update is not None else ()
    if calls:
        message["tool_calls"] = [
            {"id": call_id(call), "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls
        ]  # fmt: skip
    finish = "tool_calls" if calls else (update.finish_reason if update is not None else "stop")
    return {
        "id": "", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }  # fmt: skip


# --- the handlers -------------------------------------------------------------------------------


async def stream_compare(
    team_slug: str,
    prompt: str,
    column_count: str,
    model_1: str | None, history_1: list[Any],
    system_1: str, temperature_1: float, top_p_1: float, max_tokens_1: float, seed_1: str | None,
    model_2: str | None, history_2: list[Any],
    system_2: str, temperature_2: float, top_p_2: float, max_tokens_2: float, seed_2: str | None,
    model_3: str | None, history_3: list[Any],
    system_3: str, temperature_3: float, top_p_3: float, max_tokens_3: float, seed_3: str | None,
    model_4: str | None, history_4: list[Any],
    system_4: str, temperature_4: float, top_p_4: float, max_tokens_4: float, seed_4: str | None,
    turns: list[dict[str, Any]] | None,
    request: gr.Request,
    json_schema_1: str = "", tools_1: str = "",
    json_schema_2: str = "", tools_2: str = "",
    json_schema_3: str = "", tools_3: str = "",
    json_schema_4: str = "", tools_4: str = "",
) -> AsyncIterator[tuple[Any, ...]]:  # fmt: skip
    """Send one prompt to every shown column at once and stream the answers side by side.

    Each column continues its own conversation (the history its chatbot shows). A model that fails
    shows why in its own column; the others go on. The columns' JSON schemas and tools come last, after
    the request (Gradio passes the request where the signature has it): callers written before they
    existed go on working, without them.
    """
    access = await team_access(request, team_slug)
    count = _column_count(column_count)
    _require_playground(access)
    given = [
        (model_1, history_1, (system_1, temperature_1, top_p_1, max_tokens_1, seed_1, json_schema_1, tools_1)),
        (model_2, history_2, (system_2, temperature_2, top_p_2, max_tokens_2, seed_2, json_schema_2, tools_2)),
        (model_3, history_3, (system_3, temperature_3, top_p_3, max_tokens_3, seed_3, json_schema_3, tools_3)),
        (model_4, history_4, (system_4, temperature_4, top_p_4, max_tokens_4, seed_4, json_schema_4, tools_4)),
    ][:count]
    servables = await _resolve(access, [model for model, _, _ in given])
    runs = [
        ColumnRun(position, servable, _column_settings(position + 1, *values), chat_history(history))
        for position, (servable, (_, history, values)) in enumerate(zip(servables, given, strict=True))
    ]
    prompt = (prompt or "").strip()
    if not prompt:
        raise refusal("Type a prompt first.")
    if len(prompt) > MAX_PROMPT:
        raise refusal(f"Keep the prompt under {MAX_PROMPT} characters (it has {len(prompt)}).")
    for run in runs:  # one after another: the first asks the inference server, the others reuse its answer
        run.engine = await aengine_of(run.servable)
        if run.servable.deployment_id is not None:
            run.studio = await sync_to_async(_studio_tools_granted)(access, run.servable.deployment_id)
            run.inbox_url = reverse("tools:approvals", args=[access.team.slug])

    earlier = list(turns or [])
    asked = False  # each column's voting row asks afresh once, when the new answers start

    def outputs() -> tuple[Any, ...]:
        nonlocal asked
        shown = {run.position: run for run in runs}
        waits = {run.position: run.waiting_for(runs) for run in runs}
        chats = [shown[p].chat(prompt, waits[p]) if p in shown else gr.skip() for p in range(COLUMNS)]
        lines = [shown[p].figures(waits[p]) if p in shown else gr.skip() for p in range(COLUMNS)]
        turn = {"prompt": prompt, "answers": [run.answer() for run in runs]}
        answered = [shown[p].votable(prompt) if p in shown else None for p in range(COLUMNS)]
        rows = [gr.Row(visible=entry is not None) for entry in answered]
        # Later updates leave the notes alone: a vote cast while other columns still stream keeps its answer.
        notes = [gr.skip() if asked else ASK for _ in range(COLUMNS)]
        asked = True
        return (*chats, *lines, [*earlier, turn], "", answered, *rows, *notes)

    queue: asyncio.Queue[ColumnEvent] = asyncio.Queue()
    tasks = [asyncio.create_task(_generate(run, prompt, access, queue)) for run in runs]
    streaming = len(tasks)
    loop = asyncio.get_running_loop()
    try:
        yield outputs()
        refreshed = loop.time()
        while streaming:
            item: ColumnEvent | None = await queue.get()
            while item is not None:  # take everything that arrives until the next redraw is due
                position, event = item
                if event is None:
                    streaming -= 1
                    runs[position].done = True
                elif isinstance(event, str):
                    runs[position].error = event
                elif isinstance(event, StudioProgress):
                    runs[position].progress(event)
                else:
                    runs[position].update = event
                due = REFRESH_SECONDS - (loop.time() - refreshed)
                if event is None:  # a column just finished: show its last words now
                    item = None
                elif not queue.empty():
                    item = queue.get_nowait()
                elif streaming and due > 0:
                    try:
                        item = await asyncio.wait_for(queue.get(), due)
                    except TimeoutError:
                        item = None
                else:
                    item = None
            yield outputs()
            refreshed = loop.time()
    finally:
        # Stop pressed or the page closed: closing the streams stops the generations on the server.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def fill_pickers(team_slug: str, request: gr.Request) -> tuple[Any, ...]:
    """The models this person may use in every column's picker, and the team's presets.

    ``?model=<key>`` (a model version's "Open in playground") puts that model in the first column, when this
    person may use it; the other columns take the other models in order.
    """
    access = await team_access(request, team_slug)
    models = await sync_to_async(usable_models)(access, deployments=True)
    presets = await sync_to_async(_preset_choices)(access)
    choices = [(model.label, model.key) for model in models]
    keys = [key for _, key in choices]
    wanted = str(request.query_params.get("model") or "")
    if wanted in keys:
        keys = [wanted, *(key for key in keys if key != wanted)]
    pickers = [
        gr.Dropdown(choices=choices, value=keys[position % len(keys)] if keys else None) for position in range(COLUMNS)
    ]
    preset_pickers = [gr.Dropdown(choices=presets, value=None) for _ in range(COLUMNS + 1)]
    return (_notice(access, models), *pickers, *preset_pickers)


async def open_saved_comparison(team_slug: str, request: gr.Request) -> tuple[Any, ...]:
    """Reopen ``?comparison=<id>``: its models, settings and every column's conversation.

    Only a comparison this person may still see, and only the models they may still use.
    """
    access = await team_access(request, team_slug)
    unchanged = tuple(gr.skip() for _ in range(REOPEN_OUTPUTS))
    raw_id = str(request.query_params.get("comparison") or "")
    if not raw_id or not access.can(Perm.USE_PLAYGROUND):
        return unchanged
    comparison = await sync_to_async(_visible_comparison)(access, raw_id)
    if comparison is None:
        notice = "That saved comparison does not exist or is not shared with you: open one from the saved list."
        return (notice, *unchanged[1:])
    columns = comparison.columns[:COLUMNS]
    keys = await sync_to_async(_still_usable)(access, [str(column.get("key", "")) for column in columns])
    gone = [
        markdown_text(column.get("label", "a model")) for column, key in zip(columns, keys, strict=True) if key is None
    ]
    turn_count = len(comparison.turns)
    notice = (
        f"Opened “{markdown_text(comparison.title)}” ({turn_count} turn{'s' if turn_count != 1 else ''}): "
        "continue the conversation, or save it again under a new title."
    )
    if gone:
        notice += f" You can no longer use {', '.join(gone)}: pick another model for that column."
    last_answers = comparison.turns[-1].get("answers", []) if comparison.turns else []
    models, chats, lines, column_settings = [], [], [], []
    for position in range(COLUMNS):
        if position >= len(columns):
            models.append(gr.skip())
            chats.append(gr.skip())
            lines.append(gr.skip())
            column_settings += [gr.skip()] * len(SETTING_FIELDS)
            continue
        saved = _saved_settings(columns[position].get("settings"))
        models.append(keys[position])
        chats.append(_saved_chat(comparison.turns, position))
        lines.append(column_figures(last_answers[position]) if position < len(last_answers) else "")
        values = {**asdict(saved), "seed": "" if saved.seed is None else str(saved.seed)}  # the seed field is text
        column_settings += [values[name] for name in SETTING_FIELDS]
    turns = [{"prompt": turn.get("prompt", ""), "answers": list(turn.get("answers", []))} for turn in comparison.turns]
    count = str(max(comparisons.MIN_COLUMNS, len(columns)))
    return (notice, count, *models, *chats, *lines, *column_settings, turns, comparison.title)


async def mark_stopped(
    team_slug: str, figures_1: str, figures_2: str, figures_3: str, figures_4: str, request: gr.Request
) -> tuple[str, ...]:
    """After Stop: a column still waiting for its answer says it was stopped (the others keep their figures)."""
    await team_access(request, team_slug)
    return tuple(
        "Stopped before any answer arrived." if line.startswith("Waiting for") else line
        for line in (figures_1, figures_2, figures_3, figures_4)
    )


async def clear_conversation(team_slug: str, request: gr.Request) -> tuple[Any, ...]:
    """Start over: every column's conversation and figures, the turns a save would keep, and the voting rows."""
    await team_access(request, team_slug)
    hidden = (gr.Row(visible=False) for _ in range(COLUMNS))
    return (*([] for _ in range(COLUMNS)), *("" for _ in range(COLUMNS)), [], "", [None] * COLUMNS, *hidden)


async def show_columns(team_slug: str, column_count: str, request: gr.Request) -> tuple[gr.Column, gr.Column]:
    """Show columns 3 and 4 only when that many are chosen."""
    await team_access(request, team_slug)
    count = _column_count(column_count)
    return gr.Column(visible=count >= 3), gr.Column(visible=count >= 4)


async def apply_settings_to_all(
    team_slug: str,
    system_prompt: str,
    temperature: float,
    top_p: float,
    max_tokens: float,
    seed: str | None,
    json_schema: str,
    tools: str,
    request: gr.Request,
) -> tuple[Any, ...]:
    """Copy the "every column" settings into each column."""
    await team_access(request, team_slug)
    return (system_prompt, temperature, top_p, max_tokens, seed, json_schema, tools) * COLUMNS


async def apply_preset_to_column(team_slug: str, preset_id: str | None, request: gr.Request) -> tuple[Any, ...]:
    """A preset's system prompt and sampling settings, for one column (its seed stays)."""
    access = await team_access(request, team_slug)
    return await _preset_fields(access, preset_id)


async def apply_preset_to_all(team_slug: str, preset_id: str | None, request: gr.Request) -> tuple[Any, ...]:
    """A preset's system prompt and sampling settings, for the "every column" panel and each column."""
    access = await team_access(request, team_slug)
    return await _preset_fields(access, preset_id) * (1 + COLUMNS)


async def save_prompt_preset(
    team_slug: str,
    name: str,
    system_prompt: str,
    temperature: float,
    top_p: float,
    max_tokens: float,
    request: gr.Request,
) -> tuple[Any, ...]:
    """Save the "every column" settings as a team preset, and offer it in every preset picker."""
    access = await team_access(request, team_slug)
    _require_playground(access)
    try:
        column = ColumnSettings.clean(
            system_prompt=system_prompt, temperature=temperature, top_p=top_p, max_tokens=max_tokens
        )
        preset = await sync_to_async(comparisons.create_preset)(
            access=access, name=name or "", column=column, ip=_client_ip(request)
        )
    except ValidationError as error:
        raise refusal(_message(error)) from None
    presets = await sync_to_async(_preset_choices)(access)
    status = f"Saved the preset “{markdown_text(preset.name)}”: pick it in any column's settings."
    pickers = [gr.Dropdown(choices=presets, value=str(preset.pk))]
    pickers += [gr.Dropdown(choices=presets) for _ in range(COLUMNS)]
    return (status, *pickers)


async def save_current_comparison(
    team_slug: str,
    title: str,
    open_to_team: bool,
    column_count: str,
    model_1: str | None,
    system_1: str, temperature_1: float, top_p_1: float, max_tokens_1: float, seed_1: str | None,
    model_2: str | None,
    system_2: str, temperature_2: float, top_p_2: float, max_tokens_2: float, seed_2: str | None,
    model_3: str | None,
    system_3: str, temperature_3: float, top_p_3: float, max_tokens_3: float, seed_3: str | None,
    model_4: str | None,
    system_4: str, temperature_4: float, top_p_4: float, max_tokens_4: float, seed_4: str | None,
    turns: list[dict[str, Any]] | None,
    request: gr.Request,
    json_schema_1: str = "", tools_1: str = "",
    json_schema_2: str = "", tools_2: str = "",
    json_schema_3: str = "", tools_3: str = "",
    json_schema_4: str = "", tools_4: str = "",
) -> str:  # fmt: skip
    """Save the shown columns (models and settings) and the conversation so far as a comparison.

    The JSON schemas and tools come last, as in ``stream_compare``.
    """
    access = await team_access(request, team_slug)
    count = _column_count(column_count)
    _require_playground(access)
    given = [
        (model_1, (system_1, temperature_1, top_p_1, max_tokens_1, seed_1, json_schema_1, tools_1)),
        (model_2, (system_2, temperature_2, top_p_2, max_tokens_2, seed_2, json_schema_2, tools_2)),
        (model_3, (system_3, temperature_3, top_p_3, max_tokens_3, seed_3, json_schema_3, tools_3)),
        (model_4, (system_4, temperature_4, top_p_4, max_tokens_4, seed_4, json_schema_4, tools_4)),
    ][:count]
    servables = await _resolve(access, [model for model, _ in given])
    columns = [
        {"key": servable.key, "label": servable.label, "settings": _column_settings(n, *values).as_dict()}
        for n, (servable, (_, values)) in enumerate(zip(servables, given, strict=True), start=1)
    ]
    kept = [
        {"prompt": turn.get("prompt", ""), "answers": list(turn.get("answers", []))[:count]} for turn in turns or []
    ]
    try:
        comparison = await sync_to_async(comparisons.save_comparison)(
            access=access,
            title=title or "",
            columns=columns,
            turns=kept,
            restricted=not open_to_team,
            ip=_client_ip(request),
        )
    except ValidationError as error:
        raise refusal(_message(error)) from None
    url = reverse("serving:comparison", args=[access.team.slug, comparison.pk])
    who = "everyone in the team" if not comparison.restricted else "you and the team's admins"
    return f"Saved “{markdown_text(comparison.title)}”, visible to {who}: [read it side by side]({url})."


# --- helpers ------------------------------------------------------------------------------------


def column_figures(answer: dict[str, Any], *, streaming: bool = False) -> str:
    """A column's figures line (Markdown), its error message escaped: it may quote a model's or a member's text."""
    if answer.get("error"):
        answer = {**answer, "error": markdown_text(answer["error"])}
    return figures_line(answer, streaming=streaming)


def _studio_tools_granted(access: TeamAccess, deployment_id: int) -> bool:
    deployment = Deployment.objects.for_team(access.team).filter(pk=deployment_id).first()
    return deployment is not None and studio_tools.granted(deployment)


def _require_playground(access: TeamAccess) -> None:
    if not access.can(Perm.USE_PLAYGROUND):
        raise refuse(
            PermissionDenied(
                f"Your role ({access.role.label}) cannot chat with models: ask an owner or admin for the member role."
            )
        )


def _column_count(value: Any) -> int:
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if not comparisons.MIN_COLUMNS <= count <= COLUMNS:
        raise refusal(f"Choose {comparisons.MIN_COLUMNS} to {COLUMNS} columns.")
    return count


async def _resolve(access: TeamAccess, keys: list[str | None]) -> list[Servable]:
    """Every column's model, checked for this person now; a refusal generates nothing."""
    for number, key in enumerate(keys, start=1):
        if not key:
            raise refusal(f"Pick a model for column {number}.")
    try:
        return await sync_to_async(resolve_models)(access, [str(key) for key in keys])
    except (Http404, PermissionDenied) as error:
        raise refuse(error) from None


def _column_settings(
    number: int,
    system_prompt: Any,
    temperature: Any,
    top_p: Any,
    max_tokens: Any,
    seed: Any,
    json_schema: Any,
    tools: Any,
) -> ColumnSettings:
    """Column ``number``'s settings, checked; a refusal names the column and the field (and generates nothing)."""
    try:
        return ColumnSettings.clean(
            system_prompt=system_prompt,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            json_schema=json_schema,
            tools=tools,
        )
    except ValidationError as error:
        raise refusal(f"Column {number}: {_message(error)}") from None


def chat_history(value: Any) -> list[dict[str, str]]:
    """A chatbot's messages as plain text turns (Gradio hands message content over as a list of parts)."""
    history = []
    for message in value or []:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            continue
        if (message.get("metadata") or {}).get("title"):  # a note such as "Waiting for column 1", not an answer
            continue
        text = _text(message.get("content"))
        if text:
            history.append({"role": str(message["role"]), "content": text})
    return history


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    if isinstance(content, list):
        return "".join(_text(part) for part in content)
    return ""


def _notice(access: TeamAccess, models: list[Servable]) -> str:
    if not access.can(Perm.USE_PLAYGROUND):
        return (
            f"Your role ({access.role.label}) can read the team's saved comparisons but not chat with models: "
            "ask an owner or admin for the member role."
        )
    if not models:
        return (
            "No model is ready for this team yet: fine-tune one under Training, or ask an operator to run "
            "`manage.py create_starter_model`."
        )
    return INTRO


def _preset_choices(access: TeamAccess) -> list[tuple[str, str]]:
    return [(preset.name, str(preset.pk)) for preset in comparisons.team_presets(access)]


def _team_preset(access: TeamAccess, preset_id: Any) -> PromptPreset | None:
    raw = str(preset_id or "")
    if not raw.isdigit():
        return None
    return comparisons.team_presets(access).filter(pk=int(raw)).first()


async def _preset_fields(access: TeamAccess, preset_id: Any) -> tuple[Any, ...]:
    _require_playground(access)
    preset = await sync_to_async(_team_preset)(access, preset_id)
    if preset is None:
        raise refusal("Pick one of the team's presets first (it may have been deleted: reload the page).")
    values = ColumnSettings.of_preset(preset)
    return (values.system_prompt, values.temperature, values.top_p, values.max_tokens)


def _visible_comparison(access: TeamAccess, raw_id: str) -> Comparison | None:
    if not raw_id.isdigit():
        return None
    return comparisons.visible_comparisons(access).filter(pk=int(raw_id)).first()


def _still_usable(access: TeamAccess, keys: list[str]) -> list[str | None]:
    """Each key if this person may still use its model, else None."""
    usable: list[str | None] = []
    for key in keys:
        try:
            usable.append(resolve_model(access, key).key)
        except (Http404, PermissionDenied):
            usable.append(None)
    return usable


def _saved_chat(turns: list[dict[str, Any]], position: int) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = []
    for turn in turns:
        chat.append({"role": "user", "content": str(turn.get("prompt", ""))})
        answers = turn.get("answers") or []
        answer = answers[position] if position < len(answers) and isinstance(answers[position], dict) else {}
        studio_calls = [record for record in answer.get("studio_tool_calls") or [] if isinstance(record, dict)]
        chat += [studio_call_message(record, None) for record in studio_calls]
        text = str(answer.get("text") or "")
        if text:
            chat.append({"role": "assistant", "content": text})
        chat += [tool_call_message(call) for call in _saved_tool_calls(answer)]
    return chat


def _saved_tool_calls(answer: dict[str, Any]) -> list[ToolCall]:
    calls = [call for call in answer.get("tool_calls") or [] if isinstance(call, dict)]
    return [
        ToolCall(index, str(call.get("id") or ""), str(call.get("name") or ""), str(call.get("arguments") or ""))
        for index, call in enumerate(calls)
    ]


def _saved_settings(saved: Any) -> ColumnSettings:
    values = {name: saved[name] for name in SETTING_FIELDS if isinstance(saved, dict) and name in saved}
    try:
        return ColumnSettings.clean(**values)
    except ValidationError:
        return DEFAULTS


def _message(error: ValidationError) -> str:
    return " ".join(error.messages)


def _client_ip(request: gr.Request) -> str | None:
    client = getattr(request, "client", None)
    return getattr(client, "host", None)
