"""Fine-tuning a backbone on the SEEN classes only, as a stage of its own.

Published generative ZSL results move more with the features than with the method (fine-tuning
ResNet-101 on CUB's seen classes lifts f-VAEGAN-D2's H from 53.6 to 68.9), so this stage trains the
backbone with a seen-class classifier before features are extracted. The one rule that must never
break: no test image and no unseen-class image may enter. `allowed_training_indices` enforces it in
code, from the split itself, and `finetune_backbone` refuses any other index it is given.

Runs under accelerate (DDP over any number of processes, mixed precision, gradient accumulation);
checkpoints are written to a temporary folder and renamed, so a kill never leaves a half checkpoint,
and a rerun with the same output_dir resumes after the last complete epoch.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from bsegn.backbone.factory import FeatureBackbone
from bsegn.datasets.image_dataset import ImageFolderDataset, collate_flagged, collate_skip_bad
from bsegn.datasets.images import ImageError, open_rgb
from bsegn.datasets.splits import DataError, ZSLSplit
from bsegn.datasets.transforms import build_eval_transform, build_train_transform

PROTOCOL_TRAIN_SPLIT = {"final": "trainval", "validation": "train"}


@dataclass
class FinetuneConfig:
    """Everything that determines a fine-tuning run (written as finetune_config.json beside the outputs)."""

    epochs: int = 10
    batch_size: int = 32  # per process
    lr_backbone: float = 1e-3
    lr_head: float = 1e-2
    weight_decay: float = 1e-4
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, as in the ZSL fine-tuning literature) or "adamw"
    momentum: float = 0.9
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to 0, per optimizer step
    grad_accum_steps: int = 1
    mixed_precision: str = "no"  # "no", "fp16", "bf16" (used when finetune creates the Accelerator)
    head: str = "softmax"  # "softmax": linear seen-class head; "attribute": scores x·W·a_c
    label_smoothing: float = 0.0
    val_fraction: float = 0.1  # held out per seen class from the allowed images for val accuracy
    image_size: int | None = None  # override the backbone's input size (small for tests)
    num_workers: int = 4
    seed: int = 0
    max_grad_norm: float | None = None
    progress: bool = True
    # Stop after this many epochs in this call (time-sliced or preemptible jobs); a later call with
    # the same output_dir resumes. The schedule still spans `epochs`. None: run to the end.
    max_epochs_this_run: int | None = None

    def validate(self) -> None:
        if self.head not in ("softmax", "attribute"):
            raise DataError(f"FinetuneConfig.head must be 'softmax' or 'attribute', not {self.head!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise DataError(f"FinetuneConfig.optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError("FinetuneConfig.val_fraction must be in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum_steps < 1:
            raise DataError("FinetuneConfig epochs, batch_size and grad_accum_steps must be >= 1")


class SeenClassHead(nn.Module):
    """Linear softmax head over the S seen classes: (B, D) features -> (B, S) logits."""

    def __init__(self, num_features: int, num_seen: int):
        super().__init__()
        self.linear = nn.Linear(num_features, num_seen)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


class AttributeHead(nn.Module):
    """Attribute-aware head: logit_c = x · W · a_c, so the features learn to predict the attributes.

    features (B, D), W (D, k) learned, seen-class semantics a (S, k) fixed -> logits (B, S).
    """

    def __init__(self, num_features: int, seen_semantics: np.ndarray):
        super().__init__()
        semantics = torch.as_tensor(np.asarray(seen_semantics), dtype=torch.float32)
        self.register_buffer("seen_semantics", semantics)
        self.projection = nn.Linear(num_features, semantics.shape[1], bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(features) @ self.seen_semantics.t()


class SeenClassifier(nn.Module):
    """Backbone + seen-class head, trained together: images (B, 3, H, W) -> (B, S) logits."""

    def __init__(self, backbone: FeatureBackbone, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def allowed_training_indices(split: ZSLSplit, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """(image indices, seen class ids) that fine-tuning may use under `protocol`.

    final: trainval images of the seen classes. validation: train images of the train classes
    (the val classes play "unseen" then). Test images (test_seen, test_unseen) never appear.
    """
    if protocol not in PROTOCOL_TRAIN_SPLIT:
        raise DataError(f"protocol must be one of {sorted(PROTOCOL_TRAIN_SPLIT)}, not {protocol!r}")
    if split.labels is None or split.image_files is None:
        raise DataError(f"{split.benchmark}: fine-tuning needs per-image labels and image files in the split")
    indices = np.asarray(split.loc(PROTOCOL_TRAIN_SPLIT[protocol]), dtype=np.int64)
    labels = np.asarray(split.labels)
    if protocol == "final":
        if split.seen_classes is None:
            raise DataError(f"{split.benchmark}: the split does not say which classes are seen")
        seen = np.asarray(split.seen_classes, dtype=np.int64)
    else:
        seen = np.unique(labels[indices])
    forbidden = _forbidden_indices(split, protocol)
    indices = indices[~np.isin(indices, forbidden) & np.isin(labels[indices], seen)]
    return indices, np.sort(seen)


def _forbidden_indices(split: ZSLSplit, protocol: str) -> np.ndarray:
    """Every image index fine-tuning must never touch: test images, unseen-class images, and for the
    validation protocol the val images too."""
    names = ["test_seen", "test_unseen"] + (["val"] if protocol == "validation" else [])
    parts = [np.asarray(split.locs[name], dtype=np.int64) for name in names if split.locs.get(name) is not None]
    if split.unseen_classes is not None and split.labels is not None:
        parts.append(np.flatnonzero(np.isin(split.labels, split.unseen_classes)))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def check_training_indices(split: ZSLSplit, protocol: str, indices: Sequence[int]) -> np.ndarray:
    """Return `indices` as an array, or raise DataError if any is a test or unseen-class image
    (or, under the validation protocol, not a train image of a train class)."""
    indices = np.asarray(indices, dtype=np.int64)
    allowed, _ = allowed_training_indices(split, protocol)
    bad = indices[~np.isin(indices, allowed)]
    if bad.size:
        forbidden = _forbidden_indices(split, protocol)
        kind = "test or unseen-class" if np.isin(bad, forbidden).any() else f"non-{PROTOCOL_TRAIN_SPLIT[protocol]}"
        raise DataError(
            f"refusing to fine-tune on {bad.size} {kind} image(s) (e.g. index {int(bad[0])}) under the "
            f"{protocol} protocol: only {PROTOCOL_TRAIN_SPLIT[protocol]} images of seen classes may be used.")
    return indices


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch): identical on every process and after a resume."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


class _AugmentedImages(Dataset):
    """Training images; augmentation seeded by (seed, epoch, image index) for exact resumes."""

    def __init__(self, images: ImageFolderDataset, transform, seed: int):
        self.images, self.transform, self.seed, self.epoch = images, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int):
        index = int(self.images.indices[position])
        label = int(self.images.labels[index])
        try:
            image = open_rgb(self.images.root / self.images.files[index], max_pixels=self.images.max_pixels)
        except ImageError:
            return torch.zeros(self.images.placeholder_shape), label, index, False
        seed = (self.seed * 1_000_003 + self.epoch * 7_919 + index) % (2**32)
        return self.transform(image, seed=seed), label, index, True


def finetune_backbone(backbone: FeatureBackbone, image_root: str | os.PathLike, split: ZSLSplit,
                      config: FinetuneConfig, *, protocol: str = "final", output_dir: str | os.PathLike,
                      indices: Sequence[int] | None = None, accelerator=None) -> FeatureBackbone:
    """Fine-tune `backbone` on seen-class images; returns it (unwrapped, weights_id refreshed).

    Args:
        backbone: from create_backbone (its data_config sets the transforms).
        image_root: folder the split's image_files are relative to.
        split: the benchmark split; only `allowed_training_indices(split, protocol)` are usable.
        config: FinetuneConfig.
        protocol: "final" (trainval) or "validation" (train).
        output_dir: checkpoints/, history.jsonl, finetune_config.json, backbone.safetensors +
            backbone.json (the fine-tuned backbone) and head.safetensors. A rerun resumes.
        indices: optional subset of allowed image indices (DataError if any is not allowed).
        accelerator: an accelerate.Accelerator; default: one built from config (mixed precision,
            gradient accumulation).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    config.validate()
    allowed, seen_classes = allowed_training_indices(split, protocol)
    chosen = allowed if indices is None else check_training_indices(split, protocol, indices)
    if chosen.size == 0:
        raise DataError(f"{split.benchmark}: no {PROTOCOL_TRAIN_SPLIT[protocol]} images of seen classes to fine-tune on")
    if accelerator is None:
        # "no" (the default) leaves the precision to accelerate's launcher (`--mixed_precision fp16`)
        accelerator = Accelerator(mixed_precision=None if config.mixed_precision == "no" else config.mixed_precision,
                                  gradient_accumulation_steps=config.grad_accum_steps)
    set_seed(config.seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    labels = np.asarray(split.labels, dtype=np.int64)
    train_idx, val_idx = _stratified_holdout(chosen, labels, config.val_fraction, config.seed)
    # class id -> head column; -1 for classes outside the head (never reached: indices are checked)
    to_column = np.full(split.num_classes, -1, dtype=np.int64)
    to_column[seen_classes] = np.arange(len(seen_classes))
    head_labels = to_column[labels]

    data_config = backbone.data_config_at(config.image_size)
    train_images = ImageFolderDataset(image_root, split.image_files, head_labels,
                                      build_eval_transform(data_config), indices=train_idx)
    train_set = _AugmentedImages(train_images, build_train_transform(data_config), config.seed)
    sampler = EpochShuffleSampler(len(train_set), config.seed)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                              num_workers=config.num_workers, collate_fn=collate_skip_bad, drop_last=False)
    val_loader = None
    if len(val_idx):
        val_set = ImageFolderDataset(image_root, split.image_files, head_labels,
                                     build_eval_transform(data_config), indices=val_idx)
        # every process must gather equal batches, so unreadable images stay as flagged placeholders
        val_loader = DataLoader(val_set, batch_size=config.batch_size, shuffle=False,
                                num_workers=config.num_workers, collate_fn=collate_flagged)

    if config.head == "softmax":
        head = SeenClassHead(backbone.num_features, len(seen_classes))
    else:
        head = AttributeHead(backbone.num_features, split.semantics[seen_classes])
    model = SeenClassifier(backbone, head)
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad], "lr": config.lr_backbone},
              {"params": list(head.parameters()), "lr": config.lr_head}]
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)

    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(int(round(config.warmup_epochs * steps_per_epoch)), config.epochs * steps_per_epoch))
    # Not prepared: accelerate would step it once per process; we step it once per optimizer step.
    accelerator.register_for_checkpointing(scheduler)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    checkpoints = output_dir / "checkpoints"
    start_epoch = _resume(accelerator, checkpoints)
    history_path = output_dir / "history.jsonl"
    if accelerator.is_main_process:
        _atomic_write_text(output_dir / "finetune_config.json", json.dumps(
            {"config": asdict(config), "protocol": protocol, "backbone": backbone.describe(),
             "num_train_images": int(len(train_idx)), "num_val_images": int(len(val_idx)),
             "seen_classes": seen_classes.tolist(), "processes": accelerator.num_processes}, indent=2))
    if start_epoch == 0:
        # Epoch 0 = before any step: the baseline the first epoch must improve on.
        loss, accuracy = _evaluate(model, val_loader, loss_fn, accelerator)
        _append_history(accelerator, history_path, {"epoch": 0, "val_loss": loss, "val_acc": accuracy})

    bad_files: set[str] = set()
    end_epoch = config.epochs
    if config.max_epochs_this_run is not None:
        end_epoch = min(end_epoch, start_epoch + config.max_epochs_this_run)
    for epoch in range(start_epoch, end_epoch):
        model.train()
        # Through the prepared loader: accelerate otherwise resets the sampler's epoch to its own
        # iteration count, which restarts at 0 in a resumed process.
        train_loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        total_loss, total_count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
        bar = tqdm(train_loader, desc=f"fine-tune epoch {epoch + 1}/{config.epochs}",
                   disable=not (config.progress and accelerator.is_local_main_process), leave=False)
        for batch in bar:
            bad_files.update(split.image_files[i] for i in batch.bad_indices.tolist())
            with accelerator.accumulate(model):
                logits = model(batch.images)
                loss = loss_fn(logits, batch.labels)
                accelerator.backward(loss)
                if config.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                scheduler.step()
            total_loss += loss.detach() * len(batch)
            total_count += len(batch)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        train_loss = float(accelerator.reduce(total_loss, "sum") / accelerator.reduce(total_count, "sum").clamp(min=1))
        val_loss, val_acc = _evaluate(model, val_loader, loss_fn, accelerator)
        _append_history(accelerator, history_path, {
            "epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc,
            "lr_backbone": scheduler.get_last_lr()[0], "bad_images": sorted(bad_files)})
        accelerator.print(f"epoch {epoch + 1}: train loss {train_loss:.4f}, seen-class val acc "
                          f"{'n/a' if val_acc is None else f'{val_acc:.4f}'}")
        _save_checkpoint(accelerator, checkpoints, epoch + 1)

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
        tmp = output_dir / f"{name}.safetensors.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
        os.replace(tmp, output_dir / f"{name}.safetensors")
    _atomic_write_text(output_dir / "backbone.json", json.dumps(
        {**backbone.describe(), "seen_classes": np.asarray(seen_classes).tolist()}, indent=2))


