"""Reinforcement rewards: the team's graders (``graders``) as weighted TRL reward functions for GRPO.

A job's ``rewards`` setting is a list of reward specs, each a grader spec with an optional ``weight``
(default 1), such as ``[{"type": "exact_match", "ignore_case": true, "weight": 1}]``. ``reward_problem``
says what is wrong with such a list in one sentence that names the reward and the option (the form, the API
and the trainer all call it); ``build_rewards`` turns a valid list into reward functions and weights.

A reward grades each sampled answer against the row's reference: its text, or for ``tool_call`` its tool
call (the columns ``prompt_sets`` writes). The LLM judge is not offered: it needs a served model, which a
trainer process does not reach.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training_app.engine import graders

REFERENCE_COLUMN = "reference"
TOOL_CALL_COLUMN = "reference_tool_calls"
# Grader types that read the row's tool call rather than its text.
TOOL_CALL_TYPES = ("tool_call",)
# Grader types a trainer cannot run as a reward (they need a model served elsewhere).
UNAVAILABLE_TYPES = {
    "llm_judge": (
        "an LLM judge needs a served model, which reinforcement training cannot call yet; use exact_match, "
        "contains, regex, json_schema, numeric or tool_call"
    ),
}
REWARD_TYPES = tuple(name for name in graders.GRADER_CLASSES if name not in UNAVAILABLE_TYPES)
EXAMPLE = '[{"type": "exact_match", "ignore_case": true, "weight": 1}]'
MAX_REWARDS = 8


@dataclass(frozen=True)
class Reward:
    """One built reward: its grader, weight, and the name TRL logs it under (``rewards/<name>/mean``)."""

    grader: graders.Grader
    weight: float
    name: str

    def function(self) -> graders.GraderReward:
        """The TRL reward function: the grader's score of each answer against the row's reference."""
        column = TOOL_CALL_COLUMN if self.grader.type in TOOL_CALL_TYPES else REFERENCE_COLUMN
        reward = graders.reward_function(self.grader, reference_column=column)
        reward.__name__ = self.name
        return reward


def reward_problem(specs: Any) -> str | None:
    """What is wrong with a ``rewards`` setting, in one sentence naming the reward and option; None if valid."""
    try:
        build_rewards(specs)
    except RewardSpecError as error:
        return str(error)
    return None


class RewardSpecError(ValueError):
    """A rewards list that cannot be built; the message names the reward (from 1) and the option."""


def build_rewards(specs: Any) -> list[Reward]:
    """The rewards a list of specs describes; raises ``RewardSpecError``."""
    if not isinstance(specs, list):
        raise RewardSpecError(f"give a JSON list of reward specs, such as {EXAMPLE}")
    if not specs:
        raise RewardSpecError(f"reinforcement needs at least one reward to grade the answers, such as {EXAMPLE}")
    if len(specs) > MAX_REWARDS:
        raise RewardSpecError(f"use at most {MAX_REWARDS} rewards (this list has {len(specs)})")
    built: list[Reward] = []
    for number, spec in enumerate(specs, start=1):
        built.append(_build_one(number, spec))
    names = [reward.name for reward in built]
    if len(set(names)) < len(names):  # two rewards of one type: number them, so their logged means stay apart
        built = [Reward(reward.grader, reward.weight, f"{reward.name}_{n}") for n, reward in enumerate(built, 1)]
    return built


def _build_one(number: int, spec: Any) -> Reward:
    if not isinstance(spec, Mapping):
        raise RewardSpecError(f'reward {number} must be an object such as {{"type": "exact_match", "weight": 1}}')
    options = dict(spec)
    weight = options.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight != weight or abs(weight) > 100:
        raise RewardSpecError(f"reward {number}: weight must be a number between -100 and 100, such as 1")
    grader_type = options.get("type")
    if grader_type in UNAVAILABLE_TYPES:
        raise RewardSpecError(f"reward {number}: {UNAVAILABLE_TYPES[str(grader_type)]}")
    try:
        grader = graders.build(options)
    except graders.GraderSpecError as error:
        choices = f"; choose one of {', '.join(REWARD_TYPES)}" if error.field == "type" else ""
        raise RewardSpecError(f"reward {number}: {error}{choices}") from error
    return Reward(grader=grader, weight=float(weight), name=f"{grader.type}_reward")


def describe(specs: Any) -> list[str]:
    """Each reward in words for a page or a model card ("Exact match (ignore_case: true), weight 1")."""
    described = []
    for spec in specs if isinstance(specs, list) else []:
        if not isinstance(spec, Mapping):
            continue
        grader_class = graders.GRADER_CLASSES.get(str(spec.get("type")))
        label = grader_class.label if grader_class else str(spec.get("type"))
        options = ", ".join(
            f"{key}: {json.dumps(value, ensure_ascii=False)}"
            for key, value in spec.items()
            if key not in ("type", "weight")
        )
        weight = spec.get("weight", 1)
        weight = weight if isinstance(weight, int | float) and not isinstance(weight, bool) else 1
        described.append(f"{label}{f' ({options})' if options else ''}, weight {weight:g}")
    return described
