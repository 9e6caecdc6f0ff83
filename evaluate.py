"""Evaluation report: the trained agent vs the Δ=0 baseline vs the codec's own rate control, BD-rates, oracle.

    # the report: every clip of a directory (or a glob), 4 target rates, agent / baseline / codec RC
    python evaluate.py --load-checkpoint CKPT --inputs DIR_OR_GLOB [--bitrates 100,200,400,800 | --bpp ...]
                       [--encoder "YOUR ENCODER" --encoder-args "A|B"]
                       [--codec svtav1] [--frames N] [--oracle] --out DIR
    # the oracle alone (+ the agent when a checkpoint is given): per-mini-GOP QP offsets found by search
    python evaluate.py oracle --inputs DIR_OR_GLOB [--bitrates ...] [--load-checkpoint CKPT] --out DIR

For every clip and target bitrate (kbit/s) it runs, with the built-in encoder and one shared
first pass (`--pass 1`, then `--pass 2 --stat-in`, as main.py's dataset mode does):

  agent     the checkpoint's policy, deterministic (learners.SacLearner in infer mode), through
            `io_runner.run_encode`: the same loop, protocol and encoder as in training;
  baseline  the encoder's own two-pass rate control with Δ = 0 (rc-mode 1). It answers the
            encoder's own base QP through the protocol (learners.ZeroDeltaLearner, what main.py uses
            as its baseline), which is bit-identical to an encode without --rl-dir (the tests check
            it) and also yields the GOP budgets; its time excludes the answers' wait;
  codec_rc  the codec's own rate control at the same target (rc-mode 2), same codec settings;
  codec_crf the codec's own CRF (rc-mode 3) at the baseline's mean base QP, rounded: a second
            reference curve (BD-rate needs curves, not equal rates), and the stand-in for codec_rc
            where a backend has no rc-mode 2;
  oracle    (optional) coordinate descent over per-mini-GOP QP offsets around the encoder's base
            QP, each candidate a full encode from frame 0 through the protocol, maximising overall
            PSNR-Y within the baseline's total bits (a penalty on overshoot, `run_oracle`).

Quality numbers come from the encoder's own --summary-json: overall PSNR-Y from the total luma MSE
(the headline), the mean of per-frame PSNR-Y, and mean SSIM-Y.

`--encoder CMD` evaluates a team's own encoder instead: it is run as main.py runs encoders (pass 1
with `--pass 1 --stat-out`, then `--pass 2 --stat-in` through the protocol; video flags `--input
--frames --bitrate`, plus `--encoder-args`), and every number comes from the protocol's feedback
alone: bits and per-mini-GOP MSE, overall PSNR-Y = 10 log10(255² / frame-weighted mean MSE). The
codec_rc and codec_crf columns need the built-in encoder's extra modes and are left out (said).

Outputs in --out: runs.csv (one row per encode), bdrate.csv, minigops.csv (per-mini-GOP QP / bits / budget), oracle.csv,
report.md, summary.json and PNG plots (RD curves per clip; QP per mini-GOP and bits vs budget per
GOP for one clip).

BD-rate (`bdrate.bd_rate`): Bjøntegaard delta rate, percent; negative = the first curve needs fewer
bits for the same quality.

This module decides what to encode and runs the command line; its neighbours do the rest:
eval_runs.py the clips and encodes (Runner, RunRecord), oracle_search.py the oracle's search,
bdrate.py the BD-rate maths, eval_report.py the Report and its files.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import checkpoint
import encoder_proc
import protocol
from eval_report import Report, write_report
from eval_runs import (
    DEFAULT_BPP,
    EvalSettings,
    Point,
    Runner,
    RunRecord,
    Video,  # fmt: skip
    find_inputs,
    key_probe_error,
    probe_videos,
    targets_for,
)
from io_runner import Learner
from oracle_search import OracleResult, OracleSettings, run_oracle

log = logging.getLogger("rlrc")

CRF_RANGE = {"svtav1": (1, 63), "x264": (0, 51), "vp9": (0, 255)}  # CRF scales (SVT-AV1: its QP; vp9: q_index)


# ----------------------------------------------------------------------------- the agent


@dataclass
class AgentBundle:
    """A checkpoint's policy ready to answer, with the action range and tolerance it was trained with."""

    learner: Learner
    max_delta_qp: int
    rate_tolerance: float
    path: str
    epoch: int


