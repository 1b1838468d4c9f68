"""A torch Dataset over an image folder that survives bad files.

`ImageFolderDataset(root, files, labels, transform)[i]` returns (image tensor, label, index, ok).
A file that cannot be read (ImageError) gives ok=False and a zero placeholder tensor instead of
an exception, so one broken JPEG never kills a feature-extraction or fine-tuning run;
`collate_skip_bad` drops those items from the batch and lists them, and the caller reports them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bsegn.core.errors import ImageError
from bsegn.datasets.images import DEFAULT_MAX_PIXELS, open_rgb


class ImageFolderDataset(Dataset):
    """Images `root / files[i]` with integer labels.

    Args:
        root: image root folder.
        files: N relative paths (the benchmark's fixed image order).
        labels: (N,) int class ids, or None (then every label is -1).
        transform: PIL RGB image -> (3, H, W) float tensor (EvalTransform or TrainTransform).
        indices: optional subset of positions into `files` to expose (e.g. a split's locs); the
            returned index is always the position in `files`, so results map back exactly.
        placeholder_shape: shape of the zero tensor returned for a bad image (C, H, W).
    """

    def __init__(self, root: str | Path, files: Sequence[str], labels: Sequence[int] | np.ndarray | None,
                 transform: Callable, *, indices: Sequence[int] | np.ndarray | None = None,
                 placeholder_shape: tuple[int, int, int] | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        self.files = list(files)
        if labels is None:
            labels = np.full(len(self.files), -1, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.files):
            raise ValueError(f"{len(self.files)} files but {len(self.labels)} labels")
        self.indices = np.arange(len(self.files)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform
        if placeholder_shape is None:
            size = getattr(transform, "image_size", (224, 224))
            placeholder_shape = (3, int(size[0]), int(size[1]))
        self.placeholder_shape = tuple(placeholder_shape)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        """-> (image (3, H, W) float32, label int, index into `files` int, ok bool)."""
        index = int(self.indices[position])
        label = int(self.labels[index])
        try:
            image = open_rgb(self.root / self.files[index], max_pixels=self.max_pixels,
                             decode_size=getattr(self.transform, "decode_size", None))
        except ImageError:
            return torch.zeros(self.placeholder_shape), label, index, False
        return self.transform(image), label, index, True


MAX_AUTO_WORKERS = 12  # beyond this, more decoding processes mostly add memory


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or a job's share)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def auto_workers(device_type: str, processes: int = 1) -> int:
    """DataLoader workers per process, sized from the machine: on a GPU every core of this process's
    share but one (the one that feeds the GPU); on a CPU half the share (the other half computes:
    more workers than that oversubscribe the cores, and the model's OpenMP threads then spin)."""
    share = available_cores() // max(1, processes)
    workers = share - 1 if device_type == "cuda" else share // 2
    return max(0, min(workers, MAX_AUTO_WORKERS))


def loader_options(num_workers: int | None, device_type: str, *, processes: int = 1,
                   persistent: bool = False) -> dict:
    """DataLoader keyword arguments for decoding images: num_workers (None: auto_workers), pinned
    memory on a GPU, a deeper prefetch with workers, and with `persistent` workers that live
    across epochs (no new processes, no second albumentations import, each epoch)."""
    workers = auto_workers(device_type, processes) if num_workers is None else int(num_workers)
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0 or None, got {num_workers}")
    options: dict = {"num_workers": workers, "pin_memory": device_type == "cuda"}
    if workers:
        options.update(prefetch_factor=4, persistent_workers=persistent)
    return options


@dataclass
class ImageBatch:
    """A collated batch of good images plus the file indices of the bad ones that were dropped.

    images: (B, 3, H, W); labels: (B,) int64; indices: (B,) int64 positions in the file list;
    bad_indices: (K,) int64 positions whose files could not be read.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    bad_indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device, non_blocking: bool = False) -> "ImageBatch":
        """The batch on `device`. accelerate's prepared DataLoader moves every batch with `.to()`: without
        this method it left the images on the CPU beside a model on the GPU (found on the first GPU run)."""
        return ImageBatch(**{name: getattr(self, name).to(device, non_blocking=non_blocking)
                             for name in ("images", "labels", "indices", "bad_indices")})


def collate_skip_bad(items) -> ImageBatch:
    """DataLoader collate_fn: stacks the good items, keeps the bad ones' indices aside."""
    good = [item for item in items if item[3]]
    bad = [item[2] for item in items if not item[3]]
    if good:
        images = torch.stack([item[0] for item in good])
    else:
        images = torch.zeros((0, *items[0][0].shape)) if items else torch.zeros((0, 3, 1, 1))
    return ImageBatch(
        images=images,
        labels=torch.tensor([item[1] for item in good], dtype=torch.int64),
        indices=torch.tensor([item[2] for item in good], dtype=torch.int64),
        bad_indices=torch.tensor(bad, dtype=torch.int64),
    )


def collate_flagged(items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """DataLoader collate_fn that keeps every item: (images (B,3,H,W), labels (B,), indices (B,), ok (B,) bool).

    For distributed extraction: every process must gather tensors of equal batch size, so bad
    images stay in the batch as zero placeholders and are dropped after the gather by `ok`.
    """
    return (
        torch.stack([item[0] for item in items]),
        torch.tensor([item[1] for item in items], dtype=torch.int64),
        torch.tensor([item[2] for item in items], dtype=torch.int64),
        torch.tensor([bool(item[3]) for item in items], dtype=torch.bool),
    )
