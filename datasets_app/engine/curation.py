"""Curation steps over normalized rows: dedupe, PII redaction, length filter, train/validation split, mixing.

Each step is a function over iterables of rows that returns a ``CurationRun``: an iterator that produces the new
version's rows lazily (one pass over the input, so a Celery task can stream a file into a file), a ``recipe``
(a JSON-serializable dict, available at once, saying how the rows were made — store it with the new version)
and a ``summary`` of counts (available once every row has been read). Every recipe has a ``"step"`` key.

A typical task::

    run = curation.dedupe(read_rows(parent_path), mode="near", threshold=0.9)
    write_rows(new_path, run)                      # consumes the run
    version.recipe = {**run.recipe, "summary": run.summary}

``split`` yields ``(part, row)`` pairs (``part`` is ``"train"`` or ``"validation"``) so both files are written
in the same pass. ``split`` and ``mix`` need row counts up front; pass them (the parent version's statistics
know them) to stream, or pass sequences, or they read their input into memory first.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from fractions import Fraction
from typing import Any, Final, Generic, Literal, TypeVar

from . import pii
from .rows import Row
from .stats import (
    NUM_PERM,
    SHINGLE_WORDS,
    WORD_PIECE_PATTERN,
    ExactDuplicateIndex,
    NearDuplicateIndex,
    TokenCounter,
    count_row_tokens,
)

T = TypeVar("T")

TRAIN: Final = "train"
VALIDATION: Final = "validation"


class CurationRun(Generic[T]):
    """The lazily produced output of one curation step, with its recipe and (once read) its summary."""

    def __init__(self, recipe: dict[str, Any], produce: Callable[[dict[str, Any]], Iterator[T]]) -> None:
        self.recipe = recipe
        self._summary: dict[str, Any] = {}
        self._items = produce(self._summary)
        self._finished = False

    def __iter__(self) -> CurationRun[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._items)
        except StopIteration:
            self._finished = True
            raise

    @property
    def summary(self) -> dict[str, Any]:
        """Counts of what the step did; raises RuntimeError until every output row has been read."""
        if not self._finished:
            raise RuntimeError("Read every row of the curation run before asking for its summary.")
        return dict(self._summary)


# --- dedupe -------------------------------------------------------------------------------------------------------


def dedupe(rows: Iterable[Row], mode: Literal["exact", "near"] = "exact", threshold: float = 0.85) -> CurationRun[Row]:
    """Rows without duplicates, keeping the first occurrence of each.

    ``exact`` drops rows identical to an earlier one up to whitespace (``stats.row_fingerprint``). ``near`` also
    drops rows whose word 5-shingles have an estimated Jaccard similarity of at least ``threshold`` with an
    earlier kept row (MinHash + LSH, ``stats.NearDuplicateIndex``). The rows removed are exactly the
    ``exact_duplicates`` (and ``near_duplicates``) counted by ``stats.compute_stats`` at the same threshold.

    Recipe: ``{"step": "dedupe", "mode": "exact"}`` or
    ``{"step": "dedupe", "mode": "near", "threshold": 0.85, "num_perm": 128, "shingle_words": 5}``.
    Summary: ``{"rows_in", "rows_out", "removed", "exact_duplicates", "near_duplicates"}``.
    """
    if mode not in ("exact", "near"):
        raise ValueError(f'Dedupe mode must be "exact" or "near", not {mode!r}.')
    recipe: dict[str, Any] = {"step": "dedupe", "mode": mode}
    if mode == "near":
        recipe.update(threshold=threshold, num_perm=NUM_PERM, shingle_words=SHINGLE_WORDS)
    near_index = NearDuplicateIndex(threshold) if mode == "near" else None

    def produce(summary: dict[str, Any]) -> Iterator[Row]:
        exact_index = ExactDuplicateIndex()
        summary.update(rows_in=0, rows_out=0, removed=0, exact_duplicates=0, near_duplicates=0)
        for index, row in enumerate(rows):
            summary["rows_in"] += 1
            if exact_index.match_or_add(index, row) is not None:
                summary["exact_duplicates"] += 1
            elif near_index is not None and near_index.match_or_add(index, row) is not None:
                summary["near_duplicates"] += 1
            else:
                summary["rows_out"] += 1
                yield row
                continue
            summary["removed"] += 1

    return CurationRun(recipe, produce)


# --- PII redaction ------------------------------------------------------------------------------------------------


def redact_pii(rows: Iterable[Row]) -> CurationRun[Row]:
    """Every row with each PII finding in its texts replaced by a typed placeholder (``pii.redact_row``).

    The row count and structure are unchanged. Recipe: ``{"step": "redact_pii", "kinds": [...],
    "placeholders": {"email": "[EMAIL]", ...}}``. Summary: ``{"rows_in", "rows_out", "rows_changed",
    "redacted": {kind: count for every kind}}``.
    """
    recipe: dict[str, Any] = {"step": "redact_pii", "kinds": list(pii.KINDS), "placeholders": dict(pii.PLACEHOLDERS)}

    def produce(summary: dict[str, Any]) -> Iterator[Row]:
        counts: Counter[str] = Counter()
        summary.update(rows_in=0, rows_out=0, rows_changed=0, redacted={kind: 0 for kind in pii.KINDS})
        for row in rows:
            before = sum(counts.values())
            redacted = pii.redact_row(row, counts)
            summary["rows_in"] += 1
            summary["rows_out"] += 1
            summary["rows_changed"] += int(sum(counts.values()) > before)
            yield redacted
        summary["redacted"] = {kind: counts[kind] for kind in pii.KINDS}

    return CurationRun(recipe, produce)


# --- length filter ------------------------------------------------------------------------------------------------


def filter_length(
    rows: Iterable[Row],
    min_tokens: int | None = None,
    max_tokens: int | None = None,
    count_tokens: TokenCounter | None = None,
    tokenizer_name: str | None = None,
) -> CurationRun[Row]:
    """The rows whose token count (summed over their texts) lies within ``min_tokens..max_tokens``, inclusive.

    Either bound may be None (no bound). Without ``count_tokens`` tokens are counted by
    ``stats.count_tokens_default``; with it, ``tokenizer_name`` is required so the recipe can say which
    tokenizer was used. Recipe: ``{"step": "filter_length", "min_tokens", "max_tokens", "tokenizer"}``.
    Summary: ``{"rows_in", "rows_out", "removed", "too_short", "too_long"}``.
    """
    if count_tokens is not None and not tokenizer_name:
        raise ValueError("Name the tokenizer (tokenizer_name) so the new version's recipe can record it.")
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise ValueError(f"The minimum length ({min_tokens}) is above the maximum ({max_tokens}).")
    recipe: dict[str, Any] = {
        "step": "filter_length",
        "min_tokens": min_tokens,
        "max_tokens": max_tokens,
        "tokenizer": tokenizer_name or f"regex {WORD_PIECE_PATTERN}",
    }

    def produce(summary: dict[str, Any]) -> Iterator[Row]:
        summary.update(rows_in=0, rows_out=0, removed=0, too_short=0, too_long=0)
        for row in rows:
            summary["rows_in"] += 1
            tokens = count_row_tokens(row, count_tokens)
            if min_tokens is not None and tokens < min_tokens:
                summary["too_short"] += 1
            elif max_tokens is not None and tokens > max_tokens:
                summary["too_long"] += 1
            else:
                summary["rows_out"] += 1
                yield row
                continue
            summary["removed"] += 1

    return CurationRun(recipe, produce)


# --- train/validation split ---------------------------------------------------------------------------------------


def validation_size(row_count: int, validation_fraction: float) -> int:
    """How many of ``row_count`` rows go to validation: ``floor(row_count × fraction + ½)``, kept in ``1..n−1``.

    The fraction is read as the decimal it is written as (0.1 is exactly one tenth), rounded half up; with two
    rows or more, each side gets at least one row; with fewer, everything is training data.
    E.g. 1000 rows at 0.1 → 100; 15 rows at 0.1 → 2 (1.5 rounds up); 5 rows at 0.05 → 1.
    """
    fraction = _decimal_fraction(validation_fraction)
    if not 0 < fraction < 1:
        raise ValueError(f"The validation fraction must be between 0 and 1 (exclusive), not {validation_fraction}.")
    if row_count < 2:
        return 0
    return min(row_count - 1, max(1, math.floor(row_count * fraction + Fraction(1, 2))))


def split(
    rows: Iterable[Row], validation_fraction: float, seed: int | str, row_count: int | None = None
) -> CurationRun[tuple[str, Row]]:
    """Rows assigned to ``"train"`` or ``"validation"``, yielded as ``(part, row)`` pairs in input order.

    Exactly ``validation_size(n, validation_fraction)`` rows go to validation, chosen uniformly at random by
    selection sampling (Knuth's Algorithm S: row ``i`` is picked with probability
    ``still_needed / (n − i)``, drawing from ``random.Random(f"split:{seed}")``), so the split is the same
    for the same seed and row count, differs between seeds, and needs one pass and constant memory. ``row_count``
    (``n``) must be the number of rows; without it, ``rows`` must be a sequence or is read into memory first.
    A wrong ``row_count`` raises ValueError at the end of the input.

    Recipe: ``{"step": "split", "validation_fraction", "seed", "rows", "validation_rows",
    "method": "selection-sampling"}``. Summary: ``{"rows_in", "train", "validation"}``.
    """
    rows, count = _counted(rows, row_count)
    wanted = validation_size(count, validation_fraction)
    recipe: dict[str, Any] = {
        "step": "split",
        "validation_fraction": validation_fraction,
        "seed": seed,
        "rows": count,
        "validation_rows": wanted,
        "method": "selection-sampling",
    }

    def produce(summary: dict[str, Any]) -> Iterator[tuple[str, Row]]:
        summary.update(rows_in=0, train=0, validation=0)
        picker = _SelectionSampler(count, wanted, f"split:{seed}")
        for row in rows:
            part = VALIDATION if picker.take() else TRAIN
            summary["rows_in"] += 1
            summary[part] += 1
            yield part, row
        _check_count(summary["rows_in"], count, "the dataset")

    return CurationRun(recipe, produce)


# --- mixing -------------------------------------------------------------------------------------------------------


def mix_counts(weights: Sequence[float], available: Sequence[int], total: int | None = None) -> list[int]:
    """Rows to take from each source so the output is ``total`` rows split by ``weights``, never upsampling.

    Weights are proportions of the output (normalized to sum 1, read as the decimals they are written as); a
    weight of 0 takes nothing. Each source's share ``total × weight`` is rounded by the largest-remainder method
    (ties to the earlier source), so the counts add up to ``total`` exactly. ``total`` defaults to the largest
    output in which every exact share fits in its source: ``min(floor(available_i / weight_i))`` over weighted
    sources. A ``total`` that would need more rows than a source has raises ValueError naming the source.
    E.g. weights 0.25/0.75 over 300 and 1000 rows → total 1200, counts 300 and 900.
    """
    if len(weights) != len(available) or not weights:
        raise ValueError("Give one weight per source, and at least one source.")
    exact = [_decimal_fraction(weight) for weight in weights]
    if any(weight < 0 for weight in exact) or sum(exact) == 0:
        raise ValueError("Mixing weights must be zero or positive, and at least one must be positive.")
    shares = [weight / sum(exact) for weight in exact]
    if total is None:
        total = min(math.floor(count / share) for count, share in zip(available, shares, strict=True) if share)
    if total < 0:
        raise ValueError(f"The total number of rows must be zero or positive, not {total}.")
    wanted = [total * share for share in shares]
    counts = [math.floor(value) for value in wanted]
    by_remainder = sorted(range(len(wanted)), key=lambda i: (-(wanted[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i, (count, have) in enumerate(zip(counts, available, strict=True)):
        if count > have:
            raise ValueError(
                f"Source {i + 1} has {have} rows but its weight asks for {count} of {total}; mixing never repeats "
                "rows: lower the total or that source's weight."
            )
    return counts


def mix(
    sources: Sequence[tuple[Iterable[Row], float]],
    seed: int | str,
    total: int | None = None,
    row_counts: Sequence[int] | None = None,
) -> CurationRun[Row]:
    """A weighted mix of several datasets (e.g. open and private data), sampled without replacement.

    ``sources`` are ``(rows, weight)`` pairs; ``mix_counts`` fixes how many rows each contributes (weights are
    proportions of the output; ``total`` defaults to the largest mix that needs no upsampling). Within a source
    the rows are chosen uniformly at random by selection sampling seeded with ``(seed, source position)``, and
    keep their order; the sources are interleaved evenly (the next row comes from the source furthest behind
    its share), so any prefix of the output has roughly the mix's proportions. Deterministic for a seed.
    ``row_counts`` gives each source's row count; without it, sources must be sequences or are read into memory.
    Each source is read once, up to its last chosen row; one that ends early raises ValueError.

    Recipe: ``{"step": "mix", "seed", "total", "sources": [{"weight", "rows", "taken"}, ...],
    "method": "selection-sampling"}`` — the web layer adds each source's version id by position.
    Summary: ``{"rows_out", "taken": [...]}``.
    """
    if row_counts is not None and len(row_counts) != len(sources):
        raise ValueError("Give one row count per source.")
    counted = [
        _counted(rows, None if row_counts is None else row_counts[i]) for i, (rows, _weight) in enumerate(sources)
    ]
    available = [count for _rows, count in counted]
    weights = [weight for _rows, weight in sources]
    taken = mix_counts(weights, available, total)
    recipe: dict[str, Any] = {
        "step": "mix",
        "seed": seed,
        "total": sum(taken),
        "sources": [
            {"weight": weight, "rows": count, "taken": take}
            for weight, count, take in zip(weights, available, taken, strict=True)
        ],
        "method": "selection-sampling",
    }

    def produce(summary: dict[str, Any]) -> Iterator[Row]:
        summary.update(rows_out=0, taken=[0] * len(sources))
        chosen = [
            _chosen_rows(rows, count, take, f"mix:{seed}:{position}", f"source {position + 1}")
            for position, ((rows, count), take) in enumerate(zip(counted, taken, strict=True))
        ]
        emitted = [0] * len(sources)
        for _ in range(sum(taken)):
            # The source furthest behind its share: smallest (emitted + 1) / taken, earliest on ties.
            position = min(
                (i for i in range(len(sources)) if emitted[i] < taken[i]),
                key=lambda i: (Fraction(emitted[i] + 1, taken[i]), i),
            )
            emitted[position] += 1
            summary["rows_out"] += 1
            summary["taken"][position] += 1
            yield next(chosen[position])

    return CurationRun(recipe, produce)


# --- helpers ------------------------------------------------------------------------------------------------------


class _SelectionSampler:
    """Knuth's Algorithm S: pick exactly ``wanted`` of ``count`` items in one pass, each subset equally likely."""

    def __init__(self, count: int, wanted: int, seed: str) -> None:
        self._random = random.Random(seed)
        self._left = count
        self._wanted = wanted

    def take(self) -> bool:
        """Whether the next item is picked (call once per item, in order)."""
        picked = self._left > 0 and self._random.random() * self._left < self._wanted
        self._left -= 1
        self._wanted -= picked
        return picked


def _chosen_rows(rows: Iterable[Row], count: int, wanted: int, seed: str, name: str) -> Iterator[Row]:
    picker = _SelectionSampler(count, wanted, seed)
    found = 0
    if wanted == 0:
        return
    for row in rows:
        if picker.take():
            found += 1
            yield row
            if found == wanted:
                return
    raise ValueError(f"{name.capitalize()} ended before its declared {count} rows; recount its rows.")


def _counted(rows: Iterable[Row], row_count: int | None) -> tuple[Iterable[Row], int]:
    if row_count is not None:
        if row_count < 0:
            raise ValueError(f"A row count cannot be negative ({row_count}).")
        return rows, row_count
    if not isinstance(rows, Sized):
        rows = list(rows)
    return rows, len(rows)


def _check_count(seen: int, declared: int, name: str) -> None:
    if seen != declared:
        raise ValueError(f"{name.capitalize()} has {seen} rows, not the {declared} declared; recount its rows.")


def _decimal_fraction(value: float) -> Fraction:
    """The exact decimal a number is written as (0.1 → 1/10), so rounding rules hold without float error."""
    return Fraction(str(value))
