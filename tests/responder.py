"""A tiny stand-in agent for tests and benchmarks: answers each request with base_qp + a fixed delta.

    python tests/responder.py --rl-dir DIR [--deltas 0,3,-2] [--session S]
                              [--fault malformed|out-of-range|silent|wrong-session --fault-at N]

Mini-GOP k gets QP = base_qp + deltas[k % len(deltas)], clamped to the request's [qp_min, qp_max]
(the responder clamps; the encoder never does). `--fault` misbehaves at mini-GOP N, to test the
encoder's error handling. The responder exits when end.json appears (exit 0 if its status is "ok",
1 if "error"), or with exit 3 after `--timeout` seconds without any protocol file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The project root (for `protocol`) when run as `python tests/responder.py`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import protocol  # noqa: E402

FAULTS = ("none", "malformed", "out-of-range", "silent", "wrong-session")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rl-dir", required=True, help="protocol directory")
    p.add_argument("--deltas", default="0", help="comma-separated QP deltas, cycled per mini-GOP (default 0)")
    p.add_argument("--session", default="", help="session string to echo in replies (default: the request's)")
    p.add_argument("--fault", choices=FAULTS, default="none", help="misbehave at mini-GOP --fault-at")
    p.add_argument("--fault-at", type=int, default=0, help="mini-GOP index of the fault (default 0)")
    p.add_argument("--timeout", type=float, default=60.0, help="give up after this many idle seconds (default 60)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rl_dir = Path(args.rl_dir)
    rl_dir.mkdir(parents=True, exist_ok=True)
    deltas = [int(x) for x in args.deltas.split(",") if x.strip()] or [0]
    mg = 0
    with protocol.DirWatcher(rl_dir) as watcher:
        deadline = time.monotonic() + args.timeout
        while True:
            end_file = protocol.end_path(rl_dir)
            if end_file.exists():
                end = protocol.parse_end(end_file.read_text(encoding="utf-8"), end_file)
                print(f"responder: end.json status={end.status} mini_gops={end.mini_gops}", file=sys.stderr)
                return 0 if end.status == "ok" else 1
            rq_file = protocol.request_path(rl_dir, mg)
            if rq_file.exists():
                req = protocol.parse_request(rq_file.read_text(encoding="utf-8"), rq_file)
                reply_file = protocol.reply_path(rl_dir, mg)
                session = args.session or req.session
                qp = min(max(req.base_qp + deltas[mg % len(deltas)], req.qp_min), req.qp_max)
                fault = args.fault if mg == args.fault_at else "none"
                if fault == "malformed":
                    protocol.write_atomic(reply_file, '{"qp": 30,')
                elif fault == "out-of-range":
                    protocol.write_message(reply_file, protocol.Reply(qp=req.qp_max + 1, mg_index=mg))
                elif fault == "wrong-session":
                    protocol.write_message(reply_file, protocol.Reply(qp=qp, mg_index=mg, session=session + "-other"))
                elif fault == "none":
                    protocol.write_message(reply_file, protocol.Reply(qp=qp, mg_index=mg, session=session or None))
                # "silent": no reply; the encoder is expected to time out and write end.json.
                mg += 1
                deadline = time.monotonic() + args.timeout
                continue
            now = time.monotonic()
            if now >= deadline:
                print(f"responder: nothing in {rl_dir} for {args.timeout:g} s (waiting for {rq_file.name})",
                      file=sys.stderr)  # fmt: skip
                return 3
            watcher.wait(min(deadline - now, 0.5))


if __name__ == "__main__":
    sys.exit(main())
