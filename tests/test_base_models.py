"""The base-model registry: safe folders only, facts read without loading, per-team visibility."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from safetensors.numpy import save_file

from training_app import services
from training_app.models import BaseModel


def model_folder(root: Path, **extra_files: str) -> Path:
    """A minimal Llama-shaped folder: config, tokenizer config with a chat template, two tensors."""
    folder = root / "model"
    folder.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "max_position_embeddings": 1024,
        "vocab_size": 100,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    save_file(
        {"embed": np.zeros((100, 8), dtype=np.float32), "norm": np.zeros((8,), dtype=np.float32)},
        str(folder / "model.safetensors"),
    )
    for name, content in extra_files.items():
        (folder / name.replace("__", ".")).write_text(content)
    return folder


def test_registering_a_folder_reads_its_facts_without_loading_it(tmp_path: Path, db: None) -> None:
    model = services.register_model_folder(path=model_folder(tmp_path), name="tiny", source="server_path")
    assert (model.architecture, model.parameter_count, model.context_length) == ("LlamaForCausalLM", 808, 1024)
    assert model.chat_template == "{{ messages }}" and model.is_global


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"pytorch_model__bin": "pickle"}, "pickle files"),
        ({"modeling_custom__py": "import os"}, "its own Python code"),
    ],
)
def test_pickles_and_custom_code_are_refused(tmp_path: Path, db: None, extra: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        services.register_model_folder(path=model_folder(tmp_path, **extra), name="bad", source="server_path")
    assert message in refused.value.message_dict["path"][0]
    assert not BaseModel.objects.exists()


def test_auto_map_in_the_config_is_refused(tmp_path: Path, db: None) -> None:
    folder = model_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Model"}}))
    with pytest.raises(ValidationError, match="trust_remote_code"):
        services.register_model_folder(path=folder, name="bad", source="server_path")


def test_no_code_loads_pickles_or_trusts_remote_code() -> None:
    """A guard over the source tree: no torch.load without weights_only, never trust_remote_code=True."""
    root = Path(__file__).resolve().parent.parent
    for path in [*root.glob("*_app/**/*.py"), *root.glob("studio/**/*.py"), *root.glob("accounts/**/*.py")]:
        text = path.read_text()
        assert "trust_remote_code=True" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_models_page_lists_shared_and_own_models_only(alice: Any, acme: Any, globex: Any, login: Any) -> None:
    BaseModel.objects.create(name="atelier-starter", source="starter", path="/m/s", parameter_count=5_000_000)
    own = BaseModel.objects.create(team=acme, name="acme-legal", source="server_path", path="/m/a")
    other = BaseModel.objects.create(team=globex, name="globex-secret", source="server_path", path="/m/g")
    client = login(alice)
    page = client.get("/t/acme/models/").content.decode()
    assert "atelier-starter" in page and "5,000,000" in page and "acme-legal" in page
    assert "globex-secret" not in page
    assert client.get(f"/t/acme/models/{own.pk}/").status_code == 200
    assert client.get(f"/t/acme/models/{other.pk}/").status_code == 404
