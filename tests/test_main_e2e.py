"""main.py end to end on real encoder processes: training, TensorBoard, checkpoints, exact resume, CLI errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from script_run import run_script

import checkpoint
from inputs import bundled_clip

ROOT = Path(__file__).resolve().parent.parent
CLIP = bundled_clip("carphone_pristine.mp4")
# 32 frames, GOP 16, mini-GOP 4: 8 steps, 2 episodes per encode; x264 keeps the suite fast.
VIDEO = f"--input|{CLIP}|--codec|x264|--frames|32|--keyint|16|--mini-gop|4|--bitrate|150|--o|out/car.264"
FAST = ["--learning-starts", "6", "--batch-size", "8", "--updates-per-step", "2", "--log-level", "2"]


def run_main(tmp: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def agent_weights(path: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.load(path)["agent"]
    return {f"{net}.{k}": v for net in ("actor", "q1", "q2", "qc") for k, v in state[net].items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    res = run_main(tmp, "--videos", VIDEO, "--epochs", "2", "--ckpt-interval", "1", "--save-replay-buffer", *FAST)
    assert res.returncode == 0, res.stderr
    (tmp / "main.err").write_text(res.stderr)
    return tmp


def test_progress_off_a_terminal_is_one_line_per_epoch(trained):
    # stderr is a pipe here: no carriage returns, one tqdm line per epoch, counted in mini-GOPs.
    err = (trained / "main.err").read_text()
    assert "\r" not in err
    lines = [line for line in err.splitlines() if "mini-GOP" in line and "%|" in line]
    assert len(lines) == 2, err
    for epoch, line in enumerate(lines, 1):
        assert re.search(rf"INFO epoch {epoch}/2: 100%\|.*\| 8/8 \[.*mini-GOP/s, λ \d+\.\d+, bitrate error [+-]", line)


def test_training_writes_checkpoints_tensorboard_and_report(trained):
    ck = checkpoint.load(trained / "checkpoints" / "checkpoint_epoch_2.pt")
    assert ck["epoch"] == 2
    assert ck["counters"]["steps"] == 16 and ck["counters"]["gops"] == 4
    assert ck["agent"]["num_updates"] > 0
    assert ck["replay"] is not None
    events = list((trained / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"constraint/lambda", "epoch/abs_bitrate_error", "epoch/delta_psnr_y", "train/critic_loss"} <= tags
    assert len(acc.Scalars("constraint/lambda")) == 4  # one λ update per GOP
    report = json.loads((trained / "outputs" / "report_train.json").read_text())
    assert [r["epoch"] for r in report] == [1, 2]
    assert (trained / "out" / "car.264").stat().st_size > 0
    base = json.loads((trained / "outputs" / "baseline_stats.json").read_text())
    (entry,) = base["videos"].values()
    assert len(entry["mini_gops"]) == 8


def test_resume_is_exact(trained, tmp_path):
    # 1 epoch, then resume for the 2nd: identical weights to the 2-epoch run.
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "baseline_stats.json").write_text((trained / "outputs" / "baseline_stats.json").read_text())
    res = run_main(tmp_path, "--videos", VIDEO, "--epochs", "1", "--save-replay-buffer", *FAST)
    assert res.returncode == 0, res.stderr
    res = run_main(
        tmp_path, "--videos", VIDEO, "--epochs", "2", "--save-replay-buffer",
        "--load-checkpoint", "checkpoints/checkpoint_epoch_1.pt", *FAST,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "resumed from checkpoints/checkpoint_epoch_1.pt" in res.stderr
    a = agent_weights(trained / "checkpoints" / "checkpoint_epoch_2.pt")
    b = agent_weights(tmp_path / "checkpoints" / "checkpoint_epoch_2.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert checkpoint.load(tmp_path / "checkpoints" / "checkpoint_epoch_2.pt")["agent"]["lam"] == checkpoint.load(
        trained / "checkpoints" / "checkpoint_epoch_2.pt"
    )["agent"]["lam"]


def test_infer_mode_is_deterministic_and_does_not_learn(trained):
    ck = trained / "checkpoints" / "checkpoint_epoch_2.pt"
    before = agent_weights(ck)
    files_before = sorted(p.name for p in ck.parent.iterdir())
    qps = []
    for _ in range(2):
        res = run_main(trained, "--videos", VIDEO, "--mode", "infer", "--load-checkpoint", str(ck), "--epochs", "1",
                       "--log-level", "1")  # fmt: skip
        assert res.returncode == 0, res.stderr
        rows = json.loads((trained / "outputs" / "report_infer.json").read_text())
        qps.append((rows[0]["mean_qp"], rows[0]["kbps"]))
    assert qps[0] == qps[1]
    assert sorted(p.name for p in ck.parent.iterdir()) == files_before  # infer writes no checkpoint
    after = agent_weights(ck)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "args,match",
    [
        (["--videos", "--input||x"], "--videos: empty argument"),
        (["--videos", "--input|/nonexistent/in.yuv"], "input file /nonexistent/in.yuv"),
        (["--videos", VIDEO, "--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["--videos", VIDEO, "--device", "cuda:7"], "--device cuda:7"),
        (["--videos", VIDEO, "--encoder", "/nonexistent/qav1enc"], "--encoder: program '/nonexistent/qav1enc'"),
        (["--videos", VIDEO, "--epochs", "0"], "--epochs must be >= 1"),
        (["--use-dataset", "--dataset-inputs", "/nonexistent/*.yuv"], "--dataset-inputs: no file matches"),
        (["--videos", VIDEO, "--load-checkpoint", "missing.pt"], "missing.pt does not exist"),
        (["--videos", VIDEO, "--pretrain-critics", "o.jsonl"], "--pretrain-critics o.jsonl: needs train mode and"),
        (["--videos", VIDEO, "--load-checkpoint", "x264", "--pretrain-critics", "o.jsonl"], "o.jsonl: no such file"),
    ],
)
def test_bad_cli_input_fails_before_any_encoder_starts(tmp_path, args, match):
    res = run_script(ROOT / "main.py", *args, cwd=tmp_path)  # in this process: a refusal needs no interpreter
    assert res.returncode == 2
    assert match in res.stderr
    assert not (tmp_path / "outputs" / "logs").exists()  # no encoder ran
    assert not (tmp_path / "checkpoints").exists()


def test_truncated_checkpoint_is_a_clear_error_and_is_not_overwritten(trained, tmp_path):
    src = (trained / "checkpoints" / "checkpoint_epoch_2.pt").read_bytes()
    bad = tmp_path / "checkpoints" / "checkpoint_epoch_2.pt"
    bad.parent.mkdir()
    bad.write_bytes(src[: len(src) // 2])
    res = run_main(tmp_path, "--videos", VIDEO, "--load-checkpoint", str(bad), "--epochs", "3", timeout=60)
    assert res.returncode == 2
    assert f"{bad} is not a readable checkpoint" in res.stderr
    assert bad.read_bytes() == src[: len(src) // 2]


def test_raw_input_of_a_wrong_size_is_an_input_error(tmp_path):
    # Built-in encoder: checked before any encoder starts, exit 2 like every other input error.
    (tmp_path / "bad.yuv").write_bytes(b"\0" * 100_000)
    res = run_main(tmp_path, "--videos", "--input|bad.yuv|--input-res|176x144|--bitrate|100", timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("not a whole number of 176x144 8-bit 4:2:0 frames (38016 bytes each)") == 1
    assert not (tmp_path / "outputs" / "logs").exists()
    res = run_main(tmp_path, "--videos", "--input|bad.yuv|--bitrate|100", timeout=60)
    assert res.returncode == 2 and "raw input bad.yuv (video bad) needs --input-res WxH" in res.stderr


def test_encoder_error_names_the_interpreter_and_is_said_once(tmp_path):
    # Another encoder command: the encoder itself reports the error (end.json and its stderr).
    (tmp_path / "bad.yuv").write_bytes(b"\0" * 100_000)
    encoder = f"{sys.executable} -m builtin_encoder"
    res = run_main(tmp_path, "--encoder", encoder, "--videos", "--input|bad.yuv|--input-res|176x144|--bitrate|100",
                   "--no-tensorboard", timeout=60)  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert f"encoder '{Path(sys.executable).name} -m builtin_encoder' for video bad" in res.stderr
    assert res.stderr.count("is not a multiple of one 176x144") == 1


def make_raw_dataset(directory: Path, frames: int = 16) -> None:
    """Two raw sequences of different sizes named Name_WxH_FPS.yuv: carphone and a 96x64 crop of it."""
    from builtin_encoder.codec import YuvFrame
    from builtin_encoder.source import open_source, write_yuv

    directory.mkdir()
    src = open_source(CLIP)
    write_yuv(src.frames(frames), directory / "carphone_176x144_30.yuv")
    crops = (YuvFrame(f.y[:64, :96], f.u[:32, :48], f.v[:32, :48]) for f in src.frames(frames))
    write_yuv(crops, directory / "crop_96x64_25.yuv")


def test_dataset_of_raw_files_of_two_sizes_trains_end_to_end(tmp_path):
    make_raw_dataset(tmp_path / "data")
    args = ["--use-dataset", "--dataset-inputs", "data/*.yuv", "--epochs", "1", "--no-tensorboard", *FAST,
            "--dataset-args", "--bitrate|100|--codec|x264|--keyint|8|--mini-gop|4"]  # fmt: skip
    res = run_main(tmp_path, *args)
    assert res.returncode == 0, res.stderr
    rows = {r["video"]: r for r in json.loads((tmp_path / "outputs" / "report_train.json").read_text())}
    assert sorted(rows) == ["carphone_176x144_30", "crop_96x64_25"]
    assert rows["crop_96x64_25"]["frames"] == 16 and rows["crop_96x64_25"]["gops"] == 2
    assert (tmp_path / "1pass_logs" / "crop_96x64_25.stat").exists()
    # A raw file without size and rate in its name: exit 2 naming it, before any encoder starts.
    (tmp_path / "data" / "foreman.yuv").write_bytes(b"\0" * 38016)
    res = run_main(tmp_path, "--out-dir", "out2", *args)
    assert res.returncode == 2, res.stderr
    assert "raw input data/foreman.yuv has no size and frame rate in its name" in res.stderr
    assert not (tmp_path / "out2").exists()


def test_unreachable_target_is_said_once_and_does_not_wind_up_lambda(tmp_path):
    # Noise at 96x64 cannot be coded in 60 kbit/s by x264, whatever the QP.
    from builtin_encoder.codec import YuvFrame
    from builtin_encoder.source import write_y4m

    rng = np.random.default_rng(0)
    frames = (YuvFrame(rng.integers(0, 256, (64, 96), dtype=np.uint8), rng.integers(0, 256, (32, 48), dtype=np.uint8),
                       rng.integers(0, 256, (32, 48), dtype=np.uint8)) for _ in range(32))  # fmt: skip
    write_y4m(frames, tmp_path / "noise.y4m", 96, 64)
    video = "--input|noise.y4m|--codec|x264|--frames|32|--keyint|16|--mini-gop|4|--bitrate|60|--o|out/noise.264"
    res = run_main(tmp_path, "--videos", video, "--epochs", "2", "--no-tensorboard", *FAST)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("the Δ=0 baseline got") == 1
    assert "for a target of 60 kbps" in res.stderr and "cannot meet this target" in res.stderr
    assert "nan" not in res.stderr
    rows = json.loads((tmp_path / "outputs" / "report_train.json").read_text())
    # GOP 0 overshoots even where the baseline answered the highest QP: λ is kept for it (λ_init 1).
    assert all(r["gops_out_of_reach"] >= 1 and r["bitrate_error"] > 1.0 for r in rows)
    assert all(r["lambda"] <= 1.0 for r in rows)
    assert "(budget out of reach: λ kept)" in res.stderr


def test_policy_file_answers_in_infer_mode_and_starts_training(tmp_path):
    # A policy that always answers +2 QP (a constant actor): infer mode answers exactly that.
    import policy
    from models import Actor
    from state import OBS_DIM

    actor = Actor(OBS_DIM, 1, (8,))
    with torch.no_grad():
        for p in actor.parameters():
            p.zero_()
        actor.net[-1].bias[0] = float(np.arctanh(0.5))  # tanh(mean) = 0.5 -> +2 QP with max_delta_qp 4
    pol = tmp_path / "p.pt"
    policy.save(pol, actor, "x264", 4, 0.02, {"summary": "constant +2"})
    res = run_main(tmp_path, "--videos", VIDEO, "--mode", "infer", "--load-checkpoint", str(pol), "--epochs", "1",
                   "--no-tensorboard", *FAST)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "actor from the policy" in res.stderr and "constant +2" in res.stderr
    (row,) = json.loads((tmp_path / "outputs" / "report_infer.json").read_text())
    assert row["mean_dqp"] == pytest.approx(2.0, abs=0.3)  # +2 except where the QP range clips it
    assert "at equal rate" in res.stderr and not (tmp_path / "checkpoints").exists()
    # Train mode starts SAC with the policy's actor (fine-tuning), here with critics pretrained on oracle
    # records where raising the key QP paid (no gradient step: the checkpoint holds them as fitted).
    from test_critic_pretrain import sample_records
    from test_imitation import _step

    import critic_pretrain
    import imitation
    import oracle_records
    from models import QNetwork

    recs = tmp_path / "oracle.jsonl"
    recs.write_text("".join(json.dumps(r) + "\n" for r in sample_records()))
    res = run_main(tmp_path, "--videos", VIDEO, "--load-checkpoint", str(pol), "--epochs", "1", "--no-tensorboard",
                   "--pretrain-critics", str(recs), *FAST, "--updates-per-step", "0")  # fmt: skip
    assert res.returncode == 0, res.stderr
    spec = imitation.SHIPPED_RECIPES["x264"].features.describe()  # the policy's codec's recipe
    assert f"critics from the gain model ({spec}) on 4" in res.stderr
    ck = checkpoint.load(tmp_path / "checkpoints" / "checkpoint_epoch_1.pt")
    assert tuple(ck["config"]["sac"]["hidden_sizes"]) == (8,)
    agent = ck["agent"]
    for name, twin in (("q1_target", "q1"), ("q2_target", "q2")):  # no update ran: targets = critics
        assert all(torch.equal(v, agent[twin][k]) for k, v in agent[name].items()), name
    q1 = QNetwork(OBS_DIM, 1, (8,))
    q1.load_state_dict(agent["q1"])
    obs, _ = oracle_records.observations([_step(0, 30), _step(1, 30)])
    assert critic_pretrain.greedy_offsets(q1, obs[:1], 4)[0] > 0  # the critic valued what the records measured


def test_infer_without_a_checkpoint_uses_the_shipped_policy(tmp_path):
    import policy

    if not policy.shipped_policy("x264").is_file():
        pytest.fail("policies/x264.pt is missing: the README promises a shipped x264 policy")
    res = run_main(tmp_path, "--videos", VIDEO, "--mode", "infer", "--epochs", "1", "--no-tensorboard", *FAST)
    assert res.returncode == 0, res.stderr
    assert f"actor from the policy {policy.shipped_policy('x264')}" in res.stderr


def test_deterministic_evaluation_during_training_is_logged_and_changes_nothing(trained, tmp_path):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "baseline_stats.json").write_text((trained / "outputs" / "baseline_stats.json").read_text())
    res = run_main(tmp_path, "--videos", VIDEO, "--epochs", "2", "--ckpt-interval", "1", "--save-replay-buffer",
                   "--eval-interval", "1", *FAST)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("deterministic policy: mean ΔPSNR-Y at equal rate") == 2
    # The extra encodes draw no random number and learn nothing: the same weights as without them.
    a = agent_weights(trained / "checkpoints" / "checkpoint_epoch_2.pt")
    b = agent_weights(tmp_path / "checkpoints" / "checkpoint_epoch_2.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reward_metric_and_gamma_reach_the_config_and_a_gamma_of_1_is_refused():
    import cli

    parser = cli.build_parser()
    cfg = cli.config_from_args(parser.parse_args(["--reward-metric", "psnr-rd", "--gamma", "0.99"]))
    assert cfg.reward_metric == "psnr-rd" and cfg.sac.gamma == 0.99
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\)"):
        cli.config_from_args(parser.parse_args(["--gamma", "1"]))
    with pytest.raises(SystemExit):  # argparse's own error (exit 2) for a metric it does not know
        parser.parse_args(["--reward-metric", "rate"])
    cfg.reward_metric = "rate"  # a config built in code, not through argparse: validate names the choices
    with pytest.raises(ValueError, match="--reward-metric must be one of psnr, ssim, psnr-rd, got 'rate'"):
        cfg.validate()
