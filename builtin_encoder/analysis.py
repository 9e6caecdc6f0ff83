"""First-pass content analysis: per-frame intra / inter costs from a low-resolution motion search.

What an encoder's lookahead measures to decide where bits pay off (x264's lookahead and MB-tree,
libvpx's first pass): how well each frame is predicted from the previous ones. Content that later
frames predict well (a static camera, slow motion) passes the quality of its reference on; content
they cannot predict (noise, fast motion, cuts) does not. The analysis runs on the luma plane
downscaled 2x in each direction, in 8x8 blocks there (16x16 at full resolution), with an exhaustive
integer motion search (+-SEARCH half-resolution pixels against the previous frame, +-SR_SEARCH
against the one before it, display order). Costs are mean absolute errors per half-resolution sample, 8-bit scale.

Per block b: intra_b = mean |x - mean(block)| (a DC predictor), inter_b = the best mean |x - ref(x+mv)|
over the search, coded_b = min(intra_b, inter_b). The frame values are means over its blocks; the
protocol's `first_pass` request field carries them (PROTOCOL.md, "First-pass statistics").

`propagation` runs x264's MB-tree on those blocks over a GOP: how much of the GOP's later coding
cost each frame's content carries (the per-frame `propagation` entry of `first_pass`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

BLOCK = 8  # block size at half resolution (a power of two: _block_sums halves)
SEARCH = 3  # motion search range against the previous frame, half-resolution pixels (6 full-res)
SR_SEARCH = 1  # the same against the frame two back (+-2 full-res: still and slow content)
# Cost per half-resolution pixel of motion-vector length (L1), in mean-abs-error units: a small
# bias to the zero vector, as encoders have, so that flat or noisy areas do not pick random vectors.
MV_PENALTY = 0.05


@dataclass
class FrameAnalysis:
    """First-pass statistics of one frame (see the module docstring for the definitions)."""

    intra_cost: float  # mean intra (DC-predicted) error per half-res luma sample, 8-bit scale
    inter_cost: float  # mean min(intra, best inter vs the previous frame) error, same unit
    sr_inter_cost: float  # the same with the frame two back as reference ("second reference")
    inter_share: float  # share of blocks whose best inter error beats intra, 0..1
    motion_share: float  # share of blocks inter-predicted with a non-zero vector, 0..1
    mv_mean: float  # mean |mv_x| + |mv_y| of the inter-predicted blocks, full-resolution pixels
    noise_sigma: float  # estimated noise standard deviation of the full-resolution luma, 8-bit scale


@dataclass
class BlockCosts:
    """One frame's per-block analysis, each (H/B, W/B) at half resolution: what `propagation` reads."""

    intra: np.ndarray  # intra (DC) error, float32
    inter: np.ndarray  # min(intra, best inter error vs the previous frame), float32; intra on the first frame
    dy: np.ndarray  # the best vector, half-resolution pixels, int; 0 on the first frame
    dx: np.ndarray


