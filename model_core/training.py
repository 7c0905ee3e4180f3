"""Training both FPDM stages on a pairs CSV (the autoencoder of a small new model: `vae_training`).

A pairs CSV has the columns `source_image,target_image,target_pose`, paths relative to the
CSV. Each pair shows one person and garment in two poses: the model learns to turn the
source photo into the target photo given the target's keypoints.

Both trainers write into `out/`:
    train_log.jsonl          one JSON object per optimiser step (step, loss, lr; stage 1 adds top1/top5)
    checkpoint-NNNNNN/       every `checkpoint_every` steps: a model directory + training_state.pt
    model_index.json, ...    the final model directory (FPDMPipeline.save_pretrained)
`resume=True` continues from the newest checkpoint with the same data order and noise, so an
interrupted run and an uninterrupted one take the same steps.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler

from .errors import InputError
from .fusion import fusion_loss, retrieval_accuracy
from .images import PHOTO_FILL, SKELETON_FILL, load_image, pil_to_tensor
from .keypoints import read_keypoints
from .pipeline_fpdm import FPDMPipeline, resolve_device
from .stage2 import denoise

PAIR_COLUMNS = ("source_image", "target_image", "target_pose")
LOG_FILE = "train_log.jsonl"
TRAINING_STATE = "training_state.pt"


@dataclass
class TrainResult:
    out: Path
    steps: int
    last: dict


# ----- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    source_image: Path
    target_image: Path
    target_pose: Path


def read_pairs(csv_path: str | Path) -> list[Pair]:
    """Read and check a pairs CSV: every column present, every file there."""
    csv_path = Path(csv_path)
    try:
        table = pd.read_csv(csv_path, dtype=str, skipinitialspace=True, encoding="utf-8-sig").dropna(how="all")
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{csv_path}: cannot read pairs CSV ({exc})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in PAIR_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{csv_path}: pairs CSV is missing column(s) {', '.join(missing)} (needs {','.join(PAIR_COLUMNS)})")
    pairs, problems = [], []
    for row_number, row in enumerate(table.itertuples(index=False), start=2):  # row 1 is the header
        paths = {}
        for column in PAIR_COLUMNS:
            value = getattr(row, column)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"row {row_number}: {column} is empty")
                continue
            path = (csv_path.parent / value.strip()).resolve()
            if not path.is_file():
                problems.append(f"row {row_number}: {column} {value.strip()!r} not found")
            paths[column] = path
        if len(paths) == len(PAIR_COLUMNS):
            pairs.append(Pair(**paths))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InputError(f"{csv_path}: {shown}")
    if not pairs:
        raise InputError(f"{csv_path}: pairs CSV has no rows")
    return pairs


class PairTensors:
    """Turns pairs into the tensors both stages train on, in the model's geometry.

    Small sets (the ones trained on CPU, where decoding would dominate) are kept in memory
    once decoded; a DeepFashion-sized set would not fit, so larger sets are decoded per visit.
    """

    CACHE_LIMIT = 2048  # pairs; at 512x352 that is about 20 GB of float32 tensors

    def __init__(self, pairs: list[Pair], pipe: FPDMPipeline):
        self.pairs = pairs
        self.pipe = pipe
        self._cache: dict[int, dict[str, torch.Tensor]] | None = {} if len(pairs) <= self.CACHE_LIMIT else None

    def __len__(self) -> int:
        return len(self.pairs)

    def item(self, index: int) -> dict[str, torch.Tensor]:
        if self._cache is None:
            return self._prepare(self.pairs[index])
        if index not in self._cache:
            self._cache[index] = self._prepare(self.pairs[index])
        return self._cache[index]

    def batch(self, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        items = [self.item(i) for i in indices]
        return {key: torch.stack([item[key] for item in items]).to(device) for key in items[0]}

    def _prepare(self, pair: Pair) -> dict[str, torch.Tensor]:
        geometry, pipe = self.pipe.geometry, self.pipe
        source, target = load_image(pair.source_image), load_image(pair.target_image)
        # The target photo's size is the canvas of pose files that state none (DeepFashion .txt).
        keypoints = read_keypoints(pair.target_pose, default_size=target.size)
        source_fitted, target_fitted = geometry.photo(source), geometry.photo(target)
        skeleton = geometry.skeleton(keypoints)
        tensors = {
            "target": pil_to_tensor(target_fitted) * 2 - 1,  # the VAE takes [-1, 1]
            "skeleton": pil_to_tensor(skeleton),  # the pose embedding takes [0, 1]
            "source_encoder_pixels": pipe.source_encoder_pixels(source_fitted),
        }
        if pipe.fusion is not None:
            tensors["source_clip"] = pipe.clip_pixels(source_fitted, PHOTO_FILL)
            tensors["target_clip"] = pipe.clip_pixels(target_fitted, PHOTO_FILL)
            tensors["pose_clip"] = pipe.clip_pixels(skeleton, SKELETON_FILL)
        return tensors


def batch_indices(step: int, dataset_size: int, batch_size: int, seed: int) -> list[int]:
    """The pairs of optimiser (micro-)step `step`: a seeded permutation per epoch, so that a
    resumed run sees exactly the batches the uninterrupted run would have."""
    batches_per_epoch = max(1, dataset_size // batch_size)
    epoch, position = divmod(step, batches_per_epoch)
    order = torch.randperm(dataset_size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[position * batch_size : (position + 1) * batch_size]


# ----- the shared loop -------------------------------------------------------------------


class TrainingRun:
    """Checkpointing, resuming and logging, the same for both stages."""

    def __init__(self, out: Path, resume: bool):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / LOG_FILE
        self.resume_from = latest_checkpoint(self.out) if resume else None
        if not resume and latest_checkpoint(self.out) is not None:
            # A later --resume would pick up the old run's newer checkpoints: refuse to mix runs.
            raise InputError(f"{self.out}: holds checkpoints of an earlier run; use --resume, or another --out")
        if self.resume_from is None and self.log_path.exists():
            self.log_path.unlink()  # nothing to resume from: a fresh run starts a fresh log

    def load_state(self, optimizer, lr_scheduler) -> int:
        """Restore optimiser and LR schedule; return the number of steps already done."""
        if self.resume_from is None:
            return 0
        state = torch.load(self.resume_from / TRAINING_STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        self._truncate_log(state["step"])
        return int(state["step"])

    def log(self, record: dict) -> None:
        with self.log_path.open("a") as log:
            log.write(json.dumps(record) + "\n")

    def checkpoint(self, pipe: FPDMPipeline, optimizer, lr_scheduler, step: int) -> Path:
        folder = self.out / f"checkpoint-{step:06d}"
        pipe.save_pretrained(folder)
        state = {"step": step, "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}
        torch.save(state, folder / TRAINING_STATE)
        return folder

    def _truncate_log(self, step: int) -> None:
        # Steps logged after the checkpoint are redone by the resumed run; drop them so the
        # log has each step once.
        if not self.log_path.exists():
            return
        records = [line for line in self.log_path.read_text().splitlines() if line.strip()]
        kept = [line for line in records if json.loads(line)["step"] <= step]
        self.log_path.write_text("".join(line + "\n" for line in kept))


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(
        (p for p in Path(out).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and (p / TRAINING_STATE).is_file()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    return found[-1] if found else None


def total_steps(max_steps: int | None, epochs: int, dataset_size: int, batch_size: int, accumulation: int = 1) -> int:
    """`max_steps`, when given, is the run's length (as in transformers' Trainer); else `epochs`."""
    if max_steps is not None:
        return max_steps
    return epochs * max(1, max(1, dataset_size // batch_size) // accumulation)


def _autocast(device: torch.device):
    # bf16 autocast on CUDA keeps fp32 master weights; CPU trains in plain float32.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ----- stage 1 ---------------------------------------------------------------------------


def train_fusion(
    model: str | Path,
    pairs: str | Path,
    out: str | Path,
    *,
    max_steps: int | None = None,
    epochs: int = 5,
    batch_size: int = 48,
    learning_rate: float = 1e-5,
    weight_decay: float = 1e-4,
    temperature: float = 0.07,
    l1_weight: float = 1e-4,
    source_enhanced: bool = True,
    checkpoint_every: int = 500,
    resume: bool = False,
    device: str = "auto",
    seed: int = 0,
) -> TrainResult:
    """Fine-tune the fusion encoder and Combiner contrastively (FPDM.md, stage 1)."""
    pair_list = read_pairs(pairs)
    run = TrainingRun(Path(out), resume)
    torch_device = resolve_device(device)
    pipe = FPDMPipeline.from_pretrained(run.resume_from or model, device=torch_device, dtype=torch.float32)
    if pipe.fusion is None:
        raise InputError(f"{model}: a stage-2-only model has no fusion part to train")
    data = PairTensors(pair_list, pipe)
    batch_size = min(batch_size, len(data))
    fusion = pipe.fusion.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(fusion.parameters(), lr=learning_rate, weight_decay=weight_decay)
    lr_scheduler = get_scheduler("constant", optimizer)
    done = run.load_state(optimizer, lr_scheduler)
    total = total_steps(max_steps, epochs, len(data), batch_size)

    record: dict = {}
    for step in range(done + 1, total + 1):
        torch.manual_seed(seed * 1_000_003 + step)  # dropout masks replay on resume
        batch = data.batch(batch_indices(step - 1, len(data), batch_size, seed), torch_device)
        with _autocast(torch_device):
            source = fusion.embed(batch["source_clip"])
            target = fusion.embed(batch["target_clip"])
            fused = fusion.fuse(source, fusion.embed(batch["pose_clip"]))
            result = fusion_loss(source.float(), target.float(), fused.float(), temperature, l1_weight, source_enhanced)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        learning_rate_used = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        record = {"step": step, "loss": result.loss.item(), "top1": result.top1, "top5": result.top5, "lr": learning_rate_used}
        run.log(record)
        if step % checkpoint_every == 0 and step < total:
            run.checkpoint(pipe, optimizer, lr_scheduler, step)
    pipe.save_pretrained(run.out)
    return TrainResult(run.out, total, record)


@torch.no_grad()
def fusion_retrieval_accuracy(pipe: FPDMPipeline, pairs: str | Path) -> tuple[float, float]:
    """Top-1 / top-5 of retrieving each pair's target among all targets by its fused
    embedding (no source-enhanced rows): stage 1's metric on held-out pairs."""
    data = PairTensors(read_pairs(pairs), pipe)
    fusion = pipe.fusion.eval()
    fused, target = [], []
    for start in range(0, len(data), 64):
        batch = data.batch(list(range(start, min(start + 64, len(data)))), pipe.device)
        batch = {key: value.to(pipe.dtype) for key, value in batch.items()}
        fused.append(fusion.fuse(fusion.embed(batch["source_clip"]), fusion.embed(batch["pose_clip"])).float())
        target.append(F.normalize(fusion.embed(batch["target_clip"]).float(), dim=-1))
    return retrieval_accuracy(torch.cat(target) @ torch.cat(fused).T)


