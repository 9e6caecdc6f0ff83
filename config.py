"""All run settings in dataclasses: defaults, validation, and the round-trip into checkpoints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from reward import REWARD_METRICS


@dataclass
class SACConfig:
    """Soft Actor-Critic with a Lagrangian rate constraint. Sizes in units, rates per gradient step."""

    hidden_sizes: tuple[int, ...] = (128, 128)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.9  # episodes (GOPs) are short: 4-16 mini-GOPs
    tau: float = 0.005  # Polyak averaging of the target critics
    batch_size: int = 128
    buffer_size: int = 100_000
    learning_starts: int = 64  # transitions of uniform random actions before learning
    updates_per_step: int = 1  # gradient steps per transition collected
    target_entropy: float | None = None  # None = -action_dim
    init_alpha: float = 0.2
    autotune_alpha: bool = True
    # Lagrange multiplier of the rate constraint: projected dual ascent, once per GOP.
    lambda_init: float = 1.0
    lambda_lr: float = 0.5
    lambda_max: float = 20.0
    rate_tolerance: float = 0.02  # GOP bits may exceed the GOP budget by this fraction for free
    max_delta_qp: int = 4  # action in [-1, 1] maps to dQP in [-max_delta_qp, max_delta_qp]
    # Fine-tuning from a policy: the actor loss adds bc_weight * w_t * (tanh(mean(s)) - a_ref(s))^2, with
    # a_ref the starting policy's deterministic action and w_t = max(0, 1 - updates / bc_updates).
    bc_weight: float = 0.0
    bc_updates: int = 2000

    def validate(self) -> None:
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}")
        for name in ("actor_lr", "critic_lr", "alpha_lr", "lambda_lr", "init_alpha", "lambda_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.batch_size < 1 or self.buffer_size < self.batch_size or self.updates_per_step < 0:
            raise ValueError("need batch_size >= 1, buffer_size >= batch_size, updates_per_step >= 0")
        if self.max_delta_qp < 1:
            raise ValueError(f"max_delta_qp must be >= 1, got {self.max_delta_qp}")
        if self.bc_weight < 0 or self.bc_updates < 1:
            raise ValueError("bc_weight must be >= 0 and bc_updates >= 1")
        if not 0 <= self.lambda_init <= self.lambda_max:
            raise ValueError("lambda_init must be in [0, lambda_max]")


@dataclass
class Config:
    """One run of main.py. Field names follow the command-line flags (dashes -> underscores)."""

    # what to encode
    rl_dir: str = ""  # "" = main.default_rl_dir(): a new directory on tmpfs, removed at exit
    encoder: str = ""  # "" = the built-in encoder (python -m builtin_encoder)
    videos: list[str] = field(default_factory=list)  # each one '|'-separated encoder command line
    use_dataset: bool = False
    dataset_inputs: str = ""
    stat_dir: str = "./1pass_logs"
    out_dir: str = "./outputs"
    # training control
    epochs: int = 2
    start_epoch: int = 1
    mode: str = "train"
    seed: int = 0
    # logging
    log_level: int = 1
    tensorboard: bool = True
    runs_dir: str = "./runs"
    # checkpoints
    ckpt_dir: str = "./checkpoints"
    ckpt_interval: int = 5
    ckpt_keep: int = 5
    load_checkpoint: str = ""
    save_replay_buffer: bool = False
    # other
    device: str = "cpu"
    baseline_stats: str = ""
    make_baseline: bool = False
    reward_metric: str = "psnr"  # "psnr" (MSE-based), "ssim" or "psnr-rd" (PSNR at equal rate, reward.py)
    pretrain_critics: str = ""  # oracle records: the reward critics start from their gain model (critic_pretrain.py)
    encoder_timeout_s: float = 60.0  # no protocol file for this long = encoder hung
    # parallel encoders (workers.py)
    workers: int = 1  # encoders at once; > 1 learns off the reply path (see learner)
    weights_every: int = 16  # gradient steps between two weight refreshes of the workers' actors
    learner: str = "process"  # with workers > 1 or ray: the gradient steps in a "process" or a "thread" of their own
    ray: str = ""  # "" = local threads; else the workers are Ray actors: "local", "auto" or "ray://host:port"
    sac: SACConfig = field(default_factory=SACConfig)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.start_epoch < 1:
            raise ValueError(f"--start-epoch must be >= 1, got {self.start_epoch}")
        if self.mode not in ("train", "infer"):
            raise ValueError(f"--mode must be train or infer, got {self.mode!r}")
        if self.log_level not in (0, 1, 2, 3):
            raise ValueError(f"--log-level must be 0, 1, 2 or 3, got {self.log_level}")
        if self.ckpt_interval < 1:
            raise ValueError(f"--ckpt-interval must be >= 1, got {self.ckpt_interval}")
        if self.reward_metric not in REWARD_METRICS:
            raise ValueError(f"--reward-metric must be one of {', '.join(REWARD_METRICS)}, got {self.reward_metric!r}")
        if self.encoder_timeout_s <= 0:
            raise ValueError("--encoder-timeout must be > 0")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.weights_every < 1:
            raise ValueError(f"--weights-every must be >= 1, got {self.weights_every}")
        if self.learner not in ("thread", "process"):
            raise ValueError(f"--learner must be thread or process, got {self.learner!r}")
        self.sac.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        data = dict(data)
        sac = dict(data.pop("sac", {}))
        if "hidden_sizes" in sac:
            sac["hidden_sizes"] = tuple(sac["hidden_sizes"])
        return cls(**data, sac=SACConfig(**sac))
