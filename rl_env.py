"""A Gymnasium environment over the rl_io protocol: one real encoder process, one GOP per episode.

    env = EncoderEnv(["--input", clip, "--codec", "x264", "--frames", "32", "--keyint", "16",
                      "--mini-gop", "4", "--bitrate", "150"])
    obs, info = env.reset()                  # first mini-GOP of the next GOP
    obs, r, terminated, truncated, info = env.step(np.array([0.25], np.float32))
    env.close()                              # ends the encoder's process group

`reset()` starts an encode (or continues the running one) and returns the observation of the first
mini-GOP of the next GOP; `step(action)` answers the pending request with `action_to_qp`, waits for
the feedback and, inside the GOP, for the next request. The episode terminates at `gop_end`. When an
encode ends, the next `reset()` starts a new one. A seeded `reset(seed=...)` (or
`options={"restart": True}`) restarts the encode from its first GOP, so seeded resets are
reproducible as Gymnasium expects.

Reward: `reward.reward(...)` (dB, PSNR metric) against the video's Δ=0 baseline, minus
`cost_lambda * cost` (a fixed multiplier, for plain RL algorithms; 0 by default). The cost
(`reward.cost`, GOP-budget units) and the unpenalised reward are in `info`.

Built on `io_runner.EncodeSession` (the encoder process, waiting, parsing, validation, replies,
observations, reward and cost), the same session that main.py's loop and its workers use. The
baseline, when not given, is one Δ=0 encode through `io_runner.run_encode`.

Limitation: a step needs the reward of its own mini-GOP, so the encoder must use the protocol's
simple order (feedback N before request N+1, as the built-in encoder does). An encoder with
lookahead, which may wait for reply N+1 before writing feedback N, is refused with an error.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import encoder_proc
import io_runner
import protocol
import reward as reward_mod
from encoder_proc import EncoderProcess, VideoSpec
from io_runner import Decision, EncoderFailure, EncodeSession, Finished, Learner, Outcome, Step
from protocol import ProtocolError, Request
from state import OBS_DIM

ACT_DIM = 1
OBS_LIMIT = 4.0  # build_observation clips every feature to [-4, 4]

_instances = itertools.count()  # distinguishes the sessions of several envs in one process


class _ZeroDelta(Learner):
    """Answers the encoder's own base QP (action 0): the Δ=0 baseline encode."""

    learning = False

    def choose(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(ACT_DIM, dtype=np.float32)


class EncoderEnv(gym.Env[np.ndarray, np.ndarray]):
    """One encoder command line as a Gymnasium environment; one GOP is one episode.

    Args:
        encoder_args: the video's encoder arguments (as one `--videos` value split on '|'), e.g.
            ["--input", path, "--codec", "x264", "--bitrate", "150"]; the protocol arguments are added.
        encoder: encoder program ('' = the built-in one, `python -m builtin_encoder`).
        rl_dir: protocol directory (created 0700; RlDirError if another user may write to it); None = a
            fresh temporary directory, removed by `close()`.
        log_dir: encoder logs and the baseline's redirected outputs; None = `<rl_dir>.logs` beside it
            (inside the temporary directory when `rl_dir` is None).
        baseline: the video's Δ=0 baseline, e.g. `BaselineStats.load(p).videos[env.video.key]`;
            None = run one Δ=0 encode now (costs one encode).
        max_delta_qp: action range, QP = base QP + round(action * max_delta_qp).
        reward_metric: "psnr" (dB of overall PSNR) or "ssim" (SSIM points x 100).
        cost_lambda: fixed multiplier λ >= 0; the returned reward is reward - λ * cost.
        timeout_s: seconds without a protocol file before the encoder counts as hung.
        rl_args_template: '|'-separated protocol arguments ({rl_dir}, {session} filled in).
        name: label of the video in logs (default: the stem of `--input`).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        encoder_args: list[str],
        *,
        encoder: str = "",
        rl_dir: Path | str | None = None,
        log_dir: Path | str | None = None,
        baseline: reward_mod.VideoBaseline | None = None,
        max_delta_qp: int = 4,
        reward_metric: str = "psnr",
        cost_lambda: float = 0.0,
        timeout_s: float = 60.0,
        rl_args_template: str = encoder_proc.DEFAULT_RL_ARGS,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if reward_metric not in ("psnr", "ssim"):
            raise ValueError(f"reward_metric must be psnr or ssim, got {reward_metric!r}")
        if max_delta_qp < 1:
            raise ValueError(f"max_delta_qp must be >= 1, got {max_delta_qp}")
        if not cost_lambda >= 0:
            raise ValueError(f"cost_lambda must be >= 0, got {cost_lambda}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        source = VideoSpec(name="", args=list(encoder_args)).flag("--input")
        self.video = VideoSpec(name=name or (Path(source).stem if source else "video"), args=list(encoder_args))
        self.encoder = encoder
        self.max_delta_qp = int(max_delta_qp)
        self.reward_metric = reward_metric
        self.cost_lambda = float(cost_lambda)
        self.timeout_s = float(timeout_s)
        self.rl_args_template = rl_args_template
        self.observation_space = spaces.Box(-OBS_LIMIT, OBS_LIMIT, (OBS_DIM,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

        self._tmp: Path | None = None
        if rl_dir is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="rlrc_env_"))
            rl_dir = self._tmp / "rl_io"
        self.rl_dir = Path(rl_dir)
        self.log_dir = Path(log_dir) if log_dir is not None else self.rl_dir.with_name(self.rl_dir.name + ".logs")
        protocol.prepare_rl_dir(self.rl_dir, flag="rl_dir")  # RlDirError unless only this user can write there
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._tag = f"{os.getpid()}-env{next(_instances)}"
        self.encodes = 0  # encodes started by reset (the baseline encode not counted)

        # The running encode (None between encodes) and its request read but not yet answered.
        self._session: EncodeSession | None = None
        self._decision: Decision | None = None

        try:
            self.baseline = baseline if baseline is not None else self._run_baseline()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Observation (OBS_DIM,) float32 of the first mini-GOP of the next GOP, and an info dict.

        A seed or options={"restart": True} restarts the encode from its first GOP. Without them the
        running encode continues; a GOP left unfinished (e.g. truncated by a TimeLimit) is coded to
        its end with the encoder's own base QP first, and an encode that has ended is replaced by a
        new one.
        """
        super().reset(seed=seed)
        restart = seed is not None or bool((options or {}).get("restart", False)) or self._session is None
        if restart:
            self._start_encode()
        fresh = restart
        while True:
            if self._decision is None:
                event = self._next_event(expect_feedback=False)
                if isinstance(event, Finished):
                    if fresh:
                        raise self._failure(EncoderFailure("ended without a single request"))
                    self._start_encode()
                    fresh = True
                    continue
                assert isinstance(event, Decision)  # _next_event refuses feedback that nobody asked for
                self._decision = event
            req = self._decision.request
            if req.mg_in_gop == 0:
                return self._decision.obs.copy(), self._request_info(req)
            # Mid-GOP (the previous episode was cut short): finish that GOP at Δ = 0.
            self._answer(0.0)
            self._next_event(expect_feedback=True)
            fresh = False

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Answers the current request with `action` (1,) in [-1, 1]; returns the next observation.

        Returns (obs, reward, terminated, truncated, info): reward in dB (PSNR metric) minus
        cost_lambda * cost; terminated at the GOP's last mini-GOP (obs is then a copy of this step's
        observation, as in main.py's replay transitions; the next GOP comes from `reset()`);
        truncated is always False. info: qp, base_qp, delta_qp, mg_index, gop_index, frame_count,
        bits, psnr_y (dB), ssim_y, mse_y, reward (unpenalised), cost; at the GOP's end also
        gop_bits and gop_bits_ratio (GOP bits / GOP budget).
        """
        decision = self._decision
        if decision is None or self._session is None:
            raise RuntimeError("step() before reset(), or after the episode ended: call reset()")
        a = float(np.asarray(action, dtype=np.float32).reshape(-1)[0])
        if not math.isfinite(a):
            raise ValueError(f"action must be finite, got {action!r}")
        step = self._answer(a)
        outcome = self._next_event(expect_feedback=True)
        assert isinstance(outcome, Outcome)
        fb, req = outcome.step.feedback, decision.request
        assert fb is not None
        info: dict[str, Any] = {
            "qp": step.qp,
            "base_qp": req.base_qp,
            "delta_qp": step.qp - req.base_qp,
            "mg_index": fb.mg_index,
            "gop_index": fb.gop_index,
            "frame_count": fb.frame_count,
            "bits": fb.bits,
            "psnr_y": fb.psnr_y,
            "ssim_y": fb.ssim_y,
            "mse_y": fb.mse_y,
            "reward": step.reward,
            "cost": step.cost,
        }
        terminated = outcome.gop is not None
        if outcome.gop is not None:
            info["gop_bits"] = outcome.gop.bits
            info["gop_bits_ratio"] = outcome.gop.bits / req.gop_bits_budget
            obs = decision.obs.copy()
        else:
            event = self._next_event(expect_feedback=False)
            if isinstance(event, Finished):
                raise self._failure(EncoderFailure(f"wrote end.json after mini-GOP {fb.mg_index} without gop_end"))
            assert isinstance(event, Decision)
            if event.request.mg_in_gop == 0:
                raise self._failure(
                    EncoderFailure(f"started GOP {event.request.gop_index} without gop_end on the last one")
                )
            self._decision = event
            obs = event.obs.copy()
        return obs, float(step.reward - self.cost_lambda * step.cost), terminated, False, info

    def close(self) -> None:
        """Ends the encoder's process group and removes the temporary directory; safe to call twice."""
        self._stop_encode()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        super().close()

    # ------------------------------------------------------------------ the encode

    @property
    def _proc(self) -> EncoderProcess | None:
        """The running encoder, or None between encodes."""
        return self._session.proc if self._session is not None else None

    def _command(self, args: list[str], session: str) -> list[str]:
        rl = encoder_proc.rl_args(self.rl_args_template, self.rl_dir, session)
        return encoder_proc.encoder_command(self.encoder) + args + rl

    def _run_baseline(self) -> reward_mod.VideoBaseline:
        """One Δ=0 encode through io_runner.run_encode; its outputs are redirected into log_dir."""
        session = f"{self._tag}-baseline"
        args = encoder_proc.redirect_outputs(self.video.args, self.log_dir, "baseline")
        encoder_proc.make_output_dirs(args)
        result = io_runner.run_encode(
            self.video,
            self._command(args, session),
            self.rl_dir,
            session,
            _ZeroDelta(),
            None,
            self.max_delta_qp,
            0.0,
            self.timeout_s,
            self.log_dir / f"{self.video.name}.baseline.log",
            self.reward_metric,
        )
        if not result.ok:
            raise EncoderFailure(f"baseline encode failed: {result.message}")
        return io_runner.baseline_from_result(result)

    def _start_encode(self) -> None:
        self._stop_encode()
        self.encodes += 1
        session = f"{self._tag}-{self.encodes}"
        encoder_proc.make_output_dirs(self.video.args)
        self._session = EncodeSession(
            self.video,
            self._command(self.video.args, session),
            self.rl_dir,
            session,
            self.timeout_s,
            self.log_dir / f"{self.video.name}.env{self.encodes}.log",
            baseline=self.baseline,
            max_delta_qp=self.max_delta_qp,
            reward_metric=self.reward_metric,
        )
        self._session.start()

    def _stop_encode(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        self._decision = None

    def _failure(self, exc: BaseException) -> EncoderFailure:
        """Ends the encode; an EncoderFailure naming the encoder, the video, the exit code and its last output."""
        assert self._session is not None
        message = self._session.failure_message(exc)
        self._stop_encode()
        return EncoderFailure(message)

    def _next_event(self, expect_feedback: bool) -> Decision | Outcome | Finished:
        """The session's next event; encoder faults raise EncoderFailure and end the encode.

        With expect_feedback, only the feedback of the request just answered may come; otherwise
        only the next request or the end of the encode.
        """
        assert self._session is not None
        try:
            event = self._session.next_event()
        except (EncoderFailure, ProtocolError, OSError) as exc:
            raise self._failure(exc) from exc
        if isinstance(event, Decision) and expect_feedback:
            raise self._failure(
                EncoderFailure(
                    f"wrote request {event.request.mg_index} before the feedback of mini-GOP "
                    f"{event.request.mg_index - 1}: EncoderEnv needs the protocol's simple order (feedback N "
                    "before request N+1); use main.py for lookahead encoders"
                )
            )
        return event

    def _answer(self, action: float) -> Step:
        """Writes the reply to the current request; returns its step."""
        assert self._decision is not None and self._session is not None
        decision, self._decision = self._decision, None
        try:
            return self._session.answer(decision, action)
        except OSError as exc:
            what = f"cannot write the reply to mini-GOP {decision.request.mg_index}: {exc}"
            raise self._failure(OSError(what)) from exc

    @staticmethod
    def _request_info(req: Request) -> dict[str, Any]:
        return {
            "mg_index": req.mg_index,
            "gop_index": req.gop_index,
            "mgs_in_gop": req.mgs_in_gop,
            "base_qp": req.base_qp,
            "gop_bits_budget": req.gop_bits_budget,
        }

    def __del__(self) -> None:
        # A forgotten close() must not leave an encoder running (it would wait --rl-timeout for us).
        with contextlib.suppress(Exception):
            self._stop_encode()
