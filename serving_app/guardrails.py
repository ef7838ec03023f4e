"""Guard policies: a deployment's ethical filters and usage limits, applied by ``serving_app.guard_filter``.

Owners and admins (``deployments.manage``) write a deployment's policy; every change raises its revision and
keeps the old one. At request time ``guard_for`` gives the /v1 handler and the playground what they need: the
``Rules``, and the guard model as a ``Classifier`` when the policy names one. What the policy did is audited
(``record``): one ``guard.blocked`` / ``guard.redacted`` / ``guard.truncated`` / ``guard.check_failed`` event per
kind of finding, with the deployment, the key or member, the stage, category and rule — never the text.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts import audit, plain_sql
from accounts.models import AuditEvent, Team
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app.catalog import Servable, publish, resolve_model, servable_base, servable_version
from serving_app.engine.client import InferenceError, StreamUpdate, stream_chat
from serving_app.guard_filter import (
    AnswerGuard,
    Classifier,
    GuardError,
    Rules,
    Stage,
    Topic,
    Verdict,
    check_topics,
    parse_verdict,
)
from serving_app.inference import server_url
from serving_app.models import Deployment, GuardPolicy, GuardPolicyRevision
from training_app.models import BaseModel, ModelVersion

GUARD_ACTIONS = ("guard.blocked", "guard.redacted", "guard.truncated", "guard.check_failed")
# What the guard model may write: a verdict and a category name. More tokens would only cost time.
VERDICT_MAX_TOKENS = 12
# The policy's fields as a document (what a revision keeps and the export bundle carries).
DOCUMENT_FIELDS = (
    "enabled", "redact_input_pii", "redact_output_pii", "blocked_topics", "guard_model_key", "guard_model_label",
    "guard_prompt", "guard_checks", "max_answer_chars", "refusal_message", "fail_closed",
)  # fmt: skip


def policy_of(deployment: Deployment) -> GuardPolicy | None:
    """The deployment's policy, or None when it has none."""
    return GuardPolicy.objects.for_team(deployment.team).filter(deployment=deployment).first()


def document(policy: GuardPolicy) -> dict[str, Any]:
    """The policy as plain JSON: its revision and every setting."""
    return {"revision": policy.revision, **{name: getattr(policy, name) for name in DOCUMENT_FIELDS}}


def topics_from(raw: Any) -> list[Topic]:
    """Blocked topics as the API and the form send them: ``[{"name", "terms": [...], "patterns": [...]}]``."""
    if not isinstance(raw, list):
        raise ValidationError({"blocked_topics": "Send a list of topics: {name, terms, patterns}."})
    topics = []
    for number, item in enumerate(raw, start=1):
        if not isinstance(item, Mapping) or not isinstance(item.get("name", ""), str):
            raise ValidationError(
                {"blocked_topics": f"Topic {number}: send an object with a name, terms and patterns."}
            )
        terms, patterns = item.get("terms", []), item.get("patterns", [])
        if not all(isinstance(t, str) for t in [*terms, *patterns]) or not isinstance(terms, list | tuple):
            raise ValidationError({"blocked_topics": f"Topic {number}: terms and patterns are lists of text."})
        topics.append(Topic(str(item.get("name", "")).strip(), tuple(terms), tuple(patterns)))
    return topics


def save_policy(
    *, access: TeamAccess, deployment: Deployment, settings: Mapping[str, Any], ip: str | None = None
) -> GuardPolicy:
    """Create or change ``deployment``'s policy (owners and admins); the old revision is kept, the change audited.

    ``settings`` holds any of ``DOCUMENT_FIELDS`` (``guard_model_key`` a model key the person may use, or "").
    Raises ``ValidationError`` naming the field.
    """
    access.require(Perm.MANAGE_DEPLOYMENTS)
    if deployment.team_id != access.team.pk:
        raise ValidationError({"deployment": "That deployment does not belong to this team."})
    unknown = sorted(set(settings) - set(DOCUMENT_FIELDS) - {"guard_model_label"})
    if unknown:
        raise ValidationError({unknown[0]: f"Unknown setting {unknown[0]!r}: use {', '.join(DOCUMENT_FIELDS)}."})
    changes = dict(settings)
    if "blocked_topics" in changes:
        topics = topics_from(changes["blocked_topics"])
        problems = check_topics(topics)
        if problems:
            raise ValidationError({"blocked_topics": problems})
        changes["blocked_topics"] = [
            {"name": t.name, "terms": [s.strip() for s in t.terms if s.strip()],
             "patterns": [p for p in t.patterns if p.strip()]}
            for t in topics
        ]  # fmt: skip
    if "guard_model_key" in changes:
        key = str(changes["guard_model_key"] or "")
        changes["guard_model_label"] = resolve_model(access, key).label if key else ""
    with transaction.atomic():
        policy = GuardPolicy.objects.for_team(access.team).select_for_update().filter(deployment=deployment).first()
        created = policy is None
        if policy is None:
            policy = GuardPolicy(team=access.team, deployment=deployment, revision=0)
        for name, value in changes.items():
            setattr(policy, name, value)
        if "guard_checks" in changes and changes["guard_checks"] not in GuardPolicy.Checks.values:
            raise ValidationError({"guard_checks": f"Check {', '.join(GuardPolicy.Checks.values)}."})
        if policy.guard_model_key and "{content}" not in policy.guard_prompt:
            raise ValidationError({"guard_prompt": "Put {content} where the text to classify goes."})
        if not policy.refusal_message.strip():
            raise ValidationError({"refusal_message": "Write what the model says when it refuses."})
        policy.revision += 1
        policy.updated_by, policy.updated_at = access.user, timezone.now()
        policy.full_clean(exclude=["team", "deployment", "updated_by"])
        policy.save()
        GuardPolicyRevision.objects.create(
            team=access.team, policy=policy, revision=policy.revision, document=document(policy),
            created_by=access.user,
        )  # fmt: skip
        audit.record(
            "guard.policy_created" if created else "guard.policy_changed", access=access, target=deployment, ip=ip,
            revision=policy.revision, changed=sorted(changes),
        )  # fmt: skip
    return policy


