"""The rl_io wire format: file names, typed messages, atomic writes, waiting for files.

Both programs import this module and nothing else of each other: the built-in encoder
(`builtin_encoder/`) writes requests and feedback and reads replies; the agent's `io_runner.py`
does the opposite. PROTOCOL.md is the normative text; this module is its executable form.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import math
import os
import re
import select
import stat
import struct
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Self

import orjson

PROTOCOL_VERSION = 2
# Versions this module reads: a version 1 message is a version 2 message without the v2 fields,
# which take their documented defaults (PROTOCOL.md, "Versions").
SUPPORTED_VERSIONS = (1, 2)

REQUEST_FMT = "mg{:04d}_rq.json"
REPLY_FMT = "mg{:04d}_qp.json"
FEEDBACK_FMT = "mg{:04d}_fb.json"
END_NAME = "end.json"
TMP_SUFFIX = ".tmp"
# No protocol file may be larger: a bigger one is an error, and nothing is allocated for it.
MAX_FILE_BYTES = 256 * 1024
# The mini-GOPs after a GOP's key that its ramp probe moves together (PROTOCOL.md §4.1.2): 1..RAMP_MINIGOPS.
RAMP_MINIGOPS = 5
# Every protocol file and temporary: a final name, or a final name + ".tmp" (the convention for
# encoders) or + ".<16 hex digits>.tmp" (write_atomic's unpredictable temporaries).
_PROTOCOL_NAME_RE = re.compile(r"^(?:mg\d{4,}_(?:rq|qp|fb)|end)\.json(?:(?:\.[0-9a-f]{16})?\.tmp)?$")


class ProtocolError(ValueError):
    """A protocol file is malformed; the message names the file and the field."""


class RlDirError(ValueError):
    """The rl_io directory cannot be used safely; the message names it and the fix."""


def request_path(rl_dir: Path, mg_index: int) -> Path:
    return Path(rl_dir) / REQUEST_FMT.format(mg_index)


def reply_path(rl_dir: Path, mg_index: int) -> Path:
    return Path(rl_dir) / REPLY_FMT.format(mg_index)


def feedback_path(rl_dir: Path, mg_index: int) -> Path:
    return Path(rl_dir) / FEEDBACK_FMT.format(mg_index)


def end_path(rl_dir: Path) -> Path:
    return Path(rl_dir) / END_NAME


def is_protocol_name(name: str) -> bool:
    """True for a protocol file's name or one of its temporaries (the names clearing removes)."""
    return _PROTOCOL_NAME_RE.match(name) is not None


# ----------------------------------------------------------------------------- messages


@dataclass
class FirstPass:
    """Optional first-pass statistics of a request (v2), one entry per frame in every list.

    The frames are this mini-GOP's, in display order, followed by those of the lookahead mini-GOPs
    (the ones `lookahead_fp_bpp` describes). Costs are mean absolute prediction errors per luma
    sample of a low-resolution analysis, 8-bit scale; PROTOCOL.md defines each field.
    """

    intra_cost: list[float]  # error of intra (spatial) prediction
    inter_cost: list[float]  # error of the best of intra and motion-compensated prediction from the previous frame
    sr_inter_cost: list[float]  # the same with the frame two back as reference
    inter_share: list[float]  # share of blocks where motion compensation beats intra, 0..1
    motion_share: list[float]  # share of blocks motion-compensated with a non-zero vector, 0..1
    mv_mean: list[float]  # mean |mv_x| + |mv_y| of the motion-compensated blocks, luma pixels
    noise_sigma: list[float]  # estimated noise standard deviation of the luma, 8-bit scale
    # Optional: log2 of (own + propagated cost) / own cost of each frame over the rest of its GOP
    # (MB-tree on blocks, builtin_encoder/analysis.py `propagation`), >= 0; None if not sent.
    propagation: list[float] | None = None


