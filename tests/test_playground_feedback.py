"""Thumbs up / thumbs down on playground answers: the votes, their export as a feedback dataset (KTO), the
export button and API endpoint, and the Compare tab's handlers driven directly (no browser, no server); one
test goes through Gradio's HTTP API on the real stack, to show the answer voted on stays on the server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.test import Client

from accounts import services as account_services
from accounts.models import AuditEvent, Team
from accounts.permissions import resolve_access, resolve_key_access
from accounts.roles import Role
from datasets_app import services as dataset_services
from datasets_app.engine.rows import read_rows_file
from datasets_app.models import DatasetVersion, VersionStatus
from serving_app import feedback
from serving_app.engine.client import StreamUpdate
from serving_app.models import PlaygroundVote
from serving_app.playground import build_playground
from serving_app.ui import compare
from serving_app.ui import feedback as feedback_ui
from tests.test_gradio_mount import signed_in
from tests.test_playground import call, column, compare_data, completed, last_answer, open_playground, refused
from training_app.models import ModelVersion

QUESTION = [{"role": "user", "content": "How do I keep cut apples from turning brown?"}]
GOOD = "Brush the slices with lemon juice: the acid slows the browning."
BAD = "Buy fresher apples."
EXPORT_URL = "/t/acme/playground/feedback/export"
API_EXPORT_URL = "/api/v1/teams/acme/playground/feedback/export"


def voted(
    team: Team,
    user: Any,
    label: bool,
    *,
    prompt: list[dict[str, str]] | None = None,
    answer: str = GOOD,
    model: str = "base:1",
) -> PlaygroundVote:
    """A stored vote (the key need not exist: exporting reads the stored conversation and answer)."""
    turns = QUESTION if prompt is None else prompt
    return PlaygroundVote.objects.create(
        team=team,
        user=user,
        model=model,
        model_label="Some model",
        prompt=turns,
        answer=answer,
        label=label,
        fingerprint=feedback.answer_fingerprint(model, turns, answer),
    )


def vote_on(access: Any, version: ModelVersion, label: bool, answer: str = GOOD) -> PlaygroundVote:
    return feedback.record_vote(
        access=access, model_key=f"version:{version.pk}", prompt=QUESTION, answer=answer, label=label
    )


# --- votes -----------------------------------------------------------------------------------------------


def test_a_vote_keeps_the_model_the_conversation_and_the_answer(
    owner: Any, alice: Any, model_version: ModelVersion
) -> None:
    vote_on(owner, model_version, True)
    stored = PlaygroundVote.objects.for_team(owner.team).get()
    assert (stored.user, stored.model, stored.model_label) == (alice, f"version:{model_version.pk}", str(model_version))
    assert (stored.prompt, stored.answer, stored.label, stored.exported_at) == (QUESTION, GOOD, True, None)


def test_voting_again_on_the_same_answer_changes_the_vote(owner: Any, model_version: ModelVersion) -> None:
    first = vote_on(owner, model_version, True)
    second = vote_on(owner, model_version, False)
    assert second.pk == first.pk and second.updated_at >= first.updated_at
    assert list(PlaygroundVote.objects.for_team(owner.team).values_list("label", flat=True)) == [False]


def test_teammates_vote_on_the_same_answer_separately(
    owner: Any, bob: Any, acme: Team, model_version: ModelVersion
) -> None:
    vote_on(owner, model_version, True)
    vote_on(resolve_access(bob, "acme"), model_version, False)
    votes = PlaygroundVote.objects.for_team(acme).order_by("user__username")
    assert [(vote.user.username, vote.label) for vote in votes] == [("alice", True), ("bob", False)]


def test_an_exported_vote_can_no_longer_be_changed(owner: Any, model_version: ModelVersion) -> None:
    vote_on(owner, model_version, True)
    feedback.export_feedback(access=owner)
    with pytest.raises(ValidationError, match="already in the team's feedback dataset"):
        vote_on(owner, model_version, False)
    assert PlaygroundVote.objects.for_team(owner.team).get().label is True


def test_a_viewer_cannot_vote(user_in_role: Any, model_version: ModelVersion) -> None:
    viewer = resolve_access(user_in_role(Role.VIEWER), "acme")
    with pytest.raises(PermissionDenied):
        vote_on(viewer, model_version, True)
    assert not PlaygroundVote.objects.unscoped().exists()


def test_a_team_api_key_cannot_vote(owner: Any, model_version: ModelVersion) -> None:
    key, _ = account_services.create_team_api_key(access=owner, name="ci", role=Role.MEMBER)
    with pytest.raises(PermissionDenied, match="sign in"):
        vote_on(resolve_key_access(key, "acme"), model_version, True)


def test_a_model_the_person_may_no_longer_use_refuses_the_vote(
    acme: Team, bob: Any, model_version: ModelVersion
) -> None:
    ModelVersion.objects.for_team(acme).filter(pk=model_version.pk).update(restricted=True)
    with pytest.raises(Http404):
        vote_on(resolve_access(bob, "acme"), model_version, True)
    assert not PlaygroundVote.objects.unscoped().exists()


def test_an_empty_answer_or_a_conversation_not_ending_with_the_question_is_refused(
    owner: Any, model_version: ModelVersion
) -> None:
    key = f"version:{model_version.pk}"
    with pytest.raises(ValidationError, match="nothing to vote on"):
        feedback.record_vote(access=owner, model_key=key, prompt=QUESTION, answer="  ", label=True)
    answered = [*QUESTION, {"role": "assistant", "content": GOOD}]
    with pytest.raises(ValidationError, match="must end with the message"):
        feedback.record_vote(access=owner, model_key=key, prompt=answered, answer=GOOD, label=True)
    assert not PlaygroundVote.objects.unscoped().exists()


# --- exporting votes as a feedback dataset -----------------------------------------------------------------


def test_export_makes_a_feedback_dataset_version_that_validates_with_the_labels(
    acme: Team, alice: Any, bob: Any
) -> None:
    system = {"role": "system", "content": "You are a kitchen helper."}
    voted(acme, alice, True, prompt=[system, *QUESTION])
    voted(acme, bob, False, answer=BAD)
    result = feedback.export_feedback(access=resolve_access(alice, "acme"))
    assert (result.exported, result.left_out, result.restricted) == (2, 0, 0)
    assert result.version.status == VersionStatus.VALIDATING  # validated in the background, like any upload
    dataset_services.run_validation(result.version.pk)
    version = DatasetVersion.objects.for_team(acme).select_related("dataset").get(pk=result.version.pk)
    assert (version.dataset.name, version.status, version.kind, version.row_count) == (
        "Playground feedback", VersionStatus.READY, "feedback", 2
    )  # fmt: skip
    rows = list(read_rows_file(version.rows_path))
    assert rows[0] == {
        "prompt": [system, *QUESTION],
        "completion": [{"role": "assistant", "content": GOOD}],
        "label": True,
    }
    assert (rows[1]["completion"][0]["content"], rows[1]["label"]) == (BAD, False)
    assert not PlaygroundVote.objects.for_team(acme).filter(exported_at__isnull=True).exists()
    event = AuditEvent.objects.for_team(acme).get(action="feedback.exported")
    assert (event.details["rows"], event.details["good"], event.details["version"]) == (2, 1, 1)


def test_exporting_twice_does_not_duplicate_and_says_there_is_nothing_new(acme: Team, alice: Any) -> None:
    access = resolve_access(alice, "acme")
    voted(acme, alice, True)
    feedback.export_feedback(access=access)
    with pytest.raises(ValidationError, match="No new playground votes to export"):
        feedback.export_feedback(access=access)
    assert DatasetVersion.objects.for_team(acme).count() == 1
    assert AuditEvent.objects.for_team(acme).filter(action="feedback.exported").count() == 1


def test_new_votes_become_the_next_version_of_the_same_dataset(acme: Team, alice: Any) -> None:
    access = resolve_access(alice, "acme")
    voted(acme, alice, True)
    first = feedback.export_feedback(access=access).version
    voted(acme, alice, False, prompt=[{"role": "user", "content": "Another question?"}], answer=BAD)
    second = feedback.export_feedback(access=access).version
    assert (second.dataset_id, second.number) == (first.dataset_id, 2)
    dataset_services.run_validation(second.pk)
    rows = list(read_rows_file(DatasetVersion.objects.for_team(acme).get(pk=second.pk).rows_path))
    assert [(row["prompt"][0]["content"], row["label"]) for row in rows] == [("Another question?", False)]


def test_votes_on_restricted_model_versions_are_held_back(acme: Team, alice: Any, model_version: ModelVersion) -> None:
    ModelVersion.objects.for_team(acme).filter(pk=model_version.pk).update(restricted=True)
    voted(acme, alice, True, model=f"version:{model_version.pk}")
    with pytest.raises(ValidationError, match="restricted model version"):
        feedback.export_feedback(access=resolve_access(alice, "acme"))
    voted(acme, alice, False, answer=BAD)
    result = feedback.export_feedback(access=resolve_access(alice, "acme"))
    assert (result.exported, result.restricted) == (1, 1)
    assert PlaygroundVote.objects.for_team(acme).get(exported_at__isnull=True).model == f"version:{model_version.pk}"


def test_another_team_cannot_see_or_export_the_votes(
    acme: Team, alice: Any, charlie: Any, globex: Team, login: Callable[[Any], Client], bearer: Any
) -> None:
    voted(acme, alice, True)
    with pytest.raises(ValidationError, match="No new playground votes"):
        feedback.export_feedback(access=resolve_access(charlie, "globex"))
    assert feedback.pending_exports(globex) == 0
    assert login(charlie).post(EXPORT_URL).status_code == 404
    assert bearer(charlie).post(API_EXPORT_URL).status_code == 404
    assert "Export 1 vote" not in login(charlie).get("/t/globex/arena/leaderboard/").content.decode()
    assert not DatasetVersion.objects.unscoped().exists()
    assert PlaygroundVote.objects.for_team(acme).get().exported_at is None


# --- the export button and the API endpoint -----------------------------------------------------------------


def test_leaderboard_offers_the_export_with_the_number_of_votes(
    acme: Team, alice: Any, login: Callable[[Any], Client]
) -> None:
    client = login(alice)
    page = client.get("/t/acme/arena/leaderboard/").content.decode()
    form = page.split('id="feedback-export"')[1].split("</form>")[0]
    assert "disabled" in form and "Export 0 votes as a feedback dataset" in form and "Nothing to export" in form
    voted(acme, alice, True)
    voted(acme, alice, False, answer=BAD)
    form = client.get("/t/acme/arena/leaderboard/").content.decode().split('id="feedback-export"')[1]
    assert "Export 2 votes as a feedback dataset" in form.split("</form>")[0]
    assert "disabled" not in form.split("</form>")[0]


def test_export_button_makes_the_dataset_and_opens_it(acme: Team, alice: Any, login: Callable[[Any], Client]) -> None:
    voted(acme, alice, True)
    client = login(alice)
    response = client.post(EXPORT_URL)
    version = DatasetVersion.objects.for_team(acme).get()
    assert response["Location"] == f"/t/acme/datasets/{version.dataset_id}/v1/"
    assert "Exported 1 vote(s) to Playground feedback v1" in client.get(response["Location"]).content.decode()


def test_export_button_with_nothing_to_export_says_so(alice: Any, login: Callable[[Any], Client]) -> None:
    page = login(alice).post(EXPORT_URL, follow=True)
    assert page.status_code == 200
    assert "No new playground votes to export" in page.content.decode()
    assert not DatasetVersion.objects.unscoped().exists()


def test_export_is_post_only(alice: Any, login: Callable[[Any], Client]) -> None:
    assert login(alice).get(EXPORT_URL).status_code == 405


def test_api_export_makes_the_dataset_version(acme: Team, alice: Any, bearer: Any) -> None:
    voted(acme, alice, True)
    voted(acme, alice, False, answer=BAD, model="base:2")
    response = bearer(alice).post(API_EXPORT_URL)
    assert response.status_code == 201, response.content
    version = DatasetVersion.objects.for_team(acme).get()
    assert response.json() == {
        "dataset_id": version.dataset_id, "number": 1, "status": "validating", "exported": 2, "left_out": 0,
        "restricted": 0,
    }  # fmt: skip
    assert bearer(alice).get(f"/api/v1/teams/acme/datasets/{version.dataset_id}").status_code == 200


def test_api_export_with_nothing_to_export_gets_400_with_the_message(alice: Any, bearer: Any) -> None:
    response = bearer(alice).post(API_EXPORT_URL)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("No new playground votes to export")
    assert not DatasetVersion.objects.unscoped().exists()


def test_viewer_cannot_export_and_is_not_offered_the_button(
    acme: Team, alice: Any, user_in_role: Any, login: Callable[[Any], Client], bearer: Any
) -> None:
    voted(acme, alice, True)
    viewer = user_in_role(Role.VIEWER)
    client = login(viewer)
    assert 'id="feedback-export"' not in client.get("/t/acme/arena/leaderboard/").content.decode()
    assert client.post(EXPORT_URL).status_code == 403
    assert bearer(viewer).post(API_EXPORT_URL).status_code == 403
    assert not DatasetVersion.objects.unscoped().exists()
    assert PlaygroundVote.objects.for_team(acme).get().exported_at is None


# --- the Compare tab's handlers, called directly -------------------------------------------------------------


def gradio_request(user: Any) -> Any:
    """What Gradio hands a handler for ``user``'s browser: their session cookie and address."""
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    return SimpleNamespace(cookies={settings.SESSION_COOKIE_NAME: cookie}, client=SimpleNamespace(host="127.0.0.1"))


