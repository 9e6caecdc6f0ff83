"""Learning from search (imitation.py) and policy files (policy.py), including the shipped ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from script_run import run_script

import clips
import evaluate
import gain_model
import imitation
import oracle_records
import policy
from bench import eval_quality
from models import Actor
from state import FEATURE_NAMES, OBS_DIM

KEY = FEATURE_NAMES.index("has_key")
RATE = FEATURE_NAMES.index("log_target_bpp")


def _demos(n: int = 400, seed: int = 0) -> imitation.Demos:
    """A fixed demonstration set whose action depends on the state: a = 0.6 tanh(3 s_rate) on key steps, else 0."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, OBS_DIM)).astype(np.float32)
    obs[:, KEY] = rng.integers(0, 2, n)
    action = np.where(obs[:, KEY] > 0.5, 0.6 * np.tanh(3 * obs[:, RATE]), 0.0).astype(np.float32)
    zeros = np.zeros(n, dtype=int)
    return imitation.Demos(obs, action, zeros, zeros, zeros, ["synthetic"], np.zeros(1))


def test_behaviour_cloning_reduces_the_actors_error_on_a_fixed_demonstration_set():
    # 800 states: with every other feature uniform noise, 400 let the 32x32 actor memorise them once the state had
    # 24 features (held-out error 22% of the variance, against 3% with 800).
    demos = _demos(800)
    torch.manual_seed(0)
    actor = Actor(OBS_DIM, 1, (32, 32))
    before = float(np.mean((imitation.predict(actor, demos.obs) - demos.action) ** 2))
    losses = imitation.fit_actor(actor, demos, epochs=400, lr=3e-3, weight_decay=1e-4)
    after = float(np.mean((imitation.predict(actor, demos.obs) - demos.action) ** 2))
    assert losses[-1] < losses[0]
    assert after < 0.1 * before
    # It learned the dependence on the state, not a constant: held-out states of the same rule.
    test = _demos(seed=1)
    assert float(np.mean((imitation.predict(actor, test.obs) - test.action) ** 2)) < 0.2 * float(np.var(test.action))


def _moves(n: int = 3000, noise: float = 0.01, seed: int = 0) -> tuple[gain_model.MoveSamples, float, float]:
    """Oracle-like moves from a known model J(a|s) = g(s) a - c a^2 with g(s) = slope * s_rate on key steps."""
    rng = np.random.default_rng(seed)
    slope, c = 0.03, 0.005
    obs = rng.uniform(-1, 1, (n, OBS_DIM)).astype(np.float32)
    obs[:, KEY] = rng.integers(0, 2, n)
    a_old = rng.integers(-4, 5, n).astype(np.float32)
    a_new = np.clip(a_old + rng.choice([-3, -1, 1, 3], n), -4, 4).astype(np.float32)
    keep = a_new != a_old
    g = slope * obs[:, RATE] * obs[:, KEY]
    gain = g * (a_new - a_old) - c * (a_new**2 - a_old**2) + rng.normal(0, noise, n)
    m = gain_model.MoveSamples(obs[keep], a_old[keep], a_new[keep], gain[keep], np.zeros(keep.sum(), int), ["s"])
    return m, slope, c


def test_gain_model_recovers_a_known_optimum_from_noisy_moves():
    m, slope, c = _moves()
    model = gain_model.fit_gain_model(m, ridge=1.0)
    assert model.c == pytest.approx(c, rel=0.1)
    obs = np.zeros((3, OBS_DIM), dtype=np.float32)
    obs[:, KEY] = 1.0
    obs[:, RATE] = [-1.0, 0.0, 1.0]
    best = model.best_offset(obs, 4)
    truth = slope * obs[:, RATE] / (2 * c)  # -3, 0, +3 QP
    assert np.abs(best - truth).max() < 0.5
    obs[:, KEY] = 0.0  # inter steps: no gain from moving
    assert np.abs(model.best_offset(obs, 4)).max() < 0.5


def test_gain_model_with_a_state_dependent_curvature_recovers_a_flatter_key_curve():
    """Key steps: J = g a - c(s) a^2 with c 0.012 at gop_left 1 and 0.004 at gop_left 0 (a short GOP)."""
    rng = np.random.default_rng(1)
    n, g = 4000, 0.024
    obs = rng.uniform(-1, 1, (n, OBS_DIM)).astype(np.float32)
    obs[:, KEY] = 1.0
    gl = FEATURE_NAMES.index("gop_left")
    obs[:, gl] = rng.integers(0, 2, n)
    c_true = 0.004 + 0.008 * obs[:, gl]
    a_old = rng.integers(-4, 5, n).astype(np.float32)
    a_new = np.clip(a_old + rng.choice([-2, -1, 1, 2], n), -4, 4).astype(np.float32)
    keep = a_new != a_old
    gain = g * (a_new - a_old) - c_true * (a_new**2 - a_old**2) + rng.normal(0, 0.005, n)
    m = gain_model.MoveSamples(obs[keep], a_old[keep], a_new[keep], gain[keep], np.zeros(keep.sum(), int), ["s"])
    spec = gain_model.GainFeatures(key=(), inter=(), curvature=("gop_left",))
    model = gain_model.fit_gain_model(m, ridge=1e-3, spec=spec)
    probe = np.zeros((2, OBS_DIM), np.float32)
    probe[:, KEY] = 1.0
    probe[:, gl] = [0.0, 1.0]
    assert model.curvature(probe) == pytest.approx([0.004, 0.012], abs=0.001)
    assert model.best_offset(probe, 4) == pytest.approx([3.0, 1.0], abs=0.3)  # g / 2c(s)
    one = gain_model.fit_gain_model(m, ridge=1e-3, spec=gain_model.GainFeatures(key=(), inter=()))
    assert np.ptp(one.best_offset(probe, 4)) < 0.1  # one curvature: the same answer for both
    assert "key curvature: gop_left" in spec.describe() and "curvature" not in one.spec.describe()


def test_gain_model_is_predictive_across_sources_only_when_the_state_matters():
    m, _, _ = _moves(noise=0.005)
    m.source = np.arange(len(m)) % 3
    m.sources = ["a", "b", "c"]
    r2, r2_const = gain_model.cross_validate_gain(m, ridge=1.0)
    assert r2 > r2_const + 0.2


def test_gain_model_restricted_to_the_feature_that_matters_generalises_across_sources():
    """Only the key mini-GOP's rate feature drives the gain: a model given just that feature finds it,
    and its cross-source R² is at least that of the model given every feature."""
    m, slope, c = _moves(noise=0.02)
    m.source = np.arange(len(m)) % 3
    m.sources = ["a", "b", "c"]
    only = gain_model.GainFeatures.parse(FEATURE_NAMES[RATE], "")
    r2_only, _ = gain_model.cross_validate_gain(m, 1.0, only)
    r2_all, _ = gain_model.cross_validate_gain(m, 1.0)
    assert r2_only >= r2_all - 0.01
    model = gain_model.fit_gain_model(m, 1.0, only)
    assert len(model.w) == 3  # [1, key, key * s_rate]
    obs = np.zeros((2, OBS_DIM), dtype=np.float32)
    obs[:, KEY] = 1.0
    obs[:, RATE] = [-1.0, 1.0]
    assert model.best_offset(obs, 4) == pytest.approx(slope * obs[:, RATE] / (2 * c), abs=0.5)
    with pytest.raises(ValueError, match="unknown state feature 'nope'"):
        gain_model.GainFeatures.parse("nope", "")
    curved = gain_model.GainFeatures.parse("fp_inter_ratio,gop_left", "", "gop_left")
    assert curved == gain_model.GainFeatures(("fp_inter_ratio", "gop_left"), (), ("gop_left",))
    assert "key curvature: gop_left" in curved.describe()
    with pytest.raises(ValueError, match="not 'all'"):
        gain_model.GainFeatures.parse("", "", "all")


def test_distillation_set_hides_the_features_the_gain_model_did_not_use():
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (200, OBS_DIM)).astype(np.float32)
    target = rng.uniform(-4, 4, 200)
    spec = gain_model.GainFeatures.parse(FEATURE_NAMES[RATE], "")
    fit_obs, fit_target = imitation.ignoring_unused(obs, target, spec, copies=2)
    assert fit_obs.shape == (600, OBS_DIM) and np.array_equal(fit_target, np.tile(target, 3))
    assert np.array_equal(fit_obs[:200], obs)
    for i in (RATE, KEY):  # used features keep their pairing with the targets
        assert np.array_equal(fit_obs[200:400, i], obs[:, i])
    other = FEATURE_NAMES.index("prev_psnr_y")
    assert not np.array_equal(fit_obs[200:400, other], obs[:, other])
    assert sorted(fit_obs[200:400, other]) == sorted(obs[:, other])  # shuffled, not invented
    everything = gain_model.GainFeatures()
    assert imitation.ignoring_unused(obs, target, everything)[0] is obs


