"""Command-line flags of the built-in encoder (`python -m builtin_encoder --help`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import protocol
from builtin_encoder.errors import (
    EXIT_BAD_INPUT,
    EXIT_BAD_REPLY,
    EXIT_CODEC,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REPLY_TIMEOUT,
    BadInput,
)
from builtin_encoder.key_probe import PROBE_CODECS
from builtin_encoder.session import CODECS, DEFAULT_PRESET, Settings, run

EPILOG = f"""\
rate-control modes (--rc-mode):
  0  constant base QP --qp for every mini-GOP (an agent may still override it per mini-GOP)
  1  two-pass VBR at --bitrate (default): pass-1 statistics (--stat-in, or a pass 1 run first
     in memory) give every frame's cost; before each mini-GOP one common base QP is solved for
     the rest of its GOP's budget, corrected from the bits actually spent
  2  the codec's own rate control at --bitrate (reference for benchmarks; no --rl-dir)
  3  the codec's own CRF at --crf (reference for benchmarks; no --rl-dir)
  Mode 2 is SVT-AV1 CBR (aq-mode 2; SVT 4.1 has no VBR in low delay) or x264 one-pass ABR.

two-pass use:
  --pass 1 --stat-out FILE   first pass: fast preset, one QP per mini-GOP steered towards
                             --bitrate if given (else a fixed QP); writes per-frame stats.
                             It measures no quality (faster): its summary's PSNR / SSIM
                             are null ("n/a"), unless --csv asks for them per frame
  --pass 2 --stat-in FILE    the real encode on those stats (--stat-out FILE2: its own stats)

exit codes:
  {EXIT_OK}    ok
  {EXIT_INTERNAL}    internal error (a bug; a traceback is printed)
  {EXIT_BAD_INPUT}    bad arguments or unusable input / stat file (the message names the flag or file)
  {EXIT_REPLY_TIMEOUT}    no reply from the agent within --rl-timeout
  {EXIT_BAD_REPLY}    malformed or out-of-range reply (or another session's / mini-GOP's)
  {EXIT_CODEC}    codec error
  {EXIT_INTERRUPTED}  stopped by SIGINT / SIGTERM
