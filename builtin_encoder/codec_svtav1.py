"""SVT-AV1 backend: drives the SVT-AV1 4.1 encoder library bundled in the PyAV wheel via ctypes.

The library is `av.libs/libSvtAv1Enc-*.so.4.1.0` next to the `av` package. Its structures are
declared here from the facts of SVT-AV1 v4.1.0's public headers (`Source/API/EbSvtAv1.h`,
`EbSvtAv1Enc.h`); they do NOT match older releases (1.x: `svt_av1_enc_init_handle` took an
extra argument, `EbBufferHeaderType` had fewer fields), hence the strict version check.

How the encode is set up (all through `svt_av1_enc_parse_parameter`, by name):

- low-delay prediction (`pred-struct=1`): frames are coded in display order, each mini-GOP of
  `cfg.mini_gop` = 2^L frames is a hierarchy of L+1 temporal layers (`hierarchical-levels=L`);
- constant QP, no rate control, no adaptive quantisation (`rc=cqp`, i.e. aq-mode 0), and the
  frame QP taken from each input buffer header (`use-q-file=1`, field `EbBufferHeaderType.qp`):
  the library maps it to `base_q_idx = quantizer_to_qindex[qp]` (4*qp, but 62 -> 249 and
  63 -> 255) and applies no offset of its own;
- key frames only where the caller asks (`key_first`): the header's `pic_type` is set to
  EB_AV1_KEY_PICTURE, which makes an IDR key frame with `irefresh-type=kf`; periodic intra
  (`keyint=-1`), scene-change detection (`scd=0`) and dynamic mini-GOPs (`enable-dg=0`) are off,
  so the GOP and mini-GOP structure is exactly the caller's;
- no `enable-stat-report`: the SSE SVT reports with it is NOT always the SSE of the decoded
  picture (measured on carphone: for about a third of the top-layer, non-reference frames it
  was 1-8 % higher than the decoder's), so the distortion is measured on the decoder's output.

In low-delay mode `svt_av1_enc_get_packet` BLOCKS until a packet is ready (it ignores its
"non-blocking" mode), and `svt_av1_enc_send_picture` blocks too once the small input pool is
full (a low-delay pool may hold a single picture). So `encode` keeps exactly one frame in
flight: send frame i, wait for its packet, send frame i+1, measure frame i while SVT codes
frame i+1. Sending a whole mini-GOP first deadlocks; polling for "no packet yet" hangs.

Threads and stalls. As root, SVT-AV1 4.1 makes its threads SCHED_FIFO 99; they would then run
ahead of everything on the machine (the agent, a second encode). The backend moves them back to the
normal scheduler after init (`threads_to_normal_priority`), where every non-root user runs them: as
fast alone, once get_packet runs on a caller thread of its own (BENCHMARKS.md §3.9). At normal priority
SVT-AV1 4.1 sometimes deadlocks inside `svt_av1_enc_get_packet`: every SVT thread waits on a futex
and the packet never comes, far more often when one thread makes both the send_picture and the
get_packet calls (§3.8, §3.10). So each call runs in a caller thread of its own, send_picture in one,
get_packet in another, while the encoding thread watches the process: a call not returned, no CPU
used and no thread runnable for STALL_SECONDS is a stall. The stalled encoder is abandoned and, with
forced QPs, the current GOP is coded again from its IDR key frame by a fresh encoder (a key frame's
send that stalls is just sent to a fresh encoder); every packet already written must come out byte
for byte the same (a GOP from its key is independent of what came before). With SVT's own rate
control (`crf`, `bitrate_kbps`) a GOP cannot be replayed and the stall is raised (SvtAv1Stalled).

Distortion (SSE of Y, U, V and the Gaussian SSIM-Y of `metrics`, the definitions every backend
reports) is computed on the decoder's output: each packet is decoded in-process with libdav1d
(PyAV), exact by construction, ~1 ms per 640x272 frame; SSIM-Y costs ~3-5 ms more. The
measurement of frame i runs while SVT's threads code frame i+1. `CodecConfig.measure` limits it
(a first pass measures nothing and decodes nothing).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import math
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import av
import numpy as np

from builtin_encoder import metrics
from builtin_encoder.codec import CodecConfig, CodecStall, FrameStats, Measure, YuvFrame, decoded_plane
from builtin_encoder.ivf import IvfWriter, fps_fraction
from builtin_encoder.watchdog import CallerThread, threads_to_normal_priority, wait_unless_stalled

SUPPORTED_VERSION = (4, 1)  # major, minor of the SVT-AV1 library these ctypes declarations describe
REFERENCE_BASE_QP = 35  # base QP at which layer_qp_offsets() is evaluated when none is given
STALL_SECONDS = 5.0  # no packet, no CPU used and no thread runnable this long: SVT-AV1 has deadlocked
REPLAYS_MAX = 3  # fresh encoders tried for one frame before the stall is raised

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- library ABI (v4.1)

EB_ERROR_NONE = 0
EB_NO_ERROR_EMPTY_QUEUE = -2147475405  # (int32_t)0x80002033
EB_BUFFERFLAG_EOS = 0x00000001
EB_BUFFERFLAG_ERROR_MASK = 0xFFFFFFF0  # any of these bits in an output packet's flags = encoder error

EB_AV1_INTER_PICTURE = 0
EB_AV1_KEY_PICTURE = 3
EB_AV1_INVALID_PICTURE = 0xFF  # "let the encoder decide" for input pictures

# The configuration structure (EbSvtAv1EncConfiguration) is never declared field by field: it is
# an opaque zeroed buffer that `svt_av1_enc_init_handle` fills with defaults and that is then
# edited by parameter name. 4.1's structure is about 1 KiB; 16 KiB leaves room for any growth
# and lets us check that the library wrote nothing near the end.
CONFIG_BUFFER_BYTES = 16384
CONFIG_GUARD_BYTES = 4096  # trailing bytes that must still be zero after init_handle

# SVT-AV1's own mapping from level of parallelism (lp 1..6) to core counts: the largest core
# count of each level (enc_handle.c, PARALLEL_LEVEL_n_RANGE). Used to turn cfg.threads into lp.
_LP_MAX_CORES = (1, 2, 5, 11, 23)


class _BufferHeader(ctypes.Structure):
    """EbBufferHeaderType of SVT-AV1 4.1 (144 bytes on LP64); input pictures and output packets."""

    _fields_ = [
        ("size", ctypes.c_uint32),  # sizeof(EbBufferHeaderType)
        ("p_buffer", ctypes.c_void_p),  # input: EbSvtIOFormat*; output: the coded bytes
        ("n_filled_len", ctypes.c_uint32),  # bytes in p_buffer
        ("n_alloc_len", ctypes.c_uint32),
        ("p_app_private", ctypes.c_void_p),
        ("wrapper_ptr", ctypes.c_void_p),
        ("n_tick_count", ctypes.c_uint32),
        ("dts", ctypes.c_int64),
        ("pts", ctypes.c_int64),
        ("temporal_layer_index", ctypes.c_uint8),
        ("qp", ctypes.c_uint32),  # input: forced QP (use-q-file); output: QP used (0..63)
        ("avg_qp", ctypes.c_uint32),  # output: mean superblock QP
        ("pic_type", ctypes.c_int),  # EbAv1PictureType
        ("luma_sse", ctypes.c_uint64),  # output, with enable-stat-report (not exact: unused)
        ("cr_sse", ctypes.c_uint64),
        ("cb_sse", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),  # EB_BUFFERFLAG_*
        ("luma_ssim", ctypes.c_double),  # output, with enable-stat-report (8x8-window SSIM)
        ("cr_ssim", ctypes.c_double),
        ("cb_ssim", ctypes.c_double),
        ("metadata", ctypes.c_void_p),  # struct SvtMetadataArray*
    ]


class _IoFormat(ctypes.Structure):
    """EbSvtIOFormat: the three planes of one input picture; strides in samples."""

    _fields_ = [
        ("luma", ctypes.c_void_p),
        ("cb", ctypes.c_void_p),
        ("cr", ctypes.c_void_p),
        ("y_stride", ctypes.c_uint32),
        ("cr_stride", ctypes.c_uint32),
        ("cb_stride", ctypes.c_uint32),
    ]


if ctypes.sizeof(ctypes.c_void_p) == 8:
    assert ctypes.sizeof(_BufferHeader) == 144, "EbBufferHeaderType layout does not match SVT-AV1 4.1"


class SvtAv1Error(RuntimeError):
    """The SVT-AV1 library is missing, of the wrong version, or reported an error."""


class SvtAv1Stalled(SvtAv1Error, CodecStall):
    """svt_av1_enc_get_packet gave nothing for STALL_SECONDS while the process sat idle (SVT-AV1 4.1's deadlock)."""


# ----------------------------------------------------------------------------- loading

_LOG_LEVEL_NAMES = {0: "fatal", 1: "error", 2: "warn", 3: "info", 4: "debug"}
_LOG_CALLBACK_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p
)


