"""The images fine-tuning may see, and how it sees them.

The one rule that must never break: no test image and no unseen-class image may train the backbone.
`allowed_training_indices` enforces it from the split itself (a leak in the split files is filtered,
never trained on), and `check_training_indices` refuses any other index a caller asks for.

The rest makes a resumed run repeat an uninterrupted one exactly: the shuffle depends only on
(seed, epoch) and every augmentation only on (seed, epoch, image index). The sampler hands each
position to the dataset together with its epoch, so DataLoader workers that persist across epochs
(holding a copy of the dataset made in the first epoch) still augment with the current epoch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from bsegn.core.errors import DataError, ImageError
from bsegn.datasets.image_dataset import ImageFolderDataset
from bsegn.datasets.images import open_rgb
from bsegn.datasets.splits import ZSLSplit

PROTOCOL_TRAIN_SPLIT = {"final": "trainval", "validation": "train"}


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


def stratified_holdout(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
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


class EpochShuffleSampler(Sampler[tuple[int, int]]):
    """A permutation that depends only on (seed, epoch): identical on every process and after a resume.
    Yields (epoch, position) pairs: AugmentedImages reads the epoch from the pair."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter([(self.epoch, position) for position in torch.randperm(self.length, generator=generator).tolist()])

    def __len__(self) -> int:
        return self.length


class AugmentedImages(Dataset):
    """Training images; augmentation seeded by (seed, epoch, image index) for exact resumes.
    An item is a position (augmented for the epoch of the last set_epoch) or an (epoch, position) pair."""

    def __init__(self, images: ImageFolderDataset, transform, seed: int):
        self.images, self.transform, self.seed, self.epoch = images, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int]):
        epoch, position = item if isinstance(item, tuple) else (self.epoch, item)
        index = int(self.images.indices[position])
        label = int(self.images.labels[index])
        try:
            image = open_rgb(self.images.root / self.images.files[index], max_pixels=self.images.max_pixels)
        except ImageError:
            return torch.zeros(self.images.placeholder_shape), label, index, False
        seed = (self.seed * 1_000_003 + epoch * 7_919 + index) % (2**32)
        return self.transform(image, seed=seed), label, index, True
