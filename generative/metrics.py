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
