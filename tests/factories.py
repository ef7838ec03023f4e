"""Factories for the test suite: users, teams and memberships with a chosen role."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import get_hasher, make_password

from accounts.models import Membership, Team
from accounts.roles import Role

PASSWORD = "correct-horse-battery-staple"


@functools.cache
def _password_hash(algorithm: str) -> str:
    return make_password(PASSWORD, salt="atelier-tests", hasher=algorithm)


def hashed_password() -> str:
    """``PASSWORD`` hashed with the current first hasher, once per hasher: every test user shares the hash. Tests
    that log in to a separate server process keep the real hasher (PBKDF2, 0.25 s of CPU per hash here), and
    hashing once instead of for each user they create saves those seconds many times over."""
    return _password_hash(get_hasher().algorithm)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.LazyFunction(hashed_password)

    @factory.post_generation
    def _save(obj: Any, create: bool, extracted: Any, **kwargs: Any) -> None:
        if create:
            obj.save()


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Team {n}")
    slug = factory.Sequence(lambda n: f"team-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    team = factory.SubFactory(TeamFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.MEMBER


def member(team: Team, role: str, username: str | None = None) -> Any:
    """A new user who belongs to ``team`` with ``role``."""
    user = UserFactory(username=username) if username else UserFactory()
    MembershipFactory(team=team, user=user, role=role)
    return user


def ready_version(
    team: Team, owner: Any, rows: list[dict[str, Any]], *, kind: str = "text", name: str = "Notes"
) -> Any:
    """A dataset whose first version is validated and ready, its rows written under MEDIA_ROOT."""
    import hashlib
    import json

    from datasets_app.models import Dataset, DatasetVersion, VersionStatus

    dataset = Dataset.objects.create(team=team, name=name, created_by=owner)
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    version = DatasetVersion.objects.create(
        team=team,
        dataset=dataset,
        number=1,
        created_by=owner,
        status=VersionStatus.READY,
        kind=kind,
        row_count=len(rows),
        content_hash=hashlib.sha256(body).hexdigest(),
        rows_size=len(body),
        progress=1.0,
        recipe={"step": "upload", "filename": "notes.jsonl"},
        source_name="notes.jsonl",
        source_size=len(body),
        report={"total_rows": len(rows), "valid_rows": len(rows), "problems": {}},
    )
    version.folder().mkdir(parents=True, exist_ok=True)
    version.rows_path.write_bytes(body)
    version.source_path.write_bytes(body)
    from datasets_app.engine.stats import compute_stats

    version.stats = compute_stats(rows, kind=kind)
    version.save(update_fields=["stats"])
    return version


def sample_version(team: Team, owner: Any, sample: str = "chat", *, name: str | None = None) -> Any:
    """A ready dataset version of one of the studio's sample files, normalized by the real validator."""
    import json
    import tempfile
    from pathlib import Path

    import datasets_app
    from datasets_app.engine.validate import validate_file

    path = Path(datasets_app.__file__).parent / "samples" / f"{sample}.jsonl"
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rows.jsonl"
        report = validate_file(path, filename=path.name, out_path=out)
        assert report.kind is not None and report.valid_rows == report.total_rows, report
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return ready_version(team, owner, rows, kind=str(report.kind), name=name or f"Sample {sample}")


def starter_like_base_model() -> Any:
    """A ready base model row with the starter model's facts (as ``register_model_folder`` reads them), no files.

    Shared with every team, as the starter model is: enough for forms, estimates, pages and permissions.
    """
    from training_app.engine.starter import CHAT_TEMPLATE, DESCRIPTION, LICENSE, STARTER_MODEL_NAME
    from training_app.models import BaseModel

    details = {"hidden_size": 256, "layers": 4, "attention_heads": 4, "key_value_heads": 2, "intermediate_size": 688,
               "tie_word_embeddings": True, "torch_dtype": "float32"}  # fmt: skip
    return BaseModel.objects.create(
        name=STARTER_MODEL_NAME, source=BaseModel.Source.STARTER, path=f"/nonexistent/{STARTER_MODEL_NAME}",
        architecture="LlamaForCausalLM", parameter_count=3_950_848, context_length=1024, vocab_size=4096,
        chat_template=CHAT_TEMPLATE, license=LICENSE, description=DESCRIPTION, details=details,
    )  # fmt: skip


