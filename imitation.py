"""Learning from search: oracle records -> a policy for the SAC actor.

The oracle (oracle_search.run_oracle, run on training windows by bench/oracle_data.py) searches per
mini-GOP QP offsets by coordinate descent; every candidate is a real encode. Two ways to learn
from a record, both measured in BENCHMARKS.md §2.4:

1. Behaviour cloning of the oracle's answers (`demos_from_records`, `fit_actor`): the state the
   agent would see on the oracle's own trajectory -> a = offset / max_delta_qp. Diagnosis only:
   the answers are mostly selected noise, and a clone generalises worse than Δ=0
   (`cross_validate`, leave-one-source-out).
2. Every candidate as data (`move_samples`, `GainModel`): each candidate moved one mini-GOP's
   offset from the best answer of its time, so its rate-neutral gain over that parent is a
   controlled measurement. A concave quadratic J(a | s) = g(s) a - c a^2 fitted to all of them
   gives a*(s) = g(s) / 2c; `consensus_offset` shrinks it where fits without each source
   disagree; `distill` fits the actor to it. `train_policy` is the whole recipe.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models import Actor
from protocol import Feedback, Request, request_from_dict
from state import FEATURE_NAMES, FEATURES_V2, OBS_DIM, build_observation

_RECORD = Path("<oracle record>")  # the 'file' named in errors about a stored request


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


def _messages(steps: list[dict]) -> Iterable[tuple[Request, Feedback, int]]:
    for st in steps:
        yield request_from_dict(st["request"], _RECORD), Feedback(**st["feedback"]), int(st["qp"])


def observations(steps: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Rebuilds the agent's observations along a stored trajectory; returns (obs (n, OBS_DIM), offsets (n,))."""
    obs, offsets = [], []
    prev_fb: Feedback | None = None
    prev_base: int | None = None
    for req, fb, qp in _messages(steps):
        if req.mg_in_gop == 0:
            prev_fb, prev_base = None, None
        obs.append(build_observation(req, prev_fb, prev_base))
        offsets.append(qp - req.base_qp)
        prev_fb, prev_base = fb, req.base_qp
    return np.asarray(obs, dtype=np.float32).reshape(-1, OBS_DIM), np.asarray(offsets, dtype=np.float32)


def source_of(window: str) -> str:
    """The source clip of a window name made by clips.Window.name (e.g. 'bikes_s2_f0-64' -> 'bikes')."""
    return window.split("_s")[0]


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


# ----------------------------------------------------------------------------- every candidate as data


@dataclass
class MoveSamples:
    """One row per oracle candidate: one mini-GOP's offset moved from a_old to a_new (QP) at state obs.

    gain_rate: the candidate's rate-neutral gain over its parent, dB:
        ΔPSNR-Y - slope * log2(bits / parent bits),
    with `slope` the clip window's own RD slope (dB per doubling of bits, from its Δ=0 encodes at
    several rates), so a move that buys quality with bits earns nothing.
    """

    obs: np.ndarray  # (M, OBS_DIM): the Δ=0 trajectory's observation at the moved position
    a_old: np.ndarray  # (M,)
    a_new: np.ndarray  # (M,)
    gain_rate: np.ndarray  # (M,) dB
    source: np.ndarray  # (M,)
    sources: list[str]

    def __len__(self) -> int:
        return len(self.gain_rate)

    def subset(self, rows: np.ndarray) -> MoveSamples:
        """The rows selected by a boolean mask or an index array (the source list is kept)."""
        return MoveSamples(self.obs[rows], self.a_old[rows], self.a_new[rows], self.gain_rate[rows], self.source[rows],
                           self.sources)  # fmt: skip

    @staticmethod
    def concat(parts: list[MoveSamples]) -> MoveSamples:
        """One set from several: source indices are renumbered into one list of source names."""
        sources = list(dict.fromkeys(name for m in parts for name in m.sources))
        remap = [np.array([sources.index(name) for name in m.sources], dtype=int) for m in parts]
        return MoveSamples(np.concatenate([m.obs for m in parts]), np.concatenate([m.a_old for m in parts]),
                           np.concatenate([m.a_new for m in parts]), np.concatenate([m.gain_rate for m in parts]),
                           np.concatenate([r[m.source.astype(int)] for m, r in zip(parts, remap, strict=True)]),
                           sources)  # fmt: skip


