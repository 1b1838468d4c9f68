"""A Bundle written to its folder (see app.bundle for what the folder holds).

    save_bundle(bundle, folder) -> folder
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from bsegn.app.bundle.card import model_card
from bsegn.app.bundle.contents import Bundle
from bsegn.app.bundle.layout import BUNDLE_FORMAT, CONFIG_NAME, FORMAT_VERSION, MODEL_NAME, config_digest
from bsegn.app.bundle.schema import check_bundle_config
from bsegn.app.bundle.semantics import record_of
from bsegn.core.errors import BundleError
from bsegn.core.files import atomic_file, atomic_folder, file_sha256, json_text, remove_stale_temporaries
from bsegn.core.locks import BundleLock
from bsegn.core.logs import get_logger

log = get_logger(__name__)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("bsegn", "torch", "timm", "safetensors", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def save_bundle(bundle: Bundle, folder: str | os.PathLike) -> Path:
    """Write `bundle` as one folder: model.safetensors, config.json (with both hashes) and README.md.

    Under the folder's BundleLock (add-class holds it already, from its read on: the lock is reentrant), the
    new folder is written whole beside its place and renamed into it (core.files.atomic_folder), so a reader
    sees the old bundle or the new one, never half of each. A bundle that would not load (the schema) is
    refused before anything is renamed. The model card shows "domain_auroc" and "oracle_H" of
    bundle.metrics when present.
    """
    folder = Path(folder)
    with BundleLock(folder):  # one writer at a time (add-class holds it already, from its read on)
        for stale in remove_stale_temporaries(folder):
            log.info("removed %s, left by a write to %s that was interrupted", stale, folder)
        with atomic_folder(folder) as temp:
            _write_bundle(bundle, temp)
    return folder


def _bundle_tensors(bundle: Bundle) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    if bundle.backbone is not None:
        tensors.update({f"backbone.{k}": v for k, v in bundle.backbone.model.state_dict().items()})
    tensors.update({f"bsegn.{k}": v for k, v in bundle.trained.state_dict().items()})
    tensors.update({f"gzsl.{k}": v for k, v in bundle.gzsl.state_dict().items()})
    if bundle.zsl is not None:
        tensors.update({f"zsl.{k}": v for k, v in bundle.zsl.state_dict().items()})
    if bundle.train_features is not None:
        tensors["replay.features"] = bundle.train_features.to(torch.float16)
        tensors["replay.labels"] = bundle.train_labels.to(torch.long)
    tensors.update({f"gate.{k}": v for k, v in bundle.gate.state_dict().items()})
    if bundle.open_world is not None:
        tensors.update({f"open_world.{k}": v for k, v in bundle.open_world.scorer.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _write_bundle(bundle: Bundle, folder: Path) -> None:
    from safetensors.torch import save_file

    model_path = folder / MODEL_NAME
    with atomic_file(model_path) as temp:  # safetensors creates its file 0600; atomic_file gives the umask's mode
        save_file(_bundle_tensors(bundle), str(temp), metadata={"format": BUNDLE_FORMAT})
    backbone_info = None
    if bundle.backbone is not None:
        backbone_info = {"model_name": bundle.backbone.model_name, "weights_id": bundle.backbone.weights_id,
                         "num_features": bundle.backbone.num_features}
    config = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "benchmark": bundle.benchmark,
        "backbone": backbone_info,
        "data_config": bundle.data_config,
        "classes": [{"name": n, "seen": bool(s)} for n, s in zip(bundle.class_names, bundle.seen_mask.tolist())],
        "attribute_names": bundle.attribute_names,
        **record_of(bundle),
        "bsegn": bundle.trained.metadata(),  # its config, dims, semantic matrix, seen/unseen ids
        "gzsl_classes": bundle.gzsl.class_ids.tolist(),
        "zsl_classes": None if bundle.zsl is None else bundle.zsl.class_ids.tolist(),
        "gate": bundle.gate.metadata(),
        "open_world": None if bundle.open_world is None else bundle.open_world.metadata(),
        "unseen_ranking": bundle.unseen_ranking,
        "metrics": bundle.metrics,
        "run_config": bundle.run_config,
        "versions": package_versions(),
        "model_bytes": model_path.stat().st_size,
        "model_sha256": file_sha256(model_path),
    }
    config = json.loads(json_text(config))  # hashed exactly as it is written and read; a NaN metric is null
    config["config_sha256"] = config_digest(config)
    try:
        check_bundle_config(config, folder)  # a bundle that would not load is never written
    except BundleError as error:
        raise BundleError(f"the bundle was not written: its content is not valid ({error})") from None
    (folder / CONFIG_NAME).write_text(json_text(config, indent=1))
    (folder / "README.md").write_text(model_card(config))
