"""QC's pass / review / fail rates on images whose right answer is known, to calibrate its
thresholds (pipeline.qc.QCConfig) and to report them (docs/measurements.md).

On the synthetic catalog's held-out seeds (`fpdm synth`, 64x48 by default), every pair is
checked as a run checks a variant (check_image, MediaPipe, the source's pose detected):

  truth       the pair's true target photo with its target pose: must pass
  copy        the source photo against the target pose: the same person in another pose, what
              a model that copies its source returns; should not pass
  blank       a picture of the background colour alone: must fail
  <model>     a model's output for every --every-th pair (tiny: random weights, must fail)

It prints, per set, the share of each status, how often the detector found nobody, and the
figure score's range where it did not (pipeline/qc_figure.py).

    PYTHONPATH=. python scripts/qc_calibration.py --out /tmp/qc-calibration --seeds 2 4 --models tiny demo

Generated images are written to OUT/<model>/seed<S>/<pair>.png and reused when present.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from model_core.images import load_image
from model_core.keypoints import read_keypoints
from model_core.training_data import read_pairs
from pipeline.pose_detection import MediapipePoseDetector
from pipeline.qc import STATUSES, check_image
from synthetic import parse_size, write_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the catalogs, generated images and results.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 4], help="synthetic catalog seeds (held out: 2 4)")
    parser.add_argument("--pairs", type=int, default=120, help="pairs per seed (default 120: 10 people)")
    parser.add_argument("--size", default="64x48", help="picture size HxW (default 64x48)")
    parser.add_argument("--models", nargs="*", default=["tiny", "demo"], help="models whose outputs are checked")
    parser.add_argument("--every", type=int, default=8, help="generate every N-th pair (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20, as fpdm run)")
    args = parser.parse_args()

    out = Path(args.out)
    detector = MediapipePoseDetector()
    results: dict[str, list[dict]] = {}

    def check(kind: str, image: Image.Image, source: Image.Image, target) -> None:
        results.setdefault(kind, []).append(check_image(image, source, target, detector).to_json())

    for seed in args.seeds:
        catalog = out / f"seed{seed}"
        write_dataset(catalog, pairs=args.pairs, seed=seed, size=parse_size(args.size))
        pairs = read_pairs(catalog / "pairs.csv")
        for index, pair in enumerate(pairs):
            source, target_photo = load_image(pair.source_image), load_image(pair.target_image)
            target = read_keypoints(pair.target_pose, default_size=target_photo.size)
            check("truth", target_photo, source, target)
            check("copy", source, source, target)
            if index % 12 == 0:  # one per person
                background = tuple(int(c) for c in np.median(np.asarray(target_photo)[0], axis=0))
                check("blank", Image.new("RGB", target_photo.size, background), source, target)
        for model in args.models:
            for index, image in generated(model, out / model / f"seed{seed}", pairs, args.every, args.steps):
                pair = pairs[index * args.every]
                target_photo = load_image(pair.target_image)
                check(
                    model, image, load_image(pair.source_image), read_keypoints(pair.target_pose, default_size=target_photo.size)
                )

    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"{'set':<8} {'images':>6} " + " ".join(f"{s:>7}" for s in STATUSES) + f" {'no person':>9}  figure score")
    for kind, rows in results.items():
        counts = Counter(row["status"] for row in rows)
        missed = [row for row in rows if row["metrics"]["person_found"] is False]
        scores = [row["metrics"]["figure_score"] for row in missed if row["metrics"]["figure_score"] is not None]
        spread = f"{min(scores):.2f}-{max(scores):.2f}" if scores else "-"
        shares = " ".join(f"{counts[s] / len(rows):>7.0%}" for s in STATUSES)
        print(f"{kind:<8} {len(rows):>6} {shares} {len(missed) / len(rows):>9.0%}  {spread}")


def generated(model: str, folder: Path, pairs: list, every: int, steps: int):
    """(n, image) for the pairs n x every, generated with seed n unless already on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe = None
    for index, pair in enumerate(pairs[::every]):
        path = folder / f"{index * every:03d}.png"
        if not path.exists():
            if pipe is None:
                from model_core.pipeline_fpdm import FPDMPipeline

                pipe = FPDMPipeline.from_pretrained(model)
            target_photo = load_image(pair.target_image)
            keypoints = pipe.geometry.keypoints(read_keypoints(pair.target_pose, default_size=target_photo.size))
            source = pipe.encode_source(load_image(pair.source_image))
            pipe([source], [pipe.encode_pose(keypoints)], [index], num_inference_steps=steps)[0][0].save(path)
        yield index, Image.open(path).convert("RGB")


if __name__ == "__main__":
    main()