With --rl-dir, end.json (status "ok" or "error" and the message) is written in every case
except argument errors that stop the program before --rl-dir is known.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadInput(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m builtin_encoder",
        description="Built-in encoder speaking the rl_io protocol (SVT-AV1 or x264 backends).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("input / output")
    g.add_argument("--input", required=True, help=".yuv (8-bit 4:2:0, needs --input-res), .y4m (4:2:0) or any "
                   "container PyAV decodes (.mp4, .avi, ...)")  # fmt: skip
    g.add_argument("--input-res", help="WIDTHxHEIGHT of a raw .yuv input")
    g.add_argument("--frames", type=int, default=0, help="frames to code (default 0 = all)")
    g.add_argument("--fps", type=float, default=None, help="frame rate (default: from the file, else 30)")
    g.add_argument("--o", dest="out", help="output bitstream (.ivf for svtav1 and vp9, .264 for x264)")
    g.add_argument("--csv", help="per-frame CSV: frame, mini_gop, gop, type, layer, base_qp, qp, bits, "
                   "psnr_y/u/v, ssim_y")  # fmt: skip
    g.add_argument("--summary-json", help="write the final summary (rate, error, PSNR, SSIM, fps) as JSON here")

    g = p.add_argument_group("codec")
    g.add_argument("--codec", choices=CODECS, default="svtav1", help="codec backend (default svtav1)")
    g.add_argument("--preset", type=int, default=None,
                   help=f"speed preset, higher = faster (default svtav1 {DEFAULT_PRESET['svtav1']} of -2..13, "
                        f"x264 {DEFAULT_PRESET['x264']} of 0..9 = placebo..ultrafast, "
                        f"vp9 {DEFAULT_PRESET['vp9']} of 0..5 = libvpx --cpu-used, good quality)")  # fmt: skip
    g.add_argument("--keyint", type=int, default=64, help="GOP length in frames, a multiple of --mini-gop (default 64)")
    g.add_argument("--mini-gop", type=int, default=8, help="mini-GOP length in frames (default 8)")
    g.add_argument("--layer-offset-scale", type=float, default=1.0,
                   help="temporal-layer QP offsets times this, a deeper (> 1) or flatter (< 1) hierarchy; the key "
                        "frame's offset is kept (svtav1; x264 and vp9 have one layer; default 1: the codec's own)")
    g.add_argument("--threads", type=int, default=0,
                   help="codec threads (default 0 = SVT-AV1's choice; x264: 1, since its slices, one per "
                        "thread, change the bitstream; with more, each frame is decoded to measure it)")  # fmt: skip

    g = p.add_argument_group("rate control")
    g.add_argument("--rc-mode", type=int, choices=(0, 1, 2, 3), default=1, help="see below (default 1)")
    g.add_argument("--bitrate", type=float, default=None, help="target bitrate, kbit/s (rc-mode 1 and 2)")
    g.add_argument("--qp", type=int, default=None, help="base QP of rc-mode 0 (vp9: q_index 0..255)")
    g.add_argument("--crf", type=int, default=None, help="CRF of rc-mode 3 (vp9: a q_index, 0..255)")
    g.add_argument("--pass", dest="pass_no", type=int, choices=(1, 2), default=0,
                   help="1 = first pass only (needs --stat-out), 2 = final pass (uses --stat-in)")  # fmt: skip
    g.add_argument("--stat-in", help="pass-1 statistics to use (default: run pass 1 in memory first)")
    g.add_argument("--stat-out", help="write this pass's per-frame statistics (JSON lines) here")

    g = p.add_argument_group("agent protocol")
    g.add_argument("--rl-dir", help="protocol directory; absent = no agent (the encoder's own base QP)")
    g.add_argument("--rl-timeout", type=float, default=60.0, help="seconds to wait for each reply (default 60)")
    g.add_argument("--rl-session", default="", help="session string echoed in every message (default none)")
    g.add_argument("--lookahead", type=int, default=7,
                   help="mini-GOPs of first-pass look-ahead in each request (default 7: the rest of a "
                        "64-frame GOP of 8-frame mini-GOPs)")  # fmt: skip
    g.add_argument("--key-probe", action="store_true",
                   help="before each GOP, code it four times more at the same preset: its key mini-GOP's QP 3 "
                        "finer and 3 coarser (sent in the GOP's first request as key_probe), then the five "
                        "mini-GOPs after the key together (sent in their requests as ramp_probe) (PROTOCOL.md "
                        f"§4.1.2; {', '.join(PROBE_CODECS)}; needs --rl-dir)")
    g.add_argument("--probe-zero", action="store_true",
                   help="with --key-probe: code each GOP once more at Δ=0 and send it in both probes (zero_bits, "
                        "zero_psnr_y), for a policy that picks the best of the three encodes (make_policy.py "
                        "--key-pick)")  # fmt: skip
    g.add_argument("--quiet", action="store_true", help="no summary line on stderr")
    return p


def _validate(s: Settings) -> None:
    """Checks the flags that do not need the input file; raises BadInput naming the flag."""
    if s.frames < 0:
        raise BadInput(f"--frames must be >= 0 (got {s.frames})")
    if s.fps is not None and not s.fps > 0:
        raise BadInput(f"--fps must be > 0 (got {s.fps})")
    if s.mini_gop < 1 or s.keyint < 1 or s.keyint % s.mini_gop:
        raise BadInput(f"--keyint ({s.keyint}) must be a positive multiple of --mini-gop ({s.mini_gop})")
    if s.threads < 0:
        raise BadInput(f"--threads must be >= 0 (got {s.threads})")
    if not 0 <= s.layer_offset_scale <= 3:
        raise BadInput(f"--layer-offset-scale must be in [0, 3] (got {s.layer_offset_scale})")
    if s.lookahead < 0:
        raise BadInput(f"--lookahead must be >= 0 (got {s.lookahead})")
    if not s.rl_timeout > 0:
        raise BadInput(f"--rl-timeout must be > 0 (got {s.rl_timeout})")
    if s.bitrate is not None and not s.bitrate > 0:
        raise BadInput(f"--bitrate must be > 0 kbit/s (got {s.bitrate})")
    for flag, value in (("--o", s.out), ("--csv", s.csv), ("--stat-out", s.stat_out), ("--summary-json",
                        s.summary_json)):  # fmt: skip
        # Checked now rather than after a whole pass 1.
        if value and not Path(value).resolve().parent.is_dir():
            raise BadInput(f"{flag}: cannot write {value}: its directory does not exist")
    if s.pass_no == 1:
        if not s.stat_out:
            raise BadInput("--pass 1 needs --stat-out FILE")
        if s.stat_in:
            raise BadInput("--pass 1 takes no --stat-in")
    if s.rc_mode == 0 and s.qp is None:
        raise BadInput("--rc-mode 0 needs --qp")
    if s.rc_mode in (1, 2) and s.bitrate is None and s.pass_no != 1:
        raise BadInput(f"--rc-mode {s.rc_mode} needs --bitrate")
    if s.rc_mode == 3 and s.crf is None and s.pass_no != 1:
        raise BadInput("--rc-mode 3 needs --crf")
    if s.key_probe and s.codec not in PROBE_CODECS:
        raise BadInput(f"--key-probe: not for --codec {s.codec} (only {', '.join(PROBE_CODECS)})")
    if s.key_probe and (s.rl_dir is None or s.pass_no == 1):
        raise BadInput("--key-probe sends its results to the agent: it needs --rl-dir, and a final pass")
    if s.probe_zero and not s.key_probe:
        raise BadInput("--probe-zero adds the Δ=0 encode to the probes: it needs --key-probe")
    if s.rc_mode in (2, 3) and s.pass_no != 1:
        if s.rl_dir is not None:
            raise BadInput(f"--rc-mode {s.rc_mode} (the codec's own rate control) cannot be used with --rl-dir")
        if s.stat_in:
            raise BadInput(f"--rc-mode {s.rc_mode} takes no --stat-in")


def _scan_rl_args(argv: list[str]) -> tuple[str | None, str]:
    """--rl-dir / --rl-session from a command line argparse refused, so end.json can still be written."""
    rl_dir, session = None, ""
    for i, tok in enumerate(argv):
        for name in ("--rl-dir", "--rl-session"):
            value = None
            if tok == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif tok.startswith(name + "="):
                value = tok[len(name) + 1 :]
            if value is not None:
                if name == "--rl-dir":
                    rl_dir = value
                else:
                    session = value
    return rl_dir, session


def _private_dir(rl_dir: Path) -> bool:
    """True if `rl_dir` exists and only this user can write to it (protocol.prepare_rl_dir's rules)."""
    try:
        protocol.prepare_rl_dir(rl_dir, create=False)
    except protocol.RlDirError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
        settings = Settings(**vars(ns))
        _validate(settings)
    except BadInput as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        rl_dir, session = _scan_rl_args(argv)
        if rl_dir and _private_dir(Path(rl_dir)):
            # The agent may be waiting on this directory: tell it, after removing stale files.
            protocol.clear_protocol_files(Path(rl_dir))
            end = protocol.End(status="error", mini_gops=0, frames=0, bits=0, message=str(exc), session=session)
            protocol.write_message(protocol.end_path(Path(rl_dir)), end)
        return EXIT_BAD_INPUT
    return run(settings)