def test_hinge_terms_of_the_gain_model():
    obs = np.zeros((3, OBS_DIM), dtype=np.float32)
    reuse = FEATURE_NAMES.index("fp_reuse")
    obs[:, reuse] = [0.5, 0.9, 1.3]
    assert np.allclose(gain_model.term_column(obs, "fp_reuse"), [0.5, 0.9, 1.3])
    assert np.allclose(gain_model.term_column(obs, "fp_reuse>0.9"), [0.0, 0.0, 0.4], atol=1e-6)
    assert np.allclose(gain_model.term_column(obs, "fp_reuse<0.9"), [0.4, 0.0, 0.0], atol=1e-6)
    spec = gain_model.GainFeatures.parse("gop_left,fp_reuse>0.9", "")
    assert spec.key == ("gop_left", "fp_reuse>0.9")
    phi = gain_model.gain_features(obs, spec)  # [1, key, key * gop_left, key * hinge]; has_key is 0 here
    assert phi.shape == (3, 4) and np.allclose(phi[:, 3], 0.0)
    obs[:, KEY] = 1.0
    assert np.allclose(gain_model.gain_features(obs, spec)[:, 3], [0.0, 0.0, 0.4], atol=1e-6)
    for bad in ("fp_reuse>x", "no_such>0.9", "fp_reuse>0.9*no_such"):
        with pytest.raises(ValueError, match="not a number|unknown state feature"):
            gain_model.GainFeatures.parse(bad, "")
    # A product term: the hinge times another feature; both are features the actor must read.
    rate = FEATURE_NAMES.index("log_target_bpp")
    obs[:, rate] = [-1.0, 2.0, -0.5]
    assert np.allclose(gain_model.term_column(obs, "fp_reuse>0.9*log_target_bpp"), [0.0, 0.0, -0.2], atol=1e-6)
    assert gain_model.term_features("fp_reuse>0.9*log_target_bpp") == ("fp_reuse", "log_target_bpp")
    product = gain_model.GainFeatures.parse("fp_reuse>0.9*log_target_bpp", "")
    assert gain_model.used_features(product) == {"has_key", "fp_reuse", "log_target_bpp"}
    # The hinge's feature is used: ignoring_unused leaves it paired with the targets (and shuffles
    # it when no term names it).
    many = np.zeros((50, OBS_DIM), dtype=np.float32)
    many[:, reuse] = np.linspace(0.0, 1.5, 50)
    fit_obs, _ = imitation.ignoring_unused(many, np.zeros(50), spec, copies=1)
    assert np.array_equal(fit_obs[50:, reuse], many[:, reuse])
    fit_obs, _ = imitation.ignoring_unused(many, np.zeros(50), gain_model.GainFeatures.parse("gop_left", ""), copies=1)
    assert not np.array_equal(fit_obs[50:, reuse], many[:, reuse])
    # A feature the target reads besides the gain model (gop_left, for --payback's fade) stays paired when kept.
    left = FEATURE_NAMES.index("gop_left")
    many[:, left] = np.linspace(0.0, 0.875, 50)
    reuse_only = gain_model.GainFeatures.parse("fp_reuse", "")
    fit_obs, _ = imitation.ignoring_unused(many, np.zeros(50), reuse_only, copies=1, keep=("gop_left",))
    assert np.array_equal(fit_obs[50:, left], many[:, left])
    fit_obs, _ = imitation.ignoring_unused(many, np.zeros(50), reuse_only, copies=1)
    assert not np.array_equal(fit_obs[50:, left], many[:, left])


def test_distillation_retries_a_fit_that_stalls_and_leaves_a_good_one_alone(monkeypatch):
    rng = np.random.default_rng(6)
    obs = rng.normal(size=(400, OBS_DIM)).astype(np.float32)
    target = np.where(obs[:, 0] > 0.9, -4.0, 0.0) + np.where(obs[:, 1] > 1.2, 3.0, 0.0)  # two steps
    rms = {}
    for retries in (0, 2):  # 20 epochs a round: the first round stops short, the retries go on from it
        torch.manual_seed(6)
        rms[retries] = imitation.distill(Actor(OBS_DIM, 1, (64, 64)), obs, target, 4, epochs=20, retries=retries)
    assert rms[0] > 0.5 and rms[2] < 0.8 * rms[0]
    # A fit within the tolerance after one round is not touched again (shipped policies reproduce).
    fits = []
    for retries in (0, 2):
        torch.manual_seed(6)
        actor = Actor(OBS_DIM, 1, (64, 64))
        imitation.distill(actor, obs, target, 4, epochs=200, tolerance=1.0, retries=retries)
        fits.append(actor.state_dict())
    assert all(torch.equal(fits[0][k], fits[1][k]) for k in fits[0])
    # A round that makes the fit worse is undone: the actor keeps the best round's weights.
    real_fit, rounds = imitation.fit_actor, []

    def fit_then_spoil(actor, demos, **kw):
        real_fit(actor, demos, **kw)
        rounds.append(kw["lr"])
        if len(rounds) == 2:  # the second round ruins the fit
            with torch.no_grad():
                for p in actor.parameters():
                    p.add_(1.0)

    monkeypatch.setattr(imitation, "fit_actor", fit_then_spoil)
    torch.manual_seed(6)
    actor = Actor(OBS_DIM, 1, (64, 64))
    best = imitation.distill(actor, obs, target, 4, epochs=20, tolerance=0.0, retries=2)
    rms_now = float(np.sqrt(np.mean((imitation.predict(actor, obs) * 4 - target) ** 2)))
    assert len(rounds) == 3 and rms_now == pytest.approx(best) and best <= rms[0]  # round 1 at least


def _step(mg: int, qp: int, base_qp: int = 30) -> dict:
    req = dict(mg_index=mg, gop_index=0, mg_in_gop=mg, mgs_in_gop=2, gop_frames=8, first_frame=4 * mg, frame_count=4,
               frame_types=["KEY" if mg == 0 else "INTER"] + ["INTER"] * 3, temporal_layers=[0, 2, 1, 2],
               base_qp=base_qp, qp_min=1, qp_max=63, fp_bpp=0.05, lookahead_fp_bpp=[], gop_bits_spent=0,
               gop_bits_budget=10000, total_bits_spent=0, total_bits_budget=10000, target_kbps=100.0, fps=30.0,
               width=64, height=64, total_frames=8)  # fmt: skip
    fb = dict(mg_index=mg, gop_index=0, frame_count=4, bits=5000, qp_used=qp, frame_qps=[qp] * 4, frame_bits=[1250] * 4,
              mse_y=10.0, mse_u=5.0, mse_v=5.0, psnr_y=38.0, psnr_u=41.0, psnr_v=41.0, psnr_y_frame_mean=38.0,
              ssim_y=0.95, gop_end=int(mg == 1))  # fmt: skip
    return {"request": req, "feedback": fb, "qp": qp}


def test_move_samples_replay_the_coordinate_descent_against_the_best_answer_of_the_time():
    rec = {
        "window": "clip_s1_f0-8", "bpp": 0.1,
        "baseline": {"psnr_y": 38.0, "bits": 10000},
        "oracle": {"psnr_y": 38.1, "bits": 10000, "offsets": [3, 1]},
        "baseline_steps": [_step(0, 30), _step(1, 30)],
        "oracle_steps": [_step(0, 33), _step(1, 31)],
        "candidates": [
            {"offsets": [3, 0], "psnr_y": 38.05, "bits": 10000},  # accepted: the parent of what follows
            {"offsets": [3, 3], "psnr_y": 38.00, "bits": 10000},  # vs [3, 0]: -0.05 dB
            {"offsets": [3, 1], "psnr_y": 38.10, "bits": 10000},  # vs [3, 0]: +0.05 dB
        ],
    }  # fmt: skip
    m = gain_model.move_samples([rec])
    assert m.a_old.tolist() == [0, 0, 0] and m.a_new.tolist() == [3, 3, 1]
    assert m.gain_rate == pytest.approx([0.05, -0.05, 0.05])
    demos_obs, offsets = oracle_records.observations(rec["oracle_steps"])
    assert offsets.tolist() == [3, 1] and demos_obs.shape == (2, OBS_DIM)


