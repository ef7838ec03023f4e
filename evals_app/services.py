"""What the evals app can do: define eval suites, run them on a team's models, and read their results.

A run is started by ``start_run`` (audited; the Celery task is enqueued once the run row is committed) and done
by ``run_eval`` in the worker: it answers every row with every model through the inference server (a few requests
at a time, ``generation``), grades the answers (``training_app.engine.graders``) and saves progress every
``SAVE_EVERY`` rows. A model that fails answers nothing: its rows keep the error and the run goes on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from accounts import audit
from accounts.permissions import TeamAccess, resolve_access
from accounts.roles import Perm
from datasets_app.models import DatasetVersion
from datasets_app.services import visible_datasets
from evals_app import generation
from evals_app.models import EvalResult, EvalRun, EvalSuite
from evals_app.prompts import EVAL_KINDS, EvalItem, read_items
from serving_app.catalog import Servable, publish, refusal_message, resolve_model, usable_models
from training_app.engine import graders as grading
from training_app.models import BaseModel
from training_app.services import usable_base_models

log = logging.getLogger(__name__)

DEFAULT_PASS_RATE = 0.8
MAX_GRADERS = 10
MAX_MODELS = 8
# Rows answered between two progress saves (each model answers them together: one batch for the server).
SAVE_EVERY = 8
# A model key as serving_app.catalog writes them, with an id the database can hold.
MODEL_KEY = re.compile(r"(base|version|deployment):[1-9][0-9]{0,17}")
# The judge's reply is short: a score and a reason.
JUDGE_MAX_TOKENS = 200


# --- reading ------------------------------------------------------------------------------------------------


def visible_suites(access: TeamAccess) -> QuerySet[EvalSuite]:
    """The team's eval suites (every member sees them), with their dataset version."""
    return EvalSuite.objects.for_team(access.team).select_related("dataset_version__dataset", "created_by")


def runs_of(access: TeamAccess, suite: EvalSuite) -> QuerySet[EvalRun]:
    """A suite's runs, newest first."""
    return EvalRun.objects.for_team(access.team).filter(suite=suite).select_related("created_by")


def visible_runs(access: TeamAccess) -> QuerySet[EvalRun]:
    """The team's eval runs, newest first."""
    return EvalRun.objects.for_team(access.team).select_related("suite", "created_by")


def results_of(run: EvalRun) -> QuerySet[EvalResult]:
    """A run's results, by row then model."""
    return EvalResult.objects.for_team(run.team).filter(run=run).order_by("row_number", "model_key")


def eval_dataset_versions(access: TeamAccess) -> QuerySet[DatasetVersion]:
    """Ready chat and instruction versions of the datasets the actor may use: what a suite can be built on."""
    return (
        DatasetVersion.objects.for_team(access.team)
        .filter(dataset__in=visible_datasets(access, "use"), status="ready", kind__in=EVAL_KINDS)
        .select_related("dataset")
        .order_by("dataset__name", "-number")
    )


def suite_items(suite: EvalSuite, *, limit: int | None = None) -> list[EvalItem]:
    """The suite's prompts and references, read from its dataset version's rows."""
    version = suite.dataset_version
    if not version.rows_path.exists():
        return []
    return list(read_items(version.rows_path, version.kind, limit=limit))


# --- suites -------------------------------------------------------------------------------------------------


