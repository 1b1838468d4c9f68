"""What a bundle's config.json and weights must hold before anything is built from them.

A bundle whose config.json was edited and its hash recomputed passes the integrity checks; these
checks make sure it is still a model: class lists that agree, ids in range, sizes that are small
positive integers, finite numbers, a known gate (app.bundle_gate), and weights without NaN or infinity.
Each failure is a BundleError naming the field, never an IndexError or a 30 GB allocation.

    check_bundle_config(config, folder)     after config.json's hash check (bsegn.app.bundle)
    check_finite_tensors(tensors, path)     after model.safetensors' sha256 check
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bsegn.core.errors import BsegnError, BundleError

MAX_DIM = 1 << 20  # feature / semantic dimensions
MAX_CLASSES = 1 << 20
MAX_SIDE = 4096  # input pixels per side: a 4096x4096 RGB batch of 32 is already 6 GB of float32
INPUT_CHANNELS = (1, 3)


def _fail(folder: Path, field: str, problem: str) -> BundleError:
    return BundleError(f"{folder}: config.json field {field!r} {problem}; the bundle was edited or damaged: "
                       "re-copy it or re-run train.py")


def _int(folder, field, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(folder, field, f"must be an integer in [{low}, {high}], got {value!r}")
    return value


def _number(folder, field, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise _fail(folder, field, f"must be a finite {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def _list(folder, field, value, length: int | None = None) -> list:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        found = type(value).__name__ + ("" if not isinstance(value, list) else f" of {len(value)}")
        raise _fail(folder, field, f"must be a list{'' if length is None else f' of {length}'}, got {found}")
    return value


def _ids(folder, field, value, count: int, *, allow_empty: bool = True) -> list[int]:
    ids = [_int(folder, field, v, 0, count - 1) for v in _list(folder, field, value)]
    if len(set(ids)) != len(ids) or (not ids and not allow_empty):
        raise _fail(folder, field, "must list distinct class ids" + ("" if allow_empty else ", at least one"))
    return ids


def check_bundle_config(config: dict[str, Any], folder: Path) -> None:
    """Schema and ranges of a (hash-verified) config.json; BundleError naming the first bad field."""
    from bsegn.generative.config import BSeGNConfig

    from bsegn.app.bundle_gate import check_gate_config

    for key in ("classes", "bsegn", "gzsl_classes"):
        if key not in config:
            raise _fail(folder, key, "is missing")
    classes = _list(folder, "classes", config["classes"])
    count = _int(folder, "classes (count)", len(classes), 1, MAX_CLASSES)
    names = []
    for index, entry in enumerate(classes):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip() \
                or not entry["name"].isprintable() or not isinstance(entry.get("seen"), bool):
            raise _fail(folder, f"classes[{index}]", "must be {'name': non-empty printable text (no control "
                                                     f"characters), 'seen': true/false}}, got {str(entry)[:200]!r}")
        names.append(entry["name"])
    if len(set(names)) != len(names):
        raise _fail(folder, "classes", "names the same class twice")

    bsegn = config["bsegn"]
    if not isinstance(bsegn, dict):
        raise _fail(folder, "bsegn", "must be a mapping")
    try:
        BSeGNConfig.from_dict(bsegn.get("config"))
    except (BsegnError, TypeError, AttributeError) as error:
        raise _fail(folder, "bsegn.config", f"is not a valid BSeGN config ({error})") from None
    feature_dim = _int(folder, "bsegn.feature_dim", bsegn.get("feature_dim"), 1, MAX_DIM)
    semantic_dim = _int(folder, "bsegn.semantic_dim", bsegn.get("semantic_dim"), 1, MAX_DIM)
    _int(folder, "bsegn.seed", bsegn.get("seed", 0), -(1 << 63), (1 << 63) - 1)
    semantics = _list(folder, "bsegn.semantics", bsegn.get("semantics"))
    if len(semantics) != count:
        raise _fail(folder, "classes", f"lists {count} classes but bsegn.semantics has {len(semantics)} rows")
    for index, row in enumerate(semantics):
        for value in _list(folder, f"bsegn.semantics[{index}]", row, semantic_dim):
            _number(folder, f"bsegn.semantics[{index}]", value)
    seen = _ids(folder, "bsegn.seen_classes", bsegn.get("seen_classes"), count, allow_empty=False)
    unseen = _ids(folder, "bsegn.unseen_classes", bsegn.get("unseen_classes"), count)
    if set(seen) & set(unseen):  # (a validation-protocol bundle's test classes are in neither)
        raise _fail(folder, "bsegn.seen_classes / unseen_classes", "must not share a class")
    if any(entry["seen"] != (index in set(seen)) for index, entry in enumerate(classes)):
        raise _fail(folder, "classes[].seen", "disagrees with bsegn.seen_classes")
    _ids(folder, "gzsl_classes", config["gzsl_classes"], count, allow_empty=False)
    if config.get("zsl_classes") is not None:
        _ids(folder, "zsl_classes", config["zsl_classes"], count, allow_empty=False)
    check_gate_config(config, folder)
    if config.get("unseen_ranking", "gzsl") not in ("gzsl", "zsl"):
        raise _fail(folder, "unseen_ranking", f"must be 'gzsl' or 'zsl', got {config.get('unseen_ranking')!r}")
    attributes = config.get("attribute_names")
    if attributes is not None and not all(isinstance(a, str) for a in _list(folder, "attribute_names", attributes,
                                                                            semantic_dim)):
        raise _fail(folder, "attribute_names", "must be text")
    backbone = config.get("backbone")
    if backbone is not None:
        if not isinstance(backbone, dict) or not isinstance(backbone.get("model_name"), str):
            raise _fail(folder, "backbone", "must be a mapping with a model_name")
        if _int(folder, "backbone.num_features", backbone.get("num_features"), 1, MAX_DIM) != feature_dim:
            raise _fail(folder, "backbone.num_features", f"must equal bsegn.feature_dim ({feature_dim})")
        _check_data_config(config.get("data_config"), folder)
    _check_semantics(config, folder, count, semantic_dim)


SEMANTIC_KINDS = ("attributes", "sentences", "text", "attributes+text", "sentences+text")


def _text(folder, field, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(folder, field, f"must be non-empty text, got {value!r}")
    return value


def _check_semantics(config: dict[str, Any], folder: Path, count: int, semantic_dim: int) -> None:
    """semantic_kind, attribute_dim + text_dim = bsegn.semantic_dim, and for text semantics the encoder
    and one text per class (a bundle without these fields is an attribute bundle: app.bundle_semantics)."""
    kind = config.get("semantic_kind", "attributes")
    if kind not in SEMANTIC_KINDS:
        raise _fail(folder, "semantic_kind", f"must be one of {', '.join(SEMANTIC_KINDS)}, got {kind!r}")
    text = kind == "text" or kind.endswith("+text")
    if not text and "attribute_dim" not in config and "text_dim" not in config:
        return  # an older attribute bundle
    for key in ("attribute_dim", "text_dim"):
        if key not in config:
            raise _fail(folder, key, "is missing")
    attribute_dim = _int(folder, "attribute_dim", config["attribute_dim"], 0, MAX_DIM)
    text_dim = _int(folder, "text_dim", config["text_dim"], 0, MAX_DIM)
    if attribute_dim + text_dim != semantic_dim:
        raise _fail(folder, "text_dim", f"({text_dim}) plus attribute_dim ({attribute_dim}) must equal "
                                        f"bsegn.semantic_dim ({semantic_dim})")
    if (text_dim > 0) != text or (attribute_dim > 0) != (kind != "text"):
        raise _fail(folder, "attribute_dim / text_dim", f"({attribute_dim} / {text_dim}) do not fit semantic_kind "
                                                        f"{kind!r}")
    if not text:
        for key in ("text_encoder", "text_encoder_id", "text_pooling", "class_texts"):
            if config.get(key) is not None:
                raise _fail(folder, key, f"must be null for semantic_kind {kind!r}")
        return
    _text(folder, "text_encoder", config.get("text_encoder"))
    _text(folder, "text_encoder_id", config.get("text_encoder_id"))
    from bsegn.datasets.text_semantics import TEXT_POOLINGS

    if config.get("text_pooling") not in (None,) + TEXT_POOLINGS:  # absent: written before pooling existed
        raise _fail(folder, "text_pooling",
                    f"must be one of {', '.join(TEXT_POOLINGS)}, got {config['text_pooling']!r}")
    for index, value in enumerate(_list(folder, "class_texts", config.get("class_texts"), count)):
        _text(folder, f"class_texts[{index}]", value)


def _check_data_config(data_config: Any, folder: Path) -> None:
    if not isinstance(data_config, dict):
        raise _fail(folder, "data_config", "must be a mapping")
    size = _list(folder, "data_config.input_size", data_config.get("input_size"), 3)
    if size[0] not in INPUT_CHANNELS or isinstance(size[0], bool):
        raise _fail(folder, "data_config.input_size", f"must have {INPUT_CHANNELS} channels, got {size!r}")
    for side in size[1:]:
        _int(folder, "data_config.input_size", side, 8, MAX_SIDE)
    for key in ("mean", "std"):
        if key in data_config:
            values = data_config[key]
            values = values if isinstance(values, list) else [values]
            for value in values:
                _number(folder, f"data_config.{key}", value, positive=key == "std")
    if "crop_pct" in data_config:
        _number(folder, "data_config.crop_pct", data_config["crop_pct"], positive=True)


def check_finite_tensors(tensors: dict, path: Path) -> None:
    """Every floating tensor of model.safetensors is finite (NaN weights would give NaN answers, exit 0)."""
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BundleError(f"{path}: tensor {name!r} holds NaN or infinity; the bundle was edited or its training "
                              "diverged: re-copy it or re-run train.py")
