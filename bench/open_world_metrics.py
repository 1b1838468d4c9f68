"""The open-world rule measured, and its threshold chosen (on VALIDATION only): bench/open_world.py's metrics.

    known_h = known_accuracy(correct, labels, seen_classes, unseen_classes, rejected)   # {"U", "S", "H"}
    threshold, curve = choose_open_world_threshold(z_known, z_unknown, correct, labels, seen, unseen)
    result = open_world_metrics(z_known, z_unknown, threshold, correct, labels, seen, unseen)

Known images are photos of the model's classes (their predictions `correct` (N,) bool from the seen-or-unseen
gate), unknown images photos of none of them; z their open-world scores (bsegn.generative.open_world). A
known image answered "unknown" counts as wrong, so the reject option can only lower the known classes' U, S
and H: the rule is worth it when it catches many unknowns for a small drop.
"""
from __future__ import annotations

import torch

from bsegn.generative.gate_evaluation import fit_temperature
from bsegn.generative.gates import THRESHOLD_CANDIDATES
from bsegn.generative.metrics import auroc, harmonic_mean, mean_per_class_accuracy

# The largest drop of the known classes' H (points) the threshold may cost ON VALIDATION: half the issue's
# 2-point allowance, so that the move from the validation model to the final one has room (fixed beforehand).
H_DROP_BUDGET = 1.0


def known_accuracy(correct, labels, seen_classes, unseen_classes, rejected=None) -> dict:
    """{"U", "S", "H"} in percent: mean per-class accuracy of the known images of the unseen and the seen
    classes, an image counted right iff `correct` and not `rejected` (answered unknown)."""
    correct = torch.as_tensor(correct, dtype=torch.bool)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if rejected is not None:
        correct = correct & ~torch.as_tensor(rejected, dtype=torch.bool)
    # mean_per_class_accuracy compares predictions with labels: a right image "predicts" its label, a wrong
    # one -1 (no class)
    predicted = torch.where(correct, labels, torch.full_like(labels, -1))
    u = 100 * mean_per_class_accuracy(predicted, labels, torch.as_tensor(unseen_classes, dtype=torch.long))
    s = 100 * mean_per_class_accuracy(predicted, labels, torch.as_tensor(seen_classes, dtype=torch.long))
    return {"U": u, "S": s, "H": harmonic_mean(u, s)}


def caught(z_unknown: torch.Tensor, threshold: float) -> float:
    """Percent of unknown images answered unknown at `threshold`."""
    return 100 * float((torch.as_tensor(z_unknown) > threshold).double().mean()) if len(z_unknown) else float("nan")


def choose_open_world_threshold(z_known, z_unknown, correct, labels, seen_classes, unseen_classes, *,
                                budget: float = H_DROP_BUDGET) -> tuple[float | None, list[dict]]:
    """The lowest threshold (the most unknowns caught) whose known-class H is at most `budget` points below
    H without the reject option, among THRESHOLD_CANDIDATES quantiles of the pooled scores. None when no
    candidate keeps within the budget and catches anything. Returns (threshold, [{"threshold", "caught",
    "H", "H_drop"}])."""
    z_known, z_unknown = torch.as_tensor(z_known).double(), torch.as_tensor(z_unknown).double()
    base = known_accuracy(correct, labels, seen_classes, unseen_classes)["H"]
    pooled = torch.cat([z_known, z_unknown])
    levels = torch.linspace(0, 1, THRESHOLD_CANDIDATES, dtype=torch.float64)
    curve = []
    for threshold in sorted(set(torch.quantile(pooled, levels).tolist())):
        h = known_accuracy(correct, labels, seen_classes, unseen_classes, z_known > threshold)["H"]
        curve.append({"threshold": threshold, "caught": caught(z_unknown, threshold), "H": h, "H_drop": base - h})
    allowed = [row for row in curve if row["H_drop"] <= budget and row["caught"] > 0]
    return (min(row["threshold"] for row in allowed) if allowed else None), curve


def fit_unknown_temperature(z_known, z_unknown, threshold: float) -> float:
    """p_unknown's temperature: Platt scaling of (z - threshold) against known (0) / unknown (1) images
    (gate_evaluation.fit_temperature: the decision stays at the threshold)."""
    z_known, z_unknown = torch.as_tensor(z_known).double(), torch.as_tensor(z_unknown).double()
    margins = torch.cat([z_known, z_unknown]) - threshold
    return fit_temperature(margins, torch.cat([torch.zeros(len(z_known)), torch.ones(len(z_unknown))]))


def open_world_metrics(z_known, z_unknown, threshold: float | None, correct, labels, seen_classes,
                       unseen_classes) -> dict:
    """AUROC (unknown = positive), percent of unknowns caught and of knowns rejected at `threshold`, and the
    known classes' U/S/H with the reject option off and on (threshold None: off, so on = off)."""
    z_known = torch.as_tensor(z_known).double()
    off = known_accuracy(correct, labels, seen_classes, unseen_classes)
    rejected = z_known > threshold if threshold is not None else torch.zeros(len(z_known), dtype=torch.bool)
    on = known_accuracy(correct, labels, seen_classes, unseen_classes, rejected)
    share = caught(z_unknown, threshold) if threshold is not None else 0.0
    return {"auroc": auroc(z_known, z_unknown), "caught": share,
            "known_rejected": 100 * float(rejected.double().mean()) if len(rejected) else float("nan"),
            **{f"{k}_off": v for k, v in off.items()}, **{f"{k}_on": v for k, v in on.items()},
            "H_drop": off["H"] - on["H"]}
