"""End to end through rl_io: the encoder and tests/responder.py as two real processes, real codecs.

Checks that what the feedback says is what the bitstream holds: the decoded frame count, PSNR
recomputed from the decoded frames against the source, the forced QPs (agent QP + the codec's
offsets) in the feedback and the CSV, and the GOP structure (gop_end placement).
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

import protocol
from builtin_encoder import metrics
from builtin_encoder.metrics import psnr_from_mse
from builtin_encoder.source import bundled_clip, open_source

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FRAMES, KEYINT, MINI_GOP = 40, 16, 8  # GOPs of 16, 16, 8 frames; mini-GOPs 0..4
DELTAS = [0, 4, -3, 2]
SESSION = "e2e-session"


def expected_frame_qps(codec: str, qp: int, key_first: bool, count: int) -> tuple[list[int], list[int]]:
    """(frame QPs, temporal layers) the backend prescribes for a mini-GOP at base QP `qp`."""
    if codec == "vp9":
        from builtin_encoder.codec_vp9 import KEY_STEP_RATIO
        from builtin_encoder.vp9_qindex import q_for_level, qstep_level

        key = q_for_level(qstep_level(qp) - 6 * math.log2(KEY_STEP_RATIO))
        return [key if pos == 0 and key_first else qp for pos in range(count)], [0] * count
    if codec == "x264":
        from builtin_encoder.codec_x264 import KEY_QP_OFFSET, QP_MAX, QP_MIN

        qps = [qp + (max(KEY_QP_OFFSET, QP_MIN - qp) if pos == 0 and key_first else 0) for pos in range(count)]
        return [min(max(q, QP_MIN), QP_MAX) for q in qps], [0] * count
    from builtin_encoder import codec_svtav1 as svt

    levels = MINI_GOP.bit_length() - 1
    offsets = svt.layer_qp_offsets(levels, qp)
    layers = [svt.temporal_layer(pos, MINI_GOP) for pos in range(count)]
    qps = [qp + (svt.key_qp_offset(qp, levels) if pos == 0 and key_first else offsets[layers[pos]])
           for pos in range(count)]  # fmt: skip
    return [min(max(q, svt.SvtAv1Codec.qp_min), svt.SvtAv1Codec.qp_max) for q in qps], layers


def decode(path: Path, codec: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Decodes a bitstream with PyAV (FFmpeg's demuxers, libdav1d / h264) into (Y, U, V) planes."""
    fmt = "h264" if codec == "x264" else None
    out = []
    with av.open(str(path), format=fmt) as container:
        for frame in container.decode(video=0):
            planes = []
            for p in frame.planes[:3]:
                a = np.frombuffer(p, dtype=np.uint8).reshape(p.height, p.line_size)[:, : p.width]
                planes.append(a.copy())
            out.append((planes[0], planes[1], planes[2]))
    return out


