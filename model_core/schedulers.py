"""Diffusers schedulers by class name: a model's own (its scheduler folder names its class) and
another one a run asks for, built from the model's config."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
from diffusers import SchedulerMixin

from .errors import InputError


def scheduler_class(name: str) -> type[SchedulerMixin]:
    found = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(found, type) and issubclass(found, SchedulerMixin)) or found is SchedulerMixin:
        raise InputError(
            f"unknown diffusers scheduler class {name!r} (for example DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler)"
        )
    return found


def scheduler_named(name: str, config) -> SchedulerMixin:
    """The diffusers scheduler class `name` built from another scheduler's config: the noise
    schedule and prediction type carry over (diffusers keeps the keys one class does not use)."""
    return scheduler_class(name).from_config(config)


def load_scheduler(folder: Path, default_class: str | None = None) -> SchedulerMixin:
    """The scheduler that `folder/scheduler_config.json` describes; `default_class` where the
    config names none (model directories of the first layout were DDIM)."""
    config_file = Path(folder) / "scheduler_config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{config_file}: unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"{config_file}: a scheduler config must be a JSON object")
    try:
        found = scheduler_class(config.get("_class_name", default_class))
    except InputError as exc:
        raise InputError(f"{config_file}: {exc}") from None
    try:
        return found.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"{config_file}: the scheduler could not be built ({exc})") from None
