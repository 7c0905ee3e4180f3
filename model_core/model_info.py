"""What is known about a model without running it: where it comes from, its checksum, frame,
stages, scheduler and the size and stored precision of each part (`fpdm model info` prints it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .pipeline_fpdm import FPDMPipeline, model_checksum
from .presets import ModelKind, ModelSource, resolve_model

# safetensors dtype codes, named as torch names them.
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class PartDescription:
    name: str  # fusion, source_encoder, ... as in the model directory
    parameters: int
    dtype: str  # what its weights are stored as ("no weights" for an architecture-only preset)


@dataclass(frozen=True)
class ModelDescription:
    name: str
    origin: str  # where the weights come from, in words
    checksum: str | None  # what variants' sidecars record; None when there are no weights to identify
    width: int
    height: int
    uses_fusion: bool  # full model (stage 1 fusion + stage 2), else stage-2-only
    scheduler: str  # the diffusers scheduler's class name
    prediction_type: str
    parts: tuple[PartDescription, ...]

    @property
    def total_parameters(self) -> int:
        return sum(part.parameters for part in self.parts)


def describe_model(model: str | Path) -> ModelDescription:
    """Load the model on the CPU (or, for a preset without weights, only its architecture on the
    meta device, which counts parameters without allocating them) and describe it."""
    source = resolve_model(model)
    if source.has_weights:
        pipe = FPDMPipeline.from_pretrained(source, device="cpu")
    else:
        with torch.device("meta"):
            pipe = FPDMPipeline.from_config(source.config)
    parts = tuple(
        PartDescription(part, sum(parameter.numel() for parameter in module.parameters()), part_dtype(source, part, module))
        for part, module in pipe.modules().items()
    )
    return ModelDescription(
        name=pipe.name,
        origin=origin(source),
        checksum=model_checksum(source) if source.has_weights else None,
        width=pipe.geometry.width,
        height=pipe.geometry.height,
        uses_fusion=pipe.uses_fusion,
        scheduler=type(pipe.scheduler).__name__,
        prediction_type=pipe.scheduler.config.prediction_type,
        parts=parts,
    )


def origin(source: ModelSource) -> str:
    if source.kind is ModelKind.TRAINED_PRESET:
        return f"trained preset, model directory {source.directory}"
    if source.kind is ModelKind.RANDOM_INIT_PRESET:
        return "preset, random-initialised weights"
    if source.kind is ModelKind.PRESET_WITHOUT_WEIGHTS:
        return "preset without weights; see `fpdm model assemble`"
    return f"model directory {source.asked}"


def part_dtype(source: ModelSource, part: str, module: torch.nn.Module) -> str:
    if not source.has_weights:
        return "no weights"
    if source.directory is None:  # a random-initialised preset: as built
        return str(module.dtype).removeprefix("torch.")
    # Loading on the CPU makes every part float32; a directory's precision is what its files store.
    return stored_dtype(source.directory / part)


def stored_dtype(part_dir: Path) -> str:
    """The dtypes of a part folder's safetensors tensors, read from their headers."""
    dtypes = set()
    for weights_file in sorted(part_dir.glob("*.safetensors")):
        with safe_open(weights_file, framework="pt") as weights:
            dtypes.update(weights.get_slice(key).get_dtype() for key in weights.keys())
    return ",".join(sorted(SAFETENSORS_DTYPES.get(code, code) for code in dtypes)) or "-"
