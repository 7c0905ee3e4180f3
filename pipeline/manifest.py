"""Catalog manifests: the CSV merchandisers edit, one row per garment and target pose.

Validation reports every problem at once, each with its spreadsheet row number (the header is
row 1), column and reason; a manifest with some bad rows still yields its good rows. Excel
habits are normal input: a UTF-8 BOM, `;` as separator, trailing blank rows, stray spaces.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from dataclasses import dataclass, field

from model_core.errors import InputError

from . import storage
from .inputs import location_problem

# The longest cell a row may have (a free-text note is far shorter).
MAX_CELL_CHARS = 131_072
REQUIRED_COLUMNS = ("garment_id", "source_image", "target_pose")
OPTIONAL_COLUMNS = ("variant_id", "seed", "num_candidates", "steps", "guidance_scale", "enabled", "notes")
# Ids become parts of S3 keys and file names: letters, digits, '.', '_' and '-' only, and
# not made of dots alone ('.', '..' would walk the key hierarchy). Use with fullmatch: `$` alone
# would let a trailing newline through.
SAFE_ID = re.compile(r"(?!\.+\Z)[A-Za-z0-9._-]{1,128}")
# Seeds go to torch.Generator.manual_seed, which takes a signed 64-bit integer.
MAX_SEED = 2**63 - 1
# Longer than any number a sheet means; bounds the work of converting it.
MAX_NUMBER_CHARS = 32
TRUE_WORDS, FALSE_WORDS = {"", "1", "true", "yes", "y", "x"}, {"0", "false", "no", "n"}


class ManifestError(InputError):
    """The manifest as a whole is unusable: unreadable, or missing a required column."""


@dataclass(frozen=True)
class RowProblem:
    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}, {self.column}: {self.reason}" if self.column else f"row {self.row}: {self.reason}"


@dataclass(frozen=True)
class ManifestRow:
    row: int
    garment_id: str
    source_image: str  # URI or path, resolved against the manifest's location
    target_pose: str  # a pose file, or a pose set (ends with '/')
    variant_id: str | None = None
    seed: int | None = None
    num_candidates: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # unknown columns, carried into metadata

    @property
    def is_pose_set(self) -> bool:
        return self.target_pose.endswith("/")


@dataclass
class Manifest:
    uri: str
    rows: list[ManifestRow]  # valid, enabled rows
    problems: list[RowProblem]  # every problem of every invalid row
    disabled: list[int]  # rows with enabled = false: skipped on purpose
    sha256: str = ""  # of the manifest's bytes: a stored plan records which manifest it planned

    @property
    def invalid_rows(self) -> list[int]:
        return sorted({p.row for p in self.problems})


def read_manifest(uri: str, allow_inputs: tuple[str, ...] = ()) -> Manifest:
    return parse_manifest(storage.read_bytes(uri), uri, allow_inputs)


def parse_manifest(data: bytes, uri: str, allow_inputs: tuple[str, ...] = ()) -> Manifest:
    """The manifest's rows and every problem of its invalid ones. `allow_inputs`: folders besides
    its own bucket that a manifest on S3 may take inputs from (pipeline.inputs)."""
    columns, records = _read_records(data, uri)
    base = _location_of(uri)
    rows, problems, disabled, seen = [], [], [], {}
    for row_number, fields in records:
        if isinstance(fields, RowProblem):
            problems.append(fields)
            continue
        values = {column: value.strip() for column, value in zip(columns, fields, strict=False)}
        if not any(field.strip() for field in fields):
            continue  # a blank row in the middle of the sheet (values past the header's columns count)
        if len(fields) != len(columns):
            # A ',' in a free-text value that was not quoted shifts every later column: no value
            # of the row can be trusted.
            problems.append(
                RowProblem(
                    row_number,
                    "",
                    f"{len(fields)} values where the header has {len(columns)} columns "
                    f"(a value with a separator in it must be in double quotes)",
                )
            )
            continue
        row_problems: list[RowProblem] = []

        def problem(column: str, reason: str) -> None:
            row_problems.append(RowProblem(row_number, column, reason))  # noqa: B023 - called before the loop moves on

        for column in REQUIRED_COLUMNS:
            if not values[column]:
                problem(column, "empty")
        for column in ("garment_id", "variant_id"):
            value = values.get(column, "")
            if value and not SAFE_ID.fullmatch(value):
                problem(column, f"{shown(value)} is not a safe id (letters, digits, '.', '_', '-'; at most 128)")
        if values["garment_id"].startswith("_"):
            problem(
                "garment_id",
                f"{shown(values['garment_id'])} starts with '_', which is kept for the output's own folders (_poses, _runs)",
            )
        seed = _number(values.get("seed", ""), int, "seed", problem, minimum=0, maximum=MAX_SEED)
        candidates = _number(values.get("num_candidates", ""), int, "num_candidates", problem, minimum=1, maximum=16)
        steps = _number(values.get("steps", ""), int, "steps", problem, minimum=1, maximum=1000)
        guidance = _number(values.get("guidance_scale", ""), float, "guidance_scale", problem, minimum=0.0, maximum=50.0)
        enabled = values.get("enabled", "").lower()
        if enabled not in TRUE_WORDS | FALSE_WORDS:
            problem("enabled", f"{shown(values['enabled'])} is not yes/no")

        resolved = {column: _resolve(base, values[column]) for column in ("source_image", "target_pose") if values[column]}
        for column, input_uri in resolved.items():
            refused = location_problem(input_uri, str(uri), tuple(allow_inputs))
            if refused:
                problem(column, refused)

        key = (values["garment_id"], values.get("variant_id") or values["target_pose"])
        if all(key) and key in seen:
            what = "variant_id" if values.get("variant_id") else "target_pose"
            problem(what, f"duplicate of row {seen[key]} (same garment_id and {what})")
        if row_problems:
            problems += row_problems
            continue
        seen[key] = row_number
        if enabled in FALSE_WORDS:
            disabled.append(row_number)
            continue
        rows.append(
            ManifestRow(
                row=row_number,
                garment_id=values["garment_id"],
                source_image=resolved["source_image"],
                target_pose=resolved["target_pose"],
                variant_id=values.get("variant_id") or None,
                seed=seed,
                num_candidates=candidates,
                steps=steps,
                guidance_scale=guidance,
                notes=values.get("notes", ""),
                extra={k: v for k, v in values.items() if k not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS},
            )
        )
    return Manifest(uri=str(uri), rows=rows, problems=problems, disabled=disabled, sha256=hashlib.sha256(data).hexdigest())


def shown(value: str, limit: int = 40) -> str:
    """A value quoted for a message, cut short: a message names a bad value, it does not echo a
    whole cell (or file)."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def _read_records(data: bytes, uri: str) -> tuple[list[str], list[tuple[int, list[str] | RowProblem]]]:
    """The header's column names, and every record after it with its spreadsheet row number
    (the header is row 1; a blank line is a row too, so the numbers are the sheet's). A record
    the CSV reader cannot read is a problem of that row alone."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{uri}: not UTF-8 text (byte {exc.start}); save the sheet as CSV UTF-8") from None
    header_line = text.splitlines()[0] if text.strip() else ""
    separator = ";" if header_line.count(";") > header_line.count(",") else ","
    # The reader's own cell limit is off (the whole text is in memory already): its error would
    # leave it inside a quoted cell, reading that cell's lines as rows. MAX_CELL_CHARS is checked
    # per row instead.
    previous_limit = csv.field_size_limit(len(text) + 1)
    try:
        return _records(csv.reader(io.StringIO(text, newline=""), delimiter=separator), uri)
    finally:
        csv.field_size_limit(previous_limit)


def _records(reader, uri: str) -> tuple[list[str], list[tuple[int, list[str] | RowProblem]]]:
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise ManifestError(f"{uri}: the header is not readable CSV ({exc})") from None
    columns = [name.strip() for name in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(f"{uri}: missing required column(s) {', '.join(missing)} (has: {', '.join(columns)})")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ManifestError(f"{uri}: column(s) {', '.join(duplicated)} appear more than once in the header")
    records: list[tuple[int, list[str] | RowProblem]] = []
    row_number = 1
    while True:
        row_number += 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            records.append((row_number, RowProblem(row_number, "", f"not readable CSV ({exc})")))
            continue
        longest = max((len(field) for field in fields), default=0)
        if longest > MAX_CELL_CHARS:
            problem = RowProblem(row_number, "", f"a cell of {longest} characters, over the {MAX_CELL_CHARS}-character limit")
            records.append((row_number, problem))
            continue
        records.append((row_number, fields))
    return columns, records


def _number(text: str, kind, column: str, problem, minimum=None, maximum=None):
    if not text:
        return None
    if len(text) > MAX_NUMBER_CHARS:
        problem(column, f"{shown(text, 12)} is not a number this column takes (over {MAX_NUMBER_CHARS} characters)")
        return None
    try:
        if kind is int:
            whole = re.fullmatch(r"([+-]?\d+)(?:\.0*)?", text)  # a sheet may write 7 as 7.0
            if whole is None:
                raise ValueError(text)
            value = int(whole.group(1))
        else:
            value = float(text)
    except ValueError:
        problem(column, f"{shown(text)} is not {'a whole number' if kind is int else 'a number'}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        problem(column, f"{shown(text)} is not a finite number")
        return None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        problem(column, f"{text} is outside {minimum}..{maximum}" if maximum is not None else f"{text} is below {minimum}")
        return None
    return value


def _location_of(uri: str) -> str:
    uri = str(uri)
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def _resolve(base: str, value: str) -> str:
    """A URI or absolute path as it is; anything else relative to the manifest's location."""
    if storage.is_s3(value) or value.startswith("/"):
        return value
    resolved = storage.join(base, value)
    return resolved + "/" if value.endswith("/") and not resolved.endswith("/") else resolved
