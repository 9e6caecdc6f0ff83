"""Issue 13: nothing a file can say runs code, and no one else's file reaches rl_io (TESTING.md, SECURITY).

Checkpoints are read with torch.load(weights_only=True): a crafted one runs nothing. The rl_io
directory is private (0700, refused when another user owns it or may write to it), temporaries are
created O_EXCL|O_NOFOLLOW under a random name, and protocol files are read without following links
and only up to protocol.MAX_FILE_BYTES. The encoder-fault versions (a symlinked and an oversized
request in a real run) are in test_faults.py.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import evaluate
import io_runner
import protocol
from builtin_encoder.errors import BadInput, BadReply
from builtin_encoder.session import AgentClient
from encoder_proc import VideoSpec
from inputs import bundled_clip
from io_runner import RlIoChannel
from learners import ZeroDeltaLearner
from protocol import ProtocolError, RlDirError

ROOT = Path(__file__).resolve().parent.parent
CLIP = bundled_clip("carphone_pristine.mp4")
VIDEO = f"--input|{CLIP}|--codec|x264|--frames|32|--keyint|16|--mini-gop|4|--bitrate|150|--o|out/car.264"


def run_main(tmp: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


class RunsCommand:
    """Unpickles into os.system(command): what a crafted checkpoint carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def crafted_checkpoint(tmp: Path) -> tuple[Path, Path]:
    """A checkpoint that, fully unpickled, creates a marker file; returns (checkpoint, marker)."""
    marker = tmp / "pwned"
    path = tmp / "evil.pt"
    payload = {"format": checkpoint.CHECKPOINT_FORMAT, "agent": RunsCommand(f"touch {marker}"), "epoch": 1,
               "config": {}, "rng": {}, "counters": {}, "obs_dim": 0}  # fmt: skip
    torch.save(payload, path)
    return path, marker


def format_1_checkpoint(path: Path) -> None:
    """A checkpoint as this program wrote it before format 2: RNG states as random/numpy return them."""
    payload = {
        "format": 1,
        "agent": {"w": torch.arange(3.0)},
        "replay": None,
        "epoch": 3,
        "counters": {"steps": 5, "gops": 1, "encodes": 1},
        "config": {"seed": 0},
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                "cuda": []},  # fmt: skip
        "run_dir": "",
        "obs_dim": 8,
    }
    torch.save(payload, path)


def draws() -> tuple:
    return (random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.standard_normal()),
            torch.rand(2).tolist())  # fmt: skip


# ----------------------------------------------------------------------------- checkpoints


def test_crafted_checkpoint_runs_nothing_in_main_infer(tmp_path):
    path, marker = crafted_checkpoint(tmp_path)
    res = run_main(tmp_path, "--videos", VIDEO, "--mode", "infer", "--load-checkpoint", str(path))
    assert res.returncode == 2, res.stderr
    assert not marker.exists()
    assert f"{path} is refused: it holds a Python object (posix.system)" in res.stderr
    assert f"python -m checkpoint convert {path} NEW.pt --trust" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "outputs" / "logs").exists()  # no encoder ran


def test_crafted_checkpoint_runs_nothing_in_evaluate_load_agent(tmp_path):
    path, marker = crafted_checkpoint(tmp_path)
    with pytest.raises(checkpoint.UnsafeCheckpointError, match=f"{path} is refused"):
        evaluate.load_agent(path)
    assert not marker.exists()


def test_rng_state_survives_a_safe_load_exactly(tmp_path):
    random.gauss(0, 1)  # leaves a cached gaussian in python's generator
    np.random.standard_normal()  # and possibly one in numpy's
    path = tmp_path / "ck.pt"
    checkpoint.save(path, {"agent": {}, "epoch": 1, "config": {}, "rng": checkpoint.rng_state(), "counters": {}})
    expected = draws()
    loaded = checkpoint.load(path)  # weights_only=True
    assert loaded["format"] == 2
    checkpoint.set_rng_state(loaded["rng"])
    assert draws() == expected