def read_history(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records of a fine-tuning run (epoch 0 = before training)."""
    path = Path(output_dir) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _stratified_holdout(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """Split `indices` into (train, val), holding out `fraction` of each class (at least one image
    of every class with >= 2 images stays in train)."""
    if fraction <= 0:
        return np.sort(indices), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels[indices]):
        members = indices[labels[indices] == label]
        count = min(int(round(fraction * len(members))), len(members) - 1)
        if count > 0:
            held.append(rng.choice(members, size=count, replace=False))
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    return np.sort(np.setdiff1d(indices, val)), val


@torch.no_grad()
def _evaluate(model, loader, loss_fn, accelerator) -> tuple[float | None, float | None]:
    """Seen-class (loss, accuracy) on the held-out images, exact over all processes."""
    if loader is None:
        return None, None
    model.eval()
    losses, hits, count = 0.0, 0, 0
    for images, labels, _, ok in loader:
        logits = model(images)
        logits, labels, ok = accelerator.gather_for_metrics((logits, labels, ok))
        logits, labels = logits[ok], labels[ok]  # unreadable images do not count
        if not len(labels):
            continue
        losses += float(loss_fn(logits.float(), labels)) * len(labels)
        hits += int((logits.argmax(-1) == labels).sum())
        count += len(labels)
    model.train()
    return (losses / count, hits / count) if count else (None, None)


def _append_history(accelerator, path: Path, record: dict) -> None:
    if accelerator.is_main_process:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_checkpoint(accelerator, checkpoints: Path, epoch: int) -> None:
    """accelerate state (model, optimizer, scheduler, RNGs) -> checkpoints/epoch_NNNN, atomically;
    `latest` names the newest complete one; the previous one is removed."""
    final = checkpoints / f"epoch_{epoch:04d}"
    tmp = checkpoints / f"epoch_{epoch:04d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoints.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        previous = _latest_epoch(checkpoints)
        _atomic_write_text(checkpoints / "latest", final.name)
        if previous and previous != epoch:
            shutil.rmtree(checkpoints / f"epoch_{previous:04d}", ignore_errors=True)
    accelerator.wait_for_everyone()


def _latest_epoch(checkpoints: Path) -> int:
    marker = checkpoints / "latest"
    if not marker.exists():
        return 0
    return int(marker.read_text().strip().split("_")[-1])


def _resume(accelerator, checkpoints: Path) -> int:
    """Load the newest complete checkpoint; returns the number of epochs already done."""
    epoch = _latest_epoch(checkpoints)
    if epoch:
        accelerator.load_state(str(checkpoints / f"epoch_{epoch:04d}"))
        accelerator.print(f"resuming after epoch {epoch} from {checkpoints}")
    return epoch
