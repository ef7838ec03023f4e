"""Streaming readers for uploaded datasets: JSON Lines, JSON (an array of objects), CSV, Parquet and plain text.

Every reader yields, in file order, a ``Record`` for each row it could read or a ``Problem`` saying why
it could not. No reader loads the whole file: JSON Lines and CSV hold one physical line at a time (at
most ``max_row_bytes``), a JSON array one element at a time, Parquet one record batch at a time (a
Parquet row group is the unit pyarrow decompresses, so a file written with huge row groups costs that
much). A plain text file (``.txt``, ``.md``) becomes one ``{"text": …}`` record per paragraph (blank lines
between them) or per line (``TextSplit``), held one record at a time. Malformed input never raises: it
becomes a ``Problem`` with a code from ``PROBLEM_CODES``.

Where a problem sits is given by ``line``, whose unit depends on the format (``LINE_UNITS``): the
physical line for JSON Lines and CSV (the header is line 1), the 1-based element number for a JSON
array (messages also give the physical line), the 1-based row number for Parquet.

JSON is parsed strictly everywhere (also for JSON held in a CSV cell, see ``loads_strict``): NaN,
Infinity and numbers that overflow to infinity are ``non_finite_number``; integers outside the signed
64-bit range (Python's ``json`` would raise ``ValueError`` past 4,300 digits) are ``huge_integer``.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Literal

DEFAULT_MAX_ROW_BYTES = 8 * 1024 * 1024
"""Largest row a reader accepts (a JSON Lines or CSV physical line, a JSON array element)."""

_CHUNK_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_UTF16_OR_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class Format(StrEnum):
    JSONL = "jsonl"
    JSON = "json"
    CSV = "csv"
    PARQUET = "parquet"
    TEXT = "text"


class TextSplit(StrEnum):
    """How a plain text file is cut into rows for continued pretraining."""

    PARAGRAPHS = "paragraphs"
    LINES = "lines"


LINE_UNITS: dict[Format, str] = {
    Format.JSONL: "line",
    Format.JSON: "element",
    Format.CSV: "line",
    Format.PARQUET: "row",
    Format.TEXT: "line",
}
"""What ``Record.line`` and ``Problem.line`` count, per format (for the column heading in a report)."""


@dataclass(frozen=True, slots=True)
class ProblemCode:
    """What a problem code means: a general message, the fix, and how to name rows dropped for it."""

    message: str
    hint: str
    row_noun: tuple[str, str] = ("row with this problem", "rows with this problem")


PROBLEM_CODES: dict[str, ProblemCode] = {
    # Reading the file.
    "unsupported_format": ProblemCode(
        "The file is not in a supported format.",
        "Upload JSON Lines (.jsonl), JSON (.json, an array of objects), CSV (.csv), Parquet (.parquet) or "
        "plain text (.txt, .md).",
    ),
    "encoding": ProblemCode(
        "The text is not valid UTF-8.",
        "Save the file as UTF-8 (in Excel: 'CSV UTF-8'; in an editor: 'Save with encoding → UTF-8').",
        ("row that is not valid UTF-8", "rows that are not valid UTF-8"),
    ),
    "json": ProblemCode(
        "The JSON is malformed.",
        "Fix the JSON at the given line and column (often a missing comma, quote or bracket). In a JSON "
        "Lines file each line must be one complete object.",
        ("row with malformed JSON", "rows with malformed JSON"),
    ),
    "non_finite_number": ProblemCode(
        "NaN, Infinity and -Infinity are not valid JSON numbers.",
        "Replace the value with null or a finite number, or remove the field.",
        ("row with NaN or Infinity", "rows with NaN or Infinity"),
    ),
    "huge_integer": ProblemCode(
        "An integer does not fit in 64 bits.",
        "Store very large numbers as text (in quotes), or remove the field.",
        ("row with a huge integer", "rows with huge integers"),
    ),
    "not_an_object": ProblemCode(
        "A row must be a JSON object with named fields.",
        'Write each row as an object, e.g. {"text": "..."} or {"messages": [...]}.',
        ("row that is not an object", "rows that are not objects"),
    ),
    "not_an_array": ProblemCode(
        "A JSON file must hold an array of row objects.",
        "Put the rows in a top-level array ([{...}, {...}]), or save one object per line as JSON Lines (.jsonl).",
    ),
    "row_too_large": ProblemCode(
        "The row is larger than the size limit.",
        "Split the row into smaller rows or remove it. In a CSV file, check for a quote that is never closed.",
        ("row over the size limit", "rows over the size limit"),
    ),
    "csv": ProblemCode(
        "The CSV row is malformed.",
        'A cell holding commas, quotes or line breaks must be in double quotes, with inner quotes doubled ("").',
        ("malformed CSV row", "malformed CSV rows"),
    ),
    "csv_header": ProblemCode(
        "The CSV file has no usable header row.",
        "The first line must name the columns, e.g. prompt,completion.",
    ),
    "parquet": ProblemCode(
        "The Parquet file could not be read.",
        "Export it again (pandas: DataFrame.to_parquet; pyarrow: pyarrow.parquet.write_table).",
    ),
    "empty_file": ProblemCode("The file holds no rows.", "Upload a file with at least one row."),
    # The schema (see ``schemas``).
    "invalid_mapping": ProblemCode(
        "The column mapping does not fit this kind of dataset.",
        "Choose a source column for every required field.",
    ),
    "missing_field": ProblemCode(
        "A required field is missing.",
        "Add the field to every row, or choose another column for it in the column mapping.",
        ("row with a missing field", "rows with missing fields"),
    ),
    "wrong_type": ProblemCode(
        "A field has the wrong type.",
        "Conversations are lists of {role, content} objects; prompts, answers and texts are strings.",
        ("row with a wrong type", "rows with wrong types"),
    ),
    "empty_conversation": ProblemCode(
        "The conversation has no turns.",
        "Remove the row or add its turns.",
        ("empty conversation", "empty conversations"),
    ),
    "empty_turn": ProblemCode(
        "A turn is empty or only whitespace.",
        "Write the missing text, or remove the turn (or the row).",
        ("row with an empty turn", "rows with empty turns"),
    ),
    "empty_text": ProblemCode(
        "The text is empty or only whitespace.",
        "Remove empty rows.",
        ("empty text", "empty texts"),
    ),
    "unknown_role": ProblemCode(
        "A turn has a role the studio does not know.",
        "Use system, user, assistant or tool (ShareGPT: system, human, gpt, tool).",
        ("row with an unknown role", "rows with unknown roles"),
    ),
    "no_assistant_turn_at_end": ProblemCode(
        "The conversation does not end with an assistant turn.",
        "Fine-tuning learns the assistant's replies: end each conversation with the assistant's answer, "
        "or drop the trailing turns.",
        ("conversation not ending with the assistant", "conversations not ending with the assistant"),
    ),
    "missing_chosen_or_rejected": ProblemCode(
        "A preference row needs both a chosen and a rejected answer.",
        "Fill in both answers, or remove the row.",
        ("row without chosen or rejected", "rows without chosen or rejected"),
    ),
    "identical_chosen_rejected": ProblemCode(
        "The chosen and rejected answers are identical, so the row teaches nothing.",
        "Give a worse rejected answer, or remove the row.",
        ("row with identical answers", "rows with identical answers"),
    ),
    "needs_media": ProblemCode(
        "The row needs images, audio or video, and this studio trains text-only models.",
        "Remove the media columns, parts and <image>-style tags (and the text that talks about them), or train "
        "this data with a multimodal tool.",
        ("row that needs media", "rows that need media"),
    ),
    "bad_tool_schema": ProblemCode(
        "A tool declaration is malformed.",
        'Declare each tool as {"type": "function", "function": {"name": …, "description": …, "parameters": '
        "<a JSON schema object>}}.",
        ("row with a malformed tool declaration", "rows with malformed tool declarations"),
    ),
    "bad_tool_call": ProblemCode(
        "A tool call is malformed.",
        'Write calls as tool_calls: [{"type": "function", "function": {"name": …, "arguments": {…}}}] on an '
        "assistant turn (ShareGPT: a function_call turn whose value is that JSON).",
        ("row with a malformed tool call", "rows with malformed tool calls"),
    ),
    "unknown_tool": ProblemCode(
        "A turn calls a tool the row does not declare.",
        "Declare every tool the conversation calls in the row's 'tools' column, or fix the tool's name.",
        ("row calling an undeclared tool", "rows calling undeclared tools"),
    ),
    "bad_tool_arguments": ProblemCode(
        "A tool call's arguments do not match the tool's parameters.",
        "Fix the arguments (a JSON object with the required properties of the right types), or the tool's "
        "parameter schema.",
        ("row with wrong tool arguments", "rows with wrong tool arguments"),
    ),
    "bad_loss_weight": ProblemCode(
        "A turn's loss weight is not a number of 0 or more.",
        "Use loss_weight 0 for turns that are context only and 1 (or leave it out) for turns to learn.",
        ("row with a bad loss weight", "rows with bad loss weights"),
    ),
    "bad_label": ProblemCode(
        "A feedback label is not true or false.",
        "Label each answer true (a good answer) or false (an answer to avoid); 1/0 and yes/no are read too.",
        ("row with a bad label", "rows with bad labels"),
    ),
    "row_too_long": ProblemCode(
        "The row's text is longer than the length limit.",
        "Shorten or split the row, or raise the limit.",
        ("row over the length limit", "rows over the length limit"),
    ),
}


@dataclass(frozen=True, slots=True)
class Record:
    """One row read from the file: where it starts (see ``LINE_UNITS``), its fields and its size in bytes."""

    line: int
    data: dict[str, Any]
    size: int = 0


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a row (scope ``row``) or the file (scope ``file``) could not be used, in words a user can act on.

    A reader yields exactly one ``row`` problem for each row it had to drop, so rows = records + row
    problems. A ``file`` problem drops no row by itself; ``stops_reading`` says the reader gave up there,
    so rows after that point were not read.
    """

    line: int | None
    column: int | None
    field: str | None
    code: str
    message: str
    hint: str = ""
    scope: Literal["row", "file"] = "row"
    stops_reading: bool = False

    def __post_init__(self) -> None:
        if not self.hint and self.code in PROBLEM_CODES:
            object.__setattr__(self, "hint", PROBLEM_CODES[self.code].hint)