def test_policy_file_round_trip_gives_the_same_answers_and_loads_weights_only(tmp_path):
    torch.manual_seed(3)
    actor = Actor(OBS_DIM, 1, (16, 16))
    path = tmp_path / "p.pt"
    policy.save(path, actor, "x264", 4, 0.02, {"summary": "test"})
    torch.load(path, weights_only=True)  # nothing in it needs unpickling
    loaded = policy.load(path)
    obs = np.random.default_rng(0).uniform(-1, 1, (20, OBS_DIM)).astype(np.float32)
    exported = np.stack([imitation.predict(actor, o[None])[0] for o in obs])  # row by row, as the agent acts
    answers = np.stack([loaded.act(o)[0] for o in obs])
    np.testing.assert_allclose(answers, exported, atol=1e-6)
    assert np.array_equal(np.round(answers * 4), np.round(exported * 4))  # the same QP offsets
    assert loaded.hidden_sizes == (16, 16) and loaded.codec == "x264" and loaded.max_delta_qp == 4
    bundle = evaluate.load_agent(path)  # evaluate.py and main.py answer with the same deterministic action
    assert np.array_equal(bundle.learner.choose(obs[0]), loaded.act(obs[0]))


def test_fade_finer_keys_fades_only_a_short_gops_finer_key_and_round_trips(tmp_path):
    """policy.py's rate guard: a key mini-GOP's a < 0 times clip(gop_left / (7/8), 0, 1); all else as the actor says."""
    from state import qp_answer

    def constant_actor(mean: float) -> Actor:
        actor = Actor(OBS_DIM, 1, (8,))
        with torch.no_grad():
            actor.net[-1].weight.zero_()
            actor.net[-1].bias.copy_(torch.tensor([mean, -1.0]))
        return actor

    def obs(key: bool, mgs: int, mg: int = 0) -> np.ndarray:
        o = np.zeros(OBS_DIM, np.float32)
        o[FEATURE_NAMES.index("has_key")] = float(key)
        o[FEATURE_NAMES.index("gop_left")] = (mgs - 1 - mg) / mgs
        return o

    a = np.float32(np.tanh(-1.0))
    for mean in (-1.0, 1.0):
        policy.save(tmp_path / "fade.pt", constant_actor(mean), "svtav1", 4, 0.02, {}, FEATURE_NAMES, True)
        policy.save(tmp_path / "plain.pt", constant_actor(mean), "svtav1", 4, 0.02, {}, FEATURE_NAMES)
        fade, plain = policy.load(tmp_path / "fade.pt"), policy.load(tmp_path / "plain.pt")
        assert fade.fade_finer_keys and not plain.fade_finer_keys
        assert "fade_finer_keys" not in torch.load(tmp_path / "plain.pt", weights_only=True)  # old files: as before
        for o in (obs(True, 8), obs(True, 16), obs(False, 8, 6), obs(False, 2, 1)):  # full GOPs' keys, not keys
            assert np.array_equal(fade.act(o), plain.act(o))
        for mgs in (1, 2, 4, 7):  # a short GOP's key
            want = a * min(1.0, (mgs - 1) / mgs / 0.875) if mean < 0 else -a
            assert fade.act(obs(True, mgs))[0] == pytest.approx(want, abs=1e-6)
            assert plain.act(obs(True, mgs))[0] == pytest.approx(np.tanh(mean), abs=1e-6)
    policy.save(tmp_path / "fade.pt", constant_actor(-1.0), "svtav1", 4, 0.02, {}, FEATURE_NAMES, True)
    fade = policy.load(tmp_path / "fade.pt")
    # the QP: -0.76 x 4 = -3 in a full GOP; a two-mini-GOP GOP's key: -0.76 x 4/7 x 4 = -1.74, so -2
    assert qp_answer(float(fade.act(obs(True, 8))[0]), 30, 0, 63, 63, 4) == 27
    assert qp_answer(float(fade.act(obs(True, 2))[0]), 30, 0, 63, 63, 4) == 28
    bundle = evaluate.load_agent(tmp_path / "fade.pt")  # main.py and evaluate.py answer through it
    assert bundle.learner.choose(obs(True, 2))[0] == fade.act(obs(True, 2))[0] == pytest.approx(a * 4 / 7)


def test_a_policy_that_reads_the_key_probe_says_so_once_when_the_requests_lack_it(tmp_path, caplog):
    names = FEATURE_NAMES  # key_probe among them
    path = tmp_path / "probe.pt"
    policy.save(path, Actor(len(names), 1, (8,)), "svtav1", 4, 0.02, {"key_probe": "1"}, names)
    plain = tmp_path / "plain.pt"
    policy.save(plain, Actor(len(names), 1, (8,)), "svtav1", 4, 0.02, {}, names)
    assert policy.load(path).wants_key_probe and not policy.load(plain).wants_key_probe
    gop_start = np.zeros(OBS_DIM, np.float32)
    gop_start[FEATURE_NAMES.index("has_key")] = 1.0
    alone = gop_start.copy()  # a GOP of one mini-GOP: its key_probe is 0 by definition, nothing to say
    gop_start[FEATURE_NAMES.index("gop_left")] = 7 / 8
    probed = gop_start.copy()
    probed[FEATURE_NAMES.index("key_probe")] = 0.3
    learner = policy.PolicyLearner(policy.load(path))
    with caplog.at_level("WARNING"):
        learner.choose(probed)
        learner.choose(alone)
        assert not caplog.records  # a probe came, or the GOP has one mini-GOP: nothing to say
        learner.choose(gop_start)
        learner.choose(gop_start)
        policy.PolicyLearner(policy.load(plain)).choose(gop_start)
    assert len(caplog.records) == 1 and "run the encoder with --key-probe" in caplog.records[0].getMessage()


def test_a_policy_made_before_a_feature_was_added_reads_its_own_features_and_answers_as_before(tmp_path):
    from state import FEATURES_V2

    torch.manual_seed(3)
    actor = Actor(len(FEATURES_V2), 1, (16, 16))  # a file of the features before fp_propagation
    path = tmp_path / "old.pt"
    policy.save(path, actor, "svtav1", 4, 0.02, {"summary": "test"}, FEATURES_V2)
    loaded = policy.load(path)
    obs = np.random.default_rng(0).uniform(-1, 1, (20, OBS_DIM)).astype(np.float32)
    cols = [FEATURE_NAMES.index(n) for n in FEATURES_V2]
    exported = imitation.predict(actor, obs[:, cols])
    answers = np.stack([loaded.act(o)[0] for o in obs])
    np.testing.assert_allclose(answers, exported, atol=1e-6)
    later = obs.copy()
    later[:, FEATURE_NAMES.index("fp_propagation")] += 1.0  # a feature it never read: no effect
    assert np.array_equal(np.stack([loaded.act(o)[0] for o in later]), answers)
    full = loaded.full_actor()  # SAC starts from it on the whole state: the same answers
    np.testing.assert_allclose(imitation.predict(full, later), exported, atol=1e-6)
    assert loaded.full_actor() is not loaded.actor and policy.load(path).feature_names == FEATURES_V2
    data = torch.load(path, weights_only=True)
    data["feature_names"] = list(reversed(FEATURES_V2))  # known names in another order: refused
    torch.save(data, path)
    with pytest.raises(policy.PolicyError, match="trained on the features"):
        policy.load(path)


def test_actor_inputs_add_a_later_feature_only_where_the_gain_model_uses_it():
    from state import FEATURES_V2

    assert imitation.actor_inputs(gain_model.GainFeatures(key=("fp_reuse",), inter=())) == FEATURES_V2
    with_p = gain_model.GainFeatures.parse("gop_left,fp_propagation>0.8", "")
    assert imitation.actor_inputs(with_p) == (*FEATURES_V2, "fp_propagation")
    assert imitation.actor_inputs(gain_model.ALL_FEATURES) == FEATURE_NAMES  # a model on the whole state


