"""policy_export.py: the shipped policies as JSON weights and a C header, checked against the agent's own answers
on a real encode's requests (built-in encoder) and on random observations; the header compiled with the system's C
compiler."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import policy
import policy_export
import protocol
from models import Actor
from state import FEATURE_NAMES, OBS_DIM, action_to_qp, build_observation, qp_answer

ROOT = Path(__file__).resolve().parent.parent
CC = shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="module", params=policy.shipped_names())
def exported(request, tmp_path_factory):
    """(name, folder): the shipped policy `name` exported with 40-frame encodes for its vectors."""
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    paths = policy_export.export(request.param, out, frames=40, n_random=100)
    names = [f"{request.param}.json", f"{request.param}.h", "rlrc_state.h", f"{request.param}_vectors.json"]
    assert [p.name for p in paths] == names
    return request.param, out


def _vectors(name: str, out: Path) -> dict:
    return json.loads((out / f"{name}_vectors.json").read_text())


def test_json_weights_answer_as_the_policy(exported):
    name, out = exported
    ex = policy_export.load_exported(out / f"{name}.json")
    pol = policy.load(policy.shipped_policy(name))
    vec = _vectors(name, out)
    assert len(vec["encode"]) >= 8 and len(vec["random"]) == 100
    for row in vec["encode"] + vec["random"]:
        obs = np.array(row["observation"], dtype=np.float32)
        assert abs(ex.action(obs) - float(pol.act(obs)[0])) < 1e-5
        assert abs(ex.action(obs) - row["action"]) < 1e-6
    # the shipped policies answer something other than 0 somewhere: the check is not on a constant
    assert len({round(r["action"], 3) for r in vec["random"]}) > 10


def test_vectors_rebuild_from_their_messages(exported, tmp_path):
    """What a port of state.py checks itself against: observation and QP from the request and feedback as written."""
    name, out = exported
    vec = _vectors(name, out)
    firsts = 0
    for row in vec["encode"]:
        req = protocol.parse_request(json.dumps(row["request"]), tmp_path / "rq.json")
        fb = row["prev_feedback"]
        prev = None if fb is None else protocol.parse_feedback(json.dumps(fb), tmp_path / "fb.json")
        firsts += prev is None
        obs = build_observation(req, prev, row["prev_base_qp"])
        np.testing.assert_allclose(obs, np.array(row["observation"], dtype=np.float32), atol=1e-6)
        assert row["qp"] == action_to_qp(row["action"], req, vec["max_delta_qp"])
        assert row["qp"] == qp_answer(row["action"], req.base_qp, req.qp_min, req.qp_max,
                                                  req.qp_scale_max, vec["max_delta_qp"])  # fmt: skip
    assert 0 < firsts < len(vec["encode"])  # GOP starts and mini-GOPs with a previous feedback both checked


@pytest.mark.skipif(CC is None, reason="no C compiler (cc or gcc) on this machine")
def test_c_headers_give_the_agents_observations_and_answers(exported, tmp_path):
    """The whole decision in C: rlrc_state.h's observation from the request, the policy header's action and QP."""
    name, out = exported
    vec = _vectors(name, out)
    rows = vec["encode"]
    assert all("first_pass" in r["request"] for r in rows)  # the fp_* features too (propagation: x264, SVT-AV1)
    # gop_reuse past the lookahead: a GOP longer than the request's first_pass lists
    assert any(len(r["request"]["first_pass"]["intra_cost"]) < r["request"]["gop_frames"] - r["request"]["mg_in_gop"]
               * r["request"]["frame_count"] for r in rows)  # fmt: skip
    assert any(r["request"]["first_pass"].get("propagation") for r in rows) or name == "vp9"
    assert any(r["request"].get("key_probe") for r in rows) or name == "vp9"  # the encoder's --key-probe
    assert any(r["request"].get("ramp_probe") for r in rows) or name == "vp9"
    best = [FEATURE_NAMES.index(n) for n in ("key_probe_best", "ramp_probe_best")]  # with --probe-zero
    assert any(r["observation"][i] != 0.0 for r in rows for i in best) or name == "vp9"
    answers = policy_export.run_c_driver(out, name, rows, CC, tmp_path, flags=("-Wall", "-Wextra", "-Werror"))
    assert len(answers) == len(rows)
    for row, got in zip(rows, answers, strict=True):
        np.testing.assert_allclose(np.array(got[:OBS_DIM], dtype=np.float32), row["observation"], atol=1e-6)
        assert abs(float(got[OBS_DIM]) - row["action"]) < 1e-5
        assert int(got[OBS_DIM + 1]) == row["qp"]


@pytest.mark.skipif(CC is None, reason="no C compiler (cc or gcc) on this machine")
def test_c_state_reads_the_probes_as_state_py_does(exported, tmp_path):
    """A GOP's first requests with a key_probe (the encoder's --key-probe) give the same key_probe feature in C, and
    mini-GOP 1's with a ramp_probe the same ramp_probe feature; with the zero encode, the same probe_best features
    (the finer encode best, the coarser, Δ=0)."""
    from state import probe_best, ramp_probe_feature

    name, out = exported
    rows = [dict(r) for r in _vectors(name, out)["encode"] if r["request"]["mg_in_gop"] == 0]
    probes = [{"offset": 3, "finer_bits": 240000, "finer_psnr_y": 36.2, "coarser_bits": 236000, "coarser_psnr_y": 36.5,
               "zero_bits": 238000, "zero_psnr_y": 36.3},  # the coarser encode best
              {"offset": 3, "finer_bits": 200000, "finer_psnr_y": 30.1, "coarser_bits": 210000, "coarser_psnr_y": 29.7,
               "zero_bits": 202000, "zero_psnr_y": 29.9},  # the finer one (the coarser one off the rate band)
              {"offset": 2, "finer_bits": 5000, "finer_psnr_y": 45.0, "coarser_bits": 5000, "coarser_psnr_y": 44.0},
              {"offset": 2, "finer_bits": 5000, "finer_psnr_y": 45.0, "coarser_bits": 5000, "coarser_psnr_y": 44.0,
               "zero_bits": 5000, "zero_psnr_y": 45.5}]  # fmt: skip
    for row, probe in zip(rows, probes, strict=False):
        row["request"] = {**row["request"], "key_probe": probe}
    rows = rows[: len(probes)]
    assert rows
    alone = dict(rows[0])  # a GOP of one mini-GOP: nothing inherits its key, the feature is 0 in both
    alone["request"] = {**alone["request"], "mgs_in_gop": 1, "gop_frames": alone["request"]["frame_count"]}
    rows.append(alone)
    later = [dict(r) for r in _vectors(name, out)["encode"] if r["request"]["mg_in_gop"] == 1][:2]
    for row, probe in zip(later, probes, strict=False):  # the ramp probe, on mini-GOP 1
        row["request"] = {**row["request"], "ramp_probe": probe}
    rows += later
    answers = policy_export.run_c_driver(out, name, rows, CC, tmp_path, flags=("-Wall", "-Wextra", "-Werror"))
    k, r = FEATURE_NAMES.index("key_probe"), FEATURE_NAMES.index("ramp_probe")
    rb = FEATURE_NAMES.index("ramp_probe_best")
    signs = {np.sign(probe_best(protocol.KeyProbe(**row["request"]["key_probe"]))) for row in rows[:2]}
    assert signs == {-1.0, 1.0}  # the coarser encode best, then the finer (and Δ=0 best, no zero encode: 0)
    for row, got in zip(rows, answers, strict=True):
        req = protocol.parse_request(json.dumps(row["request"]), tmp_path / "rq.json")
        if req.mg_in_gop == 0:
            obs = build_observation(req, None, None)
            assert (obs[k] != 0.0) == (req.mgs_in_gop > 1)
        else:  # the row's own previous mini-GOP stays in the C driver's input: only the ramp feature changed
            obs = np.array(row["observation"], dtype=np.float32)
            obs[r] = np.clip(ramp_probe_feature(req), -4.0, 4.0)
            obs[rb] = np.clip(probe_best(req.ramp_probe), -4.0, 4.0)
            assert obs[r] != 0.0 and obs[k] == 0.0 and obs[rb] != 0.0
        np.testing.assert_allclose(np.array(got[:OBS_DIM], dtype=np.float32), obs, atol=1e-6)


def _c_actions(header_dir: Path, name: str, observations: list[list[float]], work: Path) -> list[float]:
    """rlrc_NAME_action of NAME.h (compiled with the system's C compiler) on each observation."""
    source = work / "net.c"
    source.write_text(
        '#include <stdio.h>\n#include "NAME.h"\nint main(void) {\n    float obs[RLRC_NAME_OBS_DIM];\n    for (;;) {\n'
        '        for (int i = 0; i < RLRC_NAME_OBS_DIM; i++)\n            if (scanf("%f", &obs[i]) != 1) return 0;\n'
        '        printf("%.9g\\n", rlrc_NAME_action(obs));\n    }\n}\n'.replace("RLRC_NAME", f"RLRC_{name.upper()}")
        .replace("rlrc_NAME", f"rlrc_{name}").replace("NAME.h", f"{name}.h")
    )  # fmt: skip
    exe = work / "net"
    subprocess.run([CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{header_dir}", str(source), "-o",
                    str(exe), "-lm"], check=True, capture_output=True, text=True)  # fmt: skip
    text = "\n".join(" ".join(f"{v:.9g}" for v in o) for o in observations) + "\n"
    return [float(x) for x in subprocess.run([str(exe)], input=text, capture_output=True, text=True).stdout.split()]


def test_random_observations_give_the_same_actions_in_c(exported, tmp_path):
    """The network alone on observations a short encode does not reach (random in [-2, 2])."""
    name, out = exported
    if CC is None:
        pytest.skip("no C compiler (cc or gcc) on this machine")
    vec = _vectors(name, out)
    got = _c_actions(out, name, [r["observation"] for r in vec["random"]], tmp_path)
    assert len(got) == len(vec["random"]) == 100
    assert max(abs(g - r["action"]) for g, r in zip(got, vec["random"], strict=True)) < 1e-5


@pytest.mark.skipif(CC is None, reason="no C compiler (cc or gcc) on this machine")
def test_a_policy_that_fades_finer_keys_fades_them_in_json_and_c_alike(tmp_path):
    """policy.py's fade_finer_keys (a short GOP's finer key answer times clip(gop_left / (7/8), 0, 1)) is part of
    the exported decision: NAME.json says so, and the header and ExportedActor.action apply it as policy.act does."""
    from state import FEATURE_NAMES

    torch.manual_seed(0)
    actor = Actor(OBS_DIM, 1, (16,))
    for fade in (True, False):
        policy.save(tmp_path / f"f{fade:d}.pt", actor, "svtav1", 4, 0.02, {}, FEATURE_NAMES, fade)
    fading, plain = policy.load(tmp_path / "f1.pt"), policy.load(tmp_path / "f0.pt")
    ex = policy_export.exported_actor(str(tmp_path / "f1.pt"))
    (tmp_path / "f1.json").write_text(json.dumps(ex.to_json()))
    assert policy_export.load_exported(tmp_path / "f1.json").fade_finer_keys and ex.fade_finer_keys
    assert not policy_export.exported_actor(str(tmp_path / "f0.pt")).fade_finer_keys
    obs = np.random.default_rng(1).uniform(-2.0, 2.0, size=(300, OBS_DIM)).astype(np.float32)
    obs[::2, FEATURE_NAMES.index("has_key")] = 1.0  # half of them keys, of GOPs of 1 to 9 mini-GOPs
    obs[:, FEATURE_NAMES.index("gop_left")] = [(n - 1) / n for n in np.arange(300) % 9 + 1]
    want = np.array([fading.act(o)[0] for o in obs])
    assert (np.abs(want - np.array([plain.act(o)[0] for o in obs])) > 1e-3).sum() > 20  # the fade acts here
    assert np.abs(np.array([ex.action(o) for o in obs]) - want).max() < 1e-6
    (tmp_path / "f1.h").write_text(policy_export.c_header(ex))
    got = _c_actions(tmp_path, "f1", obs.tolist(), tmp_path)
    assert len(got) == 300 and np.abs(np.array(got) - want).max() < 1e-5


def test_qp_rounds_half_to_even_as_the_header_does():
    # action * 4 = 2.5 and -2.5: Python's round (and C's nearbyint) give 2 and -2, not 3 and -3
    assert qp_answer(0.625, 30, 0, 63, 63, 4) == 32
    assert qp_answer(-0.625, 30, 0, 63, 63, 4) == 28
    assert qp_answer(0.875, 30, 0, 63, 63, 4) == 34  # 3.5 -> 4
    assert qp_answer(1.0, 62, 0, 63, 63, 4) == 63  # clamped to qp_max
    assert qp_answer(0.5, 100, 0, 255, 255, 4) == 108  # VP9: unit 255/63, 8.10 -> 8


def test_unknown_policy_is_a_clear_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "policy_export", "no-such-policy", "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert "no-such-policy: no such file, nor a shipped policy" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()


def test_a_file_that_is_not_a_policy_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    done = subprocess.run([sys.executable, "-m", "policy_export", str(bad), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and str(bad) in done.stderr and "Traceback" not in done.stderr


def test_a_training_checkpoint_exports_its_actor_on_every_feature(tmp_path):
    import evaluate
    import learners
    import main
    from config import Config
    from replay import ReplayBuffer
    from sac_agent import SACAgent

    cfg = Config(ckpt_dir=str(tmp_path))
    agent = SACAgent(OBS_DIM, learners.ACT_DIM, cfg.sac, "cpu", seed=3)
    path = tmp_path / "checkpoint_epoch_1.pt"
    main.save_checkpoint(cfg, path, agent, ReplayBuffer(8, OBS_DIM, learners.ACT_DIM), learners.Counters(), 1, "")
    out = tmp_path / "export"
    policy_export.export(str(path), out, codec="x264", frames=16, n_random=20)
    ex = policy_export.load_exported(out / "checkpoint_epoch_1.json")
    assert ex.inputs == list(range(OBS_DIM)) and ex.max_delta_qp == cfg.sac.max_delta_qp
    learner = evaluate.load_agent(path).learner
    vec = _vectors("checkpoint_epoch_1", out)
    assert vec["codec"] == "x264"
    for row in vec["encode"] + vec["random"]:
        obs = np.array(row["observation"], dtype=np.float32)
        assert abs(ex.action(obs) - float(learner.choose(obs)[0])) < 1e-5


def test_an_output_folder_that_is_a_file_is_a_clear_error(tmp_path):
    out = tmp_path / "taken"
    out.write_text("")
    done = subprocess.run([sys.executable, "-m", "policy_export", "x264", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and str(out) in done.stderr and "Traceback" not in done.stderr
