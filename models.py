"""Neural networks of the SAC agent: a tanh-squashed Gaussian actor and Q critics.

Shapes: B = batch size, obs_dim = observation size, act_dim = action size. Actions live in
[-1, 1]^act_dim (the caller maps them to dQP); every network works on float32 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0
_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def mlp(in_dim: int, hidden_sizes: Sequence[int], out_dim: int) -> nn.Sequential:
    """Linear -> ReLU -> ... -> Linear: `in_dim` inputs, one ReLU layer per hidden size, `out_dim` outputs."""
    layers: list[nn.Module] = []
    last = in_dim
    for h in hidden_sizes:
        layers += [nn.Linear(last, h), nn.ReLU()]
        last = h
    layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


def tanh_log_det_jacobian(x: torch.Tensor) -> torch.Tensor:
    """log |d tanh(x) / dx| = log(1 - tanh(x)^2), elementwise, computed without cancellation.

    Uses log(1 - tanh(x)^2) = 2 * (log 2 - x - softplus(-2x)), exact for every finite x.
    """
    return 2.0 * (_LOG_2 - x - F.softplus(-2.0 * x))


class Actor(nn.Module):
    """Policy pi(a | s): Gaussian in pre-tanh space, squashed by tanh into [-1, 1]^act_dim.

    The trunk is an MLP with `hidden_sizes`; its last layer outputs 2 * act_dim numbers, the
    Gaussian mean and log standard deviation (log_std clamped to [LOG_STD_MIN, LOG_STD_MAX]).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.net = mlp(obs_dim, hidden_sizes, 2 * act_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (B, obs_dim) -> (mean, log_std), each (B, act_dim), in pre-tanh space."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(
        self, obs: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised sample of the squashed Gaussian.

        Args:
            obs: (B, obs_dim).
            generator: source of the Gaussian noise (on obs's device); None = torch's global RNG.

        Returns:
            action (B, act_dim) in (-1, 1), differentiable w.r.t. the actor's parameters;
            log_prob (B, 1): log density of `action` under pi(. | obs), tanh correction included;
            deterministic_action (B, act_dim): tanh(mean), the policy's mode-like action for evaluation.
        """
        mean, log_std = self(obs)
        std = log_std.exp()
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        x = mean + std * eps  # pre-tanh sample
        action = torch.tanh(x)
        # log N(x; mean, std) with (x - mean) / std = eps, then change of variables a = tanh(x).
        gauss_log_prob = -0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI
        log_prob = (gauss_log_prob - tanh_log_det_jacobian(x)).sum(dim=-1, keepdim=True)
        return action, log_prob, torch.tanh(mean)

    def log_prob(self, obs: torch.Tensor, action: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Log density (B, 1) of given actions (B, act_dim) in (-1, 1) under pi(. | obs).

        Inverts tanh (actions are clamped to [-1 + eps, 1 - eps] first), so it is less exact than
        the log_prob returned by `sample` for actions very close to +-1.
        """
        mean, log_std = self(obs)
        a = action.clamp(-1.0 + eps, 1.0 - eps)
        x = torch.atanh(a)
        z = (x - mean) / log_std.exp()
        gauss_log_prob = -0.5 * z.pow(2) - log_std - _HALF_LOG_2PI
        return (gauss_log_prob - tanh_log_det_jacobian(x)).sum(dim=-1, keepdim=True)


class QNetwork(nn.Module):
    """Q(s, a): MLP on concat(obs, action) -> one value per row."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.net = mlp(obs_dim + act_dim, hidden_sizes, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """obs (B, obs_dim), action (B, act_dim) -> Q (B, 1)."""
        return self.net(torch.cat([obs, action], dim=-1))


class NumpyActor:
    """A frozen copy of an Actor's weights that acts on one observation in numpy.

    Acting sits on the encoder's reply path: one observation through torch costs ~70 µs of
    dispatch for a few thousand multiply-adds, through numpy ~8 µs (bench/bench_loop.py, table 3).
    Same maths as Actor.forward/sample; float32 results agree with torch's within ~1e-7, not bit
    for bit, so the bit-exact `--workers 1` training path keeps acting through torch.
    """

    def __init__(self, actor: Actor) -> None:
        linears = [m for m in actor.net if isinstance(m, nn.Linear)]
        # (in, out) weights and (out,) biases, float32, C-contiguous: h @ w + b per layer.
        self.layers = [(m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy())
                       for m in linears]  # fmt: skip
        self.act_dim = actor.act_dim

    @classmethod
    def from_arrays(cls, weights: list[np.ndarray], biases: list[np.ndarray], act_dim: int = 1) -> NumpyActor:
        """The same from plain arrays: per layer an (out, in) weight and an (out,) bias (policy_export's JSON)."""
        self = cls.__new__(cls)
        self.layers = [(np.asarray(w, dtype=np.float32).T.copy(), np.asarray(b, dtype=np.float32).copy())
                       for w, b in zip(weights, biases, strict=True)]  # fmt: skip
        self.act_dim = act_dim
        return self

    def mean_log_std(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """obs (obs_dim,) -> (mean, log_std), each (act_dim,), pre-tanh, log_std clamped as in Actor."""
        h = np.asarray(obs, dtype=np.float32).reshape(-1)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                np.maximum(h, 0.0, out=h)  # ReLU
        mean, log_std = h[: self.act_dim], h[self.act_dim :]
        return mean, np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)

    def deterministic(self, obs: np.ndarray) -> np.ndarray:
        """tanh(mean): the deterministic action (act_dim,) in [-1, 1], float32."""
        mean, _ = self.mean_log_std(obs)
        return np.tanh(mean).astype(np.float32)

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """tanh(mean + std * eps), eps ~ N(0, 1) from `rng`: an exploring action (act_dim,), float32."""
        mean, log_std = self.mean_log_std(obs)
        eps = rng.standard_normal(self.act_dim).astype(np.float32)
        return np.tanh(mean + np.exp(log_std) * eps).astype(np.float32)
