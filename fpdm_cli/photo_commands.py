"""One photo at a time: `fpdm generate`, `fpdm qc`, `fpdm poses detect`.

torch, diffusers, the detectors and the model are imported inside the command functions:
importing them takes seconds, which `fpdm --help` and the other commands should not pay.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from fpdm_cli.arguments import (
    add_detector_arguments,
    add_device_argument,
    add_scheduler_argument,
    non_negative_int,
    positive_int,
)

EXIT_SOME_PHOTOS_FAILED = 1
EXIT_QC_NOT_PASSED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    register_generate(subparsers)
    register_qc(subparsers)
    register_poses(subparsers)


# ----- fpdm generate ------------------------------------------------------------------------


def register_generate(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="render one source photo in one or more target poses",
        description=(
            "Render the garment of one source photo in each target pose. The source is encoded "
            "once for all poses. Writes <pose-stem>_s<k>.png per pose and sample into --out and "
            "prints each path; pose files that share a stem get their position on the command line "
            "added (front-1_s0.png, front-2_s0.png)."
        ),
    )
    parser.add_argument("--model", default="tiny", help="preset name or model directory (default: tiny)")
    parser.add_argument("--source", type=Path, required=True, help="source photo")
    parser.add_argument(
        "--pose",
        type=Path,
        action="append",
        required=True,
        help="target keypoint file (coco18 JSON, OpenPose JSON or DeepFashion .txt; DeepFashion files and OpenPose "
        "files without a canvas size are on the source photo's canvas); repeat for more poses",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, metavar="N",
        help="sample k of each pose starts from noise seeded seed + k, drawn on the CPU: the same on every device (default: 0)",
    )  # fmt: skip
    parser.add_argument("--steps", type=positive_int, default=20, metavar="N", help="sampling steps (default: 20)")
    parser.add_argument("--guidance", type=float, default=2.0, metavar="W", help="guidance scale (default: 2.0)")
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=1,
        metavar="N",
        help="images per pose (default: 1, as the reference's test script; its validation draws 4)",
    )
    parser.add_argument("--no-fusion", action="store_true", help="sample without the stage-1 fusion branch (two-branch guidance)")
    add_scheduler_argument(parser)
    add_device_argument(parser)
    parser.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> None:
    from model_core.images import load_image
    from model_core.keypoints import read_keypoints
    from model_core.pipeline_fpdm import FPDMPipeline

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
        scheduler=args.scheduler,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for name, images in zip(output_names(args.pose), images_per_pose, strict=True):
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


# ----- fpdm qc ------------------------------------------------------------------------------


def register_qc(subparsers) -> None:
    qc = subparsers.add_parser(
        "qc",
        help="quality-check an image against its source photo and target pose",
        description="Run the QC that every generated image gets (sanity, pose fidelity, garment colours; with "
        "--model also CLIP similarity and FPDM alignment) on any source / pose / image triple, and print "
        "the status, its reasons and the measurements. Exit 0 if the status is pass, 1 if it is review or "
        "fail, 2 if an input is unusable.",
    )
    qc.add_argument("--source", required=True, help="source photo of the garment")
    qc.add_argument(
        "--pose",
        required=True,
        help="target pose: a keypoint file (coco18 JSON, OpenPose JSON or DeepFashion .txt; one that states "
        "no canvas is taken to be on --image's canvas) or a photo to detect the pose on",
    )
    qc.add_argument("--image", required=True, help="the image to check (generated, or a real photo)")
    qc.add_argument(
        "--source-pose",
        dest="source_pose",
        help="keypoint file of the source's pose (default: detected on the source photo)",
    )
    qc.add_argument("--json", action="store_true", help="print the result as JSON, as a variant's sidecar records it")
    qc.add_argument(
        "--model",
        help="preset name or model directory: adds the embedding checks (CLIP similarity, FPDM alignment)",
    )
    add_device_argument(qc, used_for="--model")
    add_detector_arguments(qc)
    qc.set_defaults(run=run_qc)


def run_qc(args: argparse.Namespace) -> int:
    import json

    from model_core.images import load_image
    from model_core.keypoints import KEYPOINT_SUFFIXES, read_keypoints
    from pipeline.qc import ModelReference, check_image

    # Inputs first: a bad file should fail before the detector or a model is loaded.
    source = load_image(args.source)
    image = load_image(args.image)
    pose_is_photo = Path(args.pose).suffix.lower() not in KEYPOINT_SUFFIXES
    pose_photo = load_image(args.pose) if pose_is_photo else None
    target = None if pose_is_photo else read_keypoints(args.pose, default_size=image.size)
    source_keypoints = read_keypoints(args.source_pose, default_size=source.size) if args.source_pose else None

    detector = make_detector(args)
    if pose_is_photo:
        target = detector.detect(pose_photo, args.pose)  # no person there: bad input, exit 2
    model = None
    if args.model:
        from model_core.pipeline_fpdm import FPDMPipeline

        pipe = FPDMPipeline.from_pretrained(args.model, device=args.device)
        model = ModelReference.for_job(pipe, pipe.encode_source(source), pipe.encode_pose(target))

    result = check_image(image, source, target, detector, model=model, source_keypoints=source_keypoints)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(format_qc(result))
    return 0 if result.status == "pass" else EXIT_QC_NOT_PASSED


def format_qc(result) -> str:
    """The QC result as a short readable report: status, reasons, then every metric."""
    lines = [f"status   {result.status}", f"score    {result.score:.2f}"]
    lines.append("reasons" + ("" if result.reasons else "  (none)"))
    lines += [f"  - {reason}" for reason in result.reasons]
    lines.append("metrics")
    width = max(len(name) for name in result.metrics)
    for name, value in result.metrics.items():
        if value is None:
            shown = "-  (not measured)"
        elif isinstance(value, bool):
            shown = "yes" if value else "no"
        elif isinstance(value, float):
            shown = f"{value:.3f}"
        else:
            shown = str(value)
        lines.append(f"  {name:<{width}}  {shown}")
    return "\n".join(lines)


# ----- fpdm poses detect --------------------------------------------------------------------


def register_poses(subparsers) -> None:
    poses = subparsers.add_parser("poses", help="pose detection")
    pose_commands = poses.add_subparsers(dest="poses_command", required=True, metavar="ACTION")
    detect = pose_commands.add_parser(
        "detect",
        help="detect the pose in photos and write coco18 keypoint files",
        description="Detect the person's pose in each photo and write OUT/<stem>.json (coco18 format); photos "
        "that share a stem get -2, -3, ... rather than overwriting each other. A photo that cannot be read or "
        "shows no person gets one error line; the others go on. Exit 1 if any failed.",
    )
    detect.add_argument("images", nargs="+", help="photos: paths or s3:// URIs")
    detect.add_argument("--out", required=True, help="output folder or s3:// prefix")
    add_detector_arguments(detect)
    detect.set_defaults(run=run_poses_detect)


def run_poses_detect(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import PurePosixPath

    from model_core.errors import InputError
    from model_core.images import decode_image
    from pipeline import storage

    detector = make_detector(args)
    failed = 0
    written_stems: dict[str, int] = {}
    for image_uri in args.images:
        try:
            image = decode_image(storage.read_bytes(image_uri), image_uri)
            keypoints = detector.detect(image, image_uri)
        except InputError as error:
            print(f"fpdm: error: {error}", file=sys.stderr)
            failed += 1
            continue
        # Photos from different folders often share a stem (01_1_front.jpg): never overwrite.
        stem = PurePosixPath(image_uri).stem
        written_stems[stem] = written_stems.get(stem, 0) + 1
        name = stem if written_stems[stem] == 1 else f"{stem}-{written_stems[stem]}"
        out_uri = storage.join(args.out, name + ".json")
        storage.write_bytes(out_uri, json.dumps(keypoints.to_json()).encode(), content_type="application/json")
        print(f"{out_uri}  ({int(keypoints.visible.sum())} of 18 keypoints)")
    return EXIT_SOME_PHOTOS_FAILED if failed else 0


def make_detector(args: argparse.Namespace):
    from pipeline.pose_detection import make_pose_detector

    return make_pose_detector(args.backend, args.openpose_weights)