def test_malformed_rng_state_is_a_checkpoint_error():
    with pytest.raises(checkpoint.CheckpointError, match="RNG state is malformed"):
        checkpoint.set_rng_state({"python": {"version": 3, "internal": [1, 2], "gauss_next": None}})


def test_format_1_checkpoint_is_refused_with_the_convert_command(tmp_path):
    old = tmp_path / "old.pt"
    format_1_checkpoint(old)
    with pytest.raises(checkpoint.UnsafeCheckpointError, match=r"convert .*old\.pt NEW\.pt --trust"):
        checkpoint.load(old)


def test_convert_unpickles_only_with_trust(tmp_path, capsys):
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    format_1_checkpoint(old)
    expected = draws()  # format_1_checkpoint saved the RNG states these draws started from
    assert checkpoint.main(["convert", str(old), str(new)]) == 2
    assert "Pass --trust only if" in capsys.readouterr().err
    assert not new.exists()

    assert checkpoint.main(["convert", str(old), str(new), "--trust"]) == 0
    ck = checkpoint.load(new)  # weights_only=True
    assert ck["format"] == 2 and ck["epoch"] == 3 and ck["counters"]["steps"] == 5
    assert torch.equal(ck["agent"]["w"], torch.arange(3.0))
    checkpoint.set_rng_state(ck["rng"])
    assert draws() == expected


