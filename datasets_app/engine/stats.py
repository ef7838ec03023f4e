"""Dataset statistics in one streaming pass: sizes, token lengths, turns, roles, duplicates and PII findings.

``compute_stats`` reads normalized rows (``rows``) once and returns a JSON-serializable dict the web layer stores
with the version and draws. Memory stays bounded by the number of *distinct* lengths and turn counts, plus the
two duplicate indexes, which grow with the row count: a 64-bit fingerprint per row for exact duplicates, and a
MinHash signature (512 bytes at 128 permutations) with its datasketch LSH band keys per kept row for near
duplicates — about 4 KB a row in all, so 100 000 rows need about 400 MB.

The duplicate indexes are shared with ``curation.dedupe``, so the counts shown here are exactly the rows a
dedupe of the same mode and threshold removes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, Final

import numpy as np
from datasketch import MinHash, MinHashLSH

from .pii import KINDS as PII_KINDS
from .pii import find_pii
from .rows import ROLES, Kind, Row, row_texts

TokenCounter = Callable[[str], int]

WORD_PIECE_PATTERN: Final = r"\w+|[^\w\s]"
_WORD_PIECE_RE: Final = re.compile(WORD_PIECE_PATTERN)

HISTOGRAM_BINS: Final = 20
EXAMPLES_PER_FINDING: Final = 5
SHINGLE_WORDS: Final = 5
NUM_PERM: Final = 128


def count_tokens_default(text: str) -> int:
    """Approximate token count of ``text``: word pieces and punctuation marks, by the regex ``\\w+|[^\\w\\s]``.

    It approximates what a BPE tokenizer counts for English prose (usually within a few tens of percent, lower
    for code and non-Latin scripts); the web layer passes the chosen base model's real tokenizer instead when
    the team has one.
    """
    return len(_WORD_PIECE_RE.findall(text))


def count_row_tokens(row: Row, count_tokens: TokenCounter | None = None) -> int:
    """Tokens in a row: the sum over every text of the row (``rows.row_texts``), chat template not included."""
    counter = count_tokens or count_tokens_default
    return sum(counter(text) for text in row_texts(row))


# --- duplicates (shared with curation.dedupe) --------------------------------------------------------------------


def row_fingerprint(row: Row) -> int:
    """A 64-bit hash of a row's canonical form: keys sorted, whitespace runs in every string collapsed.

    Two rows with the same fingerprint are exact duplicates: same structure, same roles, same text up to spacing.
    """
    canonical = json.dumps(_collapse_whitespace(row), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=8).digest(), "big")


def _collapse_whitespace(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, list):
        return [_collapse_whitespace(item) for item in value]
    if isinstance(value, dict):
        return {key: _collapse_whitespace(item) for key, item in value.items()}
    return value


class ExactDuplicateIndex:
    """Remembers each distinct row's fingerprint and the index of its first occurrence."""

    def __init__(self) -> None:
        self._first_index: dict[int, int] = {}

    def match_or_add(self, index: int, row: Row) -> int | None:
        """The index of an earlier identical row, or None after remembering this row as the first of its kind."""
        first = self._first_index.setdefault(row_fingerprint(row), index)
        return None if first == index else first


def row_shingles(row: Row) -> set[bytes]:
    """The word 5-shingles of a row's lower-cased text; a shorter text is one shingle, an empty one none.

    System messages are left out: many chat datasets repeat one long system prompt in every row, which would
    make every conversation look like a near duplicate of every other.
    """
    without_system = {
        key: [item for item in value if not (isinstance(item, dict) and item.get("role") == "system")]
        if isinstance(value, list)
        else value
        for key, value in row.items()
    }
    words = re.findall(r"\w+", " ".join(row_texts(without_system)).lower())
    if len(words) <= SHINGLE_WORDS:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i : i + SHINGLE_WORDS]).encode() for i in range(len(words) - SHINGLE_WORDS + 1)}