def equal_rate_gain(psnr: float, bits: float, ref_psnr: float, ref_bits: float, slope: float) -> float:
    """An encode's gain over a reference encode of the same window at equal rate, dB:

        ΔPSNR-Y - slope * log2(bits / ref_bits),

    slope = the window's RD slope (dB per doubling of bits, window_slopes): quality bought with bits earns nothing.
    """
    return psnr - ref_psnr - slope * math.log2(bits / ref_bits)


def window_slopes(records: list[dict]) -> dict[str, float]:
    """dB of overall PSNR-Y per doubling of bits, per window: least squares over its Δ=0 encodes."""
    by_window: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        by_window.setdefault(r["window"], []).append((math.log2(r["baseline"]["bits"]), r["baseline"]["psnr_y"]))
    slopes = {}
    for w, pts in by_window.items():
        x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        slopes[w] = float(np.polyfit(x, y, 1)[0]) if len(pts) > 1 and np.ptp(x) > 0.1 else 5.0
    return slopes


def read_records(paths: Iterable[Path]) -> list[dict]:
    out = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if "error" not in rec:
                    out.append(rec)
    return out


def move_samples(records: list[dict], overshoot_db: float = 10.0) -> MoveSamples:
    """Replays each point's coordinate descent: every candidate against the best answer at its time."""
    slopes = window_slopes(records)
    obs, a_old, a_new, gain, src = [], [], [], [], []
    sources: list[str] = []
    for r in records:
        base_obs, _ = observations(r["baseline_steps"])
        budget = r["baseline"]["bits"]
        name = source_of(r["window"])
        if name not in sources:
            sources.append(name)

        def j(psnr: float, bits: int, budget: int = budget) -> float:
            return psnr - overshoot_db * max(0.0, bits / budget - 1.0)

        cur = [0] * len(base_obs)
        cur_psnr, cur_bits = r["baseline"]["psnr_y"], r["baseline"]["bits"]
        for c in r["candidates"]:
            diff = [k for k, (a, b) in enumerate(zip(c["offsets"], cur, strict=True)) if a != b]
            if len(diff) != 1:
                continue
            k = diff[0]
            obs.append(base_obs[k])
            a_old.append(cur[k])
            a_new.append(c["offsets"][k])
            gain.append(equal_rate_gain(c["psnr_y"], c["bits"], cur_psnr, cur_bits, slopes[r["window"]]))
            src.append(sources.index(name))
            if j(c["psnr_y"], c["bits"]) > j(cur_psnr, cur_bits):
                cur, cur_psnr, cur_bits = list(c["offsets"]), c["psnr_y"], c["bits"]
    return MoveSamples(np.asarray(obs, dtype=np.float32), np.asarray(a_old, dtype=np.float32),
                       np.asarray(a_new, dtype=np.float32), np.asarray(gain), np.asarray(src), sources)  # fmt: skip


# ----------------------------------------------------------------------------- the gain model


