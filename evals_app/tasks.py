"""Celery tasks of the evals app: thin wrappers around services.

Eval and probe runs answer through the inference server (queue ``default``); the forgetting check's perplexity
task goes to the training queue of the version's pool, where models are loaded (see ``forgetting``).
"""

from __future__ import annotations

from celery import shared_task

from evals_app import bias, forgetting, services


@shared_task(name="evals_app.tasks.run_eval_task")
def run_eval_task(run_id: int) -> None:
    """Answer, grade and summarize one queued eval run (idempotent: a second delivery does nothing), then let a
    forgetting check waiting for it conclude."""
    services.run_eval(run_id)
    forgetting.conclude_for_run(run_id)


@shared_task(name="evals_app.tasks.measure_forgetting_task")
def measure_forgetting_task(check_id: int) -> None:
    """Measure a forgetting check's perplexities (base and version) and conclude it when its runs are done."""
    forgetting.measure_perplexity(check_id)


@shared_task(name="evals_app.tasks.run_probe_task")
def run_probe_task(run_id: int) -> None:
    """Answer, score and summarize one queued bias probe run (idempotent)."""
    bias.run_probe(run_id)


@shared_task(name="evals_app.tasks.distill_task")
def distill_task(distillation_id: int) -> None:
    """Answer a distillation's prompts with its teacher and make the kept answers a dataset (idempotent)."""
    from evals_app import distill

    distill.run(distillation_id)


@shared_task(name="evals_app.tasks.maintenance_tick")
def maintenance_tick() -> dict[str, int]:
    """Start retrains that new data calls for, and move those in flight through their gate (beat)."""
    from evals_app import maintenance

    return maintenance.tick()
