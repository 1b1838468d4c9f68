"""Open world on real photos: how well a model says "none of my classes" (issue 26; bsegn.generative.open_world).

    python bench/open_world.py --config flowers --data.images_root ../shared/data/flowers/images \
        --data.attributes_csv ../shared/data/flowers/classes.csv --data.features_file FEATURES.safetensors \
        [--removed 10] [--seeds 3] [--demo-images ../shared/data/demo_images] [--json OUT] [--threads 1]

Protocol (every choice on validation, never on test):
* REMOVED species: a seeded draw (--removed-seed) of --removed classes, unseen ones in proportion to the
  data's unseen share (flowers: 2 unseen + 8 seen). They leave the data entirely: their class vectors are
  dropped from the semantics table and their photos are the unknown test photos.
* Validation: bsegn.datasets.protocol.validation_protocol of the rest (train classes seen, val classes
  unseen), with a seeded third of the val classes WITHHELD from the model's class list: their photos play
  unknown. One validation model picks the gate's threshold (best H, as train.py does), the open-world score
  (chosen_score: the most unknowns caught within the H budget, ties to the AUROC), its threshold
  (bsegn.generative.open_world_choice, as train.py chooses it: the most unknowns caught for at most
  H_DROP_BUDGET points of known-class H) and p_unknown's temperature.
* Final: one model per seed on the rest (final protocol); every candidate score is reported at its own
  validation threshold on the known test photos (test-seen + test-unseen of the model's classes), the
  removed species' photos and the non-flower photos (--demo-images, extracted with the config's backbone).
Writes JSON (after every model) and prints a table of the chosen score and the losing candidates.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from zsl import load_features, log  # noqa: E402  (bench/ is the script's folder: on sys.path)


def drawn_classes(seen, unseen, count: int, seed: int) -> np.ndarray:
    """A seeded draw of `count` class ids: round(count * unseen share) unseen ones, the rest seen. (K,) sorted."""
    seen, unseen = np.asarray(seen), np.asarray(unseen)
    rng = np.random.default_rng(seed)
    n_unseen = int(round(count * len(unseen) / (len(seen) + len(unseen))))
    picked = [rng.choice(unseen, n_unseen, replace=False), rng.choice(seen, count - n_unseen, replace=False)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def without_classes(features, split, removed):
    """(FeatureSet, ZSLSplit, unknown image indices) with the classes `removed` gone: their rows leave the
    semantics table (class ids renumbered), their images every loc (the returned indices, into the ORIGINAL
    image order, are theirs). The image list itself is unchanged, so loc indices keep their meaning; removed
    images (every image of a removed class) get label -1 so nothing can train on them unnoticed; the unknown
    indices are those the split's locs used."""
    removed = np.asarray(removed, dtype=np.int64)
    kept = np.setdiff1d(np.arange(split.num_classes), removed)
    new_id = np.full(split.num_classes, -1, dtype=np.int64)
    new_id[kept] = np.arange(len(kept))
    labels = np.asarray(features.labels)
    # only images the split uses: a validation split's withheld classes still own final-test photos
    # (their test_seen ones), which must never play a part in a choice
    used = np.unique(np.concatenate([loc for loc in split.locs.values() if loc is not None]))
    unknown = used[np.isin(labels[used], removed)]
    relabelled = np.where(labels >= 0, new_id[np.maximum(labels, 0)], -1)

    def keep(loc):
        return None if loc is None else np.setdiff1d(loc, unknown).astype(np.int64)

    def renumber(ids):
        return None if ids is None else new_id[np.setdiff1d(ids, removed)]

    table = features.__class__(features.features, relabelled, features.image_ids, dict(features.meta))

    def pick(rows):
        return None if rows is None else np.asarray(rows)[kept]

    out = replace(split, class_names=[split.class_names[i] for i in kept], semantics=split.semantics[kept],
                  locs={name: keep(loc) for name, loc in split.locs.items()},
                  seen_classes=renumber(split.seen_classes), unseen_classes=renumber(split.unseen_classes),
                  labels=None if split.labels is None else relabelled,
                  original_semantics=pick(split.original_semantics),
                  class_texts=None if split.class_texts is None else [split.class_texts[i] for i in kept],
                  notes=list(split.notes) + [f"{len(removed)} classes removed (open-world unknowns)"])
    return table, out, unknown


