"""Reading and writing catalog files on S3 (`s3://bucket/key`) or local disk, one interface.

S3 goes through boto3's own configuration only: the default credential chain, and
`AWS_ENDPOINT_URL` for S3-compatible stores (MinIO, a test server), so nothing here is
specific to one provider. Retries are boto3's adaptive mode, and the idempotent operations
(reads, listings, plain writes, deletes) try again after TRANSIENT_RETRY_DELAYS_S when a
transient error still gets through: after an outage boto3's retry quota is spent, and for a
while every single error would reach the caller. Conditional writes are not retried here (a
lost response to a write that succeeded would read as "someone else won"). Local writes are atomic (a temp
file renamed into place), so a reader never sees half a file. Errors name the URI and never
carry credentials.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from model_core.errors import InputError
from model_core.training_files import write_file_whole

S3_SCHEME = "s3://"


def local_cache_root() -> Path:
    """This machine's cache of things fetched or measured once (OpenPose weights, batch memory
    footprints): $FPDM_CACHE, else $XDG_CACHE_HOME/fpdm, else ~/.cache/fpdm."""
    if os.environ.get("FPDM_CACHE"):
        return Path(os.environ["FPDM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fpdm"


class StorageError(InputError):
    """A URI that could not be read or written: missing object, no access, bad URI."""


class TransientStorageError(RuntimeError):
    """Storage failed in a way that may pass: throttling (SlowDown), a 5xx, a timeout, a dropped
    connection. Not bad input: the task that met it is retried, and its row is not failed for it."""


# S3 error codes that say "try again", as opposed to "this request is wrong".
TRANSIENT_S3_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestTimeout",
    "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "500", "502", "503", "504",
    "ExpiredToken", "TokenRefreshRequired", "RequestExpired",
}  # fmt: skip


# Seconds to wait before each further try of an idempotent operation that met a transient error.
TRANSIENT_RETRY_DELAYS_S = (0.5, 2.0, 5.0)


def retrying(step, delays: tuple[float, ...], *args, **kwargs):
    """`step(*args, **kwargs)`, tried again after each of `delays` while it raises
    TransientStorageError; the last error propagates (to the task, which has retries of its own)."""
    for delay in delays:
        try:
            return step(*args, **kwargs)
        except TransientStorageError:
            time.sleep(delay)
    return step(*args, **kwargs)


def retry_transient(operation):
    """An idempotent storage operation, tried again after TRANSIENT_RETRY_DELAYS_S."""

    @functools.wraps(operation)
    def retried(*args, **kwargs):
        return retrying(operation, TRANSIENT_RETRY_DELAYS_S, *args, **kwargs)

    return retried


@dataclass(frozen=True)
class ObjectInfo:
    """What storage says of an object without reading it: enough to tell whether it changed."""

    uri: str
    size: int
    version: str  # S3: the ETag; local: the modification time in nanoseconds


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith(S3_SCHEME)


def parse_s3(uri: str) -> S3Location:
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in S3 URI")
    return S3Location(bucket, key)


def join(base: str | Path, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI with '/'."""
    base = str(base)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def _client():
    return _process_client(os.getpid())


@lru_cache(maxsize=1)
def _process_client(pid: int):
    import boto3
    from botocore.config import Config

    # One client per process: boto3 clients are thread-safe and costly to create, but a forked
    # process (a data-loader worker, a forked flow worker) must not share its parent's
    # connection pool, so the cache is keyed by the process.
    return boto3.client("s3", config=Config(retries={"mode": "adaptive", "max_attempts": 8}))


_client.cache_clear = _process_client.cache_clear  # a test that starts another S3 server resets it