def test_key_pick_answers_the_best_probe_past_tau_and_its_actor_reads_the_probe_margin_not_the_key_terms():
    from state import FEATURES_V2

    obs = np.zeros((5, len(FEATURE_NAMES)), dtype=np.float32)
    obs[:, FEATURE_NAMES.index("key_probe_best")] = [0.2, 0.011, 0.009, -0.05, 0.0]
    assert imitation.key_pick_offsets(obs, 0.01).tolist() == [-3, -3, 0, 3, 0]  # finer = a lower QP: negative
    assert imitation.key_pick_offsets(obs, 0.0).tolist() == [-3, -3, -3, 3, 0]
    spec = imitation.PROBE_RECIPES["svtav1"].features
    assert imitation.actor_inputs(spec, key_pick=True) == (*FEATURES_V2, "ramp_probe", "key_probe_best")
    assert imitation.actor_inputs(spec) == (*FEATURES_V2, "key_probe", "ramp_probe")
    # The shuffled copies hide key_probe from the picking actor (its key answers no longer read it).
    assert gain_model.used_features(imitation.target_features(spec, True)) == {"has_key", "ramp_probe",
                                                                              "key_probe_best"}


def test_policy_trained_on_other_features_is_refused_with_a_clear_message(tmp_path):
    actor = Actor(OBS_DIM, 1, (8,))
    path = tmp_path / "p.pt"
    policy.save(path, actor, "svtav1", 4, 0.02, {})
    data = torch.load(path, weights_only=True)
    data["feature_names"] = ["something_else"] * OBS_DIM
    torch.save(data, path)
    with pytest.raises(policy.PolicyError, match="trained on the features"):
        policy.load(path)
    assert policy.read_file(tmp_path / "p.pt") is not None
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert policy.read_file(tmp_path / "junk.pt") is None  # not a policy: main.py then reads it as a checkpoint


@pytest.mark.parametrize("codec", ["svtav1", "x264", "vp9"])
def test_shipped_policy_loads_with_this_code(codec):
    path = policy.shipped_policy(codec)
    assert path.is_file(), f"{path} is missing: README promises it (python make_policy.py --codec {codec})"
    pol = policy.load(path)  # fails when a change of the state or the actor makes the file stale
    assert pol.codec == codec and "command" in pol.provenance
    obs = np.zeros(OBS_DIM, dtype=np.float32)
    assert -1.0 <= float(pol.act(obs)[0]) <= 1.0


