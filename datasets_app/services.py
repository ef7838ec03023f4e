"""What the datasets app can do: upload, validate, keep valid rows, export, share and delete.

Files live under MEDIA_ROOT/teams/<team>/datasets/<dataset>/v<n>/: ``source`` (the upload as sent) and
``rows.jsonl`` (the normalized rows, written once by validation). A version's files and hash never
change after it is ready; every transformation makes a new version that names its parent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Max, Q, QuerySet, Sum
from django.http import Http404
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from accounts import audit
from accounts.models import Team
from accounts.permissions import TeamAccess, require_object_action, visible_objects
from accounts.roles import Perm
from datasets_app.engine import curation
from datasets_app.engine.formats import Problem, TextSplit, UnsupportedFormat, detect_format, iter_records
from datasets_app.engine.rows import Kind, Row, read_rows_file, write_rows_file
from datasets_app.engine.schemas import check_mapping, normalize
from datasets_app.engine.stats import compute_stats
from datasets_app.engine.validate import validate_file
from datasets_app.models import Dataset, DatasetVersion, VersionStatus

log = logging.getLogger(__name__)

# Characters a spreadsheet treats as the start of a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
MAX_ROW_CHARS = 200_000
KIND_VALUES = [kind.value for kind in Kind]


# --- storage ------------------------------------------------------------------------------------


def storage_used(team: Team) -> int:
    """Bytes the team's dataset files take (uploads plus normalized rows)."""
    totals = DatasetVersion.objects.for_team(team).aggregate(source=Sum("source_size"), rows=Sum("rows_size"))
    return int(totals["source"] or 0) + int(totals["rows"] or 0)


def _check_room(team: Team, size: int) -> None:
    limit = settings.DATASET_UPLOAD_MAX_BYTES
    if size > limit:
        raise ValidationError(
            {
                "file": f"The file is {filesizeformat(size)}; uploads are limited to {filesizeformat(limit)}. "
                "Split it or filter it first."
            }
        )
    used, quota = storage_used(team), team.storage_quota
    if used + size > quota:
        raise ValidationError(
            {
                "file": f"This upload ({filesizeformat(size)}) would exceed the team's storage quota: "
                f"{filesizeformat(used)} of {filesizeformat(quota)} used. Delete datasets you no longer need, "
                "or ask an operator for more room."
            }
        )


def _check_format(upload: UploadedFile) -> None:
    """Refuse, before storing it, a file no reader can open (plain .txt, a workbook, an archive), with the
    same detection validation uses: the message names the accepted formats."""
    upload.seek(0)
    head = upload.read(64 * 1024)
    upload.seek(0)
    try:
        detect_format(upload.name or "", head)
    except UnsupportedFormat as error:
        raise ValidationError({"file": f"{error}."}) from None


def _store_upload(upload: UploadedFile, destination: Path) -> int:
    """Copy an upload to ``destination`` chunk by chunk (never whole in memory); returns its size."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(".partial")
    size = 0
    with partial.open("wb") as out:
        for chunk in upload.chunks():
            size += len(chunk)
            out.write(chunk)
    partial.replace(destination)
    return size


@contextmanager
def _atomic_with_files() -> Iterator[list[Path]]:
    """A transaction whose new folders are deleted again if it fails: an upload is all or nothing."""
    folders: list[Path] = []
    try:
        with transaction.atomic():
            yield folders
    except BaseException:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def versions_of(dataset: Dataset) -> QuerySet[DatasetVersion]:
    """A dataset's versions, newest first (read through the team scope, like every tenant read)."""
    return DatasetVersion.objects.for_team(dataset.team).filter(dataset=dataset)


# --- upload -------------------------------------------------------------------------------------


def upload_dataset(
    *,
    access: TeamAccess,
    name: str,
    upload: UploadedFile,
    description: str = "",
    restricted: bool = False,
    text_split: str = "",
    ip: str | None = None,
) -> DatasetVersion:
    """Create a dataset from an uploaded file; validation runs in the background (queue ``default``).

    ``text_split`` ("paragraphs", the default, or "lines") says how a plain text file is cut into rows."""
    access.require(Perm.UPLOAD_DATASETS)
    name = name.strip() or Path(upload.name or "dataset").stem[:120]
    _check_room(access.team, upload.size or 0)
    _check_format(upload)
    split = _text_split(text_split)
    with _atomic_with_files() as folders:
        dataset = Dataset.objects.create(
            team=access.team,
            name=name,
            description=description.strip(),
            restricted=restricted,
            created_by=access.user,
        )
        version = _new_upload_version(access, dataset, upload, folders, split)
        audit.record(
            "dataset.uploaded",
            access=access,
            target=dataset,
            ip=ip,
            version=1,
            filename=upload.name,
            bytes=version.source_size,
        )
    return version


