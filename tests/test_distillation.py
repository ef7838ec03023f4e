"""Distillation: a teacher answers a prompt set; the kept answers, redacted, become a dataset version whose recipe
names the teacher; a student trained on it is found and compared with the teacher on a suite.

The end-to-end test runs everything for real on CPU: the Celery worker (both queues), the inference server with
a fine-tuned starter-architecture teacher, the dataset validation, a LoRA student job and the comparison run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from accounts.models import AuditEvent
from accounts.permissions import TeamAccess
from datasets_app.models import DatasetVersion
from evals_app import distill, services
from evals_app.models import Distillation, EvalRun, EvalSuite
from tests.factories import adapter_model_version, finished_job, full_model_version, grown_model, ready_version
from training_app import jobs
from training_app.models import BaseModel, ModelVersion, TrainingJob

PROMPTS = [
    {"messages": [{"role": "user", "content": "Where is my parcel? Mail me at jane.doe@example.com."}]},
    {"messages": [{"role": "user", "content": "How do I reset my password?"},
                  {"role": "assistant", "content": "Open Settings, then Security."}]},
    {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."}]},
    {"messages": [{"role": "assistant", "content": "Hello! How can I help?"}]},  # nothing asked: skipped
]  # fmt: skip


def eventually(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- prompts ------------------------------------------------------------------------------------


def test_prompts_are_conversations_up_to_the_last_answer_or_ending_with_the_person(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS), encoding="utf-8")

    prompts = list(distill.read_prompts(rows, "chat"))

    assert [prompt.row_number for prompt in prompts] == [1, 2, 3]
    assert prompts[0].messages == PROMPTS[0]["messages"] and prompts[0].reference == ""
    assert prompts[1].messages == PROMPTS[1]["messages"][:1] and prompts[1].reference == "Open Settings, then Security."
    assert prompts[2].question == "Name a colour."


# --- starting -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_teacher_the_member_may_not_use_is_refused_naming_the_field(
    owner: TeamAccess, acme: Any, alice: Any, globex: Any, charlie: Any, starter_model: BaseModel, tmp_path: Path
) -> None:
    prompts = ready_version(acme, alice, PROMPTS[:3], kind="chat", name="Questions")
    rival = adapter_model_version(globex, charlie, starter_model, tmp_path, name="rival")

    with pytest.raises(ValidationError) as error:
        distill.start(access=owner, name="support", teacher=f"version:{rival.pk}", prompts=prompts)
    assert list(error.value.message_dict) == ["teacher"]
    with pytest.raises(ValidationError) as error:
        distill.start(access=owner, name="support", teacher="gpt-4", prompts=prompts)
    assert error.value.message_dict["teacher"] == [
        "gpt-4: not a model key; write version:<id>, deployment:<id> or base:<id>."
    ]
    assert not Distillation.objects.for_team(acme).exists()


@pytest.mark.django_db
def test_a_bad_grader_is_refused_naming_the_grader_and_its_field(
    owner: TeamAccess, acme: Any, alice: Any, starter_model: BaseModel
) -> None:
    prompts = ready_version(acme, alice, PROMPTS[:3], kind="chat", name="Questions")

    with pytest.raises(ValidationError) as error:
        distill.start(
            access=owner, name="support", teacher=f"base:{starter_model.pk}", prompts=prompts,
            graders=[{"type": "regex"}],
        )  # fmt: skip
    assert "pattern" in error.value.message_dict["graders"][0]


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(900)
@pytest.mark.django_db(transaction=True)
def test_teacher_to_dataset_to_student_to_comparison_with_complete_lineage(
    celery_worker: None,
    owner: TeamAccess,
    acme: Any,
    alice: Any,
    starter_model: BaseModel,
    lora_adapters: list[Path],
    tmp_path: Path,
) -> None:
    # A larger tuned model of the starter's architecture (6 layers to the student's 4): the tuned adapter merged in.
    folder = grown_model(Path(starter_model.path), lora_adapters[0], tmp_path / "teacher")
    teacher = full_model_version(acme, alice, starter_model, folder, name="support-teacher")
    prompts = ready_version(acme, alice, PROMPTS * 3, kind="chat", name="Questions")

    distillation = distill.start(
        access=owner, name="support distilled", teacher=f"version:{teacher.pk}", prompts=prompts,
        graders=[{"type": "regex", "pattern": "\\S"}],
    )  # fmt: skip

    done = eventually(
        lambda: Distillation.objects.for_team(acme).filter(pk=distillation.pk, status="succeeded").first(),
        timeout=300, what="the distillation",
    )  # fmt: skip
    assert done.rows_total == 9 and done.kept + done.left_out_total == 9 and done.kept >= 6
    assert done.redactions == {"email": 3}
    output = eventually(
        lambda: DatasetVersion.objects.for_team(acme).filter(pk=done.output_id, status="ready").first(),
        timeout=120, what="the distilled dataset's validation",
    )  # fmt: skip
    lineage = output.recipe["distilled_from"]
    assert lineage["teacher"] == "support-teacher v1" and lineage["distillation"] == done.pk
    assert lineage["prompts"] == "Questions v1" and lineage["redacted"]
    rows = [json.loads(line) for line in output.rows_path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == done.kept and all(row["messages"][-1]["role"] == "assistant" for row in rows)
    assert "jane.doe@example.com" not in json.dumps(rows) and "[EMAIL]" in json.dumps(rows)

    job = jobs.create_job(
        access=owner, name="student", base_model=starter_model, dataset_version=output, pool="cpu",
        values={"max_steps": 2, "max_seq_length": 128, "per_device_batch_size": 4, "eval_split": 0.2},
    )  # fmt: skip
    student = eventually(
        lambda: ModelVersion.objects.for_team(acme).filter(job=job).first(), timeout=600, what="the student"
    )
    assert TrainingJob.objects.for_team(acme).get(pk=job.pk).dataset_version_id == output.pk
    assert distill.students(done) == [student]

    suite = EvalSuite.objects.create(
        team=acme, name="teacher's answers", dataset_version=output, created_by=alice,
        graders=[{"grader": {"type": "rouge_l", "threshold": 0.5}, "pass_rate": 0.5}],
    )  # fmt: skip
    run = distill.compare(access=owner, distillation=done, suite=suite)
    assert run.model_keys == [f"version:{teacher.pk}", f"version:{student.pk}"]
    finished = eventually(
        lambda: EvalRun.objects.for_team(acme).filter(pk=run.pk, status="succeeded").first(),
        timeout=300, what="the comparison run",
    )  # fmt: skip

    teacher_facts, student_facts = distill.comparison(done, finished)
    assert (teacher_facts.role, student_facts.role) == ("teacher", "student")
    # The references are the teacher's own greedy answers: it gives them again, except where redaction changed
    # the prompt it is asked now (the three rows with an email).
    assert teacher_facts.pass_rate is not None and teacher_facts.pass_rate >= (done.kept - 3) / done.kept - 1e-9
    assert student_facts.pass_rate is not None and student_facts.mean_latency_s is not None
    assert student_facts.parameters == starter_model.parameter_count
    assert teacher_facts.parameters is not None and teacher_facts.parameters > student_facts.parameters
    assert teacher_facts.serving_memory_bytes > student_facts.serving_memory_bytes  # type: ignore[operator]
    assert services.current_summary(finished)[f"version:{student.pk}"]["rows"] == done.kept
    actions = set(AuditEvent.objects.for_team(acme).values_list("action", flat=True))
    assert {"eval.distillation_started", "eval.distillation_finished", "eval.run_started"} <= actions


@pytest.mark.django_db
def test_the_page_starts_one_and_shows_its_dataset_students_and_comparison_table(
    alice: Any, login: Any, acme: Any, base_model_row: BaseModel
) -> None:
    prompts = ready_version(acme, alice, PROMPTS[:3], kind="chat", name="Questions")
    client = login(alice)

    response = client.post(
        reverse("evals:distillations", args=["acme"]),
        {"name": "support distilled", "teacher": f"base:{base_model_row.pk}", "prompts": prompts.pk,
         "redact_pii": "on", "graders": '[{"type": "regex", "pattern": "\\\\S"}]'},
    )  # fmt: skip

    distillation = Distillation.objects.for_team(acme).get()
    assert response.status_code == 302 and distillation.graders[0]["grader"]["type"] == "regex"
    Distillation.objects.for_team(acme).filter(pk=distillation.pk).update(status="succeeded", output=prompts, kept=3)
    _, student = finished_job(acme, alice, base_model_row, prompts, name="student")
    page = client.get(reverse("evals:distillation", args=["acme", distillation.pk])).content.decode()
    assert 'id="train-student"' in page and f"?dataset_version={prompts.pk}" in page
    assert str(student) in page and 'data-role="teacher"' in page and 'data-role="student"' in page
