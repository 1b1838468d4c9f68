"""The bundle's open-world rule (bsegn.generative.open_world): how it is stored, checked and read back.

    config.json  "open_world": {"score": "knn", "threshold": 3.1, "temperature": 2.7, "classes": 79,
                 "chosen_on": "validation"} (OpenWorldRule.metadata(); chosen_on null or absent: a bundle written
                 before the threshold was chosen per run, whose threshold is one constant), or null / absent: a
                 closed-world model (its run chose no rule: metrics.open_world.reason says why; or a bundle from
                 before the rule)
    model.safetensors  open_world.*   the score's state_dict: the class list it was fitted to, its
                 standardisation and its fitted parts (class means, the knn bank), under the model's sha256

    check_open_world_config(config, folder)             schema: a known score, numbers in range, the class count
    open_world_from_bundle(config, state, folder)       the OpenWorldRule or None (BundleError when it does not fit)
    open_world_card_lines(config)                       the model card's line
    resolve_open_world(setting, rule, metrics, folder)  what --open-world auto|on|off means for a bundle
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bsegn.app.bundle.checks import invalid, require_choice, require_int, require_number
from bsegn.app.bundle.gate import TEMPERATURE_LIMITS, THRESHOLD_LIMIT
from bsegn.core.errors import BundleError, ConfigError
from bsegn.core.logs import get_logger

log = get_logger(__name__)


def check_open_world_config(config: dict[str, Any], folder: Path) -> None:
    """config["open_world"]: None, or {"score": one of SCORES, "threshold": finite, "temperature": in
    TEMPERATURE_LIMITS, "classes": the number of GZSL classes (a rule fitted to another class list would call
    a class added since "unknown")}."""
    from bsegn.generative.open_world import SCORES

    rule = config.get("open_world")
    if rule is None:
        return
    if not isinstance(rule, dict):
        raise invalid(folder, "open_world", f"must be a mapping {{'score', 'threshold', ...}} or null, got {rule!r}")
    require_choice(folder, "open_world.score", rule.get("score"), SCORES)
    require_number(folder, "open_world.threshold", rule.get("threshold"), -THRESHOLD_LIMIT, THRESHOLD_LIMIT)
    require_number(folder, "open_world.temperature", rule.get("temperature"), *TEMPERATURE_LIMITS)
    if rule.get("chosen_on") is not None:
        require_choice(folder, "open_world.chosen_on", rule.get("chosen_on"), ("validation",))
    count = len(config["gzsl_classes"])
    if require_int(folder, "open_world.classes", rule.get("classes"), 0, 1 << 30) != count:
        raise invalid(folder, "open_world.classes", f"must be the {count} GZSL classes it was fitted to, got "
                      f"{rule.get('classes')}")


def open_world_from_bundle(config: dict[str, Any], state: dict, folder: Path, gzsl_classes: list[int]):
    """The bundle's OpenWorldRule (None for a closed-world bundle) from its checked config and its open_world.*
    tensors (prefix removed). BundleError when they do not load or were fitted to other classes."""
    import torch

    from bsegn.generative.open_world import rule_from_state

    if config.get("open_world") is None:
        if state:
            raise BundleError(f"{folder}: model.safetensors holds open_world.* tensors but config.json no open-world "
                              "rule: the bundle was edited; re-copy it or re-run train.py")
        return None
    try:
        rule = rule_from_state(config["open_world"], {name: tensor for name, tensor in state.items()})
    except (KeyError, RuntimeError, ValueError, IndexError) as error:
        raise BundleError(f"{folder}: the open-world rule does not load ({str(error)[:300]}): the bundle was edited "
                          "or damaged; re-copy it or re-run train.py") from None
    if not torch.equal(rule.scorer.class_ids.cpu(), torch.as_tensor(gzsl_classes, dtype=torch.long)):
        raise BundleError(f"{folder}: the open-world rule was fitted to classes {rule.scorer.class_ids.tolist()[:20]} "
                          f"..., not the classifier's: the bundle was edited; re-copy it or re-run add-class")
    return rule


def _chosen_numbers(metrics: dict) -> str:
    """What the run's validation measured at the chosen threshold (metrics.open_world), in words."""
    record = (metrics or {}).get("open_world") or {}
    if record.get("caught") is None:
        return ""
    return (f", where, with {len(record.get('withheld_classes') or [])} val classes withheld as unknowns, it had AUROC "
            f"{record['auroc']:.3f}, caught {record['caught']:.1f} % of their photos, known-class H "
            f"{record['H_off']:.1f} -> {record['H_on']:.1f}")


def open_world_card_lines(config: dict[str, Any]) -> list[str]:
    """The model card's description of the "unknown" answer."""
    rule = config.get("open_world")
    if rule is None:
        return [f"- open world: none ({no_rule_reason(config.get('metrics'))}); every image gets one of the "
                "model's classes"]
    if rule.get("chosen_on") == "validation":
        where = f"chosen on the run's validation protocol{_chosen_numbers(config.get('metrics'))}; on by default"
    else:
        where = ("one constant chosen on the flowers, not on this run's validation; off unless predict "
                 "--open-world on")
    return [f"- open world: an image is answered `unknown` (none of these classes) when its `{rule['score']}` score, "
            f"standardised on generated features of every class, is above {float(rule['threshold']):.4g} "
            f"({where}); p(unknown) = sigmoid((z - threshold) / {float(rule['temperature']):.4g}); "
            "predict --open-world off answers a class always"]


def no_rule_reason(metrics: dict | None) -> str:
    """Why a bundle has no open-world rule, and what to do: its run's record (metrics.open_world.reason), or
    that the bundle is older than the per-run choice."""
    record = (metrics or {}).get("open_world") or {}
    if record.get("reason"):
        return f"its run chose none: {record['reason']}"
    return ("the bundle records no open-world choice (written before train.py chose the rule on each run's "
            "validation protocol): re-run train.py with run.threshold null")


OPEN_WORLD_CHOICES = ("auto", "on", "off")  # predict / serve --open-world, load_model(open_world=...)


def resolve_open_world(setting, rule, metrics: dict | None, folder) -> bool:
    """Whether answers carry `unknown`: setting "auto" (the default) -> on iff the bundle's rule was chosen on
    its run's validation (within the H allowance, open_world_choice); "on" -> the rule in any case (a rule not
    validated with a warning; ConfigError naming why when the bundle has none); "off" (or False) -> never.
    True / False are "on" / "off"."""
    setting = {True: "on", False: "off"}.get(setting, setting)
    if setting not in OPEN_WORLD_CHOICES:
        raise ConfigError(f"open_world {setting!r}: expected one of {', '.join(OPEN_WORLD_CHOICES)}")
    if setting == "off":
        return False
    if rule is None:
        if setting == "on":
            raise ConfigError(f"--open-world on: {folder} has no open-world rule, because "
                              f"{no_rule_reason(metrics)}; use --open-world auto or off to answer a class always")
        return False
    if setting == "auto":
        return rule.validated
    if not rule.validated:
        log.warning(
            "open world: %s's rule has a threshold that was not chosen on its run's validation (one constant from the "
            "flowers, written by an older bsegn): its cost on this model's classes is unmeasured; re-run train.py "
            "to choose it", folder)
    return True
