"""Deployment gates: what a model version must pass before it is published to a deployment.

A gate (``Deployment.gate``, stored by ``serving_app.releases.set_gate``) lists eval suites, each with the share
of rows a version must pass (or, without one, the suite's own per-grader thresholds), and optionally the
forgetting check and a largest bias-probe gap. ``checks_for`` turns it into ``GateCheck`` rows for one version,
from the latest finished measurements *of that version*:

- a suite: its latest finished run that included ``version:<pk>``; a version never run through the suite is
  "not measured yet" (``run_missing`` starts the runs);
- the forgetting check and the bias probe: their latest finished result on the version.

Nothing here runs a model: checking a gate only reads results, so it is cheap enough for every page view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.urls import reverse

from accounts.permissions import TeamAccess
from accounts.roles import Perm
from evals_app import guard_tests, services
from evals_app.models import EvalRun, EvalSuite
from serving_app import releases
from serving_app.models import Deployment
from serving_app.releases import GateCheck
from training_app.models import ModelVersion

# At most this many suites per gate (each is read on every check).
MAX_SUITES = 10
# How far back a suite's runs are searched for one that included a version.
RUNS_SCANNED = 200


@dataclass(frozen=True)
class SuiteRequirement:
    suite: EvalSuite
    min_pass_rate: float | None  # None: the suite's own per-grader pass rates


@dataclass(frozen=True)
class Gate:
    """A deployment's gate, read: the suites (those still existing) and the other requirements."""

    suites: list[SuiteRequirement]
    missing_suites: list[str]  # names of required suites that were deleted since
    forgetting: bool
    max_bias_gap: float | None

    @property
    def empty(self) -> bool:
        return not (self.suites or self.missing_suites or self.forgetting or self.max_bias_gap is not None)


def gate_of(deployment: Deployment) -> Gate:
    spec = deployment.gate or {}
    entries = list(spec.get("suites") or [])
    found = EvalSuite.objects.for_team(deployment.team).in_bulk([entry["suite"] for entry in entries])
    suites, missing = [], []
    for entry in entries:
        suite = found.get(entry["suite"])
        if suite is None:
            missing.append(str(entry.get("name") or f"suite {entry['suite']}"))
        else:
            suites.append(SuiteRequirement(suite, entry.get("min_pass_rate")))
    gap = spec.get("max_bias_gap")
    return Gate(suites, missing, bool(spec.get("forgetting")), None if gap is None else float(gap))


def set_gate(
    *,
    access: TeamAccess,
    deployment: Deployment,
    suites: list[tuple[int, float | None]],
    forgetting: bool = False,
    max_bias_gap: float | None = None,
    ip: str | None = None,
) -> Gate:
    """Make ``deployment`` require these suites (id, minimum share of rows passing every grader, or None for the
    suite's own thresholds), the forgetting check and a largest bias gap. Admins (``deployments.manage``).

    Raises ``ValidationError`` keyed by ``suites`` or ``max_bias_gap`` naming the entry and the fix.
    """
    access.require(Perm.MANAGE_DEPLOYMENTS)
    if len(suites) > MAX_SUITES:
        raise ValidationError({"suites": f"Require at most {MAX_SUITES} suites (this is {len(suites)})."})
    found = services.visible_suites(access).in_bulk([suite_id for suite_id, _ in suites])
    entries: list[dict[str, Any]] = []
    for number, (suite_id, rate) in enumerate(suites, start=1):
        suite = found.get(suite_id)
        if suite is None:
            raise ValidationError(
                {"suites": f"Suite {number}: no eval suite {suite_id} in this team (GET eval-suites/)."}
            )
        if rate is not None and not 0 <= rate <= 1:
            raise ValidationError(
                {"suites": f"Suite {number} ({suite.name}): the pass rate is a share from 0 to 1 (0.8 = 80 %); "
                 f"this is {rate}."}
            )  # fmt: skip
        if any(entry["suite"] == suite.pk for entry in entries):
            raise ValidationError({"suites": f"Suite {number} ({suite.name}) is listed twice; keep one."})
        entries.append({"suite": suite.pk, "name": suite.name, "min_pass_rate": rate})
    if max_bias_gap is not None and not 0 <= max_bias_gap <= 1:
        raise ValidationError(
            {"max_bias_gap": f"The largest gap between groups is from 0 to 1 (0.2 = 20 points); this is "
             f"{max_bias_gap}."}
        )  # fmt: skip
    gate: dict[str, Any] = {}
    if entries:
        gate["suites"] = entries
    if forgetting:
        gate["forgetting"] = True
    if max_bias_gap is not None:
        gate["max_bias_gap"] = max_bias_gap
    if (deployment.gate or {}).get("guard"):  # the guard policy's requirement is set on its own page
        gate["guard"] = deployment.gate["guard"]
    releases.set_gate(access=access, deployment=deployment, gate=gate, ip=ip)
    return gate_of(deployment)


# --- checking -----------------------------------------------------------------------------------


