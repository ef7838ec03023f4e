"""Thumbs up and thumbs down on playground answers, and their export as a feedback dataset (for KTO).

A person votes on one answer the playground showed them (``record_vote``): the vote keeps the key of the
model that answered, the conversation it was sent (its system prompt first, the person's message last) and
the answer, labelled good (thumbs up) or bad (thumbs down). One vote per person per answer: voting again on
the same answer changes the label, until the vote is exported. Like the arena's votes, the model is
resolved for the person on every vote, so a model they may no longer use is refused.

Votes not exported yet become a new version of the team's "Playground feedback" dataset
(``export_feedback``): rows ``{"prompt": [turns], "completion": [the answer], "label": true|false}``, TRL's
unpaired preference format, made and validated like any upload (``serving_app.exports``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from accounts import audit
from accounts.models import Team
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app.catalog import resolve_model
from serving_app.exports import ExportResult, restricted_model_keys, upload_rows
from serving_app.models import PlaygroundVote

Message = dict[str, str]

EXPORT_DATASET_NAME = "Playground feedback"
EXPORT_FILENAME = "playground-feedback.jsonl"
EXPORT_DESCRIPTION = (
    "Thumbs up and thumbs down on playground answers: each answer with the conversation before it, labelled "
    "good (true) or bad (false), for KTO."
)
PROMPT_ROLES = ("system", "user", "assistant")
# A vote keeps the whole conversation: enough for any model's context, not a way to store arbitrary files.
MAX_VOTE_CHARACTERS = 1_000_000
ALREADY_EXPORTED = (
    "This vote is already in the team's feedback dataset (it was exported), so it can no longer be changed."
)


def record_vote(
    *, access: TeamAccess, model_key: str, prompt: Sequence[Mapping[str, Any]], answer: str, label: bool
) -> PlaygroundVote:
    """Record the caller's thumbs up (``label=True``) or thumbs down on one answer; voting again changes it.

    ``prompt`` is the conversation the model was sent (ending with the person's message) and ``answer`` its
    reply. The model is resolved for ``access`` first (Http404 / PermissionDenied when they may not use it).
    Raises ``ValidationError`` for an empty conversation or answer, and for a change to an exported vote.
    """
    access.require(Perm.USE_PLAYGROUND)
    if access.user is None:
        raise PermissionDenied("Votes are a person's: sign in to the studio to vote (a team API key cannot).")
    servable = resolve_model(access, str(model_key))
    turns = _conversation(prompt)
    text = answer if isinstance(answer, str) else ""
    if not text.strip():
        raise ValidationError({"answer": "This answer is empty: there is nothing to vote on."})
    size = len(text) + sum(len(turn["content"]) for turn in turns)
    if size > MAX_VOTE_CHARACTERS:
        raise ValidationError(
            {"prompt": f"This conversation has {size:,} characters; a vote keeps at most {MAX_VOTE_CHARACTERS:,}."}
        )
    label = bool(label)
    now = timezone.now()
    with transaction.atomic():
        vote, created = PlaygroundVote.objects.for_team(access.team).get_or_create(
            team=access.team,
            user=access.user,
            fingerprint=answer_fingerprint(servable.key, turns, text),
            defaults={
                "model": servable.key,
                "model_label": servable.label[:200],
                "prompt": turns,
                "answer": text,
                "label": label,
                "created_at": now,
                "updated_at": now,
            },
        )
        if created or vote.label == label:
            return vote
        # Conditional, so a vote exported a moment ago (another tab's export) is never changed behind its row.
        changed = (
            PlaygroundVote.objects.for_team(access.team)
            .filter(pk=vote.pk, exported_at__isnull=True)
            .update(label=label, updated_at=now)
        )
        if not changed:
            raise ValidationError({"vote": ALREADY_EXPORTED}, code="exported")
    vote.refresh_from_db()
    return vote


def answer_fingerprint(model_key: str, prompt: Sequence[Mapping[str, Any]], answer: str) -> str:
    """What makes two votes the same answer: the model, the conversation it was sent and its reply (a hash)."""
    canonical = json.dumps([model_key, list(prompt), answer], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _conversation(prompt: Any) -> list[Message]:
    """The conversation as plain ``{"role", "content"}`` turns, ending with the person's message."""
    if not isinstance(prompt, Sequence) or isinstance(prompt, str) or not prompt:
        raise ValidationError({"prompt": "There is no conversation before this answer: send a prompt first."})
    turns: list[Message] = []
    for number, turn in enumerate(prompt, start=1):
        role = turn.get("role") if isinstance(turn, Mapping) else None
        content = turn.get("content") if isinstance(turn, Mapping) else None
        if role not in PROMPT_ROLES or not isinstance(content, str):
            raise ValidationError(
                {"prompt": f"Turn {number} of the conversation is not a system, user or assistant message."}
            )
        turns.append({"role": str(role), "content": content})
    if turns[-1]["role"] != "user":
        raise ValidationError({"prompt": "The conversation must end with the message this answer replies to."})
    return turns


# --- exporting votes as feedback data --------------------------------------------------------------


def pending_exports(team: Team) -> int:
    """How many playground votes of the team are not exported yet."""
    return PlaygroundVote.objects.for_team(team).filter(exported_at__isnull=True).count()


def feedback_row(vote: PlaygroundVote) -> dict[str, Any] | None:
    """A vote as a feedback row (prompt turns, the answer as one assistant turn, the label), or None when
    it cannot make one (an empty conversation, turn or answer)."""
    prompt = [turn for turn in vote.prompt if isinstance(turn, dict)] if isinstance(vote.prompt, list) else []
    usable = (
        prompt
        and prompt[-1].get("role") == "user"
        and vote.answer.strip()
        and all(str(turn.get("content", "")).strip() for turn in prompt)
    )
    if not usable:
        return None
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": vote.answer}], "label": vote.label}


def export_feedback(*, access: TeamAccess, ip: str | None = None) -> ExportResult:
    """Turn the team's playground votes not yet exported into a new version of the "Playground feedback" dataset.

    The rows go through the datasets app's upload (a feedback dataset: prompt, completion, label) and are
    validated in the background like any file. The votes are marked exported in the same transaction, so
    two exports never take the same vote. Votes on a restricted model version are left for now (its answers
    may carry what it learned from restricted data); votes that cannot make a row are left too. Raises
    ``ValidationError`` when nothing can be exported (no dataset is made).
    """
    access.require(Perm.UPLOAD_DATASETS)
    with transaction.atomic():
        votes = list(
            PlaygroundVote.objects.for_team(access.team)
            .filter(exported_at__isnull=True)
            .select_for_update()
            .order_by("created_at", "pk")
        )
        restricted = restricted_model_keys(access.team, [vote.model for vote in votes])
        rows, exported, held_back, left_out = [], [], 0, 0
        for vote in votes:
            if vote.model in restricted:
                held_back += 1
                continue
            row = feedback_row(vote)
            if row is None:
                left_out += 1
                continue
            rows.append(row)
            exported.append(vote.pk)
        if not rows:
            raise ValidationError(
                {"votes": _nothing_to_export(left_out=left_out, restricted=held_back)}, code="nothing_to_export"
            )
        version = upload_rows(
            access, rows, name=EXPORT_DATASET_NAME, filename=EXPORT_FILENAME, description=EXPORT_DESCRIPTION, ip=ip
        )
        PlaygroundVote.objects.for_team(access.team).filter(pk__in=exported).update(exported_at=timezone.now())
        audit.record(
            "feedback.exported",
            access=access,
            target=version.dataset,
            ip=ip,
            version=version.number,
            rows=len(rows),
            good=sum(1 for row in rows if row["label"]),
            left_out=left_out,
            restricted=held_back,
        )
    return ExportResult(version=version, exported=len(rows), left_out=left_out, restricted=held_back)


def _nothing_to_export(*, left_out: int, restricted: int) -> str:
    message = "No new playground votes to export: press Thumbs up or Thumbs down under a playground answer first."
    if left_out:
        message += f" {left_out} vote(s) have an empty conversation or answer and cannot make a row."
    if restricted:
        message += f" {restricted} vote(s) are on a restricted model version and are not exported."
    return message
