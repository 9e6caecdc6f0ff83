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
