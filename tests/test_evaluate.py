"""evaluate.py: BD-rate math, a tiny report on real encoder processes, and a tiny oracle search."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.interpolate import PchipInterpolator

import bdrate
import eval_report
import eval_runs
import evaluate as ev
import inputs
import learners
import main
import oracle_search
from config import Config
from replay import ReplayBuffer
from sac_agent import SACAgent
from state import OBS_DIM

ROOT = Path(__file__).resolve().parent.parent
CLIP = inputs.bundled_clip("carphone_pristine.mp4")

# VCEG-M33's sample curves (the data shipped with the public Bjøntegaard reference scripts): kbit/s, dB.
ANCHOR = ([686.76, 309.58, 157.11, 85.95], [40.28, 37.18, 34.24, 31.42])
TEST = ([893.34, 407.8, 204.93, 112.75], [40.39, 37.21, 34.17, 31.24])


# ----------------------------------------------------------------------------- BD-rate math


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate_identical_curves_is_zero(method):
    assert bdrate.bd_rate(*ANCHOR, *ANCHOR, method=method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate_of_a_uniform_rate_scale(method):
    rates, quality = ANCHOR
    more = [r * 1.1 for r in rates]
    # A needs 1/1.1 of B's bits at every quality: -9.09 %; and B needs 10 % more than A.
    assert bdrate.bd_rate(rates, quality, more, quality, method=method) == pytest.approx(100 * (1 / 1.1 - 1), abs=1e-9)
    assert bdrate.bd_rate(more, quality, rates, quality, method=method) == pytest.approx(10.0, abs=1e-9)


def test_bd_rate_cubic_matches_the_vceg_m33_sample():
    # The test curve needs 31.40 % more bits than the anchor: VCEG-M33's cubic fit of ln(rate) on
    # PSNR, integrated over the shared [31.42, 40.28] dB (value from an independent numpy evaluation).
    assert bdrate.bd_rate(*TEST, *ANCHOR, method="cubic") == pytest.approx(31.3974, abs=1e-3)
    # The same by brute force: the fitted cubics integrated with the trapezoid rule on a fine grid.
    q = np.linspace(31.42, 40.28, 200_001)
    ft = np.polyval(np.polyfit(TEST[1], np.log(TEST[0]), 3), q)
    fa = np.polyval(np.polyfit(ANCHOR[1], np.log(ANCHOR[0]), 3), q)
    brute = (math.exp(np.trapezoid(ft - fa, q) / (q[-1] - q[0])) - 1) * 100
    assert bdrate.bd_rate(*TEST, *ANCHOR, method="cubic") == pytest.approx(brute, abs=1e-6)


def test_bd_rate_pchip_matches_a_brute_force_integral():
    q = np.linspace(31.42, 40.28, 200_001)
    order_t, order_a = np.argsort(TEST[1]), np.argsort(ANCHOR[1])
    ft = PchipInterpolator(np.array(TEST[1])[order_t], np.log(TEST[0])[order_t])(q)
    fa = PchipInterpolator(np.array(ANCHOR[1])[order_a], np.log(ANCHOR[0])[order_a])(q)
    brute = (math.exp(np.trapezoid(ft - fa, q) / (q[-1] - q[0])) - 1) * 100
    assert bdrate.bd_rate(*TEST, *ANCHOR) == pytest.approx(brute, abs=1e-6)
    assert bdrate.bd_rate(*TEST, *ANCHOR) == pytest.approx(31.38, abs=0.01)  # close to the cubic fit here


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate_hand_computed_for_log_linear_curves(method):
    # ln R = 0.2 Q + 1 (A) and ln R = 0.25 Q - 0.5 (B); both fits reproduce lines exactly. Shared
    # range Q in [32, 38]: mean(ln R_A - ln R_B) = 1.5 - 0.05 * 35 = -0.25 -> exp(-0.25) - 1.
    qa, qb = [30.0, 32.0, 36.0, 38.0], [32.0, 34.0, 38.0, 40.0]
    ra = [math.exp(0.2 * q + 1) for q in qa]
    rb = [math.exp(0.25 * q - 0.5) for q in qb]
    assert bdrate.bd_rate(ra, qa, rb, qb, method=method) == pytest.approx(100 * (math.exp(-0.25) - 1), abs=1e-9)


def test_bd_rate_refuses_unusable_curves():
    rates, quality = ANCHOR
    with pytest.raises(ValueError, match="overlap"):
        bdrate.bd_rate(rates, quality, rates, [q + 20 for q in quality])
    with pytest.raises(ValueError, match="repeated"):
        bdrate.bd_rate(rates, [35.0] * 4, *TEST)
    with pytest.raises(ValueError, match="rates > 0"):
        bdrate.bd_rate([0.0, *rates[1:]], quality, *TEST)
    with pytest.raises(ValueError, match=">= 4 points"):
        bdrate.bd_rate(rates[:3], quality[:3], *TEST, method="cubic")
    with pytest.raises(ValueError, match="method"):
        bdrate.bd_rate(*ANCHOR, *TEST, method="akima")


def test_quality_at_rate_interpolates_and_extrapolates():
    rates, quality = [100.0, 200.0, 400.0], [30.0, 33.0, 36.0]
    assert bdrate.quality_at_rate(rates, quality, 200.0) == pytest.approx(33.0)
    assert bdrate.quality_at_rate(rates, quality, 800.0) == pytest.approx(39.0)  # 3 dB per doubling, linear in ln
    assert bdrate.quality_at_rate(rates, quality, 50.0) == pytest.approx(27.0)
    assert 33.0 < bdrate.quality_at_rate(rates, quality, 300.0) < 36.0


# ----------------------------------------------------------------------------- encodes


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A freshly initialised agent saved the way main.py saves checkpoints."""
    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    cfg = Config(ckpt_dir=str(ckpt_dir))
    agent = SACAgent(OBS_DIM, learners.ACT_DIM, cfg.sac, "cpu", seed=0)
    path = ckpt_dir / "checkpoint_epoch_1.pt"
    main.save_checkpoint(cfg, path, agent, ReplayBuffer(8, OBS_DIM, learners.ACT_DIM), learners.Counters(), 1, "")
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_sane_runs(rows: list[dict[str, str]], targets: list[float], methods: tuple[str, ...]) -> None:
    for method in methods:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: float(r["target_kbps"]))
        assert [float(r["target_kbps"]) for r in mine] == targets
        assert all(r["ok"] == "True" for r in mine), [r["message"] for r in mine]
        for r in mine:
            assert abs(float(r["error_pct"])) < 10.0, r  # the two-pass rate control lands near target
            assert 25.0 < float(r["psnr_y"]) < 55.0 and 0.8 < float(r["ssim_y"]) <= 1.0
            assert float(r["encode_s"]) > 0 and int(r["frames"]) > 0
        psnr = [float(r["psnr_y"]) for r in mine]
        assert psnr == sorted(psnr), f"{method}: PSNR-Y must rise with the rate: {psnr}"


