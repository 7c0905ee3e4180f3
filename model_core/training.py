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
interrupted run and an uninterrupted one take the same steps. `files` (model_core.training_files)
reads pairs and writes `out` elsewhere than on local disk (S3: pipeline.training_storage);
`keep_checkpoints` prunes old checkpoints (`training_run`, which also states the completion rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler

from . import distributed
from .augmentation import Augmentation
from .distributed import Trainer, World
from .errors import InputError
from .fusion import fusion_loss, retrieval_accuracy
from .loading import MicroBatches, to_device
from .pipeline_fpdm import FPDMPipeline
from .sample_seeding import SampleDraws, sample_seeded_dropout
from .stage2 import denoise
from .training_data import PairTensors, batch_indices, read_pairs  # noqa: F401 (batch_indices: re-exported)
from .training_files import TrainingFiles
from .training_monitor import Monitoring
from .training_run import (  # noqa: F401 - LOG_FILE, TRAINING_STATE, TrainingRun, latest_checkpoint, total_steps: re-exported
    LOG_FILE,
    TRAINING_STATE,
    TrainingRun,
    end_step,
    latest_checkpoint,
    load_state,
    open_monitor,
    open_run,
    save_final,
    starting_model,
    total_steps,
    training_loader,
)

REFERENCE_AUGMENTATION = Augmentation()


@dataclass
class TrainResult:
    out: Path | str  # a URI when the run wrote to an object store
    steps: int
    last: dict


# How the trainable parts compute: "bf16" runs the forward pass under bf16 autocast over float32
# master weights and optimiser state; "fp32" runs it in float32; "auto" is bf16 on CUDA and fp32
# elsewhere. The CPU runs "bf16" through the same autocast scope the GPU uses (slower than fp32
# there), which is how the GPU's path is tested on machines without one.
PRECISIONS = ("auto", "bf16", "fp32")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")


# "adamw" is the reference's (both stages). "sgd" (no momentum) keeps no state: a step needs the
# weights and their gradients only, which is how the production architecture's training step is
# tested on a 24 GB CPU machine (tests/model_core/test_production_architecture.py), where AdamW's
# two moments of the 868 M-parameter UNet (7 GB in float32) would not fit beside it. Not a recipe.
OPTIMIZERS = ("adamw", "sgd")


def check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise InputError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")


def make_optimizer(name: str, parameters, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    check_optimizer(name)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate, weight_decay=weight_decay)
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)


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
    keep_checkpoints: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    optimizer: str = "adamw",
    seed: int = 0,
    loader_workers: int | None = None,
    files: TrainingFiles | None = None,
    monitoring: Monitoring | None = None,
) -> TrainResult:
    """Fine-tune the fusion encoder and Combiner contrastively (FPDM.md, stage 1). `precision`:
    see PRECISIONS. Under torchrun, `batch_size` is the global batch (`distributed`);
    `loader_workers` None: `loading.default_loader_workers`. The contrastive loss sees the
    whole global batch: every rank's embeddings are gathered."""
    check_precision(precision)
    check_optimizer(optimizer)
    pair_list = read_pairs(pairs, files)
    with distributed.joined(device) as world:
        return _train_fusion(world, model, pair_list, out, max_steps, epochs, batch_size, learning_rate, weight_decay,
                             temperature, l1_weight, source_enhanced, checkpoint_every, resume, precision, seed,
                             loader_workers, files, keep_checkpoints, monitoring, optimizer)  # fmt: skip


