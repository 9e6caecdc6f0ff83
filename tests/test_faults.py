"""Faults and bad input (TESTING.md): the loop survives, nothing is lost, nothing is left running.

main.py runs as a subprocess against real encoder processes: the built-in encoder (signals and
resume) and tests/fake_encoder.py, an encoder that speaks the protocol badly on purpose (one
faulty "video" per fault, its name is the fault, all in one main.py run).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoint
import protocol
from inputs import bundled_clip
from io_runner import RlIoChannel

ROOT = Path(__file__).resolve().parent.parent
CLIP = bundled_clip("carphone_pristine.mp4")
VIDEO = f"--input|{CLIP}|--codec|x264|--frames|32|--keyint|16|--mini-gop|4|--bitrate|150|--o|out/car.264"
FAST = ["--learning-starts", "6", "--batch-size", "8", "--updates-per-step", "1", "--log-level", "2",
        "--no-tensorboard"]  # fmt: skip
FAKE = f"{sys.executable} {ROOT / 'tests' / 'fake_encoder.py'}"
# Faults at mini-GOP 5 (second GOP of two, 4 mini-GOPs each): the first GOP is complete.
FAILING = ("kill", "exit", "hang", "badjson", "missing", "nan", "wrongtype", "rqmissing", "session", "rqlink",
           "rqhuge", "fbindex", "fbframes", "fblen", "gopend", "endearly", "fbunasked", "fbgop", "qpused", "rqutf8",
           "gopend0", "rqgop")  # fmt: skip
SURVIVING = ("careless", "reorder", "ok")


def main_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), *args]


def run_main(tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(main_cmd(*args), cwd=tmp, capture_output=True, text=True, timeout=timeout)


def fake_videos(tmp: Path, names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        (tmp / f"{name}.yuv").write_bytes(b"")
        out += ["--videos", f"--input|{tmp / name}.yuv|--frames|32|--keyint|16|--mini-gop|4|--bitrate|150"]
    return out


def procs_in(directory: Path) -> list[int]:
    """Live (non-zombie) processes whose working directory is `directory`: encoders and their children."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == directory and " Z " not in (entry / "stat").read_text():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(") ", 1)[1][0] != "Z"


def error_for(stderr: str, video: str) -> str:
    """The logged error of one video (the message and its encoder output lines)."""
    m = re.search(rf"ERROR encoder '[^']*' for video {video}\b.*?(?=\n\d\d:\d\d:\d\d |\Z)", stderr, re.S)
    assert m, f"no error logged for {video}:\n{stderr}"
    return m.group(0)


# ----------------------------------------------------------------------------- one run, many faults


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    # Stale files of an earlier run (session "" matches any encode): must be cleared, never read.
    rl = tmp / "rl_io"
    rl.mkdir()
    stale = protocol.End(status="ok", mini_gops=0, frames=0, bits=0, session="")
    protocol.write_message(protocol.end_path(rl), stale)
    (rl / "mg0000_qp.json").write_text('{"qp": 51}')
    (rl / "mg0000_fb.json").write_text("{not json")
    t0 = time.monotonic()
    res = run_main(
        tmp, "--encoder", FAKE, *fake_videos(tmp, FAILING + SURVIVING), "--epochs", "1", "--encoder-timeout", "2",
        "--save-replay-buffer", "--rl-dir", "rl_io", *FAST,
    )  # fmt: skip
    return tmp, res, time.monotonic() - t0


def test_learner_survives_every_encoder_fault(faults):
    tmp, res, _ = faults
    assert res.returncode == 0, res.stderr
    import json

    rows = json.loads((tmp / "outputs" / "report_train.json").read_text())
    assert sorted(r["video"] for r in rows) == sorted(SURVIVING)  # the videos after each fault ran too
    for r in rows:
        assert r["gops"] == 2


def test_partial_episode_is_not_stored(faults):
    tmp, res, _ = faults
    ck = checkpoint.load(tmp / "checkpoints" / "checkpoint_epoch_1.pt")
    # Each failing encode contributes its complete first GOP only (4 transitions), never the
    # mini-GOP(s) of the GOP it died in; each surviving encode contributes 2 GOPs.
    assert ck["replay"]["size"] == 4 * len(FAILING) + 8 * len(SURVIVING)
    assert ck["counters"]["gops"] == len(FAILING) + 2 * len(SURVIVING)


