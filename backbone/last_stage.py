"""Last-stage fine-tuning: only the backbone's last stage (and the layers after it) learns the seen classes.

    finetune:
      layers: last_stage      # (the default, all, fine-tunes every layer on augmented images)

Every earlier stage stays frozen in eval mode, so its output for an image never changes: it is computed
ONCE per image (the "trunk activations", cached in float16 next to the run, shared by the validation and
final protocols) and the last stage trains on those maps, with horizontal flips of the maps as its only
augmentation. On a CPU this turns fine-tuning from hours into minutes: on the flowers' 5,543 photos
(EfficientNet-Lite0) one pass over the images costs what a feature extraction costs, and each training epoch
over the cached maps about a minute. On the flowers' validation protocol it lifted H by 5 points over frozen
features (docs/results.md, "Real photographs").

The one rule of fine-tuning holds here too: only allowed_training_indices (seen classes' training images
under the protocol) train; the features of EVERY image are then the tuned last stage applied to its
cached activations, written where bsegn.backbone.extract.cached_extract_features finds them (they equal a
re-extraction with the tuned backbone up to the float16 rounding of the maps; a test holds them to it).

Families whose last stage is known: timm's EfficientNet (EfficientNet, -Lite, MobileNet-V2 style: `blocks`
then conv_head/bn2) and ResNet (`layer4`). Others are refused with a ConfigError naming the alternative.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from bsegn.backbone.extract import feature_cache_key, map_images, store_features
from bsegn.backbone.factory import FeatureBackbone
from bsegn.backbone.finetune import MOMENTUM, FinetuneConfig, save_finetuned, warmup_cosine
from bsegn.backbone.heads import build_head
from bsegn.backbone.seen_images import allowed_training_indices, check_training_indices, stratified_holdout
from bsegn.core.errors import ConfigError, DataError
from bsegn.core.files import atomic_file, atomic_write_json
from bsegn.core.logs import get_logger
from bsegn.datasets.features import FeatureSet
from bsegn.datasets.image_dataset import ImageFolderDataset
from bsegn.datasets.splits import ZSLSplit
from bsegn.datasets.transforms import build_eval_transform

__all__ = ["LastStage", "split_at_last_stage", "trunk_activations", "finetune_last_stage"]

log = get_logger(__name__)

TAIL_BATCH = 256  # maps per forward when the tuned tail computes every image's features


@dataclass
class LastStage:
    """A backbone cut before its last stage: trunk(images (B, 3, H, W)) -> maps (B, C, h, w), frozen;
    features(maps) -> (B, D), the backbone's own features; `tail` holds the parameters that train."""

    trunk: Callable[[torch.Tensor], torch.Tensor]
    features: Callable[[torch.Tensor], torch.Tensor]
    tail: nn.ModuleList


def split_at_last_stage(backbone: FeatureBackbone) -> LastStage:
    """The backbone's model cut before its last stage (ConfigError for families whose stages are unknown)."""
    import timm.models.efficientnet as efficientnet
    import timm.models.resnet as resnet

    model = backbone.model
    if isinstance(model, efficientnet.EfficientNet):
        head_layers = [model.conv_head, model.bn2]  # 1x1 conv to the feature width + its norm/activation

        def trunk(images):
            x = model.bn1(model.conv_stem(images))
            return model.blocks[:-1](x)

        def rest(maps):
            return model.bn2(model.conv_head(model.blocks[-1](maps)))
        tail = nn.ModuleList([model.blocks[-1], *head_layers])
    elif isinstance(model, resnet.ResNet):
        def trunk(images):
            x = model.maxpool(model.act1(model.bn1(model.conv1(images))))
            return model.layer3(model.layer2(model.layer1(x)))

        def rest(maps):
            return model.layer4(maps)
        tail = nn.ModuleList([model.layer4])
    else:
        raise ConfigError(f"finetune.layers last_stage: the stages of {backbone.model_name} "
                          f"({type(model).__name__}) are not known to bsegn (EfficientNet and ResNet families "
                          "are); use --finetune.layers all")
    return LastStage(trunk, lambda maps: model.forward_head(rest(maps), pre_logits=True), tail)


