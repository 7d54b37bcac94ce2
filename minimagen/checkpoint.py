"""Checkpoints that are safe to write and safe to read.

Two kinds of file, both safetensors (tensors + a string-to-string metadata header, never pickle):

- a *weights* file: one model's weights (fp16 for the shipped ones) with its config in the header, plus
  a JSON model card beside it (how it was trained, its metrics);
- a *training* checkpoint: weights, EMA weights, optimizer state, RNG states and the loss history, so a
  run resumes exactly where it stopped.

Every file is written to a temporary name in the same folder, flushed to disk and then renamed over the
destination: a run killed mid-write leaves the previous file intact, never a half-written one.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT_KEY = "minimagen_format"
FILE_MODE = 0o644  # mkstemp creates files readable by their owner only; checkpoints are meant to be shared


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]
) -> None:
    """``safetensors.torch.save_file`` made atomic: a crash never leaves a truncated ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # safetensors refuses tensors that share memory or are not contiguous: copy them out.
        tensors = {k: v.detach().contiguous().clone().cpu() for k, v in tensors.items()}
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def read_safetensors(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and the JSON-decoded header of a minimagen file, or raise a ValueError that says why.

    ``kind`` is the expected value of the header's format key ("weights" or "training").
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a safetensors file: {err}") from err
    if raw.get(FORMAT_KEY) != kind:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a minimagen {kind} file "
            f"(header {FORMAT_KEY}={raw.get(FORMAT_KEY)!r}, expected {kind!r})"
        )
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k != FORMAT_KEY}
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {str(path)!r} has a corrupt metadata header: {err}") from err
    return tensors, meta


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``module.load_state_dict`` with an error that names the file and the mismatching keys/shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")

        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensors ({head(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors ({head(unexpected)})")
        if wrong_shape:
            shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong_shape]
            problems.append(f"{len(wrong_shape)} tensors of the wrong shape ({head(shapes)})")
        raise ValueError(f"checkpoint {str(path)!r} does not match the model: " + "; ".join(problems))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def save_weights(
    model: torch.nn.Module,
    path: str | os.PathLike,
    config: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float16,
    card: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save a model's weights (cast to ``dtype``) with its config; write ``card`` as JSON beside it.

    The card (training command, seed, steps, wall time, metrics) goes to ``path`` with ``.json`` suffix;
    ``extra`` entries (what a loader needs besides the config, e.g. the noise schedule) go in the header.
    """
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    header = {k: json.dumps(v) for k, v in (extra or {}).items()}
    header.update({FORMAT_KEY: "weights", "config": json.dumps(config)})
    atomic_save_safetensors(tensors, path, header)
    if card is not None:
        text = json.dumps(card, indent=2, sort_keys=False) + "\n"
        atomic_write_bytes(pathlib.Path(path).with_suffix(".json"), text.encode())


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file: ``(state_dict in float32, header)``; ``header["config"]`` is the model config."""
    tensors, meta = read_safetensors(path, "weights")
    if "config" not in meta:
        raise ValueError(f"checkpoint {str(path)!r} has no model config in its header")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return state, meta


# The checkpoints this repository ships (trained by its own commands; each has a JSON model card).
SHIPPED_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "checkpoints"


def shipped_checkpoint(name: str) -> pathlib.Path:
    """Path of a shipped weights file, e.g. ``shipped_checkpoint("base64")``; ValueError if it is absent."""
    path = SHIPPED_DIR / f"{name}.safetensors"
    if not path.is_file():
        available = sorted(p.stem for p in SHIPPED_DIR.glob("*.safetensors")) if SHIPPED_DIR.is_dir() else []
        raise ValueError(f"no shipped checkpoint named {name!r} in {SHIPPED_DIR}; available: {available}")
    return path


def load_unet(path: str | os.PathLike):
    """Build the U-Net a weights file describes and load its weights: returns ``(unet in eval mode, header)``.

    ``header`` holds what else the file records (e.g. ``header["schedule"]``, the noise schedule it was
    trained with).
    """
    from minimagen.unet import UNet, UNetConfig

    state, header = read_weights(path)
    try:
        config = UNetConfig.from_dict(header["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {str(path)!r} has an invalid U-Net config: {err}") from err
    unet = UNet(config)
    load_state_strict(unet, state, path)
    return unet.eval(), header