@dataclass(frozen=True)
class GainFeatures:
    """Which state features the gain model's slope g(s) may use, for the key mini-GOP and for the others.

    None = every feature of the state. Fewer features generalise better to unseen content when the
    training clips are few: each extra feature can fit what tells the training sources apart.
    """

    key: tuple[str, ...] | None = None
    inter: tuple[str, ...] | None = None
    # State features the key mini-GOP's curvature c(s) may depend on (GainModel); () = one curvature.
    curvature: tuple[str, ...] = ()

    @staticmethod
    def parse(key: str, inter: str, curvature: str = "") -> GainFeatures:
        """From comma-separated lists of terms ("all" = every feature, "" = none), e.g. ("fp_reuse>0.9,gop_left", "").

        A term is a state feature or its hinge (parse_term).

        `curvature` names the features of the key mini-GOP's c(s) ("" = one curvature; "all" is refused).
        """

        def one(text: str) -> tuple[str, ...] | None:
            if text == "all":
                return None
            names = tuple(n for n in text.split(",") if n)
            for n in names:
                parse_term(n)
            return names

        curv = one(curvature)
        if curv is None:
            raise ValueError("the key curvature takes named features, not 'all'")
        return GainFeatures(one(key), one(inter), curv)

    def describe(self) -> str:
        def one(names: tuple[str, ...] | None) -> str:
            return "all" if names is None else ",".join(names) or "none"

        curv = f"; key curvature: {','.join(self.curvature)}" if self.curvature else ""
        return f"key mini-GOP: {one(self.key)}; others: {one(self.inter)}{curv}"


ALL_FEATURES = GainFeatures()
# The shipped features: the key mini-GOP's offset from fp_reuse, one offset for the others
# (BENCHMARKS.md §2.4.6).
SHIPPED_FEATURES = GainFeatures(key=("fp_reuse",), inter=())


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


SHIPPED_RECIPES = {
    "svtav1": Recipe("train,static,natural", 1.0),
    # The fp_reuse hinge lets rendered and screen content in without moving camera footage's keys (BENCHMARKS.md
    # §2.4.18); the propagation hinge takes a fixed camera's key gain, and needs two draws of rates (§2.4.30).
    "x264": Recipe("train,static,natural,tail,extra,screen,fixed", 1.0,
                   GainFeatures(key=("gop_left", "fp_reuse>0.9", "fp_propagation>0.825"), inter=()), draws=(0, 2)),
    "vp9": Recipe("train,static", 1.0),
}


def parse_term(term: str) -> tuple[str, str, float]:
    """A gain-model term -> (state feature, kind, threshold): "f" -> (f, "", 0), "f>t" -> (f, ">", t), "f<t" likewise.

    A hinge term "f>t" is max(0, f - t), "f<t" max(0, t - f): it lets g(s) change with f only past
    t, where a line in f would have to fit the whole range (BENCHMARKS.md §2.4.18). ValueError names
    what is wrong.
    """
    for kind in (">", "<"):
        if kind in term:
            name, _, text = term.partition(kind)
            try:
                threshold = float(text)
            except ValueError:
                raise ValueError(f"term {term!r}: {text!r} is not a number") from None
            break
    else:
        name, kind, threshold = term, "", 0.0
    if name not in FEATURE_NAMES:
        raise ValueError(f"unknown state feature {name!r}; the state has {', '.join(FEATURE_NAMES)}")
    return name, kind, threshold


def term_column(obs: np.ndarray, term: str) -> np.ndarray:
    """One term's value per state (N,): the feature itself, or its hinge (parse_term)."""
    name, kind, threshold = parse_term(term)
    x = obs[:, FEATURE_NAMES.index(name)].astype(np.float64)
    if kind == ">":
        return np.maximum(0.0, x - threshold)
    if kind == "<":
        return np.maximum(0.0, threshold - x)
    return x


def _columns(obs: np.ndarray, terms: tuple[str, ...] | None) -> np.ndarray:
    if terms is None:
        return obs
    return np.stack([term_column(obs, t) for t in terms], axis=1) if terms else np.zeros((len(obs), 0))


def gain_features(obs: np.ndarray, spec: GainFeatures = ALL_FEATURES) -> np.ndarray:
    """φ(s) for the gain model: [1, key, (1 - key) * s_inter, key * s_key], key = the has_key feature.

    The key-frame mini-GOP gets its own coefficients: what its QP does (the key frame is every
    later frame's reference) differs in kind from an inter mini-GOP's. `spec` picks the features.
    With every feature this spans the same space as [1, key, s, key * s].
    """
    key = obs[:, FEATURE_NAMES.index("has_key")][:, None]
    ones = np.ones((len(obs), 1), dtype=np.float64)
    parts = [ones, key, (1.0 - key) * _columns(obs, spec.inter), key * _columns(obs, spec.key)]
    return np.concatenate(parts, axis=1).astype(np.float64)


