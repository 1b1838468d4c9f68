"""What a bundle's config.json and weights must hold before anything is built from them.

A bundle whose config.json was edited and its hash recomputed passes the integrity checks; these
checks make sure it is still a model: class lists that agree, ids in range, sizes that are small
positive integers, finite numbers, a known gate (app.bundle.gate), semantic fields that fit their kind
(app.bundle.semantics), and weights without NaN or infinity. Each failure is checks.invalid's
BundleError naming the field.

    check_bundle_config(config, folder)     after config.json's hash check (app.bundle.layout)
    check_finite_tensors(tensors, path)     after model.safetensors' sha256 check (app.bundle.load)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bsegn.app.bundle.checks import (MAX_DIM, invalid, require_choice, require_ids, require_int, require_list,
                                     require_number)
from bsegn.app.bundle.gate import check_gate_config
from bsegn.app.bundle.open_world import check_open_world_config
from bsegn.app.bundle.semantics import check_semantic_fields
from bsegn.core.errors import BsegnError, BundleError

MAX_CLASSES = 1 << 20
MAX_SIDE = 4096  # input pixels per side: a 4096x4096 RGB batch of 32 is already 6 GB of float32
INPUT_CHANNELS = (1, 3)


def check_bundle_config(config: dict[str, Any], folder: Path) -> None:
    """Schema and ranges of a (hash-verified) config.json; BundleError naming the first bad field."""
    from bsegn.generative.config import BSeGNConfig

    for key in ("classes", "bsegn", "gzsl_classes"):
        if key not in config:
            raise invalid(folder, key, "is missing")
    classes = require_list(folder, "classes", config["classes"])
    count = require_int(folder, "classes (count)", len(classes), 1, MAX_CLASSES)
    names = []
    for index, entry in enumerate(classes):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip() \
                or not entry["name"].isprintable() or not isinstance(entry.get("seen"), bool):
            raise invalid(folder, f"classes[{index}]", "must be {'name': non-empty printable text (no control "
                                                       f"characters), 'seen': true/false}}, got {str(entry)[:200]!r}")
        names.append(entry["name"])
    if len(set(names)) != len(names):
        raise invalid(folder, "classes", "names the same class twice")

    bsegn = config["bsegn"]
    if not isinstance(bsegn, dict):
        raise invalid(folder, "bsegn", "must be a mapping")
    try:
        BSeGNConfig.from_dict(bsegn.get("config"))
    except (BsegnError, TypeError, AttributeError) as error:
        raise invalid(folder, "bsegn.config", f"is not a valid BSeGN config ({error})") from None
    feature_dim = require_int(folder, "bsegn.feature_dim", bsegn.get("feature_dim"), 1, MAX_DIM)
    semantic_dim = require_int(folder, "bsegn.semantic_dim", bsegn.get("semantic_dim"), 1, MAX_DIM)
    require_int(folder, "bsegn.seed", bsegn.get("seed", 0), -(1 << 63), (1 << 63) - 1)
    semantics = require_list(folder, "bsegn.semantics", bsegn.get("semantics"))
    if len(semantics) != count:
        raise invalid(folder, "classes", f"lists {count} classes but bsegn.semantics has {len(semantics)} rows")
    for index, row in enumerate(semantics):
        for value in require_list(folder, f"bsegn.semantics[{index}]", row, semantic_dim):
            require_number(folder, f"bsegn.semantics[{index}]", value)
    seen = require_ids(folder, "bsegn.seen_classes", bsegn.get("seen_classes"), count, allow_empty=False)
    unseen = require_ids(folder, "bsegn.unseen_classes", bsegn.get("unseen_classes"), count)
    if set(seen) & set(unseen):  # (a validation-protocol bundle's test classes are in neither)
        raise invalid(folder, "bsegn.seen_classes / unseen_classes", "must not share a class")
    if any(entry["seen"] != (index in set(seen)) for index, entry in enumerate(classes)):
        raise invalid(folder, "classes[].seen", "disagrees with bsegn.seen_classes")
    require_ids(folder, "gzsl_classes", config["gzsl_classes"], count, allow_empty=False)
    if config.get("zsl_classes") is not None:
        require_ids(folder, "zsl_classes", config["zsl_classes"], count, allow_empty=False)
    check_gate_config(config, folder)
    check_open_world_config(config, folder)
    require_choice(folder, "unseen_ranking", config.get("unseen_ranking", "gzsl"), ("gzsl", "zsl"))
    attributes = config.get("attribute_names")
    if attributes is not None and not all(isinstance(a, str) for a in require_list(
            folder, "attribute_names", attributes, semantic_dim)):
        raise invalid(folder, "attribute_names", "must be text")
    backbone = config.get("backbone")
    if backbone is not None:
        if not isinstance(backbone, dict) or not isinstance(backbone.get("model_name"), str):
            raise invalid(folder, "backbone", "must be a mapping with a model_name")
        if require_int(folder, "backbone.num_features", backbone.get("num_features"), 1, MAX_DIM) != feature_dim:
            raise invalid(folder, "backbone.num_features", f"must equal bsegn.feature_dim ({feature_dim})")
        _check_data_config(config.get("data_config"), folder)
    check_semantic_fields(config, folder, count, semantic_dim)


def _check_data_config(data_config: Any, folder: Path) -> None:
    if not isinstance(data_config, dict):
        raise invalid(folder, "data_config", "must be a mapping")
    size = require_list(folder, "data_config.input_size", data_config.get("input_size"), 3)
    if size[0] not in INPUT_CHANNELS or isinstance(size[0], bool):
        raise invalid(folder, "data_config.input_size", f"must have {INPUT_CHANNELS} channels, got {size!r}")
    for side in size[1:]:
        require_int(folder, "data_config.input_size", side, 8, MAX_SIDE)
    for key in ("mean", "std"):
        if key in data_config:
            values = data_config[key]
            values = values if isinstance(values, list) else [values]
            for value in values:
                require_number(folder, f"data_config.{key}", value, positive=key == "std")
    if "crop_pct" in data_config:
        require_number(folder, "data_config.crop_pct", data_config["crop_pct"], positive=True)


def check_finite_tensors(tensors: dict, path: Path) -> None:
    """Every floating tensor of model.safetensors is finite (NaN weights would give NaN answers, exit 0)."""
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BundleError(f"{path}: tensor {name!r} holds NaN or infinity; the bundle was edited or its training "
                              "diverged: re-copy it or re-run train.py")
