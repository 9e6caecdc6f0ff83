"""State features, action mapping, reward and cost: pure functions, checked against their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_protocol import make_feedback, make_request

import reward
from state import FEATURE_NAMES, OBS_DIM, action_to_qp, build_observation


def test_observation_shape_and_named_features():
    obs = build_observation(make_request(), None, None)
    assert obs.shape == (OBS_DIM,) == (len(FEATURE_NAMES),)
    assert obs.dtype == np.float32
    f = dict(zip(FEATURE_NAMES, obs, strict=True))
    assert f["base_qp"] == pytest.approx(35 / 63)
    assert f["gop_progress"] == pytest.approx(3 / 8)
    assert f["gop_budget_used"] == pytest.approx(30000 / 80000)
    assert f["gop_budget_lead"] == pytest.approx(30000 / 80000 - 3 / 8)
    assert f["prev_psnr_y"] == 0.0  # no previous feedback at hand


def test_observation_uses_previous_feedback():
    obs = build_observation(make_request(), make_feedback(qp_used=39, bits=20000, psnr_y=36.0), prev_base_qp=35)
    f = dict(zip(FEATURE_NAMES, obs, strict=True))
    assert f["prev_delta_qp"] == pytest.approx(4 / 8)
    assert f["prev_psnr_y"] == pytest.approx(36 / 50)
    assert f["prev_bits_ratio"] == pytest.approx(math.log2(20000 / (80000 / 8)) / 4)


def test_overspending_shows_in_budget_lead():
    lean = build_observation(make_request(gop_bits_spent=10000), None, None)
    fat = build_observation(make_request(gop_bits_spent=60000), None, None)
    i = FEATURE_NAMES.index("gop_budget_lead")
    assert fat[i] > 0 > lean[i]


@pytest.mark.parametrize("action,expected", [(0.0, 35), (1.0, 43), (-1.0, 27), (0.49, 39), (5.0, 43)])
def test_action_to_qp(action, expected):
    assert action_to_qp(action, make_request(), max_delta_qp=8) == expected


def test_first_pass_features_tell_still_content_from_unpredictable_content():
    from test_protocol import make_first_pass

    plain = build_observation(make_request(), None, None)
    fp = [i for i, n in enumerate(FEATURE_NAMES) if n.startswith("fp_")]
    assert np.all(plain[fp] == 0.0)  # a version 1 request: no first-pass statistics
    still = make_first_pass(frames=16, inter_cost=[9.0] * 8 + [0.5] * 8)  # the lookahead is a still picture
    busy = make_first_pass(frames=16, inter_cost=[9.0] * 16)  # nothing is predictable
    o_still = build_observation(make_request(first_pass=still), None, None)
    o_busy = build_observation(make_request(first_pass=busy), None, None)
    future = FEATURE_NAMES.index("fp_future_ratio")
    assert o_still[FEATURE_NAMES.index("fp_available")] == o_busy[FEATURE_NAMES.index("fp_available")] == 1.0
    assert o_still[future] == pytest.approx(math.log2(0.5 / 9.0) / 4, abs=1e-4)
    assert o_busy[future] == pytest.approx(0.0, abs=1e-4)
    assert o_still[FEATURE_NAMES.index("fp_inter_ratio")] == o_busy[FEATURE_NAMES.index("fp_inter_ratio")]


def test_fp_propagation_is_the_first_frames_propagation_and_zero_without_it():
    from test_protocol import make_first_pass

    i = FEATURE_NAMES.index("fp_propagation")
    without = make_first_pass(frames=16)  # first-pass statistics without propagation (VP9's)
    assert build_observation(make_request(first_pass=without), None, None)[i] == 0.0
    assert build_observation(make_request(), None, None)[i] == 0.0  # no first pass at all
    prop = make_first_pass(frames=16, propagation=[3.6 - 0.2 * k for k in range(16)])
    assert build_observation(make_request(first_pass=prop), None, None)[i] == pytest.approx(0.9)


def test_key_probe_is_the_probes_contrast_at_equal_rate_per_6_qp_and_zero_without_it():
    from test_protocol import KEY_START

    import protocol
    from state import PROBE_SLOPE_DB

    i = FEATURE_NAMES.index("key_probe")
    assert i == FEATURE_NAMES.index("ramp_probe") - 1
    assert build_observation(make_request(**KEY_START), None, None)[i] == 0.0

    def value(offset: int, fb: int, fp: float, cb: int, cp: float) -> float:
        probe = protocol.KeyProbe(offset=offset, finer_bits=fb, finer_psnr_y=fp, coarser_bits=cb, coarser_psnr_y=cp)
        return float(build_observation(make_request(**KEY_START, key_probe=probe), None, None)[i])

    assert value(3, 100000, 36.3, 100000, 36.1) == pytest.approx(0.2, abs=1e-6)  # same bits: the PSNR-Y difference
    assert value(3, 200000, 36.3, 100000, 36.1) == pytest.approx(0.2 - PROBE_SLOPE_DB, abs=1e-5)  # bits doubled
    assert value(1, 100000, 36.3, 100000, 36.2) == pytest.approx(0.3, abs=1e-6)  # ±1 QP: per 6 QP, times 3
    assert value(3, 100000, 36.0, 100000, 36.4) < 0  # the coarser key codes the GOP better
    probe = protocol.KeyProbe(offset=3, finer_bits=100000, finer_psnr_y=36.3, coarser_bits=100000, coarser_psnr_y=36.1)
    alone = make_request(**{**KEY_START, "mgs_in_gop": 1, "gop_frames": 8}, key_probe=probe)
    assert build_observation(alone, None, None)[i] == 0.0  # a GOP of one mini-GOP: nothing inherits the key


def test_ramp_probe_is_its_contrast_on_the_mini_gops_after_the_key_and_zero_without_it():
    import protocol

    i = FEATURE_NAMES.index("ramp_probe")
    assert build_observation(make_request(), None, None)[i] == 0.0
    probe = protocol.KeyProbe(offset=3, finer_bits=100000, finer_psnr_y=36.0, coarser_bits=100000, coarser_psnr_y=36.4)
    obs = build_observation(make_request(ramp_probe=probe), None, None)
    assert obs[i] == pytest.approx(-0.4, abs=1e-6)  # coding the five after the key coarser pays
    assert obs[FEATURE_NAMES.index("key_probe")] == 0.0


def test_probe_best_is_the_margin_of_the_best_of_three_encodes_at_equal_rate_and_zero_without_the_zero_encode():
    from test_protocol import KEY_START

    import protocol
    from state import PROBE_RATE_BAND, PROBE_SLOPE_DB

    assert PROBE_RATE_BAND == 0.02  # the rate constraint's free band (config's rate tolerance)
    i, j = FEATURE_NAMES.index("key_probe_best"), FEATURE_NAMES.index("ramp_probe_best")
    assert (i, j) == (OBS_DIM - 2, OBS_DIM - 1)

    def probe(fp: float, cp: float, zp: float | None, fb: int = 100000, zb: int = 100000) -> protocol.KeyProbe:
        return protocol.KeyProbe(offset=3, finer_bits=fb, finer_psnr_y=fp, coarser_bits=100000, coarser_psnr_y=cp,
                                 zero_bits=None if zp is None else zb, zero_psnr_y=zp)  # fmt: skip

    def key(p: protocol.KeyProbe) -> float:
        return float(build_observation(make_request(**KEY_START, key_probe=p), None, None)[i])

    assert key(probe(36.3, 36.1, 36.2)) == pytest.approx(0.1, abs=1e-5)  # finer beats Δ=0 by 0.1, coarser loses
    assert key(probe(36.3, 36.25, 36.2)) == pytest.approx(0.05, abs=1e-5)  # ... and beats coarser by 0.05
    assert key(probe(36.1, 36.35, 36.2)) == pytest.approx(-0.15, abs=1e-5)  # coarser best: negative
    assert key(probe(36.1, 36.15, 36.2)) == 0.0  # Δ=0 beats both
    assert key(probe(36.3, 36.1, None)) == 0.0  # no zero encode: nothing to say
    # The finer encode's extra bits are priced at PROBE_SLOPE_DB per doubling inside the rate band ...
    assert key(probe(36.4, 36.1, 36.2, fb=101500)) == pytest.approx(0.2 - PROBE_SLOPE_DB * math.log2(1.015), abs=1e-5)
    # ... and a probe off the band (GOP bits more than PROBE_RATE_BAND from the zero encode's) does not count at all.
    assert key(probe(36.4, 36.1, 36.2, fb=102500)) == 0.0
    # A Δ=0 encode 1.5% under both probes (inside the band): both gain the bits' price, the coarser one leads by 0.2.
    assert key(probe(36.3, 36.5, 36.2, fb=100000, zb=98500)) == pytest.approx(-0.2, abs=1e-5)
    assert key(probe(36.3, 36.5, 36.2, fb=100000, zb=200000)) == 0.0  # both off the band: Δ=0 stands
    alone = make_request(**{**KEY_START, "mgs_in_gop": 1, "gop_frames": 8}, key_probe=probe(36.3, 36.1, 36.2))
    assert build_observation(alone, None, None)[i] == 0.0  # a GOP of one mini-GOP, as key_probe
    obs = build_observation(make_request(ramp_probe=probe(36.1, 36.4, 36.2)), None, None)
    assert obs[j] == pytest.approx(-0.2, abs=1e-5) and obs[i] == 0.0


def test_gop_reuse_counts_the_later_frames_of_the_gop_that_reuse_the_content():
    from test_protocol import make_first_pass

    from state import gop_reuse

    def req(inter: float, mg_in_gop: int, gop_frames: int = 64, frames: int = 40):
        fp = make_first_pass(frames=frames, inter_cost=[inter] * frames, intra_cost=[10.0] * frames)
        return make_request(first_pass=fp, mg_in_gop=mg_in_gop, gop_frames=gop_frames, first_frame=8 * mg_in_gop)

    still = gop_reuse(req(0.0, 0))  # nothing new in any frame: frame i is re-used by the 63 - i after it
    assert still == pytest.approx(sum(63 - i for i in range(8)) / 8)
    busy = gop_reuse(req(5.0, 0))  # half of each frame is new: sum of 0.5^j
    assert busy == pytest.approx(1.0, abs=1e-3)
    assert gop_reuse(req(0.0, 7)) == pytest.approx(3.5)  # the GOP's last mini-GOP: 7, 6, ... 0 frames left
    assert gop_reuse(req(0.0, 0, gop_frames=4, frames=4)) == pytest.approx(6 / 8)  # a short last GOP: 3+2+1
    cut = make_first_pass(frames=64, inter_cost=[1.0] + [10.0] + [0.0] * 62, intra_cost=[10.0] * 64)
    after_cut = gop_reuse(make_request(first_pass=cut, mg_in_gop=0, gop_frames=64, first_frame=0))
    assert after_cut == pytest.approx(still - 63 / 8)  # a cut at frame 1 ends frame 0's chain, not the others'
    assert gop_reuse(make_request()) == 0.0  # no first-pass statistics


def test_action_range_is_stretched_on_a_finer_qp_scale():
    req = make_request(qp_min=0, qp_max=255, qp_scale_max=255, base_qp=120)
    assert action_to_qp(1.0, req, 4) == 120 + round(4 * 255 / 63)
    assert action_to_qp(-0.5, req, 4) == 120 - round(2 * 255 / 63)
    assert action_to_qp(1.0, make_request(qp_scale_max=51, qp_max=51), 4) == 35 + 4  # no shrinking below 63


def test_action_to_qp_respects_request_range():
    req = make_request(base_qp=60, qp_max=63)
    assert action_to_qp(1.0, req, 8) == 63
    assert action_to_qp(-1.0, make_request(base_qp=3, qp_min=1), 8) == 1


def _baseline(mses, frames=(8, 8, 8, 8), gops=(0, 0, 1, 1)):
    return reward.VideoBaseline(
        mini_gops=[
            reward.BaselineMiniGop(gop_index=g, frame_count=n, bits=1000, mse_y=m, ssim_y=0.9, base_qp=30)
            for g, n, m in zip(gops, frames, mses, strict=True)
        ]
    )


def test_reward_sums_to_overall_psnr_gain_to_first_order():
    base = _baseline([10.0, 20.0, 5.0, 5.0])
    agent_mse = [9.8, 19.5]
    rs = [
        reward.reward(make_feedback(mg_index=i, gop_index=0, frame_count=8, mse_y=m), base)
        for i, m in enumerate(agent_mse)
    ]
    exact = 10 * math.log10(15.0 / np.mean(agent_mse))  # overall PSNR gain of GOP 0
    assert sum(rs) == pytest.approx(exact, rel=0.02)
    assert rs[1] > rs[0] > 0


def test_reward_does_not_pay_for_starving_frames():
    # Same total MSE, redistributed: per-frame PSNR mean changes, the overall-PSNR reward does not.
    base = _baseline([10.0, 10.0, 5.0, 5.0])
    r = [reward.reward(make_feedback(mg_index=i, frame_count=8, mse_y=m), base) for i, m in enumerate((2.0, 18.0))]
    assert sum(r) == pytest.approx(0.0, abs=1e-12)


def test_reward_rejects_a_baseline_of_another_encode():
    with pytest.raises(ValueError, match="another encode"):
        reward.reward(make_feedback(mg_index=0, frame_count=4), _baseline([1, 1, 1, 1]))


def test_ssim_reward_in_points():
    base = _baseline([10.0, 10.0, 5.0, 5.0])
    assert reward.reward(make_feedback(mg_index=0, frame_count=8, ssim_y=0.92), base, "ssim") == pytest.approx(1.0)


def test_rate_neutral_reward_charges_spending_at_the_rd_slope():
    base = _baseline([10.0, 10.0, 5.0, 5.0])
    base.psnr_slope = 6.0  # dB per doubling of the rate
    # Mini-GOP 0 spends 500 bits more for a lower MSE; mini-GOP 1 is starved of them: GOP bits unchanged.
    fbs = [make_feedback(mg_index=0, frame_count=8, mse_y=9.0, bits=1500),
           make_feedback(mg_index=1, frame_count=8, mse_y=10.5, bits=500)]  # fmt: skip
    plain = [reward.reward(fb, base) for fb in fbs]
    rd = [reward.reward(fb, base, "psnr-rd") for fb in fbs]
    price = 6.0 / math.log(2.0) * 500 / 2000  # dB for 500 bits of a 2000-bit GOP
    assert rd[0] == pytest.approx(plain[0] - price) and rd[1] == pytest.approx(plain[1] + price)
    assert sum(rd) == pytest.approx(sum(plain))  # at equal GOP bits the two rewards agree
    # Spending alone, with no quality for it, is a loss at once.
    assert reward.reward(make_feedback(mg_index=0, frame_count=8, mse_y=10.0, bits=1200), base, "psnr-rd") < 0
    base.psnr_slope = math.nan
    with pytest.raises(ValueError, match="RD slope"):
        reward.reward(fbs[0], base, "psnr-rd")


def test_cost_sums_to_gop_overshoot():
    costs = [reward.cost(make_feedback(bits=b, frame_count=8), 40000, 32) for b in (12000, 9000, 11000, 10000)]
    assert sum(costs) == pytest.approx(42000 / 40000 - 1)
    assert reward.gop_violation(42000, 40000, 0.02) == pytest.approx(0.03)


def test_baseline_file_round_trip_and_errors(tmp_path):
    stats = reward.BaselineStats(videos={"--input|a.mp4": _baseline([1.0, 2.0, 3.0, 4.0])})
    stats.videos["--input|a.mp4"].psnr_slope = 2.5  # NaN (unknown) would not compare equal to itself
    path = tmp_path / "b.json"
    stats.save(path)
    assert reward.BaselineStats.load(path) == stats
    path.write_text("{bad")
    with pytest.raises(ValueError, match=r"--baseline-stats: .*b.json is not valid JSON"):
        reward.BaselineStats.load(path)
    with pytest.raises(ValueError, match="does not exist"):
        reward.BaselineStats.load(tmp_path / "missing.json")


def test_budget_out_of_reach_when_even_the_highest_qp_overshoots():
    from reward import BaselineMiniGop, VideoBaseline, budget_out_of_reach

    mgs = [BaselineMiniGop(gop_index=0, frame_count=4, bits=1000, mse_y=1.0, ssim_y=0.9, base_qp=51),
           BaselineMiniGop(gop_index=1, frame_count=4, bits=1000, mse_y=1.0, ssim_y=0.9, base_qp=39)]  # fmt: skip
    base = VideoBaseline(mini_gops=mgs)
    assert base.gop_least_bits(0, max_delta_qp=4, qp_max=51) == 1000  # at qp_max already: no room
    assert base.gop_least_bits(1, max_delta_qp=6, qp_max=51) == 500  # +6 QP halves the bits
    assert base.gop_least_bits(2, max_delta_qp=4, qp_max=51) == 0
    assert budget_out_of_reach(800, 0.02, all_at_qp_max=False, least_bits=base.gop_least_bits(0, 4, 51))
    assert not budget_out_of_reach(800, 0.02, all_at_qp_max=False, least_bits=base.gop_least_bits(1, 6, 51))
    assert budget_out_of_reach(800, 0.02, all_at_qp_max=True)


def test_encoder_warnings_are_read_from_its_log(tmp_path):
    import baselines

    log = tmp_path / "v.baseline.log"
    log.write_text("starting\nbuiltin_encoder: warning: x.avi: the container says 444 frames but 68 decode\n")
    assert baselines.encoder_warnings(log) == ["x.avi: the container says 444 frames but 68 decode"]
    assert baselines.encoder_warnings(tmp_path / "missing.log") == []


def test_lossless_mini_gops_report_the_protocols_100_db_cap():
    import numpy as np

    import io_runner
    from protocol import Feedback, Request

    req = Request(mg_index=0, gop_index=0, mg_in_gop=0, mgs_in_gop=1, gop_frames=4, first_frame=0, frame_count=4,
                  frame_types=["KEY", "INTER", "INTER", "INTER"], temporal_layers=[0, 2, 1, 2], base_qp=30, qp_min=1,
                  qp_max=63, fp_bpp=0.1, lookahead_fp_bpp=[], gop_bits_spent=0, gop_bits_budget=1000,
                  total_bits_spent=0, total_bits_budget=1000, target_kbps=10.0, fps=30.0, width=16, height=16,
                  total_frames=4)  # fmt: skip
    fb = Feedback(mg_index=0, gop_index=0, frame_count=4, bits=1000, qp_used=30, frame_qps=[30] * 4,
                  frame_bits=[250] * 4, mse_y=0.0, mse_u=0.0, mse_v=0.0, psnr_y=100.0, psnr_u=100.0, psnr_v=100.0,
                  psnr_y_frame_mean=100.0, ssim_y=1.0, gop_end=1)  # fmt: skip
    step = io_runner.Step(req, np.zeros(1), np.zeros(1), 30, 0.0, feedback=fb)
    res = io_runner.EncodeResult("v", True, steps=[step], wall_s=1.0)
    assert res.summary()["psnr_y"] == 100.0  # not 148.13 dB from a 1e-10 floor
