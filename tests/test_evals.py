"""Eval suites: defining them (graders checked, errors naming the field), running them on real models through the
in-process inference server (the task's body called in the test's process), and who may see and run them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from accounts.models import AuditEvent
from accounts.roles import Role
from evals_app import generation, services, tasks
from evals_app.models import EvalResult, EvalRun, EvalSuite
from evals_app.prompts import item_of
from serving_app.catalog import publish, resolve_model
from tests.factories import adapter_model_version, member, ready_version
from training_app.engine import graders as grading
from training_app.models import BaseModel

QUESTIONS = ["What is the capital of France?", "Say hello.", "Name a colour."]


@pytest.fixture(autouse=True)
def _short_answers(settings: Any) -> None:
    settings.EVAL_MAX_TOKENS = 12
    settings.EVAL_CONCURRENCY = 4


@pytest.fixture
def questions(acme: Any, alice: Any) -> Any:
    """An instruction dataset version of three questions with references no tiny model will say."""
    rows = [{"prompt": question, "completion": f"reference {number}"} for number, question in enumerate(QUESTIONS)]
    return ready_version(acme, alice, rows, kind="instruction", name="Questions")


@pytest.fixture
def suite(owner: Any, questions: Any) -> EvalSuite:
    graders = [{"grader": {"type": "exact_match"}, "pass_rate": 0.5}, {"type": "rouge_l", "pass_rate": 0.0}]
    return services.create_suite(access=owner, name="Smoke", dataset_version=questions, graders=graders)


def run_now(run: EvalRun) -> EvalRun:
    """Do the run as the Celery task does, in this process."""
    services.run_eval(run.pk)
    run.refresh_from_db()
    return run


def suite_form(version: Any, graders: Any) -> dict[str, Any]:
    return {"name": "Support answers", "dataset_version": version.pk, "graders": json.dumps(graders)}


# --- defining suites ----------------------------------------------------------------------------------------


def test_a_bad_grader_spec_is_refused_naming_the_field(
    alice: Any, questions: Any, login: Callable[[Any], Client]
) -> None:
    response = login(alice).post(
        reverse("evals:new", args=["acme"]), suite_form(questions, [{"grader": {"type": "regex"}, "pass_rate": 1}])
    )
    assert response.status_code == 400
    assert "Grader 1: regex.pattern: required" in response.content.decode()
    assert not EvalSuite.objects.for_team(questions.team).exists()


def test_the_api_refuses_a_bad_grader_spec_naming_the_field(
    alice: Any, questions: Any, bearer: Callable[[Any], Client]
) -> None:
    body = {"name": "Support", "dataset_version": questions.pk, "graders": [{"type": "numeric", "tolerance": "x"}]}
    response = bearer(alice).post("/api/v1/teams/acme/eval-suites/", json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert "numeric.tolerance" in response.json()["errors"]["graders"][0]


def test_an_llm_judge_must_name_a_model_the_author_may_use(owner: Any, questions: Any) -> None:
    graders = [{"type": "llm_judge", "rubric": "Polite.", "model": "base:999999"}]
    with pytest.raises(ValidationError, match=r"llm_judge\.model"):
        services.create_suite(access=owner, name="Judged", dataset_version=questions, graders=graders)


def test_creating_a_suite_is_audited(owner: Any, suite: EvalSuite) -> None:
    event = AuditEvent.objects.for_team(owner.team).get(action="eval.suite_created")
    assert event.target_id == str(suite.pk)
    assert suite.graders[1]["grader"]["threshold"] == 0.5  # stored with its defaults filled in
    assert suite.graders[1]["pass_rate"] == 0.0


def test_the_prompt_is_the_conversation_before_the_last_assistant_turn() -> None:
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello!"}]}  # fmt: skip
    item = item_of(4, row, "chat")
    assert item is not None
    assert [m["role"] for m in item.messages] == ["system", "user"]
    assert (item.reference_text, item.question, item.row_number) == ("Hello!", "Hi", 4)


def test_a_tool_call_row_is_graded_against_its_call() -> None:
    call = {"type": "function", "function": {"name": "lookup_order", "arguments": {"order_id": "A-1"}}}
    row = {"messages": [{"role": "user", "content": "Where is A-1?"},
                        {"role": "assistant", "content": "", "tool_calls": [call]}]}  # fmt: skip
    item = item_of(1, row, "chat")
    assert item is not None
    grader = grading.build({"type": "tool_call"})
    answer = grading.Answer.from_completion({"role": "assistant", "content": "", "tool_calls": [
        {"name": "lookup_order", "arguments": {"order_id": "A-1"}}]})  # fmt: skip
    assert grader.grade(answer, item.reference_for("tool_call")).passed


# --- running suites on real models --------------------------------------------------------------------------


def test_a_run_on_two_models_grades_every_row_for_each(
    inference_server: str, owner: Any, alice: Any, suite: EvalSuite, starter_model: Any, lora_adapters: list[Path]
) -> None:
    version = adapter_model_version(owner.team, alice, starter_model, lora_adapters[0], name="tuned")
    keys = [f"base:{starter_model.pk}", f"version:{version.pk}"]
    run = run_now(services.start_run(access=owner, suite=suite, model_keys=keys))
    assert run.status == EvalRun.Status.SUCCEEDED, run.error
    results = list(services.results_of(run))
    assert sorted((r.model_key, r.row_number) for r in results) == sorted((k, n) for k in keys for n in (1, 2, 3))
    assert all(not r.error and r.answer and len(r.verdicts) == 2 for r in results)
    assert (run.rows_done, run.rows_total) == (6, 6)
    for key in keys:
        mine = [r for r in results if r.model_key == key]
        passed_rouge = sum(1 for r in mine if r.verdicts[1]["passed"])
        assert run.summary[key]["graders"][1]["pass_rate"] == pytest.approx(passed_rouge / 3)
        assert run.summary[key]["pass_rate"] == pytest.approx(sum(r.passed for r in mine) / 3)


def test_running_a_suite_again_gives_the_same_answers_and_verdicts(
    inference_server: str, owner: Any, suite: EvalSuite, starter_model: Any
) -> None:
    """Answers are greedy with a fixed seed: a run is reproducible, so a change between runs is the model's."""
    keys = [f"base:{starter_model.pk}"]
    first, second = (run_now(services.start_run(access=owner, suite=suite, model_keys=keys)) for _ in range(2))

    def graded(run: EvalRun) -> list[tuple[int, str, list[Any]]]:
        return [(r.row_number, r.answer, [v["score"] for v in r.verdicts]) for r in services.results_of(run)]

    assert graded(first) == graded(second) and all(answer for _, answer, _ in graded(first))
    assert first.summary == second.summary