def downscale(y: np.ndarray) -> np.ndarray:
    """Luma (h, w) uint8 -> (h//2, w//2) int16, the rounded mean of each 2x2 square, cropped to whole blocks."""
    h, w = (y.shape[0] // (2 * BLOCK)) * 2 * BLOCK, (y.shape[1] // (2 * BLOCK)) * 2 * BLOCK
    if h == 0 or w == 0:  # smaller than one block: use what there is
        h, w = y.shape[0] // 2 * 2, y.shape[1] // 2 * 2
    y = y[:h, :w].astype(np.int16)
    return (y[0::2, 0::2] + y[1::2, 0::2] + y[0::2, 1::2] + y[1::2, 1::2] + 2) >> 2


def _block_sums(err: np.ndarray) -> np.ndarray:
    """(H, W) int16 errors, each at most 255 -> (H/B, W/B) int32 sums per block (H, W cropped to multiples of B).

    Neighbouring columns, then rows, are added in pairs log2(B) times each, in int16 (a block's sum,
    at most 255 * 64, fits): about 4x faster than np.add.reduceat into int32, and this runs ~60 times
    per frame (BENCHMARKS.md §1.2).
    """
    bh, bw = err.shape[0] // BLOCK, err.shape[1] // BLOCK
    sums = err[: bh * BLOCK, : bw * BLOCK]
    while sums.shape[1] > bw:
        sums = sums[:, 0::2] + sums[:, 1::2]
    while sums.shape[0] > bh:
        sums = sums[0::2] + sums[1::2]
    return sums.astype(np.int32)


def intra_costs(lo: np.ndarray) -> np.ndarray:
    """Per-block mean |x - block mean|, shape (H/B, W/B), float32."""
    bh, bw = lo.shape[0] // BLOCK, lo.shape[1] // BLOCK
    blocks = lo[: bh * BLOCK, : bw * BLOCK].reshape(bh, BLOCK, bw, BLOCK).astype(np.float32)
    return np.abs(blocks - blocks.mean(axis=(1, 3), keepdims=True)).mean(axis=(1, 3))


def motion_vectors(cur: np.ndarray, ref: np.ndarray, search: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exhaustive block search of `cur` in `ref` (edge-extended) over +-`search` pixels.

    Returns (error, dy, dx) per block: the best vector's mean absolute error (without the vector
    penalty), float32, and the vector in half-resolution pixels, int.
    """
    pad = np.pad(ref, search, mode="edge")
    h, w = cur.shape
    vectors = np.array([(dy, dx) for dy in range(-search, search + 1) for dx in range(-search, search + 1)])
    sums = np.empty((len(vectors), h // BLOCK, w // BLOCK), np.int32)
    for k, (dy, dx) in enumerate(vectors):
        sums[k] = _block_sums(np.abs(cur - pad[search + dy : search + dy + h, search + dx : search + dx + w]))
    lengths = np.abs(vectors).sum(axis=1).astype(np.float32)
    err = sums.astype(np.float32) / (BLOCK * BLOCK)
    best = np.argmin(err + MV_PENALTY * lengths[:, None, None], axis=0)
    return np.take_along_axis(err, best[None], axis=0)[0], vectors[best, 0], vectors[best, 1]


def motion_search(cur: np.ndarray, ref: np.ndarray, search: int) -> tuple[np.ndarray, np.ndarray]:
    """motion_vectors' (error, L1 length of the vector in half-resolution pixels, float32) per block."""
    err, dy, dx = motion_vectors(cur, ref, search)
    return err, (np.abs(dy) + np.abs(dx)).astype(np.float32)


def noise_sigma(y: np.ndarray) -> float:
    """Immerkaer's fast noise estimate: sqrt(pi/2) / (6 (W-2)(H-2)) * sum |y * N|, N = [1 -2 1; -2 4 -2; 1 -2 1].

    (J. Immerkaer, "Fast noise variance estimation", CVIU 1996.) Texture raises it too: it is an
    upper bound on the noise, useful as a feature, not a measurement.
    """
    if y.shape[0] < 3 or y.shape[1] < 3:
        return 0.0
    f = y.astype(np.int16)  # |terms| <= 16 * 255: int16 is enough, and several times faster than int32
    c = f[1:-1, 1:-1]
    lap = (
        f[:-2, :-2] + f[:-2, 2:] + f[2:, :-2] + f[2:, 2:]
        - 2 * (f[:-2, 1:-1] + f[2:, 1:-1] + f[1:-1, :-2] + f[1:-1, 2:])
        + 4 * c
    )  # fmt: skip
    return float(np.sqrt(np.pi / 2.0) * np.abs(lap).sum(dtype=np.int64) / (6.0 * c.size))


class Analyzer:
    """Feeds luma frames in display order; returns each frame's FrameAnalysis.

    Keeps the two previous downscaled frames. The first frame has no reference: its inter costs
    equal its intra cost; the second uses the previous frame as its second reference too.
    """

    def __init__(self) -> None:
        self._refs: list[np.ndarray] = []  # [previous, the one before], downscaled
        self.blocks: BlockCosts | None = None  # the last frame's per-block analysis

    def add(self, y: np.ndarray) -> FrameAnalysis:
        lo = downscale(y)
        intra = intra_costs(lo)
        n = max(intra.size, 1)
        if not self._refs:
            inter_err = sr_err = intra
            dy = dx = np.zeros(intra.shape, int)
        else:
            inter_err, dy, dx = motion_vectors(lo, self._refs[0], SEARCH)
            sr_err = motion_search(lo, self._refs[1], SR_SEARCH)[0] if len(self._refs) > 1 else inter_err
        inter_len = (np.abs(dy) + np.abs(dx)).astype(np.float32)
        self.blocks = BlockCosts(intra, np.minimum(inter_err, intra), dy, dx)
        inter_wins = inter_err < intra
        moving = inter_wins & (inter_len > 0)
        wins = int(inter_wins.sum())
        result = FrameAnalysis(
            intra_cost=float(intra.mean()),
            inter_cost=float(np.minimum(intra, inter_err).mean()),
            sr_inter_cost=float(np.minimum(intra, sr_err).mean()),
            inter_share=wins / n,
            motion_share=float(moving.sum()) / n,
            mv_mean=float(2.0 * inter_len[inter_wins].mean()) if wins else 0.0,
            noise_sigma=noise_sigma(y),
        )
        self._refs = [lo, *self._refs[:1]]
        return result


def propagation(gop: list[BlockCosts], floor: float = 1.0) -> list[float]:
    """P of each frame of a GOP (display order): x264's MB-tree over the GOP's later frames, on blocks.

        P_t = log2( sum_b (intra_t,b + f + prop_t,b) / sum_b (intra_t,b + f) )

    prop_t is the cost frame t's blocks pass on to the frames after it in the GOP: frame u hands
    amount_u,b = (intra_u,b + f + prop_u,b) * (1 - (inter_u,b + f) / (intra_u,b + f)) to the blocks
    of frame u - 1 its vector points at, split by overlap (bilinear). f = `floor` keeps flat blocks
    from dividing by zero. The GOP's last frame passes nothing on (P = 0); a still camera gives P
    near log2(1 + frames left), noise or a cut gives P near 0. A ratio of costs: any consistent
    block analysis gives comparable P.
    """
    if not gop:
        return []
    bh, bw = gop[0].intra.shape
    rows, cols = np.arange(bh)[:, None] * BLOCK, np.arange(bw)[None, :] * BLOCK
    prop = np.zeros((bh, bw))
    out = [0.0] * len(gop)
    for t in range(len(gop) - 1, -1, -1):
        f = gop[t]
        own = f.intra + floor
        out[t] = float(np.log2((own + prop).sum() / own.sum()))
        if t == 0:
            break
        amount = (own + prop) * (1.0 - (f.inter + floor) / own)  # what frame t hands to frame t - 1
        ys, xs = rows + f.dy, cols + f.dx  # where each block's prediction comes from
        by, bx = ys // BLOCK, xs // BLOCK
        fy, fx = (ys - by * BLOCK) / BLOCK, (xs - bx * BLOCK) / BLOCK
        prop = np.zeros((bh, bw))
        for ty, wy in ((by, 1 - fy), (by + 1, fy)):
            for tx, wx in ((bx, 1 - fx), (bx + 1, fx)):
                part = wy * wx * amount
                ok = (ty >= 0) & (ty < bh) & (tx >= 0) & (tx < bw) & (part > 0)
                np.add.at(prop, (ty[ok], tx[ok]), part[ok])
    return out


def frame_blocks(lumas: Iterable[np.ndarray]) -> list[BlockCosts]:
    """Each frame's per-block analysis (Analyzer.blocks) for luma frames in display order."""
    analyzer, out = Analyzer(), []
    for y in lumas:
        analyzer.add(y)
        out.append(analyzer.blocks)
    return out


def propagation_by_gop(blocks: list[BlockCosts], keyint: int) -> list[float]:
    """`propagation` of every frame of an encode whose GOPs are `keyint` frames from frame 0."""
    return [p for g in range(0, len(blocks), keyint) for p in propagation(blocks[g : g + keyint])]
