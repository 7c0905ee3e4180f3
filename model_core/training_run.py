"""Checkpointing, resuming and logging of a training run, the same for every trainer, on local
disk or in an object store (`training_files`).

`out` holds:
    train_log.jsonl          one JSON object per optimiser step
    checkpoint-NNNNNN/       a model directory + training_state.pt, written last: a checkpoint
                             without it is incomplete (its writer stopped) and never resumed from
    model_index.json, ...    the final model directory; model_index.json is written last

The log: on disk each step is appended as it is taken. An object store cannot append, so there
the log is kept in memory and the whole file is uploaded before each checkpoint and at the end
(one object users read as on disk, rather than parts to be put together): what a crash loses are
the steps after the last checkpoint, which the resumed run takes again anyway.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
from pathlib import Path

import torch

from . import distributed
from .distributed import World
from .errors import InputError, TrainingDiverged
from .loading import default_loader_workers, micro_batch_loader
from .pipeline_fpdm import MODEL_INDEX, FPDMPipeline
from .training_files import (
    LOCAL_FILES,
    Location,
    TrainingFiles,
    download_directory,
    publish_directory,
    retract_directory,
)
from .training_monitor import TENSORBOARD_FOLDER, Monitoring, TrainingMonitor

LOG_FILE = "train_log.jsonl"
TRAINING_STATE = "training_state.pt"
CHECKPOINT_FILE = re.compile(r"checkpoint-(\d+)/(.+)")

logger = logging.getLogger(__name__)

# A training output is also a model directory: its checkpoints, event files and log are not part
# of the model, and a download of it as a starting model leaves them out.
MODEL_DOWNLOAD_SKIPS = re.compile(r"(checkpoint-\d+|tensorboard)/|train_log\.jsonl$")


class TrainingRun:
    """One run's `out`: what it resumes from, its log, its checkpoints and final model.

    `keep_checkpoints`: after each new checkpoint is complete, delete all but the newest N
    complete ones (and incomplete ones older than the newest). None keeps every checkpoint: each
    is also the model at its step, the one to go back to when a later one turns out worse, and a
    deleted one cannot be trained again cheaply; pruning is the user's call.
    """

    def __init__(self, out: Location, resume: bool, files: TrainingFiles | None = None, keep_checkpoints: int | None = None):
        self.files = files or LOCAL_FILES
        self.remote = not self.files.is_local(out)
        self.out: Path | str = str(out).rstrip("/") if self.remote else Path(out)
        if keep_checkpoints is not None and keep_checkpoints < 1:
            raise InputError(f"keep_checkpoints must be at least 1 (the newest is never deleted), got {keep_checkpoints}")
        self.keep_checkpoints = keep_checkpoints
        if not self.remote:
            self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.files.join(self.out, LOG_FILE)
        self._downloads: tempfile.TemporaryDirectory | None = None
        self._mirrored: dict[str, Path] = {}  # name below `out` -> the local folder uploaded there

        listing = self.files.list_files(self.out)
        complete, incomplete = checkpoints_in(self.files, self.out, listing)
        if complete and not resume:
            # A later --resume would pick up the old run's newer checkpoints: refuse to mix runs.
            raise InputError(f"{self.out}: holds checkpoints of an earlier run; use --resume, or another --out")
        newest = complete[-1] if resume and complete else None
        if resume:
            _say_incomplete(incomplete, newest)
        self.resume_location = self._location(newest[1]) if newest else None
        self.resume_from: Path | None = self._local_copy(self.resume_location) if newest else None

        self._log_lines: list[str] = []
        has_log = self.files.join(self.out, LOG_FILE) in {str(found) for found in listing}
        if self.resume_from is None and has_log:
            self.files.delete(self.log_path)  # nothing to resume from: a fresh run starts a fresh log
        elif has_log and self.remote:
            self._log_lines = self.files.read_bytes(self.log_path).decode().splitlines()

    def starting_model(self, model: Location) -> Path | str:
        """The model directory to load: the checkpoint resumed from, else `model` (downloaded
        first when it is a URI; a preset name or local directory as it is)."""
        if self.resume_from is not None:
            return self.resume_from
        if not self.files.is_local(model):
            return self._local_copy(str(model).rstrip("/"))
        return model

    def load_state(self, optimizer, lr_scheduler, truncate_log: bool = True) -> int:
        """Restore optimiser and LR schedule; return the number of steps already done.
        `truncate_log`: drop the log's steps after the checkpoint (the writer's job: rank 0)."""
        if self.resume_from is None:
            return 0
        state = torch.load(self.resume_from / TRAINING_STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if truncate_log:
            self._truncate_log(state["step"])
        return int(state["step"])

    def log(self, record: dict) -> None:
        line = json.dumps(record)
        if self.remote:
            self._log_lines.append(line)
            return
        with Path(self.log_path).open("a") as log:
            log.write(line + "\n")

    def checkpoint(self, pipe: FPDMPipeline, optimizer, lr_scheduler, step: int) -> Path | str:
        folder = self.files.join(self.out, f"checkpoint-{step:06d}")
        self.upload_log()  # before the checkpoint: a resumed run finds every step up to it logged
        state = {"step": step, "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}
        with self.files.staging_directory(folder) as staged:
            pipe.save_pretrained(staged)
            torch.save(state, staged / TRAINING_STATE)
            publish_directory(self.files, staged, folder, TRAINING_STATE)
        self._prune()
        return self._location(folder)

    def save_final(self, pipe: FPDMPipeline) -> Path | str:
        """The trained model as `out`'s model directory, model_index.json last."""
        self.upload_log()
        with self.files.staging_directory(self.files.join(self.out, MODEL_INDEX)) as staged:
            pipe.save_pretrained(staged)
            publish_directory(self.files, staged, self.out, MODEL_INDEX)
        return self.out

    def _prune(self) -> None:
        if self.keep_checkpoints is None:
            return
        complete, incomplete = checkpoints_in(self.files, self.out, self.files.list_files(self.out))
        newest_step = complete[-1][0] if complete else 0
        doomed = complete[: -self.keep_checkpoints] + [c for c in incomplete if c[0] < newest_step]
        for _, folder in doomed:
            retract_directory(self.files, folder, TRAINING_STATE)

    def local_folder(self, name: str) -> Path:
        """A local folder for files that grow during the run (TensorBoard appends to its event
        files, S3 cannot): on S3 they are copied to `out/name` with the log, before each checkpoint
        and at the end."""
        if self._downloads is None:
            self._downloads = tempfile.TemporaryDirectory(prefix="fpdm-train-")
        folder = Path(self._downloads.name) / f"mirror-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        self._mirrored[name] = folder
        return folder

    def upload_log(self) -> None:
        if self.remote:
            self.files.write_bytes(self.log_path, "".join(line + "\n" for line in self._log_lines).encode())
            for name, folder in self._mirrored.items():
                for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                    self.files.write_bytes(self.files.join(self.out, name, *path.relative_to(folder).parts), path.read_bytes())

    def _truncate_log(self, step: int) -> None:
        # Steps logged after the checkpoint are redone by the resumed run; drop them so the
        # log has each step once.
        if self.remote:
            self._log_lines = [line for line in self._log_lines if line.strip() and json.loads(line)["step"] <= step]
            return
        log_path = Path(self.log_path)
        if not log_path.exists():
            return
        records = [line for line in log_path.read_text().splitlines() if line.strip()]
        kept = [line for line in records if json.loads(line)["step"] <= step]
        log_path.write_text("".join(line + "\n" for line in kept))

    def _local_copy(self, location: Path | str) -> Path:
        if not self.remote and self.files.is_local(location):
            return Path(location)
        if self._downloads is None:
            self._downloads = tempfile.TemporaryDirectory(prefix="fpdm-train-")
        target = Path(self._downloads.name) / str(len(list(Path(self._downloads.name).iterdir())))
        return download_directory(self.files, location, target, skip=MODEL_DOWNLOAD_SKIPS)

    def _location(self, location: str) -> Path | str:
        return location if self.remote else Path(location)


