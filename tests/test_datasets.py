"""The oracle records in datasets/: what the shipped SVT-AV1 probe recipe is fitted on, searched once and kept."""

from __future__ import annotations

from pathlib import Path

import imitation
import make_policy
import oracle_records
from bench import oracle_data

SVTAV1_PROBE_RECORDS = Path(__file__).resolve().parent.parent / "datasets" / "oracle_svtav1_kp.jsonl.gz"


def test_the_svtav1_probe_records_hold_every_point_of_its_recipe() -> None:
    """Unpacked to data/, they let `make_policy.py --codec svtav1 --key-probe` fit without one search: every point of
    the recipe's window sets and key sweeps has its record. Fails when the recipe gains a set the file lacks."""
    recipe = imitation.recipe_for("svtav1", key_probe=True)
    records = oracle_records.read_records([SVTAV1_PROBE_RECORDS])
    wanted = {k + "/kp" for seed in recipe.draws for k in oracle_data.point_keys("svtav1", recipe.windows, seed=seed)}
    wanted |= {k + "/kp" for k in oracle_data.point_keys("svtav1", recipe.key_sweeps, "key")}
    chosen = make_policy.select_records(records, "svtav1", recipe.windows, recipe.key_sweeps, [], recipe.draws, "/kp")
    assert {r["key"] for r in chosen} == wanted
    assert len(chosen) == len(wanted) > 0
    assert all(r["codec"] == "svtav1" and r["baseline_steps"] and r["oracle_steps"] for r in records)


def test_every_probe_in_the_records_carries_the_zero_encode_its_record_coded() -> None:
    """bench/probe_zero.py wrote each one-GOP record's Δ=0 encode into its probes: the encoder's zero encode
    (tests/test_encoder_key_probe.py). A probed record without it would fit a pick policy on a margin of 0."""
    records = oracle_records.read_records([SVTAV1_PROBE_RECORDS])
    probes = 0
    for r in records:
        for step in r["baseline_steps"] + r["oracle_steps"]:
            for name in ("key_probe", "ramp_probe"):
                if probe := step["request"].get(name):
                    assert (probe["zero_bits"], probe["zero_psnr_y"]) == (r["baseline"]["bits"],
                                                                          round(r["baseline"]["psnr_y"], 4))
                    probes += 1
    assert probes >= 6 * len(records)  # the key and five ramp states of each trajectory, at least


def test_probe_zero_refuses_a_record_of_several_gops() -> None:
    from bench import probe_zero

    record = oracle_records.read_records([SVTAV1_PROBE_RECORDS])[0]
    record["baseline_steps"][-1]["request"]["gop_index"] = 1
    try:
        probe_zero.with_zero(record)
    except ValueError as e:
        assert "not one GOP" in str(e) and record["key"] in str(e)
    else:
        raise AssertionError("a record of two GOPs was given zero encodes")
