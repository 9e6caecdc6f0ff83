"""main.py --workers N on real encoder processes: training, the replay ratio, resume, a killed encoder, SIGINT.

Plus unit tests of workers.py's pieces (the learner thread's replay ratio, the pool's order).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_faults import FAKE, error_for, fake_videos, procs_in, run_main, start_and_signal

import checkpoint
import workers
from config import SACConfig
from inputs import bundled_clip
from learner_process import LearnerProcess
from learners import Counters
from replay import ReplayBuffer
from sac_agent import SACAgent
from state import OBS_DIM

CLIP = bundled_clip("carphone_pristine.mp4")
BASE = f"--input|{CLIP}|--codec|x264|--frames|32|--keyint|16|--mini-gop|4"
# Three videos (two GOPs of four mini-GOPs each) for two workers: one of them codes two.
VIDEOS = [v for rate in (150, 200, 120) for v in ("--videos", f"{BASE}|--bitrate|{rate}|--o|out/c{rate}.264")]
FAST = ["--learning-starts", "6", "--batch-size", "8", "--updates-per-step", "2", "--log-level", "2",
        "--no-tensorboard", "--save-replay-buffer"]  # fmt: skip


@pytest.mark.parametrize("learner", ["thread", "process"])
def test_two_workers_train_end_to_end_and_resume(tmp_path: Path, learner: str) -> None:
    res = run_main(tmp_path, *VIDEOS, "--workers", "2", "--epochs", "2", "--ckpt-interval", "1", "--rl-dir", "rl_io",
                   "--learner", learner, *FAST, timeout=240)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"2 workers (each in rl_io/wK), learning in a {learner} of its own" in res.stderr
    rows = json.loads((tmp_path / "outputs" / "report_train.json").read_text())
    assert len(rows) == 6 and all(r["gops"] == 2 for r in rows)
    assert {r["worker"] for r in rows} == {0, 1}  # both workers coded videos
    assert sorted(p.name for p in (tmp_path / "rl_io").iterdir() if p.is_dir()) == ["w0", "w1"]
    ck = checkpoint.load(tmp_path / "checkpoints" / "checkpoint_epoch_2.pt")
    # Every GOP of both workers is in the one buffer: 3 videos x 2 GOPs x 4 mini-GOPs x 2 epochs.
    assert ck["replay"]["size"] == 48 and ck["counters"]["gops"] == 12 and ck["counters"]["steps"] == 48
    # The replay ratio is the user's: 2 updates per transition stored once the buffer is ready
    # (8 = the batch size, after the second GOP): 2 x (48 - 4), whatever the order GOPs came in.
    assert ck["agent"]["num_updates"] == 2 * (48 - 4)
    # Resumable from its checkpoints: epoch 2 again from epoch 1's checkpoint.
    res = run_main(tmp_path, *VIDEOS, "--workers", "2", "--epochs", "2", "--load-checkpoint",
                   "checkpoints/checkpoint_epoch_1.pt", "--ckpt-dir", "ck2", "--learner", learner, *FAST,
                   timeout=240)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "resumed from checkpoints/checkpoint_epoch_1.pt (epoch 1, 24 transitions" in res.stderr
    again = checkpoint.load(tmp_path / "ck2" / "checkpoint_epoch_2.pt")
    assert again["replay"]["size"] == 48 and again["agent"]["num_updates"] == 2 * (48 - 4)


def test_a_killed_encoder_ends_only_its_workers_encode(tmp_path: Path) -> None:
    # fake_encoder.py's "kill" SIGKILLs itself in its second GOP; the other worker codes the rest.
    res = run_main(tmp_path, "--encoder", FAKE, *fake_videos(tmp_path, ("kill", "ok", "reorder", "careless")),
                   "--workers", "2", "--epochs", "1", *FAST)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "(exit code -9)" in error_for(res.stderr, "kill")
    rows = json.loads((tmp_path / "outputs" / "report_train.json").read_text())
    # (the log says why, should an encode other than "kill" have failed)
    assert sorted(r["video"] for r in rows) == ["careless", "ok", "reorder"], res.stderr[-3000:]
    assert all(r["gops"] == 2 for r in rows)
    ck = checkpoint.load(tmp_path / "checkpoints" / "checkpoint_epoch_1.pt")
    assert ck["replay"]["size"] == 4 + 3 * 8  # the killed encode's complete first GOP only
    assert procs_in(tmp_path) == []


@pytest.mark.parametrize("learner", ["thread", "process"])
def test_sigint_with_two_workers_ends_every_encoder_and_checkpoints(tmp_path: Path, learner: str) -> None:
    long = f"--input|{CLIP}|--codec|x264|--frames|96|--keyint|16|--mini-gop|4"
    videos = [v for rate in (150, 200) for v in ("--videos", f"{long}|--bitrate|{rate}|--o|out/c{rate}.264")]
    # Both workers' encoders are running once both training logs exist.
    ready = tmp_path / "outputs" / "logs" / "carphone_pristine_1.e1.log"
    args = [*videos, "--workers", "2", "--epochs", "3", "--learner", learner, *FAST]
    code, seconds, err = start_and_signal(tmp_path, signal.SIGINT, ready, args)
    assert code == 130, err
    assert seconds < 10
    assert "received SIGINT" in err and "Traceback" not in err
    # Encoders and the learner process (same working directory). multiprocessing's resource tracker
    # (started with the learner process) sees main.py's exit on its pipe and ends a moment later.
    deadline = time.monotonic() + 3.0
    while (left := procs_in(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
    [ck_path] = (tmp_path / "checkpoints").glob("checkpoint_interrupted_epoch_*.pt")
    ck = checkpoint.load(ck_path)
    assert ck["epoch"] == int(ck_path.stem.rsplit("_", 1)[1]) - 1
    assert ck["replay"]["size"] % 4 == 0  # complete GOPs only
    assert not any(t.name.startswith("worker") for t in threading.enumerate())


# ----------------------------------------------------------------------------- units


def small_agent(updates_per_step: int) -> SACAgent:
    cfg = SACConfig(hidden_sizes=(8,), batch_size=4, learning_starts=4, updates_per_step=updates_per_step)
    return SACAgent(OBS_DIM, 1, cfg, "cpu", seed=0)


def fake_gop(rng: np.random.Generator, n: int) -> list:
    from io_runner import Step

    steps = []
    for _ in range(n):
        st = Step(request=None, obs=rng.normal(size=OBS_DIM).astype(np.float32),  # type: ignore[arg-type]
                  action=rng.uniform(-1, 1, 1).astype(np.float32), qp=30, handshake_s=0.0)  # fmt: skip
        st.reward, st.cost = float(rng.normal()), float(rng.normal())
        steps.append(st)
    return steps


@pytest.mark.parametrize("hub_class", [workers.LearnerThread, LearnerProcess])
def test_learner_keeps_the_replay_ratio_and_publishes_weights(hub_class) -> None:
    """The learner thread and the learner process: the same steps owed, the same weights published."""
    agent = small_agent(updates_per_step=3)
    hub = hub_class(agent, ReplayBuffer(100, OBS_DIM, 1), Counters(), weights_every=5)
    learners = [hub.worker(k, seed=k) for k in range(2)]
    hub.start()
    try:
        rng = np.random.default_rng(0)
        for k in range(6):  # GOPs of 4 from alternating workers
            learners[k % 2].store_episode(fake_gop(rng, 4))
            learners[k % 2].end_gop(0.1)
        hub.drain()
    finally:
        hub.stop()
    assert agent.num_updates == 3 * (24 - 0)  # ready (4 transitions) from the first GOP on
    assert hub.counters.gops == 6 and len(hub.buffer) == 24
    assert agent.lam == pytest.approx(min(0.1 * 6 * agent.cfg.lambda_lr + agent.cfg.lambda_init, agent.cfg.lambda_max))
    assert hub.weights.version == 70  # the last multiple of 5
    obs = np.zeros(OBS_DIM, np.float32)
    learners[0].learning = False
    learners[0].choose(obs)  # loads the published weights
    mine = learners[0].actor.state_dict()
    assert mine.keys() == hub.weights.actor.keys()
    assert all(torch.equal(mine[k], hub.weights.actor[k]) for k in mine)


def test_run_pool_returns_results_in_order_and_stops_taking_work() -> None:
    out = workers.run_pool(list(range(7)), 3, lambda k, x: (k, x * x), lambda: False)
    assert [r[1] for r in out] == [x * x for x in range(7)] and {r[0] for r in out} <= {0, 1, 2}
    done: list[int] = []

    def fn(k: int, x: int) -> int:
        done.append(x)
        return x

    assert workers.run_pool([1, 2, 3], 2, fn, lambda: len(done) >= 1).count(None) >= 1
    with pytest.raises(ZeroDivisionError):
        workers.run_pool([1, 0], 1, lambda k, x: 1 // x, lambda: False)


def test_evaluate_on_two_workers_gives_the_one_worker_report(tmp_path: Path) -> None:
    import eval_runs
    import evaluate as ev
    import oracle_search
    import policy

    settings = eval_runs.EvalSettings(codec="x264", frames=16, keyint=16, mini_gop=4)
    videos = eval_runs.probe_videos([CLIP], settings)
    targets = {videos[0].name: [100.0, 300.0]}
    agent = ev.load_agent(policy.shipped_policy("x264"))
    oracle = oracle_search.OracleSettings(max_offset=4, steps=(2,), sweeps=1)
    reports = [ev.evaluate(videos, targets, tmp_path / f"w{n}", settings, agent, ("agent",), oracle, workers=n)
               for n in (1, 2)]  # fmt: skip
    timing = ("encode_s", "agent_s", "wall_s")
    rows = [[{k: v for k, v in r.row().items() if k not in timing} for r in rep.runs] for rep in reports]
    assert len(rows[0]) == 6 and rows[0] == rows[1]  # baseline, agent, oracle at 2 targets; same order
    assert [o.offsets for o in reports[0].oracles] == [o.offsets for o in reports[1].oracles]
    assert reports[0].encodes == reports[1].encodes
    assert sorted(p.name for p in (tmp_path / "w2" / "rl_io").iterdir()) == ["w0", "w1"]


def test_ray_local_trains_on_two_actors_and_sigint_leaves_nothing_behind(tmp_path: Path) -> None:
    # One local Ray instance (its start-up is most of this test's ~30 s): epoch 1 completes on two
    # actors, then SIGINT in a later epoch must end every encoder, every actor and Ray itself.
    pytest.importorskip("ray")
    ready = tmp_path / "checkpoints" / "checkpoint_epoch_1.pt"
    code, seconds, err = start_and_signal(tmp_path, signal.SIGINT, ready, [
        *VIDEOS, "--ray", "local", "--workers", "2", "--epochs", "50", "--ckpt-interval", "1", *FAST])  # fmt: skip
    assert code == 130, err
    assert "2 Ray actor(s) on" in err and "received SIGINT" in err and "Traceback" not in err
    assert seconds < 30
    ck = checkpoint.load(ready)
    # Both actors' GOPs in the one buffer, at the user's replay ratio (as with local workers).
    assert ck["replay"]["size"] == 24 and ck["counters"]["gops"] == 6 and ck["agent"]["num_updates"] == 2 * (24 - 4)
    rows = json.loads((tmp_path / "outputs" / "report_train.json").read_text())
    assert {r["worker"] for r in rows if r["epoch"] == 1} == {0, 1}
    [interrupted] = (tmp_path / "checkpoints").glob("checkpoint_interrupted_epoch_*.pt")
    assert checkpoint.load(interrupted)["replay"]["size"] % 4 == 0
    deadline = time.monotonic() + 20  # Ray's own processes exit shortly after ray.shutdown()
    while procs_in(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert procs_in(tmp_path) == []