@pytest.fixture
def fake_answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Each model answers what ``answers[key]`` says, in two pieces, without an inference server."""
    answers: dict[str, Any] = {}

    async def stream(servable: Any, messages: Any, sampling: Any, **kwargs: Any) -> AsyncIterator[StreamUpdate]:
        text = answers[servable.key]
        yield StreamUpdate(text[:4], text[:4], 0.1, 0.1, 1)
        yield StreamUpdate(text[4:], text, 0.1, 0.2, 2, done=True, finish_reason="stop")

    monkeypatch.setattr(compare, "stream_answer", stream)
    return answers


def compare_inputs(prompt: str, *columns: tuple[str, str]) -> list[Any]:
    """``stream_compare``'s inputs after the team slug: the prompt, then (model, system prompt) per column."""
    values: list[Any] = [prompt, str(len(columns))]
    for position in range(compare.COLUMNS):
        key, system = columns[position] if position < len(columns) else (None, "")
        values += [key, [], system, 0.0, 1.0, 16, ""]
    return [*values, []]


def run_compare(user: Any, *inputs: Any) -> tuple[Any, ...]:
    """The last update ``stream_compare`` yields for ``user`` in acme."""

    request = gradio_request(user)
    stream: Any = compare.stream_compare  # its 40-odd inputs are spelled out one by one

    async def collect() -> list[tuple[Any, ...]]:
        return [outputs async for outputs in stream("acme", *inputs, request)]

    return async_to_sync(collect)()[-1]


