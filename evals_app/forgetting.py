"""The forgetting check: did a model version lose what its base model knew?

Two measures, base vs version, judged against the team's limits (``evals_app.policy``):

- **perplexity** on a held-out general English corpus (``CORPUS_PATH``), measured by
  ``training_app.engine.perplexity`` in a subprocess launched by a task on the training queue of the version's pool
  (the worker that loads models for training; the worker itself never imports torch);
- **the base model's regression suites** (eval suites whose ``base_models`` name the version's base): one eval run
  per suite on the base and the version (the usual run machinery), compared by the share of rows passing every
  grader.

A check starts after every training job that produces a version (``start_after_training``, from the post_save
receiver in ``evals_app.apps``) and on demand (``start_check``). It ends when its perplexity task and all its runs
have ended (``conclude``, called by each): ``flagged`` with a ``reasons`` line per limit passed.

For deployment gates: ``latest_check(version)`` is the version's newest finished check, or None.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from accounts import audit
from accounts.permissions import TeamAccess, resolve_access
from accounts.roles import Perm
from evals_app import services
from evals_app.models import CheckStatus, EvalRun, EvalSuite, ForgettingCheck
from evals_app.policy import team_policy
from serving_app.catalog import servable_version
from training_app.models import ModelVersion
from training_app.services import visible_versions

log = logging.getLogger(__name__)

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "general_corpus.txt"
"""Held-out general English written for the studio (see its header): the starter model was not pretrained on it."""
PERPLEXITY_TIMEOUT_S = 3600
ROOT = Path(__file__).resolve().parent.parent


# --- reading ------------------------------------------------------------------------------------------------


def latest_check(version: ModelVersion) -> ForgettingCheck | None:
    """The version's newest finished forgetting check (None when none has finished).

    ``.flagged`` says whether a limit was passed, ``.reasons`` says which, one human-readable line each (e.g.
    "Perplexity 41.2 → 58.9 (+43 %, limit 10 %)"); ``.perplexity_before`` / ``.perplexity_after`` are the base's
    and the version's perplexity on the general corpus (None where it could not be measured).
    """
    return (
        ForgettingCheck.objects.for_team(version.team)
        .filter(model_version=version, status=CheckStatus.SUCCEEDED)
        .order_by("-created_at", "-pk")
        .first()
    )


def newest_check(version: ModelVersion) -> ForgettingCheck | None:
    """The version's newest check, finished or not (what its page shows)."""
    return ForgettingCheck.objects.for_team(version.team).filter(model_version=version).first()


def checks_of(access: TeamAccess, version: ModelVersion) -> list[ForgettingCheck]:
    """A version's checks, newest first."""
    return list(ForgettingCheck.objects.for_team(access.team).filter(model_version=version))


def runs_of(check: ForgettingCheck) -> list[EvalRun]:
    """The eval runs of a check's regression suites."""
    return list(EvalRun.objects.for_team(check.team).filter(forgetting_checks=check).select_related("suite"))


def regression_suites(version: ModelVersion) -> list[EvalSuite]:
    """The team's suites marked as regression suites of the version's base model."""
    if version.base_model_id is None:
        return []
    return list(EvalSuite.objects.for_team(version.team).filter(base_models=version.base_model_id))


# --- starting -----------------------------------------------------------------------------------------------


def start_check(*, access: TeamAccess, version: ModelVersion, ip: str | None = None) -> ForgettingCheck:
    """Check ``version`` now (``evals.run``, and the version one the actor may use); audited."""
    access.require(Perm.RUN_EVALS)
    if not visible_versions(access, "use").filter(pk=version.pk).exists():
        raise PermissionDenied("You may not use this model version.")
    with transaction.atomic():
        check = _start(version, access, ForgettingCheck.Trigger.ON_DEMAND)
        audit.record("eval.forgetting_started", access=access, target=check, ip=ip, version=version.pk)
    return check


def start_after_training(version_id: int) -> ForgettingCheck | None:
    """Check a version a training job just produced, as the job's launcher (call once the version is committed).

    Does nothing when the team (or the operator: ``ATELIER_CHECK_AFTER_TRAINING=0``) turned the automatic check off.
    Never raises: training is done whatever happens here.
    """
    if not settings.EVALS_CHECK_AFTER_TRAINING:
        return None
    try:
        version = ModelVersion.objects.unscoped().select_related("team", "created_by", "base_model").get(pk=version_id)
        if not team_policy(version.team).check_after_training:
            return None
        access = None
        if version.created_by is not None:
            try:
                access = resolve_access(version.created_by, version.team.slug)
            except Http404:
                access = None
        with transaction.atomic():
            return _start(version, access, ForgettingCheck.Trigger.TRAINING)
    except Exception:
        log.exception("could not start the forgetting check of model version %s", version_id)
        return None


