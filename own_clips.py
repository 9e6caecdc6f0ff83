"""A team's own training clips as search windows (make_policy.py / bench/oracle_data.py --inputs).

Each clip gives the window of its first `frames` frames, read from the clip itself; with augment,
also two still-camera copies of it written as .y4m next to the records (the `static` augmentation
the shipped recipes train on, clips.static_windows(): where a fixed camera's content stays, a key
frame pays for the whole GOP):

    slow:  every frame shown 8 times, Gaussian noise σ 1.0 on each copy
    still: the first frame held for the whole window, noise σ 1.0

A window's name is the clip's file stem with every run of characters other than letters, digits and
'-' made one '-', then the window part clips.Window.name writes (`_s1_f0-64`, `_s1_r8n1_f0-64`):
oracle_records.source_of cuts names at '_s', so all windows of a clip are one source, left out together.
"""

from __future__ import annotations

import argparse
import re
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

import clips
import encoder_proc
from builtin_encoder.source import open_source, write_y4m

# (repeat, noise) of the augmented copies, as in clips.static_windows()
AUGMENTS = {"slow": (8, 1.0), "still": (0, 1.0)}  # repeat 0: the whole window


@dataclass(frozen=True)
class OwnWindow:
    """One search window of a team's clip: the file the encoder reads, its name in the records."""

    clip: Path  # the team's clip
    name: str
    frames: int
    path: Path  # what the encoder reads: the clip itself (its first `frames`) or a written .y4m
    window: clips.Window | None = None  # the augmentation, None for the clip itself


def stem_of(path: Path) -> str:
    """The clip's name in the records: its stem, each run of other characters than [A-Za-z0-9-] one '-'."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", Path(path).stem).strip("-") or "input"


def windows(clip: Path, frames: int, augment: bool, out_dir: Path) -> list[OwnWindow]:
    """The clip's windows (not written yet: see materialise); augmented copies go to out_dir."""
    stem = stem_of(clip)
    out = [OwnWindow(clip, f"{stem}_s1_f0-{frames}", frames, clip)]
    if augment:
        for repeat, noise in AUGMENTS.values():
            win = clips.Window(f"{stem}.y4m", 0, frames, repeat=repeat or frames, noise=noise)
            out.append(OwnWindow(clip, win.name, frames, Path(out_dir) / f"{win.name}.y4m", win))
    return out


def names_error(all_windows: list[OwnWindow]) -> str | None:
    """The message when two clips would get the same window name, or None."""
    seen: dict[str, Path] = {}
    for w in all_windows:
        if w.name in seen and seen[w.name] != w.clip:
            return f"--inputs: {seen[w.name]} and {w.clip} get the same name {w.name!r} in the records: rename one"
        seen[w.name] = w.clip
    return None


def materialise(w: OwnWindow) -> Path:
    """Writes an augmented window as .y4m (once; the noise is seeded by its name) and returns the path to encode."""
    if w.window is None or w.path.is_file():
        return w.path
    src = open_source(w.clip)
    if src.frame_count < 1:
        raise clips.ClipError(f"{w.clip} has no frames")
    frames = list(clips.window_frames(w.window, src.frames(limit=w.window.source_frames)))
    fps = Fraction(src.fps or 30.0).limit_denominator(1001)
    w.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = clips.part_path(w.path)
    write_y4m(iter(frames), tmp, frames[0].y.shape[1], frames[0].y.shape[0], fps.numerator, fps.denominator)
    tmp.replace(w.path)
    return w.path


def target_rates(name: str, rates: int, bpp_min: float, bpp_max: float, seed: int) -> list[float]:
    """A window's target rates, bits per luma pixel, log-uniform in [bpp_min, bpp_max]: drawn from its
    name and the seed alone, so adding a clip or an augmentation leaves every other window's points as they were."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return [float(b) for b in np.exp(rng.uniform(np.log(bpp_min), np.log(bpp_max), size=rates))]


def add_own_flags(p: argparse.ArgumentParser, records_flag: str) -> None:
    """The flags of a team's clips and encoder, for make_policy.py and bench/oracle_data.py alike:
    --inputs, --frames, --augment, --encoder, --encoder-args, --encoder-rl-args. `records_flag` names
    the flag of the records file, beside which the augmented copies are written."""
    p.add_argument("--inputs", nargs="+", default=None, metavar="CLIP",
                   help=f"your own training clips (files, directories or globs; the first --frames frames of each; "
                        f"needs {records_flag}): alone, or with --windows beside those sets; never clips you "
                        "evaluate on")  # fmt: skip
    p.add_argument("--frames", type=int, default=64, help="with --inputs: frames of each clip searched (0 = all)")
    p.add_argument("--augment", action="store_true",
                   help=f"with --inputs: also a slowed and a still copy of each clip (own_clips.py), written "
                        f"beside {records_flag}, as the shipped recipes train on slowed and frozen copies of theirs")
    p.add_argument("--encoder", default="",
                   help="your own encoder command (as main.py --encoder): every encode is its own, through the "
                        "protocol; records and policy get codec 'encoder' (default: the built-in encoder, --codec)")
    p.add_argument("--encoder-args", default="", metavar="ARGS",
                   help="with --encoder: '|'-separated arguments for every encode (codec, GOP, preset)")
    p.add_argument("--encoder-rl-args", default=encoder_proc.DEFAULT_RL_ARGS, metavar="T",
                   help="with --encoder: protocol arguments, as main.py --encoder-rl-args")
