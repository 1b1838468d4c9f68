"""ZSL metrics (docs/protocol.md): per-class accuracy, their mean, H, calibrated stacking.

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


def auroc(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of a score that should be higher on `positives` (M,) than on `negatives`
    (N,): the probability that a random positive outscores a random negative, ties counting one half
    (Mann-Whitney U with average ranks). NaN when either side is empty."""
    negatives = torch.as_tensor(negatives, dtype=torch.float64).flatten().cpu()
    positives = torch.as_tensor(positives, dtype=torch.float64).flatten().cpu()
    if not len(negatives) or not len(positives):
        return float("nan")
    values = torch.cat([negatives, positives])
    order = values.argsort()
    sorted_values = values[order]
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average_rank = ends - (counts.double() - 1) / 2          # 1-based average rank of each tie group
    ranks = torch.empty_like(values)
    ranks[order] = average_rank[inverse]
    m = len(positives)
    u = ranks[len(negatives):].sum() - m * (m + 1) / 2
    return float(u / (m * len(negatives)))
