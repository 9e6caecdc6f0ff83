"""Encoder command lines and encoder processes.

Builds one command line per video (from `--videos` or the dataset), starts each encoder in its own
process group so that the whole group can be ended at once, and keeps its output in a log file
whose last lines explain a failure. Knows nothing of RL and nothing of the protocol's contents.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_RL_ARGS = "--rl-dir|{rl_dir}|--rl-session|{session}"
# Flags whose values are files the encoder writes: redirected for side runs (baseline, pass 1).
OUTPUT_FLAGS = ("--o", "--csv", "--stat-out", "--summary-json")


class VideoSpecError(ValueError):
    """A `--videos` value or a dataset setting is unusable; the message names the flag."""


@dataclass
class VideoSpec:
    """One video to encode: the encoder arguments that describe it."""

    name: str  # short label for logs and TensorBoard tags (the input's file stem)
    args: list[str]  # encoder arguments, exactly as the user gave them
    encoder: list[str] = field(default_factory=list)  # the encoder program and its own flags (main.py sets it)

    @property
    def video_key(self) -> str:
        """The video's arguments minus outputs."""
        return "|".join(strip_output_args(self.args))

    @property
    def key(self) -> str:
        """Canonical key (baseline statistics are stored under it): everything that changes the encode.

        The encoder program and its flags (`encoder_key`) and the video's arguments minus outputs;
        the protocol arguments (rl_io directory, session) differ per run and are not part of it.
        """
        return "|".join([encoder_key(self.encoder), self.video_key]) if self.encoder else self.video_key

    def flag(self, name: str) -> str | None:
        """The value following flag `name`, or None."""
        for i, tok in enumerate(self.args[:-1]):
            if tok == name:
                return self.args[i + 1]
        return None


def parse_videos_arg(text: str) -> VideoSpec:
    """Parses one `--videos` value: encoder arguments separated by '|'."""
    if not text.strip():
        raise VideoSpecError("--videos: empty value")
    args = text.split("|")
    for i, tok in enumerate(args):
        if tok == "":
            raise VideoSpecError(f"--videos: empty argument at position {i} in {text!r} (doubled or trailing '|'?)")
    if not args[0].startswith("-"):
        raise VideoSpecError(f"--videos: must start with a flag such as --input, got {args[0]!r} in {text!r}")
    spec = VideoSpec(name="", args=args)
    source = spec.flag("--input")
    if source is None:
        raise VideoSpecError(f"--videos: no '--input|PATH' in {text!r}")
    spec.name = Path(source).stem
    return spec


def strip_flags(args: list[str], flags: tuple[str, ...]) -> list[str]:
    """Returns `args` without the flags in `flags` and their values."""
    out: list[str] = []
    skip = False
    for tok in args:
        if skip:
            skip = False
        elif tok in flags:
            skip = True
        else:
            out.append(tok)
    return out


def strip_output_args(args: list[str]) -> list[str]:
    return strip_flags(args, OUTPUT_FLAGS)


def with_flag(args: list[str], name: str, value: str) -> list[str]:
    """Returns `args` with flag `name` set to `value` (replaced if present, appended if not)."""
    out = list(args)
    for i, tok in enumerate(out[:-1]):
        if tok == name:
            out[i + 1] = value
            return out
    return out + [name, value]


def redirect_outputs(args: list[str], out_dir: Path, tag: str) -> list[str]:
    """Points every output flag at `out_dir/<stem>.<tag><suffix>`, leaving the user's files alone."""
    out = list(args)
    for i, tok in enumerate(out[:-1]):
        if tok in OUTPUT_FLAGS:
            p = Path(out[i + 1])
            out[i + 1] = str(Path(out_dir) / f"{p.stem}.{tag}{p.suffix}")
    return out


def make_output_dirs(args: list[str]) -> None:
    """Creates the parent directories of every output file named in `args`."""
    for i, tok in enumerate(args[:-1]):
        if tok in OUTPUT_FLAGS:
            Path(args[i + 1]).parent.mkdir(parents=True, exist_ok=True)


# A raw sequence named the way codec teams do: Name_WxH_FPS.yuv (BasketballDrive_1920x1080_50.yuv).
RAW_NAME = re.compile(r"_(\d+)x(\d+)_(\d+(?:\.\d+)?)(?:fps)?$", re.IGNORECASE)


def raw_name_args(path: str) -> list[str]:
    """`--input-res WxH --fps F` read from a raw input's name `Name_WxH_FPS.yuv`; raises if it lacks them."""
    m = RAW_NAME.search(Path(path).stem)
    if m is None:
        raise VideoSpecError(
            f"--dataset-inputs: raw input {path} has no size and frame rate in its name; name it "
            "Name_WxH_FPS.yuv (e.g. BasketballDrive_1920x1080_50.yuv) or give --input-res and --fps in --dataset-args"
        )
    width, height, fps = m.groups()
    return ["--input-res", f"{int(width)}x{int(height)}", "--fps", fps]


