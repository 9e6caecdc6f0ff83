"""A protocol-only encoder with an analytic rate-distortion model: what a team's own encoder looks like to evaluate.py.

    python tests/model_encoder.py --input CLIP --frames N --bitrate KBPS [--keyint 16 --mini-gop 4
                                  --input-res WxH --fps F] [--pass 1 --stat-out F | --pass 2 --stat-in F]
                                  --rl-dir DIR [--rl-session ID] [--stall-once FILE]

It codes nothing. Mini-GOP k has a complexity c_k (a smooth function of k and the input's name);
at base QP q it spends bits = c_k * frames * pixels * 0.2 * 2^((20 - q) / 6) and has luma MSE
(0.3 + c_k) * 2^((q - 4) / 6). Its rate control gives each mini-GOP the QP that meets its share of the
remaining budget. `--pass 1` writes the complexities to `--stat-out` and exits; `--pass 2` reads them.
Only the flags above are understood; others are ignored, as a team's encoder would ignore ours.
`--stall-once FILE`: when FILE does not exist, create it and stall for good after the reply to mini-GOP 1, alive and
silent, as SVT-AV1 4.1 does now and then (README, "The built-in encoder"); when it exists, run normally.
"""

from __future__ import annotations

import json
import math
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import protocol  # noqa: E402


def flag(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args else default


def main(args: list[str]) -> int:
    frames, keyint, mg_len = (int(flag(args, f, d)) for f, d in (("--frames", "32"), ("--keyint", "16"),
                                                                   ("--mini-gop", "4")))  # fmt: skip
    width, height = (int(x) for x in flag(args, "--input-res", "176x144").split("x"))
    fps, kbps = float(flag(args, "--fps", "30")), float(flag(args, "--bitrate", "150"))
    seed = zlib.crc32(Path(flag(args, "--input", "clip")).name.encode()) % 100
    n_mgs, pixels = math.ceil(frames / mg_len), width * height
    complexity = [0.6 + 0.3 * math.sin(0.7 * k + seed) for k in range(n_mgs)]
    if flag(args, "--pass", "0") == "1":
        Path(flag(args, "--stat-out", "stat.json")).write_text(json.dumps(complexity))
        return 0
    if "--stat-in" in args:
        complexity = json.loads(Path(flag(args, "--stat-in", "")).read_text())
    rl_dir, session = Path(flag(args, "--rl-dir", "rl_io")), flag(args, "--rl-session", "")
    protocol.clear_protocol_files(rl_dir)
    per_frame = kbps * 1000 / fps
    spent = gop_spent = 0
    for k in range(n_mgs):
        first = k * mg_len
        count = min(mg_len, frames - first)
        gop, gop_first = divmod(first, keyint)[0], first // keyint * keyint
        gop_frames = min(keyint, frames - gop_first)
        mgs_in_gop, in_gop = math.ceil(gop_frames / mg_len), (first - gop_first) // mg_len
        gop_spent = 0 if in_gop == 0 else gop_spent
        left = max(per_frame * (first + count) - spent, per_frame * count * 0.25)  # this mini-GOP's share
        base = round(20 + 6 * math.log2(complexity[k] * count * pixels * 0.2 / left))
        base = min(max(base, 10), 51)
        req = protocol.Request(
            mg_index=k, gop_index=gop, mg_in_gop=in_gop, mgs_in_gop=mgs_in_gop, gop_frames=gop_frames,
            first_frame=first, frame_count=count, frame_types=["KEY" if in_gop == 0 and i == 0 else "INTER"
                                                               for i in range(count)],
            temporal_layers=[0] * count, base_qp=base, qp_min=10, qp_max=51,
            fp_bpp=complexity[k] * 0.2, lookahead_fp_bpp=[c * 0.2 for c in complexity[k + 1 : k + 3]],
            gop_bits_spent=gop_spent, gop_bits_budget=max(round(per_frame * gop_frames), 1), total_bits_spent=spent,
            total_bits_budget=max(round(per_frame * frames), 1), target_kbps=kbps, fps=fps, width=width,
            height=height, total_frames=frames, codec="model", session=session,
        )  # fmt: skip
        protocol.write_message(protocol.request_path(rl_dir, k), req)
        reply_file, deadline = protocol.reply_path(rl_dir, k), time.monotonic() + 30
        while (text := protocol.read_text(reply_file)) is None:
            if time.monotonic() > deadline:
                return 3
            time.sleep(0.002)
        qp = protocol.parse_reply(text, reply_file, 10, 51).qp
        if k == 1 and (stall := flag(args, "--stall-once", "")) and not Path(stall).exists():
            Path(stall).write_text(session)
            time.sleep(3600)
        frame_bits = [round(complexity[k] * pixels * 0.2 * 2 ** ((20 - qp) / 6) * (1.5 if t == "KEY" else 1.0))
                      for t in req.frame_types]  # fmt: skip
        mse = (0.3 + complexity[k]) * 2 ** ((qp - 4) / 6)
        psnr = min(100.0, 10 * math.log10(255**2 / mse))
        fb = protocol.Feedback(
            mg_index=k, gop_index=gop, frame_count=count, bits=sum(frame_bits), qp_used=qp, frame_qps=[qp] * count,
            frame_bits=frame_bits, mse_y=mse, mse_u=mse / 2, mse_v=mse / 2, psnr_y=psnr, psnr_u=psnr + 3,
            psnr_v=psnr + 3, psnr_y_frame_mean=psnr, ssim_y=max(0.0, 1 - mse / 1000),
            gop_end=int(in_gop == mgs_in_gop - 1 or first + count == frames), session=session,
        )  # fmt: skip
        protocol.write_message(protocol.feedback_path(rl_dir, k), fb)
        spent += fb.bits
        gop_spent += fb.bits
    end = protocol.End(status="ok", mini_gops=n_mgs, frames=frames, bits=spent, message="model", session=session)
    protocol.write_message(protocol.end_path(rl_dir), end)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
