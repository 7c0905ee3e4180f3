"""What a training run shows while it runs: a progress bar, TensorBoard event files, and a stop
with one clear message when the loss diverges.

The trainers (`training.train_fusion`, `training.train_diffusion`, `vae_training.train_vae`)
create one TrainingMonitor before their loop, call `step` once per optimiser step and `finish`
after the loop. It writes, with `Monitoring.enabled` (off on every distributed rank but the
first, so one process writes):

    progress bar          on stderr when it is a terminal: steps, steps/s, pairs/s, ETA, loss
    <out>/tensorboard/    event files (`tensorboard --logdir <out>/tensorboard`):
                            train/loss, train/lr, train/<unit>_per_s and any other number of
                            the step's log record (stage 1: train/top1, train/top5), per step;
                            every `sample_every` steps (stage 2): `samples`, a grid with one
                            row per evaluation pair (source | generated | target), and
                            eval/<metric> for each of `fpdm eval`'s metrics on those pairs

A NaN or infinite loss raises TrainingDiverged naming the step and the value, on every rank,
enabled or not: the trainer stops before it writes a checkpoint or its final model, so the
checkpoints already written are the run's last good state.

The evaluation set is fixed for the whole run: the first `eval_count` pairs of `eval_pairs`, a
held-out pairs CSV, or, when none is given, of the training pairs (then the grid shows learning,
not generalisation).
"""

from __future__ import annotations

import atexit
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from .errors import InputError, TrainingDiverged
from .evaluation import evaluate_pairs
from .training_data import Pair, read_pairs

TENSORBOARD_FOLDER = "tensorboard"
FLUSH_SECS = 30  # how stale the event files may be while a run is going; they are flushed at every grid and at the end
GRID_GAP = 2  # pixels of white between the pictures of a grid


@dataclass(frozen=True)
class Monitoring:
    """How a training run reports its progress. The defaults: a bar when stderr is a terminal,
    event files in <out>/tensorboard/, no sample grids."""

    enabled: bool = True  # False: nothing written, no bar (distributed ranks other than the first)
    progress: bool | None = None  # None: a bar when stderr is a terminal
    tensorboard: bool = True
    tensorboard_dir: str | Path | None = None  # default <out>/tensorboard
    sample_every: int = 0  # stage 2: steps between sample grids with evaluation metrics; 0: none
    eval_pairs: str | Path | None = None  # held-out pairs CSV; default: the training pairs
    eval_count: int = 4  # the first N pairs of that set are the evaluation set
    sample_steps: int = 20  # sampling steps, as `fpdm eval`'s default
    guidance_scale: float = 2.0

    def __post_init__(self):
        if self.sample_every < 0:
            raise InputError(f"sample_every must be 0 (no samples) or more, got {self.sample_every}")
        if self.eval_count < 1:
            raise InputError(f"eval_count must be at least 1, got {self.eval_count}")


