"""Many encoders, one learner: N encode sessions at once on one machine, learning in its own thread.

    hub = LearnerThread(agent, buffer, counters, weights_every=16)   # gradient steps off the reply path
    hub.start()
    learners = [hub.worker(k, seed) for k in range(n)]                # one `io_runner.Learner` per worker
    results = run_pool(specs, n, lambda k, spec: run_video(..., learners[k], ...), stop)
    hub.drain()                                                       # the updates owed so far are done
    hub.stop()

Each worker is a thread running `io_runner.run_encode` (one `EncodeSession`, its own rl_io
subdirectory and session id) with a `WorkerLearner`: it acts with its own copy of the actor,
refreshed from the learner every `weights_every` gradient steps, so a reply never waits for a
gradient step. Finished GOPs go into the one replay buffer; each stored transition (once the buffer
is ready) owes `updates_per_step` gradient steps, which the learner thread pays off as fast as it
can (torch releases the GIL), so the replay ratio is the user's whatever N is. λ is updated per GOP
as in one-worker runs. Runs with N > 1 are not bit-reproducible (the order in which GOPs from
different workers reach the buffer depends on timing) but resume from their checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from io_runner import Learner, Step
from learners import Counters, transitions
from models import Actor, NumpyActor
from replay import ReplayBuffer
from sac_agent import SACAgent

log = logging.getLogger("rlrc")

# How often (s) Python offers the GIL to another thread while the learner runs (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.0002
# Added to the learner thread's nice value (Linux): encoders and replies go first when cores are short.
LEARNER_NICE = 10

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Weights:
    """A published copy of the actor's parameters (CPU tensors), numbered by the update count it was taken at."""

    version: int
    actor: dict[str, torch.Tensor]


class LearnerHub:
    """What every learner hub (LearnerThread, learner_process.LearnerProcess) shares: the progress
    counters and the update logs, behind one lock that the workers' threads take, and the interface
    its WorkerLearners use (agent, weights, add_episode, end_gop)."""

    agent: SACAgent
    weights: Weights  # the actor's last published weights (a property in LearnerProcess)

    def __init__(self, agent: SACAgent, buffer: ReplayBuffer, counters: Counters, weights_every: int) -> None:
        if weights_every < 1:
            raise ValueError(f"weights_every must be >= 1, got {weights_every}")
        self.agent, self.buffer, self.counters = agent, buffer, counters
        self.weights_every = weights_every
        self.lock = threading.Lock()  # the counters, the logs and each hub's own shared fields
        self._log_sums: dict[str, float] = {}
        self._log_count = 0

    def count_step(self, n: int = 1) -> int:
        """Counts `n` decisions taken in train mode; returns the count so far."""
        with self.lock:
            self.counters.steps += n
            return self.counters.steps

    def take_logs(self) -> dict[str, float]:
        """The mean of the update logs since the last call ({} if no step was done since)."""
        with self.lock:
            if not self._log_count:
                return {}
            logs = {k: v / self._log_count for k, v in self._log_sums.items()}
            self._log_sums, self._log_count = {}, 0
            return logs

    def add_episode(self, steps: list[Step]) -> None:
        raise NotImplementedError

    def end_gop(self, violation: float) -> float:
        raise NotImplementedError

    def _add_logs(self, sums: dict[str, float], count: int) -> None:
        """Adds `count` steps' summed update logs (call with the lock held)."""
        for k, v in sums.items():
            self._log_sums[k] = self._log_sums.get(k, 0.0) + v
        self._log_count += count