def test_report_cli_x264(untrained_checkpoint, tmp_path):
    targets = [60.0, 120.0, 240.0, 480.0]
    out = tmp_path / "report"
    res = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--load-checkpoint", str(untrained_checkpoint),
         "--inputs", str(CLIP), "--codec", "x264", "--frames", "32", "--keyint", "16", "--mini-gop", "4",
         "--bitrates", ",".join(f"{t:g}" for t in targets), "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("runs.csv", "bdrate.csv", "minigops.csv", "summary.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    for name in ("rd_carphone_pristine.png", "qp_carphone_pristine.png", "gop_bits_carphone_pristine.png"):
        assert _is_png(out / name), name

    rows = _read_csv(out / "runs.csv")
    assert len(rows) == 16  # 4 targets x (agent, baseline, codec_rc, codec_crf)
    _check_sane_runs(rows, targets, ("agent", "baseline"))
    for r in rows:
        if r["method"] in ("codec_rc", "codec_crf"):  # the codec's own rate control, where the backend has one
            assert r["ok"] == "True" or r["message"], r
            if r["ok"] == "True":
                # x264's one-pass ABR misses by up to ~30% on a 32-frame clip; only check it ran.
                assert float(r["kbps"]) > 0 and abs(float(r["error_pct"])) < 60.0
    agent = [r for r in rows if r["method"] == "agent"]
    assert all(int(r["gops"]) == 2 for r in agent)  # 32 frames, keyint 16
    assert all(abs(float(r["mean_dqp"])) <= 4 for r in agent)

    bd = {(r["metric"], r["pair"]): r for r in _read_csv(out / "bdrate.csv")}
    for metric in ("psnr_y", "psnr_y_frame_mean", "ssim_y"):
        value = float(bd[(metric, "agent vs baseline")]["mean"])
        assert math.isfinite(value) and abs(value) < 25.0

    mgs = [r for r in _read_csv(out / "minigops.csv") if r["method"] == "baseline" and r["target_kbps"] == "120.0"]
    assert len(mgs) == 8 and all(r["qp"] == r["encoder_qp"] for r in mgs)  # Δ = 0
    assert all(int(r["gop_budget"]) > 0 for r in mgs)

    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["agent"]["mean_abs_error_pct"] < 10
    assert 0 <= summary["agent"]["gops_over_budget_pct"] <= 100
    md = (out / "report.md").read_text()
    assert "## BD-rate (%)" in md and "## Goals" in md and "agent vs baseline" in md
    assert "## What the agent answered" in md and "| carphone_pristine |" in md
    assert "![rd_carphone_pristine.png](rd_carphone_pristine.png)" in md

    # The baseline answered Δ = 0 through the protocol: bit-identical to the encoder with no agent.
    work = out / "work" / "carphone_pristine" / "120kbps"
    plain = tmp_path / "plain.json"
    args = ["--input", str(CLIP), "--codec", "x264", "--frames", "32", "--keyint", "16", "--mini-gop", "4",
            "--bitrate", "120", "--pass", "2", "--stat-in", str(work / "pass1.stat"),
            "--summary-json", str(plain)]  # fmt: skip
    subprocess.run([sys.executable, "-m", "builtin_encoder", *args], check=True, cwd=ROOT, capture_output=True)
    base = json.loads((work / "baseline.json").read_text())
    alone = json.loads(plain.read_text())
    assert (alone["bits"], alone["psnr_y"], alone["ssim_y"]) == (base["bits"], base["psnr_y"], base["ssim_y"])


