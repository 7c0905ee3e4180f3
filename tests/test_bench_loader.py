"""The loader benchmark runs on tiny settings and prints its table: a row per worker count, with
the loader's rate against the training step's."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a subprocess importing torch, a worker process, a few training steps
def test_the_loader_benchmark_prints_a_row_per_worker_count_and_the_step_rate():
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_loader.py"), "--size", "64x48", "--pairs", "12"]
    command += ["--batch-size", "2", "--micro-steps", "2", "--workers", "0,1", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True, cwd=ROOT)
    rows = [line.split() for line in result.stdout.splitlines() if re.fullmatch(r"\s*\d+\s+[\d.]+\s+[\d.]+", line)]
    assert [row[0] for row in rows] == ["0", "1"]
    step = float(re.search(r"training step alone: ([\d.]+) img/s", result.stdout).group(1))
    share = float(re.search(r"frozen VAE encoding of the targets: ([\d.]+)% of the step", result.stdout).group(1))
    assert step > 0 and 0 < share < 100
    for _, rate, ratio in rows:
        assert float(rate) > 0 and float(ratio) == pytest.approx(float(rate) / step, abs=0.01, rel=0.05)