class TrainingMonitor:
    """One run's progress bar and event files. `done` steps were taken before (a resumed run):
    the bar starts there, and events a previous attempt logged after `done` are purged."""

    def __init__(
        self,
        settings: Monitoring | None,
        out: str | Path,
        stage: str,
        total: int,
        done: int = 0,
        training_pairs: list[Pair] | None = None,
        unit: str = "pairs",
    ):
        self.settings = settings = settings or Monitoring()
        self.out = out  # a folder or an s3:// URI, named in messages as given
        self.stage = stage
        self.unit = unit
        self.training_pairs = training_pairs
        self.writer = None
        self.progress = None
        self._eval_set: list[Pair] | None = None
        if settings.enabled and settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

            log_dir = Path(settings.tensorboard_dir) if settings.tensorboard_dir else Path(out) / TENSORBOARD_FOLDER
            self.writer = SummaryWriter(str(log_dir), purge_step=done + 1, flush_secs=FLUSH_SECS)
        console = Console(stderr=True, force_terminal=settings.progress or None)
        if settings.enabled and (settings.progress or (settings.progress is None and console.is_terminal)):
            self.progress = Progress(
                TextColumn(f"{stage}"),
                BarColumn(),
                MofNCompleteColumn(),
                _StepRate(),
                TextColumn("{task.fields[throughput]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("loss {task.fields[loss]}"),
                console=console,
            )
            self._task = self.progress.add_task(stage, total=total, completed=done, throughput="", loss="-")
            self.progress.start()
        self._last_time = time.perf_counter()
        atexit.register(self.close)  # the bar gives the terminal back even when the loop raises

    def step(self, record: dict, items: int, pipe=None) -> None:
        """After optimiser step `record["step"]` over `items` pairs (or images). With `pipe`
        (stage 2), a sample grid and metrics every `sample_every` steps. Raises TrainingDiverged
        on a loss that is not finite."""
        step, loss = int(record["step"]), float(record["loss"])
        if not math.isfinite(loss):
            self.close()
            raise TrainingDiverged(
                f"training diverged at step {step}: the loss is {loss}. The run stopped without writing a model; "
                f"the checkpoints in {self.out} are as they were, the newest is the last good one "
                "(a lower learning rate, or fp32 precision, may keep the next run finite)",
                step,
                loss,
            )
        now = time.perf_counter()
        throughput = items / max(now - self._last_time, 1e-9)
        self._last_time = now
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.add_scalar(f"train/{self.unit}_per_s", throughput, step)
        if self.progress is not None:
            self.progress.update(self._task, completed=step, loss=f"{loss:.4g}", throughput=f"{throughput:.1f} {self.unit}/s")
        if pipe is not None:
            self.sample_if_due(pipe, step)

    def sample_if_due(self, pipe, step: int) -> None:
        """A sample grid and metrics when `step` is a multiple of `sample_every`."""
        if self.settings.sample_every and step % self.settings.sample_every == 0:
            self.sample(pipe, step)

    def sample(self, pipe, step: int) -> None:
        """The evaluation set generated with the model as it is now: its grid and its metric means."""
        if self.writer is None:
            return
        modes = {name: module.training for name, module in pipe.modules().items()}
        for module in pipe.modules().values():
            module.eval()  # sampling sees every part in eval mode, as `fpdm eval` does
        try:
            evaluation = evaluate_pairs(
                pipe,
                self.evaluation_set(),
                steps=self.settings.sample_steps,
                guidance_scale=self.settings.guidance_scale,
                keep_images=True,
            )
        finally:
            for name, module in pipe.modules().items():
                module.train(modes[name])
        for name, value in evaluation.means().items():
            self.writer.add_scalar(f"eval/{name}", value, step)
        self.writer.add_image("samples", sample_grid(evaluation.images), step, dataformats="HWC")
        self.writer.flush()
        self._last_time = time.perf_counter()  # sampling is not training: keep it out of the throughput

    def evaluation_set(self) -> list[Pair]:
        if self._eval_set is None:
            source = read_pairs(self.settings.eval_pairs) if self.settings.eval_pairs else self.training_pairs
            if not source:
                raise InputError("sample grids need evaluation pairs: give eval_pairs (--eval-pairs)")
            self._eval_set = source[: self.settings.eval_count]
        return self._eval_set

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        atexit.unregister(self.close)


def sample_grid(rows: list[tuple]) -> np.ndarray:
    """HxWx3 uint8: one row per pair, its pictures side by side (source | generated | target),
    GRID_GAP white pixels between them."""
    height = max(image.height for row in rows for image in row)
    width = max(image.width for row in rows for image in row)
    columns = max(len(row) for row in rows)
    grid = np.full((len(rows) * (height + GRID_GAP) - GRID_GAP, columns * (width + GRID_GAP) - GRID_GAP, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = r * (height + GRID_GAP), c * (width + GRID_GAP)
            picture = np.asarray(image.convert("RGB"))
            grid[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
    return grid


class _StepRate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} steps/s" if task.speed else "- steps/s")