def _train_fusion(world: World, model, pair_list, out, max_steps, epochs, batch_size, learning_rate, weight_decay,
                  temperature, l1_weight, source_enhanced, checkpoint_every, resume, precision, seed, loader_workers,
                  files, keep_checkpoints, monitoring, optimizer_name):  # fmt: skip
    run = open_run(out, resume, world, files, keep_checkpoints)
    pipe = FPDMPipeline.from_pretrained(starting_model(run, model, world), device=world.device, dtype=torch.float32)
    if pipe.fusion is None:
        raise InputError(f"{model}: a stage-2-only model has no fusion part to train")
    data = PairTensors(pair_list, pipe, files=files)
    batch_size = min(batch_size, len(data))
    distributed.check_batch(world, batch_size)
    fusion = pipe.fusion.train().requires_grad_(True)
    optimizer = make_optimizer(optimizer_name, fusion.parameters(), learning_rate, weight_decay)
    lr_scheduler = get_scheduler("constant", optimizer)
    done = load_state(run, optimizer, lr_scheduler, world)
    total = total_steps(max_steps, epochs, len(data), batch_size)
    trainer = Trainer([fusion], world)
    batches = iter(training_loader(MicroBatches(data, batch_size, seed, world), done, total, loader_workers, world))
    monitor = open_monitor(monitoring, run, world, "fusion", total, done, pair_list)

    record: dict = {}
    for step in range(done + 1, total + 1):
        torch.manual_seed(seed * 1_000_003 + step)
        local = next(batches)
        positions, batch = local["positions"].tolist(), to_device(local, world.device)

        def embeddings(batch=batch):
            with autocast(world.device, precision):
                source, target = fusion.embed(batch["source_clip"]), fusion.embed(batch["target_clip"])
                fused = fusion.fuse(source, fusion.embed(batch["pose_clip"]))
            return torch.cat([source.float(), target.float(), fused.float()], dim=-1)

        # Dropout masks per global sample: they replay on resume, and any world size draws the same.
        with sample_seeded_dropout([fusion], seed, step - 1, positions):
            rows = distributed.gather_rows(world, trainer(embeddings), batch_size)
        source, target, fused = rows.chunk(3, dim=-1)
        result = fusion_loss(source, target, fused, temperature, l1_weight, source_enhanced)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        learning_rate_used = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        record = {"step": step, "loss": result.loss.item(), "top1": result.top1, "top5": result.top5, "lr": learning_rate_used}
        end_step(record, batch_size, monitor, run, world, pipe, optimizer, lr_scheduler, checkpoint_every, total)
    monitor.finish()
    return TrainResult(save_final(pipe, run, world), total, record)


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
    keep_checkpoints: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    optimizer: str = "adamw",
    seed: int = 0,
    loader_workers: int | None = None,
    files: TrainingFiles | None = None,
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
      because it is DINOv2, pretrained; a random-initialised encoder, frozen, gives the UNet only
      what a random projection of the garment keeps. (The demo's is its VAE's encoder, which
      `train_vae` pretrains: frozen, as the reference's.)
    - `augmentation`: the reference's four (model_core.augmentation); `Augmentation.off()` for none.
    - `precision`: see PRECISIONS; the frozen parts run under the same autocast.
    - Under torchrun, `batch_size` is the global micro-batch (`distributed`); `loader_workers`
      None: `loading.default_loader_workers`.
    """
    check_precision(precision)
    check_optimizer(optimizer)
    settings = dict(locals())  # every keyword option, passed on as it is
    del settings["model"], settings["pairs"], settings["out"]
    settings["optimizer_name"] = settings.pop("optimizer")
    pair_list = read_pairs(pairs, files)
    with distributed.joined(device) as world:
        return _train_diffusion(world, model, pair_list, out, **settings)


def _train_diffusion(world: World, model, pair_list, out, *, stage2_only, max_steps, epochs, batch_size,
                     gradient_accumulation, learning_rate, weight_decay, max_grad_norm, warmup_fraction, lr_decay_at,
                     lr_decay_factor, condition_dropout, condition_dropout_per_batch, fusion_dropout,
                     train_source_encoder, augmentation, noise_offset, checkpoint_every, resume, keep_checkpoints, device,
                     precision, optimizer_name, seed, loader_workers, files, monitoring) -> TrainResult:  # fmt: skip
    run = open_run(out, resume, world, files, keep_checkpoints)
    pipe = FPDMPipeline.from_pretrained(starting_model(run, model, world), device=world.device, dtype=torch.float32)
    if stage2_only and pipe.uses_fusion:
        pipe = without_fusion(pipe)
    data = PairTensors(pair_list, pipe, augmentation, files)
    batch_size = min(batch_size, len(data))
    distributed.check_batch(world, batch_size)

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
    optimizer = make_optimizer(optimizer_name, parameters, learning_rate, weight_decay)
    total = total_steps(max_steps, epochs, len(data), batch_size, gradient_accumulation)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_step_decay(total, warmup_fraction, lr_decay_at, lr_decay_factor)
    )
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    done = load_state(run, optimizer, lr_scheduler, world)
    dropout = ConditionDropout(condition_dropout, condition_dropout_per_batch)
    trainer = Trainer(trainable, world)
    micro_batches = MicroBatches(data, batch_size, seed, world)
    loader = training_loader(micro_batches, done * gradient_accumulation, total * gradient_accumulation, loader_workers, world)
    batches = iter(loader)
    dropout_modules = list(pipe.modules().values())
    monitor = open_monitor(monitoring, run, world, "diffusion", total, done, pair_list)

    record: dict = {}
    for step in range(done + 1, total + 1):
        torch.manual_seed(seed * 1_000_003 + step)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0  # this rank's share of the step's mean loss
        for micro in range(gradient_accumulation):
            micro_step = (step - 1) * gradient_accumulation + micro
            local = next(batches)
            positions, batch = local["positions"].tolist(), to_device(local, world.device)
            # Noise, timesteps, condition dropout and dropout masks are drawn per global sample:
            # they replay on resume and do not depend on the world size.
            draws = SampleDraws(seed, micro_step, positions, world.device)

            def loss_of_batch(batch=batch, draws=draws):
                with autocast(world.device, precision):
                    return _diffusion_loss(pipe, noise_scheduler, batch, draws, dropout, noise_offset, train_source_encoder)

            weight = distributed.share(world, len(positions), batch_size)
            with trainer.accumulating(micro == gradient_accumulation - 1), sample_seeded_dropout(dropout_modules, seed, micro_step, positions):  # fmt: skip
                loss = trainer(loss_of_batch)
                (loss * weight / gradient_accumulation).backward()
            step_loss += loss.item() * weight / world.size / gradient_accumulation
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        learning_rate_used = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        record = {"step": step, "loss": distributed.all_sum(world, step_loss), "lr": learning_rate_used}
        end_step(record, batch_size * gradient_accumulation, monitor, run, world, pipe, optimizer, lr_scheduler,
                 checkpoint_every, total, sample=True)  # fmt: skip
    monitor.finish()
    return TrainResult(save_final(pipe, run, world), total, record)


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

    def keep(self, draws: SampleDraws) -> torch.Tensor:
        """One per sample, 1.0 (keep) or 0.0 (drop), from each sample's own draw (per batch: the
        global batch's one draw)."""
        return ((draws.batch_rand() if self.per_batch else draws.rand(1)[:, 0]) >= self.rate).float()


def _diffusion_loss(
    pipe, noise_scheduler, batch, draws: SampleDraws, dropout: ConditionDropout, noise_offset, train_source_encoder: bool = False
) -> torch.Tensor:
    """The mean loss over the batch's samples; every random draw is the sample's own (`draws`)."""
    n = len(batch["target"])

    with torch.no_grad():
        posterior = pipe.vae.encode(batch["target"]).latent_dist
        latents = (posterior.mean + posterior.std * draws.randn(*posterior.mean.shape[1:])) * pipe.vae.config.scaling_factor
        fusion = None
        if pipe.uses_fusion:
            fusion = pipe.fusion.fuse(pipe.fusion.embed(batch["source_clip"]), pipe.fusion.embed(batch["pose_clip"]))

    with torch.set_grad_enabled(train_source_encoder):
        tokens = pipe.source_encoder(batch["source_encoder_pixels"])

    # Offset noise (a per-channel constant) lets the model change overall brightness.
    channels = latents.shape[1]
    noise = draws.randn(*latents.shape[1:]) + noise_offset * draws.randn(channels, 1, 1)
    timesteps = (
        (draws.rand() * noise_scheduler.config.num_train_timesteps)
        .long()
        .clamp(max=noise_scheduler.config.num_train_timesteps - 1)
    )
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)

    def keep(shape_tail: int) -> torch.Tensor:
        return dropout.keep(draws).view(n, *([1] * shape_tail))

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
