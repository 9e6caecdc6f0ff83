"""Parse the VP9 uncompressed frame header far enough to read ``base_q_idx``.

This follows the VP9 bitstream specification, section 6.2 ``uncompressed_header()``, up to and
including ``quantization_params()``'s ``base_q_idx``; superframes are split as in Annex B. It is a
test helper: it checks what the quantizer an encoder wrote into an IVF file really was, without a
decoder. It keeps no state between frames, so the size of an inter frame that takes its size from a
reference frame is reported as ``None``.

Public API:

- :class:`Vp9FrameHeader` -- the fields read from one frame.
- :func:`parse_frame_header` -- one VP9 frame (not a superframe) to a :class:`Vp9FrameHeader`.
- :func:`split_superframe` -- one packet to the frames it holds (Annex B).
- :func:`parse_packet` -- one packet to the headers of all its frames.
- :func:`read_ivf` -- the frame payloads of an IVF file.
- :func:`base_q_indices` -- ``base_q_idx`` of every shown, newly coded frame of an IVF file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FRAME_MARKER = 2
SYNC_CODE = (0x49, 0x83, 0x42)
REFS_PER_FRAME = 3
REF_FRAMES_LOG2 = 3
REF_FRAMES = 1 << REF_FRAMES_LOG2
FRAME_CONTEXTS_LOG2 = 2
MAX_REF_LF_DELTAS = 4
MAX_MODE_LF_DELTAS = 2
CS_RGB = 7  # color_space value meaning sRGB (4:4:4 only)

IVF_FILE_HEADER_SIZE = 32
IVF_FRAME_HEADER_SIZE = 12


class Vp9HeaderError(ValueError):
    """The data is not a VP9 frame header (or IVF file) this parser can read."""


@dataclass(frozen=True)
class Vp9FrameHeader:
    """The fields of one VP9 uncompressed frame header that the tests look at.

    ``width``/``height`` are set for key frames, intra-only frames and inter frames that code their
    size explicitly (``found_ref`` 0 for all three references); otherwise ``None``. For a
    ``show_existing_frame`` header only ``profile`` and ``show_existing_frame`` carry information:
    ``frame_type`` is "INTER", ``show_frame`` True and ``base_q_idx`` None.
    """

    profile: int
    show_existing_frame: bool
    frame_type: Literal["KEY", "INTER"]
    show_frame: bool
    error_resilient: bool
    intra_only: bool
    width: int | None
    height: int | None
    base_q_idx: int | None
    bit_depth: int = 8
    frame_to_show_map_idx: int | None = None
    refresh_frame_flags: int = 0


class BitReader:
    """Reads a byte string most significant bit first (the spec's ``f(n)`` descriptor)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0  # in bits

    @property
    def bit_position(self) -> int:
        """Bits read so far."""
        return self._pos

    def f(self, n: int) -> int:
        """Read an ``n``-bit unsigned literal."""
        value = 0
        for _ in range(n):
            byte_index = self._pos >> 3
            if byte_index >= len(self._data):
                raise Vp9HeaderError(f"header runs past the end of the {len(self._data)}-byte frame")
            bit = (self._data[byte_index] >> (7 - (self._pos & 7))) & 1
            value = (value << 1) | bit
            self._pos += 1
        return value

    def flag(self) -> bool:
        """Read one bit as a bool."""
        return bool(self.f(1))

    def su(self, n: int) -> int:
        """Read the spec's ``su(n)``: an ``n``-bit magnitude followed by a sign bit."""
        value = self.f(n)
        return -value if self.f(1) else value


def _frame_sync_code(r: BitReader) -> None:
    """``frame_sync_code()``: the three bytes 0x49 0x83 0x42."""
    code = (r.f(8), r.f(8), r.f(8))
    if code != SYNC_CODE:
        raise Vp9HeaderError(f"bad frame sync code {bytes(code).hex()}, expected 498342")


def _color_config(r: BitReader, profile: int) -> int:
    """``color_config()``; returns the bit depth."""
    bit_depth = 8
    if profile >= 2:
        bit_depth = 12 if r.flag() else 10  # ten_or_twelve_bit
    color_space = r.f(3)
    if color_space != CS_RGB:
        r.f(1)  # color_range
        if profile in (1, 3):
            subsampling_x, subsampling_y = r.f(1), r.f(1)
            if subsampling_x == 1 and subsampling_y == 1:
                raise Vp9HeaderError(f"4:2:0 subsampling is not allowed in profile {profile}")
            if r.f(1):
                raise Vp9HeaderError("reserved_zero bit of color_config is set")
    else:
        if profile not in (1, 3):
            raise Vp9HeaderError(f"sRGB (4:4:4) is not allowed in profile {profile}")
        if r.f(1):
            raise Vp9HeaderError("reserved_zero bit of color_config is set")
    return bit_depth


def _frame_size(r: BitReader) -> tuple[int, int]:
    """``frame_size()``: width and height, each coded minus one in 16 bits."""
    width = r.f(16) + 1
    height = r.f(16) + 1
    return width, height


def _render_size(r: BitReader) -> None:
    """``render_size()``: read and drop the optional render size."""
    if r.flag():  # render_and_frame_size_different
        _frame_size(r)


def _frame_size_with_refs(r: BitReader) -> tuple[int | None, int | None]:
    """``frame_size_with_refs()``; the size is ``None`` when it is taken from a reference frame."""
    width: int | None = None
    height: int | None = None
    found_ref = False
    for _ in range(REFS_PER_FRAME):
        found_ref = r.flag()
        if found_ref:
            break
    if not found_ref:
        width, height = _frame_size(r)
    _render_size(r)
    return width, height


def _read_interpolation_filter(r: BitReader) -> None:
    """``read_interpolation_filter()``: switchable, or a 2-bit literal filter type."""
    if not r.flag():  # is_filter_switchable
        r.f(2)  # raw_interpolation_filter


def _loop_filter_params(r: BitReader) -> None:
    """``loop_filter_params()``, including the optional ref / mode delta updates."""
    r.f(6)  # loop_filter_level
    r.f(3)  # loop_filter_sharpness
    if r.flag() and r.flag():  # loop_filter_delta_enabled, loop_filter_delta_update
        for _ in range(MAX_REF_LF_DELTAS):
            if r.flag():  # update_ref_delta
                r.su(6)  # loop_filter_ref_deltas[i]
        for _ in range(MAX_MODE_LF_DELTAS):
            if r.flag():  # update_mode_delta
                r.su(6)  # loop_filter_mode_deltas[i]


def parse_frame_header(frame: bytes) -> Vp9FrameHeader:
    """Parse the uncompressed header of one VP9 frame up to ``base_q_idx``.

    ``frame`` must be a single frame; use :func:`parse_packet` for a packet that may be a
    superframe. Raises :class:`Vp9HeaderError` for data that is not a valid header.
    """
    r = BitReader(frame)
    if r.f(2) != FRAME_MARKER:
        raise Vp9HeaderError("bad frame marker (not a VP9 frame)")
    profile = r.f(1)  # profile_low_bit
    profile |= r.f(1) << 1  # profile_high_bit
    if profile == 3 and r.f(1):
        raise Vp9HeaderError("reserved_zero bit after profile 3 is set")

    if r.flag():  # show_existing_frame
        return Vp9FrameHeader(
            profile=profile,
            show_existing_frame=True,
            frame_type="INTER",
            show_frame=True,
            error_resilient=False,
            intra_only=False,
            width=None,
            height=None,
            base_q_idx=None,
            frame_to_show_map_idx=r.f(3),
        )

    is_inter = r.flag()  # frame_type: 0 = KEY_FRAME, 1 = NON_KEY_FRAME
    show_frame = r.flag()
    error_resilient = r.flag()
    intra_only = False
    bit_depth = 8
    width: int | None = None
    height: int | None = None

    if not is_inter:
        _frame_sync_code(r)
        bit_depth = _color_config(r, profile)
        width, height = _frame_size(r)
        _render_size(r)
        refresh_frame_flags = (1 << REF_FRAMES) - 1
    else:
        intra_only = False if show_frame else r.flag()
        if not error_resilient:
            r.f(2)  # reset_frame_context
        if intra_only:
            _frame_sync_code(r)
            if profile > 0:
                bit_depth = _color_config(r, profile)
            refresh_frame_flags = r.f(REF_FRAMES)
            width, height = _frame_size(r)
            _render_size(r)
        else:
            refresh_frame_flags = r.f(REF_FRAMES)
            for _ in range(REFS_PER_FRAME):
                r.f(REF_FRAMES_LOG2)  # ref_frame_idx[i]
                r.f(1)  # ref_frame_sign_bias[LAST_FRAME + i]
            width, height = _frame_size_with_refs(r)
            r.f(1)  # allow_high_precision_mv
            _read_interpolation_filter(r)

    if not error_resilient:
        r.f(1)  # refresh_frame_context
        r.f(1)  # frame_parallel_decoding_mode
    r.f(FRAME_CONTEXTS_LOG2)  # frame_context_idx
    _loop_filter_params(r)
    base_q_idx = r.f(8)  # first field of quantization_params()

    return Vp9FrameHeader(
        profile=profile,
        show_existing_frame=False,
        frame_type="INTER" if is_inter else "KEY",
        show_frame=show_frame,
        error_resilient=error_resilient,
        intra_only=intra_only,
        width=width,
        height=height,
        base_q_idx=base_q_idx,
        bit_depth=bit_depth,
        refresh_frame_flags=refresh_frame_flags,
    )


def split_superframe(packet: bytes) -> list[bytes]:
    """Split a packet into its frames (VP9 spec Annex B); a plain frame comes back as a list of one.

    A superframe ends with an index: a marker byte ``0b110mmfff``, ``fff + 1`` frame sizes of
    ``mm + 1`` little-endian bytes each, and the same marker byte again. Frames of size 0 are skipped.
    """
    if not packet:
        raise Vp9HeaderError("empty packet")
    marker = packet[-1]
    if marker & 0xE0 != 0xC0:
        return [packet]
    frames = (marker & 0x7) + 1
    size_bytes = ((marker >> 3) & 0x3) + 1
    index_size = 2 + size_bytes * frames
    if len(packet) < index_size or packet[-index_size] != marker:
        # Not a superframe index after all (the spec requires a frame ending in such a byte to be
        # padded, so treat it as a plain frame rather than guess).
        return [packet]
    sizes_at = len(packet) - index_size + 1
    out: list[bytes] = []
    offset = 0
    for i in range(frames):
        start = sizes_at + i * size_bytes
        size = int.from_bytes(packet[start : start + size_bytes], "little")
        if offset + size > len(packet) - index_size:
            raise Vp9HeaderError(f"superframe frame {i} of {size} bytes runs past the index")
        if size:
            out.append(packet[offset : offset + size])
        offset += size
    return out


def parse_packet(packet: bytes) -> list[Vp9FrameHeader]:
    """Parse every frame of one packet (one IVF frame), splitting a superframe if it is one."""
    return [parse_frame_header(frame) for frame in split_superframe(packet)]


def read_ivf(path: str | Path) -> list[bytes]:
    """Return the payload of each frame of an IVF file, in file order."""
    data = Path(path).read_bytes()
    if len(data) < IVF_FILE_HEADER_SIZE or data[:4] != b"DKIF":
        raise Vp9HeaderError(f"{path}: not an IVF file (no DKIF signature)")
    header_size = struct.unpack_from("<H", data, 6)[0] or IVF_FILE_HEADER_SIZE
    frames: list[bytes] = []
    pos = header_size
    while pos < len(data):
        if pos + IVF_FRAME_HEADER_SIZE > len(data):
            raise Vp9HeaderError(f"{path}: truncated frame header at byte {pos}")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += IVF_FRAME_HEADER_SIZE  # 4-byte size, 8-byte pts
        if pos + size > len(data):
            raise Vp9HeaderError(f"{path}: frame at byte {pos} claims {size} bytes, file ends first")
        frames.append(data[pos : pos + size])
        pos += size
    return frames


def base_q_indices(path: str | Path) -> list[int]:
    """``base_q_idx`` of every shown frame of an IVF file, in order.

    Hidden frames (``show_frame`` 0, e.g. alt-ref) and ``show_existing_frame`` headers are skipped.
    """
    out: list[int] = []
    for packet in read_ivf(path):
        for header in parse_packet(packet):
            if header.show_frame and not header.show_existing_frame and header.base_q_idx is not None:
                out.append(header.base_q_idx)
    return out


def decoder_q_indices(path: Path) -> list[tuple[bool, int]]:
    """(key frame, base_q_idx) of each decoded frame, as FFmpeg's VP9 decoder reports them."""
    import av  # only this helper needs PyAV

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"export_side_data": "venc_params"}
        for frame in container.decode(stream):
            params = frame.side_data.get(av.sidedata.sidedata.Type.VIDEO_ENC_PARAMS)
            assert params is not None, "FFmpeg's VP9 decoder exported no encoding parameters"
            out.append((frame.key_frame, params.qp))
    return out