def revisions(policy: GuardPolicy) -> list[GuardPolicyRevision]:
    return list(
        GuardPolicyRevision.objects.for_team(policy.team).filter(policy=policy).select_related("created_by")[:20]
    )


def current_revision(deployment: Deployment) -> int | None:
    """The revision of the deployment's policy in force (what a release records), None without one."""
    return (
        GuardPolicy.objects.for_team(deployment.team)
        .filter(deployment=deployment, enabled=True)
        .values_list("revision", flat=True)
        .first()
    )


def export_documents(version: ModelVersion) -> dict[str, dict[str, Any]]:
    """The policies of the deployments serving ``version`` (by deployment name), as the export bundle carries
    them."""
    policies = (
        GuardPolicy.objects.for_team(version.team)
        .filter(deployment__model_version=version)
        .select_related("deployment")
    )
    return {policy.deployment.name: document(policy) for policy in policies}


# --- applying a policy ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guard:
    """A policy ready for one request: its rules, the guard model's classifier and the revision applied."""

    deployment_id: int
    revision: int
    rules: Rules
    classify: Classifier | None


def rules_of(policy: GuardPolicy) -> Rules:
    topics = tuple(topics_from(policy.blocked_topics))
    with_model = bool(policy.guard_model_key)
    return Rules(
        redact_input_pii=policy.redact_input_pii, redact_output_pii=policy.redact_output_pii, topics=topics,
        max_answer_chars=policy.max_answer_chars, refusal=policy.refusal_message, fail_closed=policy.fail_closed,
        classify_input=with_model and policy.guard_checks in ("input", "both"),
        classify_output=with_model and policy.guard_checks in ("output", "both"),
    )  # fmt: skip


def guard_for(deployment: Deployment) -> Guard | None:
    """What the deployment's enabled policy needs at request time (database work: call it off the event loop)."""
    # One policy per deployment at most. Every /v1 request asks: SQL written out (``accounts.plain_sql``).
    condition = '"deployment_id" = %s AND "enabled" = %s'
    policy = plain_sql.first(GuardPolicy, condition, [deployment.pk, True], team_id=deployment.team_id)
    if policy is None:
        return None
    policy.team = deployment.team
    classify = classifier(policy) if policy.guard_model_key else None
    return Guard(deployment.pk, policy.revision, rules_of(policy), classify)


def _guard_servable(policy: GuardPolicy) -> Servable | None:
    kind, _, pk = policy.guard_model_key.partition(":")
    if not pk.isdigit():
        return None
    if kind == "version":
        version = ModelVersion.objects.for_team(policy.team).filter(pk=int(pk)).select_related("base_model").first()
        return servable_version(version) if version is not None else None
    if kind == "base":
        model = BaseModel.objects.filter(pk=int(pk), status=BaseModel.Status.READY).first()
        return servable_base(model) if model is not None and model.team_id in (None, policy.team_id) else None
    return None