def test_report_api_svtav1(untrained_checkpoint, tmp_path):
    settings = eval_runs.EvalSettings(codec="svtav1", frames=24, keyint=8, mini_gop=8)
    videos = eval_runs.probe_videos([CLIP], settings)
    assert (videos[0].width, videos[0].height, videos[0].frames) == (176, 144, 24)
    targets = eval_runs.targets_for(videos[0], None, [0.04, 0.08, 0.16, 0.32])
    assert targets == pytest.approx([30.4, 60.8, 121.5, 243.0], abs=0.1)  # bpp * 176 * 144 * 29.97 fps
    agent = ev.load_agent(untrained_checkpoint)
    assert agent.max_delta_qp == 4 and agent.rate_tolerance == pytest.approx(0.02)
    methods = ("agent", "codec_crf")
    report = ev.evaluate(videos, {videos[0].name: targets}, tmp_path, settings, agent, methods=methods)
    rows = [r.row() for r in report.runs]
    assert len(rows) == 12
    _check_sane_runs([{k: str(v) for k, v in r.items()} for r in rows], targets, ("agent", "baseline"))
    crf = [r for r in report.runs if r.method == "codec_crf"]
    assert all(r.ok and r.message.startswith("CRF ") for r in crf), [r.message for r in crf]
    psnr = [r.psnr_y for r in sorted(crf, key=lambda r: r.target_kbps)]
    assert psnr == sorted(psnr)  # a lower CRF (the baseline's QP at a higher target) is better quality
    for pair in (("agent", "baseline"), ("agent", "codec_crf"), ("baseline", "codec_crf")):
        assert math.isfinite(report.bd(videos[0].name, "psnr_y", *pair)), pair
    files = eval_report.write_report(report, tmp_path / "out")
    assert {f.name for f in files} >= {"runs.csv", "bdrate.csv", "report.md", "rd_carphone_pristine.png"}