class NearDuplicateIndex:
    """MinHash signatures of the rows kept so far, in a datasketch LSH index at a Jaccard threshold.

    A row is a near duplicate when the estimated Jaccard similarity of its word 5-shingles with an earlier *kept*
    row (one that was not itself a duplicate) is at least ``threshold``. LSH proposes candidates; each is checked
    against its stored signature, so the threshold is applied to the estimate, not to the LSH banding alone.
    Rows without any word are never near duplicates (exact duplicates still catch identical ones).
    """

    def __init__(self, threshold: float = 0.85, num_perm: int = NUM_PERM) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"The near-duplicate threshold must be in (0, 1], not {threshold}.")
        self.threshold = threshold
        self.num_perm = num_perm
        self._template = MinHash(num_perm=num_perm)
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._signatures = np.empty((1024, num_perm), dtype=self._template.hashvalues.dtype)
        self._row_of_slot: list[int] = []

    def match_or_add(self, index: int, row: Row) -> tuple[int, float] | None:
        """The earlier kept row most similar to this one and its similarity, or None after indexing this row."""
        shingles = row_shingles(row)
        if not shingles:
            return None
        minhash = MinHash(
            num_perm=self.num_perm, permutations=self._template.permutations, scheme=self._template.scheme
        )
        minhash.update_batch(shingles)
        best: tuple[int, float] | None = None
        for slot in self._lsh.query(minhash):
            agreeing = np.count_nonzero(self._signatures[slot] == minhash.hashvalues)
            similarity = float(agreeing) / self.num_perm
            earlier = self._row_of_slot[slot]
            if similarity >= self.threshold and (
                best is None or similarity > best[1] or (similarity == best[1] and earlier < best[0])
            ):
                best = (earlier, similarity)
        if best is None:
            self._add(index, minhash)
        return best

    def _add(self, index: int, minhash: MinHash) -> None:
        slot = len(self._row_of_slot)
        if slot == len(self._signatures):
            self._signatures = np.concatenate([self._signatures, np.empty_like(self._signatures)])
        self._signatures[slot] = minhash.hashvalues
        self._row_of_slot.append(index)
        self._lsh.insert(slot, minhash, check_duplication=False)


# --- distributions ------------------------------------------------------------------------------------------------