def test_shipped_policies_load_by_name_and_are_listed_with_how_they_were_made(tmp_path, monkeypatch):
    import cli

    assert policy.shipped_names() == ["svtav1", "svtav1_probe", "vp9", "x264"]
    assert policy.named("x264") == policy.shipped_policy("x264")
    assert policy.named("mine/x264.pt") == Path("mine/x264.pt")  # a path stays a path, found or not
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x264").write_bytes(b"")  # a file of that name here wins over the shipped one
    assert policy.named("x264") == Path("x264")
    (tmp_path / "x264").unlink()
    ns = cli.build_parser().parse_args(["--mode", "infer", "--load-checkpoint", "vp9"])
    assert cli.config_from_args(ns).load_checkpoint == str(policy.shipped_policy("vp9"))
    res = subprocess.run([sys.executable, "-m", "policy"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert res.returncode == 0
    for name in policy.shipped_names():
        row = next(line for line in res.stdout.splitlines() if line.startswith(f"| {name} |"))
        assert f"`{policy.load(policy.shipped_policy(name)).provenance['command']}`" in row
    res = subprocess.run([sys.executable, "-m", "policy", "nope"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    assert res.returncode == 2 and "nope: no such file (shipped: svtav1, svtav1_probe, vp9, x264)" in res.stderr


@pytest.mark.parametrize("name", ["svtav1", "x264", "vp9", "svtav1_probe"])
def test_shipped_policy_was_made_with_its_codecs_recipe(name):
    """make_policy.py --codec C [--key-probe] (no other flag) must reproduce policies/C[_probe].pt: its recipe is the
    file's."""
    codec, probe = name.removesuffix("_probe"), name.endswith("_probe")
    recipe = imitation.recipe_for(codec, probe)
    pol = policy.load(policy.shipped_policy(name))
    prov = pol.provenance
    assert pol.wants_key_probe == probe and prov["command"].endswith("--key-probe") == probe
    if "windows" not in prov:  # made before files recorded their recipe: with that day's defaults
        assert codec == "vp9" and "--windows" not in prov["command"] and "--consensus" not in prov["command"]
        assert (recipe.windows, recipe.consensus) == ("train,static", 1.0)
        return
    assert prov["windows"] == recipe.windows and float(prov["consensus"]) == recipe.consensus
    assert prov["features"] == recipe.features.describe()
    assert prov.get("key_sweeps", "") == recipe.key_sweeps  # files made before sweeps existed had none
    assert prov.get("draws", "0") == ",".join(map(str, recipe.draws))  # and before draws were pooled, one: 0
    assert not pol.fade_finer_keys  # no recipe fades at answer time (make_policy.py --fade-finer-keys)


def test_make_policy_refuses_an_unknown_window_set_before_any_encode(tmp_path):
    data = tmp_path / "oracle.jsonl"
    script = Path(__file__).resolve().parent.parent / "make_policy.py"
    res = run_script(script, "--codec", "x264", "--windows", "train,heldout", "--data", str(data), "--out",
                     str(tmp_path / "p.pt"))  # fmt: skip
    assert res.returncode == 2 and "unknown window set 'heldout'" in res.stderr
    res = run_script(script, "--codec", "x264", "--key-sweeps", "trian", "--data", str(data), "--out",
                     str(tmp_path / "p.pt"))  # fmt: skip
    assert res.returncode == 2 and "--key-sweeps: unknown window set 'trian'" in res.stderr
    assert not data.exists()
    for bad in ("0,x", "2,2", "-1", ""):
        res = run_script(script, "--codec", "x264", "--draws", bad, "--data", str(data), "--out",
                         str(tmp_path / "p.pt"))  # fmt: skip
        assert res.returncode == 2 and f"--draws {bad!r}" in res.stderr, bad
    assert "Traceback" not in res.stderr and not data.exists() and not (tmp_path / "p.pt").exists()
    for extra in ([], ["--key-probe", "--key-pick", "-0.1"]):  # a pick needs the probes, and a margin >= 0
        res = run_script(script, "--codec", "svtav1", "--key-pick", "0.01", *extra, "--data", str(data), "--out",
                         str(tmp_path / "p.pt"))  # fmt: skip
        assert res.returncode == 2 and "needs --key-probe and a margin >= 0 dB" in res.stderr, res.stderr
    assert not data.exists()
    assert imitation.recipe_for("svtav1", key_probe=True).features.key == ("fp_reuse", "key_probe")
    assert imitation.recipe_for("x264", key_probe=True) == imitation.SHIPPED_RECIPES["x264"]


def test_training_held_out_and_test_splits_share_no_source():
    train = {w.source for w in clips.training_windows() + clips.static_windows()}
    more_windows = (clips.natural_windows() + clips.screen_windows() + clips.extra_windows() + clips.anim_windows()
                    + clips.blupi_windows() + clips.media_windows() + clips.visp_windows())
    more = {w.source for w in more_windows}
    held = {w.source for w in clips.heldout_windows()}
    assert train == set(clips.TRAIN_SOURCES) and held == set(clips.HELDOUT_SOURCES)
    assert more == set(clips.MORE_TRAIN_SOURCES)
    assert not (train | more) & held
    checks = clips.tail_windows() + clips.two_gop_windows() + clips.cut_windows() + clips.rtail_windows()
    checks += clips.fixed_windows()
    assert {w.source for w in checks} <= train | more
    # fixed0: the fixed-camera windows, same sources and boxes, without the sensor noise
    clean, noisy = clips.fixed_clean_windows(), clips.fixed_windows()
    assert [(w.source, w.start, w.live) for w in clean] == [(w.source, w.start, w.live) for w in noisy]
    assert all(w.noise == 0 for w in clean) and all(w.noise > 0 for w in noisy)
    assert not {w.name for w in clean} & {w.name for w in noisy}
    test = {w.source for w in clips.test_windows()}
    assert test == set(clips.TEST_SOURCES) and not (train | more | held) & test
    test2 = {w.source for w in clips.test2_windows()}
    assert test2 == set(clips.TEST2_SOURCES) and not (train | more | held | test) & test2
    assert set(clips.EVAL_SPLITS) == {"heldout", "test", "test2", "native"}
    native = clips.native_windows()  # the held-out clips that split halves, at their own size
    assert {w.source for w in native} <= held and all(w.scale == 1 for w in native) and len(native) == 6
    halved = {(w.source, w.start, w.frames) for w in clips.heldout_windows() if w.scale > 1}
    assert {(w.source, w.start, w.frames) for w in native} == halved
    # so eval_quality never pools it with the held-out split, whose sources it repeats
    assert eval_quality.pooled_splits(["heldout", "native", "test"]) == ["heldout", "test"]
    assert eval_quality.pooled_splits(["native", "test2"]) == ["native", "test2"]
    # leave-one-source-out fits group windows by oracle_records.source_of: one group per source clip
    assert {oracle_records.source_of(w.name) for w in more_windows} == {Path(s).stem for s in more}
    photos = {w.source for w in clips.pan_windows()} | {w.cut_to for w in clips.pan_windows() if w.cut_to}
    assert photos <= set(clips.DEBIAN_IMAGES) and not photos & held  # still photos, no held-out clip


def test_window_materialises_cropped_scaled_and_slowed_frames(tmp_path):
    from builtin_encoder.source import open_source

    win = clips.Window("carphone_pristine.mp4", 5, 12, scale=2, crop=(64, 48), repeat=4, noise=1.0)
    src = open_source(clips.materialise(win, cache=tmp_path))
    assert (src.width, src.height, src.frame_count) == (64, 48, 12)
    frames = list(src.frames())
    # Every source frame shown 4 times, each copy with its own noise: copies differ a little, sources more.
    d_copy = np.abs(frames[0].y.astype(int) - frames[1].y.astype(int)).mean()
    d_next = np.abs(frames[3].y.astype(int) - frames[4].y.astype(int)).mean()
    assert 0.3 < d_copy < 2.0 and d_next > d_copy
    first = clips.materialise(win, cache=tmp_path).stat().st_mtime_ns
    assert clips.materialise(win, cache=tmp_path).stat().st_mtime_ns == first  # written once, then reused
    assert not list(tmp_path.rglob("*.part"))  # the temporary was renamed into place


def test_cache_temporaries_are_per_process(tmp_path):
    import multiprocessing

    # Two processes filling one cache (parallel test workers, two runs) must never share a temporary.
    target = tmp_path / "windows" / "w.y4m"
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        theirs = pool.apply(clips.part_path, (target,))
    mine = clips.part_path(target)
    assert mine != theirs and mine.parent == theirs.parent == target.parent
    assert mine.name.startswith("w.y4m.") and mine.suffix == ".part"


def test_image_sequence_becomes_one_clip_in_name_order(tmp_path):
    from builtin_encoder.source import open_source

    def pgm(path, level, width=7, height=5):  # binary PGM: header, then one byte a pixel
        path.write_bytes(f"P5\n{width} {height}\n255\n".encode() + bytes([level]) * (width * height))

    # Five gray pictures 7x5 (odd: the clip cuts to 6x4), each one level, written out of order.
    levels = [0, 60, 120, 180, 255]
    for i in (3, 0, 4, 1, 2):
        pgm(tmp_path / f"image.{i:04d}.pgm", levels[i])
    clips._write_sequence(sorted(tmp_path.glob("image.*.pgm")), tmp_path / "seq.y4m")
    src = open_source(tmp_path / "seq.y4m")
    assert (src.width, src.height, src.frame_count, src.fps) == (6, 4, 5, 30.0)
    frames = list(src.frames())
    # Gray to limited-range luma (16 + 219 * level / 255), flat chroma, in name order.
    assert [int(f.y[0, 0]) for f in frames] == [round(16 + 219 * v / 255) for v in levels]
    assert all((f.y == f.y[0, 0]).all() and (f.u == 128).all() and (f.v == 128).all() for f in frames)
    assert frames[0].u.shape == (2, 3)
    pgm(tmp_path / "image.0009.pgm", 0, height=6)
    with pytest.raises(clips.ClipError, match=r"image.0009.pgm is 7x6, not 7x5"):
        clips._write_sequence(sorted(tmp_path.glob("image.*.pgm")), tmp_path / "bad.y4m")


def test_window_with_a_jump_cut_shows_the_source_before_and_after_the_jump(tmp_path):
    from builtin_encoder.source import open_source

    def frames(win: clips.Window) -> list[np.ndarray]:
        return [f.y for f in open_source(clips.materialise(win, cache=tmp_path)).frames()]

    cut = clips.Window("carphone_pristine.mp4", 3, 6, scale=2, jump=(2, 50))
    assert cut.name == "carphone_pristine_s2_j2to50_f3-9" and cut.source_indices() == [3, 4, 50, 51, 52, 53]
    got = frames(cut)
    want = frames(clips.Window("carphone_pristine.mp4", 3, 2, scale=2)) + frames(
        clips.Window("carphone_pristine.mp4", 50, 4, scale=2))
    assert len(got) == 6 and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    with pytest.raises(clips.ClipError, match="needs 201"):
        clips.materialise(clips.Window("carphone_pristine.mp4", 0, 64, jump=(1, 138)), cache=tmp_path)


def test_fixed_camera_window_holds_the_first_frame_outside_the_live_box(tmp_path):
    from builtin_encoder.source import open_source

    def frames(win: clips.Window) -> list:
        return list(open_source(clips.materialise(win, cache=tmp_path)).frames())

    assert clips.live_box(144, 176, 0.25) == (36, 44, 72, 88)  # half of each side: a quarter of the area
    win = clips.Window("carphone_pristine.mp4", 5, 6, scale=2, live=0.25)
    assert win.name == "carphone_pristine_s2_l0.25n0_f5-11"
    got, plain = frames(win), frames(clips.Window("carphone_pristine.mp4", 5, 6, scale=2))
    y0, x0, h, w = clips.live_box(*plain[0].y.shape, 0.25)
    inside = np.zeros(plain[0].y.shape, bool)
    inside[y0 : y0 + h, x0 : x0 + w] = True
    for g, p in zip(got, plain, strict=True):
        assert np.array_equal(g.y[inside], p.y[inside]) and np.array_equal(g.y[~inside], plain[0].y[~inside])
        assert np.array_equal(g.u[y0 // 2 : (y0 + h) // 2, x0 // 2 : (x0 + w) // 2],
                              p.u[y0 // 2 : (y0 + h) // 2, x0 // 2 : (x0 + w) // 2])  # fmt: skip
        assert np.array_equal(g.v[: y0 // 2], plain[0].v[: y0 // 2])
    assert not np.array_equal(got[-1].y[inside], got[0].y[inside])  # the box plays the source
    # with noise: seeded (the same on every run), on the still background too
    noisy = clips.Window("carphone_pristine.mp4", 5, 6, scale=2, live=0.25, noise=1.0)
    a = frames(noisy)
    b = list(clips.window_frames(noisy, open_source(clips.bundled_clip("carphone_pristine.mp4")).frames()))
    assert all(np.array_equal(x.y, y.y) for x, y in zip(a, b, strict=True))
    still = np.abs(a[1].y[~inside].astype(int) - a[2].y[~inside].astype(int)).mean()
    assert 0.3 < still < 2.0
    assert {w.source for w in clips.fixed_windows()} <= set(clips.TRAIN_SOURCES)


def test_pan_window_moves_the_camera_over_the_photo_and_cuts():
    rng = np.random.default_rng(0)
    photo = rng.integers(16, 236, (3, 200, 300), dtype=np.uint8)
    other = np.full((3, 200, 300), 90, dtype=np.uint8)
    win = clips.Pan("astronaut.png", 12, step=(3, 1), size=(64, 48), noise=0.0, cut_to="chelsea.png", cut_at=8)
    frames = list(clips.pan_frames(win, photo, other))
    assert len(frames) == 12 and frames[0].y.shape == (48, 64) and frames[0].u.shape == (24, 32)
    for n in (0, 5):  # frame n shows the photo from (3n, n): the camera moved, the content did not
        assert np.array_equal(frames[n].y, photo[0, n : n + 48, 3 * n : 3 * n + 64])
    assert np.all(frames[8].y == 90) and np.all(frames[11].u == 90)  # after the cut: the other photo
    still = list(clips.pan_frames(clips.Pan("astronaut.png", 3, size=(64, 48), noise=1.0), photo))
    d = np.abs(still[0].y.astype(int) - still[1].y.astype(int))
    assert 0.3 < d.mean() < 2.0  # a still shot: only the sensor noise changes
    assert oracle_records.source_of(win.name) == "astronaut"  # the photo is the source in leave-one-source-out fits
    with pytest.raises(clips.ClipError, match="too small"):
        list(clips.pan_frames(clips.Pan("gravel.png", 80, step=(3, 0), size=(64, 48)), photo))


def key_raise_record(bpp: float, gain: float, window: str = "clip_s1_f0-8", codec: str = "svtav1") -> dict:
    """An oracle record of a 2-mini-GOP window where raising the key mini-GOP's QP by 3 gained `gain` dB."""
    return {
        "window": window, "codec": codec, "bpp": bpp,
        "baseline": {"psnr_y": 38.0, "bits": 10000},
        "oracle": {"psnr_y": 38.0 + gain, "bits": 10000, "offsets": [3, 0]},
        "baseline_steps": [_step(0, 30), _step(1, 30)], "oracle_steps": [_step(0, 33), _step(1, 30)],
        "candidates": [{"offsets": [3, 0], "psnr_y": 38.0 + gain, "bits": 10000},
                       {"offsets": [0, 3], "psnr_y": 37.9, "bits": 10000},
                       {"offsets": [0, -3], "psnr_y": 37.95, "bits": 10000}],
    }  # fmt: skip


def test_train_policy_recipe_on_oracle_records_exports_a_loadable_policy(tmp_path, monkeypatch):
    records = [key_raise_record(0.05, 0.1), key_raise_record(0.1, 0.08), key_raise_record(0.2, 0.05)]
    actor, summary = imitation.train_policy(records, hidden=(16,))
    assert "gain model (key mini-GOP: all; others: all) on 3 oracle moves" in summary
    path = tmp_path / "p.pt"
    policy.save(path, actor, "svtav1", 4, 0.02, {"summary": summary, "command": "test"})
    pol = policy.load(path)
    obs, _ = oracle_records.observations(records[0]["oracle_steps"])
    # Raising the key mini-GOP's QP paid in every record: the policy raises it.
    assert float(pol.act(obs[0])[0]) * 4 > 0.5
    assert "does not follow" not in summary
    # An actor that cannot follow a*(s) is named in the summary make_policy.py prints.
    with monkeypatch.context() as m:
        m.setattr(imitation, "distill", lambda *args, **kwargs: 0.5)
        assert "WARNING: the actor does not follow a*(s)" in imitation.train_policy(records, hidden=(16,))[1]


def test_train_policy_warns_when_the_state_predicts_no_better_than_one_offset():
    """Six sources whose key gain follows base QP (high: raise, low: lower), or a shuffled copy where it does not."""

    def record(source: str, base_qp: int, sign: float, bpp: float) -> dict:
        steps = [_step(0, base_qp, base_qp), _step(1, base_qp, base_qp)]
        return {
            "window": f"{source}_s1_f0-8", "bpp": bpp, "baseline": {"psnr_y": 38.0, "bits": 10000},
            "oracle": {"psnr_y": 38.0, "bits": 10000, "offsets": [0, 0]},
            "baseline_steps": steps, "oracle_steps": steps,
            "candidates": [{"offsets": [a, 0], "psnr_y": 38.0 + sign * 0.03 * a - 0.004 * a * a, "bits": 10000}
                           for a in (3, -3, 1, -1)],
        }  # fmt: skip

    qps = [24, 28, 32, 36, 40, 44]
    spec = gain_model.GainFeatures(key=("base_qp",), inter=())
    follows = [record(f"s{q}", q, 1.0 if q > 34 else -1.0, b) for q in qps for b in (0.05, 0.1)]
    _, summary = imitation.train_policy(follows, hidden=(8,), spec=spec)
    assert "WARNING" not in summary
    signs = [1.0, -1.0, -1.0, 1.0, 1.0, -1.0]  # the same gains, no longer in the order of base QP
    shuffled = [record(f"s{q}", q, s, b) for q, s in zip(qps, signs, strict=True) for b in (0.05, 0.1)]
    _, summary = imitation.train_policy(shuffled, hidden=(8,), spec=spec)
    assert "WARNING: on the left-out sources the state predicts the gains no better than one offset" in summary


def test_train_policy_does_not_depend_on_the_order_of_the_records():
    """oracle_data.py --jobs 2 writes points in the order they finish: the same points must give the same policy."""

    def record(window: str, bpp: float, gain: float, qp: int) -> dict:
        return {
            "window": window, "bpp": bpp,
            "baseline": {"psnr_y": 38.0, "bits": 10000},
            "oracle": {"psnr_y": 38.0 + gain, "bits": 10000, "offsets": [3, 0]},
            "baseline_steps": [_step(0, qp, qp), _step(1, qp, qp)],
            "oracle_steps": [_step(0, qp + 3, qp), _step(1, qp, qp)],
            "candidates": [{"offsets": [3, 0], "psnr_y": 38.0 + gain, "bits": 10000},
                           {"offsets": [0, 3], "psnr_y": 37.9 + gain / 2, "bits": 10100},
                           {"offsets": [0, -3], "psnr_y": 37.95, "bits": 9900}],
        }  # fmt: skip

    points = [("a", 0.05), ("b", 0.1), ("a", 0.2), ("c", 0.07), ("b", 0.3)]
    records = [record(f"{src}_s1_f0-8", bpp, 0.02 * i + bpp, 24 + 3 * i) for i, (src, bpp) in enumerate(points)]
    spec = gain_model.SHIPPED_FEATURES  # unused features shuffled: the row order would matter
    one, _ = imitation.train_policy(records, hidden=(16,), spec=spec, consensus=1.0)
    other, _ = imitation.train_policy(records[::-1], hidden=(16,), spec=spec, consensus=1.0)
    for a, b in zip(one.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_consensus_offset_acts_only_where_the_sources_agree():
    m, slope, c = _moves(n=4000, noise=0.002)
    m.source = np.arange(len(m)) % 4
    m.sources = ["a", "b", "c", "d"]
    obs = np.zeros((1, OBS_DIM), dtype=np.float32)
    obs[0, KEY], obs[0, RATE] = 1.0, 1.0  # a* = +3 QP in every source
    assert gain_model.consensus_offset(m, obs, 4, ridge=1.0)[0] == pytest.approx(3.0, abs=0.5)
    # Source d now says the opposite: the four leave-one-source-out fits disagree, the offset shrinks.
    flip = m.source == 3
    g = slope * m.obs[:, RATE] * m.obs[:, KEY]
    m.gain_rate[flip] -= 2 * g[flip] * (m.a_new[flip] - m.a_old[flip])
    full = gain_model.fit_gain_model(m, 1.0).best_offset(obs, 4)[0]
    cautious = gain_model.consensus_offset(m, obs, 4, ridge=1.0)[0]
    assert abs(cautious) < abs(full) - 0.3


def test_oracle_points_are_keyed_by_window_and_rate_and_errors_are_searched_again(tmp_path):
    from bench import oracle_data

    keys = {name: oracle_data.point_keys("x264", name) for name in ("natural", "screen")}
    assert len(keys["natural"]) == 3 * len(clips.natural_windows()) and len(keys["screen"]) == 9
    assert not keys["natural"] & keys["screen"]
    assert oracle_data.point_keys("x264", "natural,screen") == keys["natural"] | keys["screen"]
    # A failed point (its record an error) is not finished: the next run searches it again.
    out = tmp_path / "oracle.jsonl"
    good, bad = sorted(keys["screen"])[:2]
    out.write_text(json.dumps({"key": good, "window": "w"}) + "\n" + json.dumps({"key": bad, "error": "x"}) + "\n")
    assert oracle_data.finished_keys(out) == {good}
    assert oracle_data.finished_keys(tmp_path / "missing.jsonl") == set()
    # Fits take exactly the sets' points: the same window at a rate the set does not draw is left out.
    window = clips.screen_windows()[0].name
    ours = [{"key": k, "codec": "x264"} for k in sorted(keys["screen"]) if f"/{window}/" in k]
    other_rate = {"key": oracle_data.point_key("x264", window, 0.12345), "codec": "x264"}
    assert oracle_data.of_window_sets(ours + [other_rate], "screen") == ours
    assert oracle_data.of_window_sets(ours, "natural") == []
    # Key sweeps: 6 other rates per window, their own keys; one set's sweeps are not its oracle points.
    sweeps = oracle_data.point_keys("x264", "screen", "key")
    assert len(sweeps) == 6 * len(clips.screen_windows()) and all(k.endswith("/key") for k in sweeps)
    assert not {k.removesuffix("/key") for k in sweeps} & keys["screen"]
    swept = [{"key": k, "codec": "x264"} for k in sorted(sweeps)]
    assert oracle_data.of_window_sets(ours + swept, "screen") == ours
    assert oracle_data.of_window_sets(ours + swept, "screen", "key") == swept
    assert oracle_data.of_window_sets(ours + swept, "", "key") == []
    # Points searched with --key-probe (keys + "/kp") stand only for themselves.
    probed = [{**r, "key": r["key"] + "/kp"} for r in ours]
    assert oracle_data.of_window_sets(ours + probed, "screen") == ours
    assert oracle_data.of_window_sets(ours + probed, "screen", suffix="/kp") == probed
    assert oracle_data.of_draws(ours + probed, "screen", (0,), "/kp") == probed


def test_key_sweep_encodes_every_offset_of_the_key_mini_gop_alone(tmp_path):
    """bench/oracle_data.py --search key on a real x264 encode: 8 candidates, only the key mini-GOP moved."""
    from bench import oracle_data

    win = clips.Window("carphone_pristine.mp4", 0, 16, scale=2)  # 88x72, 16 frames: 2 mini-GOPs
    job = {"window": win, "codec": "x264", "bpp": 0.1, "key": "k", "work": str(tmp_path / "w"), "search": "key"}
    rec = oracle_data.run_point(job)
    assert rec["search"] == "key" and len(rec["baseline_steps"]) == 2
    offsets = [c["offsets"] for c in rec["candidates"]]
    assert offsets == [[v, 0] for v in (-4, -3, -2, -1, 1, 2, 3, 4)]
    assert rec["oracle"]["offsets"] in offsets + [[0, 0]]
    best = max(rec["candidates"], key=lambda c: c["psnr_y"] - 10.0 * max(0.0, c["bits"] / rec["baseline"]["bits"] - 1))
    if rec["oracle"]["offsets"] != [0, 0]:
        assert rec["oracle"]["offsets"] == best["offsets"]
    # Distinct encodes: the key mini-GOP's QP changes the stream.
    assert len({c["bits"] for c in rec["candidates"]}) > 4


def test_a_sweep_at_another_preset_codes_every_encode_at_it_under_its_own_key(tmp_path):
    """oracle_data --preset: the baseline and every candidate at that preset, the record saying so."""
    from bench import oracle_data

    win = clips.Window("carphone_pristine.mp4", 0, 16, scale=2)
    job = {"window": win, "codec": "x264", "bpp": 0.1, "key": "k", "search": "key", "offsets": [-3, 3]}
    default = oracle_data.run_point({**job, "work": str(tmp_path / "d")})
    fast = oracle_data.run_point({**job, "work": str(tmp_path / "f"), "preset": 9})  # ultrafast
    assert "preset" not in default and fast["preset"] == 9
    assert [c["offsets"] for c in fast["candidates"]] == [[-3, 0], [3, 0]]
    assert fast["baseline"]["bits"] != default["baseline"]["bits"]
    assert [c["bits"] for c in fast["candidates"]] != [c["bits"] for c in default["candidates"]]
    short = oracle_data.run_point({**job, "work": str(tmp_path / "s"), "frames": 8})  # --first-frames 8
    assert short["frames"] == 8 and len(short["baseline_steps"]) == 1  # the key mini-GOP alone
    small = oracle_data.run_point({**job, "work": str(tmp_path / "h"), "scale": 2})  # --probe-scale 2
    assert (small["width"], small["height"]) == (44, 36) and small["window"] == win.name  # the same point
    assert oracle_data.probe_window(clips.Window("b.mp4", 0, 64, 2, (288, 226)), 2).crop == (144, 112)


def test_a_search_with_the_key_probe_puts_it_in_the_key_states_and_nothing_else_changes(tmp_path):
    """oracle_data --key-probe: the same encodes, each GOP's first state now carrying the encoder's key probe."""
    from bench import oracle_data

    win = clips.Window("carphone_pristine.mp4", 0, 16, scale=2)  # 88x72, 16 frames: 2 mini-GOPs
    job = {"window": win, "codec": "x264", "bpp": 0.1, "key": "k", "search": "key", "offsets": [-3, 3]}
    plain = oracle_data.run_point({**job, "work": str(tmp_path / "d")})
    probed = oracle_data.run_point({**job, "work": str(tmp_path / "p"), "key_probe": True})
    assert probed["key_probe"] is True and "key_probe" not in plain
    assert probed["baseline"] == plain["baseline"]
    assert [c["bits"] for c in probed["candidates"]] == [c["bits"] for c in plain["candidates"]]
    steps = probed["baseline_steps"]
    assert steps[0]["request"]["key_probe"]["offset"] == 3 and steps[1]["request"]["key_probe"] is None
    assert plain["baseline_steps"][0]["request"]["key_probe"] is None
    obs, _ = oracle_records.observations(steps)
    assert obs[0, FEATURE_NAMES.index("key_probe")] != 0.0
    # The zero encode of a one-GOP window is its Δ=0 encode (the encoder's --probe-zero would code the same GOP);
    # the key sweep's ±3 candidates are the probes, so the margin can be checked against them.
    probe = steps[0]["request"]["key_probe"]
    assert (probe["zero_bits"], probe["zero_psnr_y"]) == (probed["baseline"]["bits"],
                                                          round(probed["baseline"]["psnr_y"], 4))
    finer, coarser = sorted(probed["candidates"], key=lambda c: c["offsets"][0])
    assert (probe["finer_bits"], probe["coarser_bits"]) == (finer["bits"], coarser["bits"])


def test_oracle_data_refuses_a_probe_it_cannot_run_before_any_encode(tmp_path):
    script = Path(__file__).resolve().parent.parent / "bench" / "oracle_data.py"
    out = tmp_path / "r.jsonl"
    for args, message in ((["--first-frames", "0"], "--first-frames: 0 is not a positive number"),
                          (["--preset", "9", "--encoder", "enc"], "--preset is the built-in encoder's"),
                          (["--probe-scale", "2", "--inputs", "x.y4m"], "with --windows only"),
                          (["--key-probe", "--encoder", "enc"], "--key-probe is the built-in encoder's")):  # fmt: skip
        res = run_script(script, "--codec", "x264", "--out", str(out), *args)
        assert res.returncode == 2 and message in res.stderr, res.stderr[-500:]
    assert not out.exists()


def test_lead_sweep_moves_the_key_mini_gop_and_the_next_one_together(tmp_path):
    """--search lead on a real x264 encode: both mini-GOPs of a 16-frame GOP take each offset; at its key
    sweep's offset the key alone would give another stream. A one-mini-GOP last GOP moves its key alone."""
    from bench import loso_value, oracle_data

    assert oracle_data.moved_minigops([0] * 8, "lead") == [0, 1]
    assert oracle_data.moved_minigops([0] * 8 + [1], "lead") == [8]  # a 4-frame last GOP: one mini-GOP
    assert oracle_data.moved_minigops([0] * 8 + [1, 1], "key") == [8]
    # A ramp moves the five mini-GOPs after the last GOP's key, as many as that GOP has, never the key.
    assert oracle_data.moved_minigops([0] * 8, "ramp") == [1, 2, 3, 4, 5]
    assert oracle_data.moved_minigops([0] * 8 + [1, 1, 1], "ramp") == [9, 10]
    assert oracle_data.moved_minigops([0] * 8 + [1], "ramp") == []
    win = clips.Window("carphone_pristine.mp4", 0, 16, scale=2)  # 88x72, 16 frames: 2 mini-GOPs
    jobs = [{"window": win, "codec": "x264", "bpp": 0.1, "key": search, "work": str(tmp_path / search),
             "search": search} for search in ("lead", "key")]  # fmt: skip
    lead, key = (oracle_data.run_point(job) for job in jobs)
    assert [c["offsets"] for c in lead["candidates"]] == [[v, v] for v in (-4, -3, -2, -1, 1, 2, 3, 4)]
    assert lead["baseline"] == key["baseline"]  # the same point: the same Δ=0 encode
    assert [c["bits"] for c in lead["candidates"]] != [c["bits"] for c in key["candidates"]]
    # loso_value reads the lead sweep at its key sweep's point, offset by offset, against the lead's own Δ=0
    slopes = {win.name: 5.0}
    table = loso_value.paired_table([{**lead, "bpp": 0.1}], [{**key, "bpp": 0.1}], slopes)
    t = loso_value.TABLE  # column t holds offset 0
    assert table.shape == (1, 2 * t + 1) and table[0][t] == 0.0 and np.isnan(table[0][: t - 4]).all()
    c = lead["candidates"][0]  # offset -4
    expected = c["psnr_y"] - lead["baseline"]["psnr_y"] - 5.0 * np.log2(c["bits"] / lead["baseline"]["bits"])
    assert table[0][t - 4] == pytest.approx(expected)
    assert np.isnan(loso_value.paired_table([{**lead, "bpp": 0.2}], [{**key, "bpp": 0.1}], slopes)).all()


def test_key_sweep_of_a_tail_window_moves_the_short_gops_key_mini_gop(tmp_path):
    """A `tail` window (a full GOP, then a short one): the sweep moves the last GOP's key mini-GOP alone."""
    from bench import loso_value, oracle_data

    win = clips.Window("carphone_pristine.mp4", 0, 68, scale=2)  # GOP 64: 8 mini-GOPs, then one of 4 frames
    job = {"window": win, "codec": "x264", "bpp": 0.1, "key": "k", "work": str(tmp_path / "w"), "search": "key"}
    rec = oracle_data.run_point(job)
    assert len(rec["baseline_steps"]) == 9 and rec["baseline_steps"][8]["request"]["mg_in_gop"] == 0
    assert [c["offsets"] for c in rec["candidates"]] == [[0] * 8 + [v] for v in (-4, -3, -2, -1, 1, 2, 3, 4)]
    assert loso_value.swept_minigop(rec) == 8
    obs, values, _ = loso_value.sweep_table([rec], {win.name: 5.0})
    assert obs[0][OBS_DIM - 1] == pytest.approx(oracle_records.observations(rec["baseline_steps"])[0][8][OBS_DIM - 1])
    t = loso_value.TABLE
    assert values[0][t] == 0.0 and np.isfinite(values[0][t - 4 : t + 5]).all() and np.isnan(values[0][: t - 4]).all()
    # --offsets: other offsets at the same point (the same Δ=0 encode); merged, the sweep holds both
    wide = oracle_data.run_point({**job, "work": str(tmp_path / "wide"), "offsets": [-6, -5]})
    assert [c["offsets"] for c in wide["candidates"]] == [[0] * 8 + [-6], [0] * 8 + [-5]]
    assert wide["baseline"] == rec["baseline"]
    (both,) = oracle_records.merge_sweeps([rec, wide, rec])
    assert len(both["candidates"]) == 10 and len(rec["candidates"]) == 8
    _, values, _ = loso_value.sweep_table([both], {win.name: 5.0})
    assert np.isfinite(values[0][t - 6 : t + 5]).all() and np.isnan(values[0][: t - 6]).all()
    with pytest.raises(ValueError, match="different Δ=0 encodes"):
        oracle_records.merge_sweeps([rec, {**wide, "baseline": {**wide["baseline"], "bits": 1}}])


def test_loso_value_reads_each_key_offsets_rate_neutral_value_off_the_sweep():
    from bench import loso_value

    def sweep(bpp: float, base_bits: int) -> dict:
        # the key offset a costs (a - 2)^2 / 100 dB against a = 2; bits fall 1% per QP
        return {
            "window": "clip_s1_f0-8", "bpp": bpp, "baseline": {"psnr_y": 38.0, "bits": base_bits},
            "baseline_steps": [_step(0, 30), _step(1, 30)],
            "candidates": [{"offsets": [a, 0], "psnr_y": 38.0 + (4 - (a - 2) ** 2) / 100,
                            "bits": base_bits * (1 - a / 100)} for a in range(-4, 5) if a != 0],
        }  # fmt: skip

    sweeps = [sweep(0.05, 10000), sweep(0.2, 40000)]  # two rates 2 doublings apart: the window's RD slope
    slope = gain_model.window_slopes(sweeps)["clip_s1_f0-8"]
    assert slope == pytest.approx(0.0)  # both Δ=0 encodes at PSNR-Y 38.0
    obs, values, windows = loso_value.sweep_table(sweeps, gain_model.window_slopes(sweeps))
    assert obs.shape == (2, OBS_DIM) and windows == ["clip_s1_f0-8"] * 2
    expected = [(4 - (a - 2) ** 2) / 100 for a in range(-4, 5)]  # slope 0: the PSNR-Y change itself
    t = loso_value.TABLE
    assert values[0][t - 4 : t + 5] == pytest.approx(expected) and int(np.nanargmax(values[0])) - t == 2
    assert loso_value.as_rate(np.array([0.0, 1.0]), np.array([2.0, 2.0])) == pytest.approx([0.0, 100 * (2**-0.5 - 1)])
    # the moved mini-GOP is read off the candidates: here the second, as in a tail window's sweep
    moved = [{**c, "offsets": c["offsets"][::-1]} for c in sweeps[0]["candidates"]]
    assert loso_value.swept_minigop({**sweeps[0], "candidates": moved}) == 1
    with pytest.raises(ValueError, match="moves one mini-GOP"):
        loso_value.swept_minigop({**sweeps[0], "key": "k", "candidates": moved + sweeps[0]["candidates"]})
    with pytest.raises(SystemExit, match="unknown option 'k'"):
        loso_value.parse_variants("x:k=2", loso_value.Variant("base", 2.0, ("fp_reuse",)))
    assert loso_value.parse_variants("w:low=-8", loso_value.Variant("base", 2.0, ()))[1].low == -8
    with pytest.raises(SystemExit, match="low=-9"):
        loso_value.parse_variants("w:low=-9", loso_value.Variant("base", 2.0, ()))


def test_luma_concentration_is_high_for_flat_colours_and_low_for_noise():
    from bench import key_diag

    flat = np.repeat(np.arange(4, dtype=np.uint8) * 60, 400).reshape(40, 40)  # four colours
    assert key_diag.luma_concentration(flat) == pytest.approx(1.0)
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)  # ~256 equally likely values
    assert key_diag.luma_concentration(noisy) < 0.1
    half = flat.copy()
    half[:20] = noisy[:20, :40]  # half the frame noise: the 16 top values cover about the flat half
    assert 0.45 < key_diag.luma_concentration(half) < 0.6


def test_move_samples_concat_keeps_each_rows_source_and_subset_keeps_the_source_list():
    def moves(names: list[str], src: list[int]) -> gain_model.MoveSamples:
        n = len(src)
        return gain_model.MoveSamples(np.zeros((n, OBS_DIM), np.float32), np.zeros(n), np.ones(n),
                                     np.arange(n, dtype=float), np.array(src), names)  # fmt: skip

    both = gain_model.MoveSamples.concat([moves(["a"], [0, 0]), moves(["b", "a"], [0, 1, 0])])
    assert both.sources == ["a", "b"] and [both.sources[i] for i in both.source] == ["a", "a", "b", "a", "b"]
    assert list(both.gain_rate) == [0, 1, 0, 1, 2]
    sub = both.subset(both.source == 1)
    assert sub.sources == ["a", "b"] and len(sub) == 2 and list(sub.gain_rate) == [0, 2]


def test_previous_gop_stats_read_the_gop_before_the_swept_key():
    """key_diag history: the previous GOP's key share, key/inter frame bits and PSNR-Y drop, from feedback alone."""
    from bench import key_diag

    def step(gop: int, bits: list[int], psnr: float) -> dict:
        return {"request": {"gop_index": gop}, "feedback": {"bits": sum(bits), "frame_bits": bits, "psnr_y": psnr}}

    steps = [step(0, [800, 100], 40.0), step(0, [100, 100], 38.0), step(0, [100, 100], 36.0),
             step(1, [5000, 10], 30.0)]  # fmt: skip
    stats = key_diag.previous_gop_stats(steps, gop=1)
    assert stats["key_share"] == pytest.approx(900 / 1300)
    assert stats["key_inter_bits"] == pytest.approx(np.log2(800 / 100))
    assert stats["psnr_drop"] == pytest.approx(40.0 - 37.0)  # second half: mini-GOPs 1 and 2 of 3
    with pytest.raises(ValueError, match="no mini-GOP of GOP 2"):
        key_diag.previous_gop_stats(steps, gop=3)


def test_loso_value_judges_a_policy_files_own_key_answers_as_the_encoder_applies_them():
    from test_protocol import make_request

    from bench import loso_value
    from state import action_to_qp

    pol = policy.load(policy.shipped_policy("x264"))
    # States around the training range, some far out: the answers must span several offsets.
    obs = np.random.default_rng(0).normal(0.0, 1.5, (200, OBS_DIM)).astype(np.float32)
    got = loso_value.policy_key_answers(pol, obs)
    req = make_request(base_qp=30, qp_min=0, qp_max=63)
    want = [action_to_qp(float(pol.act(o)[0]), req, pol.max_delta_qp) - 30 for o in obs]
    assert got.tolist() == want and len(set(want)) >= 3
