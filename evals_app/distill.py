"""Distillation: a teacher model answers a prompt set, and the good answers become a dataset to train a student on.

A ``Distillation`` names a teacher (a base model, a model version or a deployment: ``serving_app.catalog`` keys),
a ready chat or instruction dataset version of prompts, and optional graders that filter the teacher's answers.
The Celery job (queue ``default``) answers every prompt through the inference server, several at a time as an eval
run does (``generation.answer_all``), drops the answers that fail a grader, are empty or errored, redacts
personal data and secrets (``datasets_app.engine.pii``) when asked, and uploads the rest as a new chat dataset
version through the datasets app: each row is the prompt's conversation and the teacher's answer. The version's
recipe names the teacher, the prompts and the distillation (its lineage); every count of what was left out is
kept on the distillation.

A student is any job trained on that version (the job form opens with it chosen). ``students`` finds them, and
``compare`` runs an eval suite on the teacher and the students at once, so the page can put pass rate, size,
speed and serving cost side by side.

Prompts: a chat row's conversation up to its last assistant turn (or the whole conversation when it ends with the
person's turn: distillation needs no reference); an instruction row's ``prompt``. A grader compares against the
row's reference when it has one (``prompts.item_of``), else against the empty string (use reference-free graders,
such as ``json_schema`` or ``regex``, for prompt-only sets).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Avg, QuerySet
from django.http import Http404
from django.utils import timezone

from accounts import audit
from accounts.permissions import TeamAccess, resolve_access
from accounts.roles import Perm
from datasets_app.engine import pii
from datasets_app.models import DatasetVersion
from evals_app import generation, services
from evals_app.models import Distillation, EvalResult, EvalRun, EvalSuite
from evals_app.prompts import MESSAGE_KEYS, item_of
from evals_app.services import MODEL_KEY
from serving_app.catalog import Servable, publish, refusal_message, resolve_model
from serving_app.exports import upload_rows
from training_app.engine import graders as grading
from training_app.models import ModelVersion

log = logging.getLogger(__name__)

# Prompts answered between two progress saves.
SAVE_EVERY = 16
MAX_PROMPTS = 5_000


@dataclass(frozen=True)
class Prompt:
    row_number: int
    messages: list[dict[str, Any]]
    reference: Any  # what a grader compares against ("" without a reference)
    question: str


def read_prompts(rows_path: Path, kind: str, *, limit: int = MAX_PROMPTS) -> Iterator[Prompt]:
    """The prompts of a version's rows file, in order; rows with nothing to ask are skipped."""
    with rows_path.open(encoding="utf-8") as rows:
        count = 0
        for number, line in enumerate(rows, start=1):
            prompt = _prompt_of(number, json.loads(line), kind)
            if prompt is None:
                continue
            yield prompt
            count += 1
            if count >= limit:
                return


def _prompt_of(number: int, row: dict[str, Any], kind: str) -> Prompt | None:
    item = item_of(number, row, kind)
    if item is not None:
        return Prompt(number, item.messages, item.reference_text, item.question)
    if kind != "chat":
        return None
    messages = [{key: m[key] for key in MESSAGE_KEYS if key in m} for m in row.get("messages") or []]
    if not messages or messages[-1].get("role") != "user":
        return None
    return Prompt(number, messages, "", str(messages[-1].get("content") or ""))


# --- reading ------------------------------------------------------------------------------------


def visible_distillations(access: TeamAccess) -> QuerySet[Distillation]:
    return Distillation.objects.for_team(access.team).select_related("prompts__dataset", "output__dataset")


def students(distillation: Distillation) -> list[ModelVersion]:
    """The model versions trained on the distilled dataset version (the students), newest first."""
    if distillation.output_id is None:
        return []
    return list(
        ModelVersion.objects.for_team(distillation.team)
        .filter(job__dataset_version=distillation.output_id)
        .select_related("base_model", "job")
        .order_by("-created_at")
    )