def _s3_error(uri: str, exc: Exception) -> StorageError | TransientStorageError:
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        CredentialRetrievalError,
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
    )

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in TRANSIENT_S3_CODES:
            return TransientStorageError(f"{uri}: S3 error {code} (transient)")
        if code in ("NoSuchKey", "404", "NotFound"):
            return StorageError(f"{uri}: no such object")
        if code == "NoSuchBucket":
            return StorageError(f"{uri}: no such bucket")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"{uri}: access denied ({code})")
        return StorageError(f"{uri}: S3 error {code or 'unknown'}")
    # Connection and credential problems: the class name says what; the message may not be safe.
    # HTTPClientError covers a connection closed or reset before the response (a load balancer
    # dropping it), a read timeout and a response body cut short: all worth another try.
    # Temporary credentials being refreshed (an instance role's, a throttled metadata service)
    # pass too; no credentials at all do not.
    if isinstance(exc, (ConnectionError, HTTPClientError, IncompleteReadError, CredentialRetrievalError)) and not isinstance(
        exc, NoCredentialsError
    ):
        return TransientStorageError(f"{uri}: S3 unreachable ({exc.__class__.__name__}; transient)")
    return StorageError(f"{uri}: S3 unreachable or unconfigured ({exc.__class__.__name__})")


@retry_transient
def read_bytes(uri: str | Path, max_bytes: int | None = None) -> bytes:
    """A whole object. With `max_bytes`, an object larger than that is refused before its body
    is read (a StorageError naming its size)."""
    uri = str(uri)
    if is_s3(uri):
        location = parse_s3(uri)
        try:
            response = _client().get_object(Bucket=location.bucket, Key=location.key)
            if max_bytes is not None and int(response["ContentLength"]) > max_bytes:
                response["Body"].close()
                raise too_large(uri, int(response["ContentLength"]), max_bytes)
            return response["Body"].read()
        except StorageError:
            raise
        except Exception as exc:  # botocore raises many unrelated classes
            raise _s3_error(uri, exc) from None
    try:
        if max_bytes is not None and (size := os.stat(uri).st_size) > max_bytes:
            raise too_large(uri, size, max_bytes)
        return Path(uri).read_bytes()
    except FileNotFoundError:
        raise StorageError(f"{uri}: no such file") from None
    except OSError as exc:
        raise StorageError(f"{uri}: cannot read ({exc.strerror or exc})") from None


def too_large(uri: str, size: int, max_bytes: int) -> StorageError:
    """The error for an input over the run's byte cap."""
    return StorageError(f"{uri}: {size} bytes, over the {max_bytes}-byte limit for an input (max_input_bytes)")


@retry_transient
def write_bytes(uri: str | Path, data: bytes, content_type: str | None = None) -> str | None:
    """Write a whole object. S3 PUTs are atomic by nature; local files go through a rename.
    Returns the S3 object's ETag (what a listing will say of this very object), None on disk."""
    uri = str(uri)
    if is_s3(uri):
        location = parse_s3(uri)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            written = _client().put_object(Bucket=location.bucket, Key=location.key, Body=data, **extra)
        except Exception as exc:
            raise _s3_error(uri, exc) from None
        return written.get("ETag", "").strip('"') or None
    write_file_whole(Path(uri), data)
    return None


