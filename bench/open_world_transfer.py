"""Does the open-world rule's validation-chosen threshold carry across a step in the number of classes?
Validation only (bench/gate_transfer.py's question, for the "unknown" answer of bsegn.generative.open_world_choice).

    python bench/open_world_transfer.py --config flowers --data.images_root ../shared/data/flowers/images \
        --data.attributes_csv ../shared/data/flowers/classes.csv --data.features_file FEATURES.safetensors \
        [--seeds 0] [--json OUT] [--threads 1]

train.py chooses the rule's threshold on the validation model (train classes seen, val classes unseen) and the
final model uses it with more seen classes. This bench makes the same step inside the validation protocol: a
NESTED validation split (gate_transfer.nested_split: 2/3 of the validation's seen classes seen, 1/3 unseen)
chooses the threshold exactly as train.py does (choose_open_world: a third of its val classes withheld as
unknowns), and the validation model is measured, with ITS withheld classes as unknowns, at its own chosen
threshold and at the nested one carried as a value. No test image is read anywhere.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from gate_transfer import nested_split
from zsl import load_features, log


def measured_at(run, features, split, gate_kind: str, threshold: float | None, seed: int, unseen_ranking: str):
    """choose_open_world's withheld-class setting on `run`, measured at `threshold` (open_world_metrics)."""
    from bsegn.generative.experiment import split_tensors
    from bsegn.generative.open_world import OPEN_WORLD_SCORE
    from bsegn.generative.open_world_choice import open_world_metrics, run_withheld, score_withheld

    scored = score_withheld(run, split_tensors(features, split), run_withheld(split, seed), gate_kind,
                            OPEN_WORLD_SCORE, unseen_ranking)
    if scored is None:  # choose_open_world says the same as a "no rule" reason; here there is nothing to measure
        raise SystemExit("the withheld val classes have no validation photos (or nothing else has): nothing to measure")
    return open_world_metrics(scored.z_known, scored.z_unknown, threshold, scored.correct, scored.known_labels,
                              scored.seen, scored.kept_unseen)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="flowers")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args, overrides = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    from bsegn.datasets.protocol import validation_protocol
    from bsegn.generative.experiment import run_bsegn
    from bsegn.generative.open_world_choice import choose_open_world

    config, features, split = load_features(args.config, overrides)
    gate, ranking = config.run.gate, config.run.unseen_ranking
    out = {"config": args.config, "gate": gate, "seeds": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        validation = validation_protocol(split, seed=seed)
        nested = validation_protocol(nested_split(validation, seed), seed=seed)
        row = {"seed": seed}
        for name, part in (("nested", nested), ("validation", validation)):
            log(f"seed {seed}: {name} protocol, {len(part.seen_classes)} seen / {len(part.unseen_classes)} unseen")
            run = run_bsegn(features, part, config.generative, seed=seed, gates={gate: None},
                            unseen_ranking=ranking, show_progress=False)
            row[name] = choose_open_world(run, features, part, gate, unseen_ranking=ranking, seed=seed)
            log(f"seed {seed}: {name} chooses threshold {row[name]['threshold']} (caught {row[name]['caught']:.1f} %,"
                f" H {row[name]['H_off']:.1f} -> {row[name]['H_on']:.1f}, AUROC {row[name]['auroc']:.3f})")
        carried = row["nested"]["threshold"]
        row["validation_at_nested_threshold"] = measured_at(run, features, validation, gate, carried, seed, ranking)
        at = row["validation_at_nested_threshold"]
        log(f"seed {seed}: the validation model at the nested threshold {carried}: caught {at['caught']:.1f} %, "
            f"H {at['H_off']:.1f} -> {at['H_on']:.1f} (drop {at['H_drop']:.2f})")
        out["seeds"].append(row)
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
