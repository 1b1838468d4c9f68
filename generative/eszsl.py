"""ESZSL (Romera-Paredes & Torr, ICML 2015): the closed-form bilinear baseline, for context.

With X (d, N) features, Y (N, S) targets in {-1, +1} over seen classes and A (k, S) their semantics,
    V = (X X^T + gamma I)^-1  X Y A^T  (A A^T + lambda I)^-1            (d, k)
and a class c scores x^T V a_c. Scores of all classes go through the same `evaluate_scores` as BSeGN.
(gamma, lambda) are chosen on the validation protocol (bench/awa1_lampert.py), never on test.
"""
from __future__ import annotations

import torch


def fit_eszsl(features, labels, semantics, seen_classes, gamma: float = 1.0, lam: float = 1.0) -> torch.Tensor:
    """features (N, d), labels (N,) class ids (rows of semantics (C, k)), seen_classes (S,) -> V (d, k)."""
    x = torch.as_tensor(features, dtype=torch.float64).t()
    seen = torch.as_tensor(seen_classes, dtype=torch.long)
    labels = torch.as_tensor(labels, dtype=torch.long)
    column = torch.full((int(max(seen.max(), labels.max())) + 1,), -1, dtype=torch.long)
    column[seen] = torch.arange(len(seen))
    y = -torch.ones(x.shape[1], len(seen), dtype=torch.float64)
    y[torch.arange(x.shape[1]), column[labels]] = 1.0
    a = torch.as_tensor(semantics, dtype=torch.float64)[seen].t()
    d, k = x.shape[0], a.shape[0]
    left = torch.linalg.solve(x @ x.t() + gamma * torch.eye(d, dtype=torch.float64), x @ y @ a.t())
    return torch.linalg.solve((a @ a.t() + lam * torch.eye(k, dtype=torch.float64)).t(), left.t()).t().float()


def eszsl_scores(projection: torch.Tensor, features, semantics, class_ids) -> torch.Tensor:
    """features (N, d) -> (N, K) scores x^T V a_c over class_ids (K,)."""
    a = torch.as_tensor(semantics, dtype=torch.float32)[torch.as_tensor(class_ids, dtype=torch.long)]
    return torch.as_tensor(features, dtype=torch.float32) @ projection @ a.t()