def upload_new_version(
    *, access: TeamAccess, dataset: Dataset, upload: UploadedFile, text_split: str = "", ip: str | None = None
) -> DatasetVersion:
    """Add a version to a dataset from a corrected file (the "fix and re-upload" path)."""
    access.require(Perm.UPLOAD_DATASETS)
    require_object_action(access, dataset, "change")
    _check_room(access.team, upload.size or 0)
    _check_format(upload)
    split = _text_split(text_split)
    with _atomic_with_files() as folders:
        version = _new_upload_version(access, dataset, upload, folders, split)
        audit.record(
            "dataset.uploaded",
            access=access,
            target=dataset,
            ip=ip,
            version=version.number,
            filename=upload.name,
            bytes=version.source_size,
        )
    return version


def _next_number(dataset: Dataset) -> int:
    """The next version number; locks the dataset row so two new versions never get the same number."""
    list(Dataset.objects.for_team(dataset.team).select_for_update().filter(pk=dataset.pk).values_list("pk"))
    latest = versions_of(dataset).aggregate(n=Max("number"))["n"]
    return int(latest or 0) + 1


def _text_split(value: str) -> TextSplit:
    try:
        return TextSplit(value or TextSplit.PARAGRAPHS)
    except ValueError:
        raise ValidationError(
            {"text_split": f"Choose how plain text is split: {', '.join(split.value for split in TextSplit)}."}
        ) from None


def _new_upload_version(
    access: TeamAccess, dataset: Dataset, upload: UploadedFile, folders: list[Path], text_split: TextSplit
) -> DatasetVersion:
    recipe: dict[str, Any] = {"step": "upload", "filename": upload.name}
    if text_split is not TextSplit.PARAGRAPHS:
        recipe["text_split"] = text_split.value
    version = DatasetVersion.objects.create(
        team=access.team,
        dataset=dataset,
        number=_next_number(dataset),
        created_by=access.user,
        recipe=recipe,
        source_name=(upload.name or "upload")[:255],
    )
    folders.append(version.folder())
    version.source_size = _store_upload(upload, version.source_path)
    version.save(update_fields=["source_size"])
    _enqueue_validation(version)
    return version


def _enqueue_validation(version: DatasetVersion) -> None:
    from datasets_app.tasks import validate_version

    transaction.on_commit(lambda: validate_version.delay(version.pk))


# --- validation (runs in the Celery task) -------------------------------------------------------


class _Progress:
    """Writes a version's progress (0–1) to the database at most once a second, mapped into [start, end]."""

    def __init__(self, version_id: int, start: float = 0.0, end: float = 1.0) -> None:
        self.version_id, self.start, self.end = version_id, start, end
        self.last_write = 0.0

    def __call__(self, done: float, total: float) -> None:
        now = time.monotonic()
        if now - self.last_write >= 1.0 and total:
            self.last_write = now
            value = self.start + (self.end - self.start) * min(done / total, 1.0)
            DatasetVersion.objects.unscoped().filter(pk=self.version_id).update(
                progress=value, claimed_at=timezone.now()
            )


