"""The blind arena: battles between two anonymous models, one vote each, a leaderboard, and DPO data.

A battle draws two models at random from a set the person chose (``start_battle``), in random order:
whichever was drawn first is "Model A". Both answer the same conversation turn after turn
(``continue_battle`` then ``record_turn``); the person votes once (``vote``) and only then learns who
was who (``reveal``). Every call re-resolves both models through ``catalog.resolve_model``, so a model
the person may no longer use stops the battle, and a battle is only ever found among the caller's own.

The leaderboard fits a Bradley–Terry model to the votes by maximum likelihood (``leaderboard``, a pure
function; ``team_leaderboard`` reads a team's votes). A tie counts as half a win for each side, and so
does "both are bad": the person said neither answer was better, which is what a tie means for ranking
(LMSYS' Chatbot Arena counts it the same way). Scores are on an Elo-like scale (400 points = ten-to-one
odds, the average model of the set at 1000); 95% intervals come from a bootstrap over battles with a
fixed seed, so the page reads the same on every visit.

Decisive votes (A or B better) become preference rows for DPO (``export_preferences``): a new version
of the team's "Arena preferences" dataset, made and validated like any upload.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from accounts import audit
from accounts.models import Team
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app.catalog import Servable, resolve_model, resolve_models
from serving_app.exports import ExportResult, restricted_model_keys, upload_rows, version_pk
from serving_app.models import ArenaBattle
from training_app.services import visible_versions

Vote = ArenaBattle.Vote
Message = dict[str, str]

DECISIVE_VOTES = (Vote.A, Vote.B)
# The Elo-like scale: a 400-point gap means ten-to-one odds of winning; the set's average model sits at 1000.
SCORE_SCALE = 400 / math.log(10)
SCORE_CENTER = 1000.0
BOOTSTRAP_ROUNDS = 200
BOOTSTRAP_SEED = 20240917
CONFIDENCE = 0.95
# When the votes alone have no finite maximum (a model that never won, or never lost), each pair of models
# is given this many virtual tied games, so the scores stay finite (and far apart) instead of diverging.
VIRTUAL_TIES = 1.0
EXPORT_DATASET_NAME = "Arena preferences"
EXPORT_FILENAME = "arena-preferences.jsonl"
EXPORT_DESCRIPTION = "Votes from the arena: the winner's answer as chosen, the loser's as rejected (for DPO)."
HIDDEN_MODEL_LABEL = "A restricted model"
BATTLE_OVER = "This battle is over (you voted): press New battle to start another."

_draw = random.SystemRandom()


class NoSuchBattle(Http404):
    """The battle does not exist, is another team's, or is someone else's (the same answer for all three)."""


@dataclass(frozen=True)
class Contenders:
    """A battle with its two models, both resolved for the person asking (``a`` is "Model A")."""

    battle: ArenaBattle
    a: Servable
    b: Servable


# --- battles ---------------------------------------------------------------------------------------


def start_battle(*, access: TeamAccess, keys: Sequence[str]) -> Contenders:
    """Draw two different models from ``keys`` at random, in random order, and open a battle between them.

    Every candidate is resolved for ``access`` first: one model the person may not use refuses the whole
    set (Http404 / PermissionDenied, nothing created). Needs at least two different models.
    """
    access.require(Perm.USE_PLAYGROUND)
    candidates = list(dict.fromkeys(str(key) for key in keys))
    servables = resolve_models(access, candidates)
    if len(servables) < 2:
        raise ValidationError({"models": "Choose at least two models for the arena: a battle needs a pair."})
    a, b = _draw.sample(servables, 2)
    battle = ArenaBattle.objects.create(
        team=access.team,
        user=access.user,
        candidates=candidates,
        model_a=a.key,
        model_a_label=a.label[:200],
        model_b=b.key,
        model_b_label=b.label[:200],
    )
    return Contenders(battle=battle, a=a, b=b)


def continue_battle(*, access: TeamAccess, battle_id: int) -> Contenders:
    """The caller's open (not yet voted) battle with both models re-checked, ready for another turn."""
    battle = _own_battle(access, battle_id)
    if battle.vote:
        raise ValidationError({"battle": BATTLE_OVER})
    return _contenders(access, battle)


def record_turn(
    *, access: TeamAccess, battle_id: int, prompt: str, answer_a: str, answer_b: str, turns_before: int
) -> ArenaBattle:
    """Append one exchange (the person's message and each model's answer) to both conversations.

    ``turns_before`` is the length of the conversation the answers were generated from: if the battle
    moved on meanwhile (a second tab), the turn is refused rather than stitched onto the wrong history.
    """
    with transaction.atomic():
        battle = _own_battle(access, battle_id, lock=True)
        if battle.vote:
            raise ValidationError({"battle": BATTLE_OVER})
        _contenders(access, battle)
        if len(battle.conversation_a) != turns_before or len(battle.conversation_b) != turns_before:
            raise ValidationError(
                {"battle": "This battle went on in another window while these answers came: press New battle."}
            )
        user: Message = {"role": "user", "content": prompt}
        battle.conversation_a = [*battle.conversation_a, user, {"role": "assistant", "content": answer_a}]
        battle.conversation_b = [*battle.conversation_b, user, {"role": "assistant", "content": answer_b}]
        battle.save(update_fields=["conversation_a", "conversation_b"])
    return battle


