"""The demo task (``evals_app/demo.py``): the starter model cannot answer Kestrel Coffee's support questions, the
demo's training run (the Narrow task LoRA preset) teaches it to, and ``manage.py seed_demo_evals`` puts the task in
the demo team.

The run is real (the trainer engine on CPU, the shipped settings and training file) and so are the answers
(greedy, through the starter model's chat template, as an eval run asks them), graded by the suite's graders.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command

from datasets_app import services as datasets
from datasets_app.models import Dataset
from evals_app import demo
from evals_app.models import EvalSuite
from evals_app.prompts import EvalItem, read_items
from tests.conftest import ROOT, trained_model
from training_app import presets
from training_app.engine import graders

TRAIN_FILE = datasets.SAMPLES_DIR / datasets.SAMPLES[demo.TRAIN_SAMPLE][1]
EVAL_FILE = datasets.SAMPLES_DIR / datasets.SAMPLES[demo.EVAL_SAMPLE][1]


def eval_items() -> list[EvalItem]:
    return list(read_items(EVAL_FILE, "chat"))


def pass_rate(model: Any, tokenizer: Any) -> float:
    """The share of the suite's rows whose greedy answer passes every shipped grader."""
    import torch

    built = [graders.build(entry["grader"]) for entry in demo.GRADERS]
    items = eval_items()
    passed = 0
    model.eval()
    for item in items:
        prompt = tokenizer.apply_chat_template(item.messages, add_generation_prompt=True, tokenize=False)
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=settings.EVAL_MAX_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        passed += all(grader.grade(answer, item.reference_for(grader.type)).passed for grader in built)
    return passed / len(items)


def load(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True)


# What decides the demo run's adapter besides its settings and training file: the training engine's code and the
# presets it is configured from. A change to any of them trains it again.
DEMO_RUN_SOURCES = (
    *sorted((ROOT / "training_app" / "engine").glob("*.py")), ROOT / "training_app" / "presets.py",
    ROOT / "evals_app" / "demo.py",
)  # fmt: skip


@pytest.fixture(scope="module")
def demo_adapter(starter_model_path: Path) -> Path:
    """The adapter the demo's training run makes: the ``demo.TRAINING_PRESET`` preset on the training file (no
    checkpoints or sample generations: the test reads the adapter only). A real 648-step run, about three minutes of
    a busy worker: cached (``trained_model``), keyed also by ``DEMO_RUN_SOURCES``."""
    job_config = presets.nest(presets.apply_preset(demo.TRAINING_PRESET, demo.TRAINING_CHANGES))
    settings = {key: value for key, value in job_config.items() if key not in presets.LAUNCH_ONLY} | {
        "kind": "chat", "use_cpu": True, "save_steps": 100_000, "logging_steps": 50, "generation_prompts": 0,
    }  # fmt: skip
    return trained_model(
        starter_model_path, "demo-adapter", settings, TRAIN_FILE, also=DEMO_RUN_SOURCES, artifact="adapter"
    )


def test_eval_questions_are_not_training_rows() -> None:
    trained = {item.question for item in read_items(TRAIN_FILE, "chat")}
    assert not trained & {item.question for item in eval_items()}


def test_starter_model_answers_almost_none_of_the_demo_questions(starter_model_path: Path) -> None:
    from transformers import AutoTokenizer

    assert pass_rate(load(starter_model_path), AutoTokenizer.from_pretrained(str(starter_model_path))) <= 0.1


@pytest.mark.timeout(
    900
)  # a real 648-step run when not cached: about a minute on an idle machine, longer on a busy one
def test_demo_training_run_answers_most_demo_questions(starter_model_path: Path, demo_adapter: Path) -> None:
    from peft import PeftModel
    from transformers import AutoTokenizer

    tuned = PeftModel.from_pretrained(load(starter_model_path), str(demo_adapter))
    assert pass_rate(tuned, AutoTokenizer.from_pretrained(str(demo_adapter))) >= 0.6


def test_seed_demo_evals_gives_the_demo_team_its_suite_once(db: None) -> None:
    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo_evals", stdout=io.StringIO())
    call_command("seed_demo_evals", stdout=io.StringIO())

    suites = list(EvalSuite.objects.unscoped().filter(team__slug="demo"))
    assert [suite.name for suite in suites] == [demo.SUITE_NAME]
    version = suites[0].dataset_version
    assert (version.status, version.row_count) == ("ready", len(eval_items()))
    names = Dataset.objects.unscoped().filter(team__slug="demo").values_list("name", flat=True)
    assert sorted(names) == sorted(datasets.SAMPLES[sample][0] for sample in (demo.TRAIN_SAMPLE, demo.EVAL_SAMPLE))


def test_demo_team_dashboard_gives_the_three_steps(db: None, login: Any) -> None:
    from django.contrib.auth import get_user_model

    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo_evals", stdout=io.StringIO())

    page = login(get_user_model().objects.get(username="demo")).get("/t/demo/").content.decode()
    assert "Try the demo" in page
    assert "?preset=narrow-lora" in page and demo.SUITE_NAME in page
