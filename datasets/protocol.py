"""The validation protocol (protocol.md "Model selection: never on test") as a ZSLSplit of its own.

xlsa17's train_loc / val_loc together equal trainval_loc + test_seen_loc, i.e. they contain test
images. `validation_protocol` turns a benchmark split into a split on which every choice
(hyperparameters, epochs, calibration gamma) can be made without any test image:

* every test_seen index is removed from train and val (test_unseen is never in them; checked);
* seen := the train classes, unseen := the val classes;
* trainval := the train-class images minus a seeded holdout (default 20 %, per class);
* test_seen := that holdout (validation-seen);
* test_unseen := the val-class images.

The result is a ZSLSplit over the same image list, so every trainer and evaluator runs on it
unchanged. It has no train/val of its own.
"""
from __future__ import annotations

import numpy as np

from bsegn.core.errors import DataError
from bsegn.datasets.splits import ZSLSplit


def validation_protocol(split: ZSLSplit, *, holdout_fraction: float = 0.2, seed: int = 0) -> ZSLSplit:
    """Build the validation split of `split` (which needs labels and train/val locs).

    Args:
        split: a benchmark split with `labels` (N,) and train/val locs.
        holdout_fraction: share of each train class's images held out as validation-seen.
        seed: the holdout draw.

    Returns:
        ZSLSplit with the same classes, semantics and image list; locs trainval / test_seen /
        test_unseen as above, train / val None.
    """
    if split.labels is None:
        raise DataError(f"{split.benchmark}: the validation protocol needs per-image labels (from features, "
                        "image folders or res101.mat); the split files alone do not give them.")
    if not 0.0 < holdout_fraction < 1.0:
        raise DataError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction}.")
    labels = np.asarray(split.labels, dtype=np.int64)
    train, val = split.loc("train"), split.loc("val")
    test_seen, test_unseen = split.loc("test_seen"), split.loc("test_unseen")
    if np.intersect1d(np.concatenate([train, val]), test_unseen).size:
        raise DataError(f"{split.benchmark}: train/val locs contain test_unseen images; the split files are wrong.")
    # Remove the test images xlsa17 put into train/val, so that no test image informs any choice.
    train = np.setdiff1d(train, test_seen)
    val = np.setdiff1d(val, test_seen)
    train_classes = np.unique(labels[train])
    val_classes = np.unique(labels[val])
    if np.intersect1d(train_classes, val_classes).size:
        raise DataError(f"{split.benchmark}: train and val share classes; the validation protocol needs a class split.")

    rng = np.random.default_rng(seed)
    holdout, kept = [], []
    for class_id in train_classes:  # per class, so every train class has validation-seen images
        members = rng.permutation(train[labels[train] == class_id])
        cut = int(round(holdout_fraction * len(members)))
        if len(members) > 1:
            cut = min(max(cut, 1), len(members) - 1)
        else:
            cut = 0
        holdout.append(members[:cut])
        kept.append(members[cut:])

    return ZSLSplit(
        benchmark=f"{split.benchmark}:validation",
        class_names=list(split.class_names),
        semantics=split.semantics,
        locs={
            "trainval": np.sort(np.concatenate(kept)).astype(np.int64),
            "test_seen": np.sort(np.concatenate(holdout)).astype(np.int64),
            "test_unseen": np.sort(val).astype(np.int64),
            "train": None,
            "val": None,
        },
        seen_classes=train_classes.astype(np.int64),
        unseen_classes=val_classes.astype(np.int64),
        labels=labels,
        image_files=split.image_files,
        original_semantics=split.original_semantics,
        attribute_names=split.attribute_names,
        semantic_kind=split.semantic_kind,
        notes=list(split.notes) + [
            f"validation protocol: seen = {len(train_classes)} train classes, unseen = {len(val_classes)} val "
            f"classes; test_seen images removed from train/val; {holdout_fraction:.0%} of train-class images "
            f"held out (seed {seed}) as validation-seen."
        ],
        sources=list(split.sources),
    )