class LearnerThread(LearnerHub):
    """The replay buffer, λ and SAC's gradient steps behind a lock, with the steps done in a thread of their own.

    Args:
        agent: the SAC agent; only this thread calls its `update` while running.
        buffer: the one replay buffer every worker's GOPs go into.
        counters: progress counters (steps, gops) shared by the workers.
        weights_every: publish the actor's weights to the workers every this many gradient steps.
    """

    def __init__(self, agent: SACAgent, buffer: ReplayBuffer, counters: Counters, weights_every: int = 16) -> None:
        super().__init__(agent, buffer, counters, weights_every)
        # self.lock: also the buffer, λ and the fields below; never held during a step
        self.changed = threading.Condition(self.lock)
        self.owed = 0  # gradient steps owed to the transitions stored so far
        self.busy = False  # a gradient step is running outside the lock
        self.error: BaseException | None = None
        self._stopping = False
        self.weights = self._snapshot()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ called by workers

    def worker(self, index: int, seed: int, learning: bool = True) -> WorkerLearner:
        """The `io_runner.Learner` of worker `index`: its own actor copy and random generators from `seed`."""
        return WorkerLearner(self, index, seed, learning)

    def add_episode(self, steps: list[Step]) -> None:
        """Stores a finished GOP's transitions; each owes updates_per_step gradient steps once the buffer is ready."""
        with self.lock:
            for row in transitions(steps):
                self.buffer.add(*row)
            if self.agent.ready(self.buffer):
                self.owed += self.agent.cfg.updates_per_step * len(steps)
                self.changed.notify_all()

    def end_gop(self, violation: float) -> float:
        """One λ step for a finished GOP; returns λ."""
        with self.lock:
            self.counters.gops += 1
            return self.agent.update_lambda(violation)

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        """Starts the thread, and makes Python hand the GIL over every SWITCH_INTERVAL_S (default 5 ms).

        The gradient step holds the GIL between its torch kernels; a worker woken by a request must
        get it back at once, or each of its few GIL acquisitions per handshake waits up to 5 ms.
        """
        self._saved_switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._thread = threading.Thread(target=self._run, name="learner", daemon=True)
        self._thread.start()

    def drain(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Waits until every gradient step owed so far is done (or `should_stop()`); re-raises a learner error."""
        with self.lock:
            while (self.owed > 0 or self.busy) and self.error is None and not should_stop():
                self.changed.wait(0.2)
        if self.error is not None:
            raise RuntimeError(f"the learner thread failed: {self.error}") from self.error

    def stop(self) -> None:
        """Ends the thread after the step it is doing; the steps still owed are dropped. Safe to call twice."""
        with self.lock:
            self._stopping = True
            self.changed.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            sys.setswitchinterval(self._saved_switch)

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # Linux: a thread has its own nice value
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + LEARNER_NICE))
        try:
            while True:
                with self.lock:
                    while self.owed == 0 and not self._stopping:
                        self.changed.wait()
                    if self._stopping:
                        return
                    batch = self.buffer.sample(self.agent.cfg.batch_size, self.agent.device)
                    self.owed -= 1
                    self.busy = True
                logs = self.agent.update(batch)  # outside the lock: workers store and act meanwhile
                publish = self.agent.num_updates % self.weights_every == 0
                weights = self._snapshot() if publish else None
                with self.lock:
                    self._add_logs(logs, 1)
                    if weights is not None:
                        self.weights = weights
                    self.busy = False
                    self.changed.notify_all()
        except BaseException as exc:  # noqa: BLE001 (reported by drain() in the main thread)
            with self.lock:
                self.error, self.busy = exc, False
                self.changed.notify_all()

    def publish(self) -> None:
        """Publishes the actor's current weights now (e.g. after a checkpoint was loaded)."""
        weights = self._snapshot()
        with self.lock:
            self.weights = weights

    def _snapshot(self) -> Weights:
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.agent.actor.state_dict().items()}
        return Weights(self.agent.num_updates, state)


class WorkerLearner(Learner):
    """One worker's side of `run_encode`: acts with its own actor copy; stores GOPs and λ through the hub.

    `learn()` does no gradient step (the learner thread does them); it hands back the mean update
    logs since its last call, for TensorBoard.
    """

    def __init__(self, hub: LearnerHub, index: int, seed: int, learning: bool) -> None:
        self.hub, self.index, self.learning = hub, index, learning
        cfg = hub.agent.cfg
        self.actor = Actor(hub.agent.obs_dim, hub.agent.act_dim, tuple(cfg.hidden_sizes)).requires_grad_(False)
        self.version = -1
        self.numpy_actor = NumpyActor(self.actor)  # rebuilt from each weights version by _refresh
        self.np_rng = np.random.default_rng(seed)

    def _refresh(self) -> None:
        weights = self.hub.weights  # one attribute read: a consistent snapshot
        if weights.version != self.version:
            self.actor.load_state_dict(weights.actor)
            self.numpy_actor = NumpyActor(self.actor)
            self.version = weights.version

    def choose(self, obs: np.ndarray) -> np.ndarray:
        # Acting runs in numpy (~8 µs against ~70 µs through torch): it sits on the reply path.
        self._refresh()
        if not self.learning:
            return self.numpy_actor.deterministic(obs)
        if self.hub.count_step() <= self.hub.agent.cfg.learning_starts:
            return self.np_rng.uniform(-1.0, 1.0, size=self.hub.agent.act_dim).astype(np.float32)
        return self.numpy_actor.sample(obs, self.np_rng)

    def learn(self) -> dict[str, float]:
        return self.hub.take_logs()

    def store_episode(self, steps: list[Step]) -> None:
        self.hub.add_episode(steps)

    def end_gop(self, violation: float) -> float:
        return self.hub.end_gop(violation)


def run_pool(
    items: Sequence[T],
    workers: int,
    fn: Callable[[int, T], R],
    should_stop: Callable[[], bool],
    halt: threading.Event | None = None,
) -> list[R | None]:
    """Runs fn(worker, item) for every item on `workers` threads, each taking the next item when free.

    Returns the results in the order of `items`; None for items not started because `should_stop()`
    turned true. An exception in `fn` stops the other workers from taking new items and is re-raised.
    An exception in the calling thread while it waits (KeyboardInterrupt) sets `halt`, which `fn`
    should watch to end its encodes, waits for the workers to return, and is re-raised: no thread and
    no encoder outlives the call.
    """
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(items)):
        todo.put(i)
    results: list[R | None] = [None] * len(items)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        while not should_stop() and not errors and not (halt is not None and halt.is_set()):
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results[i] = fn(k, items[i])
            except BaseException as exc:  # noqa: BLE001 (re-raised in the calling thread)
                errors.append(exc)
                return

    threads = [threading.Thread(target=work, args=(k,), name=f"worker{k}", daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)  # a timed wait: the main thread stays free to take SIGINT/SIGTERM
    except BaseException:
        if halt is not None:
            halt.set()
        for t in threads:
            t.join()
        raise
    if errors:
        raise errors[0]
    return results