def test_oracle_improves_or_equals_the_baseline_within_budget(tmp_path):
    settings = eval_runs.EvalSettings(codec="x264", frames=24, keyint=24, mini_gop=4)
    video = eval_runs.probe_videos([CLIP], settings)[0]
    runner = eval_runs.Runner(tmp_path, settings)
    point = eval_runs.Point(video, 150.0, tmp_path / "work", settings)
    runner.first_pass(point)
    base, _ = runner.protocol_encode(point, "baseline", learners.ZeroDeltaLearner(), 1, 0.02, "baseline")
    assert base.ok and len(base.minigops) == 6
    cfg = oracle_search.OracleSettings(max_offset=4, steps=(2,), sweeps=1)
    res = oracle_search.run_oracle(runner, point, base, cfg)
    rec = res.record
    assert rec.ok and rec.method == "oracle" and base.method == "baseline"
    assert 1 <= res.encodes <= 12 and len(res.offsets) == 6
    assert all(abs(o) <= 4 for o in res.offsets)
    # The objective never ends below the Δ = 0 start: PSNR-Y at least the baseline's, and any
    # overshoot of the baseline's bits paid for at overshoot_db dB per 100 %.
    gain = rec.psnr_y - base.psnr_y
    assert gain >= 0.0
    assert rec.bits / base.bits - 1.0 <= gain / cfg.overshoot_db + 1e-12
    # The scripted responder answered base QP + offset for every mini-GOP, through the protocol.
    assert [m.qp - m.encoder_qp for m in rec.minigops] == res.offsets
    assert res.row()["delta_psnr_y"] == pytest.approx(gain)


def test_cli_refuses_missing_inputs(tmp_path):
    res = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "oracle", "--inputs", str(tmp_path / "nothing*.mp4"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert "--inputs: no video file matches" in res.stderr


@pytest.mark.parametrize("scale", ["-1", "nan"])
def test_cli_refuses_a_bad_layer_offset_scale_before_any_encode(tmp_path, scale):
    res = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--inputs", str(tmp_path / "nothing*.mp4"),
         "--out", str(tmp_path / "o"), "--layer-offset-scale", scale],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert "--layer-offset-scale" in res.stderr and not (tmp_path / "o").exists()


def test_layer_offset_scale_reaches_both_passes_of_the_builtin_encoder(tmp_path):
    video = eval_runs.Video("a", tmp_path / "a.y4m", 176, 144, 30.0, 64)
    own = eval_runs.Point(video, 100.0, tmp_path, eval_runs.EvalSettings())
    flat = eval_runs.Point(video, 100.0, tmp_path, eval_runs.EvalSettings(layer_offset_scale=0.75))
    assert "--layer-offset-scale" not in own.base_args() + own.pass2_args("t")
    for args in (flat.base_args(), flat.pass2_args("t")):
        assert args[args.index("--layer-offset-scale") + 1] == "0.75"


def test_a_policy_that_reads_the_zero_encode_gets_probe_zero_in_its_encodes(tmp_path):
    """evaluate.py --key-probe with a --key-pick policy: its encodes carry --probe-zero; another gets --key-probe."""
    import torch

    import policy
    from models import Actor
    from state import FEATURES_V2

    video = eval_runs.Video("a", tmp_path / "a.y4m", 176, 144, 30.0, 64)
    for settings, want in [(eval_runs.EvalSettings(key_probe=True, probe_zero=True), ["--key-probe", "--probe-zero"]),
                           (eval_runs.EvalSettings(key_probe=True), ["--key-probe"]),
                           (eval_runs.EvalSettings(probe_zero=True), [])]:  # fmt: skip
        args = eval_runs.Point(video, 100.0, tmp_path, settings).pass2_args("t")
        assert [a for a in args if a in ("--key-probe", "--probe-zero")] == want
    for names, reads in [((*FEATURES_V2, "ramp_probe", "key_probe_best"), True), ((*FEATURES_V2, "key_probe"), False)]:
        torch.manual_seed(0)
        path = tmp_path / f"p{len(names)}.pt"
        policy.save(path, Actor(len(names), 1, (8,)), "svtav1", 4, 0.02, {"key_probe": "1"}, names)
        assert ev.reads_probe_zero(ev.load_agent(path).learner) is reads


