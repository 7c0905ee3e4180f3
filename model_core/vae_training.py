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

from .images import load_image, pil_to_tensor
from .pipeline_fpdm import FPDMPipeline, resolve_device
from .training import TrainingRun, TrainResult, total_steps
from .training_data import batch_indices, read_pairs
from .training_monitor import Monitoring, TrainingMonitor


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
    device: str = "auto",
    seed: int = 0,
    monitoring: Monitoring | None = None,
) -> TrainResult:
    """Fit the autoencoder to the pairs' photos (sources and targets), for a small model of a
    new domain whose VAE no public checkpoint covers: stage 2 learns in its latent space, so it
    comes first. Reconstruction (garment_weighted_reconstruction_loss) with a small KL term
    that keeps the latents near N(0, 1); the latent scale is then set so they have unit
    variance, as diffusion expects. Production models keep Stable Diffusion's VAE and skip this."""
    pair_list = read_pairs(pairs)
    run = TrainingRun(Path(out), resume)
    torch_device = resolve_device(device)
    pipe = FPDMPipeline.from_pretrained(run.resume_from or model, device=torch_device, dtype=torch.float32)
    photos = sorted({path for pair in pair_list for path in (pair.source_image, pair.target_image)})
    images = torch.stack([pil_to_tensor(pipe.geometry.photo(load_image(path))) * 2 - 1 for path in photos])
    batch_size = min(batch_size, len(images))
    vae = pipe.vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    total = total_steps(max_steps, epochs, len(images), batch_size)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(100, total // 10), num_training_steps=total)
    done = run.load_state(optimizer, lr_scheduler)
    monitor = TrainingMonitor(monitoring, run.out, "vae", total, done, unit="images")

    record: dict = {}
    for step in range(done + 1, total + 1):
        batch = images[batch_indices(step - 1, len(images), batch_size, seed)].to(torch_device)
        posterior = vae.encode(batch).latent_dist
        # The posterior's mean, not a sample: in a short run from scratch the sampling noise
        # drowns the colour in the latents and the decoder learns to ignore it (measured: grey
        # figures after 700 steps with samples).
        reconstruction = vae.decode(posterior.mean).sample
        l1 = F.l1_loss(reconstruction, batch)
        loss = garment_weighted_reconstruction_loss(reconstruction, batch) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        learning_rate_used = lr_scheduler.get_last_lr()[0]
        optimizer.step()
        lr_scheduler.step()
        record = {"step": step, "loss": loss.item(), "l1": l1.item(), "lr": learning_rate_used}
        monitor.step(record, len(batch))
        run.log(record)
        if step % checkpoint_every == 0 and step < total:
            run.checkpoint(pipe, optimizer, lr_scheduler, step)
    monitor.finish()

    vae.eval().requires_grad_(False)
    make_encoder_deterministic(vae)
    with torch.no_grad():
        means = torch.cat([vae.encode(images[i : i + 64].to(torch_device)).latent_dist.mean for i in range(0, len(images), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    pipe.save_pretrained(run.out)
    return TrainResult(run.out, total, {**record, "scaling_factor": vae.config.scaling_factor})


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
