"""Training through the API: settings and presets, estimates, launching, cancelling, cloning, metrics,
and the model registry (card, download, deletion), each inside its team only."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client

from accounts.models import AuditEvent
from accounts.permissions import resolve_access
from accounts.roles import Role
from tests.factories import member, sample_version
from training_app import jobs
from training_app.models import BaseModel, JobMetric, JobStatus, ModelVersion, TrainingJob

API = "/api/v1/teams/acme/"
Bearer = Callable[[Any], Client]


def post(client: Client, path: str, body: dict[str, Any] | None = None) -> Any:
    return client.post(API + path, json.dumps(body or {}), content_type="application/json")


def launch_body(model: BaseModel, version: Any, **settings: Any) -> dict[str, Any]:
    return {"name": "support bot", "base_model": model.pk, "dataset_version": version.pk, "settings": settings}


def launch(
    user: Any, model: BaseModel, version: Any, name: str = "support bot", settings: dict[str, Any] | None = None
) -> TrainingJob:
    """A queued job launched by ``user`` through the service (the API's own path is tested separately)."""
    access = resolve_access(user, "acme")
    values = {"max_steps": 2, **(settings or {})}
    return jobs.create_job(
        access=access, name=name, base_model=model, dataset_version=version, pool="cpu", values=values
    )


@pytest.fixture
def chat_version(acme: Any, alice: Any) -> Any:
    return sample_version(acme, alice, "chat")


@pytest.fixture
def model_version(alice: Any, base_model_row: BaseModel, chat_version: Any, tmp_path: Path) -> ModelVersion:
    """A registered adapter whose folder holds one small file (as a succeeded job would leave it)."""
    job = launch(alice, base_model_row, chat_version)
    TrainingJob.objects.for_team(job.team).filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8}')
    return ModelVersion.objects.create(
        team=job.team,
        name="support bot",
        number=1,
        job=job,
        base_model=base_model_row,
        kind=ModelVersion.Kind.ADAPTER,
        path=str(folder),
        metrics={"steps": 2, "eval_loss_before": 3.2, "eval_loss_after": 2.9},
        lineage={**job.lineage, "config": job.config, "job": {"id": job.pk, "pool": "cpu"}},
        created_by=alice,
    )


# --- base models and the settings table -------------------------------------------------------------


def test_base_models_list_the_global_starter_model_with_its_facts(
    alice: Any, bearer: Bearer, base_model_row: BaseModel
) -> None:
    listed = bearer(alice).get(API + "base-models").json()
    assert [(m["name"], m["scope"], m["has_chat_template"]) for m in listed] == [(base_model_row.name, "global", True)]
    detail = bearer(alice).get(f"{API}base-models/{base_model_row.pk}").json()
    assert detail["context_length"] == base_model_row.context_length > 0
    assert detail["parameters"] == base_model_row.parameter_count > 0
    assert detail["chat_template"] == base_model_row.chat_template
    assert "path" not in detail


def test_another_teams_base_model_is_404(alice: Any, globex: Any, bearer: Bearer) -> None:
    private = BaseModel.objects.create(team=globex, name="globex-private", path="/x")
    assert bearer(alice).get(f"{API}base-models/{private.pk}").status_code == 404


def test_settings_list_every_setting_preset_and_pool(alice: Any, bearer: Bearer) -> None:
    options = bearer(alice).get(API + "training/settings").json()
    settings = {setting["key"]: setting for setting in options["settings"]}
    assert settings["lora.rank"] | {"help": ""} == {
        "key": "lora.rank", "kind": "int", "default": 16, "label": "LoRA rank", "help": "", "choices": [],
        "group": "LoRA",
    }  # fmt: skip
    assert {"value": "dpo", "label": "Preference tuning (DPO)"} in settings["stage"]["choices"]
    assert {"value": "kto", "label": "Feedback tuning (KTO)"} in settings["stage"]["choices"]
    assert (settings["train_reasoning"]["kind"], settings["train_reasoning"]["default"]) == ("bool", True)
    assert (settings["kto_desirable_weight"]["kind"], settings["kto_desirable_weight"]["default"]) == (
        "optional_float",
        None,
    )
    assert options["pools"][0]["name"] == options["default_pool"] == "cpu"
    presets = {preset["slug"]: preset for preset in options["presets"]}
    assert presets["quick-lora"]["available"] and presets["quick-lora"]["values"]["lora.rank"] == 16
    assert not presets["qlora"]["available"]  # the test settings have only a CPU pool
    assert "CUDA" in presets["qlora"]["reason"]


# --- estimate -----------------------------------------------------------------------------------------


