"""The demo task: a fine-tune a newcomer can watch pay off on a CPU, with the eval suite that shows it.

Kestrel Coffee's support questions (``datasets_app/samples/demo``) each have one fixed answer. The starter model
answers none of the suite's 30 held-out questions; after the training run below (the "Narrow task LoRA" preset:
Quick LoRA with a higher learning rate and more epochs, about a minute on two idle cores) it answers most of them
word for word. The three steps are written in the suite's description, so the evals pages say what to do.

``seed_demo(access)`` puts the two sample datasets and the suite in a team (``manage.py seed_demo_evals`` runs it
for ``make run``'s demo team). It is idempotent: what the team already has is kept as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accounts.permissions import TeamAccess
from datasets_app import services as datasets
from datasets_app.models import DatasetVersion, VersionStatus
from evals_app import services as evals
from evals_app.models import EvalSuite

TRAIN_SAMPLE = "support"
EVAL_SAMPLE = "support-eval"
SUITE_NAME = "Kestrel Coffee support answers"

TRAINING_PRESET = "narrow-lora"
TRAINING_CHANGES: dict[str, Any] = {}
"""The demo trains with the "Narrow task LoRA" preset: Quick LoRA at 3e-3 for 12 epochs. At Quick LoRA's 2e-4 the
tiny starter model barely moves in a minute (0 of 30 answers); at 3e-3 for 12 epochs it answers 24 of 30 (8
epochs: 18)."""

GRADERS: list[dict[str, Any]] = [{"grader": {"type": "exact_match"}, "pass_rate": 0.6}]
"""An answer passes when it is the fixed answer word for word (spaces aside); the suite asks for 60 % of rows."""

DESCRIPTION = (
    "The demo: does fine-tuning teach the starter model Kestrel Coffee's fixed support answers? "
    "1. Train: New training job, preset Narrow task LoRA, base model atelier-starter, dataset "
    "“Demo: Kestrel Coffee support” (about a minute on two cores). "
    "2. Run this suite on atelier-starter and on the new model version together. "
    "3. Read the pass rates: the starter model answers about 0 % of these held-out questions, the tuned "
    "version most of them, word for word."
)


@dataclass(frozen=True)
class DemoSeed:
    """What ``seed_demo`` left in the team: the two dataset versions, and the suite once its data is ready."""

    train_version: DatasetVersion
    eval_version: DatasetVersion
    suite: EvalSuite | None


def seed_demo(access: TeamAccess) -> DemoSeed:
    """The demo's datasets and eval suite in ``access.team``, added where missing.

    A sample still waiting for the validation task is validated here, in this process (``make run`` seeds before
    its workers start; the task, delivered later, finds the version done and leaves it alone). The suite needs
    a ready eval version: it is None when validation found problems (the dataset page says which).
    """
    train_version = _sample_version(access, TRAIN_SAMPLE)
    eval_version = _sample_version(access, EVAL_SAMPLE)
    suite = evals.visible_suites(access).filter(name__iexact=SUITE_NAME).first()
    if suite is None and eval_version.status == VersionStatus.READY:
        suite = evals.create_suite(
            access=access,
            name=SUITE_NAME,
            dataset_version=eval_version,
            graders=GRADERS,
            description=DESCRIPTION,
        )
    return DemoSeed(train_version, eval_version, suite)


def _sample_version(access: TeamAccess, sample: str) -> DatasetVersion:
    """The latest version of the team's dataset made from ``sample`` (added if the team has none), validated."""
    name = datasets.SAMPLES[sample][0]
    dataset = datasets.visible_datasets(access).filter(name=name).order_by("pk").first()
    latest = DatasetVersion.objects.for_team(access.team).filter(dataset=dataset).order_by("-number").first()
    version = latest if latest is not None else datasets.add_sample(access=access, sample=sample)
    if version.status == VersionStatus.VALIDATING:
        datasets.run_validation(version.pk)
        version.refresh_from_db()
    return version
