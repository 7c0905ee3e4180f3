"""Stage-2 training's loader alone (images/s with 0, 1, 2... worker processes) against its
training step, so the docs can say how many loader workers keep a device busy.

    .venv/bin/python benchmarks/bench_loader.py [--model tiny] [--size 256x176] [--batch-size 8]
        [--micro-steps 12] [--workers 0,1,2] [--device auto]

Writes a synthetic catalog (the `synthetic` package, as `fpdm synth`) of --size photos into a
temporary folder and builds stage 2's batches with the product's own loader
(model_core.loading: decoding, fitting, skeleton rendering, the reference's augmentations),
without the in-memory cache of small sets, as a DeepFashion-sized set is read. Then times the
training step (forward, backward, AdamW) on batches already built, and, within it, the frozen
VAE's encoding of the targets: what a cache of target latents would save per step. Prints a
table and the ratios (loader / step: above 1 the loader keeps up); nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from model_core.distributed import World
from model_core.loading import MicroBatches, micro_batch_loader, to_device
from model_core.pipeline_fpdm import FPDMPipeline, resolve_device
from model_core.sample_seeding import SampleDraws, sample_seeded_dropout
from model_core.training import REFERENCE_AUGMENTATION, ConditionDropout, _diffusion_loss
from model_core.training_data import PairTensors, read_pairs
from synthetic import parse_size, write_dataset

SEED = 0


def loader_rate(data: PairTensors, batch_size: int, micro_steps: int, workers: int, device: torch.device) -> float:
    """Images (pairs) per second once the first batch is out: worker start-up is paid once a run."""
    loader = micro_batch_loader(MicroBatches(data, batch_size, SEED, World()), 0, micro_steps + 1, workers, device)
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    for _ in range(micro_steps):
        next(batches)
    return micro_steps * batch_size / (time.perf_counter() - start)


def step_rates(pipe: FPDMPipeline, data: PairTensors, batch_size: int, micro_steps: int, device: torch.device):
    """(training step images/s, share of the step spent encoding targets with the frozen VAE)."""
    batches = list(micro_batch_loader(MicroBatches(data, batch_size, SEED, World()), 0, micro_steps + 1, 0, device))
    trainable = [pipe.unet, pipe.pose_embedding, pipe.source_projector]
    trainable += [pipe.fusion_projector] if pipe.fusion_projector is not None else []
    for module in trainable:
        module.train().requires_grad_(True)
    optimizer = torch.optim.AdamW([p for m in trainable for p in m.parameters()], lr=1e-4)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    dropout = ConditionDropout(0.2)

    def synchronise():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step_time = encode_time = 0.0
    for index, local in enumerate(batches):
        positions, batch = local["positions"].tolist(), to_device(local, device)
        synchronise()
        start = time.perf_counter()
        with sample_seeded_dropout(list(pipe.modules().values()), SEED, index, positions):
            loss = _diffusion_loss(pipe, noise_scheduler, batch, SampleDraws(SEED, index, positions, device), dropout, 0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronise()
        middle = time.perf_counter()
        with torch.no_grad():
            pipe.vae.encode(batch["target"]).latent_dist.mean.sum().item()
        synchronise()
        if index:  # the first step warms up
            step_time += middle - start
            encode_time += time.perf_counter() - middle
    return micro_steps * batch_size / step_time, encode_time / step_time


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="preset or model directory (default tiny)")
    parser.add_argument("--size", default="256x176", help="photo size HxW written and decoded (default 256x176)")
    parser.add_argument("--pairs", type=int, default=48, help="pairs in the synthetic set (default 48)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per micro-step (default 8)")
    parser.add_argument("--micro-steps", type=int, default=12, help="micro-steps timed (default 12)")
    parser.add_argument("--workers", default="0,1,2", help="loader worker counts to time (default 0,1,2)")
    parser.add_argument("--device", default="auto", help="device of the training step (default auto)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    pipe = FPDMPipeline.from_pretrained(args.model, device=device, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as folder:
        dataset = write_dataset(Path(folder), pairs=args.pairs, seed=SEED, size=parse_size(args.size))
        data = PairTensors(read_pairs(dataset.pairs_csv), pipe, REFERENCE_AUGMENTATION)
        data._cache = None  # as a DeepFashion-sized set: decoded on every visit
        loader = {w: loader_rate(data, args.batch_size, args.micro_steps, w, device) for w in map(int, args.workers.split(","))}
        step, encode_share = step_rates(pipe, data, args.batch_size, args.micro_steps, device)

    print(f"model {args.model} on {device}, photos {args.size}, batch {args.batch_size}, {args.micro_steps} micro-steps timed")
    print(f"{'workers':>8} {'loader img/s':>13} {'loader/step':>12}")
    for workers, rate in loader.items():
        print(f"{workers:>8} {rate:>13.1f} {rate / step:>12.2f}")
    print(f"training step alone: {step:.1f} img/s; frozen VAE encoding of the targets: {100 * encode_share:.1f}% of the step")
    return {"loader": loader, "step": step, "encode_share": encode_share}


if __name__ == "__main__":
    main()
