"""What a deployment serves over time: promotion through a gate, canaries, rollback, and the release history.

A deployment answers /v1 with its ``model_version``; while a canary runs, ``canary_share`` % of requests go to
``canary_version`` instead (``route``), and each answered request records the version that answered, so the
deployment's page compares the two. Every change is a ``Release`` row (the promotion history) and an audit event.

**Gates.** Before a version is published to a deployment (all traffic or a canary), the deployment's gate is
checked. What a gate requires (eval suites with pass rates, the forgetting check, the bias probe's gap) is
evaluation, which lives in ``evals_app`` above this app: it registers a checker here (``register_gate_checker``)
that turns ``Deployment.gate`` into ``GateCheck`` rows. A version passes when every check passed; a check that
was never measured (a suite not run on the version yet) does not pass. A failing version is published only by
someone with ``deployments.override``, with a reason, and the release keeps the report and the reason.

**Rollback** returns the deployment to a version it served before (by default the one the current version
replaced) without a gate: that version already served this deployment's traffic.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, Q, Sum

from accounts import audit
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app import deployments, guardrails
from serving_app.models import Deployment, Release, UsageRecord
from training_app.models import ModelVersion

# The largest share of traffic a canary may take: at 100 % it is simply the deployment's version (promote it).
MAX_CANARY_SHARE = 99
# Actions that changed the version all traffic goes to (rollback targets come from these).
_PRIMARY_ACTIONS = (Release.Action.CREATED, Release.Action.PROMOTED, Release.Action.ROLLED_BACK)


# --- gates --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateCheck:
    """One requirement of a gate for one version: passed, failed, or not measured yet (``passed`` None)."""

    name: str
    passed: bool | None
    detail: str
    url: str = ""  # where to read (or start) the measurement


@dataclass(frozen=True)
class GateReport:
    """Every check of a deployment's gate for one version."""

    checks: tuple[GateCheck, ...] = ()

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def pending(self) -> bool:
        """Some requirement was never measured on this version (run it, then promote)."""
        return any(check.passed is None for check in self.checks)

    @property
    def failures(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def summary(self) -> str:
        """The failing checks in one sentence, for error messages."""
        return "; ".join(
            f"{check.name}: {'not measured yet' if check.passed is None else 'failed'} ({check.detail})"
            for check in self.failures
        )

    def as_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(check) for check in self.checks]}


GateChecker = Callable[[Deployment, ModelVersion], Sequence[GateCheck]]
_checkers: list[GateChecker] = []


def register_gate_checker(checker: GateChecker) -> None:
    """Add a source of gate checks (``evals_app`` registers its own when Django starts). Idempotent."""
    if checker not in _checkers:
        _checkers.append(checker)


def check_gate(deployment: Deployment, version: ModelVersion) -> GateReport:
    """What ``deployment``'s gate says of ``version`` now (no checks, and so passed, without a gate)."""
    return GateReport(tuple(check for checker in _checkers for check in checker(deployment, version)))


def set_gate(*, access: TeamAccess, deployment: Deployment, gate: dict[str, Any], ip: str | None = None) -> None:
    """Store what versions must pass before they are published to ``deployment`` (validated by the caller,
    ``evals_app.gates``, which knows what a requirement means). Audited as ``deployment.gate_changed``."""
    access.require(Perm.MANAGE_DEPLOYMENTS)
    _check_team(access, deployment)
    with transaction.atomic():
        Deployment.objects.for_team(access.team).filter(pk=deployment.pk).update(gate=gate)
        audit.record(
            "deployment.gate_changed", access=access, target=deployment, ip=ip, before=deployment.gate, after=gate
        )
    deployment.gate = gate


# --- reading ------------------------------------------------------------------------------------


def history(deployment: Deployment) -> list[Release]:
    """The deployment's releases, newest first."""
    return list(Release.objects.for_team(deployment.team).filter(deployment=deployment).select_related("created_by"))


def rollback_targets(deployment: Deployment) -> list[ModelVersion]:
    """Versions this deployment served before (all traffic), newest first, that still exist: where a rollback
    may go. The version serving now is not one."""
    seen: dict[int, ModelVersion] = {}
    releases = Release.objects.for_team(deployment.team).filter(deployment=deployment, action__in=_PRIMARY_ACTIONS)
    for release in releases.select_related("model_version"):
        version = release.model_version
        if version is not None and version.pk != deployment.model_version_id and version.pk not in seen:
            seen[version.pk] = version
    return list(seen.values())


def default_rollback(deployment: Deployment) -> ModelVersion | None:
    """The version the current one replaced (what "Roll back" restores), if it still exists."""
    current = (
        Release.objects.for_team(deployment.team)
        .filter(deployment=deployment, action__in=_PRIMARY_ACTIONS, model_version_id=deployment.model_version_id)
        .select_related("previous_version")
        .first()
    )
    previous = current.previous_version if current is not None else None
    if previous is None:
        targets = rollback_targets(deployment)
        return targets[0] if targets else None
    return previous if previous.pk != deployment.model_version_id else None