@pytest.fixture(scope="module", params=["svtav1", "x264", "vp9"])
def encode(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    codec = request.param
    tmp = tmp_path_factory.mktemp(f"e2e_{codec}")
    rl_dir = tmp / "rl_io"
    rl_dir.mkdir()
    # Stale files of an earlier encode: the encoder must remove them, never read them.
    (rl_dir / "mg0000_qp.json").write_text('{"qp": 999}')
    (rl_dir / "mg0003_fb.json").write_text("{}")
    (rl_dir / "end.json").write_text('{"status": "error"}')
    out = tmp / f"out{'.264' if codec == 'x264' else '.ivf'}"
    csv_path, summary = tmp / "frames.csv", tmp / "summary.json"
    enc_cmd = [
        sys.executable, "-m", "builtin_encoder", "--input", str(bundled_clip("carphone_pristine.mp4")),
        "--codec", codec, "--frames", str(FRAMES), "--keyint", str(KEYINT), "--mini-gop", str(MINI_GOP),
        "--bitrate", "150", "--o", str(out), "--csv", str(csv_path), "--summary-json", str(summary),
        "--rl-dir", str(rl_dir), "--rl-session", SESSION, "--rl-timeout", "30",
    ]  # fmt: skip
    encoder = subprocess.Popen(enc_cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The responder starts once the encoder has cleared the directory (it does so before its first
    # request), so the stale end.json above cannot stop the responder early.
    try:
        for _ in range(1200):
            if protocol.request_path(rl_dir, 0).exists() or encoder.poll() is not None:
                break
            time.sleep(0.05)
        resp = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "responder.py"), "--rl-dir", str(rl_dir),
             "--deltas", ",".join(map(str, DELTAS)), "--timeout", "60"],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _, encoder_stderr = encoder.communicate(timeout=120)
        _, resp_stderr = resp.communicate(timeout=30)
    finally:
        if encoder.poll() is None:
            encoder.kill()
    assert encoder.returncode == 0, encoder_stderr
    assert resp.returncode == 0, resp_stderr
    mgs = len(list(rl_dir.glob("mg*_rq.json")))
    return {
        "codec": codec,
        "out": out,
        "csv": csv_path,
        "summary": json.loads(summary.read_text()),
        "requests": [
            protocol.parse_request(protocol.request_path(rl_dir, k).read_text(), Path("rq")) for k in range(mgs)
        ],  # fmt: skip
        "replies": [protocol.parse_reply(protocol.reply_path(rl_dir, k).read_text(), Path("qp")) for k in range(mgs)],
        "feedback": [
            protocol.parse_feedback(protocol.feedback_path(rl_dir, k).read_text(), Path("fb")) for k in range(mgs)
        ],  # fmt: skip
        "end": protocol.parse_end(protocol.end_path(rl_dir).read_text(), Path("end")),
    }


def test_structure_and_gop_end(encode: dict) -> None:
    reqs, fbs, end = encode["requests"], encode["feedback"], encode["end"]
    assert len(reqs) == len(fbs) == 5
    assert [r.gop_index for r in reqs] == [0, 0, 1, 1, 2]
    assert [r.mg_in_gop for r in reqs] == [0, 1, 0, 1, 0]
    assert [r.mgs_in_gop for r in reqs] == [2, 2, 2, 2, 1]
    assert [r.gop_frames for r in reqs] == [16, 16, 16, 16, 8]
    assert [r.first_frame for r in reqs] == [0, 8, 16, 24, 32]
    assert [f.gop_end for f in fbs] == [0, 1, 0, 1, 1]
    assert [f.gop_index for f in fbs] == [0, 0, 1, 1, 2]
    for r in reqs:
        assert r.frame_types == ["KEY" if pos == 0 and r.mg_in_gop == 0 else "INTER" for pos in range(8)]
        assert r.session == SESSION and r.codec == encode["codec"]
        assert r.total_frames == FRAMES and (r.width, r.height) == (176, 144)
        assert r.target_kbps == 150.0 and r.fps == pytest.approx(30000 / 1001)
        assert r.qp_min <= r.base_qp <= r.qp_max
        assert len(r.lookahead_fp_bpp) == min(7, 4 - r.mg_index)
        assert r.fp_bpp > 0
    # Spending bookkeeping: totals are the sum of earlier feedback; GOP spending restarts per GOP.
    for k, r in enumerate(reqs):
        assert r.total_bits_spent == sum(f.bits for f in fbs[:k])
        assert r.gop_bits_spent == sum(f.bits for f in fbs[:k] if f.gop_index == r.gop_index)
    assert end.status == "ok" and end.session == SESSION
    assert (end.mini_gops, end.frames, end.bits) == (5, FRAMES, sum(f.bits for f in fbs))


def test_requests_carry_first_pass_statistics(encode: dict) -> None:
    """v2 fields: the QP scale, and the first-pass analysis of the mini-GOP and its lookahead frames."""
    from builtin_encoder.analysis import Analyzer

    source = list(open_source(bundled_clip("carphone_pristine.mp4")).frames(FRAMES))
    analyzer = Analyzer()
    want = [analyzer.add(f.y) for f in source]
    if encode["codec"] == "vp9":  # libvpx's own first pass, as its external rate control receives it
        want = _libvpx_analysis(source, [w.noise_sigma for w in want])
    for r in encode["requests"]:
        assert r.version == 2 and r.qp_scale_max == r.qp_max
        fp = r.first_pass
        assert fp is not None
        frames = range(r.first_frame, min(r.first_frame + 8 * (1 + len(r.lookahead_fp_bpp)), FRAMES))
        assert len(fp.intra_cost) == len(frames) >= r.frame_count
        for name in ("intra_cost", "inter_cost", "inter_share", "mv_mean", "noise_sigma"):
            assert getattr(fp, name) == pytest.approx([getattr(want[i], name) for i in frames], abs=1e-3)
    first = encode["requests"][0].first_pass
    assert first.inter_cost[0] == first.intra_cost[0]  # frame 0 has no reference
    assert all(inter < intra for inter, intra in zip(first.inter_cost[1:], first.intra_cost[1:], strict=True))


def test_requests_carry_each_frames_propagation_over_its_own_gop(encode: dict) -> None:
    """first_pass.propagation: analysis.propagation over each GOP's frames of the source; VP9 sends none."""
    from builtin_encoder.analysis import frame_blocks, propagation_by_gop

    if encode["codec"] == "vp9":  # libvpx's first pass has no blocks
        assert all(r.first_pass.propagation is None for r in encode["requests"])
        assert '"propagation"' not in protocol.to_json(encode["requests"][0])  # left out, not null
        return
    blocks = frame_blocks(f.y for f in open_source(bundled_clip("carphone_pristine.mp4")).frames(FRAMES))
    want = propagation_by_gop(blocks, KEYINT)
    for r in encode["requests"]:
        got = r.first_pass.propagation
        assert got == pytest.approx(want[r.first_frame : r.first_frame + len(got)], abs=1e-4)
    key = [r.first_pass.propagation[0] for r in encode["requests"] if r.mg_in_gop == 0]
    assert len(key) == 3 and all(p > 1.0 for p in key)  # a talking head: most of the key frame lives on
    assert want[KEYINT - 1] == want[2 * KEYINT - 1] == want[FRAMES - 1] == 0.0  # a GOP's last frame passes nothing on


def _libvpx_analysis(source: list, noise: list[float]) -> list:
    from builtin_encoder.codec import CodecConfig, Measure
    from builtin_encoder.codec_vp9 import Vp9Codec, frame_analysis, libvpx_first_pass
    from builtin_encoder.ratecontrol import CODEC_RC

    cfg = CodecConfig(176, 144, 30000 / 1001, KEYINT, MINI_GOP, CODEC_RC["vp9"].first_pass_preset, 0, Measure.NONE)
    with Vp9Codec(cfg, Path(os.devnull), twopass_stats=libvpx_first_pass(cfg, source)) as codec:
        codec.encode(source[:1], [100], key_first=True)
        return [frame_analysis(f, n) for f, n in zip(codec.first_pass, noise, strict=True)]


def test_agent_qp_is_applied(encode: dict) -> None:
    codec = encode["codec"]
    rows = list(csv.DictReader(encode["csv"].read_text().splitlines()))
    assert len(rows) == FRAMES
    for k, (r, rep, f) in enumerate(zip(encode["requests"], encode["replies"], encode["feedback"], strict=True)):
        assert rep.qp == min(max(r.base_qp + DELTAS[k % len(DELTAS)], r.qp_min), r.qp_max)
        assert f.qp_used == rep.qp
        qps, layers = expected_frame_qps(codec, rep.qp, r.mg_in_gop == 0, r.frame_count)
        assert f.frame_qps == qps
        assert r.temporal_layers == layers
        mine = rows[r.first_frame : r.first_frame + r.frame_count]
        assert [int(x["qp"]) for x in mine] == qps
        assert [int(x["base_qp"]) for x in mine] == [rep.qp] * r.frame_count
        assert [int(x["bits"]) for x in mine] == f.frame_bits
        assert sum(f.frame_bits) == f.bits


def test_decoded_stream_matches_feedback(encode: dict) -> None:
    codec, fbs = encode["codec"], encode["feedback"]
    decoded = decode(encode["out"], codec)
    assert len(decoded) == FRAMES
    source = list(open_source(bundled_clip("carphone_pristine.mp4")).frames(FRAMES))
    for r, f in zip(encode["requests"], fbs, strict=True):
        sse = np.zeros(3)
        frame_psnr = []
        for i in range(r.first_frame, r.first_frame + r.frame_count):
            src = (source[i].y, source[i].u, source[i].v)
            for p in range(3):
                d = src[p].astype(np.int64) - decoded[i][p].astype(np.int64)
                sse[p] += float((d * d).sum())
            dy = source[i].y.astype(np.int64) - decoded[i][0].astype(np.int64)
            frame_psnr.append(psnr_from_mse(float((dy * dy).mean())))
        n = r.frame_count
        mse = [sse[0] / (n * 176 * 144), sse[1] / (n * 88 * 72), sse[2] / (n * 88 * 72)]
        assert psnr_from_mse(mse[0]) == pytest.approx(f.psnr_y, abs=0.05)
        assert psnr_from_mse(mse[1]) == pytest.approx(f.psnr_u, abs=0.05)
        assert psnr_from_mse(mse[2]) == pytest.approx(f.psnr_v, abs=0.05)
        assert f.psnr_y_frame_mean == pytest.approx(np.mean(frame_psnr), abs=0.05)
        assert 0.5 < f.ssim_y <= 1.0
    # The payload bits the feedback reports are the bitstream, less the container's framing.
    bits = sum(f.bits for f in fbs)
    framing = 0 if codec == "x264" else 8 * (32 + 12 * FRAMES)  # IVF: file header + per-frame headers
    assert encode["out"].stat().st_size * 8 == bits + framing
    s = encode["summary"]
    assert s["status"] == "ok" and s["frames"] == FRAMES and s["bits"] == bits


def test_x264_sliced_threads_measure_the_decoded_picture(tmp_path: Path) -> None:
    """Sliced threads: x264's own PSNR/SSIM miss the slice edges' deblocking; the CSV has the decoded picture's."""
    out, csv_path = tmp_path / "t.264", tmp_path / "t.csv"
    cmd = [sys.executable, "-m", "builtin_encoder", "--input", str(bundled_clip("carphone_pristine.mp4")),
           "--codec", "x264", "--frames", "16", "--rc-mode", "0", "--qp", "34", "--threads", "2",
           "--o", str(out), "--csv", str(csv_path), "--quiet"]  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    source = list(open_source(bundled_clip("carphone_pristine.mp4")).frames(16))
    for row, src, dec in zip(rows, source, decode(out, "x264"), strict=True):
        d = src.y.astype(np.int64) - dec[0].astype(np.int64)
        assert psnr_from_mse(float((d * d).mean())) == pytest.approx(float(row["psnr_y"]), abs=0.01)
        assert metrics.x264_ssim(src.y, dec[0]) == pytest.approx(float(row["ssim_y"]), abs=1e-6)  # CSV: 6 decimals
