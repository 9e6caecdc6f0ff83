"""A policy for a team's own encoder: make_policy.py --encoder CMD --inputs CLIPS, end to end on real encodes.

The built-in encoder stands in for the team's encoder, started as an outside program: only the
protocol's files and the command line connect them, as PROTOCOL.md describes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from script_run import run_script

import clips
import oracle_records
import own_clips
import policy
from bench import oracle_data
from builtin_encoder.source import open_source
from state import OBS_DIM

ROOT = Path(__file__).resolve().parent.parent
OWN = f"{sys.executable} -m builtin_encoder"
# The built-in path's own flags (eval_runs.Point.pass2_args), so both paths run the same encodes.
OWN_ARGS = "--codec|x264|--rc-mode|1|--keyint|64|--mini-gop|8"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Two small clips of two sources in a folder, as a team's training clips would be."""
    folder = tmp_path_factory.mktemp("clips")
    for win, name in ((clips.Window("carphone_pristine.mp4", 0, 68, scale=2), "carphone pristine.y4m"),
                      (clips.Window("bikes.mp4", 0, 64, scale=4), "bikes.y4m")):  # fmt: skip
        shutil.copy(clips.materialise(win), folder / name)
    return folder


def _make_policy(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "make_policy.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_make_policy_on_an_outside_encoder_writes_a_policy_from_its_encodes(inputs, tmp_path):
    data, out = tmp_path / "records.jsonl", tmp_path / "mine.pt"
    # a value after --encoder-args that starts with "--" stays its value, as in evaluate.py
    res = _make_policy("--codec", "x264", "--inputs", str(inputs), "--frames", "8", "--encoder", OWN,
                       "--encoder-args", OWN_ARGS, "--data", str(data), "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    records = [json.loads(line) for line in data.read_text().splitlines()]
    # 2 clips x 3 rates, each a real search: the baseline and the oracle's candidates
    assert len(records) == 6 and all("error" not in r for r in records)
    assert {r["window"] for r in records} == {"carphone-pristine_s1_f0-8", "bikes_s1_f0-8"}
    assert all(r["codec"] == "encoder" and r["encoder"] == OWN and r["frames"] == 8 for r in records)
    assert all(len(r["candidates"]) >= 2 and len({c["bits"] for c in r["candidates"]}) > 1 for r in records)
    pol = policy.load(out)
    assert pol.codec == "encoder" and pol.provenance["encoder"] == OWN
    assert sorted(pol.provenance["inputs"].split(",")) == ["bikes_s1_f0-8", "carphone-pristine_s1_f0-8"]
    answer = policy.PolicyLearner(pol).choose(np.zeros(OBS_DIM, dtype=np.float32))
    assert answer.shape == (1,) and -1.0 <= float(answer[0]) <= 1.0

    # The same point through the built-in path (its own flags, quality from its summary instead of
    # the protocol's feedback): the same encodes, bit for bit.
    rec = records[0]
    job = {"input": rec["input"], "clip": rec["clip"], "name": rec["window"], "frames": 8, "bpp": rec["bpp"],
           "codec": "x264", "key": "k", "work": str(tmp_path / "builtin"), "search": "oracle"}  # fmt: skip
    builtin = oracle_data.run_point(job)
    assert builtin["baseline"]["bits"] == rec["baseline"]["bits"]
    assert builtin["baseline"]["psnr_y"] == pytest.approx(rec["baseline"]["psnr_y"], abs=1e-6)
    assert [c["bits"] for c in builtin["candidates"]] == [c["bits"] for c in rec["candidates"]]


def test_make_policy_refuses_own_inputs_it_cannot_use_before_any_encode(inputs, tmp_path):
    one = next(inputs.iterdir())
    d, o = str(tmp_path / "d.jsonl"), str(tmp_path / "o.pt")
    cases = [
        (["--inputs", str(inputs)], "name --data and --out"),
        (["--inputs", str(one), "--data", d, "--out", o], "1 clip; give 2 or more"),
        (["--inputs", str(inputs), "--windows", "train,nope", "--data", d, "--out", o], "unknown window set"),
        (["--inputs", str(tmp_path / "none"), "--data", d, "--out", o], "no video file matches"),
        (["--encoder-args", "--codec|x264", "--data", d, "--out", o], "--encoder-args needs --encoder"),
    ]
    for args, message in cases:
        res = run_script(ROOT / "make_policy.py", "--codec", "x264", *args, cwd=ROOT)  # refused before any work
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr[-500:])
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_failing_outside_encoder_is_reported_per_point_without_a_traceback(inputs, tmp_path):
    data = tmp_path / "records.jsonl"
    res = _make_policy("--codec", "x264", "--inputs", str(inputs), "--frames", "8", "--encoder=/bin/false",
                       "--data", str(data), "--out", str(tmp_path / "p.pt"))  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    assert "no oracle points" in res.stderr and not (tmp_path / "p.pt").exists()
    records = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(records) == 6 and all("exited with code 1" in r["error"] and "logs in" in r["error"] for r in records)
    # each search encodes in a folder of its own output file's, never one another run may empty
    own = oracle_data.work_folder(data)
    assert all(f"logs in {own}/" in r["error"] for r in records)
    assert own != oracle_data.work_folder(tmp_path / "other" / data.name)
    assert oracle_data.finished_keys(data) == set()  # failed points are searched again next time


def test_own_windows_keep_each_clip_one_source_and_augment_it_with_still_camera_copies(inputs, tmp_path):
    clip = next(p for p in inputs.iterdir() if p.name.startswith("carphone"))
    found = own_clips.windows(clip, 16, True, tmp_path / "aug")
    assert [w.name for w in found] == ["carphone-pristine_s1_f0-16", "carphone-pristine_s1_r8n1_f0-16",
                                       "carphone-pristine_s1_r16n1_f0-16"]  # fmt: skip
    assert {oracle_records.source_of(w.name) for w in found} == {"carphone-pristine"}  # left out together
    assert found[0].path == clip and own_clips.materialise(found[0]) == clip  # the clip itself: nothing written
    first = next(open_source(clip).frames(limit=1)).y.astype(float)
    for w in found[1:]:
        path = own_clips.materialise(w)
        ys = [f.y.astype(float) for f in open_source(path).frames()]
        assert len(ys) == 16 and path.parent == tmp_path / "aug"
        assert abs(np.mean(ys[7] - first)) < 0.2 and 0.5 < np.std(ys[7] - first) < 1.5  # frame 0 + noise σ 1
        stamp = path.stat().st_mtime_ns
        assert own_clips.materialise(w) == path and path.stat().st_mtime_ns == stamp  # written once
    slow = [f.y.astype(float) for f in open_source(found[1].path).frames()]
    assert np.std(slow[8] - first) > 2 * np.std(slow[7] - first)  # slow: frame 8 shows the clip's next frame
    # rates depend on the window's name only: adding clips or copies leaves the others' points alone
    rates = [own_clips.target_rates(name, 3, 0.02, 0.4, 0) for name in ("a_s1_f0-64", "a_s1_f0-64", "b_s1_f0-64")]
    assert rates[0] == rates[1] != rates[2] and all(0.02 <= r <= 0.4 for r in rates[0])
    assert own_clips.stem_of(Path("/x/my_scene sunset.y4m")) == "my-scene-sunset"
    twins = [w for p in ("a/my_scene.y4m", "b/my scene.mp4") for w in own_clips.windows(Path(p), 64, False, tmp_path)]
    assert "get the same name 'my-scene_s1_f0-64'" in own_clips.names_error(twins)
    assert own_clips.names_error(found) is None


def test_the_fit_takes_your_clips_and_the_window_sets_named_with_them():
    import make_policy

    def rec(codec: str, window: str, bpp: float, search: str = "oracle") -> dict:
        return {"key": oracle_data.point_key(codec, window, bpp, search), "codec": codec, "window": window,
                "search": search}  # fmt: skip

    screen = next(iter(oracle_data.point_keys("encoder", "screen")))  # a point of the bundled set `screen`
    window, bpp = screen.split("/")[1], float(screen.split("/")[2])
    every = [rec("encoder", "mine_s1_f0-64", 0.1), rec("encoder", "mine_s1_r8n1_f0-64", 0.2),
             rec("encoder", window, bpp), rec("encoder", window, 0.12345),  # a rate of no draw: not the set's
             rec("x264", "mine_s1_f0-64", 0.1), rec("encoder", "other_s1_f0-64", 0.1)]  # fmt: skip
    inputs = ["mine_s1_f0-64", "mine_s1_r8n1_f0-64"]
    got = make_policy.select_records(every, "encoder", "screen", "", inputs)
    assert [(r["window"], r["key"]) for r in got] == [(window, screen), ("mine_s1_f0-64", every[0]["key"]),
                                                      ("mine_s1_r8n1_f0-64", every[1]["key"])]  # fmt: skip
    assert make_policy.select_records(every, "encoder", "", "", inputs) == every[:2]
    # --draws 0,2: the set's points at the rates of both draws, not at a third draw's
    at = {seed: sorted(oracle_data.point_keys("encoder", "screen", seed=seed)) for seed in (0, 2, 3)}
    pooled = [rec("encoder", k.split("/")[1], float(k.split("/")[2])) for seed in (0, 2, 3) for k in at[seed]]
    got = make_policy.select_records(pooled, "encoder", "screen", "", [], (0, 2))
    assert sorted(r["key"] for r in got) == sorted(at[0] + at[2]) and not set(at[3]) & set(at[0] + at[2])