def check_graders(access: TeamAccess, entries: Any) -> list[dict[str, Any]]:
    """The suite's graders in their stored form, ``[{"grader": spec, "pass_rate": r}]``.

    Each entry is ``{"grader": spec, "pass_rate": r}`` or a bare spec with an optional ``pass_rate`` (default
    ``DEFAULT_PASS_RATE``). Every spec is built with ``grading.build``; an ``llm_judge``'s ``model`` must be a
    model key the actor may use. Raises ``ValidationError`` on ``graders`` naming the grader and the field.
    """
    if not isinstance(entries, list) or not entries:
        raise ValidationError({"graders": 'Give a JSON list of graders, e.g. [{"type": "exact_match"}].'})
    if len(entries) > MAX_GRADERS:
        raise ValidationError({"graders": f"At most {MAX_GRADERS} graders per suite."})
    checked = []
    for number, entry in enumerate(entries, start=1):
        where = f"Grader {number}"
        if not isinstance(entry, dict):
            raise ValidationError({"graders": f'{where}: expected an object such as {{"type": "exact_match"}}.'})
        spec = dict(entry["grader"]) if isinstance(entry.get("grader"), dict) else dict(entry)
        pass_rate = entry.get("pass_rate", spec.pop("pass_rate", DEFAULT_PASS_RATE))
        spec.pop("pass_rate", None)
        if isinstance(pass_rate, bool) or not isinstance(pass_rate, int | float) or not 0 <= pass_rate <= 1:
            raise ValidationError({"graders": f"{where}: pass_rate: give a share of rows from 0 to 1, e.g. 0.8."})
        try:
            grader = grading.build(spec)
        except grading.GraderSpecError as error:
            raise ValidationError({"graders": f"{where}: {error}"}) from None
        if isinstance(grader, grading.LLMJudge):
            _check_judge(access, grader.model, where)
        checked.append({"grader": grader.spec(), "pass_rate": float(pass_rate)})
    return checked


def _check_judge(access: TeamAccess, key: str, where: str) -> None:
    if not MODEL_KEY.fullmatch(key):
        raise ValidationError({"graders": f"{where}: llm_judge.model: name the judge by its key, e.g. base:1."})
    try:
        resolve_model(access, key)
    except (Http404, PermissionDenied) as error:
        raise ValidationError({"graders": f"{where}: llm_judge.model: {refusal_message(error)}"}) from None


def _check_version(access: TeamAccess, version: DatasetVersion) -> None:
    if not eval_dataset_versions(access).filter(pk=version.pk).exists():
        raise ValidationError({"dataset_version": "Choose a ready chat or instruction dataset version you may use."})


def regression_base_models(access: TeamAccess) -> QuerySet[BaseModel]:
    """The base models a suite may be a regression suite of: those the team may use."""
    return usable_base_models(access).order_by("name")


def _check_base_models(access: TeamAccess, base_models: Iterable[BaseModel]) -> list[BaseModel]:
    chosen = list(base_models)
    usable = set(
        regression_base_models(access).filter(pk__in=[model.pk for model in chosen]).values_list("pk", flat=True)
    )
    for model in chosen:
        if model.pk not in usable:
            raise ValidationError({"base_models": f"Base model {model.pk}: not a ready base model the team may use."})
    return chosen