def checks_for(deployment: Deployment, version: ModelVersion) -> list[GateCheck]:
    """The gate's checks of ``version`` (registered with ``serving_app.releases``)."""
    gate = gate_of(deployment)
    guard = guard_tests.guard_check(deployment)  # of the deployment's guard policy, whatever the version
    if gate.empty and guard is None:
        return []
    team = deployment.team.slug
    checks = [_suite_check(requirement, version, team) for requirement in gate.suites]
    if guard is not None:
        checks.append(guard)
    checks += [
        GateCheck(f"Suite “{name}”", False, "the suite was deleted: edit the gate") for name in gate.missing_suites
    ]
    if gate.forgetting:
        checks.append(_forgetting_check(version, team))
    if gate.max_bias_gap is not None:
        checks.append(_bias_check(version, gate.max_bias_gap, team))
    return checks


def latest_run(suite: EvalSuite, version: ModelVersion, *, finished: bool = True) -> EvalRun | None:
    """The newest run of ``suite`` that included ``version`` (finished ones only, unless ``finished`` is False)."""
    runs = EvalRun.objects.for_team(suite.team).filter(suite=suite)
    if finished:
        runs = runs.filter(status=EvalRun.Status.SUCCEEDED)
    key = _key(version)
    # Scanned here rather than with a JSON ``contains`` lookup, which SQLite (the embedded default) lacks.
    return next((run for run in runs.order_by("-created_at", "-pk")[:RUNS_SCANNED] if key in run.model_keys), None)


def _suite_check(requirement: SuiteRequirement, version: ModelVersion, team: str) -> GateCheck:
    suite, wanted = requirement.suite, requirement.min_pass_rate
    name = f"Suite “{suite.name}”" + (f" ≥ {wanted:.0%}" if wanted is not None else "")
    run = latest_run(suite, version)
    if run is None:
        active = latest_run(suite, version, finished=False)
        if active is not None and active.is_active:
            url = reverse("evals:run", args=[team, active.pk])
            return GateCheck(name, None, f"running now ({active.rows_done}/{active.rows_total} rows)", url)
        return GateCheck(name, None, f"never run on {version}", reverse("evals:suite", args=[team, suite.pk]))
    figures = (run.summary or {}).get(_key(version)) or {}
    rate = float(figures.get("pass_rate") or 0.0)
    url = reverse("evals:run", args=[team, run.pk])
    if wanted is None:
        failing = [grader["type"] for grader in figures.get("graders", []) if not grader.get("ok")]
        detail = f"{rate:.0%} of rows pass every grader in run {run.pk}" + (
            f"; below the suite's pass rate: {', '.join(failing)}" if failing else ""
        )
        return GateCheck(name, bool(figures.get("passed")), detail, url)
    return GateCheck(name, rate >= wanted, f"{rate:.0%} of rows pass every grader in run {run.pk}", url)


def _forgetting_check(version: ModelVersion, team: str) -> GateCheck:
    from evals_app import forgetting  # the forgetting check's module (evals_app.forgetting)

    url = reverse("training:version", args=[team, version.pk])
    check = forgetting.latest_check(version)
    if check is None:
        newest = forgetting.newest_check(version)
        if newest is not None and newest.status in ("queued", "running"):
            return GateCheck("Forgetting check", None, "running now (measuring the version against its base)", url)
        return GateCheck("Forgetting check", None, f"not measured on {version} yet", url)
    detail = "; ".join(check.reasons) if check.flagged else "no regression beyond the team's limits"
    return GateCheck("Forgetting check", not check.flagged, detail, url)


def _bias_check(version: ModelVersion, limit: float, team: str) -> GateCheck:
    from evals_app import bias  # the bias probe's module (evals_app.bias)

    url = reverse("training:version", args=[team, version.pk])
    name = f"Bias probe gap ≤ {limit:.2f}"
    probe = bias.latest_probe(version)
    if probe is None or probe.max_gap is None:
        return GateCheck(name, None, f"no probe run on {version} yet", url)
    return GateCheck(name, probe.max_gap <= limit, f"largest gap between groups {probe.max_gap:.2f}", url)


# --- measuring ----------------------------------------------------------------------------------


def run_missing(
    *, access: TeamAccess, deployment: Deployment, version: ModelVersion, ip: str | None = None
) -> list[EvalRun]:
    """Start a run of every required suite that has neither a finished nor a running run on ``version`` (with the
    deployment's current version beside it, for comparison). ``evals.run`` and the versions usable by ``access``."""
    access.require(Perm.RUN_EVALS)
    started = []
    for requirement in gate_of(deployment).suites:
        if latest_run(requirement.suite, version) is not None:
            continue
        active = latest_run(requirement.suite, version, finished=False)
        if active is not None and active.is_active:
            continue
        keys = [_key(version)]
        if deployment.model_version_id != version.pk:
            keys.append(_key(deployment.model_version))
        started.append(services.start_run(access=access, suite=requirement.suite, model_keys=keys, ip=ip))
    return started


def _key(version: ModelVersion) -> str:
    return f"version:{version.pk}"
