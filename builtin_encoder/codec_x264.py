"""H.264 backend: libx264 (build 165, the copy bundled in the PyAV wheel) driven through ctypes.

One `X264Codec` owns one continuous encode into an Annex-B `.264` elementary stream. It runs
x264 in a zero-latency, P-only configuration (no B-frames, no lookahead, sliced threads), so each
`x264_encoder_encode` call returns the packet of the frame just sent, and every frame is coded at
the QP the caller forces through `x264_picture_t.i_qpplus1`.

Choices, and why:

* Rate control is CRF, not CQP: in CQP mode x264 clamps `qp_min/qp_max` to the constant QP plus or
  minus its I/B offsets, which silently clips forced QPs. In CRF mode a forced QP is only clipped to
  [qpmin, qpmax], which we set to the whole H.264 8-bit range.
* Tune "psnr" (besides "zerolatency"): it turns adaptive quantisation and psy-RD off. Without AQ every
  macroblock is coded at the forced QP (with AQ x264 adds per-macroblock offsets around it), and the
  PSNR/SSIM that x264 measures are those of PSNR-optimal decisions rather than psy-tuned ones.
* Statistics: x264 only measures PSNR/SSIM when its log level is at least X264_LOG_INFO (below that
  it silently zeroes `analyse.b_psnr/b_ssim`). We keep INFO and install our own `pf_log` callback,
  which routes x264's messages to Python `logging` instead of stderr.
* Headers: SPS/PPS are repeated before every IDR (`repeat-headers`), so each GOP decodes on its own
  and the key frame's bits include them, as in a real stream. The one-off x264 version SEI (about 600
  bytes of option text on frame 0) is dropped: it is not frame data, and dropping it keeps the file
  size equal to the sum of the reported frame bits.

Only the head of `x264_param_t` (up to the log fields) is laid out here; the rest of the struct is an
opaque buffer set through `x264_param_parse`. The head layout is verified at run time against values
`x264_param_default` is known to write (e.g. `pf_log == &x264_log_default`). `x264_picture_t` is laid
out in full, and its size is verified against the bytes `x264_picture_init` clears.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import math
import re
from pathlib import Path
from typing import Self

import av
import numpy as np

from builtin_encoder import metrics
from builtin_encoder.codec import CodecConfig, FrameStats, Measure, YuvFrame, decoded_plane

logger = logging.getLogger(__name__)

X264_BUILD = 165  # the only libx264 ABI these ctypes definitions are written for

# x264 presets, indexed by our CLI's preset number: higher = faster, like SVT-AV1's presets.
PRESET_NAMES = (
    "placebo",
    "veryslow",
    "slower",
    "slow",
    "medium",
    "fast",
    "faster",
    "veryfast",
    "superfast",
    "ultrafast",
)

QP_MIN = 0  # H.264 8-bit QP range
QP_MAX = 51

# x264's default I/P quantiser-scale ratio (--ipratio 1.40): its own rate control codes an I-frame
# at qscale / 1.40, i.e. 6*log2(1.40) = 2.9 QP below the P-frames around it.
IP_RATIO = 1.40
KEY_QP_OFFSET = -round(6.0 * math.log2(IP_RATIO))  # -3

# Constants of x264.h (build 165).
_X264_CSP_I420 = 0x0002
_X264_TYPE_AUTO = 0x0000
_X264_TYPE_IDR = 0x0001
_X264_TYPE_I = 0x0002
_X264_TYPE_KEYFRAME = 0x0006
_X264_LOG_ERROR = 0
_X264_LOG_WARNING = 1
_X264_LOG_INFO = 2
_NAL_SEI = 6
_PSNR_CAP_DB = 100.0  # x264 reports 100 dB when the MSE is (nearly) zero

# x264 warns when PSNR/SSIM are measured with psy or AQ settings that favour other metrics ("--ssim
# used with AQ off: results will be invalid!", "--tune ssim should be used if attempting to benchmark
# ssim!"). Expected here: we want the exact PSNR/SSIM of the picture x264 coded, whatever the tuning.
_EXPECTED_WARNINGS = ("results will be invalid", "should be used if attempting to benchmark")

_PARAM_BUFFER_BYTES = 8192  # sizeof(x264_param_t) is about 1 KiB for build 165; generous on purpose


class X264Error(RuntimeError):
    """libx264 is missing, of the wrong build, or refused a parameter / a frame."""


# ----------------------------------------------------------------------------- ctypes layouts


class _ParamHead(ctypes.Structure):
    """The first fields of `x264_param_t` (build 165), up to and including the log settings.

    Only used to set the picture size (which has no `x264_param_parse` name) and the log callback;
    everything else goes through `x264_param_parse`.
    """

    _fields_ = [
        ("cpu", ctypes.c_uint32),
        ("i_threads", ctypes.c_int),
        ("i_lookahead_threads", ctypes.c_int),
        ("b_sliced_threads", ctypes.c_int),
        ("b_deterministic", ctypes.c_int),
        ("b_cpu_independent", ctypes.c_int),
        ("i_sync_lookahead", ctypes.c_int),
        ("i_width", ctypes.c_int),
        ("i_height", ctypes.c_int),
        ("i_csp", ctypes.c_int),
        ("i_bitdepth", ctypes.c_int),
        ("i_level_idc", ctypes.c_int),
        ("i_frame_total", ctypes.c_int),
        ("i_nal_hrd", ctypes.c_int),
        ("vui", ctypes.c_int * 9),  # sar_height, sar_width, overscan, vidformat, fullrange, colorprim, ...
        ("i_frame_reference", ctypes.c_int),
        ("i_dpb_size", ctypes.c_int),
        ("i_keyint_max", ctypes.c_int),
        ("i_keyint_min", ctypes.c_int),
        ("i_scenecut_threshold", ctypes.c_int),
        ("b_intra_refresh", ctypes.c_int),
        ("i_bframe", ctypes.c_int),
        ("i_bframe_adaptive", ctypes.c_int),
        ("i_bframe_bias", ctypes.c_int),
        ("i_bframe_pyramid", ctypes.c_int),
        ("b_open_gop", ctypes.c_int),
        ("b_bluray_compat", ctypes.c_int),
        ("i_avcintra_class", ctypes.c_int),
        ("i_avcintra_flavor", ctypes.c_int),
        ("b_deblocking_filter", ctypes.c_int),
        ("i_deblocking_filter_alphac0", ctypes.c_int),
        ("i_deblocking_filter_beta", ctypes.c_int),
        ("b_cabac", ctypes.c_int),
        ("i_cabac_init_idc", ctypes.c_int),
        ("b_interlaced", ctypes.c_int),
        ("b_constrained_intra", ctypes.c_int),
        ("i_cqm_preset", ctypes.c_int),
        ("psz_cqm_file", ctypes.c_void_p),
        ("cqm_4", ctypes.c_uint8 * (4 * 16)),  # cqm_4iy, cqm_4py, cqm_4ic, cqm_4pc
        ("cqm_8", ctypes.c_uint8 * (4 * 64)),  # cqm_8iy, cqm_8py, cqm_8ic, cqm_8pc
        ("pf_log", ctypes.c_void_p),
        ("p_log_private", ctypes.c_void_p),
        ("i_log_level", ctypes.c_int),
        ("b_full_recon", ctypes.c_int),
    ]


class _Image(ctypes.Structure):
    """`x264_image_t`: colour space and up to 4 planes (pointer + stride in bytes)."""

    _fields_ = [
        ("i_csp", ctypes.c_int),
        ("i_plane", ctypes.c_int),
        ("i_stride", ctypes.c_int * 4),
        ("plane", ctypes.c_void_p * 4),
    ]


class _ImageProperties(ctypes.Structure):
    """`x264_image_properties_t`: per-picture inputs (QP offsets, MB info) and quality outputs."""

    _fields_ = [
        ("quant_offsets", ctypes.c_void_p),
        ("quant_offsets_free", ctypes.c_void_p),
        ("mb_info", ctypes.c_void_p),
        ("mb_info_free", ctypes.c_void_p),
        ("f_ssim", ctypes.c_double),  # luma SSIM, 0..1 (needs analyse.b_ssim)
        ("f_psnr_avg", ctypes.c_double),
        ("f_psnr", ctypes.c_double * 3),  # Y, U, V PSNR in dB (needs analyse.b_psnr)
        ("f_crf_avg", ctypes.c_double),
    ]


class _Hrd(ctypes.Structure):
    """`x264_hrd_t` (only filled when NAL HRD is on; here it is not)."""

    _fields_ = [
        ("cpb_initial_arrival_time", ctypes.c_double),
        ("cpb_final_arrival_time", ctypes.c_double),
        ("cpb_removal_time", ctypes.c_double),
        ("dpb_output_time", ctypes.c_double),
    ]


class _Sei(ctypes.Structure):
    """`x264_sei_t`: user SEI payloads (unused)."""

    _fields_ = [
        ("num_payloads", ctypes.c_int),
        ("payloads", ctypes.c_void_p),
        ("sei_free", ctypes.c_void_p),
    ]


class _Picture(ctypes.Structure):
    """`x264_picture_t`: an input picture (forced type/QP, planes) or an output one (type, QP, stats)."""

    _fields_ = [
        ("i_type", ctypes.c_int),
        ("i_qpplus1", ctypes.c_int),
        ("i_pic_struct", ctypes.c_int),
        ("b_keyframe", ctypes.c_int),
        ("i_pts", ctypes.c_int64),
        ("i_dts", ctypes.c_int64),
        ("param", ctypes.c_void_p),
        ("img", _Image),
        ("prop", _ImageProperties),
        ("hrd_timing", _Hrd),
        ("extra_sei", _Sei),
        ("opaque", ctypes.c_void_p),
    ]


class _Nal(ctypes.Structure):
    """`x264_nal_t`: one coded NAL unit; `p_payload` holds it with its Annex-B start code."""

    _fields_ = [
        ("i_ref_idc", ctypes.c_int),
        ("i_type", ctypes.c_int),
        ("b_long_startcode", ctypes.c_int),
        ("i_first_mb", ctypes.c_int),
        ("i_last_mb", ctypes.c_int),
        ("i_payload", ctypes.c_int),
        ("p_payload", ctypes.c_void_p),
        ("i_padding", ctypes.c_int),
    ]


# void (*pf_log)(void *private, int level, const char *fmt, va_list args). On x86-64 (and AArch64)
# Linux a va_list parameter is passed as a pointer, which vsnprintf accepts back unchanged.
_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


# ----------------------------------------------------------------------------- loading the library


def default_libs_dir() -> Path:
    """The `av.libs/` folder next to the installed `av` package (found without importing av)."""
    spec = importlib.util.find_spec("av")
    if spec is None or spec.origin is None:
        raise X264Error("the PyAV package (av) is not installed; its wheel bundles libx264")
    return Path(spec.origin).parent.parent / "av.libs"


def find_libx264(libs_dir: Path) -> Path:
    """Path of the libx264 of build `X264_BUILD` in `libs_dir`; a clear X264Error otherwise.

    The build number is the shared object's version suffix (`libx264-<hash>.so.165`).
    """
    candidates = sorted(Path(libs_dir).glob("libx264*.so*"))
    builds: dict[int, Path] = {}
    for path in candidates:
        m = re.search(r"\.so\.(\d+)", path.name)
        if m:
            builds[int(m.group(1))] = path
    if X264_BUILD in builds:
        return builds[X264_BUILD]
    found = ", ".join(f"{p.name} (build {b})" for b, p in sorted(builds.items())) or "none"
    raise X264Error(
        f"libx264 build {X264_BUILD} is required (its x264_picture_t layout is hard-coded here), "
        f"but {libs_dir} holds: {found}. Install the PyAV version this project pins (av==18.1.0)."
    )


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declares the prototypes of the libx264 functions used here; checks the build's open symbol."""
    open_name = f"x264_encoder_open_{X264_BUILD}"
    if not hasattr(lib, open_name):
        raise X264Error(f"{lib._name} does not export {open_name}: it is not libx264 build {X264_BUILD}")
    vp, c_int, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    prototypes = {
        "x264_param_default_preset": (c_int, [vp, c_char_p, c_char_p]),
        "x264_param_parse": (c_int, [vp, c_char_p, c_char_p]),
        "x264_param_cleanup": (None, [vp]),
        "x264_picture_init": (None, [vp]),
        open_name: (vp, [vp]),
        "x264_encoder_encode": (c_int, [vp, ctypes.POINTER(ctypes.POINTER(_Nal)), ctypes.POINTER(c_int), vp, vp]),
        "x264_encoder_delayed_frames": (c_int, [vp]),
        "x264_encoder_maximum_delayed_frames": (c_int, [vp]),
        "x264_encoder_close": (None, [vp]),
    }
    for name, (restype, argtypes) in prototypes.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