def _checked_suite(
    access: TeamAccess, name: str, dataset_version: DatasetVersion, graders: Any, suite: EvalSuite | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """A suite's name and checked graders, for ``access`` (``evals.run``); ``ValidationError`` names the field."""
    access.require(Perm.RUN_EVALS)
    _check_version(access, dataset_version)
    checked = check_graders(access, graders)
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the suite a name."})
    taken = EvalSuite.objects.for_team(access.team).filter(name__iexact=name)
    if suite is not None:
        taken = taken.exclude(pk=suite.pk)
    if taken.exists():
        raise ValidationError({"name": f"The team already has a suite called “{name}”."})
    return name, checked


@transaction.atomic
def create_suite(
    *,
    access: TeamAccess,
    name: str,
    dataset_version: DatasetVersion,
    graders: Any,
    description: str = "",
    base_models: Iterable[BaseModel] = (),
    ip: str | None = None,
) -> EvalSuite:
    """A new eval suite (``evals.run``); audited. Raises ``ValidationError`` naming the field to fix.

    ``base_models`` marks it as a regression suite of those base models: the forgetting check of each of their
    versions runs it on the base and the version.
    """
    name, checked = _checked_suite(access, name, dataset_version, graders)
    regression = _check_base_models(access, base_models)
    suite = EvalSuite.objects.create(
        team=access.team, name=name, description=description, dataset_version=dataset_version, graders=checked,
        created_by=access.user,
    )  # fmt: skip
    suite.base_models.set(regression)
    audit.record("eval.suite_created", access=access, target=suite, ip=ip, dataset_version=dataset_version.pk,
                 graders=[entry["grader"]["type"] for entry in checked],
                 base_models=[model.pk for model in regression])  # fmt: skip
    return suite


@transaction.atomic
def update_suite(
    *,
    access: TeamAccess,
    suite: EvalSuite,
    name: str,
    dataset_version: DatasetVersion,
    graders: Any,
    description: str = "",
    base_models: Iterable[BaseModel] | None = None,
    ip: str | None = None,
) -> EvalSuite:
    """Change a suite's name, dataset version, graders or the base models it guards (``None`` keeps them);
    finished runs keep their graders; audited."""
    name, checked = _checked_suite(access, name, dataset_version, graders, suite=suite)
    regression = _check_base_models(access, base_models) if base_models is not None else None
    EvalSuite.objects.for_team(access.team).filter(pk=suite.pk).update(
        name=name, description=description, dataset_version=dataset_version, graders=checked,
        updated_at=timezone.now(),
    )  # fmt: skip
    suite.refresh_from_db()
    if regression is not None:
        suite.base_models.set(regression)
    audit.record("eval.suite_changed", access=access, target=suite, ip=ip, dataset_version=dataset_version.pk,
                 graders=[entry["grader"]["type"] for entry in checked],
                 base_models=list(suite.base_models.values_list("pk", flat=True)))  # fmt: skip
    return suite


@transaction.atomic
def delete_suite(*, access: TeamAccess, suite: EvalSuite, ip: str | None = None) -> None:
    """Delete a suite and its runs; audited."""
    access.require(Perm.RUN_EVALS)
    audit.record("eval.suite_deleted", access=access, target=suite, ip=ip)
    EvalSuite.objects.for_team(access.team).filter(pk=suite.pk).delete()


# --- runs ---------------------------------------------------------------------------------------------------


def runnable_models(access: TeamAccess) -> list[Servable]:
    """The models a run may use: base models, model versions and deployments the actor may chat with."""
    return usable_models(access, deployments=True)


@transaction.atomic
def start_run(*, access: TeamAccess, suite: EvalSuite, model_keys: Sequence[str], ip: str | None = None) -> EvalRun:
    """Queue a run of ``suite`` on each model of ``model_keys`` (``evals.run``, and each model usable by the
    actor); audited. Raises ``ValidationError`` on ``models`` for a key the actor may not use."""
    access.require(Perm.RUN_EVALS)
    keys = list(dict.fromkeys(model_keys))
    if not keys:
        raise ValidationError({"models": "Choose at least one model to run the suite on."})
    if len(keys) > MAX_MODELS:
        raise ValidationError({"models": f"Choose at most {MAX_MODELS} models per run."})
    labels = {}
    for key in keys:
        if not MODEL_KEY.fullmatch(key):
            raise ValidationError(
                {"models": f"{key[:40]}: not a model key; write base:<id>, version:<id> or deployment:<id>."}
            )
        try:
            labels[key] = resolve_model(access, key).label
        except (Http404, PermissionDenied) as error:
            raise ValidationError({"models": f"{key}: {refusal_message(error)}"}) from None
    rows = suite.dataset_version.row_count or 0
    run = EvalRun.objects.create(
        team=access.team, suite=suite, model_keys=keys, model_labels=labels, graders=suite.graders,
        rows_total=rows * len(keys), created_by=access.user,
    )  # fmt: skip
    audit.record("eval.run_started", access=access, target=run, ip=ip, suite=suite.pk, models=keys)
    transaction.on_commit(lambda: _enqueue(run.pk))
    return run


def _enqueue(run_id: int) -> None:
    from evals_app.tasks import run_eval_task

    run_eval_task.delay(run_id)


def claim_run(run_id: int) -> EvalRun | None:
    """Take a queued run (a conditional UPDATE): a second delivery of its task finds it taken and does nothing."""
    taken = (
        EvalRun.objects.unscoped()
        .filter(pk=run_id, status=EvalRun.Status.QUEUED)
        .update(status=EvalRun.Status.RUNNING, started_at=timezone.now())
    )
    if not taken:
        return None
    return (
        EvalRun.objects.unscoped()
        .select_related("team", "suite__dataset_version__dataset", "created_by")
        .get(pk=run_id)
    )


@dataclass(frozen=True)
class _Model:
    key: str
    servable: Servable | None
    refusal: str


def _resolve_for_run(run: EvalRun) -> tuple[list[_Model], TeamAccess | None]:
    """Each model of the run, resolved again with its starter's access now (a share revoked since is refused)."""
    try:
        access = resolve_access(run.created_by, run.team.slug)
    except Http404:
        return [_Model(key, None, "The person who started the run has left the team.") for key in run.model_keys], None
    models = []
    for key in run.model_keys:
        try:
            models.append(_Model(key, resolve_model(access, key), ""))
        except (Http404, PermissionDenied) as error:
            models.append(_Model(key, None, refusal_message(error)))
    return models, access


def run_eval(run_id: int) -> None:
    """Do one queued run: answer, grade, save (the Celery task's body; idempotent, see ``claim_run``)."""
    run = claim_run(run_id)
    if run is None:
        return
    try:
        _run(run)
    except Exception as error:  # a bug or a lost database must not leave the run "running" forever
        log.exception("eval run %s failed", run_id)
        EvalRun.objects.unscoped().filter(pk=run_id).update(
            status=EvalRun.Status.FAILED, error=f"The run stopped: {error}", finished_at=timezone.now()
        )


def _run(run: EvalRun) -> None:
    items = suite_items(run.suite)
    models, access = _resolve_for_run(run)
    judge = judge_factory(access)
    built = [grading.build(entry["grader"], judge=judge(entry["grader"])) for entry in run.graders]
    total = len(items) * len(models)
    EvalRun.objects.unscoped().filter(pk=run.pk).update(rows_total=total)
    publish([model.servable for model in models if model.servable is not None])
    done = 0
    for start in range(0, len(items), SAVE_EVERY):
        chunk = items[start : start + SAVE_EVERY]
        pairs = [(model, item) for model in models for item in chunk]
        requests = [
            generation.Request(model.servable, item.messages, item.tools)
            for model, item in pairs
            if model.servable is not None
        ]
        answers = iter(
            generation.answer_all(requests, concurrency=settings.EVAL_CONCURRENCY, max_tokens=settings.EVAL_MAX_TOKENS)
        )
        results = []
        for model, item in pairs:
            generated = next(answers) if model.servable is not None else generation.Generated(error=model.refusal)
            results.append(_graded(run, model.key, item, generated, built))
        EvalResult.objects.bulk_create(results, ignore_conflicts=True)
        done += len(pairs)
        EvalRun.objects.unscoped().filter(pk=run.pk).update(rows_done=done)
    run.refresh_from_db()
    EvalRun.objects.unscoped().filter(pk=run.pk).update(
        status=EvalRun.Status.SUCCEEDED, finished_at=timezone.now(), summary=summarize(run)
    )


def _graded(
    run: EvalRun, key: str, item: EvalItem, generated: generation.Generated, built: Sequence[grading.Grader]
) -> EvalResult:
    """One result row: the answer with each grader's verdict, or the model's error (every grader failed)."""
    verdicts: list[dict[str, Any]] = []
    if not generated.error:
        answer = grading.Answer.from_completion(
            {"role": "assistant", "content": generated.text, "tool_calls": generated.tool_calls}
        )
        for grader in built:
            try:
                verdict = grader.grade(answer, item.reference_for(grader.type), question=item.question)
            except Exception as error:  # a judge that fails fails this verdict, not the run
                verdict = grading.Verdict(0.0, False, f"could not grade: {error}")
            verdicts.append({"type": grader.type, **verdict.to_dict()})
    return EvalResult(
        team_id=run.team_id, run=run, model_key=key, row_number=item.row_number, answer=generated.text,
        tool_calls=generated.tool_calls, verdicts=verdicts, error=generated.error, latency_s=generated.latency_s,
        passed=bool(verdicts) and all(verdict["passed"] for verdict in verdicts),
    )  # fmt: skip


def judge_factory(access: TeamAccess | None) -> Any:
    """For each grader spec, the judge callable an ``llm_judge`` needs (None for other graders): its ``model``
    key resolved with the run's access and answered greedily through the inference server, like the answers."""

    def judge_for(spec: Mapping[str, Any]) -> grading.JudgeModel | None:
        if spec.get("type") != "llm_judge":
            return None
        key = str(spec.get("model") or "")

        def judge(messages: list[dict[str, str]]) -> str:
            if access is None:
                raise RuntimeError("the person who started the run has left the team")
            try:
                servable = resolve_model(access, key)
            except (Http404, PermissionDenied) as error:
                raise RuntimeError(f"judge {key}: {refusal_message(error)}") from None
            publish([servable])
            reply = generation.answer_all(
                [generation.Request(servable, list(messages))], concurrency=1, max_tokens=JUDGE_MAX_TOKENS
            )[0]
            if reply.error:
                raise RuntimeError(f"judge {key}: {reply.error}")
            return reply.text

        return judge

    return judge_for


# --- summaries ----------------------------------------------------------------------------------------------


def summarize(run: EvalRun, results: Iterable[EvalResult] | None = None) -> dict[str, Any]:
    """Per model: rows, errors, rows passing every grader, and per grader its pass rate, mean score and whether
    it meets the suite's ``pass_rate``. A row whose model failed counts as failed by every grader."""
    rows = list(results if results is not None else results_of(run))
    summary: dict[str, Any] = {}
    for key in run.model_keys:
        mine = [result for result in rows if result.model_key == key]
        count = len(mine)
        per_grader = []
        for index, entry in enumerate(run.graders):
            verdicts = [result.verdicts[index] for result in mine if len(result.verdicts) > index]
            passed = sum(1 for verdict in verdicts if verdict.get("passed"))
            rate = passed / count if count else 0.0
            per_grader.append({
                "type": entry["grader"]["type"], "passed": passed,
                "pass_rate": rate, "required": entry["pass_rate"],
                "mean_score": sum(float(verdict.get("score") or 0) for verdict in verdicts) / count if count else 0.0,
                "ok": count > 0 and rate >= entry["pass_rate"],
            })  # fmt: skip
        passed_all = sum(1 for result in mine if result.passed)
        summary[key] = {
            "label": run.label_of(key), "rows": count, "errors": sum(1 for result in mine if result.error),
            "passed_all": passed_all, "pass_rate": passed_all / count if count else 0.0,
            "passed": bool(per_grader) and all(grader["ok"] for grader in per_grader), "graders": per_grader,
        }  # fmt: skip
    return summary


def current_summary(run: EvalRun) -> dict[str, Any]:
    """The stored summary of a finished run, or one worked out from the results so far."""
    return run.summary if run.summary and not run.is_active else summarize(run)


@dataclass(frozen=True)
class RowComparison:
    """One row side by side: its prompt and reference, and each model's result (None where not answered yet)."""

    item: EvalItem
    results: list[tuple[str, EvalResult | None]]


def side_by_side(run: EvalRun, *, offset: int = 0, limit: int = 20) -> tuple[list[RowComparison], bool]:
    """A page of rows with each model's answer and verdicts, and whether more rows follow."""
    items = suite_items(run.suite, limit=offset + limit + 1)[offset:]
    more = len(items) > limit
    items = items[:limit]
    numbers = [item.row_number for item in items]
    found = {(result.model_key, result.row_number): result for result in results_of(run).filter(row_number__in=numbers)}
    rows = [
        RowComparison(item, [(run.label_of(key), found.get((key, item.row_number))) for key in run.model_keys])
        for item in items
    ]
    return rows, more


def history(access: TeamAccess, suite: EvalSuite) -> dict[str, list[tuple[float, float]]]:
    """Each model's share of rows passing every grader, run after run (finished runs, oldest first): for a chart
    of the suite over time, x = the run's number in order."""
    series: dict[str, list[tuple[float, float]]] = {}
    finished = runs_of(access, suite).filter(status=EvalRun.Status.SUCCEEDED).order_by("created_at", "pk")
    for number, run in enumerate(finished, start=1):
        for key, figures in (run.summary or {}).items():
            series.setdefault(str(figures.get("label") or key), []).append((number, 100 * figures["pass_rate"]))
    return series