def test_exact_match_passes_the_row_whose_reference_is_the_greedy_answer(
    inference_server: str, owner: Any, alice: Any, starter_model: Any, settings: Any
) -> None:
    servable = resolve_model(owner, f"base:{starter_model.pk}")
    publish([servable])
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    greedy = generation.answer_all([generation.Request(servable, messages)], concurrency=1, max_tokens=12)[0]
    assert not greedy.error and greedy.text
    rows = [{"prompt": QUESTIONS[0], "completion": greedy.text}, {"prompt": QUESTIONS[0], "completion": "Paris."}]
    version = ready_version(owner.team, alice, rows, kind="instruction", name="Known answers")
    suite = services.create_suite(access=owner, name="Known", dataset_version=version,
                                  graders=[{"type": "exact_match", "pass_rate": 0.5}])  # fmt: skip
    run = run_now(services.start_run(access=owner, suite=suite, model_keys=[f"base:{starter_model.pk}"]))
    verdicts = {r.row_number: r.verdicts[0] for r in services.results_of(run)}
    assert (verdicts[1]["passed"], verdicts[1]["score"]) == (True, 1.0)
    assert (verdicts[2]["passed"], verdicts[2]["score"]) == (False, 0.0)
    figures = run.summary[f"base:{starter_model.pk}"]
    assert (figures["pass_rate"], figures["passed"]) == (0.5, True)