def claim_version(version_id: int, status: VersionStatus) -> DatasetVersion | None:
    """Take a version in ``status`` (validating or processing) for this task, as ``runner.claim`` takes a job.

    One conditional UPDATE: None when the version is not in ``status`` any more (done, or deleted) or another
    delivery of the task holds it. A claim older than ``DATASET_TASK_LEASE_SECONDS`` (its task died: the
    claim is renewed with each progress write) can be taken over, so a re-delivered task still does the work.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.DATASET_TASK_LEASE_SECONDS)
    taken = (
        DatasetVersion.objects.unscoped()
        .filter(pk=version_id, status=status)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale))
        .update(claimed_at=now)
    )
    if not taken:
        return None
    return DatasetVersion.objects.unscoped().select_related("dataset", "parent").get(pk=version_id)


def run_validation(version_id: int) -> None:
    """Validate and normalize a version's source file, then record report, hash and statistics.

    Idempotent: a version that is no longer ``validating`` (done, or deleted), or that another delivery of
    the task is validating right now, is left alone.
    """
    version = claim_version(version_id, VersionStatus.VALIDATING)
    if version is None:
        return
    try:
        report = validate_file(
            version.source_path,
            filename=version.source_name,
            kind=Kind(version.kind) if version.kind else None,
            mapping=version.mapping or None,
            max_row_chars=MAX_ROW_CHARS,
            out_path=version.rows_path,
            progress=_Progress(version_id, 0.0, 0.7),
            text_split=version.recipe.get("text_split", TextSplit.PARAGRAPHS),
        )
    except OSError as error:
        log.exception("validation of dataset version %s failed", version_id)
        _finish(version_id, status=VersionStatus.FAILED, error=f"The file could not be read: {error.strerror}.")
        return
    data = report.to_dict()
    if report.needs_mapping:
        _finish(version_id, status=VersionStatus.NEEDS_MAPPING, report=data)
        return
    # Ready only when every row of the whole file was read and kept: a file whose reading stopped early (a
    # JSON array cut off, plain text that stops being UTF-8) is not Ready, even if the rows read are fine.
    complete = report.complete and report.valid_rows == report.total_rows and report.total_rows
    has_rows = report.valid_rows > 0 and version.rows_path.exists()
    _finish(
        version_id,
        status=VersionStatus.READY if complete else VersionStatus.INVALID,
        report=data,
        kind=str(report.kind) if report.kind else "",
        mapping=report.mapping or {},
        row_count=report.valid_rows,
        content_hash=report.content_hash or "",
        rows_size=version.rows_path.stat().st_size if has_rows else 0,
        stats=_describe(version_id, version.rows_path, str(report.kind), report.valid_rows) if has_rows else {},
        progress=1.0,
    )


def _describe(version_id: int, rows_path: Path, kind: str, row_count: int) -> dict[str, Any]:
    """Statistics of a version's rows (token lengths, turns, roles, duplicates, PII)."""
    progress = _Progress(version_id, 0.7, 1.0)
    return compute_stats(read_rows_file(rows_path), kind=kind, progress=lambda done: progress(done, row_count))


def _finish(version_id: int, **fields: Any) -> None:
    DatasetVersion.objects.unscoped().filter(pk=version_id, status=VersionStatus.VALIDATING).update(**fields)


def can_map(version: DatasetVersion) -> bool:
    """Whether the kind and columns of an upload may be chosen: it needs a mapping, or the mapping chosen last
    time left problems and nothing was derived from it yet (so its rows can still be replaced)."""
    if version.status == VersionStatus.NEEDS_MAPPING:
        return True
    # A kind known before validation and no guess in the report: validation ran with a person's mapping.
    mapped = bool(version.kind) and not version.report.get("guess") and version.recipe.get("step") == "upload"
    return (
        version.status == VersionStatus.INVALID
        and mapped
        and bool(version.report.get("columns"))
        and not versions_of(version.dataset).filter(parent=version).exists()
    )


def set_mapping(
    *, access: TeamAccess, version: DatasetVersion, kind: str, mapping: dict[str, str], ip: str | None = None
) -> DatasetVersion:
    """Tell validation which columns hold what, for a file whose layout was ambiguous (or whose last mapping
    left problems: ``can_map``); validates again."""
    access.require(Perm.UPLOAD_DATASETS)
    require_object_action(access, version.dataset, "change")
    if not can_map(version):
        raise ValidationError({"kind": "This version's columns are already understood."})
    _check_choice(version, kind, mapping)
    with transaction.atomic():
        DatasetVersion.objects.for_team(access.team).filter(pk=version.pk).update(
            kind=kind,
            mapping=mapping,
            status=VersionStatus.VALIDATING,
            progress=0.0,
            error="",
            claimed_at=None,
        )
        audit.record(
            "dataset.mapped",
            access=access,
            target=version.dataset,
            ip=ip,
            version=version.number,
            kind=kind,
            mapping=mapping,
        )
        _enqueue_validation(version)
    version.refresh_from_db()
    return version


def _check_choice(version: DatasetVersion, kind: str, mapping: dict[str, str]) -> None:
    if kind not in KIND_VALUES:
        raise ValidationError({"kind": f"Choose one of: {', '.join(KIND_VALUES)}."})
    columns = set(version.report.get("columns", []))
    unknown = sorted(set(mapping.values()) - columns) if columns else []
    if unknown:
        raise ValidationError({"mapping": f"No column named {', '.join(unknown)} in the file."})


