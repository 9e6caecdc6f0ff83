"""The RL loop over rl_io: the only module that opens files in the protocol directory.

One `RlIoChannel` per rl_io directory turns files into typed messages and back; one
`EncodeSession` owns one encoder process and its channel and turns the messages into events
(Decision -> answer -> Outcome with reward and cost, GOP ends, Finished), checking the protocol on
the way. `run_encode` drives one session through one whole encode: request -> state -> action ->
reply -> (gradient steps while the encoder codes) -> feedback -> reward/cost -> transition, and at
each `gop_end == 1` commits the finished episode to the learner and updates λ. rl_env.EncoderEnv
and workers.py use the same session. No module-level state: several sessions on several
directories can share one learner.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import protocol
import reward as reward_mod
from encoder_proc import EncoderProcess, VideoSpec
from protocol import End, Feedback, ProtocolError, Request
from state import action_to_qp, build_observation

log = logging.getLogger("rlrc")
DETAILED = 15  # between INFO (important) and DEBUG
# A protocol file that does not parse is re-read until it has not changed for PARSE_SETTLE_S, at
# most PARSE_GRACE_S, before it counts as malformed (PROTOCOL.md §5: encoders that write in place).
# A writer descheduled between two writes on a loaded machine leaves a half file unchanged for a
# while: 0.3 s was seen to pass (a fake encoder writing in two halves 0.1 s apart, 2 busy cores).
PARSE_SETTLE_S = 1.0
PARSE_GRACE_S = 3.0


class EncoderFailure(RuntimeError):
    """The encoder died, hung or broke the protocol; the message names the encoder and the video.

    `reported` is the error message the encoder itself wrote into end.json, if any.
    """

    def __init__(self, message: str, reported: str = "") -> None:
        super().__init__(message)
        self.reported = reported.strip()


class EncoderStalled(EncoderFailure):
    """The encoder is alive but wrote no protocol file for the timeout: hung (SVT-AV1 4.1 can deadlock, README)."""


# ----------------------------------------------------------------------------- files <-> messages


class RlIoChannel:
    """Reads requests/feedback and writes replies in one rl_io directory for one encode session."""

    def __init__(self, rl_dir: Path, session: str, timeout_s: float) -> None:
        self.rl_dir = Path(rl_dir)
        self.session = session
        self.timeout_s = timeout_s
        protocol.prepare_rl_dir(self.rl_dir)  # RlDirError unless only this user can write there
        self.watcher = protocol.DirWatcher(self.rl_dir)

    def reset(self) -> int:
        """Removes stale protocol files of earlier encodes; returns how many."""
        return protocol.clear_protocol_files(self.rl_dir)

    def close(self) -> None:
        self.watcher.close()

    def _read(self, path: Path, parse: Callable[[str, Path], Any]) -> Any | None:
        """The message in `path`, or None if there is none yet.

        A file that fails to parse is read again until its size and mtime have not changed for
        `PARSE_SETTLE_S` (at most `PARSE_GRACE_S` in all) before it counts as malformed: an encoder
        that writes in place instead of renaming (PROTOCOL.md §5) may still be writing it. A link, a
        non-regular file or one over protocol.MAX_FILE_BYTES is malformed at once.
        """
        t0 = time.monotonic()
        last_sig, settled_since = None, t0
        while True:
            got = protocol.read_bytes(path)
            if got is None:
                return None
            data, st = got
            try:
                msg = parse(protocol.decode(data, path), path)
                break
            except ProtocolError:
                now = time.monotonic()
                sig = (st.st_size, st.st_mtime_ns)
                if sig != last_sig:
                    last_sig, settled_since = sig, now
                if now - settled_since >= PARSE_SETTLE_S or now - t0 >= PARSE_GRACE_S:
                    raise
                time.sleep(0.01)
        if self.session and getattr(msg, "session", "") not in ("", self.session):
            raise ProtocolError(f"{path}: field 'session' is {msg.session!r}, this encode is {self.session!r}")
        return msg

    def _read_feedback(self, path: Path, mg_index: int) -> Feedback | None:
        """The feedback in `path` (mini-GOP `mg_index`'s), or None.

        A body for another index is an error: else the same file would be taken again and again.
        """
        fb = self._read(path, protocol.parse_feedback)
        if fb is not None and fb.mg_index != mg_index:
            raise ProtocolError(f"{path}: field 'mg_index' is {fb.mg_index}, expected {mg_index}")
        return fb

    def next_message(
        self,
        next_request: int,
        pending: list[int],
        alive: Callable[[], bool],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Request | Feedback | End:
        """Waits for the next message: feedback of the oldest pending mini-GOP, the next request, or end.

        Feedback for k may come after the request for k + 1 (encoders with lookahead), so both are
        watched. Raises EncoderFailure after `timeout_s` without progress or if the encoder exits
        without writing end.json, or at once when `should_stop()` (a signal) is true.
        """
        deadline = time.monotonic() + self.timeout_s
        fb_path = protocol.feedback_path(self.rl_dir, pending[0]) if pending else None
        rq_path = protocol.request_path(self.rl_dir, next_request)
        end_path = protocol.end_path(self.rl_dir)
        dead_since: float | None = None
        while True:
            if fb_path is not None and (fb := self._read_feedback(fb_path, pending[0])) is not None:
                return fb
            if (rq := self._read(rq_path, protocol.parse_request)) is not None:
                if rq.mg_index != next_request:
                    raise ProtocolError(f"{rq_path}: field 'mg_index' is {rq.mg_index}, expected {next_request}")
                # An encoder without lookahead writes feedback k, then request k + 1; both may have appeared
                # since the feedback was looked for above. Feedback first, so that the request's state sees
                # it (state.build_observation's previous mini-GOP); the request is read again next call.
                if fb_path is not None and (fb := self._read_feedback(fb_path, pending[0])) is not None:
                    return fb
                return rq
            if (end := self._read(end_path, protocol.parse_end)) is not None:
                # The encoder writes the last feedback before end.json; both may have appeared
                # since the feedback was looked for above, so look again before ending.
                if fb_path is not None and (fb := self._read_feedback(fb_path, pending[0])) is not None:
                    return fb
                return end
            if should_stop():
                raise EncoderFailure("stopped by a signal")
            now = time.monotonic()
            if not alive():
                # The encoder may have written its last file just before exiting: look once more.
                if dead_since is None:
                    dead_since = now
                elif now - dead_since > 0.2:
                    raise EncoderFailure("exited without writing end.json")
            if now >= deadline:
                waiting = f"{fb_path.name} or {rq_path.name}" if fb_path else rq_path.name
                raise EncoderStalled(f"no protocol file for {self.timeout_s:.0f} s (waiting for {waiting})")
            self.watcher.wait(min(deadline - now, 0.05 if dead_since else 0.5))

    def write_reply(self, req: Request, qp: int) -> None:
        # Echo only the session the encoder sent: one started without --rl-session may reject any other.
        reply = protocol.Reply(qp=qp, mg_index=req.mg_index, session=req.session or None)
        protocol.write_message(protocol.reply_path(self.rl_dir, req.mg_index), reply)


# ----------------------------------------------------------------------------- one encode, event by event


@dataclass
class Step:
    """One mini-GOP decision and, once known, its outcome."""

    request: Request
    obs: np.ndarray  # (OBS_DIM,)
    action: np.ndarray  # (1,) in [-1, 1]
    qp: int
    handshake_s: float  # request renamed into place -> reply renamed into place
    feedback: Feedback | None = None
    next_obs: np.ndarray | None = None
    reward: float = math.nan
    cost: float = math.nan


@dataclass
class Decision:
    """Event: the encoder asks for mini-GOP `request.mg_index`'s QP; answer with `EncodeSession.answer`."""

    request: Request
    obs: np.ndarray  # (OBS_DIM,) float32, state.build_observation of the request and the GOP so far


@dataclass
class GopEnd:
    """A GOP (one episode) just finished: its steps in order and the bits they spent."""

    gop_index: int
    steps: list[Step]
    bits: int  # sum of the GOP's feedback bits


@dataclass
class Outcome:
    """Event: a mini-GOP's feedback arrived; `step` now holds it with its reward (dB) and cost.

    `gop` is set when this mini-GOP ended its GOP.
    """

    step: Step
    gop: GopEnd | None = None


@dataclass
class Finished:
    """Event: the encoder wrote end.json (status ok), coded every announced frame and exited 0."""

    end: End


class EncodeSession:
    """One encoder process and its rl_io directory, turned into events: Decision, Outcome, Finished.

        sess = EncodeSession(spec, command, rl_dir, "s1", timeout_s=60, log_path=log, baseline=base)
        sess.start()
        while not isinstance(event := sess.next_event(), Finished):
            if isinstance(event, Decision):
                sess.answer(event, action)       # (1,) in [-1, 1]: QP = base QP + round(a * max_delta_qp)
            # an Outcome carries the step's feedback, reward and cost; at a GOP's end also the GOP
        sess.close()                             # ends the encoder's process group

    Everything the protocol asks of the agent's side is checked here: indices in order, feedback
    matching its request, a complete encode before end.json, the exit code. A fault raises
    EncoderFailure, ProtocolError or OSError; `failure_message(exc)` names the encoder, the video,
    the exit code and the encoder's last output lines. Feedback for k may come after the request for
    k + 1 (encoders with lookahead): several Decisions may then precede an Outcome.
    The constructor makes the channel (protocol.RlDirError for a loose rl_dir) but starts nothing.
    """

    def __init__(
        self,
        spec: VideoSpec,
        command: list[str],
        rl_dir: Path,
        session: str,
        timeout_s: float,
        log_path: Path,
        *,
        baseline: reward_mod.VideoBaseline | None = None,
        max_delta_qp: int = 4,
        reward_metric: str = "psnr",
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.spec, self.command, self.rl_dir = spec, command, Path(rl_dir)
        self.baseline, self.max_delta_qp, self.reward_metric = baseline, max_delta_qp, reward_metric
        self.should_stop = should_stop
        # The channel (and its inotify watch) exists before the encoder starts: no event is missed.
        self.channel = RlIoChannel(self.rl_dir, session, timeout_s)
        self.proc = EncoderProcess(command, log_path, spec.name)
        self.steps: list[Step] = []  # answered mini-GOPs in order; those with feedback are done
        self.episode: list[Step] = []  # the running GOP's steps with feedback (dropped if the encode fails)
        self._by_index: dict[int, Step] = {}
        self._next_request = 0
        self._asked: Decision | None = None  # read, not answered yet
        self._gop_bits = 0
        self._prev_fb: Feedback | None = None  # previous mini-GOP of the same GOP
        self._prev_base_qp: int | None = None
        self.finished = False

    def start(self) -> None:
        """Removes stale protocol files of earlier encodes and starts the encoder."""
        stale = self.channel.reset()
        if stale:
            log.debug("removed %d stale protocol files from %s", stale, self.rl_dir)
        self.proc.start()
        log.debug("started encoder pid %d: %s", self.proc.pid, " ".join(self.command))

    @property
    def pending(self) -> list[int]:
        """mg_index of the answered mini-GOPs still waiting for feedback, oldest first."""
        return [s.request.mg_index for s in self.steps if s.feedback is None]

    def next_event(self) -> Decision | Outcome | Finished:
        """Waits for the encoder's next message and returns it as an event (see the class docstring)."""
        if self._asked is not None:
            raise RuntimeError(f"request {self._asked.request.mg_index} is not answered yet")
        if self.should_stop():
            raise EncoderFailure("stopped by a signal")
        msg = self.channel.next_message(self._next_request, self.pending, self.proc.alive, self.should_stop)
        if isinstance(msg, Request):
            return self._decision(msg)
        if isinstance(msg, Feedback):
            return self._outcome(msg)
        return self._finished(msg)

    def answer(self, decision: Decision, action: np.ndarray | float) -> Step:
        """Writes the reply to `decision`; QP = base QP + round(action * max_delta_qp), in the request's range."""
        if decision is not self._asked:
            raise RuntimeError(f"request {decision.request.mg_index} is not the one waiting for an answer")
        req = decision.request
        act = np.asarray(action, dtype=np.float32).reshape(-1)
        qp = action_to_qp(float(act[0]), req, self.max_delta_qp)
        self.channel.write_reply(req, qp)
        rq_mtime = protocol.request_path(self.rl_dir, req.mg_index).stat().st_mtime_ns
        step = Step(req, decision.obs, act, qp, max(time.time_ns() - rq_mtime, 0) / 1e9)
        if req.mg_in_gop > 0 and (prev := self._by_index.get(req.mg_index - 1)) is not None:
            prev.next_obs = decision.obs
        self._by_index[req.mg_index] = step
        self.steps.append(step)
        self._asked = None
        log.debug("reply mg %d: qp %d (base %d)", req.mg_index, qp, req.base_qp)
        return step

    def failure_message(self, exc: BaseException) -> str:
        """What went wrong, for the user: encoder, video, exit code, `exc`, and the encoder's last output."""
        code = self.proc.returncode()
        exit_note = f" (exit code {code})" if code is not None else ""
        text = f"encoder {encoder_label(self.command)!r} for video {self.spec.name}{exit_note}: {exc}"
        # The encoder's own error line repeats the message end.json carried: show it once.
        said = exc.reported if isinstance(exc, EncoderFailure) else ""
        tail = "\n".join(line for line in self.proc.tail().splitlines() if not (said and said in line))
        if tail:
            text += "\n  last encoder output:\n    " + "\n    ".join(tail.splitlines())
        return text

    def close(self) -> None:
        """Ends the encoder's process group and the directory watch; safe to call twice."""
        self.proc.stop()
        self.channel.close()

    # ------------------------------------------------------------------ messages -> events

    def _decision(self, req: Request) -> Decision:
        log.debug("request %s", req)
        prev = self._by_index.get(req.mg_index - 1)
        protocol.check_request_follows(req, prev.request if prev is not None else None,
                                       protocol.request_path(self.rl_dir, req.mg_index))  # fmt: skip
        if req.mg_in_gop == 0:
            self._prev_fb, self._prev_base_qp = None, None
        self._asked = Decision(req, build_observation(req, self._prev_fb, self._prev_base_qp))
        self._next_request += 1
        return self._asked

    def _outcome(self, fb: Feedback) -> Outcome:
        log.debug("feedback %s", fb)
        step = self._by_index[fb.mg_index]
        req = step.request
        protocol.check_feedback_matches(fb, req, protocol.feedback_path(self.rl_dir, fb.mg_index), step.qp)
        step.feedback = fb
        step.cost = reward_mod.cost(fb, req.gop_bits_budget, req.gop_frames)
        if self.baseline is not None:
            try:
                step.reward = reward_mod.reward(fb, self.baseline, self.reward_metric)
            except ValueError as exc:  # the baseline was made from another encode
                raise EncoderFailure(f"feedback of mini-GOP {fb.mg_index} does not fit the baseline: {exc}") from None
        self._gop_bits += fb.bits
        self.episode.append(step)
        self._prev_fb, self._prev_base_qp = fb, req.base_qp
        if not fb.gop_end:
            return Outcome(step)
        gop = GopEnd(fb.gop_index, self.episode, self._gop_bits)
        self.episode, self._gop_bits = [], 0
        return Outcome(step, gop)

    def _finished(self, end: End) -> Finished:
        if end.status != "ok":
            raise EncoderFailure(f"reported an error: {end.message}", reported=end.message)
        if self.pending:
            raise EncoderFailure("wrote end.json before the feedback of every mini-GOP")
        coded = sum(s.feedback.frame_count for s in self.steps if s.feedback is not None)
        total = self.steps[0].request.total_frames if self.steps else 0
        if coded != total or end.mini_gops != len(self.steps):
            raise EncoderFailure(
                f"{protocol.end_path(self.rl_dir)}: status ok, but {coded} of the {total} frames its requests "
                f"announced were coded (field 'mini_gops' is {end.mini_gops}, {len(self.steps)} were requested)"
            )
        code = self.proc.wait(10.0)
        if code not in (0, None):
            raise EncoderFailure(f"exited with code {code} after end.json")
        self.finished = True
        return Finished(end)


# ----------------------------------------------------------------------------- the loop


@dataclass
class EncodeResult:
    """What one encode produced. Rates in kbit/s, PSNR in dB (overall, from total MSE)."""

    video: str
    ok: bool
    message: str = ""
    steps: list[Step] = field(default_factory=list)
    gops: int = 0
    lambdas: list[float] = field(default_factory=list)
    gop_violations: list[float] = field(default_factory=list)
    gops_out_of_reach: int = 0  # GOPs over budget that no action could bring within it (λ kept)
    update_logs: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    agent_s: float = 0.0  # time the agent spent choosing, writing replies and learning
    stalled: bool = False  # ended by EncoderStalled: the same encode may well succeed if run again

    @property
    def done_steps(self) -> list[Step]:
        return [s for s in self.steps if s.feedback is not None]

    def summary(self) -> dict[str, float]:
        steps = self.done_steps
        if not steps:
            return {}
        req0 = steps[0].request
        frames = sum(s.feedback.frame_count for s in steps)
        bits = sum(s.feedback.bits for s in steps)
        kbps = bits * req0.fps / frames / 1000.0
        mse_y = sum(s.feedback.mse_y * s.feedback.frame_count for s in steps) / frames
        rewards = [s.reward for s in steps if not math.isnan(s.reward)]
        return {
            "frames": float(frames),
            "kbps": kbps,
            "target_kbps": req0.target_kbps,
            "bitrate_error": kbps / req0.target_kbps - 1.0,
            "psnr_y": 100.0 if mse_y <= 0 else min(100.0, 10.0 * math.log10(255.0**2 / mse_y)),  # PROTOCOL.md cap
            "ssim_y": sum(s.feedback.ssim_y * s.feedback.frame_count for s in steps) / frames,
            "mean_qp": float(np.mean([s.feedback.qp_used for s in steps])),
            "mean_dqp": float(np.mean([s.qp - s.request.base_qp for s in steps])),
            "reward_sum": float(sum(rewards)) if rewards else math.nan,
            "cost_sum": float(sum(s.cost for s in steps if not math.isnan(s.cost))),
            "gops_over_budget": float(sum(v > 0 for v in self.gop_violations)),
            "gops": float(self.gops),
            "gops_out_of_reach": float(self.gops_out_of_reach),
            "handshake_p50_ms": 1000.0 * float(np.percentile([s.handshake_s for s in steps], 50)),
            "handshake_p99_ms": 1000.0 * float(np.percentile([s.handshake_s for s in steps], 99)),
            "agent_share": self.agent_s / self.wall_s if self.wall_s > 0 else math.nan,
        }


class Learner:
    """What run_encode needs of the agent side; implemented in learners.py around SACAgent + replay."""

    learning: bool  # False in infer mode and for baseline encodes

    def choose(self, obs: np.ndarray) -> np.ndarray:  # (1,) in [-1, 1]
        raise NotImplementedError

    def learn(self) -> dict[str, float]:  # gradient steps while the encoder codes
        raise NotImplementedError

    def store_episode(self, steps: list[Step]) -> None:  # a finished GOP's transitions
        raise NotImplementedError

    def end_gop(self, violation: float) -> float:  # λ update; returns λ
        raise NotImplementedError

    def restart_encode(self) -> None:  # a stalled encode runs again from its start (non-learning learners)
        pass


def run_encode(
    spec: VideoSpec,
    command: list[str],
    rl_dir: Path,
    session: str,
    learner: Learner,
    baseline: reward_mod.VideoBaseline | None,
    max_delta_qp: int,
    rate_tolerance: float,
    timeout_s: float,
    log_path: Path,
    reward_metric: str = "psnr",
    should_stop: Callable[[], bool] = lambda: False,
    on_feedback: Callable[[Step], None] = lambda step: None,
) -> EncodeResult:
    """Runs one encode of `spec` through rl_dir, start to end; never raises for encoder faults.

    `on_feedback(step)` is called once per mini-GOP, when its feedback has been taken in (progress).

    An encoder that crashes, hangs or breaks the protocol ends the encode with ok=False and a
    message naming the encoder and the video; the unfinished GOP's transitions are dropped.
    """
    result = EncodeResult(video=spec.name, ok=False)
    try:
        sess = EncodeSession(
            spec, command, rl_dir, session, timeout_s, log_path,
            baseline=baseline, max_delta_qp=max_delta_qp, reward_metric=reward_metric, should_stop=should_stop,
        )  # fmt: skip
    except protocol.RlDirError as exc:  # e.g. made group-writable since the start: no encoder is started
        result.message = f"encoder {encoder_label(command)!r} for video {spec.name}: {exc}"
        return result
    t_start = time.monotonic()
    try:
        sess.start()
        while True:
            event = sess.next_event()
            t0 = time.monotonic()
            if isinstance(event, Decision):
                sess.answer(event, learner.choose(event.obs))
                if learner.learning:
                    logs = learner.learn()
                    if logs:
                        result.update_logs.append(logs)
            elif isinstance(event, Outcome):
                if event.gop is not None:
                    _end_gop(spec, event.gop, learner, baseline, max_delta_qp, rate_tolerance, result)
                on_feedback(event.step)
            else:  # Finished
                result.ok = True
                break
            result.agent_s += time.monotonic() - t0
    except (EncoderFailure, ProtocolError, OSError) as exc:
        result.message = sess.failure_message(exc)
        result.stalled = isinstance(exc, EncoderStalled)
        if sess.episode:
            log.debug("dropping %d transitions of the unfinished GOP", len(sess.episode))
    finally:
        sess.close()
        result.steps = sess.steps
        result.wall_s = time.monotonic() - t_start
    return result


def _end_gop(
    spec: VideoSpec,
    gop: GopEnd,
    learner: Learner,
    baseline: reward_mod.VideoBaseline | None,
    max_delta_qp: int,
    rate_tolerance: float,
    result: EncodeResult,
) -> None:
    """A finished GOP: its rate violation, the episode into the learner, the λ update and the GOP's log line."""
    req = gop.steps[-1].request
    violation = reward_mod.gop_violation(gop.bits, req.gop_bits_budget, rate_tolerance)
    result.gop_violations.append(violation)
    result.gops += 1
    # A budget no action can meet: λ is kept (else it winds up to its maximum for nothing).
    out_of_reach = violation > 0 and reward_mod.budget_out_of_reach(
        req.gop_bits_budget, rate_tolerance, all(s.qp >= s.request.qp_max for s in gop.steps),
        baseline.gop_least_bits(gop.gop_index, max_delta_qp, req.qp_max) if baseline else 0.0,
    )  # fmt: skip
    result.gops_out_of_reach += out_of_reach
    if learner.learning:
        learner.store_episode(gop.steps)
        result.lambdas.append(learner.end_gop(0.0 if out_of_reach else violation))
    log.log(
        DETAILED,
        "%s GOP %d: %d mini-GOPs, bits/budget %.3f%s, cost %.4f%s%s",
        spec.name,
        gop.gop_index,
        len(gop.steps),
        gop.bits / req.gop_bits_budget,
        f", reward {sum(s.reward for s in gop.steps):.4f}" if baseline is not None else "",
        sum(s.cost for s in gop.steps),
        f", lambda {result.lambdas[-1]:.3f}" if result.lambdas else "",
        " (budget out of reach: λ kept)" if out_of_reach and learner.learning else "",
    )


def encoder_label(command: list[str]) -> str:
    """The encoder's name for messages: the program, plus its script when it is an interpreter."""
    prog = Path(command[0]).name
    if prog.startswith("python") and len(command) > 1:
        return " ".join([prog, *command[1:3]]) if command[1] == "-m" else f"{prog} {command[1]}"
    return command[0]


def baseline_from_result(result: EncodeResult) -> reward_mod.VideoBaseline:
    """Turns a Δ=0 encode into the per-mini-GOP baseline that rewards are measured against."""
    s = result.summary()
    mgs = [
        reward_mod.BaselineMiniGop(
            gop_index=st.feedback.gop_index,
            frame_count=st.feedback.frame_count,
            bits=st.feedback.bits,
            mse_y=st.feedback.mse_y,
            ssim_y=st.feedback.ssim_y,
            base_qp=st.request.base_qp,
        )
        for st in result.done_steps
    ]
    frames = sum(st.feedback.frame_count for st in result.done_steps)
    return reward_mod.VideoBaseline(
        mini_gops=mgs,
        kbps=s["kbps"],
        psnr_y=s["psnr_y"],
        ssim_y=s["ssim_y"],
        psnr_y_frame_mean=sum(st.feedback.psnr_y_frame_mean * st.feedback.frame_count for st in result.done_steps)
        / frames,
        mean_qp=s["mean_qp"],
    )
