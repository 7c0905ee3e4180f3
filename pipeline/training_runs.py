"""Training a model from a training manifest: stage 1 (fusion), then stage 2 (diffusion), each
resumed from its newest checkpoint when a previous attempt left one. The `train-fpdm` flow
(flows/train_fpdm.py) runs these steps; so could any other scheduler.

A training manifest is a small YAML (or JSON) file; paths in it are relative to it:

    pairs: pairs.csv                # the pairs CSV both stages train on (required)
    base_model: /srv/fpdm/models/init   # preset name or model directory to start from (required)
    output: /srv/fpdm/training/fpdm-2026-06   # (required) stage1/, stage2/: model directories
    device: cuda                    # default auto
    eval_pairs: heldout.csv         # stage 2's sample grids: a held-out pairs CSV (default: the training pairs)
    sample_every: 500               # stage 2: steps between sample grids (default 500; 0: none)
    stage1: {max_steps: 2000, batch_size: 48}   # options of model_core.training.train_fusion
    stage2: {epochs: 100, learning_rate: 1.0e-4}  # options of model_core.training.train_diffusion

Each stage writes its model directory (output/stage1, output/stage2: log, checkpoints,
tensorboard/, the final model) and, once its final model is written, output/<stage>.done.json.
An attempt after a failure (Prefect's Retry) skips the stages that are done and resumes the
other from its newest checkpoint: the steps an uninterrupted run takes, none twice. One output
is one training: a new training takes a new output.
"""

from __future__ import annotations

import inspect
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from model_core.errors import InputError
from model_core.training import check_optimizer, check_precision, train_diffusion, train_fusion
from model_core.training_monitor import Monitoring

STAGES = {"stage1": train_fusion, "stage2": train_diffusion}
REQUIRED = ("pairs", "base_model", "output")
OPTIONAL = ("device", "eval_pairs", "sample_every", "stage1", "stage2")
SAMPLE_EVERY = 500
# Set by the run itself, not by a manifest: where, from what, whether it resumes, what it shows.
NOT_STAGE_OPTIONS = {"model", "pairs", "out", "resume", "device", "monitoring", "augmentation", "files"}


@dataclass(frozen=True)
class TrainingManifest:
    source: str  # the manifest's path, for messages
    pairs: Path
    base_model: str
    output: Path
    device: str = "auto"
    eval_pairs: Path | None = None
    sample_every: int = SAMPLE_EVERY
    stage1: dict = field(default_factory=dict)
    stage2: dict = field(default_factory=dict)

    def stage_out(self, stage: str) -> Path:
        return self.output / stage

    def done_marker(self, stage: str) -> Path:
        return self.output / f"{stage}.done.json"


def read_training_manifest(path: str | Path) -> TrainingManifest:
    """Read and check a training manifest; every problem is an InputError naming the file and key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such training manifest") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read training manifest ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a training manifest is a mapping of {', '.join(REQUIRED + OPTIONAL)}")
    unknown = sorted(set(data) - set(REQUIRED + OPTIONAL))
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(REQUIRED + OPTIONAL)})")
    missing = [key for key in REQUIRED if data.get(key) in (None, "")]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)}")
    for key in ("pairs", "base_model", "output", "device", "eval_pairs"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise InputError(f"{path}: {key} must be a text (a path or name), got {data[key]!r}")
    sample_every = data.get("sample_every", SAMPLE_EVERY)
    if isinstance(sample_every, bool) or not isinstance(sample_every, int) or sample_every < 0:
        raise InputError(f"{path}: sample_every must be a whole number of steps, 0 or more, got {sample_every!r}")

    for key in ("pairs", "base_model", "output", "eval_pairs"):
        if "://" in str(data.get(key) or ""):
            # Resolved against the manifest's folder, an s3:// URI would become a local path.
            raise InputError(f"{path}: {key} {data[key]!r} is a URI; a training manifest takes local paths (or a preset name)")
    folder = path.parent
    pairs = (folder / data["pairs"]).resolve()
    if not pairs.is_file():
        raise InputError(f"{path}: pairs {data['pairs']!r} not found")
    eval_pairs = None
    if data.get("eval_pairs"):
        eval_pairs = (folder / data["eval_pairs"]).resolve()
        if not eval_pairs.is_file():
            raise InputError(f"{path}: eval_pairs {data['eval_pairs']!r} not found")
    # A preset's name stays a name; a folder next to the manifest is a model directory.
    base_model = data["base_model"]
    if (folder / base_model).is_dir():
        base_model = str((folder / base_model).resolve())
    return TrainingManifest(
        source=str(path),
        pairs=pairs,
        base_model=base_model,
        output=(folder / data["output"]).resolve(),
        device=data.get("device") or "auto",
        eval_pairs=eval_pairs,
        sample_every=sample_every,
        stage1=_stage_options(path, "stage1", data.get("stage1")),
        stage2=_stage_options(path, "stage2", data.get("stage2")),
    )


def _stage_options(path: Path, stage: str, options) -> dict:
    """The stage's options, checked against its train function's keywords and their types."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InputError(f"{path}: {stage} must be a mapping of options, got {options!r}")
    trainer = STAGES[stage]
    hints = typing.get_type_hints(trainer)
    allowed = [name for name in inspect.signature(trainer).parameters if name not in NOT_STAGE_OPTIONS]
    for name, value in options.items():
        if name not in allowed:
            raise InputError(f"{path}: {stage}.{name} is not an option of {trainer.__name__} (options: {', '.join(allowed)})")
        if not _fits(value, hints[name]):
            raise InputError(f"{path}: {stage}.{name} must be {_describe(hints[name])}, got {value!r}")
        # Checked now, not when the stage starts (stage 2's would come after stage 1 has trained).
        check = {"precision": check_precision, "optimizer": check_optimizer}.get(name)
        if check is not None:
            try:
                check(value)
            except InputError as exc:
                raise InputError(f"{path}: {stage}.{exc}") from None
    return dict(options)


def _fits(value, hint) -> bool:
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in kinds:
        if kind is type(None) and value is None:
            return True
        if kind is bool and isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return True
        if kind is str and isinstance(value, str):
            return True
    return False


def _describe(hint) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a text", type(None): "empty"}
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return " or ".join(names.get(kind, str(kind)) for kind in kinds)


def train_stage(manifest: TrainingManifest, stage: str) -> dict:
    """Train one stage, resuming from its newest checkpoint; a stage already done is skipped.
    Returns the stage's summary (also written to its done marker)."""
    marker = manifest.done_marker(stage)
    if marker.is_file():
        return {**json.loads(marker.read_text()), "skipped": True}
    if stage == "stage1":
        model = manifest.base_model
        monitoring = Monitoring(progress=False)
    else:
        model = str(manifest.stage_out("stage1"))
        monitoring = Monitoring(progress=False, sample_every=manifest.sample_every, eval_pairs=manifest.eval_pairs)
    options = manifest.stage1 if stage == "stage1" else manifest.stage2
    result = STAGES[stage](
        model,
        manifest.pairs,
        manifest.stage_out(stage),
        resume=True,
        device=manifest.device,
        monitoring=monitoring,
        **options,
    )
    summary = {"stage": stage, "model": str(result.out), "steps": result.steps, "last": result.last}
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(partial, marker)  # a marker is whole or absent
    return {**summary, "skipped": False}
