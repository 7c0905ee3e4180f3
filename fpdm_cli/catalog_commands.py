"""Catalog commands: `fpdm validate`, `fpdm poses detect`."""

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
    detect.add_argument("--backend", default="mediapipe", choices=["mediapipe"], help="pose detector (default mediapipe)")
    detect.set_defaults(run=run_poses_detect)


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
    from pipeline.poses import MediapipePoseDetector

    detector = MediapipePoseDetector()
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