def test_a_model_that_fails_keeps_its_error_and_the_run_goes_on(
    inference_server: str, owner: Any, suite: EvalSuite, starter_model: Any
) -> None:
    gone = BaseModel.objects.create(team=owner.team, name="moved away", source="server_path", path="/nonexistent/x")
    broken, working = f"base:{gone.pk}", f"base:{starter_model.pk}"
    run = run_now(services.start_run(access=owner, suite=suite, model_keys=[broken, working]))
    assert run.status == EvalRun.Status.SUCCEEDED
    by_model = {key: list(services.results_of(run).filter(model_key=key)) for key in (broken, working)}
    assert len(by_model[broken]) == 3 and all(r.error and not r.passed for r in by_model[broken])
    assert all(not r.error for r in by_model[working])
    assert run.summary[broken]["errors"] == 3


def test_an_llm_judge_grades_through_a_team_model_and_shows_its_prompt(
    inference_server: str, owner: Any, questions: Any, starter_model: Any
) -> None:
    key = f"base:{starter_model.pk}"
    graders = [{"type": "llm_judge", "rubric": "Answers the question.", "model": key}]
    suite = services.create_suite(access=owner, name="Judged", dataset_version=questions, graders=graders)
    run = run_now(services.start_run(access=owner, suite=suite, model_keys=[key]))
    verdicts = [result.verdicts[0] for result in services.results_of(run)]
    assert len(verdicts) == 3 and all(v["type"] == "llm_judge" for v in verdicts)
    # The tiny starter model rarely writes a score: either way the verdict says why and keeps the judge's prompt.
    assert all(v["details"]["prompt"][0]["role"] == "system" and v["reason"] for v in verdicts)


def test_a_second_delivery_of_the_task_does_nothing(owner: Any, suite: EvalSuite, base_model_row: Any) -> None:
    run = services.start_run(access=owner, suite=suite, model_keys=[f"base:{base_model_row.pk}"])
    EvalRun.objects.for_team(owner.team).filter(pk=run.pk).update(status=EvalRun.Status.RUNNING)
    services.run_eval(run.pk)
    assert not EvalResult.objects.for_team(owner.team).filter(run=run).exists()


# --- pages and permissions ----------------------------------------------------------------------------------


@pytest.fixture
def finished_run(owner: Any, suite: EvalSuite, base_model_row: Any) -> EvalRun:
    """A run with one stored answer holding markup (what a model may well write)."""
    key = f"base:{base_model_row.pk}"
    run = services.start_run(access=owner, suite=suite, model_keys=[key])
    EvalResult.objects.create(
        team=owner.team, run=run, model_key=key, row_number=1, answer="<script>alert(1)</script>",
        verdicts=[{"type": "exact_match", "score": 0.0, "passed": False, "reason": "expected <b>", "details": {}}],
    )  # fmt: skip
    EvalRun.objects.for_team(owner.team).filter(pk=run.pk).update(
        status=EvalRun.Status.SUCCEEDED, rows_done=1, summary=services.summarize(run)
    )
    return run


def test_the_run_page_shows_answers_and_verdicts_escaped(
    alice: Any, finished_run: EvalRun, login: Callable[[Any], Client]
) -> None:
    page = login(alice).get(reverse("evals:run", args=["acme", finished_run.pk])).content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "expected &lt;b&gt;" in page
    assert "What is the capital of France?" in page
    assert "Rows passing every grader, by model" in page


def test_a_running_run_polls_its_progress(alice: Any, finished_run: EvalRun, login: Callable[[Any], Client]) -> None:
    EvalRun.objects.for_team(finished_run.team).filter(pk=finished_run.pk).update(
        status=EvalRun.Status.RUNNING, rows_total=3
    )
    url = reverse("evals:run", args=["acme", finished_run.pk])
    part = login(alice).get(url + "?part=live").content.decode()
    assert 'hx-trigger="every 2s"' in part and "1 of 3 answers graded" in part


