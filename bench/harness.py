"""The research harness of the benches, on top of bsegn.generative.experiment: epochs and thresholds chosen on
validation, the labelled oracle, the --semantics options. What else only the benches use lives beside it in
bench/: ESZSL (eszsl.py), the ablation and f-CLSWGAN configs (method_configs.py), the checkout's real-data
folder (shared_data.py).

    score_epochs(feature_set, split, config, run_dir, epochs, *, thresholds=None, seed=0, unseen_ranking="gzsl")
    select_on_validation(feature_set, validation_split, config, run_dir, epochs, *, seeds=(0,),
                         thresholds=None, unseen_ranking="gzsl") -> {"epochs", "thresholds", "validation", "rows"}
    run_bsegn_oracle(feature_set, split, config, run_dir, *, seed=0, unseen_ranking="gzsl") -> result
                                              # best epoch ON TEST, labelled; for comparison with papers only
    add_semantics_arguments(parser); with_semantics(split, args) -> split   # --semantics, --descriptions, --encoder

Every choice is made on a VALIDATION split (bsegn.datasets.protocol.validation_protocol); the oracle
exists only to set our numbers beside published ones and never chooses anything.
"""
from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

import numpy as np

from bsegn.generative.config import BSeGNConfig
from bsegn.generative.experiment import fit_and_score, measure_gates, split_tensors
from bsegn.generative.gate_evaluation import best_threshold
from bsegn.generative.model import train_bsegn

ORACLE_LABEL = "ORACLE: best epoch picked on TEST (as TF-VAEGAN's and CE-GZSL's code do); for comparison with papers only"


def add_semantics_arguments(parser) -> None:
    """--semantics attributes|text|attributes+text, --descriptions CSV, --encoder (bsegn.datasets.text_semantics)."""
    from bsegn.datasets.text_semantics import SEMANTIC_MODES

    parser.add_argument("--semantics", default="attributes", choices=SEMANTIC_MODES,
                        help="class semantics: the benchmark's attributes, text embeddings of the class texts, or both")
    parser.add_argument("--descriptions", type=Path, default=None,
                        help="CSV class,description: the class texts for the text semantics (default: class names)")
    parser.add_argument("--encoder", default="minilm", help="text encoder: minilm or local-dir:PATH")


def with_semantics(split, args):
    """`split` with the semantics the command line asks for (bsegn.datasets.text_semantics.apply_semantics)."""
    from bsegn.datasets.text_semantics import apply_semantics

    if args.semantics == "attributes" and args.descriptions is not None:
        raise SystemExit("--descriptions needs --semantics text or attributes+text")
    return apply_semantics(split, args.semantics, args.descriptions, args.encoder)


def score_epochs(feature_set, split, config: BSeGNConfig, run_dir, epochs, *, thresholds=None, seed: int = 0,
                 unseen_ranking: str = "gzsl", show_progress: bool = False) -> list[dict]:
    """Train on split's trainval up to max(epochs); after each epoch in `epochs` refit the classifiers and
    gates and score split's test locs. thresholds: {gate kind: threshold, or None to choose it on these
    scores (VALIDATION splits only)}; default {"stacking": 0.0} (uncalibrated). `run_dir` holds the
    checkpoint training resumes from between scored epochs.
    Returns one row per scored epoch: the FIRST gate's evaluate_gate keys, "epoch", and "gates" {kind:
    its result, with "curve" when its threshold was chosen}."""
    thresholds = dict(thresholds or {"stacking": 0.0})
    data = split_tensors(feature_set, split)
    wanted = sorted({int(e) for e in epochs})
    if not wanted or wanted[0] < 1:
        raise ValueError(f"epochs to score must be >= 1, got {list(epochs)}")
    config = config.replace(epochs=wanted[-1])
    rows, done = [], 0
    for epoch in wanted:
        trained = train_bsegn(*data["trainval"], data["semantics"], data["seen"], data["unseen"], config, seed=seed,
                              run_dir=run_dir, show_progress=show_progress, max_epochs=epoch - done)
        done = epoch
        gzsl, zsl, seen_scores, unseen_scores, zsl_scores = fit_and_score(trained, data, unseen_ranking)
        _, results = measure_gates(trained, data, gzsl, zsl, seen_scores, unseen_scores, zsl_scores, thresholds,
                                   unseen_ranking, split=split)
        first = results[next(iter(thresholds))]
        rows.append({**{k: v for k, v in first.items() if k != "curve"}, "epoch": epoch, "gates": results})
    return rows


