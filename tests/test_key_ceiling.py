"""bench/key_ceiling.py: the ceilings of a key (and ramp) decision read off sweeps, and a policy file's share."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_imitation import _step

from bench import key_ceiling, loso_value

T = loso_value.TABLE


def _sweep(window: str, bpp: float, kind: str, gain: dict[int, float]) -> dict:
    """A one-GOP sweep of two mini-GOPs at equal bits: offset a moves the key (kind "key") or the second mini-GOP
    ("ramp") and gains gain[a] dB of PSNR-Y."""
    at = 0 if kind == "key" else 1
    cands = []
    for a in range(-4, 5):
        if a:
            offsets = [0, 0]
            offsets[at] = a
            cands.append({"offsets": offsets, "psnr_y": 38.0 + gain.get(a, -0.5), "bits": 10000})
    return {"key": f"svtav1/{window}/{bpp:.5f}/{kind}", "codec": "svtav1", "window": window, "bpp": bpp,
            "baseline": {"psnr_y": 38.0, "bits": 10000}, "baseline_steps": [_step(0, 30), _step(1, 30)],
            "candidates": cands}  # fmt: skip


def _records() -> tuple[list[dict], list[dict]]:
    # clip a: the key at -2 pays at both rates, -4 only at the first; clip b: the key never pays, the ramp +1 does
    keys = [_sweep("a_s1_f0-8", 0.05, "key", {-2: 0.2, -4: 0.3}), _sweep("a_s1_f0-8", 0.2, "key", {-2: 0.2}),
            _sweep("b_s1_f0-8", 0.05, "key", {}), _sweep("b_s1_f0-8", 0.2, "key", {})]  # fmt: skip
    ramps = [_sweep("b_s1_f0-8", 0.05, "ramp", {1: 0.1}), _sweep("b_s1_f0-8", 0.2, "ramp", {1: 0.1, 3: 0.4})]
    return keys, ramps


def test_ceilings_pick_each_clips_one_best_choice_and_each_sweeps_best():
    keys, ramps = _records()
    slopes = {"a_s1_f0-8": 0.0, "b_s1_f0-8": 0.0}  # equal bits everywhere: the value is the PSNR-Y change
    _, key, windows = loso_value.sweep_table(keys, slopes)
    ramp = loso_value.paired_table(ramps, keys, slopes)  # read at the ramp's first mini-GOP: the second
    assert np.isnan(ramp[:2]).all() and ramp[2, T + 1] == pytest.approx(0.1) and ramp[3, T + 3] == pytest.approx(0.4)
    rows = key_ceiling.ceiling_rows(key, ramp, windows)
    # a: one key offset for both rates: -2 (0.2, 0.2) beats -4 (0.3, -0.5); each sweep's best takes -4 at the first
    assert rows["key: each clip's one best offset (content known)"] == pytest.approx([0.2, 0.2, 0.0, 0.0])
    assert rows["key: each sweep's best offset (upper bound)"] == pytest.approx([0.3, 0.2, 0.0, 0.0])
    # out of sample, each rate takes the offset best on the clip's other rate: a's first rate gets -2 (0.2), its
    # second gets the first rate's -4 (-0.5 there); b's key never pays, so both its rates take Δ=0
    oos = rows["key: each clip's best offset on its other rates (content known, out of sample)"]
    assert oos == pytest.approx([0.2, -0.5, 0.0, 0.0])
    ramp_oos = rows["ramp: each clip's best offset on its other rates (out of sample)"]
    assert np.isnan(ramp_oos[:2]).all() and ramp_oos[2:] == pytest.approx([-0.5, 0.1])  # +3 at 0.05, +1 at 0.2
    # a window with one rate has no other rate to choose on: it answers Δ=0, whatever its own best
    assert loso_value.window_best_other_rates(np.array([[0.3, 0.0, -0.1]]), ["w"]) == pytest.approx([0.0])
    # b: the ramp's +1 (0.1, 0.1) beats +3 (-0.5, 0.4) as one choice; a has no ramp sweep
    assert np.nan_to_num(rows["ramp: each clip's one best offset (content known)"]) == pytest.approx([0, 0, 0.1, 0.1])
    assert rows["ramp: each sweep's best offset (upper bound)"] == pytest.approx([0.0, 0.0, 0.1, 0.4])
    both = rows["each clip's one best choice, key or ramp offset (content known)"]
    assert np.nan_to_num(both) == pytest.approx([0.2, 0.2, 0.1, 0.1])


def test_key_ceiling_prints_the_table_and_refuses_what_it_cannot_judge(tmp_path, capsys):
    keys, ramps = _records()
    k, r, other = tmp_path / "k.jsonl", tmp_path / "r.jsonl", tmp_path / "o.jsonl"
    k.write_text("".join(json.dumps(x) + "\n" for x in keys))
    r.write_text("".join(json.dumps(x) + "\n" for x in ramps))
    assert key_ceiling.main(["--sweeps", str(k), "--ramp", str(r), "--policy", "svtav1"]) == 0
    out = capsys.readouterr().out
    assert "4 key sweeps of 2 clips, ramp sweeps at 2 of their points" in out
    assert "| key: each clip's one best offset (content known) | +0.200 | +0.000 | **+0.1000** |" in out
    assert "policies/svtav1.pt: its own key answers" in out and "| ramp offset, mean dB |" in out
    other.write_text(json.dumps({**ramps[0], "window": "c_s1_f0-8"}) + "\n")  # a ramp at no key sweep's point
    with pytest.raises(SystemExit):
        key_ceiling.main(["--sweeps", str(k), "--ramp", str(other)])
    assert "no ramp sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        key_ceiling.main(["--sweeps", str(k), "--policy", "nope"])
    assert "--policy" in capsys.readouterr().err
