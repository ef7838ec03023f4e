"""The forgetting check: perplexity on the held-out general corpus and the base model's regression suites, base vs
version, judged against the team's limits; started after training and on demand; shown on the version's page.

The perplexity task's and the eval runs' bodies are called in the test's process (as ``test_evals`` does), on the
real starter model, real adapters and the real in-process inference server; one test goes through the real worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from accounts.permissions import resolve_access
from accounts.roles import Role
from evals_app import forgetting, generation, services, tasks
from evals_app.models import CheckStatus, EvalsPolicy, ForgettingCheck
from evals_app.policy import update_policy
from serving_app.catalog import publish, resolve_model
from tests.factories import adapter_model_version, finished_job, member, ready_version, sample_version
from training_app.engine.perplexity import compare, load_tokenizer, perplexity, read_corpus

QUESTIONS = ["What is the capital of France?", "Say hello.", "Name a colour."]


@pytest.fixture(autouse=True)
def _short_answers(settings: Any) -> None:
    settings.EVAL_MAX_TOKENS = 12
    settings.EVAL_CONCURRENCY = 4


@pytest.fixture(scope="module")
def identity_adapter(starter_model_path: Path, tmp_path_factory: Any) -> Path:
    """A LoRA adapter as PEFT initializes it (B = 0): the version answers exactly as its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = Path(tmp_path_factory.mktemp("identity")) / "adapter"
    base = AutoModelForCausalLM.from_pretrained(starter_model_path, use_safetensors=True)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    get_peft_model(base, config).save_pretrained(str(folder))
    return folder


@pytest.fixture
def damaged(acme: Any, alice: Any, starter_model: Any, lora_adapters: list[Path]) -> Any:
    """A version whose adapter holds large random weights (``make_lora_adapter``: alpha / r = 8): damaged on purpose."""
    return adapter_model_version(acme, alice, starter_model, lora_adapters[0], name="damaged")


def checked(check: ForgettingCheck) -> ForgettingCheck:
    """Do the check's perplexity task and its runs as the workers do, in this process."""
    for run in forgetting.runs_of(check):
        tasks.run_eval_task(run.pk)
    forgetting.measure_perplexity(check.pk)
    check.refresh_from_db()
    return check


# --- the perplexity engine ------------------------------------------------------------------------------------


def test_perplexity_of_a_model_against_itself_is_equal(starter_model_path: Path) -> None:
    result = compare(starter_model_path, read_corpus(forgetting.CORPUS_PATH), model_path=starter_model_path)
    assert result.before == result.after
    assert result.before > 1 and result.tokens > 1000


