"""Perplexity of a model on a text corpus, and of a model version against its base (the forgetting check).

``perplexity(model, tokenizer, texts)`` is the plain measure: the texts joined by newlines, tokenized once (a
beginning-of-text token first, where the tokenizer has one), cut into windows of ``window`` tokens, and
``exp(total negative log-likelihood / predicted tokens)`` over all windows. It is deterministic: the same model
and texts always give the same number.

``compare(base_path, ...)`` measures a version and its base on the same corpus. A LoRA version is loaded once, as
base + adapter: its own perplexity with the adapter on, the base's with the adapter disabled
(``PeftModel.disable_adapter``), so both figures come from one copy of the weights. A full version is a second
model folder. Models load from safetensors only and never run a folder's own code (``trust_remote_code=False``).

Run as ``python -m training_app.engine.perplexity --base DIR [--adapter DIR | --model DIR] --corpus FILE``: the
studio's worker launches it in a subprocess (the worker itself never imports torch) and reads one JSON line
(``{"before": …, "after": …, "tokens": …}``) from its standard output. Nothing here imports Django.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_WINDOW = 256
"""Tokens per window: short enough for any base model's context, long enough to measure fluent text."""


@dataclass(frozen=True)
class Comparison:
    """The base model's perplexity (``before``) and the version's (``after``) on ``tokens`` predicted tokens."""

    before: float
    after: float
    tokens: int


def read_corpus(path: Path) -> list[str]:
    """The corpus's non-empty lines, without ``#`` comment lines (the file's header says where it comes from)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _load(path: str | Path) -> Any:
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, trust_remote_code=False)
    return model.to(_device()).eval()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in a model (or adapter) folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def token_windows(tokenizer: Any, texts: Sequence[str], window: int = DEFAULT_WINDOW) -> list[list[int]]:
    """The corpus as token ids in windows of at most ``window`` (the last may be shorter; one of a single token,
    which predicts nothing, is dropped)."""
    ids = list(tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"])
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    windows = [ids[start : start + window] for start in range(0, len(ids), window)]
    return [chunk for chunk in windows if len(chunk) > 1]


def _negative_log_likelihood(model: Any, windows: Sequence[list[int]]) -> tuple[float, int]:
    import torch

    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for chunk in windows:
            ids = torch.tensor([chunk], device=device)
            # The model's loss is the mean over the window's predicted tokens (all but the first).
            loss = model(input_ids=ids, labels=ids).loss
            predicted = len(chunk) - 1
            total += float(loss) * predicted
            count += predicted
    return total, count


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], *, window: int = DEFAULT_WINDOW) -> float:
    """``model``'s perplexity on ``texts`` (see the module's docstring). Raises ``ValueError`` on an empty corpus."""
    windows = token_windows(tokenizer, texts, window)
    total, count = _negative_log_likelihood(model, windows)
    if not count:
        raise ValueError("the corpus has no text to measure")
    return math.exp(total / count)


def compare(
    base_path: str | Path,
    texts: Sequence[str],
    *,
    adapter_path: str | Path | None = None,
    model_path: str | Path | None = None,
    window: int = DEFAULT_WINDOW,
) -> Comparison:
    """The base model's and the version's perplexity on ``texts``: the version is ``adapter_path`` (a PEFT
    adapter of the base) or ``model_path`` (a whole model); exactly one of them."""
    if (adapter_path is None) == (model_path is None):
        raise ValueError("give the version as an adapter folder or a model folder, not both or neither")
    tokenizer = load_tokenizer(base_path)
    windows = token_windows(tokenizer, texts, window)
    base = _load(base_path)
    if adapter_path is not None:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(base, str(adapter_path), is_trainable=False).eval()
        after, count = _negative_log_likelihood(tuned, windows)
        with tuned.disable_adapter():
            before, _ = _negative_log_likelihood(tuned, windows)
    else:
        before, count = _negative_log_likelihood(base, windows)
        del base
        after, _ = _negative_log_likelihood(_load(str(model_path)), windows)
    if not count:
        raise ValueError("the corpus has no text to measure")
    return Comparison(before=math.exp(before / count), after=math.exp(after / count), tokens=count)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: one JSON line on standard output, or an error message on standard error (exit 1)."""
    parser = argparse.ArgumentParser(description="Perplexity of a model version and its base on a corpus.")
    parser.add_argument("--base", required=True, help="the base model's folder")
    version = parser.add_mutually_exclusive_group(required=True)
    version.add_argument("--adapter", help="the version's PEFT adapter folder")
    version.add_argument("--model", help="the version's whole-model folder")
    parser.add_argument("--corpus", required=True, help="a UTF-8 text file, one passage per line")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    args = parser.parse_args(argv)
    try:
        result = compare(
            args.base, read_corpus(Path(args.corpus)), adapter_path=args.adapter, model_path=args.model,
            window=args.window,
        )  # fmt: skip
    except (OSError, ValueError) as error:
        print(f"{error.__class__.__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