def can_remap(version: DatasetVersion) -> bool:
    """Whether an upload that validation already read can be read another way (another kind or columns, e.g.
    to use a column it reported unused) as a new version; the version itself never changes."""
    return (
        version.recipe.get("step") == "upload"
        and version.status in (VersionStatus.READY, VersionStatus.INVALID)
        and bool(version.report.get("columns"))
        and version.source_path.exists()
    )


def remap_as_new_version(
    *, access: TeamAccess, version: DatasetVersion, kind: str, mapping: dict[str, str], ip: str | None = None
) -> DatasetVersion:
    """Validate the same uploaded file again with a person's kind and columns, as the dataset's next version
    (its parent is ``version``, which stays as it is: jobs may have trained on it)."""
    access.require(Perm.UPLOAD_DATASETS)
    require_object_action(access, version.dataset, "change")
    if not can_remap(version):
        raise ValidationError({"kind": "Only a validated upload can be read another way."})
    _check_choice(version, kind, mapping)
    _check_room(access.team, version.source_size)
    recipe = {**version.recipe, "remapped_from": version.number}
    with _atomic_with_files() as folders:
        child = DatasetVersion.objects.create(
            team=access.team,
            dataset=version.dataset,
            number=_next_number(version.dataset),
            parent=version,
            created_by=access.user,
            recipe=recipe,
            source_name=version.source_name,
            kind=kind,
            mapping=mapping,
        )
        folders.append(child.folder())
        child.folder().mkdir(parents=True, exist_ok=True)
        try:  # the same bytes: a hard link costs no disk when the file system allows it
            os.link(version.source_path, child.source_path)
        except OSError:
            shutil.copyfile(version.source_path, child.source_path)
        child.source_size = version.source_size
        child.save(update_fields=["source_size"])
        audit.record(
            "dataset.remapped",
            access=access,
            target=version.dataset,
            ip=ip,
            version=child.number,
            parent=version.number,
            kind=kind,
            mapping=mapping,
        )
        _enqueue_validation(child)
    return child


def apply_mapping(
    *, access: TeamAccess, version: DatasetVersion, kind: str, mapping: dict[str, str], ip: str | None = None
) -> DatasetVersion:
    """A person's kind and columns for an upload: in place while it waits for (or failed with) a mapping
    (``set_mapping``), else as a new version read that way (``remap_as_new_version``). Returns the version
    being validated."""
    if can_map(version):
        return set_mapping(access=access, version=version, kind=kind, mapping=mapping, ip=ip)
    return remap_as_new_version(access=access, version=version, kind=kind, mapping=mapping, ip=ip)


def preview_mapping(
    *, access: TeamAccess, version: DatasetVersion, kind: str, mapping: dict[str, str], rows: int = 3
) -> list[dict[str, Any]]:
    """The first ``rows`` records of the upload as ``kind`` with ``mapping`` would normalize them, before the
    mapping is applied: each ``{"line", "row"}`` or ``{"line", "problems": [sentences]}``. Read-only."""
    access.require(Perm.UPLOAD_DATASETS)
    require_object_action(access, version.dataset, "change")
    _check_choice(version, kind, mapping)
    errors = check_mapping(Kind(kind), mapping)
    if errors:
        raise ValidationError({"mapping": errors})
    with version.source_path.open("rb") as handle:
        head = handle.read(64 * 1024)
    try:
        fmt = detect_format(version.source_name, head)
    except UnsupportedFormat as error:
        raise ValidationError({"file": f"{error}."}) from None
    split = TextSplit(version.recipe.get("text_split", TextSplit.PARAGRAPHS))
    shown: list[dict[str, Any]] = []
    records = iter_records(version.source_path, fmt, text_split=split)
    try:
        for item in records:
            if isinstance(item, Problem):
                if item.scope == "row":
                    shown.append({"line": item.line, "problems": [item.message]})
                elif item.stops_reading:
                    shown.append({"line": item.line, "problems": [item.message]})
                    break
            else:
                result = normalize(item, Kind(kind), mapping)
                if isinstance(result, list):
                    shown.append({"line": item.line, "problems": [problem.message for problem in result]})
                else:
                    shown.append({"line": item.line, "row": result})
            if len(shown) >= rows:
                break
    finally:
        records.close()
    return shown