def test_perplexity_is_the_same_measured_twice(starter_model_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(starter_model_path, use_safetensors=True).eval()
    tokenizer = load_tokenizer(starter_model_path)
    texts = read_corpus(forgetting.CORPUS_PATH)[:20]
    assert perplexity(model, tokenizer, texts) == perplexity(model, tokenizer, texts)


def test_the_general_corpus_is_not_in_the_starter_models_pretraining_text() -> None:
    from training_app.engine.corpus import corpus_texts

    pretraining = "\n".join(corpus_texts())
    held_out = read_corpus(forgetting.CORPUS_PATH)
    assert len(held_out) >= 200
    assert not [line for line in held_out if line in pretraining]


# --- verdicts -------------------------------------------------------------------------------------------------


def test_a_damaged_adapter_is_flagged_for_perplexity(owner: Any, damaged: Any) -> None:
    check = checked(forgetting.start_check(access=owner, version=damaged))
    assert check.status == CheckStatus.SUCCEEDED
    assert check.flagged
    before, after = check.perplexity_before, check.perplexity_after
    assert before is not None and after is not None and after > before
    assert check.reasons[0].startswith(f"Perplexity {before:.1f} → {after:.1f} (+")
    assert check.reasons[0].endswith("limit 10 %)")


def test_an_identity_adapter_passes(
    owner: Any, acme: Any, alice: Any, starter_model: Any, identity_adapter: Path
) -> None:
    version = adapter_model_version(acme, alice, starter_model, identity_adapter, name="untouched")
    check = checked(forgetting.start_check(access=owner, version=version))
    assert check.status == CheckStatus.SUCCEEDED
    assert not check.flagged and check.reasons == []
    assert check.perplexity_after == pytest.approx(check.perplexity_before, rel=1e-6)


def test_the_teams_limit_decides(owner: Any, damaged: Any) -> None:
    """The damaged adapter raises perplexity (by a third to a half, depending on how the starter model was built):
    a limit above the increase passes it, the same check under a limit below it is flagged."""
    update_policy(access=owner, max_perplexity_increase=5.0, max_pass_rate_drop=0.05, max_bias_gap=0.2,
                  check_after_training=True)  # fmt: skip
    check = checked(forgetting.start_check(access=owner, version=damaged))
    assert not check.flagged, check.reasons
    assert check.limits["max_perplexity_increase"] == 5.0
    assert forgetting.latest_check(damaged) == check
    increase = check.perplexity_after / check.perplexity_before - 1
    assert increase > 0.1
    update_policy(access=owner, max_perplexity_increase=round(increase / 2, 3), max_pass_rate_drop=0.05,
                  max_bias_gap=0.2, check_after_training=True)  # fmt: skip
    stricter = checked(forgetting.start_check(access=owner, version=damaged))
    assert stricter.flagged and stricter.reasons[0].startswith("Perplexity")


def base_answers(access: Any, base_key: str) -> list[str]:
    """The starter model's own greedy answers to ``QUESTIONS`` (what a suite of its behaviour expects)."""
    servable = resolve_model(access, base_key)
    publish([servable])
    requests = [generation.Request(servable, [{"role": "user", "content": question}]) for question in QUESTIONS]
    answers = generation.answer_all(requests, concurrency=4, max_tokens=12)
    assert not [answer.error for answer in answers if answer.error]
    return [answer.text for answer in answers]


def test_a_regression_suite_the_version_fails_is_flagged(
    owner: Any, acme: Any, alice: Any, starter_model: Any, damaged: Any, inference_server: str
) -> None:
    """The suite expects the base model's own answers: the base passes every row, the damaged version does not."""
    update_policy(access=owner, max_perplexity_increase=10, max_pass_rate_drop=0.05, max_bias_gap=0.2,
                  check_after_training=True)  # fmt: skip
    answers = base_answers(owner, f"base:{starter_model.pk}")
    rows = [{"prompt": question, "completion": answer} for question, answer in zip(QUESTIONS, answers, strict=True)]
    dataset = ready_version(acme, alice, rows, kind="instruction", name="Starter behaviour")
    services.create_suite(access=owner, name="Starter behaviour", dataset_version=dataset,
                          graders=[{"type": "exact_match", "pass_rate": 1.0}], base_models=[starter_model])  # fmt: skip
    check = checked(forgetting.start_check(access=owner, version=damaged))
    assert check.flagged
    [result] = check.suite_results
    assert (result["before"], result["flagged"]) == (1.0, True)
    assert result["after"] < 1.0
    assert check.reasons == [result["reason"]]
    assert result["reason"].startswith("Suite “Starter behaviour”: pass rate 100 % → ")


def test_a_check_with_no_regression_suite_judges_perplexity_alone(owner: Any, damaged: Any) -> None:
    check = forgetting.start_check(access=owner, version=damaged)
    assert forgetting.runs_of(check) == []
    assert checked(check).suite_results == []


# --- starting -------------------------------------------------------------------------------------------------


def test_training_a_version_starts_a_check(
    acme: Any, alice: Any, base_model_row: Any, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        _, version = finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"))
    check = ForgettingCheck.objects.for_team(acme).get(model_version=version)
    assert check.trigger == ForgettingCheck.Trigger.TRAINING
    assert check.created_by == alice


def test_a_team_can_turn_the_check_after_training_off(
    owner: Any, acme: Any, alice: Any, base_model_row: Any, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    update_policy(access=owner, max_perplexity_increase=0.1, max_pass_rate_drop=0.05, max_bias_gap=0.2,
                  check_after_training=False)  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        _, version = finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"))
    assert not ForgettingCheck.objects.for_team(acme).filter(model_version=version).exists()


def test_the_operator_can_turn_the_check_after_training_off_studio_wide(
    acme: Any, alice: Any, base_model_row: Any, settings: Any, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    settings.EVALS_CHECK_AFTER_TRAINING = False
    with django_capture_on_commit_callbacks(execute=True):
        _, version = finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"))
    assert not ForgettingCheck.objects.for_team(acme).filter(model_version=version).exists()


def test_a_viewer_cannot_start_a_check(acme: Any, model_version: Any) -> None:
    viewer = resolve_access(member(acme, Role.VIEWER, "vera"), acme.slug)
    with pytest.raises(PermissionDenied):
        forgetting.start_check(access=viewer, version=model_version)


def test_a_missing_base_model_folder_fails_the_check_with_a_reason(owner: Any, model_version: Any) -> None:
    check = checked(forgetting.start_check(access=owner, version=model_version))
    assert check.status == CheckStatus.FAILED
    assert check.error.startswith("Perplexity could not be measured:")
    assert forgetting.latest_check(model_version) is None


# --- pages and API --------------------------------------------------------------------------------------------


def test_the_version_page_shows_a_flagged_check(login: Callable[..., Client], alice: Any, model_version: Any) -> None:
    ForgettingCheck.objects.create(
        team=model_version.team, model_version=model_version, status=CheckStatus.SUCCEEDED, perplexity_status="done",
        perplexity_before=41.2, perplexity_after=58.9, flagged=True, limits={"max_perplexity_increase": 0.1},
        reasons=["Perplexity 41.2 → 58.9 (+43 %, limit 10 %)"],
    )  # fmt: skip
    page = login(alice).get(reverse("training:version", args=["acme", model_version.pk]))
    text = " ".join(page.content.decode().split())
    assert "Forgetting: flagged</strong> — perplexity 41.2 → 58.9 (+43 %, limit 10 %)" in text


def test_check_for_forgetting_from_the_version_page(login: Callable[..., Client], bob: Any, model_version: Any) -> None:
    response = login(bob).post(reverse("evals:forgetting_new", args=["acme", model_version.pk]))
    assert response.status_code == 302
    check = ForgettingCheck.objects.for_team(model_version.team).get(model_version=model_version)
    assert (check.trigger, check.created_by) == (ForgettingCheck.Trigger.ON_DEMAND, bob)


def test_check_for_forgetting_through_the_api(bearer: Callable[..., Client], bob: Any, model_version: Any) -> None:
    url = f"/api/v1/teams/acme/model-versions/{model_version.pk}/forgetting-checks"
    response = bearer(bob).post(url)
    assert response.status_code == 201
    assert response.json()["status"] == "queued"
    assert [check["id"] for check in bearer(bob).get(url).json()] == [response.json()["id"]]


def test_an_admin_sets_the_teams_limits(login: Callable[..., Client], acme: Any, user_in_role: Any) -> None:
    admin = user_in_role(Role.ADMIN)
    form = {"max_perplexity_increase": "25", "max_pass_rate_drop": "3", "max_bias_gap": "0.1"}
    response = login(admin).post(reverse("evals:policy", args=["acme"]), form)
    assert response.status_code == 302
    policy = EvalsPolicy.objects.for_team(acme).get()
    assert (policy.max_perplexity_increase, policy.max_pass_rate_drop, policy.max_bias_gap) == (0.25, 0.03, 0.1)
    assert policy.check_after_training is False


def test_a_limit_out_of_range_is_refused_naming_the_field(bearer: Callable[..., Client], alice: Any) -> None:
    body = {"max_perplexity_increase": 0.1, "max_pass_rate_drop": 2, "max_bias_gap": 0.2}
    response = bearer(alice).put("/api/v1/teams/acme/evals-policy", body, content_type="application/json")
    assert response.status_code == 422
    assert "max_pass_rate_drop" in str(response.json())


def test_a_member_cannot_change_the_limits(login: Callable[..., Client], bob: Any, acme: Any) -> None:
    form = {"max_perplexity_increase": "99", "max_pass_rate_drop": "3", "max_bias_gap": "0.1"}
    assert login(bob).post(reverse("evals:policy", args=["acme"]), form).status_code == 403
    assert not EvalsPolicy.objects.for_team(acme).exists()


# --- through the real worker ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_check_runs_on_the_training_queue_of_the_real_worker(
    celery_worker: None, starter_model_path: Path, lora_adapters: list[Path]
) -> None:
    from tests.factories import starter_deployment

    _, access, deployment = starter_deployment(starter_model_path, lora_adapters[0], name="live")
    check = forgetting.start_check(access=access, version=deployment.model_version)
    deadline = time.monotonic() + 300
    while True:
        check.refresh_from_db()
        if not check.is_active or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert check.status == CheckStatus.SUCCEEDED, check.error
    assert check.flagged and check.reasons[0].startswith("Perplexity")


# --- regression suites ----------------------------------------------------------------------------------------


def test_a_suite_is_marked_as_a_regression_suite_through_the_api(
    bearer: Callable[..., Client], bob: Any, acme: Any, alice: Any, base_model_row: Any
) -> None:
    dataset = sample_version(acme, alice, "chat")
    body = {"name": "Basics", "dataset_version": dataset.pk, "graders": [{"type": "exact_match"}],
            "base_models": [base_model_row.pk]}  # fmt: skip
    response = bearer(bob).post("/api/v1/teams/acme/eval-suites/", body, content_type="application/json")
    assert response.status_code == 201
    assert response.json()["base_models"] == [base_model_row.pk]


def test_a_regression_suite_of_an_unknown_base_model_is_refused(
    bearer: Callable[..., Client], bob: Any, acme: Any, alice: Any
) -> None:
    dataset = sample_version(acme, alice, "chat")
    body = {"name": "Basics", "dataset_version": dataset.pk, "graders": [{"type": "exact_match"}], "base_models": [999]}
    response = bearer(bob).post("/api/v1/teams/acme/eval-suites/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errors"]["base_models"] == ["Base model 999: not a ready base model the team may use."]


def test_the_suite_form_marks_a_regression_suite(
    login: Callable[..., Client], bob: Any, acme: Any, alice: Any, model_version: Any, base_model_row: Any
) -> None:
    dataset = sample_version(acme, alice, "chat")
    form = {"name": "Basics", "dataset_version": dataset.pk, "graders": '[{"type": "exact_match"}]',
            "base_models": [base_model_row.pk]}  # fmt: skip
    assert login(bob).post(reverse("evals:new", args=["acme"]), form).status_code == 302
    assert [suite.name for suite in forgetting.regression_suites(model_version)] == ["Basics"]
