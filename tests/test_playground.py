"""The playground's Compare view, saved comparisons and prompt presets.

The Gradio handlers are called through Gradio's HTTP API on the real ASGI app (uvicorn, on the test
database) streaming from the real inference server: the starter model and a LoRA adapter of it. A
session is opened the way the browser opens one (the page load with ``?team=<slug>``), so the team
slug reaches the handlers in their ``gr.State``, as it does from the page.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gradio as gr
import httpx
import pytest
from django.urls import reverse

from accounts.models import AuditEvent, Membership
from accounts.permissions import resolve_access
from accounts.roles import Role
from serving_app import comparisons
from serving_app.catalog import Servable
from serving_app.comparisons import ColumnSettings
from serving_app.engine.client import StreamUpdate, ToolCall
from serving_app.inference import EngineInfo
from serving_app.models import Comparison, PromptPreset, UsageRecord
from serving_app.playground import build_playground
from serving_app.ui import compare
from tests.factories import adapter_model_version, member
from tests.test_gradio_mount import signed_in
from training_app.models import ModelVersion

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = "Tell me about the sea."
MAX_TOKENS = 12
# A complete answer's figures line, without the engine that served it.
FIGURES = r"TTFT \d+\.\d\d s · (\d+|–) tok/s · \d+ tokens?( · stopped at max tokens)?"


# --- the real stack: a LoRA model version, a signed-in client, a playground session ------------


@pytest.fixture
def lora_version(acme: Any, alice: Any, starter_model: Any, lora_adapters: list[Path]) -> ModelVersion:
    """A model version of the team: a real LoRA adapter of the starter model."""
    return adapter_model_version(acme, alice, starter_model, lora_adapters[0])


def open_playground(client: httpx.Client, team: str, **params: str) -> str:
    """Run the page load of ``/play/?team=<team>&view=compare`` as the browser does; returns the session."""
    session = uuid.uuid4().hex
    config = client.get("/play/config").json()
    kinds = {component["id"]: component["type"] for component in config["components"]}
    page_load = next(
        dependency["id"]
        for dependency in config["dependencies"]
        if any(trigger[1] == "load" for trigger in dependency["targets"])
        and any(kinds.get(output) == "state" for output in dependency["outputs"])
    )
    query = urlencode({"team": team, "view": "compare", **params})
    joined = client.post(
        f"/play/gradio_api/queue/join?{query}",
        json={"data": [], "fn_index": page_load, "session_hash": session, "event_data": None, "trigger_id": None},
    )
    assert joined.status_code == 200, joined.text
    with client.stream("GET", "/play/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            message = json.loads(line[len("data: ") :]) if line.startswith("data: ") else {}
            if message.get("msg") == "process_completed":
                assert message["success"], message
                break
    return session


def call(client: httpx.Client, session: str, api_name: str, data: list[Any], **params: str) -> list[tuple[str, Any]]:
    """Call a handler through Gradio's API in ``session``; every (event, data) of its answer stream."""
    query = f"?{urlencode(params)}" if params else ""
    started = client.post(f"/play/gradio_api/call/{api_name}{query}", json={"data": data, "session_hash": session})
    assert started.status_code == 200, started.text
    body = client.get(f"/play/gradio_api/call/{api_name}/{started.json()['event_id']}", timeout=180).text
    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event") in ("generating", "complete", "error"):
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def completed(events: list[tuple[str, Any]]) -> list[Any]:
    assert events and events[-1][0] == "complete", events[-1:]
    return list(events[-1][1])


def refused(events: list[tuple[str, Any]]) -> str:
    assert events and events[-1][0] == "error", events[-1:]
    return str(events[-1][1]["error"])


def column(
    key: str | None,
    history: list[Any] | None = None,
    *,
    system: str = "",
    temperature: float = 0.0,
    seed: str | None = None,
    json_schema: str = "",
    tools: str = "",
) -> list[Any]:
    """One column's inputs to ``compare``: model, history, system prompt, temperature, top-p, max tokens, seed,
    then its JSON schema and tools (which ``compare_data`` moves after every column's other inputs)."""
    return [key, history or [], system, temperature, 1.0, MAX_TOKENS, seed, json_schema, tools]


def compare_data(prompt: str, *columns: list[Any]) -> list[Any]:
    """``compare``'s inputs for the first columns; the other pre-built columns are left empty."""
    every = [*columns, *(column(None) for _ in range(4 - len(columns)))]
    inline = [value for values in every for value in values[:-2]]
    return [prompt, str(len(columns)), *inline, *(value for values in every for value in values[-2:])]


