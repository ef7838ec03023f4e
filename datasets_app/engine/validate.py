"""Validate an uploaded dataset in one streaming pass and write its valid rows in normalized form.

``validate_file`` is what the validation task calls: it detects the format and (unless given) the
schema, normalizes every record, writes the valid rows as JSON Lines to ``out_path`` atomically and
returns a ``ValidationReport`` (JSON-serializable with ``to_dict()``) that counts problems per code with
the first examples and says, in one sentence, how many rows were kept and why the others were dropped.
The rows file therefore already is "keep only valid rows"; a version created from it records the report.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from datasets_app.engine.formats import (
    DEFAULT_MAX_ROW_BYTES,
    LINE_UNITS,
    PROBLEM_CODES,
    Format,
    Problem,
    ReadProgress,
    Record,
    TextSplit,
    UnsupportedFormat,
    detect_format,
    iter_records,
)
from datasets_app.engine.rows import Kind, encode_row
from datasets_app.engine.schemas import (
    SchemaGuess,
    check_mapping,
    columns_of,
    detect_schema,
    normalize,
    suggest_mapping,
)

DEFAULT_MAX_ROW_CHARS = 200_000
"""Default cap on a row's total text (about 50,000 tokens): longer rows are ``row_too_long``."""

SAMPLE_ROWS = 200
"""How many records schema detection looks at."""

_SAMPLE_BYTES = 16 * 1024 * 1024  # ...or fewer, so that a sample of huge rows stays small in memory
_EXAMPLES_PER_CODE = 20
_PROGRESS_INTERVAL_S = 0.1
_WRITE_BUFFER_BYTES = 1024 * 1024


ProgressCallback = Callable[[int, int], None]


@dataclass
class ProblemSummary:
    """All problems of one code: how many, how many rows they dropped, the fix, and the first examples.

    ``count`` counts every occurrence (a row with three empty turns counts three); ``rows`` counts the
    distinct rows that have the problem (what the page shows); ``rows_dropped`` counts each dropped row
    once, under the code of its first problem.
    """

    code: str
    count: int = 0
    rows: int = 0
    rows_dropped: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    last_line: int | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        meaning = PROBLEM_CODES[self.code]
        return {
            "code": self.code,
            "count": self.count,
            "rows": self.rows,
            "rows_dropped": self.rows_dropped,
            "message": meaning.message,
            "hint": meaning.hint,
            "examples": [dict(example) for example in self.examples],
        }


