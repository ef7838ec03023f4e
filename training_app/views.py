"""Training pages under /t/<team>/: fine-tuning jobs, base models and the team's model registry.

Each view: parse input, authorize, call one service (``jobs``, ``registry``, ``services``), respond.
The job page and the job list refresh themselves with htmx polling of a ``?part=`` fragment while a
job is active; the launch form asks ``training/estimate`` for a new estimate on every change.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.http import require_POST

from accounts.http import add_service_errors, client_ip
from accounts.permissions import TeamAccess, TeamRequest, require_object_action, require_perm
from accounts.roles import Perm
from accounts.views import apply_share_form, sharing_panel
from datasets_app import services as dataset_services
from datasets_app.models import DatasetVersion
from training_app import hub, jobs, presets, registry, services
from training_app.engine import graders, rewards, speed
from training_app.engine.config import STAGE_KINDS, stage_for_kind
from training_app.engine.reporting import readable_log
from training_app.estimator import GIB
from training_app.forms import (
    GOAL_GROUPS,
    MAIN_SETTINGS,
    HubModelForm,
    JobForm,
    ModelCardForm,
    add_setting_errors,
    as_data,
    field_name,
    initial_values,
    service_errors,
)
from training_app.models import BaseModel, JobStatus, ModelVersion, TrainingJob

JOBS_PER_PAGE = 50
MAX_COMPARED = 8
DEFAULT_PRESET = presets.PRESETS[0].slug
# A goal's own settings (GRPO's rewards): choosing a preset leaves what the person wrote there alone.
GOAL_FIELDS = {field_name(setting.key) for setting in presets.SETTINGS if setting.group in GOAL_GROUPS}
CUDA_ONLY_REASON = "needs an NVIDIA GPU with CUDA; this studio's workers are CPU-only"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _job(access: TeamAccess, job_id: int | None) -> TrainingJob:
    if job_id is None:
        raise Http404("No such job.")
    return get_object_or_404(jobs.visible_jobs(access).select_related("created_by"), pk=job_id)


def _version(access: TeamAccess, version_id: int, action: str = "view") -> tuple[ModelVersion, set[str]]:
    queryset = ModelVersion.objects.for_team(access.team).select_related("base_model", "job", "created_by")
    version = get_object_or_404(queryset, pk=version_id)
    return version, require_object_action(access, version, action)


# ---- the job list ---------------------------------------------------------------------------------------


@require_perm(Perm.VIEW_TEAM)
def job_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's jobs, newest first; an active row refreshes itself (``?part=row&job=<id>``)."""
    access = request.access
    if request.GET.get("part") == "row":
        return render(request, "training/_job_row.html", {"job": _job(access, _int(request.GET.get("job")))})
    page = Paginator(jobs.visible_jobs(access).select_related("created_by"), JOBS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    context = {"page": page, "jobs": page.object_list, "can_launch": access.can(Perm.LAUNCH_TRAINING)}
    return render(request, "training/jobs.html", context)


# ---- the launch form and its estimate -------------------------------------------------------------------


def _job_form(access: TeamAccess, **kwargs: Any) -> JobForm:
    return JobForm(
        base_models=jobs.usable_base_models(access),
        dataset_versions=jobs.usable_dataset_versions(access),
        pools=jobs.pools(),
        **kwargs,
    )


@require_perm(Perm.LAUNCH_TRAINING)
def job_new(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The job form (``?preset=<slug>``, ``?clone=<job id>``, ``?dataset_version=<id>``); POST launches."""
    access = request.access
    notices: list[str] = []
    if request.method == "POST":
        form = _job_form(access, data=request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                job = jobs.create_job(
                    access=access,
                    name=data["name"],
                    base_model=data["base_model"],
                    dataset_version=data["dataset_version"],
                    pool=data["pool"],
                    values=form.setting_values(),
                    cloned_from=_clone_source(access, data.get("cloned_from")),
                    ip=client_ip(request),
                )
            except ValidationError as error:
                add_setting_errors(form, service_errors(error))
            else:
                # No flash message: the page is polled, not reloaded, so it would stay for the whole run; the
                # live part says "queued" for as long as the job is.
                return redirect("training:job", team_slug, job.pk)
        estimate_form = form
    else:
        initial, notices = _initial(access, request.GET)
        form = _job_form(access, initial=initial)
        estimate_form = _job_form(access, data=as_data(initial))
    context = {
        "form": form,
        "notices": notices,
        "presets": _preset_cards(access),
        "preset_values": {
            preset.slug: {
                name: value
                for name, value in initial_values(presets.apply_preset(preset.slug)).items()
                if name not in map(field_name, MAIN_SETTINGS) and name not in GOAL_FIELDS
            }
            for preset in presets.PRESETS
        },
        "stage_kinds": STAGE_KINDS,
        "reward_types": [graders.GRADER_TYPES[name] for name in rewards.REWARD_TYPES],
        **_estimate_context(access, estimate_form),
    }
    return render(request, "training/new.html", context, status=400 if form.is_bound else 200)


@require_POST
@require_perm(Perm.LAUNCH_TRAINING)
def job_estimate(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The estimate panel for the form as it is now (htmx, on every change of the form)."""
    access = request.access
    return render(request, "training/_estimate.html", _estimate_context(access, _job_form(access, data=request.POST)))


def _estimate_context(access: TeamAccess, form: JobForm) -> dict[str, Any]:
    """Parameters, memory against the pool, tokens, time and cost; or what to fix first."""
    context: dict[str, Any] = {"estimate": None, "estimate_errors": [], "team": access.team}
    # Fields of the upload that the rows do not carry, shown beside the estimate so nobody trains on a version
    # without seeing what it left out (the version page lists the same, with a way to map them).
    valid = form.is_valid()
    context["data_version"] = form.cleaned_data.get("dataset_version") if form.is_bound else None
    if valid:
        data = form.cleaned_data
        config, errors = jobs.check_settings(
            base_model=data["base_model"],
            dataset_version=data["dataset_version"],
            pool=data["pool"],
            values=form.setting_values(),
        )
        if not errors:
            context["estimate"] = jobs.estimate_job(
                team=access.team,
                base_model=data["base_model"],
                dataset_version=data["dataset_version"],
                pool=data["pool"],
                config=config,
            )
            context["pool"] = jobs.pools()[data["pool"]]
        form_errors: dict[str, Any] = errors
    else:
        form_errors = {name: list(problems) for name, problems in form.errors.items()}
    context["estimate_errors"] = [_labelled_error(form, key, problems) for key, problems in form_errors.items()]
    return context


def _labelled_error(form: JobForm, key: str, problems: Any) -> dict[str, str]:
    """An error as the panel lists it: the field's label, the id to jump to, and the message."""
    name = field_name(key) if field_name(key) in form.fields else key
    field = form.fields.get(name)
    text = " ".join(map(str, problems)) if isinstance(problems, list | tuple) else str(problems)
    return {
        "label": str(field.label or name) if field is not None else ("Settings" if key == "__all__" else key),
        "anchor": f"field-{name}" if field is not None else "job-form",
        "message": text,
    }


def _initial(access: TeamAccess, query: QueryDict) -> tuple[dict[str, Any], list[str]]:
    """The form's first values: a preset's, or a cloned job's, with a base model, data and pool."""
    notices: list[str] = []
    base_models, versions = jobs.usable_base_models(access), jobs.usable_dataset_versions(access)
    first_model, first_version = base_models.first(), versions.first()
    initial: dict[str, Any] = {
        "base_model": first_model.pk if first_model else None,
        "dataset_version": first_version.pk if first_version else None,
        "pool": jobs.default_pool(),
    }
    wanted_version = _int(query.get("dataset_version"))
    if wanted_version is not None and versions.filter(pk=wanted_version).exists():
        initial["dataset_version"] = wanted_version
    clone_id = query.get("clone")
    if clone_id is not None:
        job = _job(access, _int(clone_id))
        initial.update(initial_values(jobs.clone_values(job)))
        initial.update(name=f"{job.name[:112]} (copy)", cloned_from=job.pk, preset="")
        if job.pool in jobs.pools():
            initial["pool"] = job.pool
        if job.base_model_id and base_models.filter(pk=job.base_model_id).exists():
            initial["base_model"] = job.base_model_id
        else:
            notices.append(f"The base model this job used ({_lineage_name(job, 'base_model')}) is gone; choose one.")
        if job.dataset_version_id and versions.filter(pk=job.dataset_version_id).exists():
            initial["dataset_version"] = job.dataset_version_id
        else:
            notices.append(
                f"The dataset version this job trained on ({_lineage_name(job, 'dataset_versions')}) is deleted "
                "or not available to you; choose another."
            )
        return initial, notices
    slug = query.get("preset") or DEFAULT_PRESET
    card = next((card for card in _preset_cards(access) if card["slug"] == slug), None)
    if card is None or not card["available"]:
        if card is not None:
            notices.append(f"“{card['name']}” {card['reason']}; the form starts from “Quick LoRA” instead.")
        slug = DEFAULT_PRESET
    initial.update(initial_values(presets.apply_preset(slug)), preset=slug)
    version = versions.filter(pk=initial["dataset_version"]).first() if initial["dataset_version"] else None
    if version is not None and version.kind:
        initial["stage"] = stage_for_kind(version.kind, preferred=initial.get("stage"))
    return initial, notices


def _lineage_name(job: TrainingJob, part: str) -> str:
    facts = job.lineage.get(part)
    if isinstance(facts, list):
        facts = facts[0] if facts else {}
    if not isinstance(facts, dict):
        return "unknown"
    if part == "dataset_versions":
        return f"{facts.get('dataset', '?')} v{facts.get('version', '?')}"
    return str(facts.get("name", "unknown"))


def _clone_source(access: TeamAccess, job_id: int | None) -> TrainingJob | None:
    return jobs.visible_jobs(access).filter(pk=job_id).first() if job_id else None


def _preset_cards(access: TeamAccess) -> list[dict[str, Any]]:
    """The presets as the form shows them: a CUDA-only preset is off when no pool has CUDA."""
    has_cuda = any(pool.accelerator == "cuda" for pool in jobs.pools().values())
    cards = []
    for preset in presets.PRESETS:
        available = has_cuda or not preset.needs_cuda
        cards.append(
            {
                "slug": preset.slug,
                "name": preset.name,
                "description": preset.description,
                "available": available,
                "reason": "" if available else CUDA_ONLY_REASON,
                "needs_cuda": preset.needs_cuda,
                "changes": [
                    (presets.SETTINGS_BY_KEY[key].label, _display(value))
                    for key, value in preset.values.items()
                    if key in presets.SETTINGS_BY_KEY
                ],
            }
        )
    return cards


# ---- one job --------------------------------------------------------------------------------------------


@require_perm(Perm.VIEW_TEAM)
def job_detail(request: TeamRequest, team_slug: str, job_id: int) -> HttpResponse:
    """Status, progress, live charts and log while it runs; evaluation and the model when it is done."""
    access = request.access
    job = _job(access, job_id)
    live = _live_context(access, job)
    if request.GET.get("part") == "live":
        response = render(request, "training/_job_live.html", live)
        if job.is_finished and request.htmx:  # type: ignore[attr-defined]
            response["HX-Refresh"] = "true"  # it finished since the page was drawn: show the results
        return response
    context = {
        **live,
        "config_yaml": _yaml(job.config),
        "speed_settings": speed.read(job.folder() / "run"),
        "launch_estimate": job.estimate or None,
        "dataset_version_url": _dataset_version_url(access, job.dataset_version),
        "cloned_from": _clone_source(access, job.cloned_from_id),
        "can_launch": access.can(Perm.LAUNCH_TRAINING),
        "can_delete": jobs.can_delete(access, job),
    }
    return render(request, "training/job.html", context)


def _live_context(access: TeamAccess, job: TrainingJob) -> dict[str, Any]:
    series = jobs.metric_series(job)
    return {
        "job": job,
        "status_note": _status_note(job),
        "log": readable_log(job.log_tail),
        "can_cancel": jobs.can_cancel(access, job),
        "charts": {
            "loss": {"training loss": series["loss"], "validation loss": series["eval_loss"]},
            "learning_rate": {"learning rate": series["learning_rate"]},
            "grad_norm": {"gradient norm": series["grad_norm"]},
            "tokens_per_second": {"tokens/s": series["tokens_per_second"]},
            "memory": {"memory": [(step, value / GIB) for step, value in series["memory_bytes"]]},
            "reward": jobs.reward_series(job),
        },
        "has_metrics": any(series.values()),
        "evaluation": _evaluation(job.result or {}),
        "model_version": registry.visible_versions(access).filter(job=job).first() if job.is_finished else None,
        "can_see_data": _can_see_training_data(access, job),
    }


def _status_note(job: TrainingJob) -> str:
    """One sentence beside the status pill: what the run is doing now, or how it ended (never the pill again)."""
    if job.status == JobStatus.SUCCEEDED:
        return "The model is ready."
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED):
        return ""  # the failure card says why; the progress line says what queued means
    phase = job.phase.capitalize() if job.phase and job.phase != job.status else ""
    return ": ".join(part for part in (phase, job.message) if part)


def _can_see_training_data(access: TeamAccess, job: TrainingJob) -> bool:
    """Whether the held-out prompts in the job's generations may be shown to this person.

    They are rows of the dataset: a restricted dataset's rows are for the people it is shared with.
    Once the dataset is gone, its restricted model version (if any) tells.
    """
    if job.dataset_version is not None:
        return dataset_services.visible_datasets(access).filter(pk=job.dataset_version.dataset_id).exists()
    restricted = ModelVersion.objects.for_team(access.team).filter(job=job, restricted=True)
    return not restricted.exists() or registry.visible_versions(access).filter(job=job).exists()


def _evaluation(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Before → after rows of the end-of-run evaluation: losses (lower is better) and, for reinforcement,
    the mean reward of the sampled answers (higher is better)."""
    rows = []
    for label, before_key, after_key, higher_is_better in (
        ("Validation loss", "eval_loss_before", "eval_loss_after", False),
        ("Perplexity", "perplexity_before", "perplexity_after", False),
        ("Training loss (first → last step)", "train_loss_first", "train_loss_last", False),
        ("Mean reward (first → last steps)", "reward_first", "reward_last", True),
    ):
        before, after = result.get(before_key), result.get(after_key)
        if before is None and after is None:
            continue
        change = None
        if isinstance(before, int | float) and isinstance(after, int | float) and before:
            change = round(100 * (after - before) / abs(before), 1)
        better = change is not None and change != 0 and (change > 0) == higher_is_better
        worse = change is not None and change != 0 and not better
        rows.append({"label": label, "before": before, "after": after, "change": change, "better": better,
                     "worse": worse})  # fmt: skip
    return rows


def _training_goal(config: dict[str, Any]) -> dict[str, Any]:
    """The goal a model version was trained with, in words, and for reinforcement its rewards."""
    stage = str(config.get("stage") or "sft")
    label = dict(presets.STAGES).get(stage, stage)
    described = rewards.describe(config.get("rewards")) if stage == "grpo" else []
    return {"stage": stage, "label": label, "rewards": described}


def _dataset_version_url(access: TeamAccess, version: DatasetVersion | None) -> str | None:
    """The dataset version's page, when it still exists and this person may see its dataset."""
    if version is None or not dataset_services.visible_datasets(access).filter(pk=version.dataset_id).exists():
        return None
    return reverse("datasets:version", args=[access.team.slug, version.dataset_id, version.number])


def _yaml(config: dict[str, Any]) -> str:
    """The run config as YAML, in the settings table's order (the database keeps JSON keys in its own)."""
    order = [key.split(".")[0] for key in presets.SETTINGS_BY_KEY]
    lora_order = [key.removeprefix("lora.") for key in presets.SETTINGS_BY_KEY if key.startswith("lora.")]

    def rank(key: str, keys: list[str]) -> tuple[int, str]:
        return (keys.index(key) if key in keys else len(keys), key)

    ordered = {key: config[key] for key in sorted(config, key=lambda key: rank(key, order))}
    if isinstance(ordered.get("lora"), dict):
        ordered["lora"] = {
            key: ordered["lora"][key] for key in sorted(ordered["lora"], key=lambda k: rank(k, lora_order))
        }
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True)


@require_POST
@require_perm(Perm.LAUNCH_TRAINING)
def job_cancel(request: TeamRequest, team_slug: str, job_id: int) -> HttpResponse:
    access = request.access
    job = _job(access, job_id)
    try:
        job = jobs.cancel_job(access=access, job=job, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages).capitalize() + ".")
    else:
        messages.success(request, "Cancelled." if job.is_finished else "Stopping at the next step…")
    return redirect("training:job", team_slug, job.pk)