@dataclass
class KeyProbe:
    """Optional probe of a GOP's decision (v2): what the encoder measured by coding the whole GOP twice more.

    Both encodes code every frame of the GOP under the encoder's own rate control, with the probed mini-GOPs'
    QP `offset` QP units finer (`finer_*`) and coarser (`coarser_*`) than the rate control's base QP and Δ=0 on
    the others; bits are the GOP's bits, PSNR-Y its overall PSNR-Y (from the summed squared error), dB. As
    `key_probe` the key mini-GOP is probed; as `ramp_probe`, mini-GOPs 1..RAMP_MINIGOPS together. `zero_*`
    (optional, both or neither): the same GOP coded once more with every mini-GOP at Δ=0, shared by both probes.
    """

    offset: int  # QP units (the agent's 0..63 scale) of each probe's change to this mini-GOP's base QP, >= 1
    finer_bits: int
    finer_psnr_y: float
    coarser_bits: int
    coarser_psnr_y: float
    zero_bits: int | None = None  # optional (added later in v2): the GOP coded a third time, at Δ=0 throughout
    zero_psnr_y: float | None = None


@dataclass
class Request:
    """Encoder -> agent, `mg%04d_rq.json`: everything known before mini-GOP `mg_index` is coded.

    Bits are whole bits; `fp_*` are first-pass costs in bits per pixel (pass-1 bits at the
    first-pass QP divided by luma pixels), a codec-independent complexity measure.
    """

    mg_index: int  # 0-based mini-GOP number across the whole encode
    gop_index: int  # 0-based GOP (key-frame period) number; one GOP is one episode
    mg_in_gop: int  # 0-based position of this mini-GOP inside its GOP
    mgs_in_gop: int  # number of mini-GOPs in this GOP
    gop_frames: int  # number of frames in this GOP
    first_frame: int  # display index of the first frame of the mini-GOP
    frame_count: int  # frames in this mini-GOP (>= 1)
    frame_types: list[str]  # per frame: "KEY" or "INTER"
    temporal_layers: list[int]  # per frame: 0 = base layer
    base_qp: int  # the encoder's own base QP for this mini-GOP (its rate control's choice)
    qp_min: int  # smallest QP the agent may answer
    qp_max: int  # largest QP the agent may answer
    fp_bpp: float  # first-pass bits per pixel of this mini-GOP (mean over its frames)
    lookahead_fp_bpp: list[float]  # the same for the next mini-GOPs (may be empty)
    gop_bits_spent: int  # bits spent so far in this GOP
    gop_bits_budget: int  # the rate control's bit budget for the whole GOP
    total_bits_spent: int  # bits spent so far in the whole encode
    total_bits_budget: int  # bit budget of the whole encode (target bitrate x duration)
    target_kbps: float  # target bitrate, kbit/s (1000 bit/s)
    fps: float  # frames per second
    width: int  # luma width, pixels
    height: int  # luma height, pixels
    total_frames: int  # frames in the whole encode
    codec: str = ""  # informational: "svtav1", "x264", ...
    session: str = ""  # echoes the encoder's --rl-session; "" if none
    version: int = PROTOCOL_VERSION
    # v2: the largest QP of the codec's scale (63 for AV1 / x264-style 0..63 scales, 255 for VP9's
    # q_index); the agent's action range is defined on a 0..63 scale and stretched to this one.
    qp_scale_max: int = 63
    first_pass: FirstPass | None = None  # v2, optional: per-frame first-pass statistics
    key_probe: KeyProbe | None = None  # v2, optional, a GOP's first mini-GOP only: the probe encodes of its QP
    # v2, optional, mini-GOPs 1..RAMP_MINIGOPS of a GOP only: the GOP coded with those mini-GOPs moved together
    ramp_probe: KeyProbe | None = None


@dataclass
class Reply:
    """Agent -> encoder, `mg%04d_qp.json`: `{"qp": N}`; `mg_index`/`session` are optional echoes."""

    qp: int
    mg_index: int | None = None
    session: str | None = None


