"""Entry point of `fpdm`: builds the parser from the command modules, runs the chosen command,
and turns bad input into one error line with exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from fpdm_cli import catalog_commands, model_commands, photo_commands, training_commands
from model_core.errors import InputError, TrainingDiverged

# The commands by what users do with them, in the order `fpdm --help` lists them. Every module
# has `register(subparsers)`, which adds its commands and sets `run` on each to the function that
# carries it out; `run` may return an exit code.
COMMAND_MODULES = (
    catalog_commands,  # run, retry, validate: a whole catalog
    photo_commands,  # generate, qc, poses detect: one photo at a time
    training_commands,  # synth, train, eval
    model_commands,  # model save-preset, info, assemble
)

# argparse exits 2 on a usage error; a bad input file is the same kind of mistake.
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1  # the command ran and failed: a training run that diverged


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpdm",
        description="FPDM Catalog: new photos of a catalog garment in other poses.",
        epilog="Every command prints what it wrote or found. Bad input (an unreadable image or manifest, a "
        "keypoint file in an unknown format, a model directory missing a part, a missing file) ends with one "
        "line 'fpdm: error: <message>' on stderr and exit code 2, as usage errors do. `fpdm COMMAND --help` "
        "describes each command.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def quiet_libraries() -> None:
    """Keep the output to what fpdm prints: no library info logs or known import warnings."""
    # diffusers (and transformers, if something pulls it in) read these when first imported,
    # which happens inside the commands, after this. setdefault leaves an explicit
    # DIFFUSERS_VERBOSITY=info of someone debugging alone.
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # timm and open_clip warn about their own deprecated import paths on import.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(timm|open_clip)(\.|$)")
    # mediapipe 0.10.14 calls a protobuf API that protobuf 4 marks deprecated.
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated")


def report_error(message: str, exit_code: int = EXIT_BAD_INPUT) -> int:
    # One line, whatever the message carries (some quote an underlying library's error).
    one_line = " ".join(message.splitlines())
    print(f"fpdm: error: {one_line}", file=sys.stderr)
    return exit_code


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        exit_code = args.run(args)  # None means success
    except InputError as error:
        return report_error(str(error))
    except TrainingDiverged as error:
        return report_error(str(error), EXIT_FAILED)
    except FileNotFoundError as error:
        return report_error(f"{error.filename}: {error.strerror}" if error.filename else str(error))
    except BrokenPipeError:
        # The reader went away (`fpdm model info DIR | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
