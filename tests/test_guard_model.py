"""A guard policy with a real guard model: the starter model fine-tuned in the studio's engine to answer
``GUARD_PROMPT`` (tests/conftest.py) in the Llama Guard convention, served by the session's inference server.

The policy blocks what its prompt defines, and its rates on a suite of the same kind of prompts are measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from accounts.permissions import TeamAccess
from evals_app import guard_tests, services
from serving_app import deployments, guardrails
from serving_app.guard_filter import check_prompt
from serving_app.models import Deployment
from tests.conftest import GUARD_PROMPT, GUARD_SAFE, GUARD_UNSAFE
from tests.factories import full_model_version, ready_version
from training_app.models import BaseModel

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(
    inference_server: str, owner: TeamAccess, starter_model: BaseModel, guard_model_path: Path
) -> Deployment:
    guard = full_model_version(owner.team, owner.user, starter_model, guard_model_path, name="guard")
    # The deployment's own model does not matter here: only prompts are checked.
    deployment = deployments.create_deployment(access=owner, name="support-bot", version=guard)
    guardrails.save_policy(
        access=owner, deployment=deployment,
        settings={"guard_model_key": f"version:{guard.pk}", "guard_prompt": GUARD_PROMPT, "guard_checks": "input"},
    )  # fmt: skip
    return deployment


def prompt_check(deployment: Deployment, text: str) -> Any:
    guard = guardrails.guard_for(deployment)
    assert guard is not None
    return async_to_sync(check_prompt)(guard.rules, [{"role": "user", "content": text}], guard.classify)


def test_the_guard_model_blocks_what_its_prompt_defines(deployment: Deployment) -> None:
    blocked = prompt_check(deployment, GUARD_UNSAFE[0])
    assert blocked.blocked is not None
    assert (blocked.blocked.rule, blocked.blocked.category) == ("guard_model", "S2")


def test_the_guard_model_lets_an_ordinary_question_through(deployment: Deployment) -> None:
    assert prompt_check(deployment, GUARD_SAFE[0]).blocked is None


def test_its_rates_on_a_suite_of_its_kind_are_measured(owner: TeamAccess, alice: Any, deployment: Deployment) -> None:
    rows = [{"prompt": text, "completion": "BLOCK"} for text in GUARD_UNSAFE[:3]]
    rows += [{"prompt": text, "completion": "Happy to help."} for text in GUARD_SAFE[:3]]
    version = ready_version(owner.team, alice, rows, kind="instruction", name="Guard suite")
    suite = services.create_suite(access=owner, name="Guard suite", dataset_version=version,
                                  graders=[{"type": "exact_match", "pass_rate": 0.5}])  # fmt: skip
    test = guard_tests.run_test(access=owner, deployment=deployment, suite=suite)
    assert (test.allowed, test.disallowed) == (3, 3)
    assert (test.false_positives, test.false_negatives) == (0, 0)