# ----- stage 2 ---------------------------------------------------------------------------


def train_diffusion(
    model: str | Path,
    pairs: str | Path,
    out: str | Path,
    *,
    stage2_only: bool = False,
    max_steps: int | None = None,
    epochs: int = 100,
    batch_size: int = 42,
    gradient_accumulation: int = 3,
    learning_rate: float = 1e-4,
    weight_decay: float = 1e-2,
    warmup_steps: int = 500,
    condition_dropout: float = 0.2,
    noise_offset: float = 0.1,
    checkpoint_every: int = 500,
    resume: bool = False,
    device: str = "auto",
    seed: int = 0,
) -> TrainResult:
    """Train the conditional LDM (FPDM.md, stage 2): UNet, pose embedding, source projector and
    fusion projector.

    VAE, source encoder and the stage-1 fusion model stay frozen. Each condition is zeroed
    with probability `condition_dropout`, independently, which is what lets sampling run the
    guidance branches with conditions zeroed.
    """
    pair_list = read_pairs(pairs)
    run = TrainingRun(Path(out), resume)
    torch_device = resolve_device(device)
    pipe = FPDMPipeline.from_pretrained(run.resume_from or model, device=torch_device, dtype=torch.float32)
    if stage2_only and pipe.uses_fusion:
        pipe = without_fusion(pipe)
    data = PairTensors(pair_list, pipe)
    batch_size = min(batch_size, len(data))

    trainable = [pipe.unet, pipe.pose_embedding, pipe.source_projector]
    if pipe.fusion_projector is not None:
        trainable.append(pipe.fusion_projector)
    for module in trainable:
        module.train().requires_grad_(True)
    parameters = [p for module in trainable for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warmup_steps)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    done = run.load_state(optimizer, lr_scheduler)
    total = total_steps(max_steps, epochs, len(data), batch_size, gradient_accumulation)

    record: dict = {}
    for step in range(done + 1, total + 1):
        torch.manual_seed(seed * 1_000_003 + step)  # dropout masks replay on resume
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(gradient_accumulation):
            micro_step = (step - 1) * gradient_accumulation + micro
            batch = data.batch(batch_indices(micro_step, len(data), batch_size, seed), torch_device)
            # One generator per micro-step: noise, timesteps and dropout replay on resume.
            generator = torch.Generator().manual_seed(seed * 1_000_003 + micro_step)
            with _autocast(torch_device):
                loss = _diffusion_loss(pipe, noise_scheduler, batch, generator, condition_dropout, noise_offset)
            (loss / gradient_accumulation).backward()
            step_loss += loss.item() / gradient_accumulation
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        learning_rate_used = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        record = {"step": step, "loss": step_loss, "lr": learning_rate_used}
        run.log(record)
        if step % checkpoint_every == 0 and step < total:
            run.checkpoint(pipe, optimizer, lr_scheduler, step)
    pipe.save_pretrained(run.out)
    return TrainResult(run.out, total, record)


