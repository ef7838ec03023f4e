"""Serving cost: the GPU memory a deployment needs, the GPUs that hold it and its price (``serving_app.costs``), and
the GPU time and tokens a deployment records (``record_serving_spend``)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, SpendRecord
from serving_app import costs
from serving_app.models import Deployment, UsageRecord
from tests.factories import finished_job, sample_version
from training_app.models import BaseModel

API = "/api/v1/teams/acme/"
GIB = 1024**3
# Llama 3 8B's config.json (the parts the estimate reads).
LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "vocab_size": 128256, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}  # fmt: skip
LLAMA_8B_PARAMETERS = 8_030_261_248


@pytest.fixture
def llama_8b(tmp_path: Path, db: None) -> BaseModel:
    """A base model row whose folder holds Llama 3 8B's config.json (no weights)."""
    folder = tmp_path / "llama-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_8B), encoding="utf-8")
    return BaseModel.objects.create(
        name="llama-8b", source=BaseModel.Source.SERVER_PATH, path=str(folder), architecture="LlamaForCausalLM",
        parameter_count=LLAMA_8B_PARAMETERS, context_length=8192, vocab_size=128256,
    )  # fmt: skip


@pytest.fixture
def big_deployment(acme: Any, alice: Any, llama_8b: BaseModel) -> Deployment:
    """A LoRA version of ``llama_8b`` (no adapter weights on disk) served in bf16, 16 requests of 8,192 tokens."""
    _, version = finished_job(acme, alice, llama_8b, sample_version(acme, alice, "chat"), name="big")
    acme.gpu_hour_price, acme.currency = Decimal("2.50"), "EUR"
    acme.save()
    return Deployment.objects.create(
        team=acme, name="big-bot", model_version=version, created_by=alice, serving_precision="bf16",
        serving_context_length=8192, expected_concurrency=16,
    )  # fmt: skip


def test_serving_memory_of_a_known_config(big_deployment: Deployment) -> None:
    cost = costs.deployment_cost(big_deployment)
    assert cost is not None
    weights = LLAMA_8B_PARAMETERS * 2  # bf16
    kv_per_token = 2 * 32 * 8 * 128 * 2  # K and V, layers, kv heads, head dim, 2 bytes
    assert (cost.weights_bytes, cost.kv_bytes_per_token) == (weights, 131_072)
    assert cost.kv_cache_bytes == kv_per_token * 8192 * 16 == 16 * GIB
    assert cost.total_bytes == weights + 16 * GIB + GIB // 2  # + the CUDA runtime


def test_a_known_config_needs_two_24_gb_gpus_or_one_80_gb_gpu(big_deployment: Deployment) -> None:
    # 16.06 GB of weights + 17.18 GB of cache: split in two (16.62 GB + 0.5 GiB each) fits 90 % of 24 GiB.
    cost = costs.deployment_cost(big_deployment)
    assert cost is not None
    assert [(placement.kind.memory_gib, placement.gpus) for placement in cost.placements] == [(24, 2), (80, 1)]
    assert cost.gpus == 1 and cost.best is not None and cost.best.kind.memory_gib == 80


def test_serving_price_per_hour_and_month_in_the_api(alice: Any, bearer: Any, big_deployment: Deployment) -> None:
    answer = bearer(alice).get(API + f"deployments/{big_deployment.pk}/cost").json()["deployment"]
    assert (answer["gpus"], answer["per_hour"], answer["per_month"], answer["currency"]) == (1, 2.5, 1825.0, "EUR")
    assert answer["total_bytes"] == LLAMA_8B_PARAMETERS * 2 + 16 * GIB + GIB // 2


def test_a_model_too_large_for_eight_gpus_fits_nowhere(big_deployment: Deployment, settings: Any) -> None:
    settings.SERVING_GPUS = [{"name": "tiny", "memory_gib": 2}]
    cost = costs.deployment_cost(big_deployment)
    assert cost is not None and cost.best is None and cost.hour_cost is None


def test_the_smaller_candidate_is_the_largest_smaller_model(
    acme: Any, alice: Any, owner: Any, big_deployment: Deployment, base_model_row: BaseModel
) -> None:
    _, student = finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"), name="student")
    assert costs.smaller_candidate(owner, big_deployment) == student
    candidate = costs.candidate_cost(owner, big_deployment)
    assert candidate is not None and candidate.parameters == base_model_row.parameter_count
    assert candidate.context_length == base_model_row.context_length  # the plan's 8,192 is longer than its own


def test_the_deployment_page_shows_both_costs(
    acme: Any, alice: Any, login: Any, big_deployment: Deployment, base_model_row: BaseModel
) -> None:
    finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"), name="student")
    html = login(alice).get(reverse("serving:deployment", args=["acme", big_deployment.pk])).content.decode()
    assert 'id="serving-cost"' in html and "serves now" in html and "smaller candidate" in html
    assert "1,825.00 EUR" in html and "2 × 24.0 GiB" in html


def test_an_admin_changes_the_serving_plan_and_it_is_audited(
    acme: Any, alice: Any, login: Any, big_deployment: Deployment
) -> None:
    url = reverse("serving:deployment_serving_plan", args=["acme", big_deployment.pk])
    login(alice).post(url, {"precision": "fp8", "context_length": "4096", "concurrency": "2"})
    big_deployment.refresh_from_db()
    plan = (
        big_deployment.serving_precision,
        big_deployment.serving_context_length,
        big_deployment.expected_concurrency,
    )
    assert plan == ("fp8", 4096, 2)
    event = AuditEvent.objects.for_team(acme).get(action="deployment.serving_plan_changed")
    assert event.details["new"] == {"serving_precision": "fp8", "serving_context_length": 4096,
                                    "expected_concurrency": 2}  # fmt: skip