_LIB: ctypes.CDLL | None = None
_LIBC: ctypes.CDLL | None = None


def load_libx264() -> ctypes.CDLL:
    """Loads (once per process) and checks PyAV's bundled libx264 of build `X264_BUILD`."""
    global _LIB, _LIBC
    if _LIB is None:
        lib = _bind(ctypes.CDLL(str(find_libx264(default_libs_dir()))))
        _check_picture_layout(lib)
        libc = ctypes.CDLL(None)  # the process's C library, for vsnprintf in the log callback
        libc.vsnprintf.restype = ctypes.c_int
        libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        _LIB, _LIBC = lib, libc
    return _LIB


def _check_picture_layout(lib: ctypes.CDLL) -> None:
    """Verifies sizeof(x264_picture_t): `x264_picture_init` memsets exactly that many bytes."""
    size = ctypes.sizeof(_Picture)
    guard = 64
    buf = (ctypes.c_uint8 * (size + guard))(*([0xA5] * (size + guard)))
    lib.x264_picture_init(buf)
    raw = bytes(buf)
    # x264_picture_init zeroes the struct, then sets i_type/i_qpplus1/i_pic_struct to their AUTO
    # values, which are all 0 as well.
    if raw[:size] != bytes(size) or raw[size:] != bytes([0xA5]) * guard:
        cleared = len(raw) - len(raw.lstrip(b"\x00"))
        raise X264Error(f"x264_picture_t layout mismatch: ours is {size} bytes, x264_picture_init cleared {cleared}")


