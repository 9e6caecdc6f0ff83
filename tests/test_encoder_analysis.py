"""The first-pass analysis (builtin_encoder/analysis.py) on frames whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from builtin_encoder.analysis import Analyzer, downscale, motion_search, motion_vectors, noise_sigma


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
