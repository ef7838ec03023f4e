"""Training jobs: validate and launch, estimate, cancel, clone, and keep the queue honest.

The web process and the API call these; the Celery ``gpu`` task runs the job (``training_app.runner``).
Nothing here imports torch. A job's settings are checked by the trainer's own ``RunConfig.validate`` (with
the chosen pool's CUDA availability) plus what only the studio knows (the base model's context length,
the dataset version's kind), so the form, the API and the trainer agree on what is valid.

Queue honesty (see SECURITY.md): a job is enqueued after its transaction commits, and ``dispatched_at``
stays empty until it is, so the beat reaper (``reap``) can send a job whose web process died in between;
a running job whose worker died stops renewing its lease, and the reaper puts it back in the queue (it
resumes from its last complete checkpoint) or fails it after ``TRAINING_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import logging
import math
import shutil
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts import audit, costs
from accounts.permissions import TeamAccess, require_object_action
from accounts.roles import Perm
from datasets_app import services as dataset_services
from datasets_app.models import DatasetVersion
from training_app import estimator, presets
from training_app.engine.config import CONVERSATION_KINDS, ConfigError, RunConfig
from training_app.engine.rewards import reward_problem
from training_app.models import ACTIVE_STATUSES, BaseModel, JobMetric, JobStatus, ModelVersion, TrainingJob

log = logging.getLogger(__name__)

# The form's field for each RunConfig error key that is not a setting of its own.
# The trainer's "kind" error (the data does not suit the goal) is shown on the goal the person picked.
_ERROR_FIELDS = {"kind": "stage", "model_path": "base_model", "train_path": "dataset_version"}


# ---- worker pools ---------------------------------------------------------------------------------------


def pools() -> dict[str, estimator.Pool]:
    """The worker pools jobs can run on (``settings.TRAINING_POOLS``), by name."""
    return {name: estimator.Pool.from_settings(name, spec) for name, spec in settings.TRAINING_POOLS.items()}


def pool_queue(name: str) -> str:
    return str(settings.TRAINING_POOLS.get(name, {}).get("queue", "gpu"))


def default_pool() -> str:
    return next(iter(settings.TRAINING_POOLS))


# ---- validation and estimate ----------------------------------------------------------------------------


def check_settings(
    *, base_model: BaseModel | None, dataset_version: DatasetVersion | None, pool: str, values: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate chosen settings (flat, dotted keys); returns (the nested config, field → message)."""
    errors: dict[str, str] = {}
    unknown = sorted(set(values) - set(presets.SETTINGS_BY_KEY))
    errors.update({key: "is not a setting of a training job" for key in unknown})
    flat = {**presets.defaults(), **{key: value for key, value in values.items() if key not in unknown}}
    target = flat.get("lora.target_modules")
    if isinstance(target, str) and target.strip() != "all-linear":
        flat["lora.target_modules"] = [name.strip() for name in target.split(",") if name.strip()]
    config = presets.nest(flat)
    split = config.get("eval_split")
    if not isinstance(split, int | float) or isinstance(split, bool) or not 0 <= split <= 0.5:
        errors["eval_split"] = "must be between 0 and 0.5 (a share of the rows; 0 holds none out)"

    pool_spec = pools().get(pool)
    if pool_spec is None:
        errors["pool"] = f"choose one of {', '.join(settings.TRAINING_POOLS)}"
    if base_model is None:
        errors["base_model"] = "choose a base model"
    if dataset_version is None:
        errors["dataset_version"] = "choose a dataset version"
    elif not dataset_version.is_ready:
        errors["dataset_version"] = (
            f"{dataset_version} is {dataset_version.get_status_display().lower()}; train on a ready version"
        )

    trainer_fields = {key: value for key, value in config.items() if key not in presets.LAUNCH_ONLY}
    reward_specs = config.get("rewards")
    if not isinstance(reward_specs, list) or not all(isinstance(spec, dict) for spec in reward_specs):
        # The trainer would only say "wrong type"; say what a rewards list looks like instead.
        errors["rewards"] = reward_problem(reward_specs) or "give a JSON list of reward specs"
        trainer_fields.pop("rewards", None)
    candidate = {
        **trainer_fields,
        "model_path": base_model.path if base_model else "-",
        "train_path": "-",
        "output_dir": "-",
        "run_dir": "-",
        "kind": dataset_version.kind if dataset_version and dataset_version.kind else "chat",
        "use_cpu": pool_spec is not None and pool_spec.accelerator == "cpu",
    }
    try:
        run_config = RunConfig.from_dict(candidate)
    except ConfigError as error:
        problems = error.errors
    else:
        problems = run_config.validate(cuda_available=pool_spec is not None and pool_spec.accelerator == "cuda",
                                       check_files=False)  # fmt: skip
    for key, message in problems.items():
        errors.setdefault(_ERROR_FIELDS.get(key, key), message)
    if base_model is not None and base_model.context_length and "max_seq_length" not in errors:
        length = config.get("max_seq_length")
        if isinstance(length, int) and length > base_model.context_length:
            errors["max_seq_length"] = (
                f"{length} tokens is longer than {base_model.name}'s context of {base_model.context_length} "
                f"tokens; use {base_model.context_length} or less"
            )
    if (
        base_model is not None
        and dataset_version is not None
        and dataset_version.kind in CONVERSATION_KINDS
        and not base_model.chat_template
    ):
        errors.setdefault("base_model", f"{base_model.name} has no chat template, so it cannot read conversations")
    return config, errors