@dataclass(frozen=True)
class ModelFacts:
    """One model of a teacher-vs-student comparison."""

    key: str
    label: str
    role: str  # "teacher" or "student"
    parameters: int | None  # of the model that answers (a LoRA version: its base's)
    weights_bytes: int | None  # on disk: what serving it loads (a LoRA version: base + adapter)
    pass_rate: float | None  # in ``run``
    mean_latency_s: float | None  # per answer in ``run`` (greedy, same prompts, same server)

    @property
    def serving_memory_bytes(self) -> int | None:
        """What serving it costs in accelerator memory at bf16, the weights alone (KV cache comes on top)."""
        return 2 * self.parameters if self.parameters else None


def comparison(distillation: Distillation, run: EvalRun | None) -> list[ModelFacts]:
    """The teacher and each student, with their size and, from ``run`` (a suite run on them), quality and speed."""
    models = [(distillation.teacher_key, distillation.teacher_label, "teacher")]
    models += [(f"version:{version.pk}", str(version), "student") for version in students(distillation)]
    facts = []
    for key, label, role in models:
        parameters, weights = _size(distillation, key)
        pass_rate = latency = None
        if run is not None and key in run.model_keys:
            figures = (run.summary or services.current_summary(run)).get(key) or {}
            pass_rate = figures.get("pass_rate")
            latency = (
                EvalResult.objects.for_team(run.team)
                .filter(run=run, model_key=key, latency_s__isnull=False)
                .aggregate(mean=Avg("latency_s"))["mean"]
            )
        facts.append(ModelFacts(key, label, role, parameters, weights, pass_rate, latency))
    return facts


def _size(distillation: Distillation, key: str) -> tuple[int | None, int | None]:
    """Parameters and bytes on disk of the model behind ``key`` (None where unknown)."""
    kind, _, pk = key.partition(":")
    team = distillation.team
    version = None
    if kind == "version":
        version = ModelVersion.objects.for_team(team).select_related("base_model").filter(pk=pk).first()
    elif kind == "deployment":
        from serving_app.models import Deployment

        deployment = Deployment.objects.for_team(team).select_related("model_version__base_model").filter(pk=pk)
        version = deployment.first().model_version if deployment.exists() else None  # type: ignore[union-attr]
    if version is not None:
        base = version.base_model
        if version.kind == ModelVersion.Kind.FULL:
            return _parameters(Path(version.path)), _folder_bytes(Path(version.path))
        base_bytes = _folder_bytes(Path(base.path)) if base else None
        adapter = _folder_bytes(Path(version.path))
        total = base_bytes + adapter if base_bytes is not None and adapter is not None else None
        return (base.parameter_count if base else None), total
    if kind == "base":
        from training_app.models import BaseModel

        base = BaseModel.objects.filter(pk=pk).first()
        return (base.parameter_count if base else None), (_folder_bytes(Path(base.path)) if base else None)
    return None, None


def _parameters(folder: Path) -> int | None:
    """Parameters of a full model folder, from its safetensors headers (no weights are read)."""
    total = 0
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    for file in files:
        with file.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for name, tensor in header.items():
            if name != "__metadata__":
                count = 1
                for dimension in tensor["shape"]:
                    count *= dimension
                total += count
    return total


def _folder_bytes(folder: Path) -> int | None:
    if not folder.is_dir():
        return None
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and path.suffix != ".json") or None


# --- starting -----------------------------------------------------------------------------------