def trunk_activations(backbone: FeatureBackbone, stage: LastStage, image_root: str | os.PathLike,
                      image_files: Sequence[str], *, folder: str | os.PathLike, accelerator,
                      image_size: int | None = None, batch_size: int = 64, num_workers: int | None = 0,
                      progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The frozen trunk's maps of every image, (N, C, h, w) float16 (a read-only memory map), and the
    indices of the images that could not be read; computed once into `folder` (sharded over the processes,
    written by the main one), re-used while the backbone's weights, the transform and the images are the same."""
    # the feature cache's key (weights hashed as they are now, transform, image list): the trunk is frozen, so the
    # untrained backbone's key names its maps
    key, _ = feature_cache_key(backbone, image_files, None, dataset_id="trunk", image_size=image_size)
    folder = Path(folder)
    maps_path, info_path = folder / f"trunk_{key[:16]}.npy", folder / f"trunk_{key[:16]}.json"
    if not (info_path.is_file() and _read_key(info_path) == key and maps_path.is_file()):
        data_config = backbone.data_config_at(image_size)
        backbone.model.to(accelerator.device).eval()
        dataset = ImageFolderDataset(image_root, image_files, None, build_eval_transform(data_config))
        run = partial(map_images, stage.trunk, dataset, batch_size=batch_size, num_workers=num_workers,
                      accelerator=accelerator, progress=progress, desc=f"trunk of {backbone.model_name}")
        if accelerator.is_main_process:  # the only writer; the other processes compute their shards only
            with torch.no_grad():  # the maps' shape, from a blank image of the input size
                probe = stage.trunk(torch.zeros(1, *data_config["input_size"], device=accelerator.device))
            with atomic_file(maps_path) as temp:
                out = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float16,
                                                shape=(len(dataset), *probe.shape[1:]))
                ok = run(out)
                out.flush()
                del out
            atomic_write_json(info_path, {"key": key, "bad_indices": np.flatnonzero(~ok).tolist()})
        else:
            run(None)
        accelerator.wait_for_everyone()
    maps = np.load(maps_path, mmap_mode="r")
    return maps, np.asarray(json.loads(info_path.read_text())["bad_indices"], dtype=np.int64)