def estimate_job(
    *,
    team: Any,
    base_model: BaseModel,
    dataset_version: DatasetVersion,
    pool: str,
    config: dict[str, Any],
) -> estimator.Estimate:
    """Memory per device (fits or not), tokens, time and cost before launch (see ``training_app.estimator``)."""
    shape = estimator.ModelShape.from_details(
        base_model.parameter_count, base_model.details, base_model.context_length, base_model.vocab_size
    )
    pool_spec = pools()[pool]
    rows = dataset_version.row_count or 0
    held_out = 0 if dataset_version.validation_path.exists() else math.floor(rows * float(config.get("eval_split", 0)))
    tokens = int((dataset_version.stats.get("tokens") or {}).get("total") or 0)
    train_rows = max(rows - held_out, 0)
    train_tokens = round(tokens * train_rows / rows) if rows else 0
    # A CPU pool's process-hours are priced at the team's CPU-hour price when it set one (accounts.costs).
    price = costs.device_hour_price(team, pool_spec.accelerator)
    return estimator.estimate(
        _trainer_view(config),
        shape,
        pool_spec,
        dataset_rows=train_rows,
        dataset_tokens=train_tokens,
        price_per_gpu_hour=float(price) if isinstance(price, Decimal | int | float) else None,
        observed_flops_per_second=_observed_flops(team, pool, shape, pool_spec, config),
    )


def _trainer_view(config: dict[str, Any]) -> dict[str, Any]:
    """A job config as the estimator reads it: RunConfig's field names with their defaults filled in."""
    view = presets.nest(presets.defaults())
    view.update({key: value for key, value in config.items() if key != "lora"})
    view["lora"] = {**view["lora"], **(config.get("lora") or {})}
    return view


# The settings that change a run's speed per token; runs that share them are the estimate's best evidence.
SPEED_KEYS = ("packing", "attention", "liger", "torch_compile", "optimizer")


def _speed_signature(config: dict[str, Any]) -> tuple[Any, ...]:
    defaults = presets.defaults()
    return tuple(config.get(key, defaults.get(key)) for key in SPEED_KEYS)


