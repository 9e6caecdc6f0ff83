"""bench/oracle_transfer.py's pure parts: the gain at equal rate and which mini-GOPs the oracle moved."""

from __future__ import annotations

import math

import pytest

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
    assert oracle_transfer.gain(40.2, 2000, 40.0, 1000, 5.0) == pytest.approx(-4.8)
    assert oracle_transfer.gain(40.1, 1000, 40.0, 1000, 5.0) == pytest.approx(0.1)
    assert math.isclose(oracle_transfer.gain(40.0, 1000 * 2**-0.01, 40.0, 1000, 5.0), 0.05)
