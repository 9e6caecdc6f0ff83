"""Many encoders, one learner in a process of its own: SAC's gradient steps off the GIL of the reply path.

    hub = LearnerProcess(agent, buffer, counters, weights_every=16)   # same API as workers.LearnerThread
    hub.start()                                                       # spawns the learner process
    learners = [hub.worker(k, seed) for k in range(n)]                # workers.WorkerLearner, one per worker
    ...                                                               # workers store GOPs, act with their copy
    hub.drain()                                                       # owed steps done; `agent` is the learner's
    hub.stop()                                                        # syncs `agent` once more, ends the process

`workers.LearnerThread` runs the gradient steps in a thread: each step holds the GIL between its
torch kernels, so a worker woken by a request waits for it, and the handshake grows (BENCHMARKS.md
§3.2). Here the steps run in a child process with its own interpreter, at a lower CPU priority:

- The child owns a copy of the agent and of the replay buffer. Workers' GOPs and λ go to it through
  a queue (a GOP's transitions as arrays, a few kB); each stored transition owes `updates_per_step`
  gradient steps once the buffer is ready, as in the thread.
- The actor's weights come back through shared memory (a flat float32 vector behind a sequence
  counter: odd while the child writes, so a reader never takes a half-written copy), every
  `weights_every` steps. Acting never waits for the learner.
- The parent keeps its own `agent`, `buffer` and `counters`, which checkpoints and infer-time
  evaluation read: the buffer gets every GOP the child gets (same rows in the same order); the
  agent is replaced by the child's at `drain()` (the end of an epoch) and at `stop()`.
- λ is updated in the parent (per GOP, as in one-worker runs) and sent to the child.

A failure in the child is reported by the next `drain()`; `stop()` ends the child whatever it is
doing (it ignores SIGINT: the parent handles signals and stops it), so no process outlives the run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from io_runner import Step
from learners import Counters, transitions
from replay import ReplayBuffer
from sac_agent import SACAgent
from workers import LEARNER_NICE, LearnerHub, Weights, WorkerLearner

log = logging.getLogger("rlrc")

SYNC_TIMEOUT_S = 60.0  # longest wait for the child's state at stop() (it answers between two steps)
START_TIMEOUT_S = 120.0  # longest wait for the child to be ready (it imports torch and rebuilds the agent)
LOG_EVERY = 16  # gradient steps between two log messages from the child


@dataclass(frozen=True)
class _Init:
    """What the child needs to rebuild the parent's agent and buffer."""

    obs_dim: int
    act_dim: int
    cfg: Any  # SACConfig
    device: str
    agent_state: bytes  # _pack(agent.state_dict())
    buffer_capacity: int
    buffer_state: bytes  # _pack(buffer.state_dict())
    weights_every: int
    torch_threads: int