def _observed_flops(
    team: Any, pool: str, shape: estimator.ModelShape, pool_spec: estimator.Pool, config: dict[str, Any] | None = None
) -> list[float]:
    """Achieved FLOP/s per device of the team's own finished runs on this pool (newest 10).

    With ``config``: only the runs with the same speed settings (packing, attention, Liger, compile,
    optimizer) when there are any, so that each setting's speed is learnt from the runs that used it.
    """
    finished = list(
        TrainingJob.objects.for_team(team)
        .filter(status=JobStatus.SUCCEEDED, pool=pool)
        .select_related("base_model")
        .order_by("-finished_at")[:10]
    )
    if config is not None:
        same = [job for job in finished if _speed_signature(job.config) == _speed_signature(config)]
        finished = same or finished
    observed: list[float] = []
    for job in finished:
        speed = (job.result or {}).get("tokens_per_second")
        if not speed or job.base_model is None:
            continue
        job_shape = estimator.ModelShape.from_details(
            job.base_model.parameter_count, job.base_model.details, job.base_model.context_length,
            job.base_model.vocab_size,
        )  # fmt: skip
        observed.append(
            estimator.achieved_flops_per_second(
                tokens_per_second=float(speed),
                shape=job_shape,
                method=str(job.config.get("method", "lora")),
                devices=pool_spec.devices,
                sequence_length=_mean_sequence_length(job, pool_spec.devices),
                stage=str(job.config.get("stage", "sft")),
            )
        )
    return observed


def _mean_sequence_length(job: TrainingJob, devices: int) -> float | None:
    """Tokens per sequence a finished run saw (for the attention FLOPs), from its tokens and steps."""
    result, config = job.result or {}, job.config
    sequences = (
        int(result.get("steps") or 0)
        * int(config.get("per_device_batch_size", 1))
        * int(config.get("gradient_accumulation", 1))
        * max(devices, 1)
    )
    tokens = result.get("tokens_seen")
    return float(tokens) / sequences if sequences and isinstance(tokens, int | float) and tokens > 0 else None


# ---- launching, cancelling, cloning ---------------------------------------------------------------------


def usable_base_models(access: TeamAccess) -> QuerySet[BaseModel]:
    return BaseModel.objects.available_to(access.team).ready()


def usable_dataset_versions(access: TeamAccess) -> QuerySet[DatasetVersion]:
    """Ready dataset versions of datasets this person may train on (restricted ones need a share)."""
    datasets = dataset_services.visible_datasets(access, "use")
    return (
        DatasetVersion.objects.for_team(access.team)
        .filter(dataset__in=datasets, status="ready")
        .select_related("dataset")
        .order_by("dataset__name", "-number")
    )


def create_job(
    *,
    access: TeamAccess,
    name: str,
    base_model: BaseModel | None,
    dataset_version: DatasetVersion | None,
    pool: str,
    values: dict[str, Any],
    cloned_from: TrainingJob | None = None,
    ip: str | None = None,
) -> TrainingJob:
    """Validate the settings, estimate, save the job and enqueue it once the transaction commits.

    Refused (``ValidationError`` keyed ``budget``) once the month's spend has reached the team's hard budget.
    """
    access.require(Perm.LAUNCH_TRAINING)
    costs.check_budget(team=access.team)
    if base_model is not None and not usable_base_models(access).filter(pk=base_model.pk).exists():
        raise ValidationError({"base_model": "choose one of your team's base models"})
    if dataset_version is not None:
        if dataset_version.team_id != access.team.pk:
            raise ValidationError({"dataset_version": "choose one of your team's dataset versions"})
        require_object_action(access, dataset_version.dataset, "use")
    config, errors = check_settings(base_model=base_model, dataset_version=dataset_version, pool=pool, values=values)
    name = name.strip() or _default_name(base_model, dataset_version)
    if len(name) > 120:
        errors["name"] = "use at most 120 characters"
    if errors:
        raise ValidationError({key: [message] for key, message in errors.items()})
    assert base_model is not None and dataset_version is not None  # checked above
    estimate = estimate_job(
        team=access.team, base_model=base_model, dataset_version=dataset_version, pool=pool, config=config
    )
    if estimate.memory_plan is not None:  # "Choose memory settings": the run gets what the estimate chose
        config.update({key: value for key, value in estimate.memory_plan.items() if key != "reason"})
    with transaction.atomic():
        job = TrainingJob.objects.create(
            team=access.team,
            name=name,
            base_model=base_model,
            dataset_version=dataset_version,
            pool=pool,
            config=config,
            config_version=presets.CONFIG_VERSION,
            lineage=_lineage(base_model, dataset_version),
            estimate=estimate.to_dict(),
            cloned_from=cloned_from,
            restricted=dataset_version.dataset.restricted,
            created_by=access.user,
            created_by_key=access.api_key,
            message="waiting for a worker",
        )
        audit.record(
            "job.launched",
            access=access,
            target=job,
            ip=ip,
            base_model=base_model.name,
            dataset=str(dataset_version),
            pool=pool,
            stage=config["stage"],
            method=config["method"],
            rewards=[spec.get("type") for spec in config["rewards"]] if config["stage"] == "grpo" else None,
        )
        transaction.on_commit(lambda: dispatch(job.pk))
    return job


