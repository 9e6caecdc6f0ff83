"""VP9 backend: libvpx (v1.16.0, the copy bundled in the PyAV wheel) through ctypes and its own
external rate-control interface (`vpx/vpx_ext_ratectrl.h`, control VP9E_SET_EXTERNAL_RATE_CONTROL).

That interface is the contract libvpx offers an outside rate controller (DeepMind's MuZero-RC
drove VP9 through it). It is live only in libvpx's **second pass**, so every encode here is a
libvpx two-pass encode:

1. `libvpx_first_pass(cfg, frames)` runs libvpx's own first pass (`g_pass = VPX_RC_FIRST_PASS`)
   and returns its statistics (one FIRSTPASS_STATS record per frame plus the total, bytes).
2. `Vp9Codec(cfg, out, twopass_stats=...)` opens libvpx's second pass on them, with our callbacks
   installed: libvpx asks `get_encodeframe_decision` for every frame's q_index and we answer the
   QP the caller gave `encode` for that frame. libvpx hands the callbacks the first pass per frame
   (`send_firstpass_stats`, before the first frame) and the result of every frame (bits, q used).

Structure: low delay, `g_lag_in_frames = 0` (no alt-ref frames, no look-ahead, so each
`vpx_codec_encode` call returns the packet of the frame just sent), a key frame forced at each GOP
start (`VPX_EFLAG_FORCE_KF`, automatic key frames off), all other frames inter frames predicted from
the past. libvpx's golden-frame refreshes stay its own choice; every inter frame of a mini-GOP is
coded at the mini-GOP's base q_index (one layer), the key frame at a fixed step below it
(`key_qp_offset`). The QP scale is VP9's q_index, 0..255.

Baseline (`bitrate_kbps=`): the same two passes with libvpx's own 2-pass VBR at that target and no
external controller (evaluate.py's codec_rc column for vp9), with the same lag 0.

Distortion: libvpx's PSNR packets (`VPX_CODEC_USE_PSNR`) give each plane's exact SSE of the coded
picture (a test checks it against FFmpeg's VP9 decoder); SSIM-Y, when asked, on the decoded picture.

ctypes safety: a Python exception inside a callback would unwind through C, so every callback
catches everything, keeps the exception, and returns VPX_RC_ERROR; libvpx then fails the encode
call and `encode` raises Vp9Error naming the callback and the exception.

Struct layouts below are those of the v1.16.0 headers, checked with offsetof() when written
(sizes: vpx_codec_enc_cfg_t 504, vpx_codec_ctx_t 56, vpx_image_t 136, vpx_rc_funcs_t 96,
vpx_rc_frame_stats_t 208 bytes); `vpx_codec_enc_init_ver` refuses any other ABI (39).
"""

from __future__ import annotations

import ctypes
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import av
import numpy as np

from builtin_encoder import metrics
from builtin_encoder.analysis import FrameAnalysis
from builtin_encoder.codec import CodecConfig, FrameStats, Measure, YuvFrame, decoded_plane
from builtin_encoder.codec_x264 import default_libs_dir
from builtin_encoder.ivf import IvfWriter, fps_fraction
from builtin_encoder.vp9_qindex import QP_MAX, QP_MIN, q_for_level, qstep_level, quantizer_for_qindex

LIBVPX_VERSION = "v1.16.0"
ENCODER_ABI_VERSION = 39  # VPX_ENCODER_ABI_VERSION of v1.16.0 (18 + codec 9 + ext-RC 12)
# Presets are libvpx's --cpu-used in good-quality mode, 0 (slowest) .. 5 (fastest), so that higher =
# faster as for the other backends.
PRESET_MAX = 5
# A key frame is coded at a q_index whose AC quantiser step is KEY_STEP_RATIO times smaller than
# the mini-GOP's base q_index (x264's I/P ratio 1.40, -3 QP in H.264 units).
KEY_STEP_RATIO = 1.40

