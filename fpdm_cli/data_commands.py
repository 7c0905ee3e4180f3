"""Data commands: `fpdm synth`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser(
        "synth",
        help="write a synthetic catalog: posed figures in textured garments, with pairs to train and evaluate on",
        description="Write a deterministic synthetic catalog into --out: people in garments (solid, stripes, "
        "checks, dots, logo patch; trousers, shorts, skirt) in 4 poses each, seen from the front, the side or "
        "the back. Writes images/<person>_<k>.png, poses/<person>_<k>.json (coco18 keypoints; joints hidden "
        "by the body are missing), masks/<person>_<k>.png (part masks: 0 background, 1 skin, 2 hair, 3 top, "
        "4 bottoms, 5 shoes), pairs.csv (source_image,target_image,target_pose: the ordered pairs of one "
        "person's poses, 12 per person, for `fpdm train` and `fpdm eval`), images.csv (person, garment, view "
        "and colours of every image) and metadata.json. The same arguments write the same bytes; different "
        "seeds share no garment.",
    )
    synth.add_argument("--out", required=True, help="output folder (created; files of the same name are overwritten)")
    synth.add_argument("--pairs", type=int, required=True, metavar="N", help="number of pairs (people: N / 12, rounded up)")
    synth.add_argument("--seed", type=int, default=0, metavar="S", help="random seed, 0 or more (default 0)")
    synth.add_argument(
        "--size",
        default="64x48",
        metavar="HxW",
        help="picture size in pixels, height x width (default 64x48, the demo model's resolution; at least 32x24)",
    )
    synth.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace) -> None:
    from model_core.errors import InputError
    from pipeline.synthetic import parse_size, write_dataset

    size = parse_size(args.size)
    if args.pairs < 1:
        raise InputError(f"--pairs must be at least 1, got {args.pairs}")
    if args.seed < 0:
        raise InputError(f"--seed must be 0 or more, got {args.seed}")
    result = write_dataset(args.out, pairs=args.pairs, seed=args.seed, size=size)
    print(
        f"synth: {result.pairs} pairs, {result.people} people, {result.images} images "
        f"({size[0]}x{size[1]}) in {result.out}; pairs file {result.pairs_csv}"
    )