def dataset_specs(pattern: str, stat_dir: Path, out_dir: Path, extra_args: list[str]) -> list[VideoSpec]:
    """One spec per file matching `pattern`, named after each input; pass-2 encodes on `stat_dir` stats.

    Raw `.yuv` inputs get `--input-res` and `--fps` from their names (`Name_WxH_FPS.yuv`) unless
    `extra_args` sets `--input-res`; every file is checked before any spec is returned.
    """
    paths = sorted(glob.glob(os.path.expanduser(pattern)))
    if not paths:
        raise VideoSpecError(f"--dataset-inputs: no file matches {pattern!r}")
    specs = []
    for p in paths:
        stem = Path(p).stem
        raw: list[str] = []
        if Path(p).suffix.lower() == ".yuv" and "--input-res" not in extra_args:
            raw = raw_name_args(p)
            if "--fps" in extra_args:
                raw = raw[:2]
        args = [
            "--input", p,
            *raw,
            "--pass", "2",
            "--stat-in", str(Path(stat_dir) / f"{stem}.stat"),
            "--o", str(Path(out_dir) / f"{stem}.ivf"),
            "--csv", str(Path(out_dir) / f"{stem}.csv"),
        ] + list(extra_args)  # fmt: skip
        specs.append(VideoSpec(name=stem, args=args))
    return specs


def pass1_args(spec: VideoSpec) -> list[str] | None:
    """The first-pass command arguments for a pass-2 spec whose `--stat-in` file is missing, else None."""
    stat_in = spec.flag("--stat-in")
    if stat_in is None or Path(stat_in).exists():
        return None
    out = strip_flags(strip_output_args(spec.args), ("--stat-in", "--pass"))
    return out + ["--pass", "1", "--stat-out", stat_in]


def glue_dash_values(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """Rewrites `FLAG --input|x` as `FLAG=--input|x` for each of `flags`, so that argparse keeps the value."""
    out: list[str] = []
    for tok in argv:
        if out and out[-1] in flags:
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def encoder_key(command: list[str]) -> str:
    """The encoder part of a baseline key: the command with this interpreter written as `python`.

    So the built-in encoder's key is the same in every virtual environment.
    """
    return "|".join("python" if i == 0 and tok == sys.executable else tok for i, tok in enumerate(command))


def encoder_command(encoder: str) -> list[str]:
    """The program part of the command line: `--encoder` split like a shell would, or the built-in one."""
    if encoder:
        return shlex.split(encoder)
    return [sys.executable, "-m", "builtin_encoder"]


def rl_args(template: str, rl_dir: Path, session: str) -> list[str]:
    """The protocol arguments appended to every encoder command ('|'-separated template)."""
    return [tok.format(rl_dir=str(rl_dir), session=session) for tok in template.split("|") if tok]


class EncoderProcess:
    """One running encoder, in its own process group, its stdout+stderr going to `log_path`."""

    def __init__(self, command: list[str], log_path: Path, name: str) -> None:
        self.command = command
        self.log_path = Path(log_path)
        self.name = name
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(self.log_path, "wb") as log:
            try:
                self._proc = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: stop() ends its children too
                    env=env,
                )
            except OSError as exc:
                raise RuntimeError(f"cannot start encoder {self.command[0]!r} for video {self.name}: {exc}") from None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def wait(self, timeout_s: float) -> int | None:
        """Waits up to `timeout_s` for the encoder to exit; returns its exit code or None."""
        assert self._proc is not None
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = 2.0) -> None:
        """Ends the encoder's whole process group: SIGTERM, then SIGKILL after `grace_s`."""
        if self._proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if self._proc.poll() is not None:
                break
            try:
                os.killpg(self._proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while self._proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        # Children of a group leader that died first may linger: end the group regardless.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()

    def tail(self, lines: int = 15) -> str:
        """The last `lines` lines of the encoder's output, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])


def run_to_completion(
    command: list[str], log_path: Path, name: str, timeout_s: float, should_stop: Callable[[], bool] = lambda: False
) -> None:
    """Runs an encoder that needs no agent (pass 1); raises with its last output lines on failure.

    Ends the encoder and raises at once when `should_stop()` (a signal) turns true.
    """
    proc = EncoderProcess(command, log_path, name)
    proc.start()
    deadline = time.monotonic() + timeout_s
    code = None
    while code is None and time.monotonic() < deadline and not should_stop():
        code = proc.wait(min(0.2, max(deadline - time.monotonic(), 0.0)))
    if code is None:
        proc.stop()
        if should_stop():
            raise RuntimeError(f"encoder for video {name}: stopped by a signal")
        raise RuntimeError(f"encoder for video {name} did not finish within {timeout_s:.0f} s:\n{proc.tail()}")
    if code != 0:
        raise RuntimeError(f"encoder for video {name} exited with code {code}:\n{proc.tail()}")