@dataclass(frozen=True)
class VersionTraffic:
    """/v1 requests one version of a deployment answered since a moment (a canary's start)."""

    version_id: int | None
    label: str
    role: str  # "current" or "canary"
    requests: int
    failed: int
    completion_tokens: int

    @property
    def failure_rate(self) -> float:
        return self.failed / self.requests if self.requests else 0.0


def canary_traffic(deployment: Deployment) -> list[VersionTraffic]:
    """The current version and the canary side by side since the canary started (empty without a canary)."""
    if deployment.canary_version_id is None:
        return []
    started = (
        Release.objects.for_team(deployment.team)
        .filter(deployment=deployment, action=Release.Action.CANARY_STARTED)
        .values_list("created_at", flat=True)
        .first()
    )
    return [
        _traffic(deployment, deployment.model_version, "current", started),
        _traffic(deployment, deployment.canary_version, "canary", started),
    ]


def _traffic(deployment: Deployment, version: ModelVersion | None, role: str, since: datetime | None) -> VersionTraffic:
    records = UsageRecord.objects.for_team(deployment.team).filter(
        deployment=deployment, model_version=version, source=UsageRecord.Source.API
    )
    if since is not None:
        records = records.filter(created_at__gte=since)
    totals = records.exclude(status=UsageRecord.Status.REJECTED).aggregate(
        requests=Count("pk"), failed=Count("pk", filter=Q(status=UsageRecord.Status.FAILED)),
        tokens=Sum("completion_tokens"),
    )  # fmt: skip
    return VersionTraffic(
        version_id=version.pk if version else None, label=str(version) if version else "a deleted version",
        role=role, requests=totals["requests"], failed=totals["failed"], completion_tokens=totals["tokens"] or 0,
    )  # fmt: skip


# --- routing ------------------------------------------------------------------------------------


def route(deployment: Deployment, draw: Callable[[], float] = random.random) -> ModelVersion:
    """The version that answers one /v1 request: the canary for ``canary_share`` % of draws, else the current one.

    ``draw`` returns a number in [0, 1) (a seeded ``random.Random().random`` in tests).
    """
    if deployment.canary_version_id is not None and draw() * 100 < deployment.canary_share:
        return deployment.canary_version  # type: ignore[return-value]  # set with its id
    return deployment.model_version


# --- changing -----------------------------------------------------------------------------------


def promote(
    *,
    access: TeamAccess,
    deployment: Deployment,
    version: ModelVersion,
    canary_share: int = 0,
    override_reason: str = "",
    ip: str | None = None,
) -> Release:
    """Publish ``version`` to ``deployment``: to all traffic (``canary_share`` 0) or as a canary taking that share.

    The gate is checked first; a failing (or unmeasured) version needs ``override_reason`` from someone with
    ``deployments.override`` (``PermissionDenied`` for anyone else who gives one). Promoting the running canary
    with share 0 completes it. The person must be allowed to ``use`` the version and its model card must be
    complete, as when deploying (no override: the card is not a measurement). Raises
    ``ValidationError`` keyed by ``model_version``, ``canary_share`` or ``override_reason``.
    """
    access.require(Perm.MANAGE_DEPLOYMENTS)
    _check_team(access, deployment)
    versions = deployments.deployable_versions(access)
    if version.team_id != access.team.pk or not versions.filter(pk=version.pk).exists():
        raise ValidationError(
            {"model_version": "That model version does not exist in this team or you may not use it; pick one from "
             "the team's models."}
        )  # fmt: skip
    deployments.require_complete_card(version)
    if not 0 <= canary_share <= MAX_CANARY_SHARE:
        raise ValidationError(
            {"canary_share": f"Use 0 (all traffic) to {MAX_CANARY_SHARE} % for a canary; this is {canary_share}."}
        )
    canary = canary_share > 0
    if version.pk == deployment.model_version_id:
        raise ValidationError({"model_version": f"{version} already answers all of “{deployment.name}”'s traffic."})
    if canary and version.pk == deployment.canary_version_id and canary_share == deployment.canary_share:
        raise ValidationError({"canary_share": f"{version} already takes {canary_share} % as the canary."})
    report = check_gate(deployment, version)
    reason = override_reason.strip()
    if not report.passed:
        if not reason:
            raise ValidationError(
                {"model_version": f"{version} does not pass “{deployment.name}”'s gate: {report.summary()}. Run what "
                 "is missing and promote again, or have an owner override the gate with a reason."}
            )  # fmt: skip
        if not access.can(Perm.OVERRIDE_GATES):
            raise PermissionDenied(
                f"Only someone with “{Perm.OVERRIDE_GATES}” (the team's owners) may publish a version that fails the "
                f"gate; ask an owner. The gate says: {report.summary()}."
            )
    if len(reason) > 1000:
        raise ValidationError({"override_reason": f"Use at most 1000 characters (this is {len(reason)})."})
    overridden = not report.passed
    with transaction.atomic():
        locked = _locked(access, deployment)
        previous = locked.model_version
        if canary:
            action, updates = Release.Action.CANARY_STARTED, {"canary_version": version, "canary_share": canary_share}
        else:
            action = Release.Action.PROMOTED
            updates = {"model_version": version, "canary_version": None, "canary_share": 0}
        Deployment.objects.for_team(access.team).filter(pk=locked.pk).update(**updates)
        release = Release.objects.create(
            team=access.team, deployment=locked, action=action, model_version=version, version_label=str(version),
            previous_version=previous, previous_label=str(previous), canary_share=canary_share,
            gate=report.as_json() if report.checks else {}, overridden=overridden, reason=reason if overridden else "",
            created_by=access.user, guard_revision=guardrails.current_revision(locked),
        )  # fmt: skip
        event = "deployment.canary_started" if canary else "deployment.promoted"
        details: dict[str, Any] = {
            "model_version": str(version), "model_version_id": version.pk, "previous": str(previous)
        }  # fmt: skip
        audit.record(event, access=access, target=locked, ip=ip, canary_share=canary_share, **details)
        if overridden:
            audit.record(
                "deployment.gate_overridden", access=access, target=locked, ip=ip, reason=reason,
                failed=[check.name for check in report.failures], **details,
            )  # fmt: skip
    _refresh(deployment)
    return release


