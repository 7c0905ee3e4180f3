"""Argument types and options that several commands share, so they read and check the same way
everywhere. Command modules import nothing from each other; what they share is here."""

from __future__ import annotations

import argparse
from pathlib import Path

DETECTOR_BACKENDS = ("auto", "openpose", "mediapipe")  # `keypoints` detects nothing: no use outside a run

# Options of the train commands, as the keywords of model_core.training's train functions. They
# are parsed with argparse.SUPPRESS as default, so an option the user did not give is absent and
# the train function's own default applies (model_core.training: the one place they are written).
TRAIN_OPTIONS = (
    "max_steps", "epochs", "batch_size", "learning_rate", "checkpoint_every", "resume", "keep_checkpoints", "device", "seed",
    "loader_workers",
)  # fmt: skip
TRAIN_FUSION_OPTIONS = (*TRAIN_OPTIONS, "precision", "optimizer")
TRAIN_DIFFUSION_OPTIONS = (
    *TRAIN_FUSION_OPTIONS,
    "stage2_only",
    "gradient_accumulation",
    "warmup_fraction",
    "lr_decay_at",
    "train_source_encoder",
)

DEVICES = "auto (CUDA if available), cpu, cuda or cuda:N"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
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


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto", used_for: str = "") -> None:
    """--device with the same choices everywhere. `used_for` says what runs on it where that is not
    the whole command (`fpdm qc`: only --model's checks)."""
    prefix = f"device for {used_for}: " if used_for else ""
    parser.add_argument("--device", default=default, metavar="D", help=f"{prefix}{DEVICES} (default: auto)")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        metavar="P",
        help="auto, bf16 or fp32 (model_core.training.PRECISIONS). bf16: bf16 autocast over float32 weights; fp32: float32 throughout; auto (default): bf16 on CUDA, "
        "fp32 elsewhere",
    )


def add_optimizer_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--optimizer", metavar="NAME", choices=("adamw", "sgd"),
        help="adamw (default, the reference's) or sgd: no optimiser state, for smoke runs of a large model on a small "
        "machine, not a recipe (model_core.training.OPTIMIZERS)",
    )  # fmt: skip


def add_scheduler_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        metavar="NAME",
        help="diffusers scheduler class to sample with, e.g. DDIMScheduler or EulerDiscreteScheduler, built from "
        "the model's scheduler config (default: the model's own: DDPMScheduler for new models, as the reference "
        "samples; DDIMScheduler for models of the first format)",
    )


def add_detector_arguments(
    parser: argparse.ArgumentParser, flag: str = "--backend", choices=DETECTOR_BACKENDS, default: str = "auto"
) -> None:
    parser.add_argument(
        flag,
        default=default,
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


def add_common_train_options(parser: argparse.ArgumentParser) -> None:
    """The options of every `fpdm train` stage. The parser must have argument_default=SUPPRESS
    (see TRAIN_OPTIONS)."""
    parser.add_argument(
        "--pairs", required=True,
        help="pairs CSV, a path or s3:// URI: source_image,target_image,target_pose (paths relative to it)",
    )  # fmt: skip
    parser.add_argument(
        "--out", required=True,
        help="output directory or s3:// prefix: train_log.jsonl, checkpoint-NNNNNN/ folders and the final model, itself a --model",
    )  # fmt: skip
    parser.add_argument(
        "--max-steps",
        dest="max_steps",
        type=positive_int,
        metavar="N",
        help="stop after this many optimiser steps (instead of --epochs)",
    )
    parser.add_argument("--epochs", type=positive_int, metavar="N", help="passes over the pairs")
    parser.add_argument(
        "--batch-size", dest="batch_size", type=positive_int, metavar="N",
        help="pairs per step; under torchrun the global batch, shared by the processes",
    )  # fmt: skip
    parser.add_argument("--lr", dest="learning_rate", type=positive_float, metavar="F", help="learning rate")
    parser.add_argument(
        "--checkpoint-every", dest="checkpoint_every", type=positive_int, metavar="N", help="steps between checkpoints"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out, with the steps an uninterrupted run takes",
    )
    parser.add_argument(
        "--keep-checkpoints", dest="keep_checkpoints", type=positive_int, metavar="N",
        help="after each checkpoint, delete all but the newest N (default: keep every one)",
    )  # fmt: skip
    add_device_argument(parser, default=argparse.SUPPRESS)
    parser.add_argument("--seed", type=non_negative_int, metavar="N", help="random seed")
    parser.add_argument(
        "--loader-workers", dest="loader_workers", type=non_negative_int, metavar="N",
        help="processes building batches per training process; 0: the training process itself (default: one core "
        "per process kept for training, the rest up to 4; 0 with 2 cores or fewer)",
    )  # fmt: skip


def given_options(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """The options among `names` that the user gave (those parsed with argparse.SUPPRESS as default)."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def add_monitor_options(parser: argparse.ArgumentParser, samples: bool = False) -> None:
    """What a training run shows (model_core.training_monitor): TensorBoard's folder and, with
    `samples` (stage 2), the sample grids. The parser must have argument_default=SUPPRESS."""
    parser.add_argument(
        "--tensorboard-dir", dest="tensorboard_dir", type=Path, metavar="DIR",
        help="where the TensorBoard event files go (default OUT/tensorboard); watch with `tensorboard --logdir DIR`",
    )  # fmt: skip
    parser.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bar on a terminal")
    if samples:
        parser.add_argument(
            "--sample-every", dest="sample_every", type=positive_int, metavar="N",
            help="every N steps, generate the evaluation pairs into a TensorBoard image grid (source | generated | "
            "target) with `fpdm eval`'s metrics (default: no samples)",
        )  # fmt: skip
        parser.add_argument(
            "--eval-pairs", dest="eval_pairs", type=Path, metavar="CSV",
            help="held-out pairs CSV for --sample-every; its first --eval-count pairs are used (default: the "
            "first of the training pairs)",
        )  # fmt: skip
        parser.add_argument(
            "--eval-count", dest="eval_count", type=positive_int, metavar="N", help="evaluation pairs (default 4)"
        )


MONITOR_OPTIONS = ("tensorboard_dir", "sample_every", "eval_pairs", "eval_count")
