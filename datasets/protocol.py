"""The validation protocol (docs/protocol.md, "Selection: never on test") as a ZSLSplit of its own.

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

`check_protocol_feasible` says, before any compute, whether a run can work on a split at all (an
unseen class for the final protocol; a train/val class split for the validation protocol), and
what to change when it cannot.
"""
from __future__ import annotations

import numpy as np

from bsegn.core.errors import DataError
from bsegn.datasets.splits import ZSLSplit

# Own data is split into train (2/3) / val (1/3) classes only from this many seen classes on: fewer
# would leave the validation run one val class to choose the calibration gamma on, or none.
MIN_SEEN_CLASSES_FOR_VALIDATION = 4
PROTOCOLS = ("final", "validation")


def protocol_problems(split: ZSLSplit, protocol: str, needs_validation: bool = False) -> list[str]:
    """Why a run of `protocol` cannot work on `split` (empty list: it can), each with what to do.

    Args:
        split: the benchmark split (labels may still be unknown: the class checks are then skipped).
        protocol: "final" (trainval -> test: needs an unseen class) or "validation" (train -> val classes).
        needs_validation: the run also runs the validation protocol (run.protocol final with
            run.calibration on and no run.gamma: gamma is chosen there).
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}.")
    problems = []
    own = split.benchmark == "own"
    if protocol == "final":
        unseen = split.unseen_classes
        test_unseen = split.locs.get("test_unseen")
        if (unseen is not None and len(unseen) == 0) or (test_unseen is not None and len(test_unseen) == 0):
            problems.append(
                f"{split.benchmark}: no unseen class (no test_unseen image); zero-shot training needs at least one "
                "class known only by its attributes: " + ("mark some classes `unseen` in the attributes CSV (their "
                "images are then only tested on)" if own else "use split files that define unseen classes")
                + ", or run `--run.protocol validation` (val classes play unseen).")
    if needs_validation or protocol == "validation":
        problem = _validation_problem(split, protocol, own)
        if problem:
            problems.append(problem)
    return problems


def check_protocol_feasible(split: ZSLSplit, protocol: str, needs_validation: bool = False) -> None:
    """Raise DataError (every reason, each saying what to do) when `protocol_problems` finds any."""
    problems = protocol_problems(split, protocol, needs_validation)
    if problems:
        raise DataError(" ".join(problems))


def _validation_problem(split: ZSLSplit, protocol: str, own: bool) -> str | None:
    train, val = split.locs.get("train"), split.locs.get("val")
    classes = None
    if train is not None and val is not None and split.labels is not None:
        labels = np.asarray(split.labels)
        test_seen = split.locs.get("test_seen")
        test_seen = np.empty(0, dtype=np.int64) if test_seen is None else test_seen
        classes = [len(np.unique(labels[np.setdiff1d(loc, test_seen)])) for loc in (train, val)]
    if train is not None and val is not None and (classes is None or min(classes) >= 1):
        return None
    if own:
        seen = 0 if split.seen_classes is None else len(split.seen_classes)
        reason = (f"own data has {seen} seen classes, and the validation protocol needs at least "
                  f"{MIN_SEEN_CLASSES_FOR_VALIDATION} (2/3 train, 1/3 val classes, so gamma is never chosen on "
                  f"test images); mark more classes `seen` in the attributes CSV (add seen classes)")
    elif train is None or val is None:
        reason = (f"the {split.benchmark} split files define no train/val class split, which the validation "
                  "protocol needs; use split files that have train_loc and val_loc")
    else:
        reason = (f"the {split.benchmark} train/val split leaves {classes[0]} train and {classes[1]} val classes "
                  "once test images are removed; the validation protocol needs at least one of each")
    if protocol == "validation":
        avoid = ("or run `--run.protocol final` with a threshold you give for the seen-or-unseen gate "
                 "(`--run.threshold 0`: no correction; with gate stacking `--run.threshold -2.0` is gamma 2.0)")
    else:
        avoid = ("or do without it: give the seen-or-unseen gate's threshold yourself (`--run.threshold 0`: no "
                 "correction; with gate stacking `--run.threshold -2.0` is gamma 2.0) so it is not chosen on "
                 "the validation protocol")
    return f"{split.benchmark}: {reason}, {avoid}."


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
    check_protocol_feasible(split, "validation")
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
        descriptions=split.descriptions,
        class_texts=split.class_texts,
        text_encoder=split.text_encoder,
        text_encoder_id=split.text_encoder_id,
        text_pooling=split.text_pooling,
        protocol="validation",
        notes=list(split.notes) + [
            f"validation protocol: seen = {len(train_classes)} train classes, unseen = {len(val_classes)} val "
            f"classes; test_seen images removed from train/val; {holdout_fraction:.0%} of train-class images "
            f"held out (seed {seed}) as validation-seen."
        ],
        sources=list(split.sources),
    )