def _start(version: ModelVersion, access: TeamAccess | None, trigger: str) -> ForgettingCheck:
    """The check row, one eval run per regression suite, and the perplexity task once committed."""
    check = ForgettingCheck.objects.create(
        team=version.team, model_version=version, trigger=trigger, limits=team_policy(version.team).limits(),
        created_by=access.user if access is not None else None,
    )  # fmt: skip
    notes = []
    for suite in regression_suites(version):
        if access is None:
            notes.append(f"Suite “{suite.name}” was not run: the person who trained the version has left the team.")
            continue
        keys = [f"base:{version.base_model_id}", f"version:{version.pk}"]
        try:
            run = services.start_run(access=access, suite=suite, model_keys=keys)
        except (ValidationError, PermissionDenied) as error:
            reason = "; ".join(error.messages) if isinstance(error, ValidationError) else str(error)
            notes.append(f"Suite “{suite.name}” was not run: {reason}")
            continue
        check.eval_runs.add(run)
    if notes:
        ForgettingCheck.objects.for_team(version.team).filter(pk=check.pk).update(notes=notes)
    queue = _training_queue(version)
    transaction.on_commit(lambda: _enqueue(check.pk, queue))
    return check


def _training_queue(version: ModelVersion) -> str:
    """The queue of the pool that trained the version (where models are loaded), else the default training queue."""
    pool = str((version.lineage.get("job") or {}).get("pool") or "")
    pools = settings.TRAINING_POOLS
    chosen = pools.get(pool) or next(iter(pools.values()), {})
    return str(chosen.get("queue", "gpu"))


def _enqueue(check_id: int, queue: str) -> None:
    from evals_app.tasks import measure_forgetting_task

    try:
        measure_forgetting_task.apply_async(args=[check_id], queue=queue)
    except Exception as error:  # a broker down must not break the request that started the check
        log.exception("could not enqueue forgetting check %s", check_id)
        ForgettingCheck.objects.unscoped().filter(pk=check_id).update(
            perplexity_status="failed", error=f"The check could not be queued ({error.__class__.__name__})."
        )
        conclude(check_id)


# --- the perplexity half (the task's body) ------------------------------------------------------------------


def measure_perplexity(check_id: int) -> None:
    """Measure the base's and the version's perplexity in a subprocess, save them, then ``conclude``.

    Idempotent: a second delivery finds the perplexity half taken (a conditional UPDATE) and does nothing.
    """
    taken = (
        ForgettingCheck.objects.unscoped()
        .filter(pk=check_id, perplexity_status="queued")
        .update(perplexity_status="running", status=CheckStatus.RUNNING)
    )
    if not taken:
        return
    check = ForgettingCheck.objects.unscoped().select_related("model_version__base_model").get(pk=check_id)
    try:
        figures = run_perplexity(check.model_version)
    except PerplexityError as error:
        ForgettingCheck.objects.unscoped().filter(pk=check_id).update(perplexity_status="failed", error=str(error))
    else:
        ForgettingCheck.objects.unscoped().filter(pk=check_id).update(
            perplexity_status="done", perplexity_before=figures["before"], perplexity_after=figures["after"],
            corpus_tokens=figures["tokens"],
        )  # fmt: skip
    conclude(check_id)


class PerplexityError(RuntimeError):
    """The perplexity could not be measured; the message says why, for the version's page."""


def perplexity_command(version: ModelVersion) -> list[str]:
    """The command measuring ``version`` against its base (``python -m training_app.engine.perplexity``): an
    adapter on its base model's folder (as it is served), a full model beside its base model's folder."""
    servable = servable_version(version)
    base_path = (
        version.base_model.path if version.base_model else str(version.lineage.get("base_model", {}).get("path", ""))
    )
    if not base_path:
        raise PerplexityError("The version's base model is no longer registered.")
    if servable.adapter_path:
        tuned = ["--adapter", servable.adapter_path]
        base_path = servable.base_path
    else:
        tuned = ["--model", version.path]
    return [sys.executable, "-m", "training_app.engine.perplexity", "--base", base_path, *tuned,
            "--corpus", str(CORPUS_PATH)]  # fmt: skip


