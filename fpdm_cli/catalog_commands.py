"""Catalog commands: `fpdm validate`."""

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
