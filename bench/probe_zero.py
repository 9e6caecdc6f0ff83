"""Write the probes' zero encode into probed records searched before the encoder sent it (PROTOCOL.md §4.1.2).

    python bench/probe_zero.py IN.jsonl[.gz] OUT.jsonl      # seconds

The encoder's zero encode is the GOP coded at Δ=0 throughout under a copy of the rate control: on a record of
one GOP (every oracle window and key sweep of bench/oracle_data.py) that is the record's own Δ=0 encode, bit for
bit (tests/test_encoder_key_probe.py checks it against a whole encode). So each probe object of such a record
gets zero_bits and zero_psnr_y from the record's `baseline`. A record of several GOPs is refused: its later GOPs'
zero encodes were never coded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import oracle_records  # noqa: E402

PROBES = ("key_probe", "ramp_probe")


def with_zero(record: dict) -> dict:
    """The record with zero_bits / zero_psnr_y in every probe object of its trajectories; ValueError if not one GOP."""
    steps = record["baseline_steps"]
    if any(s["request"]["gop_index"] != 0 for s in steps) or steps[0]["request"]["gop_frames"] != record["frames"]:
        raise ValueError(f"{record['key']}: not one GOP; its zero encodes cannot be read off the record")
    zero_bits, zero_psnr = record["baseline"]["bits"], round(record["baseline"]["psnr_y"], 4)
    for trajectory in ("baseline_steps", "oracle_steps"):
        for step in record.get(trajectory) or []:
            for name in PROBES:
                if probe := step["request"].get(name):
                    probe["zero_bits"], probe["zero_psnr_y"] = zero_bits, zero_psnr
    return record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", type=Path, help="probed records (oracle_data.py --key-probe), .jsonl or .jsonl.gz")
    p.add_argument("out", type=Path, help="the same records with the zero encode, .jsonl")
    ns = p.parse_args()
    if not ns.records.is_file():
        p.error(f"{ns.records}: no such file")
    try:
        records = [with_zero(r) for r in oracle_records.read_records([ns.records])]
    except ValueError as e:
        p.error(str(e))
    ns.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"{ns.out}: {len(records)} records, the zero encode written into their probes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