def test_encoder_killed_mid_gop(faults):
    tmp, res, _ = faults
    err = error_for(res.stderr, "kill")
    assert "(exit code -9): exited without writing end.json" in err


def test_encoder_exits_nonzero_shows_its_last_output(faults):
    err = error_for(faults[1].stderr, "exit")
    assert "(exit code 7)" in err
    assert "last encoder output" in err and "fake encoder: codec exploded at mini-GOP 5" in err


def test_encoder_hang_times_out_with_its_last_output(faults):
    err = error_for(faults[1].stderr, "hang")
    assert "no protocol file for 2 s (waiting for mg0005_fb.json or mg0006_rq.json)" in err
    assert "fake encoder: stuck in mini-GOP 5" in err


def test_no_orphans_after_kill_and_hang(faults):
    tmp, _, _ = faults
    for name in ("kill", "hang"):
        encoder, grandchild = map(int, (tmp / f"{name}.pids").read_text().split())
        assert not pid_alive(encoder) and not pid_alive(grandchild), name
    assert procs_in(tmp) == []


@pytest.mark.parametrize(
    "video,match",
    [
        ("badjson", r"mg0005_fb.json: not valid JSON"),
        ("missing", r"mg0005_fb.json: missing field 'bits'"),
        ("nan", r"mg0005_fb.json: not valid JSON.*NaN"),
        ("wrongtype", r"mg0005_fb.json: field 'bits' must be an integer"),
        ("rqmissing", r"mg0005_rq.json: missing field 'base_qp'"),
        ("session", r"mg0005_fb.json: field 'session' is '1234-e1'"),
        ("rqlink", r"rl_io/mg0005_rq.json: is a symbolic link, not followed"),
        ("rqhuge", r"rl_io/mg0005_rq.json: \d+ bytes, over the protocol's limit of 262144 bytes"),
        ("fbindex", r"mg0005_fb.json: field 'mg_index' is 4, expected 5"),
        ("fbframes", r"mg0005_fb.json: field 'frame_count' is 3, its request says 4"),
        ("fblen", r"mg0005_fb.json: field 'frame_bits' has 2 entries for frame_count 4"),
        ("gopend", r"mg0005_fb.json: field 'gop_end' is 1, but its request is mini-GOP 1 of 4"),
        ("endearly", r"end.json: status ok, but 24 of the 32 frames its requests announced were coded"),
        ("fbunasked", r"mg0005_fb.json: field 'mg_index' is 1000, expected 5"),
        ("fbgop", r"mg0005_fb.json: field 'gop_index' is 2, its request says 1"),
        ("qpused", r"mg0005_fb.json: field 'qp_used' is \d+, the reply was qp \d+"),
        ("rqutf8", r"mg0005_rq.json: not valid UTF-8"),
        ("gopend0", r"mg0007_fb.json: field 'gop_end' is 0, but its request is mini-GOP 3 of 4"),
        ("rqgop", r"mg0005_rq.json: field 'mg_in_gop' is 0, 1 was due \(after mini-GOP 0 of 4 in GOP 1"),
    ],
)
def test_malformed_message_names_file_and_field(faults, video, match):
    assert re.search(match, error_for(faults[1].stderr, video))


def test_half_written_file_is_read_once_complete(faults):
    assert "for video careless" not in faults[1].stderr  # every file was seen half-written, none failed


def test_out_of_order_duplicate_and_stale_files(faults):
    tmp, res, _ = faults
    assert "for video reorder" not in res.stderr and "for video ok" not in res.stderr
    # The fixture's stale end.json was cleared before the first encode: else that (baseline) encode
    # would have ended at once with no mini-GOPs and main.py would have failed.