def curvature_features(obs: np.ndarray, spec: GainFeatures) -> np.ndarray:
    """ψ(s) for the curvature: key * [1, s_curv] (N, 1 + len(spec.curvature)); (N, 0) with one curvature."""
    if not spec.curvature:
        return np.zeros((len(obs), 0))
    key = obs[:, FEATURE_NAMES.index("has_key")][:, None].astype(np.float64)
    return key * np.concatenate([np.ones((len(obs), 1)), _columns(obs, spec.curvature)], axis=1)


@dataclass
class GainModel:
    """A concave quadratic model of what one mini-GOP's offset a (QP) is worth, in dB at equal rate:

        J(a | s) = g(s) * a - c(s) * a^2,   g(s) = w . φ(s),   c(s) = c + v . ψ(s),   a*(s) = g(s) / (2 c(s)).

    Fitted by ridge regression on oracle moves: a move a_old -> a_new at state s changed the
    rate-neutral objective by ΔJ = g(s) (a_new - a_old) - c(s) (a_new^2 - a_old^2); divided by the
    step, y = ΔJ / (a_new - a_old) = g(s) - c(s) (a_new + a_old) is linear in (w, c, v). ψ is
    empty (one curvature) unless spec.curvature names features: then the key mini-GOP's curvature
    has its own intercept and depends on them (a short GOP's key frame is a small part of the
    encode, so its value curve is flatter, BENCHMARKS.md §2.4.14).
    """

    w: np.ndarray  # (len(φ),)
    c: float  # curvature, dB / QP^2 (> 0 for a concave model)
    spec: GainFeatures = ALL_FEATURES
    v: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (len(ψ),), dB / QP^2

    def curvature(self, obs: np.ndarray) -> np.ndarray:
        """c(s), dB / QP^2, shape (N,)."""
        return self.c + curvature_features(obs, self.spec) @ self.v

    def gain_slope(self, obs: np.ndarray) -> np.ndarray:
        """g(s), dB per QP at a = 0, shape (N,)."""
        return gain_features(obs, self.spec) @ self.w

    def best_offset(self, obs: np.ndarray, max_delta_qp: int) -> np.ndarray:
        """a*(s) = g(s) / (2 c(s)), clipped to the action range, QP, shape (N,)."""
        c = np.maximum(self.curvature(obs), 1e-4)
        return np.clip(self.gain_slope(obs) / (2.0 * c), -max_delta_qp, max_delta_qp)

    def value(self, obs: np.ndarray, a: np.ndarray) -> np.ndarray:
        """J(a | s), dB, shape (N,)."""
        return self.gain_slope(obs) * a - self.curvature(obs) * a**2


def fit_gain_model(m: MoveSamples, ridge: float = 1.0, spec: GainFeatures = ALL_FEATURES) -> GainModel:
    """Ridge regression of y = ΔJ / Δa on [φ(s), -(a_new + a_old), -(a_new + a_old) ψ(s)]; intercepts not shrunk."""
    da = m.a_new - m.a_old
    y = m.gain_rate / da
    phi, psi = gain_features(m.obs, spec), curvature_features(m.obs, spec)
    a_sum = (m.a_new + m.a_old)[:, None]
    x = np.concatenate([phi, -a_sum, -a_sum * psi], axis=1)
    penalty = np.full(x.shape[1], ridge)
    penalty[[0, 1, phi.shape[1]]] = 1e-6  # g's two intercepts and c
    if psi.shape[1]:
        penalty[phi.shape[1] + 1] = 1e-6  # the key mini-GOP's own curvature intercept
    coef = np.linalg.solve(x.T @ x + np.diag(penalty), x.T @ y)
    n = phi.shape[1]
    return GainModel(coef[:n], float(coef[n]), spec, coef[n + 1 :])


