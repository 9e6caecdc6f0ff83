"""Shipped policies: a trained actor in a small file that loads without running code.

A policy file (`policies/<codec>.pt`) holds only tensors and plain values, so it is read with
`torch.load(weights_only=True)`:

    {"format": "rlrc-policy", "version": 1, "codec": str, "obs_dim": int, "feature_names": [str],
     "hidden_sizes": [int], "actor": {name: tensor}, "max_delta_qp": int, "rate_tolerance": float,
     "provenance": {str: str}, "fade_finer_keys": bool (optional, False when absent)}

The actor reads the features `feature_names` names (obs_dim of them), picked by name from the
state (state.FEATURE_NAMES): a file made before a feature was added reads the features it knew, and
answers as it did.

`fade_finer_keys` is a rate guard applied to the actor's answer (state.fade_finer_key): a key mini-GOP's
finer answer (a < 0) is multiplied by state.payback_share(s) = clip(gop_left / (7/8), 0, 1). That is 1 in a
GOP of 8 mini-GOPs or more, so only a short GOP's key (a clip's last GOP) is faded: the rest of its GOP is too
short for the rate control to take a finer key's bits back (BENCHMARKS.md §2.4.47, §2.4.50). Coarser answers
are kept.

`--load-checkpoint policies/svtav1.pt` works wherever a checkpoint does: `--mode infer` and
`evaluate.py` answer with its deterministic action tanh(mean(s)); `--mode train` starts SAC with
its actor (fine-tuning). Without `--load-checkpoint`, infer mode and evaluate.py use
`policies/<codec>.pt`; `--load-checkpoint x264` names it (named()). `python -m policy` lists them:

    python -m policy            # name, codec, date, how it was made, for every file in policies/
    python -m policy mine.pt    # the same for any policy file, with its whole provenance
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from io_runner import Learner
from models import Actor, NumpyActor
from state import FEATURE_NAMES, OBS_DIM, fade_finer_key

log = logging.getLogger(__name__)
_HAS_KEY, _GOP_LEFT, _KEY_PROBE = (FEATURE_NAMES.index(n) for n in ("has_key", "gop_left", "key_probe"))
PROBE_ZERO_FEATURES = {"key_probe_best", "ramp_probe_best"}  # state features of the probes' zero encode
PROBE_FEATURES = {"key_probe", "ramp_probe"} | PROBE_ZERO_FEATURES  # state features of the probes

POLICY_FORMAT = "rlrc-policy"
POLICY_VERSION = 1
POLICY_DIR = Path(__file__).resolve().parent / "policies"


class PolicyError(ValueError):
    """A policy file cannot be used; the message names the file and the reason."""


def shipped_policy(codec: str) -> Path:
    """Path of the policy shipped for `codec` (it may not exist)."""
    return POLICY_DIR / f"{codec}.pt"


def shipped_names() -> list[str]:
    """Names of the policies in policies/ (each loads by name: `--load-checkpoint x264`)."""
    return sorted(p.stem for p in POLICY_DIR.glob("*.pt"))


def named(value: str) -> Path:
    """A `--load-checkpoint` value as a path: the file it names; a bare name with no such file
    (no folder, no suffix), such as `x264`, is the policy shipped under it (policies/x264.pt)."""
    path = Path(value)
    if not path.exists() and value in shipped_names():
        return shipped_policy(value)
    return path


@dataclass
class Policy:
    """A deterministic actor and the action range it was trained with."""

    actor: Actor  # reads the features `feature_names`, in that order
    codec: str
    max_delta_qp: int
    rate_tolerance: float
    provenance: dict[str, str] = field(default_factory=dict)
    path: str = ""
    feature_names: tuple[str, ...] = FEATURE_NAMES
    fade_finer_keys: bool = False  # a short GOP's finer key answer scaled by payback_share (module docstring)
    _numpy: NumpyActor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return actor_hidden_sizes(self.actor)

    @property
    def wants_key_probe(self) -> bool:
        """Made from encodes with the encoder's key probe (make_policy.py --key-probe): its answers read the probes."""
        return self.provenance.get("key_probe") == "1" and bool(PROBE_FEATURES & set(self.feature_names))

    @property
    def reads_probe_zero(self) -> bool:
        """Its answers read the probes' zero encode (make_policy.py --key-pick): the encoder's --probe-zero."""
        return bool(PROBE_ZERO_FEATURES & set(self.feature_names))

    @cached_property
    def inputs(self) -> np.ndarray:
        """Indices of the actor's features in the state (state.FEATURE_NAMES); found once, act runs per mini-GOP."""
        return np.array([FEATURE_NAMES.index(name) for name in self.feature_names])

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action (1,) in [-1, 1] for one observation (OBS_DIM,), float32.

        Computed in numpy (`models.NumpyActor`: it answers on the encoder's reply path); equal to
        tanh(actor(obs).mean) through torch within ~1e-7. With fade_finer_keys, a key mini-GOP's a < 0
        becomes a * payback_share(obs).
        """
        if self._numpy is None:
            self._numpy = NumpyActor(self.actor)
        obs = np.asarray(obs)
        a = self._numpy.deterministic(obs[self.inputs] if len(self.feature_names) < OBS_DIM else obs)
        return fade_finer_key(a, obs) if self.fade_finer_keys else a

    def full_actor(self) -> Actor:
        """The actor on the whole state (OBS_DIM inputs): weight 0 on the features it does not read, so
        it answers as the policy does (a starting point for SAC, which acts on every feature). The network
        alone: fade_finer_keys is a rule on its answers, which SAC does not apply."""
        if len(self.feature_names) == OBS_DIM:
            return self.actor
        full = Actor(OBS_DIM, 1, self.hidden_sizes)
        state = {k: v.clone() for k, v in self.actor.state_dict().items()}
        first = next(k for k in state if k.endswith("weight"))  # the first Linear: (hidden, inputs)
        wide = torch.zeros(state[first].shape[0], OBS_DIM)
        wide[:, torch.as_tensor(self.inputs)] = state[first]
        state[first] = wide
        full.load_state_dict(state)
        return full


def actor_hidden_sizes(actor: Actor) -> tuple[int, ...]:
    """The widths of an actor's hidden layers (every Linear's output but the last)."""
    return tuple(m.out_features for m in actor.net if isinstance(m, torch.nn.Linear))[:-1]


def save(path: Path, actor: Actor, codec: str, max_delta_qp: int, rate_tolerance: float,
         provenance: dict[str, str], feature_names: tuple[str, ...] = FEATURE_NAMES,
         fade_finer_keys: bool = False) -> None:  # fmt: skip
    """Writes a policy file atomically (temporary file + rename); `actor` reads `feature_names`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": POLICY_FORMAT, "version": POLICY_VERSION, "codec": codec, "obs_dim": len(feature_names),
        "feature_names": list(feature_names), "hidden_sizes": list(actor_hidden_sizes(actor)),
        "actor": {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()},
        "max_delta_qp": int(max_delta_qp), "rate_tolerance": float(rate_tolerance),
        "provenance": {str(k): str(v) for k, v in provenance.items()},
        **({"fade_finer_keys": True} if fade_finer_keys else {}),  # absent: files made before it answer as before
    }  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(data, tmp)
    tmp.replace(path)


