"""Pass-1 statistics and the pass-2 rate control (rc-mode 1, two-pass VBR; also rc-mode 0's bookkeeping).

Model. A mini-GOP coded at base QP q (each frame at q + its layer / key offset, as the codec
prescribes) costs, per frame i of class c (KEY or INTER),

    bits_i(q) ~= s_c * b_i * 2^(-(q - q_i) / k_c)

where b_i are the frame's bits in the stat file, coded at base QP q_i (the first-pass QP q1 for
a pass-1 file), k_c is the codec's "QP per halving of bits" for the class (CODEC_RC, measured,
see there), and s_c is a learned scale per class that absorbs the difference between the fast
first-pass preset and the real one and the model's error at the operating QP.

Allocation. Coding every mini-GOP at one common base QP is close to the PSNR-optimal allocation
for a fixed total (equal slope), so before every mini-GOP the controller solves

    sum over the remaining frames of bits_i(q) = remaining budget

for a real q (monotone in q: bisection), rounds it, and bounds the change from the previous
mini-GOP's base QP to `max_step` (so the QP does not oscillate). After each mini-GOP the scales
s_c are updated from actual / predicted bits (exponentially weighted), which closes the loop:
over- or under-spending moves the QP of everything that is left, and the horizon shrinks towards
the end, so the total lands on target. A GOP's budget (reported to the agent) is fixed when the
GOP starts: the remaining budget times the GOP's share of the predicted remaining bits at that
common QP, i.e. the GOP's spend under the encoder's own plan (proportional to its scaled
first-pass bits).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from builtin_encoder.errors import BadInput
from builtin_encoder.layout import MiniGop
from builtin_encoder.vp9_qindex import qstep_level

STATS_FORMAT = "builtin_encoder-stats"
STATS_VERSION = 3  # 2: the first-pass analysis fields (analysis.py); 3: propagation
CLASSES = ("KEY", "INTER")  # frame classes with their own k and learned scale


@dataclass(frozen=True)
class CodecRcParams:
    """Per-codec constants of the rate-control model."""

    k_key: float  # base-QP increase that halves a key frame's bits (measured, see CODEC_RC)
    k_inter: float  # the same for inter frames
    first_pass_qp: int  # base QP of pass 1; also the reference QP of the fp_bpp features
    first_pass_preset: int  # fast preset used for pass 1
    max_step: int  # largest change of the encoder's base QP between consecutive mini-GOPs
    first_correction_max: int = 10  # largest QP move of pass 1 after its first mini-GOP
    # The QP's position on the model's exponent scale: bits ~ 2^(-level(q) / k). The identity for
    # codecs whose QP is already logarithmic in the quantiser step (H.264, AV1); VP9's q_index is not.
    level: Callable[[float], float] = float


# k measured once with constant-QP encodes of the bundled clips (carphone 120 frames, bikes 128,
# bigbuckbunny 64; keyint 64, mini-GOP 8, default presets), as dQP / log2(bits ratio) between
# neighbouring QPs 6-8 apart:
#   x264 (QP 14..44):     inter 4.5-7.6 (typ. 6), key 6.5-9 (typ. 7.5)
#   SVT-AV1 (QP 24..62):  inter 7-11.7 (typ. 9), key 9.6-14 (typ. 11)
#   VP9 (q_index 40..240, in 6*log2(qstep) units; carphone and bikes, 24 frames, preset 5):
#                         inter 4.4-11.6 (typ. 5.5), key 6.5-8.6 (typ. 7.5)
# Model error from k only matters between the first-pass QP and the operating QP: the learned
# class scales absorb the rest.
CODEC_RC: dict[str, CodecRcParams] = {
    "svtav1": CodecRcParams(k_key=11.0, k_inter=8.5, first_pass_qp=40, first_pass_preset=13, max_step=3),
    "x264": CodecRcParams(k_key=7.5, k_inter=6.0, first_pass_qp=30, first_pass_preset=8, max_step=2),
    # VP9: QPs are q_index 0..255, the exponent uses 6*log2(AC quantiser step) (vp9_qindex.qstep_level).
    "vp9": CodecRcParams(
        k_key=7.5,
        k_inter=5.5,
        first_pass_qp=120,
        first_pass_preset=5,
        max_step=8,
        first_correction_max=40,
        level=qstep_level,
    ),  # fmt: skip
}


# ----------------------------------------------------------------------------- stat files


@dataclass
class StatHeader:
    """First line of a stat file: what was encoded, so a mismatching file can be refused."""

    codec: str
    width: int  # luma pixels
    height: int
    frames: int
    fps: float
    keyint: int
    mini_gop: int
    pass_no: int  # 1 = first pass at a fixed QP, 2 = the real encode
    preset: int
    analysed: bool = True  # the frames carry the first-pass analysis (False for version 1 files)


@dataclass
class FrameStat:
    """One frame of a stat file (one JSON line)."""

    frame: int  # display index
    mg: int  # mini-GOP index
    gop: int  # GOP index
    type: str  # "KEY" or "INTER"
    layer: int  # temporal layer
    base_qp: int  # base QP of the frame's mini-GOP
    qp: int  # QP of the frame (base + offset)
    bits: int  # coded size, bits
    luma_var: float  # variance of the luma samples (8-bit scale, squared)
    sad: float  # mean |Y - Y_prev| per luma sample (0 for the first frame)
    # First-pass analysis (builtin_encoder/analysis.py, FrameAnalysis); 0 where not collected.
    intra_cost: float = 0.0
    inter_cost: float = 0.0
    sr_inter_cost: float = 0.0
    inter_share: float = 0.0
    motion_share: float = 0.0
    mv_mean: float = 0.0
    noise_sigma: float = 0.0
    # Version 3: analysis.propagation of the frame over the rest of its GOP; None without blocks (VP9).
    propagation: float | None = None


def write_stats(path: Path, header: StatHeader, frames: list[FrameStat]) -> None:
    """Writes a stat file: JSON lines, a header line then one line per frame."""
    with open(path, "w", encoding="utf-8") as fh:
        head = {"format": STATS_FORMAT, "version": STATS_VERSION, **asdict(header)}
        fh.write(json.dumps(head) + "\n")
        for f in frames:
            fh.write(json.dumps(asdict(f), separators=(",", ":")) + "\n")


def read_stats(path: Path) -> tuple[StatHeader, list[FrameStat]]:
    """Reads a stat file written by write_stats; any defect raises BadInput naming the file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadInput(f"--stat-in: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"--stat-in: {path} is not a stat file (not text)") from None
    try:
        head = json.loads(lines[0]) if lines else None
        if not isinstance(head, dict) or head.get("format") != STATS_FORMAT:
            raise ValueError("first line is not a builtin_encoder stat header")
        version = head.get("version")
        if version not in (1, 2, STATS_VERSION):
            raise ValueError(f"version {version} (this program reads 1 to {STATS_VERSION})")
        # Version 1 files have no analysis: read, with analysed=False and the fields at 0.
        header = StatHeader(**{f.name: head[f.name] for f in fields(StatHeader) if f.name != "analysed"},
                            analysed=version >= 2 and bool(head.get("analysed", True)))  # fmt: skip
        # Each version's fields: 1 the required ones, 2 the analysis, 3 propagation (None before).
        names = [f.name for f in fields(FrameStat)
                 if (version >= 2 or f.default is MISSING) and (version >= 3 or f.name != "propagation")]  # fmt: skip
        frames = []
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            d = json.loads(line)
            try:
                frames.append(FrameStat(**{n: d[n] for n in names}))
            except (KeyError, TypeError) as exc:
                raise ValueError(f"line {lineno}: missing field {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"--stat-in: {path} is not a valid stat file: {exc}") from None
    if [f.frame for f in frames] != list(range(len(frames))):
        raise BadInput(f"--stat-in: {path}: frame lines are not 0..N-1 in order")
    if len(frames) != header.frames:
        raise BadInput(f"--stat-in: {path}: header says {header.frames} frames, file has {len(frames)}")
    if any(f.base_qp < 0 or f.type not in CLASSES for f in frames):
        # rc-modes 2/3 record base_qp -1: the codec chose the QPs, so the bits cannot be normalised.
        raise BadInput(f"--stat-in: {path} has frames without a base QP or type (made with --rc-mode 2/3?)")
    return header, frames


def check_stats_match(path: Path, header: StatHeader, expected: StatHeader) -> None:
    """Refuses a stat file made for another input or structure (frame count, size, codec, GOPs)."""
    for name in ("frames", "width", "height", "codec", "keyint", "mini_gop"):
        got, want = getattr(header, name), getattr(expected, name)
        if got != want:
            raise BadInput(f"--stat-in: {path} does not match this encode: {name} is {got} in the file, {want} here")


# ----------------------------------------------------------------------------- rate control


class RateController:
    """Chooses the encoder's base QP per mini-GOP and tracks budgets and spending.

    With `fixed_qp` set (rc-mode 0) the base QP is constant; budgets are then only reported.
    `stats` may be None (rc-mode 0 without an agent): then no prediction is available.
    """

    def __init__(
        self,
        *,
        layout: list[MiniGop],
        params: CodecRcParams,
        qp_min: int,
        qp_max: int,
        total_budget: int | None,
        stats: list[FrameStat] | None,
        fixed_qp: int | None = None,
        luma_pixels: int = 1,
    ) -> None:
        self.layout = layout
        self.params = params
        self.qp_min, self.qp_max = qp_min, qp_max
        self.fixed_qp = fixed_qp
        self.stats = stats
        self.luma_pixels = luma_pixels
        self.total_frames = sum(mg.count for mg in layout)
        self._k = {"KEY": params.k_key, "INTER": params.k_inter}
        if stats is not None and len(stats) < self.total_frames:
            raise ValueError("stats shorter than the encode")
        # _suffix[c][i] = sum of unit_j over the frames j >= i of class c; any range's sum is then
        # a difference, which keeps the solve before every mini-GOP O(1) in the clip length.
        self._suffix: dict[str, list[float]] = {c: [0.0] * (self.total_frames + 1) for c in CLASSES}
        if stats is not None:
            for i in reversed(range(self.total_frames)):
                for c in CLASSES:
                    self._suffix[c][i] = self._suffix[c][i + 1]
                self._suffix[self._cls(i)][i] += self._unit(i)
        # Learned scale per class as exponentially weighted sums of actual and predicted bits.
        # Key frames are rare (one per GOP), so they forget faster per observation.
        self._num = dict.fromkeys(CLASSES, 0.0)
        self._den = dict.fromkeys(CLASSES, 0.0)
        self._decay = {"KEY": 0.5, "INTER": 0.7}
        if total_budget is None and stats is not None and fixed_qp is not None:
            # rc-mode 0 without --bitrate: report the predicted spend at the fixed QP as the budget.
            total_budget = max(1, round(self._predict(range(self.total_frames), fixed_qp)))
        self.total_budget = total_budget
        self.total_spent = 0
        self.gop_spent = 0
        self._gop_budget = 0
        self._gop_end = 0
        self._gop_index = -1
        self._prev_qp: int | None = None
        self._chosen: dict[int, int] = {}  # mg index -> the encoder's base QP (asked once per mini-GOP)

    # --- model

    def scale(self, cls: str) -> float:
        """Learned actual / predicted bits for frame class "KEY" or "INTER" (1.0 before any data)."""
        if self._den[cls] > 0:
            return self._num[cls] / self._den[cls]
        # Before the first key frame is seen, inter data is the better guess, and vice versa.
        other = "INTER" if cls == "KEY" else "KEY"
        return self._num[other] / self._den[other] if self._den[other] > 0 else 1.0

    def _cls(self, i: int) -> str:
        assert self.stats is not None
        return "KEY" if self.stats[i].type == "KEY" else "INTER"

    def _unit(self, i: int) -> float:
        """Frame i's modelled bits at base QP 0, before the class scale: b_i * 2^(q_i / k_c)."""
        assert self.stats is not None
        f = self.stats[i]
        return max(f.bits, 1) * 2.0 ** (self.params.level(f.base_qp) / self._k[self._cls(i)])

    def _predict(self, frames: range, qp: float) -> float:
        """Predicted bits of `frames` (consecutive) coded at base QP `qp` (real-valued)."""
        if self.stats is None:
            return 0.0
        a, b = frames.start, frames.stop
        level = self.params.level(qp)
        return sum(
            self.scale(c) * (self._suffix[c][a] - self._suffix[c][b]) * 2.0 ** (-level / self._k[c]) for c in CLASSES
        )

    def predict(self, mg: MiniGop, qp: float) -> float:
        """Predicted bits of mini-GOP `mg` at base QP `qp` (0 without stats)."""
        return self._predict(mg.frames, qp)

    def _solve(self, frames: range, budget: float) -> float:
        """The real base QP at which `frames` are predicted to cost `budget` bits (clamped to the range)."""
        lo, hi = float(self.qp_min), float(self.qp_max)
        if budget <= self._predict(frames, hi):
            return hi
        if budget >= self._predict(frames, lo):
            return lo
        for _ in range(40):  # bisection on a decreasing function: 2^-40 QP is plenty
            mid = (lo + hi) / 2
            if self._predict(frames, mid) > budget:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def fp_bpp(self, mg: MiniGop) -> float:
        """First-pass bits per luma pixel of `mg` (mean over its frames) at the first-pass QP."""
        if self.stats is None:
            return 0.0
        q1 = self.params.level(self.params.first_pass_qp)
        bits = [self._unit(i) * 2.0 ** (-q1 / self._k[self._cls(i)]) for i in mg.frames]
        return sum(bits) / len(bits) / self.luma_pixels

    # --- allocation

    def _remaining(self, mg: MiniGop) -> range:
        return range(mg.first, self.total_frames)

    def gop_budget(self, mg: MiniGop) -> int:
        """The bit budget of `mg`'s GOP, fixed when its first mini-GOP is asked for.

        The GOP's share of the remaining budget is its share of the predicted remaining bits at
        the common base QP that spends that budget: the GOP's spend under the encoder's own plan.
        """
        if mg.gop != self._gop_index:
            self._gop_index = mg.gop
            self.gop_spent = 0
            gop_frames = range(mg.first, mg.first + sum(m.count for m in self.layout if m.gop == mg.gop))
            self._gop_end = gop_frames.stop
            remaining = None if self.total_budget is None else self.total_budget - self.total_spent
            if remaining is None:
                self._gop_budget = 1
            elif self.stats is None:
                self._gop_budget = round(max(remaining, 1) * len(gop_frames) / len(self._remaining(mg)))
            else:
                rest = self._remaining(mg)
                q = self._solve(rest, max(remaining, 0.0))
                self._gop_budget = round(max(remaining, 0.0) * self._predict(gop_frames, q) / self._predict(rest, q))
                # Never less than the least the GOP can cost (all at qp_max).
                self._gop_budget = max(self._gop_budget, round(self._predict(gop_frames, self.qp_max)))
            self._gop_budget = max(1, self._gop_budget)
        return self._gop_budget

    def base_qp(self, mg: MiniGop) -> int:
        """The encoder's own base QP for `mg` (rc-mode 1: solved from the remaining budget)."""
        if mg.index in self._chosen:
            return self._chosen[mg.index]
        if self.fixed_qp is not None or self.stats is None or self.total_budget is None:
            q = self.fixed_qp if self.fixed_qp is not None else (self.qp_min + self.qp_max) // 2
            qp = min(max(q, self.qp_min), self.qp_max)
        else:
            # Solve within the GOP: what a mini-GOP over- or under-spends is made up by the rest of
            # its own GOP, so the GOP lands on its budget and an agent's choice is paid for inside
            # its own episode. The drift that remains moves into the next GOP's budget.
            gop_left = self.gop_budget(mg) - self.gop_spent
            qp = round(self._solve(range(mg.first, self._gop_end), max(gop_left, 0.0)))
            if self._prev_qp is not None:
                step = self.params.max_step
                qp = min(max(qp, self._prev_qp - step), self._prev_qp + step)
            qp = min(max(qp, self.qp_min), self.qp_max)
        self._chosen[mg.index] = qp
        return qp

    def fork(self) -> RateController:
        """A copy that books and learns on its own, sharing the read-only layout, statistics and model: what
        the key probe codes under (key_probe.py), leaving this controller as it was. O(1) in the clip length."""
        twin = copy.copy(self)  # the rest of the state is scalars, replaced (not changed) as it moves
        twin._num, twin._den, twin._chosen = dict(self._num), dict(self._den), dict(self._chosen)
        return twin

    def update(self, mg: MiniGop, frame_bits: list[int], used_base_qp: int) -> None:
        """Books the bits of coded mini-GOP `mg` (coded at base QP `used_base_qp`) and learns."""
        bits = sum(frame_bits)
        self.total_spent += bits
        self.gop_spent += bits
        self._prev_qp = self._chosen.pop(mg.index, used_base_qp)
        if self.stats is None:
            return
        actual = dict.fromkeys(CLASSES, 0.0)
        pred = dict.fromkeys(CLASSES, 0.0)
        for i, b in zip(mg.frames, frame_bits, strict=True):
            c = self._cls(i)
            actual[c] += b
            pred[c] += self._unit(i) * 2.0 ** (-self.params.level(used_base_qp) / self._k[c])
        for c in CLASSES:
            if pred[c] > 0:
                d = self._decay[c]
                self._num[c] = d * self._num[c] + actual[c]
                self._den[c] = d * self._den[c] + pred[c]


class FirstPassController:
    """Base QP of pass 1: a constant-QP encode whose QP is steered towards the operating point.

    The pass-2 model extrapolates each frame's pass-1 bits from the pass-1 QP to the final QP; the
    shorter that step, the smaller the error (measured on bikes at 100 kbit/s with x264: a pass 1
    at QP 30 left -50 %..+100 % per-mini-GOP prediction errors at the final QP ~45, one at QP 40
    within about +-15 %). So, when the target bitrate is known, pass 1 starts at the codec's
    default first-pass QP and then, before each mini-GOP, moves (by at most `max_step`, or
    params.first_correction_max for the first correction) to the constant QP that would spend the whole
    budget if the rest of the clip were like the part seen so far (extrapolated per frame class).
    Without a target the QP stays at the default. The stat file records each frame's base QP, so
    pass 2 does not care which QPs pass 1 used.
    """

    def __init__(self, *, layout: list[MiniGop], params: CodecRcParams, qp_min: int, qp_max: int,
                 total_budget: int | None) -> None:  # fmt: skip
        self.layout = layout
        self.params = params
        self.qp_min, self.qp_max = qp_min, qp_max
        self.total_budget = total_budget
        self._k = {"KEY": params.k_key, "INTER": params.k_inter}
        self._count_total = dict.fromkeys(CLASSES, 0)
        for mg in layout:
            for pos in range(mg.count):
                self._count_total[frame_class(mg, pos)] += 1
        self._count_seen = dict.fromkeys(CLASSES, 0)
        self._unit_seen = dict.fromkeys(CLASSES, 0.0)  # sum of bits * 2^(qp / k_c) of the seen frames
        self._qp = min(max(params.first_pass_qp, qp_min), qp_max)
        self._corrected = False
        self.total_spent = 0
        self.gop_spent = 0

    def _predict_all(self, qp: float) -> float:
        """Predicted bits of the whole clip at base QP `qp`, each class scaled up from what was seen."""
        total = 0.0
        level = self.params.level(qp)
        for c in CLASSES:
            seen = self._count_seen[c] or self._count_seen["INTER" if c == "KEY" else "KEY"]
            unit = self._unit_seen[c] if self._count_seen[c] else self._unit_seen["INTER" if c == "KEY" else "KEY"]
            if seen:
                total += unit / seen * self._count_total[c] * 2.0 ** (-level / self._k[c])
        return total

    def base_qp(self, mg: MiniGop) -> int:
        return self._qp

    def gop_budget(self, mg: MiniGop) -> int:
        return 1

    def fp_bpp(self, mg: MiniGop) -> float:
        return 0.0

    def update(self, mg: MiniGop, frame_bits: list[int], used_base_qp: int) -> None:
        self.total_spent += sum(frame_bits)
        for pos, b in enumerate(frame_bits):
            c = frame_class(mg, pos)
            self._count_seen[c] += 1
            self._unit_seen[c] += max(b, 1) * 2.0 ** (self.params.level(used_base_qp) / self._k[c])
        if self.total_budget is None:
            return
        lo, hi = float(self.qp_min), float(self.qp_max)
        for _ in range(40):  # bisection: predicted bits fall as the QP rises
            mid = (lo + hi) / 2
            if self._predict_all(mid) > self.total_budget:
                lo = mid
            else:
                hi = mid
        target = round((lo + hi) / 2)
        # The first estimate rests on one mini-GOP (and its key frame): allow a big move, not an
        # unbounded one (bikes at 1000 kbit/s would jump from 40 to 2 with SVT-AV1).
        step = self.params.max_step if self._corrected else self.params.first_correction_max
        self._qp = min(max(target, self._qp - step, self.qp_min), self._qp + step, self.qp_max)
        self._corrected = True


def frame_class(mg: MiniGop, pos: int) -> str:
    """ "KEY" for the key frame that starts a GOP, else "INTER"."""
    return "KEY" if pos == 0 and mg.key_first else "INTER"
