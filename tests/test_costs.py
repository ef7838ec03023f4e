"""Costs: what finished training jobs cost, the month's report (page and API), and the budget that warns and refuses
launches (``accounts.costs``, ``training_app.jobs.record_job_spend``)."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from accounts import costs
from accounts.models import AuditEvent, Budget, SpendRecord
from accounts.permissions import resolve_access
from accounts.roles import Role
from serving_app import deployments
from tests.factories import finished_job, member, sample_version
from tests.test_training_pages import form_data
from training_app import jobs, runner
from training_app.models import JobStatus, TrainingJob

API = "/api/v1/teams/acme/"
# A two-GPU CUDA pool beside the tests' CPU pools: its jobs' hours are GPU-hours.
GPU_POOL = {"label": "2 x H100", "queue": "gpu-none", "accelerator": "cuda", "devices": 2, "memory_gib": 80,
            "peak_tflops": 989, "efficiency": 0.2}  # fmt: skip


@pytest.fixture
def chat_version(acme: Any, alice: Any) -> Any:
    return sample_version(acme, alice, "chat")


def spent(team: Any, amount: str) -> SpendRecord:
    """An earlier job of ``team`` that cost ``amount`` this month."""
    now = timezone.now()
    return SpendRecord.objects.create(
        team=team, kind="training", source_id=10_000, label="earlier job", period_start=now - timedelta(hours=1),
        period_end=now, device_hours=Decimal(1), amount=Decimal(amount), currency=team.currency,
    )  # fmt: skip


def set_limits(team: Any, *, soft: str | None = None, hard: str | None = None) -> None:
    Budget.objects.create(
        team=team, soft_limit=Decimal(soft) if soft else None, hard_limit=Decimal(hard) if hard else None
    )


def ended_job(team: Any, owner: Any, base: Any, version: Any, *, name: str, pool: str, hours: float) -> TrainingJob:
    """A job on ``pool`` that ran ``hours`` and ended an hour ago, its spend recorded as its end records it."""
    job, _ = finished_job(team, owner, base, version, name=name)
    end = timezone.now() - timedelta(hours=1)
    TrainingJob.objects.for_team(team).filter(pk=job.pk).update(
        pool=pool, started_at=end - timedelta(hours=hours), finished_at=end
    )
    job.refresh_from_db()
    jobs.record_job_spend(job)
    return job


@pytest.fixture
def known_jobs(acme: Any, alice: Any, base_model_row: Any, chat_version: Any, settings: Any) -> list[TrainingJob]:
    """Two ended jobs at known prices (EUR): 1.5 h on two GPUs at 2.50 per GPU-hour = 7.50, and 3 h on two CPU
    processes at 0.10 per CPU-hour = 0.60."""
    settings.TRAINING_POOLS = {**settings.TRAINING_POOLS, "h100x2": GPU_POOL}
    acme.gpu_hour_price, acme.currency = Decimal("2.50"), "EUR"
    acme.save()
    Budget.objects.create(team=acme, cpu_hour_price=Decimal("0.10"))
    return [
        ended_job(acme, alice, base_model_row, chat_version, name="gpu run", pool="h100x2", hours=1.5),
        ended_job(acme, alice, base_model_row, chat_version, name="cpu run", pool="cpu-2", hours=3),
    ]


# --- the hard limit refuses launches; the soft limit warns --------------------------------------------


def test_hard_budget_refuses_a_launch_from_the_form(
    acme: Any, alice: Any, login: Any, base_model_row: Any, chat_version: Any
) -> None:
    set_limits(acme, hard="10")
    spent(acme, "12.00")
    response = login(alice).post(reverse("training:new", args=["acme"]), form_data(base_model_row, chat_version))
    assert response.status_code == 400
    html = response.content.decode()
    assert "has reached the team&#x27;s hard budget of 10.00 USD" in html and "/t/acme/costs/" in html
    assert not TrainingJob.objects.for_team(acme).exists()


def test_hard_budget_refuses_a_launch_through_the_api(
    acme: Any, alice: Any, bearer: Any, base_model_row: Any, chat_version: Any
) -> None:
    set_limits(acme, hard="10")
    spent(acme, "10.00")
    body = {"name": "over budget", "base_model": base_model_row.pk, "dataset_version": chat_version.pk,
            "pool": "idle", "settings": {"max_steps": 2}}  # fmt: skip
    response = bearer(alice).post(API + "jobs", json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    (message,) = response.json()["errors"]["budget"]
    assert "hard budget of 10.00 USD" in message and "An owner can raise the hard limit on the Costs page" in message
    assert not TrainingJob.objects.for_team(acme).exists()


def test_hard_budget_refuses_a_new_deployment(acme: Any, owner: Any, model_version: Any) -> None:
    set_limits(acme, hard="5")
    spent(acme, "6.00")
    with pytest.raises(ValidationError) as refused:
        deployments.create_deployment(access=owner, name="support-bot", version=model_version)
    assert "hard budget of 5.00 USD" in refused.value.message_dict["budget"][0]


def test_soft_budget_warns_on_the_launch_form(acme: Any, alice: Any, login: Any) -> None:
    set_limits(acme, soft="10", hard="50")
    spent(acme, "11.00")
    html = login(alice).get(reverse("training:new", args=["acme"])).content.decode()
    assert 'id="budget-banner"' in html
    assert "has reached the team&#x27;s soft budget of 10.00 USD; launches are refused from 50.00 USD" in html


def test_soft_budget_lets_the_launch_through(
    acme: Any, alice: Any, login: Any, base_model_row: Any, chat_version: Any
) -> None:
    set_limits(acme, soft="10")
    spent(acme, "11.00")
    data = {**form_data(base_model_row, chat_version), "pool": "idle"}
    response = login(alice).post(reverse("training:new", args=["acme"]), data)
    assert response.status_code == 302
    assert TrainingJob.objects.for_team(acme).count() == 1


def test_soft_budget_lets_an_api_launch_through_and_says_so(
    acme: Any, alice: Any, bearer: Any, base_model_row: Any, chat_version: Any
) -> None:
    set_limits(acme, soft="10", hard="50")
    spent(acme, "11.00")
    body = {"name": "near budget", "base_model": base_model_row.pk, "dataset_version": chat_version.pk,
            "pool": "idle", "settings": {"max_steps": 2}}  # fmt: skip

    response = bearer(alice).post(API + "jobs", json.dumps(body), content_type="application/json")

    assert response.status_code == 201
    warning = response.json()["budget_warning"]
    assert "has reached the team's soft budget of 10.00 USD; launches are refused from 50.00 USD" in warning


def test_soft_budget_lets_a_deployment_through_the_api_and_says_so(
    acme: Any, alice: Any, bearer: Any, model_version: Any
) -> None:
    set_limits(acme, soft="10")
    spent(acme, "11.00")
    body = {"name": "support-bot", "model_version": model_version.pk}

    response = bearer(alice).post(API + "deployments", json.dumps(body), content_type="application/json")

    assert response.status_code == 201, response.content
    assert "has reached the team's soft budget of 10.00 USD" in response.json()["budget_warning"]


def test_spend_of_last_month_does_not_count_against_this_months_budget(acme: Any) -> None:
    set_limits(acme, hard="10")
    record = spent(acme, "50.00")
    last_month = costs.month_bounds(costs.month_of())[0] - timedelta(hours=1)
    SpendRecord.objects.for_team(acme).filter(pk=record.pk).update(period_end=last_month)
    costs.check_budget(team=acme)  # does not raise
    assert costs.budget_status(acme).state == "ok"


# --- what jobs cost --------------------------------------------------------------------------------


def test_a_job_ending_records_its_gpu_hours_and_cost(
    acme: Any, alice: Any, base_model_row: Any, chat_version: Any, settings: Any
) -> None:
    settings.TRAINING_POOLS = {**settings.TRAINING_POOLS, "h100x2": GPU_POOL}
    acme.gpu_hour_price = Decimal("3.00")
    acme.save()
    job, _ = finished_job(acme, alice, base_model_row, chat_version, name="running")
    start = timezone.now() - timedelta(minutes=30)
    TrainingJob.objects.for_team(acme).filter(pk=job.pk).update(
        status=JobStatus.RUNNING, pool="h100x2", lease_owner="worker-1", started_at=start, finished_at=None
    )
    assert runner._complete(job, "worker-1", JobStatus.FAILED, failure={"message": "out of memory"})
    record = SpendRecord.objects.for_team(acme).get(kind="training", source_id=job.pk)
    # 30 minutes (and the milliseconds the test took) on two GPUs.
    assert Decimal("1.0") <= record.gpu_hours < Decimal("1.01") and record.devices == 2
    assert record.amount == (record.gpu_hours * Decimal("3.00")).quantize(Decimal("0.01"))


def test_a_job_cancelled_before_it_started_records_nothing(acme: Any, owner: Any, alice: Any, base_model_row: Any,
                                                           chat_version: Any) -> None:  # fmt: skip
    job, _ = finished_job(acme, alice, base_model_row, chat_version, name="queued")
    TrainingJob.objects.for_team(acme).filter(pk=job.pk).update(status=JobStatus.QUEUED, started_at=None,
                                                                 finished_at=None)  # fmt: skip
    job.refresh_from_db()
    jobs.cancel_job(access=owner, job=job)
    assert not SpendRecord.objects.for_team(acme).exists()


def test_costs_add_up_on_known_jobs_in_the_api(alice: Any, bearer: Any, known_jobs: list[TrainingJob]) -> None:
    report = bearer(alice).get(API + "costs/").json()
    lines = {line["label"]: line for line in report["training"]}
    assert lines["gpu run"] == {"source_id": known_jobs[0].pk, "label": "gpu run", "device_hours": 3.0,
                                "gpu_hours": 3.0, "tokens": 0, "amount": 7.5, "priced": True}  # fmt: skip
    assert (lines["cpu run"]["device_hours"], lines["cpu run"]["gpu_hours"], lines["cpu run"]["amount"]) == (6, 0, 0.6)
    assert (report["total"], report["training_total"], report["gpu_hours"], report["device_hours"]) == (8.1, 8.1, 3, 9)
    assert report["currency"] == "EUR" and sum(report["daily"]["training"]) == pytest.approx(8.1)


def test_costs_add_up_on_known_jobs_on_the_page(alice: Any, login: Any, known_jobs: list[TrainingJob]) -> None:
    html = login(alice).get(reverse("accounts:costs", args=["acme"])).content.decode()
    assert '<b id="cost-total">8.10 EUR</b>' in html and "(training 8.10, serving 0.00)" in html
    assert 'id="cost-chart"' in html and "Spend per day (EUR): Training 8.10, Serving 0 in total" in html
    assert f'href="/t/acme/training/{known_jobs[0].pk}/">gpu run</a>' in html


def test_a_cpu_pool_without_a_cpu_price_is_priced_like_gpus(acme: Any) -> None:
    acme.gpu_hour_price = Decimal("2.00")
    assert costs.device_hour_price(acme, "cpu") == Decimal("2.00")


def test_restricted_jobs_are_one_line_for_members(
    acme: Any, bob: Any, bearer: Any, known_jobs: list[TrainingJob]
) -> None:
    SpendRecord.objects.for_team(acme).filter(source_id=known_jobs[0].pk).update(restricted=True)
    labels = [line["label"] for line in bearer(bob).get(API + "costs/").json()["training"]]
    assert "gpu run" not in labels and costs.RESTRICTED_LABEL in labels


def test_a_month_is_read_from_the_query(alice: Any, bearer: Any, known_jobs: list[TrainingJob]) -> None:
    report = bearer(alice).get(API + "costs/?month=2001-01").json()
    assert report["month"] == "2001-01-01" and report["training"] == [] and report["total"] == 0


def test_a_malformed_month_is_refused_naming_the_format(alice: Any, bearer: Any) -> None:
    response = bearer(alice).get(API + "costs/?month=2026-13")
    assert response.status_code == 422 and "YYYY-MM" in response.content.decode()


# --- who changes the budget ------------------------------------------------------------------------


def test_owner_changes_the_budget_on_the_page_and_it_is_audited(acme: Any, alice: Any, login: Any) -> None:
    data = {"soft_limit": "100", "hard_limit": "150", "cpu_hour_price": "0.05"}
    response = login(alice).post(reverse("accounts:budget_change", args=["acme"]), data)
    assert response.status_code == 302
    budget = Budget.objects.for_team(acme).get()
    assert (budget.soft_limit, budget.hard_limit, budget.cpu_hour_price) == (100, 150, Decimal("0.05"))
    event = AuditEvent.objects.for_team(acme).get(action="costs.budget_changed")
    assert event.actor == alice and event.details["new"] == {"soft_limit": "100.00", "hard_limit": "150.00",
                                                            "cpu_hour_price": "0.05"}  # fmt: skip
    assert event.details["old"] == {"soft_limit": None, "hard_limit": None, "cpu_hour_price": None}


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, Role.VIEWER])
def test_only_owners_change_the_budget(acme: Any, bearer: Any, role: Role) -> None:
    user = member(acme, role, f"acme-{role}")
    response = bearer(user).put(API + "costs/budget", json.dumps({"hard_limit": 1}), content_type="application/json")
    assert response.status_code == 403
    assert not Budget.objects.for_team(acme).exists()
    assert not AuditEvent.objects.for_team(acme).filter(action="costs.budget_changed").exists()


def test_a_soft_limit_above_the_hard_limit_is_refused(acme: Any, alice: Any, bearer: Any) -> None:
    body = {"soft_limit": 200, "hard_limit": 100}
    response = bearer(alice).put(API + "costs/budget", json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert "must not be above the hard limit" in response.json()["errors"]["soft_limit"][0]
    assert not Budget.objects.for_team(acme).exists()


def test_members_see_the_budget_but_not_its_form(acme: Any, bob: Any, login: Any) -> None:
    set_limits(acme, soft="10")
    html = login(bob).get(reverse("accounts:costs", args=["acme"])).content.decode()
    assert "soft 10.00, hard — USD per month" in html and 'id="budget"' not in html


def test_saving_the_same_budget_again_is_not_audited_twice(acme: Any, alice: Any) -> None:
    access = resolve_access(alice, "acme")
    for _ in range(2):
        costs.set_budget(access=access, soft_limit=Decimal(5), hard_limit=None, cpu_hour_price=None)
    assert AuditEvent.objects.for_team(acme).filter(action="costs.budget_changed").count() == 1
