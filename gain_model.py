"""The gain model: what one mini-GOP's QP offset is worth, fitted on every candidate the oracle encoded.

Each oracle candidate moved one mini-GOP's offset from the best answer of its time, so its rate-neutral
gain over that parent is a controlled measurement (`move_samples`). A concave quadratic
J(a | s) = g(s) a - c a^2 fitted to all of them (`fit_gain_model`) gives a*(s) = g(s) / 2c;
`consensus_offset` shrinks it where fits without each source disagree. g(s) reads the terms a
`GainFeatures` names: state features or their hinges (`parse_term`). BENCHMARKS.md §2.4 measures each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from oracle_records import observations, source_of
from state import FEATURE_NAMES


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

        A term is a state feature, its hinge (parse_term), or a product of those ("A*B", term_column).

        `curvature` names the features of the key mini-GOP's c(s) ("" = one curvature; "all" is refused).
        """

        def one(text: str) -> tuple[str, ...] | None:
            if text == "all":
                return None
            names = tuple(n for n in text.split(",") if n)
            for n in names:
                term_features(n)
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


def term_features(term: str) -> tuple[str, ...]:
    """The state features a term reads: one, or one per factor of a product "A*B" (each factor a parse_term)."""
    return tuple(parse_term(factor)[0] for factor in term.split("*"))


def term_column(obs: np.ndarray, term: str) -> np.ndarray:
    """One term's value per state (N,): the feature itself, its hinge (parse_term), or a product of those ("A*B").

    A product lets one term's effect change with another feature, e.g. "fp_propagation>0.825*log_target_bpp":
    the propagation hinge, larger or smaller with the target rate.
    """
    if "*" in term:
        return np.prod([term_column(obs, factor) for factor in term.split("*")], axis=0)
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
    terms = (*(spec.key or ()), *(spec.inter or ()), *spec.curvature)
    return {"has_key", *(name for t in terms for name in term_features(t))}
