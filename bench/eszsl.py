"""ESZSL (Romera-Paredes & Torr, ICML 2015): the closed-form bilinear baseline the benches set BSeGN beside.

With X (d, N) features, Y (N, S) targets in {-1, +1} over seen classes and A (k, S) their semantics,
    V = (X X^T + gamma I)^-1  X Y A^T  (A A^T + lambda I)^-1            (d, k)
and a class c scores x^T V a_c. Scores of all classes go through the same `evaluate_scores` as BSeGN.
(gamma, lambda) are chosen on the validation protocol (choose_eszsl), never on test.

    eszsl_projections(features, labels, semantics, seen, gammas, lambdas) -> {(gamma, lambda): V (d, k)}
    fit_eszsl(features, labels, semantics, seen, gamma, lam) -> V (d, k)
    eszsl_scores(V, features, semantics, class_ids) -> (N, K)
    run_eszsl(feature_set, split, gamma, lam) -> result;  choose_eszsl(feature_set, validation, grid)
"""
from __future__ import annotations

import torch

from bsegn.generative.evaluation import evaluate_scores
from bsegn.generative.experiment import split_tensors


def eszsl_projections(features, labels, semantics, seen_classes, gammas, lambdas) -> dict[tuple, torch.Tensor]:
    """features (N, d), labels (N,) class ids (rows of semantics (C, k)), seen_classes (S,) -> {(gamma, lambda):
    V (d, k)} for every pair. X X^T and X Y A^T are formed once and the (d, d) solve is done once per gamma,
    not once per pair (a grid search's shared work)."""
    x = torch.as_tensor(features, dtype=torch.float64).t()
    seen = torch.as_tensor(seen_classes, dtype=torch.long)
    labels = torch.as_tensor(labels, dtype=torch.long)
    column = torch.full((int(max(seen.max(), labels.max())) + 1,), -1, dtype=torch.long)
    column[seen] = torch.arange(len(seen))
    y = -torch.ones(x.shape[1], len(seen), dtype=torch.float64)
    y[torch.arange(x.shape[1]), column[labels]] = 1.0
    a = torch.as_tensor(semantics, dtype=torch.float64)[seen].t()
    d, k = x.shape[0], a.shape[0]
    gram, target = x @ x.t(), x @ y @ a.t()
    out = {}
    for gamma in gammas:
        left = torch.linalg.solve(gram + gamma * torch.eye(d, dtype=torch.float64), target)
        for lam in lambdas:
            right = (a @ a.t() + lam * torch.eye(k, dtype=torch.float64)).t()
            out[(gamma, lam)] = torch.linalg.solve(right, left.t()).t().float()
    return out


def fit_eszsl(features, labels, semantics, seen_classes, gamma: float = 1.0, lam: float = 1.0) -> torch.Tensor:
    """One (gamma, lambda): V (d, k) (see eszsl_projections for the shapes)."""
    return eszsl_projections(features, labels, semantics, seen_classes, (gamma,), (lam,))[(gamma, lam)]


def eszsl_scores(projection: torch.Tensor, features, semantics, class_ids) -> torch.Tensor:
    """features (N, d) -> (N, K) scores x^T V a_c over class_ids (K,)."""
    a = torch.as_tensor(semantics, dtype=torch.float32)[torch.as_tensor(class_ids, dtype=torch.long)]
    return torch.as_tensor(features, dtype=torch.float32) @ projection @ a.t()


def _evaluate(projection: torch.Tensor, data: dict) -> dict:
    """ESZSL's scores of a split's test images evaluated like BSeGN's (uncalibrated)."""
    semantics, all_classes, seen = data["semantics"], data["all_classes"], data["seen"]
    (seen_x, seen_y), (unseen_x, unseen_y) = data["test_seen"], data["test_unseen"]
    return evaluate_scores(eszsl_scores(projection, seen_x, semantics, all_classes), seen_y,
                           eszsl_scores(projection, unseen_x, semantics, all_classes), unseen_y, all_classes, seen)


def run_eszsl(feature_set, split, gamma_reg: float, lam: float) -> dict:
    """ESZSL on split's trainval with the given (gamma, lambda), evaluated on its test images."""
    data = split_tensors(feature_set, split)
    return _evaluate(fit_eszsl(*data["trainval"], data["semantics"], data["seen"], gamma_reg, lam), data)


def choose_eszsl(feature_set, validation, grid) -> tuple[float, float, dict]:
    """ESZSL's (gamma, lambda) over grid x grid with the best validation T1 + H (the first on ties)."""
    data = split_tensors(feature_set, validation)
    best = None
    projections = eszsl_projections(*data["trainval"], data["semantics"], data["seen"], grid, grid)
    for (gamma_reg, lam), projection in projections.items():
        result = _evaluate(projection, data)
        if best is None or result["T1"] + result["H"] > best[2]["T1"] + best[2]["H"]:
            best = (gamma_reg, lam, result)
    return best