def vote(*, access: TeamAccess, battle_id: int, choice: str) -> ArenaBattle:
    """Record the caller's vote on their battle: once only, even when two requests race.

    The vote is written with a conditional UPDATE (``WHERE vote = ''``), so of two simultaneous votes one
    is recorded and the other refused. Both models are re-checked first, like every arena call.
    """
    if choice not in Vote.values:
        raise ValidationError({"vote": f"Vote one of: {', '.join(Vote.values)}."})
    battle = _own_battle(access, battle_id)
    _contenders(access, battle)
    if not battle.conversation_a:
        raise ValidationError({"vote": "Nothing to vote on yet: send a message and wait for both answers."})
    recorded = (
        ArenaBattle.objects.for_team(access.team)
        .filter(pk=battle.pk, user=access.user, vote="")
        .update(vote=choice, voted_at=timezone.now())
    )
    if not recorded:
        raise ValidationError({"vote": "You already voted on this battle: press New battle to start another."})
    battle.refresh_from_db()
    return battle


def reveal(*, access: TeamAccess, battle_id: int) -> tuple[str, str]:
    """The labels of Model A and Model B: only for the caller's own battle, and only once they voted."""
    battle = _own_battle(access, battle_id)
    if not battle.vote:
        raise ValidationError({"battle": "Vote first: the names are shown once your vote is in."})
    return battle.model_a_label, battle.model_b_label


def _own_battle(access: TeamAccess, battle_id: Any, *, lock: bool = False) -> ArenaBattle:
    """The caller's own battle in their team (locked for update if asked); NoSuchBattle for anything else."""
    access.require(Perm.USE_PLAYGROUND)
    try:
        pk = int(battle_id)
    except (TypeError, ValueError):
        raise NoSuchBattle("No such battle.") from None
    if access.user is None:  # a team API key has no battles
        raise NoSuchBattle("No such battle.")
    battles = ArenaBattle.objects.for_team(access.team).filter(pk=pk, user=access.user)
    battle = (battles.select_for_update() if lock else battles).first()
    if battle is None:
        raise NoSuchBattle("No such battle.")
    return battle


def _contenders(access: TeamAccess, battle: ArenaBattle) -> Contenders:
    """Both models of ``battle``, resolved now (raises if the person may no longer use either)."""
    return Contenders(battle=battle, a=resolve_model(access, battle.model_a), b=resolve_model(access, battle.model_b))


# --- the leaderboard -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaderboardRow:
    """One model's standing: score on the Elo-like scale with its 95% interval, and its record."""

    rank: int
    model: str
    label: str
    score: float
    ci_low: float
    ci_high: float
    battles: int
    wins: int
    ties: int
    losses: int


def leaderboard(
    votes: Iterable[tuple[str, str, str]],
    *,
    labels: Mapping[str, str] | None = None,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = BOOTSTRAP_SEED,
) -> list[LeaderboardRow]:
    """Rank the models of ``(model_a, model_b, vote)`` triples by a Bradley–Terry fit, best first.

    Unvoted triples (``vote == ""``) are ignored. Ties and "both bad" count half a win to each side.
    ``score`` is the maximum-likelihood estimate; the interval is the central 95% of the estimates over
    ``rounds`` bootstrap resamples of the battles (``seed`` fixes them, so the result is stable).
    """
    battles = [(a, b, outcome) for a, b, outcome in votes if outcome in Vote.values and a != b]
    models = sorted({key for a, b, _ in battles for key in (a, b)})
    if not models:
        return []
    index = {key: number for number, key in enumerate(models)}
    first = np.array([index[a] for a, _, _ in battles])
    second = np.array([index[b] for _, b, _ in battles])
    share_a = np.array([_share_of_a(outcome) for _, _, outcome in battles])

    estimate = _fit(_win_matrix(len(models), first, second, share_a, np.ones(len(battles))))
    samples = _bootstrap(len(models), first, second, share_a, rounds, seed)
    samples = np.where(np.isnan(samples), estimate, samples)  # a model absent from a resample keeps its estimate
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0) if rounds else (estimate, estimate)

    records = {key: [0, 0, 0] for key in models}  # wins, ties, losses
    for a, b, outcome in battles:
        if outcome == Vote.A:
            records[a][0] += 1
            records[b][2] += 1
        elif outcome == Vote.B:
            records[b][0] += 1
            records[a][2] += 1
        else:
            records[a][1] += 1
            records[b][1] += 1
    order = sorted(range(len(models)), key=lambda number: (-estimate[number], models[number]))
    names = labels or {}
    return [
        LeaderboardRow(
            rank=rank,
            model=models[number],
            label=names.get(models[number], models[number]),
            score=_to_score(estimate[number]),
            ci_low=_to_score(min(low[number], estimate[number])),
            ci_high=_to_score(max(high[number], estimate[number])),
            battles=sum(records[models[number]]),
            wins=records[models[number]][0],
            ties=records[models[number]][1],
            losses=records[models[number]][2],
        )
        for rank, number in enumerate(order, start=1)
    ]