def test_estimate_gives_memory_time_and_tokens_for_a_valid_run(
    alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    response = post(bearer(alice), "training/estimate", launch_body(base_model_row, chat_version, max_steps=10))
    assert response.status_code == 200, response.content
    estimate = response.json()
    assert estimate["fits"] is True
    assert 0 < estimate["memory_bytes"] < 8 * 2**30
    assert estimate["optimizer_steps"] == 10
    assert estimate["seconds"] > 0 and estimate["dataset_tokens"] > 0


def test_estimate_gives_the_time_as_a_range_with_its_basis(
    alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    response = post(bearer(alice), "training/estimate", launch_body(base_model_row, chat_version, max_steps=10))
    estimate = response.json()
    assert estimate["seconds_low"] < estimate["seconds"] < estimate["seconds_high"]
    assert estimate["range_basis"] == "no finished runs on this pool yet: assumed efficiency"


def test_estimate_refuses_invalid_settings_field_by_field(
    alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    body = launch_body(base_model_row, chat_version, **{"lora.rank": 0, "learning_rate": -1})
    response = post(bearer(alice), "training/estimate", body)
    assert response.status_code == 400
    assert {"lora.rank", "learning_rate"} <= set(response.json()["errors"])


# --- launching ----------------------------------------------------------------------------------------


def test_launch_queues_a_job_with_the_settings_stored_nested(
    alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    body = {**launch_body(base_model_row, chat_version, **{"lora.rank": 8, "max_steps": 3}), "preset": "quick-lora"}
    response = post(bearer(alice), "jobs", body)
    assert response.status_code == 201, response.content
    job = response.json()
    assert (job["status"], job["name"], job["created_by"]) == ("queued", "support bot", "alice")
    assert job["config"]["lora"]["rank"] == 8  # explicit settings win over the preset's 16
    assert job["config"]["learning_rate"] == 2e-4 and job["config"]["max_steps"] == 3
    assert job["base_model"]["id"] == base_model_row.pk and job["dataset_version"]["id"] == chat_version.pk
    assert job["estimate"] and job["lineage"]["base_model"]["name"] == base_model_row.name
    assert TrainingJob.objects.for_team(chat_version.team).get(pk=job["id"]).config["lora"]["rank"] == 8


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"lora.rank": 0}, "lora.rank"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"max_seq_length": 1_000_000}, "max_seq_length"),
        ({"stage": "dpo"}, "stage"),  # a chat dataset has no chosen/rejected pairs
        ({"stage": "kto"}, "stage"),  # nor answers labelled desirable or undesirable
        ({"deepspeed": "custom", "deepspeed_custom": {"not_a_key": 1}}, "deepspeed_custom"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_launch_refuses_invalid_settings_naming_the_field(
    values: dict[str, Any], field: str, alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    response = post(bearer(alice), "jobs", launch_body(base_model_row, chat_version, **values))
    assert response.status_code == 400, response.content
    answer = response.json()
    assert field in answer["errors"], answer
    assert answer["detail"]
    assert not TrainingJob.objects.for_team(chat_version.team).exists()


def test_launch_refuses_another_teams_dataset_version(
    alice: Any, globex: Any, charlie: Any, bearer: Bearer, base_model_row: BaseModel
) -> None:
    foreign = sample_version(globex, charlie, "chat")
    response = post(bearer(alice), "jobs", launch_body(base_model_row, foreign))
    assert response.status_code == 400
    assert "dataset_version" in response.json()["errors"]


def test_viewer_cannot_launch(
    user_in_role: Callable[[str], Any], bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    response = post(bearer(user_in_role(Role.VIEWER)), "jobs", launch_body(base_model_row, chat_version))
    assert response.status_code == 403
    assert not TrainingJob.objects.for_team(chat_version.team).exists()


# --- reading jobs ----------------------------------------------------------------------------------------


def test_jobs_list_filters_by_status(alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any) -> None:
    queued = launch(alice, base_model_row, chat_version, name="queued one")
    failed = launch(alice, base_model_row, chat_version, name="failed one")
    TrainingJob.objects.for_team(failed.team).filter(pk=failed.pk).update(status=JobStatus.FAILED)
    client = bearer(alice)
    assert client.get(API + "jobs").json()["count"] == 2
    listed = client.get(API + "jobs", {"status": "queued"}).json()
    assert [job["id"] for job in listed["items"]] == [queued.pk]


def test_job_detail_logs_and_yaml(alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any) -> None:
    job = launch(alice, base_model_row, chat_version, settings={"lora.rank": 4})
    TrainingJob.objects.for_team(job.team).filter(pk=job.pk).update(log_tail="step 1: loss 3.1\n")
    client = bearer(alice)
    detail = client.get(f"{API}jobs/{job.pk}").json()
    assert (detail["status"], detail["progress"], detail["model_version"]) == ("queued", 0.0, None)
    assert client.get(f"{API}jobs/{job.pk}/logs").json() == {"log_tail": "step 1: loss 3.1\n"}
    config = client.get(f"{API}jobs/{job.pk}/config.yaml")
    assert config["Content-Type"].startswith("application/yaml")
    assert yaml.safe_load(config.content)["lora.rank"] == 4


def test_job_detail_lists_the_speed_settings_the_trainer_recorded(
    alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    from training_app.engine import speed

    job = launch(alice, base_model_row, chat_version)
    client = bearer(alice)
    assert client.get(f"{API}jobs/{job.pk}").json()["speed_settings"] == []
    run_dir = job.folder() / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    speed.write([speed.Setting("liger", "off", "Liger's kernels are Triton kernels for CUDA")], run_dir)

    detail = client.get(f"{API}jobs/{job.pk}").json()

    assert detail["speed_settings"] == [
        {"name": "liger", "value": "off", "reason": "Liger's kernels are Triton kernels for CUDA"}
    ]
    assert detail["estimate"]["memory_plan"]["reason"].startswith("the estimate: ")


def test_metrics_are_series_of_step_and_value(
    alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version)
    JobMetric.objects.create(job=job, seq=1, step=1, values={"loss": 3.5, "learning_rate": 1e-4})
    JobMetric.objects.create(job=job, seq=2, step=2, values={"loss": 3.0, "eval_loss": 3.2})
    series = bearer(alice).get(f"{API}jobs/{job.pk}/metrics").json()
    assert series["loss"] == [[1, 3.5], [2, 3.0]]
    assert series["eval_loss"] == [[2, 3.2]]
    assert series["grad_norm"] == []


# --- cancelling and cloning ----------------------------------------------------------------------------


def test_cancelling_a_queued_job_stops_it_at_once_and_is_audited(
    bob: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    job = launch(bob, base_model_row, chat_version)
    response = post(bearer(bob), f"jobs/{job.pk}/cancel")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "cancelled"
    assert AuditEvent.objects.for_team(job.team).filter(action="job.cancelled", target_id=str(job.pk)).exists()


def test_a_finished_job_cannot_be_cancelled(
    alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version)
    TrainingJob.objects.for_team(job.team).filter(pk=job.pk).update(status=JobStatus.SUCCEEDED)
    response = post(bearer(alice), f"jobs/{job.pk}/cancel")
    assert response.status_code == 400
    assert "status" in response.json()["errors"]


def test_a_member_cannot_cancel_another_members_job_but_the_owner_can(
    alice: Any, bob: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    carol = member(chat_version.team, Role.MEMBER, "carol")
    job = launch(carol, base_model_row, chat_version)
    assert post(bearer(bob), f"jobs/{job.pk}/cancel").status_code == 403
    assert TrainingJob.objects.for_team(job.team).get(pk=job.pk).status == JobStatus.QUEUED
    assert post(bearer(alice), f"jobs/{job.pk}/cancel").status_code == 202
    assert TrainingJob.objects.for_team(job.team).get(pk=job.pk).status == JobStatus.CANCELLED


def test_cloning_launches_the_same_run_with_the_changes(
    alice: Any, bearer: Bearer, base_model_row: BaseModel, chat_version: Any
) -> None:
    source = launch(
        alice, base_model_row, chat_version, settings={"lora.rank": 4, "lora.target_modules": "q_proj, v_proj"}
    )
    response = post(bearer(alice), f"jobs/{source.pk}/clone", {"settings": {"learning_rate": 1e-4}})
    assert response.status_code == 201, response.content
    clone = response.json()
    assert clone["cloned_from"] == source.pk and clone["id"] != source.pk
    assert clone["name"] == "support bot (clone)"
    assert clone["config"]["learning_rate"] == 1e-4
    assert clone["config"]["lora"] == source.config["lora"] == {**source.config["lora"], "rank": 4}
    assert clone["config"]["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert (clone["base_model"]["id"], clone["dataset_version"]["id"]) == (base_model_row.pk, chat_version.pk)


# --- model versions --------------------------------------------------------------------------------------


def test_model_version_detail_shows_card_fields_lineage_and_files(
    bob: Any, bearer: Bearer, model_version: ModelVersion
) -> None:
    listed = bearer(bob).get(API + "model-versions").json()
    assert [version["id"] for version in listed["items"]] == [model_version.pk]
    detail = bearer(bob).get(f"{API}model-versions/{model_version.pk}").json()
    assert (detail["kind"], detail["job"], detail["base_model"]["name"]) == ("adapter", model_version.job_id,
                                                                              "atelier-starter")  # fmt: skip
    assert detail["files"] == [{"name": "adapter_config.json", "size": 8}]
    assert detail["metrics"]["eval_loss_after"] == 2.9
    assert (
        detail["lineage"]["dataset_versions"][0]["content_hash"]
        == model_version.lineage["dataset_versions"][0]["content_hash"]
    )


def test_editing_the_card_changes_its_markdown(alice: Any, bearer: Bearer, model_version: ModelVersion) -> None:
    client = bearer(alice)
    url = f"{API}model-versions/{model_version.pk}"
    response = client.patch(url, json.dumps({"intended_use": "Answering support tickets."}), "application/json")
    assert response.status_code == 200, response.content
    assert response.json()["intended_use"] == "Answering support tickets."
    card = client.get(url + "/card")
    assert card["Content-Type"].startswith("text/markdown")
    assert "Answering support tickets." in card.content.decode()
    assert "# support bot v1" in card.content.decode()


def test_download_is_a_zip_with_the_card_and_is_audited(bob: Any, bearer: Bearer, model_version: ModelVersion) -> None:
    response = bearer(bob).get(f"{API}model-versions/{model_version.pk}/download", {"merged": "false"})
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="support-bot-v1-adapter.zip"'
    archive = zipfile.ZipFile(io.BytesIO(response.getvalue()))
    assert sorted(archive.namelist()) == ["README.md", "adapter_config.json"]
    assert archive.read("adapter_config.json") == b'{"r": 8}'
    assert AuditEvent.objects.for_team(model_version.team).filter(action="model_version.downloaded").exists()


def test_downloading_a_merged_model_that_was_not_saved_is_400(
    alice: Any, bearer: Bearer, model_version: ModelVersion
) -> None:
    response = bearer(alice).get(f"{API}model-versions/{model_version.pk}/download", {"merged": "true"})
    assert response.status_code == 400
    assert "merged" in response.json()["errors"]


def test_only_owners_and_admins_delete_model_versions(
    alice: Any, bob: Any, bearer: Bearer, model_version: ModelVersion
) -> None:
    url = f"{API}model-versions/{model_version.pk}"
    assert bearer(bob).delete(url).status_code == 403
    assert bearer(alice).delete(url).status_code == 204
    assert not ModelVersion.objects.for_team(model_version.team).exists()


# --- isolation and the schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "jobs/{job}"),
        ("GET", "jobs/{job}/metrics"),
        ("GET", "jobs/{job}/logs"),
        ("POST", "jobs/{job}/cancel"),
        ("POST", "jobs/{job}/clone"),
        ("GET", "model-versions/{version}"),
        ("GET", "model-versions/{version}/card"),
        ("GET", "model-versions/{version}/download"),
        ("DELETE", "model-versions/{version}"),
    ],
)
def test_outsider_gets_404_for_acmes_jobs_and_models(
    method: str, path: str, charlie: Any, bearer: Bearer, model_version: ModelVersion
) -> None:
    url = path.format(job=model_version.job_id, version=model_version.pk)
    # charlie names acme's objects both under acme (not his team) and under his own team
    for prefix in (API, "/api/v1/teams/globex/"):
        response = bearer(charlie).generic(method, prefix + url, "{}", content_type="application/json")
        assert response.status_code == 404, (prefix, response.content)
    assert ModelVersion.objects.for_team(model_version.team).exists()
    assert TrainingJob.objects.for_team(model_version.team).get(pk=model_version.job_id).status == JobStatus.SUCCEEDED


def test_openapi_schema_documents_the_training_paths(alice: Any, bearer: Bearer) -> None:
    paths = bearer(alice).get("/api/v1/openapi.json").json()["paths"]
    expected = {
        "/api/v1/teams/{slug}/base-models": "get",
        "/api/v1/teams/{slug}/training/settings": "get",
        "/api/v1/teams/{slug}/training/estimate": "post",
        "/api/v1/teams/{slug}/jobs": "post",
        "/api/v1/teams/{slug}/jobs/{job_id}/cancel": "post",
        "/api/v1/teams/{slug}/jobs/{job_id}/clone": "post",
        "/api/v1/teams/{slug}/jobs/{job_id}/metrics": "get",
        "/api/v1/teams/{slug}/model-versions/{version_id}/download": "get",
        "/api/v1/teams/{slug}/model-versions/{version_id}": "delete",
    }
    for path, method in expected.items():
        operation = paths[path][method]
        assert operation["summary"] and operation["description"] and operation["tags"] == ["training"]