def save_data(title: str, keys: list[str], *, open_to_team: bool = False, tools: str = "") -> list[Any]:
    """``save_comparison``'s inputs: title, team-wide flag, column count, per column model and settings, then
    each column's JSON schema and tools."""
    columns = [[key, "", 0.0, 1.0, MAX_TOKENS, None] for key in keys]
    columns += [[None, "", 0.7, 1.0, 256, None] for _ in range(4 - len(keys))]
    formats = ["", tools] * len(keys) + ["", ""] * (4 - len(keys))
    return [title, open_to_team, str(len(keys)), *[value for values in columns for value in values], *formats]


def last_answer(chat: list[dict[str, Any]]) -> str:
    assert chat[-1]["role"] == "assistant", chat
    return "".join(part["text"] for part in chat[-1]["content"] if part.get("type") == "text")


def usage_count() -> int:
    return UsageRecord.objects.unscoped().count()


# --- streaming side by side ---------------------------------------------------------------------


def test_two_models_stream_different_answers_side_by_side_with_figures(
    studio_server: str, alice: Any, starter_model: Any, lora_version: ModelVersion
) -> None:
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    events = call(
        client, session, "compare",
        compare_data(PROMPT, column(f"base:{starter_model.pk}"), column(f"version:{lora_version.pk}")),
    )  # fmt: skip
    outputs = completed(events)
    chats, figures = outputs[0:4], outputs[4:8]
    base_answer, tuned_answer = last_answer(chats[0]), last_answer(chats[1])
    assert base_answer and tuned_answer
    assert base_answer != tuned_answer
    for line in figures[:2]:
        assert re.fullmatch(FIGURES + r" · served by the in-process engine", line), line
    assert any(event == "generating" for event, _ in events), "the answers should arrive as a stream"
    records = UsageRecord.objects.for_team(lora_version.team)
    assert sorted(records.values_list("source", "status")) == [("playground", "ok"), ("playground", "ok")]


def test_second_turn_continues_each_columns_own_conversation(
    studio_server: str, alice: Any, starter_model: Any, lora_version: ModelVersion
) -> None:
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    keys = [f"base:{starter_model.pk}", f"version:{lora_version.pk}"]
    first = completed(call(client, session, "compare", compare_data(PROMPT, *(column(key) for key in keys))))
    second = completed(
        call(
            client, session, "compare",
            compare_data("And the mountains?", *(column(key, first[n]) for n, key in enumerate(keys))),
        )
    )  # fmt: skip
    for chat in second[0:2]:
        assert [message["role"] for message in chat] == ["user", "assistant", "user", "assistant"]
    # The model was sent the first turn too: the second request's prompt is longer than the first's.
    records = UsageRecord.objects.for_team(lora_version.team).order_by("created_at", "pk")
    prompt_tokens = [record.prompt_tokens for record in records]
    assert len(prompt_tokens) == 4 and min(prompt_tokens[2:]) > max(prompt_tokens[:2])


def test_system_prompt_of_a_column_reaches_its_model(
    studio_server: str, acme: Any, alice: Any, starter_model: Any
) -> None:
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    key = f"base:{starter_model.pk}"
    completed(
        call(client, session, "compare",
             compare_data(PROMPT, column(key), column(key, system="You are a pirate. Answer like one, always.")))
    )  # fmt: skip
    plain, with_system = UsageRecord.objects.for_team(acme).order_by("prompt_tokens")
    assert with_system.prompt_tokens > plain.prompt_tokens


def test_a_given_seed_gives_the_same_sampled_answer_in_every_column(
    studio_server: str, acme: Any, alice: Any, starter_model: Any
) -> None:
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    seeded = column(f"base:{starter_model.pk}", temperature=1.5, seed="7")
    chats = completed(call(client, session, "compare", compare_data(PROMPT, seeded, seeded)))[0:2]
    assert last_answer(chats[0]) == last_answer(chats[1])


def test_an_empty_seed_samples_a_different_answer_each_time(
    studio_server: str, acme: Any, alice: Any, starter_model: Any
) -> None:
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    unseeded = column(f"base:{starter_model.pk}", temperature=1.5, seed="")
    chats = completed(call(client, session, "compare", compare_data(PROMPT, unseeded, unseeded, unseeded)))[0:3]
    assert len({last_answer(chat) for chat in chats}) > 1


def test_playground_seed_field_starts_empty() -> None:
    textboxes = [block for block in build_playground().blocks.values() if isinstance(block, gr.Textbox)]
    seeds = [textbox for textbox in textboxes if "compare-seed" in (textbox.elem_classes or [])]
    assert seeds and all(seed.value == "" and seed.placeholder == "random" for seed in seeds)


