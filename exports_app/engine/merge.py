"""A model version as one plain Hugging Face folder: the adapter folded into its base, or a full model copied.

Only safetensors are read and written; ``trust_remote_code`` stays off; a folder with pickles or its own Python code
is refused (``training_app.engine.inspection.check_safe``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from training_app.engine.inspection import PICKLE_SUFFIXES, UnsafeModel, check_safe

# What a model folder may hold besides weights: configs, tokenizers, chat templates, the license.
COPIED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja", ".md")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class ExportError(RuntimeError):
    """The export cannot be made; the message says why and what to do (it is shown on the version's page)."""


def merge_adapter(base_path: Path, adapter_path: Path, output_dir: Path) -> Path:
    """Fold the LoRA adapter in ``adapter_path`` into the model in ``base_path``; save it to ``output_dir``.

    The merged model keeps the base's dtype. ``output_dir`` appears whole or not at all.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_folder(base_path)
    _check_adapter(adapter_path)
    with torch.no_grad():  # not torch.set_grad_enabled(False): that would outlive the call in the caller's process
        base = AutoModelForCausalLM.from_pretrained(
            str(base_path), dtype="auto", use_safetensors=True, trust_remote_code=False
        )
        merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(str(partial), safe_serialization=True)
    tokenizer_source = adapter_path if (adapter_path / "tokenizer.json").is_file() else base_path
    AutoTokenizer.from_pretrained(str(tokenizer_source), trust_remote_code=False).save_pretrained(str(partial))
    for name in ("generation_config.json", "LICENSE", "LICENSE.txt"):
        if (base_path / name).is_file() and not (partial / name).exists():
            shutil.copy2(base_path / name, partial / name)
    _publish(partial, output_dir)
    return output_dir


def copy_full_model(model_path: Path, output_dir: Path) -> Path:
    """Copy a full model's safetensors, configs and tokenizer (nothing else) to ``output_dir``."""
    _check_folder(model_path)
    partial = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in sorted(model_path.iterdir()):
        if path.is_file() and (path.suffix in COPIED_SUFFIXES or path.name.startswith("LICENSE")):
            shutil.copy2(path, partial / path.name)
    _publish(partial, output_dir)
    return output_dir


def _publish(partial: Path, output_dir: Path) -> None:
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(partial, output_dir)


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ExportError(f"The model's files are gone from the server ({folder.name} is missing).")
    try:
        check_safe(folder)
    except UnsafeModel as error:
        raise ExportError(str(error)) from None


def _check_adapter(folder: Path) -> None:
    if not (folder / "adapter_config.json").is_file():
        raise ExportError("The adapter's files are gone from the server (adapter_config.json is missing).")
    pickled = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
    if pickled or not (folder / "adapter_model.safetensors").is_file():
        raise ExportError(
            "The adapter has no adapter_model.safetensors"
            + (f" (it has {', '.join(pickled)}, pickle files the studio never loads)" if pickled else "")
            + ": export needs safetensors weights."
        )
