"""Training and measuring: `fpdm synth` (data with known targets), `fpdm train vae|fusion|diffusion`,
`fpdm eval`.

torch, the model and the synthetic catalog's renderer are imported inside the command functions,
so that `fpdm --help` and the other commands do not pay for them.
"""

from __future__ import annotations

import argparse
import json

from fpdm_cli.arguments import (
    MONITOR_OPTIONS,
    TRAIN_DIFFUSION_OPTIONS,
    TRAIN_FUSION_OPTIONS,
    TRAIN_OPTIONS,
    add_common_train_options,
    add_device_argument,
    add_monitor_options,
    add_optimizer_argument,
    add_precision_argument,
    add_scheduler_argument,
    fraction,
    given_options,
    non_negative_int,
    positive_float,
    positive_int,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    register_synth(subparsers)
    register_train(subparsers)
    register_eval(subparsers)


# ----- fpdm synth ---------------------------------------------------------------------------


def register_synth(subparsers) -> None:
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
        "seeds share no garment, so another seed is a held-out set.",
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
    from synthetic import parse_size, write_dataset

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


# ----- fpdm train ---------------------------------------------------------------------------


def register_train(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train the autoencoder, stage 1 (fusion) or stage 2 (diffusion)")
    train_commands = parser.add_subparsers(dest="train_command", required=True, metavar="STAGE")
    prints = "Prints one summary line: steps, last logged loss, output directory."

    vae = train_commands.add_parser(
        "vae",
        argument_default=argparse.SUPPRESS,
        help="fit the autoencoder to the pairs' photos (small models of a new domain)",
        description="Fit the model's VAE to the photos of a pairs CSV and set its latent scale. For small models "
        "trained from scratch (the demo); production models keep Stable Diffusion's VAE. Run it before the two "
        f"stages, which keep the VAE frozen. Options left out take model_core.vae_training.train_vae's defaults. {prints}",
    )
    vae.add_argument("--model", required=True, help="preset name or model directory to start from")
    add_common_train_options(vae)
    add_monitor_options(vae)
    vae.set_defaults(run=run_train_vae)

    fusion = train_commands.add_parser(
        "fusion",
        argument_default=argparse.SUPPRESS,
        help="train the stage-1 fusion model",
        description="Train the stage-1 fusion model (FPDM.md, Stage 1). Options left out take "
        "model_core.training's defaults (batch 48, lr 1e-5, the reference's; docs/models-and-training.md lists "
        f"every default and its source). {prints}",
    )
    fusion.add_argument("--model", required=True, help="preset name or model directory to start from")
    add_common_train_options(fusion)
    add_precision_argument(fusion)
    add_optimizer_argument(fusion)
    add_monitor_options(fusion)
    fusion.set_defaults(run=run_train_fusion)

    diffusion = train_commands.add_parser(
        "diffusion",
        argument_default=argparse.SUPPRESS,
        help="train the stage-2 diffusion model",
        description="Train the stage-2 diffusion model (FPDM.md, Stage 2) with the VAE, source encoder and fusion "
        "model frozen. Options left out take model_core.training's defaults: the reference's recipe (batch 42 "
        "with 3 accumulation steps, lr 1e-4 with warm-up, x0.1 late in the run, no weight decay, no clipping; "
        "keypoint jitter, flips, source = target pairs and low-resolution sources), except that condition "
        "dropout is drawn per sample, not per batch; docs/models-and-training.md lists every default and its "
        f"source. {prints}",
    )
    diffusion.add_argument("--model", required=True, help="model directory (or preset) to start from")
    diffusion.add_argument(
        "--stage2-only", dest="stage2_only", action="store_true",
        help="train (and save) a model without the fusion part and its embedding",
    )  # fmt: skip
    diffusion.add_argument(
        "--grad-accum", dest="gradient_accumulation", type=positive_int, metavar="N", help="gradient accumulation steps"
    )
    diffusion.add_argument(
        "--warmup-fraction", dest="warmup_fraction", type=fraction, metavar="F",
        help="linear learning-rate warm-up over this share of the steps (default 0.05: the reference's 5 of 100 epochs)",
    )  # fmt: skip
    diffusion.add_argument(
        "--lr-decay-at", dest="lr_decay_at", type=fraction, metavar="F",
        help="the learning rate drops x0.1 from this share of the steps on (default 0.55: the reference's epoch 55 of 100)",
    )  # fmt: skip
    diffusion.add_argument(
        "--train-source-encoder", dest="train_source_encoder", action="store_true",
        help="train the source encoder too (for a random-initialised one; a pretrained one, DINOv2 or the demo's "
        "VAE encoder, stays frozen)",
    )  # fmt: skip
    diffusion.add_argument(
        "--no-augmentation", dest="no_augmentation", action="store_true",
        help="train on the pairs as they are, without the reference's augmentations",
    )  # fmt: skip
    add_common_train_options(diffusion)
    add_precision_argument(diffusion)
    add_optimizer_argument(diffusion)
    add_monitor_options(diffusion, samples=True)
    diffusion.set_defaults(run=run_train_diffusion)


def run_train_vae(args: argparse.Namespace) -> None:
    from model_core.vae_training import train_vae

    result = train_vae(
        args.model,
        args.pairs,
        args.out,
        files=training_files(args),
        **given_options(args, TRAIN_OPTIONS),
        monitoring=monitoring(args),
    )
    print_training_summary("vae", result)


def run_train_fusion(args: argparse.Namespace) -> None:
    from model_core.training import train_fusion

    options = given_options(args, TRAIN_FUSION_OPTIONS)
    result = train_fusion(args.model, args.pairs, args.out, files=training_files(args), **options, monitoring=monitoring(args))
    print_training_summary("fusion", result)


def run_train_diffusion(args: argparse.Namespace) -> None:
    from model_core.training import train_diffusion

    options = given_options(args, TRAIN_DIFFUSION_OPTIONS)
    if getattr(args, "no_augmentation", False):
        from model_core.augmentation import Augmentation

        options["augmentation"] = Augmentation.off()
    result = train_diffusion(args.model, args.pairs, args.out, files=training_files(args), **options, monitoring=monitoring(args))
    print_training_summary("diffusion", result)


def training_files(args: argparse.Namespace):
    """S3's implementation when a path is an s3:// URI (pipeline.training_storage); else None,
    model_core's local default."""
    if any(str(getattr(args, name, "")).startswith("s3://") for name in ("model", "pairs", "out")):
        from pipeline.training_storage import S3TrainingFiles

        return S3TrainingFiles()
    return None


def monitoring(args: argparse.Namespace):
    from model_core.training_monitor import Monitoring

    return Monitoring(progress=False if getattr(args, "no_progress", False) else None, **given_options(args, MONITOR_OPTIONS))


def print_training_summary(stage: str, result) -> None:
    last = " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in result.last.items())
    print(f"trained {stage}: {result.steps} steps, last: {last or '-'}; model in {result.out}")


# ----- fpdm eval ----------------------------------------------------------------------------


def register_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="measure pose transfer on pairs with known targets",
        description="Generate every pair of a pairs CSV (source_image,target_image,target_pose) and compare each "
        "image with its target: SSIM, PSNR, garment-colour error inside the person's region, pose accuracy "
        "(PCK of the generated figure) and figure overlap. --copy-source scores the baseline that returns "
        "the source photo unchanged. LPIPS and FID need pretrained networks that are not installed: they "
        "are skipped with a notice, never downloaded.",
    )
    parser.add_argument("--pairs", required=True, help="pairs CSV (paths relative to it)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="preset name or model directory")
    what.add_argument("--copy-source", dest="copy_source", action="store_true", help="score the copy-the-source baseline")
    parser.add_argument("--no-fusion", dest="no_fusion", action="store_true", help="sample without the fusion branch")
    parser.add_argument("--steps", type=positive_int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--guidance", type=positive_float, default=2.0, help="guidance scale (default 2.0)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="pair i is sampled with seed + i (default 0)")
    parser.add_argument("--batch-size", dest="batch_size", type=positive_int, default=8, help="pairs per model call (default 8)")
    parser.add_argument("--limit", type=positive_int, help="only the first N pairs")
    add_scheduler_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the result, with every pair's scores, as JSON")
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    from model_core.evaluation import METRICS, evaluate_pairs
    from model_core.pipeline_fpdm import FPDMPipeline
    from model_core.training_data import read_pairs

    pairs = read_pairs(args.pairs)[: args.limit]
    # The baseline needs only a frame to compare in: the tiny preset's, unless a model is named.
    pipe = FPDMPipeline.from_pretrained(args.model or "tiny", device=args.device)
    result = evaluate_pairs(
        pipe, pairs, steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
        use_fusion=not args.no_fusion, batch_size=args.batch_size, copy_source=args.copy_source,
        scheduler=args.scheduler,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return
    means = result.means()
    print(f"{result.method} ({'-' if args.copy_source else result.model}), {len(result.scores)} pairs")
    for name in METRICS:
        print(f"  {name:<14} {means[name]:.4f}")
    for notice in result.notices:
        print(f"note: {notice}")
