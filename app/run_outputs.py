"""What a run leaves in its folder: metrics.json (collect_metrics), the bundle and the plots (write_outputs).

    metrics = collect_metrics(config, outcome, validation, accelerator, total_seconds)
    write_outputs(config, outcome, metrics, run_dir)

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


def collect_metrics(config: RunConfig, outcome, validation,
                    accelerator, total_seconds: float) -> dict[str, Any]:
    """metrics.json: T1, U, S, H first (percent, full precision), then how they were obtained."""
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


def write_outputs(config: RunConfig, outcome, metrics: dict, run_dir: Path) -> None:
    from bsegn.app.bundle import Bundle, save_bundle
    from bsegn.app.bundle.semantics import semantic_fields
    from bsegn.generative.open_world import open_world_rule

    atomic_write_json(run_dir / "metrics.json", metrics)
    split, features = outcome.split, outcome.features
    trainval = np.asarray(split.loc("trainval"))
    save_bundle(Bundle(backbone=outcome.backbone, trained=outcome.run.trained, gzsl=outcome.run.gzsl_classifier,
                       zsl=outcome.run.zsl_classifier, class_names=split.class_names,
                       attribute_names=split.attribute_names, data_config=data_config_of(config, outcome.backbone),
                       gate=outcome.run.gates[config.run.gate], unseen_ranking=config.run.unseen_ranking,
                       open_world=open_world_rule(outcome.run.trained, outcome.run.gzsl_classifier,
                                                  features.features[trainval], features.labels[trainval]),
                       metrics={k: metrics[k] for k in ("T1", "U", "S", "H", "protocol", "split_evaluated", "gate",
                                                        "domain_auroc", "oracle_H", "p_unseen_ece")},
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