@dataclass
class ValidationReport:
    """The outcome of ``validate_file``.

    Invariant: ``total_rows == valid_rows + sum(p.rows_dropped for p in problems.values())``. Problems
    of scope ``file`` (e.g. a JSON array that is never closed) drop no row by themselves; ``complete``
    is False when reading stopped early or when the schema needs a mapping (then only the first
    records were read, ``needs_mapping`` is True and no rows file was written).
    """

    filename: str
    total_bytes: int
    format: Format | None = None
    kind: Kind | None = None
    mapping: dict[str, str] = field(default_factory=dict)
    total_rows: int = 0
    valid_rows: int = 0
    problems: dict[str, ProblemSummary] = field(default_factory=dict)
    guess: SchemaGuess | None = None
    columns: list[str] = field(default_factory=list)
    needs_mapping: bool = False
    complete: bool = True
    rows_written: bool = False
    content_hash: str | None = None
    bytes_read: int = 0
    max_row_chars: int = DEFAULT_MAX_ROW_CHARS
    # Fields of the upload the normalized rows do not carry (unmapped columns, unknown keys of turns), with
    # how many records held a value in each: the report lists them, so nothing is dropped unseen.
    unused: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_rows(self) -> int:
        return self.total_rows - self.valid_rows

    @property
    def line_unit(self) -> str:
        """What example ``line`` numbers count: "line", "element" (JSON array) or "row" (Parquet)."""
        return LINE_UNITS[self.format] if self.format else "line"

    @property
    def file_problems(self) -> list[dict[str, Any]]:
        """Examples of problems with the file as a whole, in file order."""
        found = [example for summary in self.problems.values() for example in summary.examples]
        return [example for example in found if example["scope"] == "file"]

    def add(self, problem: Problem, *, drops_row: bool) -> None:
        """Count a problem (and the row it drops, when ``drops_row``) and keep it as an example if early."""
        summary = self.problems.get(problem.code)
        if summary is None:
            summary = self.problems[problem.code] = ProblemSummary(problem.code)
        summary.count += 1
        if problem.scope == "row" and (problem.line is None or problem.line != summary.last_line):
            summary.rows += 1  # a row's problems arrive together: a new line is a new row
            summary.last_line = problem.line
        if drops_row:
            summary.rows_dropped += 1
        if problem.stops_reading:
            self.complete = False
        if len(summary.examples) < _EXAMPLES_PER_CODE:
            summary.examples.append(
                {
                    "line": problem.line,
                    "column": problem.column,
                    "field": problem.field,
                    "detail": problem.message,
                    "hint": problem.hint,
                    "scope": problem.scope,
                }
            )

    @property
    def summary(self) -> str:
        """One sentence for the page, e.g. "Kept 9,812 of 10,000 rows; dropped 188: 120 rows with empty turns, …"."""
        if self.needs_mapping:
            reason = self.guess.reason if self.guess else "Choose which columns hold each field."
            return f"Choose the kind of dataset and its columns before validation can finish. {reason}"
        sentences: list[str] = []
        if self.total_rows == 0:
            pass  # the file problems below say why
        elif self.dropped_rows == 0:
            sentences.append(f"All {self.total_rows:,} rows are valid.")
        else:
            reasons = sorted(
                (summary for summary in self.problems.values() if summary.rows_dropped),
                key=lambda summary: (-summary.rows_dropped, summary.code),
            )
            parts = []
            for summary in reasons:
                singular, plural = PROBLEM_CODES[summary.code].row_noun
                parts.append(f"{summary.rows_dropped:,} {singular if summary.rows_dropped == 1 else plural}")
            kept = f"Kept {self.valid_rows:,} of {self.total_rows:,} rows"
            sentences.append(f"{kept}; dropped {self.dropped_rows:,}: {', '.join(parts)}.")
        for example in self.file_problems:
            stop = " Reading stopped there." if not self.complete and example is self.file_problems[-1] else ""
            sentences.append(f"{example['detail']}{stop}")
        if self.unused:
            sentences.append(f"Not used in training: {self.unused_summary}.")
        return " ".join(sentences)

    @property
    def unused_summary(self) -> str:
        """The unused fields in words, most common first: "'label' (300 rows), 'images' (12 rows)"."""
        ranked = sorted(self.unused.items(), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"'{name}' ({rows:,} {'row' if rows == 1 else 'rows'})" for name, rows in ranked)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only, for the version's stored report and the API."""
        return {
            "filename": self.filename,
            "format": self.format.value if self.format else None,
            "line_unit": self.line_unit,
            "kind": self.kind.value if self.kind else None,
            "mapping": dict(self.mapping),
            "total_rows": self.total_rows,
            "valid_rows": self.valid_rows,
            "dropped_rows": self.dropped_rows,
            "problems": {code: summary.to_dict() for code, summary in sorted(self.problems.items())},
            "guess": self.guess.to_dict() if self.guess else None,
            "columns": list(self.columns),
            "needs_mapping": self.needs_mapping,
            "complete": self.complete,
            "rows_written": self.rows_written,
            "content_hash": self.content_hash,
            "bytes_read": self.bytes_read,
            "total_bytes": self.total_bytes,
            "max_row_chars": self.max_row_chars,
            "unused": dict(sorted(self.unused.items(), key=lambda item: (-item[1], item[0]))),
            "summary": self.summary,
        }


class _Throttle:
    """Calls ``progress(bytes_read, total)`` at most every 0.1 s; cheap enough to poke once per row."""

    def __init__(self, callback: ProgressCallback | None, tracker: ReadProgress, total: int) -> None:
        self.callback = callback
        self.tracker = tracker
        self.total = total
        self.next_at = time.monotonic() + _PROGRESS_INTERVAL_S

    def poke(self) -> None:
        if self.callback is not None:
            now = time.monotonic()
            if now >= self.next_at:
                self.next_at = now + _PROGRESS_INTERVAL_S
                self.callback(min(self.tracker.bytes_read, self.total), self.total)

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(self.total, self.total)


