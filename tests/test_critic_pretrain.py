"""critic_pretrain: SAC's critic shape fitted to what the oracle's candidates measured (synthetic moves)."""

from __future__ import annotations

import numpy as np

import critic_pretrain
import gain_model
import oracle_records
from config import SACConfig
from sac_agent import SACAgent
from state import FEATURE_NAMES, OBS_DIM

KEY = FEATURE_NAMES.index("has_key")


def synthetic_moves(n: int = 600, seed: int = 0) -> tuple[gain_model.MoveSamples, np.ndarray]:
    """Moves of a known value J(a | s) = g(s) a - 0.01 a², g = +0.04 dB/QP on key mini-GOPs, -0.04 elsewhere."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(0.0, 1.0, size=(n, OBS_DIM)).astype(np.float32)
    obs[:, KEY] = rng.integers(0, 2, n)
    g = np.where(obs[:, KEY] > 0.5, 0.04, -0.04)
    a_old = rng.integers(-2, 3, n).astype(np.float32)
    a_new = a_old + rng.choice([-2.0, -1.0, 1.0, 2.0], n).astype(np.float32)

    def j(a: np.ndarray) -> np.ndarray:
        return g * a - 0.01 * a**2

    gain = j(a_new) - j(a_old) + rng.normal(0.0, 0.002, n)
    source = np.arange(n) % 3
    return gain_model.MoveSamples(obs, a_old, a_new, gain, source, ["a", "b", "c"]), 2.0 * np.sign(g)


def test_a_critic_fitted_on_moves_answers_their_best_offset():
    moves, best = synthetic_moves()
    critic = critic_pretrain.fit_move_critic(moves, max_delta_qp=4, hidden=(32, 32), steps=600)
    answers = critic_pretrain.greedy_offsets(critic, moves.obs, 4)
    assert np.mean(np.abs(answers - best) <= 1) > 0.9  # a* = g / 2c = ±2 QP
    assert abs(float(np.mean(critic_pretrain.move_value(critic, moves.obs, np.zeros(len(moves)), 4)))) < 1e-6


def test_the_gain_models_critic_agrees_with_the_gain_model_and_loads_into_sac():
    moves, _ = synthetic_moves()
    model = gain_model.fit_gain_model(moves, ridge=1.0)
    critic, rms = critic_pretrain.gain_model_critic(model, moves.obs[:200], 4, (32, 32), steps=800)
    assert rms < 0.01  # dB, on J values of about ±0.1
    want = np.clip(np.round(model.best_offset(moves.obs[:200], 4)), -4, 4)
    assert np.mean(np.abs(critic_pretrain.greedy_offsets(critic, moves.obs[:200], 4) - want) <= 1) > 0.9
    agent = SACAgent(OBS_DIM, 1, SACConfig(hidden_sizes=(32, 32)))
    other, _ = critic_pretrain.gain_model_critic(model, moves.obs[:200], 4, (32, 32), steps=10, seed=1)
    critic_pretrain.load_into(agent, (critic, other))
    for name, want in (("q1", critic), ("q1_target", critic), ("q2", other), ("q2_target", other)):
        for k, v in getattr(agent, name).state_dict().items():
            assert np.array_equal(v.numpy(), want.state_dict()[k].numpy()), (name, k)


def sample_records() -> list[dict]:
    """x264 oracle records of two sources in which raising the key mini-GOP's QP by 3 paid (+0.05..0.1 dB)."""
    from test_imitation import key_raise_record

    points = ((0.05, 0.1), (0.2, 0.05))
    return [key_raise_record(b, g, w, "x264") for w in ("a_s1_f0-8", "b_s1_f0-8") for b, g in points]


def test_critics_from_records_value_what_the_candidates_measured():
    from test_imitation import _step

    (one, two), summary = critic_pretrain.critics_from_records(sample_records(), "x264", 4, (16, 16))
    assert "on 4 oracle moves of 4 x264 points" in summary
    obs, _ = oracle_records.observations([_step(0, 30), _step(1, 30)])
    for critic in (one, two):  # two fits from two seeds: twin critics that differ
        assert critic_pretrain.greedy_offsets(critic, obs[:1], 4)[0] > 0  # the key: a higher QP paid
    assert not np.array_equal(one.net[0].weight.detach().numpy(), two.net[0].weight.detach().numpy())
    try:
        critic_pretrain.critics_from_records(sample_records(), "svtav1", 4, (16, 16))
        raise AssertionError("records of another codec were used")
    except ValueError as exc:
        assert "no oracle moves of codec svtav1" in str(exc)


def test_finetune_bench_picks_windows_by_set_and_slice():
    import pytest

    import clips
    from bench.finetune_sac import pick_windows

    train, tail = clips.training_windows(), clips.tail_windows()
    assert pick_windows("train[::2],tail[:3]") == train[::2] + tail[:3]
    assert pick_windows("train[1]") == [train[1]] and pick_windows("static") == clips.static_windows()
    for bad in ("trian", "train[a]", "train[::2"):
        with pytest.raises(ValueError, match="is not SET or SET"):
            pick_windows(bad)
