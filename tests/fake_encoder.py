"""A fake encoder for fault tests: speaks the rl_io protocol (PROTOCOL.md) without coding anything.

    python tests/fake_encoder.py --input DIR/<fault>.yuv [--frames 32 --keyint 16 --mini-gop 4 ...]
                                 --rl-dir DIR --rl-session ID

Rates and qualities are synthetic (a smooth function of the QP answered). The fault is taken from
the input's file name (`kill.yuv` -> fault "kill"), so one main.py run can hold many faulty
"videos". Faults fire at mini-GOP `FAULT_AT` (in the middle of the second GOP) and only in training
encodes (session ending in `-e1`, `-e2`, ...), so that the Δ=0 baseline encode succeeds; a name
ending in `_baseline` (`hang_baseline.yuv`) fires in every encode, the baseline's too.

Faults: ok, kill (SIGKILL itself, leaving a child in its process group), exit (exit 7 after a
stderr line), hang (stop writing files, with a child), badjson, missing, nan, wrongtype (in
feedback FAULT_AT), rqmissing (request FAULT_AT lacks base_qp), session (feedback of another
session), careless (every file written in place, in two halves 0.1 s apart), reorder (lookahead:
requests run one ahead, feedback written in reverse order, every file written twice), rqlink
(request FAULT_AT is a symbolic link to a valid request outside rl_io), rqhuge (request FAULT_AT
is valid JSON over protocol.MAX_FILE_BYTES); in feedback FAULT_AT: fbindex (body mg_index of the
previous mini-GOP), fbframes (frame_count other than the request's), fblen (2 frame_bits for 4
frames), gopend (gop_end 1 in the middle of a GOP); endearly (end.json status ok after mini-GOP
FAULT_AT, exit 0); fbunasked (body mg_index 1000, never requested), fbgop (gop_index other than the
request's), qpused (qp_used and frame_qps 1 above the reply), rqutf8 (request FAULT_AT: bytes that are
not UTF-8), rqgop (request FAULT_AT restarts the GOP: mg_in_gop 0), gopend0 (gop_end 0 on the
last mini-GOP, FAULT_AT + 2); for the conformance kit only
(the agent accepts these): stray (a leftover temporary and the feedback of a mini-GOP never
requested), exitcode (exit 1 after end.json status ok), nosession (session "" although one was
given), inplace (feedback FAULT_AT written in place, in two halves); inputs named prop* send first_pass
with propagation (propok: right; propend: not 0 on the GOP's last frame, FAULT_AT + 2; propgap: left
out of request FAULT_AT).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import protocol  # noqa: E402

FAULT_AT = 5


def flag(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args else default


def main(args: list[str]) -> int:
    rl_dir = Path(flag(args, "--rl-dir", ""))
    session = flag(args, "--rl-session", "")
    name = Path(flag(args, "--input", "ok.yuv")).stem
    fault = name if session.rsplit("-", 1)[-1].startswith("e") else "ok"
    if name.endswith("_baseline"):
        fault = name.removesuffix("_baseline")
    frames, keyint, mg_len = (int(flag(args, f, d)) for f, d in (("--frames", "32"), ("--keyint", "16"),
                                                                   ("--mini-gop", "4")))  # fmt: skip
    kbps = float(flag(args, "--bitrate", "150"))
    fps, width, height = 30.0, 176, 144
    protocol.clear_protocol_files(rl_dir)
    mgs_in_gop = keyint // mg_len
    n_mgs = frames // mg_len
    gop_budget = int(kbps * 1000 * keyint / fps)

    def request(n: int) -> dict:
        g, k = divmod(n, mgs_in_gop)
        req = protocol.Request(
            mg_index=n, gop_index=g, mg_in_gop=k, mgs_in_gop=mgs_in_gop, gop_frames=keyint,
            first_frame=n * mg_len, frame_count=mg_len,
            frame_types=["KEY" if k == 0 and i == 0 else "INTER" for i in range(mg_len)],
            temporal_layers=[0] * mg_len, base_qp=30, qp_min=10, qp_max=51, fp_bpp=0.1,
            lookahead_fp_bpp=[], gop_bits_spent=0, gop_bits_budget=gop_budget, total_bits_spent=0,
            total_bits_budget=int(kbps * 1000 * frames / fps), target_kbps=kbps, fps=fps, width=width,
            height=height, total_frames=frames, codec="fake", session=session,
        )  # fmt: skip
        out = asdict(req)
        del out["first_pass"]
        if fault.startswith("prop"):  # first-pass statistics of a still camera, propagation included
            left = [keyint - 1 - (n * mg_len + i) % keyint for i in range(mg_len)]  # frames after each in its GOP
            out["first_pass"] = {
                "intra_cost": [8.0] * mg_len, "inter_cost": [1.0] * mg_len, "sr_inter_cost": [1.0] * mg_len,
                "inter_share": [1.0] * mg_len, "motion_share": [0.0] * mg_len, "mv_mean": [0.0] * mg_len,
                "noise_sigma": [1.0] * mg_len, "propagation": [math.log2(1 + f) for f in left],
            }  # fmt: skip
            if n == FAULT_AT + 2 and fault == "propend":  # the GOP's last frame propagates
                out["first_pass"]["propagation"][-1] = 0.5
            if n == FAULT_AT and fault == "propgap":  # one request without the field
                del out["first_pass"]["propagation"]
        return out

    spent = [0]  # total bits, for end.json

    def feedback(n: int, qp: int) -> dict:
        bits = int(gop_budget / mgs_in_gop * 2 ** ((30 - qp) / 6))
        mse = 4.0 * 2 ** ((qp - 30) / 6)
        psnr = 10 * math.log10(255**2 / mse)
        fb = protocol.Feedback(
            mg_index=n, gop_index=n // mgs_in_gop, frame_count=mg_len, bits=bits, qp_used=qp,
            frame_qps=[qp] * mg_len, frame_bits=[bits // mg_len + (i < bits % mg_len) for i in range(mg_len)],
            mse_y=mse, mse_u=mse, mse_v=mse,
            psnr_y=psnr, psnr_u=psnr, psnr_v=psnr, psnr_y_frame_mean=psnr, ssim_y=0.9,
            gop_end=int(n % mgs_in_gop == mgs_in_gop - 1 or n == n_mgs - 1), session=session,
        )  # fmt: skip
        return asdict(fb)

    def write(path: Path, data: dict | str) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        if fault == "careless" or (fault == "inplace" and path.name == f"mg{FAULT_AT:04d}_fb.json"):
            # in place, no rename: a reader can see half a file
            with open(path, "w") as fh:
                fh.write(text[: len(text) // 2])
                fh.flush()
                time.sleep(0.1)
                fh.write(text[len(text) // 2 :])
        else:
            protocol.write_atomic(path, text)
        if fault == "reorder":  # a duplicate of every file
            protocol.write_atomic(path, text)

    def wait_reply(n: int) -> int:
        path = protocol.reply_path(rl_dir, n)
        deadline = time.monotonic() + 30
        while not path.exists():
            if time.monotonic() > deadline:
                sys.exit(3)
            time.sleep(0.002)
        return protocol.parse_reply(path.read_text(), path).qp

    def child() -> None:  # a grandchild in the encoder's process group, as real encoders have
        c = subprocess.Popen(["sleep", "60"])
        Path(f"{name}.pids").write_text(f"{os.getpid()} {c.pid}")

    def misbehave(n: int) -> None:
        if fault == "kill":
            child()
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "exit":
            print(f"fake encoder: codec exploded at mini-GOP {n}", file=sys.stderr, flush=True)
            sys.exit(7)
        if fault == "hang":
            child()
            print(f"fake encoder: stuck in mini-GOP {n}", file=sys.stderr, flush=True)
            time.sleep(3600)

    if fault == "nosession":
        session = ""
    n = 0
    while n < (FAULT_AT + 1 if fault == "endearly" else n_mgs):
        if fault == "reorder" and n + 1 < n_mgs:  # lookahead of one; feedback in reverse order
            write(protocol.request_path(rl_dir, n), request(n))
            qp0 = wait_reply(n)
            write(protocol.request_path(rl_dir, n + 1), request(n + 1))
            qp1 = wait_reply(n + 1)
            write(protocol.feedback_path(rl_dir, n + 1), feedback(n + 1, qp1))
            time.sleep(0.05)
            write(protocol.feedback_path(rl_dir, n), feedback(n, qp0))
            spent[0] += feedback(n, qp0)["bits"] + feedback(n + 1, qp1)["bits"]
            n += 2
            continue
        rq = request(n)
        if n == FAULT_AT and fault == "rqmissing":
            del rq["base_qp"]
        if n == FAULT_AT and fault == "rqgop":
            rq["mg_in_gop"] = 0
        if n == FAULT_AT and fault == "rqhuge":
            rq["padding"] = "x" * protocol.MAX_FILE_BYTES  # an unknown field: only the size is wrong
        if n == FAULT_AT and fault == "rqutf8":  # bytes that are not UTF-8, renamed into place
            tmp = protocol.request_path(rl_dir, n).with_suffix(".json.tmp")
            tmp.write_bytes(json.dumps(rq).encode()[:-1] + b',"codec":"\xff\xfe"}')
            os.replace(tmp, protocol.request_path(rl_dir, n))
        elif n == FAULT_AT and fault == "rqlink":
            target = Path.cwd() / f"{name}.target.json"
            write(target, rq)
            os.symlink(target, protocol.request_path(rl_dir, n))
        else:
            write(protocol.request_path(rl_dir, n), rq)
        qp = wait_reply(n)
        fb: dict | str = feedback(n, qp)
        if n == FAULT_AT:
            misbehave(n)
            if fault == "badjson":
                fb = '{"mg_index": 5, "bits": '
            elif fault == "missing":
                del fb["bits"]
            elif fault == "nan":
                fb = json.dumps(dict(fb, mse_y=float("nan")))
            elif fault == "wrongtype":
                fb["bits"] = "many"
            elif fault == "session":
                fb["session"] = "1234-e1"
            elif fault == "fbindex":  # the body names another mini-GOP than the file
                fb["mg_index"] = n - 1
            elif fault == "fbframes":
                fb["frame_count"] = mg_len - 1
                fb["frame_qps"], fb["frame_bits"] = fb["frame_qps"][1:], fb["frame_bits"][1:]
                fb["bits"] = sum(fb["frame_bits"])
            elif fault == "fblen":
                fb["frame_bits"] = fb["frame_bits"][:2]
            elif fault == "gopend":  # a GOP end in the middle of a GOP
                fb["gop_end"] = 1
            elif fault == "fbunasked":
                fb["mg_index"] = 1000
            elif fault == "fbgop":
                fb["gop_index"] += 1
            elif fault == "qpused":
                fb["qp_used"] += 1
                fb["frame_qps"] = [q + 1 for q in fb["frame_qps"]]
            elif fault == "stray":
                (rl_dir / "mg0005_fb.json.tmp").write_text("{}")
                protocol.write_atomic(protocol.feedback_path(rl_dir, 42), json.dumps(fb))
        if n == FAULT_AT + 2 and fault == "gopend0":  # no GOP end on the GOP's last mini-GOP
            fb["gop_end"] = 0
        write(protocol.feedback_path(rl_dir, n), fb)
        spent[0] += fb["bits"] if isinstance(fb, dict) and isinstance(fb.get("bits"), int) else 0
        n += 1
    if fault == "endearly":  # a clean-looking end after FAULT_AT + 1 of the mini-GOPs
        n_mgs = FAULT_AT + 1
    end = protocol.End(status="ok", mini_gops=n_mgs, frames=frames, bits=spent[0], message="fake", session=session)
    write(protocol.end_path(rl_dir), asdict(end))
    return 1 if fault == "exitcode" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
