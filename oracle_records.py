"""Oracle records (bench/oracle_data.py's JSON lines): reading them, and the agent's states along them.

A record is one oracle point: a window at one target rate, its Δ=0 encode and its oracle's, each
with the requests, feedback and answered QP of every mini-GOP, and every candidate the search encoded.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from protocol import Feedback, Request, request_from_dict
from state import OBS_DIM, build_observation

_RECORD = Path("<oracle record>")  # the 'file' named in errors about a stored request


def _messages(steps: list[dict]) -> Iterable[tuple[Request, Feedback, int]]:
    for st in steps:
        yield request_from_dict(st["request"], _RECORD), Feedback(**st["feedback"]), int(st["qp"])


def observations(steps: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Rebuilds the agent's observations along a stored trajectory; returns (obs (n, OBS_DIM), offsets (n,))."""
    obs, offsets = [], []
    prev_fb: Feedback | None = None
    prev_base: int | None = None
    for req, fb, qp in _messages(steps):
        if req.mg_in_gop == 0:
            prev_fb, prev_base = None, None
        obs.append(build_observation(req, prev_fb, prev_base))
        offsets.append(qp - req.base_qp)
        prev_fb, prev_base = fb, req.base_qp
    return np.asarray(obs, dtype=np.float32).reshape(-1, OBS_DIM), np.asarray(offsets, dtype=np.float32)


def source_of(window: str) -> str:
    """The source clip of a window name made by clips.Window.name (e.g. 'bikes_s2_f0-64' -> 'bikes')."""
    return window.split("_s")[0]


def read_records(paths: Iterable[Path]) -> list[dict]:
    """Every record of the files without an `error` (a failed point), in file order; a file named *.gz is read
    through gzip (datasets/)."""
    out = []
    for path in paths:
        path = Path(path)
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for line in text.splitlines():
            if line.strip():
                rec = json.loads(line)
                if "error" not in rec:
                    out.append(rec)
    return out


def trajectory_observations(records: list[dict]) -> np.ndarray:
    """Every observation seen on the stored trajectories (Δ=0 and oracle), (N, OBS_DIM): where a policy is fitted."""
    obs = [observations(r[k])[0] for r in records for k in ("baseline_steps", "oracle_steps")]
    return np.concatenate(obs)


def merge_sweeps(records: list[dict]) -> list[dict]:
    """Sweep records of the same point (`key`) as one: the first one's baseline and trajectories, and the
    candidates of all of them (the first of each set of offsets), in file order.

    A sweep of other offsets at the same points (bench/oracle_data.py --offsets) adds them to the sweep:
    its Δ=0 encode is the same encode (deterministic), so each candidate's gain keeps its reference.
    """
    merged: dict[str, dict] = {}
    for r in records:
        first = merged.get(r["key"])
        if first is None:
            merged[r["key"]] = {**r, "candidates": list(r["candidates"])}
            continue
        if (first["baseline"]["bits"], first["baseline"]["psnr_y"]) != (r["baseline"]["bits"], r["baseline"]["psnr_y"]):
            raise ValueError(f"{r['key']}: two sweeps of this point have different Δ=0 encodes")
        seen = {tuple(c["offsets"]) for c in first["candidates"]}
        first["candidates"] += [c for c in r["candidates"] if tuple(c["offsets"]) not in seen]
    return list(merged.values())