class LearnerProcess(LearnerHub):
    """The replay buffer, λ and SAC's gradient steps, with the steps done in a child process.

    Args:
        agent: the parent's SAC agent; the child starts from a copy and hands its state back at drain/stop.
        buffer: the parent's replay buffer; every GOP stored through this hub goes into it and into the child's.
        counters: progress counters (steps, gops) shared by the workers.
        weights_every: publish the actor's weights to the workers every this many gradient steps.
    """

    def __init__(self, agent: SACAgent, buffer: ReplayBuffer, counters: Counters, weights_every: int = 16) -> None:
        super().__init__(agent, buffer, counters, weights_every)
        # self.lock: also the buffer, λ and the inbox
        self.error: str | None = None
        self._ctx = mp.get_context("spawn")  # a fresh interpreter: no lock or thread state inherited
        self._names = [k for k, _ in agent.actor.state_dict().items()]
        self._shapes = [v.shape for v in agent.actor.state_dict().values()]
        n = sum(int(np.prod(s)) for s in self._shapes)
        self._seq = self._ctx.RawValue("q", 0)  # odd while a writer writes the two below
        self._version = self._ctx.RawValue("q", 0)  # gradient steps done when the weights were taken
        self._flat = self._ctx.RawArray("f", n)
        self.publish()
        self._inbox: Any = self._ctx.Queue()
        self._outbox: Any = self._ctx.Queue()
        self._proc: Any = None
        self._reader: threading.Thread | None = None
        self._state: bytes | None = None  # the child's last answer to sync/snapshot
        self._state_ready = threading.Event()
        self._ready = threading.Event()
        self._cached: _Cached | None = None

    # ------------------------------------------------------------------ called by workers

    def worker(self, index: int, seed: int, learning: bool = True) -> WorkerLearner:
        """The `io_runner.Learner` of worker `index`: its own actor copy and random generators from `seed`."""
        return WorkerLearner(self, index, seed, learning)

    @property
    def weights(self) -> Weights:
        """The published actor weights, numbered by the update count they were taken at: a consistent copy
        (read again if the child was writing), the same object until the child publishes again."""
        while True:
            s1 = self._seq.value
            if s1 % 2:
                continue
            cached = self._cached
            if cached is not None and cached.seq == s1:
                return cached.weights
            version = self._version.value
            flat = np.frombuffer(self._flat, dtype=np.float32).copy()
            if self._seq.value == s1:
                break
        state, pos = {}, 0
        for name, shape in zip(self._names, self._shapes, strict=True):
            size = int(np.prod(shape))
            state[name] = torch.from_numpy(flat[pos : pos + size].reshape(shape))
            pos += size
        self._cached = _Cached(s1, Weights(version, state))
        return self._cached.weights

    def add_episode(self, steps: list[Step]) -> None:
        """Stores a finished GOP's transitions here and in the child, which owes them gradient steps."""
        rows = transitions(steps)
        arrays = tuple(np.asarray([r[j] for r in rows], dtype=np.float32) for j in range(6))
        with self.lock:
            for r in rows:
                self.buffer.add(*r)
            self._inbox.put(("episode", arrays))

    def end_gop(self, violation: float) -> float:
        """One λ step for a finished GOP (here, then sent to the child); returns λ."""
        with self.lock:
            self.counters.gops += 1
            lam = self.agent.update_lambda(violation)
            self._inbox.put(("lam", lam))
            return lam

    # ------------------------------------------------------------------ the process

    def start(self) -> None:
        """Spawns the child from the agent's and buffer's current state; returns once it is ready to learn
        (a second or two: it imports torch), so that its start-up does not compete with the first encodes.
        Raises RuntimeError if it fails to start."""
        init = _Init(self.agent.obs_dim, self.agent.act_dim, self.agent.cfg, str(self.agent.device),
                     _pack(self.agent.state_dict()), self.buffer.capacity, _pack(self.buffer.state_dict()),
                     self.weights_every, torch.get_num_threads())  # fmt: skip
        args = (init, self._inbox, self._outbox, self._seq, self._version, self._flat)
        self._proc = self._ctx.Process(target=_serve, args=args, name="rlrc-learner", daemon=True)
        self._proc.start()
        self._reader = threading.Thread(target=self._read, name="learner-reader", daemon=True)
        self._reader.start()
        waited = 0.0
        while not self._ready.wait(0.1) and self.error is None and self._proc.is_alive() and waited < START_TIMEOUT_S:
            waited += 0.1
        if not self._ready.is_set():
            why = self.error or f"not ready after {waited:.0f} s (exit code {self._proc.exitcode})"
            self.stop()
            raise RuntimeError(f"the learner process did not start: {why}")

    def drain(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Waits until every gradient step owed so far is done, then takes the child's agent state.

        Returns early (without the state) if `should_stop()`; raises RuntimeError if the child failed.
        """
        self._sync("sync", should_stop, timeout_s=None)

    def stop(self) -> None:
        """Takes the child's agent state as it is (the steps still owed are dropped) and ends the child.

        Safe to call twice.
        """
        if self._proc is None:
            return
        if self._proc.is_alive() and self.error is None:
            with contextlib.suppress(RuntimeError):
                self._sync("snapshot", lambda: False, timeout_s=SYNC_TIMEOUT_S)
        with contextlib.suppress(Exception):
            self._inbox.put(("stop", None))
        self._proc.join(5.0)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5.0)
        self._inbox.cancel_join_thread()  # what the child did not read is dropped, never waited for at exit
        self._outbox.put(("closed", None))  # ends the reader thread
        if self._reader is not None:
            self._reader.join(5.0)
        self._proc = self._reader = None

    def publish(self) -> None:
        """Publishes the parent agent's actor weights now (e.g. after a checkpoint was loaded)."""
        _publish(self._seq, self._version, self._flat, self.agent.actor.state_dict(), self.agent.num_updates)

    # ------------------------------------------------------------------ internals

    def _sync(self, kind: str, should_stop: Callable[[], bool], timeout_s: float | None) -> None:
        if self._proc is None:  # never started (infer mode): nothing to wait for
            return
        self._state_ready.clear()
        self._inbox.put((kind, None))
        waited = 0.0
        while not self._state_ready.wait(0.2):
            waited += 0.2
            if self.error is not None:
                raise RuntimeError(f"the learner process failed: {self.error}")
            if not self._proc.is_alive():
                self.error = f"exited with code {self._proc.exitcode}"
                raise RuntimeError(f"the learner process failed: {self.error}")
            if should_stop() or (timeout_s is not None and waited >= timeout_s):
                return
        if self.error is not None:
            raise RuntimeError(f"the learner process failed: {self.error}")
        assert self._state is not None
        state = _unpack(self._state)
        with self.lock:
            lam = self.agent.lam  # λ is the parent's: the child only mirrors it
            self.agent.load_state_dict(state["agent"])
            self.agent.lam = lam
            self.buffer.rng.bit_generator.state = state["buffer_rng"]

    def _read(self) -> None:
        """The parent's side of the outbox: logs, the agent states asked for, errors."""
        try:
            while True:
                kind, payload = self._outbox.get()
                if kind == "closed":
                    return
                if kind == "logs":
                    with self.lock:
                        self._add_logs(*payload)
                elif kind == "state":
                    self._state = payload
                    self._state_ready.set()
                elif kind == "ready":
                    self._ready.set()
                elif kind == "error":
                    self.error = payload
                    self._state_ready.set()
        except Exception as exc:  # noqa: BLE001 (a broken queue: reported by the next drain, no traceback)
            self.error = f"reading from the learner process: {exc}"
            self._state_ready.set()


def _pack(state: dict[str, Any]) -> bytes:
    """A state dict as bytes. Pickled as is, its tensors would travel as file descriptors that only a
    live sender can hand over (torch.multiprocessing), and the child may have exited by the time they
    are read."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _unpack(data: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(data), weights_only=False)  # written by _pack in this program's own processes


@dataclass(frozen=True)
class _Cached:
    seq: int  # the sequence counter the copy was read at
    weights: Weights


def _publish(seq: Any, version: Any, flat: Any, state: dict[str, torch.Tensor], updates: int) -> None:
    """Writes the actor's tensors into the shared vector behind the sequence counter (one writer at a time)."""
    vec = torch.cat([v.detach().reshape(-1).to("cpu", torch.float32) for v in state.values()]).numpy()
    seq.value += 1  # odd: being written
    np.frombuffer(flat, dtype=np.float32)[:] = vec
    version.value = updates
    seq.value += 1  # even: a consistent copy


def _serve(init: _Init, inbox: Any, outbox: Any, seq: Any, version: Any, flat: Any) -> None:
    """The child: applies the parent's messages in order and does the owed gradient steps in between."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles signals and stops this process
    with contextlib.suppress(OSError):
        os.nice(LEARNER_NICE)  # encoders and replies first when cores are short
    torch.set_num_threads(max(1, init.torch_threads))
    try:
        agent = SACAgent(init.obs_dim, init.act_dim, init.cfg, init.device)
        agent.load_state_dict(_unpack(init.agent_state))
        buffer = ReplayBuffer(init.buffer_capacity, init.obs_dim, init.act_dim)
        buffer.load_state_dict(_unpack(init.buffer_state))
        owed, sums, count, pending_sync = 0, {}, 0, False
        outbox.put(("ready", None))
        while True:
            try:
                kind, payload = inbox.get(block=owed == 0 and not pending_sync)
            except queue.Empty:
                kind, payload = None, None
            if kind == "stop":
                return
            if kind == "episode":
                obs, action, reward, cost, next_obs, done = payload
                for row in zip(obs, action, reward, cost, next_obs, done, strict=True):
                    buffer.add(*row)
                if agent.ready(buffer):
                    owed += agent.cfg.updates_per_step * len(obs)
                continue  # take every queued message before the next step
            if kind == "lam":
                agent.lam = float(payload)
                continue
            if kind == "sync":
                pending_sync = True  # answered once the steps owed so far are done
            if kind == "snapshot" or (pending_sync and owed == 0):
                if count:
                    outbox.put(("logs", (sums, count)))
                    sums, count = {}, 0
                state = {"agent": agent.state_dict(), "buffer_rng": buffer.rng.bit_generator.state}
                outbox.put(("state", _pack(state)))
                pending_sync = False
                continue
            if owed > 0:
                logs = agent.update(buffer.sample(agent.cfg.batch_size, agent.device))
                owed -= 1
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if agent.num_updates % init.weights_every == 0:
                    _publish(seq, version, flat, agent.actor.state_dict(), agent.num_updates)
                if count >= LOG_EVERY:
                    outbox.put(("logs", (sums, count)))
                    sums, count = {}, 0
    except BaseException:  # noqa: BLE001 (reported to the parent, which raises it at drain)
        outbox.put(("error", traceback.format_exc(limit=5)))