def test_a_page_polling_a_run_that_ended_reloads_once_to_show_the_rows(
    alice: Any, finished_run: EvalRun, login: Callable[[Any], Client]
) -> None:
    url = reverse("evals:run", args=["acme", finished_run.pk])
    part = login(alice).get(url + "?part=live", headers={"HX-Request": "true"})
    assert part["HX-Refresh"] == "true" and "hx-trigger" not in part.content.decode()


def test_the_suite_page_charts_its_runs_over_time(
    alice: Any, finished_run: EvalRun, login: Callable[[Any], Client]
) -> None:
    page = login(alice).get(reverse("evals:suite", args=["acme", finished_run.suite_id])).content.decode()
    assert "Rows passing every grader, run after run" in page
    assert f'value="{finished_run.model_keys[0]}"' in page  # "Run on…" offers the team's models


def test_a_member_of_another_team_gets_404_on_a_run(
    charlie: Any, finished_run: EvalRun, login: Callable[[Any], Client], bearer: Callable[[Any], Client]
) -> None:
    assert login(charlie).get(reverse("evals:run", args=["acme", finished_run.pk])).status_code == 404
    assert bearer(charlie).get(f"/api/v1/teams/acme/eval-runs/{finished_run.pk}").status_code == 404


def test_a_viewer_gets_403_on_run(
    acme: Any, suite: EvalSuite, base_model_row: Any, login: Callable[..., Client]
) -> None:
    viewer = member(acme, Role.VIEWER, "vera")
    url = reverse("evals:run_new", args=["acme", suite.pk])
    assert login(viewer).post(url, {"models": f"base:{base_model_row.pk}"}).status_code == 403
    assert not EvalRun.objects.for_team(acme).exists()


def test_the_api_gives_a_run_with_its_summary_and_results(
    alice: Any, finished_run: EvalRun, bearer: Callable[[Any], Client]
) -> None:
    client = bearer(alice)
    run = client.get(f"/api/v1/teams/acme/eval-runs/{finished_run.pk}").json()
    assert run["status"] == "succeeded" and run["summary"][run["models"][0]]["rows"] == 1
    results = client.get(f"/api/v1/teams/acme/eval-runs/{finished_run.pk}/results").json()
    assert results["count"] == 1 and results["items"][0]["answer"] == "<script>alert(1)</script>"


def test_starting_a_run_from_the_page_is_audited_and_queued(
    alice: Any, suite: EvalSuite, base_model_row: Any, login: Callable[[Any], Client]
) -> None:
    response = login(alice).post(
        reverse("evals:run_new", args=["acme", suite.pk]), {"models": f"base:{base_model_row.pk}"}
    )
    run = EvalRun.objects.for_team(suite.team).get()
    assert response.status_code == 302 and run.status == EvalRun.Status.QUEUED
    assert AuditEvent.objects.for_team(suite.team).filter(action="eval.run_started", target_id=str(run.pk)).exists()


def test_a_run_is_enqueued_on_the_default_queue_once_committed(
    owner: Any, suite: EvalSuite, base_model_row: Any, django_capture_on_commit_callbacks: Any, monkeypatch: Any
) -> None:
    sent: list[int] = []
    monkeypatch.setattr(tasks.run_eval_task, "delay", sent.append)
    with django_capture_on_commit_callbacks(execute=True):
        run = services.start_run(access=owner, suite=suite, model_keys=[f"base:{base_model_row.pk}"])
        assert sent == []
    assert sent == [run.pk]


def test_an_answer_is_marked_word_by_word_against_its_reference_and_stays_escaped() -> None:
    from evals_app.templatetags.answer_diff import marked_against

    marked = marked_against("Refunds take <b>5</b> days.", "Refunds take 3 days.")

    assert marked == (
        'Refunds take <del class="diff-missing">3 </del><ins class="diff-extra">&lt;b&gt;5&lt;/b&gt; </ins>days.'
    )
    assert marked_against("Same answer.", "Same answer.") == "Same answer."
    assert marked_against("<i>no reference</i>", "") == "&lt;i&gt;no reference&lt;/i&gt;"
