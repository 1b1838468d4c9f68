"""BSeGNConfig: every hyperparameter and ablation switch of BSeGN (../shared/docs/bsegn.md).

One flat dataclass, so a run's config is a plain dict (YAML/JSON) that reproduces it and that the
bundle can store. `from_dict` refuses unknown keys with a message naming them, so a typo in a config
file never silently falls back to a default.

Switches (each removes its part; see bsegn.md "Switches"):
    fem            no SemanticEmbedder, no L_bicon / L_bal anywhere
    fem_s2f        contrastive loss feature -> semantic only
    balance        lambda_bal = 0
    fem_boosts_g   lambda_emb = 0 (the FEM does not train the generator)
    cycle          no SemanticDecoder, no L_cyc; mFIM levels limited to those that exist
    mfim_levels    which levels the final classifier sees: subset of ("x", "h_R", "a_hat", "s")
    cls_loss       lambda_cls = 0 (no pre-trained seen classifier scoring fake seen features)
    fusion         (off by default) the FEM's log-probabilities, weighted by fusion_weight, are added to the
                   final classifier's; only when fem is on
Options beyond bsegn.md: generator_unit_norm (L2-normalise G's output, for unit-norm features such as
Hellinger-mapped histograms), feedback (TF-VAEGAN's decoder feedback), fem_fake_seen; and variants of the
FEM's losses, measured on AwA1-Lampert validation (configs/awa1-lampert.yaml) and off by default:
lambda_s2f (weight of L_s2f), balance_reference "fake" (m_S over fake seen features), balance_one_sided;
and unseen_ranking (which classifier names the unseen class in GZSL predictions).
All of fem, cycle, cls_loss off and mfim_levels = ("x",) is f-CLSWGAN (`BSeGNConfig.f_clswgan()`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MFIM_LEVELS = ("x", "h_R", "a_hat", "s")
GENERATOR_ACTIVATIONS = ("relu", "sigmoid", "none")


SWITCHES = ("fem", "fem_s2f", "balance", "fem_boosts_g", "cycle", "mfim_levels", "cls_loss", "feedback",
            "fem_fake_seen", "fusion")


class ConfigError(ValueError):
    """A BSeGN config has an unknown key or an impossible value; the message says which."""


@dataclass
class BSeGNConfig:
    # --- network sizes (None: the semantic dimension k, as bsegn.md says)
    noise_dim: int | None = None
    generator_hidden: int = 4096
    critic_hidden: int = 4096
    decoder_hidden: int = 4096
    embedder_hidden: int = 2048
    embed_dim: int | None = None
    generator_activation: str = "relu"
    generator_unit_norm: bool = False  # L2-normalise G's output: for unit-norm features (Hellinger, L2-normalised)

    # --- WGAN-GP
    lambda_gp: float = 10.0
    n_critic: int = 5

    # --- switches
    fem: bool = True
    fem_s2f: bool = True
    balance: bool = True
    fem_boosts_g: bool = True
    cycle: bool = True
    mfim_levels: tuple[str, ...] = MFIM_LEVELS
    cls_loss: bool = False
    feedback: bool = False
    fem_fake_seen: bool = False
    fusion: bool = False
    calibration: bool = False
    # Which classifier names the unseen class of an image the GZSL classifier calls unseen: "gzsl" (its own
    # unseen columns; bsegn.md) or "zsl" (the unseen-only classifier trained on synthetic features alone,
    # whose top-1 is T1). The seen-vs-unseen decision, and calibrated stacking's gamma, stay the GZSL
    # classifier's (generative/metrics.py: rank_unseen_with).
    unseen_ranking: str = "gzsl"

    # --- loss weights and temperatures
    tau: float = 0.1
    lambda_bal: float = 1.0
    # "real": m_S of the balance loss over the real seen batch (bsegn.md); "fake": over G's fake features
    # of the same seen classes, so both sides of m_S - m_U are generated (see BSeGNTrainer.fem_loss)
    balance_reference: str = "real"
    lambda_s2f: float = 1.0  # weight of L_s2f in L_bicon (bsegn.md: 1)
    # True: L_bal = relu(m_S - m_U)^2, only a seen domain answered MORE confidently is penalised (the
    # sentence of bsegn.md taken literally); False: (m_S - m_U)^2 (bsegn.md's formula, RGEN's form)
    balance_one_sided: bool = False
    lambda_emb: float = 0.001
    lambda_cyc: float = 0.1
    lambda_cls: float = 0.01
    lambda_decoder: float = 1.0
    feedback_weight: float = 1.0
    fusion_weight: float = 0.5

    # --- optimisation
    epochs: int = 120
    iterations_per_epoch: int | None = None  # None: ceil(N_train / batch_size), as f-CLSWGAN
    batch_size: int = 64
    fem_unseen_batch: int | None = None  # B_u fake unseen features per FEM step; None: batch_size
    lr_generator: float = 1e-4
    lr_critic: float = 1e-4
    lr_decoder: float = 1e-4
    lr_embedder: float = 1e-4
    beta1: float = 0.5
    pretrain_classifier_epochs: int = 10  # the frozen seen classifier of the cls_loss term

    # --- final classifier
    syn_num: int = 300
    classifier_epochs: int = 25
    classifier_lr: float = 1e-3
    classifier_batch_size: int = 64
    # gamma is subtracted from seen-class LOG-probabilities, so the grid spans several nats. Steps of
    # 0.5 nat up to 15: on AwA1-Lampert validation, H rose from 9.5 to 14.8 and fell back to 12.2 between
    # gamma 6 and 11, so a 2-nat step (the grid had 6, 8, 10) could miss the peak by several H points.
    calibration_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75) + tuple(x / 2 for x in range(2, 31)) + \
        (16.0, 18.0, 20.0, 25.0, 30.0)

    # --- run
    seed: int = 0
    mixed_precision: str = "no"  # "no", "fp16" or "bf16" (accelerate's names)
    checkpoint_every: int = 1  # generator epochs between checkpoints
    divergence_threshold: float = 1e6  # |loss| above this stops training like a NaN

    def __post_init__(self):
        self.mfim_levels = tuple(self.mfim_levels)
        self.calibration_grid = tuple(float(g) for g in self.calibration_grid)
        self.validate()

    def validate(self) -> None:
        unknown = [lvl for lvl in self.mfim_levels if lvl not in MFIM_LEVELS]
        if unknown or not self.mfim_levels:
            raise ConfigError(f"mfim_levels {list(self.mfim_levels)}: each must be one of {list(MFIM_LEVELS)} "
                              "and at least one is needed")
        if "x" not in self.mfim_levels:
            raise ConfigError("mfim_levels must include 'x' (the feature itself)")
        if self.generator_activation not in GENERATOR_ACTIVATIONS:
            raise ConfigError(f"generator_activation {self.generator_activation!r}: expected one of "
                              f"{list(GENERATOR_ACTIVATIONS)}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision {self.mixed_precision!r}: expected 'no', 'fp16' or 'bf16'")
        for name in ("epochs", "batch_size", "n_critic", "syn_num", "classifier_epochs", "classifier_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.balance_reference not in ("real", "fake"):
            raise ConfigError(f"balance_reference {self.balance_reference!r}: expected 'real' or 'fake'")
        if self.unseen_ranking not in ("gzsl", "zsl"):
            raise ConfigError(f"unseen_ranking {self.unseen_ranking!r}: expected 'gzsl' or 'zsl'")
        if self.lambda_s2f < 0:
            raise ConfigError(f"lambda_s2f must be >= 0, got {self.lambda_s2f}")
        if self.tau <= 0:
            raise ConfigError(f"tau must be > 0, got {self.tau}")

    # Levels the classifier can actually use: h_R / a_hat need the decoder, s the embedder.
    @property
    def effective_mfim_levels(self) -> tuple[str, ...]:
        available = {"x"} | ({"h_R", "a_hat"} if self.cycle else set()) | ({"s"} if self.fem else set())
        return tuple(lvl for lvl in self.mfim_levels if lvl in available)

    @property
    def effective_fusion(self) -> bool:
        """Fusion adds the FEM's scores, so it only happens when the FEM exists (fem off removes both)."""
        return self.fusion and self.fem

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-safe dict (tuples as lists) that `from_dict` turns back into this config."""
        out = asdict(self)
        out["mfim_levels"] = list(self.mfim_levels)
        out["calibration_grid"] = list(self.calibration_grid)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "BSeGNConfig":
        """Build from a dict; unknown keys are refused, naming them and listing the valid ones."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown BSeGN config key(s): {', '.join(unknown)}. "
                              f"Valid keys: {', '.join(sorted(known))}")
        return cls(**values)

    def replace(self, **changes) -> "BSeGNConfig":
        """A copy with `changes` applied (validated; unknown keys refused)."""
        return BSeGNConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def f_clswgan(cls, **overrides) -> "BSeGNConfig":
        """The f-CLSWGAN baseline as bsegn.md defines it: fem, cycle, cls_loss off, mfim_levels = [x]."""
        base = dict(fem=False, fem_s2f=False, balance=False, fem_boosts_g=False, cycle=False,
                    cls_loss=False, feedback=False, fem_fake_seen=False, fusion=False, mfim_levels=("x",))
        base.update(overrides)
        return cls.from_dict(base)

    def as_f_clswgan(self) -> "BSeGNConfig":
        """This config's sizes, rates and budget with every BSeGN part switched off (the baseline)."""
        return BSeGNConfig.f_clswgan(**{k: v for k, v in self.to_dict().items() if k not in SWITCHES})

    def without(self, switch: str) -> "BSeGNConfig":
        """This config with one ablation switch turned off (`mfim_levels` -> ("x",))."""
        if switch == "mfim_levels":
            return self.replace(mfim_levels=("x",))
        if switch not in SWITCHES + ("calibration",):
            raise ConfigError(f"{switch!r} is not a switch")
        return self.replace(**{switch: False})