@pytest.mark.parametrize("lo,hi", [(30, 45), (31, 39), (20, 2000)])
def test_rd_plot_rate_axis_labels_are_plain_and_do_not_overlap(lo, hi):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))  # as plot_rd
    for ax in axes:
        ax.plot([lo, (lo * hi) ** 0.5, hi], [30, 33, 36], marker="o")
        eval_report.log_rate_axis(ax)
    fig.tight_layout()
    fig.canvas.draw()
    ax = axes[0]
    x0, x1 = ax.get_xlim()
    labels = [t for t in ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
              if t.get_text() and x0 <= t.get_position()[0] <= x1]  # fmt: skip
    plt.close(fig)
    assert len(labels) >= 2
    assert all("times" not in t.get_text() for t in labels)
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False)), [t.get_text() for t in labels]


# ----------------------------------------------------------------------------- a team's own encoder

MODEL = f"{sys.executable} {ROOT / 'tests' / 'model_encoder.py'}"


def test_own_encoder_report_from_the_feedback_alone(untrained_checkpoint, tmp_path):
    targets = [60.0, 120.0, 240.0]
    out = tmp_path / "report"
    res = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--encoder", MODEL, "--encoder-args", "--keyint|8|--mini-gop|4",
         "--load-checkpoint", str(untrained_checkpoint), "--inputs", str(CLIP), "--frames", "16",
         "--bitrates", ",".join(f"{t:g}" for t in targets), "--oracle", "--oracle-steps", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "codec_rc and codec_crf are left out (they need the built-in encoder's rc-modes 2 and 3)" in res.stderr
    rows = _read_csv(out / "runs.csv")
    assert sorted({r["method"] for r in rows}) == ["agent", "baseline", "oracle"]
    for method in ("agent", "baseline", "oracle"):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: float(r["target_kbps"]))
        assert [float(r["target_kbps"]) for r in mine] == targets and all(r["ok"] == "True" for r in mine)
        psnr = [float(r["psnr_y"]) for r in mine]
        assert psnr == sorted(psnr) and all(20 < q < 60 for q in psnr), (method, psnr)
        assert all(int(r["frames"]) == 16 and int(r["gops"]) == 2 for r in mine)
    # The model's feedback, summed by hand: 4 mini-GOPs of 4 frames, MSE weighted by frames.
    base = next(r for r in rows if r["method"] == "baseline" and r["target_kbps"] == "120.0")
    mgs = [r for r in _read_csv(out / "minigops.csv") if r["method"] == "baseline" and r["target_kbps"] == "120.0"]
    assert int(base["bits"]) == sum(int(m["bits"]) for m in mgs)
    assert float(base["kbps"]) == pytest.approx(int(base["bits"]) * 30.0 / 16 / 1000)
    bd = {(r["metric"], r["pair"]): r for r in _read_csv(out / "bdrate.csv")}
    assert math.isfinite(float(bd[("psnr_y", "agent vs baseline")]["mean"]))
    md = (out / "report.md").read_text()
    assert "every number from the protocol's feedback" in md and "## Oracle" in md


