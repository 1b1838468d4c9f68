"""`bsegn add-class` for classes described in words, end to end, cold: the issue-14 target is 10 described
classes in under 10 s on this CPU, encoder load included.

    python bench/add_class_text.py [--classes 10] [--runs 3] [--descriptions bench/descriptions/awa1.csv]
                                   [--bundle DIR] [--compare-st] [--profile OUT.prof] [--json OUT]

Builds one tiny text bundle (the tests' bundle: random test_resnet backbone, small BSeGN, 6 classes with
real all-MiniLM-L6-v2 embeddings of their texts; tests/test_app_bundle.py `_tiny_bundle`), writes a CSV
`name,description` of `--classes` AwA1 classes (`--bundle DIR`: an existing text bundle instead, e.g.
the demo's trained with `--data.semantics text`), then times `bsegn add-class --model B --description CSV
--out NEW` as a fresh process with an empty embedding cache (interpreter start, imports, bundle load,
encoder load, encoding, refit, write): `--runs` times, with the load average beside each. The CLI's own
figure (add_classes alone: vectors, refit, write) is reported too. `--compare-st` alternates each run with
the same command on the sentence-transformers path (the encoder before issue 14's fast path; same
vectors). `--profile OUT` also runs the command once under cProfile (read it with `python -m pstats OUT`).

The bundle is tiny, so the refit is short: the time is what the command costs around the refit (imports,
encoder), which does not depend on the bundle's size; a real bundle adds its refit (seconds).
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DESCRIPTIONS = Path(__file__).resolve().parent / "descriptions" / "awa1.csv"
# the CLI with encode_texts loading sentence-transformers instead of bsegn's BERT encoder
ST_CLI = ("import sys; from bsegn.datasets import text_encoder as t; t.load_encoder = t.load_sentence_transformer; "
          "from bsegn.app.cli import main; sys.exit(main(sys.argv[1:]))")


def build_bundle(folder: Path) -> Path:
    """The tests' tiny bundle, with text semantics: real MiniLM vectors of six class texts."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_app_bundle import CLASSES, _tiny_bundle

    from bsegn.datasets.text_encoder import DEFAULT_ENCODER, encode_texts, resolve_encoder

    texts = [f"a {name} shape" for name in CLASSES]
    vectors = encode_texts(texts, DEFAULT_ENCODER)
    semantic = {"semantic_kind": "text", "text_encoder": DEFAULT_ENCODER,
                "text_encoder_id": resolve_encoder(DEFAULT_ENCODER).id, "attribute_dim": 0,
                "text_dim": int(vectors.shape[1]), "class_texts": texts}
    return _tiny_bundle(folder, semantics=vectors, class_names=CLASSES, metrics={"T1": 1.0}, semantic=semantic)


def write_classes(path: Path, descriptions: Path, count: int) -> list[str]:
    with open(descriptions, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle)][1:count + 1]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["name", "description"]] + rows)
    return [row[0] for row in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--descriptions", type=Path, default=DEFAULT_DESCRIPTIONS)
    parser.add_argument("--bundle", type=Path, default=None, help="an existing text bundle (default: build a tiny one)")
    parser.add_argument("--compare-st", action="store_true", help="also time the sentence-transformers path")
    parser.add_argument("--profile", type=Path, default=None, help="also run once under cProfile, stats to this file")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bsegn-add-class-bench-"))
    os.environ["BSEGN_CACHE"] = str(work / "build-cache")
    bundle = args.bundle or build_bundle(work / "bundle")
    names = write_classes(work / "classes.csv", args.descriptions, args.classes)
    variants = {"fast": [sys.executable, "-m", "bsegn.app.cli"]}
    if args.compare_st:
        variants["st"] = [sys.executable, "-c", ST_CLI]
    if args.profile:
        variants["fast [cProfile]"] = [sys.executable, "-m", "cProfile", "-o", str(args.profile), "-m", "bsegn.app.cli"]
    result = {"classes": len(names), "bundle": str(args.bundle or "tiny"), "runs": []}
    for run in range(args.runs):
        for variant, cli in variants.items():
            if "cProfile" in variant and run:
                continue
            out = work / f"out-{len(result['runs'])}"
            env = {**os.environ, "BSEGN_CACHE": str(out) + "-cache"}  # empty: the encoder is loaded
            load = os.getloadavg()[0]
            started = time.perf_counter()
            done = subprocess.run(cli + ["add-class", "--model", str(bundle), "--description", str(work / "classes.csv"),
                                         "--out", str(out)], capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - started
            if done.returncode:
                sys.exit(f"add-class failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
            inner = re.search(r"as unseen class\(es\) in ([0-9.]+) s", done.stdout)
            row = {"path": variant, "seconds": seconds, "add_classes_seconds": float(inner.group(1)) if inner else None,
                   "load_1min": load}
            result["runs"].append(row)
            print(f"add-class [{variant}], {len(names)} classes by description, cold process: {seconds:5.2f} s "
                  f"(add_classes itself {row['add_classes_seconds']} s), load {load:.1f}")
    for variant in (v for v in variants if "cProfile" not in v):
        times = sorted(r["seconds"] for r in result["runs"] if r["path"] == variant)
        result[f"median_seconds_{variant}"] = times[len(times) // 2]
        print(f"[{variant}] median {times[len(times) // 2]:.2f} s over {len(times)} runs (target: under 10 s)")
    if args.json:
        from bsegn.core.files import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