def start(
    *,
    access: TeamAccess,
    name: str,
    teacher: str,
    prompts: DatasetVersion,
    graders: Any = (),
    redact_pii: bool = True,
    ip: str | None = None,
) -> Distillation:
    """Queue a distillation (``evals.run`` and ``datasets.upload``; the teacher one the actor may use); audited.

    Raises ``ValidationError`` keyed by ``name``, ``teacher``, ``prompts`` or ``graders`` naming the fix.
    """
    access.require(Perm.RUN_EVALS)
    access.require(Perm.UPLOAD_DATASETS)
    name = name.strip()
    if not name or len(name) > 120:
        raise ValidationError({"name": "Name the distillation (1–120 characters): the dataset it makes takes it."})
    if not MODEL_KEY.fullmatch(teacher):
        raise ValidationError({"teacher": f"{teacher[:40]}: not a model key; write version:<id>, deployment:<id> "
                               "or base:<id>."})  # fmt: skip
    try:
        label = resolve_model(access, teacher).label
    except (Http404, PermissionDenied) as error:
        raise ValidationError({"teacher": f"{teacher}: {refusal_message(error)}"}) from None
    if not services.eval_dataset_versions(access).filter(pk=prompts.pk).exists():
        raise ValidationError({"prompts": "Choose a ready chat or instruction dataset version you may use."})
    entries = services.check_graders(access, list(graders)) if graders else []
    with transaction.atomic():
        distillation = Distillation.objects.create(
            team=access.team, name=name, teacher_key=teacher, teacher_label=label, prompts=prompts, graders=entries,
            redact_pii=redact_pii, rows_total=prompts.row_count or 0, created_by=access.user,
        )  # fmt: skip
        audit.record(
            "eval.distillation_started", access=access, target=distillation, ip=ip, teacher=teacher,
            prompts=prompts.pk, graders=len(entries), redact_pii=redact_pii,
        )  # fmt: skip
        transaction.on_commit(lambda: _enqueue(distillation.pk))
    return distillation


def _enqueue(distillation_id: int) -> None:
    from evals_app.tasks import distill_task

    distill_task.delay(distillation_id)


def compare(*, access: TeamAccess, distillation: Distillation, suite: EvalSuite, ip: str | None = None) -> EvalRun:
    """Run ``suite`` on the teacher and every student at once (an ordinary eval run)."""
    keys = [distillation.teacher_key, *(f"version:{version.pk}" for version in students(distillation))]
    if len(keys) < 2:
        raise ValidationError({"suite": "No student yet: train a model on the distilled dataset first."})
    return services.start_run(access=access, suite=suite, model_keys=keys, ip=ip)


# --- running ------------------------------------------------------------------------------------


def claim(distillation_id: int) -> Distillation | None:
    """Take a queued distillation (a conditional UPDATE: a second delivery of its task does nothing)."""
    taken = (
        Distillation.objects.unscoped()
        .filter(pk=distillation_id, status=Distillation.Status.QUEUED)
        .update(status=Distillation.Status.RUNNING, started_at=timezone.now())
    )
    if not taken:
        return None
    return (
        Distillation.objects.unscoped().select_related("team", "prompts__dataset", "created_by").get(pk=distillation_id)
    )


def run(distillation_id: int) -> None:
    """Do one queued distillation (the Celery task's body; idempotent, see ``claim``)."""
    distillation = claim(distillation_id)
    if distillation is None:
        return
    try:
        _run(distillation)
    except Exception as error:  # a bug or a lost database must not leave it "running" forever
        log.exception("distillation %s failed", distillation_id)
        failed = Distillation.Status.FAILED
        _update(distillation, status=failed, error=f"It stopped: {error}", finished_at=timezone.now())


def _update(distillation: Distillation, **fields: Any) -> None:
    Distillation.objects.unscoped().filter(pk=distillation.pk).update(**fields)