@retry_transient
def stat(uri: str | Path) -> ObjectInfo | None:
    """Size and version of an object (a HEAD request, or a stat), or None if there is none."""
    uri = str(uri)
    if not is_s3(uri):
        try:
            info = os.stat(uri)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"{uri}: cannot read ({exc.strerror or exc})") from None
        return ObjectInfo(uri, info.st_size, str(info.st_mtime_ns)) if Path(uri).is_file() else None
    from botocore.exceptions import ClientError

    location = parse_s3(uri)
    try:
        head = _client().head_object(Bucket=location.bucket, Key=location.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _s3_error(uri, exc) from None
    except Exception as exc:
        raise _s3_error(uri, exc) from None
    return ObjectInfo(uri, int(head["ContentLength"]), head.get("ETag", "").strip('"'))


def exists(uri: str | Path) -> bool:
    return stat(uri) is not None


def create_exclusive(uri: str | Path, data: bytes) -> bool:
    """Write an object only if none exists there; True if this call created it. Two processes
    racing for the same name get one True between them: S3's conditional write (If-None-Match)
    or an exclusive create on disk."""
    uri = str(uri)
    if is_s3(uri):
        from botocore.exceptions import ClientError

        location = parse_s3(uri)
        try:
            _client().put_object(Bucket=location.bucket, Key=location.key, Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise _s3_error(uri, exc) from None
        except Exception as exc:
            raise _s3_error(uri, exc) from None
        return True
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "wb") as f:
        f.write(data)
    return True


@retry_transient
def read_versioned(uri: str | Path) -> tuple[bytes, str] | None:
    """An object's bytes and its version (S3: the ETag; on disk: the sha256 of the bytes), or
    None if there is none: what write_if compares against."""
    uri = str(uri)
    if not is_s3(uri):
        try:
            data = Path(uri).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"{uri}: cannot read ({exc.strerror or exc})") from None
        return data, hashlib.sha256(data).hexdigest()
    location = parse_s3(uri)
    try:
        found = _client().get_object(Bucket=location.bucket, Key=location.key)
        return found["Body"].read(), found.get("ETag", "").strip('"')
    except Exception as exc:
        error = _s3_error(uri, exc)
        if isinstance(error, StorageError) and "no such object" in str(error):
            return None
        raise error from None


def write_if(uri: str | Path, data: bytes, version: str | None) -> str | None:
    """Compare and swap: write the object only if it is still at `version` (None: only if there
    is none), and return its new version; None if the condition failed (another writer came
    first). S3's conditional writes (If-Match, If-None-Match); on disk, the check and the
    atomic rename under an exclusive lock on a `.lock` file beside the object."""
    uri = str(uri)
    if is_s3(uri):
        from botocore.exceptions import ClientError

        location = parse_s3(uri)
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            written = _client().put_object(Bucket=location.bucket, Key=location.key, Body=data, **condition)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                return None
            raise _s3_error(uri, exc) from None
        except Exception as exc:
            raise _s3_error(uri, exc) from None
        return written.get("ETag", "").strip('"')
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = read_versioned(path)
        if (current[1] if current else None) != version:
            return None
        write_bytes(path, data)
        return hashlib.sha256(data).hexdigest()


@retry_transient
def delete(uri: str | Path) -> None:
    """Remove an object; one that is not there is not an error."""
    uri = str(uri)
    if not is_s3(uri):
        Path(uri).unlink(missing_ok=True)
        return
    location = parse_s3(uri)
    try:
        _client().delete_object(Bucket=location.bucket, Key=location.key)
    except Exception as exc:
        raise _s3_error(uri, exc) from None


@retry_transient
def list_objects(prefix: str | Path) -> list[ObjectInfo]:
    """Every file under a prefix (recursively) with its size and version, sorted by URI: one
    listing request per 1,000 objects on S3, however many there are."""
    prefix = str(prefix)
    if not is_s3(prefix):
        root = Path(prefix)
        if not root.is_dir():
            raise StorageError(f"{prefix}: no such folder")
        found = []
        for path in root.rglob("*"):
            if path.name.endswith(".partial") or not path.is_file():
                continue
            info = path.stat()
            found.append(ObjectInfo(str(path), info.st_size, str(info.st_mtime_ns)))
        return sorted(found, key=lambda o: o.uri)
    location = parse_s3(prefix)
    found = []
    try:
        for page in _client().get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.key):
            found += [
                ObjectInfo(S3Location(location.bucket, item["Key"]).uri, int(item["Size"]), item.get("ETag", "").strip('"'))
                for item in page.get("Contents", [])
            ]
    except Exception as exc:
        raise _s3_error(prefix, exc) from None
    return sorted(found, key=lambda o: o.uri)


def list_prefix(prefix: str | Path) -> list[str]:
    """Every file under a prefix (recursively), as full URIs or paths, sorted."""
    return [info.uri for info in list_objects(prefix)]
