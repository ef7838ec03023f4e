"""Inspect a model folder without loading it: safety checks and the facts the model page shows.

Nothing here imports torch or runs the model's code: the checks read JSON files and the headers of
the safetensors files (8-byte little-endian length, then a JSON table of tensor shapes).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Pickle-based weight formats can execute code when loaded: the studio never accepts them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100 * 1024 * 1024


class UnsafeModel(ValueError):
    """The folder holds something the studio refuses to load; the message says what and why."""


@dataclass
class ModelFacts:
    architecture: str
    parameter_count: int
    context_length: int
    vocab_size: int
    chat_template: str
    license: str
    description: str
    details: dict[str, Any] = field(default_factory=dict)


def check_safe(folder: Path) -> None:
    """Refuse pickled weights and custom code (``trust_remote_code`` is never turned on)."""
    if not (folder / "config.json").is_file():
        raise UnsafeModel(f"{folder} has no config.json: it is not a transformers model folder.")
    files = [path for path in folder.rglob("*") if path.is_file()]
    pickled = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UnsafeModel(
            f"Refused: {', '.join(pickled)} are pickle files, which can run code when loaded. "
            "Convert the weights to safetensors (e.g. save_pretrained(..., safe_serialization=True))."
        )
    code = sorted(p.name for p in files if p.suffix == ".py")
    config = json.loads((folder / "config.json").read_text())
    if code or config.get("auto_map"):
        raise UnsafeModel(
            "Refused: this model needs its own Python code (trust_remote_code), which the studio never runs. "
            "Use a model whose architecture is built into transformers."
        )
    if not any(p.suffix == ".safetensors" for p in files):
        raise UnsafeModel(f"{folder} has no .safetensors weights.")


def parameter_count(folder: Path) -> int:
    """Sum of the tensor sizes declared in the folder's safetensors headers (weights are not read)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > MAX_HEADER_BYTES:
                raise UnsafeModel(f"{path.name} declares an implausible header of {length} bytes.")
            header = json.loads(handle.read(length))
        total += sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    return total


def inspect_model(folder: Path) -> ModelFacts:
    """Check the folder is safe, then read what the model page and the estimator need."""
    check_safe(folder)
    config = json.loads((folder / "config.json").read_text())
    tokenizer_config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text()) if tokenizer_config_path.exists() else {}
    template_file = folder / "chat_template.jinja"
    chat_template = template_file.read_text() if template_file.exists() else tokenizer_config.get("chat_template", "")
    metadata_path = folder / "atelier_model.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    return ModelFacts(
        architecture=str(architectures[0]),
        parameter_count=parameter_count(folder),
        context_length=int(config.get("max_position_embeddings") or 0),
        vocab_size=int(config.get("vocab_size") or 0),
        chat_template=chat_template if isinstance(chat_template, str) else json.dumps(chat_template),
        license=str(metadata.get("license", "")),
        description=str(metadata.get("description", "")),
        details={
            "hidden_size": config.get("hidden_size"),
            "layers": config.get("num_hidden_layers"),
            "attention_heads": config.get("num_attention_heads"),
            "key_value_heads": config.get("num_key_value_heads"),
            "intermediate_size": config.get("intermediate_size"),
            "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
            "torch_dtype": config.get("torch_dtype") or config.get("dtype"),
            **{k: v for k, v in metadata.items() if k not in ("license", "description")},
        },
    )
