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

Built on the project's pieces: `io_runner.RlIoChannel` (waiting, parsing, replies),
`encoder_proc.EncoderProcess` (process group), `state.build_observation` / `action_to_qp`, and
`reward`. The baseline, when not given, is one Δ=0 encode through `io_runner.run_encode`.

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
from io_runner import EncoderFailure, Learner, RlIoChannel
from protocol import End, Feedback, ProtocolError, Request
from state import OBS_DIM, action_to_qp, build_observation

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

        # State of the running encode (None / empty between encodes).
        self._proc: EncoderProcess | None = None
        self._channel: RlIoChannel | None = None
        self._next_request = 0  # mg_index of the next request to read
        self._request: Request | None = None  # read, not yet answered
        self._obs: np.ndarray | None = None  # observation of self._request
        self._prev_fb: Feedback | None = None  # previous mini-GOP of the same GOP
        self._prev_base_qp: int | None = None
        self._gop_bits = 0

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
        restart = seed is not None or bool((options or {}).get("restart", False)) or self._proc is None
        if restart:
            self._start_encode()
        fresh = restart
        while True:
            if self._request is None:
                msg = self._next_message(expect_feedback=False)
                if isinstance(msg, End):
                    if fresh:
                        raise EncoderFailure(self._describe("ended without a single request"))
                    self._start_encode()
                    fresh = True
                    continue
                self._take_request(msg)
            req = self._request
            assert req is not None
            if req.mg_in_gop == 0:
                return self._obs_copy(), self._request_info(req)
            # Mid-GOP (the previous episode was cut short): finish that GOP at Δ = 0.
            self._answer(0.0)
            self._await_feedback(req)
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
        req = self._request
        if req is None or self._proc is None:
            raise RuntimeError("step() before reset(), or after the episode ended: call reset()")
        a = float(np.asarray(action, dtype=np.float32).reshape(-1)[0])
        if not math.isfinite(a):
            raise ValueError(f"action must be finite, got {action!r}")
        qp = self._answer(a)
        last_obs = self._obs
        assert last_obs is not None
        fb = self._await_feedback(req)

        quality = reward_mod.reward(fb, self.baseline, self.reward_metric)
        cost = reward_mod.cost(fb, req.gop_bits_budget, req.gop_frames)
        info: dict[str, Any] = {
            "qp": qp,
            "base_qp": req.base_qp,
            "delta_qp": qp - req.base_qp,
            "mg_index": fb.mg_index,
            "gop_index": fb.gop_index,
            "frame_count": fb.frame_count,
            "bits": fb.bits,
            "psnr_y": fb.psnr_y,
            "ssim_y": fb.ssim_y,
            "mse_y": fb.mse_y,
            "reward": quality,
            "cost": cost,
        }
        terminated = bool(fb.gop_end)
        if terminated:
            info["gop_bits"] = self._gop_bits
            info["gop_bits_ratio"] = self._gop_bits / req.gop_bits_budget
            self._gop_bits = 0
            obs = last_obs.copy()
        else:
            msg = self._next_message(expect_feedback=False)
            if isinstance(msg, End):
                raise EncoderFailure(self._describe(f"wrote end.json after mini-GOP {fb.mg_index} without gop_end"))
            if msg.mg_in_gop == 0:
                raise EncoderFailure(self._describe(f"started GOP {msg.gop_index} without gop_end on the last one"))
            self._take_request(msg)
            obs = self._obs_copy()
        return obs, float(quality - self.cost_lambda * cost), terminated, False, info

    def close(self) -> None:
        """Ends the encoder's process group and removes the temporary directory; safe to call twice."""
        self._stop_encode()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        super().close()

    # ------------------------------------------------------------------ the encode

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
        # The channel (and its inotify watch) exists before the encoder starts: no event is missed.
        self._channel = RlIoChannel(self.rl_dir, session, self.timeout_s)
        self._channel.reset()
        log_path = self.log_dir / f"{self.video.name}.env{self.encodes}.log"
        self._proc = EncoderProcess(self._command(self.video.args, session), log_path, self.video.name)
        self._proc.start()
        self._next_request = 0
        self._request, self._obs = None, None
        self._prev_fb, self._prev_base_qp, self._gop_bits = None, None, 0

    def _stop_encode(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._request, self._obs = None, None

    def _describe(self, what: str) -> str:
        """An error message naming the encoder, the video, the exit code and the encoder's last output."""
        proc = self._proc
        command = proc.command[0] if proc is not None else self.encoder or "builtin_encoder"
        code = proc.returncode() if proc is not None else None
        text = f"encoder {command!r} for video {self.video.name}{f' (exit code {code})' if code is not None else ''}: "
        text += what
        tail = proc.tail() if proc is not None else ""
        if tail:
            text += "\n  last encoder output:\n    " + "\n    ".join(tail.splitlines())
        return text

    def _next_message(self, expect_feedback: bool) -> Request | Feedback | End:
        """The next protocol message; encoder faults raise EncoderFailure and end the encode.

        With expect_feedback, only the feedback of the request just answered (or an error end) may
        come; otherwise only the next request or end.json.
        """
        assert self._proc is not None and self._channel is not None
        pending = [self._next_request - 1] if expect_feedback else []
        try:
            msg = self._channel.next_message(self._next_request, pending, self._proc.alive)
            if isinstance(msg, End):
                if msg.status != "ok":
                    raise EncoderFailure(f"reported an error: {msg.message}")
                if expect_feedback:
                    raise EncoderFailure(f"wrote end.json before the feedback of mini-GOP {pending[0]}")
                code = self._proc.wait(10.0)
                if code not in (0, None):
                    raise EncoderFailure(f"exited with code {code} after end.json")
            elif isinstance(msg, Request) and expect_feedback:
                raise EncoderFailure(
                    f"wrote request {msg.mg_index} before the feedback of mini-GOP {pending[0]}: EncoderEnv needs "
                    "the protocol's simple order (feedback N before request N+1); use main.py for lookahead encoders"
                )
            return msg
        except (EncoderFailure, ProtocolError, OSError) as exc:
            message = self._describe(str(exc))
            self._stop_encode()
            raise EncoderFailure(message) from exc

    def _take_request(self, req: Request | Feedback) -> None:
        assert isinstance(req, Request)  # the channel returns only what was asked for
        if req.mg_in_gop == 0:
            self._prev_fb, self._prev_base_qp, self._gop_bits = None, None, 0
        self._request = req
        self._obs = build_observation(req, self._prev_fb, self._prev_base_qp)
        self._next_request = req.mg_index + 1

    def _answer(self, action: float) -> int:
        """Writes the reply to the current request; returns the QP answered."""
        req = self._request
        assert req is not None and self._channel is not None
        qp = action_to_qp(action, req, self.max_delta_qp)
        try:
            self._channel.write_reply(req, qp)
        except OSError as exc:
            message = self._describe(f"cannot write the reply to mini-GOP {req.mg_index}: {exc}")
            self._stop_encode()
            raise EncoderFailure(message) from exc
        self._request = None
        return qp

    def _await_feedback(self, req: Request) -> Feedback:
        msg = self._next_message(expect_feedback=True)
        assert isinstance(msg, Feedback)
        self._prev_fb, self._prev_base_qp = msg, req.base_qp
        self._gop_bits += msg.bits
        return msg

    def _obs_copy(self) -> np.ndarray:
        assert self._obs is not None
        return self._obs.copy()

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
