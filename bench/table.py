"""Markdown table of one or more bench/awa1_lampert.py --json files (or gpu_session.sh's awa1_runs.json).

    python bench/table.py bench/results/awa1_lampert_lss_cpu_part1.json bench/results/awa1_lampert_lss_cpu_part2.json

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
    args = parser.parse_args(argv)
    payloads = [p for path in args.files for p in bench_payloads(path)]
    print("\n".join(rows(payloads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
