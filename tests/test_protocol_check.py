"""The conformance kit (protocol_check.py): clean on the built-in encoder, each fault of the test double named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import protocol_check
from builtin_encoder.source import bundled_clip

ROOT = Path(__file__).resolve().parent.parent
CLIP = bundled_clip("carphone_pristine.mp4")
FAKE = [sys.executable, str(ROOT / "tests" / "fake_encoder.py")]
LAYOUT = ["--frames", "32", "--keyint", "16", "--mini-gop", "4"]

# fault of tests/fake_encoder.py -> (the rule the kit must fail, text of its first offence)
FAULTS = {
    "fbindex": ("feedback_index", "mg0005_fb.json: field 'mg_index' is 4, its request says 5"),
    "fbunasked": ("feedback_index", "mg0005_fb.json: field 'mg_index' is 1000"),
    "reorder": ("feedback_index", "mg0001_fb.json: written before mg0000_fb.json"),
    "fbframes": ("matches_request", "mg0005_fb.json: field 'frame_count' is 3, its request says 4"),
    "fbgop": ("matches_request", "mg0005_fb.json: field 'gop_index' is 2, its request says 1"),
    "fblen": ("lengths", "mg0005_fb.json: field 'frame_bits' has 2 entries for frame_count 4"),
    "qpused": ("qp_used", "mg0005_fb.json: field 'qp_used' is"),
    "gopend": ("gop_end", "mg0005_fb.json: field 'gop_end' is 1"),
    "gopend0": ("gop_end", "mg0007_fb.json: field 'gop_end' is 0"),
    "rqgop": ("gop_sequence", "mg0005_rq.json: field 'mg_in_gop' is 0, 1 was due (after mini-GOP 0 of 4 in GOP 1"),
    "endearly": ("end", "end.json: fields 'mini_gops' 6, 'frames' 32: 6 mini-GOPs were requested, 24 of 32"),
    "session": ("session", "mg0005_fb.json: field 'session' is '1234-e1'"),
    "nosession": ("session", "mg0000_rq.json: field 'session' is ''"),
    "badjson": ("files", "mg0005_fb.json: not valid JSON"),
    "nan": ("files", "mg0005_fb.json: not valid JSON: non-finite number NaN"),
    "rqutf8": ("files", "mg0005_rq.json: not valid UTF-8"),
    "rqlink": ("files", "mg0005_rq.json: is a symbolic link"),
    "rqhuge": ("files", "mg0005_rq.json: 262"),
    "inplace": ("files", "mg0005_fb.json: seen half-written"),
    "missing": ("feedback", "mg0005_fb.json: missing field 'bits'"),
    "wrongtype": ("feedback", "mg0005_fb.json: field 'bits' must be an integer"),
    "rqmissing": ("request", "mg0005_rq.json: missing field 'base_qp'"),
    "stray": ("no_stray", "mg0005_fb.json.tmp: left in rl_io"),
    "exitcode": ("exit", "exit code 1 after end.json status 'ok'"),
    "kill": ("end", "end.json: the encoder exited (code -9) without writing it"),
    "exit": ("end", "end.json: the encoder exited (code 7) without writing it"),
    "propend": ("propagation", "mg0007_rq.json: field 'first_pass.propagation[3]' is 0.5, not 0 on the GOP's last"),
    "propgap": ("propagation", "mg0005_rq.json: field 'first_pass.propagation' is left out, unlike in the first"),
    "hang": ("progress", "nothing for 2 s (waiting for mg0005_fb.json or mg0006_rq.json or end.json)"),
}
# Faults after which the kit cannot go on (no answer to a broken request, a dead or silent encoder):
# the rules after them are "not reached", which is not clean either.
STOPS = {"rqutf8", "rqlink", "rqhuge", "rqmissing", "kill", "exit", "hang"}


def run_kit(tmp: Path, fault: str, timeout: float = 5.0) -> protocol_check.Report:
    (tmp / f"{fault}_baseline.yuv").write_bytes(b"")  # "_baseline": the fault fires in every encode
    args = ["--input", str(tmp / f"{fault}_baseline.yuv"), *LAYOUT]
    return protocol_check.check_encoder(FAKE, args, protocol_check.encoder_proc.DEFAULT_RL_ARGS, tmp / "rl_io",
                                        timeout, tmp / "encoder.log")  # fmt: skip


def test_builtin_encoder_conforms_through_the_cli(tmp_path):
    # A pass-2 video with its stat file missing: the kit runs pass 1 first, as main.py does.
    videos = "|".join(["--input", str(CLIP), "--codec", "x264", *LAYOUT[:2], "--keyint", "8", "--mini-gop", "4",
                       "--bitrate", "150", "--pass", "2", "--stat-in", str(tmp_path / "p1.stat")])  # fmt: skip
    res = subprocess.run([sys.executable, "-m", "protocol_check", "--videos", videos, "--keep", str(tmp_path / "k")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "p1.stat").stat().st_size > 0
    lines = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines() if line.split()[:1] in
             [[r] for r in protocol_check.RULES]}  # fmt: skip
    assert lines == dict.fromkeys(protocol_check.RULES, "PASS")
    assert "8 requests answered" in res.stdout and "end.json ok, exit code 0" in res.stdout
    assert "conforms to PROTOCOL.md" in res.stdout


def test_a_conformant_double_is_clean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_kit(tmp_path, "ok")
    assert report.clean, report.table()
    assert report.replies[:5] == [30, 10, 51, 33, 27]  # base, qp_min, qp_max, base + 3, base - 3
    (tmp_path / "p").mkdir()
    with_fp = run_kit(tmp_path / "p", "propok")  # first_pass with a right propagation: checked, clean
    assert with_fp.clean and with_fp.rules["propagation"].checked == 8, with_fp.table()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_is_named(tmp_path, monkeypatch, fault):
    monkeypatch.chdir(tmp_path)  # the double's process-id files
    rule, text = FAULTS[fault]
    report = run_kit(tmp_path, fault, timeout=2.0 if fault == "hang" else 5.0)
    failed = {name for name, r in report.rules.items() if r.verdict == "FAIL"}
    assert failed == {rule}, report.table()  # that rule, and no other
    assert report.rules[rule].first.startswith(text), report.table()
    assert not report.clean
    unreached = {name for name, r in report.rules.items() if r.verdict == "not reached"}
    assert bool(unreached) == (fault in STOPS), report.table()


def test_cli_exit_code_and_table_on_a_faulty_encoder(tmp_path):
    (tmp_path / "qpused_baseline.yuv").write_bytes(b"")
    videos = "|".join(["--input", str(tmp_path / "qpused_baseline.yuv"), *LAYOUT])
    res = subprocess.run([sys.executable, "-m", "protocol_check", "--encoder", " ".join(FAKE), "--videos", videos],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert "qp_used          FAIL         mg0005_fb.json: field 'qp_used' is" in res.stdout
    assert "does NOT conform to PROTOCOL.md" in res.stdout
