"""The first-pass analysis (builtin_encoder/analysis.py) on frames whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from builtin_encoder.analysis import (
    BLOCK,
    Analyzer,
    BlockCosts,
    downscale,
    motion_search,
    motion_vectors,
    noise_sigma,
    propagation,
)


def textured(h: int = 144, w: int = 176, seed: int = 0) -> np.ndarray:
    """A smooth random texture: block-averaged noise, so that motion can be found in it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 4 + 8, w // 4 + 8)).astype(np.float32)
    return np.kron(coarse, np.ones((4, 4), np.float32))


def test_a_frozen_frame_is_predicted_perfectly_without_motion():
    y = textured()[:144, :176].astype(np.uint8)
    a = Analyzer()
    first = a.add(y)
    assert first.inter_cost == first.intra_cost > 0 and first.inter_share == 0.0
    second = a.add(y.copy())
    assert second.inter_cost == 0.0 and second.sr_inter_cost == 0.0
    assert second.inter_share == 1.0 and second.motion_share == 0.0 and second.mv_mean == 0.0


def test_a_panning_frame_finds_its_motion_vector():
    big = textured()
    a = Analyzer()
    a.add(big[8:152, 8:184].astype(np.uint8))
    moved = a.add(big[8:152, 12:188].astype(np.uint8))  # content moves 4 pixels left
    assert moved.inter_share > 0.9 and moved.motion_share > 0.8
    assert moved.mv_mean == pytest.approx(4.0, abs=0.5)
    assert moved.inter_cost < 0.2 * moved.intra_cost


def test_unpredictable_content_codes_intra():
    rng = np.random.default_rng(1)
    a = Analyzer()
    a.add(rng.integers(0, 256, (144, 176)).astype(np.uint8))
    fresh = a.add(rng.integers(0, 256, (144, 176)).astype(np.uint8))
    assert fresh.inter_cost > 0.8 * fresh.intra_cost


@pytest.mark.parametrize("sigma", [2.0, 5.0])
def test_noise_estimate_on_a_flat_noisy_frame(sigma):
    rng = np.random.default_rng(2)
    y = np.clip(128 + rng.normal(0, sigma, (288, 352)), 0, 255).astype(np.uint8)
    assert noise_sigma(y) == pytest.approx(sigma, rel=0.15)


def test_motion_vectors_point_where_each_block_comes_from():
    ref = downscale(textured().astype(np.uint8))
    cur = np.roll(ref, (2, -1), axis=(0, 1))  # cur[y, x] = ref[y - 2, x + 1]
    err, dy, dx = motion_vectors(cur, ref, 3)
    inner = (slice(1, -1), slice(1, -1))  # blocks whose source lies inside the frame
    assert (dy[inner] == -2).all() and (dx[inner] == 1).all() and (err[inner] == 0).all()
    err2, length = motion_search(cur, ref, 3)  # the same search, the vector as its L1 length
    assert np.array_equal(err, err2) and np.array_equal(length, np.abs(dy) + np.abs(dx))


def _gop(frames: int, inter: float, dx: int = 0) -> list[BlockCosts]:
    """`frames` frames of 4x5 blocks of intra cost 100, each predicted at cost `inter`, vectors (0, dx)."""
    intra, zero = np.full((4, 5), 100.0, np.float32), np.zeros((4, 5), int)
    return [BlockCosts(intra, np.full((4, 5), inter, np.float32), zero, zero + dx) for _ in range(frames)]


def test_propagation_grows_with_what_later_frames_reuse():
    assert propagation(_gop(8, 100.0)) == pytest.approx([0.0] * 8)  # nothing predicted: nothing propagates
    still = [propagation(_gop(n, 0.0))[0] for n in (2, 8, 32)]
    assert 0.9 < still[0] < 1.1 and still[0] < still[1] < still[2]  # one copy doubles the cost: P = log2(2)
    half = propagation(_gop(8, 50.0))
    assert 0 < half[0] < still[1]  # half of each frame predicted
    assert half == sorted(half, reverse=True) and half[-1] == 0.0  # less GOP left, less to pass on; the last: none
    assert propagation([]) == []


def test_propagation_follows_the_motion_vectors():
    """A pan: each block is predicted from one block to its right, so the cost lands there, not on the edge."""
    gop = _gop(2, 0.0, dx=BLOCK)  # frame 1's blocks all point one block right into frame 0
    own = 101.0 * 20  # frame 0: 20 blocks of intra cost 100, plus the floor of 1
    # each of frame 1's blocks hands on (100 + 1) * (1 - 1/101) = 100; the last column's 4 point outside
    assert propagation(gop)[0] == pytest.approx(np.log2((own + 100 * 16) / own))
    assert propagation(_gop(2, 0.0))[0] == pytest.approx(np.log2((own + 100 * 20) / own))  # no motion: all kept
    # half a block: each block's cost split over two; only the last column's outer halves are lost
    assert propagation(_gop(2, 0.0, dx=BLOCK // 2))[0] == pytest.approx(np.log2((own + 100 * 18) / own))
