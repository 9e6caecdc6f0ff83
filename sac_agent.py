"""Soft Actor-Critic with a Lagrangian rate constraint (SAC v2 + cost critic + dual ascent on lambda).

One transition is one mini-GOP: the observation describes the mini-GOP about to be coded, the
action a in [-1, 1]^act_dim is the (scaled) dQP, the reward is the quality term and the cost is
the per-step rate term whose discounted sum the constraint limits. One GOP is one episode.

Objective of the policy, per state s and a ~ pi(. | s):

    maximise   min(Q_r1, Q_r2)(s, a) - lambda * Q_c(s, a) - alpha * log pi(a | s)

where Q_r1, Q_r2 are twin soft reward critics, Q_c estimates the discounted sum of future costs,
alpha is tuned automatically towards a target entropy, and lambda >= 0 is the Lagrange multiplier
of the rate constraint, raised once per GOP when the GOP overshoots its bit budget (projected dual
ascent, `update_lambda`). The actor loss is divided by (1 + lambda) so its gradient stays bounded
however large lambda grows.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from config import SACConfig
from models import Actor, QNetwork
from replay import Batch, ReplayBuffer

AGENT_FORMAT_VERSION = 1

_MODULES = ("actor", "q1", "q2", "q1_target", "q2_target", "qc", "qc_target")
_OPTIMIZERS = ("actor_optim", "critic_optim", "cost_critic_optim", "alpha_optim")
_STATE_KEYS = frozenset(
    {
        "format_version",
        "obs_dim",
        "act_dim",
        "hidden_sizes",
        *_MODULES,
        *_OPTIMIZERS,
        "log_alpha",
        "lam",
        "num_updates",
        "torch_generator",
        "generator_device",
        "np_rng",
    }
)


class AgentStateError(ValueError):
    """An agent state dict does not fit this agent (version, sizes or keys); the message says which."""


@torch.no_grad()
def polyak_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, parameter by parameter, in place."""
    for p_target, p in zip(target.parameters(), online.parameters(), strict=True):
        p_target.mul_(1.0 - tau).add_(p, alpha=tau)


