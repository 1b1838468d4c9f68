"""What the text semantics cost: classes per second of the sentence encoder, cold and warm.

    python bench/text_encoder.py [--encoder minilm] [--descriptions bench/descriptions/awa1.csv]
                                 [--repeats 5] [--threads N] [--json OUT]

Measures, in this (fresh) process, on the CPU, with no embedding cache:
* cold: importing and loading the encoder, then embedding every class text once (what the first run
  of a benchmark with text semantics pays);
* warm: embedding the texts again (`--repeats` times), the encoder already loaded;
* cached: bsegn.datasets.text_encoder.encode_texts reading every vector back from its disk cache
  (what every later run pays; the encoder is not even imported).
The texts are AwA1's 50 class names and their descriptions (bench/descriptions/awa1.csv).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEFAULT_DESCRIPTIONS = Path(__file__).resolve().parent / "descriptions" / "awa1.csv"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="minilm", help="minilm or local-dir:PATH")
    parser.add_argument("--descriptions", type=Path, default=DEFAULT_DESCRIPTIONS, help="CSV class,description")
    parser.add_argument("--repeats", type=int, default=5, help="warm passes over the texts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ["BSEGN_CACHE"] = tempfile.mkdtemp(prefix="bsegn-text-bench-")  # no cache from earlier runs

    from bsegn.core.files import atomic_write_json
    from bsegn.datasets import text_encoder
    from bsegn.datasets.text_semantics import read_descriptions_csv, readable_name

    descriptions = read_descriptions_csv(args.descriptions)
    names = [readable_name(name) for name in descriptions]
    texts = {"names": names, "descriptions": list(descriptions.values())}
    spec = text_encoder.resolve_encoder(args.encoder)
    started = time.perf_counter()
    model = text_encoder.load_encoder(spec)  # imports sentence-transformers and transformers: part of the cold cost
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    load_seconds = time.perf_counter() - started
    result = {"encoder": spec.id, "dim": int(model.encode(["x"]).shape[1]), "load_seconds": load_seconds,
              "classes": len(names), "repeats": args.repeats}
    for kind, items in texts.items():
        first = time.perf_counter()
        text_encoder.encode_texts(items, args.encoder, use_cache=False)
        first = time.perf_counter() - first
        warm = time.perf_counter()
        for _ in range(args.repeats):
            text_encoder.encode_texts(items, args.encoder, use_cache=False)
        warm = (time.perf_counter() - warm) / args.repeats
        text_encoder.encode_texts(items, args.encoder)  # fills the cache
        cached = time.perf_counter()
        text_encoder.encode_texts(items, args.encoder)
        cached = time.perf_counter() - cached
        result[kind] = {"cold_classes_per_second": len(items) / (load_seconds + first),
                        "warm_classes_per_second": len(items) / warm,
                        "cached_classes_per_second": len(items) / cached,
                        "first_pass_seconds": first, "warm_pass_seconds": warm, "cached_pass_seconds": cached}
    import torch

    result["threads"] = torch.get_num_threads()
    print(f"encoder {spec.id} ({result['dim']}-d), load {load_seconds:.1f} s, {torch.get_num_threads()} threads")
    print(f"{'texts':14s} {'cold cl/s':>10s} {'warm cl/s':>10s} {'cached cl/s':>12s}")
    for kind in texts:
        row = result[kind]
        print(f"{kind:14s} {row['cold_classes_per_second']:10.1f} {row['warm_classes_per_second']:10.1f} "
              f"{row['cached_classes_per_second']:12.0f}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
