"""BSeGN vs its baselines and ablations on the REAL AwA1 proposed split with the Lampert 2009 features.

    python bench/awa1_lampert.py [--seeds 3] [--json OUT] [--features-dir DIR] [--feature-type lss]
                                 [--config configs/awa1-lampert.yaml] [--methods eszsl,f-clswgan,bsegn,...]
                                 [--epochs N] [--select-epochs 3,6,12 [--validation-seeds 2]]
                                 [--semantics attributes|text|attributes+text [--descriptions CSV] [--encoder E]]

Methods: eszsl, f-clswgan (every BSeGN part off), bsegn, bsegn-no-<part> for fem, fem_s2f, balance,
fem_boosts_g, cycle, mfim_levels (BSeGNConfig.without(part)). The config is a train.py run config: its
`generative` section is the BSeGN config, its `run` section's calibration and unseen_ranking apply.
Every choice is made on the VALIDATION protocol (bsegn.datasets.protocol.validation_protocol: train
classes as seen, val classes as unseen, test_seen images removed): ESZSL's (gamma, lambda) and each
generative method's calibration gamma. Then each method is retrained on trainval and evaluated once on
test, for each seed. With `--select-epochs E1,E2,...` the validation run also picks each generative
method's number of generator epochs among those (by validation T1 + H; otherwise the config's epochs are
used); `--semantics text` replaces the 85 attributes by MiniLM embeddings of the class names (or of
`--descriptions bench/descriptions/awa1.csv`), `attributes+text` puts both side by side; `--validation-seeds N` trains N validation models per method and chooses on their mean (gamma on
the mean H curve). Prints one table (mean ± std over seeds, percent) and the seconds per generator
epoch; `--json OUT` writes (after every method, so a stopped run keeps what it did)
{"methods": {name: {"T1", "U", "S", "H", "T1_std", "H_std", ...}}, "seconds_per_epoch": ...}.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from harness import METHODS as ALL_METHODS  # noqa: E402  (bench/ is the script's folder: on sys.path)
from harness import add_semantics_arguments, with_semantics  # noqa: E402

ESZSL_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "awa1-lampert.yaml"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_config(path: Path):
    """(BSeGNConfig, {"calibration", "unseen_ranking"}) of a run config YAML (its generative and run
    sections) or of a bare generative section."""
    import yaml

    from bsegn.generative.config import BSeGNConfig

    values = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    run = {}
    if "generative" in values or "run" in values:
        run = values.get("run") or {}
        values = values.get("generative") or {}
    options = {"calibration": bool(run.get("calibration", False)), "unseen_ranking": run.get("unseen_ranking", "gzsl")}
    return BSeGNConfig.from_dict(values), options


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
    out["seeds"] = len(results)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    parser.add_argument("--features-dir", type=Path, default=None,
                        help="folder of <class>-<type>.pic.bz2 files (default ../shared/data/AWA1_Lampert2009/feat)")
    parser.add_argument("--feature-type", default="lss", help="lss, surf, sift, rgsift or phog")
    parser.add_argument("--splits-dir", type=Path, default=None, help="folder of AWA1 att_splits.mat")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML of BSeGNConfig fields")
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated subset of " + ", ".join(ALL_METHODS))
    parser.add_argument("--epochs", type=int, default=None, help="override the config's generator epochs")
    parser.add_argument("--select-epochs", default=None,
                        help="comma-separated generator epoch counts; the validation run picks one per method")
    parser.add_argument("--validation-seeds", type=int, default=1,
                        help="with --select-epochs: validation models per method (seeds 0..N-1); epochs and gamma "
                             "are chosen on their mean")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--oracle", action="store_true",
                        help="also report each generative method's ORACLE numbers (best epoch picked on test, as "
                             "public ZSL code does), in a separate, labelled table; never used to choose anything")
    add_semantics_arguments(parser)
    args = parser.parse_args(argv)
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

    from bsegn.core.errors import BsegnError
    from bsegn.core.files import atomic_write_json
    from bsegn.datasets.lampert import load_awa1_lampert
    from bsegn.datasets.protocol import validation_protocol
    from bsegn.generative.experiment import run_bsegn
    from harness import ORACLE_LABEL, choose_eszsl, method_config, run_bsegn_oracle, run_eszsl, select_on_validation

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        base, options = read_config(args.config)
        if args.epochs:
            base = base.replace(epochs=args.epochs)
        features, split = load_awa1_lampert(args.features_dir, args.splits_dir, args.feature_type)
        split = with_semantics(split, args)
    except BsegnError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    calibration, unseen_ranking = options["calibration"], options["unseen_ranking"]
    validation = validation_protocol(split, holdout_fraction=0.2, seed=0)
    log(f"{features.features.shape[0]} images, {features.dim}-d {args.feature_type}, {split.semantic_dim}-d "
        f"{split.semantic_kind} semantics; validation: "
        f"{len(validation.seen_classes)} train / {len(validation.unseen_classes)} val classes; "
        f"final: {len(split.seen_classes)} seen / {len(split.unseen_classes)} unseen")

    def write_json(table, oracle_table, chosen, epoch_seconds) -> None:
        if not args.json:
            return
        payload = {"methods": table,
                   "seconds_per_epoch": float(sum(epoch_seconds) / len(epoch_seconds)) if epoch_seconds else None,
                   "feature_type": args.feature_type, "semantics": args.semantics,
                   "semantic_dim": split.semantic_dim, "descriptions": args.descriptions,
                   "text_encoder_id": split.text_encoder_id, "seeds": args.seeds, "config": base.to_dict(),
                   "calibration": calibration, "unseen_ranking": unseen_ranking,
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
            best = choose_eszsl(features, validation, ESZSL_GRID)
            chosen[method] = {"gamma": best[0], "lambda": best[1], "validation": {k: best[2][k] for k in "T1 U S H".split()}}
            result = run_eszsl(features, split, best[0], best[1])  # closed form: no seed dependence
            table[method] = summarise([result])
            log(f"eszsl (gamma {best[0]}, lambda {best[1]} from validation): "
                f"T1 {result['T1']:.1f} U {result['U']:.1f} S {result['S']:.1f} H {result['H']:.1f}")
            write_json(table, oracle_table, chosen, epoch_seconds)
            continue
        config = method_config(method, base)
        gamma = None
        if candidate_epochs:
            with tempfile.TemporaryDirectory() as folder:
                picked = select_on_validation(features, validation, config, folder, candidate_epochs,
                                              seeds=range(args.validation_seeds), calibration=calibration,
                                              unseen_ranking=unseen_ranking)
            config = config.replace(epochs=picked["epochs"])
            gamma, val_result = picked["gamma"], picked["validation"]
            chosen[method] = {"epochs": picked["epochs"], "calibration_gamma": gamma,
                              "validation": {k: val_result[k] for k in "T1 U S H".split()},
                              "validation_by_epoch": {r["epoch"]: {k: r[k] for k in "T1 U S H gamma".split()}
                                                      for r in picked["rows"]}}
            log(f"{method}: validation picks {picked['epochs']} epochs (T1 {val_result['T1']:.1f} "
                f"H {val_result['H']:.1f}), gamma {gamma}")
        elif calibration:
            val_result = run_bsegn(features, validation, config, calibration=True, unseen_ranking=unseen_ranking,
                                   show_progress=False).result
            gamma = val_result["gamma"]
            chosen[method] = {"calibration_gamma": gamma,
                              "validation": {k: val_result[k] for k in "T1 U S H".split()}}
            log(f"{method}: validation T1 {val_result['T1']:.1f} H {val_result['H']:.1f}, gamma {gamma}")
        results = []
        for seed in range(args.seeds):
            result = run_bsegn(features, split, config, seed=seed, calibration=calibration, gamma=gamma,
                               unseen_ranking=unseen_ranking, show_progress=False).result
            results.append(result)
            epoch_seconds.append(result["seconds_per_epoch"])
            log(f"{method} seed {seed}: T1 {result['T1']:.1f} U {result['U']:.1f} S {result['S']:.1f} "
                f"H {result['H']:.1f} ({result['seconds_per_epoch']:.1f} s/epoch)")
        table[method] = summarise(results)
        table[method]["epochs"] = config.epochs
        if gamma is not None:
            table[method]["gamma"] = gamma
        if args.oracle:
            oracle_results = []
            for seed in range(args.seeds):
                with tempfile.TemporaryDirectory() as folder:
                    oracle_results.append(run_bsegn_oracle(features, split, config, folder, seed=seed,
                                                           unseen_ranking=unseen_ranking))
                log(f"{method} seed {seed} ORACLE (best epoch on test): T1 {oracle_results[-1]['T1']:.1f} "
                    f"H {oracle_results[-1]['H']:.1f}")
            oracle_table[method] = summarise(oracle_results)

        write_json(table, oracle_table, chosen, epoch_seconds)

    seconds_per_epoch = float(sum(epoch_seconds) / len(epoch_seconds)) if epoch_seconds else None
    print(f"AwA1 proposed split, Lampert 2009 {args.feature_type} features, {split.semantic_kind} semantics "
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
