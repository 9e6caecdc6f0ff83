"""Adds protocol v2 fields (first_pass statistics, qp_scale_max) to the requests of oracle records.

The lookahead is rebuilt at --lookahead mini-GOPs (the encoder's default, 7, since v2; the
records were made with 4) from the fp_bpp of the encode's own requests.

    python bench/add_first_pass.py data/oracle_svtav1.jsonl --out data/oracle_svtav1_v2.jsonl

The oracle's records (bench/oracle_data.py) store every request the encoder sent. Records made
before protocol v2 lack the first-pass statistics; those depend only on the window's frames, so
they are recomputed here with the built-in encoder's own analysis (builtin_encoder/analysis.py,
rounded as its stat files round them) instead of re-running the search. Each request gets the
frames of its mini-GOP and of its lookahead mini-GOPs, as the encoder sends them.

`--propagation` adds only `first_pass.propagation` (stat file version 3, analysis.propagation over
each GOP) to requests that carry the other first-pass statistics, and leaves every other field as
it was:

    python bench/add_first_pass.py data/oracle_x264.jsonl --out data/oracle_x264_p.jsonl --propagation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clips  # noqa: E402
from builtin_encoder.analysis import Analyzer, frame_blocks, propagation_by_gop  # noqa: E402
from builtin_encoder.session import analysis_fields  # noqa: E402
from builtin_encoder.source import open_source  # noqa: E402

QP_SCALE_MAX = {"svtav1": 63, "x264": 51}


def windows_by_name() -> dict[str, clips.Window]:
    wins = [w for make in clips.WINDOW_SETS.values() for w in make()] + clips.heldout_windows()
    return {w.name: w for w in wins}


def analyse(win: clips.Window) -> list[dict[str, float]]:
    """Per-frame first-pass analysis of a window, as the encoder's stat file holds it."""
    analyzer = Analyzer()
    return [analysis_fields(analyzer.add(f.y)) for f in open_source(clips.materialise(win)).frames()]


def gop_propagation(win: clips.Window, keyint: int) -> list[float]:
    """Each frame's propagation over its own GOP (GOPs of `keyint` frames from frame 0), rounded as the stat file."""
    blocks = frame_blocks(f.y for f in open_source(clips.materialise(win)).frames())
    return [round(p, 4) for p in propagation_by_gop(blocks, keyint)]


def add_propagation(request: dict, prop: list[float]) -> None:
    """Sets first_pass.propagation of a request that has first_pass, for the frames its lists cover; in place."""
    fp = request.get("first_pass")
    if fp:
        fp["propagation"] = prop[request["first_frame"] : request["first_frame"] + len(fp["intra_cost"])]


def add_fields(request: dict, frames: list[dict[str, float]], codec: str, fp_bpp: list[float], lookahead: int) -> None:
    """Sets lookahead_fp_bpp to `lookahead` mini-GOPs and adds first_pass, qp_scale_max and version 2, in place.

    `fp_bpp`: every mini-GOP's fp_bpp in the encode (from its own request), for the lookahead.
    """
    first, mini_gop = request["first_frame"], request["frame_count"]
    request["lookahead_fp_bpp"] = fp_bpp[request["mg_index"] + 1 : request["mg_index"] + 1 + lookahead]
    # The lookahead mini-GOPs are full mini-GOPs of the same length, cut at the end of the encode.
    end = min(first + mini_gop * (1 + len(request["lookahead_fp_bpp"])), request["total_frames"])
    request["first_pass"] = {name: [frames[i][name] for i in range(first, end)] for name in frames[0]}
    request["qp_scale_max"] = QP_SCALE_MAX[codec]
    request["version"] = 2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", help="JSON-lines file of bench/oracle_data.py")
    p.add_argument("--out", required=True, help="where to write the records with the v2 fields")
    p.add_argument("--lookahead", type=int, default=7, help="mini-GOPs of lookahead, as the encoder's --lookahead")
    p.add_argument("--propagation", action="store_true", help="add only first_pass.propagation (v3 stat files)")
    ns = p.parse_args()
    wins = windows_by_name()
    cache: dict[str, list] = {}
    lines = [json.loads(line) for line in Path(ns.records).read_text().splitlines() if line.strip()]
    with open(ns.out, "w") as fh:
        for rec in lines:
            if "error" not in rec and ns.propagation:
                steps = rec["baseline_steps"] + rec.get("oracle_steps", [])
                if rec["window"] not in cache:  # the encode's GOP length: its first GOP's
                    cache[rec["window"]] = gop_propagation(wins[rec["window"]], steps[0]["request"]["gop_frames"])
                for step in steps:
                    add_propagation(step["request"], cache[rec["window"]])
            elif "error" not in rec:
                if rec["window"] not in cache:
                    cache[rec["window"]] = analyse(wins[rec["window"]])
                fp_bpp = [step["request"]["fp_bpp"] for step in rec["baseline_steps"]]
                for step in rec["baseline_steps"] + rec["oracle_steps"]:
                    add_fields(step["request"], cache[rec["window"]], rec["codec"], fp_bpp, ns.lookahead)
            fh.write(json.dumps(rec) + "\n")
    print(f"{len(lines)} records, {len(cache)} windows analysed -> {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