def cast(user: Any, column: str, vote: str, answered: Any, team: str = "acme") -> str:
    return async_to_sync(feedback_ui.cast_feedback)(team, column, vote, answered, gradio_request(user))


def answered_state(outputs: tuple[Any, ...]) -> list[Any]:
    """The ``answered`` state among ``stream_compare``'s outputs (after chats, figures, turns and the prompt)."""
    return list(outputs[2 * compare.COLUMNS + 2])


def feedback_rows(outputs: tuple[Any, ...]) -> list[Any]:
    start = 2 * compare.COLUMNS + 3
    return list(outputs[start : start + compare.COLUMNS])


def test_thumbs_buttons_appear_under_each_complete_answer_and_record_the_vote(
    acme: Team, alice: Any, model_version: ModelVersion, base_model_row: Any, fake_answers: dict[str, Any]
) -> None:
    tuned, base = f"version:{model_version.pk}", f"base:{base_model_row.pk}"
    fake_answers.update({tuned: GOOD, base: BAD})
    question = QUESTION[0]["content"]
    outputs = run_compare(alice, *compare_inputs(question, (tuned, "You are a kitchen helper."), (base, "")))
    assert [row.visible for row in feedback_rows(outputs)] == [True, True, False, False]
    answered = answered_state(outputs)

    note = cast(alice, "1", "up", answered)
    assert "You voted **Thumbs up**" in note
    vote = PlaygroundVote.objects.for_team(acme).get()
    assert (vote.model, vote.answer, vote.label) == (tuned, GOOD, True)
    assert vote.prompt == [{"role": "system", "content": "You are a kitchen helper."}, *QUESTION]

    assert "You voted **Thumbs down**" in cast(alice, "1", "down", answered)
    cast(alice, "2", "down", answered)
    votes = PlaygroundVote.objects.for_team(acme).order_by("pk")
    assert [(vote.model, vote.label) for vote in votes] == [(tuned, False), (base, False)]
    assert votes[1].prompt == QUESTION