def _run(distillation: Distillation) -> None:
    try:
        access = resolve_access(distillation.created_by, distillation.team.slug)
        teacher = resolve_model(access, distillation.teacher_key)
    except (Http404, PermissionDenied) as error:
        message = "The person who started it has left the team." if isinstance(error, Http404) else str(error)
        _update(distillation, status=Distillation.Status.FAILED, error=message, finished_at=timezone.now())
        return
    version = distillation.prompts
    prompts = list(read_prompts(version.rows_path, version.kind)) if version.rows_path.exists() else []
    _update(distillation, rows_total=len(prompts))
    judge = services.judge_factory(access)
    built = [grading.build(entry["grader"], judge=judge(entry["grader"])) for entry in distillation.graders]
    publish([teacher])
    rows: list[dict[str, Any]] = []
    left_out: Counter[str] = Counter()
    redactions: Counter[str] = Counter()
    for start in range(0, len(prompts), SAVE_EVERY):
        chunk = prompts[start : start + SAVE_EVERY]
        answers = generation.answer_all(
            [generation.Request(teacher, prompt.messages) for prompt in chunk],
            concurrency=settings.EVAL_CONCURRENCY, max_tokens=settings.EVAL_MAX_TOKENS,
        )  # fmt: skip
        for prompt, answer in zip(chunk, answers, strict=True):
            reason = _refused(prompt, answer, built)
            if reason:
                left_out[reason] += 1
                continue
            rows.append(_row(prompt, answer, redactions if distillation.redact_pii else None))
        _update(distillation, rows_done=start + len(chunk), kept=len(rows), left_out=dict(left_out))
    if not rows:
        _update(
            distillation, status=Distillation.Status.FAILED, finished_at=timezone.now(), redactions=dict(redactions),
            error="No answer of the teacher was kept (see what was left out): nothing to train a student on.",
        )  # fmt: skip
        return
    output = _upload(access, distillation, teacher, rows)
    _update(
        distillation, status=Distillation.Status.SUCCEEDED, output=output, kept=len(rows), left_out=dict(left_out),
        redactions=dict(redactions), finished_at=timezone.now(),
    )  # fmt: skip


def _refused(prompt: Prompt, answer: generation.Generated, built: Sequence[grading.Grader]) -> str:
    """Why the teacher's answer is left out ("" to keep it): an error, an empty answer, or a failed grader."""
    if answer.error:
        return "teacher error"
    if not answer.text.strip() and not answer.tool_calls:
        return "empty answer"
    graded = grading.Answer.from_completion(
        {"role": "assistant", "content": answer.text, "tool_calls": answer.tool_calls}
    )
    for grader in built:
        try:
            verdict = grader.grade(graded, prompt.reference, question=prompt.question)
        except Exception as error:  # a grader that cannot grade keeps nothing it cannot vouch for
            return f"{grader.type}: could not grade ({error.__class__.__name__})"
        if not verdict.passed:
            return f"failed {grader.type}"
    return ""


def _row(prompt: Prompt, answer: generation.Generated, redactions: Counter[str] | None) -> dict[str, Any]:
    reply: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if answer.tool_calls:
        reply["tool_calls"] = [
            {"type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
            for call in answer.tool_calls
        ]
    row = {"messages": [*prompt.messages, reply]}
    if redactions is None:
        return row
    return pii.redact_row(row, redactions)


def _upload(
    access: TeamAccess, distillation: Distillation, teacher: Servable, rows: list[dict[str, Any]]
) -> DatasetVersion:
    """The kept rows as a new version of the dataset named after the distillation, its recipe naming the teacher."""
    prompts = distillation.prompts
    description = (
        f"{teacher.label}'s answers to {prompts.dataset.name} v{prompts.number}, distilled for a smaller student."
    )
    version = upload_rows(
        access, rows, name=distillation.name, filename=f"distilled-{distillation.pk}.jsonl",
        description=description, ip=None,
    )  # fmt: skip
    lineage = {
        "teacher": teacher.label, "teacher_key": distillation.teacher_key, "distillation": distillation.pk,
        "prompts": f"{prompts.dataset.name} v{prompts.number}", "prompts_version_id": prompts.pk,
        "graders": [entry["grader"]["type"] for entry in distillation.graders], "redacted": distillation.redact_pii,
    }  # fmt: skip
    DatasetVersion.objects.for_team(access.team).filter(pk=version.pk).update(
        recipe={**version.recipe, "distilled_from": lineage}
    )
    audit.record(
        "eval.distillation_finished", access=access, target=distillation, dataset=version.dataset_id,
        version=version.number, rows=len(rows),
    )  # fmt: skip
    return version
