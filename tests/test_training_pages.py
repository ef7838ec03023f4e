"""The training pages: the launch form and its live estimate, the job page with its charts, compare, and the
model registry's pages (card, download, delete, sharing), plus what the dataset pages show of training.

Jobs are created through ``jobs.create_job`` (or the form) inside the test transaction, so the dispatch
that runs on commit never happens: nothing is sent to a broker and no training runs.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Membership, Team
from accounts.permissions import resolve_access
from accounts.roles import Role
from studio.units import count as compact
from tests.factories import finished_job, ready_version, sample_version
from training_app import jobs, presets
from training_app.engine.reporting import describe_metrics
from training_app.forms import field_name, initial_values
from training_app.models import JobMetric, JobStatus, ModelVersion, TrainingJob
from training_app.templatetags.training_charts import duration_range, format_number

Login = Callable[[Any], Client]


def url(name: str, *args: Any, team: str = "acme") -> str:
    return reverse(f"training:{name}", args=[team, *args])


def acme_jobs() -> Any:
    return TrainingJob.objects.for_team(Team.objects.get(slug="acme"))


def acme_models() -> Any:
    return ModelVersion.objects.for_team(Team.objects.get(slug="acme"))


def form_data(base_model: Any, version: Any, **overrides: Any) -> dict[str, Any]:
    """The job form as a browser submits it with the Quick LoRA preset, with ``overrides`` on top."""
    data: dict[str, Any] = {
        "name": "support-assistant",
        "base_model": base_model.pk,
        "dataset_version": version.pk,
        "pool": jobs.default_pool(),
        "preset": "quick-lora",
    }
    for name, value in initial_values(presets.apply_preset("quick-lora")).items():
        if value is True:
            data[name] = "on"
        elif value is not None and value is not False:
            data[name] = value
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def field_html(content: bytes, name: str) -> str:
    """The rendered block of one form field: its label, input, help and errors (up to the next field)."""
    html = content.decode()
    start = html.index(f'id="field-{name}"')
    end = html.find('id="field-', start + 1)
    return html[start : end if end > 0 else len(html)]


@pytest.fixture
def chat_version(acme: Any, alice: Any) -> Any:
    return sample_version(acme, alice, "chat")


def launch(user: Any, base_model: Any, version: Any, **values: Any) -> TrainingJob:
    """A queued job made by the service, as the form would make it."""
    return jobs.create_job(
        access=resolve_access(user, "acme"),
        name=values.pop("name", "run"),
        base_model=base_model,
        dataset_version=version,
        pool=jobs.default_pool(),
        values=presets.apply_preset("quick-lora", values),
    )


def add_metrics(job: TrainingJob, steps: int = 5) -> None:
    for step in range(1, steps + 1):
        values = {
            "loss": 3.0 - 0.3 * step,
            "learning_rate": 2e-4 * step / steps,
            "grad_norm": 1.5 / step,
            "tokens_per_second": 900.0 + step,
            "memory_bytes": 2 * 1024**3,
        }
        if step in (1, steps):
            values["eval_loss"] = 3.1 - 0.25 * step
        JobMetric.objects.create(job=job, seq=step, step=step, values=values)


@pytest.fixture
def model_version(tmp_path: Path, acme: Any, alice: Any, base_model_row: Any, chat_version: Any) -> ModelVersion:
    """A registered adapter whose folder holds one small file."""
    job = launch(alice, base_model_row, chat_version, name="support")
    job.status = JobStatus.SUCCEEDED
    job.save(update_fields=["status"])
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return ModelVersion.objects.create(
        team=acme,
        name="support",
        number=1,
        job=job,
        base_model=base_model_row,
        kind=ModelVersion.Kind.ADAPTER,
        path=str(folder),
        metrics={"eval_loss_before": 3.2, "eval_loss_after": 2.1, "perplexity_before": 24.5, "perplexity_after": 8.2},
        lineage={**job.lineage, "config": job.config, "job": {"id": job.pk, "name": job.name, "pool": job.pool}},
        created_by=alice,
    )


# ---- the launch form -----------------------------------------------------------------------------------


def test_form_offers_the_presets_and_says_why_qlora_is_off(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    response = login(alice).get(url("new"))
    assert response.status_code == 200
    html = response.content.decode()
    for preset in presets.PRESETS:
        assert preset.name in html
    assert "needs an NVIDIA GPU with CUDA; this studio&#x27;s workers are CPU-only" in html
    assert re.search(r'<input[^>]*id="preset-qlora"[^>]*disabled', html)
    assert 'id="advanced"' in html and "LoRA rank" in html and "Default: 16." in html
    assert "Sample chat v1 (chat, " in html


def test_unavailable_preset_in_the_address_falls_back_with_a_notice(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    response = login(alice).get(url("new") + "?preset=qlora")
    assert response.context["form"].initial["preset"] == "quick-lora"
    assert "Low-memory QLoRA” needs an NVIDIA GPU" in response.content.decode()


def test_dataset_version_in_the_address_is_preselected(
    alice: Any, acme: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    other = sample_version(acme, alice, "instruction")
    form = login(alice).get(url("new") + f"?dataset_version={other.pk}").context["form"]
    assert form.initial["dataset_version"] == other.pk


def test_form_starts_with_an_estimate(alice: Any, login: Login, base_model_row: Any, chat_version: Any) -> None:
    html = login(alice).get(url("new")).content.decode()
    assert "Memory per device" in html and "Fits: about" in html


def test_estimate_shows_parameters_memory_and_verdict(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    response = login(alice).post(url("estimate"), form_data(base_model_row, chat_version))
    assert response.status_code == 200
    html = response.content.decode()
    estimate = response.context["estimate"]
    assert estimate.total_parameters == base_model_row.parameter_count
    assert 0 < estimate.trainable_parameters < estimate.total_parameters
    assert "Trainable" in html and "Memory per device" in html and "optimizer steps" in html
    assert "Fits: about" in html
    assert "set a price in team settings" in html  # alice is the owner and no price is set


def test_estimate_shows_the_cost_in_the_teams_currency(
    alice: Any, acme: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    acme.gpu_hour_price, acme.currency = 2.5, "EUR"
    acme.save()
    html = login(alice).post(url("estimate"), form_data(base_model_row, chat_version)).content.decode()
    assert " EUR</b>" in html and "set a price" not in html


def test_estimate_shows_time_and_cost_as_a_range_with_its_basis(
    alice: Any, acme: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    acme.gpu_hour_price, acme.currency = 2.5, "EUR"
    acme.save()
    response = login(alice).post(url("estimate"), form_data(base_model_row, chat_version))
    estimate = response.context["estimate"]
    html = response.content.decode()
    time = duration_range(estimate.seconds_low, estimate.seconds_high)
    basis = "no finished runs on this pool yet: assumed efficiency"
    assert "–" in time and f'{time}</b> <span class="muted">({basis})' in html
    assert f"{estimate.cost_low:.2f}–{estimate.cost_high:.2f} EUR</b>" in html


def test_estimate_range_spans_the_teams_finished_runs_of_different_speeds(
    alice: Any, acme: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    fast, _ = finished_job(acme, alice, base_model_row, chat_version, name="fast run")
    slow, _ = finished_job(acme, alice, base_model_row, chat_version, name="slow run")
    acme_jobs().filter(pk=fast.pk).update(result={**fast.result, "tokens_per_second": 1000.0})
    acme_jobs().filter(pk=slow.pk).update(result={**slow.result, "tokens_per_second": 10.0})
    response = login(alice).post(url("estimate"), form_data(base_model_row, chat_version))
    estimate = response.context["estimate"]
    html = response.content.decode()
    assert estimate.seconds_high / estimate.seconds_low == pytest.approx(100, rel=0.01)  # the runs' speeds
    time = duration_range(estimate.seconds_low, estimate.seconds_high)
    assert f'{time}</b> <span class="muted">(from 2 finished runs on this pool)' in html


def test_the_estimate_learns_from_the_runs_with_the_same_speed_settings(
    alice: Any, acme: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    same, _ = finished_job(acme, alice, base_model_row, chat_version, name="packed run")
    other, _ = finished_job(acme, alice, base_model_row, chat_version, name="unpacked run")
    acme_jobs().filter(pk=same.pk).update(config={**same.config, "packing": True})
    acme_jobs().filter(pk=other.pk).update(config={**other.config, "packing": False})

    response = login(alice).post(url("estimate"), {**form_data(base_model_row, chat_version), "packing": "on"})

    assert response.context["estimate"].throughput_source == "measured on 1 of your finished run on this pool"


INVALID_SETTINGS = [
    pytest.param({"lora__rank": "0"}, "lora__rank", "between 1 and 1024", id="lora-rank-0"),
    pytest.param({"learning_rate": "-0.001"}, "learning_rate", "positive number", id="negative-learning-rate"),
    pytest.param({"max_seq_length": "4096"}, "max_seq_length", "context of 1024", id="longer-than-context"),
    pytest.param({"stage": "dpo"}, "stage", "DPO learns from preference pairs", id="dpo-on-chat"),
    pytest.param({"stage": "kto"}, "stage", "KTO learns from answers labelled", id="kto-on-chat"),
    pytest.param(
        {"deepspeed": "custom", "deepspeed_custom": '{"no_such_key": 1}'},
        "deepspeed_custom",
        "unknown DeepSpeed setting",
        id="deepspeed-unknown-key",
    ),
    pytest.param(
        {"deepspeed": "custom", "deepspeed_custom": '{"zero_optimization": '},
        "deepspeed_custom",
        "not valid JSON",
        id="deepspeed-not-json",
    ),
]


@pytest.mark.parametrize(("overrides", "field", "message"), INVALID_SETTINGS)
def test_invalid_setting_is_shown_next_to_its_field_and_launches_nothing(
    bob: Any, login: Login, base_model_row: Any, chat_version: Any, overrides: dict[str, Any], field: str, message: str
) -> None:
    response = login(bob).post(url("new"), form_data(base_model_row, chat_version, **overrides))
    assert response.status_code == 400
    assert message in " ".join(response.context["form"].errors[field])
    assert message in field_html(response.content, field)
    assert not acme_jobs().exists()


@pytest.mark.parametrize(("overrides", "field", "message"), INVALID_SETTINGS)
def test_estimate_lists_what_to_fix_instead_of_numbers(
    bob: Any, login: Login, base_model_row: Any, chat_version: Any, overrides: dict[str, Any], field: str, message: str
) -> None:
    html = login(bob).post(url("estimate"), form_data(base_model_row, chat_version, **overrides)).content.decode()
    assert "to see the estimate" in html and message in html and f'href="#field-{field}"' in html
    assert "Memory per device" not in html


@pytest.fixture
def feedback_version(acme: Any, alice: Any) -> Any:
    rows = [
        {"prompt": [{"role": "user", "content": f"Is {number} even?"}],
         "completion": [{"role": "assistant", "content": "Yes." if number % 2 == 0 else "No idea."}],
         "label": number % 2 == 0}
        for number in range(12)
    ]  # fmt: skip
    return ready_version(acme, alice, rows, kind="feedback", name="Answer ratings")


def test_feedback_data_picked_for_sft_asks_for_the_kto_goal(
    bob: Any, login: Login, base_model_row: Any, feedback_version: Any
) -> None:
    response = login(bob).post(url("new"), form_data(base_model_row, feedback_version, stage="sft"))

    assert response.status_code == 400
    assert "trains with KTO; choose the KTO goal" in field_html(response.content, "stage")
    assert not acme_jobs().exists()


def test_kto_on_feedback_data_launches_with_an_estimate(
    bob: Any, login: Login, base_model_row: Any, feedback_version: Any
) -> None:
    response = login(bob).post(
        url("new"), form_data(base_model_row, feedback_version, stage="kto", kto_desirable_weight="1.5")
    )

    job = acme_jobs().get()
    assert response.status_code == 302
    assert (job.config["stage"], job.config["kto_beta"], job.config["kto_desirable_weight"]) == ("kto", 0.1, 1.5)
    assert job.config["kto_undesirable_weight"] is None  # balanced from the label counts by the trainer
    assert job.estimate["optimizer_steps"] > 0 and job.estimate["memory_bytes"] > 0


def test_estimate_names_the_fields_the_chosen_version_does_not_use(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    chat_version.report = {**chat_version.report, "unused": {"label": 300, "images": 12}}  # as validation stores it
    chat_version.save(update_fields=["report"])

    html = login(alice).post(url("estimate"), form_data(base_model_row, chat_version)).content.decode()

    unused = html[html.index('id="data-unused"') :]
    assert "<code>label</code> (300 rows), <code>images</code> (12 rows)" in unused
    version_page = f"/t/acme/datasets/{chat_version.dataset_id}/v{chat_version.number}/#unused"
    assert f'href="{version_page}"' in unused


def test_a_feedback_version_in_the_address_starts_the_form_on_kto(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any, feedback_version: Any
) -> None:
    response = login(alice).get(url("new") + f"?dataset_version={feedback_version.pk}")

    assert response.context["form"].initial["stage"] == "kto"
    html = response.content.decode()
    for version in (feedback_version, chat_version):  # the page switches goals with them
        assert re.search(rf'<option value="{version.pk}"[^>]* data-kind="{version.kind}"', html), version.kind


def test_form_offers_kto_and_explains_the_reasoning_setting(alice: Any, login: Login, base_model_row: Any) -> None:
    response = login(alice).get(url("new"))

    html = response.content.decode()
    assert "Feedback tuning (KTO)" in html
    reasoning = field_html(response.content, "train_reasoning")
    assert "Train on reasoning" in reasoning and "kept as context but not learned" in reasoning
    assert "Default: on." in reasoning


def test_valid_launch_queues_a_job_and_opens_its_page(
    bob: Any, login: Login, base_model_row: Any, chat_version: Any, settings: Any
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    response = login(bob).post(url("new"), form_data(base_model_row, chat_version, lora__rank="8"))
    job = acme_jobs().get()
    assert response.status_code == 302 and response["Location"] == url("job", job.pk)
    assert (job.status, job.name, job.created_by) == (JobStatus.QUEUED, "support-assistant", bob)
    assert job.config["lora"]["rank"] == 8 and job.config["max_steps"] is None
    assert job.estimate["total_parameters"] == base_model_row.parameter_count


def test_clone_prefills_the_settings_and_remembers_the_source(
    bob: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    source = launch(bob, base_model_row, chat_version, name="first", **{"lora.rank": 32, "learning_rate": 1e-4})
    client = login(bob)
    form = client.get(url("new") + f"?clone={source.pk}").context["form"]
    assert form.initial["name"] == "first (copy)"
    assert form.initial[field_name("lora.rank")] == 32 and form.initial["cloned_from"] == source.pk
    data = form_data(
        base_model_row, chat_version, name="first (copy)", lora__rank="32", learning_rate="1e-4", cloned_from=source.pk
    )
    client.post(url("new"), data)
    clone = acme_jobs().exclude(pk=source.pk).get()
    assert clone.cloned_from == source and not jobs.presets.diff([source.config, clone.config])


def test_clone_of_an_unknown_job_is_404(alice: Any, login: Login, base_model_row: Any) -> None:
    assert login(alice).get(url("new") + "?clone=999999").status_code == 404
    assert login(alice).get(url("new") + "?clone=abc").status_code == 404


def test_viewer_may_not_open_the_form_estimate_or_launch(
    user_in_role: Callable[[str], Any], login: Login, base_model_row: Any, chat_version: Any
) -> None:
    client = login(user_in_role(Role.VIEWER))
    assert client.get(url("new")).status_code == 403
    assert client.post(url("new"), form_data(base_model_row, chat_version)).status_code == 403
    assert client.post(url("estimate"), form_data(base_model_row, chat_version)).status_code == 403
    assert not acme_jobs().exists()


# ---- the job list and the job page ----------------------------------------------------------------------


def test_job_list_shows_progress_and_polls_active_rows(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version, name="polled")
    acme_jobs().filter(pk=job.pk).update(status=JobStatus.RUNNING, step=5, max_steps=20, eta_seconds=180)
    html = login(alice).get(url("list")).content.decode()
    assert "polled" in html and "step 5 / 20" in html and "about 3 min left" in html
    assert f"?part=row&amp;job={job.pk}" in html and "New fine-tune" in html
    row = login(alice).get(url("list") + f"?part=row&job={job.pk}").content.decode()
    assert row.lstrip().startswith(f'<tr id="job-{job.pk}"') and 'hx-trigger="every 3s"' in row


def test_viewer_sees_the_list_without_the_launch_button(
    user_in_role: Callable[[str], Any], login: Login, db: None
) -> None:
    html = login(user_in_role(Role.VIEWER)).get(url("list")).content.decode()
    assert "No fine-tuning jobs yet" in html and "New fine-tune" not in html


def test_live_part_draws_the_charts_from_the_metrics(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version)
    acme_jobs().filter(pk=job.pk).update(status=JobStatus.RUNNING, step=5, max_steps=10, log_tail="step 5")
    add_metrics(job)
    html = login(alice).get(url("job", job.pk) + "?part=live").content.decode()
    assert html.count("<svg") == 5
    assert "training loss" in html and "validation loss" in html and 'aria-label="Loss' in html
    loss = html[html.index('aria-label="Loss') : html.index("</svg>", html.index('aria-label="Loss'))]
    y_labels = re.findall(r'text-anchor="end" dominant-baseline="middle">([^<]*)</text>', loss)
    assert y_labels == ["1.5", "2.0", "2.5", "3.0"]  # round ticks covering 1.5 to 2.85
    assert ">step</text>" in loss and "training loss: 1.5 at step 5" in loss  # the x axis, a point's tooltip
    assert 'hx-trigger="every 2s"' in html and "Step 5 of 10" in html and "step 5</pre>" in html
    assert "Cancel job" in html


def test_queued_note_shows_only_while_the_job_is_queued(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version)
    client = login(alice)
    assert "it starts when a worker is free" in client.get(url("job", job.pk)).content.decode()
    acme_jobs().filter(pk=job.pk).update(status=JobStatus.RUNNING, phase="training", step=5, max_steps=40)
    html = client.get(url("job", job.pk)).content.decode()
    assert "it starts when a worker is free" not in html and "Step 5 of 40" in html


def test_launch_leaves_no_flash_message_on_the_polled_job_page(
    bob: Any, login: Login, base_model_row: Any, chat_version: Any, settings: Any
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = False
    html = login(bob).post(url("new"), form_data(base_model_row, chat_version), follow=True).content.decode()
    assert 'class="flash' not in html and html.count("it starts when a worker is free") == 1


def test_succeeded_job_status_reads_as_one_sentence(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version)
    acme_jobs().filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, phase="succeeded", message="the model is ready")
    html = login(alice).get(url("job", job.pk) + "?part=live").content.decode()
    line = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html[: html.index('<div class="progress-bar')])).strip()
    assert line == "Succeeded The model is ready."


def test_log_shows_metrics_as_readable_lines_without_warnings(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    raw = (
        "=== attempt 1 on celery@host: /srv/atelier/.venv/bin/python -m training_app.engine /srv/run/config.json\n"
        "/srv/atelier/.venv/lib/python3.12/site-packages/torch/utils/checkpoint.py:92: FutureWarning: `x` is "
        "deprecated\n"
        "  warnings.warn(\n"
        "step 5/40 · loss 2.31 · lr 0.00019 · grad norm 0.8\n"
        "{'loss': '2.31', 'grad_norm': '0.8012', 'learning_rate': '0.00019', 'epoch': '0.5'}\n"
        "RuntimeError: the loss became nan"
    )
    job = launch(alice, base_model_row, chat_version)
    acme_jobs().filter(pk=job.pk).update(status=JobStatus.RUNNING, log_tail=raw)
    log = login(alice).get(url("job", job.pk) + "?part=live").content.decode().split('<pre class="log">')[1]
    assert log.split("</pre>")[0].splitlines() == [
        "=== attempt 1 on celery@host",
        "step 5/40 · loss 2.31 · lr 0.00019 · grad norm 0.8",
        "loss 2.31 · lr 1.9e-4 · grad norm 0.801 · epoch 0.5",
        "RuntimeError: the loss became nan",
    ]


def test_trainer_log_line_names_the_step_and_the_metrics() -> None:
    line = describe_metrics({"loss": 2.3124, "learning_rate": 0.00019, "grad_norm": 0.8, "epoch": 0.2},
                            step=5, max_steps=40)  # fmt: skip
    assert line == "step 5/40 · loss 2.31 · lr 1.9e-4 · grad norm 0.8 · epoch 0.2"


def test_job_page_shows_the_config_as_yaml_and_the_launch_estimate(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version)
    client = login(alice)
    html = client.get(url("job", job.pk)).content.decode()
    assert "stage: sft" in html and "Estimate at launch" in html and "Clone settings" in html
    download = client.get(url("config", job.pk))
    assert download["Content-Disposition"].startswith("attachment;")
    assert b"method: lora" in download.content


def test_job_page_shows_the_memory_settings_chosen_and_the_speed_settings_the_trainer_used(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    from training_app.engine import speed
    from training_app.engine.config import RunConfig

    job = launch(alice, base_model_row, chat_version)
    run_dir = job.folder() / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = RunConfig.from_dict({"model_path": "m", "train_path": "t", "output_dir": "o", "run_dir": str(run_dir),
                                  "packing": True})  # fmt: skip
    speed.write(speed.resolve(config, cuda=False, model_type="llama"), run_dir)

    html = login(alice).get(url("job", job.pk)).content.decode()

    assert job.config["memory_auto"] is True
    assert "Memory settings chosen:</strong>" in html and "without checkpointing needs about" in html
    assert "Speed settings" in html and "<b>varlen</b>" in html and "<td>Activation checkpointing</td>" in html
    assert "Liger&#x27;s kernels are Triton kernels for CUDA; this run trains on the CPU" in html


def test_finished_job_stops_polling_and_the_page_reloads(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version)
    acme_jobs().filter(pk=job.pk).update(status=JobStatus.CANCELLED)
    response = login(alice).get(url("job", job.pk) + "?part=live", HTTP_HX_REQUEST="true")
    assert "hx-trigger" not in response.content.decode() and response["HX-Refresh"] == "true"


def test_failed_job_shows_the_failure_and_what_to_do(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version)
    failure = {"code": "out_of_memory", "message": "Ran out of memory at step 3.", "suggestion": "Lower the batch."}
    acme_jobs().filter(pk=job.pk).update(status=JobStatus.FAILED, failure=failure)
    html = login(alice).get(url("job", job.pk)).content.decode()
    assert "Why it failed" in html and "Ran out of memory at step 3." in html and "Lower the batch." in html


def test_succeeded_job_shows_evaluation_generations_and_the_model(
    alice: Any, login: Login, model_version: ModelVersion
) -> None:
    assert model_version.job is not None
    result = {
        "eval_loss_before": 3.2,
        "eval_loss_after": 2.4,
        "perplexity_before": 24.53,
        "perplexity_after": 11.02,
        "generations": [{"prompt": "<|user|>hello", "base": "words words", "tuned": "Hello! How can I help?"}],
    }
    acme_jobs().filter(pk=model_version.job.pk).update(result=result)
    html = login(alice).get(url("job", model_version.job.pk)).content.decode()
    assert "End-of-run evaluation" in html and "24.53" in html and "11.02" in html and "-25.0%" in html
    assert "Hello! How can I help?" in html and "words words" in html
    assert url("version", model_version.pk) in html


def test_prompts_of_a_deleted_restricted_dataset_stay_hidden_from_members_without_a_share(
    alice: Any, bob: Any, login: Login, model_version: ModelVersion
) -> None:
    """The dataset is gone, but its model version is restricted: its rows in the generations stay private."""
    job = model_version.job
    assert job is not None
    generations = [{"prompt": "private ticket text", "base": "a", "tuned": "b"}]
    acme_jobs().filter(pk=job.pk).update(dataset_version=None, result={"generations": generations})
    acme_models().filter(pk=model_version.pk).update(restricted=True)
    assert "private ticket text" in login(alice).get(url("job", job.pk)).content.decode()
    html = login(bob).get(url("job", job.pk)).content.decode()
    assert "private ticket text" not in html and "not shared with you" in html


def test_owner_cancels_a_queued_job(alice: Any, login: Login, base_model_row: Any, chat_version: Any) -> None:
    job = launch(alice, base_model_row, chat_version)
    response = login(alice).post(url("cancel", job.pk))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED


def test_member_may_not_cancel_someone_elses_job(
    alice: Any, bob: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version)
    assert "Cancel job" not in login(bob).get(url("job", job.pk)).content.decode()
    assert login(bob).post(url("cancel", job.pk)).status_code == 403
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED


# ---- compare ---------------------------------------------------------------------------------------------


def test_compare_overlays_the_loss_curves_and_lists_the_differences(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    first = launch(alice, base_model_row, chat_version, name="rank 16")
    second = launch(alice, base_model_row, chat_version, name="rank 64", **{"lora.rank": 64, "lora.alpha": 128})
    add_metrics(first)
    add_metrics(second, steps=3)
    response = login(alice).get(url("compare") + f"?jobs={first.pk}&jobs={second.pk}")
    html = response.content.decode()
    assert response.status_code == 200
    assert f"#{first.pk} rank 16" in html and f"#{second.pk} rank 64" in html and "<svg" in html
    assert [row["label"] for row in response.context["diff"]] == ["LoRA rank", "LoRA alpha"]
    assert response.context["diff"][0]["values"] == ["16", "64"]


def test_compare_needs_two_jobs(alice: Any, login: Login, base_model_row: Any, chat_version: Any) -> None:
    job = launch(alice, base_model_row, chat_version)
    client = login(alice)
    assert client.get(url("compare") + f"?jobs={job.pk}").status_code == 302
    assert client.get(url("compare") + "?jobs=x&jobs=y").status_code == 302


# ---- the model registry ----------------------------------------------------------------------------------


def test_models_page_lists_the_trained_versions(alice: Any, login: Login, model_version: ModelVersion) -> None:
    html = login(alice).get(url("models")).content.decode()
    assert "Trained model versions" in html and url("version", model_version.pk) in html


def test_version_page_shows_card_metrics_and_lineage(
    alice: Any, login: Login, model_version: ModelVersion, chat_version: Any
) -> None:
    html = login(alice).get(url("version", model_version.pk)).content.decode()
    assert "# support v1" in html and "## Training data" in html  # the Markdown card
    assert chat_version.content_hash in html
    assert reverse("datasets:version", args=["acme", chat_version.dataset_id, chat_version.number]) in html
    assert "Download adapter (.zip)" in html and "Delete…" in html and "Save the card" in html


def test_long_answers_before_and_after_can_be_read_in_full(
    alice: Any, login: Login, model_version: ModelVersion
) -> None:
    long_answer = "The sea is wide. " * 40 + "The end."
    metrics = {**model_version.metrics, "generations": [{"prompt": "Hi", "base": "words", "tuned": long_answer}]}
    acme_models().filter(pk=model_version.pk).update(metrics=metrics)
    html = login(alice).get(url("version", model_version.pk)).content.decode()
    opened = html[html.index('<details class="gen-full">') :].split("</details>")[0]
    assert f"Show all {len(long_answer)} characters" in opened
    assert f'<div class="gen tuned">{long_answer}</div>' in opened and '<div class="gen ">words</div>' in html


def test_version_page_counts_trainable_parameters_against_the_base_models_count(
    alice: Any, login: Login, model_version: ModelVersion, base_model_row: Any
) -> None:
    metrics = {**model_version.metrics, "trainable_parameters": 300_000, "total_parameters": 4_250_000}
    acme_models().filter(pk=model_version.pk).update(metrics=metrics)
    html = login(alice).get(url("version", model_version.pk)).content.decode()
    base = compact(base_model_row.parameter_count)  # 3.95M, the starter model's count everywhere else
    assert f"trainable of {base} parameters" in html and "4.25M" not in html


def test_download_is_a_zip_with_the_files_and_the_card(alice: Any, login: Login, model_version: ModelVersion) -> None:
    response = login(alice).get(url("version_download", model_version.pk))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="support-v1-adapter.zip"'
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))  # type: ignore[attr-defined]
    assert set(archive.namelist()) == {"adapter_model.safetensors", "README.md"}
    assert "Intended use" in archive.read("README.md").decode()


def test_download_of_a_missing_merged_model_explains_itself(
    alice: Any, login: Login, model_version: ModelVersion
) -> None:
    response = login(alice).get(url("version_download", model_version.pk) + "?merged=1", follow=True)
    assert "has no merged model" in response.content.decode()


def test_viewer_may_not_download(user_in_role: Callable[[str], Any], login: Login, model_version: ModelVersion) -> None:
    client = login(user_in_role(Role.VIEWER))
    assert "Download adapter" not in client.get(url("version", model_version.pk)).content.decode()
    assert client.get(url("version_download", model_version.pk)).status_code == 403


def test_member_edits_the_card(bob: Any, login: Login, model_version: ModelVersion) -> None:
    data = {"intended_use": "Answering support tickets.", "limitations": "English only."}
    assert login(bob).post(url("version_card", model_version.pk), data).status_code == 302
    model_version.refresh_from_db()
    assert (model_version.intended_use, model_version.limitations) == ("Answering support tickets.", "English only.")


def test_overlong_card_text_is_refused_next_to_its_field(bob: Any, login: Login, model_version: ModelVersion) -> None:
    response = login(bob).post(url("version_card", model_version.pk), {"intended_use": "x" * 4001})
    assert response.status_code == 400 and "at most 4000 characters" in response.content.decode()
    model_version.refresh_from_db()
    assert model_version.intended_use == ""


def test_member_may_not_delete_a_version(bob: Any, login: Login, model_version: ModelVersion) -> None:
    client = login(bob)
    assert client.get(url("version_delete", model_version.pk)).status_code == 403
    assert client.post(url("version_delete", model_version.pk)).status_code == 403
    assert acme_models().filter(pk=model_version.pk).exists()


def test_owner_deletes_a_version_after_confirming(alice: Any, login: Login, model_version: ModelVersion) -> None:
    client = login(alice)
    assert "cannot be undone" in client.get(url("version_delete", model_version.pk)).content.decode()
    assert client.post(url("version_delete", model_version.pk)).status_code == 302
    assert not acme_models().filter(pk=model_version.pk).exists()


def test_restricted_version_is_hidden_until_shared(
    alice: Any, bob: Any, login: Login, model_version: ModelVersion
) -> None:
    acme_models().filter(pk=model_version.pk).update(restricted=True)
    assert login(bob).get(url("version", model_version.pk)).status_code == 404
    owner = login(alice)
    assert "Shared with" in owner.get(url("version", model_version.pk)).content.decode()
    member_id = Membership.objects.get(user=bob).pk
    owner.post(url("version_share", model_version.pk), {"member": member_id, "level": "view"})
    assert login(bob).get(url("version", model_version.pk)).status_code == 200


# ---- the dataset pages -----------------------------------------------------------------------------------


def test_dataset_version_page_lists_the_jobs_that_trained_on_it(
    alice: Any, login: Login, base_model_row: Any, chat_version: Any
) -> None:
    job = launch(alice, base_model_row, chat_version, name="trained on v1")
    page = reverse("datasets:version", args=["acme", chat_version.dataset_id, chat_version.number])
    html = login(alice).get(page).content.decode()
    assert "Jobs that trained on this version" in html and "trained on v1" in html and url("job", job.pk) in html


def test_dataset_delete_confirmation_names_the_models_trained_on_it(
    alice: Any, login: Login, model_version: ModelVersion, chat_version: Any
) -> None:
    html = login(alice).get(reverse("datasets:delete", args=["acme", chat_version.dataset_id])).content.decode()
    assert "Models trained on this dataset" in html and "support v1" in html and "name and content hash" in html


# ---- isolation -------------------------------------------------------------------------------------------


def test_outsider_gets_404_on_every_training_page(
    charlie: Any, login: Login, model_version: ModelVersion, base_model_row: Any, chat_version: Any
) -> None:
    job = model_version.job
    assert job is not None
    client = login(charlie)
    pages = [
        url("list"),
        url("new"),
        url("new") + f"?clone={job.pk}",
        url("compare") + f"?jobs={job.pk}&jobs={job.pk}",
        url("job", job.pk),
        url("job", job.pk) + "?part=live",
        url("config", job.pk),
        url("models"),
        url("version", model_version.pk),
        url("version_download", model_version.pk),
        url("version_delete", model_version.pk),
    ]
    for page in pages:
        assert client.get(page).status_code == 404, page
    posts = [url("new"), url("estimate"), url("cancel", job.pk), url("version_card", model_version.pk)]
    posts += [url("version_delete", model_version.pk), url("version_share", model_version.pk)]
    for page in posts:
        assert client.post(page, form_data(base_model_row, chat_version)).status_code == 404, page
    assert acme_jobs().count() == 1 and acme_models().filter(pk=model_version.pk).exists()


def test_acme_ids_under_charlies_own_team_are_404(
    charlie: Any, login: Login, model_version: ModelVersion, base_model_row: Any, chat_version: Any
) -> None:
    job = model_version.job
    assert job is not None
    client = login(charlie)
    for page in (url("job", job.pk, team="globex"), url("version", model_version.pk, team="globex")):
        assert client.get(page).status_code == 404
    assert client.get(url("new", team="globex") + f"?clone={job.pk}").status_code == 404
    assert client.get(url("compare", team="globex") + f"?jobs={job.pk}&jobs={job.pk + 1}").status_code == 404
    assert client.post(url("cancel", job.pk, team="globex")).status_code == 404
    launched = client.post(url("new", team="globex"), form_data(base_model_row, chat_version))
    assert launched.status_code == 400 and "dataset_version" in launched.context["form"].errors


# ---- number formats --------------------------------------------------------------------------------------


def test_numbers_read_as_an_engineer_expects() -> None:
    assert [format_number(v) for v in (2e-4, 0.12345, 1.23456, 12345, None)] == [
        "2e-4",
        "0.1235",
        "1.235",
        "12.3k",
        "–",
    ]
