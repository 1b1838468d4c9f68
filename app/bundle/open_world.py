"""The bundle's open-world rule (bsegn.generative.open_world): how it is stored, checked and read back.

    config.json  "open_world": {"score": "knn", "threshold": 3.1, "temperature": 2.7, "classes": 79}
                 (OpenWorldRule.metadata()), or null / absent: a closed-world model (one whose score would
                 read a decoder it lacks, or a bundle from before it)
    model.safetensors  open_world.*   the score's state_dict: the class list it was fitted to, its
                 standardisation and its fitted parts (class means, the knn bank), under the model's sha256

    check_open_world_config(config, folder)             schema: a known score, numbers in range, the class count
    open_world_from_bundle(config, state, folder)       the OpenWorldRule or None (BundleError when it does not fit)
    open_world_card_lines(config)                       the model card's line
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bsegn.app.bundle.checks import invalid, require_choice, require_int, require_number
from bsegn.app.bundle.gate import TEMPERATURE_LIMITS, THRESHOLD_LIMIT
from bsegn.core.errors import BundleError


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


def open_world_card_lines(config: dict[str, Any]) -> list[str]:
    """The model card's description of the "unknown" answer."""
    rule = config.get("open_world")
    if rule is None:
        return ["- open world: off (every image gets one of the model's classes)"]
    return [f"- open world: an image is answered `unknown` (none of these classes) when its `{rule['score']}` score, "
            f"standardised on generated features of every class, is above {float(rule['threshold']):.4g}; "
            f"p(unknown) = sigmoid((z - threshold) / {float(rule['temperature']):.4g}); predict --open-world off "
            "answers a class always"]
