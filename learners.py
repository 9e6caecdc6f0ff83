"""The agent side of an encode: the `io_runner.Learner`s that main.py, evaluate.py and bench/ hand to run_encode.

`SacLearner` connects run_encode to the SAC agent and its replay buffer (training or deterministic
inference); `ZeroDeltaLearner` answers every request with the encoder's own base QP (the Δ = 0
baseline). `Counters` are the progress counts saved in checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from io_runner import Learner, Step
from models import NumpyActor
from replay import ReplayBuffer
from sac_agent import SACAgent

ACT_DIM = 1  # one action per mini-GOP: the QP offset, scaled to [-1, 1]


@dataclass
class Counters:
    """Progress counters saved in checkpoints (all counts since the start of training)."""

    steps: int = 0  # mini-GOP decisions taken in train mode
    gops: int = 0  # GOPs finished in train mode
    encodes: int = 0


def transitions(steps: list[Step]) -> list[tuple]:
    """A finished GOP's steps as replay rows (obs, action, reward, cost, next_obs, done).

    The GOP is one episode: its last step is terminal (done = 1, next_obs = its own obs, unused).
    """
    rows = []
    for i, st in enumerate(steps):
        done = i == len(steps) - 1
        next_obs = st.obs if done or st.next_obs is None else st.next_obs
        rows.append((st.obs, st.action, st.reward, st.cost, next_obs, float(done)))
    return rows


class SacLearner(Learner):
    """Connects run_encode to the SAC agent and the replay buffer."""

    def __init__(self, agent: SACAgent, buffer: ReplayBuffer, counters: Counters, learning: bool) -> None:
        self.agent, self.buffer, self.counters, self.learning = agent, buffer, counters, learning
        self._numpy_actor: NumpyActor | None = None

    def choose(self, obs: np.ndarray) -> np.ndarray:
        if not self.learning:
            # Nothing learns while this learner acts: a numpy copy of the actor, taken at the first
            # request, answers in ~10 µs against ~60 µs through torch (it sits on the reply path).
            if self._numpy_actor is None:
                self._numpy_actor = NumpyActor(self.agent.actor)
            return self._numpy_actor.deterministic(obs)
        self.counters.steps += 1
        if self.counters.steps <= self.agent.cfg.learning_starts:
            return self.agent.random_action()
        return self.agent.act(obs, deterministic=False)

    def learn(self) -> dict[str, float]:
        return self.agent.train_step(self.buffer)

    def store_episode(self, steps: list[Step]) -> None:
        for row in transitions(steps):
            self.buffer.add(*row)

    def end_gop(self, violation: float) -> float:
        self.counters.gops += 1
        return self.agent.update_lambda(violation)


class ZeroDeltaLearner(Learner):
    """Answers the encoder's own base QP (Δ = 0): the baseline."""

    learning = False

    def choose(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(ACT_DIM, dtype=np.float32)
