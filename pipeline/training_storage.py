"""Training's files on S3: model_core.training_files' interface for s3:// locations, local disk
for the rest, so one object serves a run that reads pairs from S3 and writes checkpoints
locally, or the other way round. `fpdm train` uses it when a path is an s3:// URI.

As `storage`: boto3's standard configuration (credential chain, AWS_ENDPOINT_URL), adaptive
retries, and the idempotent operations tried again after storage.TRANSIENT_RETRY_DELAYS_S;
errors name the URI and never carry credentials. Files are uploaded and downloaded with boto3's
managed transfers (multipart above 8 MB): a UNet's weights or an optimiser state run to gigabytes,
and a multipart upload, like a PUT, makes its object appear whole or not at all.

The object pickles to nothing but its class (data loader workers get a copy); each process opens
its own client on first use (`storage`'s client is per process: a fork does not share its pool).
Reads, writes, listings and deletes are `storage`'s own; only the managed transfers and the batch
delete are here.
"""

from __future__ import annotations

import os
from pathlib import Path

from model_core.training_files import LocalTrainingFiles, Location, TrainingFiles

from . import storage
from .storage import StorageError, _client, parse_s3, retry_transient

DELETE_BATCH = 1000  # S3's most keys per DeleteObjects request


class S3TrainingFiles(TrainingFiles):
    """s3:// locations on S3; any other location on local disk."""

    def __init__(self):
        self._local = LocalTrainingFiles()

    def read_bytes(self, location: Location) -> bytes:
        if self.is_local(location):
            return self._local.read_bytes(location)
        return storage.read_bytes(str(location))

    def list_files(self, folder: Location) -> list[str]:
        if self.is_local(folder):
            return self._local.list_files(folder)
        return storage.list_prefix(str(folder).rstrip("/") + "/")

    def write_bytes(self, location: Location, data: bytes) -> None:
        if self.is_local(location):
            return self._local.write_bytes(location, data)
        storage.write_bytes(str(location), data)

    def put_file(self, local_path: Path, location: Location) -> None:
        if self.is_local(location):
            return self._local.put_file(local_path, location)
        _upload(Path(local_path), str(location))
        Path(local_path).unlink()

    def get_file(self, location: Location, local_path: Path) -> None:
        if self.is_local(location):
            return self._local.get_file(location, local_path)
        _download(str(location), Path(local_path))

    def delete(self, location: Location) -> None:
        if self.is_local(location):
            return self._local.delete(location)
        storage.delete(str(location))

    def delete_folder(self, folder: Location) -> None:
        if self.is_local(folder):
            return self._local.delete_folder(folder)
        found = self.list_files(folder)
        for start in range(0, len(found), DELETE_BATCH):
            _delete_keys(str(folder), [parse_s3(uri).key for uri in found[start : start + DELETE_BATCH]])

    def staging_directory(self, location: Location):
        if self.is_local(location):
            return self._local.staging_directory(location)
        return super().staging_directory(location)


def _error(uri: str, exc: Exception) -> Exception:
    from boto3.exceptions import S3UploadFailedError

    if isinstance(exc, S3UploadFailedError) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__  # the ClientError or connection error it wraps
    return storage._s3_error(uri, exc)


@retry_transient
def _upload(local_path: Path, uri: str) -> None:
    location = parse_s3(uri)
    try:
        _client().upload_file(str(local_path), location.bucket, location.key)
    except Exception as exc:
        raise _error(uri, exc) from None


@retry_transient
def _download(uri: str, local_path: Path) -> None:
    location = parse_s3(uri)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    partial = local_path.with_name(f".{local_path.name}.partial")
    try:
        _client().download_file(location.bucket, location.key, str(partial))
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise _error(uri, exc) from None
    os.replace(partial, local_path)


@retry_transient
def _delete_keys(uri: str, keys: list[str]) -> None:
    bucket = parse_s3(uri).bucket
    try:
        answer = _client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True})
    except Exception as exc:
        raise _error(uri, exc) from None
    if answer.get("Errors"):
        first = answer["Errors"][0]
        raise StorageError(f"s3://{bucket}/{first.get('Key')}: cannot delete ({first.get('Code', 'unknown')})")
