"""SAC agent and its networks: tanh-Gaussian math, Polyak and dual-ascent updates, alpha tuning,
exact checkpoint resume, and two tiny learning problems. Real torch on the CPU, no mocks."""

from __future__ import annotations

import copy
import io
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Independent, Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from config import SACConfig
from models import LOG_STD_MAX, LOG_STD_MIN, Actor, NumpyActor, QNetwork, tanh_log_det_jacobian
from replay import ReplayBuffer
from reward import gop_violation
from sac_agent import AGENT_FORMAT_VERSION, AgentStateError, SACAgent, polyak_update

SMALL = SACConfig(hidden_sizes=(32, 32), batch_size=32, learning_starts=32, buffer_size=1000)


def roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


def fill(buf: ReplayBuffer, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        o, o2 = rng.normal(size=buf.obs_dim), rng.normal(size=buf.obs_dim)
        a = rng.uniform(-1, 1, size=buf.act_dim)
        buf.add(o, a, float(-np.sum(a**2)), float(np.abs(a).sum()), o2, rng.random() < 0.2)


def all_tensors(agent: SACAgent) -> dict[str, torch.Tensor]:
    """Every parameter, target and optimiser-state tensor, flat, for exact comparisons."""
    out: dict[str, torch.Tensor] = {"log_alpha": agent.log_alpha.detach()}
    for name in ("actor", "q1", "q2", "q1_target", "q2_target", "qc", "qc_target"):
        for k, v in getattr(agent, name).state_dict().items():
            out[f"{name}.{k}"] = v
    for name in ("actor_optim", "critic_optim", "cost_critic_optim", "alpha_optim"):
        for pid, st_ in getattr(agent, name).state_dict()["state"].items():
            for k, v in st_.items():
                out[f"{name}.{pid}.{k}"] = torch.as_tensor(v)
    return out


# ----------------------------------------------------------------------------- networks


def test_actor_and_critic_shapes():
    actor = Actor(obs_dim=5, act_dim=3, hidden_sizes=(16, 16))
    obs = torch.randn(7, 5)
    action, log_prob, det = actor.sample(obs)
    assert action.shape == det.shape == (7, 3) and log_prob.shape == (7, 1)
    assert action.abs().max() <= 1.0 and det.abs().max() <= 1.0
    mean, log_std = actor(obs)
    assert mean.shape == log_std.shape == (7, 3)
    torch.testing.assert_close(det, torch.tanh(mean))
    assert QNetwork(5, 3, (16,))(obs, action).shape == (7, 1)


def test_log_std_is_clamped():
    actor = Actor(2, 1, (8,))
    with torch.no_grad():
        actor.net[-1].bias.copy_(torch.tensor([0.0, 50.0]))
    assert actor(torch.zeros(1, 2))[1].item() == LOG_STD_MAX
    with torch.no_grad():
        actor.net[-1].bias.copy_(torch.tensor([0.0, -50.0]))
    assert actor(torch.zeros(1, 2))[1].item() == LOG_STD_MIN


def test_tanh_log_det_jacobian_matches_autograd_and_stays_finite():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    (dy,) = torch.autograd.grad(torch.tanh(x).sum(), x)
    torch.testing.assert_close(tanh_log_det_jacobian(x.detach()), dy.log())
    far = tanh_log_det_jacobian(torch.tensor([-40.0, 40.0]))
    assert torch.isfinite(far).all() and far.max() < -70  # log(1 - tanh^2) ~ log 4 - 2|x|


def test_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    actor = Actor(4, 2, (16,)).double()
    obs = torch.randn(256, 4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    action, log_prob, _ = actor.sample(obs, gen)
    mean, log_std = actor(obs)
    ref = TransformedDistribution(Independent(Normal(mean, log_std.exp()), 1), [TanhTransform()])
    ok = action.abs().max(dim=1).values < 0.999  # atanh in the reference is exact away from +-1
    assert ok.sum() > 200
    torch.testing.assert_close(log_prob[ok, 0], ref.log_prob(action)[ok], rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(actor.log_prob(obs, action)[ok], log_prob[ok], rtol=1e-7, atol=1e-7)


def test_density_integrates_to_one_and_matches_samples():
    """Change of variables check: exp(log_prob) over (-1, 1) integrates to 1 and predicts sample frequencies."""
    torch.manual_seed(0)
    actor = Actor(3, 1, (16,)).double()
    with torch.no_grad():
        actor.net[-1].bias.copy_(torch.tensor([0.4, -0.3], dtype=torch.float64))  # off-centre mean, std ~ 0.74
    obs = torch.zeros(1, 3, dtype=torch.float64)
    grid = torch.linspace(-1 + 1e-9, 1 - 1e-9, 400_001, dtype=torch.float64)
    with torch.no_grad():
        density = actor.log_prob(obs.expand(len(grid), 3), grid[:, None])[:, 0].exp()
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-4)

    n = 200_000
    with torch.no_grad():
        samples, _, _ = actor.sample(obs.expand(n, 3), torch.Generator().manual_seed(2))
    edges = torch.linspace(-1, 1, 11, dtype=torch.float64)
    freq = torch.histc(samples[:, 0], bins=10, min=-1, max=1) / n
    bin_of_grid = torch.bucketize(grid, edges[1:-1])
    step = grid[1] - grid[0]
    predicted = torch.zeros(10, dtype=torch.float64).index_add_(0, bin_of_grid, density * step)
    torch.testing.assert_close(freq, predicted, atol=5e-3, rtol=0)


# ----------------------------------------------------------------------------- update rules


def test_polyak_update_math():
    online, target = QNetwork(3, 1, (8,)), QNetwork(3, 1, (8,))
    before = [p.detach().clone() for p in target.parameters()]
    polyak_update(online, target, tau=0.3)
    for p_t, p_old, p in zip(target.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(p_t, 0.7 * p_old + 0.3 * p)
    polyak_update(online, target, tau=1.0)
    for p_t, p in zip(target.parameters(), online.parameters(), strict=True):
        assert torch.equal(p_t, p)


def test_agent_targets_follow_polyak_after_update():
    cfg = replace(SMALL, tau=0.1)
    agent = SACAgent(3, 1, cfg, "cpu", seed=0)
    buf = ReplayBuffer(100, 3, 1, seed=0)
    fill(buf, 64)
    old = {n: copy.deepcopy(getattr(agent, n)) for n in ("q1_target", "q2_target", "qc_target")}
    agent.update(buf.sample(32))
    for online, target in (("q1", "q1_target"), ("q2", "q2_target"), ("qc", "qc_target")):
        new_t, old_t, src = getattr(agent, target), old[target], getattr(agent, online)
        for p_t, p_old, p in zip(new_t.parameters(), old_t.parameters(), src.parameters(), strict=True):
            torch.testing.assert_close(p_t, 0.9 * p_old + 0.1 * p)
            assert not p_t.requires_grad


def test_gop_violation():
    assert gop_violation(110_000, 100_000, 0.02) == pytest.approx(0.08)
    assert gop_violation(90_000, 100_000, 0.02) == pytest.approx(-0.12)
    with pytest.raises(ValueError):
        gop_violation(1.0, 0.0, 0.02)


@settings(max_examples=50, deadline=None)
@given(
    lam0=st.floats(0.0, 20.0),
    violations=st.lists(st.floats(-50.0, 50.0, allow_nan=False), min_size=1, max_size=20),
)
def test_lambda_projected_dual_ascent(lam0: float, violations: list[float]):
    cfg = replace(SMALL, lambda_init=lam0, lambda_lr=0.5, lambda_max=20.0)
    agent = SACAgent(2, 1, cfg, "cpu", seed=0)
    for v in violations:
        old = agent.lam
        new = agent.update_lambda(v)
        assert new == agent.lam
        assert 0.0 <= new <= cfg.lambda_max
        assert new == pytest.approx(min(max(old + 0.5 * v, 0.0), cfg.lambda_max))
        if v > 0:
            assert new >= old and (new > old or old == cfg.lambda_max or v < 1e-9)
        elif v < 0:
            assert new <= old and (new < old or old == 0.0 or v > -1e-9)


def test_lambda_rejects_non_finite():
    agent = SACAgent(2, 1, SMALL, "cpu", seed=0)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            agent.update_lambda(bad)
    assert agent.lam == SMALL.lambda_init


@pytest.mark.parametrize(
    ("target_entropy", "autotune", "direction"),
    [(None, True, -1), (2.0, True, +1), (None, False, 0)],
)
def test_alpha_moves_towards_target_entropy(target_entropy: float | None, autotune: bool, direction: int):
    # A fresh policy has std ~ 1: entropy ~ 0.5 nats, above the default target -act_dim = -1 and below 2.
    cfg = replace(SMALL, target_entropy=target_entropy, autotune_alpha=autotune, alpha_lr=1e-2)
    agent = SACAgent(3, 1, cfg, "cpu", seed=0)
    buf = ReplayBuffer(100, 3, 1, seed=0)
    fill(buf, 64)
    before = agent.alpha
    logs = agent.update(buf.sample(32))
    assert logs["alpha"] == pytest.approx(before)
    assert (logs["entropy"] > agent.target_entropy) == (direction <= 0)
    assert np.sign(agent.alpha - before) == direction


# ----------------------------------------------------------------------------- agent API


def test_act_and_random_action():
    agent = SACAgent(4, 2, SMALL, "cpu", seed=3)
    obs = np.arange(4, dtype=np.float32)
    for deterministic in (False, True):
        a = agent.act(obs, deterministic=deterministic)
        assert a.shape == (2,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    assert np.array_equal(agent.act(obs, True), agent.act(obs, True))
    r = np.stack([agent.random_action() for _ in range(500)])
    assert r.shape == (500, 2) and r.dtype == np.float32
    assert r.min() >= -1 and r.max() <= 1 and r.min() < -0.9 and r.max() > 0.9
    # stochastic actions come from the agent's own generator: same seed, same draws; successive draws differ
    x, y = SACAgent(4, 2, SMALL, "cpu", seed=3), SACAgent(4, 2, SMALL, "cpu", seed=3)
    first = x.act(obs, False)
    assert np.array_equal(first, y.act(obs, False))
    assert not np.array_equal(first, x.act(obs, False))
    with pytest.raises(ValueError, match="4 values"):
        agent.act(np.zeros(5))


def test_same_seed_same_agent_and_global_rng_untouched():
    state = torch.get_rng_state()
    a, b = SACAgent(4, 2, SMALL, "cpu", seed=7), SACAgent(4, 2, SMALL, "cpu", seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    obs = np.ones(4, dtype=np.float32)
    assert np.array_equal(a.act(obs), b.act(obs))
    assert np.array_equal(a.random_action(), b.random_action())
    ta, tb = all_tensors(a), all_tensors(b)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    c = SACAgent(4, 2, SMALL, "cpu", seed=8)
    assert not torch.equal(all_tensors(c)["actor.net.0.weight"], ta["actor.net.0.weight"])


def test_train_step_waits_for_learning_starts():
    cfg = replace(SMALL, learning_starts=50, batch_size=32, updates_per_step=2)
    agent = SACAgent(3, 1, cfg, "cpu", seed=0)
    buf = ReplayBuffer(200, 3, 1, seed=0)
    fill(buf, 49)
    assert agent.train_step(buf) == {} and agent.num_updates == 0
    fill(buf, 1)
    logs = agent.train_step(buf)
    assert agent.num_updates == 2
    expected = {"q1_loss", "q2_loss", "critic_loss", "cost_critic_loss", "actor_loss", "alpha", "alpha_loss"}
    expected |= {"entropy", "q1_mean", "q2_mean", "qc_mean", "bc_loss", "lambda"}
    assert set(logs) == expected
    assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())


def test_bc_term_keeps_a_fine_tuned_actor_near_its_starting_policy_then_fades():
    from models import Actor

    torch.manual_seed(5)
    start = Actor(3, 1, SMALL.hidden_sizes)
    buf = ReplayBuffer(500, 3, 1, seed=0)
    fill(buf, 300)
    obs = torch.as_tensor(np.random.default_rng(1).normal(size=(64, 3)), dtype=torch.float32)

    def drift(bc_weight: float) -> float:
        cfg = replace(SMALL, batch_size=64, learning_starts=0, bc_weight=bc_weight, bc_updates=10_000)
        agent = SACAgent(3, 1, cfg, "cpu", seed=0)
        agent.set_reference(start)
        for _ in range(150):
            agent.update(buf.sample(64))
        with torch.no_grad():
            return float((torch.tanh(agent.actor(obs)[0]) - torch.tanh(start(obs)[0])).abs().mean())

    assert drift(10.0) < 0.5 * drift(0.0)
    cfg = replace(SMALL, bc_weight=2.0, bc_updates=100)
    agent = SACAgent(3, 1, cfg, "cpu", seed=0)
    assert agent.bc_weight() == 0.0  # no reference: no term
    agent.set_reference(start)
    assert agent.bc_weight() == 2.0
    agent.num_updates = 50
    assert agent.bc_weight() == pytest.approx(1.0)
    agent.num_updates = 100
    assert agent.bc_weight() == 0.0
    # The reference survives a checkpoint round trip (exact resume of a fine-tune).
    twin = SACAgent(3, 1, cfg, "cpu", seed=1)
    twin.load_state_dict(agent.state_dict())
    assert twin.reference_actor is not None
    assert torch.equal(twin.reference_actor(obs)[0], start(obs)[0])


# ----------------------------------------------------------------------------- checkpoints


def run_steps(agent: SACAgent, buf: ReplayBuffer, n: int, obs_rng: np.random.Generator) -> list[np.ndarray]:
    """A miniature training loop: act (random while warming up), store, learn. Returns every action taken."""
    taken = []
    for _ in range(n):
        obs = obs_rng.normal(size=agent.obs_dim).astype(np.float32)
        a = agent.random_action() if len(buf) < agent.cfg.learning_starts else agent.act(obs, deterministic=False)
        taken += [a, agent.act(obs, deterministic=True)]
        buf.add(obs, a, float(-np.sum((a - 0.3) ** 2)), float(a.sum()), obs_rng.normal(size=agent.obs_dim), False)
        agent.train_step(buf)
        agent.update_lambda(float(a.sum()))
    return taken


def test_exact_resume_from_state_dicts():
    cfg = replace(SMALL, learning_starts=20, batch_size=16)
    a = SACAgent(3, 2, cfg, "cpu", seed=11)
    buf_a = ReplayBuffer(500, 3, 2, seed=11)
    run_steps(a, buf_a, 40, np.random.default_rng(0))

    agent_state, buf_state = roundtrip(a.state_dict()), roundtrip(buf_a.state_dict())
    assert agent_state["format_version"] == AGENT_FORMAT_VERSION
    b = SACAgent(3, 2, cfg, "cpu", seed=999)  # different seed: everything must come from the state
    buf_b = ReplayBuffer(500, 3, 2, seed=999)
    b.load_state_dict(agent_state)
    buf_b.load_state_dict(buf_state)
    assert b.lam == a.lam and b.num_updates == a.num_updates and b.alpha == a.alpha

    taken_a = run_steps(a, buf_a, 25, np.random.default_rng(1))
    taken_b = run_steps(b, buf_b, 25, np.random.default_rng(1))
    assert all(np.array_equal(x, y) for x, y in zip(taken_a, taken_b, strict=True))
    assert a.num_updates == b.num_updates == 46
    ta, tb = all_tensors(a), all_tensors(b)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert a.lam == b.lam


def test_state_dict_is_a_snapshot():
    agent = SACAgent(3, 1, SMALL, "cpu", seed=0)
    buf = ReplayBuffer(100, 3, 1, seed=0)
    fill(buf, 40)
    state = agent.state_dict()
    w = state["actor"]["net.0.weight"].clone()
    agent.update(buf.sample(32))
    assert torch.equal(state["actor"]["net.0.weight"], w)
    assert not torch.equal(agent.actor.state_dict()["net.0.weight"], w)


def test_load_rejects_mismatched_state():
    state = SACAgent(3, 1, SMALL, "cpu", seed=0).state_dict()
    with pytest.raises(AgentStateError, match="obs_dim=3, this agent has obs_dim=4"):
        SACAgent(4, 1, SMALL, "cpu", seed=0).load_state_dict(state)
    with pytest.raises(AgentStateError, match="act_dim=1"):
        SACAgent(3, 2, SMALL, "cpu", seed=0).load_state_dict(state)
    with pytest.raises(AgentStateError, match="hidden_sizes"):
        SACAgent(3, 1, replace(SMALL, hidden_sizes=(16, 16)), "cpu", seed=0).load_state_dict(state)
    agent = SACAgent(3, 1, SMALL, "cpu", seed=0)
    with pytest.raises(AgentStateError, match="format_version"):
        agent.load_state_dict({**state, "format_version": 0})
    with pytest.raises(AgentStateError, match="missing \\['lam'\\]"):
        agent.load_state_dict({k: v for k, v in state.items() if k != "lam"})
    bad_q = dict(state["qc"], **{"net.0.weight": torch.zeros(32, 5)})
    with pytest.raises(AgentStateError, match="qc.net.0.weight has shape"):
        agent.load_state_dict({**state, "qc": bad_q})
    # nothing was changed by the failed loads
    assert agent.lam == SMALL.lambda_init and agent.num_updates == 0


def test_load_from_other_device_type_warns_but_loads():
    src = SACAgent(3, 1, SMALL, "cpu", seed=0)
    src.update_lambda(1.0)
    state = src.state_dict()
    state["generator_device"] = "cuda"
    state["torch_generator"] = torch.zeros(16, dtype=torch.uint8)  # a cuda generator state has another layout
    agent = SACAgent(3, 1, SMALL, "cpu", seed=1)
    with pytest.warns(UserWarning, match="saved on cuda"):
        agent.load_state_dict(state)
    assert agent.lam == src.lam
    obs = np.ones(3, dtype=np.float32)
    assert np.array_equal(agent.act(obs, deterministic=True), src.act(obs, deterministic=True))


def test_load_keeps_this_runs_learning_rates_and_clips_lambda():
    state = SACAgent(3, 1, replace(SMALL, lambda_init=15.0), "cpu", seed=0).state_dict()
    agent = SACAgent(3, 1, replace(SMALL, actor_lr=1e-3, lambda_max=10.0, lambda_init=1.0), "cpu", seed=0)
    agent.load_state_dict(state)
    assert agent.actor_optim.param_groups[0]["lr"] == 1e-3
    assert agent.lam == 10.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_round_trip():
    agent = SACAgent(3, 1, SMALL, "cuda", seed=0)
    buf = ReplayBuffer(100, 3, 1, seed=0)
    fill(buf, 64)
    agent.train_step(buf)
    assert agent.actor.net[0].weight.device.type == "cuda"
    state = roundtrip(agent.state_dict())
    twin = SACAgent(3, 1, SMALL, "cuda", seed=5)
    twin.load_state_dict(state)
    obs = np.ones(3, dtype=np.float32)
    assert np.array_equal(agent.act(obs), twin.act(obs))


# ----------------------------------------------------------------------------- learning sanity


def train_one_step_problem(lambda_init: float, cost_fn, updates: int, seed: int = 0) -> float:
    """Bandit: constant obs, episode of one step, reward -(a - 0.5)^2, cost cost_fn(a). Returns tanh(mean)."""
    cfg = SACConfig(
        hidden_sizes=(32, 32),
        actor_lr=3e-3,
        critic_lr=3e-3,
        batch_size=64,
        learning_starts=64,
        init_alpha=0.01,
        lambda_init=lambda_init,
        buffer_size=10_000,
    )
    agent = SACAgent(1, 1, cfg, "cpu", seed=seed)
    buf = ReplayBuffer(cfg.buffer_size, 1, 1, seed=seed)
    obs = np.zeros(1, dtype=np.float32)
    while agent.num_updates < updates:
        a = agent.random_action() if len(buf) < cfg.learning_starts else agent.act(obs)
        buf.add(obs, a, -float((a[0] - 0.5) ** 2), float(cost_fn(a[0])), obs, True)
        agent.train_step(buf)
    return float(agent.act(obs, deterministic=True)[0])


def test_learns_the_best_action_of_a_one_step_problem():
    assert train_one_step_problem(0.0, lambda a: 0.0, updates=500) == pytest.approx(0.5, abs=0.1)


def test_large_lambda_lowers_a_costly_action():
    free = train_one_step_problem(0.0, lambda a: a, updates=300)
    constrained = train_one_step_problem(10.0, lambda a: a, updates=300)
    # argmax of -(a - 0.5)^2 - lambda * a is 0.5 - lambda / 2, i.e. -1 once lambda >= 3
    assert free > 0.2
    assert constrained < free - 0.8 and constrained < -0.5


def test_numpy_actor_acts_as_the_torch_actor():
    torch.manual_seed(5)
    actor = Actor(7, 2, (16, 16))
    with torch.no_grad():
        actor.net[-1].bias[2:] = torch.tensor([9.0, -9.0])  # log_std far outside its clamp range
    fast = NumpyActor(actor)
    obs = np.random.default_rng(1).normal(size=(50, 7)).astype(np.float32)
    with torch.no_grad():
        mean, log_std = actor(torch.as_tensor(obs))
    got = np.stack([fast.mean_log_std(o)[0] for o in obs]), np.stack([fast.mean_log_std(o)[1] for o in obs])
    np.testing.assert_allclose(got[0], mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(got[1], log_std.numpy(), atol=1e-6)
    assert got[1].max() == LOG_STD_MAX and got[1].min() == LOG_STD_MIN
    det = np.stack([fast.deterministic(o) for o in obs])
    assert det.dtype == np.float32 and np.allclose(det, torch.tanh(mean).numpy(), atol=1e-6)
    # sample = tanh(mean + std * eps) with eps drawn from the generator it is given
    for k in range(5):
        eps = np.random.default_rng(k).standard_normal(2).astype(np.float32)
        want = np.tanh(mean[k].numpy() + np.exp(log_std[k].numpy()) * eps)
        np.testing.assert_allclose(fast.sample(obs[k], np.random.default_rng(k)), want, atol=1e-6)
    fresh = np.random.default_rng(3)
    draws = np.stack([fast.sample(obs[0], fresh) for _ in range(200)])
    assert np.all(np.abs(draws) <= 1.0) and draws.std(axis=0).min() > 0  # it explores
