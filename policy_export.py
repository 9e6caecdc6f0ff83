"""A policy for use inside your own encoder: its actor as plain weights and a C header, with test vectors.

    python -m policy_export x264 --out export/                        # a shipped policy, by name
    python -m policy_export checkpoints/checkpoint_epoch_20.pt --out export/ --codec svtav1

The agent answers over the file protocol (PROTOCOL.md); an encoder team that wants the decision
inside its encoder needs these, written to OUT as NAME.json, NAME.h, rlrc_state.h and NAME_vectors.json:

- **The network**, `NAME.json`: the deterministic actor as lists of float32 weights. The
  observation is state.build_observation's OBS_DIM features (state.FEATURE_NAMES, formulas in
  state.py); the actor reads `inputs` of them (indices into the observation), then for each layer
  h = W h + b (W: out x in), ReLU between layers; of the last layer's two outputs the first is the
  pre-tanh mean (the second, the log standard deviation, only matters while exploring), and the
  action is a = tanh(mean), in [-1, 1]. A policy file with `fade_finer_keys` (policy.py) then fades a
  key mini-GOP's a < 0: a *= clamp(obs[gop_left] / 0.875, 0, 1).
- **The QP**: `unit = max(1, qp_scale_max / 63)`, `delta = round_half_even(a * max_delta_qp * unit)`
  in double precision (Python's round, C's rint/nearbyint in the default rounding mode),
  `qp = clamp(base_qp + delta, qp_min, qp_max)` with the request's fields (state.qp_answer).
- **A C99 header**, `NAME.h`: the same two functions with the weights inlined, no dependency but
  <math.h>: `rlrc_NAME_action(const float obs[OBS_DIM])` and `rlrc_NAME_qp(action, base_qp, qp_min,
  qp_max, qp_scale_max)`.
- **The observation in C**, `rlrc_state.h` (a copy of c/rlrc_state.h): `rlrc_observation(&request,
  &previous, obs)`, state.build_observation from the request's fields and the previous mini-GOP's.
- **Test vectors**, `NAME_vectors.json`: every mini-GOP of two real encodes with the built-in encoder
  (the policy's codec, a bundled clip, two rates, mini-GOPs of 8 and of 4 frames): the request as the
  encoder wrote it, the previous mini-GOP's feedback and base QP (what the state reads), the
  observation, the action and the QP the agent answered; plus random observations with their
  actions, which reach the corners of the network a short encode does not. A port of state.py and
  of the network is right when it gives these observations (within 1e-5), actions (within 1e-5) and
  QPs; c/rlrc_state.h and NAME.h give them within 1e-6 and 1e-5.

tests/test_policy_export.py compiles both headers with the system's C compiler and checks them on the
vectors against the agent's own observations and answers.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import NumpyActor
from state import FEATURE_NAMES, FULL_GOP_LEFT, OBS_DIM, fade_finer_key

_HAS_KEY, _GOP_LEFT = FEATURE_NAMES.index("has_key"), FEATURE_NAMES.index("gop_left")
STATE_HEADER = Path(__file__).resolve().parent / "c" / "rlrc_state.h"  # state.build_observation in C
EXPORT_FORMAT = "rlrc-policy-export"
EXPORT_VERSION = 1
# The vectors' encodes: a bundled clip at two targets (kbit/s), short enough for a test; the second with
# 4-frame mini-GOPs, so that a GOP reaches past the requests' lookahead (7 mini-GOPs), which gop_reuse
# then extrapolates.
VECTOR_CLIP = "carphone_pristine.mp4"
VECTOR_RUNS: tuple[tuple[int, tuple[str, ...]], ...] = ((100, ()), (300, ("--mini-gop", "4")))
# The second run also probes each GOP's key (--key-probe --probe-zero, where the codec has it), so the vectors hold
# real key_probe requests with their zero encode: the state's probe features are checked as every other.
PROBE_RUN = 300


class ExportError(ValueError):
    """The policy cannot be exported; the message names the file and the reason."""


@dataclass
class ExportedActor:
    """A deterministic actor as plain arrays: what NAME.json holds."""

    name: str
    codec: str
    max_delta_qp: int
    inputs: list[int]  # indices into the observation (state.FEATURE_NAMES) of the actor's inputs
    weights: list[np.ndarray]  # per layer (out, in), float32
    biases: list[np.ndarray]  # per layer (out,), float32
    source: str  # the file it came from
    provenance: dict[str, str]
    fade_finer_keys: bool = False  # the policy file's rate guard (policy.py): a short GOP's finer key faded
    _net: NumpyActor | None = field(default=None, init=False, repr=False, compare=False)

    def action(self, obs: np.ndarray) -> float:
        """tanh(mean) for one observation (OBS_DIM,): these arrays through models.NumpyActor, in float32; with
        fade_finer_keys, state.fade_finer_key of it."""
        if self._net is None:
            self._net = NumpyActor.from_arrays(self.weights, self.biases)
        obs = np.asarray(obs, dtype=np.float32)
        a = self._net.deterministic(obs[self.inputs])
        return float((fade_finer_key(a, obs) if self.fade_finer_keys else a)[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "name": self.name, "codec": self.codec,
            "obs_dim": OBS_DIM, "feature_names": list(FEATURE_NAMES), "inputs": self.inputs,
            "max_delta_qp": self.max_delta_qp,
            "layers": [{"weight": w.tolist(), "bias": b.tolist()}
                       for w, b in zip(self.weights, self.biases, strict=True)],
            "activation": "relu between layers; action = tanh(output[0])",
            "fade_finer_keys": self.fade_finer_keys,
            "fade": "if fade_finer_keys and obs[has_key] > 0.5 and action < 0: "
                    f"action *= clamp(obs[gop_left] / {FULL_GOP_LEFT}, 0, 1)",
            "qp": "unit = max(1, qp_scale_max / 63); "
                  "qp = clamp(base_qp + round_half_even(action * max_delta_qp * unit), qp_min, qp_max)",
            "source": self.source, "provenance": self.provenance,
        }  # fmt: skip


def exported_actor(path_or_name: str) -> ExportedActor:
    """The deterministic actor of a policy file, a shipped policy's name or a main.py checkpoint."""
    import checkpoint
    import evaluate
    import policy

    path = policy.named(path_or_name)
    if not path.is_file():
        raise ExportError(f"{path_or_name}: no such file, nor a shipped policy ({', '.join(policy.shipped_names())})")
    try:
        bundle = evaluate.load_agent(path)
    except checkpoint.CheckpointError as exc:
        raise ExportError(str(exc).removeprefix("--load-checkpoint: ")) from None
    learner = bundle.learner
    if isinstance(learner, policy.PolicyLearner):
        pol = learner.policy
        actor, codec, provenance, fade = pol.actor, pol.codec, pol.provenance, pol.fade_finer_keys
        inputs = [FEATURE_NAMES.index(n) for n in pol.feature_names]
    else:  # a training checkpoint: the SAC actor on every feature
        actor, codec, provenance, fade = learner.agent.actor, "", {"checkpoint_epoch": str(bundle.epoch)}, False
        inputs = list(range(OBS_DIM))
    linears = [m for m in actor.net if isinstance(m, torch.nn.Linear)]
    return ExportedActor(
        name=c_identifier(path.stem), codec=codec, max_delta_qp=int(bundle.max_delta_qp), inputs=inputs,
        weights=[m.weight.detach().cpu().numpy().astype(np.float32) for m in linears],
        biases=[m.bias.detach().cpu().numpy().astype(np.float32) for m in linears],
        source=str(path), provenance={str(k): str(v) for k, v in provenance.items()}, fade_finer_keys=fade,
    )  # fmt: skip


