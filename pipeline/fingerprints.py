"""What planning knows of a source photo without decoding it: its content hash and pixel size.

A catalog's sources are thousands of multi-megabyte photos on S3. Planning needs of each only an
identity (its sha256 goes into every variant's inputs key) and its pixel size (the canvas of
keypoint files that state none). Both are cached under `{output}/_cache/fingerprints/`, keyed by what
storage says of the object without reading it (S3: URI, ETag and size; local: path, size and
modification time), so planning a rerun of an unchanged catalog costs a HEAD (or stat) and a
small read per source, and no source download. A changed object has another key: it is read,
hashed and measured again.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from model_core.errors import InputError
from model_core.images import read_image_size

from . import storage
from .inputs import DEFAULT_LIMITS, InputLimits

CACHE = "_cache"
FINGERPRINTS = "fingerprints"
# S3 requests in flight at once while planning: enough to hide a request's latency behind
# others, few enough for one client's connection pool (boto3's default is 10; we raise it).
PLANNING_REQUESTS = 16


@dataclass(frozen=True)
class SourceFingerprint:
    uri: str
    sha256: str
    size: int  # bytes
    width: int
    height: int

    @property
    def canvas(self) -> tuple[int, int]:
        return self.width, self.height


def fingerprint_sources(
    uris: list[str], output: str, limits: InputLimits = DEFAULT_LIMITS
) -> dict[str, SourceFingerprint | InputError]:
    """The fingerprint of every source (each URI once), or the error that makes it unusable;
    requests run concurrently, PLANNING_REQUESTS at a time."""
    unique = sorted(set(uris))
    with ThreadPoolExecutor(max_workers=PLANNING_REQUESTS) as pool:
        return dict(zip(unique, pool.map(lambda uri: _fingerprint_or_error(uri, output, limits), unique), strict=True))


def _fingerprint_or_error(uri: str, output: str, limits: InputLimits) -> SourceFingerprint | InputError:
    try:
        return fingerprint_source(uri, output, limits)
    except InputError as error:
        return error


def fingerprint_source(uri: str, output: str, limits: InputLimits = DEFAULT_LIMITS) -> SourceFingerprint:
    info = storage.stat(uri)
    if info is None:
        raise storage.StorageError(f"{uri}: no such {'object' if storage.is_s3(uri) else 'file'}")
    if limits.max_bytes is not None and info.size > limits.max_bytes:
        raise storage.too_large(uri, info.size, limits.max_bytes)
    cache_uri = _cache_uri(output, info)
    cached = _read_cached(cache_uri, uri)
    if cached is not None:
        return cached
    data = storage.read_bytes(uri, max_bytes=limits.max_bytes)
    width, height = read_image_size(data, uri, limits.image_formats)
    fingerprint = SourceFingerprint(uri, hashlib.sha256(data).hexdigest(), len(data), width, height)
    storage.write_bytes(cache_uri, json.dumps(asdict(fingerprint)).encode(), content_type="application/json")
    return fingerprint


def _cache_uri(output: str, info: storage.ObjectInfo) -> str:
    key = hashlib.sha256(f"{info.uri}\n{info.size}\n{info.version}".encode()).hexdigest()
    return storage.join(output, CACHE, FINGERPRINTS, f"{key}.json")


def _read_cached(cache_uri: str, uri: str) -> SourceFingerprint | None:
    """A cache entry, or None where there is none or it is unreadable (then it is measured again)."""
    try:
        data = json.loads(storage.read_bytes(cache_uri))
        fingerprint = SourceFingerprint(
            uri=str(data["uri"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            width=int(data["width"]),
            height=int(data["height"]),
        )
    except (InputError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return fingerprint if fingerprint.uri == uri else None
