"""Catalog manifests: the CSV merchandisers edit, one row per garment and target pose.

Validation reports every problem at once, each with its spreadsheet row number (the header is
row 1), column and reason; a manifest with some bad rows still yields its good rows. Excel
habits are normal input: a UTF-8 BOM, `;` as separator, trailing blank rows, stray spaces.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass, field

import pandas as pd

from model_core.errors import InputError

from . import storage

REQUIRED_COLUMNS = ("garment_id", "source_image", "target_pose")
OPTIONAL_COLUMNS = ("variant_id", "seed", "num_candidates", "steps", "guidance_scale", "enabled", "notes")
# Ids become parts of S3 keys and file names: letters, digits, '.', '_' and '-' only, and
# not made of dots alone ('.', '..' would walk the key hierarchy).
SAFE_ID = re.compile(r"^(?!\.+$)[A-Za-z0-9._-]{1,128}$")
TRUE_WORDS, FALSE_WORDS = {"", "1", "true", "yes", "y", "x"}, {"0", "false", "no", "n"}


class ManifestError(InputError):
    """The manifest as a whole is unusable: unreadable, or missing a required column."""


@dataclass(frozen=True)
class RowProblem:
    row: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}, {self.column}: {self.reason}"


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


def read_manifest(uri: str) -> Manifest:
    return parse_manifest(storage.read_bytes(uri), uri)


def parse_manifest(data: bytes, uri: str) -> Manifest:
    table = _read_table(data, uri)
    base = _location_of(uri)
    rows, problems, disabled, seen = [], [], [], {}
    for index, record in enumerate(table.to_dict("records")):
        row_number = index + 2
        values = {k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()) for k, v in record.items()}
        if not any(values.values()):
            continue  # a blank row in the middle of the sheet
        row_problems: list[RowProblem] = []

        def problem(column: str, reason: str) -> None:
            row_problems.append(RowProblem(row_number, column, reason))  # noqa: B023 - called before the loop moves on

        for column in REQUIRED_COLUMNS:
            if not values[column]:
                problem(column, "empty")
        for column in ("garment_id", "variant_id"):
            value = values.get(column, "")
            if value and not SAFE_ID.match(value):
                problem(column, f"{value!r} is not a safe id (letters, digits, '.', '_', '-'; at most 128)")
        if values["garment_id"].startswith("_"):
            problem(
                "garment_id",
                f"{values['garment_id']!r} starts with '_', which is kept for the output's own folders (_poses, _runs)",
            )
        seed = _number(values.get("seed", ""), int, "seed", problem, minimum=0)
        candidates = _number(values.get("num_candidates", ""), int, "num_candidates", problem, minimum=1, maximum=16)
        steps = _number(values.get("steps", ""), int, "steps", problem, minimum=1, maximum=1000)
        guidance = _number(values.get("guidance_scale", ""), float, "guidance_scale", problem, minimum=0.0, maximum=50.0)
        enabled = values.get("enabled", "").lower()
        if enabled not in TRUE_WORDS | FALSE_WORDS:
            problem("enabled", f"{values['enabled']!r} is not yes/no")

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
                source_image=_resolve(base, values["source_image"]),
                target_pose=_resolve(base, values["target_pose"]),
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


def _read_table(data: bytes, uri: str) -> pd.DataFrame:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{uri}: not UTF-8 text (byte {exc.start}); save the sheet as CSV UTF-8") from None
    header = text.splitlines()[0] if text.strip() else ""
    separator = ";" if header.count(";") > header.count(",") else ","
    try:
        table = pd.read_csv(io.StringIO(text), sep=separator, dtype=str, keep_default_na=False, skip_blank_lines=True)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ManifestError(f"{uri}: not a readable CSV ({' '.join(str(exc).split())})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"{uri}: missing required column(s) {', '.join(missing)} (has: {', '.join(table.columns)})")
    return table


def _number(text: str, kind, column: str, problem, minimum=None, maximum=None):
    if not text:
        return None
    try:
        value = kind(float(text)) if kind is int and re.fullmatch(r"\d+\.0*", text) else kind(text)
    except ValueError:
        problem(column, f"{text!r} is not {'a whole number' if kind is int else 'a number'}")
        return None
    if isinstance(value, float) and not math.isfinite(value):
        problem(column, f"{text!r} is not a finite number")
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
