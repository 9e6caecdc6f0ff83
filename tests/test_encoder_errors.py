"""Bad input and bad agents: a clear message naming the flag / file / field, a distinct exit code,
end.json with status "error", and never a hang (every process runs under a timeout)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import protocol
from builtin_encoder.source import bundled_clip

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# Small and fast: x264, 24 frames, constant QP (the agent path still runs pass 1 for its features).
BASE = ["--codec", "x264", "--frames", "24", "--keyint", "16", "--rc-mode", "0", "--qp", "30"]


def encoder_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "builtin_encoder", *map(str, args)]


def run_encoder(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(encoder_cmd(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def run_with_responder(rl_dir: Path, enc_args: list[object], resp_args: list[str]) -> tuple[int, str, int, float]:
    """Runs encoder + responder; returns (encoder exit, encoder stderr, responder exit, encoder seconds)."""
    rl_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    enc = subprocess.Popen(encoder_cmd(*enc_args, "--rl-dir", rl_dir), cwd=ROOT, env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    resp = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "responder.py"), "--rl-dir", str(rl_dir), "--timeout", "30", *resp_args],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, err = enc.communicate(timeout=60)
        seconds = time.monotonic() - t0
        resp.communicate(timeout=30)
    finally:
        for p in (enc, resp):
            if p.poll() is None:
                p.kill()
    return enc.returncode, err, resp.returncode, seconds


def read_end(rl_dir: Path) -> protocol.End:
    path = protocol.end_path(rl_dir)
    return protocol.parse_end(path.read_text(), path)


@pytest.fixture(scope="module")
def clip() -> Path:
    return bundled_clip("carphone_pristine.mp4")


def test_help_documents_exit_codes() -> None:
    res = run_encoder("--help")
    assert res.returncode == 0
    for text in ("exit codes", "reply", "codec error", "--rl-timeout", "--stat-in", "--rc-mode"):
        assert text in res.stdout


def test_missing_input(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.mp4"
    res = run_encoder("--input", missing, *BASE)
    assert res.returncode == 2
    assert str(missing) in res.stderr and "--input" in res.stderr


def test_undecodable_input_writes_end_json(tmp_path: Path) -> None:
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"\x00garbage" * 100)
    rl_dir = tmp_path / "rl"
    res = run_encoder("--input", junk, *BASE, "--rl-dir", rl_dir, "--rl-session", "s1")
    assert res.returncode == 2
    assert str(junk) in res.stderr
    end = read_end(rl_dir)
    assert end.status == "error" and str(junk) in end.message and end.session == "s1"


def test_bad_arguments(tmp_path: Path, clip: Path) -> None:
    cases = [
        (["--keyint", "20", "--mini-gop", "8"], "--keyint"),
        (["--rc-mode", "1"], "--bitrate"),
        (["--rc-mode", "0"], "--qp"),
        (["--pass", "1", "--bitrate", "100"], "--stat-out"),
        (["--rc-mode", "3", "--crf", "30", "--rl-dir", str(tmp_path / "rl")], "--rl-dir"),
        (["--bitrate", "-5"], "--bitrate"),
        (["--layer-offset-scale", "nan"], "--layer-offset-scale"),
        (["--layer-offset-scale", "4"], "--layer-offset-scale"),
        (["--no-such-flag"], "--no-such-flag"),
    ]
    for extra, needle in cases:
        args = ["--input", clip, "--codec", "x264", "--frames", "8", *extra]
        if "--rc-mode" not in extra and "--pass" not in extra and "--bitrate" not in extra:
            args += ["--bitrate", "100"]
        res = run_encoder(*args)
        assert res.returncode == 2, (extra, res.stderr)
        assert needle in res.stderr, (extra, res.stderr)
    # An argument error with --rl-dir still tells a waiting agent.
    rl_dir = tmp_path / "rl2"
    rl_dir.mkdir()
    res = run_encoder("--input", clip, "--rc-mode", "1", "--rl-dir", rl_dir)
    assert res.returncode == 2 and read_end(rl_dir).status == "error"


def test_stat_file_mismatch_names_the_file(tmp_path: Path, clip: Path) -> None:
    stat = tmp_path / "p1.stat"
    res = run_encoder("--input", clip, "--codec", "x264", "--frames", "24", "--pass", "1", "--stat-out", stat,
                      "--bitrate", "200")  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = run_encoder("--input", clip, "--codec", "x264", "--frames", "32", "--pass", "2", "--stat-in", stat,
                      "--bitrate", "200")  # fmt: skip
    assert res.returncode == 2
    assert str(stat) in res.stderr and "frames" in res.stderr
    garbage = tmp_path / "garbage.stat"
    garbage.write_text("hello\n")
    res = run_encoder("--input", clip, "--codec", "x264", "--frames", "24", "--stat-in", garbage, "--bitrate", "200")
    assert res.returncode == 2 and str(garbage) in res.stderr


@pytest.mark.parametrize(
    ("fault", "code", "needles"),
    [
        ("malformed", 4, ["mg0001_qp.json", "not valid JSON"]),
        ("out-of-range", 4, ["mg0001_qp.json", "'qp'", "outside"]),
        ("wrong-session", 4, ["mg0001_qp.json", "'session'"]),
        ("silent", 3, ["mg0001_qp.json", "--rl-timeout"]),
    ],
)
def test_bad_replies(tmp_path: Path, clip: Path, fault: str, code: int, needles: list[str]) -> None:
    rl_dir = tmp_path / "rl"
    enc_args: list[object] = ["--input", clip, *BASE, "--rl-session", "sess", "--rl-timeout", "1.5"]
    rc, err, resp_rc, seconds = run_with_responder(rl_dir, enc_args, ["--fault", fault, "--fault-at", "1"])
    assert rc == code, err
    for needle in needles:
        assert needle in err, err
    end = read_end(rl_dir)
    assert end.status == "error" and end.session == "sess"
    assert all(needle in end.message for needle in needles)
    # Mini-GOP 0 was answered properly and coded; mini-GOP 1 never was.
    assert end.mini_gops == 1 and end.frames == 8 and end.bits > 0
    assert protocol.feedback_path(rl_dir, 0).exists() and not protocol.feedback_path(rl_dir, 1).exists()
    assert resp_rc == 1  # the responder saw end.json with status "error"
    if fault == "silent":
        assert seconds < 20  # waited about --rl-timeout, not forever


def test_summary_json_on_error(tmp_path: Path, clip: Path) -> None:
    summary = tmp_path / "s.json"
    res = run_encoder("--input", clip, *BASE, "--frames", "500", "--summary-json", summary)
    assert res.returncode == 2
    data = json.loads(summary.read_text())
    assert data["status"] == "error" and "--frames 500" in data["message"]


def test_sigterm_mid_svtav1_encode_ends_cleanly(tmp_path: Path) -> None:
    """SIGTERM while SVT-AV1 codes a frame (the packet is awaited in a helper thread): exit 130 at once, the
    message names the signal, no traceback, and nothing is left running."""
    summary = tmp_path / "s.json"
    proc = subprocess.Popen(encoder_cmd("--input", bundled_clip("bikes.mp4"), "--codec", "svtav1", "--rc-mode", "0",
                                        "--qp", "30", "--o", tmp_path / "out.ivf", "--summary-json", summary),
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "out.ivf").exists() or (tmp_path / "out.ivf").stat().st_size < 20000:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "stopped by signal SIGTERM" in err and "Traceback" not in err
    assert json.loads(summary.read_text())["status"] == "error"


def scheduler_policies(pid: int) -> set[int]:
    """The scheduling policies of the threads of process `pid` now (os.SCHED_*)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            out.add(os.sched_getscheduler(int(task.name)))
    return out


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="SVT-AV1 goes real-time as root only")
def test_no_thread_of_the_encoder_runs_real_time(tmp_path: Path) -> None:
    """As root SVT-AV1 4.1 makes its threads SCHED_FIFO; the encoder program keeps every one on the normal scheduler."""
    args = ["--input", bundled_clip("bikes.mp4"), "--codec", "svtav1", "--rc-mode", "0", "--qp", "30", "--frames",
            "64", "--o", tmp_path / "out.ivf", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(encoder_cmd(*args), cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    try:
        while proc.poll() is None:
            if (tmp_path / "out.ivf").exists():  # the codec is open: its threads exist
                seen |= scheduler_policies(proc.pid)
            time.sleep(0.02)
    except FileNotFoundError:  # the process ended between poll() and the read
        pass
    finally:
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert seen == {os.SCHED_OTHER}