def test_feedback_only_numbers_match_the_summary_json_on_the_builtin_encoder(tmp_path):
    layout = ["--codec", "x264", "--keyint", "16", "--mini-gop", "4"]
    builtin = eval_runs.EvalSettings(codec="x264", frames=32, keyint=16, mini_gop=4)
    own = eval_runs.EvalSettings(frames=32, encoder=f"{sys.executable} -m builtin_encoder", encoder_args=tuple(layout))
    records = []
    for settings, work in ((builtin, tmp_path / "a"), (own, tmp_path / "b")):
        video = eval_runs.probe_videos([CLIP], settings)[0]
        runner = eval_runs.Runner(work, settings)
        point = eval_runs.Point(video, 150.0, work / "work", settings)
        runner.first_pass(point)
        rec, _ = runner.protocol_encode(point, "baseline", learners.ZeroDeltaLearner(), 1, 0.02, "baseline")
        assert rec.ok, rec.message
        records.append(rec)
    assert not (tmp_path / "b" / "work" / "baseline.json").exists()  # no --summary-json: the feedback alone
    a, b = records
    assert (b.bits, b.frames, b.width, b.height) == (a.bits, a.frames, a.width, a.height) and b.bits > 0
    assert b.kbps == pytest.approx(a.kbps, rel=1e-9)
    assert b.psnr_y == pytest.approx(a.psnr_y, abs=1e-6)
    assert b.psnr_y_frame_mean == pytest.approx(a.psnr_y_frame_mean, abs=1e-6)
    assert b.ssim_y == pytest.approx(a.ssim_y, abs=1e-6)


def test_pooled_bdrates_mean_interval_and_counts(tmp_path, capsys):
    """bench/pool_eval.py: clips of several report folders pooled; the interval holds the mean and narrows with n."""
    from bench import pool_eval

    for name, row in (("a", "+1.00,-2.00,-0.02"), ("b", "-3.00,-1.00,+0.50")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bdrate.csv").write_text(
            "metric,pair,c1,c2,c3,mean\n"
            f"psnr_y,agent vs baseline,{row},0\n"
            "psnr_y,oracle vs baseline,-9,-9,-9,-9\n"
            "ssim_y,agent vs baseline,5,5,5,5\n")  # fmt: skip
    values = [v for f in ("a", "b") for v in pool_eval.clip_bdrates(tmp_path / f).values()]
    assert values == [1.0, -2.0, -0.02, -3.0, -1.0, 0.5]
    p = bdrate.pool_clips(values)
    assert p.n == 6 and abs(p.mean - np.mean(values)) < 1e-12 and p.low < p.mean < p.high
    assert (p.better, p.worse, p.worst) == (3, 2, 1.0)  # -0.02 is within the ±0.05 tie band
    assert bdrate.pool_clips(values) == p  # seeded: the same interval every run
    wide = bdrate.pool_clips(values[:3])
    narrow = bdrate.pool_clips(values * 10)
    assert narrow.high - narrow.low < p.high - p.low < wide.high - wide.low + 1e-9
    const = bdrate.pool_clips([-0.7] * 4)
    assert const.low == const.high == const.mean == -0.7
    # --versus pairs the i-th folder of each policy, clip by clip: a policy minus itself is 0 on every clip
    paired = pool_eval.pooled_values([tmp_path / "a", tmp_path / "b"], "psnr_y")
    assert paired[(0, "c1")] == 1.0 and paired[(1, "c1")] == -3.0 and len(paired) == 6
    pool_eval.print_versus({"x": [tmp_path / "a", tmp_path / "b"], "y": [tmp_path / "b", tmp_path / "a"]}, "x")
    shown = capsys.readouterr().out
    diffs = [-3.0 - 1.0, -1.0 + 2.0, 0.5 + 0.02, 1.0 + 3.0, -2.0 + 1.0, -0.02 - 0.5]  # y - x, paired
    assert f"| y | 6 | **{np.mean(diffs):+.2f}** |" in shown
    with pytest.raises(ValueError, match="no row"):
        pool_eval.clip_bdrates(tmp_path / "a", metric="nope")
    with pytest.raises(ValueError, match="no clips"):
        bdrate.pool_clips([])