def _child_version(access: TeamAccess, version: DatasetVersion, **fields: Any) -> DatasetVersion:
    """A new version made from ``version`` (same kind and mapping), numbered next; call inside a transaction."""
    return DatasetVersion.objects.create(
        team=access.team,
        dataset=version.dataset,
        number=_next_number(version.dataset),
        parent=version,
        created_by=access.user,
        kind=version.kind,
        mapping=version.mapping,
        source_name=version.source_name,
        **fields,
    )


def keep_valid_rows(*, access: TeamAccess, version: DatasetVersion, ip: str | None = None) -> DatasetVersion:
    """A new version holding only the rows that passed validation, recording what was dropped and why."""
    access.require(Perm.UPLOAD_DATASETS)
    require_object_action(access, version.dataset, "change")
    if version.status != VersionStatus.INVALID or not version.row_count:
        raise ValidationError({"version": "Only a version with problems and some valid rows can be trimmed."})
    dropped = {
        code: problem["rows_dropped"]
        for code, problem in version.report.get("problems", {}).items()
        if problem.get("rows_dropped")
    }
    with _atomic_with_files() as folders:
        child = _child_version(
            access,
            version,
            recipe={"step": "keep_valid_rows", "dropped": dropped},
            status=VersionStatus.READY,
            row_count=version.row_count,
            content_hash=version.content_hash,
            rows_size=version.rows_size,
            progress=1.0,
            report={**version.report, "problems": {}, "total_rows": version.row_count},
            stats=version.stats,
        )
        folders.append(child.folder())
        child.folder().mkdir(parents=True, exist_ok=True)
        shutil.copyfile(version.rows_path, child.rows_path)
        audit.record(
            "dataset.curated",
            access=access,
            target=version.dataset,
            ip=ip,
            step="keep_valid_rows",
            parent=version.number,
            version=child.number,
            dropped=dropped,
        )
    return child


# --- samples and mixing ------------------------------------------------------------------------

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
SAMPLES: dict[str, tuple[str, str]] = {
    "chat": ("Sample: support chats", "chat.jsonl"),
    "instruction": ("Sample: instructions", "instruction.jsonl"),
    "preference": ("Sample: preferences", "preference.jsonl"),
    "feedback": ("Sample: answer feedback", "feedback.jsonl"),
    "tools": ("Sample: tool calls", "tools.jsonl"),
    "text": ("Sample: raw text", "raw_text.jsonl"),
    # The demo task (see samples/README.md): in a folder of its own, out of the starter model's pretraining corpus.
    "support": ("Demo: Kestrel Coffee support", "demo/support_train.jsonl"),
    "support-eval": ("Demo: Kestrel Coffee eval questions", "demo/support_eval.jsonl"),
}


def add_sample(*, access: TeamAccess, sample: str, ip: str | None = None) -> DatasetVersion:
    """Upload one of the studio's bundled sample datasets, through the same path as any upload."""
    if sample not in SAMPLES:
        raise ValidationError({"sample": f"Choose one of: {', '.join(SAMPLES)}."})
    name, filename = SAMPLES[sample]
    with (SAMPLES_DIR / filename).open("rb") as handle:
        upload = UploadedFile(handle, name=Path(filename).name, size=(SAMPLES_DIR / filename).stat().st_size)
        return upload_dataset(access=access, name=name, upload=upload, ip=ip)


