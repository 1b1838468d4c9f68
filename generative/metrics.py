"""ZSL metrics (../shared/docs/protocol.md): per-class accuracy, their mean, H, calibrated stacking.

All accuracies are fractions in [0, 1] here; `evaluation.py` reports percent.
"""
from __future__ import annotations

import torch


def per_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """predicted, labels (N,) class ids; classes (K,) the classes to score -> (K,) accuracy of each
    (NaN for a class with no sample). Vectorised with bincount."""
    classes = torch.as_tensor(classes, dtype=torch.long)
    size = int(max(int(labels.max()) if len(labels) else 0, int(classes.max())) + 1)
    correct = torch.bincount(labels[predicted == labels], minlength=size).double()
    total = torch.bincount(labels, minlength=size).double()
    acc = correct[classes] / total[classes]
    return acc.float()


def mean_per_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean over the classes in `classes` that have samples (the PS top-1 per-class accuracy)."""
    acc = per_class_accuracy(predicted, labels, classes)
    acc = acc[~torch.isnan(acc)]
    return float(acc.mean()) if len(acc) else float("nan")


def harmonic_mean(unseen: float, seen: float) -> float:
    """H = 2 U S / (U + S); 0 when both are 0."""
    return 0.0 if unseen + seen == 0 else 2 * unseen * seen / (unseen + seen)


def calibrated_predictions(scores: torch.Tensor, seen_columns: torch.Tensor, gamma: float) -> torch.Tensor:
    """scores (N, C) over classes in column order; seen_columns (C,) bool. Calibrated stacking
    (Chao et al. 2016): subtract gamma from seen-class scores, then argmax -> (N,) column indices."""
    return (scores - gamma * seen_columns.to(scores.dtype)).argmax(1)


def rank_unseen_with(scores: torch.Tensor, unseen_columns: torch.Tensor, unseen_scores: torch.Tensor) -> torch.Tensor:
    """GZSL scores (N, C) whose unseen columns (C,) bool are re-ranked by `unseen_scores` (N, U), the
    scores of a classifier over those U unseen columns in the same order (the ZSL classifier).

    Returns (N, C): seen columns unchanged; unseen column j becomes max_u scores[:, u] + (unseen_scores[:, j]
    - max_j unseen_scores). So the seen-vs-unseen decision (and calibrated stacking's gamma, which only
    moves seen columns) is that of `scores`, and which unseen class wins is that of `unseen_scores`."""
    if unseen_scores.shape != (scores.shape[0], int(unseen_columns.sum())):
        raise ValueError(f"unseen_scores {tuple(unseen_scores.shape)} must be (N, number of unseen columns) = "
                         f"({scores.shape[0]}, {int(unseen_columns.sum())})")
    out = scores.clone()
    best_unseen = scores[:, unseen_columns].max(1, keepdim=True).values
    out[:, unseen_columns] = best_unseen + unseen_scores - unseen_scores.max(1, keepdim=True).values
    return out