def checkpoints_in(files: TrainingFiles, out: Location, listing: list[str]) -> tuple[list, list]:
    """(complete, incomplete) checkpoints among `listing` (files below `out`), each a sorted list
    of (step, folder location)."""
    folders: dict[int, tuple[str, bool]] = {}
    for location in listing:
        match = CHECKPOINT_FILE.fullmatch(files.relative(location, out))
        if match is None:
            continue
        step = int(match.group(1))
        name = files.join(out, f"checkpoint-{match.group(1)}")
        done = folders.get(step, (name, False))[1] or match.group(2) == TRAINING_STATE
        folders[step] = (name, done)
    complete = [(step, name) for step, (name, done) in sorted(folders.items()) if done]
    incomplete = [(step, name) for step, (name, done) in sorted(folders.items()) if not done]
    return complete, incomplete


def latest_checkpoint(out: Location, files: TrainingFiles | None = None) -> Path | str | None:
    """The newest complete checkpoint in `out` (a Path on local disk), or None."""
    files = files or LOCAL_FILES
    complete, _ = checkpoints_in(files, out, files.list_files(out))
    if not complete:
        return None
    return Path(complete[-1][1]) if files.is_local(out) else complete[-1][1]


def _say_incomplete(incomplete: list, newest: tuple | None) -> None:
    skipped = [folder for step, folder in incomplete if newest is None or step > newest[0]]
    if skipped:
        instead = f"resuming from {newest[1]}" if newest else "no complete checkpoint: starting from the beginning"
        logger.warning(
            "%s: incomplete checkpoint%s (no %s: the run writing it stopped first), ignored; %s",
            ", ".join(skipped), "s" if len(skipped) > 1 else "", TRAINING_STATE, instead,
        )  # fmt: skip


