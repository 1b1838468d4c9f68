"""Fine-tuning a backbone on the SEEN classes only, as a stage of its own.

Published generative ZSL results move more with the features than with the method (fine-tuning
ResNet-101 on CUB's seen classes lifts f-VAEGAN-D2's H from 53.6 to 68.9), so this stage trains the
backbone with a seen-class classifier (bsegn.backbone.heads) before features are extracted. The one
rule that must never break: no test image and no unseen-class image may enter;
bsegn.backbone.seen_images enforces it in code, from the split itself, and `finetune_backbone`
refuses any other index it is given.

Runs under accelerate (DDP over any number of processes, mixed precision from `accelerate launch`,
gradient accumulation). After every epoch a checkpoint (bsegn.core.checkpoints) is written
atomically, so a rerun with the same output_dir resumes after the last complete epoch and repeats an
uninterrupted run exactly (every epoch reseeds from (seed, epoch); shuffles and augmentations are
seeded by bsegn.backbone.seen_images).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from bsegn.backbone.factory import FeatureBackbone
from bsegn.backbone.heads import HEAD_KINDS, SeenClassifier, build_head
from bsegn.backbone.seen_images import (
    PROTOCOL_TRAIN_SPLIT,
    AugmentedImages,
    EpochShuffleSampler,
    allowed_training_indices,
    check_training_indices,
    stratified_holdout,
)
from bsegn.core.checkpoints import EpochCheckpoint
from bsegn.core.errors import ConfigError, DataError
from bsegn.core.files import atomic_file, atomic_write_json, atomic_write_text, digest_arrays, digest_json
from bsegn.core.logs import get_logger
from bsegn.core.sections import build_section, option, require, to_dict
from bsegn.datasets.image_dataset import ImageFolderDataset, collate_flagged, collate_skip_bad, loader_options
from bsegn.datasets.splits import ZSLSplit
from bsegn.datasets.transforms import build_eval_transform, build_train_transform

__all__ = ["FinetuneConfig", "finetune_backbone", "save_finetuned",
           "allowed_training_indices", "check_training_indices"]

log = get_logger(__name__)

MOMENTUM = 0.9  # SGD's momentum, as in the ZSL fine-tuning literature
OPTIMIZERS = ("sgd", "adamw")
# all: every layer trains on augmented images (here); last_stage: the last stage trains on cached activations of
# the frozen earlier ones (bsegn.backbone.last_stage)
LAYERS = ("all", "last_stage")
CHECKPOINT_KIND = "finetune"


@dataclass(frozen=True)
class FinetuneConfig:
    """The `finetune` section of a run config: everything that decides the fine-tuned weights
    (besides the backbone, the data, the protocol and the run seed)."""

    epochs: int = option(10, "passes over the seen training images; 0 = no fine-tuning")
    batch_size: int = option(32, "images per batch per process")
    optimizer: str = option("sgd", "'sgd' (momentum 0.9) or 'adamw'")
    lr_backbone: float = option(1e-3, "peak learning rate of the backbone's parameters")
    lr_head: float = option(1e-2, "peak learning rate of the seen-class head")
    weight_decay: float = option(1e-4, "weight decay of backbone and head")
    warmup_epochs: float = option(1.0, "linear warm-up in epochs, then cosine decay to 0 (per optimizer step)")
    grad_accum_steps: int = option(1, "batches per optimizer step (gradient accumulation)")
    head: str = option("softmax", "'softmax' (linear over the seen classes) or 'attribute' (x.W.a_c)")
    layers: str = option("all", "'all' (every layer, augmented images) or 'last_stage' (the last stage only, on "
                                "activations of the frozen earlier stages computed once; flips as augmentation)")

    def check(self) -> None:
        require(self.epochs >= 0, f"finetune.epochs must be >= 0, got {self.epochs}")
        require(self.batch_size >= 1, f"finetune.batch_size must be >= 1, got {self.batch_size}")
        require(self.optimizer in OPTIMIZERS,
                f"finetune.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        require(self.lr_backbone >= 0, f"finetune.lr_backbone must be >= 0, got {self.lr_backbone}")
        require(self.lr_head > 0, f"finetune.lr_head must be > 0, got {self.lr_head}")
        require(self.weight_decay >= 0, f"finetune.weight_decay must be >= 0, got {self.weight_decay}")
        require(self.warmup_epochs >= 0, f"finetune.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        require(self.grad_accum_steps >= 1, f"finetune.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        require(self.head in HEAD_KINDS, f"finetune.head must be one of {', '.join(HEAD_KINDS)}, got {self.head!r}")
        require(self.layers in LAYERS, f"finetune.layers must be one of {', '.join(LAYERS)}, got {self.layers!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "FinetuneConfig":
        """The section from a YAML mapping (unknown keys, wrong types, bad ranges -> ConfigError)."""
        return build_section(cls, values, "finetune")


def finetune_backbone(backbone: FeatureBackbone, image_root: str | os.PathLike, split: ZSLSplit,
                      config: FinetuneConfig, *, protocol: str = "final", output_dir: str | os.PathLike,
                      indices: Sequence[int] | None = None, accelerator=None, seed: int = 0,
                      image_size: int | None = None, num_workers: int | None = 0, progress: bool = True,
                      val_fraction: float = 0.1, max_epochs_this_run: int | None = None) -> FeatureBackbone:
    """Fine-tune `backbone` on seen-class images; returns it (unwrapped, weights_id refreshed).

    Args:
        backbone: from create_backbone (its data_config sets the transforms).
        image_root: folder the split's image_files are relative to.
        split: the benchmark split; only `allowed_training_indices(split, protocol)` are usable.
        config: FinetuneConfig (epochs >= 1: 0 means "no fine-tuning" to the caller).
        protocol: "final" (trainval) or "validation" (train).
        output_dir: checkpoint/, history.jsonl, finetune_config.json, backbone.safetensors +
            backbone.json (the fine-tuned backbone) and head.safetensors. A rerun resumes.
        indices: optional subset of allowed image indices (DataError if any is not allowed).
        accelerator: an accelerate.Accelerator; default Accelerator(gradient_accumulation_steps=
            config.grad_accum_steps) (the precision is then accelerate's: `accelerate launch --mixed_precision`).
        seed: the run seed (initialisation of the head, held-out images, shuffles, augmentations).
        image_size: override the backbone's input size (small images in tests and the demo).
        num_workers: DataLoader workers per process (None: sized from the machine); with workers they
            persist across epochs and, on a GPU, batches come in pinned memory. progress: show tqdm bars.
        val_fraction: share of every seen class held out of training for the val loss/accuracy.
        max_epochs_this_run: stop after this many epochs in this call (time-sliced or preemptible
            jobs); a later call with the same output_dir resumes. The schedule still spans config.epochs.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    config.check()
    if config.epochs == 0:
        raise ConfigError("finetune.epochs is 0 (no fine-tuning): skip the stage instead of calling finetune_backbone")
    if config.layers != "all":
        raise ConfigError(f"finetune_backbone trains every layer; finetune.layers {config.layers} is "
                          "bsegn.backbone.last_stage.finetune_last_stage")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if max_epochs_this_run is not None and max_epochs_this_run < 1:
        raise ConfigError(f"max_epochs_this_run must be >= 1 or None, got {max_epochs_this_run}")
    allowed, seen_classes = allowed_training_indices(split, protocol)
    chosen = allowed if indices is None else check_training_indices(split, protocol, indices)
    if chosen.size == 0:
        raise DataError(f"{split.benchmark}: no {PROTOCOL_TRAIN_SPLIT[protocol]} images of seen classes to "
                        "fine-tune on")
    if accelerator is None:
        accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum_steps)
    set_seed(seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    labels = np.asarray(split.labels, dtype=np.int64)
    train_idx, val_idx = stratified_holdout(chosen, labels, val_fraction, seed)
    # class id -> head column; -1 for classes outside the head (never reached: indices are checked)
    to_column = np.full(split.num_classes, -1, dtype=np.int64)
    to_column[seen_classes] = np.arange(len(seen_classes))
    data_config = backbone.data_config_at(image_size)
    options = loader_options(num_workers, accelerator.device.type, processes=accelerator.num_processes,
                             persistent=True)
    train_set, sampler, train_loader, val_loader = _loaders(
        image_root, split.image_files, to_column[labels], data_config, train_idx, val_idx,
        batch_size=config.batch_size, seed=seed, **options)

    head = build_head(config.head, backbone.num_features, split.semantics[seen_classes])
    model = SeenClassifier(backbone, head)
    if accelerator.device.type == "cuda":  # NHWC: the layout tensor cores convolve in
        model = model.to(memory_format=torch.channels_last)
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad], "lr": config.lr_backbone},
              {"params": list(head.parameters()), "lr": config.lr_head}]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=MOMENTUM, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    key = digest_json({"config": to_dict(config), "protocol": protocol, "seed": seed, "image_size": image_size,
                       "val_fraction": val_fraction, "backbone": backbone.describe(),
                       "images": digest_arrays(chosen), "seen_classes": seen_classes})

    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps)
    # Not prepared: accelerate would step it once per process; it is stepped once per optimizer step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(int(round(config.warmup_epochs * steps_per_epoch)), config.epochs * steps_per_epoch))
    loss_fn = nn.CrossEntropyLoss()

    checkpoint = EpochCheckpoint(output_dir / "checkpoint", accelerator, kind=CHECKPOINT_KIND, key=key)
    optimizers = {"optimizer": optimizer, "scheduler": scheduler}
    if accelerator.scaler is not None:
        optimizers["scaler"] = accelerator.scaler
    state = checkpoint.resume({"model": model}, optimizers)
    start_epoch, history, bad_files = 0, [], set()
    if state is not None:
        start_epoch, history, bad_files = int(state["epoch"]), list(state["history"]), set(state["bad_images"])
        log.info(f"fine-tuning resumes after epoch {start_epoch} from {checkpoint.folder}")
    if accelerator.is_main_process:
        atomic_write_json(output_dir / "finetune_config.json", {
            "config": to_dict(config), "protocol": protocol, "seed": seed, "image_size": image_size,
            "val_fraction": val_fraction, "backbone": backbone.describe(),
            "num_train_images": int(len(train_idx)), "num_val_images": int(len(val_idx)),
            "seen_classes": seen_classes.tolist(), "processes": accelerator.num_processes}, indent=2)
    if start_epoch == 0:
        # Epoch 0 = before any step: the baseline the first epoch must improve on.
        loss, accuracy = _evaluate(model, val_loader, loss_fn, accelerator)
        history = [{"epoch": 0, "val_loss": loss, "val_acc": accuracy}]
        _write_history(accelerator, output_dir, history)

    end_epoch = config.epochs
    if max_epochs_this_run is not None:
        end_epoch = min(end_epoch, start_epoch + max_epochs_this_run)
    for epoch in range(start_epoch, end_epoch):
        set_seed((seed * 100_003 + epoch + 1) % 2**32)  # dropout & co. repeat exactly after a resume
        model.train()
        # Through the prepared loader too: accelerate otherwise resets the sampler's epoch to its own
        # iteration count, which restarts at 0 in a resumed process.
        for part in (train_loader, sampler, train_set):
            part.set_epoch(epoch)
        train_loss = _train_epoch(model, train_loader, optimizer, scheduler, loss_fn, accelerator,
                                  bad_files, split.image_files, progress=progress,
                                  desc=f"fine-tune epoch {epoch + 1}/{config.epochs}")
        val_loss, val_acc = _evaluate(model, val_loader, loss_fn, accelerator)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc,
                        "lr_backbone": scheduler.get_last_lr()[0], "bad_images": sorted(bad_files)})
        log.info(f"fine-tune epoch {epoch + 1}: train loss {train_loss:.4f}, seen-class val acc "
                 f"{'n/a' if val_acc is None else f'{val_acc:.4f}'}")
        checkpoint.save(epoch + 1, {"model": model}, optimizers, history=history, bad_images=sorted(bad_files))
        _write_history(accelerator, output_dir, history)

    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(model)
    backbone = trained.backbone
    backbone.refresh_weights_id()
    if accelerator.is_main_process:
        save_finetuned(backbone, trained.head, output_dir, seen_classes)
    accelerator.wait_for_everyone()
    return backbone