def c_identifier(stem: str) -> str:
    """A file stem as a C identifier: lower case, [a-z0-9_], not starting with a digit."""
    name = re.sub(r"[^a-z0-9_]", "_", stem.lower())
    return name if name and not name[0].isdigit() else f"p_{name}"


def _c_floats(values: np.ndarray) -> str:
    """float32 values as C literals that read back to the same float32 ('%.9g' round-trips a float)."""
    return ", ".join(f"{float(v):.9g}f" for v in np.asarray(values, dtype=np.float32).reshape(-1))


def c_header(ex: ExportedActor) -> str:
    """A C99 header computing the action and the QP of `ex` (only <math.h>; link with -lm)."""
    p, guard = f"rlrc_{ex.name}", f"RLRC_POLICY_{ex.name.upper()}_H"
    lines = [
        f"/* rlrc policy '{ex.name}' ({ex.codec or 'codec not recorded'}), exported by policy_export.py from",
        f" * {ex.source}. {ex.provenance.get('summary', '')}".rstrip(),
        " * The observation is state.py's build_observation (OBS_DIM floats, state.FEATURE_NAMES order);",
        f" * {p}_action reads {len(ex.inputs)} of them. Check a port with the exported test vectors. */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <math.h>",
        "",
        f"#define {p.upper()}_OBS_DIM {OBS_DIM}",
        f"#define {p.upper()}_MAX_DELTA_QP {ex.max_delta_qp}",
        "",
        f"static const int {p}_inputs[{len(ex.inputs)}] = {{{', '.join(map(str, ex.inputs))}}};",
    ]
    for i, (w, b) in enumerate(zip(ex.weights, ex.biases, strict=True)):
        lines.append(f"static const float {p}_w{i}[{w.shape[0]}][{w.shape[1]}] = {{")
        lines += [f"    {{{_c_floats(row)}}}," for row in w]
        lines.append("};")
        lines.append(f"static const float {p}_b{i}[{b.shape[0]}] = {{{_c_floats(b)}}};")
    width = max(w.shape[0] for w in ex.weights[:-1]) if len(ex.weights) > 1 else 1
    body = [
        "",
        "/* The deterministic action tanh(mean(obs)), in [-1, 1]. */",
        f"static inline float {p}_action(const float obs[{OBS_DIM}]) {{",
        f"    float x[{max(len(ex.inputs), width)}], y[{max(len(ex.inputs), width)}];",
        f"    int n = {len(ex.inputs)};",
        f"    for (int i = 0; i < n; i++) x[i] = obs[{p}_inputs[i]];",
    ]
    for i, w in enumerate(ex.weights):
        last = i == len(ex.weights) - 1
        rows = 1 if last else w.shape[0]  # the last layer: its first output, the mean
        body += [
            f"    for (int o = 0; o < {rows}; o++) {{",
            f"        float s = {p}_b{i}[o];",
            f"        for (int k = 0; k < n; k++) s += {p}_w{i}[o][k] * x[k];",
            "        y[o] = s;" if last else "        y[o] = s > 0.0f ? s : 0.0f;",
            "    }",
        ]
        if not last:
            body += [f"    n = {w.shape[0]};", "    for (int k = 0; k < n; k++) x[k] = y[k];"]
    if ex.fade_finer_keys:  # policy.py's rate guard, in float32 as state.payback_share computes it
        body += [
            "    float a = tanhf(y[0]);",
            "    /* fade_finer_keys: a key mini-GOP's finer answer times the share of a GOP left to pay it back. */",
            f"    if (obs[{_HAS_KEY}] > 0.5f && a < 0.0f) {{",
            f"        float share = obs[{_GOP_LEFT}] / {FULL_GOP_LEFT!r}f;",
            "        a *= share < 0.0f ? 0.0f : share > 1.0f ? 1.0f : share;",
            "    }",
            "    return a;",
            "}",
        ]
    else:
        body += ["    return tanhf(y[0]);", "}"]
    body += [
        "",
        "/* The QP to answer: base_qp + round_half_even(action * MAX_DELTA_QP * unit), in [qp_min, qp_max];",
        " * unit = max(1, qp_scale_max / 63) (1 for AV1 and x264 QPs, ~4 for VP9's q_index). */",
        f"static inline int {p}_qp(float action, int base_qp, int qp_min, int qp_max, int qp_scale_max) {{",
        "    double a = action < -1.0f ? -1.0 : action > 1.0f ? 1.0 : (double)action;",
        "    double unit = qp_scale_max / 63.0 > 1.0 ? qp_scale_max / 63.0 : 1.0;",
        f"    int qp = base_qp + (int)nearbyint(a * {ex.max_delta_qp} * unit);",
        "    return qp < qp_min ? qp_min : qp > qp_max ? qp_max : qp;",
        "}",
        "",
        f"#endif /* {guard} */",
        "",
    ]
    return "\n".join(lines + body)


