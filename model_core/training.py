"""Training both FPDM stages on a pairs CSV (`training_data`; the autoencoder of a small new
model: `vae_training`).

Stage 2's defaults are the reference's recipe (docs/models-and-training.md tabulates every
default and its source): AdamW without weight decay or clipping, a warm-up then a x0.1 step of
the learning rate, condition dropout, the stage-1 Combiner's dropout left active, and the four
augmentations of `augmentation`.

Both trainers write into `out/`:
    train_log.jsonl          one JSON object per optimiser step (step, loss, lr; stage 1 adds top1/top5)
    checkpoint-NNNNNN/       every `checkpoint_every` steps: a model directory + training_state.pt
    model_index.json, ...    the final model directory (FPDMPipeline.save_pretrained)
    tensorboard/             TensorBoard event files (`training_monitor`, which also draws the progress
                             bar and stops a run whose loss turns NaN or infinite: TrainingDiverged)
`resume=True` continues from the newest checkpoint with the same data order and noise, so an
interrupted run and an uninterrupted one take the same steps.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler

from .augmentation import Augmentation
from .errors import InputError
from .fusion import fusion_loss, retrieval_accuracy
from .pipeline_fpdm import FPDMPipeline, resolve_device
from .stage2 import denoise
from .training_data import PairTensors, batch_indices, read_pairs
from .training_monitor import Monitoring, TrainingMonitor

REFERENCE_AUGMENTATION = Augmentation()
LOG_FILE = "train_log.jsonl"
TRAINING_STATE = "training_state.pt"


@dataclass
class TrainResult:
    out: Path
    steps: int
    last: dict


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


# How the trainable parts compute: "bf16" runs the forward pass under bf16 autocast over float32
# master weights and optimiser state; "fp32" runs it in float32; "auto" is bf16 on CUDA and fp32
# elsewhere. The CPU runs "bf16" through the same autocast scope the GPU uses (slower than fp32
# there), which is how the GPU's path is tested on machines without one.
PRECISIONS = ("auto", "bf16", "fp32")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")


def autocast(device: torch.device, precision: str = "auto"):
    check_precision(precision)
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


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
    precision: str = "auto",
    seed: int = 0,
    monitoring: Monitoring | None = None,
) -> TrainResult:
    """Fine-tune the fusion encoder and Combiner contrastively (FPDM.md, stage 1). `precision`:
    see PRECISIONS."""
    check_precision(precision)
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
    monitor = TrainingMonitor(monitoring, run.out, "fusion", total, done, pair_list)

    record: dict = {}
    for step in range(done + 1, total + 1):
        torch.manual_seed(seed * 1_000_003 + step)  # dropout masks replay on resume
        batch = data.batch(batch_indices(step - 1, len(data), batch_size, seed), torch_device)
        with autocast(torch_device, precision):
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
        monitor.step(record, batch_size)
        run.log(record)
        if step % checkpoint_every == 0 and step < total:
            run.checkpoint(pipe, optimizer, lr_scheduler, step)
    monitor.finish()
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
    weight_decay: float = 0.0,
    max_grad_norm: float | None = None,
    warmup_fraction: float = 0.05,
    lr_decay_at: float = 0.55,
    lr_decay_factor: float = 0.1,
    condition_dropout: float = 0.2,
    condition_dropout_per_batch: bool = False,
    fusion_dropout: bool = True,
    train_source_encoder: bool = False,
    augmentation: Augmentation = REFERENCE_AUGMENTATION,
    noise_offset: float = 0.1,
    checkpoint_every: int = 500,
    resume: bool = False,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    monitoring: Monitoring | None = None,
) -> TrainResult:
    """Train the conditional LDM (FPDM.md, stage 2): UNet, pose embedding, source projector and
    fusion projector. VAE, source encoder and the stage-1 fusion model stay frozen.

    - Learning rate: a linear warm-up over the first `warmup_fraction` of the steps, then x
      `lr_decay_factor` from `lr_decay_at` of them (`warmup_step_decay`). `max_grad_norm` None:
      no clipping, as the reference.
    - Condition dropout: source tokens, pose and fusion embedding are each zeroed with probability
      `condition_dropout`, independently, which lets sampling run the guidance branches with
      conditions zeroed. One draw per sample by default; `condition_dropout_per_batch` draws once
      per batch as the reference does (see `condition_keep`).
    - `fusion_dropout`: the stage-1 Combiner's dropout stays active, as in the reference (which
      freezes the fusion model by requires_grad alone): a noisy fusion condition in training,
      a clean one at sampling, where every part is in eval mode.
    - `train_source_encoder`: train the source encoder with stage 2. The reference freezes it
      because it is DINOv2, pretrained; a random-initialised encoder (the demo's) learns nothing
      frozen, and the UNet then sees only what a random projection of the garment keeps.
    - `augmentation`: the reference's four (model_core.augmentation); `Augmentation.off()` for none.
    - `precision`: see PRECISIONS; the frozen parts run under the same autocast.
    """
    check_precision(precision)
    pair_list = read_pairs(pairs)
    run = TrainingRun(Path(out), resume)
    torch_device = resolve_device(device)
    pipe = FPDMPipeline.from_pretrained(run.resume_from or model, device=torch_device, dtype=torch.float32)
    if stage2_only and pipe.uses_fusion:
        pipe = without_fusion(pipe)
    data = PairTensors(pair_list, pipe, augmentation)
    batch_size = min(batch_size, len(data))

    trainable = [pipe.unet, pipe.pose_embedding, pipe.source_projector]
    if train_source_encoder:
        trainable.append(pipe.source_encoder)
    if pipe.fusion_projector is not None:
        trainable.append(pipe.fusion_projector)
    for module in trainable:
        module.train().requires_grad_(True)
    if pipe.fusion is not None and fusion_dropout:
        pipe.fusion.combiner.train()  # dropout only: its weights stay frozen
    parameters = [p for module in trainable for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    total = total_steps(max_steps, epochs, len(data), batch_size, gradient_accumulation)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_step_decay(total, warmup_fraction, lr_decay_at, lr_decay_factor)
    )
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    done = run.load_state(optimizer, lr_scheduler)
    dropout = ConditionDropout(condition_dropout, condition_dropout_per_batch)
    monitor = TrainingMonitor(monitoring, run.out, "diffusion", total, done, pair_list)

    record: dict = {}
    for step in range(done + 1, total + 1):
        torch.manual_seed(seed * 1_000_003 + step)  # dropout masks replay on resume
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(gradient_accumulation):
            micro_step = (step - 1) * gradient_accumulation + micro
            # Augmentation, noise, timesteps and condition dropout draw from generators seeded by
            # the micro-step: they replay on resume.
            augment_rng = np.random.default_rng([seed, micro_step])
            batch = data.batch(batch_indices(micro_step, len(data), batch_size, seed), torch_device, augment_rng)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + micro_step)
            with autocast(torch_device, precision):
                loss = _diffusion_loss(pipe, noise_scheduler, batch, generator, dropout, noise_offset, train_source_encoder)
            (loss / gradient_accumulation).backward()
            step_loss += loss.item() / gradient_accumulation
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        learning_rate_used = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        record = {"step": step, "loss": step_loss, "lr": learning_rate_used}
        monitor.step(record, batch_size * gradient_accumulation, pipe)
        run.log(record)
        if step % checkpoint_every == 0 and step < total:
            run.checkpoint(pipe, optimizer, lr_scheduler, step)
    monitor.finish()
    pipe.save_pretrained(run.out)
    return TrainResult(run.out, total, record)


def warmup_step_decay(total: int, warmup_fraction: float, decay_at: float, decay_factor: float):
    """The learning-rate factor of each step (from 0) of a `total`-step run.

    The reference (config c1: scheduler_t_up 5, scheduler_step_size 50, scheduler_gamma 0.1,
    max_epochs 100; model.py `WarmupStepLR`) warms up over 5 epochs ((e + 1) / 5 of the rate in
    epoch e), then multiplies by 0.1 from epoch 55. Here the same shape is set by fractions of
    the run, per step, so it fits any --max-steps: for 100 steps it is the reference's values.
    """
    warmup = round(warmup_fraction * total)
    decay_step = round(decay_at * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return decay_factor if step >= decay_step else 1.0

    return factor


@dataclass(frozen=True)
class ConditionDropout:
    """Which samples keep a condition: each drops it with probability `rate`.

    One draw per sample is the project's default; the reference draws once per batch (model.py,
    `random.random() < ...` in SDModel.forward), so there a fifth of all batches train without
    the source tokens altogether, another fifth without the pose. Per sample, every batch mixes
    conditional and unconditional samples at the same expected rate, the usual practice for
    classifier-free guidance, and a step's gradient does not swing between the two tasks;
    `per_batch=True` reproduces the reference.
    """

    rate: float
    per_batch: bool = False

    def keep(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n,) of 1.0 (keep) and 0.0 (drop)."""
        draws = torch.rand(1 if self.per_batch else n, generator=generator).expand(n)
        return (draws >= self.rate).float()