def classifier(policy: GuardPolicy) -> Classifier:
    """The policy's guard model as a classifier: its prompt with the text in place of ``{content}``, answered
    greedily; ``GuardError`` when the model is gone, unreachable or answers neither safe nor unsafe."""
    servable = _guard_servable(policy)
    if servable is not None:
        publish([servable])
    prompt, label = policy.guard_prompt, policy.guard_model_label or policy.guard_model_key

    async def classify(stage: Stage, text: str) -> Verdict:
        if servable is None:
            raise GuardError(f"the guard model {label} no longer exists")
        last = None
        try:
            question = [{"role": "user", "content": prompt.replace("{content}", text)}]
            async for update in stream_chat(
                server_url(servable), servable.served_name, question, max_tokens=VERDICT_MAX_TOKENS,
                temperature=0.0, top_p=1.0, seed=0,
            ):  # fmt: skip
                last = update
        except (InferenceError, httpx.HTTPError, OSError) as error:
            raise GuardError(f"the guard model {label} could not answer ({error.__class__.__name__})") from error
        return parse_verdict(last.text if last else "")

    return classify


def record(
    events: Iterable[Mapping[str, Any]], *, team: Team, deployment_id: int, revision: int, via: str,
    access: TeamAccess | None = None, ip: str | None = None,
) -> None:  # fmt: skip
    """Audit what a policy did to one request (``Event.as_dict()``\\ s), as the key or member who sent it."""
    events = list(events)
    if not events:
        return
    deployment = Deployment.objects.for_team(team).filter(pk=deployment_id).first()
    with transaction.atomic():
        for event in events:
            audit.record(
                f"guard.{event['action']}", access=access, team=team, target=deployment, ip=ip, via=via,
                revision=revision, stage=event["stage"], category=event["category"], rule=event["rule"],
                count=event["count"],
            )  # fmt: skip


# --- activity ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    days: list[datetime.date]
    per_day: dict[str, list[int]]  # action → count per day
    totals: Counter[str]  # action → count
    categories: list[tuple[str, str, str, int]]  # (action, stage, category, count), most first
    events: list[AuditEvent]  # the latest ones


def activity(team: Team, *, days: int = 30, deployment: Deployment | None = None) -> Activity:
    """What the team's guard policies did over ``days`` days: counts per day and action, per category, and the
    latest events (one count per finding: a redaction of three e-mails counts 3)."""
    today = timezone.localdate()
    first = today - datetime.timedelta(days=days - 1)
    since = timezone.make_aware(datetime.datetime.combine(first, datetime.time.min))
    events = AuditEvent.objects.filter(team=team, action__in=GUARD_ACTIONS, created_at__gte=since)
    if deployment is not None:
        events = events.filter(target_type="deployment", target_id=str(deployment.pk))
    dates = [first + datetime.timedelta(days=offset) for offset in range(days)]
    per_day = {action: [0] * days for action in GUARD_ACTIONS}
    totals: Counter[str] = Counter()
    categories: Counter[tuple[str, str, str]] = Counter()
    for action, created, details in events.values_list("action", "created_at", "details").iterator():
        count = int(details.get("count", 1))
        per_day[action][(timezone.localdate(created) - first).days] += count
        totals[action] += count
        categories[(action, str(details.get("stage", "")), str(details.get("category", "")))] += count
    latest = list(events.select_related("actor").order_by("-created_at", "-pk")[:50])
    ranked = [(a, s, c, n) for (a, s, c), n in categories.most_common()]
    return Activity(dates, per_day, totals, ranked, latest)


# --- the playground's streams ----------------------------------------------------------------------------------


async def guard_updates(
    guard: Guard, updates: AsyncIterator[StreamUpdate], events: list[dict[str, Any]]
) -> AsyncIterator[StreamUpdate]:
    """A streamed answer (``inference.stream_answer``) as the policy lets it through: each update's ``text`` is
    what has been released so far. A blocked answer ends with the refusal (``finish_reason`` content_filter)
    and the stream is closed, which stops the generation. What the policy did is appended to ``events``."""
    answer = AnswerGuard(guard.rules, guard.classify)
    text = ""
    last: StreamUpdate | None = None
    try:
        async for update in updates:
            last = update
            released = await answer.feed(update.delta)
            if update.done and answer.stopped is None:
                released += await answer.finish()
            text += released
            if answer.stopped is not None:
                yield replace(update, delta=released, text=text, done=True, finish_reason=answer.stopped_reason)
                return
            if released or update.done or update.tool_calls:
                yield replace(update, delta=released, text=text)
        if last is not None and not last.done and answer.stopped is None:  # a stream that ended without its end
            released = await answer.finish()
            if released:
                yield replace(last, delta=released, text=text + released)
    finally:
        await _close(updates)
        events += [event.as_dict() for event in answer.events]


async def _close(updates: AsyncIterator[StreamUpdate]) -> None:
    close = getattr(updates, "aclose", None)
    if close is not None:
        await close()


def refused_update(guard: Guard) -> StreamUpdate:
    """The whole answer to a prompt the policy refused."""
    refusal = guard.rules.refusal
    return StreamUpdate(refusal, refusal, 0.0, 0.0, 0, done=True, finish_reason="content_filter")