def test_a_context_longer_than_the_models_is_refused(alice: Any, bearer: Any, big_deployment: Deployment) -> None:
    body = {"precision": "bf16", "context_length": 100_000, "concurrency": 1}
    response = bearer(alice).put(
        API + f"deployments/{big_deployment.pk}/serving-plan", json.dumps(body), content_type="application/json"
    )
    assert response.status_code == 400
    assert "Give 1 to 8192 tokens (llama-8b's context length)" in response.json()["errors"]["context_length"][0]


# --- what a deployment spends ----------------------------------------------------------------------


def noon_today() -> datetime:
    return timezone.make_aware(datetime.combine(timezone.localdate(), datetime.min.time())) + timedelta(hours=12)


@pytest.fixture
def served_since_half_past_nine(big_deployment: Deployment) -> Deployment:
    """``big_deployment`` published at 9:30 today, with two answered requests (150 tokens) and a failed one."""
    Deployment.objects.for_team(big_deployment.team).filter(pk=big_deployment.pk).update(
        created_at=noon_today() - timedelta(hours=2, minutes=30)
    )
    for status, prompt, completion in (("ok", 100, 20), ("ok", 20, 10), ("failed", 50, 0)):
        UsageRecord.objects.create(
            team=big_deployment.team, source="api", status=status, deployment=big_deployment, model_label="big-bot",
            prompt_tokens=prompt, completion_tokens=completion, created_at=noon_today() - timedelta(hours=1),
        )  # fmt: skip
    return big_deployment


def test_a_deployment_records_its_gpu_hours_and_tokens(served_since_half_past_nine: Deployment) -> None:
    costs.record_serving_spend(noon_today())
    record = SpendRecord.objects.for_team(served_since_half_past_nine.team).get(kind="serving")
    # 2.5 hours on one 80 GB GPU at 2.50 EUR per GPU-hour.
    assert (record.gpu_hours, record.devices, record.amount) == (Decimal("2.5"), 1, Decimal("6.25"))
    assert record.tokens == 150


def test_recording_serving_spend_again_rewrites_the_days_row(served_since_half_past_nine: Deployment) -> None:
    costs.record_serving_spend(noon_today())
    costs.record_serving_spend(noon_today() + timedelta(hours=1))
    record = SpendRecord.objects.for_team(served_since_half_past_nine.team).get(kind="serving")
    assert record.gpu_hours == Decimal("3.5")


# --- a canary beside the published version ------------------------------------------------------------------


def with_canary(deployment: Deployment, version: Any, share: int = 10) -> Deployment:
    Deployment.objects.for_team(deployment.team).filter(pk=deployment.pk).update(
        canary_version=version, canary_share=share
    )
    deployment.refresh_from_db()
    return deployment


def test_an_adapter_canary_of_the_same_base_adds_its_adapter_on_the_same_gpus(
    acme: Any, alice: Any, llama_8b: BaseModel, big_deployment: Deployment
) -> None:
    _, canary = finished_job(acme, alice, llama_8b, sample_version(acme, alice, "chat"), name="big v2")
    Path(canary.path).mkdir(parents=True, exist_ok=True)
    (Path(canary.path) / "adapter_model.safetensors").write_bytes(b"\0" * 2**20)
    alone = costs.deployment_cost(big_deployment)
    assert alone is not None

    current, own = costs.serving_costs(with_canary(big_deployment, canary))

    assert own is None and current is not None
    assert current.adapter_bytes == alone.adapter_bytes + 2**20
    assert current.total_bytes == alone.total_bytes + 2**20
    assert "+ canary big v2" in current.label and "(10 % of requests)" in current.label


@pytest.fixture
def other_base_version(acme: Any, alice: Any, llama_8b: BaseModel) -> Any:
    """A LoRA version of a second 8B base model (the same config): served by a vLLM server of its own."""
    other = BaseModel.objects.create(
        name="llama-8b-b", source=BaseModel.Source.SERVER_PATH, path=llama_8b.path, architecture="LlamaForCausalLM",
        parameter_count=LLAMA_8B_PARAMETERS, context_length=8192, vocab_size=128256,
    )  # fmt: skip
    return finished_job(acme, alice, other, sample_version(acme, alice, "chat"), name="other base")[1]


def test_a_canary_on_another_base_needs_gpus_of_its_own_and_they_are_spent(
    acme: Any, other_base_version: Any, served_since_half_past_nine: Deployment
) -> None:
    deployment = with_canary(served_since_half_past_nine, other_base_version)

    current, own = costs.serving_costs(deployment)
    costs.record_serving_spend(noon_today())

    assert current is not None and own is not None and (current.gpus, own.gpus) == (1, 1)
    assert "canary (10 % of requests)" in own.label
    record = SpendRecord.objects.for_team(acme).get(kind="serving")
    assert (record.devices, record.gpu_hours) == (2, Decimal("5.0"))  # 2.5 hours on two 80 GB GPUs


def test_the_cost_api_and_page_show_a_canary_served_on_its_own(
    alice: Any, bearer: Any, login: Any, other_base_version: Any, big_deployment: Deployment
) -> None:
    deployment = with_canary(big_deployment, other_base_version, share=25)

    answer = bearer(alice).get(API + f"deployments/{deployment.pk}/cost").json()
    html = login(alice).get(reverse("serving:deployment", args=["acme", deployment.pk])).content.decode()

    assert answer["canary"]["gpus"] == 1 and "(25 % of requests)" in answer["canary"]["model"]
    assert answer["deployment"]["model"] == "big v1 (LoRA adapter of llama-8b)"
    assert "canary, its own GPUs" in html and "other base" in html