def _diffusion_loss(pipe, noise_scheduler, batch, generator, condition_dropout, noise_offset) -> torch.Tensor:
    device = batch["target"].device
    n = len(batch["target"])

    def cpu_rand(*shape):
        return torch.rand(*shape, generator=generator).to(device)

    def cpu_randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    with torch.no_grad():
        posterior = pipe.vae.encode(batch["target"]).latent_dist
        latents = (posterior.mean + posterior.std * cpu_randn(*posterior.mean.shape)) * pipe.vae.config.scaling_factor
        tokens = pipe.source_encoder(batch["source_encoder_pixels"])
        fusion = None
        if pipe.uses_fusion:
            fusion = pipe.fusion.fuse(pipe.fusion.embed(batch["source_clip"]), pipe.fusion.embed(batch["pose_clip"]))

    # Offset noise (a per-channel constant) lets the model change overall brightness.
    noise = cpu_randn(*latents.shape) + noise_offset * cpu_randn(n, latents.shape[1], 1, 1)
    timesteps = (
        (cpu_rand(n) * noise_scheduler.config.num_train_timesteps)
        .long()
        .clamp(max=noise_scheduler.config.num_train_timesteps - 1)
    )
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)

    def keep(shape_tail: int) -> torch.Tensor:
        return (cpu_rand(n) >= condition_dropout).float().view(n, *([1] * shape_tail))

    context = pipe.source_projector(tokens) * keep(2)
    pose_residual = pipe.pose_embedding(batch["skeleton"]) * keep(3)
    if fusion is not None:
        fusion = fusion * keep(1)
    prediction = denoise(pipe.unet, noisy, timesteps, context, pose_residual, fusion, pipe.fusion_projector)

    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(prediction.float(), target.float())


def without_fusion(pipe: FPDMPipeline) -> FPDMPipeline:
    """The stage-2-only variant of a model: the UNet without its class embedding, no stage 1
    (neither the fusion model nor its projector).

    Every other UNet weight carries over, so a team can train stage 2 first and add the
    fusion embedding later.
    """
    config = dict(pipe.unet.config)
    config.update(class_embed_type=None, projection_class_embeddings_input_dim=None)
    unet = UNet2DConditionModel.from_config(config)
    state = {k: v for k, v in pipe.unet.state_dict().items() if not k.startswith("class_embedding.")}
    unet.load_state_dict(state, strict=True)
    unet.to(device=pipe.device, dtype=pipe.dtype)
    return FPDMPipeline(
        source_encoder=pipe.source_encoder,
        source_projector=pipe.source_projector,
        pose_embedding=pipe.pose_embedding,
        unet=unet,
        vae=pipe.vae,
        scheduler=pipe.scheduler,
        resolution=(pipe.geometry.height, pipe.geometry.width),
        name=f"{pipe.name}-stage2",
    ).to(pipe.device, pipe.dtype)