def save_finetuned(backbone: FeatureBackbone, head: nn.Module, output_dir: Path, seen_classes: np.ndarray) -> None:
    """backbone.safetensors (a timm state_dict, loadable with create_backbone(name, FILE)),
    backbone.json (identity + data config) and head.safetensors, each written atomically."""
    from safetensors.torch import save_file

    for name, module in (("backbone", backbone.model), ("head", head)):
        with atomic_file(Path(output_dir) / f"{name}.safetensors") as temp:
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(temp))
    atomic_write_json(Path(output_dir) / "backbone.json",
                      {**backbone.describe(), "seen_classes": np.asarray(seen_classes).tolist()}, indent=2)


def _write_history(accelerator, output_dir: Path, history: list[dict]) -> None:
    if accelerator.is_main_process:
        atomic_write_text(output_dir / "history.jsonl", "".join(json.dumps(record) + "\n" for record in history))


def _loaders(image_root, image_files, head_labels, data_config, train_idx, val_idx, *, batch_size: int,
             seed: int, **options):
    """(train dataset, its sampler, train loader, val loader or None); the loaders are not prepared yet.
    options: DataLoader keyword arguments (bsegn.datasets.image_dataset.loader_options)."""
    train_images = ImageFolderDataset(image_root, image_files, head_labels,
                                      build_eval_transform(data_config), indices=train_idx)
    train_set = AugmentedImages(train_images, build_train_transform(data_config), seed)
    sampler = EpochShuffleSampler(len(train_set), seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, collate_fn=collate_skip_bad,
                              drop_last=False, **options)
    val_loader = None
    if len(val_idx):
        val_set = ImageFolderDataset(image_root, image_files, head_labels, build_eval_transform(data_config),
                                     indices=val_idx)
        # every process must gather equal batches, so unreadable images stay as flagged placeholders
        # one short pass an epoch: its workers need not stay (their memory goes back to the train loader's)
        val_options = {**options, "persistent_workers": False} if "persistent_workers" in options else options
        val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, collate_fn=collate_flagged,
                                **val_options)
    return train_set, sampler, train_loader, val_loader