def _default_name(base_model: BaseModel | None, dataset_version: DatasetVersion | None) -> str:
    parts = [base_model.name if base_model else "model", dataset_version.dataset.name if dataset_version else "data"]
    return " on ".join(parts)[:120]


def _lineage(base_model: BaseModel, dataset_version: DatasetVersion) -> dict[str, Any]:
    return {
        "base_model": {
            "id": base_model.pk,
            "name": base_model.name,
            "path": base_model.path,
            "architecture": base_model.architecture,
            "parameters": base_model.parameter_count,
            "license": base_model.license,
        },
        "dataset_versions": [
            {
                "dataset_id": dataset_version.dataset_id,
                "dataset": dataset_version.dataset.name,
                "version": dataset_version.number,
                "kind": dataset_version.kind,
                "rows": dataset_version.row_count,
                "content_hash": dataset_version.content_hash,
            }
        ],
    }


def dispatch(job_id: int) -> None:
    """Send the job's task to its pool's queue and record that it was sent (the outbox's second half)."""
    from training_app.tasks import run_training_job

    job = TrainingJob.objects.unscoped().filter(pk=job_id, status=JobStatus.QUEUED).first()
    if job is None:
        return
    try:
        run_training_job.apply_async(args=[job_id], queue=pool_queue(job.pool))
    except Exception:  # the broker is down: the reaper sends it later
        log.exception("could not enqueue training job %s; the reaper will retry", job_id)
        return
    TrainingJob.objects.unscoped().filter(pk=job_id).update(dispatched_at=timezone.now())


def can_cancel(access: TeamAccess, job: TrainingJob) -> bool:
    """Admins cancel any job; members (and team API keys) with the launch permission cancel their own."""
    if not job.is_active or not access.can(Perm.LAUNCH_TRAINING):
        return False
    return access.is_admin or launched_by(access, job)


def cancel_job(*, access: TeamAccess, job: TrainingJob, ip: str | None = None) -> TrainingJob:
    """Stop a job: a queued one is cancelled at once, a running one within seconds (the worker stops it)."""
    access.require(Perm.LAUNCH_TRAINING)
    if not can_cancel(access, job):
        if not job.is_active:
            raise ValidationError({"status": f"the job is already {job.get_status_display().lower()}"})
        raise PermissionDenied("Only the person who launched this job, or an admin, can cancel it.")
    now = timezone.now()
    with transaction.atomic():
        locked = TrainingJob.objects.for_team(access.team).select_for_update().get(pk=job.pk)
        previous = locked.status
        if locked.status == JobStatus.QUEUED:
            locked.status, locked.finished_at, locked.message = JobStatus.CANCELLED, now, "cancelled before it started"
        elif locked.status in (JobStatus.STARTING, JobStatus.RUNNING):
            locked.status, locked.message = JobStatus.CANCELLING, "stopping at the next step"
        else:
            return locked
        locked.cancel_requested_at = now
        locked.save(update_fields=["status", "message", "finished_at", "cancel_requested_at"])
        audit.record("job.cancelled", access=access, target=locked, ip=ip, status_at_cancel=previous)
        if locked.is_finished:  # a requeued job ran before it was cancelled in the queue
            record_job_spend(locked)
    return locked


def launched_by(access: TeamAccess, job: TrainingJob) -> bool:
    if access.api_key is not None:
        return job.created_by_key_id == access.api_key.pk
    return access.user is not None and job.created_by_id == access.user.pk


def can_delete(access: TeamAccess, job: TrainingJob) -> bool:
    """Admins delete any finished job; members (and team API keys) with the launch permission their own."""
    if not job.is_finished or not access.can(Perm.LAUNCH_TRAINING):
        return False
    return access.is_admin or launched_by(access, job)


