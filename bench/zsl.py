"""BSeGN against its baselines and ablations on the SAME features of any benchmark or own-data folder.

    python bench/zsl.py --config flowers --data.images_root ../shared/data/flowers/images \
        --data.attributes_csv ../shared/data/flowers/classes.csv --data.features_file FEATURES.safetensors \
        [--seeds 3] [--json OUT] [--methods eszsl,f-clswgan,bsegn,...] [--gates stacking,combined,...]
        [--epochs N] [--select-epochs 10,20,30 [--validation-seeds 2]] [--threads N] [--data.semantics text ...]
        [--validation-features RUN/validation/features/features_*.safetensors] [--run.seed S]
    python bench/zsl.py --config awa1-lampert          # AwA1's proposed split, Lampert 2009 features

The data are a train.py run config (`--config NAME|FILE`) and its `--section.key value` overrides: its data
section says where the features and the class semantics come from (`data.features_file`: a bsegn feature
cache from `bsegn extract`, or xlsa17's res101.mat; benchmarks that exist only as features need none;
`data.semantics attributes|text|attributes+text` and `data.descriptions`), its `generative` section is the
BSeGN config, its `run` section's gate, threshold and unseen_ranking apply (f-clswgan always ranks with its
one GZSL softmax). A benchmark's split files default to the shared data folder ($BSEGN_SHARED_DATA or
../shared/data beside the checkout) when the config leaves data.splits_dir empty.

Methods: eszsl, f-clswgan (every BSeGN part off, its classification loss on), bsegn, bsegn-no-<part> for
fem, fem_s2f, balance, fem_boosts_g, cycle, mfim_levels (bench/method_configs.py). `--gates
stacking,learned,...` compares seen-or-unseen gates on the same trained models, each with its own
validation-chosen threshold (table rows "method [gate]", with the domain AUROC and the oracle-domain
U/S/H: every image sent to its true domain). Every choice is made on the VALIDATION protocol
(bsegn.datasets.protocol.validation_protocol: train classes as seen, val classes as unseen, test images
removed): ESZSL's (gamma, lambda) and each generative method's gate thresholds (stacking's is -gamma).
The validation split and its models are seeded by the config's run.seed, as train.py seeds its own
validation run. Features from a backbone fine-tuned on the seen classes differ by protocol (train.py fine-tunes
once on the validation protocol's training classes, once on trainval): give the validation run's own cache as
`--validation-features FILE` (the same photos; `data.features_file` stays the final protocol's), so no choice
is made on features that were trained on the validation classes.
Then each method is retrained on trainval and evaluated once on test, for each seed. With
`--select-epochs E1,E2,...` the validation run also picks each generative method's number of generator
epochs among those (by validation T1 + H; otherwise the config's epochs are used); `--validation-seeds N`
trains N validation models per method and chooses on their mean (thresholds on the mean H curves). Prints
one table (mean ± std over seeds, percent) and the seconds per generator epoch; `--json OUT` writes (after
every method, so a stopped run keeps what it did) {"methods": {name: {"T1", "U", "S", "H", "T1_std",
"H_std", ...}}, "seconds_per_epoch": ...}.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from method_configs import METHODS as ALL_METHODS  # noqa: E402  (bench/ is the script's folder: on sys.path)
from shared_data import shared_data_dir  # noqa: E402

# 1e3 and 1e4 since the flowers' Lite0 features chose 100, the old grid's edge (then 1000 on validation)
ESZSL_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_features(config_name: str, overrides: list[str]):
    """(RunConfig, FeatureSet, split) of a run config whose features are pre-extracted, loaded and checked as
    train.py does (bsegn.app.pipeline.preflight). SystemExit with the reason when its features would have to
    be extracted from images first."""
    from bsegn.app.config import load_run_config
    from bsegn.app.pipeline import drop_images, preflight
    from bsegn.datasets.benchmarks import canonical_name

    config = load_run_config(config_name, overrides)
    if config.data.splits_dir is None and canonical_name(config.data.benchmark) not in ("demo", "own"):
        shared = shared_data_dir()
        folder = shared / canonical_name(config.data.benchmark).split("-")[0] if shared else None
        if folder is not None and folder.is_dir():  # the config is frozen: rebuilt with the folder given
            config = load_run_config(config_name, [*overrides, "--data.splits_dir", str(folder)])
    data = preflight(config)
    if data.given is None:
        raise SystemExit(f"{config.data.benchmark}: the bench compares methods on pre-extracted features; extract "
                         "them once with `bsegn extract ... --out DIR` and give --data.features_file DIR/features_*.safetensors")
    features, split = data.given
    return config, features, drop_images(split, features.meta.get("bad_indices", []))


def check_same_photos(final, validation, final_split, validation_split) -> None:
    """The two protocols' feature files must hold the same photos of the same classes (only the backbone that
    read them may differ): BsegnError saying which differ otherwise."""
    from bsegn.core.errors import BsegnError

    if final_split.class_names != validation_split.class_names:
        raise BsegnError("--validation-features: its classes differ from data.features_file's; give the "
                         "validation cache of the same data (the run's validation/features folder)")
    if list(final.image_ids) != list(validation.image_ids):
        raise BsegnError(f"--validation-features: its {len(validation.image_ids)} photos are not "
                         f"data.features_file's {len(final.image_ids)} (same order expected); give the validation "
                         "cache the same run extracted")


def summarise(results: list[dict]) -> dict:
    import numpy as np

    out = {}
    for key in ("T1", "U", "S", "H"):
        values = np.array([r[key] for r in results])
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    for key in ("U", "S", "H"):  # the same scores before calibrated stacking (gamma 0)
        raw = [r[f"{key}_uncalibrated"] for r in results if f"{key}_uncalibrated" in r]
        if raw:
            out[f"{key}_uncalibrated"] = float(np.mean(raw))
    for key in ("domain_auroc", "domain_accuracy", "oracle_U", "oracle_S", "oracle_H"):
        if all(key in r for r in results):
            out[key] = float(np.mean([r[key] for r in results]))
    out["seeds"] = len(results)
    return out


# f-CLSWGAN classifies with ONE softmax over all classes (Xian et al. 2018): it never inherits BSeGN's
# tuned choice of letting the ZSL classifier rank the unseen classes.
METHOD_UNSEEN_RANKING = {"f-clswgan": "gzsl"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="final-protocol seeds are FIRST..FIRST+SEEDS-1 (split one table's seeds over processes)")
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    parser.add_argument("--config", default="awa1-lampert", help="a shipped config's name or a run config YAML")
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated subset of " + ", ".join(ALL_METHODS))
    parser.add_argument("--epochs", type=int, default=None, help="override the config's generator epochs")
    parser.add_argument("--select-epochs", default=None,
                        help="comma-separated generator epoch counts; the validation run picks one per method")
    parser.add_argument("--validation-seeds", type=int, default=1,
                        help="with --select-epochs: validation models per method (seeds 0..N-1); epochs and "
                             "thresholds are chosen on their mean")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--gates", default=None,
                        help="comma-separated seen-or-unseen gates to compare on the same models (default: the "
                             "config's run.gate); each gets its own validation-chosen threshold, the first one "
                             "chooses the epochs")
    parser.add_argument("--validation-only", action="store_true",
                        help="stop after the validation protocol's choices: report validation numbers, never read test "
                             "(to compare features or configs on validation alone)")
    parser.add_argument("--validation-features", type=Path, default=None,
                        help="features for the validation protocol (a run's validation/features cache, fine-tuned "
                             "on the validation training classes only); default: data.features_file")
    parser.add_argument("--oracle", action="store_true",
                        help="also report each generative method's ORACLE numbers (best epoch picked on test, as "
                             "public ZSL code does), in a separate, labelled table; never used to choose anything")
    args, overrides = parser.parse_known_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    try:
        candidate_epochs = sorted({int(e) for e in args.select_epochs.split(",")}) if args.select_epochs else None
    except ValueError:
        parser.error(f"--select-epochs {args.select_epochs!r}: expected comma-separated whole numbers, e.g. 3,6,12")
    if args.validation_seeds < 1:
        parser.error("--validation-seeds must be >= 1")
    if candidate_epochs and candidate_epochs[0] < 1:
        parser.error("--select-epochs: every epoch count must be >= 1")

    import torch
    from eszsl import choose_eszsl, run_eszsl
    from harness import ORACLE_LABEL, run_bsegn_oracle, select_on_validation
    from method_configs import method_config

    from bsegn.core.errors import BsegnError
    from bsegn.core.files import atomic_write_json
    from bsegn.datasets.protocol import validation_protocol
    from bsegn.generative.experiment import run_bsegn

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        run_config, features, split = load_features(args.config, overrides)
        validation_features = features
        if args.validation_features is not None:
            _, validation_features, validation_split = load_features(
                args.config, [*overrides, "--data.features_file", str(args.validation_features)])
            check_same_photos(features, validation_features, split, validation_split)
    except BsegnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    base = run_config.generative
    if args.epochs:
        base = base.replace(epochs=args.epochs)
    options = {"gate": run_config.run.gate, "threshold": run_config.run.threshold,
               "unseen_ranking": run_config.run.unseen_ranking}
    feature_name = Path(run_config.data.features_file).name if run_config.data.features_file else split.benchmark
    from bsegn.generative.gates import GATES

    gate_kinds = [g.strip() for g in (args.gates or options["gate"]).split(",") if g.strip()]
    if any(kind not in GATES for kind in gate_kinds):
        parser.error(f"--gates {args.gates!r}: valid gates are {', '.join(GATES)}")
    fixed = options["threshold"]
    if fixed is not None and len(gate_kinds) > 1:
        parser.error("--gates compares gates at validation-chosen thresholds: the config's run.threshold must be null")
    unseen_ranking = options["unseen_ranking"]
    run_seed = run_config.run.seed  # train.py's validation split and its validation models use the run's seed
    validation = validation_protocol(split, holdout_fraction=0.2, seed=run_seed)
    log(f"{features.features.shape[0]} images, {features.dim}-d features ({feature_name}), "
        f"{split.semantic_dim}-d "
        f"{split.semantic_kind} semantics; validation: "
        f"{len(validation.seen_classes)} train / {len(validation.unseen_classes)} val classes; "
        f"final: {len(split.seen_classes)} seen / {len(split.unseen_classes)} unseen")

    def write_json(table, oracle_table, chosen, epoch_seconds) -> None:
        if not args.json:
            return
        payload = {"methods": table,
                   "seconds_per_epoch": float(sum(epoch_seconds) / len(epoch_seconds)) if epoch_seconds else None,
                   "benchmark": split.benchmark, "features": feature_name, "overrides": overrides,
                   "validation_features": str(args.validation_features) if args.validation_features else None,
                   "validation_seed": run_seed, "semantics": run_config.data.semantics,
                   "semantic_dim": split.semantic_dim, "descriptions": run_config.data.descriptions,
                   "text_encoder_id": split.text_encoder_id, "seeds": args.seeds, "config": base.to_dict(),
                   "gates": gate_kinds, "threshold": fixed, "unseen_ranking": unseen_ranking,
                   "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                   "select_epochs": candidate_epochs, "validation_seeds": args.validation_seeds,
                   "chosen_on_validation": chosen,
                   "oracle": {"label": ORACLE_LABEL, "methods": oracle_table} if oracle_table else None,
                   "wall_seconds": time.perf_counter() - started}
        atomic_write_json(args.json, payload)

    table: dict[str, dict] = {}
    oracle_table: dict[str, dict] = {}
    chosen: dict[str, dict] = {}
    epoch_seconds = []
    for method in methods:
        if method == "eszsl":
            best = choose_eszsl(validation_features, validation, ESZSL_GRID)
            chosen[method] = {"gamma": best[0], "lambda": best[1], "validation": {k: best[2][k] for k in "T1 U S H".split()}}
            log(f"eszsl: validation picks gamma {best[0]}, lambda {best[1]} (T1 {best[2]['T1']:.1f} H {best[2]['H']:.1f})")
            if args.validation_only:
                write_json(table, oracle_table, chosen, epoch_seconds)
                continue
            result = run_eszsl(features, split, best[0], best[1])  # closed form: no seed dependence
            table[method] = summarise([result])
            log(f"eszsl (gamma {best[0]}, lambda {best[1]} from validation): "
                f"T1 {result['T1']:.1f} U {result['U']:.1f} S {result['S']:.1f} H {result['H']:.1f}")
            write_json(table, oracle_table, chosen, epoch_seconds)
            continue
        config = method_config(method, base)
        ranking = METHOD_UNSEEN_RANKING.get(method, unseen_ranking)
        thresholds = {kind: fixed for kind in gate_kinds}
        if fixed is None or candidate_epochs:
            with tempfile.TemporaryDirectory() as folder:
                picked = select_on_validation(validation_features, validation, config, folder,
                                              candidate_epochs or [config.epochs],
                                              seeds=range(run_seed, run_seed + args.validation_seeds),
                                              thresholds=thresholds,
                                              unseen_ranking=ranking)
            config = config.replace(epochs=picked["epochs"])
            thresholds, val_result = picked["thresholds"], picked["validation"]
            chosen[method] = {"epochs": picked["epochs"], "thresholds": thresholds, "unseen_ranking": ranking,
                              "validation": {k: val_result[k] for k in "T1 U S H".split()},
                              "validation_gates": {kind: {k: g[k] for k in "U S H threshold domain_auroc oracle_H".split()}
                                                   for kind, g in val_result["gates"].items()},
                              "validation_by_epoch": {r["epoch"]: {k: r[k] for k in "T1 U S H threshold".split()}
                                                      for r in picked["rows"]}}
            log(f"{method}: validation picks {picked['epochs']} epochs (T1 {val_result['T1']:.1f}); " + "; ".join(
                f"{kind} H {g['H']:.1f} (threshold {g['threshold']:.3g}, AUROC {g['domain_auroc']:.3f})"
                for kind, g in val_result["gates"].items()))
        if args.validation_only:
            write_json(table, oracle_table, chosen, epoch_seconds)
            continue
        results = {kind: [] for kind in gate_kinds}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run = run_bsegn(features, split, config, seed=seed, gates=thresholds, unseen_ranking=ranking,
                            show_progress=False).result
            epoch_seconds.append(run["seconds_per_epoch"])
            for kind in gate_kinds:
                results[kind].append({**run["gates"][kind], **{k: run[k] for k in run if k.endswith("_uncalibrated")}})
            log(f"{method} seed {seed}: T1 {run['T1']:.1f}; " + "; ".join(
                f"{kind} U {g['U']:.1f} S {g['S']:.1f} H {g['H']:.1f} AUROC {g['domain_auroc']:.3f}"
                for kind, g in run["gates"].items()) + f" ({run['seconds_per_epoch']:.1f} s/epoch)")
        for kind in gate_kinds:
            name = method if len(gate_kinds) == 1 else f"{method} [{kind}]"
            table[name] = summarise(results[kind])
            table[name].update(epochs=config.epochs, gate=kind, threshold=thresholds[kind], unseen_ranking=ranking)
        if args.oracle:
            oracle_results = []
            for seed in range(args.seeds):
                with tempfile.TemporaryDirectory() as folder:
                    oracle_results.append(run_bsegn_oracle(features, split, config, folder, seed=seed,
                                                           unseen_ranking=ranking))
                log(f"{method} seed {seed} ORACLE (best epoch on test): T1 {oracle_results[-1]['T1']:.1f} "
                    f"H {oracle_results[-1]['H']:.1f}")
            oracle_table[method] = summarise(oracle_results)

        write_json(table, oracle_table, chosen, epoch_seconds)

    seconds_per_epoch = float(sum(epoch_seconds) / len(epoch_seconds)) if epoch_seconds else None
    print(f"{split.benchmark}, {features.dim}-d features ({feature_name}), {split.semantic_kind} semantics "
          f"({split.semantic_dim}-d); per-class mean accuracy, percent; "
          f"mean ± std over seeds; choices on the validation protocol only")
    print(f"{'method':24s} {'T1':>13s} {'U':>13s} {'S':>13s} {'H':>13s}")
    for name, row in table.items():
        cells = " ".join(f"{row[k]:6.1f} ± {row[k + '_std']:4.1f}" for k in ("T1", "U", "S", "H"))
        print(f"{name:24s} {cells}")
    if oracle_table:
        print(f"\n{ORACLE_LABEL}")
        for name, row in oracle_table.items():
            cells = " ".join(f"{row[k]:6.1f} ± {row[k + '_std']:4.1f}" for k in ("T1", "U", "S", "H"))
            print(f"{name + ' [ORACLE]':24s} {cells}")
    if seconds_per_epoch is not None:
        print(f"seconds per generator epoch: {seconds_per_epoch:.1f} (batch {base.batch_size}, "
              f"{torch.get_num_threads()} threads)")
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    write_json(table, oracle_table, chosen, epoch_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
