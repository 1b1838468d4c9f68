"""One BSeGN run on one split, end to end: the library path of train.py's pipeline (and of the benches).

    run = run_bsegn(feature_set, split, config, *, seed=0, gates={"stacking": None, "learned": None},
                    unseen_ranking="gzsl", accelerator=None, run_dir=None)
    run.result, run.trained, run.gzsl_classifier, run.zsl_classifier, run.gates

`split` is a ZSLSplit with seen_classes / unseen_classes, semantics and locs trainval / test_seen /
test_unseen (the validation protocol's split from bsegn.datasets.protocol.validation_protocol, or the
final one). Training uses trainval only; test locs are used for the returned metrics only.
The seen-or-unseen decision is a gate (bsegn.generative.gates; "stacking" is calibrated stacking, whose
threshold is -gamma): pass each gate's threshold chosen on the validation protocol; None (on a
VALIDATION split only: a final split is refused) chooses it there by best H.
The research harness (epoch selection on validation, the oracle, ESZSL) is bench/harness.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bsegn.core.errors import ConfigError
from bsegn.generative.classifier import class_log_probs, fit_final_classifier, gzsl_scores
from bsegn.generative.config import BSeGNConfig
from bsegn.generative.evaluation import evaluate_scores
from bsegn.generative.gate_evaluation import choose_threshold, domain_scores, evaluate_gate, fit_gate_temperature
from bsegn.generative.gates import DomainGate, fit_gates, gate_inputs
from bsegn.generative.model import TrainedBSeGN, train_bsegn
from bsegn.generative.networks import FinalClassifier


@dataclass
class BSeGNRun:
    """What run_bsegn returns: the metrics (percent), the trained model, its two final classifiers and
    its fitted gates ({kind: gate with its threshold}, the headline gate first)."""

    result: dict[str, Any]
    trained: TrainedBSeGN
    gzsl_classifier: FinalClassifier
    zsl_classifier: FinalClassifier
    gates: dict[str, DomainGate]


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


def refuse_choosing_on_final(split, what: str) -> None:
    """Choosing a threshold (gamma) reads the split's test labels: only a validation-protocol split
    (bsegn.datasets.protocol.validation_protocol, val classes as unseen) may be chosen on."""
    if getattr(split, "protocol", "final") != "validation":
        raise ConfigError(
            f"{what} would be chosen on the test images of {getattr(split, 'benchmark', 'this split')!r}, a "
            "final-protocol split: "
            "choose it on the validation protocol (bsegn.datasets.protocol.validation_protocol) and pass it "
            "here, or give it yourself (e.g. threshold 0: no correction)")


def measure_gates(trained, data: dict, gzsl, zsl, seen_scores, unseen_scores, zsl_scores,
                  thresholds: dict[str, float | None], unseen_ranking: str = "gzsl", *, split=None,
                  temperatures: dict[str, float] | None = None):
    """Fit every gate of `thresholds` on data's trainval and evaluate it on data's test images.
    thresholds: {gate kind: threshold, or None to choose it here (validation splits only), and with it
    p_unseen's temperature (fit_temperature on the same images)}; temperatures: {gate kind: temperature}
    for the gates whose threshold is given (those chosen on the validation protocol; default 1).
    Returns ({kind: fitted gate, threshold set}, {kind: evaluate_gate result (+ "curve" when chosen)})."""
    kinds = list(thresholds)
    if any(value is None for value in thresholds.values()) and split is not None:
        refuse_choosing_on_final(split, "a gate threshold (calibrated stacking's gamma)")
    gates = fit_gates(kinds, trained, *data["trainval"], data["all_classes"], classifiers=(gzsl, zsl),
                      unseen_ranking=unseen_ranking)
    seen = (gate_inputs(trained, gzsl, zsl, data["test_seen"][0], kinds=kinds, scores=seen_scores),
            data["test_seen"][1])
    unseen = (gate_inputs(trained, gzsl, zsl, data["test_unseen"][0], kinds=kinds, scores=unseen_scores),
              data["test_unseen"][1])
    results = {}
    for kind, gate in gates.items():
        curve, scores = None, domain_scores(gate, seen, unseen)  # once per gate: a Gaussian's is costly
        if thresholds[kind] is None:
            gate.threshold, curve = choose_threshold(gate, seen, unseen, data["all_classes"], data["seen"],
                                                     scores=scores)
            gate.temperature = fit_gate_temperature(gate, seen, unseen, scores=scores)
        else:
            gate.threshold = float(thresholds[kind])
            gate.temperature = float((temperatures or {}).get(kind, 1.0))
        results[kind] = evaluate_gate(gate, seen, unseen, data["all_classes"], data["seen"],
                                      zsl_unseen_scores=zsl_scores, zsl_class_ids=data["unseen"], scores=scores)
        if curve is not None:
            results[kind]["curve"] = curve
    return gates, results


def run_bsegn(feature_set, split, config: BSeGNConfig, *, seed: int = 0,
              gates: dict[str, float | None] | None = None, unseen_ranking: str = "gzsl", accelerator=None,
              run_dir=None, show_progress: bool = True, temperatures: dict[str, float] | None = None) -> BSeGNRun:
    """Train on split's trainval, fit the GZSL (split's classes) and ZSL (unseen) classifiers and the
    gates, evaluate. gates: {kind: threshold or None (chosen here: validation splits only, else
    ConfigError)}, default {"stacking": 0.0} (no calibration); the FIRST gate makes the headline numbers.
    temperatures: p_unseen's temperature of each gate whose threshold is given (see measure_gates).
    result: the first gate's evaluate_gate keys (percent; "gamma" for stacking), "gates" {kind: its
    result without per-class tables}, "U/S/H_uncalibrated", "train_seconds", "seconds_per_epoch", and
    "calibration_curve" ([{"gamma", "U", "S", "H"}]) when stacking's gamma was chosen here."""
    gates = dict(gates or {"stacking": 0.0})
    if any(value is None for value in gates.values()):
        refuse_choosing_on_final(split, "a gate threshold (calibrated stacking's gamma)")
    data = split_tensors(feature_set, split)
    started = time.perf_counter()
    trained = train_bsegn(*data["trainval"], data["semantics"], data["seen"], data["unseen"], config, seed=seed,
                          accelerator=accelerator, run_dir=run_dir, show_progress=show_progress)
    train_seconds = time.perf_counter() - started
    gzsl, zsl, seen_scores, unseen_scores, zsl_scores = fit_and_score(trained, data, unseen_ranking)
    fitted, results = measure_gates(trained, data, gzsl, zsl, seen_scores, unseen_scores, zsl_scores, gates,
                                    unseen_ranking, temperatures=temperatures)
    headline = next(iter(gates))
    result = dict(results[headline])
    result["gates"] = {kind: {k: v for k, v in r.items() if not k.startswith("per_class")}
                       for kind, r in results.items()}
    if "curve" in result:
        if headline == "stacking":
            result["calibration_curve"] = [{"gamma": -row["threshold"], **{k: row[k] for k in "USH"}}
                                           for row in result["curve"]]
        del result["curve"]
    # The bias the model itself leaves, before any decision corrects it: the parts meant to balance
    # seen and unseen (balance loss, FEM) should show here even where a validation-chosen gate evens out H.
    raw = evaluate_scores(seen_scores, data["test_seen"][1], unseen_scores, data["test_unseen"][1],
                          data["all_classes"], data["seen"], gamma=0.0)
    result.update({f"{k}_uncalibrated": raw[k] for k in ("U", "S", "H")})
    result["train_seconds"] = train_seconds
    epoch_seconds = [row["seconds"] for row in getattr(trained, "history", [])]
    result["seconds_per_epoch"] = float(np.mean(epoch_seconds)) if epoch_seconds else None
    return BSeGNRun(result, trained, gzsl, zsl, fitted)