def distribution(counts: Counter[int], bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Summary and histogram of integer values given as value → occurrences.

    Returns ``{"count", "total", "mean", "min", "p50", "p95", "max", "histogram"}``. Percentiles are nearest-rank
    (the smallest value with at least p % of the values at or below it). The histogram has at most ``bins``
    bins of equal integer width covering ``min..max``; each is ``{"start", "end", "count"}`` with ``end``
    inclusive. With no values, the summary fields are None and the histogram is empty.
    """
    count = sum(counts.values())
    if count == 0:
        return {"count": 0, "total": 0, "mean": None, "min": None, "p50": None, "p95": None, "max": None,
                "histogram": []}  # fmt: skip
    values = sorted(counts)
    low, high = values[0], values[-1]
    width = max(1, math.ceil((high - low + 1) / bins))
    histogram = [{"start": start, "end": start + width - 1, "count": 0} for start in range(low, high + 1, width)]
    for value, occurrences in counts.items():
        histogram[(value - low) // width]["count"] += occurrences
    total = sum(value * occurrences for value, occurrences in counts.items())
    return {
        "count": count,
        "total": total,
        "mean": round(total / count, 2),
        "min": low,
        "p50": _percentile(values, counts, count, 50),
        "p95": _percentile(values, counts, count, 95),
        "max": high,
        "histogram": histogram,
    }


def _percentile(values: list[int], counts: Counter[int], count: int, percent: int) -> int:
    rank = math.ceil(percent * count / 100)
    seen = 0
    for value in values:
        seen += counts[value]
        if seen >= rank:
            return value
    return values[-1]


# --- statistics ---------------------------------------------------------------------------------------------------


def compute_stats(
    rows: Iterable[Row],
    *,
    kind: str,
    count_tokens: TokenCounter | None = None,
    tokenizer_name: str | None = None,
    near_duplicate_threshold: float = 0.85,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Statistics of a version's normalized rows, in one pass, as a JSON-serializable dict.

    ``kind`` is the dataset kind (``rows.Kind``). ``count_tokens`` counts the tokens of one text; without it
    ``count_tokens_default`` approximates a BPE tokenizer's count, and the web layer passes the base model's
    tokenizer (and its name, recorded as ``tokens.counter``) when the team has one. ``progress``, if given, is
    called with the number of rows read every 1000 rows. Row indices are 0-based positions in ``rows``.

    Keys of the result:

    - ``kind``, ``rows`` (row count);
    - ``tokens``: ``distribution`` of tokens per row (summed over the row's texts) plus ``counter``;
    - ``turns``: ``distribution`` of messages per conversation (every role counted), chat only, else None;
    - ``roles``: messages per role (every role of ``rows.ROLES``, plus any other role met), chat only, else None;
    - ``labels``: ``{"good", "bad"}`` answers per feedback label, feedback only, else None;
    - ``tool_calls``: ``{"rows", "calls": {tool name: calls}}``, rows with at least one call and calls per tool,
      chat only, else None;
    - ``exact_duplicates``: ``{"count", "examples": [{"row", "duplicate_of"}]}``, rows identical to an earlier
      one (``row_fingerprint``);
    - ``near_duplicates``: ``{"count", "threshold", "examples": [{"row", "duplicate_of", "similarity"}]}``,
      rows that are not exact duplicates but have an earlier kept near duplicate (``NearDuplicateIndex``);
      ``exact_duplicates.count + near_duplicates.count`` rows are what a near dedupe removes;
    - ``pii``: for each kind of ``pii.KINDS``, ``{"count", "rows", "examples": [{"row", "masked"}]}`` — findings,
      rows with at least one, and up to five masked examples.
    """
    dataset_kind = Kind(kind)
    counter = count_tokens or count_tokens_default
    token_lengths: Counter[int] = Counter()
    turns: Counter[int] = Counter()
    roles: Counter[str] = Counter({role: 0 for role in ROLES})
    exact_index = ExactDuplicateIndex()
    near_index = NearDuplicateIndex(near_duplicate_threshold)
    exact: dict[str, Any] = {"count": 0, "examples": []}
    near: dict[str, Any] = {"count": 0, "threshold": near_duplicate_threshold, "examples": []}
    pii: dict[str, dict[str, Any]] = {name: {"count": 0, "rows": 0, "examples": []} for name in PII_KINDS}
    labels = {"good": 0, "bad": 0}
    calls: Counter[str] = Counter()
    rows_with_calls = 0
    row_count = 0

    for index, row in enumerate(rows):
        row_count += 1
        texts = row_texts(row)
        token_lengths[sum(map(counter, texts))] += 1
        if dataset_kind is Kind.CHAT:
            messages = [message for message in row.get("messages") or [] if isinstance(message, dict)]
            turns[len(messages)] += 1
            roles.update(str(message.get("role")) for message in messages)
            called = [call["function"]["name"] for message in messages for call in message.get("tool_calls") or ()]
            calls.update(called)
            rows_with_calls += bool(called)
        elif dataset_kind is Kind.FEEDBACK:
            labels["good" if row.get("label") else "bad"] += 1

        if (first := exact_index.match_or_add(index, row)) is not None:
            exact["count"] += 1
            _add_example(exact["examples"], {"row": index, "duplicate_of": first})
        elif match := near_index.match_or_add(index, row):
            near["count"] += 1
            _add_example(near["examples"], {"row": index, "duplicate_of": match[0], "similarity": match[1]})

        kinds_in_row: set[str] = set()
        for text in texts:
            for finding in find_pii(text):
                entry = pii[finding.kind]
                entry["count"] += 1
                kinds_in_row.add(finding.kind)
                _add_example(entry["examples"], {"row": index, "masked": finding.masked})
        for name in kinds_in_row:
            pii[name]["rows"] += 1

        if progress is not None and row_count % 1000 == 0:
            progress(row_count)

    is_chat = dataset_kind is Kind.CHAT
    return {
        "kind": dataset_kind.value,
        "rows": row_count,
        "tokens": {
            "counter": tokenizer_name or ("custom" if count_tokens else f"regex {WORD_PIECE_PATTERN}"),
            **distribution(token_lengths),
        },
        "turns": distribution(turns) if is_chat else None,
        "roles": dict(roles) if is_chat else None,
        "labels": labels if dataset_kind is Kind.FEEDBACK else None,
        "tool_calls": {"rows": rows_with_calls, "calls": dict(calls.most_common())} if is_chat else None,
        "exact_duplicates": exact,
        "near_duplicates": near,
        "pii": pii,
    }


def _add_example(examples: list[dict[str, Any]], example: dict[str, Any]) -> None:
    if len(examples) < EXAMPLES_PER_FINDING:
        examples.append(example)
