"""Checkpoint files: atomic writes, keep-last-K rotation, and clear errors on bad files.

A checkpoint is one `torch.save` dict: the agent's state (networks, targets, optimisers, α, λ, its
generator), optionally the replay buffer, the RNG states of python/numpy/torch, the counters and
the config. It is written to a temporary file in the same directory, flushed to disk and renamed
into place, so a crash or a full disk never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = 1
_EPOCH_RE = re.compile(r"^checkpoint_epoch_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written; the message names the file."""


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict[str, Any]) -> None:
    """Writes `payload` atomically to `path`; on failure the previous file at `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    data = dict(payload, format=CHECKPOINT_FORMAT)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from exc


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by `save`; raises CheckpointError naming the file if it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--load-checkpoint: {path} does not exist")
    try:
        # weights_only=False: the file holds RNG states and the config, written by this program.
        data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        why = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"--load-checkpoint: {path} is not a readable checkpoint ({why})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"--load-checkpoint: {path} is not a checkpoint of format {CHECKPOINT_FORMAT}")
    for key in ("agent", "epoch", "config", "rng", "counters"):
        if key not in data:
            raise CheckpointError(f"--load-checkpoint: {path} lacks '{key}'")
    return data


def epoch_path(ckpt_dir: Path, epoch: int) -> Path:
    return Path(ckpt_dir) / f"checkpoint_epoch_{epoch}.pt"


def rotate(ckpt_dir: Path, keep: int) -> list[Path]:
    """Deletes all but the newest `keep` epoch checkpoints in `ckpt_dir`; returns the deleted paths."""
    found = []
    for p in Path(ckpt_dir).glob("checkpoint_epoch_*.pt"):
        m = _EPOCH_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    found.sort()
    doomed = [p for _, p in found[:-keep]] if keep > 0 else []
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed
