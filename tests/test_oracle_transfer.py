"""bench/oracle_transfer.py's pure parts: the gain at equal rate and which mini-GOPs the oracle moved."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gain_model
from bench import oracle_transfer


def _record(offsets: list[int], mgs_per_gop: int = 4) -> dict:
    steps = [{"request": {"mg_in_gop": k % mgs_per_gop}} for k in range(len(offsets))]
    return {"baseline_steps": steps, "oracle": {"offsets": offsets}}


@pytest.mark.parametrize(
    ("offsets", "kind"),
    [
        ([0, 0, 0, 0, 0, 0], "nothing"),
        ([2, 0, 0, 0, -1, 0], "key mini-GOPs only"),  # mini-GOPs 0 and 4 start GOPs
        ([0, 1, 0, 0, 0, -1], "other mini-GOPs only"),
        ([0, 0, 0, 0, 3, 1], "both"),
    ],
)
def test_moved_tells_key_from_other_mini_gops(offsets: list[int], kind: str) -> None:
    assert oracle_transfer.moved(_record(offsets)) == kind


def test_gain_is_the_psnr_gain_less_what_the_extra_bits_buy():
    # 0.2 dB more for 2x the bits on a 5 dB-per-doubling curve: 4.8 dB worse at equal rate.
    assert gain_model.equal_rate_gain(40.2, 2000, 40.0, 1000, 5.0) == pytest.approx(-4.8)
    assert gain_model.equal_rate_gain(40.1, 1000, 40.0, 1000, 5.0) == pytest.approx(0.1)
    assert math.isclose(gain_model.equal_rate_gain(40.0, 1000 * 2**-0.01, 40.0, 1000, 5.0), 0.05)


def test_donors_are_another_window_of_the_same_source_or_the_nearest_other_source():
    def rec(window: str, bpp: float) -> dict:
        r = _record([0] * 8, mgs_per_gop=8)
        for step in r["baseline_steps"]:
            step["request"]["gop_index"] = 0
        return {**r, "key": f"x264/{window}/{bpp}", "window": window, "bpp": bpp}

    records = {r["key"]: r for r in (rec("bikes_s1_f0-64", 0.1), rec("bikes_s1_f64-128", 0.05),
                                     rec("bikes_s1_f128-192", 0.3), rec("cup_s1_f0-64", 0.1),
                                     rec("box_s1_f0-64", 0.1))}  # fmt: skip
    windows = {r["window"]: ("train", None) for r in records.values()}
    me = records["x264/bikes_s1_f0-64/0.1"]
    assert oracle_transfer.donor(me, records, windows, "self", {}) is me
    # Same source, another window, the nearest rate in log terms (0.05 is 2x away, 0.3 is 3x).
    assert oracle_transfer.donor(me, records, windows, "same-source", {})["window"] == "bikes_s1_f64-128"
    feats = {k: np.array([0.0]) for k in records} | {"x264/box_s1_f0-64/0.1": np.array([0.1]),
                                                     "x264/cup_s1_f0-64/0.1": np.array([2.0])}  # fmt: skip
    assert oracle_transfer.donor(me, records, windows, "other-source", feats)["window"] == "box_s1_f0-64"
    alone = {k: r for k, r in records.items() if r["window"] != "bikes_s1_f64-128" and "f128" not in r["window"]}
    assert oracle_transfer.donor(me, alone, windows, "same-source", {}) is None