def validate_file(
    path: str | Path,
    *,
    filename: str,
    out_path: str | Path,
    kind: Kind | str | None = None,
    mapping: Mapping[str, str] | None = None,
    max_row_chars: int = DEFAULT_MAX_ROW_CHARS,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    progress: ProgressCallback | None = None,
    text_split: TextSplit | str = TextSplit.PARAGRAPHS,
) -> ValidationReport:
    """Read the upload at ``path`` once, write its valid normalized rows to ``out_path``, report the rest.

    ``filename`` is the user's file name (its extension helps detect the format). Without ``kind`` the
    schema is detected from the first ``SAMPLE_ROWS`` records; without ``mapping`` the columns are
    matched by name. When that is ambiguous, or the mapping given does not fit, the report has
    ``needs_mapping`` set and nothing is written: ask the user, then call again with ``kind`` and
    ``mapping``. Otherwise ``out_path`` receives the rows atomically (a temporary file in the same
    folder, then ``os.replace``) and ``content_hash`` is the SHA-256 of its bytes. ``text_split`` says how a
    plain text file is cut into rows (paragraphs or lines). Bad content never
    raises; I/O errors (disk full, missing file) do, and leave no partial ``out_path``.
    """
    total_bytes = os.path.getsize(path)
    report = ValidationReport(filename=filename, total_bytes=total_bytes, max_row_chars=max_row_chars)
    with open(path, "rb") as stream:
        head = stream.read(64 * 1024)
    try:
        report.format = detect_format(filename, head)
    except UnsupportedFormat as error:
        report.add(
            Problem(None, None, None, "unsupported_format", str(error) + ".", scope="file", stops_reading=True),
            drops_row=False,
        )
        return report
    tracker = ReadProgress()
    throttle = _Throttle(progress, tracker, total_bytes)
    records = iter_records(
        path, report.format, max_row_bytes=max_row_bytes, progress=tracker, text_split=TextSplit(text_split)
    )
    try:
        chosen_kind = Kind(kind) if kind is not None else None
        pending: list[Record | Problem] = []
        nothing_readable = False
        if chosen_kind is None or mapping is None:
            pending = _take_sample(records)
            sample = [item.data for item in pending if isinstance(item, Record)]
            report.columns = columns_of(sample)
            nothing_readable = not sample  # the whole file was read and held no record
            if chosen_kind is None:
                report.guess = detect_schema(sample)
                chosen_kind = report.guess.kind
                mapping = mapping or report.guess.mapping
            elif mapping is None:
                mapping = suggest_mapping(chosen_kind, report.columns)
        report.kind = chosen_kind
        report.mapping = dict(mapping or {})
        if not nothing_readable and (chosen_kind is None or check_mapping(chosen_kind, report.mapping)):
            _stop_for_mapping(report, pending, tracker, chosen_kind)
            return report
        _write_rows(report, _chain(pending, records), chosen_kind, out_path, throttle)
    finally:
        records.close()
    report.bytes_read = total_bytes if report.complete else tracker.bytes_read
    throttle.finish()
    return report


def _take_sample(records: Iterator[Record | Problem]) -> list[Record | Problem]:
    """The first items up to ``SAMPLE_ROWS`` records (or ``_SAMPLE_BYTES``), kept to be processed later."""
    taken: list[Record | Problem] = []
    count = size = 0
    for item in records:
        taken.append(item)
        if isinstance(item, Record):
            count += 1
            size += item.size
            if count >= SAMPLE_ROWS or size >= _SAMPLE_BYTES:
                break
    return taken


def _chain(first: list[Record | Problem], rest: Iterator[Record | Problem]) -> Iterator[Record | Problem]:
    first.reverse()
    while first:  # hand the sample over without keeping it alive
        yield first.pop()
    yield from rest