def delete_job(*, access: TeamAccess, job: TrainingJob, ip: str | None = None) -> None:
    """Delete a finished job: its row, metrics, log, data split, checkpoints and run files.

    The model version it produced stays, with its files and lineage (``ModelVersion.job`` becomes empty).
    An active job is refused (``ValidationError``): cancel it first.
    """
    access.require(Perm.LAUNCH_TRAINING)
    if not access.is_admin and not launched_by(access, job):
        raise PermissionDenied("Only the person who launched this job, or an admin, can delete it.")
    with transaction.atomic():
        locked = TrainingJob.objects.for_team(access.team).select_for_update().filter(pk=job.pk).first()
        if locked is None:
            return
        if not locked.is_finished:
            raise ValidationError(
                {"status": f"the job is still {locked.get_status_display().lower()}: cancel it first, then delete it"}
            )
        folder = locked.folder()
        kept = [
            Path(path)
            for path in ModelVersion.objects.for_team(access.team)
            .filter(job=locked)
            .values_list("path", "merged_path")
            .first()
            or ()
            if path
        ]
        audit.record("job.deleted", access=access, target=locked, ip=ip, name=locked.name, status=locked.status)
        locked.delete()
        transaction.on_commit(lambda: remove_run_files(folder, keep=kept))


def remove_run_files(folder: Path, *, keep: list[Path]) -> None:
    """Remove ``folder`` except the paths in ``keep`` (a model version's files) and the folders above them."""
    kept = [path.resolve() for path in keep]
    if not folder.is_dir():
        return
    if not any(path.is_relative_to(folder.resolve()) for path in kept):
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        resolved = child.resolve()
        if resolved in kept:
            continue
        if child.is_dir() and not child.is_symlink() and any(path.is_relative_to(resolved) for path in kept):
            remove_run_files(child, keep=kept)
        elif child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def clone_values(job: TrainingJob) -> dict[str, Any]:
    """A job's settings as the form's flat values (target modules back to comma-separated text)."""
    flat = presets.flatten(job.config)
    targets = flat.get("lora.target_modules")
    if isinstance(targets, list):
        flat["lora.target_modules"] = ", ".join(targets)
    return flat


def visible_jobs(access: TeamAccess) -> QuerySet[TrainingJob]:
    """The team's jobs, except those trained on a restricted dataset this person may not see.

    A job's config, metrics, log, generations and lineage describe its data, so they are as private as the
    data; ``restricted`` is recorded at launch, so this holds after the dataset is deleted too.
    """
    jobs = TrainingJob.objects.for_team(access.team).select_related("base_model", "dataset_version__dataset")
    if access.is_admin:
        return jobs
    datasets = dataset_services.visible_datasets(access)
    allowed = Q(restricted=False) | Q(dataset_version__dataset__in=datasets)
    if access.user is not None:
        allowed |= Q(created_by=access.user)
    return jobs.filter(allowed)


# ---- metrics --------------------------------------------------------------------------------------------

SERIES = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "memory_bytes", "reward")


def metric_series(job: TrainingJob, *, names: tuple[str, ...] = SERIES) -> dict[str, list[tuple[int, float]]]:
    """Each metric as (step, value) points; after a resume the re-logged steps replace the earlier ones."""
    by_step: dict[str, dict[int, float]] = {name: {} for name in names}
    for step, values in JobMetric.objects.filter(job=job).order_by("seq").values_list("step", "values"):
        for name in names:
            value = values.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                by_step[name][step] = float(value)
    return {name: sorted(points.items()) for name, points in by_step.items()}


REWARD_PREFIX = "rewards/"


def reward_series(job: TrainingJob) -> dict[str, list[tuple[int, float]]]:
    """A reinforcement job's rewards by step: the weighted mean of all its rewards ("mean reward"), and each
    reward's own mean (TRL logs ``rewards/<name>/mean``) when there are several. Empty for other goals."""
    by_step: dict[str, dict[int, float]] = {}
    for step, values in JobMetric.objects.filter(job=job).order_by("seq").values_list("step", "values"):
        for key, value in values.items():
            if key == "reward":
                name = "mean reward"
            elif key.startswith(REWARD_PREFIX) and key.endswith("/mean"):
                name = key.removeprefix(REWARD_PREFIX).removesuffix("/mean")
            else:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                by_step.setdefault(name, {})[step] = float(value)
    if len(by_step) == 2:  # one reward: its mean is the mean reward
        by_step = {"mean reward": by_step["mean reward"]} if "mean reward" in by_step else by_step
    return {name: sorted(points.items()) for name, points in by_step.items()}