@require_perm(Perm.LAUNCH_TRAINING)
def job_delete(request: TeamRequest, team_slug: str, job_id: int) -> HttpResponse:
    """Ask, then delete a finished job and its run files; the model version it made stays."""
    access = request.access
    job = _job(access, job_id)
    if request.method == "POST":
        try:
            jobs.delete_job(access=access, job=job, ip=client_ip(request))
        except ValidationError as error:
            messages.error(request, " ".join(error.messages).capitalize() + ".")
            return redirect("training:job", team_slug, job.pk)
        messages.success(request, f"Job “{job.name}” and its run files were deleted.")
        return redirect("training:list", team_slug)
    if not (access.is_admin or jobs.launched_by(access, job)):
        raise PermissionDenied("Only the person who launched this job, or an admin, can delete it.")
    model_version = registry.visible_versions(access).filter(job=job).first()
    return render(request, "training/job_confirm_delete.html", {"job": job, "model_version": model_version})


@require_perm(Perm.VIEW_TEAM)
def job_config(request: TeamRequest, team_slug: str, job_id: int) -> HttpResponse:
    """The run settings as YAML, to keep next to the model or to diff."""
    job = _job(request.access, job_id)
    response = HttpResponse(_yaml(job.config), content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{slugify(job.name) or "job"}-{job.pk}.yaml"'
    return response


@require_perm(Perm.VIEW_TEAM)
def job_compare(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Loss curves overlaid, final metrics side by side, and the settings that differ (``?jobs=1&jobs=2``)."""
    access = request.access
    ids = [job_id for job_id in dict.fromkeys(map(_int, request.GET.getlist("jobs"))) if job_id is not None]
    if len(ids) < 2:
        messages.warning(request, "Tick at least two jobs to compare.")
        return redirect("training:list", team_slug)
    if len(ids) > MAX_COMPARED:
        messages.warning(request, f"Comparing the first {MAX_COMPARED} of the {len(ids)} jobs ticked.")
        ids = ids[:MAX_COMPARED]
    found = {job.pk: job for job in jobs.visible_jobs(access).filter(pk__in=ids)}
    if len(found) != len(ids):
        raise Http404("No such job.")
    selected = [found[job_id] for job_id in ids]
    curves = {job.pk: jobs.metric_series(job, names=("loss", "eval_loss")) for job in selected}
    diff = [
        {
            "label": presets.SETTINGS_BY_KEY[key].label if key in presets.SETTINGS_BY_KEY else key,
            "key": key,
            "values": [_display(value) for value in values],
        }
        for key, values in presets.diff([job.config for job in selected])
    ]
    context = {
        "jobs": selected,
        "training_loss": {f"#{job.pk} {job.name}": curves[job.pk]["loss"] for job in selected},
        "validation_loss": {f"#{job.pk} {job.name}": curves[job.pk]["eval_loss"] for job in selected},
        "has_validation": any(curves[job.pk]["eval_loss"] for job in selected),
        "finals": [_final_metrics(job, curves[job.pk]["loss"]) for job in selected],
        "diff": diff,
    }
    return render(request, "training/compare.html", context)


def _final_metrics(job: TrainingJob, loss: list[tuple[int, float]]) -> dict[str, Any]:
    result = job.result or {}
    return {
        "job": job,
        "train_loss": result.get("train_loss_last", loss[-1][1] if loss else None),
        "eval_loss_before": result.get("eval_loss_before"),
        "eval_loss_after": result.get("eval_loss_after"),
        "perplexity_after": result.get("perplexity_after"),
        "tokens_per_second": result.get("tokens_per_second"),
        "duration": job.duration_seconds,
        "peak_memory": result.get("peak_memory_bytes"),
    }


def _display(value: Any) -> str:
    """A setting's value as the diff and the preset cards show it."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


# ---- base models and trained model versions ----------------------------------------------------------


@require_perm(Perm.VIEW_TEAM)
def model_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    access = request.access
    context = {
        "models": services.available_models(access),
        "versions": registry.visible_versions(access),
        "can_launch": access.can(Perm.LAUNCH_TRAINING),
        "hub_form": _hub_form(request),
    }
    return render(request, "training/models.html", context)


def _hub_form(request: HttpRequest) -> HubModelForm:
    return HubModelForm(request.POST if request.method == "POST" else None)


@require_POST
@require_perm(Perm.LAUNCH_TRAINING)
def model_add_hub(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Start downloading a Hub model into the team's base models (a task with progress)."""
    access = request.access
    form = _hub_form(request)
    if form.is_valid():
        try:
            model = hub.request_download(access=access, ip=client_ip(request), **form.cleaned_data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            # No flash message: the model's page says "Downloading…" while it does, and only the failure if it fails.
            return redirect("training:model_detail", team_slug, model.pk)
    context = {
        "models": services.available_models(access),
        "versions": registry.visible_versions(access),
        "can_launch": True,
        "hub_form": form,
    }
    return render(request, "training/models.html", context, status=400)


@require_perm(Perm.VIEW_TEAM)
def model_detail(request: TeamRequest, team_slug: str, model_id: int) -> HttpResponse:
    access = request.access
    model = get_object_or_404(services.available_models(access), pk=model_id)
    template = "training/_model_status.html" if request.GET.get("part") == "status" else "training/model_detail.html"
    context = {"model": model, "can_manage": _can_manage_model(access, model)}
    return render(request, template, context)


def _can_manage_model(access: TeamAccess, model: BaseModel) -> bool:
    """Retry and delete: the team's own Hub models, for those who may add them."""
    return access.can(Perm.LAUNCH_TRAINING) and model.team_id == access.team.pk and model.source == "hub"


@require_POST
@require_perm(Perm.LAUNCH_TRAINING)
def model_retry(request: TeamRequest, team_slug: str, model_id: int) -> HttpResponse:
    """Download a failed Hub model again (after fixing what the failure named)."""
    access = request.access
    model = get_object_or_404(services.available_models(access), pk=model_id)
    try:
        hub.retry_download(access=access, model=model, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages).capitalize() + ".")
    return redirect("training:model_detail", team_slug, model.pk)


@require_perm(Perm.LAUNCH_TRAINING)
def model_delete(request: TeamRequest, team_slug: str, model_id: int) -> HttpResponse:
    """Ask, then remove one of the team's Hub models and its files (refused while jobs or versions use it)."""
    access = request.access
    model = get_object_or_404(services.available_models(access), pk=model_id)
    if request.method == "POST":
        try:
            hub.delete_model(access=access, model=model, ip=client_ip(request))
        except ValidationError as error:
            messages.error(request, " ".join(error.messages).capitalize() + ".")
            return redirect("training:model_detail", team_slug, model.pk)
        messages.success(request, f"Base model “{model.name}” and its files were deleted.")
        return redirect("training:models", team_slug)
    if not _can_manage_model(access, model):
        raise PermissionDenied("Only the team's own Hub models can be deleted here; ask an operator for the others.")
    jobs_count, versions_count = hub.dependents(model)
    context = {"model": model, "jobs_count": jobs_count, "versions_count": versions_count}
    return render(request, "training/model_confirm_delete.html", context)


@require_perm(Perm.VIEW_TEAM)
def version_detail(request: TeamRequest, team_slug: str, version_id: int) -> HttpResponse:
    """A trained model: its card, metrics, lineage, downloads, sharing."""
    access = request.access
    version, actions = _version(access, version_id)
    form = ModelCardForm(initial={field: getattr(version, field) for field, _ in ModelVersion.CARD_USE_FIELDS})
    return render(request, "training/version.html", _version_context(access, version, actions, form))


@require_POST
@require_perm(Perm.VIEW_TEAM)
def version_card(request: TeamRequest, team_slug: str, version_id: int) -> HttpResponse:
    """Edit the card's intended use, out-of-scope uses and known limitations."""
    access = request.access
    version, actions = _version(access, version_id, "change")
    form = ModelCardForm(request.POST)
    if form.is_valid():
        try:
            registry.update_card(access=access, version=version, ip=client_ip(request), **form.cleaned_data)
        except ValidationError as error:
            add_setting_errors(form, service_errors(error))
        else:
            messages.success(request, "Model card saved.")
            return redirect("training:version", team_slug, version.pk)
    context = _version_context(access, version, actions, form)
    return render(request, "training/version.html", context, status=400)


def _version_context(
    access: TeamAccess, version: ModelVersion, actions: set[str], form: ModelCardForm
) -> dict[str, Any]:
    return {
        "version": version,
        "actions": actions,
        "card": registry.model_card(version),
        "card_form": form,
        "can_download": access.can(Perm.EXPORT_MODELS) and "use" in actions,
        "can_play": access.can(Perm.USE_PLAYGROUND) and "use" in actions,
        "can_deploy": access.can(Perm.MANAGE_DEPLOYMENTS) and "use" in actions,
        "job": jobs.visible_jobs(access).filter(pk=version.job_id).first() if version.job_id else None,
        "base_model": services.available_models(access).filter(pk=version.base_model_id).first()
        if version.base_model_id
        else None,
        "datasets": [_lineage_dataset(access, facts) for facts in version.lineage.get("dataset_versions") or []],
        "evaluation": _evaluation(version.metrics or {}),
        "training_goal": _training_goal(version.lineage.get("config") or {}),
        **sharing_panel(access, version, reverse("training:version_share", args=[access.team.slug, version.pk])),
    }


def _lineage_dataset(access: TeamAccess, facts: dict[str, Any]) -> dict[str, Any]:
    """A dataset version the model learned from, linked when it still exists (same hash) and is visible."""
    version = (
        DatasetVersion.objects.for_team(access.team)
        .filter(
            dataset_id=facts.get("dataset_id"),
            number=facts.get("version"),
            content_hash=facts.get("content_hash") or "",
            dataset__in=dataset_services.visible_datasets(access),
        )
        .first()
    )
    return {**facts, "url": _dataset_version_url(access, version)}


@require_perm(Perm.EXPORT_MODELS)
def version_download(request: TeamRequest, team_slug: str, version_id: int) -> HttpResponseBase:
    """A zip of the adapter (or model) files, tokenizer and model card; ``?merged=1`` for the merged model."""
    access = request.access
    version, _ = _version(access, version_id)
    try:
        handle, filename = registry.download(
            access=access, version=version, merged=request.GET.get("merged") == "1", ip=client_ip(request)
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages).capitalize() + ".")
        return redirect("training:version", team_slug, version.pk)
    return FileResponse(handle, as_attachment=True, filename=filename, content_type="application/zip")


@require_perm(Perm.VIEW_TEAM)
def version_delete(request: TeamRequest, team_slug: str, version_id: int) -> HttpResponse:
    """Ask, then delete the model version and its files (owners and admins)."""
    access = request.access
    version, _ = _version(access, version_id, "delete")
    if request.method == "POST":
        try:
            registry.delete_version(access=access, version=version, ip=client_ip(request))
        except ValidationError as error:
            messages.error(request, error.messages[0])
            return redirect("training:version", team_slug, version.pk)
        messages.success(request, f"Model “{version}” and its files were deleted.")
        return redirect("training:models", team_slug)
    context = {"version": version, "deployments": registry.deployment_names(version)}
    return render(request, "training/version_confirm_delete.html", context)


@require_POST
@require_perm(Perm.SHARE_OBJECTS)
def version_share(request: TeamRequest, team_slug: str, version_id: int) -> HttpResponse:
    access = request.access
    version, _ = _version(access, version_id)
    apply_share_form(request, access, version)
    return redirect("training:version", team_slug, version.pk)
