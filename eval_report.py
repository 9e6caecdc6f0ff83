"""An evaluation's measurements (Report: BD-rates, ΔPSNR at equal rate, rate goals) and its files.

`write_report` writes runs.csv, bdrate.csv, minigops.csv, oracle.csv, summary.json, report.md and
the PNG plots (RD curves per clip; QP per mini-GOP and bits vs budget per GOP for one clip).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bdrate import pool_clips, quality_at_rate, safe_bd_rate
from eval_runs import METHODS, EvalSettings, RunRecord, Video, gop_totals
from oracle_search import OracleResult

METRICS = ("psnr_y", "psnr_y_frame_mean", "ssim_y")  # psnr_y (from total MSE) is the headline
METRIC_LABELS = {"psnr_y": "PSNR-Y (overall, dB)", "psnr_y_frame_mean": "mean per-frame PSNR-Y (dB)",
                 "ssim_y": "SSIM-Y"}  # fmt: skip
BD_PAIRS = (
    ("agent", "baseline"),
    ("agent", "codec_rc"),
    ("baseline", "codec_rc"),
    ("agent", "codec_crf"),
    ("baseline", "codec_crf"),
    ("oracle", "baseline"),
)


@dataclass
class Report:
    """Everything one evaluation measured; `write_report` turns it into files."""

    videos: list[Video]
    settings: EvalSettings
    runs: list[RunRecord] = field(default_factory=list)
    oracles: list[OracleResult] = field(default_factory=list)
    checkpoint: str = ""
    checkpoint_epoch: int = 0
    rate_tolerance: float = 0.02
    command: str = ""
    seconds: float = 0.0
    encodes: int = 0

    def get(self, video: str, method: str, target: float | None = None) -> list[RunRecord]:
        return [r for r in self.runs if r.video == video and r.method == method and r.ok
                and (target is None or r.target_kbps == target)]  # fmt: skip

    def bd(self, video: str, metric: str, a: str, b: str) -> float:
        """BD-rate (%) of method a against method b on one clip, NaN when either lacks points."""
        ra, rb = self.get(video, a), self.get(video, b)
        return safe_bd_rate([r.kbps for r in ra], [getattr(r, metric) for r in ra],
                        [r.kbps for r in rb], [getattr(r, metric) for r in rb])  # fmt: skip

    def bd_table(self) -> list[dict[str, Any]]:
        rows = []
        for metric in METRICS:
            for a, b in BD_PAIRS:
                values = {v.name: self.bd(v.name, metric, a, b) for v in self.videos}
                if all(math.isnan(x) for x in values.values()):
                    continue
                rows.append({"metric": metric, "pair": f"{a} vs {b}", **values, "mean": _nanmean(values.values())})
        return rows

    def delta_at_equal_rate(self, rec: RunRecord) -> float:
        """PSNR-Y of `rec` minus the baseline curve's PSNR-Y at rec's own rate (dB)."""
        base = self.get(rec.video, "baseline")
        if len(base) < 2:
            return math.nan
        return rec.psnr_y - quality_at_rate([r.kbps for r in base], [r.psnr_y for r in base], rec.kbps)

    def oracle_rows(self) -> list[dict[str, Any]]:
        """Per oracle point: its gain and the agent's, both at equal rate vs the baseline curve."""
        rows = []
        for o in self.oracles:
            agent = self.get(o.video, "agent", o.target_kbps)
            d_oracle = self.delta_at_equal_rate(o.record)
            d_agent = self.delta_at_equal_rate(agent[0]) if agent else math.nan
            rows.append({**o.row(), "oracle_dpsnr_equal_rate": d_oracle, "agent_dpsnr_equal_rate": d_agent})
        return rows

    def captured(self) -> float:
        """Share of the oracle's gain the agent captures: mean ΔPSNR@equal rate, agent / oracle."""
        rows = [r for r in self.oracle_rows() if not math.isnan(r["agent_dpsnr_equal_rate"])]
        if not rows:
            return math.nan
        oracle = float(np.mean([r["oracle_dpsnr_equal_rate"] for r in rows]))
        agent = float(np.mean([r["agent_dpsnr_equal_rate"] for r in rows]))
        return agent / oracle if oracle > 0 else math.nan

    def agent_rate_goals(self) -> dict[str, float]:
        agent = [r for r in self.runs if r.method == "agent" and r.ok]
        gops = sum(r.gops for r in agent)
        return {
            "mean_abs_error_pct": 100.0 * float(np.mean([abs(r.error) for r in agent])) if agent else math.nan,
            "max_abs_error_pct": 100.0 * float(max(abs(r.error) for r in agent)) if agent else math.nan,
            "gops": float(gops),
            "gops_over_budget_pct": 100.0 * sum(r.gops_over_budget for r in agent) / gops if gops else math.nan,
            "gops_over_tol_pct": 100.0 * sum(r.gops_over_tol for r in agent) / gops if gops else math.nan,
        }

    def summary(self) -> dict[str, Any]:
        """The headline numbers (also written as summary.json)."""
        bd = {f"{row['metric']}|{row['pair']}": row["mean"] for row in self.bd_table()}
        base = [r for r in self.runs if r.method == "baseline" and r.ok]
        base_gops = sum(r.gops for r in base)
        return {
            "videos": [v.name for v in self.videos],
            "bd_rate_mean_pct": bd,
            "agent": self.agent_rate_goals(),
            "baseline_mean_abs_error_pct": 100.0 * float(np.mean([abs(r.error) for r in base])) if base else math.nan,
            "baseline_gops_over_budget_pct": 100.0 * sum(r.gops_over_budget for r in base) / base_gops
            if base_gops else math.nan,
            "baseline_gops_over_tol_pct": 100.0 * sum(r.gops_over_tol for r in base) / base_gops
            if base_gops else math.nan,
            "captured": self.captured(),
            "oracle_encodes": sum(o.encodes for o in self.oracles),
            "oracle_seconds": sum(o.seconds for o in self.oracles),
            "encodes": self.encodes,
            "seconds": self.seconds,
        }  # fmt: skip