# ---- what a job cost ------------------------------------------------------------------------------------


def record_job_spend(job: TrainingJob) -> None:
    """Write what a finished job cost to the team's spend ledger (``accounts.costs``): the wall-clock hours from
    its first start to its end × the devices its pool gives a job (GPUs on a CUDA pool, processes on a CPU one).
    A job that never started cost nothing and writes nothing. Call it where the job ends, in that transaction."""
    if job.started_at is None or job.finished_at is None:
        return
    spec = settings.TRAINING_POOLS.get(job.pool)
    pool = estimator.Pool.from_settings(job.pool, spec) if spec is not None else None
    costs.record_spend(
        team=job.team, kind="training", source_id=job.pk, label=job.name, period_start=job.started_at,
        period_end=job.finished_at, accelerator=pool.accelerator if pool else "cuda",
        devices=pool.devices if pool else 1, restricted=job.restricted,
    )  # fmt: skip


# ---- the reaper -----------------------------------------------------------------------------------------


def reap(now: Any = None) -> dict[str, int]:
    """Requeue jobs whose worker stopped renewing the lease; send jobs that were never sent.

    Returns counts: ``requeued``, ``failed`` (too many attempts), ``cancelled`` (cancelling when the
    worker died), ``dispatched`` (outbox).
    """
    now = now or timezone.now()
    counts = {"requeued": 0, "failed": 0, "cancelled": 0, "dispatched": 0}
    expired = TrainingJob.objects.unscoped().filter(
        status__in=[JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CANCELLING], lease_expires_at__lt=now
    )
    for job_id in list(expired.values_list("pk", flat=True)):
        outcome = _reap_one(job_id, now)
        if outcome:
            counts[outcome] += 1
    stale = now - timedelta(seconds=settings.TRAINING_LEASE_SECONDS)
    unsent = TrainingJob.objects.unscoped().filter(status=JobStatus.QUEUED, dispatched_at__isnull=True)
    for job_id in list(unsent.filter(Q(created_at__lt=stale) | Q(attempts__gt=0)).values_list("pk", flat=True)):
        dispatch(job_id)
        counts["dispatched"] += 1
    return counts


def _reap_one(job_id: int, now: Any) -> str | None:
    with transaction.atomic():
        job = (
            TrainingJob.objects.unscoped()
            .select_for_update()
            .filter(pk=job_id, status__in=ACTIVE_STATUSES, lease_expires_at__lt=now)
            .first()
        )
        if job is None:
            return None
        worker = job.lease_owner or "unknown worker"
        job.lease_owner, job.lease_expires_at = "", None
        if job.status == JobStatus.CANCELLING:
            job.status, job.finished_at, job.message = JobStatus.CANCELLED, now, "cancelled (its worker stopped)"
            outcome = "cancelled"
        elif job.attempts >= settings.TRAINING_MAX_ATTEMPTS:
            job.status, job.finished_at = JobStatus.FAILED, now
            job.message = f"its worker stopped answering {job.attempts} times"
            job.failure = {
                "code": "worker_lost",
                "message": f"The job's worker stopped answering {job.attempts} times (last: {worker}).",
                "suggestion": "Check the GPU workers' logs (a crash or the machine's out-of-memory killer), "
                "then clone the job and launch it again.",
            }
            outcome = "failed"
        else:
            job.status, job.dispatched_at = JobStatus.QUEUED, None
            job.message = f"requeued: its worker ({worker}) stopped answering; it resumes from its last checkpoint"
            outcome = "requeued"
        job.save()
        audit.record(f"job.{outcome}_by_reaper", team=job.team, target=job, worker=worker)
        if job.is_finished:
            record_job_spend(job)
    if outcome == "requeued":
        transaction.on_commit(lambda: dispatch(job_id))
    return outcome