@dataclass(slots=True)
class ReadProgress:
    """Bytes consumed so far by a reader; pass one to ``iter_records`` to watch a long read."""

    bytes_read: int = 0


class UnsupportedFormat(ValueError):
    """The file is none of the supported formats; the message is meant for the user."""


class RowError(ValueError):
    """A JSON value that strict parsing refuses; ``code`` is a key of ``PROBLEM_CODES``.

    ``lineno`` and ``colno`` (1-based, within the parsed text) are set for syntax errors only.
    """

    def __init__(self, code: str, detail: str, lineno: int | None = None, colno: int | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.lineno = lineno
        self.colno = colno


def _reject_constant(name: str) -> Any:
    raise RowError("non_finite_number", f"{name} is not a valid JSON number")


def _checked_int(digits: str) -> int:
    if len(digits) <= 18:
        return int(digits)
    shown = f"{digits[:20]}… ({len(digits.lstrip('-')):,} digits)" if len(digits) > 24 else digits
    try:
        value = int(digits)
    except ValueError:  # more than 4,300 digits: Python refuses to convert it
        raise RowError("huge_integer", f"the integer {shown} does not fit in 64 bits") from None
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise RowError("huge_integer", f"the integer {shown} does not fit in 64 bits")
    return value


def _checked_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise RowError("non_finite_number", f"the number {text[:24]} overflows to Infinity")
    return value


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_checked_int, parse_float=_checked_float)