# A complete model card: a deployment publishes a version only with all three written (serving_app.deployments).
CARD_USES: dict[str, str] = {
    "intended_use": "Answering the team's support questions in tests.",
    "out_of_scope": "Anything outside the test suite.",
    "limitations": "A tiny test model: its answers are not to be trusted.",
}


def finished_job(team: Team, owner: Any, base_model: Any, version: Any, *, name: str = "support bot") -> Any:
    """A succeeded training job on ``version`` with a few metrics and its registered model version.

    The model version's folder holds a small adapter config only: enough for pages, cards and downloads.
    Returns (job, model_version).
    """
    from django.utils import timezone

    from training_app import presets
    from training_app.jobs import _lineage
    from training_app.models import JobMetric, JobStatus, ModelVersion, TrainingJob

    now = timezone.now()
    config = presets.nest(presets.defaults())
    job = TrainingJob.objects.create(
        team=team, name=name, base_model=base_model, dataset_version=version, pool="cpu", config=config,
        lineage=_lineage(base_model, version), status=JobStatus.SUCCEEDED, phase="succeeded", step=4, max_steps=4,
        created_by=owner, started_at=now, finished_at=now,
        result={"eval_loss_before": 3.2, "eval_loss_after": 2.1, "perplexity_before": 24.5, "perplexity_after": 8.2,
                "tokens_per_second": 900.0, "steps": 4,
                "generations": [{"prompt": "Hi", "base": "hello hello", "tuned": "Hello! How can I help?"}]},
    )  # fmt: skip
    JobMetric.objects.bulk_create(
        JobMetric(job=job, seq=step, step=step, values={"step": step, "loss": 4.0 - step / 2, "learning_rate": 1e-4})
        for step in range(1, 5)
    )
    folder = job.folder() / "output" / "adapter"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 16}', encoding="utf-8")
    model_version = ModelVersion.objects.create(
        team=team, name=name, number=1, job=job, base_model=base_model, kind=ModelVersion.Kind.ADAPTER,
        path=str(folder), metrics={"eval_loss_before": 3.2, "eval_loss_after": 2.1}, created_by=owner,
        lineage={**job.lineage, "config": config, "job": {"id": job.pk, "name": name, "pool": "cpu"}}, **CARD_USES,
    )  # fmt: skip
    return job, model_version