def test_a_failing_model_shows_why_in_its_column_and_the_other_still_answers(
    studio_server: str, acme: Any, alice: Any, starter_model: Any, tmp_path: Path
) -> None:
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    broken = adapter_model_version(acme, alice, starter_model, empty)
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    outputs = completed(
        call(client, session, "compare",
             compare_data(PROMPT, column(f"base:{starter_model.pk}"), column(f"version:{broken.pk}")))
    )  # fmt: skip
    assert last_answer(outputs[0])
    assert outputs[5].startswith("**No answer:** ")
    assert [message["role"] for message in outputs[1]] == ["user"]
    statuses = sorted(UsageRecord.objects.for_team(acme).values_list("status", flat=True))
    assert statuses == ["failed", "ok"]


# --- refusals: nothing is generated, nothing is metered -----------------------------------------


def test_another_teams_model_version_is_refused(
    studio_server: str, alice: Any, charlie: Any, globex: Any, starter_model: Any, lora_adapters: list[Path]
) -> None:
    theirs = adapter_model_version(globex, charlie, starter_model, lora_adapters[0])
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    message = refused(
        call(client, session, "compare",
             compare_data(PROMPT, column(f"base:{starter_model.pk}"), column(f"version:{theirs.pk}")))
    )  # fmt: skip
    assert message == "That model does not exist or you may not use it."
    assert usage_count() == 0


def test_restricted_version_is_refused_to_a_member_without_a_share(
    studio_server: str, alice: Any, bob: Any, acme: Any, starter_model: Any, lora_adapters: list[Path]
) -> None:
    restricted = adapter_model_version(acme, alice, starter_model, lora_adapters[0], restricted=True)
    client = signed_in(studio_server, "bob")
    session = open_playground(client, "acme")
    message = refused(
        call(client, session, "compare",
             compare_data(PROMPT, column(f"base:{starter_model.pk}"), column(f"version:{restricted.pk}")))
    )  # fmt: skip
    assert message == "That model does not exist or you may not use it."
    assert usage_count() == 0


def test_viewer_is_refused_and_told_why(studio_server: str, acme: Any, starter_model: Any) -> None:
    member(acme, Role.VIEWER, "vera")
    client = signed_in(studio_server, "vera")
    session = open_playground(client, "acme")
    key = f"base:{starter_model.pk}"
    message = refused(call(client, session, "compare", compare_data(PROMPT, column(key), column(key))))
    assert "Your role (Viewer) cannot chat with models" in message
    assert usage_count() == 0


def test_another_teams_slug_is_refused(studio_server: str, bob: Any, globex: Any, starter_model: Any) -> None:
    client = signed_in(studio_server, "bob")
    session = open_playground(client, "globex")
    key = f"base:{starter_model.pk}"
    message = refused(call(client, session, "compare", compare_data(PROMPT, column(key), column(key))))
    assert message == "No such team: open the playground from your team's pages."
    assert usage_count() == 0


def test_model_pickers_offer_only_what_the_member_may_use(
    studio_server: str, alice: Any, bob: Any, acme: Any, starter_model: Any, lora_adapters: list[Path]
) -> None:
    restricted = adapter_model_version(acme, alice, starter_model, lora_adapters[0], restricted=True)
    for username, expected in (("alice", {f"base:{starter_model.pk}", f"version:{restricted.pk}"}),
                               ("bob", {f"base:{starter_model.pk}"})):  # fmt: skip
        client = signed_in(studio_server, username)
        outputs = completed(call(client, open_playground(client, "acme"), "models", []))
        picker = outputs[1]
        assert {value for _, value in picker["choices"]} == expected, username


# --- saving, reopening and sharing comparisons --------------------------------------------------


def test_saved_comparison_keeps_models_settings_answers_and_figures(
    studio_server: str, bob: Any, starter_model: Any, lora_version: ModelVersion
) -> None:
    client = signed_in(studio_server, "bob")
    session = open_playground(client, "acme")
    keys = [f"base:{starter_model.pk}", f"version:{lora_version.pk}"]
    answers = completed(call(client, session, "compare", compare_data(PROMPT, *(column(key) for key in keys))))
    status = completed(call(client, session, "save_comparison", save_data("Sea: base vs tuned", keys)))[0]
    saved = Comparison.objects.for_team(lora_version.team).get()
    assert f"/t/acme/playground/saved/{saved.pk}/" in status
    assert (saved.title, saved.restricted, saved.created_by) == ("Sea: base vs tuned", True, bob)
    assert [column["key"] for column in saved.columns] == keys
    assert saved.columns[1]["label"] == str(lora_version)
    assert saved.columns[0]["settings"]["max_tokens"] == MAX_TOKENS
    [turn] = saved.turns
    assert turn["prompt"] == PROMPT

    # (the chatbot shows each answer without its leading space, and a space after a line break dropped)
    def words(text: str) -> list[str]:
        return text.split()

    assert [words(answer["text"]) for answer in turn["answers"]] == [words(last_answer(chat)) for chat in answers[0:2]]
    assert all(answer["tokens"] > 0 and answer["ttft_s"] is not None for answer in turn["answers"])
    assert AuditEvent.objects.for_team(lora_version.team).filter(action="comparison.saved").count() == 1


