"""Checkpoint files: atomic writes, keep-last-K rotation, safe loading and clear errors on bad files.

A checkpoint is one `torch.save` dict: the agent's state (networks, targets, optimisers, α, λ, its
generator), optionally the replay buffer, the RNG states of python/numpy/torch, the counters and
the config. It is written to a temporary file in the same directory, flushed to disk and renamed
into place, so a crash or a full disk never leaves a half-written checkpoint under the real name.

A checkpoint holds tensors and plain values (dict, list, tuple, str, int, float, bool, None) only,
and is read with `torch.load(weights_only=True)`: a file that needs anything else (the pickled
objects with which a crafted file runs code) is refused, whoever wrote it. Format 1 (before the
RNG states were stored as plain values) held a numpy array; `python -m checkpoint convert OLD NEW
--trust` rewrites such a file as format 2, and only unpickles it when told to trust it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = 2
_EPOCH_RE = re.compile(r"^checkpoint_epoch_(\d+)\.pt$")
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
_REQUIRED_KEYS = ("agent", "epoch", "config", "rng", "counters")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A file holds Python objects besides tensors and plain values: reading it could run code."""


# ----------------------------------------------------------------------------- RNG states as plain values


def rng_state() -> dict[str, Any]:
    """The python, numpy (legacy global), torch and CUDA generator states, as tensors and plain values."""
    version, internal, gauss_next = random.getstate()
    _, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": {"version": int(version), "internal": [int(x) for x in internal], "gauss_next": gauss_next},
        "numpy": {
            "key": [int(x) for x in key],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores an `rng_state()`; raises CheckpointError if it is malformed."""
    try:
        py, npy = state["python"], state["numpy"]
        random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
        key = np.asarray(npy["key"], dtype=np.uint32)
        np.random.set_state(("MT19937", key, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's RNG state is malformed ({type(exc).__name__}: {exc})") from None


def _upgrade_format_1(data: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint dict in the format-2 layout: its RNG states as plain values."""
    rng = dict(data.get("rng") or {})
    if isinstance(rng.get("python"), (tuple, list)):
        version, internal, gauss_next = rng["python"]
        rng["python"] = {"version": int(version), "internal": [int(x) for x in internal], "gauss_next": gauss_next}
    if isinstance(rng.get("numpy"), (tuple, list)):
        _, key, pos, has_gauss, cached_gaussian = rng["numpy"]
        rng["numpy"] = {
            "key": [int(x) for x in key],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        }
    return dict(data, rng=rng, format=CHECKPOINT_FORMAT)


# ----------------------------------------------------------------------------- files


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


def _convert_hint(path: Path) -> str:
    return f"python -m checkpoint convert {path} NEW.pt --trust"


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by `save` without running any code the file could carry.

    Raises CheckpointError naming the file if it is missing, unreadable, not a checkpoint of this
    program, or holds anything but tensors and plain values. A format-1 file that holds only
    those is read too (its RNG states are turned into the format-2 layout).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--load-checkpoint: {path} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL_RE.search(str(exc))
        if found is None:
            why = f"UnpicklingError: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'empty'}"
            raise CheckpointError(f"--load-checkpoint: {path} is not a readable checkpoint ({why})") from None
        raise UnsafeCheckpointError(
            f"--load-checkpoint: {path} is refused: it holds a Python object ({found.group(1)}) and not only "
            "tensors and plain values, and loading such an object can run code. Checkpoints of this program "
            f"(format {CHECKPOINT_FORMAT}) never do. If it is an older (format 1) checkpoint of this program "
            f"from a source you trust, convert it with: {_convert_hint(path)}"
        ) from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        why = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"--load-checkpoint: {path} is not a readable checkpoint ({why})") from None
    return _check_layout(path, data)


def _check_layout(path: Path, data: Any) -> dict[str, Any]:
    """`data` as a format-2 checkpoint dict; raises CheckpointError naming `path` if it is none."""
    if isinstance(data, dict) and data.get("format") == 1:
        data = _upgrade_format_1(data)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"--load-checkpoint: {path} is not a checkpoint of format {CHECKPOINT_FORMAT}")
    for key in _REQUIRED_KEYS:
        if key not in data:
            raise CheckpointError(f"--load-checkpoint: {path} lacks '{key}'")
    return data


def convert(old: Path, new: Path, trust: bool) -> str:
    """Rewrites checkpoint `old` (format 1 or 2) as a format-2 file `new`; returns what was done.

    A file that loads safely needs no trust. Any other file is unpickled in full, which runs
    whatever code it carries, so that happens only with `trust=True`; otherwise CheckpointError.
    """
    old, new = Path(old), Path(new)
    try:
        data = load(old)
        how = "read safely"
    except UnsafeCheckpointError:
        if not trust:
            raise CheckpointError(
                f"{old} holds Python objects besides tensors and plain values; reading it means unpickling it, "
                "which runs any code it carries. Pass --trust only if this file is a checkpoint of this program "
                "from a source you trust."
            ) from None
        try:
            # The user vouched for this file (--trust): the only place this program unpickles in full.
            raw = torch.load(old, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise CheckpointError(f"{old} is not a readable checkpoint ({type(exc2).__name__}: {exc2})") from None
        data = _check_layout(old, raw)
        how = "unpickled (trusted)"
    save(new, data)
    try:
        load(new)
    except CheckpointError as exc:
        new.unlink(missing_ok=True)
        raise CheckpointError(f"{old} cannot be converted: the result still needs a full unpickle ({exc})") from None
    return f"{old} ({how}) -> {new} (format {CHECKPOINT_FORMAT})"


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


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """`python -m checkpoint convert OLD NEW [--trust]`; exit 0 on success, 2 on any error."""
    parser = argparse.ArgumentParser(prog="python -m checkpoint", description="Checkpoint tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="rewrite an older (format 1) checkpoint as a safe format-2 file")
    conv.add_argument("old", type=Path, help="the checkpoint to read")
    conv.add_argument("new", type=Path, help="where to write the format-2 checkpoint")
    conv.add_argument(
        "--trust", action="store_true", help="unpickle OLD in full if needed (runs any code in it): trusted files only"
    )
    ns = parser.parse_args(argv)
    try:
        print(convert(ns.old, ns.new, ns.trust))
    except CheckpointError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
