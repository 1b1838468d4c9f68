"""A torch Dataset over an image folder that survives bad files.

`ImageFolderDataset(root, files, labels, transform)[i]` returns (image tensor, label, index, ok).
A file that cannot be read (ImageError) gives ok=False and a zero placeholder tensor instead of
an exception, so one broken JPEG never kills a feature-extraction or fine-tuning run;
`collate_skip_bad` drops those items from the batch and lists them, and the caller reports them.
"""
from __future__ import annotations

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
            image = open_rgb(self.root / self.files[index], max_pixels=self.max_pixels)
        except ImageError:
            return torch.zeros(self.placeholder_shape), label, index, False
        return self.transform(image), label, index, True


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