def test_saved_comparison_reopens_in_the_playground(
    studio_server: str, alice: Any, acme: Any, starter_model: Any, lora_version: ModelVersion
) -> None:
    saved = _saved(acme, alice, [f"base:{starter_model.pk}", f"version:{lora_version.pk}"], system="Be brief.")
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme", comparison=str(saved.pk))
    outputs = completed(call(client, session, "load_comparison", [], comparison=str(saved.pk)))
    notice, count, models, chats = outputs[0], outputs[1], outputs[2:6], outputs[6:10]
    assert "Opened “Saved one”" in notice
    assert count == "2"
    assert models[:2] == [f"base:{starter_model.pk}", f"version:{lora_version.pk}"]
    assert [message["role"] for message in chats[0]] == ["user", "assistant"]
    settings = outputs[14:19]
    assert settings[0] == "Be brief."


def test_saved_comparison_does_not_reopen_for_a_member_it_is_not_shared_with(
    studio_server: str, alice: Any, acme: Any, starter_model: Any
) -> None:
    saved = _saved(acme, alice, [f"base:{starter_model.pk}"] * 2)
    member(acme, Role.MEMBER, "carol")
    client = signed_in(studio_server, "carol")
    session = open_playground(client, "acme", comparison=str(saved.pk))
    outputs = completed(call(client, session, "load_comparison", [], comparison=str(saved.pk)))
    assert outputs[0].startswith("That saved comparison does not exist or is not shared with you")
    assert all(chat is None or chat == {"__type__": "update"} for chat in outputs[6:10])


def _saved(team: Any, author: Any, keys: list[str], *, system: str = "", restricted: bool = True) -> Comparison:
    access = resolve_access(author, team.slug)
    settings = ColumnSettings(system_prompt=system, temperature=0.0, max_tokens=MAX_TOKENS).as_dict()
    answer = {"key": "", "model": "", "text": "The sea is wide.", "ttft_s": 0.05, "tokens_per_second": 120.0,
              "tokens": 6, "finish_reason": "stop"}  # fmt: skip
    return comparisons.save_comparison(
        access=access,
        title="Saved one",
        columns=[{"key": key, "label": f"model {n}", "settings": settings} for n, key in enumerate(keys)],
        turns=[{"prompt": PROMPT, "answers": [{**answer, "key": key} for key in keys]}],
        restricted=restricted,
    )


def test_comparison_is_private_to_its_author_until_shared(acme: Any, alice: Any, bob: Any, login: Any) -> None:
    carol = member(acme, Role.MEMBER, "carol")
    saved = _saved(acme, bob, ["base:1", "base:2"])
    url = reverse("serving:comparison", args=["acme", saved.pk])
    assert login(bob).get(url).status_code == 200
    assert login(carol).get(url).status_code == 404
    assert "Saved one" not in login(carol).get(reverse("serving:comparisons", args=["acme"])).content.decode()
    shared = login(alice).post(
        reverse("serving:comparison_share", args=["acme", saved.pk]),
        {"member": _membership_id(acme, carol), "level": "view"},
    )
    assert shared.status_code == 302
    assert login(carol).get(url).status_code == 200
    assert AuditEvent.objects.for_team(acme).filter(action="object.shared").count() == 1


def _membership_id(team: Any, user: Any) -> int:
    return Membership.objects.get(team=team, user=user).pk


def test_author_opens_a_comparison_to_the_whole_team(acme: Any, bob: Any, login: Any) -> None:
    carol = member(acme, Role.MEMBER, "carol")
    saved = _saved(acme, bob, ["base:1", "base:2"])
    login(bob).post(reverse("serving:comparison_share", args=["acme", saved.pk]), {"restricted": "0"})
    assert login(carol).get(reverse("serving:comparison", args=["acme", saved.pk])).status_code == 200


def test_teammate_cannot_make_a_team_comparison_private(acme: Any, alice: Any, bob: Any, login: Any) -> None:
    saved = _saved(acme, alice, ["base:1", "base:2"], restricted=False)
    response = login(bob).post(reverse("serving:comparison_share", args=["acme", saved.pk]), {"restricted": "1"})
    assert response.status_code == 403
    assert Comparison.objects.for_team(acme).get().restricted is False