def _read_key(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("key")
    except (OSError, ValueError, AttributeError):  # a damaged record: the maps are computed again
        return None


def finetune_last_stage(backbone: FeatureBackbone, image_root: str | os.PathLike, split: ZSLSplit,
                        config: FinetuneConfig, *, protocol: str, output_dir: str | os.PathLike,
                        activations_dir: str | os.PathLike, features_dir: str | os.PathLike, accelerator,
                        indices: Sequence[int] | None = None, seed: int = 0, image_size: int | None = None,
                        batch_size: int = 64, num_workers: int | None = 0, progress: bool = True,
                        val_fraction: float = 0.1) -> FeatureBackbone:
    """Train the last stage + a seen-class head on cached trunk maps of the allowed images; write the tuned
    backbone to output_dir (backbone.safetensors, backbone.json, head.safetensors, history.json) and every
    image's features to features_dir (found there by cached_extract_features). Returns the tuned backbone.

    Args mirror bsegn.backbone.finetune.finetune_backbone; batch_size / num_workers are the trunk pass's
    (config.batch_size is the training batch). The main process trains; the others wait and load its result.
    """
    config.check()
    allowed, seen_classes = allowed_training_indices(split, protocol)
    chosen = allowed if indices is None else check_training_indices(split, protocol, indices)
    if chosen.size == 0:
        raise DataError(f"{split.benchmark}: no seen-class training images to fine-tune on ({protocol} protocol)")
    stage = split_at_last_stage(backbone)
    maps, bad = trunk_activations(backbone, stage, image_root, split.image_files, folder=activations_dir,
                                  accelerator=accelerator, image_size=image_size, batch_size=batch_size,
                                  num_workers=num_workers, progress=progress)
    chosen = np.setdiff1d(chosen, bad)  # an unreadable image trains nothing
    output_dir = Path(output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        labels = np.asarray(split.labels, dtype=np.int64)
        train_idx, val_idx = stratified_holdout(chosen, labels, val_fraction, seed)
        to_column = np.full(split.num_classes, -1, dtype=np.int64)
        to_column[seen_classes] = np.arange(len(seen_classes))
        with torch.random.fork_rng(devices=[]):  # the head's initialisation is the seed's, whatever ran before
            torch.manual_seed(seed)
            head = build_head(config.head, backbone.num_features, split.semantics[seen_classes])
        history = _train_tail(stage, head, maps, to_column[labels], train_idx, val_idx, config, seed,
                              accelerator.device)
        backbone.refresh_weights_id()
        save_finetuned(backbone, head, output_dir, seen_classes)
        atomic_write_json(output_dir / "history.json", {"layers": "last_stage", "history": history,
                                                        "num_train_images": int(len(train_idx)),
                                                        "num_val_images": int(len(val_idx))}, indent=2)
        features = _tail_features(stage, maps, np.arange(len(maps)), accelerator.device).numpy()
        features[bad] = 0.0  # an unreadable image's row, as extraction leaves it
        features = FeatureSet(features, np.asarray(split.labels),
                              list(split.image_files),
                              {"backbone": backbone.describe(), "flip_average": False, "bad_indices": bad.tolist(),
                               "transform": build_eval_transform(backbone.data_config_at(image_size)).describe(),
                               "source": "last-stage fine-tuning, from cached trunk activations"})
        store_features(features, [str(split.image_files[i]) for i in bad], backbone, dataset_id=split.benchmark,
                       cache_dir=features_dir, image_size=image_size)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        from bsegn.backbone.factory import create_backbone

        backbone = create_backbone(backbone.model_name, str(output_dir / "backbone.safetensors"))
    return backbone


def _train_tail(stage: LastStage, head: nn.Module, maps: np.ndarray, columns: np.ndarray, train_idx: np.ndarray,
                val_idx: np.ndarray, config: FinetuneConfig, seed: int, device) -> list[dict]:
    """config.epochs passes over the training maps (each flipped left-right with probability 1/2);
    returns the history: train loss and held-out seen-class accuracy per epoch (epoch 0: before training)."""
    stage.tail.to(device)
    head.to(device)
    groups = [{"params": list(stage.tail.parameters()), "lr": config.lr_backbone},
              {"params": list(head.parameters()), "lr": config.lr_head}]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=MOMENTUM, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    batch = config.batch_size * config.grad_accum_steps  # one process: accumulation is a larger batch
    steps_per_epoch = math.ceil(len(train_idx) / batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        int(round(config.warmup_epochs * steps_per_epoch)), config.epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(seed)
    history = [{"epoch": 0, "val_acc": _accuracy(stage, head, maps, columns, val_idx, device)}]
    for epoch in range(config.epochs):
        stage.tail.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
        total, count = 0.0, 0
        for start in range(0, len(order), batch):
            rows = np.sort(order[start:start + batch])  # sorted: a memory map reads forward
            if len(rows) < 2 < len(order):  # a last batch of one: batch norm cannot train on it, it waits a turn
                continue
            x = torch.from_numpy(np.asarray(maps[rows], dtype=np.float32))
            flip = torch.rand(len(rows), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = nn.functional.cross_entropy(head(stage.features(x.to(device))),
                                               torch.from_numpy(columns[rows]).to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, count = total + float(loss.detach()) * len(rows), count + len(rows)
        history.append({"epoch": epoch + 1, "train_loss": total / max(1, count),
                        "val_acc": _accuracy(stage, head, maps, columns, val_idx, device)})
        log.info(f"last-stage fine-tune epoch {epoch + 1}/{config.epochs}: train loss {history[-1]['train_loss']:.4f},"
                 f" seen-class val acc {history[-1]['val_acc']}")
    stage.tail.eval()
    return history


@torch.no_grad()
def _tail_features(stage: LastStage, maps: np.ndarray, rows: np.ndarray, device) -> torch.Tensor:
    """(len(rows), D) float32 on the CPU: the tail, in eval mode, on those images' maps."""
    stage.tail.eval()
    out = [stage.features(torch.from_numpy(np.asarray(maps[rows[start:start + TAIL_BATCH]], dtype=np.float32))
                          .to(device)).float().cpu() for start in range(0, len(rows), TAIL_BATCH)]
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def _accuracy(stage: LastStage, head: nn.Module, maps: np.ndarray, columns: np.ndarray, rows: np.ndarray,
              device) -> float | None:
    if not len(rows):
        return None
    logits = head(_tail_features(stage, maps, rows, device).to(device)).cpu()
    return float((logits.argmax(1) == torch.from_numpy(columns[rows])).float().mean())