def encode_vectors(ex: ExportedActor, codec: str, frames: int, work: Path) -> list[dict[str, Any]]:
    """Every mini-GOP of real encodes (built-in encoder, `codec`, VECTOR_CLIP, VECTOR_RUNS) answered by `ex`:
    the request, the previous feedback and base QP, the observation, the action and the QP."""
    import encoder_proc
    import io_runner
    import protocol
    from encoder_proc import VideoSpec
    from eval_runs import KEY_PROBE_CODECS
    from inputs import bundled_clip

    class ExportedLearner(io_runner.Learner):  # acts with the exported arrays, learns nothing
        learning = False

        def choose(self, obs: np.ndarray) -> np.ndarray:
            return np.array([ex.action(obs)], dtype=np.float32)

    clip = bundled_clip(VECTOR_CLIP)
    rows: list[dict[str, Any]] = []
    for kbps, extra in VECTOR_RUNS:
        args = ["--input", str(clip), "--codec", codec, "--frames", str(frames), "--bitrate", str(kbps), *extra]
        if kbps == PROBE_RUN and codec in KEY_PROBE_CODECS:
            args += ["--key-probe", "--probe-zero"]
        spec = VideoSpec(f"{clip.stem}@{kbps}", args)
        rl_dir = work / f"rl_{kbps}"
        protocol.prepare_rl_dir(rl_dir)
        rl_args = encoder_proc.rl_args(encoder_proc.DEFAULT_RL_ARGS, rl_dir, "x")
        command = encoder_proc.encoder_command("") + args + rl_args
        res = io_runner.run_encode(spec, command, rl_dir, "x", ExportedLearner(), None, ex.max_delta_qp, 0.02, 60.0,
                                   work / f"{kbps}.log")  # fmt: skip
        if not res.ok:
            raise ExportError(f"the test vectors' encode failed: {res.message}")
        prev = None
        for step in res.done_steps:
            first = step.request.mg_in_gop == 0
            rows.append({
                "video": spec.name,
                "request": json.loads(protocol.to_json(step.request)),
                "prev_feedback": None if first or prev is None else json.loads(protocol.to_json(prev.feedback)),
                "prev_base_qp": None if first or prev is None else prev.request.base_qp,
                "observation": [float(v) for v in step.obs],
                "action": float(step.action[0]),
                "qp": int(step.qp),
            })  # fmt: skip
            prev = step
    return rows