def team_leaderboard(access: TeamAccess) -> list[LeaderboardRow]:
    """The leaderboard of every voted battle in the team (readable by every member, viewers included).

    Each model is named by its most recent label; a restricted model version the reader may not see is
    ranked like the others but named only "A restricted model".
    """
    voted = (
        ArenaBattle.objects.for_team(access.team)
        .exclude(vote="")
        .order_by("voted_at", "pk")
        .values_list("model_a", "model_a_label", "model_b", "model_b_label", "vote")
    )
    votes, labels = [], {}
    for model_a, label_a, model_b, label_b, outcome in voted:
        votes.append((model_a, model_b, outcome))
        labels[model_a], labels[model_b] = label_a, label_b
    for key in hidden_model_keys(access, labels):
        labels[key] = HIDDEN_MODEL_LABEL
    return leaderboard(votes, labels=labels)


def hidden_model_keys(access: TeamAccess, keys: Iterable[str]) -> set[str]:
    """The keys among ``keys`` of restricted model versions of the team that ``access`` may not see."""
    restricted = restricted_model_keys(access.team, keys)
    if not restricted:
        return set()
    visible = visible_versions(access, "view").filter(pk__in=[version_pk(key) for key in restricted])
    return restricted - {f"version:{pk}" for pk in visible.values_list("pk", flat=True)}


def _share_of_a(outcome: str) -> float:
    """How much of a win ``outcome`` gives Model A (B gets the rest)."""
    return {Vote.A: 1.0, Vote.B: 0.0}.get(Vote(outcome), 0.5)


def _win_matrix(
    size: int, first: np.ndarray, second: np.ndarray, share_a: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """``wins[i, j]``: how many times model i beat model j (ties as halves), each battle counted ``weights`` times."""
    wins = np.zeros((size, size))
    np.add.at(wins, (first, second), weights * share_a)
    np.add.at(wins, (second, first), weights * (1 - share_a))
    return wins


def _bootstrap(
    size: int, first: np.ndarray, second: np.ndarray, share_a: np.ndarray, rounds: int, seed: int
) -> np.ndarray:
    """Log-strengths refitted on ``rounds`` resamples of the battles; NaN where a model drew no battle."""
    generator = np.random.default_rng(seed)
    samples = np.full((rounds, size), np.nan)
    count = len(first)
    for round_number in range(rounds):
        weights = generator.multinomial(count, np.full(count, 1 / count)).astype(float)
        wins = _win_matrix(size, first, second, share_a, weights)
        present = np.flatnonzero((wins + wins.T).sum(axis=1) > 0)
        samples[round_number, present] = _fit(wins[np.ix_(present, present)])
    return samples


def _fit(wins: np.ndarray) -> np.ndarray:
    """The Bradley–Terry log-strengths maximizing the likelihood of ``wins`` (mean zero), by Newton's method.

    P(i beats j) = 1 / (1 + exp(s_j - s_i)). The maximum is finite exactly when every model has beaten,
    directly or through others, every other model (the "has beaten" graph is strongly connected); when it
    is not, ``VIRTUAL_TIES`` tied games per pair are added first.
    """
    size = len(wins)
    if size < 2:
        return np.zeros(size)
    if not _strongly_connected(wins > 0):
        wins = wins + VIRTUAL_TIES / 2 * (1 - np.eye(size))
    games = wins + wins.T
    strengths = np.zeros(size)
    likelihood = _log_likelihood(wins, strengths)
    centering = np.ones((size, size)) / size  # fixes the free additive constant: the solution sums to zero
    for _ in range(100):
        odds = 1 / (1 + np.exp(strengths[None, :] - strengths[:, None]))
        gradient = (wins - games * odds).sum(axis=1)
        if np.abs(gradient).max() < 1e-10 * max(1.0, games.sum()):
            break
        curvature = games * odds * (1 - odds)
        step = np.linalg.solve(np.diag(curvature.sum(axis=1)) - curvature + centering, gradient)
        # Newton's step, halved until it raises the likelihood (the log-likelihood is concave).
        for scale in 0.5 ** np.arange(30):
            candidate = strengths + scale * step
            candidate_likelihood = _log_likelihood(wins, candidate)
            if candidate_likelihood >= likelihood:
                break
        else:
            break
        strengths, likelihood = candidate - candidate.mean(), candidate_likelihood
    return strengths


def _log_likelihood(wins: np.ndarray, strengths: np.ndarray) -> float:
    gaps = strengths[:, None] - strengths[None, :]
    return float(-(wins * np.logaddexp(0.0, -gaps)).sum())


def _strongly_connected(edges: np.ndarray) -> bool:
    """Whether every node reaches every other along ``edges`` (a boolean adjacency matrix)."""

    def reached(adjacency: np.ndarray) -> bool:
        seen = np.zeros(len(adjacency), dtype=bool)
        seen[0] = True
        frontier = seen.copy()
        while frontier.any():
            frontier = adjacency[frontier].any(axis=0) & ~seen
            seen |= frontier
        return bool(seen.all())

    return reached(edges) and reached(edges.T)


def _to_score(strength: float) -> float:
    return float(SCORE_CENTER + SCORE_SCALE * strength)


# --- exporting votes as preference data ----------------------------------------------------------


def pending_exports(team: Team) -> int:
    """How many decisive votes of the team are not exported yet."""
    return ArenaBattle.objects.for_team(team).filter(vote__in=DECISIVE_VOTES, exported_at__isnull=True).count()


def preference_row(battle: ArenaBattle) -> dict[str, list[Message]] | None:
    """A decisive battle as a DPO row, or None when it cannot make one (no answers, empty or identical).

    ``prompt`` is what both conversations share (the first message); ``chosen`` and ``rejected`` are the
    rest of the winner's and the loser's conversation: one answer for a one-turn battle, the whole
    exchange (answers and the person's follow-ups) for a longer one, since the vote judged all of it.
    """
    if battle.vote not in DECISIVE_VOTES:
        return None
    a, b = list(battle.conversation_a), list(battle.conversation_b)
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    prompt, rest_a, rest_b = a[:shared], a[shared:], b[shared:]
    chosen, rejected = (rest_a, rest_b) if battle.vote == Vote.A else (rest_b, rest_a)
    usable = (
        prompt
        and chosen
        and rejected
        and chosen != rejected
        and all(str(message.get("content", "")).strip() for message in [*prompt, *chosen, *rejected])
    )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected} if usable else None