def test_viewer_reads_a_comparison_opened_to_the_team(acme: Any, alice: Any, login: Any) -> None:
    saved = _saved(acme, alice, ["base:1", "base:2"], restricted=False)
    viewer = member(acme, Role.VIEWER, "vera")
    page = login(viewer).get(reverse("serving:comparison", args=["acme", saved.pk])).content.decode()
    assert page.count("The sea is wide.") == 2
    assert "Continue in the playground" not in page


def test_member_cannot_share_with_named_members(acme: Any, bob: Any, login: Any) -> None:
    carol = member(acme, Role.MEMBER, "carol")
    saved = _saved(acme, bob, ["base:1", "base:2"])
    response = login(bob).post(
        reverse("serving:comparison_share", args=["acme", saved.pk]),
        {"member": _membership_id(acme, carol), "level": "view"},
    )
    assert response.status_code == 403
    assert login(carol).get(reverse("serving:comparison", args=["acme", saved.pk])).status_code == 404


def test_author_deletes_a_saved_comparison(acme: Any, bob: Any, login: Any) -> None:
    saved = _saved(acme, bob, ["base:1", "base:2"])
    url = reverse("serving:comparison_delete", args=["acme", saved.pk])
    assert "Delete “Saved one”?" in login(bob).get(url).content.decode()
    response = login(bob).post(url)
    assert response.status_code == 302
    assert not Comparison.objects.for_team(acme).exists()
    assert AuditEvent.objects.for_team(acme).filter(action="comparison.deleted").count() == 1


def test_teammate_cannot_delete_a_comparison_opened_to_the_team(acme: Any, alice: Any, bob: Any, login: Any) -> None:
    saved = _saved(acme, alice, ["base:1", "base:2"], restricted=False)
    response = login(bob).post(reverse("serving:comparison_delete", args=["acme", saved.pk]))
    assert response.status_code == 403
    assert Comparison.objects.for_team(acme).exists()


# --- prompt presets -----------------------------------------------------------------------------


def test_preset_saved_in_the_playground_applies_to_every_column(
    studio_server: str, bob: Any, acme: Any, starter_model: Any
) -> None:
    client = signed_in(studio_server, "bob")
    session = open_playground(client, "acme")
    status, *pickers = completed(call(client, session, "save_preset", ["Pirate", "You are a pirate.", 0.2, 0.9, 64]))
    preset = PromptPreset.objects.for_team(acme).get()
    assert "Saved the preset “Pirate”" in status
    assert [("Pirate", str(preset.pk))] == [tuple(choice) for choice in pickers[0]["choices"]]
    applied = completed(call(client, session, "apply_preset", [str(preset.pk)]))
    assert applied == ["You are a pirate.", 0.2, 0.9, 64] * 5
    assert AuditEvent.objects.for_team(acme).filter(action="preset.created").count() == 1


def test_another_teams_preset_does_not_apply(
    studio_server: str, bob: Any, globex: Any, charlie: Any, starter_model: Any
) -> None:
    theirs = PromptPreset.objects.create(team=globex, name="Secret", system_prompt="globex only", created_by=charlie)
    client = signed_in(studio_server, "bob")
    message = refused(call(client, open_playground(client, "acme"), "apply_preset", [str(theirs.pk)]))
    assert message.startswith("Pick one of the team's presets first")


def test_member_creates_and_deletes_a_preset_on_the_presets_page(acme: Any, bob: Any, login: Any) -> None:
    url = reverse("serving:presets", args=["acme"])
    response = login(bob).post(
        url, {"name": "Terse", "system_prompt": "Answer in one line.", "temperature": "0.3", "top_p": "1",
              "max_tokens": "100000"},
    )  # fmt: skip
    assert response.status_code == 302
    preset = PromptPreset.objects.for_team(acme).get()
    assert (preset.system_prompt, preset.max_tokens) == ("Answer in one line.", 512)
    assert "Terse" in login(bob).get(url).content.decode()
    login(bob).post(reverse("serving:preset_delete", args=["acme", preset.pk]))
    assert not PromptPreset.objects.for_team(acme).exists()
    assert AuditEvent.objects.for_team(acme).filter(action="preset.deleted").count() == 1


def test_duplicate_preset_name_is_explained_next_to_the_field(acme: Any, bob: Any, login: Any) -> None:
    url = reverse("serving:presets", args=["acme"])
    form = {"name": "Terse", "system_prompt": "", "temperature": "0.3", "top_p": "1", "max_tokens": "50"}
    login(bob).post(url, form)
    response = login(bob).post(url, form)
    assert response.status_code == 400
    assert "already has a preset named “Terse”" in response.content.decode()