# ----------------------------------------------------------------------------- the codec


class X264Codec:
    """libx264 backend of the `Codec` protocol (see builtin_encoder/codec.py).

    P-only low delay: one temporal layer, a forced IDR at each GOP start, every frame at the QP it
    is given. Writes an Annex-B H.264 stream to `out_path`.

    Keywords for baselines and measurements only: `crf` (x264's CRF at that value) or
    `bitrate_kbps` (x264's one-pass ABR at that target, kbit/s) make x264 choose every frame's QP
    (`i_qpplus1 = 0`); the `qps` passed to `encode` are then ignored and FrameStats.qp is the QP
    x264 chose. Forced IDR frames at GOP starts are kept in every mode.

    Distortion: with one thread x264's own PSNR and SSIM are those of the decoded picture (equal
    to `metrics.sse` and `metrics.x264_ssim` on PyAV's H.264 decoder output) and are used as they
    are. With sliced threads (`cfg.threads` other than 1) x264 measures each slice's rows before
    the slice edges are deblocked (0.02-0.44 dB too low on carphone), so every frame is then
    decoded and measured here: SSE exactly, SSIM-Y by `metrics.x264_ssim`, x264's own definition.
    The codec rate-control modes are measured on the decoder's output too.
    """

    name = "x264"
    qp_min = QP_MIN
    qp_max = QP_MAX
    bitstream_ext = ".264"

    def __init__(
        self, cfg: CodecConfig, out_path: Path, *, crf: float | None = None, bitrate_kbps: float | None = None
    ) -> None:
        if crf is not None and bitrate_kbps is not None:
            raise ValueError("x264: give crf or bitrate_kbps, not both")
        if crf is not None and not 0 <= crf <= 51:
            raise ValueError(f"x264: crf must be in 0..51, got {crf}")
        if bitrate_kbps is not None and not bitrate_kbps > 0:
            raise ValueError(f"x264: bitrate_kbps must be > 0, got {bitrate_kbps}")
        self.crf = crf
        self.bitrate_kbps = bitrate_kbps
        # True when x264 chooses the frame QPs itself (the QPs given to encode() are ignored).
        self.codec_rc = crf is not None or bitrate_kbps is not None
        if cfg.width % 2 or cfg.height % 2 or cfg.width < 2 or cfg.height < 2:
            raise ValueError(f"x264: width and height must be even and >= 2 (got {cfg.width}x{cfg.height})")
        if not 0 <= cfg.preset < len(PRESET_NAMES):
            raise ValueError(f"x264: preset must be 0..{len(PRESET_NAMES) - 1} (placebo..ultrafast), got {cfg.preset}")
        if cfg.keyint < 1 or cfg.fps <= 0 or cfg.threads < 0:
            raise ValueError(f"x264: bad keyint/fps/threads: {cfg.keyint}/{cfg.fps}/{cfg.threads}")
        self.cfg = cfg
        self.out_path = Path(out_path)
        # Distortion from the decoded picture, not x264's own measurement (see the class doc).
        self._measures_decoded = cfg.measure > Measure.NONE and (self.codec_rc or cfg.threads != 1)
        self._lib = load_libx264()
        self._encoder: int | None = None
        self._frames_in = 0  # frames sent so far = display index of the next frame
        self._frames_out = 0
        self._last_error = ""  # last error message x264 logged, quoted in exceptions

        # x264 keeps the callback pointer for the encoder's whole life: hold a reference until close.
        self._log_cb = _LOG_CALLBACK(self._on_log)
        self._param = (ctypes.c_uint64 * (_PARAM_BUFFER_BYTES // 8))()  # opaque x264_param_t, 8-byte aligned
        try:
            self._open()
            self._file = open(self.out_path, "wb")  # noqa: SIM115 -- lives as long as the codec
        except BaseException:
            self._free_encoder()
            raise
        self._pic_in = _Picture()
        self._pic_out = _Picture()
        self._nals = ctypes.POINTER(_Nal)()
        self._n_nals = ctypes.c_int(0)
        self._decoder: av.CodecContext | None = None
        if self._measures_decoded:
            # P-only, no reordering: one packet in, its picture out.
            self._decoder = av.CodecContext.create("h264", "r")
            self._decoder.options = {"threads": "1"}

    # -- Codec protocol: QP structure

    def layer_qp_offsets(self) -> list[int]:
        """One temporal layer (P-only), at the mini-GOP's base QP."""
        return [0]

    def key_qp_offset(self, base_qp: int) -> int:
        """x264's own I/P offset (-6*log2(ipratio 1.40) = -3 QP), kept inside [qp_min, qp_max]."""
        return max(KEY_QP_OFFSET, self.qp_min - base_qp)

    def temporal_layer(self, pos_in_minigop: int) -> int:
        """Every frame is in the base layer."""
        return 0

    # -- Codec protocol: coding

    def encode(self, frames: list[YuvFrame], qps: list[int], key_first: bool) -> list[FrameStats]:
        """Codes `frames` at the forced `qps` and appends their packets to the stream.

        Zero latency: each frame's packet comes back from the very call that sent it, so the stats
        are complete on return. Raises X264Error if x264 buffers a frame (should never happen here).
        """
        if len(frames) != len(qps):
            raise ValueError(f"x264: {len(frames)} frames but {len(qps)} QPs")
        if self._encoder is None:
            raise X264Error("x264: encode() after close()")
        stats = []
        for i, (frame, qp) in enumerate(zip(frames, qps, strict=True)):
            stats.append(self._encode_frame(frame, int(qp), key=key_first and i == 0))
        return stats

    def close(self) -> None:
        """Flushes (nothing is buffered in zero latency), closes the file and frees the encoder."""
        if self._encoder is None:
            return
        try:
            delayed = self._lib.x264_encoder_delayed_frames(self._encoder)
            if delayed:
                raise X264Error(f"x264: {delayed} frame(s) still buffered at close (zero latency expected)")
        finally:
            self._file.close()
            self._free_encoder()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals

    def _open(self) -> None:
        """Fills the param struct (preset, tunes, options), checks its head layout, opens the encoder."""
        lib, cfg, param = self._lib, self.cfg, self._param
        preset = PRESET_NAMES[cfg.preset]
        if lib.x264_param_default_preset(param, preset.encode(), b"zerolatency,psnr") < 0:
            raise X264Error(f"x264_param_default_preset refused preset {preset!r} / tune 'zerolatency,psnr'")
        head = _ParamHead.from_buffer(param)
        self._check_param_head(head)
        head.pf_log = ctypes.cast(self._log_cb, ctypes.c_void_p).value
        head.i_width, head.i_height, head.i_csp = cfg.width, cfg.height, _X264_CSP_I420

        options = {
            # Zero latency and a fixed GOP: no B-frames, no lookahead of any kind, no scene cuts.
            # ("zerolatency" sets most of these; they are repeated so the intent is explicit.)
            "bframes": "0",
            "rc-lookahead": "0",
            "sync-lookahead": "0",
            "mbtree": "0",
            "sliced-threads": "1",  # frame threads would delay output by threads-1 frames
            # One slice per thread: "auto" (x264 picks from the CPU count) makes the bitstream depend
            # on the machine; a fixed count is deterministic.
            "threads": str(cfg.threads) if cfg.threads > 0 else "auto",
            "keyint": str(cfg.keyint),
            "scenecut": "0",
            "intra-refresh": "0",
            "open-gop": "0",
            "fps": repr(float(cfg.fps)),
            # Rate control: CRF so forced QPs are only clipped to [qpmin, qpmax] (see module doc).
            # The value 23 is unused when every frame's QP is forced.
            "crf": repr(float(self.crf)) if self.crf is not None else "23",
            "qpmin": str(QP_MIN),
            "qpmax": str(QP_MAX),
            "aq-mode": "0",  # every macroblock at the forced QP
            # Statistics: PSNR/SSIM need log level >= INFO; our pf_log keeps the output off stderr.
            # Only what cfg.measure asks for (they cost time, and do not change the bitstream).
            "psnr": "1" if cfg.measure >= Measure.SSE and not self._measures_decoded else "0",
            "ssim": "1" if cfg.measure >= Measure.SSIM and not self._measures_decoded else "0",
            "log": str(_X264_LOG_INFO),
            # Bitstream: Annex-B, SPS/PPS before every IDR.
            "annexb": "1",
            "repeat-headers": "1",
        }
        if self.bitrate_kbps is not None:
            # x264's one-pass ABR (replaces CRF: x264_param_parse("bitrate") selects X264_RC_ABR).
            del options["crf"]
            options["bitrate"] = str(max(1, round(self.bitrate_kbps)))
        for name, value in options.items():
            rc = lib.x264_param_parse(param, name.encode(), value.encode())
            if rc != 0:
                why = {-1: "unknown name", -2: "bad value", -3: "allocation failed"}.get(rc, f"error {rc}")
                raise X264Error(f"x264_param_parse({name!r}, {value!r}) failed: {why}")
        if head.i_keyint_max != cfg.keyint or head.i_log_level != _X264_LOG_INFO:
            raise X264Error("x264_param_t layout mismatch: parsed keyint/log level not found where expected")

        self._encoder = getattr(lib, f"x264_encoder_open_{X264_BUILD}")(param)
        if not self._encoder:
            raise X264Error(f"x264_encoder_open failed for {cfg}: {self._last_error or 'no message'}")
        delay = lib.x264_encoder_maximum_delayed_frames(self._encoder)
        if delay != 0:
            raise X264Error(f"x264 would buffer up to {delay} frame(s); this backend needs zero latency")

    def _check_param_head(self, head: _ParamHead) -> None:
        """Verifies `_ParamHead` against what `x264_param_default` is known to write."""
        default_log = ctypes.cast(self._lib.x264_log_default, ctypes.c_void_p).value
        if (
            head.pf_log != default_log
            or head.i_log_level != _X264_LOG_INFO
            or head.i_csp != _X264_CSP_I420
            or head.i_bitdepth != 8
            or head.i_keyint_max != 250
        ):
            raise X264Error("x264_param_t layout mismatch: defaults not found where expected (wrong build?)")

    def _on_log(self, _private: int | None, level: int, fmt: bytes | None, args: int | None) -> None:
        """x264's pf_log: formats the message with vsnprintf and hands it to `logging`."""
        buf = ctypes.create_string_buffer(1024)
        assert _LIBC is not None
        _LIBC.vsnprintf(buf, len(buf), fmt, args)
        msg = "x264: " + buf.value.decode("utf-8", "replace").rstrip()
        if level <= _X264_LOG_ERROR:
            self._last_error = msg
            logger.error("%s", msg)
        elif level == _X264_LOG_WARNING and not any(text in msg for text in _EXPECTED_WARNINGS):
            logger.warning("%s", msg)
        else:
            logger.debug("%s", msg)

    def _encode_frame(self, frame: YuvFrame, qp: int, key: bool) -> FrameStats:
        """Sends one frame (no copy: x264 reads our numpy planes) and collects its packet and stats."""
        if not self.codec_rc and not self.qp_min <= qp <= self.qp_max:
            raise ValueError(f"x264: QP {qp} outside {self.qp_min}..{self.qp_max}")
        w, h = self.cfg.width, self.cfg.height
        pic = self._pic_in
        self._lib.x264_picture_init(ctypes.byref(pic))
        pic.i_type = _X264_TYPE_IDR if key else _X264_TYPE_AUTO
        pic.i_qpplus1 = 0 if self.codec_rc else qp + 1  # 0 = x264's rate control picks the QP
        pic.i_pts = self._frames_in
        pic.img.i_csp = _X264_CSP_I420
        pic.img.i_plane = 3
        planes = ((frame.y, (h, w)), (frame.u, (h // 2, w // 2)), (frame.v, (h // 2, w // 2)))
        for p, (plane, shape) in enumerate(planes):
            if plane.dtype != np.uint8 or plane.shape != shape or plane.strides[1] != 1 or plane.strides[0] < shape[1]:
                raise ValueError(
                    f"x264: plane {'yuv'[p]} must be uint8 {shape} with contiguous rows, "
                    f"got {plane.dtype} {plane.shape} strides {plane.strides}"
                )
            pic.img.plane[p] = plane.ctypes.data
            pic.img.i_stride[p] = plane.strides[0]

        size = self._lib.x264_encoder_encode(
            self._encoder,
            ctypes.byref(self._nals),
            ctypes.byref(self._n_nals),
            ctypes.byref(pic),
            ctypes.byref(self._pic_out),
        )
        self._frames_in += 1
        if size < 0:
            raise X264Error(f"x264_encoder_encode failed on frame {self._frames_in - 1}: {self._last_error}")
        if size == 0:
            raise X264Error(f"x264 buffered frame {self._frames_in - 1} instead of coding it (zero latency expected)")

        out = self._pic_out
        index = self._frames_out
        self._frames_out += 1
        if out.i_pts != index:
            raise X264Error(f"x264 returned frame {out.i_pts}, expected {index}")

        # All NAL payloads of one call are contiguous in memory: copy them out in one go, except
        # the one-off version SEI of frame 0 (see module doc).
        nals = [self._nals[k] for k in range(self._n_nals.value)]
        if index == 0:
            data = b"".join(ctypes.string_at(n.p_payload, n.i_payload) for n in nals if n.i_type != _NAL_SEI)
        else:
            data = ctypes.string_at(nals[0].p_payload, size)
        self._file.write(data)

        is_key = out.i_type in (_X264_TYPE_IDR, _X264_TYPE_I, _X264_TYPE_KEYFRAME) or bool(out.b_keyframe)
        luma, chroma = w * h, (w // 2) * (h // 2)
        measure = self.cfg.measure
        sse_y = sse_u = sse_v = ssim_y = math.nan
        if self._decoder is not None:
            sse_y, sse_u, sse_v, ssim_y = self._decoded_distortion(frame, data, index)
        elif measure >= Measure.SSE:
            sse_y = _sse_from_psnr(out.prop.f_psnr[0], luma)
            sse_u = _sse_from_psnr(out.prop.f_psnr[1], chroma)
            sse_v = _sse_from_psnr(out.prop.f_psnr[2], chroma)
            if measure >= Measure.SSIM:
                ssim_y = float(out.prop.f_ssim)
        return FrameStats(
            index=index,
            frame_type="KEY" if is_key else "INTER",
            temporal_layer=0,
            qp=out.i_qpplus1 - 1,
            bits=8 * len(data),
            sse_y=sse_y,
            sse_u=sse_u,
            sse_v=sse_v,
            ssim_y=ssim_y,
        )

    def _decoded_distortion(self, frame: YuvFrame, data: bytes, index: int) -> tuple[float, float, float, float]:
        """Decodes one frame's packet and returns the SSE of Y, U, V and SSIM-Y (NaN unless measured)."""
        assert self._decoder is not None
        pictures = self._decoder.decode(av.Packet(data))
        if len(pictures) != 1:
            raise X264Error(f"x264: frame {index}: the H.264 decoder returned {len(pictures)} pictures for one packet")
        y, u, v = (decoded_plane(pictures[0], i, src.shape) for i, src in enumerate((frame.y, frame.u, frame.v)))
        ssim_y = metrics.x264_ssim(frame.y, y) if self.cfg.measure >= Measure.SSIM else math.nan
        return metrics.sse(frame.y, y), metrics.sse(frame.u, u), metrics.sse(frame.v, v), ssim_y

    def _free_encoder(self) -> None:
        if self._encoder is not None:
            self._lib.x264_encoder_close(self._encoder)
            self._encoder = None
        self._lib.x264_param_cleanup(self._param)  # frees strings x264_param_parse may have allocated


def _sse_from_psnr(psnr_db: float, pixels: int) -> float:
    """Sum of squared errors (8-bit scale) of a plane of `pixels` samples, from x264's PSNR in dB.

    x264 computes PSNR = -10*log10(SSD / (255^2 * pixels)) in double precision from its integer SSD,
    so inverting and rounding recovers the SSD exactly. Its 100 dB cap means "MSE <= 1e-10": 0.
    """
    if psnr_db <= 0.0:
        raise X264Error("x264 reported PSNR 0: quality measurement is off (log level below INFO?)")
    if psnr_db >= _PSNR_CAP_DB:
        return 0.0
    return float(round(255.0**2 * pixels * 10.0 ** (-psnr_db / 10.0)))