def reads_probe_zero(learner: Learner) -> bool:
    """Whether an agent's policy file reads the probes' zero encode (state.probe_best's features)."""
    import policy

    return isinstance(learner, policy.PolicyLearner) and learner.policy.reads_probe_zero


def load_agent(path: str | Path, device: str = "cpu") -> AgentBundle:
    """Loads a policy file (policy.py) or a main.py checkpoint (learners.SacLearner in infer mode): no learning."""
    import torch

    import policy

    try:
        if (data := policy.read_file(Path(path))) is not None:
            pol = policy.load(Path(path), data)
            return AgentBundle(policy.PolicyLearner(pol), pol.max_delta_qp, pol.rate_tolerance, str(path), 0)
    except policy.PolicyError as exc:
        raise checkpoint.CheckpointError(f"--load-checkpoint: {exc}") from None

    from config import Config
    from learners import ACT_DIM, Counters, SacLearner
    from replay import ReplayBuffer
    from sac_agent import SACAgent
    from state import OBS_DIM

    ckpt = checkpoint.load(Path(path), map_location=device)
    if ckpt.get("obs_dim") != OBS_DIM:
        raise checkpoint.CheckpointError(
            f"--load-checkpoint: {path} has observations of size {ckpt.get('obs_dim')}, this version uses {OBS_DIM}"
        )
    cfg = Config.from_dict(ckpt["config"])
    agent = SACAgent(OBS_DIM, ACT_DIM, cfg.sac, torch.device(device), cfg.seed)
    try:
        agent.load_state_dict(ckpt["agent"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise checkpoint.CheckpointError(f"--load-checkpoint: {path}: {exc}") from None
    # Infer mode never touches the buffer: the smallest one will do.
    learner = SacLearner(agent, ReplayBuffer(1, OBS_DIM, ACT_DIM), Counters(), learning=False)
    return AgentBundle(learner, cfg.sac.max_delta_qp, cfg.sac.rate_tolerance, str(path), int(ckpt["epoch"]))


def evaluate(
    videos: Sequence[Video],
    targets: dict[str, list[float]],
    out_dir: Path,
    settings: EvalSettings,
    agent: AgentBundle | None,
    methods: Sequence[str] = ("agent", "baseline", "codec_rc", "codec_crf"),
    oracle: OracleSettings | None = None,
    workers: int = 1,
) -> Report:
    """Encodes every clip at its targets with each method; returns the measurements (writes no report).

    `targets` maps a clip's name to its target rates (kbit/s). The baseline always runs (every
    comparison is against it); the oracle runs when `oracle` is given. With `workers` > 1 the
    (clip, target) points run on that many threads at once, each with its own encoder and rl_io
    subdirectory; the report is the same (runs in the same order; the same numbers, as every encode
    is deterministic), only faster.
    """
    t0 = time.monotonic()
    out_dir = Path(out_dir)
    tol = agent.rate_tolerance if agent else 0.02
    report = Report(list(videos), settings, rate_tolerance=tol)
    if agent is not None:
        report.checkpoint, report.checkpoint_epoch = agent.path, agent.epoch
    if not settings.builtin and {"codec_rc", "codec_crf"} & set(methods):
        log.warning("--encoder: codec_rc and codec_crf are left out (they need the built-in encoder's rc-modes 2 and "
                    "3); agent, baseline and oracle come from the protocol's feedback alone")  # fmt: skip
        methods = [m for m in methods if m not in ("codec_rc", "codec_crf")]
    points = [Point(v, t, out_dir / "work" / v.name / f"{t:g}kbps", settings) for v in videos for t in targets[v.name]]
    if workers <= 1:
        runners = [Runner(out_dir, settings)]
        done = [_evaluate_point(runners[0], point, agent, methods, oracle, tol) for point in points]
    else:
        import workers as pool

        halt = threading.Event()  # a failed point or Ctrl-C ends the other workers' encodes
        runners = [Runner(out_dir, settings, k, halt.is_set) for k in range(workers)]

        def run(k: int, point: Point) -> tuple[list[RunRecord], OracleResult | None]:
            try:
                return _evaluate_point(runners[k], point, agent, methods, oracle, tol)
            except BaseException:
                halt.set()
                raise

        done = pool.run_pool(points, workers, run, halt.is_set, halt)  # type: ignore[assignment]
    for result in done:
        assert result is not None  # a point not run means an exception, raised above
        runs, oracle_result = result
        report.runs += runs
        if oracle_result is not None:
            report.oracles.append(oracle_result)
    report.seconds = time.monotonic() - t0
    report.encodes = sum(r.count for r in runners)
    return report


_log_lock = threading.Lock()


def _evaluate_point(
    runner: Runner,
    point: Point,
    agent: AgentBundle | None,
    methods: Sequence[str],
    oracle: OracleSettings | None,
    tol: float,
) -> tuple[list[RunRecord], OracleResult | None]:
    """Every method's encode of one (clip, target) point, in the report's order, and the oracle's result."""
    from learners import ZeroDeltaLearner

    settings, runs = runner.settings, []
    pass1_s = runner.first_pass(point)
    base, _ = runner.protocol_encode(point, "baseline", ZeroDeltaLearner(), 1, tol, "baseline")
    if not base.ok:
        raise RuntimeError(f"baseline encode failed: {base.message}")
    # "No agent": the wait for the Δ=0 answers is protocol overhead, not encoding.
    base.encode_s += pass1_s - base.agent_s
    runs.append(base)
    if "agent" in methods and agent is not None:
        rec, _ = runner.protocol_encode(point, "agent", agent.learner, agent.max_delta_qp, tol, "agent")
        rec.encode_s += pass1_s
        runs.append(rec)
        if not rec.ok:
            log.error("%s", rec.message)
    if "codec_rc" in methods:
        runs.append(runner.plain_encode(point, "codec_rc", ["--rc-mode", "2"], "codec_rc"))
    if "codec_crf" in methods:
        lo, hi = CRF_RANGE[settings.codec]
        crf = min(max(round(float(np.mean([m.qp for m in base.minigops]))), lo), hi)
        rec = runner.plain_encode(point, "codec_crf", ["--rc-mode", "3", "--crf", str(crf)], "codec_crf")
        rec.message = rec.message if not rec.ok else f"CRF {crf}"
        runs.append(rec)
    result = None
    if oracle is not None:
        result = run_oracle(runner, point, base, oracle, tol)
        result.record.encode_s += pass1_s
        runs.append(result.record)
    with _log_lock:  # one point's lines together, whichever worker ran it
        log.info("%s @ %g kbps (%d frames)", point.video.name, point.target_kbps, point.video.frames)
        for r in runs:
            _log_run(r)
    return runs, result


def _log_run(r: RunRecord) -> None:
    if not r.ok:
        log.warning("  %-9s failed: %s", r.method, r.message[:300])
        return
    log.info("  %-9s %8.1f kbps (%+6.2f%%)  PSNR-Y %.3f dB  mean %.3f dB  SSIM-Y %.4f  %.2f s",
             r.method, r.kbps, 100 * r.error, r.psnr_y, r.psnr_y_frame_mean, r.ssim_y, r.encode_s)  # fmt: skip


# ----------------------------------------------------------------------------- command line


def _floats(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


class OneDefaultHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to a flag's help unless the help already says what its default means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


def build_parser(oracle_mode: bool) -> argparse.ArgumentParser:
    prog = "evaluate.py oracle" if oracle_mode else "evaluate.py"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=OneDefaultHelp)  # fmt: skip
    optional = " (optional: to compare)" if oracle_mode else ""
    p.add_argument("--load-checkpoint", default="",
                   help="policy file or main.py checkpoint, or a shipped policy by name (x264) "
                        "(default: policies/CODEC.pt)" + optional)  # fmt: skip
    p.add_argument("--inputs", action="append", required=True,
                   help="directory of clips, glob or file (repeatable)")  # fmt: skip
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bitrates", type=_floats, help="target rates, kbit/s, comma-separated (same for every clip)")
    default_bpp = ",".join(map(str, DEFAULT_BPP))
    g.add_argument("--bpp", type=_floats,
                   help=f"target bits per luma pixel, comma-separated (default: {default_bpp})")  # fmt: skip
    p.add_argument("--codec", choices=("svtav1", "x264", "vp9"), default="svtav1",
                   help="built-in encoder's codec; with --encoder: which shipped policy answers")  # fmt: skip
    p.add_argument("--encoder", default="", help="your own encoder command, split like a shell (as main.py "
                   "--encoder); numbers from the protocol's feedback alone (default: built-in)")  # fmt: skip
    p.add_argument("--encoder-args", default="", metavar="ARGS",
                   help="with --encoder: '|'-separated arguments for every encode (codec, GOP, preset)")  # fmt: skip
    p.add_argument("--encoder-rl-args", default=encoder_proc.DEFAULT_RL_ARGS, metavar="T",
                   help="protocol arguments, {rl_dir} and {session} filled (as main.py)")  # fmt: skip
    p.add_argument("--preset", type=int, default=None, help="codec speed preset (default: the encoder's own)")
    p.add_argument("--layer-offset-scale", type=float, default=1.0, metavar="S",
                   help="built-in encoder: temporal-layer QP offsets times S, both passes (BENCHMARKS.md §2.4.36)")
    p.add_argument("--key-probe", action="store_true",
                   help="built-in encoder: --key-probe in every agent encode, for a policy that reads the key probe "
                        "(PROTOCOL.md §4.1.2; svtav1, x264)")  # fmt: skip
    p.add_argument("--frames", type=int, default=0, help="frames to code per clip (0 = all)")
    p.add_argument("--keyint", type=int, default=64, help="GOP length, frames")
    p.add_argument("--mini-gop", type=int, default=8, help="mini-GOP length, frames")
    p.add_argument("--input-res", default=None, help="WxH of raw .yuv inputs")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--plot-video", default=None, help="clip for the per-mini-GOP plots (default: the first)")
    if not oracle_mode:
        p.add_argument("--oracle", action="store_true", help="also run the oracle search (slow: see its cost)")
        p.add_argument("--skip-codec-rc", action="store_true",
                       help="leave out the codec's own rate control (codec_rc and codec_crf)")  # fmt: skip
    p.add_argument("--oracle-steps", type=_ints, default=OracleSettings.steps, help="oracle step sizes, QP")
    p.add_argument("--oracle-sweeps", type=int, default=OracleSettings.sweeps, help="oracle passes per step size")
    p.add_argument("--oracle-max-offset", type=int, default=None,
                   help="oracle |offset| bound, QP (default: the checkpoint's --max-delta-qp, else 4)")  # fmt: skip
    p.add_argument("--oracle-overshoot-db", type=float, default=OracleSettings.overshoot_db,
                   help="oracle: penalty mu in PSNR-Y - mu * max(0, bits/budget - 1), dB")  # fmt: skip
    p.add_argument("--encoder-timeout", type=float, default=60.0, help="seconds without a protocol file")
    p.add_argument("--workers", type=int, default=1,
                   help="(clip, target) points encoded at once, each worker in OUT/rl_io/wK; same report")  # fmt: skip
    p.add_argument("--device", default="cpu", help="where the agent's networks run")
    p.add_argument("--log-level", type=int, choices=(0, 1, 2, 3), default=1)
    return p


DASH_VALUE_FLAGS = ("--encoder-args", "--encoder-rl-args")  # values that start with '--'


def named_agent(value: str) -> str:
    """--load-checkpoint's file: a path, or a shipped policy's name (policy.named); "" stays ""."""
    import policy

    return str(policy.named(value)) if value else ""


def default_policy(codec: str, oracle_mode: bool) -> str:
    """The shipped policy for `codec` when no checkpoint is given ('' in oracle mode or when none ships)."""
    import policy

    path = policy.shipped_policy(codec)
    if oracle_mode or not path.is_file():
        return ""
    log.info("no --load-checkpoint: evaluating the shipped policy %s", path)
    return str(path)


def _interrupt(signum: int, _frame: Any) -> None:
    # SIGTERM as Ctrl-C: run_encode's cleanup then ends the running encoder's process group.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    oracle_mode = bool(argv) and argv[0] == "oracle"
    if oracle_mode:
        argv = argv[1:]
    ns = build_parser(oracle_mode).parse_args(encoder_proc.glue_dash_values(argv, DASH_VALUE_FLAGS))
    from progress import setup_logging

    setup_logging(ns.log_level)
    settings = EvalSettings(codec=ns.codec, frames=ns.frames, preset=ns.preset, keyint=ns.keyint,
                            mini_gop=ns.mini_gop, layer_offset_scale=ns.layer_offset_scale, input_res=ns.input_res,
                            key_probe=ns.key_probe,
                            encoder_timeout_s=ns.encoder_timeout, device=ns.device, encoder=ns.encoder,
                            encoder_args=tuple(t for t in ns.encoder_args.split("|") if t),
                            rl_args=ns.encoder_rl_args)  # fmt: skip
    try:
        if ns.frames < 0:
            raise ValueError(f"--frames must be >= 0, got {ns.frames}")
        if ns.key_probe and (error := key_probe_error(ns.codec, ns.encoder)):
            raise ValueError(error)
        if ns.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {ns.workers}")
        if not 0 <= ns.layer_offset_scale <= 3 or (ns.encoder and ns.layer_offset_scale != 1.0):
            raise ValueError(f"--layer-offset-scale: want a number in [0, 3], for the built-in encoder only "
                             f"(got {ns.layer_offset_scale})")
        videos = probe_videos(find_inputs(ns.inputs), settings)
        agent_path = named_agent(ns.load_checkpoint) or default_policy(ns.codec, oracle_mode)
        if not agent_path and not oracle_mode:
            raise ValueError(f"--load-checkpoint: none given and no policy ships for {ns.codec} (policies/)")
        agent = load_agent(agent_path, ns.device) if agent_path else None
        # A policy that reads the probes' zero encode (make_policy.py --key-pick) gets it: --probe-zero.
        settings.probe_zero = ns.key_probe and agent is not None and reads_probe_zero(agent.learner)
        # The encodes' protocol directory: created 0700; RlDirError if others may write to it.
        protocol.prepare_rl_dir(Path(ns.out) / "rl_io", flag="--out")
    except (ValueError, checkpoint.CheckpointError) as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2
    targets = {v.name: targets_for(v, ns.bitrates, ns.bpp) for v in videos}
    oracle = None
    if oracle_mode or ns.oracle:
        max_offset = ns.oracle_max_offset or (agent.max_delta_qp if agent else 4)
        oracle = OracleSettings(max_offset=max_offset, steps=ns.oracle_steps, sweeps=ns.oracle_sweeps,
                                overshoot_db=ns.oracle_overshoot_db)  # fmt: skip
    if oracle_mode:
        methods: tuple[str, ...] = ("agent",) if agent else ()
    else:
        methods = ("agent",) if ns.skip_codec_rc else ("agent", "codec_rc", "codec_crf")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = evaluate(videos, targets, Path(ns.out), settings, agent, methods, oracle, ns.workers)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted: no report written")
        return 130
    report.command = " ".join(["python evaluate.py"] + (["oracle"] if oracle_mode else []) + argv)
    files = write_report(report, Path(ns.out), ns.plot_video)
    print(Path(ns.out, "report.md").read_text())
    log.info("wrote %s", ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
