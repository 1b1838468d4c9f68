"""The seen-or-unseen decision measured on its own, and a gate's threshold chosen (on VALIDATION only).

    result = evaluate_gate(gate, seen, unseen, class_ids, seen_classes, zsl_unseen_scores=..., zsl_class_ids=...)
    threshold, curve = choose_threshold(gate, seen, unseen, class_ids, seen_classes)
    gate.temperature = fit_gate_temperature(gate, seen, unseen)   # p_unseen's scale, on the same images

`seen` / `unseen`: (GateInputs, labels (N,)) of the test-seen / test-unseen images. evaluate_gate returns
evaluate_scores' keys (T1, U, S, H, per-class) for the gate's decisions, plus:
    gate, threshold              the gate and the threshold applied (stacking: "gamma" = -threshold too)
    domain_auroc                 seen-vs-unseen AUROC of the gate's domain score (unseen = positive)
    domain_accuracy              mean of the two rates below: the decision's balanced accuracy
    seen_called_seen, unseen_called_unseen   the share of test-seen / test-unseen images routed right
    temperature, p_unseen_nll, p_unseen_ece  p_unseen's temperature, and how well p_unseen fits these images'
                                 domains: the mean negative log-likelihood, and the expected calibration
                                 error of the decision's confidence max(p, 1 - p) (10 bins; 0-1)
    oracle_U, oracle_S, oracle_H every image routed to its TRUE domain, then the expert of that domain
                                 names the class: the ceiling any decision can reach with these experts
All in percent except the AUROC (0-1).
"""
from __future__ import annotations

import torch

from bsegn.generative.evaluation import CALIBRATION_GRID, evaluate_scores
from bsegn.generative.gates import THRESHOLD_CANDIDATES, GateInputs, routed_predictions
from bsegn.generative.metrics import auroc


def _pair(part) -> tuple[GateInputs, torch.Tensor]:
    inputs, labels = part
    return inputs, torch.as_tensor(labels, dtype=torch.long).cpu()


def domain_metrics(gate, seen_inputs: GateInputs, unseen_inputs: GateInputs, threshold: float, *,
                   scores: tuple | None = None) -> dict:
    """AUROC of the domain score and the routing rates at `threshold` (see the module docstring);
    scores: the gate's (seen, unseen) domain scores when the caller has them."""
    seen_score, unseen_score = scores or (gate.domain_score(seen_inputs), gate.domain_score(unseen_inputs))
    seen_ok = float((seen_score <= threshold).float().mean()) if len(seen_score) else float("nan")
    unseen_ok = float((unseen_score > threshold).float().mean()) if len(unseen_score) else float("nan")
    margins, is_unseen = _domain_margins(seen_score, unseen_score, threshold)
    return {"domain_auroc": auroc(seen_score, unseen_score), "domain_accuracy": 50 * (seen_ok + unseen_ok),
            "seen_called_seen": 100 * seen_ok, "unseen_called_unseen": 100 * unseen_ok,
            "temperature": float(gate.temperature), **p_unseen_calibration(margins / gate.temperature, is_unseen)}


def _domain_margins(seen_score: torch.Tensor, unseen_score: torch.Tensor, threshold: float):
    """(margins (N,) = score - threshold, is_unseen (N,) 0/1) of the seen then the unseen images, float64."""
    margins = torch.cat([seen_score, unseen_score]).double() - threshold
    return margins, torch.cat([torch.zeros(len(seen_score)), torch.ones(len(unseen_score))]).double()


def _bernoulli_nll(logits: torch.Tensor, is_unseen: torch.Tensor) -> torch.Tensor:
    """Mean over the last dimension of -log p(domain) with p_unseen = sigmoid(logits) (stable form)."""
    return (torch.nn.functional.softplus(logits) - is_unseen * logits).mean(-1)