def _set_requires_grad(modules: Iterable[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


class SACAgent:
    """SAC agent with twin reward critics, a cost critic, automatic entropy tuning and a Lagrange multiplier.

    Args:
        obs_dim: observation size.
        act_dim: action size; actions are in [-1, 1]^act_dim.
        cfg: hyperparameters (validated here).
        device: where networks and tensors live, "cpu" or "cuda[:i]".
        seed: seeds the network initialisation (without touching torch's global RNG), the agent's torch
            Generator (policy noise in `act` and `update`) and its numpy Generator (`random_action`).

    Attributes:
        lam: current Lagrange multiplier lambda, a float in [0, cfg.lambda_max].
        num_updates: gradient steps done by `update` so far.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, cfg: SACConfig, device: torch.device | str = "cpu", seed: int = 0
    ) -> None:
        cfg.validate()
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got {obs_dim}, {act_dim}")
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.cfg = cfg
        self.device = torch.device(device)
        hidden = tuple(int(h) for h in cfg.hidden_sizes)
        self.hidden_sizes = hidden

        # Networks are initialised on the CPU from `seed` inside a forked RNG, so building an agent
        # neither depends on nor changes torch's global random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(obs_dim, act_dim, hidden)
            self.q1 = QNetwork(obs_dim, act_dim, hidden)
            self.q2 = QNetwork(obs_dim, act_dim, hidden)
            self.qc = QNetwork(obs_dim, act_dim, hidden)
        self.q1_target = copy.deepcopy(self.q1)
        self.q2_target = copy.deepcopy(self.q2)
        self.qc_target = copy.deepcopy(self.qc)
        for name in _MODULES:
            getattr(self, name).to(self.device)
        for target in (self.q1_target, self.q2_target, self.qc_target):
            target.requires_grad_(False)

        # fused=True: one kernel per optimiser step instead of a loop over parameters; Adam.step was a
        # third of the update's time on the CPU (bench/bench_learning.py --profile).
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, fused=True)
        critic_params = [*self.q1.parameters(), *self.q2.parameters()]
        self.critic_optim = torch.optim.Adam(critic_params, lr=cfg.critic_lr, fused=True)
        self.cost_critic_optim = torch.optim.Adam(self.qc.parameters(), lr=cfg.critic_lr, fused=True)

        self.target_entropy = float(cfg.target_entropy) if cfg.target_entropy is not None else -float(act_dim)
        self.log_alpha = torch.tensor(math.log(cfg.init_alpha), device=self.device, requires_grad=True)
        self.alpha_optim = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, fused=True)

        self.lam = float(cfg.lambda_init)
        self.num_updates = 0
        self.reference_actor: Actor | None = None  # the policy fine-tuning starts from (set_reference)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)

    def set_reference(self, actor: Actor) -> None:
        """Starts fine-tuning from `actor`: copies it into the actor and keeps a frozen copy for the BC term."""
        self.actor.load_state_dict(actor.state_dict())
        self.reference_actor = copy.deepcopy(self.actor).requires_grad_(False)

    def bc_weight(self) -> float:
        """Weight of the behaviour-cloning term now: cfg.bc_weight, fading linearly to 0 over cfg.bc_updates."""
        if self.reference_actor is None:
            return 0.0
        return self.cfg.bc_weight * max(0.0, 1.0 - self.num_updates / self.cfg.bc_updates)

    # ------------------------------------------------------------------ acting

    @property
    def alpha(self) -> float:
        """Current entropy temperature exp(log_alpha)."""
        return float(self.log_alpha.detach().exp())

    def act(self, obs: npt.ArrayLike, deterministic: bool = False) -> np.ndarray:
        """Action (act_dim,) float32 in [-1, 1] for one observation (obs_dim,).

        deterministic=True returns tanh(mean) and draws no noise; otherwise a sample of pi(. | obs)
        using the agent's own torch Generator.
        """
        o = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        if o.numel() != self.obs_dim:
            raise ValueError(f"obs must have {self.obs_dim} values, got shape {tuple(o.shape)}")
        o = o.reshape(1, self.obs_dim)
        with torch.no_grad():
            if deterministic:
                mean, _ = self.actor(o)
                a = torch.tanh(mean)
            else:
                a, _, _ = self.actor.sample(o, self.generator)
        return a[0].cpu().numpy().astype(np.float32, copy=False)

    def random_action(self) -> np.ndarray:
        """Uniform action (act_dim,) float32 in [-1, 1] from the agent's numpy Generator (for warm-up)."""
        return self.np_rng.uniform(-1.0, 1.0, size=self.act_dim).astype(np.float32)

    # ------------------------------------------------------------------ learning

    def update_lambda(self, gop_violation: float) -> float:
        """One projected dual-ascent step on the Lagrange multiplier, to be called once per GOP.

        lambda <- clip(lambda + lambda_lr * gop_violation, 0, lambda_max), where the caller passes
        gop_violation = GOP bits / GOP budget - 1 - rate_tolerance (see `gop_violation()`): lambda
        rises while GOPs overshoot their budget by more than the tolerance and decays otherwise.

        Returns:
            The new lambda.
        """
        v = float(gop_violation)
        if not math.isfinite(v):
            raise ValueError(f"gop_violation must be finite, got {gop_violation}")
        self.lam = float(min(max(self.lam + self.cfg.lambda_lr * v, 0.0), self.cfg.lambda_max))
        return self.lam

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step of the critics, the actor and alpha, then the Polyak target update.

        Args:
            batch: transitions (moved to the agent's device if needed); shapes as in `Batch`.

        Returns:
            Scalars for logging: q1_loss, q2_loss, critic_loss (their sum), cost_critic_loss, actor_loss,
            alpha (the value used in this step), alpha_loss, entropy (-mean log pi on batch.obs),
            q1_mean, q2_mean, qc_mean (online critics on the batch's actions), lambda.
        """
        b = batch.to(self.device)
        gamma = self.cfg.gamma
        alpha = self.log_alpha.detach().exp()  # () - fixed for this step
        lam = self.lam
        not_done = 1.0 - b.done  # (B, 1)

        # ---- critics: soft Bellman targets for the reward, plain Bellman targets for the cost
        with torch.no_grad():
            next_a, next_log_prob, _ = self.actor.sample(b.next_obs, self.generator)  # (B, A), (B, 1)
            next_q = torch.min(self.q1_target(b.next_obs, next_a), self.q2_target(b.next_obs, next_a))  # (B, 1)
            q_target = b.reward + gamma * not_done * (next_q - alpha * next_log_prob)  # (B, 1)
            qc_target = b.cost + gamma * not_done * self.qc_target(b.next_obs, next_a)  # (B, 1)

        q1 = self.q1(b.obs, b.action)  # (B, 1)
        q2 = self.q2(b.obs, b.action)  # (B, 1)
        q1_loss = F.mse_loss(q1, q_target)
        q2_loss = F.mse_loss(q2, q_target)
        critic_loss = q1_loss + q2_loss
        self.critic_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optim.step()

        qc = self.qc(b.obs, b.action)  # (B, 1)
        cost_critic_loss = F.mse_loss(qc, qc_target)
        self.cost_critic_optim.zero_grad(set_to_none=True)
        cost_critic_loss.backward()
        self.cost_critic_optim.step()

        # ---- actor: minimise (alpha log pi - min Q_r + lambda Q_c) / (1 + lambda)
        critics = (self.q1, self.q2, self.qc)
        _set_requires_grad(critics, False)
        action, log_prob, _ = self.actor.sample(b.obs, self.generator)  # (B, A), (B, 1)
        q_pi = torch.min(self.q1(b.obs, action), self.q2(b.obs, action))  # (B, 1)
        qc_pi = self.qc(b.obs, action)  # (B, 1)
        actor_loss = ((alpha * log_prob - q_pi + lam * qc_pi) / (1.0 + lam)).mean()
        bc_weight = self.bc_weight()
        bc_loss = torch.zeros((), device=self.device)
        if bc_weight > 0.0:  # stay near the starting policy while the critics learn (TD3+BC-like, fading)
            assert self.reference_actor is not None
            with torch.no_grad():
                ref_mean, _ = self.reference_actor(b.obs)  # (B, A)
            mean, _ = self.actor(b.obs)  # (B, A)
            bc_loss = (torch.tanh(mean) - torch.tanh(ref_mean)).pow(2).mean()
            actor_loss = actor_loss + bc_weight * bc_loss
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optim.step()
        _set_requires_grad(critics, True)

        # ---- temperature: alpha rises when the entropy is below target, falls when above
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        if self.cfg.autotune_alpha:
            self.alpha_optim.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optim.step()

        # ---- targets
        tau = self.cfg.tau
        polyak_update(self.q1, self.q1_target, tau)
        polyak_update(self.q2, self.q2_target, tau)
        polyak_update(self.qc, self.qc_target, tau)
        self.num_updates += 1

        names = ("q1_loss", "q2_loss", "critic_loss", "cost_critic_loss", "actor_loss", "alpha", "alpha_loss")
        values = [q1_loss, q2_loss, critic_loss, cost_critic_loss, actor_loss, alpha, alpha_loss]
        names += ("entropy", "q1_mean", "q2_mean", "qc_mean", "bc_loss")
        values += [-log_prob.mean(), q1.mean(), q2.mean(), qc.mean(), bc_loss]
        logs = dict(zip(names, torch.stack([v.detach().float() for v in values]).tolist(), strict=True))
        logs["lambda"] = lam
        return logs

    def ready(self, buffer: ReplayBuffer) -> bool:
        """Whether `buffer` holds enough transitions to learn: max(learning_starts, batch_size)."""
        return len(buffer) >= max(self.cfg.learning_starts, self.cfg.batch_size)

    def train_step(self, buffer: ReplayBuffer) -> dict[str, float]:
        """cfg.updates_per_step calls of `update` on fresh minibatches, once `ready(buffer)`.

        Returns:
            The logs of `update` averaged over the steps done, or {} when no step was done.
        """
        if not self.ready(buffer) or self.cfg.updates_per_step == 0:
            return {}
        totals: dict[str, float] = {}
        for _ in range(self.cfg.updates_per_step):
            logs = self.update(buffer.sample(self.cfg.batch_size, self.device))
            for k, v in logs.items():
                totals[k] = totals.get(k, 0.0) + v
        return {k: v / self.cfg.updates_per_step for k, v in totals.items()}

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Deep copy of everything that determines future behaviour.

        Networks and targets, the four optimisers, log_alpha, lambda, the update counter and both
        random generators (with the torch generator's device type), plus format_version / obs_dim /
        act_dim / hidden_sizes for validation.
        Safe to keep while training continues; survives torch.save / torch.load(weights_only=True).
        """
        state: dict[str, Any] = {
            "format_version": AGENT_FORMAT_VERSION,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "hidden_sizes": list(self.hidden_sizes),
            "log_alpha": self.log_alpha.detach(),
            "lam": self.lam,
            "num_updates": self.num_updates,
            "torch_generator": self.generator.get_state(),
            "generator_device": self.generator.device.type,
            "np_rng": self.np_rng.bit_generator.state,
        }
        for name in (*_MODULES, *_OPTIMIZERS):
            state[name] = getattr(self, name).state_dict()
        if self.reference_actor is not None:
            state["reference_actor"] = self.reference_actor.state_dict()
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`. Everything is validated before anything is changed.

        Raises:
            AgentStateError: wrong format_version, missing or unknown keys, or a checkpoint saved
                for other obs_dim / act_dim / hidden_sizes (or with tensors of other shapes).

        Learning rates and lambda_max are this agent's cfg (a saved lambda above lambda_max is
        clipped); everything else comes from the checkpoint. A checkpoint from another device type
        (cuda <-> cpu) loads with a warning: the policy-noise generator then keeps its own seed.
        Tensors may sit on any device (load with map_location when CUDA is absent).
        """
        if not isinstance(state, dict):
            raise AgentStateError(f"agent state must be a dict, got {type(state).__name__}")
        missing, unknown = _STATE_KEYS - state.keys(), state.keys() - _STATE_KEYS - {"reference_actor"}
        if missing or unknown:
            raise AgentStateError(
                f"agent state keys do not match: missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        if state["format_version"] != AGENT_FORMAT_VERSION:
            raise AgentStateError(
                f"agent state has format_version {state['format_version']}, this code reads {AGENT_FORMAT_VERSION}"
            )
        for key, mine in (("obs_dim", self.obs_dim), ("act_dim", self.act_dim)):
            if int(state[key]) != mine:
                raise AgentStateError(f"checkpoint was saved with {key}={state[key]}, this agent has {key}={mine}")
        if tuple(int(h) for h in state["hidden_sizes"]) != self.hidden_sizes:
            raise AgentStateError(
                f"checkpoint was saved with hidden_sizes={tuple(state['hidden_sizes'])}, "
                f"this agent has hidden_sizes={self.hidden_sizes}"
            )
        for name in _MODULES:
            _check_module_state(name, getattr(self, name), state[name])
        if "reference_actor" in state:
            _check_module_state("reference_actor", self.actor, state["reference_actor"])
        log_alpha = torch.as_tensor(state["log_alpha"])
        if log_alpha.shape != ():
            raise AgentStateError(f"log_alpha must be a scalar, got shape {tuple(log_alpha.shape)}")
        lam = float(state["lam"])
        if not (math.isfinite(lam) and lam >= 0.0):
            raise AgentStateError(f"lam must be a finite number >= 0, got {lam}")
        lam = min(lam, self.cfg.lambda_max)  # projected onto this run's [0, lambda_max]
        np_rng = np.random.default_rng()
        try:
            np_rng.bit_generator.state = state["np_rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise AgentStateError(f"np_rng is not a PCG64 generator state: {e}") from e
        same_generator_kind = state["generator_device"] == self.generator.device.type
        gen_state = torch.as_tensor(state["torch_generator"]).cpu()
        if same_generator_kind and gen_state.shape != self.generator.get_state().shape:
            raise AgentStateError(
                f"torch_generator state has shape {tuple(gen_state.shape)}, expected "
                f"{tuple(self.generator.get_state().shape)}"
            )

        state = copy.deepcopy(state)  # the optimisers would otherwise alias the caller's tensors
        for name in _MODULES:
            getattr(self, name).load_state_dict(state[name])
        self.reference_actor = None
        if "reference_actor" in state:
            self.reference_actor = copy.deepcopy(self.actor).requires_grad_(False)
            self.reference_actor.load_state_dict(state["reference_actor"])
        for name in _OPTIMIZERS:
            getattr(self, name).load_state_dict(state[name])
        # Learning rates come from this run's cfg, not from the checkpoint (equal on a plain resume).
        for optim, lr in (
            (self.actor_optim, self.cfg.actor_lr),
            (self.critic_optim, self.cfg.critic_lr),
            (self.cost_critic_optim, self.cfg.critic_lr),
            (self.alpha_optim, self.cfg.alpha_lr),
        ):
            for group in optim.param_groups:
                group["lr"] = lr
        with torch.no_grad():
            self.log_alpha.copy_(log_alpha)
        self.lam = lam
        self.num_updates = int(state["num_updates"])
        if same_generator_kind:
            self.generator.set_state(gen_state)
        else:  # a cuda generator's state cannot drive a cpu one (and vice versa): resume is then not exact
            warnings.warn(
                f"checkpoint was saved on {state['generator_device']}, this agent runs on "
                f"{self.generator.device.type}: the policy-noise generator keeps its own seed, "
                "not the saved state",
                stacklevel=2,
            )
        self.np_rng = np_rng


def _check_module_state(name: str, module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    expected = module.state_dict()
    if saved.keys() != expected.keys():
        raise AgentStateError(
            f"{name}: parameter names do not match: missing {sorted(expected.keys() - saved.keys())}, "
            f"unknown {sorted(saved.keys() - expected.keys())}"
        )
    for key, tensor in expected.items():
        if tuple(saved[key].shape) != tuple(tensor.shape):
            raise AgentStateError(
                f"{name}.{key} has shape {tuple(saved[key].shape)} in the checkpoint, expected {tuple(tensor.shape)}"
            )