def _stop_for_mapping(
    report: ValidationReport, sampled: list[Record | Problem], tracker: ReadProgress, kind: Kind | None
) -> None:
    """Finish a report that needs the user to choose a kind or columns: count only what was read."""
    report.needs_mapping = True
    report.complete = False
    if kind is not None and report.guess is None:
        report.guess = SchemaGuess(kind, report.mapping, [kind], "The chosen columns do not fit.", [])
    if kind is not None:
        for error in check_mapping(kind, report.mapping):
            report.add(Problem(None, None, None, "invalid_mapping", error, scope="file"), drops_row=False)
    for item in sampled:
        report.total_rows += 1 if isinstance(item, Record) or item.scope == "row" else 0
        if isinstance(item, Problem):
            report.add(item, drops_row=item.scope == "row")
    report.valid_rows = report.total_rows - sum(summary.rows_dropped for summary in report.problems.values())
    report.bytes_read = tracker.bytes_read


def _write_rows(
    report: ValidationReport,
    items: Iterator[Record | Problem],
    kind: Kind | None,
    out_path: str | Path,
    throttle: _Throttle,
) -> None:
    """Normalize every item, write valid rows to a temporary file, then move it to ``out_path``.

    ``kind`` is None only for a file in which no record could be read (all problems, or empty).
    """
    target = Path(out_path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    digest = hashlib.sha256()
    buffered: list[bytes] = []
    buffered_bytes = 0
    mapping = report.mapping
    max_row_chars = report.max_row_chars
    total = valid = 0
    sampled = bool(report.columns)
    try:
        with os.fdopen(handle, "wb") as out:
            for item in items:
                throttle.poke()
                if isinstance(item, Problem):
                    if item.scope == "row":
                        total += 1
                    report.add(item, drops_row=item.scope == "row")
                    continue
                total += 1
                if total <= SAMPLE_ROWS and not sampled:
                    _note_columns(report, item)
                assert kind is not None  # a file with records always has a kind by now (S101 is allowed)
                result = normalize(item, kind, mapping, max_row_chars=max_row_chars, unused=report.unused)
                if isinstance(result, list):
                    for position, problem in enumerate(result):
                        report.add(problem, drops_row=position == 0)
                    continue
                text = encode_row(result)
                try:
                    line = (text + "\n").encode("utf-8")
                except UnicodeEncodeError as error:  # a lone surrogate from a JSON escape such as "\ud800"
                    bad = error.object[error.start : error.start + 1] if isinstance(error.object, str) else ""
                    report.add(
                        Problem(
                            item.line,
                            None,
                            None,
                            "encoding",
                            f"The row holds an unpaired surrogate escape (\\u{ord(bad):04x}), which is not "
                            "valid Unicode."
                            if bad
                            else "The row holds text that is not valid Unicode.",
                            hint="Remove the broken \\uXXXX escape; emoji need both halves of the pair.",
                        ),
                        drops_row=True,
                    )
                    continue
                valid += 1
                buffered.append(line)
                buffered_bytes += len(line)
                if buffered_bytes >= _WRITE_BUFFER_BYTES:
                    _flush(out, digest, buffered)
                    buffered_bytes = 0
            _flush(out, digest, buffered)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    report.total_rows = total
    report.valid_rows = valid
    report.rows_written = True
    report.content_hash = digest.hexdigest() if valid else None  # no rows: no content to identify
    if total == 0 and not report.problems:
        report.add(
            Problem(None, None, None, "empty_file", "The file holds no rows.", scope="file"),
            drops_row=False,
        )


def _note_columns(report: ValidationReport, record: Record) -> None:
    for name in record.data:
        if name not in report.columns:
            report.columns.append(str(name))


def _flush(out: BinaryIO, digest: Any, buffered: list[bytes]) -> None:
    if buffered:
        block = b"".join(buffered)
        digest.update(block)
        out.write(block)
        buffered.clear()


__all__ = [
    "DEFAULT_MAX_ROW_CHARS",
    "SAMPLE_ROWS",
    "ProblemSummary",
    "ValidationReport",
    "validate_file",
]