def _step_lookup(curve: list[dict], threshold: float) -> dict:
    """The point of a threshold curve in force at `threshold`: the largest candidate <= it (the first one
    below the smallest)."""
    ordered = sorted(curve, key=lambda row: row["threshold"])
    position = bisect_right([row["threshold"] for row in ordered], threshold) - 1
    return ordered[max(position, 0)]


def mean_over_seeds(rows: list[dict]) -> dict:
    """One validation row per seed for the same epoch -> their mean: T1 averaged; each gate whose threshold
    was chosen gets the threshold whose H AVERAGED over the seeds is best (each seed's H read at every
    candidate of every seed), so one seed's lucky peak does not set it."""
    out = {"epoch": rows[0]["epoch"], "T1": float(np.mean([r["T1"] for r in rows])), "seeds": len(rows), "gates": {}}
    for kind in rows[0]["gates"]:
        per_seed = [r["gates"][kind] for r in rows]
        gate = {k: float(np.mean([g[k] for g in per_seed])) for k in ("U", "S", "H", "domain_auroc", "oracle_H")}
        gate["threshold"] = per_seed[0]["threshold"]
        curves = [g.get("curve") for g in per_seed]
        if all(curves):
            candidates = sorted({row["threshold"] for curve in curves for row in curve})
            mean_curve = [{"threshold": t, **{k: float(np.mean([_step_lookup(c, t)[k] for c in curves]))
                                              for k in ("U", "S", "H")}} for t in candidates]
            best = best_threshold(mean_curve, kind)
            gate.update({k: v for k, v in _step_lookup(mean_curve, best).items()}, curve=mean_curve)
        out["gates"][kind] = gate
    first = out["gates"][next(iter(out["gates"]))]
    out.update({k: first[k] for k in ("U", "S", "H", "threshold")})
    return out


def select_on_validation(feature_set, validation, config: BSeGNConfig, run_dir, epochs, *, seeds=(0,),
                         thresholds=None, unseen_ranking: str = "gzsl") -> dict:
    """The number of generator epochs (among `epochs`) and each gate's threshold, chosen on the VALIDATION
    split: epochs by T1 + H of the FIRST gate, thresholds by H at that epoch. Several `seeds` train one
    validation model each and the choice is made on their mean (mean_over_seeds). Returns {"epochs",
    "thresholds": {kind: threshold}, "validation": the chosen row, "rows": every scored epoch}."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: at least one validation seed is needed")
    per_seed = [score_epochs(feature_set, validation, config, Path(run_dir) / f"seed-{seed}", epochs,
                             thresholds=thresholds, seed=seed, unseen_ranking=unseen_ranking) for seed in seeds]
    if len(seeds) == 1:
        rows = per_seed[0]
    else:
        rows = [mean_over_seeds(list(same_epoch)) for same_epoch in zip(*per_seed)]
    best = max(rows, key=lambda r: (r["T1"] + r["H"], -r["epoch"]))  # ties: the cheaper, earlier epoch
    return {"epochs": best["epoch"], "thresholds": {kind: g["threshold"] for kind, g in best["gates"].items()},
            "validation": best, "rows": rows}


def run_bsegn_oracle(feature_set, split, config: BSeGNConfig, run_dir, *, seed: int = 0,
                     unseen_ranking: str = "gzsl", show_progress: bool = False) -> dict:
    """The oracle mode the field's public code uses, labelled as such: after EVERY generator epoch the
    classifiers are refitted and scored on test, and the best T1 and the best H over epochs are reported
    (each its own best epoch, no calibration). Never use it to choose anything; it exists so that our
    numbers can be set beside published ones. `run_dir` holds the checkpoints it steps through.
    Returns {"T1", "U", "S", "H" (of the best-H epoch), "T1_epoch", "H_epoch", "oracle": ORACLE_LABEL}."""
    rows = score_epochs(feature_set, split, config, run_dir, range(1, config.epochs + 1),
                        seed=seed, unseen_ranking=unseen_ranking, show_progress=show_progress)
    best_t1 = max(rows, key=lambda r: r["T1"])
    best_h = max(rows, key=lambda r: r["H"])
    return {"T1": best_t1["T1"], "U": best_h["U"], "S": best_h["S"], "H": best_h["H"], "T1_epoch": best_t1["epoch"],
            "H_epoch": best_h["epoch"], "oracle": ORACLE_LABEL}