def read_file(path: Path) -> dict[str, Any] | None:
    """The file's dict if it is a policy file, else None (a training checkpoint, a broken file, ...).

    Reads with weights_only=True: nothing in the file can run code. Raises PolicyError only when
    the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"{path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # pickled objects (refused unread), or not a torch file: not a policy
        return None
    if isinstance(data, dict) and data.get("format") == POLICY_FORMAT:
        return data
    return None


def load(path: Path, data: dict[str, Any] | None = None) -> Policy:
    """Loads a policy file (or its dict from read_file); raises PolicyError naming the file when it does not fit."""
    data = read_file(path) if data is None else data
    if data is None:
        raise PolicyError(f"{path} is not a policy file (format {POLICY_FORMAT!r})")
    if data.get("version") != POLICY_VERSION:
        raise PolicyError(f"{path}: policy version {data.get('version')}, this code reads {POLICY_VERSION}")
    names = [str(n) for n in data.get("feature_names", [])]
    if not names or [n for n in FEATURE_NAMES if n in names] != names:  # a subset, in the state's order
        raise PolicyError(
            f"{path} was trained on the features {data.get('feature_names')}, this code builds {list(FEATURE_NAMES)}: "
            "retrain it (see README, 'Shipped policies')"
        )
    actor = Actor(len(names), 1, tuple(int(h) for h in data["hidden_sizes"]))
    try:
        actor.load_state_dict(data["actor"])
    except (RuntimeError, KeyError) as exc:
        raise PolicyError(f"{path}: actor weights do not fit: {str(exc).splitlines()[0]}") from None
    actor.eval()
    return Policy(actor, str(data["codec"]), int(data["max_delta_qp"]), float(data["rate_tolerance"]),
                  dict(data.get("provenance", {})), str(path), tuple(names),
                  bool(data.get("fade_finer_keys", False)))  # fmt: skip


class PolicyLearner(Learner):
    """Answers with a policy's deterministic action; never learns."""

    learning = False

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._probe_warned = False

    def choose(self, obs: np.ndarray) -> np.ndarray:
        # A GOP's first mini-GOP with more after it (a GOP of one has key_probe 0 by definition) and no probe.
        gop_start = obs[_HAS_KEY] == 1.0 and obs[_GOP_LEFT] > 0.0
        if self.policy.wants_key_probe and not self._probe_warned and gop_start and obs[_KEY_PROBE] == 0.0:
            self._probe_warned = True  # once: every GOP of such an encode lacks it
            log.warning("%s reads the key probe, and a GOP's first request carries none: run the encoder with "
                        "--key-probe (PROTOCOL.md §4.1.2); without it the policy answers as for a probe of 0 dB",
                        self.policy.path)  # fmt: skip
        return self.policy.act(obs)


def describe(path: Path) -> str:
    """One Markdown row for a policy file: name, codec, date, actor, how it was made (or why it does not load)."""
    try:
        pol = load(path)
    except PolicyError as exc:
        return f"| {Path(path).stem} | – | – | – | does not load: {exc} |"
    how, date = pol.provenance.get("command", ""), pol.provenance.get("date", "–")
    sizes = "x".join(str(h) for h in pol.hidden_sizes)
    return f"| {Path(path).stem} | {pol.codec} | {date} | {sizes}, ±{pol.max_delta_qp} QP | `{how}` |"


def main(argv: list[str] | None = None) -> int:
    """Lists the shipped policies (or the files named), and the provenance of a file named alone."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    paths = [named(a) for a in args] or [shipped_policy(n) for n in shipped_names()]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"policy: {', '.join(missing)}: no such file (shipped: {', '.join(shipped_names())})", file=sys.stderr)
        return 2
    print("| name | codec | date | actor, action range | made by |\n|---|---|---|---|---|")
    for p in paths:
        print(describe(p))
    if len(args) == 1 and read_file(paths[0]) is not None:
        for key, value in load(paths[0]).provenance.items():
            print(f"\n{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