@dataclass
class Feedback:
    """Encoder -> agent, `mg%04d_fb.json`: the result of coding mini-GOP `mg_index`.

    MSE values are per-sample means over the mini-GOP's frames (8-bit scale, 0..65025);
    PSNR values are computed from those means (overall PSNR, not a mean of per-frame PSNRs).
    """

    mg_index: int
    gop_index: int
    frame_count: int
    bits: int  # bits of all frames of the mini-GOP
    qp_used: int  # the base QP actually applied to the mini-GOP
    frame_qps: list[int]  # QP of each frame after layer / key-frame offsets
    frame_bits: list[int]  # bits of each frame
    mse_y: float
    mse_u: float
    mse_v: float
    psnr_y: float  # dB, from mse_y
    psnr_u: float
    psnr_v: float
    psnr_y_frame_mean: float  # dB, mean of per-frame PSNR-Y (reported, not the headline)
    ssim_y: float  # mean SSIM-Y over the frames, 0..1
    gop_end: int  # 1 if this mini-GOP ends its GOP (end of episode), else 0
    session: str = ""
    version: int = PROTOCOL_VERSION


@dataclass
class End:
    """Encoder -> agent, `end.json`, written once when the encode stops (successfully or not)."""

    status: str  # "ok" or "error"
    mini_gops: int  # mini-GOPs fully coded
    frames: int  # frames coded
    bits: int  # total bits written
    message: str = ""
    session: str = ""
    version: int = PROTOCOL_VERSION


# ----------------------------------------------------------------------------- validation

_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "qp": (0, 255),
}
# Integers must fit a signed 64-bit integer (what any encoder's C side holds); larger ones are malformed.
INT_LIMIT = 2**63


