"""What a run leaves in its folder: metrics.json (collect_metrics), the bundle and the plots (write_outputs).

    choice = open_world_choice(config, validation or outcome)   # the "unknown" rule, chosen on validation
    rule, record = final_open_world(config, outcome, choice)     # fitted to the final model, measured on test
    metrics = collect_metrics(config, outcome, validation, accelerator, total_seconds, record)
    write_outputs(config, outcome, metrics, run_dir, rule)

`outcome` / `validation` are bsegn.app.pipeline.ProtocolOutcome (the validation one, when the thresholds
were chosen on it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bsegn.app.config import RunConfig
from bsegn.core.files import atomic_write_json
from bsegn.core.logs import get_logger

log = get_logger(__name__)


def open_world_choice(config: RunConfig, chooser) -> dict:
    """The open-world rule's record (bsegn.generative.open_world_choice.choose_open_world) chosen on `chooser`,
    the run's validation-protocol outcome (the validation run of a final run, or a validation-protocol run
    itself); without one (run.threshold given: no validation run) a record of why none was chosen."""
    from bsegn.generative.open_world_choice import choose_open_world, not_chosen

    if chooser is None or getattr(chooser.split, "protocol", "final") != "validation":
        return not_chosen("run.threshold was given, so no validation protocol ran to choose it: re-run train.py "
                          "with run.threshold null (the default)")
    choice = choose_open_world(chooser.run, chooser.features, chooser.split, config.run.gate,
                               unseen_ranking=config.run.unseen_ranking, seed=config.run.seed)
    if choice["threshold"] is None:
        log.info(f"open world: no rule chosen on validation: {choice['reason']}")
    else:
        log.info(f"open world: {choice['score']} threshold {choice['threshold']:.3g} (temperature "
                 f"{choice['temperature']:.3g}) chosen on validation, {len(choice['withheld_classes'])} val classes "
                 f"withheld: AUROC {choice['auroc']:.3f}, {choice['caught']:.1f} % of their "
                 f"{choice['unknown_photos']} photos caught, known H {choice['H_off']:.1f} -> {choice['H_on']:.1f}")
    return choice


def final_open_world(config: RunConfig, outcome, choice: dict):
    """(the OpenWorldRule for the bundle or None, the run's open-world record): choice's score fitted to the
    final model with the threshold and temperature chosen on validation (as the gates' are carried), and, on a
    final-protocol run, what it does to the known test photos (record["test"]: the share answered unknown and
    the known classes' U/S/H with the reject option off and on; measured once, after every choice)."""
    import torch

    from bsegn.generative.experiment import split_tensors
    from bsegn.generative.open_world import open_world_rule
    from bsegn.generative.open_world_choice import gate_answers, open_world_metrics

    split, features, run = outcome.split, outcome.features, outcome.run
    trainval = np.asarray(split.loc("trainval"))
    rule = open_world_rule(run.trained, run.gzsl_classifier, features.features[trainval], features.labels[trainval],
                           choice)
    record = dict(choice)
    if rule is None or config.run.protocol != "final":
        return rule, record
    data = split_tensors(features, split)
    x = torch.cat([data["test_seen"][0], data["test_unseen"][0]])
    y = torch.cat([data["test_seen"][1], data["test_unseen"][1]])
    correct = gate_answers(run.trained, run.gzsl_classifier, run.zsl_classifier, run.gates[config.run.gate], x,
                           config.run.unseen_ranking) == y
    z = rule.scorer.score(run.trained, run.gzsl_classifier, x)
    measured = open_world_metrics(z, z[:0], rule.threshold, correct, y, data["seen"], data["unseen"])
    record["test"] = {k: v for k, v in measured.items() if k not in ("auroc", "caught")}  # no unknowns on test
    log.info(f"open world on the test images: {measured['known_rejected']:.1f} % of the known photos answered unknown"
             f", H {measured['H_off']:.1f} -> {measured['H_on']:.1f}")
    return rule, record


def collect_metrics(config: RunConfig, outcome, validation,
                    accelerator, total_seconds: float, open_world: dict | None = None) -> dict[str, Any]:
    """metrics.json: T1, U, S, H first (percent, full precision), then how they were obtained (open_world: the
    record final_open_world returns)."""
    result, names = outcome.result, outcome.split.class_names
    protocol = config.run.protocol
    return {"T1": result["T1"], "U": result["U"], "S": result["S"], "H": result["H"],
            "protocol": protocol, "benchmark": config.data.benchmark,
            "semantics": outcome.split.semantic_kind, "text_encoder_id": outcome.split.text_encoder_id,
            "split_evaluated": "val classes (validation protocol)" if protocol == "validation" else "test (once)",
            "gate": result["gate"], "threshold": result["threshold"],
            "threshold_chosen_on": "given" if config.run.threshold is not None else "validation",
            "gamma": result.get("gamma", 0.0),
            **{key: result[key] for key in ("domain_auroc", "domain_accuracy", "seen_called_seen",
                                            "unseen_called_unseen", "oracle_U", "oracle_S", "oracle_H",
                                            "temperature", "p_unseen_nll", "p_unseen_ece")},
            "gates": result["gates"],
            "validation_gates": (validation.result["gates"] if validation else None),
            "open_world": open_world,
            "unseen_ranking": config.run.unseen_ranking,
            "seeds": [config.run.seed],
            "device": str(accelerator.device), "processes": accelerator.num_processes,
            "mixed_precision": str(accelerator.mixed_precision),
            "per_class_gzsl": _named(result["per_class_gzsl"], names),
            "per_class_zsl": _named(result["per_class_zsl"], names),
            "calibration_curve": (validation or outcome).result.get("calibration_curve"),
            "seconds": {"generative": outcome.generative_seconds,
                        "per_generator_epoch": result.get("seconds_per_epoch"), "total": total_seconds}}


def _named(per_class: dict, class_names: list[str]) -> dict[str, float]:
    return {class_names[int(c)]: float(a) for c, a in per_class.items()}


def data_config_of(config: RunConfig, backbone) -> dict:
    return {} if backbone is None else backbone.data_config_at(config.backbone.image_size)


def write_outputs(config: RunConfig, outcome, metrics: dict, run_dir: Path, open_world=None) -> None:
    """metrics.json, the bundle (open_world: its OpenWorldRule, final_open_world's; None: closed world), plots."""
    from bsegn.app.bundle import Bundle, save_bundle
    from bsegn.app.bundle.semantics import semantic_fields

    atomic_write_json(run_dir / "metrics.json", metrics)
    split, features = outcome.split, outcome.features
    trainval = np.asarray(split.loc("trainval"))
    save_bundle(Bundle(backbone=outcome.backbone, trained=outcome.run.trained, gzsl=outcome.run.gzsl_classifier,
                       zsl=outcome.run.zsl_classifier, class_names=split.class_names,
                       attribute_names=split.attribute_names, data_config=data_config_of(config, outcome.backbone),
                       gate=outcome.run.gates[config.run.gate], unseen_ranking=config.run.unseen_ranking,
                       open_world=open_world,
                       metrics={k: metrics.get(k) for k in ("T1", "U", "S", "H", "protocol", "split_evaluated", "gate",
                                                            "domain_auroc", "oracle_H", "p_unseen_ece", "open_world")},
                       train_features=features.features[trainval], train_labels=features.labels[trainval],
                       benchmark=config.data.benchmark, run_config=config.to_dict(), **semantic_fields(split)),
                run_dir / "bundle")
    try:
        from bsegn.app.plots import write_plots

        write_plots(run_dir, metrics, outcome)
    except ImportError as error:
        log.warning(f"plots skipped: {error} (matplotlib is a dependency of bsegn: reinstall it)")


def demo_prediction(run_dir: Path, outcome_split, image_root: Path) -> str | None:
    """Predict one test image of an unseen class with the written bundle (what `predict` would print)."""
    from bsegn.app.bundle import load_bundle
    from bsegn.app.inference import Predictor

    unseen = outcome_split.loc("test_unseen")
    if not len(unseen):
        return None
    path = Path(image_root) / outcome_split.image_files[int(unseen[0])]
    truth = outcome_split.class_names[int(outcome_split.labels[int(unseen[0])])]
    for prediction in Predictor(load_bundle(run_dir)).predict_paths([path], top_k=3):
        return f"{prediction.to_text()}\n    (true class: {truth}, an unseen class)"
    return None
