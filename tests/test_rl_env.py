"""rl_env.EncoderEnv on the real built-in encoder (x264, carphone, 32 frames): API checks, rollouts, SB3."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from inputs import bundled_clip
from io_runner import EncoderFailure
from reward import VideoBaseline
from rl_env import EncoderEnv
from state import OBS_DIM

CLIP = str(bundled_clip("carphone_pristine.mp4"))
# 32 frames, GOP 16, mini-GOP 4: 2 episodes of 4 steps per encode. One thread keeps x264
# deterministic, which check_env's step-determinism check needs.
ARGS = ["--input", CLIP, "--codec", "x264", "--frames", "32", "--keyint", "16", "--mini-gop", "4",
        "--bitrate", "150", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> VideoBaseline:
    """The Δ=0 baseline, computed once by an env at construction and shared by the other tests."""
    env = EncoderEnv(ARGS, rl_dir=tmp_path_factory.mktemp("base") / "rl_io")
    env.close()
    assert len(env.baseline.mini_gops) == 8 and env.encodes == 0
    return env.baseline


@pytest.fixture
def env(tmp_path: Path, baseline: VideoBaseline) -> Iterator[EncoderEnv]:
    e = EncoderEnv(ARGS, rl_dir=tmp_path / "rl_io", baseline=baseline)
    yield e
    e.close()


def run_episode(env: EncoderEnv, action: float) -> list[tuple[np.ndarray, float, bool, bool, dict]]:
    out = []
    while not (out and out[-1][2]):
        out.append(env.step(np.array([action], dtype=np.float32)))
    return out


def test_check_env(env: EncoderEnv) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the passive checker's warnings count as failures too
        check_env(env, skip_render_check=True)


def test_rollout_gops_are_episodes_and_encodes_continue(env: EncoderEnv) -> None:
    obs, info = env.reset()
    assert obs.shape == (OBS_DIM,) and obs.dtype == np.float32 and obs in env.observation_space
    assert (info["mg_index"], info["gop_index"]) == (0, 0)
    steps = run_episode(env, 0.0)
    assert len(steps) == 4 and [s[2] for s in steps] == [False, False, False, True]
    assert not any(s[3] for s in steps)
    # Δ = 0 reproduces the baseline exactly (one x264 thread is deterministic): reward 0.
    assert [s[4]["delta_qp"] for s in steps] == [0, 0, 0, 0]
    assert all(s[1] == 0.0 for s in steps)
    last = steps[-1][4]
    assert last["gop_bits"] == sum(s[4]["bits"] for s in steps)
    assert last["gop_bits_ratio"] == pytest.approx(1.0 + sum(s[4]["cost"] for s in steps))

    obs, info = env.reset()  # the same encode goes on with GOP 1
    assert (info["mg_index"], info["gop_index"]) == (4, 1) and env.encodes == 1
    steps = run_episode(env, 1.0)  # base QP + 4 everywhere: fewer bits, lower quality
    assert [s[4]["delta_qp"] for s in steps] == [4, 4, 4, 4]
    assert sum(s[1] for s in steps) < 0 and sum(s[4]["cost"] for s in steps) < 0

    obs, info = env.reset()  # the encode has ended: a new one starts
    assert (info["mg_index"], info["gop_index"]) == (0, 0) and env.encodes == 2


def test_truncated_episode_then_reset_goes_to_next_gop(env: EncoderEnv) -> None:
    env.reset()
    env.step(np.array([-1.0], dtype=np.float32))  # 1 of 4 steps, then cut short
    obs, info = env.reset()
    assert (info["mg_index"], info["gop_index"]) == (4, 1) and env.encodes == 1


def test_cost_lambda_penalises_reward(tmp_path: Path, baseline: VideoBaseline) -> None:
    with EncoderEnv(ARGS, rl_dir=tmp_path / "rl_io", baseline=baseline, cost_lambda=2.0) as env:
        env.reset(seed=0)
        _, r, _, _, info = env.step(np.array([-1.0], dtype=np.float32))
    assert info["cost"] != 0.0
    assert r == pytest.approx(info["reward"] - 2.0 * info["cost"])


def test_close_ends_the_encoder_process_group(env: EncoderEnv) -> None:
    env.reset()
    pgid = env._proc.pid  # the encoder leads its own process group
    env.close()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    env.close()  # twice is fine


def test_encoder_failure_names_encoder_and_video(tmp_path: Path, baseline: VideoBaseline) -> None:
    bad = [*ARGS[:-2], "--threads", "-1"]  # refused by the encoder's argument check (exit 2)
    with EncoderEnv(bad, rl_dir=tmp_path / "rl_io", baseline=baseline) as env:
        with pytest.raises(EncoderFailure, match=r"carphone_pristine.*--threads"):
            env.reset()
        assert env._proc is None  # the failed encode was cleaned up


def test_lookahead_encoder_is_refused(tmp_path: Path, baseline: VideoBaseline) -> None:
    # A fake encoder that writes request 1 before feedback 0 (allowed by PROTOCOL.md §3).
    fake = tmp_path / "lookahead_encoder.py"
    fake.write_text(
        textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        import json, protocol
        from pathlib import Path
        rl = Path(sys.argv[sys.argv.index("--rl-dir") + 1])
        req = json.loads(Path(sys.argv[1]).read_text())
        for k in (0, 1):
            req.update(mg_index=k, mg_in_gop=k, first_frame=4 * k)
            protocol.write_atomic(protocol.request_path(rl, k), json.dumps(req))
            while not protocol.reply_path(rl, k).exists():
                time.sleep(0.001)
        time.sleep(30)
    """)
    )
    request = {
        "version": 1, "session": "", "codec": "fake", "mg_index": 0, "gop_index": 0, "mg_in_gop": 0,
        "mgs_in_gop": 4, "gop_frames": 16, "first_frame": 0, "frame_count": 4, "frame_types": ["INTER"] * 4,
        "temporal_layers": [0] * 4, "base_qp": 30, "qp_min": 0, "qp_max": 51, "fp_bpp": 0.1,
        "lookahead_fp_bpp": [], "gop_bits_spent": 0, "gop_bits_budget": 80000, "total_bits_spent": 0,
        "total_bits_budget": 160000, "target_kbps": 150.0, "fps": 30.0, "width": 176, "height": 144,
        "total_frames": 32,
    }  # fmt: skip
    (tmp_path / "rq.json").write_text(json.dumps(request))
    encoder = f"{sys.executable} {fake} {tmp_path / 'rq.json'}"
    with EncoderEnv(["--input", CLIP], encoder=encoder, rl_dir=tmp_path / "rl_io", baseline=baseline) as env:
        env.reset()
        with pytest.raises(EncoderFailure, match="simple order"):
            env.step(np.zeros(1, dtype=np.float32))


def test_stable_baselines3_sac_learns_on_it(env: EncoderEnv) -> None:
    from stable_baselines3 import SAC

    # one torch thread, as in every test process (conftest.py): a second one only fights the encoder for the 2nd core
    model = SAC("MlpPolicy", env, learning_starts=8, batch_size=8, policy_kwargs={"net_arch": [32, 32]},
                seed=0, device="cpu")  # fmt: skip
    model.learn(total_timesteps=24)  # 3 encodes, 6 episodes, 16 gradient steps
    assert model.num_timesteps == 24 and model._n_updates > 0
    action, _ = model.predict(env.reset()[0], deterministic=True)
    assert action.shape == (1,) and -1.0 <= float(action[0]) <= 1.0