def test_convert_without_trust_runs_nothing(tmp_path):
    path, marker = crafted_checkpoint(tmp_path)
    res = subprocess.run([sys.executable, "-m", "checkpoint", "convert", str(path), str(tmp_path / "new.pt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2
    assert "Pass --trust only if" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists() and not (tmp_path / "new.pt").exists()


# ----------------------------------------------------------------------------- the rl_io directory


def test_new_rl_dir_is_private(tmp_path):
    rl = protocol.prepare_rl_dir(tmp_path / "a" / "rl_io")
    assert stat.S_IMODE(rl.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_rl_dir_writable_by_others_is_refused(tmp_path, mode):
    rl = tmp_path / "rl_io"
    rl.mkdir()
    rl.chmod(mode)
    with pytest.raises(RlDirError, match=f"--rl-dir: {rl} is writable by group or others.*chmod 700 {rl}"):
        protocol.prepare_rl_dir(rl)
    with pytest.raises(RlDirError, match="writable by group or others"):
        RlIoChannel(rl, "s", 1.0)


def test_group_writable_rl_dir_is_refused_by_main_before_any_encoder(tmp_path):
    rl = tmp_path / "rl_io"
    rl.mkdir()
    rl.chmod(0o775)
    res = run_main(tmp_path, "--videos", VIDEO, "--rl-dir", "rl_io")
    assert res.returncode == 2, res.stderr
    assert "main.py: error: --rl-dir: rl_io is writable by group or others (mode 0775)" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "outputs" / "logs").exists()  # no encoder ran


def test_group_writable_rl_dir_is_refused_by_evaluate(tmp_path):
    rl = tmp_path / "o" / "rl_io"
    rl.mkdir(parents=True)
    rl.chmod(0o775)
    res = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "oracle", "--inputs", str(CLIP), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert f"evaluate.py: error: --out: {rl} is writable by group or others" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_encode_refuses_a_loose_rl_dir_without_starting_the_encoder(tmp_path):
    rl = tmp_path / "rl_io"
    rl.mkdir()
    rl.chmod(0o775)  # e.g. loosened while main.py runs, after its start-up check
    marker = tmp_path / "started"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    spec = VideoSpec(name="v", args=[])
    res = io_runner.run_encode(spec, command, rl, "s", ZeroDeltaLearner(), None, 4, 0.02, 5.0, tmp_path / "v.log")
    assert not res.ok and "is writable by group or others" in res.message
    assert not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another user needs root (chown)")
def test_rl_dir_of_another_user_is_refused(tmp_path):
    rl = tmp_path / "rl_io"
    rl.mkdir(mode=0o700)
    os.chown(rl, 12345, 12345)
    with pytest.raises(RlDirError, match=f"--rl-dir: {rl} belongs to uid 12345, not to you"):
        protocol.prepare_rl_dir(rl)
    res = run_main(tmp_path, "--videos", VIDEO, "--rl-dir", "rl_io")
    assert res.returncode == 2, res.stderr
    assert "--rl-dir: rl_io belongs to uid 12345" in res.stderr and "Traceback" not in res.stderr
    # The built-in encoder refuses it too (exit 2, bad input) and writes nothing there.
    enc = subprocess.run([sys.executable, "-m", "builtin_encoder", "--input", str(CLIP), "--codec", "x264",
                          "--frames", "8", "--rc-mode", "0", "--qp", "30", "--rl-dir", str(rl)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert enc.returncode == 2, enc.stderr
    assert f"--rl-dir: {rl} belongs to uid 12345" in enc.stderr
    assert list(rl.iterdir()) == []


def test_encoder_refuses_a_group_writable_rl_dir_and_writes_nothing_there(tmp_path):
    rl = tmp_path / "rl_io"
    rl.mkdir()
    rl.chmod(0o777)
    enc = subprocess.run([sys.executable, "-m", "builtin_encoder", "--input", str(CLIP), "--codec", "x264",
                          "--frames", "8", "--rc-mode", "0", "--qp", "30", "--rl-dir", str(rl)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert enc.returncode == 2, enc.stderr
    assert f"--rl-dir: {rl} is writable by group or others" in enc.stderr
    assert list(rl.iterdir()) == []


# ----------------------------------------------------------------------------- writing


def test_write_atomic_does_not_follow_a_link_at_its_temporary_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    rl = protocol.prepare_rl_dir(tmp_path / "rl_io")
    reply = protocol.reply_path(rl, 0)
    monkeypatch.setattr(protocol, "_tmp_suffix", lambda: ".0123456789abcdef.tmp")
    planted = rl / (reply.name + ".0123456789abcdef.tmp")
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        protocol.write_atomic(reply, '{"qp": 30}')
    channel = RlIoChannel(rl, "s", 1.0)  # the agent's own writer, through the same function
    try:
        req = protocol.Request(**{**_REQUEST, "session": "s"})
        with pytest.raises(FileExistsError):
            channel.write_reply(req, 30)
    finally:
        channel.close()
    client = AgentClient(rl, "s", 1.0)  # the encoder's writer: a clean error naming the file
    request = protocol.request_path(rl, 0)
    try:
        (rl / (request.name + ".0123456789abcdef.tmp")).symlink_to(victim)
        with pytest.raises(BadInput, match=f"--rl-dir: cannot write {request}: .*File exists"):
            client.ask(protocol.Request(**_REQUEST))
    finally:
        client.close()
    assert victim.read_text() == "precious"
    assert not reply.exists() and not request.exists()


def test_write_atomic_replaces_a_link_at_the_final_name_not_its_target(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    rl = protocol.prepare_rl_dir(tmp_path / "rl_io")
    reply = protocol.reply_path(rl, 0)
    reply.symlink_to(victim)
    protocol.write_atomic(reply, '{"qp": 30}')
    assert victim.read_text() == "precious"
    assert not reply.is_symlink() and reply.read_text() == '{"qp": 30}'
    assert stat.S_IMODE(reply.stat().st_mode) == 0o600
    assert sorted(p.name for p in rl.iterdir()) == [reply.name]  # no temporary left


def test_temporaries_are_random_and_cleared_with_the_protocol_files(tmp_path):
    a, b = protocol._tmp_suffix(), protocol._tmp_suffix()
    assert a != b and a.endswith(protocol.TMP_SUFFIX)
    for name in ("mg0000_qp.json" + a, "end.json" + b, "mg0001_rq.json.tmp", "mine.json.tmp", "mgnotes.json",
                 "end.json.bak"):  # fmt: skip
        (tmp_path / name).write_text("{}")
    assert protocol.clear_protocol_files(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["end.json.bak", "mgnotes.json", "mine.json.tmp"]


# ----------------------------------------------------------------------------- reading

_REQUEST = dict(
    mg_index=0, gop_index=0, mg_in_gop=0, mgs_in_gop=4, gop_frames=16, first_frame=0, frame_count=4,
    frame_types=["KEY", "INTER", "INTER", "INTER"], temporal_layers=[0, 0, 0, 0], base_qp=30, qp_min=10,
    qp_max=51, fp_bpp=0.1, lookahead_fp_bpp=[], gop_bits_spent=0, gop_bits_budget=80000, total_bits_spent=0,
    total_bits_budget=160000, target_kbps=150.0, fps=30.0, width=176, height=144, total_frames=32,
)  # fmt: skip


def test_symlinked_request_is_refused_naming_it(tmp_path):
    elsewhere = tmp_path / "request.json"
    protocol.write_message(elsewhere, protocol.Request(**_REQUEST))
    rl = protocol.prepare_rl_dir(tmp_path / "rl_io")
    channel = RlIoChannel(rl, "", 1.0)
    try:
        protocol.request_path(rl, 0).symlink_to(elsewhere)
        with pytest.raises(ProtocolError, match=f"{protocol.request_path(rl, 0)}: is a symbolic link, not followed"):
            channel.next_message(0, [], lambda: True)
    finally:
        channel.close()


def test_oversized_request_is_refused_naming_it_without_reading_it(tmp_path, monkeypatch):
    rl = protocol.prepare_rl_dir(tmp_path / "rl_io")
    path = protocol.request_path(rl, 0)
    with open(path, "wb") as fh:  # 1 GiB, sparse: reading it whole would take a GiB of memory
        fh.truncate(1 << 30)
    channel = RlIoChannel(rl, "", 1.0)
    reads: list[int] = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    try:
        with pytest.raises(ProtocolError, match=f"{path}: 1073741824 bytes, over the protocol's limit of 262144"):
            channel.next_message(0, [], lambda: True)
    finally:
        channel.close()
    assert reads == []  # refused on its size (fstat), nothing read


def test_reads_stop_at_the_bound_even_if_the_file_grows(tmp_path, monkeypatch):
    path = tmp_path / "end.json"
    path.write_bytes(b"{}" + b" " * (protocol.MAX_FILE_BYTES + 10))
    # As if the file had been 2 bytes when its size was checked, and grew before it was read.
    small = os.stat_result((stat.S_IFREG | 0o600, 0, 0, 1, 0, 0, 2, 0, 0, 0))
    monkeypatch.setattr(os, "fstat", lambda fd: small)
    with pytest.raises(ProtocolError, match="grew over the protocol's limit"):
        protocol.read_bytes(path)


def test_encoder_refuses_symlinked_and_oversized_replies(tmp_path):
    rl = protocol.prepare_rl_dir(tmp_path / "rl_io")
    target = tmp_path / "reply.json"
    target.write_text('{"qp": 30}')
    for plant, needle in (
        (lambda p: p.symlink_to(target), "is a symbolic link, not followed"),
        (lambda p: p.write_text('{"qp": 30, "pad": "' + "x" * protocol.MAX_FILE_BYTES + '"}'), "over the protocol's"),
    ):
        client = AgentClient(rl, "", 5.0)
        try:
            plant(protocol.reply_path(rl, 0))
            t0 = time.monotonic()
            with pytest.raises(BadReply, match=f"{protocol.reply_path(rl, 0)}: .*{needle}"):
                client.ask(protocol.Request(**_REQUEST))
            assert time.monotonic() - t0 < 4.5  # at once, not at the client's 5 s timeout
        finally:
            client.close()
    assert target.read_text() == '{"qp": 30}'


def test_write_message_refuses_an_oversized_message(tmp_path):
    end = protocol.End(status="error", mini_gops=0, frames=0, bits=0, message="x" * protocol.MAX_FILE_BYTES)
    with pytest.raises(ProtocolError, match="over the limit of 262144"):
        protocol.write_message(tmp_path / "end.json", end)
    assert list(tmp_path.iterdir()) == []
