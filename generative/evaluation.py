"""Honest ZSL / GZSL evaluation (docs/protocol.md), in percent.

    evaluate_scores(seen_scores, seen_labels, unseen_scores, unseen_labels, class_ids, seen_classes,
                    *, zsl_unseen_scores=None, zsl_class_ids=None, gamma=0.0) -> dict
    CALIBRATION_GRID   calibrated stacking's gamma candidates (gate_evaluation.choose_threshold uses them)

Returned dict: T1 (unseen test among unseen classes only), U, S, H (per-class mean accuracies on
test_unseen / test_seen among ALL classes; H = 2US/(U+S)), gamma, per_class_gzsl {class id: %},
per_class_zsl {class id: %}. Any method that yields class scores (BSeGN's classifier, ESZSL) uses
`evaluate_scores` (BSeGN's scores come from bsegn.generative.experiment.fit_and_score), so all methods
are measured by the same code.
"""
from __future__ import annotations

import torch

from bsegn.generative.metrics import calibrated_predictions, harmonic_mean, mean_per_class_accuracy, per_class_accuracy

# Calibrated stacking's gamma candidates. gamma is subtracted from seen-class LOG-probabilities, so the
# grid spans several nats. Steps of 0.5 nat up to 15: on AwA1-Lampert validation, H rose from 9.5 to 14.8
# and fell back to 12.2 between gamma 6 and 11, so a 2-nat step (the grid had 6, 8, 10) could miss the
# peak by several H points.
CALIBRATION_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75) + tuple(x / 2 for x in range(2, 31)) + \
    (16.0, 18.0, 20.0, 25.0, 30.0)


def _as_long(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.long).cpu()


def _gzsl_accuracy(scores, labels, class_ids, seen_columns, gamma, classes, columns=None):
    if columns is None:
        columns = calibrated_predictions(scores.cpu().float(), seen_columns, gamma)
    predicted = class_ids[_as_long(columns)]
    labels = _as_long(labels)
    return mean_per_class_accuracy(predicted, labels, classes), per_class_accuracy(predicted, labels, classes)


def evaluate_scores(seen_scores, seen_labels, unseen_scores, unseen_labels, class_ids, seen_classes, *,
                    zsl_unseen_scores=None, zsl_class_ids=None, gamma: float = 0.0, columns=None) -> dict:
    """Scores (N, K) over `class_ids` (K,) (log-probabilities or any monotone score; gamma is subtracted
    from seen columns). T1 uses zsl_unseen_scores over zsl_class_ids when given, else the unseen
    columns of unseen_scores. columns: (seen test (N_s,), unseen test (N_u,)) predicted columns that
    replace calibrated stacking's argmax (a gate's decisions: bsegn.generative.gate_evaluation)."""
    class_ids = _as_long(class_ids)
    seen_classes = _as_long(seen_classes)
    seen_columns = torch.isin(class_ids, seen_classes)
    seen_in_test = torch.unique(_as_long(seen_labels))
    unseen_in_test = torch.unique(_as_long(unseen_labels))
    seen_pred, unseen_pred = columns if columns is not None else (None, None)
    s, s_per = _gzsl_accuracy(seen_scores, seen_labels, class_ids, seen_columns, gamma, seen_in_test, seen_pred)
    u, u_per = _gzsl_accuracy(unseen_scores, unseen_labels, class_ids, seen_columns, gamma, unseen_in_test,
                              unseen_pred)
    if zsl_unseen_scores is None:
        zsl_class_ids = class_ids[~seen_columns]
        zsl_unseen_scores = unseen_scores.cpu()[:, ~seen_columns]
    zsl_class_ids = _as_long(zsl_class_ids)
    predicted = zsl_class_ids[zsl_unseen_scores.cpu().float().argmax(1)]
    t1 = mean_per_class_accuracy(predicted, _as_long(unseen_labels), unseen_in_test)
    t1_per = per_class_accuracy(predicted, _as_long(unseen_labels), unseen_in_test)
    per_class = {int(c): 100 * float(a) for c, a in zip(seen_in_test.tolist(), s_per)}
    per_class.update({int(c): 100 * float(a) for c, a in zip(unseen_in_test.tolist(), u_per)})
    return {"T1": 100 * t1, "U": 100 * u, "S": 100 * s, "H": 100 * harmonic_mean(u, s), "gamma": float(gamma),
            "per_class_gzsl": per_class,
            "per_class_zsl": {int(c): 100 * float(a) for c, a in zip(unseen_in_test.tolist(), t1_per)}}
