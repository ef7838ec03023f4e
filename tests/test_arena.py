"""The blind arena: the leaderboard's statistics, battles through Gradio's API on the real stack, the export
of votes as a DPO preference dataset, and the arena pages."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import Http404
from django.test import Client
from scipy.optimize import minimize

from accounts.models import AuditEvent, Team
from accounts.permissions import resolve_access
from accounts.roles import Role
from datasets_app import services as dataset_services
from datasets_app.engine.rows import read_rows_file
from datasets_app.models import DatasetVersion, VersionStatus
from serving_app import arena
from serving_app.models import ArenaBattle, UsageRecord
from serving_app.playground import build_playground
from serving_app.ui import arena as arena_ui
from serving_app.ui.arena import NO_BREAK_SPACE
from tests.factories import finished_job, ready_version
from tests.test_gradio_mount import signed_in
from training_app.models import ModelVersion

SCALE = 400 / math.log(10)


def vote_table(table: dict[tuple[str, str], tuple[int, int, int]]) -> list[tuple[str, str, str]]:
    """(model_a, model_b) -> (A wins, B wins, ties) as the leaderboard's vote triples."""
    votes = []
    for (a, b), (wins, losses, ties) in table.items():
        votes += [(a, b, "a")] * wins + [(a, b, "b")] * losses + [(a, b, "tie")] * ties
    return votes


def strengths(rows: list[arena.LeaderboardRow]) -> dict[str, float]:
    """Scores back on the log-odds scale."""
    return {row.model: (row.score - arena.SCORE_CENTER) / SCALE for row in rows}


# --- the leaderboard's statistics ----------------------------------------------------------------------


def test_two_models_score_gap_gives_the_observed_win_share() -> None:
    """For two models the Bradley–Terry MLE is p = wins / games, with a tie as half a win to each."""
    rows = arena.leaderboard(vote_table({("x", "y"): (7, 3, 2)}), labels={"x": "Model X", "y": "Model Y"})
    assert [(row.rank, row.label) for row in rows] == [(1, "Model X"), (2, "Model Y")]
    gap = strengths(rows)["x"] - strengths(rows)["y"]
    assert 1 / (1 + math.exp(-gap)) == pytest.approx((7 + 1) / 12, abs=1e-9)
    assert [(row.wins, row.ties, row.losses, row.battles) for row in rows] == [(7, 2, 3, 12), (3, 2, 7, 12)]
    assert rows[0].score + rows[1].score == pytest.approx(2 * arena.SCORE_CENTER)