def loads_strict(text: str) -> Any:
    """Parse JSON text like ``json.loads``, raising ``RowError`` for anything a dataset must not hold.

    That is syntax errors (code ``json``, with ``lineno``/``colno``), NaN/Infinity and numbers that
    overflow to infinity (``non_finite_number``), integers outside 64 bits (``huge_integer``) and nesting
    too deep for the parser (``json``).
    """
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise RowError("json", error.msg, error.lineno, error.colno) from None
    except RecursionError:
        raise RowError("json", "the JSON is nested too deeply") from None


def type_name(value: Any) -> str:
    """How a JSON value's type reads in a message ("a list", "a number", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- Format detection -----------------------------------------------------------------------------

_EXTENSIONS = {
    "jsonl": Format.JSONL,
    "ndjson": Format.JSONL,
    "jsonlines": Format.JSONL,
    "json": Format.JSON,
    "csv": Format.CSV,
    "tsv": Format.CSV,
    "parquet": Format.PARQUET,
    "pq": Format.PARQUET,
    "txt": Format.TEXT,
    "text": Format.TEXT,
    "md": Format.TEXT,
    "markdown": Format.TEXT,
}
_COMPRESSED = {"gz", "zip", "bz2", "xz", "zst", "7z", "tar", "tgz"}


def detect_format(filename: str, head: bytes) -> Format:
    """Tell the format of an upload from its name and its first bytes (a few KiB are enough).

    Content wins over a misleading name where it is unambiguous: Parquet's magic bytes, and a ``.json``
    file whose first line is a complete object (JSON Lines saved as ``.json``). A file without a known
    extension is sniffed (``[`` → JSON, ``{`` → JSON Lines). Raises ``UnsupportedFormat`` with a message
    for the user otherwise.
    """
    name = filename.rsplit("/", 1)[-1]
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    unsupported = f"{name or 'The file'} is not a supported format; upload JSON Lines, JSON, CSV, Parquet or plain text"
    if head.startswith(b"PAR1"):
        return Format.PARQUET
    if head.startswith(b"\x1f\x8b") or head.startswith(b"PK\x03\x04") or extension in _COMPRESSED:
        hint = " (an Excel workbook: export the sheet as 'CSV UTF-8')" if extension in {"xlsx", "xls"} else ""
        if not hint and (extension in _COMPRESSED or head.startswith(b"\x1f\x8b")):
            hint = " (it is compressed: decompress it first)"
        raise UnsupportedFormat(unsupported + hint)
    found = _EXTENSIONS.get(extension)
    if found is Format.PARQUET:
        if head:
            raise UnsupportedFormat(f"{name} is not a Parquet file (it does not start with the Parquet magic bytes)")
        return found
    if found is Format.JSON:
        return Format.JSONL if _first_line_is_object(head) else Format.JSON
    if found is Format.JSONL:
        return Format.JSON if _looks_like_json_array(head) else Format.JSONL
    if found is not None:
        return found
    start = head.removeprefix(_BOM).lstrip()
    if start.startswith(b"["):
        return Format.JSON
    if start.startswith(b"{"):
        return Format.JSONL
    raise UnsupportedFormat(unsupported)


def _first_line_is_object(head: bytes) -> bool:
    """True for JSON Lines saved as .json: a first line that is a whole object, and a second row after it."""
    text = head.removeprefix(_BOM).lstrip()
    if not text.startswith(b"{"):
        return False
    first, newline, rest = text.partition(b"\n")
    if not newline or not rest.lstrip().startswith(b"{"):
        return False  # a single object: the reader explains that rows must be in an array
    try:
        return isinstance(loads_strict(first.decode("utf-8")), dict)
    except (RowError, UnicodeDecodeError):
        return False


def _looks_like_json_array(head: bytes) -> bool:
    text = head.removeprefix(_BOM).lstrip()
    if not text.startswith(b"["):
        return False
    first, newline, _ = text.partition(b"\n")
    if not newline:
        return False
    try:  # a JSON Lines row that is a list parses on its own; an array's first line does not
        loads_strict(first.decode("utf-8"))
    except (RowError, UnicodeDecodeError):
        return True
    return False


# --- Reading ----------------------------------------------------------------------------------------


def iter_records(
    path: str | Path,
    fmt: Format,
    *,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    progress: ReadProgress | None = None,
    text_split: TextSplit = TextSplit.PARAGRAPHS,
) -> Generator[Record | Problem, None, None]:
    """Yield every row of the file as a ``Record``, or a ``Problem`` where a row or the file is unusable.

    Reads strictly as UTF-8 (a leading BOM is skipped); skips blank lines in JSON Lines and CSV; never
    raises for malformed content (only for I/O errors such as a missing file). ``progress.bytes_read``
    is kept up to date as the file is consumed.
    """
    tracker = progress if progress is not None else ReadProgress()
    with open(path, "rb") as stream:
        if fmt is Format.PARQUET:
            yield from _iter_parquet(stream, tracker)
            return
        head = stream.read(4)
        stream.seek(0)
        if head.startswith(_UTF16_OR_32_BOMS):
            yield Problem(
                line=1,
                column=1,
                field=None,
                code="encoding",
                message="The file is encoded as UTF-16 or UTF-32, not UTF-8.",
                scope="file",
                stops_reading=True,
            )
            return
        if fmt is Format.JSONL:
            yield from _iter_jsonl(stream, max_row_bytes, tracker)
        elif fmt is Format.CSV:
            yield from _iter_csv(stream, max_row_bytes, tracker)
        elif fmt is Format.TEXT:
            yield from _iter_text(stream, max_row_bytes, tracker, TextSplit(text_split))
        else:
            yield from _JsonArrayReader(stream, max_row_bytes, tracker).rows()


def _read_line(stream: IO[bytes], max_row_bytes: int, tracker: ReadProgress) -> tuple[bytes, int]:
    """Read one physical line of at most ``max_row_bytes``; longer lines are skipped to their end.

    Returns the line (empty at the end of the file) and, for a skipped line, its length (else 0).
    """
    raw = stream.readline(max_row_bytes + 1)
    tracker.bytes_read += len(raw)
    if len(raw) <= max_row_bytes or raw.endswith(b"\n"):
        return raw, 0
    length = len(raw)
    while True:  # drain the rest in bounded pieces
        piece = stream.readline(_CHUNK_BYTES)
        tracker.bytes_read += len(piece)
        length += len(piece)
        if not piece or piece.endswith(b"\n"):
            return b"", length


def _too_large(line: int, length: int, max_row_bytes: int, what: str) -> Problem:
    return Problem(
        line=line,
        column=None,
        field=None,
        code="row_too_large",
        message=f"{what} is {_mib(length)}; the limit is {_mib(max_row_bytes)}.",
    )


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):,.1f} MiB" if size >= 1024 * 1024 else f"{size:,} bytes"


def _encoding_problem(line: int, error: UnicodeDecodeError, line_offset: int) -> Problem:
    bad = error.object[error.start : error.start + 1]
    return Problem(
        line=line,
        column=error.start + 1,
        field=None,
        code="encoding",
        message=f"Byte {error.start + 1} of the line (file offset {line_offset + error.start:,}) is not valid "
        f"UTF-8 (0x{bad.hex()}).",
    )


def _iter_jsonl(stream: IO[bytes], max_row_bytes: int, tracker: ReadProgress) -> Iterator[Record | Problem]:
    line = 0
    while True:
        offset = tracker.bytes_read
        raw, skipped = _read_line(stream, max_row_bytes, tracker)
        if skipped:
            line += 1
            yield _too_large(line, skipped, max_row_bytes, "The line")
            continue
        if not raw:
            return
        line += 1
        if line == 1 and raw.startswith(_BOM):
            raw = raw[3:]
            offset += 3
        if not raw or raw.isspace():
            continue
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as error:
            yield _encoding_problem(line, error, offset)
            continue
        try:
            value = loads_strict(text)
        except RowError as error:
            yield _json_problem(line, error, text)
            continue
        if not isinstance(value, dict):
            yield _not_an_object(line, value)
            continue
        yield Record(line, value, len(raw))


def _json_problem(line: int, error: RowError, text: str) -> Problem:
    column = error.colno
    if error.detail.startswith("Unterminated string"):
        message = f"The text value that starts at column {column} is never closed with a quote; is the row cut off?"
    elif column is not None and error.lineno == 1 and column > len(text.rstrip()):
        message = f"The line ends before the JSON is complete ({error.detail}); is the row cut off?"
    else:
        message = _capitalize(error.detail) + "."
    return Problem(line=line, column=column, field=None, code=error.code, message=message)


def _not_an_object(line: int, value: Any, where: str = "") -> Problem:
    sentence = f"the row is {type_name(value)}, not an object with named fields."
    return Problem(
        line=line,
        column=None,
        field=None,
        code="not_an_object",
        message=f"{where}{sentence}" if where else _capitalize(sentence),
    )


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


# --- CSV ----------------------------------------------------------------------------------------------


def _iter_csv(stream: IO[bytes], max_row_bytes: int, tracker: ReadProgress) -> Iterator[Record | Problem]:
    # The csv module gets decoded physical lines; a line that cannot be decoded (or is too long) is
    # replaced, remembered here, and turns the row that contains it into a problem. The csv module's
    # cell size limit is process-wide: it is raised (never lowered) to the row limit.
    csv.field_size_limit(max(csv.field_size_limit(), max_row_bytes))
    bad_lines: dict[int, Problem] = {}

    def lines() -> Iterator[str]:
        number = 0
        while True:
            offset = tracker.bytes_read
            raw, skipped = _read_line(stream, max_row_bytes, tracker)
            if not raw and not skipped:
                return
            number += 1
            if skipped:
                bad_lines[number] = _too_large(number, skipped, max_row_bytes, "The line")
                yield "\n"
                continue
            if number == 1 and raw.startswith(_BOM):
                raw = raw[3:]
                offset += 3
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                bad_lines[number] = _encoding_problem(number, error, offset)
                yield raw.decode("utf-8", "replace")

    source = lines()
    first = next(source, None)
    if first is None:
        return
    reader = csv.reader(itertools.chain([first], source), delimiter=_sniff_delimiter(first), strict=True)
    try:
        header_cells = next(reader)
    except csv.Error as error:
        yield _csv_header_problem(f"The header row is malformed: {error}.")
        return
    if 1 in bad_lines:
        problem = bad_lines.pop(1)
        yield Problem(
            line=1,
            column=problem.column,
            field=None,
            code=problem.code,
            message=f"The header row: {problem.message}",
            scope="file",
            stops_reading=True,
        )
        return
    if not any(cell.strip() for cell in header_cells):
        yield _csv_header_problem("The first line is empty; it must name the columns.")
        return
    header = [cell.strip() or f"column_{index}" for index, cell in enumerate(header_cells, 1)]
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        yield _csv_header_problem(f"The header names {', '.join(repr(n) for n in duplicates)} more than once.")
        return
    end = reader.line_num
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            end = reader.line_num
            bad = _pop_bad_lines(bad_lines, end)
            yield bad or Problem(line=start, column=None, field=None, code="csv", message=f"{_capitalize(str(error))}.")
            continue
        end = reader.line_num
        bad = _pop_bad_lines(bad_lines, end)
        if bad is not None:
            yield bad
            continue
        if not cells:
            continue
        if len(cells) > len(header) and any(cell.strip() for cell in cells[len(header) :]):
            yield Problem(
                line=start,
                column=None,
                field=None,
                code="csv",
                message=f"The row has {len(cells)} cells but the header names {len(header)} columns.",
            )
            continue
        yield Record(start, dict(zip(header, cells, strict=False)), sum(len(cell) + 1 for cell in cells))


def _pop_bad_lines(bad_lines: dict[int, Problem], up_to: int) -> Problem | None:
    if not bad_lines:
        return None
    found = [number for number in bad_lines if number <= up_to]
    first = bad_lines[min(found)] if found else None
    for number in found:
        del bad_lines[number]
    return first


def _csv_header_problem(message: str) -> Problem:
    return Problem(
        line=1, column=None, field=None, code="csv_header", message=message, scope="file", stops_reading=True
    )


def _sniff_delimiter(header_line: str) -> str:
    """Comma unless the header clearly uses semicolons or tabs (Excel in some locales, .tsv files)."""
    counts = {delimiter: header_line.count(delimiter) for delimiter in (",", ";", "\t")}
    best = max(counts, key=lambda delimiter: counts[delimiter])
    return best if counts[best] > counts[","] else ","


# --- Plain text -------------------------------------------------------------------------------------------


def _iter_text(
    stream: IO[bytes], max_row_bytes: int, tracker: ReadProgress, split: TextSplit
) -> Iterator[Record | Problem]:
    """One ``{"text": …}`` record per paragraph (lines up to a blank line) or per non-blank line.

    Text that is not UTF-8 stops the reading with a message naming the line: a wrongly decoded corpus would
    teach the model mojibake, so there is no partial result. A paragraph holds its line breaks but not the
    final one. At most ``max_row_bytes`` of a paragraph is held; a longer one is ``row_too_large``.
    """
    if stream.read(3) == _BOM:
        tracker.bytes_read += 3
    else:
        stream.seek(0)
    paragraph: list[str] = []
    start = size = number = 0

    def flush() -> Iterator[Record | Problem]:
        if size > max_row_bytes:
            yield Problem(
                line=start,
                column=None,
                field=None,
                code="row_too_large",
                message=f"The {'line' if split is TextSplit.LINES else 'paragraph'} starting here is {_mib(size)}; "
                f"the limit is {_mib(max_row_bytes)}.",
                hint="Put blank lines between paragraphs, or choose to split the file by lines.",
            )
        elif paragraph:
            yield Record(start, {"text": "".join(paragraph).rstrip("\r\n")}, size)

    while True:
        raw, skipped = _read_line(stream, max_row_bytes, tracker)
        if not raw and not skipped:
            break
        number += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield Problem(
                line=number,
                column=error.start + 1,
                field=None,
                code="encoding",
                message=f"Line {number}, byte {error.start + 1} is not valid UTF-8 "
                f"(0x{raw[error.start : error.start + 1].hex()}); a plain text file must be UTF-8 throughout.",
                scope="file",
                stops_reading=True,
            )
            return
        if not skipped and not line.strip():
            yield from flush()
            paragraph, size = [], 0
            continue
        if not paragraph and not size:
            start = number
        size += skipped or len(raw)
        if size <= max_row_bytes:
            paragraph.append(line)
        else:
            paragraph.clear()
        if split is TextSplit.LINES:
            yield from flush()
            paragraph, size = [], 0
    yield from flush()


# --- JSON (one array) ---------------------------------------------------------------------------------

_STRUCTURE = re.compile(rb'["\[\]{},]')
_STRING_END = re.compile(rb'["\\]')
_NOT_SPACE = re.compile(rb"[^ \t\r\n]")


class _JsonArrayReader:
    """Split a top-level JSON array into its elements without parsing the whole file.

    It tracks only strings, escapes and bracket depth, cuts each element out (at most ``max_row_bytes``
    held) and parses it with ``loads_strict``, so a bad element costs that row and not the rest of the
    file. Brackets that do not match inside an element are left to the element's parser to report.
    """

    def __init__(self, stream: IO[bytes], max_row_bytes: int, tracker: ReadProgress) -> None:
        self.stream = stream
        self.max_row_bytes = max_row_bytes
        self.tracker = tracker
        self.chunk = b""
        self.pos = 0
        self.line = 1  # physical line at ``line_pos`` of the chunk
        self.line_pos = 0
        self.line_start = 0  # chunk offset of the current line's start (may be negative)

    def _fill(self) -> bool:
        """Load the next chunk when the current one is used up; False at the end of the file."""
        if self.pos < len(self.chunk):
            return True
        self._count_lines(len(self.chunk))
        self.line_start -= len(self.chunk)
        self.chunk = self.stream.read(_CHUNK_BYTES)
        self.tracker.bytes_read += len(self.chunk)
        self.pos = self.line_pos = 0
        return bool(self.chunk)

    def _count_lines(self, upto: int) -> None:
        newlines = self.chunk.count(b"\n", self.line_pos, upto)
        if newlines:
            self.line += newlines
            self.line_start = self.chunk.rfind(b"\n", self.line_pos, upto) + 1
        self.line_pos = upto

    def _where(self) -> tuple[int, int]:
        """Physical line and column of ``pos``."""
        self._count_lines(self.pos)
        return self.line, self.pos - self.line_start + 1

    def _skip_space(self) -> bool:
        """Move to the next non-whitespace byte; False at the end of the file."""
        while self._fill():
            found = _NOT_SPACE.search(self.chunk, self.pos)
            if found:
                self.pos = found.start()
                return True
            self.pos = len(self.chunk)
        return False

    def _file_problem(self, code: str, message: str, *, stops: bool = True) -> Problem:
        line, column = self._where()
        return Problem(
            line=None,
            column=None,
            field=None,
            code=code,
            message=f"Line {line}, column {column}: {message}",
            scope="file",
            stops_reading=stops,
        )

    def rows(self) -> Iterator[Record | Problem]:
        if self.stream.read(3) == _BOM:
            self.tracker.bytes_read += 3
        else:
            self.stream.seek(0)
        if not self._skip_space():
            return
        opener = self.chunk[self.pos : self.pos + 1]
        if opener != b"[":
            if opener == b"{":
                yield self._file_problem("not_an_array", "the file holds a single object, not an array of rows.")
            else:
                yield self._file_problem("json", "expected '[' to open the array of rows.")
            return
        self.pos += 1
        index = 0
        while True:
            if not self._skip_space():
                yield self._file_problem("json", "the file ends before the array is closed with ']'.")
                return
            byte = self.chunk[self.pos : self.pos + 1]
            if byte == b"]":
                if index:
                    yield self._file_problem("json", "a comma before ']' (a trailing comma).", stops=False)
                self.pos += 1
                break
            index += 1
            yield from self._element(index)
            if not self._skip_space():
                yield self._file_problem("json", "the file ends before the array is closed with ']'.")
                return
            byte = self.chunk[self.pos : self.pos + 1]
            if byte == b"]":
                self.pos += 1
                break
            if byte == b",":
                self.pos += 1
                continue
            # Elements not separated by a comma: report it once and read on from here.
            yield self._file_problem("json", f"a comma is missing after element {index}.", stops=False)
        if self._skip_space():
            yield self._file_problem("json", "there is more data after the array closes.")

    def _element(self, index: int) -> Iterator[Record | Problem]:
        """Cut out one element (up to the ',' or ']' that follows it at depth 0) and parse it."""
        line, column = self._where()
        where = f"Element {index} (starting at line {line}, column {column})"
        parts: list[bytes] = []
        size = 0
        depth = 0
        in_string = False
        escaped = False
        while True:
            if not self._fill():
                if size or parts:
                    yield Problem(
                        line=index,
                        column=None,
                        field=None,
                        code="json",
                        message=f"{where}: the file ends in the middle of this element (the file is cut off).",
                    )
                return
            chunk, start, cursor, end = self.chunk, self.pos, self.pos, None
            if escaped:
                cursor += 1
                escaped = False
            while cursor < len(chunk):
                if in_string:
                    found = _STRING_END.search(chunk, cursor)
                    if found is None:
                        cursor = len(chunk)
                        break
                    cursor = found.start() + 1
                    if chunk[found.start()] == 0x5C:  # a backslash escapes the next byte
                        if cursor < len(chunk):
                            cursor += 1
                        else:
                            escaped = True
                    else:
                        in_string = False
                    continue
                found = _STRUCTURE.search(chunk, cursor)
                if found is None:
                    cursor = len(chunk)
                    break
                byte = chunk[found.start()]
                cursor = found.start() + 1
                if byte == 0x22:  # "
                    in_string = True
                elif byte in b"[{":
                    depth += 1
                elif byte in b"]}":
                    if depth == 0 and byte == 0x5D:  # the array's own ']' after a bare value
                        end = found.start()
                        break
                    if depth == 0:  # a stray '}': keep it in the element, whose parser reports it
                        end = cursor
                        break
                    depth -= 1
                    if depth == 0:
                        end = cursor
                        break
                elif depth == 0:  # a ',' ends a bare value
                    end = found.start()
                    break
            stop = cursor if end is None else end
            size += stop - start
            if size <= self.max_row_bytes:
                parts.append(chunk[start:stop])
            else:
                parts.clear()
            self.pos = stop
            if end is not None:
                break
        if size > self.max_row_bytes:
            yield Problem(
                line=index,
                column=None,
                field=None,
                code="row_too_large",
                message=f"{where} is {_mib(size)}; the limit is {_mib(self.max_row_bytes)}.",
            )
            return
        yield _parse_element(b"".join(parts), index, where, line, column)


def _parse_element(raw: bytes, index: int, where: str, line: int, column: int) -> Record | Problem:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        before = raw[: error.start]
        error_line = line + before.count(b"\n")
        error_column = error.start - before.rfind(b"\n") if b"\n" in before else column + error.start
        return Problem(
            line=index,
            column=None,
            field=None,
            code="encoding",
            message=f"{where}: the byte at line {error_line}, column {error_column} is not valid UTF-8 "
            f"(0x{raw[error.start : error.start + 1].hex()}).",
        )
    if not text.strip():
        return Problem(
            line=index, column=None, field=None, code="json", message=f"{where}: the element is empty (two commas?)."
        )
    try:
        value = loads_strict(text)
    except RowError as error:
        at = ""
        if error.lineno is not None and error.colno is not None:
            error_column = error.colno + (column - 1 if error.lineno == 1 else 0)
            at = f" at line {line + error.lineno - 1}, column {error_column}"
        return Problem(line=index, column=None, field=None, code=error.code, message=f"{where}: {error.detail}{at}.")
    if not isinstance(value, dict):
        return _not_an_object(index, value, f"{where}: ")
    return Record(index, value, len(raw))


# --- Parquet --------------------------------------------------------------------------------------------

_PARQUET_BATCH_ROWS = 256


def _iter_parquet(stream: IO[bytes], tracker: ReadProgress) -> Iterator[Record | Problem]:
    import pyarrow.parquet as pq  # imported here: pyarrow takes a while to load

    total_bytes = stream.seek(0, 2)
    stream.seek(0)
    row = 0
    try:
        parquet = pq.ParquetFile(stream)
        total_rows = max(parquet.metadata.num_rows, 1)
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for data in batch.to_pylist():
                row += 1
                non_finite = _first_non_finite(data)
                if non_finite is not None:
                    yield Problem(
                        line=row,
                        column=None,
                        field=non_finite,
                        code="non_finite_number",
                        message=f"The field '{non_finite}' is NaN or infinite.",
                    )
                else:
                    yield Record(row, data)
            tracker.bytes_read = min(total_bytes, total_bytes * row // total_rows)
    except Exception as error:  # pyarrow raises many exception types for a corrupt file; all mean "unreadable"
        yield Problem(
            line=row + 1,
            column=None,
            field=None,
            code="parquet",
            message=f"The Parquet file could not be read at row {row + 1}: {str(error)[:300]}",
            scope="file",
            stops_reading=True,
        )
    tracker.bytes_read = total_bytes


def _first_non_finite(value: Any, path: str = "") -> str | None:
    """The path of the first NaN or infinite float in a Parquet row (JSON rows cannot hold one)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path or "value")
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_non_finite(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for position, item in enumerate(value):
            found = _first_non_finite(item, f"{path}[{position}]")
            if found is not None:
                return found
    return None


__all__ = [
    "DEFAULT_MAX_ROW_BYTES",
    "LINE_UNITS",
    "PROBLEM_CODES",
    "Format",
    "Problem",
    "ProblemCode",
    "ReadProgress",
    "Record",
    "RowError",
    "TextSplit",
    "UnsupportedFormat",
    "detect_format",
    "iter_records",
    "loads_strict",
    "type_name",
]