def mix_datasets(
    *,
    access: TeamAccess,
    name: str,
    sources: list[tuple[DatasetVersion, float]],
    seed: int = 42,
    total: int | None = None,
    ip: str | None = None,
) -> DatasetVersion:
    """A new dataset mixing ready versions with weights (e.g. open and private data); made in the background."""
    access.require(Perm.UPLOAD_DATASETS)
    if len(sources) < 2:
        raise ValidationError({"sources": "Choose at least two datasets to mix."})
    for version, weight in sources:
        require_object_action(access, version.dataset, "use")
        if not version.is_ready:
            raise ValidationError({"sources": f"{version} is not ready; mix ready versions."})
        if weight <= 0:
            raise ValidationError({"sources": f"The weight of {version} must be above zero."})
    kinds = {version.kind for version, _ in sources}
    if len(kinds) > 1:
        raise ValidationError({"sources": f"Mix datasets of one kind; these are {', '.join(sorted(kinds))}."})
    counts = [version.row_count or 0 for version, _ in sources]
    try:
        planned = curation.mix_counts([weight for _, weight in sources], counts, total)
    except ValueError as error:
        raise ValidationError({"total": str(error)}) from error
    recipe = {
        "step": "mix",
        "seed": seed,
        "total": total,
        "sources": [
            {"dataset_id": v.dataset_id, "version": v.number, "content_hash": v.content_hash, "weight": w}
            for v, w in sources
        ],
        "planned": planned,
    }
    with _atomic_with_files() as folders:
        dataset = Dataset.objects.create(
            team=access.team,
            name=name.strip() or "Mix",
            created_by=access.user,
            description="Mix of " + ", ".join(f"{v} × {w}" for v, w in sources),
        )
        child = DatasetVersion.objects.create(
            team=access.team,
            dataset=dataset,
            number=1,
            parent=sources[0][0],
            created_by=access.user,
            recipe=recipe,
            status=VersionStatus.PROCESSING,
            kind=sources[0][0].kind,
        )
        folders.append(child.folder())
        audit.record("dataset.mixed", access=access, target=dataset, ip=ip, sources=recipe["sources"], seed=seed)
        from datasets_app.tasks import curate_version

        transaction.on_commit(lambda: curate_version.delay(child.pk))
    return child


def _run_mix(child: DatasetVersion, recipe: dict[str, Any]) -> tuple[int, str, int, dict[str, Any]]:
    versions = [
        DatasetVersion.objects.for_team(child.team).get(dataset_id=source["dataset_id"], number=source["version"])
        for source in recipe["sources"]
    ]
    run = curation.mix(
        [
            (read_rows_file(v.rows_path), source["weight"])
            for v, source in zip(versions, recipe["sources"], strict=True)
        ],
        seed=recipe["seed"],
        total=recipe["total"],
        row_counts=[v.row_count or 0 for v in versions],
    )
    count, content_hash, size = write_rows_file(child.rows_path, run)
    return count, content_hash, size, run.summary


# --- curation (each step makes a new version, in the background) --------------------------------

CURATION_STEPS = ("dedupe", "redact_pii", "filter_length", "split")


def _curation_params(step: str, params: dict[str, Any]) -> dict[str, Any]:
    """The step's parameters, checked, with field-level messages for anything out of range."""
    if step == "dedupe":
        mode = params.get("mode", "exact")
        if mode not in ("exact", "near"):
            raise ValidationError({"mode": "Choose exact or near duplicates."})
        threshold = float(params.get("threshold") or 0.85)
        if not 0.5 <= threshold <= 1.0:
            raise ValidationError({"threshold": "The similarity threshold must be between 0.5 and 1.0."})
        return {"mode": mode, "threshold": threshold} if mode == "near" else {"mode": mode}
    if step == "redact_pii":
        return {}
    if step == "filter_length":
        low, high = _optional_int(params.get("min_tokens")), _optional_int(params.get("max_tokens"))
        if low is None and high is None:
            raise ValidationError({"min_tokens": "Give a minimum, a maximum, or both."})
        if (low is not None and low < 0) or (high is not None and high < 1):
            raise ValidationError({"max_tokens": "Token limits must be positive."})
        if low is not None and high is not None and low > high:
            raise ValidationError({"max_tokens": f"The maximum ({high}) is below the minimum ({low})."})
        return {"min_tokens": low, "max_tokens": high}
    if step == "split":
        fraction = float(params.get("validation_fraction") or 0.1)
        if not 0.0 < fraction < 0.9:
            raise ValidationError({"validation_fraction": "Hold out between 1% and 90% of the rows, e.g. 0.1."})
        return {"validation_fraction": fraction, "seed": int(params.get("seed") or 42)}
    raise ValidationError({"step": f"Unknown step “{step}”: choose one of {', '.join(CURATION_STEPS)}."})


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def curate(
    *, access: TeamAccess, version: DatasetVersion, step: str, params: dict[str, Any], ip: str | None = None
) -> DatasetVersion:
    """Start a curation step on a ready version; the result is a new version (status "processing")."""
    access.require(Perm.UPLOAD_DATASETS)
    require_object_action(access, version.dataset, "change")
    if not version.is_ready:
        raise ValidationError({"version": "Curate a ready version (fix or trim this one first)."})
    try:
        checked = _curation_params(step, params)
    except (TypeError, ValueError) as error:
        raise ValidationError({"step": f"The parameters are not numbers where numbers are needed: {error}."}) from error
    if step == "split" and version.row_count is not None and version.row_count < 2:
        raise ValidationError({"validation_fraction": "A split needs at least two rows."})
    with _atomic_with_files() as folders:
        child = _child_version(access, version, recipe={"step": step, **checked}, status=VersionStatus.PROCESSING)
        folders.append(child.folder())
        audit.record(
            "dataset.curated",
            access=access,
            target=version.dataset,
            ip=ip,
            step=step,
            parent=version.number,
            version=child.number,
            **checked,
        )
        from datasets_app.tasks import curate_version

        transaction.on_commit(lambda: curate_version.delay(child.pk))
    return child