def p_unseen_calibration(logits: torch.Tensor, is_unseen: torch.Tensor, bins: int = 10) -> dict:
    """{"p_unseen_nll", "p_unseen_ece"} of p = sigmoid(logits) (N,) against the domains is_unseen (N,) 0/1:
    the mean negative log-likelihood, and the expected calibration error of the decision's confidence
    max(p, 1 - p) over `bins` equal-width bins of [0.5, 1] (the share of images in a bin times the gap
    between its mean confidence and its accuracy, summed)."""
    if len(logits) == 0:
        return {"p_unseen_nll": float("nan"), "p_unseen_ece": float("nan")}
    logits, y = logits.double(), is_unseen.double()
    nll = float(_bernoulli_nll(logits, y))
    p = torch.sigmoid(logits)
    confidence = torch.maximum(p, 1 - p)
    correct = ((p > 0.5).double() == y).double()
    index = ((confidence - 0.5) * 2 * bins).long().clamp(0, bins - 1)
    ece = 0.0
    for b in range(bins):
        chosen = index == b
        if chosen.any():
            ece += float(chosen.double().mean() * (confidence[chosen].mean() - correct[chosen].mean()).abs())
    return {"p_unseen_nll": nll, "p_unseen_ece": ece}


def oracle_domain(seen, unseen, class_ids, seen_classes) -> dict:
    """U, S, H (percent) when every image goes to its true domain's expert: {"oracle_U", "oracle_S", "oracle_H"}."""
    (seen_inputs, seen_labels), (unseen_inputs, unseen_labels) = _pair(seen), _pair(unseen)
    columns = (routed_predictions(seen_inputs.scores, seen_inputs.seen_columns,
                                  torch.zeros(len(seen_labels), dtype=torch.bool)),
               routed_predictions(unseen_inputs.scores, unseen_inputs.seen_columns,
                                  torch.ones(len(unseen_labels), dtype=torch.bool)))
    r = evaluate_scores(seen_inputs.scores, seen_labels, unseen_inputs.scores, unseen_labels, class_ids,
                        seen_classes, columns=columns)
    return {f"oracle_{key}": r[key] for key in ("U", "S", "H")}


def evaluate_gate(gate, seen, unseen, class_ids, seen_classes, *, threshold: float | None = None,
                  zsl_unseen_scores=None, zsl_class_ids=None, scores: tuple | None = None) -> dict:
    """The GZSL metrics of `gate`'s decisions at `threshold` (default gate.threshold), with the domain
    metrics and the oracle-domain ceiling (module docstring). scores: domain_scores' pair, when the caller
    has it."""
    (seen_inputs, seen_labels), (unseen_inputs, unseen_labels) = _pair(seen), _pair(unseen)
    threshold = gate.threshold if threshold is None else float(threshold)
    scores = scores or domain_scores(gate, seen, unseen)  # once: a Gaussian's is costly
    columns = (gate.predict(seen_inputs, threshold, scores[0]), gate.predict(unseen_inputs, threshold, scores[1]))
    result = evaluate_scores(seen_inputs.scores, seen_labels, unseen_inputs.scores, unseen_labels, class_ids,
                             seen_classes, zsl_unseen_scores=zsl_unseen_scores, zsl_class_ids=zsl_class_ids,
                             gamma=-threshold if gate.kind == "stacking" else 0.0, columns=columns)
    result.update(gate=gate.kind, threshold=threshold)
    result.update(domain_metrics(gate, seen_inputs, unseen_inputs, threshold, scores=scores))
    result.update(oracle_domain(seen, unseen, class_ids, seen_classes))
    return result


def threshold_candidates(gate, seen_score: torch.Tensor, unseen_score: torch.Tensor) -> list[float]:
    """Stacking: -gamma for every gamma of CALIBRATION_GRID (as calibrated stacking always chose). Other
    gates: THRESHOLD_CANDIDATES quantiles of the pooled domain scores (their scales differ by gate)."""
    if gate.kind == "stacking":
        return [-gamma for gamma in CALIBRATION_GRID]
    scores = torch.cat([seen_score, unseen_score]).double()
    levels = torch.linspace(0, 1, THRESHOLD_CANDIDATES, dtype=torch.float64)
    return sorted(set(torch.quantile(scores, levels).tolist()))


