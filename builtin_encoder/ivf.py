"""IVF files (the container of AV1 and VP9 elementary streams in libaom / libvpx tools)."""

from __future__ import annotations

import math
import struct
from fractions import Fraction
from pathlib import Path


class IvfWriter:
    """Writes an IVF file: 32-byte header ("DKIF", fourcc), then per frame 12 bytes + payload.

    The header's frame count is written again by `close()`, once it is known.
    """

    def __init__(self, path: Path, fourcc: bytes, width: int, height: int, rate: int, scale: int) -> None:
        self.path = Path(path)
        self.frames = 0
        self._fourcc, self._width, self._height, self._rate, self._scale = fourcc, width, height, rate, scale
        self._f = open(self.path, "wb")  # noqa: SIM115 - kept open across calls, closed in close()
        self._f.write(self._header())

    def _header(self) -> bytes:
        # signature, version 0, header size, fourcc, width, height, timebase rate/scale, frames, unused
        return struct.pack(
            "<4sHH4sHHIII4x",
            b"DKIF",
            0,
            32,
            self._fourcc,
            self._width,
            self._height,
            self._rate,
            self._scale,
            self.frames,
        )

    def write_frame(self, data: bytes, pts: int) -> None:
        """Appends one frame (one AV1 temporal unit or VP9 frame) with presentation time `pts` (timebase units)."""
        self._f.write(struct.pack("<IQ", len(data), pts))
        self._f.write(data)
        self.frames += 1

    def tell(self) -> int:
        """The file offset the next frame will be written at."""
        return self._f.tell()

    def truncate(self, offset: int, frames: int) -> None:
        """Cuts the file back to `offset`, where `frames` frames had been written (a `tell()` of then)."""
        self._f.seek(offset)
        self._f.truncate()
        self.frames = frames

    def close(self) -> None:
        """Rewrites the header with the final frame count and closes the file. Idempotent."""
        if self._f.closed:
            return
        self._f.seek(0)
        self._f.write(self._header())
        self._f.close()


def fps_fraction(fps: float) -> Fraction:
    """Frame rate as a small fraction (29.97002997 -> 30000/1001, 25.0 -> 25/1)."""
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be > 0, got {fps}")
    return Fraction(fps).limit_denominator(1001)
