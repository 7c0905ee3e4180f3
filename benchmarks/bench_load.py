"""Loading the production model: time, peak host memory and model memory per dtype.

Builds a preset's architecture with random weights (`fpdm-sd21` by default: no download; load
time and memory do not depend on the values), saves it as a model directory, then loads it back
with the product's loader (`FPDMPipeline.from_pretrained`) once per dtype, each in a fresh
process, and prints the seconds to load, the process's peak resident memory (ru_maxrss) above
what the imports alone take, and the bytes of the model's parameters in that dtype.

    .venv/bin/python benchmarks/bench_load.py [--preset fpdm-sd21] [--dtypes fp32 bf16] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DTYPES = ("fp32", "bf16", "fp16")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def load_once(directory: str, dtype_name: str) -> None:
    """In a fresh process: load the model and print one JSON line of figures."""
    import torch

    from model_core.pipeline_fpdm import FPDMPipeline

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    imported = peak_rss_bytes()
    started = time.perf_counter()
    pipe = FPDMPipeline.from_pretrained(directory, device="cpu", dtype=dtype)
    seconds = time.perf_counter() - started
    parameters = sum(p.numel() for module in pipe.modules().values() for p in module.parameters())
    model_bytes = sum(p.numel() * p.element_size() for module in pipe.modules().values() for p in module.parameters())
    print(
        json.dumps(
            {
                "dtype": dtype_name,
                "seconds": seconds,
                "peak_above_imports": peak_rss_bytes() - imported,
                "parameters": parameters,
                "model_bytes": model_bytes,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fpdm-sd21")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["fp32", "bf16"])
    parser.add_argument("--folder", type=Path, help="where to write the model directory (default: a temporary folder)")
    parser.add_argument("--load", nargs=2, metavar=("DIR", "DTYPE"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.load:
        load_once(*args.load)
        return

    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench_load_"))
    try:
        directory = folder / args.preset
        started = time.perf_counter()
        build = (
            "from model_core.pipeline_fpdm import FPDMPipeline; from model_core.presets import preset_config; "
            f"FPDMPipeline.from_config(preset_config({args.preset!r})).save_pretrained({str(directory)!r})"
        )
        subprocess.run([sys.executable, "-c", build], check=True)
        on_disk = sum(f.stat().st_size for f in directory.rglob("*.safetensors"))
        print(
            f"{args.preset}: built with random weights and saved in {time.perf_counter() - started:.0f} s; {on_disk / 2**30:.2f} GiB of safetensors"
        )
        print("| dtype | load s | peak host memory above imports GiB | parameters | model memory GiB |")
        print("|---|---|---|---|---|")
        for dtype in args.dtypes:
            child = subprocess.run(
                [sys.executable, __file__, "--load", str(directory), dtype], check=True, capture_output=True, text=True
            )
            row = json.loads(child.stdout.strip().splitlines()[-1])
            print(
                f"| {dtype} | {row['seconds']:.1f} | {row['peak_above_imports'] / 2**30:.2f} | "
                f"{row['parameters'] / 1e6:,.0f} M | {row['model_bytes'] / 2**30:.2f} |"
            )
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
