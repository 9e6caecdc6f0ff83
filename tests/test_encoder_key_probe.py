"""The built-in encoder's --key-probe (builtin_encoder/key_probe.py): real encodes, the encoder and
tests/responder.py as two processes. The probe must be what PROTOCOL.md §4.1.2 says it is (the GOP coded
at the encode's own preset with its key mini-GOP's QP 3 finer and 3 coarser, and at Δ=0) and must leave the output
alone."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import protocol
from builtin_encoder.key_probe import PROBE_OFFSET
from builtin_encoder.metrics import psnr_from_mse
from builtin_encoder.source import bundled_clip

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FRAMES, KEYINT = 40, 16  # GOPs of 16, 16 and 8 frames: mini-GOPs 0-1, 2-3 and 4


@dataclass
class Encode:
    requests: list[protocol.Request]
    feedback: list[protocol.Feedback]
    stream: bytes


def encode(work: Path, codec: str, extra: list[str], deltas: str = "0") -> Encode:
    """The first FRAMES frames of carphone at 150 kbit/s through rl_io, the responder answering base QP + deltas."""
    rl_dir, out = work / "rl_io", work / "out.bin"
    rl_dir.mkdir(parents=True)
    enc = subprocess.Popen(
        [sys.executable, "-m", "builtin_encoder", "--input", str(bundled_clip("carphone_pristine.mp4")),
         "--codec", codec, "--frames", str(FRAMES), "--keyint", str(KEYINT), "--bitrate", "150", "--o", str(out),
         "--rl-dir", str(rl_dir), "--rl-timeout", "30", "--quiet", *extra],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    resp = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "responder.py"), "--rl-dir", str(rl_dir), f"--deltas={deltas}",
         "--timeout", "60"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, err = enc.communicate(timeout=120)
        _, resp_err = resp.communicate(timeout=30)
    finally:
        for p in (enc, resp):
            if p.poll() is None:
                p.kill()
    assert enc.returncode == 0, err
    assert resp.returncode == 0, resp_err
    n = len(list(rl_dir.glob("mg*_rq.json")))
    rq = [protocol.request_path(rl_dir, k) for k in range(n)]
    fb = [protocol.feedback_path(rl_dir, k) for k in range(n)]
    return Encode([protocol.parse_request(p.read_text(), p) for p in rq],
                  [protocol.parse_feedback(p.read_text(), p) for p in fb], out.read_bytes())  # fmt: skip


def first_gop(e: Encode) -> tuple[int, float]:
    """Bits and overall PSNR-Y (dB, from the summed squared error) of the encode's first GOP."""
    fbs = [f for f in e.feedback if f.gop_index == 0]
    frames = sum(f.frame_count for f in fbs)
    return sum(f.bits for f in fbs), psnr_from_mse(sum(f.mse_y * f.frame_count for f in fbs) / frames)


@pytest.mark.parametrize("codec", ["svtav1", "x264"])
def test_the_key_probe_is_the_gop_coded_with_its_key_finer_and_coarser(tmp_path: Path, codec: str) -> None:
    plain = encode(tmp_path / "plain", codec, [])
    probed = encode(tmp_path / "probed", codec, ["--key-probe", "--probe-zero"])
    # The probe is extra information: the encode itself is the same stream, the same feedback.
    assert probed.stream == plain.stream
    assert [f.bits for f in probed.feedback] == [f.bits for f in plain.feedback]
    # On every GOP's first request and no other; the ramp probe on mini-GOPs 1..5 of a GOP (here: the second of two).
    assert [r.key_probe is not None for r in probed.requests] == [r.mg_in_gop == 0 for r in probed.requests]
    assert [r.ramp_probe is not None for r in probed.requests] == [1 <= r.mg_in_gop <= 5 for r in probed.requests]
    assert all(r.key_probe is None and r.ramp_probe is None for r in plain.requests)
    # The first GOP's probe is the first GOP of a whole encode at the same preset, key mini-GOP ±3, the rest Δ=0
    # (the rate control starts fresh in both).
    probe = probed.requests[0].key_probe
    assert probe is not None and probe.offset == PROBE_OFFSET
    mgs = len(probed.requests)
    for sign, bits, psnr in ((-1, probe.finer_bits, probe.finer_psnr_y), (1, probe.coarser_bits, probe.coarser_psnr_y)):
        deltas = ",".join([str(sign * PROBE_OFFSET)] + ["0"] * (mgs - 1))
        whole = encode(tmp_path / f"whole{sign}", codec, [], deltas)
        whole_bits, whole_psnr = first_gop(whole)
        assert bits == whole_bits
        assert psnr == pytest.approx(whole_psnr, abs=2e-3)  # the feedback's MSE and the probe's PSNR are rounded
    assert probe.finer_bits > probe.coarser_bits  # the finer key spends more on the key frame, which shows
    # The zero encode both probes carry (--probe-zero) is the first GOP of the plain encode: Δ=0 throughout.
    plain_bits, plain_psnr = first_gop(plain)
    assert probe.zero_bits == plain_bits and probed.requests[1].ramp_probe.zero_bits == plain_bits
    assert probe.zero_psnr_y == pytest.approx(plain_psnr, abs=2e-3)
    pair = encode(tmp_path / "pair", codec, ["--key-probe"])  # without --probe-zero: the probes alone
    assert pair.requests[0].key_probe == protocol.KeyProbe(**{**vars(probe), "zero_bits": None, "zero_psnr_y": None})
    # The ramp probe, sent with mini-GOP 1: the same GOP with the mini-GOPs after the key ±3 together, the key at Δ=0.
    ramp = probed.requests[1].ramp_probe
    assert ramp is not None and ramp.offset == PROBE_OFFSET
    for sign, bits, psnr in ((-1, ramp.finer_bits, ramp.finer_psnr_y), (1, ramp.coarser_bits, ramp.coarser_psnr_y)):
        deltas = ",".join(["0", str(sign * PROBE_OFFSET)] + ["0"] * (mgs - 2))
        whole = encode(tmp_path / f"ramp{sign}", codec, [], deltas)
        whole_bits, whole_psnr = first_gop(whole)
        assert bits == whole_bits
        assert psnr == pytest.approx(whole_psnr, abs=2e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--codec", "vp9", "--rl-dir", "RL"], "--key-probe: not for --codec vp9"),
        (["--codec", "svtav1"], "--key-probe sends its results to the agent: it needs --rl-dir"),
    ],
)
def test_key_probe_refuses_what_it_cannot_probe_before_any_encode(tmp_path: Path, args: list[str],
                                                                   message: str) -> None:  # fmt: skip
    args = [str(tmp_path / "rl") if a == "RL" else a for a in args]
    res = subprocess.run(
        [sys.executable, "-m", "builtin_encoder", "--input", str(bundled_clip("carphone_pristine.mp4")),
         "--frames", "8", "--bitrate", "150", "--key-probe", *args],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_probe_zero_needs_the_key_probe(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "builtin_encoder", "--input", str(bundled_clip("carphone_pristine.mp4")),
         "--frames", "8", "--bitrate", "150", "--codec", "svtav1", "--rl-dir", str(tmp_path / "rl"), "--probe-zero"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert "--probe-zero adds the Δ=0 encode to the probes: it needs --key-probe" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "rl").exists()
