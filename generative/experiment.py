"""One BSeGN run on one split, end to end: the library path of train.py's pipeline (and of the benches).

    run = run_bsegn(feature_set, split, config, *, seed=0, calibration=False, gamma=None,
                    unseen_ranking="gzsl", accelerator=None, run_dir=None)
    run.result, run.trained, run.gzsl_classifier, run.zsl_classifier

`split` is a ZSLSplit with seen_classes / unseen_classes, semantics and locs trainval / test_seen /
test_unseen (the validation protocol's split from bsegn.datasets.protocol.validation_protocol, or the
final one). Training uses trainval only; test locs are used for the returned metrics only.
Calibrated stacking (calibration=True): pass `gamma` chosen on the validation protocol; with gamma=None
(on a VALIDATION split) the best-H gamma over evaluation.CALIBRATION_GRID is chosen there and returned as
result["gamma"], with the curve in result["calibration_curve"].
The research harness (epoch selection on validation, the oracle, ESZSL) is bench/harness.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bsegn.generative.classifier import class_log_probs, fit_final_classifier, gzsl_scores
from bsegn.generative.config import BSeGNConfig
from bsegn.generative.evaluation import CALIBRATION_GRID, choose_calibration, evaluate_scores
from bsegn.generative.model import TrainedBSeGN, train_bsegn
from bsegn.generative.networks import FinalClassifier


@dataclass
class BSeGNRun:
    """What run_bsegn returns: the metrics (percent), the trained model and its two final classifiers."""

    result: dict[str, Any]
    trained: TrainedBSeGN
    gzsl_classifier: FinalClassifier
    zsl_classifier: FinalClassifier


def split_classes(seen: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
    """The GZSL label space of a split: its seen and unseen classes (sorted). In the validation protocol
    the test-unseen classes are NOT in it: they must not act as decoys there, or validation would
    measure a different problem from the final one (which has every class)."""
    return torch.sort(torch.cat([seen, unseen])).values


def split_tensors(feature_set, split) -> dict:
    """The tensors every method needs from one split: class ids ("seen", "unseen", "all_classes"),
    "semantics" and the "trainval" / "test_seen" / "test_unseen" (features, labels) pairs."""
    def part(name):
        index = np.asarray(split.loc(name), dtype=np.int64)
        return torch.from_numpy(feature_set.features[index]), torch.from_numpy(feature_set.labels[index])

    seen = torch.as_tensor(split.seen_classes, dtype=torch.long)
    unseen = torch.as_tensor(split.unseen_classes, dtype=torch.long)
    return {"seen": seen, "unseen": unseen, "all_classes": split_classes(seen, unseen),
            "semantics": torch.as_tensor(split.semantics, dtype=torch.float32),
            **{name: part(name) for name in ("trainval", "test_seen", "test_unseen")}}


def fit_and_score(trained, data: dict, unseen_ranking: str = "gzsl"):
    """Fit the GZSL (split's classes, real seen + synthetic unseen) and ZSL (unseen, synthetic only)
    classifiers; score the test images. Returns (gzsl, zsl, seen_scores, unseen_scores, zsl_scores)."""
    gzsl = fit_final_classifier(trained, *data["trainval"], data["all_classes"])
    zsl = fit_final_classifier(trained, None, None, data["unseen"])
    zsl_unseen = class_log_probs(trained, zsl, data["test_unseen"][0])
    seen_scores = gzsl_scores(trained, gzsl, zsl, data["test_seen"][0], unseen_ranking=unseen_ranking)
    unseen_scores = gzsl_scores(trained, gzsl, zsl, data["test_unseen"][0], unseen_ranking=unseen_ranking,
                                zsl_scores=zsl_unseen)
    return gzsl, zsl, seen_scores.cpu(), unseen_scores.cpu(), zsl_unseen.cpu()


def run_bsegn(feature_set, split, config: BSeGNConfig, *, seed: int = 0, calibration: bool = False,
              gamma: float | None = None, unseen_ranking: str = "gzsl", accelerator=None, run_dir=None,
              show_progress: bool = True) -> BSeGNRun:
    """Train on split's trainval, fit the GZSL (split's classes) and ZSL (unseen) classifiers, evaluate.
    result: evaluate_scores' keys in percent, "U/S/H_uncalibrated", "train_seconds", "seconds_per_epoch",
    and "calibration_curve" when gamma was chosen here."""
    data = split_tensors(feature_set, split)
    seen, all_classes = data["seen"], data["all_classes"]
    started = time.perf_counter()
    trained = train_bsegn(*data["trainval"], data["semantics"], seen, data["unseen"], config, seed=seed,
                          accelerator=accelerator, run_dir=run_dir, show_progress=show_progress)
    train_seconds = time.perf_counter() - started
    gzsl, zsl, seen_scores, unseen_scores, zsl_scores = fit_and_score(trained, data, unseen_ranking)
    scored = (seen_scores, data["test_seen"][1], unseen_scores, data["test_unseen"][1], all_classes, seen)
    curve = None
    if calibration and gamma is None:
        gamma, curve = choose_calibration(*scored, CALIBRATION_GRID)
    result = evaluate_scores(*scored, zsl_unseen_scores=zsl_scores, zsl_class_ids=data["unseen"],
                             gamma=float(gamma) if calibration else 0.0)
    if curve is not None:
        result["calibration_curve"] = curve
    # The bias the model itself leaves, before calibrated stacking hides it: the parts meant to balance
    # seen and unseen (balance loss, FEM) should show here even where a validation-chosen gamma evens out H.
    raw = evaluate_scores(*scored, gamma=0.0)
    result.update({f"{k}_uncalibrated": raw[k] for k in ("U", "S", "H")})
    result["train_seconds"] = train_seconds
    epoch_seconds = [row["seconds"] for row in getattr(trained, "history", [])]
    result["seconds_per_epoch"] = float(np.mean(epoch_seconds)) if epoch_seconds else None
    return BSeGNRun(result, trained, gzsl, zsl)
