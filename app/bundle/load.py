"""A Bundle read back from its folder, verified, without executing anything from the files.

    load_bundle(path, device="cpu", with_backbone=True, with_train_features=True) -> Bundle

config.json is read through app.bundle.layout (its hash, then the schema); model.safetensors must have the
size and sha256 config.json records and finite weights; every part is then built from the JSON and the
tensors only (safetensors: nothing is unpickled).
"""
from __future__ import annotations

import os

import torch

from bsegn.app.bundle.backbone import StoredBackbone, build_backbone
from bsegn.app.bundle.contents import Bundle
from bsegn.app.bundle.gate import gate_from_bundle
from bsegn.app.bundle.layout import CONFIG_NAME, MODEL_NAME, read_bundle_config, resolve_bundle_dir
from bsegn.app.bundle.open_world import open_world_from_bundle
from bsegn.app.bundle.schema import check_finite_tensors
from bsegn.app.bundle.semantics import fields_from_config
from bsegn.core.errors import BundleError
from bsegn.core.files import file_sha256


def load_bundle(path: str | os.PathLike, *, device: str | torch.device = "cpu", with_backbone: bool | str = True,
                with_train_features: bool = True) -> Bundle:
    """Load and verify a bundle (or run folder). Never executes code from the files.
    with_backbone: True builds the timm backbone; "tensors" keeps its weights as stored (a StoredBackbone:
    enough to write the bundle again, as add-class does, without importing timm); False drops it.
    with_train_features: keep the stored real seen features (add-class needs them; predict does not)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from bsegn.generative.model import TrainedBSeGN
    from bsegn.generative.networks import FinalClassifier

    folder = resolve_bundle_dir(path)
    config = read_bundle_config(folder)
    model_path = folder / MODEL_NAME
    if not model_path.is_file():
        raise BundleError(f"{folder}: {MODEL_NAME} is missing")
    size = model_path.stat().st_size
    if size != config.get("model_bytes"):
        raise BundleError(f"{model_path}: truncated or replaced ({size} bytes, {CONFIG_NAME} says "
                          f"{config.get('model_bytes')}); re-copy the bundle")
    if file_sha256(model_path) != config.get("model_sha256"):
        raise BundleError(f"{model_path}: its content does not match the sha256 in {CONFIG_NAME} (damaged or "
                          "edited); re-copy the bundle")
    try:
        tensors = load_file(str(model_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{model_path}: cannot be read ({error})") from None
    check_finite_tensors(tensors, model_path)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    try:
        trained = TrainedBSeGN.from_state(config["bsegn"], part("bsegn"))
        gzsl = FinalClassifier(trained.mfim.output_dim, config["gzsl_classes"])
        gzsl.load_state_dict(part("gzsl"))
        zsl = None
        if config.get("zsl_classes") is not None:
            zsl = FinalClassifier(trained.mfim.output_dim, config["zsl_classes"])
            zsl.load_state_dict(part("zsl"))
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise BundleError(f"{folder}: the model does not fit its config ({str(error)[:300]})") from None
    gate = gate_from_bundle(config, part("gate"), trained.mfim.output_dim, folder, decoder="decoder" in trained.parts)
    open_world = open_world_from_bundle(config, part("open_world"), folder, config["gzsl_classes"])

    backbone = None
    data_config = config.get("data_config") or {}
    if with_backbone == "tensors" and config.get("backbone"):
        backbone = StoredBackbone(config["backbone"], part("backbone"))
    elif with_backbone and config.get("backbone"):
        backbone = build_backbone(config["backbone"], data_config, part("backbone"))
    bundle = Bundle(
        backbone=backbone, trained=trained.to(device).eval(), gzsl=gzsl.to(device).eval(),
        zsl=None if zsl is None else zsl.to(device).eval(),
        class_names=[c["name"] for c in config["classes"]], gate=gate,
        unseen_ranking=config.get("unseen_ranking", "gzsl"),
        attribute_names=config.get("attribute_names"), data_config=data_config,
        train_features=tensors.get("replay.features"), train_labels=tensors.get("replay.labels"),
        metrics=config.get("metrics") or {}, open_world=open_world, run_config=config.get("run_config") or {},
        benchmark=config.get("benchmark", ""), **fields_from_config(config))
    if backbone is not None:
        bundle.backbone = backbone.to(device).eval()
    if not with_train_features:
        bundle.train_features = bundle.train_labels = None
    bundle.path, bundle.info = folder, config
    return bundle