def test_teammate_cannot_delete_someone_elses_preset(acme: Any, alice: Any, bob: Any, login: Any) -> None:
    preset = PromptPreset.objects.create(team=acme, name="Alice's", created_by=alice)
    response = login(bob).post(reverse("serving:preset_delete", args=["acme", preset.pk]))
    assert response.status_code == 403
    assert PromptPreset.objects.for_team(acme).exists()


# --- the pages ----------------------------------------------------------------------------------


def test_playground_page_embeds_the_compare_view(acme: Any, bob: Any, login: Any) -> None:
    html = login(bob).get(reverse("serving:playground", args=["acme"])).content.decode()
    assert 'src="/play/?team=acme&amp;view=compare"' in html
    assert 'title="Side-by-side model playground"' in html
    assert reverse("serving:comparisons", args=["acme"]) in html
    assert reverse("serving:presets", args=["acme"]) in html


def test_playground_frame_is_sized_to_its_content_by_a_static_script(acme: Any, bob: Any, login: Any) -> None:
    html = login(bob).get(reverse("serving:playground", args=["acme"])).content.decode()
    frame = html[html.index('<iframe id="playground-frame"') :].split(">")[0]
    assert "data-fit-content" in frame
    assert '<script src="/static/js/frame-height.js" defer></script>' in html


def test_playground_page_reopens_a_saved_comparison(acme: Any, bob: Any, login: Any) -> None:
    html = login(bob).get(reverse("serving:playground", args=["acme"]) + "?comparison=7").content.decode()
    assert 'src="/play/?team=acme&amp;view=compare&amp;comparison=7"' in html


