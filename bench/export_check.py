"""c/rlrc_state.h and an exported policy header against the agent, on every request of stored oracle records.

    python bench/export_check.py data/oracle_x264.jsonl data/oracle_svtav1.jsonl            # seconds
    python bench/export_check.py --policy svtav1 data/oracle_svtav1.jsonl

tests/test_policy_export.py checks the C headers on a few dozen requests of fresh encodes; this runs the
same C driver on every request of the Δ=0 and oracle trajectories in oracle records (bench/oracle_data.py),
thousands of them over many clips, rates and GOP positions, and prints how far the C observation, action
and QP are from state.build_observation, the policy's own action (policy.Policy.act) and
state.action_to_qp. Needs a C compiler (cc).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import oracle_records  # noqa: E402
import policy  # noqa: E402
import policy_export  # noqa: E402
from protocol import request_from_dict  # noqa: E402
from state import OBS_DIM, action_to_qp  # noqa: E402


def trajectory_rows(paths: list[Path]) -> list[dict]:
    """Every stored request with its previous mini-GOP and the agent's observation (oracle_records.observations)."""
    rows = []
    for rec in oracle_records.read_records(paths):
        for key in ("baseline_steps", "oracle_steps"):
            steps = rec[key]
            obs, _ = oracle_records.observations(steps)
            prev = None
            for step, o in zip(steps, obs, strict=True):
                first = step["request"]["mg_in_gop"] == 0 or prev is None
                rows.append({"request": step["request"], "observation": o,
                             "prev_feedback": None if first else prev["feedback"],
                             "prev_base_qp": None if first else prev["request"]["base_qp"]})  # fmt: skip
                prev = step
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("records", nargs="+", help="oracle record files (bench/oracle_data.py)")
    p.add_argument("--policy", default="x264", help="the policy whose header computes the actions (default x264)")
    ns = p.parse_args(argv)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("export_check: error: no C compiler (cc or gcc)", file=sys.stderr)
        return 2
    rows = trajectory_rows([Path(f) for f in ns.records])
    ex = policy_export.exported_actor(ns.policy)
    pol = policy.load(policy.named(ns.policy))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / f"{ex.name}.h").write_text(policy_export.c_header(ex))
        shutil.copy(policy_export.STATE_HEADER, out)
        got = np.array(policy_export.run_c_driver(out, ex.name, rows, cc, out), dtype=np.float64)
    want_obs = np.array([r["observation"] for r in rows], dtype=np.float32)
    obs_err = np.abs(got[:, :OBS_DIM].astype(np.float32) - want_obs)
    want_act = np.array([float(pol.act(o)[0]) for o in want_obs])
    act_err = np.abs(got[:, OBS_DIM] - want_act)
    want_qp = [action_to_qp(a, request_from_dict(r["request"], Path("rq")), pol.max_delta_qp)
               for a, r in zip(want_act, rows, strict=True)]  # fmt: skip
    qp_diff = int(sum(int(g) != w for g, w in zip(got[:, OBS_DIM + 1], want_qp, strict=True)))
    print(f"command: python bench/export_check.py --policy {ns.policy} {' '.join(ns.records)}")
    print(f"machine: {platform.node()}, {platform.machine()}, Python {platform.python_version()}, compiler {cc}\n")
    print(
        "| requests | observation entries | max \\|C − Python\\| | entries not bit-identical | "
        "max \\|action C − policy\\| | QPs different |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {len(rows)} | {obs_err.size} | {obs_err.max():.3g} | {int((obs_err > 0).sum())} | {act_err.max():.3g} "
        f"| {qp_diff} |"
    )
    return 0



if __name__ == "__main__":
    sys.exit(main())