def run_curation(version_id: int) -> None:
    """Apply a version's curation recipe to its parent's rows (task body).

    Idempotent: a version that is no longer ``processing`` (done, or deleted), or that another delivery of
    the task is writing right now, is left alone.
    """
    child = claim_version(version_id, VersionStatus.PROCESSING)
    if child is None or child.parent is None:
        return
    parent, recipe = child.parent, dict(child.recipe)
    step = recipe.pop("step")
    rows = read_rows_file(parent.rows_path)
    try:
        if step == "mix":
            count, content_hash, size, summary = _run_mix(child, child.recipe)
        elif step == "split":
            count, content_hash, size, summary = _write_split(child, rows, parent.row_count or 0, **recipe)
        else:
            run = {
                "dedupe": lambda: curation.dedupe(rows, **recipe),
                "redact_pii": lambda: curation.redact_pii(rows),
                "filter_length": lambda: curation.filter_length(rows, **recipe),
            }[step]()
            count, content_hash, size = write_rows_file(child.rows_path, run)
            summary = run.summary
    except (OSError, ValueError) as error:
        log.exception("curation of dataset version %s failed", version_id)
        DatasetVersion.objects.unscoped().filter(pk=version_id).update(
            status=VersionStatus.FAILED, error=f"The step could not run: {error}."
        )
        return
    DatasetVersion.objects.unscoped().filter(pk=version_id, status=VersionStatus.PROCESSING).update(
        recipe={**child.recipe, "summary": summary},
        row_count=count,
        content_hash=content_hash,
        rows_size=size,
        report={"total_rows": count, "valid_rows": count, "problems": {}},
        stats=_describe(version_id, child.rows_path, child.kind, count) if count else {},
        status=VersionStatus.READY,
        progress=1.0,
    )


def _write_split(
    child: DatasetVersion, rows: Iterator[Row], row_count: int, *, validation_fraction: float, seed: int
) -> tuple[int, str, int, dict[str, Any]]:
    """Write the train rows to rows.jsonl and the held-out rows to validation.jsonl; hash covers both."""
    run = curation.split(rows, validation_fraction, seed, row_count=row_count)
    held_out: list[Row] = []

    def train() -> Iterator[Row]:
        for part, row in run:
            if part == "validation":
                held_out.append(row)
            else:
                yield row

    count, train_hash, size = write_rows_file(child.rows_path, train())
    _, validation_hash, validation_size = write_rows_file(child.validation_path, held_out)
    combined = hashlib.sha256(f"{train_hash}:{validation_hash}".encode()).hexdigest()
    return count, combined, size + validation_size, run.summary


# --- reading and exporting ----------------------------------------------------------------------


def read_rows(
    version: DatasetVersion, *, offset: int = 0, limit: int = 20, search: str = ""
) -> tuple[list[tuple[int, Row]], bool]:
    """A page of ``(row number, normalized row)`` pairs (numbers from 1) and whether more follow.

    ``search`` keeps rows whose JSON contains the text (case-insensitive). Reads the rows file from the
    start: fine for browsing, and the file is the one the trainer reads, so what you see is what trains.
    """
    if not version.rows_path.exists():
        return [], False
    needle = search.casefold()
    page: list[tuple[int, Row]] = []
    matched = 0
    with version.rows_path.open(encoding="utf-8") as rows:
        for number, line in enumerate(rows, start=1):
            if needle and needle not in line.casefold():
                continue
            matched += 1
            if matched <= offset:
                continue
            if len(page) == limit:
                return page, True
            page.append((number, json.loads(line)))
    return page, False