def test_report_states_the_agents_mean_with_its_interval_over_clips():
    """report.md: with two clips or more, the agent's mean BD-rate over clips comes with its bootstrap interval."""

    def runs(video: str, agent_gain: float) -> list[eval_runs.RunRecord]:
        out = []
        for i, kbps in enumerate((100.0, 200.0, 400.0, 800.0)):
            for method, psnr in (("baseline", 30.0 + 3 * i), ("agent", 30.0 + 3 * i + agent_gain)):
                out.append(eval_runs.RunRecord(video, method, kbps, ok=True, kbps=kbps, psnr_y=psnr,
                                        psnr_y_frame_mean=psnr, ssim_y=0.9, gops=1))  # fmt: skip
        return out

    videos = [eval_runs.Video(n, Path(f"{n}.y4m"), 64, 64, 30.0, 8) for n in ("a", "b", "c")]
    report = eval_report.Report(videos, eval_runs.EvalSettings(codec="x264"))
    report.runs = runs("a", 0.3) + runs("b", 0.1) + runs("c", -0.2)
    per_clip = [report.bd(v, "psnr_y", "agent", "baseline") for v in ("a", "b", "c")]
    assert per_clip[0] < per_clip[1] < 0 < per_clip[2]
    md = eval_report.markdown(report, [])
    p = bdrate.pool_clips(per_clip)
    assert f"over 3 clips: mean {p.mean:+.2f}%, 95% bootstrap interval of the mean {p.low:+.2f}" in md
    assert "better on 2, worse on 1" in md
    one = eval_report.Report(videos[:1], eval_runs.EvalSettings(codec="x264"))
    one.runs = runs("a", 0.3)
    assert "bootstrap interval" not in eval_report.markdown(one, [])  # one clip: no interval to give


def test_report_counts_what_the_agent_answered_on_key_and_other_mini_gops():
    def run(video: str, method: str, offsets: list[int]) -> eval_runs.RunRecord:
        # Two GOPs of two mini-GOPs: mini-GOPs 0 and 2 carry the key frames.
        mgs = [eval_runs.MiniGopRow(mg, mg // 2, 8, 30 + d, 30, 1000, 4000) for mg, d in enumerate(offsets)]
        return eval_runs.RunRecord(video, method, 100.0, ok=True, kbps=100.0, psnr_y=30.0, psnr_y_frame_mean=30.0,
                            ssim_y=0.9, gops=2, minigops=mgs)  # fmt: skip

    runs = [run("a", "agent", [-4, 0, -3, 1]), run("a", "baseline", [0, 0, 0, 0]), run("b", "agent", [2, 0, 0, 0])]
    counts = eval_report.answer_counts(runs)
    assert set(counts) == {"a", "b"}
    assert counts["a"][0] == {-4: 1, -3: 1} and counts["a"][1] == {0: 1, 1: 1}
    assert counts["b"][0] == {2: 1, 0: 1} and counts["b"][1] == {0: 2}
    videos = [eval_runs.Video(n, Path(f"{n}.y4m"), 64, 64, 30.0, 32) for n in ("a", "b")]
    report = eval_report.Report(videos, eval_runs.EvalSettings(codec="x264"))
    report.runs = runs
    md = eval_report.markdown(report, [])
    assert "## What the agent answered" in md and "| a | -4: 1, -3: 1 | +0: 1, +1: 1 |" in md


def test_a_stalled_encode_runs_once_more(untrained_checkpoint, tmp_path):
    """An encoder alive but silent past --encoder-timeout (a codec's deadlock) is run once more; the report is whole."""
    marker = tmp_path / "stalled"
    out = tmp_path / "report"
    res = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--encoder", MODEL, "--encoder-args",
         f"--keyint|8|--mini-gop|4|--stall-once|{marker}", "--load-checkpoint", str(untrained_checkpoint),
         "--inputs", str(CLIP), "--frames", "16", "--bitrates", "60,120", "--encoder-timeout", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert marker.exists(), "the first protocol encode (the first point's Δ=0 baseline) stalled"
    warning = next(line for line in res.stderr.splitlines() if "running it once more" in line)
    assert "WARNING" in warning and "@ 60 kbps, baseline: " in warning and "no protocol file for 2 s" in warning
    rows = _read_csv(out / "runs.csv")
    assert len(rows) == 4 and all(r["ok"] == "True" for r in rows)
    assert "Traceback" not in res.stderr
