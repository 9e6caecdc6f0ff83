"""Encoder command lines and process groups."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import encoder_proc
from encoder_proc import EncoderProcess, VideoSpecError, parse_videos_arg

SEED_VIDEO = (
    "--input|/data/in.yuv|--input-res|1920x1080|--frames|0|--o|./out.ivf|--csv|./out.csv|--bitrate|2125|--pass|2"
    "|--stat-in|./p1.log|--stat-out|./p2.log|--fps|24|--preset|1|--rc-mode|1"
)


def test_seed_videos_string_reaches_the_encoder_exactly():
    spec = parse_videos_arg(SEED_VIDEO)
    assert spec.args == SEED_VIDEO.split("|")
    assert spec.name == "in"
    assert spec.flag("--bitrate") == "2125"
    assert "--o" not in spec.key.split("|") and "--bitrate|2125" in spec.key


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty value"),
        ("--input||--bitrate|3", "empty argument at position 1"),
        ("--input|a.yuv|", "empty argument at position 2"),
        ("input|a.yuv", "must start with a flag"),
        ("--bitrate|300", "no '--input|PATH'"),
    ],
)
def test_bad_videos_syntax_names_the_flag(text, match):
    with pytest.raises(VideoSpecError, match=match):
        parse_videos_arg(text)


tokens = st.text(alphabet=st.characters(blacklist_characters="|", blacklist_categories=("Cs",)), min_size=1)


@given(st.lists(tokens, min_size=1, max_size=8))
def test_videos_parsing_round_trips_any_arguments(args):
    text = "|".join(["--input", "x.yuv"] + args)
    assert parse_videos_arg(text).args == ["--input", "x.yuv"] + args


@given(st.text(max_size=60))
def test_videos_parsing_only_raises_clear_errors(text):
    try:
        spec = parse_videos_arg(text)
    except VideoSpecError as exc:
        assert str(exc).startswith("--videos:")
    else:
        assert spec.flag("--input") is not None and "" not in spec.args


def test_redirect_outputs_keeps_user_files(tmp_path):
    args = encoder_proc.redirect_outputs(SEED_VIDEO.split("|"), tmp_path, "baseline")
    assert args[args.index("--o") + 1] == str(tmp_path / "out.baseline.ivf")
    assert args[args.index("--stat-in") + 1] == "./p1.log"  # an input, untouched


def test_pass1_args_only_when_stats_missing(tmp_path):
    spec = encoder_proc.dataset_specs(__file__, tmp_path, tmp_path, ["--bitrate", "100"])[0]
    args = encoder_proc.pass1_args(spec)
    assert args is not None and args[-4:] == ["--pass", "1", "--stat-out", str(tmp_path / "test_encoder_proc.stat")]
    assert "--o" not in args and "--stat-in" not in args
    (tmp_path / "test_encoder_proc.stat").write_text("x")
    assert encoder_proc.pass1_args(spec) is None


def test_dataset_glob_without_match_is_an_error(tmp_path):
    with pytest.raises(VideoSpecError, match="--dataset-inputs: no file matches"):
        encoder_proc.dataset_specs(str(tmp_path / "*.yuv"), tmp_path, tmp_path, [])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_ends_the_whole_process_group(tmp_path):
    # The encoder starts a child that ignores SIGTERM: stop() must still leave no orphan.
    script = (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = EncoderProcess([sys.executable, "-c", script], tmp_path / "enc.log", "clip")
    proc.start()
    deadline = time.monotonic() + 10
    while not (tmp_path / "enc.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int((tmp_path / "enc.log").read_text().split()[0])
    assert proc.alive() and _alive(child)
    t0 = time.monotonic()
    proc.stop(grace_s=0.5)
    assert time.monotonic() - t0 < 30  # the child's 60 s sleep is cut short
    assert not proc.alive()
    time.sleep(0.1)
    assert not _alive(child) or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"


def test_tail_shows_last_output_lines(tmp_path):
    proc = EncoderProcess([sys.executable, "-c", "import sys\nfor i in range(40): print('line', i)\nsys.exit(3)"],
                          tmp_path / "e.log", "clip")  # fmt: skip
    proc.start()
    assert proc.wait(10) == 3
    assert proc.tail(2) == "line 38\nline 39"


def test_missing_program_is_a_clear_error(tmp_path):
    proc = EncoderProcess(["/nonexistent/qav1enc"], tmp_path / "e.log", "clip")
    with pytest.raises(RuntimeError, match="cannot start encoder '/nonexistent/qav1enc' for video clip"):
        proc.start()


def test_dataset_raw_inputs_take_size_and_rate_from_their_names(tmp_path):
    for name in ("BasketballDrive_1920x1080_50.yuv", "Tiny_96x64_29.97.yuv", "clip.y4m"):
        (tmp_path / name).write_bytes(b"")
    specs = encoder_proc.dataset_specs(str(tmp_path / "*"), tmp_path / "st", tmp_path / "out", ["--bitrate", "800"])
    by_name = {s.name: s for s in specs}
    assert by_name["BasketballDrive_1920x1080_50"].flag("--input-res") == "1920x1080"
    assert by_name["BasketballDrive_1920x1080_50"].flag("--fps") == "50"
    assert by_name["Tiny_96x64_29.97"].flag("--fps") == "29.97"
    assert by_name["clip"].flag("--input-res") is None and by_name["clip"].flag("--fps") is None
    # --dataset-args may set them for every input instead; a given --fps wins over the name's.
    specs = encoder_proc.dataset_specs(str(tmp_path / "Tiny*"), tmp_path, tmp_path, ["--fps", "10"])
    assert specs[0].flag("--input-res") == "96x64" and specs[0].args.count("--fps") == 1
    assert specs[0].flag("--fps") == "10"


def test_dataset_raw_input_without_size_in_its_name_is_named(tmp_path):
    (tmp_path / "Good_176x144_30.yuv").write_bytes(b"")
    (tmp_path / "foreman.yuv").write_bytes(b"")
    with pytest.raises(VideoSpecError, match=r"raw input .*foreman.yuv has no size and frame rate in its name"):
        encoder_proc.dataset_specs(str(tmp_path / "*.yuv"), tmp_path, tmp_path, [])
    specs = encoder_proc.dataset_specs(str(tmp_path / "*.yuv"), tmp_path, tmp_path, ["--input-res", "176x144"])
    assert [s.name for s in specs] == ["Good_176x144_30", "foreman"]
