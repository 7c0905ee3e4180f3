"""The demo model's recipe end to end, at toy scale: `fpdm synth` a training set and a held-out
set, `fpdm train vae`, `fusion`, `diffusion` (and `--stage2-only`), then `fpdm eval` of every
method of the ablation table. The same commands as model_core/trained/demo/README.md, with the
`tiny` preset and a few steps each, through `fpdm_cli.main` in this process (seconds on a CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from fpdm_cli.main import main
from model_core.evaluation import METRICS
from model_core.pipeline_fpdm import FPDMPipeline

pytestmark = pytest.mark.slow  # the demo's training recipe end to end at toy scale: about 15 s


def fpdm(capsys, *args) -> str:
    capsys.readouterr()  # drop what earlier commands printed
    assert main([str(arg) for arg in args]) == 0
    return capsys.readouterr().out


def train_log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def synthetic_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    for name, pairs, seed in (("train", 24, 1), ("heldout", 12, 2)):
        assert main(["synth", "--out", str(root / name), "--pairs", str(pairs), "--seed", str(seed)]) == 0
    return root / "train" / "pairs.csv", root / "heldout" / "pairs.csv"


def test_synth_trains_vae_fusion_and_diffusion_and_eval_scores_each_ablation_method(synthetic_sets, tmp_path, capsys):
    train, heldout = synthetic_sets
    steps = {"vae": 6, "fusion": 6, "diffusion": 4}
    common = ["--pairs", train, "--batch-size", 8, "--device", "cpu"]

    printed = fpdm(capsys, "train", "vae", "--model", "tiny", "--out", tmp_path / "vae", "--max-steps", steps["vae"], *common)
    assert printed.startswith("trained vae: 6 steps") and "scaling_factor=" in printed
    printed = fpdm(capsys, "train", "fusion", "--model", tmp_path / "vae", "--out", tmp_path / "stage1",
                   "--max-steps", steps["fusion"], "--lr", 1e-3, *common)  # fmt: skip
    assert printed.startswith("trained fusion: 6 steps") and "top1=" in printed
    for name, start, extra in (("fpdm", "stage1", []), ("stage2only", "vae", ["--stage2-only"])):
        printed = fpdm(capsys, "train", "diffusion", "--model", tmp_path / start, "--out", tmp_path / name, *extra,
                       "--max-steps", steps["diffusion"], "--warmup-fraction", 0, "--grad-accum", 1, *common)  # fmt: skip
        assert printed.startswith("trained diffusion: 4 steps") and str(tmp_path / name) in printed

    # Each trainer ran its steps and logged a finite loss for every one.
    for out, stage in (("vae", "vae"), ("stage1", "fusion"), ("fpdm", "diffusion"), ("stage2only", "diffusion")):
        log = train_log(tmp_path / out)
        assert [r["step"] for r in log] == list(range(1, steps[stage] + 1)), out
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log), out

    # Each stage trained its own part and carried the earlier stages' parts over unchanged.
    tiny = FPDMPipeline.from_pretrained("tiny", device="cpu")
    vae = FPDMPipeline.from_pretrained(tmp_path / "vae", device="cpu")
    stage1 = FPDMPipeline.from_pretrained(tmp_path / "stage1", device="cpu")
    full = FPDMPipeline.from_pretrained(tmp_path / "fpdm", device="cpu")
    stage2_only = FPDMPipeline.from_pretrained(tmp_path / "stage2only", device="cpu")
    assert not same_weights(vae.vae, tiny.vae) and vae.vae.config.scaling_factor != tiny.vae.config.scaling_factor
    assert not same_weights(stage1.fusion, vae.fusion) and same_weights(stage1.vae, vae.vae)
    assert not same_weights(full.unet, stage1.unet)
    assert same_weights(full.vae, vae.vae) and same_weights(full.fusion, stage1.fusion)
    assert full.uses_fusion and not stage2_only.uses_fusion and same_weights(stage2_only.vae, vae.vae)

    # eval generates every held-out pair for each method of the ablation table.
    evaluations = {
        "copy the source": ["--copy-source"],
        "stage 2 only": ["--model", tmp_path / "stage2only"],
        "fpdm": ["--model", tmp_path / "fpdm"],
    }
    for method, model in evaluations.items():
        result = json.loads(fpdm(capsys, "eval", *model, "--pairs", heldout, "--steps", 2, "--json"))
        assert result["method"] == method and result["pairs"] == 12 == len(result["per_pair"])
        means = result["means"]
        assert set(means) == set(METRICS)
        assert -1 <= means["ssim"] <= 1 and 0 <= means["pose_accuracy"] <= 1 and 0 <= means["figure_iou"] <= 1
        assert means["psnr"] > 0 and means["colour_error"] >= 0
        if method == "copy the source":
            # The source is a clean figure of the same garment: its colours match; its pose does not.
            assert means["colour_error"] < 30 and means["pose_accuracy"] < 0.95