def run_perplexity(version: ModelVersion) -> dict[str, Any]:
    """``{"before", "after", "tokens"}`` for ``version``, from the engine's subprocess. Raises ``PerplexityError``."""
    command = perplexity_command(version)
    try:
        done = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=PERPLEXITY_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise PerplexityError(f"Measuring perplexity took longer than {PERPLEXITY_TIMEOUT_S} s.") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise PerplexityError(f"Perplexity could not be measured: {last[:500]}")
    try:
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        return {"before": float(figures["before"]), "after": float(figures["after"]), "tokens": int(figures["tokens"])}
    except (ValueError, KeyError, IndexError, TypeError):
        raise PerplexityError("The perplexity engine's answer could not be read.") from None


# --- concluding ---------------------------------------------------------------------------------------------


def conclude_for_run(run_id: int) -> None:
    """An eval run ended: conclude the checks waiting for it."""
    for check_id in ForgettingCheck.objects.unscoped().filter(eval_runs=run_id).values_list("pk", flat=True):
        conclude(check_id)


@transaction.atomic
def conclude(check_id: int) -> None:
    """Judge the check once its perplexity task and every run have ended (else do nothing: the last one calls)."""
    check = ForgettingCheck.objects.unscoped().select_for_update().filter(pk=check_id).first()
    if check is None or not check.is_active or check.perplexity_status in ("queued", "running"):
        return
    runs = runs_of(check)
    if any(run.is_active for run in runs):
        return
    limits = {**team_policy(check.team).limits(), **(check.limits or {})}
    reasons: list[str] = []
    notes = list(check.notes or [])
    if check.perplexity_status == "done":
        reason = perplexity_reason(check.perplexity_before, check.perplexity_after, limits["max_perplexity_increase"])
        if reason:
            reasons.append(reason)
    results = []
    for run in runs:
        result = suite_result(run, check.model_version_id, limits["max_pass_rate_drop"])
        if result.get("note"):
            notes.append(result["note"])
        elif result["flagged"]:
            reasons.append(result["reason"])
        results.append(result)
    failed = check.perplexity_status == "failed" and not results
    ForgettingCheck.objects.unscoped().filter(pk=check_id).update(
        status=CheckStatus.FAILED if failed else CheckStatus.SUCCEEDED, flagged=bool(reasons), reasons=reasons,
        notes=notes, suite_results=results, finished_at=timezone.now(),
    )  # fmt: skip


def perplexity_reason(before: float | None, after: float | None, limit: float) -> str:
    """The line flagging a perplexity rise beyond ``limit`` (a share), or "" when within it."""
    if not before or after is None:
        return ""
    change = after / before - 1
    if change <= limit:
        return ""
    return f"Perplexity {before:.1f} → {after:.1f} (+{100 * change:.0f} %, limit {100 * limit:.0f} %)"


def suite_result(run: EvalRun, version_id: int, limit: float) -> dict[str, Any]:
    """One regression suite base vs version: pass rates (0..1), the drop, and whether it passes ``limit``."""
    name = run.suite.name
    version_key = f"version:{version_id}"
    base_key = next((key for key in run.model_keys if key.startswith("base:")), "")
    summary = run.summary or {}
    result: dict[str, Any] = {"suite": run.suite_id, "name": name, "run": run.pk, "before": None, "after": None,
                              "drop": None, "flagged": False, "reason": "", "note": ""}  # fmt: skip
    if run.status != EvalRun.Status.SUCCEEDED or base_key not in summary or version_key not in summary:
        result["note"] = f"Suite “{name}”: its run did not finish ({run.error or run.get_status_display()})."
        return result
    before, after = float(summary[base_key]["pass_rate"]), float(summary[version_key]["pass_rate"])
    drop = before - after
    result.update(before=before, after=after, drop=drop, flagged=drop > limit + 1e-9)
    if result["flagged"]:
        result["reason"] = (
            f"Suite “{name}”: pass rate {100 * before:.0f} % → {100 * after:.0f} % "
            f"(−{100 * drop:.0f} points, limit {100 * limit:.0f} points)"
        )
    return result