def _nanmean(values: Any) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _fmt(x: Any, digits: int = 2) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # A '|' inside a cell would split it: escape it.
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        if not rows:
            return
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot_rd(report: Report, video: str, path: Path) -> None:
    """RD curves of one clip: overall PSNR-Y and SSIM-Y against kbit/s (log axis), one line per method."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"agent": ("C0", "o", "-"), "baseline": ("C1", "s", "--"), "codec_rc": ("C2", "^", ":"),
              "codec_crf": ("C4", "v", "-."),
              "oracle": ("C3", "*", "")}  # fmt: skip
    for ax, metric in zip(axes, ("psnr_y", "ssim_y"), strict=True):
        for method in METHODS:
            recs = sorted(report.get(video, method), key=lambda r: r.kbps)
            if not recs:
                continue
            color, marker, ls = styles[method]
            ax.plot([r.kbps for r in recs], [getattr(r, metric) for r in recs], color=color, marker=marker,
                    linestyle=ls or "none", markersize=9 if method == "oracle" else 6, label=method)  # fmt: skip
        log_rate_axis(ax)
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{video}: rate-distortion ({report.settings.codec})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_rate_axis(ax: Any) -> None:
    """A log kbit/s x axis labelled in plain numbers ("30", "40", not "3×10¹").

    Minor ticks are labelled only when the data spans under about two decades (a small clip's
    rates lie within one), so that labels never crowd each other.
    """
    from matplotlib.ticker import LogFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("rate (kbit/s)")


def plot_qp(report: Report, video: str, target: float, path: Path) -> None:
    """QP per mini-GOP at one target: the agent's answers, the encoder's proposals, the Δ=0 run."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(11, 4))
    # Drawn wide and pale first, so that an agent answering Δ = 0 is still seen on top of it.
    styles = {"baseline": dict(color="C1", linewidth=4, alpha=0.45), "agent": dict(color="C0", linewidth=1.6),
              "oracle": dict(color="C3", linewidth=1.2, linestyle="--")}  # fmt: skip
    for method, style in styles.items():
        recs = report.get(video, method, target)
        if not recs or not recs[0].minigops:
            continue
        mgs = recs[0].minigops
        label = "baseline (Δ=0) base QP" if method == "baseline" else f"{method} QP"
        ax.step([m.mg for m in mgs], [m.qp for m in mgs], where="mid", label=label, **style)  # type: ignore[arg-type]
        if method == "agent":
            ax.step([m.mg for m in mgs], [m.encoder_qp for m in mgs], where="mid", color="C0", linestyle=":",
                    linewidth=1.2, label="encoder's own base QP during the agent run")  # fmt: skip
        if method == "baseline":
            for prev, m in zip(mgs, mgs[1:], strict=False):
                if m.gop != prev.gop:
                    ax.axvline(m.mg - 0.5, color="grey", alpha=0.4, linewidth=0.8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("mini-GOP")
    ax.set_ylabel("base QP")
    ax.set_title(f"{video} @ {target:g} kbit/s: QP per mini-GOP (grey lines: GOP starts)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gop_bits(report: Report, video: str, target: float, path: Path) -> None:
    """Bits per GOP against each run's own GOP budget (overshoot in %), at one target."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(11, 4))
    methods = [m for m in ("baseline", "agent", "oracle") if report.get(video, m, target)]
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        gops = gop_totals(report.get(video, method, target)[0].minigops)
        xs = [g + (i - (len(methods) - 1) / 2) * width for g, _, _ in gops]
        ax.bar(xs, [100.0 * (bits / budget - 1.0) for _, bits, budget in gops], width=width, label=method,
               color={"baseline": "C1", "agent": "C0", "oracle": "C3"}[method])  # fmt: skip
    ax.axhline(0.0, color="black", linewidth=1)
    ax.axhline(100.0 * report.rate_tolerance, color="black", linestyle="--", linewidth=0.8,
               label=f"tolerance (+{100 * report.rate_tolerance:g}%)")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("GOP")
    ax.set_ylabel("GOP bits vs GOP budget (%)")
    ax.set_title(f"{video} @ {target:g} kbit/s: bits vs budget per GOP (> 0 = over budget)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: Report, out_dir: Path, plot_video: str | None = None) -> list[Path]:
    """Writes runs.csv, bdrate.csv, minigops.csv, oracle.csv, summary.json, report.md and PNGs; returns them."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    runs_rows = [r.row() for r in report.runs]
    _write_csv(out_dir / "runs.csv", runs_rows)
    bd_rows = report.bd_table()
    _write_csv(out_dir / "bdrate.csv", bd_rows)
    mg_rows = [{"video": r.video, "method": r.method, "target_kbps": r.target_kbps, **asdict(m)}
               for r in report.runs for m in r.minigops]  # fmt: skip
    _write_csv(out_dir / "minigops.csv", mg_rows)
    written += [out_dir / "runs.csv", out_dir / "bdrate.csv", out_dir / "minigops.csv"]
    oracle_rows = report.oracle_rows()
    if oracle_rows:
        _write_csv(out_dir / "oracle.csv", oracle_rows)
        written.append(out_dir / "oracle.csv")
    summary = report.summary()
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    written.append(out_dir / "summary.json")

    plots: list[Path] = []
    for v in report.videos:
        p = out_dir / f"rd_{v.name}.png"
        plot_rd(report, v.name, p)
        plots.append(p)
    names = [v.name for v in report.videos]
    chosen = plot_video if plot_video in names else (names[0] if names else None)
    if chosen is not None:
        targets = sorted({r.target_kbps for r in report.get(chosen, "baseline")})
        if targets:
            mid = targets[(len(targets) - 1) // 2]
            for fn, stem in ((plot_qp, "qp"), (plot_gop_bits, "gop_bits")):
                p = out_dir / f"{stem}_{chosen}.png"
                fn(report, chosen, mid, p)
                plots.append(p)
    written += plots
    md = out_dir / "report.md"
    md.write_text(markdown(report, [p.name for p in plots]))
    written.append(md)
    return written


def answer_counts(runs: Sequence[RunRecord], method: str = "agent") -> dict[str, tuple[Counter, Counter]]:
    """What a method answered, per clip over all its rates: counts of ΔQP = answered − the encoder's base QP.

    Returns {clip: (key mini-GOPs, the others)}; a GOP's key mini-GOP is its first. A constant
    policy shows one bar; a content-dependent one answers differently on different clips.
    """
    out: dict[str, tuple[Counter, Counter]] = {}
    for r in runs:
        if r.method != method or not r.ok or not r.minigops:
            continue
        key, other = out.setdefault(r.video, (Counter(), Counter()))
        first: dict[int, int] = {}  # GOP -> its first mini-GOP
        for m in r.minigops:
            first[m.gop] = min(first.get(m.gop, m.mg), m.mg)
        for m in r.minigops:
            (key if m.mg == first[m.gop] else other)[m.qp - m.encoder_qp] += 1
    return out


def _counts_text(c: Counter) -> str:
    return ", ".join(f"{d:+d}: {n}" for d, n in sorted(c.items())) if c else "–"


def markdown(report: Report, plots: Sequence[str]) -> str:
    """The report as Markdown: setup, BD-rates, goals, the agent's answers, per-encode table, oracle, plots."""
    s = report.settings
    summ = report.summary()
    goals = summ["agent"]
    out = ["# Evaluation report", ""]
    out += [f"- command: `{report.command}`" if report.command else "- command: (API call)",
            f"- checkpoint: `{report.checkpoint or 'none'}` (epoch {report.checkpoint_epoch})",
            (f"- encoder: built-in, codec {s.codec}, preset {s.preset if s.preset is not None else 'default'}, "
             f"keyint {s.keyint}, mini-GOP {s.mini_gop}" if s.builtin else
             f"- encoder: `{s.encoder}` with `{' '.join(s.encoder_args)}`; every number from the protocol's "
             "feedback (overall PSNR-Y from the mean luma MSE); codec_rc and codec_crf left out: they need the "
             "built-in encoder's rc-modes"),
            "- clips: " + ", ".join(f"{v.name} ({v.width}x{v.height}, {v.frames} frames, {v.fps:.2f} fps)"
                                     for v in report.videos),
            f"- {report.encodes} encoder processes in {report.seconds:.0f} s",
            "- methods: **agent** (deterministic policy, through the protocol), **baseline** (Δ = 0: the "
            "encoder's own two-pass rate control), **codec_rc** (the codec's own rate control, rc-mode 2), "
            "**codec_crf** (the codec's own CRF at the baseline's mean base QP: a reference curve), "
            "**oracle** (per-mini-GOP QP offsets found by coordinate descent, maximising PSNR-Y within the baseline's "
            "total bits)",
            "- BD-rate: PCHIP fit of ln(rate) against quality over the shared quality range; negative = the "
            "first method needs fewer bits for equal quality. PSNR-Y overall (from the total luma MSE) is the "
            "headline.", ""]  # fmt: skip

    out += ["## BD-rate (%)", ""]
    bd_rows = report.bd_table()
    header = ["metric", "pair"] + [v.name for v in report.videos] + ["mean"]
    out.append(_md_table(header, [[METRIC_LABELS[r["metric"]], r["pair"]]
                                  + [_fmt(r[v.name]) for v in report.videos] + [f"**{_fmt(r['mean'])}**"]
                                  for r in bd_rows]))  # fmt: skip
    out.append("")
    agent = [r for r in bd_rows if r["metric"] == "psnr_y" and r["pair"] == "agent vs baseline"]
    values = [x for x in (agent[0][v.name] for v in report.videos) if not math.isnan(x)] if agent else []
    if len(values) >= 2:
        p = pool_clips(values)
        out += [f"Agent vs baseline, overall PSNR-Y, over {p.n} clips: mean {p.mean:+.2f}%, 95% bootstrap "
                f"interval of the mean {p.low:+.2f} … {p.high:+.2f}% (clips resampled); better on {p.better}, "
                f"worse on {p.worse} (beyond ±0.05%), worst clip {p.worst:+.2f}%.", ""]  # fmt: skip

    oracle_rows = report.oracle_rows()
    captured = summ["captured"]
    reference = "codec_rc"
    bd_c = summ["bd_rate_mean_pct"].get("psnr_y|agent vs codec_rc", math.nan)
    if math.isnan(bd_c):  # no rc-mode 2 in this backend: the codec's CRF curve stands in
        reference = "codec_crf (stand-in: no codec_rc curve)"
        bd_c = summ["bd_rate_mean_pct"].get("psnr_y|agent vs codec_crf", math.nan)
    out += ["## Goals", ""]
    goal_rows = [
        ["agent captures >= 60% of the oracle's gain over the baseline (ΔPSNR-Y at equal rate)",
         "n/a (no oracle run)" if math.isnan(captured) else f"{100 * captured:.0f}%",
         _verdict(100 * captured, 60.0, higher=True)],
        [f"agent saves >= 2% BD-rate (PSNR-Y) vs {reference}", "n/a (no reference curve)" if math.isnan(bd_c)
         else f"{bd_c:.2f}%", _verdict(bd_c, -2.0, higher=False)],
        ["mean |bitrate error| of the agent <= 2%", f"{_fmt(goals['mean_abs_error_pct'])}%",
         _verdict(goals["mean_abs_error_pct"], 2.0, higher=False)],
        ["agent GOPs over budget <= 5%", f"{_fmt(goals['gops_over_budget_pct'], 1)}% of {int(goals['gops'])} "
         f"(over budget + {100 * report.rate_tolerance:g}%: {_fmt(goals['gops_over_tol_pct'], 1)}%)",
         _verdict(goals["gops_over_budget_pct"], 5.0, higher=False)],
    ]  # fmt: skip
    out.append(_md_table(["goal", "measured", "met"], goal_rows))
    out += ["", f"Baseline for comparison: mean |bitrate error| {_fmt(summ['baseline_mean_abs_error_pct'])}%, "
            f"GOPs over budget {_fmt(summ['baseline_gops_over_budget_pct'], 1)}%.", ""]  # fmt: skip

    answers = answer_counts(report.runs)
    if answers:
        out += ["## What the agent answered", "",
                "ΔQP = the agent's answer − the encoder's base QP, counted over every rate of each clip "
                "(ΔQP: count).", ""]  # fmt: skip
        rows = [[v, _counts_text(k), _counts_text(o)] for v, (k, o) in sorted(answers.items())]
        out.append(_md_table(["clip", "key mini-GOPs", "other mini-GOPs"], rows))
        out.append("")

    out += ["## Encodes", "", "Rates kbit/s, error vs target, PSNR dB, encode time s (first + final pass codec "
            "time; the agent's decisions included for agent/oracle).", ""]  # fmt: skip
    rows = []
    for r in sorted(report.runs, key=lambda r: (r.video, r.target_kbps, METHODS.index(r.method))):
        if not r.ok:
            rows.append([r.video, f"{r.target_kbps:g}", r.method] + [""] * 8 + ["failed: " + r.message[:200]])
            continue
        gops = f"{r.gops_over_budget}/{r.gops}" if r.gops else ""
        dqp = "" if math.isnan(r.mean_dqp) else _fmt(r.mean_dqp)
        rows.append([r.video, f"{r.target_kbps:g}", r.method, _fmt(r.kbps, 1), f"{100 * r.error:+.2f}%",
                     _fmt(r.psnr_y, 3), _fmt(r.psnr_y_frame_mean, 3), _fmt(r.ssim_y, 4), _fmt(r.encode_s),
                     gops, dqp, r.message])  # fmt: skip
    out.append(_md_table(["clip", "target", "method", "kbps", "error", "PSNR-Y", "mean PSNR-Y", "SSIM-Y",
                          "encode s", "GOPs over budget", "mean ΔQP", "note"], rows))  # fmt: skip
    out.append("")

    if oracle_rows:
        total = summ["oracle_encodes"]
        secs = summ["oracle_seconds"]
        out += ["## Oracle", "",
                f"Coordinate descent over per-mini-GOP QP offsets, each candidate a full encode through the "
                f"protocol; cost: {total} encodes in {secs:.0f} s ({secs / max(total, 1):.2f} s per encode). "
                "ΔPSNR-Y at equal rate = PSNR-Y minus the baseline curve's PSNR-Y at the same rate (PCHIP in "
                "ln rate). Share of the oracle's gain the agent captures: "
                f"**{_fmt(100 * captured, 0)}%**.", ""]  # fmt: skip
        out.append(_md_table(
            ["clip", "target", "bits vs Δ=0", "Δ=0 PSNR-Y", "oracle PSNR-Y", "oracle ΔPSNR@rate",
             "agent ΔPSNR@rate", "encodes", "offsets"],
            [[o["video"], f"{o['target_kbps']:g}", f"{o['bits_over_budget_pct']:+.2f}%", _fmt(o["baseline_psnr_y"], 3),
              _fmt(o["oracle_psnr_y"], 3), _fmt(o["oracle_dpsnr_equal_rate"], 3), _fmt(o["agent_dpsnr_equal_rate"], 3),
              o["encodes"], o["offsets"]] for o in oracle_rows]))  # fmt: skip
        out.append("")

    out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(out)


def _verdict(value: float, threshold: float, higher: bool) -> str:
    if math.isnan(value):
        return "n/a"
    ok = value >= threshold if higher else value <= threshold
    return "yes" if ok else f"**no** (misses by {abs(value - threshold):.2f})"
