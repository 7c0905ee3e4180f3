"""Reading foreign checkpoint files safely: safetensors, or torch files with
`torch.load(weights_only=True)` (tensors and plain containers only; nothing else is unpickled),
unwrapped from training scripts' containers; and loading them strictly, every missing,
unexpected or mis-shaped key named. `assemble` reads the public checkpoints with these."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from .errors import InputError

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Containers that training scripts wrap a state dict in, unwrapped in this order.
WRAPPER_KEYS = ("state_dict", "model", "module")
MAX_LISTED_KEYS = 6


def check_checkpoint_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise InputError(f"{path}: not a checkpoint file kind this reads ({', '.join(CHECKPOINT_SUFFIXES)})")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file, or from a torch file read with
    `weights_only=True` (tensors and plain containers only), unwrapped from
    {"state_dict": ...}-style containers and DDP's "module." prefixes."""
    path = Path(path)
    check_checkpoint_file(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            data = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any unreadable foreign file is bad input
            raise InputError(f"{path}: unreadable safetensors file ({exc})") from None
    else:
        data = _torch_load(path)
    return _state_dict(path, data)


def _torch_load(path: Path, mmap: bool = False):
    if mmap:  # zip-format files only; anything else is read the ordinary way below
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001
            pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - refused (arbitrary objects) or unreadable: bad input either way
        raise InputError(f"{path}: refused: {_torch_load_reason(exc)}") from None


def _torch_load_reason(exc: Exception) -> str:
    """torch's message, without its advice to retry with weights_only=False (never do that here)."""
    message = str(exc)
    if "TorchScript" in message:
        return (
            "a TorchScript archive (like OpenAI's original CLIP release) is not a state dict; "
            "use a plain state-dict checkpoint (open_clip publishes open_clip_pytorch_model.bin)"
        )
    if "Weights only load failed" in message:
        detail = message.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in message else ""
        detail = " ".join(detail.split("Check the documentation")[0].split("Please use `torch.serialization")[0].split())
        return (
            "the file pickles objects other than tensors, and torch.load(weights_only=True) does not unpickle "
            "them (arbitrary objects are never loaded)" + (f": {detail}" if detail else "")
        )
    first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return f"not a readable torch checkpoint with torch.load(weights_only=True) ({first_line})"


def _state_dict(path: Path, data) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(data, Mapping) and not all(isinstance(v, torch.Tensor) for v in data.values()):
            wrapped = next((data[key] for key in WRAPPER_KEYS if isinstance(data.get(key), Mapping)), None)
            if wrapped is None:
                break
            data = wrapped
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: holds a {type(data).__name__}, not a state dict")
    tensors = {
        (key[len("module.") :] if key.startswith("module.") else key): value
        for key, value in data.items()
        if isinstance(key, str) and isinstance(value, torch.Tensor)
    }
    if not tensors:
        raise InputError(f"{path}: no tensors found (expected a state dict, maybe under 'state_dict')")
    return tensors


def listed(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return f"{len(keys)} key(s): {shown}" + (", ..." if len(keys) > MAX_LISTED_KEYS else "")


def raise_on_key_problems(path: Path, part: str, missing, unexpected, mismatched: list[str]) -> None:
    problems = []
    if missing:
        problems.append(f"missing {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {listed(unexpected)}")
    if mismatched:
        shown = "; ".join(sorted(mismatched)[:MAX_LISTED_KEYS])
        problems.append(f"{len(mismatched)} shape mismatch(es): {shown}" + ("; ..." if len(mismatched) > MAX_LISTED_KEYS else ""))
    if problems:
        raise InputError(f"{path}: does not fit {part}: " + "; ".join(problems))


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, part: str) -> None:
    expected = module.state_dict()
    mismatched = [
        f"{key}: file {tuple(state[key].shape)}, model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    raise_on_key_problems(path, part, set(expected) - set(state), set(state) - set(expected), mismatched)
    module.load_state_dict(state, strict=True)


def iter_tensors(path: Path, safetensors: bool) -> Iterator[tuple[str, torch.Tensor]]:
    if safetensors:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for key in handle.keys():
                    yield key, handle.get_tensor(key)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable foreign file is bad input
            raise InputError(f"{path}: unreadable safetensors file ({exc})") from None
        return
    yield from _state_dict(path, _torch_load(path, mmap=True)).items()