def test_three_models_match_an_independent_maximum_likelihood_fit() -> None:
    table = {("p", "q"): (6, 2, 1), ("q", "r"): (5, 3, 2), ("p", "r"): (7, 1, 0), ("r", "p"): (1, 0, 1)}
    rows = arena.leaderboard(vote_table(table))
    models = ["p", "q", "r"]
    wins = np.zeros((3, 3))
    for (a, b), (won, lost, tied) in table.items():
        i, j = models.index(a), models.index(b)
        wins[i, j] += won + tied / 2
        wins[j, i] += lost + tied / 2

    def negative_log_likelihood(free: np.ndarray) -> float:
        s = np.array([0.0, *free])
        return float((wins * np.logaddexp(0, s[None, :] - s[:, None])).sum())

    fitted = minimize(negative_log_likelihood, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    reference = np.array([0.0, *fitted])
    reference -= reference.mean()
    ours = strengths(rows)
    assert [row.model for row in rows] == ["p", "q", "r"]
    for name, value in zip(models, reference, strict=True):
        assert ours[name] == pytest.approx(value, abs=1e-3)


def test_interval_contains_the_estimate_and_narrows_with_more_votes() -> None:
    few = vote_table({("p", "q"): (6, 2, 1), ("q", "r"): (5, 3, 2), ("p", "r"): (7, 1, 0), ("r", "p"): (1, 0, 1)})
    narrow = {row.model: row for row in arena.leaderboard(few * 8)}
    for row in arena.leaderboard(few):
        assert row.ci_low < row.score < row.ci_high
        wider = narrow[row.model]
        assert wider.ci_low <= wider.score <= wider.ci_high
        assert wider.ci_high - wider.ci_low < (row.ci_high - row.ci_low) * 0.6


def test_leaderboard_is_the_same_on_every_call() -> None:
    votes = vote_table({("p", "q"): (4, 2, 1), ("q", "r"): (3, 3, 0), ("r", "p"): (2, 3, 1)})
    assert arena.leaderboard(votes) == arena.leaderboard(votes)


def test_both_bad_counts_as_a_tie_and_unvoted_battles_are_ignored() -> None:
    with_both_bad = arena.leaderboard([("x", "y", "a"), ("x", "y", "both_bad"), ("x", "y", "")], rounds=0)
    with_tie = arena.leaderboard([("x", "y", "a"), ("x", "y", "tie")], rounds=0)
    assert [row.score for row in with_both_bad] == pytest.approx([row.score for row in with_tie])
    assert (with_both_bad[0].battles, with_both_bad[0].ties) == (2, 1)


def test_a_model_that_never_won_ranks_last_with_a_finite_score() -> None:
    rows = arena.leaderboard(vote_table({("x", "y"): (5, 0, 0), ("y", "z"): (2, 2, 0)}))
    assert rows[0].model == "x"
    assert all(math.isfinite(value) for row in rows for value in (row.score, row.ci_low, row.ci_high))


# --- battles through the services ----------------------------------------------------------------------


@pytest.fixture
def two_versions(acme: Team, alice: Any, base_model_row: Any) -> tuple[ModelVersion, ModelVersion]:
    """Two model versions of acme (small adapter folders: enough for everything but generating)."""
    data = ready_version(acme, alice, [{"text": "note"}])
    _, alpha = finished_job(acme, alice, base_model_row, data, name="alpha-bot")
    _, beta = finished_job(acme, alice, base_model_row, data, name="beta-bot")
    return alpha, beta


def test_a_battle_draws_two_different_models_of_the_set(alice: Any, two_versions: Any, base_model_row: Any) -> None:
    access = resolve_access(alice, "acme")
    keys = [f"base:{base_model_row.pk}", *(f"version:{v.pk}" for v in two_versions)]
    drawn = set()
    for _ in range(30):
        contenders = arena.start_battle(access=access, keys=keys)
        assert contenders.a.key != contenders.b.key
        assert {contenders.a.key, contenders.b.key} <= set(keys)
        drawn.add((contenders.a.key, contenders.b.key))
    assert len(drawn) > 3  # pairs and positions vary
    assert ArenaBattle.objects.for_team(access.team).count() == 30


def test_a_set_with_another_teams_model_is_refused_whole(
    alice: Any, charlie: Any, globex: Team, two_versions: Any, base_model_row: Any
) -> None:
    data = ready_version(globex, charlie, [{"text": "secret"}], name="Globex notes")
    _, foreign = finished_job(globex, charlie, base_model_row, data, name="globex-bot")
    keys = [f"version:{v.pk}" for v in two_versions] + [f"version:{foreign.pk}"]
    with pytest.raises(Http404):
        arena.start_battle(access=resolve_access(alice, "acme"), keys=keys)
    assert not ArenaBattle.objects.unscoped().exists()


def test_a_set_of_one_model_is_refused_with_a_message(alice: Any, base_model_row: Any) -> None:
    with pytest.raises(ValidationError, match="at least two models"):
        arena.start_battle(access=resolve_access(alice, "acme"), keys=[f"base:{base_model_row.pk}"] * 2)


def test_names_are_revealed_only_after_the_vote_and_only_one_vote_counts(alice: Any, two_versions: Any) -> None:
    access = resolve_access(alice, "acme")
    battle = arena.start_battle(access=access, keys=[f"version:{v.pk}" for v in two_versions]).battle
    with pytest.raises(ValidationError, match="Nothing to vote on"):
        arena.vote(access=access, battle_id=battle.pk, choice="a")
    arena.record_turn(access=access, battle_id=battle.pk, prompt="Hi", answer_a="Hello", answer_b="Yo", turns_before=0)
    with pytest.raises(ValidationError, match="Vote first"):
        arena.reveal(access=access, battle_id=battle.pk)
    arena.vote(access=access, battle_id=battle.pk, choice="b")
    assert arena.reveal(access=access, battle_id=battle.pk) == (battle.model_a_label, battle.model_b_label)
    with pytest.raises(ValidationError, match="already voted"):
        arena.vote(access=access, battle_id=battle.pk, choice="a")
    assert ArenaBattle.objects.for_team(access.team).get().vote == "b"


@pytest.mark.django_db(transaction=True)
def test_two_racing_votes_record_exactly_one(alice: Any, two_versions: Any) -> None:
    access = resolve_access(alice, "acme")
    battle = arena.start_battle(access=access, keys=[f"version:{v.pk}" for v in two_versions]).battle
    arena.record_turn(access=access, battle_id=battle.pk, prompt="Hi", answer_a="Hello", answer_b="Yo", turns_before=0)
    start = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def cast(choice: str) -> None:
        start.wait()
        try:
            arena.vote(access=access, battle_id=battle.pk, choice=choice)
            outcomes[choice] = "recorded"
        except ValidationError:
            outcomes[choice] = "refused"
        finally:
            connection.close()

    voters = [threading.Thread(target=cast, args=(choice,)) for choice in ("a", "b")]
    for voter in voters:
        voter.start()
    for voter in voters:
        voter.join()
    assert sorted(outcomes.values()) == ["recorded", "refused"]
    recorded = next(choice for choice, outcome in outcomes.items() if outcome == "recorded")
    assert ArenaBattle.objects.for_team(access.team).get().vote == recorded


def test_someone_elses_battle_is_not_found(alice: Any, bob: Any, two_versions: Any) -> None:
    battle = arena.start_battle(access=resolve_access(alice, "acme"), keys=[f"version:{v.pk}" for v in two_versions])
    with pytest.raises(arena.NoSuchBattle):
        arena.continue_battle(access=resolve_access(bob, "acme"), battle_id=battle.battle.pk)


# --- exporting votes as a preference dataset -----------------------------------------------------------


def played(
    team: Team,
    user: Any,
    vote: str,
    *,
    prompt: str = "What is 2+2?",
    answers: tuple[str, str] = ("4", "5"),
    **extra: Any,
) -> ArenaBattle:
    """A finished one-turn battle (the keys need not exist: exporting reads the stored conversations)."""
    question = {"role": "user", "content": prompt}
    return ArenaBattle.objects.create(
        team=team,
        user=user,
        model_a=extra.pop("model_a", "base:1"),
        model_a_label=extra.pop("model_a_label", "Left model"),
        model_b=extra.pop("model_b", "base:2"),
        model_b_label=extra.pop("model_b_label", "Right model"),
        conversation_a=[question, {"role": "assistant", "content": answers[0]}],
        conversation_b=[question, {"role": "assistant", "content": answers[1]}],
        vote=vote,
        **extra,
    )


def test_export_makes_a_preference_dataset_of_the_decisive_votes(acme: Team, alice: Any) -> None:
    played(acme, alice, "a", prompt="Capital of France?", answers=("Paris.", "Lyon."))
    played(acme, alice, "b", prompt="2+2?", answers=("5", "4"))
    played(acme, alice, "tie")
    played(acme, alice, "both_bad")
    played(acme, alice, "")
    result = arena.export_preferences(access=resolve_access(alice, "acme"))
    dataset_services.run_validation(result.version.pk)
    version = DatasetVersion.objects.for_team(acme).select_related("dataset").get(pk=result.version.pk)
    assert (version.dataset.name, version.status, version.kind, version.row_count) == (
        "Arena preferences", VersionStatus.READY, "preference", 2
    )  # fmt: skip
    rows = list(read_rows_file(version.rows_path))
    assert rows[0] == {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "Lyon."}],
    }
    assert (rows[1]["chosen"][0]["content"], rows[1]["rejected"][0]["content"]) == ("4", "5")
    exported = ArenaBattle.objects.for_team(acme).filter(exported_at__isnull=False)
    assert sorted(exported.values_list("vote", flat=True)) == ["a", "b"]
    event = AuditEvent.objects.for_team(acme).get(action="arena.exported")
    assert event.details["rows"] == 2 and event.details["version"] == 1


