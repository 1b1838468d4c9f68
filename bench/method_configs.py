"""The benches' methods as BSeGN configs: the ablations of one part and the f-CLSWGAN baseline.

    without(config, part) -> BSeGNConfig      # one ablation part removed (ABLATIONS)
    as_f_clswgan(config) -> BSeGNConfig       # every BSeGN part off, f-CLSWGAN's classification loss on
    method_config(name, base) -> BSeGNConfig  # "bsegn", "f-clswgan", "bsegn-no-<part>" (METHODS, less eszsl)

A part is switched off by its weight (docs/method.md, "Switches"): each is a change of the generative config
that a user can make too, so the library keeps the options (lambda_cls included) and these presets live here.
"""
from __future__ import annotations

from bsegn.core.errors import ConfigError
from bsegn.generative.config import BSeGNConfig

# the change that removes each ablation part
ABLATIONS = {"fem": {"fem": False}, "fem_s2f": {"lambda_s2f": 0.0}, "balance": {"lambda_bal": 0.0},
             "fem_boosts_g": {"lambda_emb": 0.0}, "cycle": {"lambda_cyc": 0.0}, "mfim_levels": {"mfim_levels": ("x",)}}
# f-CLSWGAN (Xian et al., CVPR 2018): a conditional WGAN-GP + the classification loss of a pre-trained seen
# classifier at its paper's weight beta = 0.01 (docs/method.md: with lambda_cls 0 it is a plain conditional WGAN-GP)
F_CLSWGAN_CLS_WEIGHT = 0.01
F_CLSWGAN = {"fem": False, "lambda_cyc": 0.0, "lambda_cls": F_CLSWGAN_CLS_WEIGHT, "fusion_weight": 0.0,
             "mfim_levels": ("x",)}
METHODS = ("eszsl", "f-clswgan", "bsegn") + tuple(f"bsegn-no-{part}" for part in ABLATIONS)


def without(config: BSeGNConfig, part: str) -> BSeGNConfig:
    """`config` with one ablation part removed: one of fem, fem_s2f, balance, fem_boosts_g, cycle, mfim_levels
    (mfim_levels -> ("x",))."""
    if part not in ABLATIONS:
        raise ConfigError(f"{part!r} is not an ablation part; expected one of {', '.join(ABLATIONS)}")
    return config.replace(**ABLATIONS[part])


def as_f_clswgan(config: BSeGNConfig) -> BSeGNConfig:
    """`config`'s sizes, rates and budget with every BSeGN part off and f-CLSWGAN's cls loss on: the baseline as
    docs/method.md defines it (no FEM, no cycle, no fusion, mFIM = [x], cls loss at 0.01)."""
    return config.replace(**F_CLSWGAN)


def method_config(name: str, base: BSeGNConfig) -> BSeGNConfig:
    """The config of a bench method: bsegn (the base), f-clswgan, or bsegn-no-<part> (without(base, part))."""
    if name == "bsegn":
        return base
    if name == "f-clswgan":
        return as_f_clswgan(base)
    return without(base, name[len("bsegn-no-"):])