def test_channel_clears_stale_files_and_keeps_others(tmp_path):
    for name in ("mg0000_rq.json", "mg0001_qp.json", "mg0002_fb.json", "end.json", "mg0003_rq.json.tmp"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    ch = RlIoChannel(tmp_path, "s1", 1.0)
    try:
        assert ch.reset() == 5
    finally:
        ch.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_stop_on_encoder_error(tmp_path):
    res = run_main(tmp_path, "--encoder", FAKE, *fake_videos(tmp_path, ("kill", "ok")), "--epochs", "1",
                   "--stop-on-encoder-error", *FAST)  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "for video kill (exit code -9)" in res.stderr
    assert not (tmp_path / "outputs" / "logs" / "ok.e1.log").exists()  # stopped before the next video
    assert procs_in(tmp_path) == []


# ----------------------------------------------------------------------------- signals


def start_and_signal(tmp: Path, sig: int, ready: Path, args: list[str]) -> tuple[int, float, str]:
    """Starts main.py, sends `sig` once `ready` exists; returns (exit code, seconds to exit, stderr)."""
    err_path = tmp / "main.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(main_cmd(*args), cwd=tmp, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 90
            while not ready.exists():
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "main.py never got going"
                time.sleep(0.05)
            time.sleep(0.3)
            t0 = time.monotonic()
            proc.send_signal(sig)
            code = proc.wait(timeout=30)
            return code, time.monotonic() - t0, err_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_sigint_while_encoder_hangs(tmp_path):
    # The encoder writes nothing for 60 s: Ctrl-C must not wait for the encoder timeout.
    code, seconds, err = start_and_signal(
        tmp_path, signal.SIGINT, tmp_path / "hang.pids",
        ["--encoder", FAKE, *fake_videos(tmp_path, ("hang",)), "--epochs", "2", "--encoder-timeout", "60", *FAST],
    )  # fmt: skip
    assert code == 130, err
    assert seconds < 30  # not the 60 s encoder timeout (9.1 s seen with both cores busy: the checkpoint is written)
    assert "received SIGINT" in err
    ck = checkpoint.load(tmp_path / "checkpoints" / "checkpoint_interrupted_epoch_1.pt")
    assert ck["epoch"] == 0
    encoder, grandchild = map(int, (tmp_path / "hang.pids").read_text().split())
    assert not pid_alive(encoder) and not pid_alive(grandchild)
    assert procs_in(tmp_path) == []


def test_sigint_during_the_baseline_says_so_and_exits_130(tmp_path):
    # Nothing is trained yet: no checkpoint, and the warning must not promise one.
    code, seconds, err = start_and_signal(
        tmp_path, signal.SIGINT, tmp_path / "hang_baseline.pids",
        ["--encoder", FAKE, *fake_videos(tmp_path, ("hang_baseline",)), "--epochs", "2", *FAST],
    )  # fmt: skip
    assert code == 130, err
    assert seconds < 5
    assert "received SIGINT: ending the encoder and exiting; nothing is trained yet, so no checkpoint" in err
    assert "writing a checkpoint" not in err and "ERROR" not in err
    assert not (tmp_path / "checkpoints").exists()
    encoder, grandchild = map(int, (tmp_path / "hang_baseline.pids").read_text().split())
    assert not pid_alive(encoder) and not pid_alive(grandchild)
    assert procs_in(tmp_path) == []


def test_sigterm_during_training_checkpoints_and_resumes(tmp_path):
    ready = tmp_path / "outputs" / "logs" / "carphone_pristine.e1.log"
    code, seconds, err = start_and_signal(
        tmp_path, signal.SIGTERM, ready, ["--videos", VIDEO, "--epochs", "3", "--save-replay-buffer", *FAST]
    )
    assert code == 143, err
    assert seconds < 10
    assert procs_in(tmp_path) == []  # the built-in encoder's whole group ended
    # The signal comes 0.3 s after epoch 1's encoder started; a fast encoder may already be in
    # epoch 2 by then. Either way: one interrupted checkpoint, of the epochs completed before.
    [ck_path] = (tmp_path / "checkpoints").glob("checkpoint_interrupted_epoch_*.pt")
    interrupted = int(ck_path.stem.rsplit("_", 1)[1])
    ck = checkpoint.load(ck_path)
    assert interrupted in (1, 2) and ck["epoch"] == interrupted - 1
    assert ck["replay"]["size"] % 4 == 0  # complete GOPs only
    res = run_main(tmp_path, "--videos", VIDEO, "--epochs", str(interrupted), "--load-checkpoint", str(ck_path),
                   "--save-replay-buffer", *FAST)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"resumed from {ck_path}" in res.stderr
    done = checkpoint.load(tmp_path / "checkpoints" / f"checkpoint_epoch_{interrupted}.pt")
    assert done["epoch"] == interrupted and done["replay"]["size"] == ck["replay"]["size"] + 8


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_write_failure_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_epoch_1.pt"
    checkpoint.save(path, {"agent": {"w": torch.ones(3)}, "epoch": 1, "config": {}, "rng": {}, "counters": {}})
    before = path.read_bytes()

    def disk_full(obj, fh):
        fh.write(b"\x80" * 1000)  # part of the file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match=f"cannot write checkpoint {path}: .*No space left"):
        checkpoint.save(path, {"agent": {}, "epoch": 2, "config": {}, "rng": {}, "counters": {}})
    assert path.read_bytes() == before
    assert checkpoint.load(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


def test_unwritable_checkpoint_dir_is_a_clear_error(tmp_path):
    (tmp_path / "ckpt").write_text("a file, not a directory")
    res = run_main(tmp_path, "--encoder", FAKE, *fake_videos(tmp_path, ("ok",)), "--epochs", "1",
                   "--ckpt-dir", "ckpt", *FAST)  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "cannot write checkpoint ckpt/checkpoint_epoch_1.pt" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", b"PK\x03\x04" + b"\x00" * 100])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, content):
    # The truncated real checkpoint case (and nothing overwritten) is in test_main_e2e.py.
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=f"{bad} is not a readable checkpoint"):
        checkpoint.load(bad)
    assert bad.read_bytes() == content


def test_foreign_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(checkpoint.CheckpointError, match="is not a checkpoint of format"):
        checkpoint.load(bad)


def test_a_failed_baseline_leaves_out_only_that_video(tmp_path):
    res = run_main(tmp_path, "--encoder", FAKE, *fake_videos(tmp_path, ("exit_baseline", "ok")), "--epochs", "1", *FAST)
    assert res.returncode == 0, res.stderr
    assert "baseline (Δ=0) encode of exit_baseline failed, so it is left out of this run" in res.stderr
    assert "Traceback" not in res.stderr
    import json

    rows = json.loads((tmp_path / "outputs" / "report_train.json").read_text())
    assert [r["video"] for r in rows] == ["ok"]


def test_baseline_is_keyed_by_the_encoder_command(tmp_path):
    # The same --videos with another encoder command (here the encoder's own --keyint 8, which its
    # first occurrence wins over the video's --keyint 16) is another baseline: found missing, said
    # so, encoded; the first is kept and used again without a new encode.
    import json

    videos = fake_videos(tmp_path, ("ok",))
    res = run_main(tmp_path, "--encoder", FAKE, *videos, "--make-baseline", *FAST)
    assert res.returncode == 0, res.stderr
    path = tmp_path / "outputs" / "baseline_stats.json"
    data = json.loads(path.read_text())
    [(key_a, base_a)] = data["videos"].items()
    video_key = videos[1]  # the video's arguments (it has no outputs)
    assert key_a == f"python|{ROOT / 'tests' / 'fake_encoder.py'}|{video_key}"
    assert base_a["encoder"] == f"python|{ROOT / 'tests' / 'fake_encoder.py'}" and base_a["video"] == video_key
    # An entry as files made before this key had it: under the video's arguments alone.
    data["videos"][video_key] = dict(base_a, encoder="", video="")
    path.write_text(json.dumps(data))

    res = run_main(tmp_path, "--encoder", f"{FAKE} --keyint 8", *videos, "--epochs", "1", *FAST)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "has a Δ=0 baseline of this video made without a record of its encoder" in res.stderr
    assert "has a Δ=0 baseline of this video made with another encoder command (python " in res.stderr
    assert "baseline (Δ=0) encode of ok" in res.stderr
    rows = json.loads((tmp_path / "outputs" / "report_train.json").read_text())
    assert [r["gops"] for r in rows] == [4]  # keyint 8: this encoder's own baseline, not the first one's
    assert len(json.loads(path.read_text())["videos"]) == 3  # both kept (and the old entry)

    res = run_main(tmp_path, "--encoder", FAKE, *videos, "--epochs", "1", *FAST)
    assert res.returncode == 0, res.stderr
    assert "baseline (Δ=0) encode" not in res.stderr and "WARNING" not in res.stderr