def _diffusion_loss(
    pipe, noise_scheduler, batch, generator, dropout: ConditionDropout, noise_offset, train_source_encoder: bool = False
) -> torch.Tensor:
    device = batch["target"].device
    n = len(batch["target"])

    def cpu_rand(*shape):
        return torch.rand(*shape, generator=generator).to(device)

    def cpu_randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    with torch.no_grad():
        posterior = pipe.vae.encode(batch["target"]).latent_dist
        latents = (posterior.mean + posterior.std * cpu_randn(*posterior.mean.shape)) * pipe.vae.config.scaling_factor
        fusion = None
        if pipe.uses_fusion:
            fusion = pipe.fusion.fuse(pipe.fusion.embed(batch["source_clip"]), pipe.fusion.embed(batch["pose_clip"]))

    with torch.set_grad_enabled(train_source_encoder):
        tokens = pipe.source_encoder(batch["source_encoder_pixels"])

    # Offset noise (a per-channel constant) lets the model change overall brightness.
    noise = cpu_randn(*latents.shape) + noise_offset * cpu_randn(n, latents.shape[1], 1, 1)
    timesteps = (
        (cpu_rand(n) * noise_scheduler.config.num_train_timesteps)
        .long()
        .clamp(max=noise_scheduler.config.num_train_timesteps - 1)
    )
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)

    def keep(shape_tail: int) -> torch.Tensor:
        return dropout.keep(n, generator).to(device).view(n, *([1] * shape_tail))

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