def export_version(*, access: TeamAccess, version: DatasetVersion, fmt: str, ip: str | None = None) -> Iterator[bytes]:
    """The version's rows as JSON Lines or CSV (formula cells neutralised), streamed; audited."""
    access.require(Perm.EXPORT_DATASETS)
    require_object_action(access, version.dataset, "view")
    if fmt not in ("jsonl", "csv"):
        raise ValidationError({"format": "Choose jsonl or csv."})
    if not version.rows_path.exists():
        raise ValidationError({"version": "This version has no rows to download yet."})
    audit.record("dataset.exported", access=access, target=version.dataset, ip=ip, version=version.number, format=fmt)
    return _jsonl_bytes(version.rows_path) if fmt == "jsonl" else _csv_bytes(version.rows_path)


def open_source(*, access: TeamAccess, version: DatasetVersion, ip: str | None = None) -> BinaryIO:
    """The file exactly as it was uploaded (to fix it and upload again); audited like an export."""
    access.require(Perm.EXPORT_DATASETS)
    require_object_action(access, version.dataset, "view")
    if not version.source_path.exists():
        raise ValidationError({"version": "This version was made by curation, not uploaded: download its rows."})
    audit.record(
        "dataset.exported", access=access, target=version.dataset, ip=ip, version=version.number, format="source"
    )
    return version.source_path.open("rb")


def _jsonl_bytes(path: Path) -> Iterator[bytes]:
    with path.open("rb") as rows:
        yield from iter(lambda: rows.read(64 * 1024), b"")


def neutralise_cell(value: str) -> str:
    """Prefix a cell a spreadsheet would run as a formula with an apostrophe (OWASP CSV injection)."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def _csv_bytes(path: Path) -> Iterator[bytes]:
    columns: list[str] | None = None
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    with path.open(encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            if columns is None:
                columns = list(row)
                writer.writerow(columns)
            writer.writerow([neutralise_cell(_cell(row.get(column))) for column in columns])
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue().encode()


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


# --- editing ------------------------------------------------------------------------------------


def update_dataset(
    *,
    access: TeamAccess,
    dataset: Dataset,
    name: str | None = None,
    description: str | None = None,
    restricted: bool | None = None,
    ip: str | None = None,
) -> Dataset:
    """Rename or describe a dataset ("change"), or restrict it to named members (owners and admins)."""
    require_object_action(access, dataset, "change")
    changes: dict[str, Any] = {}
    if name is not None:
        if not name.strip():
            raise ValidationError({"name": "Give the dataset a name."})
        changes["name"] = name.strip()[:120]
    if description is not None:
        changes["description"] = description.strip()[:2000]
    if restricted is not None and restricted != dataset.restricted:
        access.require(Perm.SHARE_OBJECTS)
        changes["restricted"] = restricted
    changes = {field: value for field, value in changes.items() if getattr(dataset, field) != value}
    if not changes:
        return dataset
    with transaction.atomic():
        # The row stays locked until commit, so a concurrent delete waits; one that came first leaves 0 rows.
        if not Dataset.objects.for_team(access.team).filter(pk=dataset.pk).update(**changes):
            raise Http404("No such dataset: it was just deleted.")
        audit.record("dataset.updated", access=access, target=dataset, ip=ip, **changes)
        dataset.refresh_from_db()
    return dataset


# --- deletion -----------------------------------------------------------------------------------


def delete_dataset(*, access: TeamAccess, dataset: Dataset, ip: str | None = None) -> None:
    """Delete a dataset, every version, statistic and file; only an audit tombstone remains."""
    require_object_action(access, dataset, "delete")
    folder = dataset.storage_dir()
    with transaction.atomic():
        versions = list(
            DatasetVersion.objects.for_team(access.team).filter(dataset=dataset).values("number", "content_hash")
        )
        audit.record("dataset.deleted", access=access, target=dataset, ip=ip, name=dataset.name, versions=versions)
        Dataset.objects.for_team(access.team).filter(pk=dataset.pk).delete()
        transaction.on_commit(lambda: shutil.rmtree(folder, ignore_errors=True))


def visible_datasets(access: TeamAccess, action: str = "view") -> QuerySet[Dataset]:
    """The team's datasets the actor may see, or with ``action="use"`` train on (restricted ones need a share)."""
    return visible_objects(access, Dataset.objects.for_team(access.team), action)