def demo_features(folder: Path, run_config) -> np.ndarray | None:
    """(M, d) features of the non-flower photos in `folder`, by the config's backbone (None: no folder)."""
    if not folder.is_dir():
        log(f"{folder}: no non-flower photos; their AUROC is left out")
        return None
    from bsegn.backbone.extract import extract_features
    from bsegn.backbone.factory import create_backbone

    files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    backbone = create_backbone(run_config.backbone.model, run_config.backbone.weights)
    features, bad = extract_features(backbone, folder, files, None, num_workers=0, progress=False)
    if bad:
        raise SystemExit(f"{folder}: could not read {bad}")
    log(f"non-flower photos: {', '.join(files)}")
    return features.features


def scored_model(features, split, config, seed, gate_thresholds, temperatures, kinds, extra_unknown):
    """Train one model; returns (known-test facts, {kind: fitted scorer}, {kind: {"known": z, name: z}}, run)."""
    import torch

    from bsegn.generative.experiment import run_bsegn, split_tensors
    from bsegn.generative.gates import gate_inputs
    from bsegn.generative.open_world import fit_open_world

    run = run_bsegn(features, split, config, seed=seed, gates=gate_thresholds, temperatures=temperatures,
                    show_progress=False)
    data = split_tensors(features, split)
    known_x = torch.cat([data["test_seen"][0], data["test_unseen"][0]])
    known_y = torch.cat([data["test_seen"][1], data["test_unseen"][1]])
    gate = next(iter(run.gates.values()))
    inputs = gate_inputs(run.trained, run.gzsl_classifier, run.zsl_classifier, known_x, kinds=[gate.kind])
    predicted = run.gzsl_classifier.class_ids.cpu()[gate.predict(inputs)]
    known = {"correct": predicted == known_y, "labels": known_y, "seen": data["seen"], "unseen": data["unseen"]}
    scores = {}
    for kind in kinds:
        scorer = fit_open_world(kind, run.trained, run.gzsl_classifier, *data["trainval"])
        scores[kind] = {"known": scorer.score(run.trained, run.gzsl_classifier, known_x)}
        for name, x in extra_unknown.items():
            scores[kind][name] = scorer.score(run.trained, run.gzsl_classifier, torch.as_tensor(x))
    return known, scores, run


def withheld_validation(features, validation, seed: int):
    """The validation protocol's split with a seeded share (open_world_choice.WITHHELD_FRACTION) of its val
    classes out of the class list: without_classes' (FeatureSet, ZSLSplit, unknown indices) and the withheld class ids.
    The unknowns are validation images only (the val classes'), never a test photo."""
    from bsegn.generative.open_world_choice import withheld_classes

    withheld = withheld_classes(validation.unseen_classes, seed=seed)  # train.py's draw (WITHHELD_FRACTION)
    return (*without_classes(features, validation, withheld), withheld)


def validation_choices(features, split, config, gate_kind, kinds, seed):
    """Everything chosen on the validation model: gate threshold and temperature, per score its threshold
    and temperature and its validation numbers, and the chosen score (chosen_score)."""
    from bsegn.datasets.protocol import validation_protocol
    from bsegn.generative.open_world_choice import (
        choose_open_world_threshold,
        fit_unknown_temperature,
        open_world_metrics,
    )

    validation = validation_protocol(split, holdout_fraction=0.2, seed=0)
    val_features, val_split, val_unknown, withheld = withheld_validation(features, validation, seed)
    log(f"validation: {len(val_split.seen_classes)} seen, {len(val_split.unseen_classes)} unseen, "
        f"{len(withheld)} withheld classes ({len(val_unknown)} photos play unknown)")
    known, scores, run = scored_model(val_features, val_split, config, 0, {gate_kind: None}, None, kinds,
                                      {"unknown": features.features[val_unknown]})
    gate = run.gates[gate_kind]
    out = {"gate": {"kind": gate_kind, "threshold": float(gate.threshold), "temperature": float(gate.temperature)},
           "withheld_classes": [validation.class_names[i] for i in withheld], "scores": {}}
    for kind, z in scores.items():
        threshold, curve = choose_open_world_threshold(z["known"], z["unknown"], known["correct"], known["labels"],
                                                       known["seen"], known["unseen"])
        metrics = open_world_metrics(z["known"], z["unknown"], threshold, known["correct"], known["labels"],
                                     known["seen"], known["unseen"])
        temperature = fit_unknown_temperature(z["known"], z["unknown"], threshold) if threshold is not None else 1.0
        out["scores"][kind] = {"threshold": threshold, "temperature": temperature, **metrics}
        log(f"validation {kind}: AUROC {metrics['auroc']:.3f}, threshold {threshold}, "
            f"caught {metrics['caught']:.1f} %, H {metrics['H_off']:.1f} -> {metrics['H_on']:.1f}")
    out["chosen"] = chosen_score(out["scores"])
    return out


