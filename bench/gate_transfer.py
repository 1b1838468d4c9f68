"""Do the gates' validation-chosen thresholds carry across a step in the number of classes? Validation only.

    python bench/gate_transfer.py --config flowers --data.images_root ../shared/data/flowers/images \
        --data.attributes_csv ../shared/data/flowers/classes.csv --data.features_file FEATURES.safetensors \
        [--seeds 0,1] [--gates stacking,combined,...] [--json OUT] [--threads 1]

A run chooses every gate's threshold on the validation protocol (the train classes as seen, the val classes
as unseen) and applies it to the final model, which has more seen classes (flowers: 46 -> 69). Whether a
threshold survives that step cannot be read on test without choosing on test, so this bench makes the same
step inside the validation protocol: a NESTED validation split (2/3 of the validation's seen classes as seen,
the other 1/3 as unseen; flowers: 31 -> 46 classes, the same 1.5x step) chooses the thresholds, and the
validation model is scored with them. For each gate it reports the validation model's H at its own best
threshold, at the nested threshold carried as a value (what `train.py` does), and at the nested threshold
carried as a quantile of the real seen TRAINING features' scores (the share of them on the seen side kept
instead of the score value). No test image is read anywhere.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from harness import _step_lookup
from zsl import load_features, log

GATES = ("stacking", "energy", "max_softmax", "gaussian", "learned", "semantic", "combined")


def nested_split(validation, seed: int):
    """A ZSLSplit whose validation protocol splits `validation`'s seen classes 2/3 seen, 1/3 unseen (seeded),
    over the same images; its test images (the validation's unseen classes) are left out entirely."""
    from bsegn.datasets.splits import ZSLSplit

    labels = np.asarray(validation.labels)
    seen = np.asarray(validation.seen_classes)
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(seen, size=len(seen) // 3, replace=False))
    inner = np.setdiff1d(seen, held)
    images = np.concatenate([validation.loc("trainval"), validation.loc("test_seen")])
    locs = {"train": np.sort(images[np.isin(labels[images], inner)]),
            "val": np.sort(images[np.isin(labels[images], held)]),
            "trainval": np.sort(images[np.isin(labels[images], inner)]),
            "test_seen": np.zeros(0, dtype=np.int64), "test_unseen": np.zeros(0, dtype=np.int64)}
    return ZSLSplit(benchmark=validation.benchmark, class_names=validation.class_names,
                    semantics=validation.semantics, locs=locs, seen_classes=inner, unseen_classes=held,
                    labels=validation.labels, image_files=validation.image_files)


def seen_training_scores(run, features, split, kinds, unseen_ranking: str):
    """{kind: (N,) domain scores of the split's real seen training features} under run's fitted gates."""
    from bsegn.generative.gates import gate_inputs

    rows = np.asarray(split.loc("trainval"))
    x = torch.from_numpy(features.features[rows])
    inputs = gate_inputs(run.trained, run.gzsl_classifier, run.zsl_classifier, x, kinds=list(kinds),
                         unseen_ranking=unseen_ranking)
    return {kind: run.gates[kind].domain_score(inputs).detach().cpu().numpy() for kind in kinds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="flowers")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--gates", default=",".join(GATES))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    from bsegn.datasets.protocol import validation_protocol
    from bsegn.generative.experiment import run_bsegn

    config, features, split = load_features(args.config, overrides)
    kinds = args.gates.split(",")
    out = {"config": args.config, "gates": {}, "seeds": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        validation = validation_protocol(split, seed=seed)
        nested = validation_protocol(nested_split(validation, seed), seed=seed)
        runs = {}
        for name, part in (("nested", nested), ("validation", validation)):
            log(f"seed {seed}: {name} protocol, {len(part.seen_classes)} seen / {len(part.unseen_classes)} unseen")
            runs[name] = run_bsegn(features, part, config.generative, seed=seed, gates={k: None for k in kinds},
                                   unseen_ranking=config.run.unseen_ranking, show_progress=False)
        ranking = config.run.unseen_ranking
        nested_train = seen_training_scores(runs["nested"], features, nested, kinds, ranking)
        valid_train = seen_training_scores(runs["validation"], features, validation, kinds, ranking)
        row = {}
        for kind in kinds:
            chosen = runs["nested"].result["gates"][kind]["threshold"]
            curve = runs["validation"].result["gates"][kind]
            own = _step_lookup(curve["curve"], curve["threshold"]) if "curve" in curve else curve
            kept_seen = float((nested_train[kind] <= chosen).mean())
            as_quantile = float(np.quantile(valid_train[kind], kept_seen))
            row[kind] = {"H_own": curve["H"], "H_value": _step_lookup(curve["curve"], chosen)["H"],
                         "H_quantile": _step_lookup(curve["curve"], as_quantile)["H"], "U_own": own["U"],
                         "threshold_nested": chosen, "threshold_own": curve["threshold"],
                         "threshold_quantile": as_quantile, "kept_seen_share": kept_seen}
            log(f"seed {seed} {kind:12s} H own {row[kind]['H_own']:.1f}  carried as value "
                f"{row[kind]['H_value']:.1f}  as quantile {row[kind]['H_quantile']:.1f}")
        out["seeds"].append({"seed": seed, "gates": row})
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    for kind in kinds:
        per = [s["gates"][kind] for s in out["seeds"]]
        out["gates"][kind] = {k: float(np.mean([p[k] for p in per])) for k in ("H_own", "H_value", "H_quantile")}
    print(f"{'gate':12s} {'H own':>7s} {'value':>7s} {'quantile':>8s}   (validation model, nested thresholds)")
    for kind, g in out["gates"].items():
        print(f"{kind:12s} {g['H_own']:7.1f} {g['H_value']:7.1f} {g['H_quantile']:8.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