# ----- the steps every trainer shares, for one process or many (distributed) -----------------


def total_steps(max_steps: int | None, epochs: int, dataset_size: int, batch_size: int, accumulation: int = 1) -> int:
    """`max_steps`, when given, is the run's length (as in transformers' Trainer); else `epochs`."""
    if max_steps is not None:
        return max_steps
    return epochs * max(1, max(1, dataset_size // batch_size) // accumulation)


def open_run(
    out, resume: bool, world: World, files: TrainingFiles | None = None, keep_checkpoints: int | None = None
) -> TrainingRun:
    """The run's output, opened by rank 0 first (it starts or keeps the log), then by the others,
    which only read it (the checkpoint to resume from)."""
    with distributed.main_first(world):
        run = TrainingRun(out, resume, files, keep_checkpoints)
    return run


def starting_model(run: TrainingRun, model, world: World):
    """The model directory every rank loads (a download of an S3 one, each rank its own)."""
    with distributed.main_first(world):
        return run.starting_model(model)


def load_state(run: TrainingRun, optimizer, lr_scheduler, world: World) -> int:
    """Every rank restores its optimiser and schedule; only rank 0, the writer, trims the log."""
    with distributed.main_first(world):
        done = run.load_state(optimizer, lr_scheduler, truncate_log=world.is_main)
    return done


def open_monitor(monitoring: Monitoring | None, run: TrainingRun, world: World, stage: str, total: int, done: int,
                 pairs=None, unit: str = "pairs") -> TrainingMonitor:  # fmt: skip
    """The run's progress bar and event files, written by rank 0 only. An S3 run's event files
    are written locally (TensorBoard appends to them) and uploaded with each checkpoint."""
    settings = monitoring or Monitoring()
    if settings.sample_every and settings.eval_pairs is None and pairs and not run.files.is_local(pairs[0].source_image):
        # Sampling reads its pairs from local files: refuse now, not at the first sample grid.
        raise InputError("sample grids of pairs on S3 need a local held-out pairs CSV: give eval_pairs (--eval-pairs)")
    settings = dataclasses.replace(settings, enabled=settings.enabled and world.is_main)
    if run.remote and settings.tensorboard_dir is None and settings.enabled:
        settings = dataclasses.replace(settings, tensorboard_dir=run.local_folder(TENSORBOARD_FOLDER))
    monitor = TrainingMonitor(settings, run.out, stage, total, done, pairs, unit=unit)
    if settings.enabled and settings.sample_every:
        monitor.evaluation_set()  # a bad --eval-pairs fails now, not at the first grid
    return monitor


def end_step(record: dict, items: int, monitor: TrainingMonitor, run: TrainingRun, world: World, pipe: FPDMPipeline,
             optimizer, lr_scheduler, checkpoint_every: int, total: int, sample: bool = False) -> None:  # fmt: skip
    """After optimiser step `record["step"]` over `items` pairs or images: the monitor on every
    rank (a NaN loss stops them all, before anything is written), then rank 0's log line and,
    every `checkpoint_every` steps, its checkpoint. `sample`: the monitor may then draw sample grids."""
    try:
        monitor.step(record, items)
    except TrainingDiverged:
        if world.is_main:
            run.upload_log()  # on S3 the steps since the last checkpoint, up to the one before this
        raise
    step = record["step"]
    if world.is_main:
        run.log(record)
        if step % checkpoint_every == 0 and step < total:
            run.checkpoint(pipe, optimizer, lr_scheduler, step)
    if sample:
        # After the checkpoint: a grid that fails costs no training.
        monitor.sample_if_due(pipe, step)


def save_final(pipe: FPDMPipeline, run: TrainingRun, world: World):
    """The final model, written by rank 0 (model_index.json last); returns where it is."""
    if world.is_main:
        run.save_final(pipe)
    distributed.barrier(world)
    return run.out


def training_loader(dataset, done_micro_steps: int, total_micro_steps: int, workers: int | None, world: World):
    workers = default_loader_workers(world) if workers is None else workers
    return micro_batch_loader(dataset, done_micro_steps, total_micro_steps, workers, world.device)