def test_exporting_again_without_new_votes_says_so_and_makes_nothing(acme: Team, alice: Any) -> None:
    access = resolve_access(alice, "acme")
    played(acme, alice, "a")
    arena.export_preferences(access=access)
    with pytest.raises(ValidationError, match="No new decisive votes"):
        arena.export_preferences(access=access)
    assert DatasetVersion.objects.for_team(acme).count() == 1
    assert AuditEvent.objects.for_team(acme).filter(action="arena.exported").count() == 1


def test_new_votes_become_the_next_version_of_the_same_dataset(acme: Team, alice: Any) -> None:
    access = resolve_access(alice, "acme")
    played(acme, alice, "a")
    first = arena.export_preferences(access=access).version
    played(acme, alice, "b", prompt="Another question?")
    second = arena.export_preferences(access=access).version
    assert (second.dataset_id, second.number) == (first.dataset_id, 2)
    dataset_services.run_validation(second.pk)
    rows = list(read_rows_file(DatasetVersion.objects.for_team(acme).get(pk=second.pk).rows_path))
    assert [row["prompt"][0]["content"] for row in rows] == ["Another question?"]


def test_a_multi_turn_battle_keeps_the_whole_exchange_after_the_first_message(acme: Team, alice: Any) -> None:
    turns = [{"role": "user", "content": "Hi"}]
    battle = played(acme, alice, "b")
    battle.conversation_a = [*turns, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More?"},
                             {"role": "assistant", "content": "No."}]  # fmt: skip
    battle.conversation_b = [*turns, {"role": "assistant", "content": "Hey!"}, {"role": "user", "content": "More?"},
                             {"role": "assistant", "content": "Sure, here is more."}]  # fmt: skip
    battle.save()
    version = arena.export_preferences(access=resolve_access(alice, "acme")).version
    dataset_services.run_validation(version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.READY
    row = next(read_rows_file(version.rows_path))
    assert row["prompt"] == turns
    assert [turn["content"] for turn in row["chosen"]] == ["Hey!", "More?", "Sure, here is more."]
    assert [turn["content"] for turn in row["rejected"]] == ["Hello", "More?", "No."]


def test_votes_on_restricted_models_and_identical_answers_are_left_out(
    acme: Team, alice: Any, base_model_row: Any
) -> None:
    data = ready_version(acme, alice, [{"text": "private"}])
    _, secret = finished_job(acme, alice, base_model_row, data, name="secret-bot")
    ModelVersion.objects.for_team(acme).filter(pk=secret.pk).update(restricted=True)
    played(acme, alice, "a", model_a=f"version:{secret.pk}")
    played(acme, alice, "a", answers=("same", "same"))
    with pytest.raises(ValidationError) as refused:
        arena.export_preferences(access=resolve_access(alice, "acme"))
    assert "identical answers" in str(refused.value) and "restricted model" in str(refused.value)
    assert not DatasetVersion.objects.for_team(acme).filter(dataset__name=arena.EXPORT_DATASET_NAME).exists()
    assert not ArenaBattle.objects.for_team(acme).filter(exported_at__isnull=False).exists()


# --- the pages -------------------------------------------------------------------------------------------


def test_arena_page_embeds_the_arena_view(alice: Any, login: Callable[[Any], Client]) -> None:
    page = login(alice).get("/t/acme/arena/").content.decode()
    assert re.search(r'<iframe[^>]+src="/play/\?team=acme&amp;view=arena"', page)
    assert 'href="/t/acme/arena/leaderboard/"' in page


def test_viewer_sees_no_arena_frame_but_is_told_why(user_in_role: Any, login: Callable[[Any], Client]) -> None:
    page = login(user_in_role(Role.VIEWER)).get("/t/acme/arena/").content.decode()
    assert "<iframe" not in page and "cannot chat with models" in page


def test_leaderboard_ranks_the_teams_models_in_a_table_and_a_chart(
    acme: Team, alice: Any, login: Callable[[Any], Client]
) -> None:
    for _ in range(3):
        played(acme, alice, "a", model_a_label="Sharp model", model_b_label="Dull model")
    played(acme, alice, "b", model_a_label="Sharp model", model_b_label="Dull model")
    page = login(alice).get("/t/acme/arena/leaderboard/").content.decode()
    table = page[page.index('id="leaderboard"') :]
    assert table.index("Sharp model") < table.index("Dull model")
    chart = page[page.index('id="leaderboard-chart"') :]
    assert re.search(r'<svg [^>]*aria-label="Arena scores with 95% intervals: Sharp model \d+', chart)
    ticks = [int(t.replace(",", "")) for t in re.findall(r'text-anchor="middle">([\d,]+)</text>', chart)]
    assert len(ticks) >= 3 and len({b - a for a, b in itertools.pairwise(ticks)}) == 1  # evenly spaced
    assert all(tick % 10 == 0 for tick in ticks)  # and round
    assert re.search(r"<td>Sharp model</td><td class=\"num\"><b>1\d\d\d</b>", page)
    assert "Export votes as a preference dataset" in page


def test_leaderboard_without_votes_says_how_to_start(alice: Any, login: Callable[[Any], Client]) -> None:
    page = login(alice).get("/t/acme/arena/leaderboard/").content.decode()
    assert "No votes yet" in page and "leaderboard-chart" not in page and 'id="leaderboard"' not in page


def test_viewer_reads_the_leaderboard_but_cannot_export(
    acme: Team, alice: Any, user_in_role: Any, login: Callable[[Any], Client]
) -> None:
    played(acme, alice, "a", model_a_label="Sharp model")
    client = login(user_in_role(Role.VIEWER))
    page = client.get("/t/acme/arena/leaderboard/")
    assert page.status_code == 200 and "Sharp model" in page.content.decode()
    assert "Export votes" not in page.content.decode()
    assert client.post("/t/acme/arena/export").status_code == 403
    assert not DatasetVersion.objects.for_team(acme).exists()


def test_restricted_model_is_named_only_for_those_who_may_see_it(
    acme: Team, alice: Any, bob: Any, base_model_row: Any, login: Callable[[Any], Client]
) -> None:
    data = ready_version(acme, alice, [{"text": "private"}])
    _, secret = finished_job(acme, alice, base_model_row, data, name="secret-bot")
    ModelVersion.objects.for_team(acme).filter(pk=secret.pk).update(restricted=True)
    played(acme, alice, "a", model_a=f"version:{secret.pk}", model_a_label="secret-bot v1")
    assert "secret-bot v1" in login(alice).get("/t/acme/arena/leaderboard/").content.decode()
    page = login(bob).get("/t/acme/arena/leaderboard/").content.decode()
    assert "secret-bot" not in page and arena.HIDDEN_MODEL_LABEL in page


def test_export_button_makes_the_dataset_and_opens_it(acme: Team, alice: Any, login: Callable[[Any], Client]) -> None:
    played(acme, alice, "a")
    client = login(alice)
    response = client.post("/t/acme/arena/export")
    version = DatasetVersion.objects.for_team(acme).get()
    assert response["Location"] == f"/t/acme/datasets/{version.dataset_id}/v1/"
    assert "Exported 1 vote(s) to Arena preferences v1" in client.get(response["Location"]).content.decode()
    again = client.post("/t/acme/arena/export", follow=True).content.decode()
    assert "No new decisive votes to export" in again
    assert DatasetVersion.objects.for_team(acme).count() == 1


def test_export_button_is_disabled_with_a_reason_when_there_is_nothing_to_export(
    acme: Team, alice: Any, login: Callable[[Any], Client]
) -> None:
    client = login(alice)
    page = client.get("/t/acme/arena/leaderboard/").content.decode()
    assert 'disabled aria-describedby="arena-export-why">Export votes' in page and "Nothing to export" in page
    played(acme, alice, "a")
    page = client.get("/t/acme/arena/leaderboard/").content.decode()
    assert "disabled" not in page.split('id="arena-export"')[1].split("</form>")[0]


def test_export_is_post_only(alice: Any, login: Callable[[Any], Client]) -> None:
    assert login(alice).get("/t/acme/arena/export").status_code == 405


@pytest.mark.parametrize(
    ("method", "url"),
    [("get", "/t/acme/arena/"), ("get", "/t/acme/arena/leaderboard/"), ("post", "/t/acme/arena/export")],
)
def test_outsider_gets_404_on_the_arena_pages(
    acme: Team, alice: Any, charlie: Any, login: Callable[[Any], Client], method: str, url: str
) -> None:
    played(acme, alice, "a")
    assert getattr(login(charlie), method)(url).status_code == 404
    assert not DatasetVersion.objects.unscoped().exists()


# --- battles through Gradio's API on the real stack ----------------------------------------------------

MAX_TOKENS = 16


def fake_turn(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> list[dict[str, Any]]:
    """Answers streamed in two pieces per model without an inference server; returns the turns recorded."""
    recorded: list[dict[str, Any]] = []

    async def stream(servable: Any, *args: Any, **kwargs: Any) -> Any:
        text = answers[servable.key]
        for end in (len(text) // 2, len(text)):
            yield SimpleNamespace(text=text[:end])

    monkeypatch.setattr(arena_ui, "stream_answer", stream)
    monkeypatch.setattr(arena, "record_turn", lambda **turn: recorded.append(turn))
    return recorded


def play_turn() -> list[tuple[Any, ...]]:
    battle = SimpleNamespace(pk=1, conversation_a=[], conversation_b=[])
    contenders = SimpleNamespace(battle=battle, a=SimpleNamespace(key="a"), b=SimpleNamespace(key="b"))
    access = SimpleNamespace(team=None, user=None)

    async def collect() -> list[tuple[Any, ...]]:
        return [outputs async for outputs in arena_ui._play_turn(access, contenders, "Hi", 16)]  # type: ignore[arg-type]

    return asyncio.run(collect())


def test_vote_buttons_stay_off_until_both_answers_are_in(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_turn(monkeypatch, {"a": "Hello there.", "b": "Hi!"})
    outputs = play_turn()
    *streaming, last = outputs
    assert streaming and all(step[6] is False and "vote once both answers are in" in step[3] for step in streaming)
    assert last[6] is True and last[3] == "Both answers are in. Keep chatting, or vote below."
    assert [button.interactive for button in arena_ui.vote_buttons(False)] == [False] * 4
    assert [button.interactive for button in arena_ui.vote_buttons(True)] == [True] * 4


def test_vote_buttons_start_off_and_go_off_while_a_turn_streams(db: None) -> None:
    config = build_playground().get_config_file()
    buttons = {c["id"] for c in config["components"] if str(c["props"].get("elem_id", "")).startswith("arena-vote-")}
    assert len(buttons) == 4
    assert all(c["props"]["interactive"] is False for c in config["components"] if c["id"] in buttons)
    send = next(dep for dep in config["dependencies"] if dep["api_name"] == "arena_send")
    before = [dep for dep in config["dependencies"] if set(dep["outputs"]) == buttons and dep["id"] < send["id"]]
    assert before and send["trigger_after"] in {dep["id"] for dep in before}


def test_arena_shows_an_indented_answer_with_its_indentation(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = "Steps:\n  1. open the file\n    then read it\nDone."
    recorded = fake_turn(monkeypatch, {"a": answer, "b": "No."})
    chat_a = play_turn()[-1][0]
    shown = gr.Chatbot().postprocess(chat_a).model_dump()[-1]["content"][0]["text"]
    assert shown == f"Steps:\n{NO_BREAK_SPACE * 2}1. open the file\n{NO_BREAK_SPACE * 4}then read it\nDone."
    assert recorded[0]["answer_a"] == answer


@pytest.fixture
def contenders(acme: Team, alice: Any, starter_model: Any, lora_adapters: list[Path]) -> list[ModelVersion]:
    """acme's model versions alpha-bot v1 and beta-bot v1, each served from a real adapter."""
    data = ready_version(acme, alice, [{"text": "note"}])
    versions = []
    for name, folder in zip(("alpha-bot", "beta-bot"), lora_adapters, strict=True):
        _, version = finished_job(acme, alice, starter_model, data, name=name)
        ModelVersion.objects.for_team(acme).filter(pk=version.pk).update(path=str(folder))
        versions.append(version)
    return versions


class ArenaSession:
    """One person's Gradio session on the arena, through the HTTP API the browser uses."""

    def __init__(self, base: str, username: str, *, session_hash: str | None = None) -> None:
        self.client = signed_in(base, username)
        self.session_hash = session_hash or uuid.uuid4().hex

    def open(self, team: str) -> None:
        """Load the page as the site's frame does (``?team=…&view=arena``) so the session knows its team."""
        config = self.client.get("/play/config").json()
        load = next(
            dep for dep in config["dependencies"]
            if any(trigger == "load" for _, trigger in dep["targets"]) and dep["api_visibility"] == "private"
        )  # fmt: skip
        joined = self.client.post(
            f"/play/gradio_api/queue/join?team={team}&view=arena",
            json={"data": [], "fn_index": load["id"], "session_hash": self.session_hash, "trigger_id": None},
        )
        assert joined.status_code == 200, joined.text
        with self.client.stream("GET", f"/play/gradio_api/queue/data?session_hash={self.session_hash}") as events:
            for line in events.iter_lines():
                if line.startswith("data:") and json.loads(line[5:]).get("msg") == "process_completed":
                    break

    def call(self, api_name: str, *data: Any) -> tuple[str, list[str]]:
        """Call ``api_name`` in this session; returns the final event (complete / error) and every payload."""
        started = self.client.post(
            f"/play/gradio_api/call/{api_name}", json={"data": list(data), "session_hash": self.session_hash}
        )
        assert started.status_code == 200, started.text
        stream = self.client.get(f"/play/gradio_api/call/{api_name}/{started.json()['event_id']}").text
        events = re.findall(r"^event: (\w+)\ndata: (.*)$", stream, flags=re.MULTILINE)
        assert events, stream
        return events[-1][0], [payload for _, payload in events]


@pytest.fixture
def session(studio_server: str) -> Iterator[Callable[..., ArenaSession]]:
    opened: list[ArenaSession] = []

    def make(username: str, team: str = "acme", **kwargs: Any) -> ArenaSession:
        arena_session = ArenaSession(studio_server, username, **kwargs)
        arena_session.open(team)
        opened.append(arena_session)
        return arena_session

    yield make
    for arena_session in opened:
        arena_session.client.close()


def assistant_texts(payload: str) -> list[str]:
    """The two chatbots' last answers in a handler's output."""
    outputs = json.loads(payload)
    texts = []
    for chat in outputs[:2]:
        content = chat[-1]["content"]
        texts.append(content if isinstance(content, str) else "".join(part.get("text", "") for part in content))
    return texts


def model_names(versions: list[ModelVersion], starter_model: Any) -> list[str]:
    """Everything that would name a contender: labels, keys and served names."""
    names = [str(v) for v in versions] + [f"version:{v.pk}" for v in versions] + [f"version-{v.pk}" for v in versions]
    return [*names, starter_model.name, f"base:{starter_model.pk}", f"base-{starter_model.pk}"]


@pytest.mark.django_db(transaction=True)
def test_blind_battle_streams_two_anonymous_answers_and_the_vote_reveals_them(
    session: Callable[..., ArenaSession], alice: Any, contenders: list[ModelVersion], starter_model: Any
) -> None:
    player = session("alice")
    outcome, payloads = player.call("arena_models")
    assert outcome == "complete"
    keys = [f"version:{v.pk}" for v in contenders]
    outcome, payloads = player.call("arena_start", keys, "Tell me about the sea.", MAX_TOKENS)
    assert outcome == "complete", payloads[-1]
    answer_a, answer_b = assistant_texts(payloads[-1])
    assert answer_a.strip() and answer_b.strip() and answer_a != answer_b
    everything = "\n".join(payloads)
    for name in model_names(contenders, starter_model):
        assert name not in everything, f"{name} leaked before the vote"

    outcome, payloads = player.call("arena_continue", "And about the mountains?", MAX_TOKENS)
    assert outcome == "complete", payloads[-1]
    outcome, payloads = player.call("arena_vote", "a")
    assert outcome == "complete", payloads[-1]
    battle = ArenaBattle.objects.for_team(contenders[0].team).get()
    assert f"**Model A** was **{battle.model_a_label}**; **Model B** was **{battle.model_b_label}**" in payloads[-1]
    assert {battle.model_a_label, battle.model_b_label} == {"alpha-bot v1", "beta-bot v1"}
    assert battle.vote == "a" and battle.voted_at is not None
    assert [turn["role"] for turn in battle.conversation_a] == ["user", "assistant"] * 2
    assert (
        battle.conversation_a[2] == battle.conversation_b[2] == {"role": "user", "content": "And about the mountains?"}
    )
    # Shown exactly as stored, except that the spaces starting a line are no-break spaces (Markdown keeps those).
    stored = (battle.conversation_a[1]["content"], battle.conversation_b[1]["content"])
    assert stored == (answer_a.replace(NO_BREAK_SPACE, " "), answer_b.replace(NO_BREAK_SPACE, " "))
    assert UsageRecord.objects.for_team(battle.team).filter(source="arena", status="ok").count() == 4

    outcome, payloads = player.call("arena_vote", "b")
    assert outcome == "error" and "already voted" in payloads[-1]
    assert ArenaBattle.objects.for_team(battle.team).get().vote == "a"
    outcome, payloads = player.call("arena_continue", "One more thing", MAX_TOKENS)
    assert outcome == "error" and "press New battle" in payloads[-1]

    assert player.call("arena_new")[0] == "complete"
    outcome, payloads = player.call("arena_start", keys, "Another round?", MAX_TOKENS)
    assert outcome == "complete", payloads[-1]
    latest = ArenaBattle.objects.for_team(battle.team).order_by("-pk")[0]
    assert latest.pk != battle.pk and latest.vote == "" and latest.conversation_a[0]["content"] == "Another round?"


@pytest.mark.django_db(transaction=True)
def test_another_persons_battle_is_refused(
    session: Callable[..., ArenaSession], alice: Any, bob: Any, charlie: Any, contenders: list[ModelVersion]
) -> None:
    owner = session("bob")
    owner.call("arena_models")
    outcome, payloads = owner.call("arena_start", [f"version:{v.pk}" for v in contenders], "Hello!", MAX_TOKENS)
    assert outcome == "complete", payloads[-1]
    before = ArenaBattle.objects.for_team(contenders[0].team).values().get()

    # Alice (same team) and charlie (another team) reach bob's session state, battle id included.
    teammate = session("alice", session_hash=owner.session_hash)
    outcome, payloads = teammate.call("arena_vote", "a")
    assert outcome == "error" and "No such battle of yours" in payloads[-1]
    outcome, payloads = teammate.call("arena_continue", "Let me in", MAX_TOKENS)
    assert outcome == "error" and "No such battle of yours" in payloads[-1]
    outsider = session("charlie", team="acme", session_hash=owner.session_hash)
    outcome, payloads = outsider.call("arena_vote", "a")
    assert outcome == "error" and "No such team" in payloads[-1]
    assert ArenaBattle.objects.for_team(contenders[0].team).values().get() == before


@pytest.mark.django_db(transaction=True)
def test_a_model_key_of_another_team_is_refused_and_nothing_is_generated(
    session: Callable[..., ArenaSession], alice: Any, charlie: Any, globex: Team, contenders: list[ModelVersion],
    starter_model: Any,
) -> None:  # fmt: skip
    data = ready_version(globex, charlie, [{"text": "globex"}], name="Globex notes")
    _, foreign = finished_job(globex, charlie, starter_model, data, name="globex-bot")
    player = session("alice")
    player.call("arena_models")
    keys = [f"version:{contenders[0].pk}", f"version:{foreign.pk}"]
    outcome, payloads = player.call("arena_start", keys, "Hello!", MAX_TOKENS)
    assert outcome == "error"
    # Gradio's own check (the key is not among the session's choices) answers before the arena's re-check.
    assert "is not in the list of choices" in payloads[-1] and "globex-bot" not in payloads[-1]
    assert not ArenaBattle.objects.unscoped().exists()
    assert not UsageRecord.objects.unscoped().exists()


@pytest.mark.django_db(transaction=True)
def test_a_model_the_person_may_no_longer_use_is_refused_on_the_next_call(
    session: Callable[..., ArenaSession], alice: Any, bob: Any, contenders: list[ModelVersion]
) -> None:
    player = session("bob")
    player.call("arena_models")  # alpha-bot is among bob's choices ...
    ModelVersion.objects.for_team(contenders[0].team).filter(pk=contenders[0].pk).update(restricted=True)
    outcome, payloads = player.call("arena_start", [f"version:{v.pk}" for v in contenders], "Hello!", MAX_TOKENS)
    assert outcome == "error" and "does not exist or you may not use it" in payloads[-1]  # ... until restricted
    assert not ArenaBattle.objects.unscoped().exists()
    assert not UsageRecord.objects.unscoped().exists()


@pytest.mark.django_db(transaction=True)
def test_a_model_that_fails_shows_its_error_without_its_name_and_the_turn_is_not_kept(
    session: Callable[..., ArenaSession], alice: Any, contenders: list[ModelVersion], starter_model: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    broken = contenders[1]
    ModelVersion.objects.for_team(broken.team).filter(pk=broken.pk).update(path=str(tmp_path / "gone"))
    player = session("alice")
    player.call("arena_models")
    outcome, payloads = player.call("arena_start", [f"version:{v.pk}" for v in contenders], "Hello!", MAX_TOKENS)
    assert outcome == "complete", payloads[-1]
    battle = ArenaBattle.objects.for_team(broken.team).get()
    failing = "Model A" if battle.model_a == f"version:{broken.pk}" else "Model B"
    assert f"{failing} could not answer" in payloads[-1] and "this turn was not kept" in payloads[-1]
    everything = "\n".join(payloads)
    for name in [*model_names(contenders, starter_model), str(tmp_path)]:
        assert name not in everything, f"{name} leaked before the vote"
    assert battle.conversation_a == battle.conversation_b == []
    records = UsageRecord.objects.for_team(broken.team).filter(source="arena")
    assert sorted(records.values_list("status", flat=True)) == ["failed", "ok"]


@pytest.mark.django_db(transaction=True)
def test_the_arena_api_is_documented_without_its_hidden_state(session: Callable[..., ArenaSession], alice: Any) -> None:
    endpoints = session("alice").client.get("/play/gradio_api/info").json()["named_endpoints"]
    assert {"/arena_models", "/arena_start", "/arena_continue", "/arena_vote", "/arena_new"} <= set(endpoints)
    assert [p["label"] for p in endpoints["/arena_start"]["parameters"]] == [
        "Models in the arena", "Your message", "Max new tokens per answer"
    ]  # fmt: skip
    assert [p["label"] for p in endpoints["/arena_vote"]["parameters"]] == ["Vote"]
