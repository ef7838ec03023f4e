"""Reinforcement fine-tuning (GRPO): the team's graders as rewards, on a prompt set with references.

The learning tests run real TRL on the starter model on CPU. The starter model answers in word salad, so an
exact-match reward against a sentence would never fire: the prompt set asks for a one-word answer the model
already gives now and then ("A" is among its likeliest first words), and answers are one token long. Some
sampled answers earn the reward from the first step, which is what GRPO needs to learn anything; with a
fixed seed the mean reward climbs from near 0 to near 1 within a few steps.

The form, API, estimate and page tests need no training: jobs are created inside the test transaction, so
nothing is dispatched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from accounts.models import AuditEvent, Team
from accounts.permissions import resolve_access
from tests.factories import ready_version, sample_version
from tests.test_training_jobs import REAL_RUN, assert_loadable, wait_finished
from tests.test_training_pages import field_html, form_data
from training_app import estimator, jobs
from training_app.engine.config import RunConfig
from training_app.engine.prompt_sets import prompt_item
from training_app.engine.rewards import build_rewards
from training_app.engine.trainer import run
from training_app.models import JobMetric, JobStatus, TrainingJob

QUESTIONS = [
    "What color is the sky?",
    "Is the sun hot?",
    "Say yes.",
    "What is the capital of France?",
    "Which animal says meow?",
    "Reply with one word: ok",
    "How do I water a plant?",
    "What keeps bread fresh?",
]
ONE_WORD_ROWS = [
    {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "A"}]}
    for question in QUESTIONS
]
EXACT_MATCH = [{"type": "exact_match", "weight": 1}]
# Eight answers per prompt, two prompts per step, one token per answer; a high rate for a few steps, no KL term.
# Measured with seed 42: the mean reward went 0, 0.06, 0.13, 0.75, 0.94, 1.0 over the six steps.
LEARNING = {
    "stage": "grpo",
    "rewards": EXACT_MATCH,
    "num_generations": 8,
    "max_completion_length": 1,
    "per_device_batch_size": 16,
    "learning_rate": 5e-3,
    "warmup_ratio": 0.0,
    "grpo_beta": 0.0,
    "max_steps": 6,
    "save_steps": 1000,
    "seed": 42,
}


def write_rows(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def engine_config(model: Path, tmp_path: Path, **overrides: Any) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model_path": str(model),
            "train_path": write_rows(tmp_path / "train.jsonl", ONE_WORD_ROWS),
            "output_dir": str(tmp_path / "output"),
            "run_dir": str(tmp_path / "run"),
            "kind": "chat",
            "use_cpu": True,
            "generation_prompts": 0,
            **LEARNING,
            **overrides,
        }
    )


def logged_rewards(config: RunConfig) -> list[float]:
    lines = (Path(config.run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [entry["reward"] for entry in map(json.loads, lines) if entry.get("reward") is not None]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ---- the engine: real TRL on the starter model ---------------------------------------------------------------


def test_grpo_with_an_exact_match_reward_raises_the_mean_reward(starter_model_path: Path, tmp_path: Path) -> None:
    config = engine_config(starter_model_path, tmp_path)

    outcome = run(config)

    assert outcome.status == "succeeded", outcome.failure
    rewards = logged_rewards(config)
    assert len(rewards) == 6
    assert mean(rewards[-3:]) > mean(rewards[:3]) + 0.3, rewards
    assert outcome.result is not None
    assert outcome.result["reward_last"] > outcome.result["reward_first"]
    assert (Path(outcome.result["artifacts"]["adapter"]) / "adapter_model.safetensors").is_file()


def test_grpo_full_fine_tune_with_a_kl_term_saves_a_whole_model(starter_model_path: Path, tmp_path: Path) -> None:
    config = engine_config(starter_model_path, tmp_path, method="full", grpo_beta=0.04, learning_rate=1e-4,
                           max_steps=2)  # fmt: skip

    outcome = run(config)

    assert outcome.status == "succeeded", outcome.failure
    assert outcome.result is not None
    assert (Path(outcome.result["artifacts"]["model"]) / "model.safetensors").is_file()
    lines = (Path(config.run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert any("kl" in json.loads(line) for line in lines)  # the KL term to the reference model was measured


# ---- prompts and rewards --------------------------------------------------------------------------------------


def test_a_chat_rows_prompt_is_the_conversation_before_its_last_answer() -> None:
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                        {"role": "assistant", "content": "Hello."}]}  # fmt: skip

    item = prompt_item(1, row, "chat")

    assert item is not None and isinstance(item.prompt, list)
    assert [message["role"] for message in item.prompt] == ["system", "user"]
    assert item.reference_text == "Hello."


def test_an_instruction_rows_reference_is_its_completion() -> None:
    item = prompt_item(3, {"prompt": "2 + 2?", "completion": "4"}, "instruction")

    assert item is not None and (item.prompt, item.reference_text) == ("2 + 2?", "4")


def test_two_rewards_of_one_type_are_logged_apart_with_their_weights() -> None:
    built = build_rewards([{"type": "contains", "strings": ["a"]}, {"type": "contains", "strings": ["b"], "weight": 2}])

    assert [(reward.name, reward.weight) for reward in built] == [
        ("contains_reward_1", 1.0),
        ("contains_reward_2", 2.0),
    ]
    function = built[1].function()
    assert function(prompts=["q", "q"], completions=["a b", "c"], reference=["", ""]) == [1.0, 0.0]


# ---- the form, the API and the estimate ------------------------------------------------------------------------


@pytest.fixture
def chat_version(acme: Any, alice: Any) -> Any:
    return sample_version(acme, alice, "chat")


def acme_jobs() -> Any:
    return TrainingJob.objects.for_team(Team.objects.get(slug="acme"))


def test_the_form_offers_the_reinforcement_goal_with_its_rewards_card(
    alice: Any, login: Any, base_model_row: Any, chat_version: Any
) -> None:
    html = login(alice).get(reverse("training:new", args=["acme"])).content.decode()

    assert 'value="grpo"' in html and "Reinforcement (GRPO)" in html
    card = html[html.index('id="reinforcement"') : html.index('id="presets"')]
    assert "hidden" in card.split(">")[0]  # shown only once the goal is chosen
    assert 'name="rewards"' in card and 'name="num_generations"' in card and 'name="grpo_beta"' in card
    assert "llm_judge" in card


def test_choosing_a_preset_leaves_the_rewards_alone(alice: Any, login: Any, base_model_row: Any) -> None:
    response = login(alice).get(reverse("training:new", args=["acme"]))

    found = re.search(r'id="preset-values"[^>]*>(.*?)</script>', response.content.decode())
    assert found is not None
    values = json.loads(found.group(1))
    assert values and not any("rewards" in preset or "num_generations" in preset for preset in values.values())


@pytest.mark.parametrize(
    ("rewards", "message"),
    [
        ("", "reinforcement needs at least one reward"),
        ('[{"type": "regex"}]', "reward 1: regex.pattern: required"),
        ('[{"type": "llm_judge", "rubric": "Polite."}]', "an LLM judge needs a served model"),
        ("[{", "not valid JSON"),
    ],
)
def test_the_form_refuses_a_grpo_job_without_usable_rewards_next_to_the_field(
    bob: Any, login: Any, base_model_row: Any, chat_version: Any, rewards: str, message: str
) -> None:
    data = form_data(base_model_row, chat_version, stage="grpo", rewards=rewards)

    response = login(bob).post(reverse("training:new", args=["acme"]), data)

    assert response.status_code == 400
    assert message in field_html(response.content, "rewards")
    assert not acme_jobs().exists()


def test_the_api_refuses_a_bad_reward_spec_naming_the_field(
    alice: Any, bearer: Any, base_model_row: Any, chat_version: Any
) -> None:
    body = {"base_model": base_model_row.pk, "dataset_version": chat_version.pk,
            "settings": {"stage": "grpo", "rewards": [{"type": "numeric", "tolerance": "close"}]}}  # fmt: skip

    response = bearer(alice).post("/api/v1/teams/acme/jobs", json.dumps(body), content_type="application/json")

    assert response.status_code == 400, response.content
    assert "reward 1: numeric.tolerance" in json.dumps(response.json())
    assert "rewards" in json.dumps(response.json())
    assert not acme_jobs().exists()


def test_the_api_launches_a_grpo_job_with_its_rewards_stored(
    alice: Any, bearer: Any, base_model_row: Any, chat_version: Any
) -> None:
    body = {"base_model": base_model_row.pk, "dataset_version": chat_version.pk,
            "settings": {"stage": "grpo", "rewards": EXACT_MATCH, "num_generations": 2}}  # fmt: skip

    response = bearer(alice).post("/api/v1/teams/acme/jobs", json.dumps(body), content_type="application/json")

    assert response.status_code in (200, 201), response.content
    job = acme_jobs().get()
    assert (job.config["stage"], job.config["rewards"], job.config["num_generations"]) == ("grpo", EXACT_MATCH, 2)
    launched = AuditEvent.objects.for_team(job.team).get(action="job.launched")
    assert launched.details["rewards"] == ["exact_match"]


def test_answers_per_prompt_must_divide_the_batch(alice: Any, base_model_row: Any, chat_version: Any) -> None:
    values = {"stage": "grpo", "rewards": EXACT_MATCH, "num_generations": 8, "per_device_batch_size": 4}

    _, errors = jobs.check_settings(base_model=base_model_row, dataset_version=chat_version, pool="cpu", values=values)

    assert "micro-batch × gradient accumulation (4 × 1 = 4) must be a multiple of it" in errors["num_generations"]


def test_grpo_with_deepspeed_on_a_cpu_pool_is_refused(alice: Any, base_model_row: Any, chat_version: Any) -> None:
    values = {"stage": "grpo", "rewards": EXACT_MATCH, "deepspeed": "zero2"}

    _, errors = jobs.check_settings(base_model=base_model_row, dataset_version=chat_version, pool="cpu", values=values)

    assert "turn DeepSpeed off on a CPU pool" in errors["deepspeed"]


def test_preference_data_is_refused_for_grpo_on_the_goal(alice: Any, acme: Any, base_model_row: Any) -> None:
    version = sample_version(acme, alice, "preference")
    values = {"stage": "grpo", "rewards": EXACT_MATCH}

    _, errors = jobs.check_settings(base_model=base_model_row, dataset_version=version, pool="cpu", values=values)

    assert "use chat or instruction data" in errors["stage"]


def test_the_estimate_counts_sampled_answers_and_the_reference_model() -> None:
    shape = estimator.ModelShape.from_details(
        3_950_848, {"hidden_size": 256, "layers": 4, "attention_heads": 4, "key_value_heads": 2,
                    "intermediate_size": 688, "tie_word_embeddings": True}, 1024, 4096,
    )  # fmt: skip
    pool = estimator.Pool.from_settings("gpu", {"accelerator": "cuda", "devices": 1, "memory_gib": 80})
    grpo = {"stage": "grpo", "method": "full", "num_generations": 4, "max_completion_length": 64,
            "per_device_batch_size": 8, "epochs": 1.0, "grpo_beta": 0.0}  # fmt: skip

    without_kl = estimator.estimate(grpo, shape, pool, dataset_rows=100, dataset_tokens=3000)
    with_kl = estimator.estimate({**grpo, "grpo_beta": 0.04}, shape, pool, dataset_rows=100, dataset_tokens=3000)

    assert without_kl.optimizer_steps == 50  # 100 prompts, 4 answers each, 8 answers a step
    assert without_kl.memory_breakdown["generation"] > 0
    assert with_kl.memory_breakdown["weights"] == 2 * without_kl.memory_breakdown["weights"]
    assert with_kl.seconds > without_kl.seconds


# ---- the pages ----------------------------------------------------------------------------------------------


def test_the_job_page_charts_the_mean_reward(alice: Any, login: Any, base_model_row: Any, chat_version: Any) -> None:
    job = jobs.create_job(access=resolve_access(alice, "acme"), name="rl", base_model=base_model_row,
                          dataset_version=chat_version, pool="cpu",
                          values={"stage": "grpo", "rewards": EXACT_MATCH})  # fmt: skip
    acme_jobs().filter(pk=job.pk).update(status=JobStatus.RUNNING, step=3, max_steps=10)
    for step, reward in enumerate((0.1, 0.4, 0.9), start=1):
        JobMetric.objects.create(job=job, seq=step, step=step, values={"loss": 0.0, "reward": reward,
                                 "rewards/exact_match_reward/mean": reward})  # fmt: skip

    html = login(alice).get(reverse("training:job", args=["acme", job.pk]) + "?part=live").content.decode()

    assert 'aria-label="Mean reward' in html
    assert "mean reward: 0.9 at step 3" in html


# ---- through the real worker ---------------------------------------------------------------------------------


@REAL_RUN
@pytest.mark.integration
@pytest.mark.django_db(transaction=True)  # the job is sent to the worker when its transaction commits
def test_a_grpo_job_makes_a_model_version_that_says_how_it_was_trained(
    celery_worker: None, alice: Any, login: Any, starter_model: Any
) -> None:
    version = ready_version(alice.memberships.first().team, alice, ONE_WORD_ROWS * 2, kind="chat", name="One word")
    values = {**LEARNING, "eval_split": 0.0, "max_steps": 4, "rewards": [{"type": "exact_match", "weight": 2}]}
    job = jobs.create_job(access=resolve_access(alice, "acme"), name="one word", base_model=starter_model,
                          dataset_version=version, pool="cpu", values=values)  # fmt: skip

    job = wait_finished(job)

    assert job.status == JobStatus.SUCCEEDED, (job.failure, job.log_tail)
    assert [step for step, _ in jobs.reward_series(job)["mean reward"]] == [1, 2, 3, 4]
    model_version = job.model_version
    assert_loadable(model_version)
    html = login(alice).get(reverse("training:version", args=["acme", model_version.pk])).content.decode()
    goal = html[html.index('id="training-goal"') : html.index("</dd>", html.index('id="training-goal"'))]
    assert "Reinforcement (GRPO)" in goal and "Exact match" in goal and "weight 2" in goal
    assert "Mean reward (first → last steps)" in html