def rollback(
    *, access: TeamAccess, deployment: Deployment, version: ModelVersion | None = None, ip: str | None = None
) -> Release:
    """Send all traffic back to ``version`` (default: the version the current one replaced), ending any canary.

    Only a version this deployment served before may be the target; no gate applies (it served this
    deployment's traffic already), nor the model-card check: a rollback is the way out of a bad release, and
    the version passed that check when it was published (or was published before cards were required).
    Raises ``ValidationError`` keyed by ``model_version``.
    """
    access.require(Perm.MANAGE_DEPLOYMENTS)
    _check_team(access, deployment)
    target = version or default_rollback(deployment)
    if target is None:
        raise ValidationError({"model_version": f"“{deployment.name}” has served no other version that still exists."})
    if target.pk not in {candidate.pk for candidate in rollback_targets(deployment)}:
        raise ValidationError(
            {"model_version": f"{target} never served “{deployment.name}” (or serves it now): roll back only to a "
             "version from its history; publish others with Promote."}
        )  # fmt: skip
    with transaction.atomic():
        locked = _locked(access, deployment)
        previous = locked.model_version
        Deployment.objects.for_team(access.team).filter(pk=locked.pk).update(
            model_version=target, canary_version=None, canary_share=0
        )
        release = Release.objects.create(
            team=access.team, deployment=locked, action=Release.Action.ROLLED_BACK, model_version=target,
            version_label=str(target), previous_version=previous, previous_label=str(previous),
            created_by=access.user, guard_revision=guardrails.current_revision(locked),
        )  # fmt: skip
        audit.record(
            "deployment.rolled_back", access=access, target=locked, ip=ip, model_version=str(target),
            model_version_id=target.pk, previous=str(previous),
        )  # fmt: skip
    _refresh(deployment)
    return release


def stop_canary(*, access: TeamAccess, deployment: Deployment, ip: str | None = None) -> Release:
    """End the running canary: all traffic goes to the current version again."""
    access.require(Perm.MANAGE_DEPLOYMENTS)
    _check_team(access, deployment)
    with transaction.atomic():
        locked = _locked(access, deployment)
        canary = locked.canary_version
        if canary is None:
            raise ValidationError({"canary": f"“{deployment.name}” has no canary running."})
        Deployment.objects.for_team(access.team).filter(pk=locked.pk).update(canary_version=None, canary_share=0)
        release = Release.objects.create(
            team=access.team, deployment=locked, action=Release.Action.CANARY_STOPPED, model_version=canary,
            version_label=str(canary), previous_version=locked.model_version,
            previous_label=str(locked.model_version), canary_share=locked.canary_share, created_by=access.user,
            guard_revision=guardrails.current_revision(locked),
        )  # fmt: skip
        audit.record(
            "deployment.canary_stopped", access=access, target=locked, ip=ip, model_version=str(canary),
            model_version_id=canary.pk, canary_share=locked.canary_share,
        )  # fmt: skip
    _refresh(deployment)
    return release


def _check_team(access: TeamAccess, deployment: Deployment) -> None:
    if deployment.team_id != access.team.pk:
        raise ValidationError({"deployment": "That deployment does not belong to this team."})


def _locked(access: TeamAccess, deployment: Deployment) -> Deployment:
    """The deployment's row, locked until the transaction ends: two promotions apply one after the other."""
    return (
        Deployment.objects.for_team(access.team)
        .select_for_update(of=("self",))
        .select_related("model_version", "canary_version")
        .get(pk=deployment.pk)
    )


def _refresh(deployment: Deployment) -> None:
    deployment.refresh_from_db(fields=["model_version", "canary_version", "canary_share"])
