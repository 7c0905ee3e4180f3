"""Fitting a small model's autoencoder to its photos, before the two stages (the demo).

Production models keep Stable Diffusion's VAE and never run this. A small model of a new domain
(the synthetic catalog of the demo) has no public VAE that covers it, and stage 2 learns in the
VAE's latent space, so the VAE is trained first. Writes `out/` as the stage trainers do
(`training`): a log, checkpoints, the final model directory.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler

from . import distributed
from .distributed import Trainer, World
from .loading import PhotoBatches
from .pipeline_fpdm import FPDMPipeline
from .stage2 import VAESourceEncoder
from .training import (
    TrainResult,
    end_step,
    load_state,
    open_monitor,
    open_run,
    save_final,
    starting_model,
    total_steps,
    training_loader,
)
from .training_data import read_pairs
from .training_files import TrainingFiles
from .training_monitor import Monitoring


def train_vae(
    model: str | Path,
    pairs: str | Path,
    out: str | Path,
    *,
    max_steps: int | None = None,
    epochs: int = 50,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    kl_weight: float = 1e-6,
    checkpoint_every: int = 500,
    resume: bool = False,
    keep_checkpoints: int | None = None,
    device: str = "auto",
    seed: int = 0,
    loader_workers: int | None = None,
    files: TrainingFiles | None = None,
    monitoring: Monitoring | None = None,
) -> TrainResult:
    """Fit the autoencoder to the pairs' photos (sources and targets), for a small model of a
    new domain whose VAE no public checkpoint covers: stage 2 learns in its latent space, so it
    comes first. Reconstruction (garment_weighted_reconstruction_loss) with a small KL term
    that keeps the latents near N(0, 1); the latent scale is then set so they have unit
    variance, as diffusion expects. Production models keep Stable Diffusion's VAE and skip this.
    Under torchrun, `batch_size` is the global batch (`distributed`)."""
    pair_list = read_pairs(pairs, files)
    options = dict(max_steps=max_steps, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                   kl_weight=kl_weight, checkpoint_every=checkpoint_every, resume=resume, seed=seed,
                   loader_workers=loader_workers, files=files,
                   keep_checkpoints=keep_checkpoints, monitoring=monitoring)  # fmt: skip
    with distributed.joined(device) as world:
        return _train_vae(world, model, pair_list, out, **options)


def _train_vae(world: World, model, pair_list, out: Path, *, max_steps, epochs, batch_size, learning_rate, kl_weight,
               checkpoint_every, resume, seed, loader_workers, files, keep_checkpoints, monitoring) -> TrainResult:  # fmt: skip
    run = open_run(out, resume, world, files, keep_checkpoints)
    pipe = FPDMPipeline.from_pretrained(starting_model(run, model, world), device=world.device, dtype=torch.float32)
    photos = sorted({path for pair in pair_list for path in (pair.source_image, pair.target_image)})
    batch_size = min(batch_size, len(photos))
    distributed.check_batch(world, batch_size)
    data = PhotoBatches(photos, pipe.geometry, batch_size, seed, world, run.files)
    vae = pipe.vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    total = total_steps(max_steps, epochs, len(photos), batch_size)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(100, total // 10), num_training_steps=total)
    done = load_state(run, optimizer, lr_scheduler, world)
    trainer = Trainer([vae], world)
    batches = iter(training_loader(data, done, total, loader_workers, world))
    monitor = open_monitor(monitoring, run, world, "vae", total, done, unit="images")

    record: dict = {}
    for step in range(done + 1, total + 1):
        local = next(batches)
        batch = local["photos"].to(world.device)
        weight = distributed.share(world, len(batch), batch_size)
        loss, l1 = trainer(lambda batch=batch: _vae_loss(vae, batch, kl_weight))
        optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        learning_rate_used = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        mean_loss, mean_l1 = (distributed.all_sum(world, value.item() * weight / world.size) for value in (loss, l1))
        record = {"step": step, "loss": mean_loss, "l1": mean_l1, "lr": learning_rate_used}
        end_step(record, batch_size, monitor, run, world, pipe, optimizer, lr_scheduler, checkpoint_every, total)
    monitor.finish()

    vae.eval().requires_grad_(False)
    make_encoder_deterministic(vae)
    with torch.no_grad():
        images = [data.photo(i) for i in range(len(photos))]
        means = torch.cat(
            [vae.encode(torch.stack(images[i : i + 64]).to(world.device)).latent_dist.mean for i in range(0, len(images), 64)]
        )
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    if isinstance(pipe.source_encoder, VAESourceEncoder):
        # The demo's source encoder is this VAE's encoder: pretrained here, frozen after.
        pipe.source_encoder.copy_vae_encoder(vae)
    return TrainResult(save_final(pipe, run, world), total, {**record, "scaling_factor": vae.config.scaling_factor})


def _vae_loss(vae, batch: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    posterior = vae.encode(batch).latent_dist
    # The posterior's mean, not a sample: in a short run from scratch the sampling noise
    # drowns the colour in the latents and the decoder learns to ignore it (measured: grey
    # figures after 700 steps with samples).
    reconstruction = vae.decode(posterior.mean).sample
    l1 = F.l1_loss(reconstruction, batch)
    loss = garment_weighted_reconstruction_loss(reconstruction, batch) + kl_weight * posterior.kl().mean()
    return loss, l1


def make_encoder_deterministic(vae) -> None:
    """Set the encoder's posterior variance to (nearly) zero: exp(-30) by diffusers' clamp.

    train_vae decodes the posterior mean, so the variance half of the encoder's output was never
    trained to mean anything, and the KL term drove it to 1. Stage-2 training encodes its
    targets by sampling the posterior; with that variance the "clean" latents would be mostly
    noise (measured: a demo UNet stuck at loss 0.48 drawing coloured blobs). With it at zero,
    a sample is the mean, the latent the decoder was trained on."""
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = -30.0


def garment_weighted_reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + MSE on the pixels plus L1 on two opponent colour axes (red-green, blue-yellow), with
    the person's pixels (those that differ from the photo's border, the catalog background)
    weighted FIGURE_WEIGHT times. Plain pixel losses are dominated by the background and by
    luminance, and a small autoencoder trained on them reproduces the figure's shape in the
    wrong colours: the garment's colour is what a catalog variant must keep."""
    border = torch.cat([target[..., 0, :], target[..., -1, :], target[..., :, 0], target[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    figure = ((target - background).abs().amax(dim=1, keepdim=True) > FIGURE_THRESHOLD).float()
    weight = 1 + (FIGURE_WEIGHT - 1) * figure
    error = reconstruction - target
    colour_error = _opponent_colours(reconstruction) - _opponent_colours(target)
    return (weight * error.abs()).mean() + (weight * error**2).mean() + (weight * colour_error.abs()).mean()


FIGURE_THRESHOLD = 0.1  # on the -1..1 scale: 13 of 255 levels in some channel
FIGURE_WEIGHT = 4.0


def _opponent_colours(images: torch.Tensor) -> torch.Tensor:
    red, green, blue = images.unbind(dim=1)
    return torch.stack([red - green, blue - (red + green) / 2], dim=1)