def chosen_score(scores: dict) -> str:
    """The score the rule uses: the most validation unknowns caught within the H budget (the operating point
    the rule runs at), ties to the higher validation AUROC."""
    return max(scores, key=lambda kind: (scores[kind]["caught"], scores[kind]["auroc"]))


def final_seed(features, split, config, seed, chosen, kinds, unknown_sets):
    from bsegn.generative.open_world_choice import open_world_metrics

    gate = chosen["gate"]
    known, scores, run = scored_model(features, split, config, seed, {gate["kind"]: gate["threshold"]},
                                      {gate["kind"]: gate["temperature"]}, kinds, unknown_sets)
    out = {}
    for kind, z in scores.items():
        threshold = chosen["scores"][kind]["threshold"]
        out[kind] = {}
        for name in unknown_sets:
            out[kind][name] = open_world_metrics(z["known"], z[name], threshold, known["correct"], known["labels"],
                                                 known["seen"], known["unseen"])
    return out


def mean_table(per_seed: list[dict]) -> dict:
    """{kind: {unknown set: {metric: mean, metric_std: std}}} over seeds."""
    out = {}
    for kind in per_seed[0]:
        out[kind] = {}
        for name in per_seed[0][kind]:
            keys = per_seed[0][kind][name]
            values = {k: np.array([s[kind][name][k] for s in per_seed], dtype=float) for k in keys}
            out[kind][name] = {**{k: float(v.mean()) for k, v in values.items()},
                               **{f"{k}_std": float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}}
    return out


def print_table(table: dict, chosen: str) -> None:
    print(f"{'score':<14}{'unknowns':<12}{'AUROC':>7}{'caught %':>10}{'H off':>8}{'H on':>8}{'drop':>7}")
    for kind, sets in table.items():
        for name, r in sets.items():
            mark = " *" if kind == chosen else ""
            print(f"{kind + mark:<14}{name:<12}{r['auroc']:>7.3f}{r['caught']:>10.1f}{r['H_off']:>8.1f}"
                  f"{r['H_on']:>8.1f}{r['H_drop']:>7.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="flowers")
    parser.add_argument("--removed", type=int, default=10, help="classes removed from the model (the unknowns)")
    parser.add_argument("--removed-seed", type=int, default=26)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override the config's generator epochs")
    parser.add_argument("--scores", default=None, help="comma-separated open-world scores (default: all)")
    parser.add_argument("--demo-images", type=Path, default=None, help="folder of photos of no class (non-flowers)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args, overrides = parser.parse_known_args(argv)

    import torch

    from bsegn.core.files import atomic_write_json
    from bsegn.generative.open_world import SCORES, check_score

    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = [check_score(k.strip()) for k in args.scores.split(",")] if args.scores else list(SCORES)
    started = time.perf_counter()
    run_config, features, split = load_features(args.config, overrides)
    config = run_config.generative if args.epochs is None else run_config.generative.replace(epochs=args.epochs)
    removed = drawn_classes(split.seen_classes, split.unseen_classes, args.removed, args.removed_seed)
    kept_features, kept_split, unknown = without_classes(features, split, removed)
    log(f"removed {len(removed)} species ({len(unknown)} photos): {', '.join(split.class_names[i] for i in removed)}")
    unknown_sets = {"removed": features.features[unknown]}
    demo = demo_features(args.demo_images, run_config) if args.demo_images else None
    if demo is not None:
        unknown_sets["other"] = demo
    payload = {"removed": [split.class_names[i] for i in removed], "removed_seed": args.removed_seed,
               "removed_photos": len(unknown), "other_photos": 0 if demo is None else len(demo),
               "config": config.to_dict(), "gate": run_config.run.gate, "overrides": overrides,
               "features": Path(run_config.data.features_file).name if run_config.data.features_file else None}

    def write():
        payload["wall_seconds"] = time.perf_counter() - started
        if args.json:
            atomic_write_json(args.json, payload)

    chosen = validation_choices(kept_features, kept_split, config, run_config.run.gate, kinds, args.removed_seed)
    payload["validation"] = chosen
    log(f"validation chooses {chosen['chosen']}")
    write()
    per_seed = []
    for seed in range(args.seeds):
        per_seed.append(final_seed(kept_features, kept_split, config, seed, chosen, kinds, unknown_sets))
        payload["per_seed"] = per_seed
        payload["test"] = mean_table(per_seed)
        write()
        log(f"seed {seed} done")
    if per_seed:
        print_table(payload["test"], chosen["chosen"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
