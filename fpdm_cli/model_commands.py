"""Model commands: `fpdm generate`, `fpdm train {fusion,diffusion}`, `fpdm eval`,
`fpdm model {save-preset,info,assemble}`.

torch, diffusers and the model are imported inside the command functions: importing them takes
seconds, which `fpdm --help` and the light commands of other modules should not pay.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


# Options of the train commands and the keyword each one maps to. They are parsed with
# argparse.SUPPRESS as default, so an option the user did not give is absent and the train
# function's own default (the paper's setting) applies.
TRAIN_FUSION_OPTIONS = (
    "max_steps", "epochs", "batch_size", "learning_rate", "checkpoint_every", "resume", "device", "seed",
)
TRAIN_VAE_OPTIONS = (
    "max_steps", "epochs", "batch_size", "learning_rate", "checkpoint_every", "resume", "device", "seed",
)
TRAIN_DIFFUSION_OPTIONS = (
    "stage2_only", "max_steps", "epochs", "batch_size", "gradient_accumulation", "learning_rate",
    "warmup_steps", "checkpoint_every", "resume", "device", "seed",
)

# safetensors dtype codes, named as torch names them.
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    register_generate(subparsers)
    register_train(subparsers)
    register_eval(subparsers)
    register_model(subparsers)


# ----- fpdm generate ------------------------------------------------------------------------


def register_generate(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="render one source photo in one or more target poses",
        description=(
            "Render the garment of one source photo in each target pose. The source is encoded "
            "once for all poses. Writes <pose-stem>_s<k>.png per pose and sample into --out and "
            "prints each path."
        ),
    )
    parser.add_argument("--model", default="tiny", help="preset name or model directory (default: tiny)")
    parser.add_argument("--source", type=Path, required=True, help="source photo")
    parser.add_argument(
        "--pose",
        type=Path,
        action="append",
        required=True,
        help="target keypoint file (coco18 JSON, OpenPose JSON or DeepFashion .txt); repeat for more poses",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="N", help="sample k of each pose uses seed + k (default: 0)")
    parser.add_argument("--steps", type=positive_int, default=20, metavar="N", help="sampling steps (default: 20)")
    parser.add_argument("--guidance", type=float, default=2.0, metavar="W", help="guidance scale (default: 2.0)")
    parser.add_argument("--samples", type=positive_int, default=1, metavar="N", help="images per pose (default: 1)")
    parser.add_argument(
        "--no-fusion", action="store_true", help="sample without the stage-1 fusion branch (two-branch guidance)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
    parser.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> None:
    from model_core.images import load_image
    from model_core.pipeline_fpdm import FPDMPipeline
    from model_core.keypoints import read_keypoints

    # Inputs first: a bad file should fail before seconds (or minutes) of model loading.
    source = load_image(args.source)
    # DeepFashion .txt and canvas-less OpenPose files are on the source photo's canvas.
    poses = [read_keypoints(path, default_size=source.size) for path in args.pose]
    pipe = FPDMPipeline.from_pretrained(args.model, device=args.device)
    images_per_pose = pipe.generate(
        source,
        poses,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        num_images_per_prompt=args.samples,
        use_fusion=not args.no_fusion,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for name, images in zip(output_names(args.pose), images_per_pose):
        for sample, image in enumerate(images):
            path = args.out / f"{name}_s{sample}.png"
            image.save(path)
            print(path)


def output_names(pose_paths: list[Path]) -> list[str]:
    """One output name per pose: the pose file's stem, plus the pose's position on the command
    line (from 1) where several pose files share a stem (front.json, other/front.json)."""
    stem_counts = Counter(path.stem for path in pose_paths)
    return [
        path.stem if stem_counts[path.stem] == 1 else f"{path.stem}-{position}"
        for position, path in enumerate(pose_paths, start=1)
    ]


# ----- fpdm train ---------------------------------------------------------------------------


def register_train(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train the autoencoder, stage 1 (fusion) or stage 2 (diffusion)")
    train_commands = parser.add_subparsers(dest="train_command", required=True, metavar="STAGE")

    vae = train_commands.add_parser(
        "vae",
        argument_default=argparse.SUPPRESS,
        help="fit the autoencoder to the pairs' photos (small models of a new domain)",
        description="Fit the model's VAE to the photos of a pairs CSV and set its latent scale. For small models "
        "trained from scratch (the demo); production models keep Stable Diffusion's VAE.",
    )
    vae.add_argument("--model", required=True, help="preset name or model directory to start from")
    add_common_train_options(vae)
    vae.set_defaults(run=run_train_vae)

    fusion = train_commands.add_parser(
        "fusion",
        argument_default=argparse.SUPPRESS,
        help="train the stage-1 fusion model",
        description="Train the stage-1 fusion model (FPDM.md, Stage 1). Options left out take the paper's settings.",
    )
    fusion.add_argument("--model", required=True, help="preset name or model directory to start from")
    add_common_train_options(fusion)
    fusion.set_defaults(run=run_train_fusion)

    diffusion = train_commands.add_parser(
        "diffusion",
        argument_default=argparse.SUPPRESS,
        help="train the stage-2 diffusion model",
        description="Train the stage-2 diffusion model (FPDM.md, Stage 2). Options left out take the paper's settings.",
    )
    diffusion.add_argument("--model", required=True, help="model directory (or preset) to start from")
    diffusion.add_argument(
        "--stage2-only", dest="stage2_only", action="store_true", help="train without the fusion embedding"
    )
    diffusion.add_argument(
        "--grad-accum", dest="gradient_accumulation", type=positive_int, metavar="N", help="gradient accumulation steps"
    )
    diffusion.add_argument(
        "--warmup-steps", dest="warmup_steps", type=non_negative_int, metavar="N",
        help="linear learning-rate warm-up (default 500; lower it for short runs)",
    )
    add_common_train_options(diffusion)
    diffusion.set_defaults(run=run_train_diffusion)


def add_common_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=Path, required=True, help="pairs CSV: source_image,target_image,target_pose")
    parser.add_argument("--out", type=Path, required=True, help="output directory (checkpoints, log, final model)")
    parser.add_argument("--max-steps", dest="max_steps", type=positive_int, metavar="N", help="stop after this many optimiser steps")
    parser.add_argument("--epochs", type=positive_int, metavar="N", help="passes over the pairs")
    parser.add_argument("--batch-size", dest="batch_size", type=positive_int, metavar="N", help="pairs per step")
    parser.add_argument("--lr", dest="learning_rate", type=positive_float, metavar="F", help="learning rate")
    parser.add_argument("--checkpoint-every", dest="checkpoint_every", type=positive_int, metavar="N", help="steps between checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--device", metavar="D", help="auto (the default), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=non_negative_int, metavar="N", help="random seed")


def given_options(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def run_train_vae(args: argparse.Namespace) -> None:
    from model_core.training import train_vae

    result = train_vae(args.model, args.pairs, args.out, **given_options(args, TRAIN_VAE_OPTIONS))
    print_training_summary("vae", result)


def run_train_fusion(args: argparse.Namespace) -> None:
    from model_core.training import train_fusion

    result = train_fusion(args.model, args.pairs, args.out, **given_options(args, TRAIN_FUSION_OPTIONS))
    print_training_summary("fusion", result)


def run_train_diffusion(args: argparse.Namespace) -> None:
    from model_core.training import train_diffusion

    result = train_diffusion(args.model, args.pairs, args.out, **given_options(args, TRAIN_DIFFUSION_OPTIONS))
    print_training_summary("diffusion", result)


def print_training_summary(stage: str, result) -> None:
    last = " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in result.last.items())
    print(f"trained {stage}: {result.steps} steps, last: {last or '-'}; model in {result.out}")


# ----- fpdm eval ------------------------------------------------------------------------------


def register_eval(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="measure pose transfer on pairs with known targets",
        description="Generate every pair of a pairs CSV (source_image,target_image,target_pose) and compare each "
        "image with its target: SSIM, PSNR, garment-colour error inside the person's region, pose accuracy "
        "(PCK of the generated figure) and figure overlap. --copy-source scores the baseline that returns "
        "the source photo unchanged.",
    )
    parser.add_argument("--pairs", required=True, help="pairs CSV (paths relative to it)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="preset name or model directory")
    what.add_argument("--copy-source", dest="copy_source", action="store_true", help="score the copy-the-source baseline")
    parser.add_argument("--no-fusion", dest="no_fusion", action="store_true", help="sample without the fusion branch")
    parser.add_argument("--steps", type=positive_int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--guidance", type=positive_float, default=2.0, help="guidance scale (default 2.0)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="pair i is sampled with seed + i (default 0)")
    parser.add_argument("--batch-size", dest="batch_size", type=positive_int, default=8, help="pairs per model call")
    parser.add_argument("--limit", type=positive_int, help="only the first N pairs")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--json", action="store_true", help="print the result, with every pair's scores, as JSON")
    parser.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    from model_core.evaluation import METRICS, evaluate_pairs
    from model_core.pipeline_fpdm import FPDMPipeline
    from model_core.training import read_pairs

    pairs = read_pairs(args.pairs)[: args.limit]
    # The baseline needs only a frame to compare in: the tiny preset's, unless a model is named.
    pipe = FPDMPipeline.from_pretrained(args.model or "tiny", device=args.device)
    result = evaluate_pairs(
        pipe, pairs, steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
        use_fusion=not args.no_fusion, batch_size=args.batch_size, copy_source=args.copy_source,
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


# ----- fpdm model ---------------------------------------------------------------------------


def register_model(subparsers) -> None:
    parser = subparsers.add_parser("model", help="save, inspect and assemble model directories")
    model_commands = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    save = model_commands.add_parser(
        "save-preset",
        help="write a preset as a model directory",
        description=(
            "Write a preset as a model directory. A preset without weights (fpdm-sd21) is written "
            "as DIR/preset.json only; its weights come from `fpdm model assemble`."
        ),
    )
    save.add_argument("name", help="preset name")
    save.add_argument("dir", type=Path, help="directory to write")
    save.set_defaults(run=run_save_preset)

    info = model_commands.add_parser("info", help="describe a model directory or preset")
    info.add_argument("model", help="model directory or preset name")
    info.set_defaults(run=run_model_info)

    assemble = model_commands.add_parser(
        "assemble",
        help="build a model directory from public SD 2.1, CLIP and DINOv2 weights",
        description=(
            "Build an untrained model directory of a preset's architecture from public weights: "
            "Stable Diffusion 2.1 (UNet, VAE, scheduler), an open_clip ViT-L-14 checkpoint (fusion "
            "encoder) and a DINOv2-L/14 checkpoint (source encoder)."
        ),
    )
    assemble.add_argument("--preset", required=True, help="architecture preset, e.g. fpdm-sd21")
    assemble.add_argument("--sd", type=Path, required=True, help="Stable Diffusion 2.1 directory (diffusers layout)")
    assemble.add_argument("--clip", type=Path, required=True, help="open_clip ViT-L-14 checkpoint file")
    assemble.add_argument("--source-encoder", type=Path, required=True, help="DINOv2-L/14 checkpoint file")
    assemble.add_argument("--out", type=Path, required=True, help="model directory to write")
    assemble.add_argument("--name", help="model name recorded in model_index.json (default: the --out folder's name)")
    assemble.add_argument(
        "--quick-gelu",
        action="store_true",
        help="the CLIP checkpoint was trained with QuickGELU (OpenAI's weights); LAION's use GELU, the default",
    )
    assemble.set_defaults(run=run_assemble)


def run_save_preset(args: argparse.Namespace) -> None:
    from model_core.pipeline_fpdm import FPDMPipeline
    from model_core.presets import RANDOM_INIT_PRESETS, TRAINED_PRESETS, preset_config

    if args.name in RANDOM_INIT_PRESETS or args.name in TRAINED_PRESETS:
        print(FPDMPipeline.from_pretrained(args.name, device="cpu").save_pretrained(args.dir))
        return
    config = preset_config(args.name)  # InputError for an unknown name
    args.dir.mkdir(parents=True, exist_ok=True)
    config_file = args.dir / "preset.json"
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    print(config_file)
    print(f"preset {args.name!r} has no weights: build a model directory with `fpdm model assemble --preset {args.name}`")


def run_model_info(args: argparse.Namespace) -> None:
    import torch

    from model_core.pipeline_fpdm import FPDMPipeline, model_checksum
    from model_core.presets import PRESETS, RANDOM_INIT_PRESETS, preset_config, trained_preset_directory

    # The rules FPDMPipeline.from_pretrained applies: a preset name, unless such a path exists.
    trained_directory = trained_preset_directory(args.model)
    is_preset = args.model in PRESETS and not Path(args.model).exists()
    has_weights = not is_preset or args.model in RANDOM_INIT_PRESETS
    if has_weights:
        pipe = FPDMPipeline.from_pretrained(args.model, device="cpu")
        if trained_directory is not None:
            origin = f"trained preset, model directory {trained_directory}"
        else:
            origin = "preset, random-initialised weights" if is_preset else f"model directory {args.model}"
    else:
        # Architecture only, on the meta device: counts the parameters without allocating them.
        with torch.device("meta"):
            pipe = FPDMPipeline.from_config(preset_config(args.model))
        origin = "preset without weights; see `fpdm model assemble`"

    print(f"name: {pipe.name}")
    print(f"from: {origin}")
    if has_weights:
        print(f"checksum: {model_checksum(args.model)}  (what variants' sidecars record)")
    print(f"resolution: {pipe.geometry.width}x{pipe.geometry.height} (width x height)")
    print(f"stages: {'full (stage 1 fusion + stage 2)' if pipe.uses_fusion else 'stage-2-only'}")
    print(f"scheduler: {type(pipe.scheduler).__name__}, prediction_type={pipe.scheduler.config.prediction_type}")
    print("parts:")
    total = 0
    for part, module in pipe.modules().items():
        count = sum(parameter.numel() for parameter in module.parameters())
        total += count
        # A directory's dtype is what its files store (loading on the CPU makes everything float32).
        if not has_weights:
            dtype = "no weights"
        elif is_preset:
            dtype = str(module.dtype).removeprefix("torch.")
        else:
            dtype = stored_dtype(Path(trained_directory or args.model) / part)
        print(f"  {part:<17} {count:>13,} parameters  {dtype}")
    print(f"  {'total':<17} {total:>13,} parameters")


def stored_dtype(part_dir: Path) -> str:
    from safetensors import safe_open

    dtypes = set()
    for weights_file in sorted(part_dir.glob("*.safetensors")):
        with safe_open(weights_file, framework="pt") as weights:
            dtypes.update(weights.get_slice(key).get_dtype() for key in weights.keys())
    return ",".join(sorted(SAFETENSORS_DTYPES.get(code, code) for code in dtypes)) or "-"


def run_assemble(args: argparse.Namespace) -> None:
    from model_core.assemble import assemble

    options = {"preset": args.preset}
    if args.name is not None:
        options["name"] = args.name
    if args.quick_gelu:
        options["quick_gelu"] = True
    assemble(args.out, args.sd, args.clip, args.source_encoder, **options)
    print(args.out)
