"""The production model's benchmarks run on the CPU with the tiny preset: bench_gpu.py prints its
table and its FLOP count per image agrees with counting a whole call; bench_load.py prints load
time, memory and the model's size per dtype."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

from model_core.pipeline_fpdm import FPDMPipeline

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
BENCH_LOAD = BENCH.with_name("bench_load.py")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a subprocess that samples 8 configurations
def test_the_gpu_benchmark_prints_a_row_per_precision_option_and_batch_on_the_cpu():
    command = [sys.executable, str(BENCH), "--preset", "tiny", "--device", "cpu", "--steps", "2", "--max-batch", "2"]
    command += ["--dtypes", "fp32", "bf16", "--options", "baseline", "channels-last", "--peak-tflops", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    rows = [
        line.strip("|").split("|")
        for line in result.stdout.splitlines()
        if line.startswith("| fp32") or line.startswith("| bf16")
    ]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert [(c[0], c[1], c[2]) for c in cells] == [
        (dtype, option, batch) for dtype in ("fp32", "bf16") for option in ("baseline", "channels-last") for batch in ("1", "2")
    ]
    for _, _, _, images_per_s, memory, tflop, share in cells:
        assert float(images_per_s) > 0 and memory == "-"  # no device memory to report on the CPU
        assert float(tflop) > 0
        # share = (FLOPs / peak) / seconds per image, with a peak of 1 TFLOP/s
        assert float(share) == pytest.approx(float(tflop) * float(images_per_s), rel=0.02)


def test_flops_per_image_match_counting_every_step():
    bench = load_bench()
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    source, pose = bench.inputs(pipe)
    with FlopCounterMode(display=False) as counter:
        bench.sample(pipe, source, pose, 1, 4)
    assert bench.flops_per_image(pipe, source, pose, 4) == counter.get_total_flops() > 0


@pytest.mark.slow  # three subprocesses, each importing torch
def test_the_load_benchmark_prints_a_row_per_dtype_with_the_models_size():
    command = [sys.executable, str(BENCH_LOAD), "--preset", "tiny", "--dtypes", "fp32", "bf16"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in result.stdout.splitlines() if line.startswith("| fp")}
    rows.update(
        {line.split("|")[1].strip(): line.split("|")[2:-1] for line in result.stdout.splitlines() if line.startswith("| bf")}
    )
    assert set(rows) == {"fp32", "bf16"}
    pipe = FPDMPipeline.from_pretrained("tiny", device="cpu")
    parameters = sum(p.numel() for module in pipe.modules().values() for p in module.parameters())
    for dtype, (seconds, peak, count, size) in rows.items():
        assert float(seconds) > 0 and float(peak) >= 0
        assert count.strip() == f"{parameters / 1e6:,.0f} M"
        assert float(size) == pytest.approx(parameters * (4 if dtype == "fp32" else 2) / 2**30, abs=0.006)