def test_a_column_without_an_answer_offers_no_vote_and_a_vote_there_is_refused(
    alice: Any, base_model_row: Any, fake_answers: dict[str, Any]
) -> None:
    base = f"base:{base_model_row.pk}"
    fake_answers[base] = GOOD
    outputs = run_compare(alice, *compare_inputs("Hi", (base, ""), (base, "")))
    with pytest.raises(gr.Error, match="Nothing to vote on in that column yet"):
        cast(alice, "3", "up", answered_state(outputs))
    with pytest.raises(gr.Error, match="Nothing to vote on"):
        cast(alice, "1", "up", [None] * compare.COLUMNS)
    assert not PlaygroundVote.objects.unscoped().exists()


def test_clear_hides_the_thumbs_buttons_and_forgets_the_answers(alice: Any) -> None:
    outputs = async_to_sync(compare.clear_conversation)("acme", gradio_request(alice))
    assert outputs[-compare.COLUMNS - 1] == [None] * compare.COLUMNS
    assert [row.visible for row in outputs[-compare.COLUMNS :]] == [False] * compare.COLUMNS


def test_a_viewer_is_told_their_role_cannot_vote(user_in_role: Any, model_version: ModelVersion) -> None:
    answered = [feedback_ui.vote_subject(f"version:{model_version.pk}", "support v1", QUESTION, GOOD)]
    with pytest.raises(gr.Error, match=r"Your role \(Viewer\) does not allow this"):
        cast(user_in_role(Role.VIEWER), "1", "up", answered)
    assert not PlaygroundVote.objects.unscoped().exists()