def domain_scores(gate, seen, unseen) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate's domain scores of the seen and of the unseen images: computed once, read by
    choose_threshold, fit_gate_temperature and evaluate_gate."""
    return gate.domain_score(_pair(seen)[0]), gate.domain_score(_pair(unseen)[0])


def choose_threshold(gate, seen, unseen, class_ids, seen_classes, *, scores: tuple | None = None
                     ) -> tuple[float, list[dict]]:
    """The threshold with the best H on these (VALIDATION) images. Ties go to the least correction for
    stacking (smallest gamma) and to the middle of the tied candidates otherwise. scores: domain_scores'.
    Returns (threshold, [{"threshold", "U", "S", "H"} for each candidate])."""
    (seen_inputs, seen_labels), (unseen_inputs, unseen_labels) = _pair(seen), _pair(unseen)
    curve = []
    seen_score, unseen_score = scores or domain_scores(gate, seen, unseen)
    for threshold in threshold_candidates(gate, seen_score, unseen_score):
        columns = (gate.predict(seen_inputs, threshold, seen_score),
                   gate.predict(unseen_inputs, threshold, unseen_score))
        r = evaluate_scores(seen_inputs.scores, seen_labels, unseen_inputs.scores, unseen_labels, class_ids,
                            seen_classes, columns=columns)
        curve.append({"threshold": float(threshold), "U": r["U"], "S": r["S"], "H": r["H"]})
    return best_threshold(curve, gate.kind), curve


def best_threshold(curve: list[dict], kind: str) -> float:
    """The best-H threshold of a curve [{"threshold", "H", ...}]: ties go to the smallest |threshold| for
    stacking (the least correction: smallest gamma, as calibrated stacking always chose) and to the middle
    of the tied candidates (in threshold order) for the other gates."""
    best = max(row["H"] for row in curve)
    tied = sorted((row for row in curve if row["H"] == best), key=lambda row: row["threshold"])
    if kind == "stacking":
        return min(tied, key=lambda row: abs(row["threshold"]))["threshold"]
    return tied[len(tied) // 2]["threshold"]


TEMPERATURE_GRID = torch.logspace(-4, 4, 801, dtype=torch.float64)  # x 1 / std of the margins; 1 % steps


@torch.no_grad()
def fit_temperature(margins: torch.Tensor, is_unseen: torch.Tensor) -> float:
    """The T > 0 that maximises the likelihood of sigmoid(margin / T) for these images' domains (margins
    (N,) = score - threshold on VALIDATION images, is_unseen (N,) 0/1): Platt scaling with the intercept
    held at the threshold, so the decision never moves. The negative log-likelihood is convex in 1 / T; it
    is minimised over a log grid (1 % steps) scaled by the margins' spread. A score that does not separate
    (or separates backwards) gets the grid's largest T: p_unseen ~ 0.5 everywhere, as it should."""
    m = torch.as_tensor(margins, dtype=torch.float64).flatten()
    y = torch.as_tensor(is_unseen, dtype=torch.float64).flatten()
    if len(m) == 0 or not bool(torch.isfinite(m).all()):
        raise ValueError("fit_temperature needs finite margins of at least one image")
    spread = float(m.std()) if len(m) > 1 and float(m.std()) > 0 else max(float(m.abs().max()), 1.0)
    betas = TEMPERATURE_GRID / spread                                    # candidate 1 / T
    nll = _bernoulli_nll(betas[:, None] * m[None, :], y[None, :])       # (G,)
    return float(1.0 / betas[int(nll.argmin())])


def fit_gate_temperature(gate, seen, unseen, *, scores: tuple | None = None) -> float:
    """fit_temperature of `gate`'s margins at its threshold on these (VALIDATION) images."""
    return fit_temperature(*_domain_margins(*(scores or domain_scores(gate, seen, unseen)), gate.threshold))