def export_preferences(*, access: TeamAccess, ip: str | None = None) -> ExportResult:
    """Turn the team's decisive votes not yet exported into a new version of the "Arena preferences" dataset.

    The rows go through the datasets app's upload (a preference dataset: prompt, chosen, rejected) and
    are validated in the background like any file. The battles are marked exported in the same
    transaction, so two exports never take the same vote. Votes on a restricted model version are left
    for now (its answers may carry what it learned from restricted data); votes whose answers cannot make
    a row are left too. Raises ``ValidationError`` when nothing can be exported (no dataset is made).
    """
    access.require(Perm.UPLOAD_DATASETS)
    with transaction.atomic():
        battles = list(
            ArenaBattle.objects.for_team(access.team)
            .filter(vote__in=DECISIVE_VOTES, exported_at__isnull=True)
            .select_for_update()
            .order_by("voted_at", "pk")
        )
        restricted = restricted_model_keys(access.team, [key for b in battles for key in (b.model_a, b.model_b)])
        rows, exported, held_back, left_out = [], [], 0, 0
        for battle in battles:
            if {battle.model_a, battle.model_b} & restricted:
                held_back += 1
                continue
            row = preference_row(battle)
            if row is None:
                left_out += 1
                continue
            rows.append(row)
            exported.append(battle.pk)
        if not rows:
            raise ValidationError(
                {"battles": _nothing_to_export(left_out=left_out, restricted=held_back)}, code="nothing_to_export"
            )
        version = upload_rows(
            access, rows, name=EXPORT_DATASET_NAME, filename=EXPORT_FILENAME, description=EXPORT_DESCRIPTION, ip=ip
        )
        ArenaBattle.objects.for_team(access.team).filter(pk__in=exported).update(exported_at=timezone.now())
        audit.record(
            "arena.exported",
            access=access,
            target=version.dataset,
            ip=ip,
            version=version.number,
            rows=len(rows),
            left_out=left_out,
            restricted=held_back,
        )
    return ExportResult(version=version, exported=len(rows), left_out=left_out, restricted=held_back)


def _nothing_to_export(*, left_out: int, restricted: int) -> str:
    message = "No new decisive votes to export: vote “A is better” or “B is better” in the arena first."
    if left_out:
        message += f" {left_out} vote(s) had an empty answer or two identical answers and cannot make a row."
    if restricted:
        message += f" {restricted} vote(s) involve a restricted model version and are not exported."
    return message