def cross_validate_gain(m: MoveSamples, ridge: float, spec: GainFeatures = ALL_FEATURES) -> tuple[float, float]:
    """Leave-one-source-out R² of y = ΔJ / Δa for the gain model and for a model without state (g const)."""
    y = m.gain_rate / (m.a_new - m.a_old)
    pred, pred_const = np.zeros_like(y), np.zeros_like(y)
    for s in range(len(m.sources)):
        test, train = m.source == s, m.source != s
        sub = m.subset(train)
        model = fit_gain_model(sub, ridge, spec)
        pred[test] = model.gain_slope(m.obs[test]) - model.curvature(m.obs[test]) * (m.a_new[test] + m.a_old[test])
        # No state at all: y = g0 - c (a_new + a_old).
        x = np.stack([np.ones(train.sum()), -(sub.a_new + sub.a_old)], axis=1)
        g0, c0 = np.linalg.lstsq(x, y[train], rcond=None)[0]
        pred_const[test] = g0 - c0 * (m.a_new[test] + m.a_old[test])
    var = float(np.var(y))
    return 1.0 - float(np.mean((y - pred) ** 2)) / var, 1.0 - float(np.mean((y - pred_const) ** 2)) / var


def fixed_pattern(m: MoveSamples, max_delta_qp: int, positions: int) -> list[int]:
    """The best fixed offset per GOP position (no state): per position, the same quadratic model with g constant.

    The reference a state-dependent policy must beat: what position alone says.
    """
    pos = np.round(m.obs[:, FEATURE_NAMES.index("gop_progress")] * positions).astype(int)
    y = m.gain_rate / (m.a_new - m.a_old)
    out = []
    for k in range(positions):
        sel = pos == k
        if sel.sum() < 3:
            out.append(0)
            continue
        x = np.stack([np.ones(sel.sum()), -(m.a_new[sel] + m.a_old[sel])], axis=1)
        g, c = np.linalg.lstsq(x, y[sel], rcond=None)[0]
        out.append(int(np.clip(round(g / (2 * max(c, 1e-4))), -max_delta_qp, max_delta_qp)))
    return out


def trajectory_observations(records: list[dict]) -> np.ndarray:
    """Every observation seen on the stored trajectories (Δ=0 and oracle), (N, OBS_DIM): where a policy is fitted."""
    obs = [observations(r[k])[0] for r in records for k in ("baseline_steps", "oracle_steps")]
    return np.concatenate(obs)


# RMS (QP) within which the distilled actor counts as following a*(s): the encoder rounds to whole QPs.
DISTILL_TOLERANCE = 0.1


def distill(actor: Actor, obs: np.ndarray, offsets: np.ndarray, max_delta_qp: int, epochs: int = 2000,
            weight_decay: float = 1e-4, tolerance: float = DISTILL_TOLERANCE, retries: int = 2) -> float:  # fmt: skip
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


def payback_share(obs: np.ndarray) -> np.ndarray:
    """Share of a full GOP still to come after this mini-GOP, relative to a key mini-GOP's: (N,) in [0, 1].

    The encoder's rate control re-spends (or recovers) what an offset saves (or costs) in the
    rest of the same GOP; in the last mini-GOPs of a GOP, and in a short final GOP, there is
    little or nothing left to do that with, so an offset there only misses the rate. Policies
    scale their offsets by this share (gop_left / (7/8), at most 1).
    """
    return np.clip(obs[:, FEATURE_NAMES.index("gop_left")] / 0.875, 0.0, 1.0)


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


def consensus_offset(
    moves: MoveSamples, obs: np.ndarray, max_delta_qp: int, ridge: float, k: float = 1.0,
    spec: GainFeatures = ALL_FEATURES,
) -> np.ndarray:
    """A cautious a*(s), QP: the gain models fitted without each source in turn must agree.

    With a_i(s) the optimum of the model that never saw source i, mean m and spread sd over i:
    a(s) = sign(m) * max(0, |m| - k * sd). Where the content sources disagree about a state
    (the decision depends on content the state does not describe), the offset shrinks to 0.
    """
    fits = []
    for s in range(len(moves.sources)):
        fits.append(fit_gain_model(moves.subset(moves.source != s), ridge, spec).best_offset(obs, max_delta_qp))
    a = np.stack(fits)
    m, sd = a.mean(axis=0), a.std(axis=0)
    return np.sign(m) * np.maximum(0.0, np.abs(m) - k * sd)


