"""Where training reads its pairs and writes its checkpoints: a small file interface, so that a
pairs CSV, its images, the checkpoints and the final model may live on local disk or in an
object store without model_core knowing any store.

model_core ships the local implementation (`LocalTrainingFiles`, the default); the catalog's S3
one is `pipeline.training_storage.S3TrainingFiles`, which `fpdm train` picks for s3:// paths.
Locations are strings (a local path, or a URI such as s3://bucket/key); local ones may be Paths.

An implementation must be picklable and cheap to copy: data loader workers are separate
processes that get their own copy, so it carries configuration only and opens any client
lazily, once per process.

The completion rule (`publish_directory`): a directory (a checkpoint, a model) is written as
its files first and one marker file last, after removing an earlier marker before anything
else. A reader that finds the marker finds every file written before it (each file is written
whole: a rename on disk, a PUT on S3, whose reads after a write are consistent); a writer that
stops between files leaves a directory without its marker, which readers treat as absent.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

Location = str | Path


class TrainingFiles:
    """Reading, listing, writing and deleting files for training. Subclasses implement the
    methods that raise NotImplementedError; `join`, `parent` and `is_local` work on local paths
    and on scheme://bucket/key URIs alike."""

    def read_bytes(self, location: Location) -> bytes:
        raise NotImplementedError

    def list_files(self, folder: Location) -> list[str]:
        """Every file below `folder`, recursively, as full locations, sorted; [] when none."""
        raise NotImplementedError

    def write_bytes(self, location: Location, data: bytes) -> None:
        """Write a whole file; a reader sees the old file or the new one, never half of one."""
        raise NotImplementedError

    def put_file(self, local_path: Path, location: Location) -> None:
        """Make the local file `location`, whole or not at all (as write_bytes). The local file is
        consumed: moved where it can be, else deleted after the copy."""
        raise NotImplementedError

    def get_file(self, location: Location, local_path: Path) -> None:
        """Copy `location` to the local file `local_path`."""
        raise NotImplementedError

    def delete(self, location: Location) -> None:
        """Remove one file; one that is not there is not an error."""
        raise NotImplementedError

    def delete_folder(self, folder: Location) -> None:
        """Remove every file below `folder`; none there is not an error."""
        raise NotImplementedError

    def staging_directory(self, location: Location) -> contextlib.AbstractContextManager[Path]:
        """A local directory to build a directory bound for `location` in, removed on exit."""
        return _temporary_directory(None)

    @staticmethod
    def is_local(location: Location) -> bool:
        return "://" not in str(location)

    def join(self, base: Location, *parts: str) -> str:
        base = str(base)
        if self.is_local(base):
            return os.path.join(base, *parts)
        return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])

    def parent(self, location: Location) -> str:
        location = str(location)
        if self.is_local(location):
            return str(Path(location).parent)
        return location.rstrip("/").rsplit("/", 1)[0]

    def relative(self, location: Location, folder: Location) -> str:
        """`location` below `folder`, with '/' between its parts."""
        if self.is_local(location):
            return Path(location).relative_to(folder).as_posix()
        return str(location)[len(str(folder).rstrip("/")) + 1 :]


class LocalTrainingFiles(TrainingFiles):
    """Local disk. Writes go through a temporary file renamed into place."""

    def read_bytes(self, location: Location) -> bytes:
        try:
            return Path(_local(location)).read_bytes()
        except OSError as exc:
            raise InputError(f"{location}: cannot read ({exc.strerror or exc})") from None

    def list_files(self, folder: Location) -> list[str]:
        root = Path(_local(folder))
        if not root.is_dir():
            return []
        return sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".partial"))

    def write_bytes(self, location: Location, data: bytes) -> None:
        write_file_whole(Path(_local(location)), data)

    def put_file(self, local_path: Path, location: Location) -> None:
        path = Path(_local(location))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(local_path, path)  # the staging directory is beside it: same file system
        except OSError:
            self.write_bytes(path, Path(local_path).read_bytes())
            Path(local_path).unlink()

    def get_file(self, location: Location, local_path: Path) -> None:
        self.write_bytes(local_path, self.read_bytes(location))

    def delete(self, location: Location) -> None:
        Path(_local(location)).unlink(missing_ok=True)

    def delete_folder(self, folder: Location) -> None:
        shutil.rmtree(_local(folder), ignore_errors=True)

    def staging_directory(self, location: Location) -> contextlib.AbstractContextManager[Path]:
        # Beside the target, so that publishing moves files instead of copying gigabytes.
        parent = Path(_local(location)).parent
        parent.mkdir(parents=True, exist_ok=True)
        return _temporary_directory(parent)


LOCAL_FILES = LocalTrainingFiles()


def _local(location: Location) -> str:
    if not TrainingFiles.is_local(location):
        raise InputError(
            f"{location}: not a local path; training reads and writes URIs through a TrainingFiles that knows "
            "them (`fpdm train` uses pipeline.training_storage.S3TrainingFiles for s3:// paths)"
        )
    return str(location)


@contextlib.contextmanager
def _temporary_directory(parent: Path | None) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish_directory(files: TrainingFiles, staged: Path, location: Location, marker: str) -> None:
    """Copy the local directory `staged` to `location` under the completion rule (module
    docstring): the old marker goes first, then the folders about to be rewritten (so no stale
    file of an earlier version stays among the new ones), then every file, the marker last."""
    files.delete(files.join(location, marker))
    entries = sorted(staged.iterdir())
    for entry in entries:
        if entry.is_dir():
            files.delete_folder(files.join(location, entry.name))
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        relative = path.relative_to(staged).as_posix()
        if relative != marker:
            files.put_file(path, files.join(location, *relative.split("/")))
    files.put_file(staged / marker, files.join(location, marker))


def retract_directory(files: TrainingFiles, location: Location, marker: str) -> None:
    """Delete a directory written by publish_directory: the marker first, so that it never looks
    complete while half deleted."""
    files.delete(files.join(location, marker))
    files.delete_folder(location)


def download_directory(files: TrainingFiles, location: Location, local_dir: Path, skip: re.Pattern | None = None) -> Path:
    """Copy every file below `location` into `local_dir`, but those whose path below it `skip`
    matches (from its start); an empty folder is an InputError."""
    found = files.list_files(location)
    if not found:
        raise InputError(f"{location}: no files there")
    for remote in found:
        relative = files.relative(remote, location)
        if skip is None or not skip.match(relative):
            files.get_file(remote, local_dir / relative)
    return local_dir


# ----- paths inside an object store -----------------------------------------------------------

MAX_KEY_BYTES = 1024  # S3's limit on a key


def object_path_problem(value: str) -> str | None:
    """Why `value`, a path relative to a CSV in an object store, cannot name an object below the
    CSV's folder, or None. Keys are literal there: '.' and '..' would name other objects (or, on
    a gateway that normalises paths, leave the folder), so they are refused, as are absolute
    paths and URIs."""
    if value.startswith("/") or "://" in value:
        return "is absolute; paths are relative to the CSV's folder"
    if "\\" in value:
        return "has a backslash; separate folders with '/'"
    if any(ord(character) < 32 or ord(character) == 127 for character in value):
        return "has a control character"
    segments = value.split("/")
    if any(segment in (".", "..") for segment in segments):
        return "has a '.' or '..' segment; name the file by its path below the CSV's folder"
    if any(segment == "" for segment in segments):
        return "has an empty folder name ('//' or a trailing '/')"
    return None


def write_file_whole(path: Path, data: bytes) -> None:
    """Write a local file whole or not at all: a hidden `.partial` file beside it, synced, then
    renamed over it, so a reader (or a crash) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
