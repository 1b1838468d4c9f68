"""What the text semantics cost: bsegn's own BERT encoder ("fast") against sentence-transformers ("st"),
cold processes and warm classes per second, in one command.

    python bench/text_encoder.py [--encoder minilm] [--descriptions bench/descriptions/awa1.csv]
                                 [--cold 3] [--cold-classes 10] [--repeats 5] [--threads N] [--json OUT]

Each measurement runs in its own fresh Python process (the two paths never share imports), on the CPU,
with an empty embedding cache:
* cold: a whole process that imports bsegn's encoder module, loads the encoder through one path and
  embeds `--cold-classes` class descriptions, timed from outside (interpreter start included; what the
  first `add-class` or text run pays); the paths alternate, `--cold` times each, median reported;
* warm: inside one process per path, embedding AwA1's 50 class names and their descriptions again
  (`--repeats` passes) with the encoder loaded: classes per second; and `cached`: encode_texts reading
  every vector back from its disk cache (every later run; no encoder is loaded).
The load average (1 min) is printed beside each timing: the machine is shared, compare the paths by the
ratio within one command.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEFAULT_DESCRIPTIONS = Path(__file__).resolve().parent / "descriptions" / "awa1.csv"
PATHS = {"fast": "bsegn's BERT encoder (tokenizers + torch)", "st": "sentence-transformers (+ transformers)"}


def _load(path: str, encoder: str):
    """Load the encoder through `path`, and make encode_texts use that model."""
    from bsegn.datasets import text_encoder

    spec = text_encoder.resolve_encoder(encoder)
    model = text_encoder.load_encoder(spec) if path == "fast" else text_encoder.load_sentence_transformer(spec)
    if path == "st":
        text_encoder.load_encoder = lambda _spec: model  # encode_texts (this process only) uses sentence-transformers
    return text_encoder, spec, model


def _texts(descriptions: Path) -> dict[str, list[str]]:
    from bsegn.datasets.text_semantics import read_descriptions_csv, readable_name

    rows = read_descriptions_csv(descriptions)
    return {"names": [readable_name(name) for name in rows], "descriptions": list(rows.values())}


def worker_cold(args) -> dict:
    """One cold process: import + load + embed the first `cold_classes` descriptions."""
    started = time.perf_counter()
    text_encoder, spec, model = _load(args.worker_path, args.encoder)
    loaded = time.perf_counter()
    vectors = text_encoder.encode_texts(_texts(args.descriptions)["descriptions"][:args.cold_classes], args.encoder,
                                        use_cache=False)
    done = time.perf_counter()
    return {"import_load_seconds": loaded - started, "encode_seconds": done - loaded, "dim": int(vectors.shape[1]),
            "model": type(model).__name__,
            "imported_sentence_transformers": "sentence_transformers" in sys.modules}


def worker_warm(args) -> dict:
    """Warm and cached classes per second for one path."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    text_encoder, spec, model = _load(args.worker_path, args.encoder)
    result = {"threads": torch.get_num_threads()}
    for kind, items in _texts(args.descriptions).items():
        text_encoder.encode_texts(items, args.encoder, use_cache=False)  # first pass (allocator, caches)
        warm = time.perf_counter()
        for _ in range(args.repeats):
            text_encoder.encode_texts(items, args.encoder, use_cache=False)
        warm = (time.perf_counter() - warm) / args.repeats
        text_encoder.encode_texts(items, args.encoder)  # fills the cache
        cached = time.perf_counter()
        text_encoder.encode_texts(items, args.encoder)
        cached = time.perf_counter() - cached
        result[kind] = {"classes": len(items), "warm_classes_per_second": len(items) / warm,
                        "cached_classes_per_second": len(items) / cached, "load_1min": os.getloadavg()[0]}
    return result


def _run_worker(kind: str, path: str, args) -> tuple[float, dict]:
    command = [sys.executable, __file__, "--worker", kind, "--worker-path", path, "--encoder", args.encoder,
               "--descriptions", str(args.descriptions), "--cold-classes", str(args.cold_classes),
               "--repeats", str(args.repeats)] + (["--threads", str(args.threads)] if args.threads else [])
    env = {**os.environ, "BSEGN_CACHE": tempfile.mkdtemp(prefix="bsegn-text-bench-")}  # no cache from earlier runs
    started = time.perf_counter()
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return time.perf_counter() - started, json.loads(output.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="minilm", help="minilm or local-dir:PATH")
    parser.add_argument("--descriptions", type=Path, default=DEFAULT_DESCRIPTIONS, help="CSV class,description")
    parser.add_argument("--cold", type=int, default=3, help="cold processes per path")
    parser.add_argument("--cold-classes", type=int, default=10, help="descriptions a cold process embeds")
    parser.add_argument("--repeats", type=int, default=5, help="warm passes over the texts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in the warm processes")
    parser.add_argument("--paths", default="fast,st", help="which paths: fast, st or both (comma-separated)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", choices=("cold", "warm"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-path", choices=tuple(PATHS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps((worker_cold if args.worker == "cold" else worker_warm)(args)))
        return 0
    paths = [path.strip() for path in args.paths.split(",")]
    result = {"encoder": args.encoder, "cold_classes": args.cold_classes, "paths": {p: {"cold": []} for p in paths}}
    for _ in range(args.cold):
        for path in paths:  # alternating: both paths see the same load
            load = os.getloadavg()[0]
            seconds, inner = _run_worker("cold", path, args)
            result["paths"][path]["cold"].append({"process_seconds": seconds, "load_1min": load, **inner})
    for path in paths:
        result["paths"][path]["warm"] = _run_worker("warm", path, args)[1]
    print(f"{args.cold_classes} descriptions, cold process (import + load + encode), {args.cold} runs per path:")
    for path in paths:
        runs = result["paths"][path]["cold"]
        seconds = [run["process_seconds"] for run in runs]
        result["paths"][path]["cold_median_seconds"] = statistics.median(seconds)
        print(f"  {path:5s} {PATHS[path]:45s} median {statistics.median(seconds):6.2f} s  runs "
              + ", ".join(f"{s:.2f}" for s in seconds) + "  load " + ", ".join(f"{r['load_1min']:.1f}" for r in runs)
              + f"  (model {runs[0]['model']}, sentence-transformers imported: {runs[0]['imported_sentence_transformers']})")
    if {"fast", "st"} <= set(paths):
        result["cold_speedup"] = result["paths"]["st"]["cold_median_seconds"] / result["paths"]["fast"]["cold_median_seconds"]
        print(f"  cold speed-up fast vs st: {result['cold_speedup']:.1f}x")
    print(f"{'path':5s} {'texts':13s} {'warm cl/s':>10s} {'cached cl/s':>12s} {'load':>5s}")
    for path in paths:
        warm = result["paths"][path]["warm"]
        for kind in ("names", "descriptions"):
            row = warm[kind]
            print(f"{path:5s} {kind:13s} {row['warm_classes_per_second']:10.1f} {row['cached_classes_per_second']:12.0f} "
                  f"{row['load_1min']:5.1f}   (torch threads {warm['threads']}; the fast path encodes on 1)")
    if args.json:
        from bsegn.core.files import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