def _check_type(path: Path, name: str, value: Any, annotation: str) -> Any:
    """Checks one JSON value against a dataclass annotation (as a string); returns it typed."""

    def bad(why: str) -> ProtocolError:
        return ProtocolError(f"{path}: field '{name}' {why} (got {value!r})")

    nullable, ann = _annotation(annotation)
    if nullable and value is None:
        return None
    if ann == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise bad("must be an integer")
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise bad("must fit a signed 64-bit integer")
        return value
    if ann == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("must be a number")
        if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
            raise bad("must fit a signed 64-bit integer")
        if not math.isfinite(value):
            raise bad("must be finite")
        return float(value)
    if ann == "str":
        if not isinstance(value, str):
            raise bad("must be a string")
        return value
    if ann.startswith("list["):
        if not isinstance(value, list):
            raise bad("must be a list")
        inner = ann[len("list[") : -1]
        kinds = set(map(type, value))
        if inner == "float" and kinds <= {float} and all(map(math.isfinite, value)):
            return value  # the usual request: floats straight from the parser, checked in C loops
        if inner == "int" and kinds <= {int} and (not value or (min(value) >= -INT_LIMIT and max(value) < INT_LIMIT)):
            return value
        ok = _SCALAR_OK.get(inner)
        if ok is not None and all(map(ok, value)):  # fast path: every entry already valid (the usual case)
            return [float(v) for v in value] if inner == "float" else list(value)
        return [_check_type(path, f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
    if ann in _NESTED:
        if not isinstance(value, dict):
            raise bad("must be a JSON object")
        return _fields_from_dict(_NESTED[ann], value, path, prefix=f"{name}.")
    raise AssertionError(f"unsupported annotation {annotation}")


_NESTED: dict[str, type] = {"FirstPass": FirstPass, "KeyProbe": KeyProbe}


def _int_ok(v: Any) -> bool:
    return type(v) is int and -INT_LIMIT <= v < INT_LIMIT


def _float_ok(v: Any) -> bool:
    return (type(v) is float and math.isfinite(v)) or _int_ok(v)


# Entries of a list that _check_type would accept unchanged (bool is not int here, as above);
# anything else goes through _check_type one by one, which names the first bad entry.
_SCALAR_OK: dict[str, Any] = {"int": _int_ok, "float": _float_ok, "str": lambda v: type(v) is str}


@functools.cache
def _annotation(annotation: str) -> tuple[bool, str]:
    """'int | None' -> (True, 'int'); 'list[float]' -> (False, 'list[float]'). Cached: parsing runs per reply."""
    ann = annotation.replace(" ", "")
    return (True, ann[: -len("|None")]) if ann.endswith("|None") else (False, ann)


@functools.cache
def _field_plan(cls: type) -> tuple[tuple[str, str, bool], ...]:
    """(name, annotation, has a default) of each field of dataclass `cls`, computed once per class."""
    return tuple((f.name, str(f.type), f.default is not MISSING or f.default_factory is not MISSING)
                 for f in fields(cls))  # fmt: skip


def _fields_from_dict(cls: type, data: dict, path: Path, prefix: str = "") -> Any:
    """Builds dataclass `cls` from a JSON object, checking every field's type; unknown keys are ignored."""
    kwargs = {}
    for name, annotation, has_default in _field_plan(cls):
        if name not in data:
            if has_default:
                continue
            raise ProtocolError(f"{path}: missing field '{prefix}{name}'")
        kwargs[name] = _check_type(path, prefix + name, data[name], annotation)
    return cls(**kwargs)


def _from_dict(cls: type, data: Any, path: Path) -> Any:
    if not isinstance(data, dict):
        raise ProtocolError(f"{path}: top level must be a JSON object (got {type(data).__name__})")
    # The version first: a message of an unknown version is refused as such, not for a field.
    version = data.get("version", PROTOCOL_VERSION)
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise ProtocolError(
            f"{path}: field 'version' is {version!r}; this program reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    return _fields_from_dict(cls, data, path)


def _validate_request(req: Request, path: Path) -> None:
    n = req.frame_count
    if n < 1:
        raise ProtocolError(f"{path}: field 'frame_count' must be >= 1 (got {n})")
    for name in ("frame_types", "temporal_layers"):
        if len(getattr(req, name)) != n:
            raise ProtocolError(f"{path}: field '{name}' must have frame_count={n} entries")
    for t in req.frame_types:
        if t not in ("KEY", "INTER"):
            raise ProtocolError(f"{path}: field 'frame_types' entries must be KEY or INTER (got {t!r})")
    if not req.qp_min <= req.base_qp <= req.qp_max:
        raise ProtocolError(
            f"{path}: field 'base_qp' {req.base_qp} is outside [qp_min, qp_max] = [{req.qp_min}, {req.qp_max}]"
        )
    if not 0 <= req.mg_in_gop < req.mgs_in_gop:
        raise ProtocolError(f"{path}: field 'mg_in_gop' must be in [0, mgs_in_gop)")
    for name in ("width", "height", "total_frames", "gop_frames", "gop_bits_budget", "total_bits_budget"):
        if getattr(req, name) <= 0:
            raise ProtocolError(f"{path}: field '{name}' must be > 0")
    if req.fps <= 0 or req.target_kbps <= 0:
        raise ProtocolError(f"{path}: fields 'fps' and 'target_kbps' must be > 0")
    if req.fp_bpp <= 0 or any(v <= 0 for v in req.lookahead_fp_bpp):
        raise ProtocolError(
            f"{path}: fields 'fp_bpp' and 'lookahead_fp_bpp' must be > 0 (got {req.fp_bpp}, {req.lookahead_fp_bpp}): "
            "an encoder without a first pass estimates them from its own coding of earlier frames"
        )
    if not req.qp_max <= req.qp_scale_max <= 1023:
        raise ProtocolError(
            f"{path}: field 'qp_scale_max' is {req.qp_scale_max}; it must be >= qp_max ({req.qp_max}) and <= 1023"
        )
    if req.first_pass is not None:
        _validate_first_pass(req.first_pass, req.frame_count, path)
    if req.key_probe is not None:
        if req.mg_in_gop != 0:
            raise ProtocolError(
                f"{path}: field 'key_probe' is sent with a GOP's first mini-GOP only (mg_in_gop is {req.mg_in_gop})"
            )
        _validate_probe(req.key_probe, "key_probe", path)
    if req.ramp_probe is not None:
        if not 1 <= req.mg_in_gop <= RAMP_MINIGOPS:
            raise ProtocolError(
                f"{path}: field 'ramp_probe' is sent with a GOP's mini-GOPs 1..{RAMP_MINIGOPS} only "
                f"(mg_in_gop is {req.mg_in_gop})"
            )
        _validate_probe(req.ramp_probe, "ramp_probe", path)


def _validate_probe(probe: KeyProbe, field: str, path: Path) -> None:
    """offset >= 1; bits > 0; PSNR-Y in (0, 100] dB (100: lossless)."""
    if probe.offset < 1:
        raise ProtocolError(f"{path}: field '{field}.offset' must be >= 1 (got {probe.offset})")
    if (probe.zero_bits is None) != (probe.zero_psnr_y is None):
        raise ProtocolError(f"{path}: fields '{field}.zero_bits' and '{field}.zero_psnr_y' come together or not at all")
    for side in ("finer", "coarser") + (("zero",) if probe.zero_bits is not None else ()):
        bits, psnr = getattr(probe, f"{side}_bits"), getattr(probe, f"{side}_psnr_y")
        if bits <= 0:
            raise ProtocolError(f"{path}: field '{field}.{side}_bits' must be > 0 (got {bits})")
        if not 0.0 < psnr <= 100.0:
            raise ProtocolError(f"{path}: field '{field}.{side}_psnr_y' must be in (0, 100] dB (got {psnr})")


def _validate_first_pass(fp: FirstPass, frame_count: int, path: Path) -> None:
    """Every list the same length, at least the mini-GOP's frames; values >= 0; shares in [0, 1]."""
    length = len(fp.intra_cost)
    if length < frame_count:
        raise ProtocolError(
            f"{path}: field 'first_pass.intra_cost' has {length} entries, fewer than frame_count {frame_count}"
        )
    for f in fields(FirstPass):
        values = getattr(fp, f.name)
        if values is None:  # an optional list the encoder left out
            continue
        if len(values) != length:
            raise ProtocolError(
                f"{path}: field 'first_pass.{f.name}' has {len(values)} entries, 'first_pass.intra_cost' {length}"
            )
        top = 1.0 if f.name.endswith("_share") else math.inf
        if values and (min(values) < 0.0 or max(values) > top):  # values are finite: checked on parsing
            i, v = next((i, v) for i, v in enumerate(values) if not 0.0 <= v <= top)
            raise ProtocolError(f"{path}: field 'first_pass.{f.name}[{i}]' is {v}, outside [0, {top}]")


def _validate_feedback(fb: Feedback, path: Path) -> None:
    if fb.gop_end not in (0, 1):
        raise ProtocolError(f"{path}: field 'gop_end' must be 0 or 1 (got {fb.gop_end})")
    if fb.bits < 0 or fb.frame_count < 1:
        raise ProtocolError(f"{path}: fields 'bits' must be >= 0 and 'frame_count' >= 1")
    for name in ("mse_y", "mse_u", "mse_v"):
        if getattr(fb, name) < 0:
            raise ProtocolError(f"{path}: field '{name}' must be >= 0")
    if not 0.0 <= fb.ssim_y <= 1.0:
        raise ProtocolError(f"{path}: field 'ssim_y' must be in [0, 1] (got {fb.ssim_y})")
    for name in ("frame_qps", "frame_bits"):
        if len(getattr(fb, name)) != fb.frame_count:
            raise ProtocolError(
                f"{path}: field '{name}' has {len(getattr(fb, name))} entries for frame_count {fb.frame_count}"
            )
    if sum(fb.frame_bits) != fb.bits:
        raise ProtocolError(f"{path}: field 'bits' is {fb.bits}, the sum of 'frame_bits' is {sum(fb.frame_bits)}")


def check_feedback_matches(fb: Feedback, req: Request, path: Path, reply_qp: int | None = None) -> None:
    """Feedback must describe the mini-GOP its request announced: same index, GOP and frame count,
    the GOP end its request's position implies and, when `reply_qp` is given, `qp_used` = the reply.

    Raises ProtocolError naming the file and the first field that disagrees.
    """
    for name in ("mg_index", "gop_index", "frame_count"):
        got, want = getattr(fb, name), getattr(req, name)
        if got != want:
            raise ProtocolError(f"{path}: field '{name}' is {got}, its request says {want}")
    if reply_qp is not None and fb.qp_used != reply_qp:
        raise ProtocolError(f"{path}: field 'qp_used' is {fb.qp_used}, the reply was qp {reply_qp}")
    last = req.mg_in_gop == req.mgs_in_gop - 1 or req.first_frame + req.frame_count >= req.total_frames
    if fb.gop_end != int(last):
        raise ProtocolError(
            f"{path}: field 'gop_end' is {fb.gop_end}, but its request is mini-GOP {req.mg_in_gop} of "
            f"{req.mgs_in_gop} in its GOP (frames {req.first_frame}..{req.first_frame + req.frame_count - 1} of "
            f"{req.total_frames})"
        )


def check_request_follows(req: Request, prev: Request | None, path: Path) -> None:
    """Request N must continue request N-1 (`prev`; None for N = 0): the same encode (`total_frames`),
    the next frames (`first_frame`) and the next position: mini-GOP `mg_in_gop` + 1 of the same GOP, or
    mini-GOP 0 of GOP `gop_index` + 1 after a GOP's last mini-GOP (the position that ends a GOP).

    Raises ProtocolError naming the file and the first field that disagrees.
    """
    if prev is None:
        want = {"gop_index": 0, "mg_in_gop": 0, "first_frame": 0}
    else:
        new_gop = prev.mg_in_gop == prev.mgs_in_gop - 1
        want = {
            "total_frames": prev.total_frames,
            "gop_index": prev.gop_index + new_gop,
            "mg_in_gop": 0 if new_gop else prev.mg_in_gop + 1,
            "first_frame": prev.first_frame + prev.frame_count,
        }
    for name, value in want.items():
        if getattr(req, name) != value:
            after = "it is the first request" if prev is None else (
                f"after mini-GOP {prev.mg_in_gop} of {prev.mgs_in_gop} in GOP {prev.gop_index}, frames "
                f"{prev.first_frame}..{prev.first_frame + prev.frame_count - 1} of {prev.total_frames}")  # fmt: skip
            raise ProtocolError(f"{path}: field '{name}' is {getattr(req, name)}, {value} was due ({after})")


def parse_request(text: str, path: Path) -> Request:
    req = _from_dict(Request, _loads(text, path), path)
    _validate_request(req, path)
    return req


def request_from_dict(data: dict, path: Path) -> Request:
    """A Request from an already-decoded JSON object (e.g. one stored in a dataset), fully checked."""
    req = _from_dict(Request, data, path)
    _validate_request(req, path)
    return req


def parse_feedback(text: str, path: Path) -> Feedback:
    fb = _from_dict(Feedback, _loads(text, path), path)
    _validate_feedback(fb, path)
    return fb


def parse_end(text: str, path: Path) -> End:
    end = _from_dict(End, _loads(text, path), path)
    if end.status not in ("ok", "error"):
        raise ProtocolError(f"{path}: field 'status' must be \"ok\" or \"error\" (got {end.status!r})")
    for name in ("mini_gops", "frames", "bits"):
        if getattr(end, name) < 0:
            raise ProtocolError(f"{path}: field '{name}' must be >= 0 (got {getattr(end, name)})")
    return end


def parse_reply(text: str, path: Path, qp_min: int = 0, qp_max: int = 255) -> Reply:
    """Parses a reply; a QP outside [qp_min, qp_max] is an error, never silently clamped."""
    reply = _from_dict(Reply, _loads(text, path), path)
    if not qp_min <= reply.qp <= qp_max:
        raise ProtocolError(f"{path}: field 'qp' is {reply.qp}, outside the allowed range [{qp_min}, {qp_max}]")
    return reply


# bytes.translate table: every ASCII digit -> b"0", every other byte -> b" ".
_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGIT_RUN = b"0" * 19  # 10**18 and up: where orjson's integers stop matching Python's


def _loads(text: str, path: Path) -> Any:
    """Parses one protocol file's text: what `json.loads` returns, NaN/Infinity rejected.

    orjson parses a request in ~10 µs against ~90 µs for `json` (it sits on the reply path). It
    reads integers beyond 64 bits as floats, where `json` keeps them exact for the signed 64-bit
    check, and its error messages differ: text with a run of 19+ digits, and text orjson rejects,
    go through `json`, so what is accepted and every error message stay as they were.
    """
    if _LONG_DIGIT_RUN not in text.encode("utf-8", "surrogatepass").translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # the json module below says why, in the messages the protocol documents
    try:
        # parse_constant rejects NaN/Infinity, which Python's json accepts by default.
        return json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ProtocolError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:  # e.g. 100000 nested '[': still under MAX_FILE_BYTES
        raise ProtocolError(f"{path}: not valid JSON: nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def _without_none(data: dict) -> dict:
    """The object without its None fields, nested objects included: an optional field left out is absent."""
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None}


def to_json(msg: Any) -> str:
    return json.dumps(_without_none(asdict(msg)), separators=(",", ":"), allow_nan=False)


# ----------------------------------------------------------------------------- file I/O


def prepare_rl_dir(rl_dir: Path, flag: str = "--rl-dir", create: bool = True) -> Path:
    """Makes sure `rl_dir` is a directory only this user can write to; creates it (mode 0700) if absent.

    Like ssh with ~/.ssh, an existing directory that belongs to another user, or that group or
    others may write to, is refused: whoever can write there could plant requests or replies, or
    replace the files this program writes. Raises RlDirError naming the directory and the fix;
    `flag` names the option the directory came from.
    """
    rl_dir = Path(rl_dir)
    if create and not os.path.lexists(rl_dir):
        try:
            rl_dir.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(rl_dir, 0o700)
        except FileExistsError:
            pass  # created meanwhile by someone else: checked below like any existing directory
        except OSError as exc:
            raise RlDirError(f"{flag}: cannot create {rl_dir}: {exc.strerror or exc}") from None
    try:
        st = os.stat(rl_dir)
    except OSError as exc:
        raise RlDirError(f"{flag}: cannot use {rl_dir}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RlDirError(f"{flag}: {rl_dir} is not a directory")
    me = os.geteuid()
    if st.st_uid != me:
        raise RlDirError(
            f"{flag}: {rl_dir} belongs to uid {st.st_uid}, not to you (uid {me}): its owner could read, plant "
            "and replace protocol files. Use a directory of your own: remove this one or choose another."
        )
    if st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode)
        raise RlDirError(
            f"{flag}: {rl_dir} is writable by group or others (mode {mode:04o}): they could plant or replace "
            f"protocol files. Fix: chmod 700 {rl_dir}"
        )
    return rl_dir


def _tmp_suffix() -> str:
    """A temporary's suffix: random, so that nobody can plant anything at the name in advance."""
    return f".{os.urandom(8).hex()}{TMP_SUFFIX}"


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Writes `text` to `path` via a temporary name in the same directory and a rename.

    A reader that sees `path` therefore always sees the complete file. The temporary has a random
    name and is created exclusively without following links (O_CREAT|O_EXCL|O_NOFOLLOW): a file or
    link already there is an error, never written through. The rename replaces a link at `path`
    itself, not its target. `mode` (0600 for protocol files) is reduced by the umask.
    """
    path = Path(path)
    tmp = path.with_name(path.name + _tmp_suffix())
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        # os.fdopen fstat()s the descriptor before the write: on Linux >= 6.13 that is what gives the
        # file a fine-grained mtime (not the last timer tick), which the agent's handshake figures use.
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_message(path: Path, msg: Any) -> None:
    """Writes one protocol message; a message over MAX_FILE_BYTES is a ProtocolError (nothing written)."""
    text = to_json(msg)
    if len(text.encode("utf-8")) > MAX_FILE_BYTES:
        raise ProtocolError(f"{path}: message of {len(text.encode('utf-8'))} bytes, over the limit of {MAX_FILE_BYTES}")
    write_atomic(path, text)


def read_bytes(path: Path) -> tuple[bytes, os.stat_result] | None:
    """The content and status of protocol file `path`, or None if there is none.

    Opened without following a link (O_NOFOLLOW) nor blocking on a FIFO; a link, a non-regular
    file or a file over MAX_FILE_BYTES is a ProtocolError naming it. At most MAX_FILE_BYTES + 1
    bytes are ever read, whatever the file's size.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ProtocolError(f"{path}: is a symbolic link, not followed: protocol files must be regular") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProtocolError(f"{path}: is not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise ProtocolError(f"{path}: {st.st_size} bytes, over the protocol's limit of {MAX_FILE_BYTES} bytes")
        chunks: list[bytes] = []
        left = MAX_FILE_BYTES + 1
        while left > 0 and (chunk := os.read(fd, left)):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_FILE_BYTES:
        raise ProtocolError(f"{path}: grew over the protocol's limit of {MAX_FILE_BYTES} bytes while read")
    return data, st


def decode(data: bytes, path: Path) -> str:
    """`data` as text; invalid UTF-8 is a ProtocolError naming `path`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{path}: not valid UTF-8: {exc}") from None


def read_text(path: Path) -> str | None:
    """The text of protocol file `path` (see `read_bytes`), or None if there is none."""
    got = read_bytes(path)
    return None if got is None else decode(got[0], path)


def clear_protocol_files(rl_dir: Path) -> int:
    """Removes every protocol file and temporary (and nothing else) from `rl_dir`; returns how many."""
    removed = 0
    rl_dir = Path(rl_dir)
    if not rl_dir.is_dir():
        return 0
    for p in rl_dir.iterdir():
        if is_protocol_name(p.name):
            try:
                p.unlink()  # a link is removed itself, never its target
                removed += 1
            except FileNotFoundError:
                pass
    return removed


# ----------------------------------------------------------------------------- waiting for files

_IN_MOVED_TO = 0x00000080
_IN_CLOSE_WRITE = 0x00000008
_IN_CREATE = 0x00000100
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000


class DirWatcher:
    """Blocks until files appear in one directory, without busy polling.

    Uses Linux inotify through libc (events for rename-into-place and close-after-write);
    elsewhere, or if inotify is unavailable, falls back to a short sleep-poll. Callers
    always re-check the file system after a wake-up, so a missed or spurious event only
    costs latency, never correctness.
    """

    def __init__(self, directory: Path, poll_interval_s: float = 0.005) -> None:
        self.directory = Path(directory)
        self.poll_interval_s = poll_interval_s
        self._fd = -1
        self._libc = None
        name = ctypes.util.find_library("c")
        if name and os.uname().sysname == "Linux":
            try:
                libc = ctypes.CDLL(name, use_errno=True)
                fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
                if fd >= 0:
                    mask = _IN_MOVED_TO | _IN_CLOSE_WRITE | _IN_CREATE
                    wd = libc.inotify_add_watch(fd, str(self.directory).encode(), mask)
                    if wd >= 0:
                        self._fd, self._libc = fd, libc
                    else:
                        os.close(fd)
            except (OSError, AttributeError):
                self._fd = -1

    @property
    def uses_inotify(self) -> bool:
        return self._fd >= 0

    def wait(self, timeout_s: float) -> None:
        """Returns after an event in the directory or after `timeout_s` seconds."""
        if self._fd < 0:
            time.sleep(min(self.poll_interval_s, max(timeout_s, 0.0)))
            return
        ready, _, _ = select.select([self._fd], [], [], max(timeout_s, 0.0))
        if ready:
            self._drain()

    def _drain(self) -> None:
        try:
            while True:
                buf = os.read(self._fd, 65536)
                if len(buf) < struct.calcsize("iIII"):
                    return
        except BlockingIOError:
            return

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_when_present(path: Path, watcher: DirWatcher, deadline: float, alive: Any = None) -> str | None:
    """Waits for `path` (written atomically by the peer) and returns its text.

    Returns None when `deadline` (time.monotonic()) passes or `alive()` returns False. A link, a
    non-regular file or an oversized file at `path` is a ProtocolError naming it (see `read_bytes`).
    """
    path = Path(path)
    while True:
        text = read_text(path)
        if text is not None:
            return text
        now = time.monotonic()
        if now >= deadline or (alive is not None and not alive()):
            return None
        # Wake at least every 0.2 s to notice a dead peer even without a file event.
        watcher.wait(min(deadline - now, 0.2))