class _SvtLog:
    """Receives SVT-AV1's log messages (all encoder instances, all library threads).

    Errors and warnings are remembered, so that a failing call can quote them; errors are also
    printed to stderr. Warnings (SVT prints several harmless ones per encoder) and the info banner
    are not printed unless the environment variable SVT_LOG (SVT's own: -1 all .. 4 debug)
    raises the threshold.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recent: list[str] = []  # last error/warning messages, oldest first
        try:
            self.print_level = int(os.environ.get("SVT_LOG", "1"))
        except ValueError:
            self.print_level = 1
        self._vsnprintf = None
        if sys.platform.startswith("linux") and os.uname().machine in ("x86_64", "AMD64"):
            # On x86-64 a va_list argument is passed as a pointer, so it can be handed to
            # vsnprintf as received. Elsewhere the raw format string is kept.
            libc = ctypes.CDLL(None)
            self._vsnprintf = libc.vsnprintf
            self._vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
            self._vsnprintf.restype = ctypes.c_int
        self.callback = _LOG_CALLBACK_TYPE(self._on_message)

    def _on_message(self, _ctx: int | None, level: int, tag: bytes | None, fmt: bytes | None, args: int | None) -> None:
        if fmt is None:
            return
        if level > max(self.print_level, 2):
            return  # cheap exit for the info banner: not formatted at all
        if self._vsnprintf is not None and args is not None:
            buf = ctypes.create_string_buffer(1024)
            self._vsnprintf(buf, len(buf), fmt, args)
            text = buf.value.decode("utf-8", "replace")
        else:
            text = fmt.decode("utf-8", "replace")
        text = text.rstrip()
        line = f"svt-av1 {_LOG_LEVEL_NAMES.get(level, str(level))}: {text}"
        if level <= 2:
            with self.lock:
                self.recent = (self.recent + [line])[-20:]
        if level <= self.print_level:
            print(line, file=sys.stderr, flush=True)

    def take_recent(self) -> list[str]:
        with self.lock:
            out, self.recent = self.recent, []
        return out


_lib: ctypes.CDLL | None = None
_lib_path: Path | None = None
_log: _SvtLog | None = None
_lib_lock = threading.Lock()


def find_svt_library() -> Path:
    """Path of the SVT-AV1 encoder library inside the installed PyAV wheel (`av.libs/`)."""
    spec = importlib.util.find_spec("av")
    if spec is None or spec.origin is None:
        raise SvtAv1Error("the PyAV package (av) is not installed; its wheel ships the SVT-AV1 library")
    libs_dir = Path(spec.origin).resolve().parent.parent / "av.libs"
    found = sorted(libs_dir.glob("libSvtAv1Enc*.so*"))
    if not found:
        raise SvtAv1Error(f"no libSvtAv1Enc*.so* in {libs_dir} (PyAV wheel without SVT-AV1?)")
    return found[-1]


def check_svt_version(version: str, lib_path: Path | str) -> tuple[int, int, int]:
    """Parses SVT's version string ("v4.1.0", "v4.1.0-12-gabcdef") and refuses anything but 4.1.x.

    Returns (major, minor, patch). Raises SvtAv1Error naming the library and the version found:
    the ctypes declarations of this module describe 4.1's ABI only.
    """
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", version.strip())
    if m is None:
        raise SvtAv1Error(f"{lib_path}: cannot parse the SVT-AV1 version string {version!r}; need v4.1.x")
    major, minor, patch = (int(g) for g in m.groups())
    if (major, minor) != SUPPORTED_VERSION:
        want = ".".join(str(v) for v in SUPPORTED_VERSION)
        raise SvtAv1Error(
            f"{lib_path}: SVT-AV1 library version {version!r} is not supported; this backend is written for "
            f"v{want}.x (its structure layouts and function signatures differ between releases)"
        )
    return major, minor, patch


def load_svt_library() -> tuple[ctypes.CDLL, Path]:
    """Loads (once per process) and version-checks the bundled SVT-AV1 library; declares its functions."""
    global _lib, _lib_path, _log
    with _lib_lock:
        if _lib is not None and _lib_path is not None:
            return _lib, _lib_path
        path = find_svt_library()
        lib = ctypes.CDLL(str(path))
        lib.svt_av1_get_version.restype = ctypes.c_char_p
        lib.svt_av1_get_version.argtypes = []
        version = (lib.svt_av1_get_version() or b"").decode("ascii", "replace")
        check_svt_version(version, path)

        c_handle = ctypes.c_void_p  # EbComponentType*
        lib.svt_av1_set_log_callback.argtypes = [_LOG_CALLBACK_TYPE, ctypes.c_void_p]
        lib.svt_av1_set_log_callback.restype = None
        lib.svt_av1_enc_init_handle.argtypes = [ctypes.POINTER(c_handle), ctypes.c_void_p]
        lib.svt_av1_enc_init_handle.restype = ctypes.c_int
        lib.svt_av1_enc_parse_parameter.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        lib.svt_av1_enc_parse_parameter.restype = ctypes.c_int
        lib.svt_av1_enc_set_parameter.argtypes = [c_handle, ctypes.c_void_p]
        lib.svt_av1_enc_set_parameter.restype = ctypes.c_int
        lib.svt_av1_enc_init.argtypes = [c_handle]
        lib.svt_av1_enc_init.restype = ctypes.c_int
        lib.svt_av1_enc_send_picture.argtypes = [c_handle, ctypes.POINTER(_BufferHeader)]
        lib.svt_av1_enc_send_picture.restype = ctypes.c_int
        lib.svt_av1_enc_get_packet.argtypes = [c_handle, ctypes.POINTER(ctypes.POINTER(_BufferHeader)), ctypes.c_uint8]
        lib.svt_av1_enc_get_packet.restype = ctypes.c_int
        lib.svt_av1_enc_release_out_buffer.argtypes = [ctypes.POINTER(ctypes.POINTER(_BufferHeader))]
        lib.svt_av1_enc_release_out_buffer.restype = None
        lib.svt_av1_enc_deinit.argtypes = [c_handle]
        lib.svt_av1_enc_deinit.restype = ctypes.c_int
        lib.svt_av1_enc_deinit_handle.argtypes = [c_handle]
        lib.svt_av1_enc_deinit_handle.restype = ctypes.c_int

        # The log callback is process-wide and must be installed before the first init_handle.
        _log = _SvtLog()
        lib.svt_av1_set_log_callback(_log.callback, None)
        _lib, _lib_path = lib, path
        return lib, path


def _input_header() -> _BufferHeader:
    """An input header for one frame."""
    hdr = _BufferHeader()
    hdr.size = ctypes.sizeof(_BufferHeader)
    return hdr


def _eos_header() -> _BufferHeader:
    """The input header that ends a stream."""
    eos = _BufferHeader()
    eos.size = ctypes.sizeof(_BufferHeader)
    eos.flags = EB_BUFFERFLAG_EOS
    eos.pic_type = EB_AV1_INVALID_PICTURE
    return eos


@dataclass
class _GopLog:
    """What was sent since the last key frame, so that a fresh encoder can code the GOP again.

    frames[k] = (frame, qp, pts) in send order; packets[k] the bytes frame k came out as (one fewer
    than frames while a frame is in flight); ivf_offset / ivf_frames: the IVF file at the key frame.
    """

    ivf_offset: int
    ivf_frames: int
    frames: list[tuple[YuvFrame, int, int]] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)


def _error_text(code: int) -> str:
    return f"0x{code & 0xFFFFFFFF:08X}"


# ----------------------------------------------------------------------------- IVF output


# ----------------------------------------------------------------------------- the backend


def _lp_for_threads(threads: int) -> int:
    """SVT level of parallelism (1..6) that SVT itself would pick for `threads` cores; 0 = auto."""
    if threads <= 0:
        return 0
    for lp, max_cores in enumerate(_LP_MAX_CORES, start=1):
        if threads <= max_cores:
            return lp
    return 6


class SvtAv1Codec:
    """One continuous SVT-AV1 encode to an IVF file, frame QPs forced by the caller.

    Use as a context manager or call `close()`. Keywords for baselines and measurements only:
    `crf` makes SVT's own CRF mode choose every frame's QP; `bitrate_kbps` makes SVT's own rate
    control choose them for that target (CBR: SVT 4.1 refuses VBR in low delay and runs CBR only
    with aq-mode 2; `tbr` is in kbit/s). In both, the `qps` passed to `encode` are ignored and
    FrameStats.qp is the frame QP SVT used.
    """

    name = "svtav1"
    # QP 0 would be qindex 0, which SVT codes as a stream libdav1d rejects ("Invalid data") unless
    # its lossless mode is on; 1..63 are all valid.
    qp_min = 1
    qp_max = 63
    bitstream_ext = ".ivf"

    def __init__(
        self, cfg: CodecConfig, out_path: Path, *, crf: int | None = None, bitrate_kbps: float | None = None
    ) -> None:
        _validate_config(cfg)
        if crf is not None and bitrate_kbps is not None:
            raise ValueError("give crf or bitrate_kbps, not both")
        if crf is not None and not 1 <= crf <= 63:
            raise ValueError(f"SVT-AV1 crf must be in 1..63, got {crf}")
        if bitrate_kbps is not None and not bitrate_kbps > 0:
            raise ValueError(f"bitrate_kbps must be > 0, got {bitrate_kbps}")
        self.cfg = cfg
        self.out_path = Path(out_path)
        self.crf = crf
        self.bitrate_kbps = bitrate_kbps
        # True when SVT chooses the frame QPs itself (the QPs given to encode() are ignored).
        self.codec_rc = crf is not None or bitrate_kbps is not None
        self.levels = cfg.mini_gop.bit_length() - 1  # mini_gop = 2^levels
        self._lib, self._lib_path = load_svt_library()
        self._handle = ctypes.c_void_p()  # EbComponentType*, set by init_handle
        self._initialized = False  # svt_av1_enc_init succeeded (deinit needed)
        self._ivf: IvfWriter | None = None
        self._closed = False
        self._frames_sent = 0
        # Run send_picture and get_packet, so that this thread can watch them: two threads, as SVT-AV1 4.1 deadlocks
        # far more often when one thread makes both calls (BENCHMARKS.md §3.10).
        self._sender: CallerThread | None = None
        self._getter: CallerThread | None = None
        # The current GOP, for a replay after a stall; never kept when SVT's own rate control runs.
        self._gop: _GopLog | None = None
        self.replays = 0  # fresh encoders started after a stall (each codes the GOP in flight again, if any)

        try:
            self._start_encoder()
            fps = fps_fraction(cfg.fps)
            # IVF timebase = 1/fps, so the pts of a frame is its display index.
            self._ivf = IvfWriter(self.out_path, b"AV01", cfg.width, cfg.height, fps.numerator, fps.denominator)
        except BaseException:
            self._free()
            raise
        # The reference decoder: one frame in, one frame out (no frame-threading delay), one
        # thread (a 640x272 frame decodes in < 1 ms; more threads only compete with SVT's).
        # None when nothing is measured (cfg.measure NONE): the packets are then not decoded.
        self._decoder: av.CodecContext | None = None
        if cfg.measure > Measure.NONE:
            self._decoder = av.CodecContext.create("libdav1d", "r")
            self._decoder.options = {"max_frame_delay": "1", "threads": "1"}

    def _start_encoder(self) -> None:
        """A new SVT encoder instance (handle, parameters, init), its threads on the normal scheduler."""
        self._handle = ctypes.c_void_p()
        self._config = ctypes.create_string_buffer(CONFIG_BUFFER_BYTES)
        code = self._lib.svt_av1_enc_init_handle(ctypes.byref(self._handle), self._config)
        self._check(code, "svt_av1_enc_init_handle")
        if any(self._config.raw[-CONFIG_GUARD_BYTES:]):
            raise SvtAv1Error(f"{self._lib_path}: the configuration structure is larger than expected (not 4.1?)")
        for name, value in self._parameters().items():
            self._set(name, value)
        self._check(self._lib.svt_av1_enc_set_parameter(self._handle, self._config), "svt_av1_enc_set_parameter")
        self._check(self._lib.svt_av1_enc_init(self._handle), "svt_av1_enc_init")
        self._initialized = True
        threads_to_normal_priority()  # init made its threads and the caller real-time where it may
        # After the line above: they take this thread's scheduling policy.
        self._sender, self._getter = CallerThread("svt-send-picture"), CallerThread("svt-get-packet")

    # ------------------------------------------------------------------ configuration

    def _parameters(self) -> dict[str, str]:
        """SVT parameters by name (the names of SvtAv1EncApp's --svtav1-params)."""
        cfg = self.cfg
        fps = fps_fraction(cfg.fps)
        params = {
            "preset": str(cfg.preset),
            "width": str(cfg.width),
            "height": str(cfg.height),
            "fps-num": str(fps.numerator),
            "fps-denom": str(fps.denominator),
            "input-depth": "8",
            "color-format": "420",
            "pred-struct": "1",  # low delay
            "hierarchical-levels": str(self.levels),
            # Key frames come from the caller (pic_type), nowhere else.
            "keyint": "-1",
            "irefresh-type": "kf",  # a forced key frame is an IDR key frame (needed for pic_type to act)
            "scd": "0",
            "enable-dg": "0",
        }
        if self.bitrate_kbps is not None:
            # SVT 4.1: low delay allows CBR (rc=2) only, and CBR needs aq-mode 2. tbr in kbit/s.
            params.update({"rc": "2", "tbr": str(max(1, round(self.bitrate_kbps))), "aq-mode": "2"})
        elif self.crf is not None:
            params.update({"rc": "crf", "crf": str(self.crf)})
        else:
            # "qp" is only the sequence default; use-q-file makes every frame take the header's QP.
            params.update({"rc": "cqp", "qp": "32", "use-q-file": "1"})
        lp = _lp_for_threads(cfg.threads)
        if lp:
            params["lp"] = str(lp)
        return params

    def _set(self, name: str, value: str) -> None:
        code = self._lib.svt_av1_enc_parse_parameter(self._config, name.encode(), value.encode())
        if code != EB_ERROR_NONE:
            raise SvtAv1Error(
                f"SVT-AV1 rejected parameter {name}={value!r} (error {_error_text(code)})" + self._recent_log()
            )

    def _check(self, code: int, what: str) -> None:
        if code != EB_ERROR_NONE:
            raise SvtAv1Error(f"{what} failed with error {_error_text(code)}" + self._recent_log())

    @staticmethod
    def _recent_log() -> str:
        lines = _log.take_recent() if _log is not None else []
        return ("; SVT says: " + " | ".join(lines)) if lines else ""

    # ------------------------------------------------------------------ Codec protocol

    def layer_qp_offsets(self, base_qp: int = REFERENCE_BASE_QP) -> list[int]:
        """QP offset (<= 0) of each temporal layer (index = layer 0..levels) relative to the base QP.

        SVT's offsets depend on the base QP (small at low QPs); without `base_qp` they are those
        at REFERENCE_BASE_QP (35). Frame QP = clamp(base + offset, qp_min, qp_max).
        """
        return layer_qp_offsets(self.levels, base_qp)

    def key_qp_offset(self, base_qp: int) -> int:
        """QP offset (<= 0) of a key frame relative to the mini-GOP's base QP `base_qp`."""
        return key_qp_offset(base_qp, self.levels)

    def temporal_layer(self, pos_in_minigop: int) -> int:
        """Temporal layer of the frame at position `pos_in_minigop` (0-based) of a mini-GOP."""
        return temporal_layer(pos_in_minigop, self.cfg.mini_gop)

    def encode(self, frames: list[YuvFrame], qps: list[int], key_first: bool) -> list[FrameStats]:
        """Codes `frames` (display order) at QPs `qps`; returns one FrameStats per frame, display order.

        Returns once every frame's packet is in the IVF file (low delay: one packet per frame).
        """
        if self._closed:
            raise SvtAv1Error("encode() after close()")
        if len(frames) != len(qps):
            raise ValueError(f"{len(frames)} frames but {len(qps)} QPs")
        if not self.codec_rc:
            for q in qps:
                if not self.qp_min <= q <= self.qp_max:
                    raise ValueError(f"QP {q} outside [{self.qp_min}, {self.qp_max}]")
        if not frames:
            return []
        first = self._frames_sent
        # Strictly one frame in flight: in low delay SVT's input pool may hold a single picture
        # (send_picture blocks while it is full) and get_packet blocks until the frame is coded.
        # The next frame is sent before the current one is measured, so that SVT's threads
        # code frame i+1 while this thread decodes and measures frame i.
        self._send_or_replay(frames[0], qps[0], key=key_first)
        stats: list[FrameStats] = []
        for i, frame in enumerate(frames):
            index = first + i
            hdr, data = self._receive_or_replay(index, None if self.codec_rc else qps[i])
            if i + 1 < len(frames):
                self._send_or_replay(frames[i + 1], qps[i + 1], key=False)
            stats.append(self._frame_stats(index, frame, hdr, data))
        return stats

    def close(self) -> None:
        """Sends end-of-stream, drains the encoder, frees it, finishes the IVF file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._initialized:  # abandoned after a stall it could not recover from: nothing to drain
            self._free()
            return
        try:
            eos = _eos_header()
            self._check(self._watched(lambda handle: self._call_send_picture(handle, eos), "took no end of stream",
                                      getter=False),
                        "send end-of-stream")  # fmt: skip
            while (got := self._get_packet(pic_send_done=True)) is not None:
                hdr, data = got
                if data and self._ivf is not None:
                    # encode() collected every frame; anything more would still belong to the stream.
                    self._ivf.write_frame(data, hdr.pts)
                if hdr.flags & EB_BUFFERFLAG_EOS:
                    break
        except SvtAv1Stalled:
            # encode() received every frame's packet: the stream is whole without the end-of-stream one.
            logger.warning("SVT-AV1 stalled at end of stream of %s; the encoder was left, the file is complete",
                           self.out_path)  # fmt: skip
        finally:
            self._free()

    def _free(self) -> None:
        """Frees the encoder (whatever stage it reached) and closes the IVF file."""
        self._stop_callers()
        if self._initialized:
            self._lib.svt_av1_enc_deinit(self._handle)
            self._initialized = False
        if self._handle:
            self._lib.svt_av1_enc_deinit_handle(self._handle)
            self._handle = ctypes.c_void_p()
        if self._ivf is not None:
            self._ivf.close()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _send(self, frame: YuvFrame, qp: int, key: bool, pts: int | None = None) -> None:
        """Sends one frame; `pts` only for a frame coded again after a stall (it was counted when first sent)."""
        cfg = self.cfg
        cw, ch = cfg.width // 2, cfg.height // 2
        for plane, shape in ((frame.y, (cfg.height, cfg.width)), (frame.u, (ch, cw)), (frame.v, (ch, cw))):
            if plane.shape != shape or plane.dtype != np.uint8 or plane.strides[1] != 1:
                raise ValueError(
                    f"plane of shape {plane.shape}, {plane.dtype}, strides {plane.strides}: want {shape} uint8 rows"
                )
        # A header and a plane descriptor of its own per frame: a send abandoned after a stall may still read them.
        io, hdr = _IoFormat(), _input_header()
        hdr.n_filled_len = cfg.width * cfg.height + 2 * cw * ch
        hdr.n_alloc_len = hdr.n_filled_len
        replayed = pts is not None
        pts = self._frames_sent if pts is None else pts
        hdr.pts = pts
        hdr.flags = 0
        hdr.qp = qp
        hdr.pic_type = EB_AV1_KEY_PICTURE if key else EB_AV1_INVALID_PICTURE
        if not self._initialized:
            raise SvtAv1Error("the encoder was left after a stall it could not recover from")

        def send(handle: ctypes.c_void_p) -> int:
            # SVT reads the planes through these pointers and copies them before send_picture returns, so the
            # numpy buffers are used in place (no copy on our side). The pointers are set here, so that the call
            # holds the frame and the structures as long as it runs: an abandoned one (a stall) may read them later.
            io.luma, io.cb, io.cr = frame.y.ctypes.data, frame.u.ctypes.data, frame.v.ctypes.data
            io.y_stride, io.cb_stride, io.cr_stride = frame.y.strides[0], frame.u.strides[0], frame.v.strides[0]
            hdr.p_buffer = ctypes.addressof(io)
            return self._call_send_picture(handle, hdr)

        self._check(self._watched(send, f"took no frame {pts}", getter=False), "svt_av1_enc_send_picture")
        if not self.codec_rc:
            if key:
                assert self._ivf is not None
                self._gop = _GopLog(self._ivf.tell(), self._ivf.frames)
            if self._gop is not None:
                self._gop.frames.append((frame, qp, pts))
        if not replayed:
            self._frames_sent += 1

    def _call_send_picture(self, handle: ctypes.c_void_p, hdr: _BufferHeader) -> int:
        """svt_av1_enc_send_picture itself (blocks while the input pool is full; ctypes releases the GIL meanwhile)."""
        return self._lib.svt_av1_enc_send_picture(handle, ctypes.byref(hdr))

    def _call_get_packet(self, handle: ctypes.c_void_p, out: Any, pic_send_done: bool) -> int:
        """svt_av1_enc_get_packet itself (blocking in low delay; ctypes releases the GIL meanwhile)."""
        return self._lib.svt_av1_enc_get_packet(handle, ctypes.byref(out), 1 if pic_send_done else 0)

    def _stop_callers(self) -> None:
        for thread in (self._sender, self._getter):
            if thread is not None:
                thread.stop()
        self._sender = self._getter = None

    def _watched(self, call: Callable[[ctypes.c_void_p], int], what: str, getter: bool,
                 release: Callable[[int], None] = lambda code: None) -> int:  # fmt: skip
        """Runs `call(handle)`, a library call that may block, in the encoder's getter thread (get_packet) or sender
        thread (send_picture); returns its code.

        This thread watches it (wait_unless_stalled). If the process sits idle for STALL_SECONDS the
        encoder instance is abandoned (freeing it would block too: the caller thread frees it if the call
        ever returns, after `release(code)`) and SvtAv1Stalled is raised, saying `what` never happened.
        """
        handle, lib = self._handle, self._lib
        result: list[int] = []
        abandoned = threading.Event()
        done = threading.Event()

        def job() -> None:
            result.append(call(handle))
            done.set()
            if abandoned.is_set():  # nobody waits for this instance any more: free it here
                release(result[0])
                lib.svt_av1_enc_send_picture(handle, ctypes.byref(_eos_header()))  # SVT wants it before deinit
                lib.svt_av1_enc_deinit(handle)
                lib.svt_av1_enc_deinit_handle(handle)

        thread = self._getter if getter else self._sender
        assert thread is not None
        thread.submit(job)
        try:
            finished = wait_unless_stalled(done, STALL_SECONDS)
        except BaseException:  # Interrupted (SIGTERM) during the wait: let the call in flight end, so close() drains
            done.wait()
            release(result[0])
            raise
        if not finished:
            abandoned.set()
            self._stop_callers()  # the stalled one ends once the call returns, if ever; a fresh encoder gets fresh ones
            self._handle, self._initialized = ctypes.c_void_p(), False
            raise SvtAv1Stalled(f"SVT-AV1 {what} for {STALL_SECONDS:.0f} s with every thread idle "
                                f"(a deadlock of the library; frame {self._frames_sent - 1} in flight)")  # fmt: skip
        return result[0]

    def _get_packet(self, pic_send_done: bool) -> tuple[_BufferHeader, bytes] | None:
        """One output packet (a copy of its header and its bytes), or None when the queue is done.

        The blocking call is watched (`_watched`): a stall raises SvtAv1Stalled.
        """
        out = ctypes.POINTER(_BufferHeader)()
        lib = self._lib

        def release(code: int) -> None:
            if code == EB_ERROR_NONE and out:
                lib.svt_av1_enc_release_out_buffer(ctypes.byref(out))

        code = self._watched(lambda handle: self._call_get_packet(handle, out, pic_send_done), "gave no packet",
                             getter=True, release=release)  # fmt: skip
        if code == EB_NO_ERROR_EMPTY_QUEUE:
            return None
        if code != EB_ERROR_NONE or not out:
            raise SvtAv1Error(f"svt_av1_enc_get_packet failed with error {_error_text(code)}" + self._recent_log())
        try:
            hdr = _BufferHeader.from_buffer_copy(out.contents)
            if hdr.flags & EB_BUFFERFLAG_ERROR_MASK:
                raise SvtAv1Error(f"SVT-AV1 encoder error, packet flags 0x{hdr.flags:08X}" + self._recent_log())
            data = ctypes.string_at(hdr.p_buffer, hdr.n_filled_len) if hdr.p_buffer and hdr.n_filled_len else b""
        finally:
            # Frees the packet's bytes (the library malloc'ed them) and returns the header to its pool.
            self._lib.svt_av1_enc_release_out_buffer(ctypes.byref(out))
        return hdr, data

    def _receive(self, index: int, forced_qp: int | None) -> tuple[_BufferHeader, bytes]:
        """Waits for frame `index`'s packet, checks it and appends it to the IVF file."""
        got = self._get_packet(pic_send_done=False)
        if got is None:
            raise SvtAv1Error(f"no packet for frame {index} (encoder queue empty)")
        hdr, data = got
        if hdr.pts != index:
            raise SvtAv1Error(f"packet pts {hdr.pts} but frame {index} expected (low delay keeps display order)")
        if forced_qp is not None and hdr.qp != forced_qp:
            raise SvtAv1Error(f"frame {index}: QP {forced_qp} was forced but SVT reports QP {hdr.qp}")
        assert self._ivf is not None
        self._ivf.write_frame(data, hdr.pts)
        if self._gop is not None:
            self._gop.packets.append(data)
        return hdr, data

    def _receive_or_replay(self, index: int, forced_qp: int | None) -> tuple[_BufferHeader, bytes]:
        """`_receive`, and after a stall the GOP coded again by a fresh encoder up to frame `index` (at most
        REPLAYS_MAX times). Raises SvtAv1Stalled where no replay is possible (SVT's own rate control)."""
        gop = self._gop  # the GOP as first sent: every replay starts from it, even after a replay that stalled
        for attempt in range(REPLAYS_MAX + 1):
            try:
                if attempt:
                    self._replay_gop(gop)
                return self._receive(index, forced_qp)
            except SvtAv1Stalled as exc:
                if gop is None or attempt == REPLAYS_MAX:
                    raise
                logger.warning("%s: %s; GOP from frame %d coded again by a fresh encoder", self.out_path, exc,
                               gop.frames[0][2])  # fmt: skip
        raise AssertionError("unreachable")

    def _send_or_replay(self, frame: YuvFrame, qp: int, key: bool) -> None:
        """`_send`, and after a stall a fresh encoder that first codes the current GOP again (all of it: no frame is in
        flight while one is sent), or nothing when `frame` is a key frame (a GOP is independent of what came before).
        At most REPLAYS_MAX times; raises SvtAv1Stalled where no replay is possible (SVT's own rate control)."""
        gop = None if key else self._gop
        for attempt in range(REPLAYS_MAX + 1):
            try:
                if attempt:
                    self._replay_gop(gop)
                return self._send(frame, qp, key)
            except SvtAv1Stalled as exc:
                if self.codec_rc or (gop is None and not key) or attempt == REPLAYS_MAX:
                    raise
                start = f"GOP from frame {gop.frames[0][2]} coded again" if gop else "key frame sent again"
                logger.warning("%s: %s; %s by a fresh encoder", self.out_path, exc, start)

    def _replay_gop(self, gop: _GopLog | None) -> None:
        """A fresh encoder codes `gop` from its key frame again, up to the frame in flight (left in flight), if any;
        with `gop` None it only starts.

        The file is cut back to the key frame and written again; every packet already written must come
        out the same, or the encode fails (SvtAv1Error naming the frame).
        """
        assert self._ivf is not None
        self._start_encoder()
        self.replays += 1
        if gop is None:
            return
        self._ivf.truncate(gop.ivf_offset, gop.ivf_frames)
        for k, (frame, qp, pts) in enumerate(gop.frames):
            self._send(frame, qp, key=k == 0, pts=pts)
            if k < len(gop.packets):
                _hdr, data = self._receive(pts, qp)
                if data != gop.packets[k]:
                    raise SvtAv1Error(f"frame {pts}: the fresh encoder's packet differs from the first one "
                                      f"({len(data)} bytes, then {len(gop.packets[k])}): the GOP cannot be replayed")

    def _frame_stats(self, index: int, frame: YuvFrame, hdr: _BufferHeader, data: bytes) -> FrameStats:
        """The frame's stats; decodes the packet and measures it against the source frame as cfg.measure asks."""
        sse_y = sse_u = sse_v = ssim_y = math.nan
        if self._decoder is not None:
            decoded = self._decoder.decode(av.Packet(data))
            if len(decoded) != 1:
                raise SvtAv1Error(f"frame {index}: libdav1d returned {len(decoded)} pictures for one packet")
            y, u, v = (decoded_plane(decoded[0], i, src.shape) for i, src in enumerate((frame.y, frame.u, frame.v)))
            sse_y, sse_u, sse_v = metrics.sse(frame.y, y), metrics.sse(frame.u, u), metrics.sse(frame.v, v)
            if self.cfg.measure >= Measure.SSIM:
                ssim_y = metrics.ssim(frame.y, y)
        return FrameStats(
            index=index,
            frame_type="KEY" if hdr.pic_type == EB_AV1_KEY_PICTURE else "INTER",
            temporal_layer=int(hdr.temporal_layer_index),
            qp=int(hdr.qp),
            bits=8 * len(data),
            sse_y=sse_y,
            sse_u=sse_u,
            sse_v=sse_v,
            ssim_y=ssim_y,
        )


# ----------------------------------------------------------------------------- QP structure


def temporal_layer(pos_in_minigop: int, mini_gop: int) -> int:
    """Temporal layer SVT's low-delay hierarchy gives the frame at `pos_in_minigop` of a mini-GOP.

    Mini-GOPs start at a key frame or just after the previous mini-GOP; with mini_gop = 2^L,
    position 0 is the base layer (or the key frame), and position p > 0 is on layer
    L - (number of trailing zero bits of p): for 8 frames, layers [0, 3, 2, 3, 1, 3, 2, 3].
    """
    if not 0 <= pos_in_minigop < mini_gop:
        raise ValueError(f"position {pos_in_minigop} outside a mini-GOP of {mini_gop} frames")
    if pos_in_minigop == 0:
        return 0
    levels = mini_gop.bit_length() - 1
    trailing_zeros = (pos_in_minigop & -pos_in_minigop).bit_length() - 1
    return levels - trailing_zeros


# SVT-AV1's own constant-QP / CRF modes give every frame of a low-delay mini-GOP a QP below the
# nominal ("base") QP: per frame kind they cut the quantizer step (not the QP) by a fixed
# percentage, then take the QP of the nearest quantizer at or above that step (rc_crf_cqp.c,
# cqp_qindex_calc, table `percents`). The top temporal layer is not a reference and keeps the
# base QP. Cuts per hierarchical level count: (key frame, (layer 0, layer 1, ...)).
_STEP_CUT_PERCENT: dict[int, tuple[int, tuple[int, ...]]] = {
    2: (76, (60, 30, 0)),
    3: (76, (60, 30, 15, 0)),
    4: (76, (60, 30, 15, 8, 0)),
    5: (75, (70, 60, 20, 15, 0, 0)),
}

# The resulting QP offsets, MEASURED on SVT-AV1 4.1 itself (its constant-QP mode, rc=cqp, low
# delay, on the first mini-GOP after a key frame, where its content-adaptive extra boost of
# inter layers is off): row = step cut in percent, column = base QP 1..63. Because the AV1
# quantizer step grows about linearly at low indices and exponentially above, the same cut is
# a small QP offset at low QPs and the largest around QP 30-40 (e.g. key frame: -1 at QP 1,
# -24 at QP 35, -18 at QP 63). tests/test_codec_svtav1.py checks that SVT's own CRF mode still
# gives exactly these QPs.
# fmt: off
_QP_OFFSET_BY_STEP_CUT: dict[int, tuple[int, ...]] = {
    76: (
        -1, -2, -3, -4, -5, -6, -6, -7, -8, -9, -9, -10, -11, -12, -12, -13, -14, -15, -16, -16, -17, -18, -19, -19,
        -20, -20, -21, -21, -22, -22, -23, -23, -23, -24, -24, -24, -24, -24, -23, -23, -23, -22, -22, -21, -21, -21,
        -20, -20, -20, -20, -20, -20, -19, -19, -19, -19, -19, -19, -19, -19, -19, -18, -18,
    ),
    75: (
        -1, -2, -3, -4, -5, -6, -6, -7, -8, -9, -9, -10, -11, -12, -12, -13, -14, -15, -15, -16, -17, -18, -18, -19,
        -20, -20, -21, -21, -22, -22, -22, -23, -23, -23, -23, -23, -23, -23, -23, -22, -22, -21, -21, -20, -20, -20,
        -20, -20, -19, -19, -19, -19, -19, -19, -19, -18, -18, -18, -18, -18, -18, -18, -17,
    ),
    70: (
        -1, -2, -3, -4, -4, -5, -6, -7, -7, -8, -9, -9, -10, -11, -11, -12, -13, -14, -14, -15, -16, -16, -17, -18,
        -18, -19, -19, -19, -20, -20, -20, -20, -20, -21, -20, -20, -20, -20, -19, -19, -18, -18, -18, -17, -17, -17,
        -17, -17, -17, -16, -16, -16, -16, -16, -16, -16, -16, -16, -16, -16, -16, -15, -15,
    ),
    60: (
        -1, -2, -3, -3, -4, -4, -5, -6, -6, -7, -7, -8, -9, -9, -10, -10, -11, -12, -12, -13, -13, -14, -15, -15,
        -15, -16, -16, -16, -16, -16, -16, -16, -16, -16, -15, -14, -14, -14, -14, -14, -13, -13, -13, -13, -13, -13,
        -12, -12, -12, -12, -12, -12, -12, -12, -12, -12, -12, -12, -12, -12, -12, -11, -11,
    ),
    30: (
        -1, -1, -1, -1, -2, -2, -2, -3, -3, -3, -4, -4, -4, -4, -5, -5, -5, -6, -6, -6, -7, -7, -7, -7, -7, -7, -6,
        -6, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -5, -4, -4, -4,
        -4, -4, -4, -4, -4, -4, -4, -4, -3,
    ),
    20: (
        -1, -1, -1, -1, -1, -1, -2, -2, -2, -2, -2, -3, -3, -3, -3, -3, -4, -4, -4, -4, -4, -5, -5, -5, -4, -4, -3,
        -3, -3, -4, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3, -3,
        -3, -3, -3, -3, -3, -3, -3, -2, -2,
    ),
    15: (
        0, 0, 0, -1, -1, -1, -1, -1, -1, -2, -2, -2, -2, -2, -2, -2, -3, -3, -3, -3, -3, -3, -3, -3, -3, -2, -2, -2,
        -2, -3, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2, -2,
        -2, -2, -2, -2, -2, -2, -2, -1,
    ),
    8: (
        0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -2, -2, -2, -2, -1, -1, -1, -1, -1,
        -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        -1, -1, -1, -1, -1, -1, 0,
    ),
}
# fmt: on


def qindex_for_qp(qp: int) -> int:
    """AV1 `base_q_idx` (0..255) that SVT-AV1 codes for frame QP `qp` (0..63).

    SVT's table quantizer_to_qindex: 4 * qp, except QP 62 -> 249 and QP 63 -> 255.
    """
    if not 0 <= qp <= 63:
        raise ValueError(f"QP {qp} outside 0..63")
    return {62: 249, 63: 255}.get(qp, 4 * qp)


def _offset(cut_percent: int, base_qp: int) -> int:
    if cut_percent == 0:
        return 0
    return _QP_OFFSET_BY_STEP_CUT[cut_percent][min(63, max(1, base_qp)) - 1]


def layer_qp_offsets(levels: int, base_qp: int = REFERENCE_BASE_QP) -> list[int]:
    """QP offset (<= 0) of each temporal layer 0..levels relative to base QP `base_qp`.

    The base QP is the QP of the top (non-reference) layer, like SVT's --crf / --qp value; the
    base layer gets the largest cut. For 8-frame mini-GOPs (levels 3) at base QP 35:
    [-15, -5, -2, 0]. `levels` = log2(mini-GOP size), 2..5.
    """
    _, cuts = _STEP_CUT_PERCENT[levels]
    return [_offset(c, base_qp) for c in cuts]


def key_qp_offset(base_qp: int, levels: int = 3) -> int:
    """QP offset (<= 0) of a key frame relative to base QP `base_qp` (-24 at 35, -16 at 20)."""
    return _offset(_STEP_CUT_PERCENT[levels][0], base_qp)


def _validate_config(cfg: CodecConfig) -> None:
    if cfg.width < 64 or cfg.height < 64 or cfg.width % 2 or cfg.height % 2:
        raise ValueError(f"SVT-AV1 needs even sizes of at least 64x64, got {cfg.width}x{cfg.height}")
    mg = cfg.mini_gop
    if mg < 4 or mg & (mg - 1) or mg > 32:
        # SVT-AV1 4.1: "Only hierarchical levels 2-5 is currently supported."
        raise ValueError(f"mini_gop must be 4, 8, 16 or 32 (SVT hierarchical levels 2..5), got {mg}")
    if cfg.keyint < 1 or cfg.keyint % mg:
        raise ValueError(f"keyint ({cfg.keyint}) must be a positive multiple of mini_gop ({mg})")
    if not -2 <= cfg.preset <= 13:
        raise ValueError(f"SVT-AV1 preset must be in -2..13, got {cfg.preset}")
