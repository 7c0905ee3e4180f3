"""What a run accepts as input: where its photos and poses may come from, how large a file may be
and which image formats are opened.

A manifest on S3 is written by a catalog team, and the worker that reads it can read more than
the team should: its own disk, every bucket its role reaches. So with a manifest on S3, local
paths are refused and inputs must lie in the manifest's bucket, unless an allowed prefix
(`--allow-input`, the flow's `allow_inputs`) admits them. A local manifest is its user's own: it
may name any local file and any S3 URI.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from model_core.images import PHOTO_FORMATS

from . import storage


@dataclass(frozen=True)
class InputLimits:
    """What a read of an input may cost and what it may be. The defaults are the library's (no
    byte cap); a run takes its own from RunSettings."""

    max_bytes: int | None = None
    image_formats: tuple[str, ...] = PHOTO_FORMATS


def location_problem(uri: str, manifest_uri: str, allowed: tuple[str, ...] = ()) -> str | None:
    """Why a manifest at `manifest_uri` may not name `uri` (a resolved source or pose), or None."""
    if storage.is_s3(uri) and has_dot_segments(uri):
        # S3 keys are literal, but a gateway that normalises paths would serve another bucket.
        return f"{uri}: an S3 URI with '.' or '..' in its path; name the object by its own key"
    if not storage.is_s3(manifest_uri) or any(is_under(uri, prefix) for prefix in allowed):
        return None
    if not storage.is_s3(uri):
        return f"{uri}: a local path in a manifest on S3; give an s3:// URI (or admit the folder with --allow-input)"
    bucket = storage.parse_s3(manifest_uri).bucket
    if storage.parse_s3(uri).bucket != bucket:
        return f"{uri}: outside the manifest's bucket {bucket} (--allow-input PREFIX admits another)"
    return None


def has_dot_segments(uri: str) -> bool:
    return any(segment in (".", "..") for segment in uri.removeprefix(storage.S3_SCHEME).split("/"))


def is_under(uri: str, prefix: str) -> bool:
    """Whether `uri` lies in the folder `prefix` (an s3:// bucket or prefix, or a local folder):
    s3://b/poses admits s3://b/poses/x.json, not s3://b/poses-old/x.json."""
    if storage.is_s3(prefix) != storage.is_s3(uri):
        return False
    if not storage.is_s3(uri):
        uri, prefix = posixpath.normpath(uri), posixpath.normpath(prefix)
    return uri.startswith(prefix.rstrip("/") + "/")


DEFAULT_LIMITS = InputLimits()
