"""The bounded log: the same error is printed a few times, then counted (log_limit.py)."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import log_limit

ROOT = Path(__file__).resolve().parent.parent
FAKE = f"{sys.executable} {ROOT / 'tests' / 'fake_encoder.py'}"


def test_a_hundred_thousand_copies_print_a_handful_of_lines():
    out = io.StringIO()
    logger = logging.getLogger("test_log_limit")
    logger.handlers[:] = [logging.StreamHandler(out)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    limiter = log_limit.install(logger, limit=3)
    for i in range(100_000):
        logger.error("encoder 'x' for video v (exit code %d): mg%04d_fb.json broken", 7, i % 50)
    logger.error("another error")
    logger.info("info is never limited")
    logger.info("info is never limited")
    lines = out.getvalue().splitlines()
    # 3 copies (the third says so), then counts at 10, 100, ..., 100000: 5 lines; the other messages.
    assert len(lines) == 3 + 1 + 5 + 1 + 2, lines
    assert lines[0] == "encoder 'x' for video v (exit code 7): mg0000_fb.json broken"
    assert lines[3] == "  (printed 3 times: further copies are only counted)"
    first = "encoder 'x' for video v (exit code 7): mg0000_fb.json broken"
    assert lines[-4] == f"the same message 100000 times so far: {first}"
    assert limiter.summary() == [f"100000 times: {first}"]
    log_limit.log_summary(logger)
    assert out.getvalue().splitlines()[-1] == f"  100000 times: {first}"


def test_main_prints_a_failing_encoders_error_three_times_then_counts(tmp_path):
    (tmp_path / "exit.yuv").write_bytes(b"")  # the fake encoder exits 7 in every training encode
    video = f"--input|{tmp_path / 'exit.yuv'}|--frames|32|--keyint|16|--mini-gop|4|--bitrate|150"
    res = subprocess.run([sys.executable, str(ROOT / "main.py"), "--encoder", FAKE, "--videos", video, "--epochs", "4",
                          "--log-level", "1", "--no-tensorboard", "--ckpt-interval", "100"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert res.returncode == 0, res.stderr
    err = res.stderr
    assert err.count("ERROR encoder ") == 3  # 3 copies, the fourth only counted
    assert err.count("fake encoder: codec exploded at mini-GOP 5") == 3
    assert "(printed 3 times: further copies are only counted)" in err
    assert "messages printed 3 times and then only counted:\n  4 times: encoder " in err
