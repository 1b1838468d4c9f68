"""One method on one split, end to end: the shared path of the benches and the app's pipeline.

    run_bsegn(feature_set, split, config, *, gamma=None, accelerator=None, run_dir=None) -> (result, trained, classifiers)
    run_eszsl(feature_set, split, gamma_reg, lam) -> result
    select_on_validation(feature_set, validation_split, config, run_dir, epochs, seeds=None) -> {"epochs", "gamma", ...}
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
from pathlib import Path

import numpy as np
import torch

from bsegn.generative.classifier import class_log_probs, fit_final_classifier, gzsl_scores
from bsegn.generative.config import BSeGNConfig
from bsegn.generative.eszsl import eszsl_scores, fit_eszsl
from bsegn.generative.evaluation import best_calibration_point, choose_calibration, evaluate_scores
from bsegn.generative.model import train_bsegn


def _part(feature_set, split, name):
    index = np.asarray(split.loc(name), dtype=np.int64)
    return torch.from_numpy(feature_set.features[index]), torch.from_numpy(feature_set.labels[index])


def split_classes(seen: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
    """The GZSL label space of a split: its seen and unseen classes (sorted). In the validation protocol
    the test-unseen classes are NOT in it: they must not act as decoys there, or validation would
    measure a different problem from the final one (which has every class)."""
    return torch.sort(torch.cat([seen, unseen])).values


def _split_tensors(feature_set, split) -> dict:
    """The tensors every method needs from one split: class ids, semantics, the GZSL label space and the
    trainval / test_seen / test_unseen (features, labels) pairs."""
    seen = torch.as_tensor(split.seen_classes, dtype=torch.long)
    unseen = torch.as_tensor(split.unseen_classes, dtype=torch.long)
    return {"seen": seen, "unseen": unseen, "all_classes": split_classes(seen, unseen),
            "semantics": torch.as_tensor(split.semantics, dtype=torch.float32),
            **{name: _part(feature_set, split, name) for name in ("trainval", "test_seen", "test_unseen")}}


def _fit_and_score(trained, data: dict):
    """Fit the GZSL (split's classes, real seen + synthetic unseen) and ZSL (unseen, synthetic only)
    classifiers; score the test images. Returns (gzsl, zsl, seen_scores, unseen_scores, zsl_scores)."""
    gzsl = fit_final_classifier(trained, *data["trainval"], data["all_classes"])
    zsl = fit_final_classifier(trained, None, None, data["unseen"])
    zsl_unseen = class_log_probs(trained, zsl, data["test_unseen"][0])
    return (gzsl, zsl, gzsl_scores(trained, gzsl, zsl, data["test_seen"][0]).cpu(),
            gzsl_scores(trained, gzsl, zsl, data["test_unseen"][0], zsl_scores=zsl_unseen).cpu(), zsl_unseen.cpu())


def run_bsegn(feature_set, split, config: BSeGNConfig, *, gamma: float | None = None, accelerator=None,
              run_dir=None, show_progress: bool = True):
    """Train on split's trainval, fit the GZSL (all classes) and ZSL (unseen) classifiers, evaluate.
    Returns (result dict in percent + "train_seconds" + "seconds_per_epoch", trained, (gzsl, zsl))."""
    data = _split_tensors(feature_set, split)
    seen, unseen, all_classes = data["seen"], data["unseen"], data["all_classes"]
    started = time.perf_counter()
    trained = train_bsegn(*data["trainval"], data["semantics"], seen, unseen, config, accelerator=accelerator,
                          run_dir=run_dir, show_progress=show_progress)
    train_seconds = time.perf_counter() - started
    gzsl, zsl, seen_scores, unseen_scores, zsl_scores = _fit_and_score(trained, data)
    seen_y, unseen_y = data["test_seen"][1], data["test_unseen"][1]
    curve = None
    if config.calibration and gamma is None:
        gamma, curve = choose_calibration(seen_scores, seen_y, unseen_scores, unseen_y, all_classes, seen,
                                          config.calibration_grid)
    result = evaluate_scores(seen_scores, seen_y, unseen_scores, unseen_y, all_classes, seen,
                             zsl_unseen_scores=zsl_scores, zsl_class_ids=unseen,
                             gamma=float(gamma) if config.calibration else 0.0)
    result["calibration_curve"] = curve
    # The bias the model itself leaves, before calibrated stacking hides it: the parts meant to balance
    # seen and unseen (balance loss, FEM) should show here even where a validation-chosen gamma evens out H.
    raw = evaluate_scores(seen_scores, seen_y, unseen_scores, unseen_y, all_classes, seen, gamma=0.0)
    result.update({f"{k}_uncalibrated": raw[k] for k in ("U", "S", "H")})
    result["train_seconds"] = train_seconds
    epoch_seconds = [row["seconds"] for row in getattr(trained, "history", [])]
    result["seconds_per_epoch"] = float(np.mean(epoch_seconds)) if epoch_seconds else None
    return result, trained, (gzsl, zsl)


ORACLE_LABEL = "ORACLE: best epoch picked on TEST (as TF-VAEGAN's and CE-GZSL's code do); for comparison with papers only"


def score_epochs(feature_set, split, config: BSeGNConfig, run_dir, epochs, *, choose_gamma: bool,
                 show_progress: bool = False) -> list[dict]:
    """Train on split's trainval up to max(epochs); after each epoch in `epochs` refit the classifiers and
    score split's test locs. With choose_gamma (config.calibration on a VALIDATION split) each row's gamma
    is the best-H gamma of that epoch's scores; otherwise rows are uncalibrated. `run_dir` holds the
    checkpoint training resumes from between scored epochs.
    Returns one result dict per scored epoch (evaluate_scores' keys + "epoch"), in epoch order."""
    data = _split_tensors(feature_set, split)
    wanted = sorted({int(e) for e in epochs})
    if not wanted or wanted[0] < 1:
        raise ValueError(f"epochs to score must be >= 1, got {list(epochs)}")
    config = config.replace(epochs=wanted[-1])
    rows, done = [], 0
    for epoch in wanted:
        trained = train_bsegn(*data["trainval"], data["semantics"], data["seen"], data["unseen"], config,
                              run_dir=run_dir, show_progress=show_progress, max_epochs=epoch - done)
        done = epoch
        _, _, seen_scores, unseen_scores, zsl_scores = _fit_and_score(trained, data)
        scored = (seen_scores, data["test_seen"][1], unseen_scores, data["test_unseen"][1], data["all_classes"],
                  data["seen"])
        gamma, curve = 0.0, None
        if choose_gamma:
            gamma, curve = choose_calibration(*scored, config.calibration_grid)
        result = evaluate_scores(*scored, zsl_unseen_scores=zsl_scores, zsl_class_ids=data["unseen"],
                                 gamma=float(gamma))
        result.update(epoch=epoch, calibration_curve=curve)
        rows.append(result)
    return rows


def _mean_over_seeds(rows: list[dict], calibrated: bool) -> dict:
    """One validation row per seed for the same epoch -> their mean: T1 averaged, and with calibration the
    gamma whose H AVERAGED over the seeds is best (so one seed's lucky peak does not set gamma)."""
    out = {"epoch": rows[0]["epoch"], "T1": float(np.mean([r["T1"] for r in rows])), "seeds": len(rows)}
    if not calibrated:
        out.update({k: float(np.mean([r[k] for r in rows])) for k in ("U", "S", "H")}, gamma=0.0)
        return out
    curves = [r["calibration_curve"] for r in rows]
    mean_curve = [{"gamma": points[0]["gamma"], **{k: float(np.mean([p[k] for p in points])) for k in ("U", "S", "H")}}
                  for points in zip(*curves)]
    out.update(best_calibration_point(mean_curve), calibration_curve=mean_curve)
    return out


def select_on_validation(feature_set, validation, config: BSeGNConfig, run_dir, epochs, *, seeds=None) -> dict:
    """The number of generator epochs (among `epochs`) and, with calibration on, gamma: both chosen on the
    VALIDATION split by T1 + H (gamma by H at each epoch). `seeds` (default: config.seed alone) trains one
    validation model per seed and chooses on their mean (gamma on the mean H curve), which steadies the
    choice where the H-against-gamma curve peaks sharply. Returns {"epochs", "gamma", "validation": the
    chosen row, "rows": every scored epoch (averaged over seeds)}."""
    seeds = [config.seed] if seeds is None else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: at least one validation seed is needed")
    per_seed = [score_epochs(feature_set, validation, config.replace(seed=seed), Path(run_dir) / f"seed-{seed}",
                             epochs, choose_gamma=config.calibration) for seed in seeds]
    if len(seeds) == 1:
        rows = per_seed[0]
    else:
        rows = [_mean_over_seeds(list(same_epoch), config.calibration) for same_epoch in zip(*per_seed)]
    best = max(rows, key=lambda r: (r["T1"] + r["H"], -r["epoch"]))  # ties: the cheaper, earlier epoch
    return {"epochs": best["epoch"], "gamma": best["gamma"] if config.calibration else None,
            "validation": best, "rows": rows}


def run_bsegn_oracle(feature_set, split, config: BSeGNConfig, run_dir, *, show_progress: bool = False) -> dict:
    """The oracle mode the field's public code uses, labelled as such: after EVERY generator epoch the
    classifiers are refitted and scored on test, and the best T1 and the best H over epochs are reported
    (each its own best epoch, no calibration). Never use it to choose anything; it exists so that our
    numbers can be set beside published ones. `run_dir` holds the checkpoints it steps through.
    Returns {"T1", "U", "S", "H" (of the best-H epoch), "T1_epoch", "H_epoch", "oracle": ORACLE_LABEL}."""
    rows = score_epochs(feature_set, split, config, run_dir, range(1, config.epochs + 1), choose_gamma=False,
                        show_progress=show_progress)
    best_t1 = max(rows, key=lambda r: r["T1"])
    best_h = max(rows, key=lambda r: r["H"])
    return {"T1": best_t1["T1"], "U": best_h["U"], "S": best_h["S"], "H": best_h["H"], "T1_epoch": best_t1["epoch"],
            "H_epoch": best_h["epoch"], "oracle": ORACLE_LABEL}


def run_eszsl(feature_set, split, gamma_reg: float, lam: float) -> dict:
    """ESZSL on split's trainval with the given (gamma, lambda), evaluated like BSeGN (uncalibrated)."""
    data = _split_tensors(feature_set, split)
    seen, semantics, all_classes = data["seen"], data["semantics"], data["all_classes"]
    projection = fit_eszsl(*data["trainval"], semantics, seen, gamma_reg, lam)
    (seen_x, seen_y), (unseen_x, unseen_y) = data["test_seen"], data["test_unseen"]
    return evaluate_scores(eszsl_scores(projection, seen_x, semantics, all_classes), seen_y,
                           eszsl_scores(projection, unseen_x, semantics, all_classes), unseen_y, all_classes, seen)
