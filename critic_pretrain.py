"""Critics from search: every oracle candidate as a labelled action of a Q-network (issue 8, lever 2).

An oracle candidate (gain_model.MoveSamples) moved one mini-GOP's offset from a_old to a_new (QP) at
state s and measured the rate-neutral gain of the whole encode,

    y = ΔPSNR-Y - slope * log2(bits / parent bits)   (dB at equal rate).

A critic Q(s, a) of SAC's shape (models.QNetwork, action a = offset / max_delta_qp in [-1, 1]) is
fitted to those differences,

    loss = mean_moves (Q(s, a_new) - Q(s, a_old) - y)^2 + anchor * mean_moves Q(s, 0)^2,

so Q(s, a) - Q(s, 0) is the rate-neutral value of answering a at s: the quantity the gain model
(gain_model.GainModel) fits with a quadratic in a, here with a free-form network. The anchor pins the
state-dependent constant that differences leave free (Q(s, 0) = 0: the Δ=0 answer is worth 0).

`greedy_offsets` is the actor SAC's loss would converge to with α -> 0 on a fixed critic: the best
integer offset under Q.

Measured (BENCHMARKS.md §2.4.24): a free-form critic fitted this way generalises worse than answering
0 on the sources it did not see (leave-one-source-out R² below 0; the gain model's is 0.133), so the
critic SAC starts from is the gain model itself, J(a | s) written into a QNetwork
(`gain_model_critic`, `critics_from_records`); `load_into` copies it into an SACAgent's reward
critics: fine-tuning then starts from critics that agree with the policy the gain model made.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import gain_model
import imitation
import oracle_records
from gain_model import GainModel, MoveSamples
from models import QNetwork
from state import OBS_DIM


def _tensors(m: MoveSamples, max_delta_qp: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    obs = torch.as_tensor(m.obs, dtype=torch.float32)  # (M, OBS_DIM)
    a_old = torch.as_tensor(m.a_old / max_delta_qp, dtype=torch.float32).reshape(-1, 1)  # (M, 1)
    a_new = torch.as_tensor(m.a_new / max_delta_qp, dtype=torch.float32).reshape(-1, 1)  # (M, 1)
    y = torch.as_tensor(m.gain_rate, dtype=torch.float32).reshape(-1, 1)  # (M, 1) dB
    return obs, a_old, a_new, y


def fit_move_critic(
    m: MoveSamples, max_delta_qp: int = 4, hidden: tuple[int, ...] = (128, 128), steps: int = 1500,
    lr: float = 1e-3, weight_decay: float = 1e-3, anchor: float = 1.0, seed: int = 0,
) -> QNetwork:
    """A QNetwork fitted to the moves' rate-neutral gains (loss in the module docstring); full-batch Adam.

    Args:
        m: the moves (gain_model.move_samples), M rows.
        max_delta_qp: QP offset of action 1.0.
        steps: full-batch Adam steps; weight_decay: AdamW's decoupled decay (the data are noisy).
    """
    obs, a_old, a_new, y = _tensors(m, max_delta_qp)
    zero = torch.zeros_like(a_old)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = QNetwork(OBS_DIM, 1, hidden)
    optim = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        diff = critic(obs, a_new) - critic(obs, a_old)  # (M, 1)
        loss = (diff - y).pow(2).mean() + anchor * critic(obs, zero).pow(2).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    return critic.eval()


def move_value(critic: QNetwork, obs: np.ndarray, a_qp: np.ndarray, max_delta_qp: int) -> np.ndarray:
    """Q(s, a) - Q(s, 0) for offsets a (QP), dB at equal rate, shape (N,)."""
    o = torch.as_tensor(obs, dtype=torch.float32).reshape(-1, OBS_DIM)
    a = torch.as_tensor(np.asarray(a_qp, dtype=np.float32) / max_delta_qp).reshape(-1, 1)
    with torch.no_grad():
        return (critic(o, a) - critic(o, torch.zeros_like(a))).reshape(-1).numpy()


def cross_validate_critic(m: MoveSamples, max_delta_qp: int = 4, **fit_kwargs: object) -> float:
    """Leave-one-source-out R² of y = gain / Δa, the same rows and units as gain_model.cross_validate_gain."""
    y = m.gain_rate / (m.a_new - m.a_old)
    pred = np.zeros_like(y)
    for s in range(len(m.sources)):
        test = m.source == s
        critic = fit_move_critic(m.subset(m.source != s), max_delta_qp, **fit_kwargs)  # type: ignore[arg-type]
        gain = move_value(critic, m.obs[test], m.a_new[test], max_delta_qp) - move_value(
            critic, m.obs[test], m.a_old[test], max_delta_qp
        )
        pred[test] = gain / (m.a_new[test] - m.a_old[test])
    return 1.0 - float(np.mean((y - pred) ** 2)) / float(np.var(y))


def greedy_offsets(critic: QNetwork, obs: np.ndarray, max_delta_qp: int) -> np.ndarray:
    """The integer offset (QP) in [-max_delta_qp, max_delta_qp] with the highest Q(s, a), shape (N,)."""
    candidates = np.arange(-max_delta_qp, max_delta_qp + 1)
    values = np.stack([move_value(critic, obs, np.full(len(obs), a), max_delta_qp) for a in candidates], axis=1)
    return candidates[values.argmax(axis=1)].astype(np.float32)


def load_into(agent: object, critics: tuple[QNetwork, QNetwork]) -> None:
    """Copies two critics into an SACAgent's twin reward critics q1, q2 and their targets (hidden sizes must match).

    Two fits from different seeds, not one copied twice: twins that start equal get equal updates
    and stay equal, and min(Q1, Q2) would no longer temper the overestimation it is there for.
    """
    for names, critic in ((("q1", "q1_target"), critics[0]), (("q2", "q2_target"), critics[1])):
        for name in names:
            getattr(agent, name).load_state_dict(copy.deepcopy(critic.state_dict()))


def gain_model_critic(
    model: GainModel, obs: np.ndarray, max_delta_qp: int, hidden: tuple[int, ...], steps: int = 3000,
    lr: float = 1e-3, batch_size: int = 512, seed: int = 0,
) -> tuple[QNetwork, float]:
    """A QNetwork fitted to Q(s, a) = J(a * max_delta_qp | s) on `obs` x 17 actions in [-1, 1] (minibatch Adam).

    Returns (critic, RMS error in dB over those points).
    """
    grid = np.linspace(-1.0, 1.0, 17, dtype=np.float32)
    o = np.repeat(np.asarray(obs, dtype=np.float32), len(grid), axis=0)  # (N * 17, OBS_DIM)
    a = np.tile(grid, len(obs))  # (N * 17,)
    target = torch.as_tensor(model.value(o, a * max_delta_qp), dtype=torch.float32).reshape(-1, 1)
    o_t, a_t = torch.as_tensor(o), torch.as_tensor(a).reshape(-1, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        critic = QNetwork(OBS_DIM, 1, hidden)
    gen = torch.Generator().manual_seed(seed)
    optim = torch.optim.Adam(critic.parameters(), lr=lr)
    for _ in range(steps):
        rows = torch.randint(0, len(target), (batch_size,), generator=gen)
        loss = (critic(o_t[rows], a_t[rows]) - target[rows]).pow(2).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    with torch.no_grad():
        rms = float((critic(o_t, a_t) - target).pow(2).mean().sqrt())
    return critic.eval(), rms


def critics_from_records(
    records: list[dict], codec: str, max_delta_qp: int, hidden: tuple[int, ...], ridge: float = 3.0, seed: int = 0,
) -> tuple[tuple[QNetwork, QNetwork], str]:
    """The codec's shipped gain model (imitation.SHIPPED_RECIPES features) fitted on `records`, as twin critics.

    Returns ((critic from seed, critic from seed + 1), one-line summary). ValueError when `records`
    hold no move of `codec`.
    """
    mine = sorted((r for r in records if r.get("codec") == codec), key=lambda r: (r["window"], r["bpp"]))
    moves = gain_model.move_samples(mine)
    if len(moves) == 0:
        raise ValueError(f"no oracle moves of codec {codec} in the given records")
    spec = imitation.SHIPPED_RECIPES[codec].features if codec in imitation.SHIPPED_RECIPES else gain_model.ALL_FEATURES
    model = gain_model.fit_gain_model(moves, ridge, spec)
    obs = oracle_records.trajectory_observations(mine)
    (c1, rms1), (c2, rms2) = (gain_model_critic(model, obs, max_delta_qp, hidden, seed=s) for s in (seed, seed + 1))
    return (c1, c2), (f"critics from the gain model ({spec.describe()}) on {len(moves)} oracle moves of "
                      f"{len(mine)} {codec} points, fit RMS {max(rms1, rms2):.4f} dB")  # fmt: skip