def random_vectors(ex: ExportedActor, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` observations drawn uniformly in [-2, 2] (the features' scale) with their actions."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-2.0, 2.0, size=(n, OBS_DIM)).astype(np.float32)
    return [{"observation": [float(v) for v in o], "action": ex.action(o)} for o in obs]


def export(path_or_name: str, out: Path, codec: str = "", frames: int = 64, n_random: int = 200) -> list[Path]:
    """Writes NAME.json, NAME.h, rlrc_state.h and NAME_vectors.json into `out`; returns their paths."""
    ex = exported_actor(path_or_name)
    codec = codec or ex.codec or "svtav1"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rlrc-export-") as tmp:
        steps = encode_vectors(ex, codec, frames, Path(tmp))
    vectors = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "name": ex.name, "obs_dim": OBS_DIM,
        "feature_names": list(FEATURE_NAMES), "max_delta_qp": ex.max_delta_qp, "codec": codec,
        "made": time.strftime("%Y-%m-%d"), "encode": steps, "random": random_vectors(ex, n_random, seed=0),
    }  # fmt: skip
    paths = [out / f"{ex.name}.json", out / f"{ex.name}.h", out / STATE_HEADER.name, out / f"{ex.name}_vectors.json"]
    texts = [json.dumps(ex.to_json(), indent=1), c_header(ex), STATE_HEADER.read_text(), json.dumps(vectors, indent=1)]
    for p, text in zip(paths, texts, strict=True):
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(text)
        tmp.replace(p)
    return paths


def load_exported(path: Path) -> ExportedActor:
    """Reads NAME.json back (what a port in another language would read)."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != EXPORT_FORMAT or data.get("version") != EXPORT_VERSION:
        raise ExportError(f"{path}: not a {EXPORT_FORMAT} file of version {EXPORT_VERSION}")
    return ExportedActor(
        name=data["name"], codec=data["codec"], max_delta_qp=int(data["max_delta_qp"]), inputs=list(data["inputs"]),
        weights=[np.array(layer["weight"], dtype=np.float32) for layer in data["layers"]],
        biases=[np.array(layer["bias"], dtype=np.float32) for layer in data["layers"]],
        source=data["source"], provenance=data["provenance"], fade_finer_keys=bool(data.get("fade_finer_keys", False)),
    )  # fmt: skip


# A C program for checking both headers: it reads requests (driver_line), prints each one's observation
# (rlrc_state.h), action and QP (the policy header POLICY.h); run_c_driver compiles and runs it for
# tests/test_policy_export.py and bench/export_check.py.
C_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "rlrc_state.h"
#include "POLICY.h"

static double *read_list(int n) {
    double *v = malloc(sizeof(double) * (n > 0 ? n : 1));
    for (int i = 0; i < n; i++)
        if (scanf("%lf", &v[i]) != 1) exit(3);
    return v;
}

/* One request a line (policy_export.driver_line), then: the observation, the action and the QP. */
int main(void) {
    rlrc_request rq;
    rlrc_previous prev;
    while (scanf("%d %d %d %d %d %d %d %d %d %d %d %d %d %lf %lf %lf %lf %lf %lf %lf", &rq.mg_in_gop,
                 &rq.mgs_in_gop, &rq.gop_frames, &rq.first_frame, &rq.frame_count, &rq.total_frames, &rq.first_is_key,
                 &rq.base_qp, &rq.qp_min, &rq.qp_max, &rq.qp_scale_max, &rq.width, &rq.height, &rq.fps,
                 &rq.target_kbps, &rq.fp_bpp, &rq.gop_bits_spent, &rq.gop_bits_budget, &rq.total_bits_spent,
                 &rq.total_bits_budget) == 20) {
        if (scanf("%d", &rq.n_lookahead) != 1) return 1;
        rq.lookahead_fp_bpp = read_list(rq.n_lookahead);
        if (scanf("%d", &rq.n_first_pass) != 1) return 1;
        rq.intra_cost = read_list(rq.n_first_pass);
        rq.inter_cost = read_list(rq.n_first_pass);
        rq.sr_inter_cost = read_list(rq.n_first_pass);
        rq.mv_mean = read_list(rq.n_first_pass);
        rq.noise_sigma = read_list(rq.n_first_pass);
        if (scanf("%d", &rq.n_propagation) != 1) return 1;
        rq.propagation = rq.n_propagation > 0 ? read_list(rq.n_propagation) : NULL;
        if (scanf("%d %lf %lf %lf %lf %lf %lf", &rq.key_probe_offset, &rq.key_probe_finer_bits,
                  &rq.key_probe_finer_psnr_y, &rq.key_probe_coarser_bits, &rq.key_probe_coarser_psnr_y,
                  &rq.key_probe_zero_bits, &rq.key_probe_zero_psnr_y) != 7)
            return 1;
        if (scanf("%d %lf %lf %lf %lf %lf %lf", &rq.ramp_probe_offset, &rq.ramp_probe_finer_bits,
                  &rq.ramp_probe_finer_psnr_y, &rq.ramp_probe_coarser_bits, &rq.ramp_probe_coarser_psnr_y,
                  &rq.ramp_probe_zero_bits, &rq.ramp_probe_zero_psnr_y) != 7)
            return 1;
        if (scanf("%d %lf %lf %d %d", &prev.present, &prev.bits, &prev.psnr_y, &prev.qp_used, &prev.base_qp) != 5)
            return 1;
        float obs[RLRC_OBS_DIM];
        rlrc_observation(&rq, &prev, obs);
        for (int i = 0; i < RLRC_OBS_DIM; i++) printf("%.9g ", obs[i]);
        float a = rlrc_POLICY_action(obs);
        printf("%.9g %d\n", a, rlrc_POLICY_qp(a, rq.base_qp, rq.qp_min, rq.qp_max, rq.qp_scale_max));
    }
    return 0;
}
"""


def run_c_driver(header_dir: Path, name: str, rows: list[dict], cc: str, work: Path,
                 flags: tuple[str, ...] = ()) -> list[list[str]]:
    """Compiles C_DRIVER against `header_dir`'s rlrc_state.h and NAME.h with `cc` (C99, -O2 and `flags`) in
    `work`, feeds it `rows` (vectors: request, prev_feedback, prev_base_qp) and returns each row's output
    fields: OBS_DIM observation entries, the action, the QP. Raises CalledProcessError if either step fails."""
    source, exe = work / "driver.c", work / "driver"
    source.write_text(C_DRIVER.replace("POLICY", name))
    subprocess.run([cc, "-std=c99", "-O2", *flags, f"-I{header_dir}", str(source), "-o", str(exe), "-lm"],
                   check=True, capture_output=True, text=True)  # fmt: skip
    lines = "\n".join(map(driver_line, rows)) + "\n"
    done = subprocess.run([str(exe)], input=lines, capture_output=True, text=True, check=True)
    return [line.split() for line in done.stdout.splitlines()]


def driver_line(row: dict) -> str:
    """A vector's request and previous mini-GOP as C_DRIVER reads them: numbers, each list after its length."""
    rq, fb = row["request"], row["prev_feedback"]
    fp = rq.get("first_pass")
    ints = [rq["mg_in_gop"], rq["mgs_in_gop"], rq["gop_frames"], rq["first_frame"], rq["frame_count"],
            rq["total_frames"], int(rq["frame_types"][0] == "KEY"), rq["base_qp"], rq["qp_min"], rq["qp_max"],
            rq.get("qp_scale_max", 63), rq["width"], rq["height"]]  # fmt: skip
    doubles = [rq["fps"], rq["target_kbps"], rq["fp_bpp"], rq["gop_bits_spent"], rq["gop_bits_budget"],
               rq["total_bits_spent"], rq["total_bits_budget"]]  # fmt: skip
    parts = [*map(str, ints), *map(repr, map(float, doubles))]
    look = rq.get("lookahead_fp_bpp", [])
    parts += [str(len(look)), *map(repr, look)]
    lists = ["intra_cost", "inter_cost", "sr_inter_cost", "mv_mean", "noise_sigma"]
    parts += [str(len(fp["intra_cost"]) if fp else 0), *(repr(float(v)) for k in lists for v in (fp or {}).get(k, []))]
    prop = (fp or {}).get("propagation") or []
    parts += [str(len(prop)), *(repr(float(v)) for v in prop)]
    sides = ("finer_bits", "finer_psnr_y", "coarser_bits", "coarser_psnr_y")
    for name in ("key_probe", "ramp_probe"):
        probe = rq.get(name)
        if probe is None:
            parts += ["0"] * 7
        else:
            zero = [probe.get("zero_bits") or 0, probe.get("zero_psnr_y") or 0]  # 0: no zero encode
            parts += [str(probe["offset"]), *(repr(float(probe[k])) for k in sides), *(repr(float(z)) for z in zero)]
    if fb is None:
        parts += ["0", "0", "0", "0", "0"]
    else:
        parts += ["1", repr(float(fb["bits"])), repr(float(fb["psnr_y"])), str(fb["qp_used"]), str(row["prev_base_qp"])]
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m policy_export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("policy", help="a policy file, a shipped policy's name (python -m policy lists them), a checkpoint")
    p.add_argument("--out", required=True, help="folder for NAME.json, NAME.h, rlrc_state.h and NAME_vectors.json")
    p.add_argument("--codec", default="", choices=["", "svtav1", "x264", "vp9"],
                   help="the test vectors' encoder (default: the policy's codec; svtav1 for a checkpoint)")  # fmt: skip
    p.add_argument("--frames", type=int, default=64, help="frames of the test vectors' encodes (default 64)")
    ns = p.parse_args(argv)
    if ns.frames < 1:
        print("policy_export: error: --frames must be at least 1", file=sys.stderr)
        return 2
    try:
        paths = export(ns.policy, Path(ns.out), ns.codec, ns.frames)
    except (ExportError, ValueError, OSError) as exc:  # ValueError: encoder_proc.VideoSpecError (no bundled clip)
        print(f"policy_export: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
