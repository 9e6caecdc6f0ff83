"""bench/layer_scale.py: the report's choices of the pyramid depth S, on written records (no encode)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import layer_scale


def _encode(scale: float, psnr: float, bits: int, kbps: float = 100.0) -> dict:
    return {"scale": scale, "psnr_y": psnr, "ssim_y": 0.9, "bits": bits, "kbps": kbps}


def test_window_gains_are_at_equal_rate_against_s1():
    # One window at two rates: S=1 gives 30 dB at 1000 bits and 33 dB at 2000 bits, a slope of 3 dB per doubling.
    recs = [
        {"window_name": "w_s1_f0-64", "encodes": [_encode(1.0, 30.0, 1000), _encode(0.75, 30.5, 1000)]},
        {"window_name": "w_s1_f0-64", "encodes": [_encode(1.0, 33.0, 2000), _encode(0.75, 33.0, 4000)]},
    ]
    gains, scales = layer_scale.window_gains(recs)
    assert scales == [1.0, 0.75]
    assert gains[:, 0].tolist() == [0.0, 0.0]
    assert gains[0, 1] == pytest.approx(0.5)  # same bits: the PSNR difference
    assert gains[1, 1] == pytest.approx(-3.0)  # twice the bits for nothing: one slope lost


def test_content_known_picks_each_windows_best_scale_over_its_rates():
    gains = np.array([[0.0, 0.2, -0.1], [0.0, -0.1, 0.3], [0.0, -0.2, -0.3]])
    # Window a (rows 0, 1): S columns' means 0, 0.05, 0.1 -> column 2 (-0.1, 0.3); window b: S = 1 (0).
    assert layer_scale.content_known(gains, ["a", "a", "b"]) == pytest.approx((-0.1 + 0.3 + 0.0) / 3)


def test_loso_choice_never_looks_at_the_left_out_source():
    # Source x wants column 1, source y column 2: a constant learnt on the other source is always wrong.
    gains = np.array([[0.0, 0.4, -0.4], [0.0, 0.4, -0.4], [0.0, -0.4, 0.4], [0.0, -0.4, 0.4]])
    got = layer_scale.loso_choice(gains, ["x", "x", "y", "y"], None)
    assert got.tolist() == [-0.4, -0.4, -0.4, -0.4]
    # A feature that separates the sources lets the fit on y predict x's best column (a line through y's points).
    feature = np.array([0.0, 0.1, 1.0, 1.1])
    gains_lin = np.array([[0.0, 0.4 - f, f - 0.4] for f in feature])
    got = layer_scale.loso_choice(gains_lin, ["x", "x", "y", "y"], feature)
    assert got == pytest.approx([0.4, 0.3, 0.6, 0.7])


def test_split_bdrates_one_value_per_clip_and_draw():
    def curve(clip: str, factor: float, shift_db: float) -> list[dict]:
        """Four rates, 6 dB per doubling; S 0.75 is S 1 shifted by `shift_db`."""
        out = []
        for k in (1, 2, 4, 8):
            q = 30.0 + 6 * math.log2(k)
            out.append({"clip": clip, "factor": factor, "bpp": k,
                        "encodes": [_encode(1.0, q, 0, 100.0 * k), _encode(0.75, q + shift_db, 0, 100.0 * k)]})
        return out

    recs = curve("a", 1.0, 0.0) + curve("a", 1.03, 6.0) + curve("b", 1.0, -6.0)
    out = layer_scale.split_bdrates(recs, "psnr_y")
    assert list(out) == [0.75]
    assert out[0.75]["a"] == [pytest.approx(0.0, abs=1e-9), pytest.approx(-50.0)]  # +6 dB = half the rate
    assert out[0.75]["b"] == [pytest.approx(100.0)]
