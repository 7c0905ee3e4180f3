"""Catalog commands: `fpdm validate`, `fpdm poses detect`, `fpdm qc`."""

from __future__ import annotations

import argparse

EXIT_INVALID_ROWS = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    validate = subparsers.add_parser(
        "validate",
        help="check a catalog manifest and list every problem",
        description="Check a manifest (local path or s3:// URI). Exit 0 if every row is valid, 1 if some rows "
        "are invalid (they are listed; the others would still run), 2 if the manifest is unusable.",
    )
    validate.add_argument("manifest", help="manifest CSV: a path or an s3:// URI")
    validate.set_defaults(run=run_validate)

    poses = subparsers.add_parser("poses", help="pose detection")
    pose_commands = poses.add_subparsers(dest="poses_command", required=True, metavar="ACTION")
    detect = pose_commands.add_parser(
        "detect",
        help="detect the pose in photos and write coco18 keypoint files",
        description="Detect the person's pose in each photo and write OUT/<stem>.json (coco18 format). "
        "A photo that fails gets one error line; the others go on. Exit 1 if any failed.",
    )
    detect.add_argument("images", nargs="+", help="photos: paths or s3:// URIs")
    detect.add_argument("--out", required=True, help="output folder or s3:// prefix")
    add_detector_arguments(detect)
    detect.set_defaults(run=run_poses_detect)

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
    qc.add_argument("--json", action="store_true", help="print the result as JSON")
    qc.add_argument(
        "--model",
        help="preset name or model directory: adds the embedding checks (CLIP similarity, FPDM alignment)",
    )
    qc.add_argument("--device", default="auto", help="device for --model: auto, cpu, cuda or cuda:N (default: auto)")
    add_detector_arguments(qc)
    qc.set_defaults(run=run_qc)


DETECTOR_BACKENDS = ("auto", "openpose", "mediapipe")  # `keypoints` detects nothing: no use here


def add_detector_arguments(parser: argparse.ArgumentParser, flag: str = "--backend", choices=DETECTOR_BACKENDS) -> None:
    parser.add_argument(
        flag,
        default="auto",
        choices=choices,
        help="pose detector: openpose (needs its weights), mediapipe (bundled, offline), "
        + ("keypoints (no detection: pose files must be keypoint files), " if "keypoints" in choices else "")
        + "or auto: openpose when its weights are configured, else mediapipe (default auto)",
    )
    parser.add_argument(
        "--openpose-weights",
        dest="openpose_weights",
        help="folder or s3:// prefix with the OpenPose weights (default: $FPDM_OPENPOSE_WEIGHTS)",
    )


def make_detector(args: argparse.Namespace):
    from pipeline.pose_detection import make_pose_detector

    return make_pose_detector(args.backend, args.openpose_weights)


def run_validate(args: argparse.Namespace) -> int:
    from pipeline.manifest import read_manifest

    manifest = read_manifest(args.manifest)
    if manifest.problems:
        width = max(len(p.column) for p in manifest.problems)
        print(f"{'row':>5}  {'column':<{width}}  problem")
        for problem in manifest.problems:
            print(f"{problem.row:>5}  {problem.column:<{width}}  {problem.reason}")
    print(
        f"{manifest.uri}: {len(manifest.rows)} valid row(s), {len(manifest.invalid_rows)} invalid, "
        f"{len(manifest.disabled)} disabled"
    )
    return EXIT_INVALID_ROWS if manifest.problems else 0


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
    return EXIT_INVALID_ROWS if failed else 0


EXIT_QC_NOT_PASSED = 1


def run_qc(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

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
