"""bench/key_probe.py: the probe rule and its leave-one-source-out threshold, on tables of known values; the
sweeps' own encodes as the probe, for key and ramp sweeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_key_ceiling import _sweep

from bench import key_probe
from bench.key_probe import ProbeTable, T
from state import FEATURE_NAMES


def _table(probe: list[float], best: list[int], sources: list[str]) -> ProbeTable:
    """Points whose value is 0.1 dB at offset `best` (0.05 at offsets of the same sign), -0.1 at the others'."""
    values = np.full((len(probe), 2 * T + 1), -0.1)
    values[:, T] = 0.0
    for i, b in enumerate(best):
        if b:
            values[i, T + np.sign(b) * np.arange(1, T + 1)] = 0.05
            values[i, T + b] = 0.1
    n = len(probe)
    encodes = np.full((n, 2 * T + 1, 2), np.nan)
    return ProbeTable(values, np.array(probe), np.zeros((n, 1)), [f"w{i}" for i in range(n)], np.array(sources),
                      np.full(n, 5.0), encodes)  # fmt: skip


def test_the_rule_answers_finer_where_the_probe_says_finer_pays_and_zero_inside_tau():
    probe = np.array([0.3, -0.3, 0.01, -0.01])
    assert key_probe.rule(probe, 0.05, 2).tolist() == [-2, 2, 0, 0]
    assert key_probe.rule(probe, 0.0, 1).tolist() == [-1, 1, -1, 1]
    values = np.full((2, 2 * T + 1), np.nan)
    values[:, T] = 0.0
    values[0, T - 2] = 0.4
    assert key_probe.value_of(values, np.array([-2, 3])).tolist() == [0.4, 0.0]  # not encoded: Δ=0's value


def test_each_source_gets_the_threshold_best_on_the_others():
    # Source a: small probe figures that mislead (the best offset has the other sign), large ones that are right;
    # source b: every probe right. On b alone τ 0 is best; on a alone a τ that skips the misleading ones.
    t = _table([0.03, -0.03, 0.3, -0.3, 0.03, -0.03, 0.3],
               [2, -2, -2, 2, -2, 2, -2], ["a", "a", "a", "a", "b", "b", "b"])  # fmt: skip
    answers = key_probe.loso_answers(t, 2)
    assert answers[4:].tolist() == [0, 0, -2]  # b under a's best τ (0.05: a's small figures mislead)
    assert answers[:4].tolist() == [-2, 2, -2, 2]  # a under b's best τ (0): every figure followed
    assert key_probe.best_tau(t, 2, t.sources == "a") == 0.05
    c = key_probe.sweep_contrast(t.values)
    assert c[0] < 0 < c[1]  # point 0's best offset is +2: the coarser side pays


def test_bd_rate_per_window_takes_each_answers_encode_and_one_of_each_repeated_baseline():
    t = _table([0.0] * 4, [0] * 4, ["a"] * 4)
    t.windows = ["w"] * 4
    bits = np.array([1e5, 2e5, 2e5, 4e5])
    t.encodes[:, T] = np.stack([bits, [30.0, 33.0, 33.0, 36.0]], axis=1)  # points 1 and 2: the same stream
    t.encodes[:, T - 2] = np.stack([bits * 0.9, [30.0, 33.0, 33.0, 36.0]], axis=1)  # the same quality, 10% fewer bits
    assert key_probe.window_bd_rates(t, np.zeros(4, int))["w"] == 0.0
    assert abs(key_probe.window_bd_rates(t, np.full(4, -2))["w"] - -10.0) < 1e-9
    assert key_probe.window_bd_rates(t, np.full(4, 3))["w"] == 0.0  # not encoded: Δ=0's encode



def test_without_probe_files_each_sweeps_own_encodes_are_its_probe_and_a_ramp_is_read_after_the_key(tmp_path, capsys):
    # equal bits everywhere, so each offset's value is its PSNR-Y change; offsets not given lose 0.5 dB
    ramps = [_sweep("b_s1_f0-8", 0.05, "ramp", {-3: 0.3, -2: 0.2, 3: 0.1}), _sweep("b_s1_f0-8", 0.2, "ramp", {3: 0.4})]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ramps))
    t = key_probe.probe_table(path, None, search="ramp")
    assert t.probe == pytest.approx([0.3 - 0.1, -0.5 - 0.4])  # v(-3) - v(+3) of each sweep's own encodes
    assert t.values[0, T - 2] == pytest.approx(0.2) and t.values[1, T + 3] == pytest.approx(0.4)
    assert (t.obs[:, FEATURE_NAMES.index("has_key")] == 0).all()  # the state of the first mini-GOP the ramp moves
    assert key_probe.value_of(t.values, key_probe.rule(t.probe, 0.05, 2)).tolist() == pytest.approx([0.2, -0.5])
    with pytest.raises(ValueError, match="no probe at a key sweep's point"):
        key_probe.probe_table(path, None, search="key")  # a ramp file holds no key sweep
    with pytest.raises(SystemExit):
        key_probe.main(["--search", "ramp", "--sweeps", str(path), "--policy", "svtav1"])
    assert "--policy shows a policy's key answers" in capsys.readouterr().err
    assert key_probe.main(["--search", "ramp", "--sweeps", str(path)]) == 0
    assert "2 ramp sweeps of 1 windows" in capsys.readouterr().out