def test_playground_page_tells_a_viewer_their_role_cannot_chat(acme: Any, login: Any) -> None:
    viewer = member(acme, Role.VIEWER, "vera")
    response = login(viewer).get(reverse("serving:playground", args=["acme"]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Your role (Viewer) cannot chat with models" in html
    assert "<iframe" not in html


def test_comparisons_list_and_transcript_show_answers_side_by_side_with_figures(
    acme: Any, bob: Any, login: Any
) -> None:
    saved = _saved(acme, bob, ["base:1", "base:2"])
    listing = login(bob).get(reverse("serving:comparisons", args=["acme"])).content.decode()
    assert "Saved one" in listing and "model 0 · model 1" in listing
    page = login(bob).get(reverse("serving:comparison", args=["acme", saved.pk])).content.decode()
    assert page.count("The sea is wide.") == 2
    assert page.count("TTFT 0.05 s · 120 tok/s · 6 tokens") == 2
    assert f"/t/acme/playground/?comparison={saved.pk}" in page
    assert "Open to the whole team" in page


# --- which engine serves a column: on the in-process one, columns on one base model answer in turn --------------

IN_PROCESS = EngineInfo("in-process", "in-process (vLLM is not installed or is turned off)")
VLLM = EngineInfo("vllm", "vLLM")


def column_run(position: int, base: str, engine: EngineInfo = IN_PROCESS) -> compare.ColumnRun:
    servable = Servable(f"base:{position}", f"model {position}", f"served-{position}", base, None)
    return compare.ColumnRun(position, servable, ColumnSettings(), history=[], engine=engine)


def test_column_waiting_on_the_in_process_engine_says_which_column_it_waits_for() -> None:
    first, second, other = column_run(0, "/models/starter"), column_run(1, "/models/starter"), column_run(2, "/x")
    first.update = StreamUpdate("The", "The", 0.1, 0.1, 1)
    runs = [first, second, other]
    waiting = second.waiting_for(runs)
    assert waiting == 1 and other.waiting_for(runs) is None
    note = "Waiting for column 1: the in-process engine answers one column at a time per base model."
    assert second.chat("Hi", waiting)[-1]["content"] == note
    assert second.figures(waiting) == f"{note} · served by the in-process engine"
    assert other.figures(None) == f"{compare.WAITING} · served by the in-process engine"
    first.done = True
    assert second.waiting_for(runs) is None


def test_columns_on_vllm_never_wait_for_each_other() -> None:
    first, second = column_run(0, "/models/starter", VLLM), column_run(1, "/models/starter", VLLM)
    first.update = StreamUpdate("The", "The", 0.1, 0.1, 1)
    assert second.waiting_for([first, second]) is None
    assert second.figures(None) == f"{compare.WAITING} · served by vLLM"


def test_a_column_on_vllm_does_not_hold_up_one_on_the_in_process_engine() -> None:
    on_vllm, in_process = column_run(0, "/models/starter", VLLM), column_run(1, "/models/starter")
    on_vllm.update = StreamUpdate("The", "The", 0.1, 0.1, 1)
    assert in_process.waiting_for([on_vllm, in_process]) is None


def test_streaming_figures_say_so_far_and_name_the_engine_until_the_answer_is_complete() -> None:
    run = column_run(0, "/models/starter", VLLM)
    run.update = StreamUpdate(" sea", "The sea", 0.1, 0.2, 2)
    assert run.figures().endswith("2 tokens so far · served by vLLM")
    run.done = True
    assert run.figures().endswith("2 tokens · served by vLLM")


def test_waiting_note_is_not_sent_to_the_model_as_an_answer() -> None:
    first, second = column_run(0, "/models/starter"), column_run(1, "/models/starter")
    first.update = StreamUpdate("The", "The", 0.1, 0.1, 1)
    assert compare.chat_history(second.chat("Hi", second.waiting_for([first, second]))) == [
        {"role": "user", "content": "Hi"}
    ]


def test_playground_intro_is_true_for_both_engines() -> None:
    config = build_playground().get_config_file()
    notice = next(c for c in config["components"] if c["props"].get("elem_id") == "compare-notice")
    text = notice["props"]["value"]
    assert "On vLLM every column answers at the same time" in text
    assert "where the in-process engine serves a model, columns on the same base model" in text


# --- JSON schema and tools per column -----------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def refusal_of(**values: str) -> str:
    """The message column 2 gets for these settings (nothing is generated)."""
    settings = {"json_schema": "", "tools": "", **values}
    with pytest.raises(gr.Error) as error:
        compare._column_settings(2, "", 0.7, 1.0, 64, "", settings["json_schema"], settings["tools"])
    return str(error.value.message)


def test_json_schema_that_is_not_json_is_refused_naming_the_column_and_the_field() -> None:
    message = refusal_of(json_schema='{"type": "object",}')
    assert message.startswith("Column 2: JSON schema: this is not valid JSON (")
    assert "line 1, column 19" in message and "Check the quotes and commas" in message


def test_json_schema_that_is_not_a_schema_is_refused_saying_why() -> None:
    assert refusal_of(json_schema='["city"]').startswith("Column 2: JSON schema: write one JSON object")
    message = refusal_of(json_schema='{"type": "objekt"}')
    assert message.startswith("Column 2: JSON schema: this is not a valid JSON schema (")


def test_tools_that_are_not_json_are_refused_naming_the_column_and_the_field() -> None:
    assert refusal_of(tools="[{name: get_weather}]").startswith("Column 2: Tools: this is not valid JSON (")


def test_tools_without_a_name_or_declared_twice_are_refused_naming_the_tool() -> None:
    assert refusal_of(tools='[{"type": "function", "function": {}}]').startswith(
        "Column 2: Tools: tool 1 needs a name of 1 to 64 letters"
    )
    assert "“get_weather” is declared twice" in refusal_of(tools=json.dumps([WEATHER_TOOL, WEATHER_TOOL]))
    bad_parameters = {"name": "f", "parameters": {"type": 3}}
    assert refusal_of(tools=json.dumps([bad_parameters])).startswith(
        "Column 2: Tools: the parameters of “f” are not a valid JSON schema ("
    )


def test_schema_and_tools_reach_the_request_in_openais_shape() -> None:
    bare_function = WEATHER_TOOL["function"]  # the "function" part alone is accepted too
    column = ColumnSettings.clean(json_schema='{"type": "object"}', tools=json.dumps([bare_function]))
    sampling = column.sampling()
    assert sampling.response_format() == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }
    assert list(sampling.tools) == [WEATHER_TOOL]
    assert ColumnSettings().sampling().response_format() is None and ColumnSettings().sampling().tools == ()


def test_tool_calls_show_as_cards_kept_out_of_the_conversation() -> None:
    run = column_run(0, "/models/starter", VLLM)
    call = ToolCall(0, "call_1", "get_weather", '{"city": "Oslo"}')
    run.update = StreamUpdate("", "", 0.1, 0.2, 5, done=True, finish_reason="tool_calls", tool_calls=(call,))
    run.done = True
    card = run.chat("Weather?")[-1]
    assert card["metadata"] == {"title": "Tool call: get\\_weather"}
    assert card["content"] == '```json\n{\n  "city": "Oslo"\n}\n```'
    assert compare.chat_history(run.chat("Weather?")) == [{"role": "user", "content": "Weather?"}]
    assert run.answer()["tool_calls"] == [
        {"index": 0, "id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    ]
    assert run.figures().endswith("5 tokens · 1 tool call · served by vLLM")


def test_a_schema_or_tools_on_the_in_process_engine_show_why_in_the_column(
    studio_server: str, acme: Any, alice: Any, starter_model: Any
) -> None:
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    key = f"base:{starter_model.pk}"
    with_schema, with_tools = (
        column(key, json_schema='{"type": "object"}'),
        column(key, tools=json.dumps([WEATHER_TOOL])),
    )
    outputs = completed(call(client, session, "compare", compare_data(PROMPT, with_schema, with_tools)))
    for line in outputs[4:6]:
        assert line.startswith("**No answer:** This model is served by the in-process engine, which does not support")
        assert "install vLLM" in line
    assert "\\`response\\_format\\`" in outputs[4] and "\\`tools\\`" in outputs[5]


def test_bad_tools_json_is_refused_through_the_api_and_nothing_is_generated(
    studio_server: str, alice: Any, starter_model: Any
) -> None:
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    key = f"base:{starter_model.pk}"
    message = refused(call(client, session, "compare", compare_data(PROMPT, column(key), column(key, tools="[{"))))
    assert message.startswith("Column 2: Tools: this is not valid JSON (")
    assert "Traceback" not in message
    assert usage_count() == 0


def test_saved_comparison_keeps_each_columns_tools_and_reopens_with_them(
    studio_server: str, alice: Any, acme: Any, starter_model: Any
) -> None:
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    keys = [f"base:{starter_model.pk}"] * 2
    completed(call(client, session, "compare", compare_data(PROMPT, *(column(key) for key in keys))))
    tools = json.dumps([WEATHER_TOOL])
    completed(call(client, session, "save_comparison", save_data("With tools", keys, tools=tools)))
    saved = Comparison.objects.for_team(acme).get()
    assert [column["settings"]["tools"] for column in saved.columns] == [tools, tools]
    assert saved.columns[0]["settings"]["json_schema"] == ""
    reopened = completed(call(client, open_playground(client, "acme"), "load_comparison", [], comparison=str(saved.pk)))
    first_column = reopened[14 : 14 + len(compare.SETTING_FIELDS)]
    assert dict(zip(compare.SETTING_FIELDS, first_column, strict=True))["tools"] == tools


def test_open_in_playground_puts_the_model_version_in_the_first_column(
    studio_server: str, alice: Any, acme: Any, starter_model: Any, lora_version: ModelVersion
) -> None:
    client = signed_in(studio_server, "alice")
    key = f"version:{lora_version.pk}"
    outputs = completed(call(client, open_playground(client, "acme", model=key), "models", [], model=key))
    first, second = outputs[1], outputs[2]
    assert first["value"] == key
    assert second["value"] == f"base:{starter_model.pk}"


# ---- which engine serves a model, on its page ----------------------------------------------------------------


def test_a_model_versions_page_shows_which_engine_serves_it(
    alice: Any, login: Any, model_version: ModelVersion, inference_server: str
) -> None:
    client = login(alice)
    fragment = reverse("serving:model_engine", args=[model_version.team.slug, f"version:{model_version.pk}"])

    page = client.get(reverse("training:version", args=[model_version.team.slug, model_version.pk]))
    answer = client.get(fragment)

    assert f'hx-get="{fragment}"' in page.content.decode()
    text = answer.content.decode()
    assert answer.status_code == 200 and "in-process" in text
    assert "vLLM is not installed or is turned off" in text  # the session's inference server runs --engine builtin


def test_the_engine_of_another_teams_version_reads_as_no_such_model(
    charlie: Any, login: Any, model_version: ModelVersion
) -> None:
    url = reverse("serving:model_engine", args=[model_version.team.slug, f"version:{model_version.pk}"])
    own_team = reverse("serving:model_engine", args=["globex", f"version:{model_version.pk}"])

    assert login(charlie).get(url).status_code == 404
    assert login(charlie).get(own_team).status_code == 404


# --- guard policies ---------------------------------------------------------------------------------------------


def test_a_deployment_column_refuses_a_blocked_topic_while_the_other_column_answers(
    studio_server: str, alice: Any, owner: Any, starter_model: Any, lora_version: ModelVersion
) -> None:
    from serving_app import deployments, guardrails

    deployment = deployments.create_deployment(access=owner, name="support-bot", version=lora_version)
    topics = [{"name": "lock picking", "terms": ["bump key"], "patterns": []}]
    guardrails.save_policy(
        access=owner, deployment=deployment, settings={"blocked_topics": topics, "refusal_message": "Not here."}
    )
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    prompt = "Where do I get a bump key?"
    events = call(
        client, session, "compare",
        compare_data(prompt, column(f"deployment:{deployment.pk}"), column(f"version:{lora_version.pk}")),
    )  # fmt: skip
    chats = completed(events)[0:4]
    assert last_answer(chats[0]) == "Not here."
    assert last_answer(chats[1]) and last_answer(chats[1]) != "Not here."
    blocked = AuditEvent.objects.get(action="guard.blocked")
    assert (blocked.details["via"], blocked.details["category"], blocked.actor_label) == (
        "playground", "lock picking", "alice",
    )  # fmt: skip