def _train_epoch(model, loader, optimizer, scheduler, loss_fn, accelerator, bad_files: set[str],
                 image_files: Sequence[str], *, progress: bool, desc: str) -> float:
    """One pass over the training images; returns the mean training loss over all processes."""
    from tqdm.auto import tqdm

    total_loss = torch.zeros((), device=accelerator.device)
    total_count = torch.zeros((), device=accelerator.device)
    bar = tqdm(loader, desc=desc, disable=not (progress and accelerator.is_local_main_process), leave=False)
    for batch in bar:
        bad_files.update(image_files[i] for i in batch.bad_indices.tolist())
        with accelerator.accumulate(model):
            loss = loss_fn(model(as_model_input(batch.images)), batch.labels)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            scheduler.step()
        total_loss += loss.detach() * len(batch)
        total_count += len(batch)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return float(accelerator.reduce(total_loss, "sum") / accelerator.reduce(total_count, "sum").clamp(min=1))


def as_model_input(images: torch.Tensor) -> torch.Tensor:
    """A batch of images in channels-last layout on a GPU (the model is converted too), as is elsewhere."""
    return images.contiguous(memory_format=torch.channels_last) if images.is_cuda else images


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


@torch.no_grad()
def _evaluate(model, loader, loss_fn, accelerator) -> tuple[float | None, float | None]:
    """Seen-class (loss, accuracy) on the held-out images, exact over all processes."""
    if loader is None:
        return None, None
    model.eval()
    losses, hits, count = 0.0, 0, 0
    for images, labels, _, ok in loader:
        logits = model(as_model_input(images))
        logits, labels, ok = accelerator.gather_for_metrics((logits, labels, ok))
        logits, labels = logits[ok], labels[ok]  # unreadable images do not count
        if not len(labels):
            continue
        losses += float(loss_fn(logits.float(), labels)) * len(labels)
        hits += int((logits.argmax(-1) == labels).sum())
        count += len(labels)
    model.train()
    return (losses / count, hits / count) if count else (None, None)
