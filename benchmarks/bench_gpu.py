"""The production model's sampling speed and memory, by precision, batch size and option.

Builds the model from a preset with random weights (no download: speed and memory do not depend
on the values), encodes one source photo and one pose, and times the product's sampling call
(`FPDMPipeline.__call__`, three guidance branches) at `--steps` steps for batch sizes 1, 2, 4, ...
until the device runs out of memory (or `--max-batch`). For each it prints images per second,
peak device memory, the FLOPs of one image (counted with `torch.utils.flop_counter` on this very
call, not assumed) and the share of the FLOP floor reached: (FLOPs per image / the device's peak
FLOP/s) / measured seconds per image. `--options` measures each variant on and off:

    baseline        the product as it samples
    channels-last   the UNet in channels-last memory format
    compile         the UNet through torch.compile
    sdpa-flash, sdpa-efficient, sdpa-math
                    attention restricted to one SDPA backend

On a GPU machine:

    python benchmarks/bench_gpu.py --preset fpdm-sd21 --dtypes bf16 fp16 --options baseline channels-last compile sdpa-flash

On the CPU (what the tests run):

    .venv/bin/python benchmarks/bench_gpu.py --preset tiny --device cpu --steps 2 --max-batch 2 --dtypes fp32 bf16
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from model_core.images import load_image
from model_core.keypoints import read_keypoints
from model_core.pipeline_fpdm import FPDMPipeline, resolve_device
from model_core.presets import preset_config

EXAMPLE = Path(__file__).resolve().parents[1] / "manifests" / "example" / "s3g0000-dots"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPTIONS = ("baseline", "channels-last", "compile", "sdpa-flash", "sdpa-efficient", "sdpa-math")
# Dense bf16/fp16 tensor-core peaks from the vendors' data sheets (TFLOP/s), by device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0}


def peak_tflops(device: torch.device, dtype: torch.dtype, given: float | None) -> float | None:
    if given is not None:
        return given
    if device.type != "cuda" or dtype == torch.float32:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def inputs(pipe: FPDMPipeline):
    """The example manifest's first garment and one of its target poses (fitted to any resolution)."""
    source = load_image(EXAMPLE / "source.png")
    return pipe.encode_source(source), pipe.encode_pose(read_keypoints(EXAMPLE / "poses" / "walk-front.json"))


def with_option(pipe: FPDMPipeline, option: str):
    """Apply `option` to the pipeline; returns a maker of the context to sample in."""
    if option == "channels-last":
        pipe.unet.to(memory_format=torch.channels_last)
    elif option == "compile":
        pipe.unet = torch.compile(pipe.unet)
    elif option.startswith("sdpa-"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
        return lambda: sdpa_kernel(backend[option.removeprefix("sdpa-")])
    return contextlib.nullcontext


def sample(pipe: FPDMPipeline, source, pose, batch: int, steps: int) -> None:
    pipe([source] * batch, [pose] * batch, list(range(batch)), num_inference_steps=steps, output_type="pt")


def flops_per_image(pipe: FPDMPipeline, source, pose, steps: int) -> float:
    """FLOPs of one image at `steps` steps: one call of 1 step and one of 2 give the fixed part
    (encoders, VAE decode) and the per-step part, so the count costs two steps, not `steps`."""
    counts = []
    for counted_steps in (1, 2):
        with FlopCounterMode(display=False) as counter:
            sample(pipe, source, pose, 1, counted_steps)
        counts.append(counter.get_total_flops())
    return counts[0] + (steps - 1) * (counts[1] - counts[0])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args, device: torch.device, dtype_name: str, option: str) -> list[dict]:
    dtype = DTYPES[dtype_name]
    # The preset's architecture with random weights: speed and memory do not depend on the values.
    pipe = FPDMPipeline.from_config(preset_config(args.preset)).to(device, dtype)
    source, pose = inputs(pipe)
    flops = flops_per_image(pipe, source, pose, args.steps)
    context = with_option(pipe, option)
    peak = peak_tflops(device, dtype, args.peak_tflops)
    rows, batch = [], 1
    while batch <= args.max_batch:
        try:
            with context():
                sample(pipe, source, pose, batch, min(2, args.steps))  # warm-up: kernels, compilation
                synchronize(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                started = time.perf_counter()
                sample(pipe, source, pose, batch, args.steps)
                synchronize(device)
                seconds = time.perf_counter() - started
        except torch.OutOfMemoryError:
            rows.append({"dtype": dtype_name, "option": option, "batch": batch, "out_of_memory": True})
            break
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        per_image = seconds / batch
        floor = flops / (peak * 1e12) if peak else None
        rows.append(
            {
                "dtype": dtype_name,
                "option": option,
                "batch": batch,
                "images_per_s": 1 / per_image,
                "peak_memory_gib": memory,
                "tflop_per_image": flops / 1e12,
                "floor_share": floor / per_image if floor else None,
            }
        )
        batch *= 2
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict]) -> None:
    print("| dtype | option | batch | images/s | peak memory GiB | TFLOP/image | share of the FLOP floor |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if row.get("out_of_memory"):
            print(f"| {row['dtype']} | {row['option']} | {row['batch']} | out of memory | | | |")
            continue
        memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
        share = f"{row['floor_share']:.3g}" if row["floor_share"] is not None else "-"
        print(
            f"| {row['dtype']} | {row['option']} | {row['batch']} | {row['images_per_s']:.3f} | {memory} "
            f"| {row['tflop_per_image']:.4g} | {share} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fpdm-sd21")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["bf16", "fp16"])
    parser.add_argument("--options", nargs="+", choices=OPTIONS, default=["baseline"])
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s at the dtype (default: by name)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.preset} at {args.steps} steps, three guidance branches, on {name}; torch {torch.__version__}")
    rows = [row for dtype in args.dtypes for option in args.options for row in measure(args, device, dtype, option)]
    print_table(rows)


if __name__ == "__main__":
    main()