def used_features(spec: GainFeatures) -> set[str]:
    """The state features a*(s) depends on: `spec`'s terms' and has_key."""
    return {"has_key", *(parse_term(t)[0] for t in (*(spec.key or ()), *(spec.inter or ()), *spec.curvature))}


def actor_inputs(spec: GainFeatures) -> tuple[str, ...]:
    """The features a distilled actor reads: state.FEATURES_V2, and every later feature only where the
    gain model uses it. A recipe that does not use a feature added later makes the same actor as
    before it was added (same inputs, same shuffles, same fit: shipped policies reproduce)."""
    every = spec.key is None or spec.inter is None  # a gain model on the whole state
    later = [name for name in FEATURE_NAMES[len(FEATURES_V2) :] if every or name in used_features(spec)]
    return FEATURES_V2 + tuple(later)


def ignoring_unused(
    obs: np.ndarray, target: np.ndarray, spec: GainFeatures, seed: int = 0, copies: int = 3,
    names: tuple[str, ...] = FEATURE_NAMES,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Training set for distilling a*(s) that teaches the actor to ignore the features the gain model did not use.

    The actor sees the features `names` (obs's columns); a*(s) depends only on `spec`'s features and
    has_key. Every other feature is shuffled across the states in `copies` extra copies (same
    targets), so the actor cannot pick up what those features happen to correlate with in the
    training clips. Returns (obs, target), (N * (1 + copies), len(names)) and (N * (1 + copies),).
    """
    if spec.key is None or spec.inter is None:
        return obs, target
    used = used_features(spec)
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
    payback: bool = False, consensus: float = 0.0, spec: GainFeatures = ALL_FEATURES,
) -> tuple[Actor, str]:
    """The whole recipe on oracle records: gain model -> a*(s) -> distilled actor; returns (actor, summary).

    The actor reads the features actor_inputs(spec) (save the policy with them).

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
    target = target * (payback_share(obs) if payback else 1.0)
    inputs = actor_inputs(spec)
    cols = [FEATURE_NAMES.index(name) for name in inputs]
    fit_obs, fit_target = ignoring_unused(obs[:, cols], target, spec, seed, names=inputs)
    torch.manual_seed(seed)
    actor = Actor(len(inputs), 1, hidden)
    rms = distill(actor, fit_obs, fit_target, max_delta_qp)
    key = obs[:, FEATURE_NAMES.index("has_key")] > 0.5
    summary = (f"gain model ({spec.describe()}) on {len(moves)} oracle moves from {len(records)} points "
               f"({', '.join(moves.sources)}); "
               f"leave-one-source-out R² {r2:.3f} (without state {r2_const:.3f}); curvature {model.c:.4f} dB/QP²; "
               f"a* key mini-GOP {target[key].mean():+.2f}±{target[key].std():.2f}, others "
               f"{target[~key].mean():+.2f}±{target[~key].std():.2f} QP; actor fit RMS {rms:.2f} QP")  # fmt: skip
    if rms > DISTILL_TOLERANCE:
        summary += (f"; WARNING: the actor does not follow a*(s) (RMS above {DISTILL_TOLERANCE} QP after "
                    "the retries): try another --seed")  # fmt: skip
    if r2 < r2_const + STATE_MARGIN:
        summary += ("; WARNING: on the left-out sources the state predicts the gains no better than one offset "
                    "per kind of mini-GOP: the policy is a fixed offset, which rarely transfers to other content "
                    "(BENCHMARKS.md §2.4.21); add training clips of more varied content")  # fmt: skip
    return actor, summary
