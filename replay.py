"""Uniform replay buffer of (obs, action, reward, cost, next_obs, done) transitions.

Storage is preallocated float32 numpy arrays, a ring buffer once `capacity` is reached. Sampling
is uniform with replacement from the filled part, driven by the buffer's own numpy Generator, so
a buffer restored with `load_state_dict` samples exactly the same batches as the original would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

REPLAY_FORMAT_VERSION = 1

_FIELDS = ("obs", "action", "reward", "cost", "next_obs", "done")


@dataclass(frozen=True)
class Batch:
    """A minibatch of transitions as float32 torch tensors, all on the same device.

    obs (B, obs_dim); action (B, act_dim) in [-1, 1]; reward (B, 1); cost (B, 1), the per-step
    constraint cost; next_obs (B, obs_dim); done (B, 1), 1.0 where the episode (GOP) ended at this
    step so the target must not bootstrap from next_obs, else 0.0.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    cost: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor moved to `device`."""
        return Batch(*(getattr(self, name).to(device) for name in _FIELDS))

    def __len__(self) -> int:
        return int(self.obs.shape[0])


class ReplayBuffer:
    """Fixed-capacity FIFO store of transitions with seeded uniform sampling.

    Args:
        capacity: most transitions kept; once full, the oldest is overwritten.
        obs_dim: observation size.
        act_dim: action size.
        seed: seed of the buffer's own numpy Generator (used only by `sample`).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got {obs_dim}, {act_dim}")
        self.capacity = int(capacity)
        self.obs_dim = int(obs_dim)
        self.act_dim = int(act_dim)
        self.rng = np.random.default_rng(seed)
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((capacity, act_dim), dtype=np.float32)
        self.reward = np.zeros((capacity, 1), dtype=np.float32)
        self.cost = np.zeros((capacity, 1), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.done = np.zeros((capacity, 1), dtype=np.float32)
        self.ptr = 0  # row the next `add` writes
        self.size = 0  # rows filled, <= capacity

    def __len__(self) -> int:
        return self.size

    def _shapes(self) -> dict[str, tuple[int, int]]:
        return {
            "obs": (self.capacity, self.obs_dim),
            "action": (self.capacity, self.act_dim),
            "reward": (self.capacity, 1),
            "cost": (self.capacity, 1),
            "next_obs": (self.capacity, self.obs_dim),
            "done": (self.capacity, 1),
        }

    def add(
        self,
        obs: npt.ArrayLike,
        action: npt.ArrayLike,
        reward: float,
        cost: float,
        next_obs: npt.ArrayLike,
        done: bool | float,
    ) -> None:
        """Store one transition. obs/next_obs: (obs_dim,); action: (act_dim,); done: episode ended here."""
        o = np.asarray(obs, dtype=np.float32).reshape(-1)
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        o2 = np.asarray(next_obs, dtype=np.float32).reshape(-1)
        if o.shape != (self.obs_dim,) or o2.shape != (self.obs_dim,):
            raise ValueError(f"obs and next_obs must have {self.obs_dim} values, got {o.size} and {o2.size}")
        if a.shape != (self.act_dim,):
            raise ValueError(f"action must have {self.act_dim} values, got {a.size}")
        i = self.ptr
        self.obs[i] = o
        self.action[i] = a
        self.reward[i, 0] = reward
        self.cost[i, 0] = cost
        self.next_obs[i] = o2
        self.done[i, 0] = float(done)
        self.ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> Batch:
        """`batch_size` transitions drawn uniformly with replacement from the filled part, on `device`."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        idx = self.rng.integers(0, self.size, size=batch_size)
        return Batch(*(torch.as_tensor(getattr(self, name)[idx], device=device) for name in _FIELDS))

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: sizes, write position, RNG state and the filled rows.

        Arrays are stored as CPU torch tensors (copies), so the dict survives
        `torch.save` / `torch.load(weights_only=True)`.
        """
        state: dict[str, Any] = {
            "format_version": REPLAY_FORMAT_VERSION,
            "capacity": self.capacity,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "ptr": self.ptr,
            "size": self.size,
            "rng_state": self.rng.bit_generator.state,
        }
        for name in _FIELDS:
            state[name] = torch.from_numpy(getattr(self, name)[: self.size].copy())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; the buffer must have been built with the same capacity and sizes."""
        required = {"format_version", "capacity", "obs_dim", "act_dim", "ptr", "size", "rng_state", *_FIELDS}
        missing = required - state.keys()
        if missing:
            raise KeyError(f"replay buffer state is missing {sorted(missing)}")
        if state["format_version"] != REPLAY_FORMAT_VERSION:
            raise ValueError(
                f"replay buffer state has format_version {state['format_version']}, expected {REPLAY_FORMAT_VERSION}"
            )
        for key in ("capacity", "obs_dim", "act_dim"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"replay buffer state has {key}={state[key]}, this buffer has {getattr(self, key)}")
        size, ptr = int(state["size"]), int(state["ptr"])
        if not 0 <= size <= self.capacity or not 0 <= ptr < self.capacity:
            raise ValueError(f"replay buffer state has invalid size={size} / ptr={ptr} for capacity {self.capacity}")
        if size < self.capacity and ptr != size:
            raise ValueError(f"replay buffer state has ptr={ptr} but a partly filled buffer needs ptr == size={size}")
        shapes = self._shapes()
        arrays: dict[str, np.ndarray] = {}
        for name in _FIELDS:
            value = state[name]
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            expected = (size, shapes[name][1])
            if arr.shape != expected:
                raise ValueError(f"replay buffer state field {name!r} has shape {arr.shape}, expected {expected}")
            arrays[name] = arr
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng_state"]  # validates the generator kind
        for name in _FIELDS:
            buf = getattr(self, name)
            buf.fill(0.0)
            buf[:size] = arrays[name]
        self.size, self.ptr, self.rng = size, ptr, rng
