"""Model directories: `fpdm model save-preset|info|assemble`.

torch, diffusers and the model are imported inside the command functions, so that `fpdm --help`
and the other commands do not pay for them; the preset table is plain data and cheap.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from model_core.presets import PRESETS, RANDOM_INIT_PRESETS, TRAINED_PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="save, inspect and assemble model directories")
    model_commands = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    with_weights = ", ".join([*(name for name in PRESETS if name in RANDOM_INIT_PRESETS), *TRAINED_PRESETS])
    without_weights = ", ".join(name for name in PRESETS if name not in RANDOM_INIT_PRESETS)
    save = model_commands.add_parser(
        "save-preset",
        help="write a preset as a model directory",
        description=(
            f"Write a preset ({with_weights}) as a model directory. A preset without weights ({without_weights}) "
            "is written as DIR/preset.json only; its weights come from `fpdm model assemble`."
        ),
    )
    save.add_argument("name", help="preset name")
    save.add_argument("dir", type=Path, help="directory to write")
    save.set_defaults(run=run_save_preset)

    info = model_commands.add_parser(
        "info",
        help="describe a model directory or preset",
        description="Print a model's name, origin, resolution, stages (full or stage-2-only), scheduler, each "
        "part's parameter count and stored dtype, and its checksum: what every variant's sidecar records, so a "
        "rerun with other weights regenerates. It covers a directory's model_index.json and component folders "
        "(not checkpoints or logs beside them), or a preset's configuration.",
    )
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
        action=argparse.BooleanOptionalAction,
        help="the activation the CLIP checkpoint was trained with: QuickGELU (OpenAI's weights) or, with "
        "--no-quick-gelu, GELU (LAION's). Needed only where the checkpoint does not say: assemble reads OpenAI's "
        "own layout and an open_clip_config.json beside the file, and refuses a flag that contradicts them",
    )
    assemble.set_defaults(run=run_assemble)


def run_save_preset(args: argparse.Namespace) -> None:
    from model_core.pipeline_fpdm import FPDMPipeline
    from model_core.presets import preset_source

    # The argument is a preset's name: a local folder of that name is not what is meant here.
    source = preset_source(args.name)  # InputError for an unknown name
    if source.directory is not None:
        # A trained preset is copied file for file, so the copy keeps its checksum (and every
        # variant made with it stays complete); loading it first checks that it is whole.
        FPDMPipeline.from_pretrained(source, device="cpu")
        shutil.copytree(source.directory, args.dir, dirs_exist_ok=True)
        print(args.dir)
        return
    if source.has_weights:
        print(FPDMPipeline.from_pretrained(source, device="cpu").save_pretrained(args.dir))
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    config_file = args.dir / "preset.json"
    config_file.write_text(json.dumps(source.config, indent=2) + "\n")
    print(config_file)
    print(f"preset {args.name!r} has no weights: build a model directory with `fpdm model assemble --preset {args.name}`")


def run_model_info(args: argparse.Namespace) -> None:
    from model_core.model_info import describe_model

    model = describe_model(args.model)
    print(f"name: {model.name}")
    print(f"from: {model.origin}")
    if model.checksum is not None:
        print(f"checksum: {model.checksum}  (what variants' sidecars record)")
    print(f"resolution: {model.width}x{model.height} (width x height)")
    print(f"stages: {'full (stage 1 fusion + stage 2)' if model.uses_fusion else 'stage-2-only'}")
    print(f"scheduler: {model.scheduler}, prediction_type={model.prediction_type}")
    print("parts:")
    for part in model.parts:
        print(f"  {part.name:<17} {part.parameters:>13,} parameters  {part.dtype}")
    print(f"  {'total':<17} {model.total_parameters:>13,} parameters")


def run_assemble(args: argparse.Namespace) -> None:
    from model_core.assemble import assemble

    options = {"preset": args.preset}
    if args.name is not None:
        options["name"] = args.name
    if args.quick_gelu is not None:
        options["quick_gelu"] = args.quick_gelu
    assemble(args.out, args.sd, args.clip, args.source_encoder, **options)
    print(args.out)
