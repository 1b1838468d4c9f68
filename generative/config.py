"""BSeGNConfig: the hyperparameters of BSeGN (docs/method.md), the `generative` section of a run config.

A frozen, typed dataclass: `from_dict` refuses unknown keys and wrong types (bsegn.core.sections) and
`check` refuses impossible values, each with a message naming the key.

A part is switched off by its weight (docs/method.md, "Switches"); a weight of 0 removes the term, and a part
no term needs is not built at all:
    fem=False        no SemanticEmbedder, no L_bicon / L_bal anywhere
    lambda_s2f=0     the FEM's contrastive loss runs feature -> semantic only
    lambda_bal=0     no balance loss
    lambda_emb=0     the FEM does not train the generator
    lambda_cyc=0     no SemanticDecoder, no L_cyc; mFIM levels limited to those that exist
    lambda_cls>0     f-CLSWGAN's classification loss with a pre-trained, frozen seen classifier
    mfim_levels      which levels the final classifier sees: a subset of ("x", "h_R", "a_hat", "s")
    fusion_weight>0  the FEM's log-probabilities, with this weight, are added to the final classifier's
fem, the cycle and fusion off, mfim_levels ("x",) and the cls loss ON at its paper's weight is f-CLSWGAN; the
benches build it and the ablation of each part from these options (bench/method_configs.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bsegn.core.errors import ConfigError
from bsegn.core.sections import build_section, option, require, to_dict

SECTION = "generative"
MFIM_LEVELS = ("x", "h_R", "a_hat", "s")

@dataclass(frozen=True)
class BSeGNConfig:
    hidden: int = option(4096, "hidden width of the generator, the critic and the semantic decoder")
    embedder_hidden: int = option(2048, "hidden width of the FEM (SemanticEmbedder)")
    n_critic: int = option(5, "critic steps per generator step (WGAN-GP)")
    lambda_gp: float = option(10.0, "weight of the WGAN-GP gradient penalty")
    fem: bool = option(True, "build the FEM (SemanticEmbedder) and its losses; false removes both")
    lambda_s2f: float = option(1.0, "weight of the FEM's semantic -> feature contrastive term; 0 removes it")
    lambda_bal: float = option(1.0, "weight of the FEM's balance loss (m_S - m_U)^2; 0 removes it")
    lambda_emb: float = option(0.001, "weight of the FEM's losses in the generator loss; 0: the FEM does not train G")
    lambda_cyc: float = option(0.1, "weight of the cycle loss; 0 removes the semantic decoder and the cycle")
    lambda_cls: float = option(0.0, "weight of f-CLSWGAN's seen-classification loss; > 0 pre-trains its classifier")
    tau: float = option(0.1, "temperature of the FEM's cosine scores")
    mfim_levels: tuple[str, ...] = option(MFIM_LEVELS,
                                          "levels the final classifier sees: x, h_R, a_hat, s (x required)")
    fusion_weight: float = option(0.0, "weight of the FEM's log-probabilities added to the final classifier's; 0: none")
    epochs: int = option(120, "generator epochs")
    iterations_per_epoch: int | None = option(None, "generator iterations per epoch; null: ceil(N_train / batch_size)")
    batch_size: int = option(64, "real seen features per critic step (and fake unseen per FEM step)")
    lr: float = option(1e-4, "Adam learning rate of generator, critic, decoder and FEM")
    syn_num: int = option(300, "synthetic features per unseen class for the final classifier")
    classifier_epochs: int = option(25, "epochs of the final classifier")
    classifier_batch_size: int = option(64, "batch size of the final classifier")

    def check(self) -> None:
        """Range checks; ConfigError naming the key."""
        for name in ("hidden", "embedder_hidden", "n_critic", "epochs", "batch_size", "syn_num", "classifier_epochs",
                     "classifier_batch_size"):
            _at_least_one(name, getattr(self, name))
        if self.iterations_per_epoch is not None:
            _at_least_one("iterations_per_epoch", self.iterations_per_epoch)
        for name in ("lambda_gp", "lambda_s2f", "lambda_bal", "lambda_emb", "lambda_cyc", "lambda_cls",
                     "fusion_weight"):
            value = getattr(self, name)
            require(value >= 0, f"{SECTION}.{name} must be >= 0, got {value}")
        require(self.lr > 0, f"{SECTION}.lr must be > 0, got {self.lr}")
        require(self.tau > 0, f"{SECTION}.tau must be > 0, got {self.tau}")
        levels = list(self.mfim_levels)
        require(bool(levels) and all(level in MFIM_LEVELS for level in levels) and len(set(levels)) == len(levels),
                f"{SECTION}.mfim_levels {levels}: each must be one of {list(MFIM_LEVELS)}, once")
        require("x" in levels, f"{SECTION}.mfim_levels must include 'x' (the feature itself), got {levels}")

    def check_process_count(self, world: int) -> None:
        """Each of `world` processes takes an equal share of every batch (DDP): batch_size must divide by it."""
        if self.batch_size % world:
            multiple = -(-self.batch_size // world) * world
            raise ConfigError(f"{SECTION}.batch_size {self.batch_size} does not divide by the {world} processes "
                              f"(each takes an equal share of a batch); use a multiple of {world}, e.g. "
                              f"--{SECTION}.batch_size {multiple}")

    # --- derived -------------------------------------------------------------------------------

    @property
    def uses_decoder(self) -> bool:
        """The semantic decoder (cycle branch) exists."""
        return self.lambda_cyc > 0

    @property
    def uses_fusion(self) -> bool:
        """The FEM's scores are added at inference: only when the FEM exists."""
        return self.fem and self.fusion_weight > 0

    @property
    def effective_mfim_levels(self) -> tuple[str, ...]:
        """The levels that exist: h_R / a_hat need the decoder, s the FEM."""
        available = {"x"} | ({"h_R", "a_hat"} if self.uses_decoder else set()) | ({"s"} if self.fem else set())
        return tuple(level for level in self.mfim_levels if level in available)

    # --- building ------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "BSeGNConfig":
        """Build from a mapping (the YAML `generative` section); unknown keys and wrong types refused."""
        return build_section(cls, values, SECTION)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-safe dict that `from_dict` turns back into this config."""
        return to_dict(self)

    def replace(self, **changes) -> "BSeGNConfig":
        """A copy with `changes` applied (type- and range-checked; unknown keys refused)."""
        return BSeGNConfig.from_dict({**dataclasses.asdict(self), **changes})


def _at_least_one(name: str, value: int) -> None:
    require(value >= 1, f"{SECTION}.{name} must be >= 1, got {value}")
