"""What an export says about its model besides the weights: the card, the eval report, the guard policy, the license.

Read-only views of other apps' data (training's card, evals' runs and checks, serving's guard policies), gathered
when the export is made so the bundle says what was true then.
"""

from __future__ import annotations

from typing import Any

from evals_app import bias, forgetting
from evals_app.models import EvalRun
from serving_app import guardrails
from training_app import services as training
from training_app.models import ModelVersion

RECENT_RUNS = 200  # eval runs looked through for the ones that include the version


def model_card(version: ModelVersion) -> str:
    return training.model_card(version)


def eval_report(version: ModelVersion) -> dict[str, Any]:
    """The latest finished run of each eval suite that included the version, its forgetting check and bias probe."""
    key = f"version:{version.pk}"
    runs = EvalRun.objects.for_team(version.team).filter(status=EvalRun.Status.SUCCEEDED).select_related("suite")
    latest: dict[int, EvalRun] = {}
    for run in runs.order_by("-created_at")[:RECENT_RUNS]:
        if key in run.model_keys and run.suite_id not in latest:
            latest[run.suite_id] = run
    check = forgetting.latest_check(version)
    probe = bias.latest_probe(version)
    return {
        "model": str(version),
        "suites": [
            {
                "suite": run.suite.name,
                "run": run.pk,
                "finished_at": _iso(run.finished_at),
                "graders": run.graders,
                "result": (run.summary or {}).get(key, {}),
            }
            for run in latest.values()
        ],
        "forgetting_check": None
        if check is None
        else {
            "status": check.status,
            "perplexity_before": check.perplexity_before,
            "perplexity_after": check.perplexity_after,
            "finished_at": _iso(check.finished_at),
        },
        "bias_probe": None
        if probe is None
        else {
            "probe_set": probe.probe_set_name,
            "max_gap": probe.max_gap,
            "summary": probe.summary,
        },
    }


def guard_policy(version: ModelVersion) -> dict[str, Any]:
    """The guard policies of the deployments serving the version (deployment name → policy with its revision)."""
    return {"deployments": guardrails.export_documents(version)}


def license_text(version: ModelVersion) -> str:
    """The base model's license as the studio knows it (its name or text), with where the weights came from."""
    base = version.base_model
    name = (base.license if base is not None else "") or ""
    origin = (
        f"Base model: {base.name}"
        + (f" (Hugging Face Hub: {base.repo_id})" if base is not None and base.repo_id else "")
        if base is not None
        else f"Base model: {version.lineage.get('base_model', {}).get('name', 'unknown')} (no longer registered)"
    )
    if not name:
        name = (
            "Unknown: the studio has no license recorded for the base model. Check it before you distribute this model."
        )
    return (
        f"{origin}\nLicense: {name}\n\nThis model is a fine-tune of that base model and inherits its license terms.\n"
    )


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
