"""One method on one split, end to end: the shared path of the benches and the app's pipeline.

    run_bsegn(feature_set, split, config, *, gamma=None, accelerator=None, run_dir=None) -> (result, trained, classifiers)
    run_eszsl(feature_set, split, gamma_reg, lam) -> result
    run_bsegn_oracle(feature_set, split, config, run_dir) -> result   # best epoch ON TEST, labelled; papers only

`split` is a ZSLSplit with seen_classes / unseen_classes and locs trainval / test_seen / test_unseen
(the validation protocol's split from bsegn.datasets.protocol.validation_protocol, or the final one).
Training uses trainval only; test locs are used for the returned metrics only.
Calibrated stacking (config.calibration): pass `gamma` chosen on the validation protocol; with
gamma=None on a VALIDATION split, the best-H gamma over config.calibration_grid is chosen there and
returned as result["gamma"] with the curve in result["calibration_curve"].
"""
from __future__ import annotations

import time

import numpy as np
import torch

from bsegn.generative.classifier import class_log_probs, fit_final_classifier
from bsegn.generative.config import BSeGNConfig
from bsegn.generative.eszsl import eszsl_scores, fit_eszsl
from bsegn.generative.evaluation import choose_calibration, evaluate_scores
from bsegn.generative.model import train_bsegn


def _part(feature_set, split, name):
    index = np.asarray(split.loc(name), dtype=np.int64)
    return torch.from_numpy(feature_set.features[index]), torch.from_numpy(feature_set.labels[index])


def split_classes(seen: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
    """The GZSL label space of a split: its seen and unseen classes (sorted). In the validation protocol
    the test-unseen classes are NOT in it: they must not act as decoys there, or validation would
    measure a different problem from the final one (which has every class)."""
    return torch.sort(torch.cat([seen, unseen])).values


def run_bsegn(feature_set, split, config: BSeGNConfig, *, gamma: float | None = None, accelerator=None,
              run_dir=None, show_progress: bool = True):
    """Train on split's trainval, fit the GZSL (all classes) and ZSL (unseen) classifiers, evaluate.
    Returns (result dict in percent + "train_seconds" + "seconds_per_epoch", trained, (gzsl, zsl))."""
    seen = torch.as_tensor(split.seen_classes, dtype=torch.long)
    unseen = torch.as_tensor(split.unseen_classes, dtype=torch.long)
    semantics = torch.as_tensor(split.semantics, dtype=torch.float32)
    train_x, train_y = _part(feature_set, split, "trainval")
    started = time.perf_counter()
    trained = train_bsegn(train_x, train_y, semantics, seen, unseen, config, accelerator=accelerator,
                          run_dir=run_dir, show_progress=show_progress)
    train_seconds = time.perf_counter() - started
    all_classes = split_classes(seen, unseen)
    gzsl = fit_final_classifier(trained, train_x, train_y, all_classes)
    zsl = fit_final_classifier(trained, None, None, unseen)
    seen_x, seen_y = _part(feature_set, split, "test_seen")
    unseen_x, unseen_y = _part(feature_set, split, "test_unseen")
    seen_scores = class_log_probs(trained, gzsl, seen_x).cpu()
    unseen_scores = class_log_probs(trained, gzsl, unseen_x).cpu()
    zsl_scores = class_log_probs(trained, zsl, unseen_x).cpu()
    curve = None
    if config.calibration and gamma is None:
        gamma, curve = choose_calibration(seen_scores, seen_y, unseen_scores, unseen_y, all_classes, seen,
                                          config.calibration_grid)
    result = evaluate_scores(seen_scores, seen_y, unseen_scores, unseen_y, all_classes, seen,
                             zsl_unseen_scores=zsl_scores, zsl_class_ids=unseen,
                             gamma=float(gamma) if config.calibration else 0.0)
    result["calibration_curve"] = curve
    result["train_seconds"] = train_seconds
    epoch_seconds = [row["seconds"] for row in getattr(trained, "history", [])]
    result["seconds_per_epoch"] = float(np.mean(epoch_seconds)) if epoch_seconds else None
    return result, trained, (gzsl, zsl)


ORACLE_LABEL = "ORACLE: best epoch picked on TEST (as TF-VAEGAN's and CE-GZSL's code do); for comparison with papers only"


def run_bsegn_oracle(feature_set, split, config: BSeGNConfig, run_dir, *, show_progress: bool = False) -> dict:
    """The oracle mode the field's public code uses, labelled as such: after EVERY generator epoch the
    classifiers are refitted and scored on test, and the best T1 and the best H over epochs are reported
    (each its own best epoch, no calibration). Never use it to choose anything; it exists so that our
    numbers can be set beside published ones. `run_dir` holds the checkpoints it steps through.
    Returns {"T1", "U", "S", "H" (of the best-H epoch), "T1_epoch", "H_epoch", "oracle": ORACLE_LABEL}."""
    seen = torch.as_tensor(split.seen_classes, dtype=torch.long)
    unseen = torch.as_tensor(split.unseen_classes, dtype=torch.long)
    semantics = torch.as_tensor(split.semantics, dtype=torch.float32)
    train_x, train_y = _part(feature_set, split, "trainval")
    seen_x, seen_y = _part(feature_set, split, "test_seen")
    unseen_x, unseen_y = _part(feature_set, split, "test_unseen")
    all_classes = split_classes(seen, unseen)
    best_t1, best_h = None, None
    for epoch in range(1, config.epochs + 1):
        trained = train_bsegn(train_x, train_y, semantics, seen, unseen, config, run_dir=run_dir,
                              show_progress=show_progress, max_epochs=1)  # resumes, one more epoch
        gzsl = fit_final_classifier(trained, train_x, train_y, all_classes)
        zsl = fit_final_classifier(trained, None, None, unseen)
        result = evaluate_scores(class_log_probs(trained, gzsl, seen_x).cpu(), seen_y,
                                 class_log_probs(trained, gzsl, unseen_x).cpu(), unseen_y, all_classes, seen,
                                 zsl_unseen_scores=class_log_probs(trained, zsl, unseen_x).cpu(), zsl_class_ids=unseen)
        if best_t1 is None or result["T1"] > best_t1[0]:
            best_t1 = (result["T1"], epoch)
        if best_h is None or result["H"] > best_h[0]["H"]:
            best_h = (result, epoch)
    result, h_epoch = best_h
    return {"T1": best_t1[0], "U": result["U"], "S": result["S"], "H": result["H"], "T1_epoch": best_t1[1],
            "H_epoch": h_epoch, "oracle": ORACLE_LABEL}


def run_eszsl(feature_set, split, gamma_reg: float, lam: float) -> dict:
    """ESZSL on split's trainval with the given (gamma, lambda), evaluated like BSeGN (uncalibrated)."""
    seen = torch.as_tensor(split.seen_classes, dtype=torch.long)
    unseen = torch.as_tensor(split.unseen_classes, dtype=torch.long)
    semantics = torch.as_tensor(split.semantics, dtype=torch.float32)
    all_classes = split_classes(seen, unseen)
    projection = fit_eszsl(*_part(feature_set, split, "trainval"), semantics, seen, gamma_reg, lam)
    seen_x, seen_y = _part(feature_set, split, "test_seen")
    unseen_x, unseen_y = _part(feature_set, split, "test_unseen")
    return evaluate_scores(eszsl_scores(projection, seen_x, semantics, all_classes), seen_y,
                           eszsl_scores(projection, unseen_x, semantics, all_classes), unseen_y, all_classes, seen)