def test_an_outsider_cannot_vote_in_another_teams_playground(
    charlie: Any, acme: Team, model_version: ModelVersion
) -> None:
    answered = [feedback_ui.vote_subject(f"version:{model_version.pk}", "support v1", QUESTION, GOOD)]
    with pytest.raises(gr.Error, match="No such team"):
        cast(charlie, "1", "up", answered)
    assert not PlaygroundVote.objects.unscoped().exists()


def test_an_exported_vote_refused_in_the_playground_says_why(alice: Any, model_version: ModelVersion) -> None:
    answered = [feedback_ui.vote_subject(f"version:{model_version.pk}", "support v1", QUESTION, GOOD)]
    cast(alice, "1", "up", answered)
    feedback.export_feedback(access=resolve_access(alice, "acme"))
    with pytest.raises(gr.Error, match="can no longer be changed"):
        cast(alice, "1", "down", answered)


def test_playground_offers_thumbs_up_and_down_in_plain_words_hidden_until_an_answer(db: None) -> None:
    config = build_playground().get_config_file()
    by_elem = {c["props"].get("elem_id"): c for c in config["components"]}
    for number in range(1, compare.COLUMNS + 1):
        assert by_elem[f"compare-up-{number}"]["props"]["value"] == "Thumbs up"
        assert by_elem[f"compare-down-{number}"]["props"]["value"] == "Thumbs down"
        assert by_elem[f"compare-feedback-{number}"]["props"]["visible"] is False
    endpoint = build_playground().get_api_info()["named_endpoints"]["/feedback"]
    assert [parameter["label"] for parameter in endpoint["parameters"]] == ["Column", "Vote"]


# --- through Gradio's HTTP API on the real stack: the answer voted on stays on the server -------------------


@pytest.mark.django_db(transaction=True)
def test_a_vote_through_gradios_api_records_the_answer_the_session_was_shown(
    studio_server: str, acme: Team, alice: Any, starter_model: Any
) -> None:
    client = signed_in(studio_server, "alice")
    session = open_playground(client, "acme")
    key = f"base:{starter_model.pk}"
    outputs = completed(call(client, session, "compare", compare_data("Hello!", column(key), column(key))))
    answer = last_answer(outputs[0])
    assert completed(call(client, session, "feedback", ["1", "down"])) == [feedback_ui.VOTED["down"]]
    vote = PlaygroundVote.objects.for_team(acme).get()
    assert (vote.model, vote.prompt, vote.label) == (key, [{"role": "user", "content": "Hello!"}], False)
    assert vote.answer.strip() == answer.strip()  # as generated (the chatbot shows it without leading spaces)
    other = open_playground(client, "acme")  # a new session has no answer of its own to vote on
    assert "Nothing to vote on" in refused(call(client, other, "feedback", ["1", "up"]))