# Constants of vpx_encoder.h / vp8cx.h / vpx_image.h (v1.16.0).
_VPX_CODEC_OK = 0
_VPX_RC_ONE_PASS, _VPX_RC_FIRST_PASS, _VPX_RC_LAST_PASS = 0, 1, 2
_VPX_VBR, _VPX_Q = 0, 3
_VPX_KF_DISABLED = 0
_VPX_CODEC_CX_FRAME_PKT, _VPX_CODEC_STATS_PKT, _VPX_CODEC_PSNR_PKT = 0, 1, 3
_VPX_CODEC_USE_PSNR = 0x10000
_VPX_EFLAG_FORCE_KF = 1
_VPX_FRAME_IS_KEY = 0x1
_VPX_IMG_FMT_I420 = 0x102
_VPX_DL_GOOD_QUALITY = 1000000
_VP8E_SET_CPUUSED = 13
_VP8E_SET_ENABLEAUTOALTREF = 14
_VP9E_SET_EXTERNAL_RATE_CONTROL = 70
_VP8E_SET_CQ_LEVEL = 25
_VP8E_GET_LAST_QUANTIZER = 19  # int *: the last frame's q_index
_VPX_RC_QP = 1
_VPX_RC_OK, _VPX_RC_ERROR = 0, 1

# vpx_codec_enc_cfg_t (504 bytes): offsets of the fields set here.
_CFG_BYTES = 504
_CFG_UINT = {
    "g_threads": 4, "g_w": 12, "g_h": 16, "g_pass": 40, "g_lag_in_frames": 44, "rc_dropframe_thresh": 48,
    "rc_resize_allowed": 52, "rc_end_usage": 72, "rc_target_bitrate": 112, "rc_min_quantizer": 116,
    "rc_max_quantizer": 120, "kf_mode": 160, "kf_min_dist": 164, "kf_max_dist": 168,
}  # fmt: skip
_CFG_TIMEBASE = 28  # struct vpx_rational {int num, den}
_CFG_STATS_IN = 80  # vpx_fixed_buf_t {void *buf; size_t sz}
_CTX_BYTES = 56  # vpx_codec_ctx_t
# vpx_codec_cx_pkt_t: kind at 0, the union at 8.
_PKT_FRAME_BUF, _PKT_FRAME_SZ, _PKT_FRAME_PTS, _PKT_FRAME_FLAGS = 8, 16, 24, 40
_PKT_PSNR_SSE = 24  # uint64 sse[4]: total, Y, U, V

_FRAME_STATS_DOUBLES = 26  # vpx_rc_frame_stats_t


class Vp9Error(RuntimeError):
    """libvpx refused a call, or a rate-control callback failed."""


class _Image(ctypes.Structure):
    """vpx_image_t (136 bytes)."""

    _fields_ = [
        ("fmt", ctypes.c_int), ("cs", ctypes.c_int), ("range", ctypes.c_int),
        ("w", ctypes.c_uint), ("h", ctypes.c_uint), ("bit_depth", ctypes.c_uint),
        ("d_w", ctypes.c_uint), ("d_h", ctypes.c_uint), ("r_w", ctypes.c_uint), ("r_h", ctypes.c_uint),
        ("x_chroma_shift", ctypes.c_uint), ("y_chroma_shift", ctypes.c_uint),
        ("planes", ctypes.c_void_p * 4), ("stride", ctypes.c_int * 4), ("bps", ctypes.c_int),
        ("user_priv", ctypes.c_void_p), ("img_data", ctypes.c_void_p), ("img_data_owner", ctypes.c_int),
        ("self_allocd", ctypes.c_int), ("fb_priv", ctypes.c_void_p),
    ]  # fmt: skip


class _SbParams(ctypes.Structure):
    _fields_ = [("q_index", ctypes.c_int), ("rdmult", ctypes.c_int)]


class _Decision(ctypes.Structure):
    """vpx_rc_encodeframe_decision_t."""

    _fields_ = [("q_index", ctypes.c_int), ("rdmult", ctypes.c_int), ("delta_q_uv", ctypes.c_int),
                ("sb_params_list", ctypes.POINTER(_SbParams))]  # fmt: skip


class _Result(ctypes.Structure):
    """vpx_rc_encodeframe_result_t."""

    _fields_ = [("bit_count", ctypes.c_int64), ("actual_encoding_qindex", ctypes.c_int)]


class _FirstPassStats(ctypes.Structure):
    """vpx_rc_firstpass_stats_t: num_frames records of vpx_rc_frame_stats_t (26 doubles each)."""

    _fields_ = [("frame_stats", ctypes.POINTER(ctypes.c_double)), ("num_frames", ctypes.c_int)]


