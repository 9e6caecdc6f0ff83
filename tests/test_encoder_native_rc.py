"""rc-modes 2 and 3 through the encoder program: the codecs' own rate control and CRF (benchmark references)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builtin_encoder.source import bundled_clip

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(tmp_path: Path, codec: str, *extra: str) -> dict:
    out = tmp_path / f"out{'.264' if codec == 'x264' else '.ivf'}"
    summary = tmp_path / "s.json"
    cmd = [sys.executable, "-m", "builtin_encoder", "--input", str(bundled_clip("carphone_pristine.mp4")),
           "--codec", codec, "--frames", "32", "--keyint", "16", "--o", str(out), "--summary-json", str(summary),
           "--quiet", *extra]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(summary.read_text())


@pytest.mark.parametrize("codec", ["svtav1", "x264", "vp9"])
def test_codec_rate_control_and_crf(tmp_path: Path, codec: str) -> None:
    own = run(tmp_path, codec, "--rc-mode", "2", "--bitrate", "200")
    assert own["status"] == "ok" and own["frames"] == 32 and own["rc_mode"] == 2
    assert abs(own["error_pct"]) < 30, own["message"]
    low, high = (run(tmp_path, codec, "--rc-mode", "3", "--crf", str(c)) for c in (40, 25))
    assert low["status"] == high["status"] == "ok" and low["target_kbps"] is None
    assert low["kbps"] < high["kbps"] and low["psnr_y"] < high["psnr_y"]
