"""Markdown table of one or more bench/zsl.py --json files (or gpu_session.sh's awa1_runs.json).

    python bench/table.py bench/results/awa1_lampert_lss_cpu_part1.json bench/results/awa1_lampert_lss_cpu_part2.json
    python bench/table.py --merge-seeds seed0.json seed1.json seed2.json [--out merged.json]
                                        # one table's final seeds run as separate processes (zsl.py --first-seed)

One row per method, in the order given: T1, U, S, H as mean ± std over seeds (percent), then what the
validation protocol chose (the seen-or-unseen gate's threshold, generator epochs), the decision measured
on its own (seen-vs-unseen AUROC of the gate's score, the oracle-domain H: every image sent to its true
domain's expert) and what validation measured (T1 / H on the validation classes: the numbers the choices
were made on).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def bench_payloads(path: Path) -> list[dict]:
    """The bench payloads in a file: one (a --json file) or several (gpu_session.sh's merged file)."""
    data = json.loads(path.read_text())
    return [data] if "methods" in data else list(data.values())


def merge_seeds(payloads: list[dict]) -> dict:
    """One payload from several runs of the same methods on different final seeds (each file's rows are means
    over its own seeds): every method's T1/U/S/H become the mean and sample std over all the seeds, weighted
    by each file's seed count; the other numbers (AUROC, oracle H) their weighted mean. The first file's
    validation choices are kept; every file must have made the same ones (same thresholds)."""
    import numpy as np

    merged = {**payloads[0], "methods": {}, "merged_from": len(payloads)}
    names = [name for name in payloads[0]["methods"] if all(name in p["methods"] for p in payloads)]
    for name in names:
        rows_ = [p["methods"][name] for p in payloads]
        if any(r.get("threshold") != rows_[0].get("threshold") for r in rows_):
            raise SystemExit(f"{name}: the files chose different thresholds; not one protocol's seeds")
        if any(r["seeds"] != 1 for r in rows_):
            raise SystemExit(f"{name}: merge files of one seed each (zsl.py --seeds 1 --first-seed S)")
        out = dict(rows_[0], seeds=len(rows_))
        for key in ("T1", "U", "S", "H"):
            values = np.array([r[key] for r in rows_])
            out[key], out[f"{key}_std"] = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
        for key in ("domain_auroc", "domain_accuracy", "oracle_U", "oracle_S", "oracle_H"):
            if all(key in r for r in rows_):
                out[key] = float(np.mean([r[key] for r in rows_]))
        merged["methods"][name] = out
    return merged


def rows(payloads: list[dict]) -> list[str]:
    out = ["| method | T1 | U | S | H | gate (threshold) | domain AUROC | oracle-domain H | epochs | validation T1 / H |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for payload in payloads:
        for name, row in payload["methods"].items():
            method = name.split(" [")[0]
            chosen = (payload.get("chosen_on_validation") or {}).get(method, {})
            cells = [f"{row[k]:.1f} ± {row[k + '_std']:.1f}" if row["seeds"] > 1 else f"{row[k]:.1f}"
                     for k in ("T1", "U", "S", "H")]
            epochs = chosen.get("epochs", row.get("epochs", "")) if method != "eszsl" else ""
            gate = ""
            if method != "eszsl":
                if "gate" in row:
                    gate = f"{row['gate']} ({row['threshold']:.3g})" if row.get("threshold") is not None else row["gate"]
                elif "calibration_gamma" in chosen:  # files of earlier versions: calibrated stacking
                    gate = f"stacking ({-chosen['calibration_gamma']:.3g})"
            auroc = f"{row['domain_auroc']:.3f}" if "domain_auroc" in row else ""
            oracle = f"{row['oracle_H']:.1f}" if "oracle_H" in row else ""
            val = (chosen.get("validation_gates") or {}).get(row.get("gate")) or chosen.get("validation")
            val = f"{chosen.get('validation', val)['T1']:.1f} / {val['H']:.1f}" if val else ""
            out.append(f"| {name} | " + " | ".join(cells) + f" | {gate} | {auroc} | {oracle} | {epochs} | {val} |")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--merge-seeds", action="store_true", help="the files are one table's seeds: merge them")
    parser.add_argument("--out", type=Path, default=None, help="with --merge-seeds: write the merged payload here")
    args = parser.parse_args(argv)
    payloads = [p for path in args.files for p in bench_payloads(path)]
    if args.merge_seeds:
        payloads = [merge_seeds(payloads)]
        if args.out:
            args.out.write_text(json.dumps(payloads[0], indent=1) + "\n")
    print("\n".join(rows(payloads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