_STATUS = ctypes.c_int
_CREATE = ctypes.CFUNCTYPE(_STATUS, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))
_SEND_FP = ctypes.CFUNCTYPE(_STATUS, ctypes.c_void_p, ctypes.POINTER(_FirstPassStats))
_DECIDE = ctypes.CFUNCTYPE(_STATUS, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_Decision))
_UPDATE = ctypes.CFUNCTYPE(_STATUS, ctypes.c_void_p, ctypes.POINTER(_Result))
_DELETE = ctypes.CFUNCTYPE(_STATUS, ctypes.c_void_p)


class _RcFuncs(ctypes.Structure):
    """vpx_rc_funcs_t (96 bytes); the callbacks left NULL are the GOP, TPL and rdmult ones."""

    _fields_ = [
        ("rc_type", ctypes.c_int), ("create_model", _CREATE), ("send_firstpass_stats", _SEND_FP),
        ("send_tpl_gop_stats", ctypes.c_void_p), ("get_encodeframe_decision", _DECIDE),
        ("update_encodeframe_result", _UPDATE), ("get_key_frame_decision", ctypes.c_void_p),
        ("get_gop_decision", ctypes.c_void_p), ("get_frame_rdmult", ctypes.c_void_p), ("delete_model", _DELETE),
        ("rate_ctrl_log_path", ctypes.c_char_p), ("priv", ctypes.c_void_p),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- loading the library


def find_libvpx(libs_dir: Path) -> Path:
    """Path of libvpx (`libvpx-<hash>.so.<major>...`) in PyAV's `av.libs/`; Vp9Error if absent."""
    found = sorted(p for p in Path(libs_dir).glob("libvpx*.so*") if re.search(r"\.so(\.\d+)*$", p.name))
    if not found:
        raise Vp9Error(f"no libvpx in {libs_dir}: install the PyAV version this project pins (av==18.1.0)")
    return found[0]


_LIB: ctypes.CDLL | None = None


def load_libvpx() -> ctypes.CDLL:
    """Loads (once per process) PyAV's bundled libvpx and declares the functions used here."""
    global _LIB
    if _LIB is None:
        lib = ctypes.CDLL(str(find_libvpx(default_libs_dir())))
        vp, c_int, c_long, c_ulong = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_ulong
        prototypes = {
            "vpx_codec_vp9_cx": (vp, []),
            "vpx_codec_version_str": (ctypes.c_char_p, []),
            "vpx_codec_enc_config_default": (c_int, [vp, vp, ctypes.c_uint]),
            "vpx_codec_enc_init_ver": (c_int, [vp, vp, vp, c_long, c_int]),
            "vpx_codec_encode": (c_int, [vp, vp, ctypes.c_int64, c_ulong, c_long, c_ulong]),
            "vpx_codec_get_cx_data": (vp, [vp, ctypes.POINTER(vp)]),
            "vpx_codec_destroy": (c_int, [vp]),
            "vpx_codec_error": (ctypes.c_char_p, [vp]),
            "vpx_codec_error_detail": (ctypes.c_char_p, [vp]),
        }
        for name, (restype, argtypes) in prototypes.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        lib.vpx_codec_control_.restype = c_int  # variadic: (ctx, id, value); arguments typed per call
        version = lib.vpx_codec_version_str().decode()
        if version != LIBVPX_VERSION:
            raise Vp9Error(
                f"libvpx {LIBVPX_VERSION} is required (its struct layouts are hard-coded here), found {version}"
            )
        _LIB = lib
    return _LIB


# ----------------------------------------------------------------------------- first pass


@dataclass
class FirstPassFrame:
    """libvpx's first-pass statistics of one frame (vpx_rc_frame_stats_t, the fields used here).

    Errors are libvpx's: per 16x16 macroblock, the sum of squared prediction errors >> 8 (i.e.
    about the mean squared error per pixel), averaged over the macroblocks. Motion vectors in
    1/8 pixel, averaged over the blocks with a non-zero vector.
    """

    intra_error: float
    coded_error: float  # best of intra and inter from the previous frame
    sr_coded_error: float  # the same with the golden frame as reference
    pcnt_inter: float  # share of blocks where inter beats intra
    pcnt_motion: float  # share of blocks inter-predicted with a non-zero vector
    mvr_abs: float
    mvc_abs: float

    @classmethod
    def from_doubles(cls, d: list[float]) -> FirstPassFrame:
        # Field order of vpx_rc_frame_stats_t: frame, weight, intra_error, coded_error, sr_coded_error,
        # frame_noise_energy, pcnt_inter, pcnt_motion, ..., MVr (16), mvr_abs (17), MVc, mvc_abs (19), ...
        return cls(d[2], d[3], d[4], d[6], d[7], d[17], d[19])


def frame_analysis(fp: FirstPassFrame, noise: float) -> FrameAnalysis:
    """libvpx's first pass of a frame in the protocol's `first_pass` units (analysis.FrameAnalysis).

    libvpx's errors are mean squared errors per pixel: their square roots times sqrt(2/pi) (the
    mean absolute value of a zero-mean Gaussian of that RMS) put them on the protocol's
    mean-absolute-error scale. Motion: libvpx averages |mv| (1/8 pixel) over the blocks with a
    non-zero vector; the protocol averages over every inter block. `noise`: libvpx's noise energy
    has no documented unit, so the caller passes analysis.noise_sigma of the frame.
    """
    mae = math.sqrt(2.0 / math.pi)
    inter = fp.pcnt_inter
    mv = (fp.mvr_abs + fp.mvc_abs) / 8.0 * (fp.pcnt_motion / inter) if inter > 0 else 0.0
    intra = mae * math.sqrt(max(fp.intra_error, 0.0))
    return FrameAnalysis(
        intra_cost=intra,
        inter_cost=min(intra, mae * math.sqrt(max(fp.coded_error, 0.0))),
        sr_inter_cost=min(intra, mae * math.sqrt(max(fp.sr_coded_error, 0.0))),
        inter_share=min(max(inter, 0.0), 1.0),
        motion_share=min(max(fp.pcnt_motion, 0.0), 1.0),
        mv_mean=max(mv, 0.0),
        noise_sigma=noise,
    )


def libvpx_first_pass(cfg: CodecConfig, frames: Iterable[YuvFrame]) -> bytes:
    """Runs libvpx's VP9 first pass over `frames`; returns its statistics (rc_twopass_stats_in)."""
    enc = _Encoder(cfg, _VPX_RC_FIRST_PASS, stats_in=None, flags=0)
    out = bytearray()
    try:
        for i, frame in enumerate(frames):
            # No forced key frames: each frame's inter error is then its prediction from the one
            # before (the protocol's inter_cost), GOP starts included.
            for kind, pkt in enc.encode(frame, i, force_key=i == 0):
                if kind == _VPX_CODEC_STATS_PKT:
                    out += _stats_packet(pkt)
        for kind, pkt in enc.encode(None, 0, force_key=False):
            if kind == _VPX_CODEC_STATS_PKT:
                out += _stats_packet(pkt)
    finally:
        enc.destroy()
    if not out:
        raise Vp9Error("libvpx's first pass produced no statistics")
    return bytes(out)


def _stats_packet(pkt: int) -> bytes:
    buf = ctypes.c_void_p.from_address(pkt + _PKT_FRAME_BUF).value
    size = ctypes.c_size_t.from_address(pkt + _PKT_FRAME_SZ).value
    return ctypes.string_at(buf, size) if buf and size else b""


# ----------------------------------------------------------------------------- libvpx encoder


class _Encoder:
    """One libvpx VP9 encoder instance (`vpx_codec_ctx_t`) in a given pass; yields its packets."""

    def __init__(self, cfg: CodecConfig, pass_no: int, *, stats_in: bytes | None, flags: int,
                 preset: int | None = None, bitrate_kbps: float | None = None,
                 cq_level: int | None = None) -> None:  # fmt: skip
        self.lib = load_libvpx()
        self.cfg = cfg
        self._ctx = (ctypes.c_uint64 * (_CTX_BYTES // 8))()
        self._enc_cfg = (ctypes.c_uint64 * (_CFG_BYTES // 8))()
        self._stats_in = ctypes.create_string_buffer(stats_in or b"", max(len(stats_in or b""), 1))
        self._img = _Image()
        self._open = False
        iface = self.lib.vpx_codec_vp9_cx()
        self._check(self.lib.vpx_codec_enc_config_default(iface, self._enc_cfg, 0), "vpx_codec_enc_config_default")
        fps = fps_fraction(cfg.fps)
        self._set("g_w", cfg.width)
        self._set("g_h", cfg.height)
        self._set("g_threads", max(cfg.threads, 1))
        self._set("g_pass", pass_no)
        self._set("g_lag_in_frames", 0)
        self._set("rc_dropframe_thresh", 0)
        self._set("rc_resize_allowed", 0)
        self._set("kf_mode", _VPX_KF_DISABLED)  # key frames only where forced (GOP starts)
        self._set("kf_min_dist", cfg.keyint)
        self._set("kf_max_dist", cfg.keyint)
        self._set("rc_min_quantizer", 0)
        self._set("rc_max_quantizer", 63)
        # Time base 1/fps: pts and durations count frames.
        ctypes.c_int.from_buffer(self._enc_cfg, _CFG_TIMEBASE).value = fps.denominator
        ctypes.c_int.from_buffer(self._enc_cfg, _CFG_TIMEBASE + 4).value = fps.numerator
        if cq_level is not None:
            self._set("rc_end_usage", _VPX_Q)
        elif bitrate_kbps is not None:
            self._set("rc_end_usage", _VPX_VBR)
            self._set("rc_target_bitrate", max(1, round(bitrate_kbps)))
        else:
            # The external controller sets every q; the mode only matters to libvpx's own bookkeeping.
            self._set("rc_end_usage", _VPX_VBR)
            self._set("rc_target_bitrate", 1000)
        if stats_in is not None:
            addr = ctypes.addressof(self._enc_cfg)
            ctypes.c_void_p.from_address(addr + _CFG_STATS_IN).value = ctypes.addressof(self._stats_in)
            ctypes.c_size_t.from_address(addr + _CFG_STATS_IN + 8).value = len(stats_in)
        self._check(self.lib.vpx_codec_enc_init_ver(self._ctx, iface, self._enc_cfg, flags, ENCODER_ABI_VERSION),
                    "vpx_codec_enc_init_ver")  # fmt: skip
        self._open = True
        self.control_int(_VP8E_SET_CPUUSED, PRESET_MAX if preset is None else preset)
        self.control_int(_VP8E_SET_ENABLEAUTOALTREF, 0)
        if cq_level is not None:
            self.control_int(_VP8E_SET_CQ_LEVEL, cq_level)

    def _set(self, name: str, value: int) -> None:
        ctypes.c_uint.from_buffer(self._enc_cfg, _CFG_UINT[name]).value = value

    def _check(self, err: int, what: str) -> None:
        if err != _VPX_CODEC_OK:
            detail = ""
            if self._open:
                msg = self.lib.vpx_codec_error(self._ctx) or b""
                extra = self.lib.vpx_codec_error_detail(self._ctx) or b""
                detail = ": " + (msg + b" " + extra).decode("utf-8", "replace").strip()
            raise Vp9Error(f"libvpx {what} failed (error {err}){detail}")

    def control_int(self, ctrl_id: int, value: int) -> None:
        self._check(self.lib.vpx_codec_control_(self._ctx, ctypes.c_int(ctrl_id), ctypes.c_int(value)),
                    f"control {ctrl_id}")  # fmt: skip

    def last_q_index(self) -> int:
        q = ctypes.c_int(-1)
        self.control_ptr(_VP8E_GET_LAST_QUANTIZER, ctypes.byref(q))
        return q.value

    def control_ptr(self, ctrl_id: int, ptr: ctypes._Pointer | ctypes.c_void_p) -> None:
        self._check(self.lib.vpx_codec_control_(self._ctx, ctypes.c_int(ctrl_id), ptr), f"control {ctrl_id}")

    def encode(self, frame: YuvFrame | None, pts: int, force_key: bool) -> list[tuple[int, int]]:
        """Sends one frame (None = flush) and returns the (kind, packet address) pairs it produced.

        Packet memory belongs to libvpx until the next call: read it before encoding again.
        """
        img = None
        if frame is not None:
            img = self._image(frame)
        flags = _VPX_EFLAG_FORCE_KF if force_key else 0
        self._check(self.lib.vpx_codec_encode(self._ctx, img, pts, 1, flags, _VPX_DL_GOOD_QUALITY),
                    f"vpx_codec_encode (frame {pts})")  # fmt: skip
        out = []
        it = ctypes.c_void_p(None)
        while True:
            pkt = self.lib.vpx_codec_get_cx_data(self._ctx, ctypes.byref(it))
            if not pkt:
                return out
            out.append((ctypes.c_int.from_address(pkt).value, pkt))

    def _image(self, frame: YuvFrame) -> ctypes._Pointer:
        w, h = self.cfg.width, self.cfg.height
        img = self._img
        img.fmt, img.w, img.h, img.d_w, img.d_h, img.r_w, img.r_h = _VPX_IMG_FMT_I420, w, h, w, h, w, h
        img.bit_depth, img.x_chroma_shift, img.y_chroma_shift, img.bps = 8, 1, 1, 12
        for p, (plane, shape) in enumerate(
            ((frame.y, (h, w)), (frame.u, (h // 2, w // 2)), (frame.v, (h // 2, w // 2)))
        ):
            if plane.dtype != np.uint8 or plane.shape != shape or plane.strides[1] != 1:
                raise ValueError(f"vp9: plane {'yuv'[p]} must be uint8 {shape} with contiguous rows, "
                                 f"got {plane.dtype} {plane.shape} strides {plane.strides}")  # fmt: skip
            img.planes[p] = plane.ctypes.data
            img.stride[p] = plane.strides[0]
        return ctypes.pointer(img)

    def destroy(self) -> None:
        if self._open:
            self._open = False
            self.lib.vpx_codec_destroy(self._ctx)


class Vp9Codec:
    """libvpx VP9 backend of the `Codec` protocol (see codec.py and this module's docstring).

    `twopass_stats`: what `libvpx_first_pass` returned for this input (required: libvpx's external
    rate control runs only in its second pass). `bitrate_kbps`: libvpx's own 2-pass VBR at that
    target instead of forced q_index (a baseline); `crf`: libvpx's constant-quality mode (VPX_Q) at
    the q_index nearest `crf` (0..255; libvpx's cq-level is on its 0..63 quantizer scale). In both
    modes the `qps` given to `encode` are ignored and FrameStats.qp is the q_index libvpx chose.
    """

    name = "vp9"
    qp_min = QP_MIN
    qp_max = QP_MAX
    bitstream_ext = ".ivf"

    def __init__(self, cfg: CodecConfig, out_path: Path, *, twopass_stats: bytes,
                 bitrate_kbps: float | None = None, crf: float | None = None) -> None:  # fmt: skip
        if cfg.width % 2 or cfg.height % 2 or cfg.width < 16 or cfg.height < 16:
            raise ValueError(f"vp9: width and height must be even and >= 16 (got {cfg.width}x{cfg.height})")
        if not 0 <= cfg.preset <= PRESET_MAX:
            raise ValueError(f"vp9: preset must be 0..{PRESET_MAX} (libvpx --cpu-used, good quality), got {cfg.preset}")
        if bitrate_kbps is not None and not bitrate_kbps > 0:
            raise ValueError(f"vp9: bitrate_kbps must be > 0, got {bitrate_kbps}")
        self.cfg = cfg
        if crf is not None and bitrate_kbps is not None:
            raise ValueError("vp9: give crf or bitrate_kbps, not both")
        if crf is not None and not QP_MIN <= crf <= QP_MAX:
            raise ValueError(f"vp9: crf is a q_index, 0..255, got {crf}")
        self.bitrate_kbps = bitrate_kbps
        self.codec_rc = bitrate_kbps is not None or crf is not None
        self.first_pass: list[FirstPassFrame] = []  # from libvpx, filled before the first frame is coded
        self._next_q = QP_MIN
        self._results: list[tuple[int, int]] = []  # (bits, q_index) per coded frame, from libvpx
        self._decisions = 0
        self._error: BaseException | None = None  # an exception a callback caught
        self._error_where = ""
        self._model_created = False
        self._frames_in = 0
        self._sb_count = math.ceil(cfg.width / 64) * math.ceil(cfg.height / 64)
        self._enc = _Encoder(cfg, _VPX_RC_LAST_PASS, stats_in=twopass_stats, flags=_VPX_CODEC_USE_PSNR,
                             preset=cfg.preset, bitrate_kbps=bitrate_kbps,
                             cq_level=None if crf is None else quantizer_for_qindex(round(crf)))  # fmt: skip
        try:
            if not self.codec_rc:
                self._install_rate_control()
            fps = fps_fraction(cfg.fps)
            self._ivf = IvfWriter(Path(out_path), b"VP90", cfg.width, cfg.height, fps.numerator, fps.denominator)
        except BaseException:
            self._enc.destroy()
            raise
        self._decoder: av.CodecContext | None = None
        if cfg.measure >= Measure.SSIM:
            self._decoder = av.CodecContext.create("vp9", "r")
            self._decoder.options = {"threads": "1"}

    # -- Codec protocol: QP structure

    def layer_qp_offsets(self) -> list[int]:
        """One layer: every inter frame at the mini-GOP's base q_index."""
        return [0]

    def key_qp_offset(self, base_qp: int) -> int:
        """The q_index step (negative) to a quantiser KEY_STEP_RATIO times finer than `base_qp`'s."""
        return q_for_level(qstep_level(base_qp) - 6.0 * math.log2(KEY_STEP_RATIO)) - base_qp

    def temporal_layer(self, pos_in_minigop: int) -> int:
        return 0

    # -- Codec protocol: coding

    def encode(self, frames: list[YuvFrame], qps: list[int], key_first: bool) -> list[FrameStats]:
        """Codes `frames` at the forced q_index values `qps` (through the external rate control)."""
        if len(frames) != len(qps):
            raise ValueError(f"vp9: {len(frames)} frames but {len(qps)} QPs")
        if not self._enc._open:
            raise Vp9Error("vp9: encode() after close()")
        return [
            self._encode_frame(f, int(q), key_first and i == 0)
            for i, (f, q) in enumerate(zip(frames, qps, strict=True))
        ]

    def close(self) -> None:
        """Flushes libvpx (nothing is buffered at lag 0), closes the IVF file, frees the encoder."""
        if not self._enc._open:
            return
        try:
            packets = self._enc.encode(None, self._frames_in, force_key=False)
            if any(kind == _VPX_CODEC_CX_FRAME_PKT for kind, _ in packets):
                raise Vp9Error("vp9: libvpx still held a frame at close (lag 0 expected)")
        finally:
            self._ivf.close()
            self._enc.destroy()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals

    def _encode_frame(self, frame: YuvFrame, qp: int, key: bool) -> FrameStats:
        if not self.codec_rc and not QP_MIN <= qp <= QP_MAX:
            raise ValueError(f"vp9: q_index {qp} outside {QP_MIN}..{QP_MAX}")
        index = self._frames_in
        self._next_q = qp
        decisions = self._decisions
        try:
            packets = self._enc.encode(frame, index, force_key=key)
        except Vp9Error as exc:
            if self._error is not None:
                raise Vp9Error(f"vp9: frame {index}: rate-control callback {self._error_where} failed: "
                               f"{type(self._error).__name__}: {self._error}") from self._error  # fmt: skip
            raise exc
        self._frames_in += 1
        if not self.codec_rc:
            if not self._model_created:
                raise Vp9Error("vp9: libvpx never called create_model: the external rate control is not active")
            if self._decisions != decisions + 1:
                raise Vp9Error(
                    f"vp9: frame {index}: libvpx asked for {self._decisions - decisions} q decisions, expected 1"
                )
        data = b""
        sse = [math.nan] * 3
        is_key = False
        for kind, pkt in packets:
            if kind == _VPX_CODEC_CX_FRAME_PKT:
                if data:
                    raise Vp9Error(f"vp9: frame {index}: more than one frame packet (lag 0 expected)")
                pts = ctypes.c_int64.from_address(pkt + _PKT_FRAME_PTS).value
                if pts != index:
                    raise Vp9Error(f"vp9: packet pts {pts} but frame {index} expected")
                data = _stats_packet(pkt)
                is_key = bool(ctypes.c_uint32.from_address(pkt + _PKT_FRAME_FLAGS).value & _VPX_FRAME_IS_KEY)
            elif kind == _VPX_CODEC_PSNR_PKT:
                sse = [float(ctypes.c_uint64.from_address(pkt + _PKT_PSNR_SSE + 8 * k).value) for k in (1, 2, 3)]
        if not data:
            raise Vp9Error(f"vp9: no packet for frame {index} (lag 0 expected)")
        if key and not is_key:
            raise Vp9Error(f"vp9: frame {index}: a key frame was forced but libvpx coded an inter frame")
        self._ivf.write_frame(data, index)
        q_used = self._enc.last_q_index() if self.codec_rc else qp
        if self._results:
            bits, q_used = self._results.pop()
            self._results.clear()
            if not self.codec_rc and q_used != qp:
                raise Vp9Error(f"vp9: frame {index}: q_index {qp} was answered but libvpx coded it at {q_used}")
        elif not self.codec_rc:
            raise Vp9Error(f"vp9: frame {index}: libvpx reported no result to the rate control")
        ssim_y = math.nan
        if self._decoder is not None:
            decoded = self._decoder.decode(av.Packet(data))
            if len(decoded) != 1:
                raise Vp9Error(f"vp9: frame {index}: the VP9 decoder returned {len(decoded)} pictures for one packet")
            ssim_y = metrics.ssim(frame.y, decoded_plane(decoded[0], 0, frame.y.shape))
        if self.cfg.measure < Measure.SSE:
            sse = [math.nan] * 3
        return FrameStats(index=index, frame_type="KEY" if is_key else "INTER", temporal_layer=0, qp=q_used,
                          bits=8 * len(data), sse_y=sse[0], sse_u=sse[1], sse_v=sse[2], ssim_y=ssim_y)  # fmt: skip

    def _install_rate_control(self) -> None:
        """Hands libvpx our callbacks (kept referenced for the encoder's life: libvpx calls them)."""
        self._cb = [
            _CREATE(self._guard("create_model", self._on_create)),
            _SEND_FP(self._guard("send_firstpass_stats", self._on_first_pass)),
            _DECIDE(self._guard("get_encodeframe_decision", self._on_decide)),
            _UPDATE(self._guard("update_encodeframe_result", self._on_result)),
            _DELETE(self._guard("delete_model", lambda _model: None)),
        ]
        self._funcs = _RcFuncs(_VPX_RC_QP, self._cb[0], self._cb[1], None, self._cb[2], self._cb[3],
                               None, None, None, self._cb[4], None, None)  # fmt: skip
        self._enc.control_ptr(_VP9E_SET_EXTERNAL_RATE_CONTROL, ctypes.byref(self._funcs))
        if not self._model_created:
            raise Vp9Error("vp9: libvpx did not create the external rate-control model (is this its second pass?)")

    def _guard(self, where: str, fn):  # noqa: ANN202 -- returns a C callback body
        """Wraps a callback: any exception is kept (reported by encode) and becomes VPX_RC_ERROR."""

        def call(*args: object) -> int:
            try:
                fn(*args)
                return _VPX_RC_OK
            except BaseException as exc:  # noqa: BLE001 -- must never unwind into libvpx
                if self._error is None:
                    self._error, self._error_where = exc, where
                return _VPX_RC_ERROR

        return call

    def _on_create(self, _priv: int | None, _config: int | None, model: ctypes._Pointer) -> None:
        model[0] = ctypes.addressof(self._ctx_marker)
        self._model_created = True

    _ctx_marker = ctypes.c_int(0)  # any non-NULL address serves as the model handle

    def _on_first_pass(self, _model: int | None, stats: ctypes._Pointer) -> None:
        n = stats.contents.num_frames
        raw = np.ctypeslib.as_array(stats.contents.frame_stats, shape=(n * _FRAME_STATS_DOUBLES,))
        rows = raw.reshape(n, _FRAME_STATS_DOUBLES).tolist()
        self.first_pass = [FirstPassFrame.from_doubles(r) for r in rows]

    def _on_decide(self, _model: int | None, _gop_index: int, decision: ctypes._Pointer) -> None:
        d = decision.contents
        d.q_index = self._next_q
        d.delta_q_uv = 0
        # libvpx scales each superblock's rdmult by sb.rdmult * 256 / (rdmult + 1): R and R + 1 leave
        # it unchanged (the list is zeroed by libvpx, which would otherwise zero the rdmult scale).
        d.rdmult = 255
        for k in range(self._sb_count):
            d.sb_params_list[k].q_index = self._next_q
            d.sb_params_list[k].rdmult = 256
        self._decisions += 1

    def _on_result(self, _model: int | None, result: ctypes._Pointer) -> None:
        self._results.append((int(result.contents.bit_count), int(result.contents.actual_encoding_qindex)))
