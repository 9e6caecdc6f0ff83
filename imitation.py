"""Learning from search: oracle records -> a policy for the SAC actor.

The oracle (oracle_search.run_oracle, run on training windows by bench/oracle_data.py) searches per
mini-GOP QP offsets by coordinate descent; every candidate is a real encode. Two ways to learn
from a record, both measured in BENCHMARKS.md §2.4:

1. Behaviour cloning of the oracle's answers (`demos_from_records`, `fit_actor`): the state the
   agent would see on the oracle's own trajectory -> a = offset / max_delta_qp. Diagnosis only:
   the answers are mostly selected noise, and a clone generalises worse than Δ=0
   (`cross_validate`, leave-one-source-out).
2. Every candidate as data (gain_model.py): a*(s) from the gain model, shrunk by
   `consensus_offset`; `distill` fits the actor to it. `train_policy` is the whole recipe, and
   `SHIPPED_RECIPES` the one each shipped policy was made with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gain_model import (
    ALL_FEATURES,
    SHIPPED_FEATURES,
    GainFeatures,
    consensus_offset,
    cross_validate_gain,
    fit_gain_model,
    move_samples,
    used_features,
)
from models import Actor
from oracle_records import observations, source_of, trajectory_observations
from state import FEATURE_NAMES, FEATURES_V2, OBS_DIM, payback_share


@dataclass
class Demos:
    """Demonstration steps. N steps; obs (N, OBS_DIM) float32, the rest (N,)."""

    obs: np.ndarray
    action: np.ndarray  # oracle offset / max_delta_qp, in [-1, 1]
    source: np.ndarray  # index into `sources`: the clip a window came from (CV groups)
    point: np.ndarray  # index of the (window, rate) point
    position: np.ndarray  # mini-GOP position in its GOP
    sources: list[str]
    gains: np.ndarray  # (points,) the oracle's PSNR-Y gain over Δ=0 per point, dB

    def __len__(self) -> int:
        return len(self.action)

    def subset(self, mask: np.ndarray) -> Demos:
        return Demos(self.obs[mask], self.action[mask], self.source[mask], self.point[mask], self.position[mask],
                     self.sources, self.gains)  # fmt: skip


def demos_from_records(records: list[dict], max_delta_qp: int = 4) -> Demos:
    """The oracle's answers along its own trajectories as demonstration steps."""
    obs, act, src, pt, pos, gains = [], [], [], [], [], []
    sources: list[str] = []
    for rec in records:
        o, off = observations(rec["oracle_steps"])
        name = source_of(rec["window"])
        if name not in sources:
            sources.append(name)
        n = len(off)
        obs.append(o)
        act.append(np.clip(off / max_delta_qp, -1.0, 1.0))
        src.append(np.full(n, sources.index(name)))
        pt.append(np.full(n, len(gains)))
        pos.append([st["request"]["mg_in_gop"] for st in rec["oracle_steps"]])
        gains.append(rec["oracle"]["psnr_y"] - rec["baseline"]["psnr_y"])
    if not obs:
        raise ValueError("no demonstrations in the given records")
    return Demos(np.concatenate(obs), np.concatenate(act).astype(np.float32), np.concatenate(src),
                 np.concatenate(pt), np.concatenate(pos).astype(int), sources, np.asarray(gains))  # fmt: skip