def make_lora_adapter(
    base_path: Path, folder: Path, seed: int, *, rank: int = 8, dora: bool = False, targets: Any = ("q_proj", "v_proj")
) -> Path:
    """A real PEFT LoRA adapter of the model in ``base_path``, of ``rank`` on ``targets`` (PEFT's
    ``target_modules``: names or ``"all-linear"``), saved (safetensors) in ``folder`` (a DoRA one with ``dora``).

    Random A and B (not PEFT's zero B) scaled up (alpha / r = 8), so greedy answers really differ from the
    base model's and between seeds.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=8 * rank,
        target_modules=targets if isinstance(targets, str) else list(targets),
        init_lora_weights=False,
        use_dora=dora,
    )
    get_peft_model(base, config).save_pretrained(str(folder))
    return folder


def grown_model(base_path: Path, adapter: Path, folder: Path, *, extra_layers: int = 2) -> Path:
    """A larger model of the starter's architecture that answers as the tuned one does: the base with ``adapter``
    merged in, then ``extra_layers`` more decoder layers whose output projections are zero (each adds nothing to
    the residual stream, so greedy answers stay the merged model's). Saved as a full model folder (safetensors,
    tokenizer, generation config) in ``folder``: a teacher bigger than its students."""
    import copy
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True), str(adapter)
    ).merge_and_unload()
    layers = model.model.layers
    for index in range(len(layers), len(layers) + extra_layers):
        layer = copy.deepcopy(layers[-1])
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
        layer.self_attn.layer_idx = index
        layers.append(layer)
    model.config.num_hidden_layers = len(layers)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[0]] * len(layers)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(folder)
    for name in ("generation_config.json",):
        if (base_path / name).exists():
            shutil.copy(base_path / name, folder / name)
    return folder


def starter_deployment(starter_model_path: Path, adapter: Path, *, name: str) -> tuple[Team, Any, Any]:
    """Team acme, its owner's access (alice) and a deployment ``name`` of a LoRA version ("support") of the starter
    model at ``starter_model_path`` with the adapter in ``adapter``: the scene of the tests on a studio process."""
    from accounts.permissions import resolve_access
    from serving_app import deployments
    from training_app import services as training_services
    from training_app.models import BaseModel

    team = Team.objects.create(name="Acme", slug="acme")
    alice = member(team, Role.OWNER, "alice")
    access = resolve_access(alice, team.slug)
    starter = training_services.register_model_folder(
        path=starter_model_path, name=training_services.STARTER_MODEL_NAME, source=BaseModel.Source.STARTER
    )
    version = adapter_model_version(team, alice, starter, adapter, name="support")
    return team, access, deployments.create_deployment(access=access, name=name, version=version)


def adapter_model_version(
    team: Team, owner: Any, base_model: Any, folder: Path, *, name: str = "support bot", restricted: bool = False
) -> Any:
    """A model version of kind adapter served from the real adapter in ``folder`` (see ``make_lora_adapter``)."""
    from training_app.models import ModelVersion

    number = ModelVersion.objects.for_team(team).filter(name=name).count() + 1
    return ModelVersion.objects.create(
        team=team, name=name, number=number, base_model=base_model, kind=ModelVersion.Kind.ADAPTER,
        path=str(folder), restricted=restricted, created_by=owner,
        lineage={"base_model": {"name": base_model.name, "path": base_model.path}}, **CARD_USES,
    )  # fmt: skip


def full_model_version(team: Team, owner: Any, base_model: Any, folder: Path, *, name: str) -> Any:
    """A model version of kind full served from the whole model in ``folder`` (a fine-tune of ``base_model``)."""
    from training_app.models import ModelVersion

    number = ModelVersion.objects.for_team(team).filter(name=name).count() + 1
    return ModelVersion.objects.create(
        team=team, name=name, number=number, base_model=base_model, kind=ModelVersion.Kind.FULL, path=str(folder),
        created_by=owner, lineage={"base_model": {"name": base_model.name, "path": base_model.path}}, **CARD_USES,
    )  # fmt: skip


# --- tools --------------------------------------------------------------------------------------

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"order_id": {"type": "string", "description": "The order number, e.g. A-1042"}},
    "required": ["order_id"],
}


def http_tool_form(**overrides: Any) -> dict[str, Any]:
    """The fields of the "New HTTP tool" page for a valid read-only order lookup (no secret headers)."""
    import json

    return {
        "name": "lookup_order", "description": "Look up an order's status by its number.", "risk": "read",
        "method": "GET", "url": "https://api.example.com/orders/{order_id}", "parameters": json.dumps(ORDER_SCHEMA),
        "query_args": "", "body_args": "", "result_path": "", "timeout_s": 10, "max_response_bytes": 100_000,
        "rate_limit_per_minute": 30, "secret_headers": "", **overrides,
    }  # fmt: skip


def sql_tool_form(**overrides: Any) -> dict[str, Any]:
    """The fields of the "New SQL tool" page for a valid fixed query."""
    import json

    return {
        "name": "order_status", "description": "The status of an order, from the sales database.", "risk": "read",
        "mode": "fixed", "query": "SELECT status FROM orders WHERE id = %(order_id)s",
        "parameters": json.dumps(ORDER_SCHEMA), "timeout_ms": 5000, "max_rows": 100, "rate_limit_per_minute": 30,
        "dsn": "postgresql://reader:reader-pw@db.example.com:5432/sales", **overrides,
    }  # fmt: skip


def sample_tool(team: Team, owner: Any, *, name: str = "lookup_order") -> Any:
    """A valid HTTP tool of ``team`` (no secret), saved directly: for pages that need one to show."""
    from tools_app.models import Tool

    return Tool.objects.create(
        team=team, name=name, description="Look up an order's status by its number.", kind=Tool.Kind.HTTP,
        parameters=ORDER_SCHEMA, created_by=owner,
        config={"method": "GET", "url": "https://api.example.com/orders/{order_id}", "query_args": [],
                "body_args": [], "timeout_s": 10, "max_response_bytes": 100_000, "result_path": "",
                "secret_header_names": []},
    )  # fmt: skip
