"""``manage.py create_starter_model``: create the studio's own small model (once) and register it globally.

``make run`` runs this on every start: the model is created the first time (about a minute on 2 CPU
cores, no download) and found complete afterwards; registering it again only refreshes its facts.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand

from training_app import services
from training_app.models import BaseModel


class Command(BaseCommand):
    help = "Create the starter model under ATELIER_MODELS_DIR if it is missing, and register it for every team."

    def handle(self, *args: Any, **options: Any) -> None:
        import torch

        from training_app.engine.starter import ensure_starter_model

        # Pretraining a 4M-parameter model is fastest with one thread per core and no more.
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        last = {"shown": -1}

        def progress(step: int, steps: int, loss: float) -> None:
            percent = 100 * step // max(steps, 1)
            if percent // 10 != last["shown"]:
                last["shown"] = percent // 10
                self.stdout.write(f"  pretraining the starter model: {percent:3d}% (loss {loss:.2f})")

        path = ensure_starter_model(services.models_dir(), progress=progress)
        model = services.register_model_folder(
            path=path, name=services.STARTER_MODEL_NAME, source=BaseModel.Source.STARTER, team=None
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Starter model ready: {model.name}, {model.parameter_count:,} parameters, at {model.path}."
            )
        )