def fit_actor(
    actor: Actor, demos: Demos, epochs: int = 300, lr: float = 1e-3, weight_decay: float = 1e-3
) -> list[float]:
    """Behaviour cloning: fits tanh(mean(obs)) to the demonstrated actions (full batch, Adam); returns losses.

    Loss per epoch: mean over steps of (tanh(mean(s)) - a)^2. Weight decay (AdamW) keeps the
    policy smooth where the demonstrations are sparse. The log-std head is fitted to the
    residual spread (Gaussian likelihood of the pre-tanh targets, mean detached) so that a SAC
    fine-tune starting from this actor explores around the cloned actions, not uniformly.
    """
    # Full-batch training: deterministic given the actor's initial weights.
    obs = torch.as_tensor(demos.obs)
    target = torch.as_tensor(demos.action).reshape(-1, 1)
    pre_tanh = torch.atanh(target.clamp(-0.999, 0.999))
    optim = torch.optim.AdamW(actor.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(epochs):
        mean, log_std = actor(obs)
        mse = (torch.tanh(mean) - target).pow(2).mean()
        z = (pre_tanh - mean.detach()) / log_std.exp()
        nll = (0.5 * z.pow(2) + log_std).mean()
        optim.zero_grad(set_to_none=True)
        (mse + 0.01 * nll).backward()
        optim.step()
        losses.append(float(mse.detach()))
    return losses


def predict(actor: Actor, obs: np.ndarray) -> np.ndarray:
    """Deterministic actions tanh(mean) for obs (N, OBS_DIM); returns (N,)."""
    with torch.no_grad():
        mean, _ = actor(torch.as_tensor(obs, dtype=torch.float32))
    return torch.tanh(mean).reshape(-1).numpy()


@dataclass
class FitScore:
    """How well predicted actions match the oracle's (in QP offsets)."""

    mse: float  # mean squared error, QP^2
    mse_zero: float  # the same for always answering 0 (the Δ=0 baseline)
    r2: float  # 1 - mse / variance of the oracle's offsets
    sign_accuracy: float  # share of the oracle's non-zero offsets whose sign is predicted (|pred| >= 0.5 QP)
    nonzero: int  # oracle offsets != 0


def score(pred_qp: np.ndarray, true_qp: np.ndarray) -> FitScore:
    err = float(np.mean((pred_qp - true_qp) ** 2))
    var = float(np.var(true_qp))
    nz = true_qp != 0
    sign_ok = np.sign(np.round(pred_qp[nz])) == np.sign(true_qp[nz])
    return FitScore(err, float(np.mean(true_qp**2)), 1.0 - err / var if var > 0 else math.nan,
                    float(np.mean(sign_ok)) if nz.any() else math.nan, int(nz.sum()))  # fmt: skip


def cross_validate(
    demos: Demos, hidden: tuple[int, ...], max_delta_qp: int, epochs: int, weight_decay: float, seed: int = 0
) -> tuple[FitScore, np.ndarray]:
    """Leave-one-source-out CV of behaviour cloning; returns the pooled score and the out-of-fold predictions (QP)."""
    pred = np.zeros(len(demos), dtype=np.float32)
    for s in range(len(demos.sources)):
        test = demos.source == s
        torch.manual_seed(seed)
        actor = Actor(OBS_DIM, 1, hidden)
        fit_actor(actor, demos.subset(~test), epochs=epochs, weight_decay=weight_decay)
        pred[test] = predict(actor, demos.obs[test]) * max_delta_qp
    return score(pred, demos.action * max_delta_qp), pred


@dataclass(frozen=True)
class Recipe:
    """How a codec's shipped policy is made: make_policy.py's defaults for that codec.

    windows: the oracle window sets it is fitted on (clips.WINDOW_SETS, comma-separated);
    consensus: k of consensus_offset, how far offsets shrink where the leave-one-source-out fits
    disagree (0 = the full model's a*(s)); key_sweeps: window sets whose key-mini-GOP sweeps
    (bench/oracle_data.py --search key) are fitted too ("" = none); draws: the seeds of the target-rate
    draws whose oracle points are fitted together (bench/oracle_data.py --seed; more draws, more
    rates per window). BENCHMARKS.md §2.4.8–2.4.9 say how each was chosen.
    """

    windows: str
    consensus: float
    features: GainFeatures = SHIPPED_FEATURES
    key_sweeps: str = ""
    draws: tuple[int, ...] = (0,)
    key_pick: float | None = None  # τ of key_pick_offsets, dB; None: the key's offset is the gain model's
    ramp_pick: float | None = None  # τ of ramp_pick_offsets, dB; None: mini-GOPs 1-5 take the gain model's offset


SHIPPED_RECIPES = {
    "svtav1": Recipe("train,static,natural", 1.0),
    # The fp_reuse hinge lets rendered and screen content in without moving camera footage's keys (BENCHMARKS.md
    # §2.4.18); the propagation hinge takes a fixed camera's key gain, and needs two draws of rates (§2.4.30).
    "x264": Recipe("train,static,natural,tail,extra,screen,fixed", 1.0,
                   GainFeatures(key=("gop_left", "fp_reuse>0.9", "fp_propagation>0.825"), inter=()), draws=(0, 2)),
    "vp9": Recipe("train,static", 1.0),
}
# make_policy.py --key-probe: the demonstrations encoded with the encoder's key probe (PROTOCOL.md §4.1.2), the key
# mini-GOP's offset read from it beside fp_reuse, fitted on the key sweeps too (BENCHMARKS.md §2.4.42), and the
# offset of the mini-GOPs after the key from the ramp probe (§2.4.45); the file is
# policies/<codec>_probe.pt. A codec without a probe recipe of its own uses its shipped one.
PROBE_RECIPES = {
    "svtav1": Recipe("train,static,natural", 1.0, GainFeatures(key=("fp_reuse", "key_probe"), inter=("ramp_probe",)),
                     key_sweeps="train,static,natural"),
}


def recipe_for(codec: str, key_probe: bool = False) -> Recipe:
    """The recipe make_policy.py --codec `codec` [--key-probe] follows by default."""
    return PROBE_RECIPES.get(codec, SHIPPED_RECIPES[codec]) if key_probe else SHIPPED_RECIPES[codec]


# RMS (QP) within which the distilled actor counts as following a*(s): the encoder rounds to whole QPs.
DISTILL_TOLERANCE = 0.1
# RMS (QP) above which the fit goes on for another round: tighter, so that the command gives the same QP answers on
# another CPU. With 0.1 one CPU's fit of svtav1_probe stopped at 0.09 QP, one QP off the file's (0.03) on 336 of 4842
# training states; one more round took it to 0.02 and 48 (BENCHMARKS.md §2.4.52). Every shipped file's fit ended below.
DISTILL_RETRY_ABOVE = 0.05


def distill(actor: Actor, obs: np.ndarray, offsets: np.ndarray, max_delta_qp: int, epochs: int = 2000,
            weight_decay: float = 1e-4, tolerance: float = DISTILL_RETRY_ABOVE, retries: int = 2) -> float:  # fmt: skip
    """Fits the actor's deterministic action to `offsets` (QP) at `obs`; returns the final RMS error in QP.

    A full-batch fit of a step in a*(s) (a hinge term, parse_term) can stall on a plateau at the
    first learning rate (RMS 0.59 QP, 1.4 QP on the key mini-GOPs, for one seed in BENCHMARKS.md
    §2.4.18): while the RMS is above `tolerance`, up to `retries` more rounds of `epochs` go on
    from there at a third of the rate. A fresh optimiser can also climb out of a good fit, so the
    actor ends with the best round's weights. A fit that met the tolerance is left as it was.
    """
    demos = Demos(obs.astype(np.float32), (offsets / max_delta_qp).astype(np.float32), np.zeros(len(obs), int),
                  np.zeros(len(obs), int), np.zeros(len(obs), int), [""], np.zeros(0))  # fmt: skip
    lr, rms = 3e-3, math.inf
    best_rms, best = math.inf, None
    for _ in range(1 + retries):
        if rms <= tolerance:
            break
        fit_actor(actor, demos, epochs=epochs, lr=lr, weight_decay=weight_decay)
        rms = float(np.sqrt(np.mean((predict(actor, obs) * max_delta_qp - offsets) ** 2)))
        if rms < best_rms:
            best_rms, best = rms, {k: v.clone() for k, v in actor.state_dict().items()}
        lr /= 3.0
    if best is not None and best_rms < rms:  # a later round made it worse: back to the best one
        actor.load_state_dict(best)
    return best_rms


def with_short_gops(obs: np.ndarray) -> np.ndarray:
    """The key mini-GOP states again as if their GOP held 1, 2 or 4 mini-GOPs (a clip's short last GOP).

    The demonstrations are all 8-mini-GOP GOPs; these copies show the actor where its offsets
    must fade (payback_share) instead of leaving it to extrapolate.
    """
    key = obs[obs[:, FEATURE_NAMES.index("has_key")] > 0.5]
    out = []
    for mgs in (1, 2, 4):
        o = key.copy()
        o[:, FEATURE_NAMES.index("gop_left")] = (mgs - 1) / mgs
        out.append(o)
    return np.concatenate(out)


def actor_inputs(spec: GainFeatures, key_pick: bool = False, ramp_pick: bool = False) -> tuple[str, ...]:
    """The features a distilled actor reads: state.FEATURES_V2, and every later feature only where its target
    uses it (target_features). A recipe that does not use a feature added later makes the same actor as
    before it was added (same inputs, same shuffles, same fit: shipped policies reproduce)."""
    every = spec.key is None or spec.inter is None  # a gain model on the whole state
    used = used_features(target_features(spec, key_pick, ramp_pick))
    later = [name for name in FEATURE_NAMES[len(FEATURES_V2) :] if every or name in used]
    return FEATURES_V2 + tuple(later)


def target_features(spec: GainFeatures, key_pick: bool, ramp_pick: bool = False) -> GainFeatures:
    """The features a*(s) reads: `spec`'s; with key_pick the key probe's margin in place of the gain model's key
    terms (key_pick_offsets), with ramp_pick the ramp probe's margin beside its inter terms (ramp_pick_offsets)."""
    if spec.key is None or spec.inter is None:
        return spec
    key = ("key_probe_best",) if key_pick else spec.key
    inter = (*spec.inter, "ramp_probe", "ramp_probe_best") if ramp_pick else spec.inter
    return GainFeatures(key=key, inter=tuple(dict.fromkeys(inter)), curvature=spec.curvature)


# The offset, QP, that key_pick_offsets answers: the built-in encoder's probe offset (builtin_encoder.key_probe).
PICK_OFFSET = 3


def key_pick_offsets(obs: np.ndarray, tau: float) -> np.ndarray:
    """The key mini-GOP's offset read off its probes, QP, shape (N,) for obs (N, OBS_DIM):

        a = -PICK_OFFSET where key_probe_best > tau (the finer encode beat the coarser and Δ=0 by more than tau dB),
            +PICK_OFFSET where key_probe_best < -tau (the coarser one did), 0 elsewhere.

    The encoder coded the GOP three ways before asking (PROTOCOL.md §4.1.2, --probe-zero); this answers the best of
    them. On the held-out clips that took −1.14% of rate where the same recipe's gain model took −0.96%, and 57% of
    the oracle's gain on their first GOPs (BENCHMARKS.md §2.4.54). PICK_OFFSET is the built-in encoder's probe
    offset: an encoder that probes at another offset needs its own.
    """
    return _pick(obs[:, FEATURE_NAMES.index("key_probe_best")], tau)


def ramp_pick_offsets(obs: np.ndarray, tau: float) -> np.ndarray:
    """key_pick_offsets for mini-GOPs 1-5 from the ramp probe (state.ramp_probe_best), QP, shape (N,); NaN on the
    states without a ramp probe (ramp_probe 0: the key, mini-GOPs after the fifth, encodes without probes)."""
    picked = _pick(obs[:, FEATURE_NAMES.index("ramp_probe_best")], tau)
    return np.where(obs[:, FEATURE_NAMES.index("ramp_probe")] != 0.0, picked, np.nan)


def _pick(best: np.ndarray, tau: float) -> np.ndarray:
    best = best.astype(np.float64)
    return np.where(best > tau, -PICK_OFFSET, np.where(best < -tau, PICK_OFFSET, 0)).astype(np.float64)


def ignoring_unused(
    obs: np.ndarray, target: np.ndarray, spec: GainFeatures, seed: int = 0, copies: int = 3,
    names: tuple[str, ...] = FEATURE_NAMES, keep: tuple[str, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Training set for distilling a*(s) that teaches the actor to ignore the features the gain model did not use.

    The actor sees the features `names` (obs's columns); a*(s) depends only on `spec`'s features,
    has_key and `keep` (features the target reads besides the gain model: gop_left for the payback
    fade). Every other feature is shuffled across the states in `copies` extra copies (same targets),
    so the actor cannot pick up what those features happen to correlate with in the training clips.
    Returns (obs, target), (N * (1 + copies), len(names)) and (N * (1 + copies),).
    """
    if spec.key is None or spec.inter is None:
        return obs, target
    used = used_features(spec) | set(keep)
    unused = [i for i, name in enumerate(names) if name not in used]
    rng = np.random.default_rng(seed)
    out = [obs]
    for _ in range(copies):
        o = obs.copy()
        for i in unused:
            o[:, i] = o[rng.permutation(len(o)), i]
        out.append(o)
    return np.concatenate(out), np.tile(target, 1 + copies)


# Leave-one-source-out R² the state must add over no state before make_policy.py stops warning
# that its policy is a fixed offset (BENCHMARKS.md §2.4.21: 0.195 vs 0.196 on 8 camera clips lost +0.99%).
STATE_MARGIN = 0.005


def train_policy(
    records: list[dict], max_delta_qp: int = 4, hidden: tuple[int, ...] = (64, 64), ridge: float = 3.0, seed: int = 0,
    payback: bool = False, consensus: float = 0.0, spec: GainFeatures = ALL_FEATURES, key_pick: float | None = None,
    ramp_pick: float | None = None,
) -> tuple[Actor, str]:
    """The whole recipe on oracle records: gain model -> a*(s) -> distilled actor; returns (actor, summary).

    The actor reads the features actor_inputs(spec, key_pick is not None, ramp_pick is not None) (save the policy
    with them). key_pick=τ: the key mini-GOP's a*(s) is key_pick_offsets(s, τ) instead of the gain model's;
    ramp_pick=τ: that of mini-GOPs 1-5 is ramp_pick_offsets(s, τ) where the state has a ramp probe.

    consensus=k > 0 uses consensus_offset(k) instead of the full model's a*(s). payback=True
    scales a*(s) by payback_share(s) and fits it on short-GOP copies of the key
    states too (offsets fade where the rest of the GOP cannot pay them back): better rate
    accuracy, but on the held-out split it lost the gain of raising the QP of a short last GOP's
    key frame (BENCHMARKS.md §2.4), so it is off by default.
    """
    # One order whatever the file's: oracle_data.py --jobs N appends points as they finish, and the
    # fit (the shuffled copies of ignoring_unused, float sums) depends on the order of the rows.
    records = sorted(records, key=lambda r: (r["window"], r["bpp"]))
    moves = move_samples(records)
    r2, r2_const = cross_validate_gain(moves, ridge, spec)
    model = fit_gain_model(moves, ridge, spec)
    obs = trajectory_observations(records)
    if payback:
        obs = np.concatenate([obs, with_short_gops(obs)])
    if consensus > 0:
        target = consensus_offset(moves, obs, max_delta_qp, ridge, consensus, spec)
    else:
        target = model.best_offset(obs, max_delta_qp)
    key = obs[:, FEATURE_NAMES.index("has_key")] > 0.5
    if key_pick is not None:
        target = np.where(key, key_pick_offsets(obs, key_pick), target)
    if ramp_pick is not None:
        ramp = ramp_pick_offsets(obs, ramp_pick)
        target = np.where(~key & ~np.isnan(ramp), ramp, target)
    target = target * (payback_share(obs) if payback else 1.0)
    picking = (key_pick is not None, ramp_pick is not None)
    inputs = actor_inputs(spec, *picking)
    cols = [FEATURE_NAMES.index(name) for name in inputs]
    # payback_share reads gop_left: shuffled, it would teach the actor to ignore the fade
    keep = ("gop_left",) if payback else ()
    fit_obs, fit_target = ignoring_unused(obs[:, cols], target, target_features(spec, *picking), seed, names=inputs,
                                          keep=keep)  # fmt: skip
    torch.manual_seed(seed)
    actor = Actor(len(inputs), 1, hidden)
    rms = distill(actor, fit_obs, fit_target, max_delta_qp)
    summary = (f"gain model ({spec.describe()}) on {len(moves)} oracle moves from {len(records)} points "
               f"({', '.join(moves.sources)}); "
               f"leave-one-source-out R² {r2:.3f} (without state {r2_const:.3f}); curvature {model.c:.4f} dB/QP²; "
               f"a* key mini-GOP {target[key].mean():+.2f}±{target[key].std():.2f}, others "
               f"{target[~key].mean():+.2f}±{target[~key].std():.2f} QP; actor fit RMS {rms:.2f} QP")  # fmt: skip
    if key_pick is not None:
        summary += f"; key offsets picked from the probes (τ {key_pick:g} dB)"
    if ramp_pick is not None:
        summary += f"; mini-GOPs 1-5 picked from the ramp probe (τ {ramp_pick:g} dB)"
    if rms > DISTILL_TOLERANCE:
        summary += (f"; WARNING: the actor does not follow a*(s) (RMS above {DISTILL_TOLERANCE} QP after "
                    "the retries): try another --seed")  # fmt: skip
    if r2 < r2_const + STATE_MARGIN:
        summary += ("; WARNING: on the left-out sources the state predicts the gains no better than one offset "
                    "per kind of mini-GOP: the policy is a fixed offset, which rarely transfers to other content "
                    "(BENCHMARKS.md §2.4.21); add training clips of more varied content")  # fmt: skip
    return actor, summary
