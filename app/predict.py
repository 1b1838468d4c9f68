"""`predict IMAGE [IMAGE|DIR ...] [--model RUN_OR_BUNDLE]`: name the class of images with a bundle;
`predict --features FILE`: of the rows of a feature cache (bsegn.app.feature_inputs; a bundle trained on
pre-extracted features answers only these).

The command line only: images and folders gathered, the options checked, each image's Prediction from the
inference engine (bsegn.app.inference, where the gate's decision and p_unseen are explained) printed as text
or, with --json, as one JSON object per line. Without --model: $BSEGN_MODEL, else the most recently written
bundle under ./runs (bsegn.app.model_lookup).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def collect_images(inputs: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files as given, folders recursed (image suffixes only, sorted). Returns (paths, problems)."""
    paths, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return paths, problems


def build_parser() -> argparse.ArgumentParser:
    from bsegn.app.inference import MODES

    parser = argparse.ArgumentParser(prog="predict", description="Name the class of images with a bsegn model, "
                                     "including classes never seen in training.")
    parser.add_argument("images", nargs="*", help="image files and/or folders (recursed)")
    parser.add_argument("--features", default=None, metavar="FILE",
                        help="instead of images: a feature cache written by `bsegn extract` (.safetensors), one "
                             "answer per row, named by its image; for a bundle trained on pre-extracted features")
    parser.add_argument("--model", default=None,
                        help="run folder written by train.py, or its bundle/ folder (default: $BSEGN_MODEL, else "
                             "the most recently written bundle under ./runs)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    parser.add_argument("--mode", choices=MODES, default="gzsl",
                        help="gzsl: all classes (default); zsl: unseen classes only; seen: seen classes only")
    parser.add_argument("--threshold", type=float, default=None,
                        help="the gate's threshold: an image is called unseen when the gate's domain score is above "
                             "it (default: the bundle's, chosen on validation)")
    parser.add_argument("--open-world", choices=("auto", "on", "off"), default="auto",
                        help="an image of none of the model's classes is answered `unknown` (with p_unknown) by the "
                             "bundle's open-world rule: auto (default) where its run chose the rule on validation, "
                             "on: any rule the bundle has (refused, saying why, when it has none), off: a class always")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="images with more pixels are skipped before decoding (default about 89.5 million)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--explain", action="store_true",
                        help="show the attributes the semantic decoder reads from the image next to the "
                             "predicted class's attribute values (text models: the nearest class descriptions)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return parser


def run(args: argparse.Namespace) -> int:
    from bsegn.app.bundle import load_bundle
    from bsegn.app.inference import Predictor, resolve_device
    from bsegn.app.model_lookup import default_model
    from bsegn.app.processes import no_compile_cache
    from bsegn.core.errors import ConfigError
    from bsegn.core.files import json_text

    no_compile_cache()
    if args.top_k < 1 or args.batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be >= 1")
    resolve_device(args.device)  # before the bundle is read (the other options: checked by Predictor)
    if bool(args.images) == (args.features is not None):
        raise ConfigError("give image files or folders, or --features FILE (a feature cache), not both"
                          if args.images else "give image files or folders, or --features FILE (a feature cache)")
    if args.features is not None:
        return _predict_features(args, default_model)

    paths, problems = collect_images(args.images)
    for problem in problems:
        print(f"predict: {problem}", file=sys.stderr)
    bundle = load_bundle(args.model or default_model(), device="cpu", with_train_features=False)
    predictor = Predictor(bundle, mode=args.mode, threshold=args.threshold, device=args.device,
                          batch_size=args.batch_size, max_pixels=args.max_pixels, open_world=args.open_world)
    failures = []

    def on_error(path, message):
        failures.append(path)
        print(f"predict: skipped {message}", file=sys.stderr)

    results = predictor.predict_paths(paths, top_k=args.top_k, explain=args.explain, on_error=on_error,
                                      progress=len(paths) > 50 and not args.no_progress and not args.json)
    for result in results:
        print(json_text(result.to_json()) if args.json else result.to_text())  # valid JSON: never a bare NaN
    if failures or problems:
        print(f"predict: {len(results)} image(s) predicted, {len(failures) + len(problems)} skipped", file=sys.stderr)
        return 1
    return 0


def _predict_features(args: argparse.Namespace, default_model) -> int:
    """predict --features: every answerable row of the cache printed as an image's answer is; skipped rows
    reported on stderr (exit 1), the others answered."""
    from bsegn.app.bundle import load_bundle
    from bsegn.app.feature_inputs import predict_feature_rows, read_feature_rows
    from bsegn.app.inference import Predictor
    from bsegn.core.files import json_text

    bundle = load_bundle(args.model or default_model(), device="cpu", with_train_features=False)
    predictor = Predictor(bundle, mode=args.mode, threshold=args.threshold, device=args.device,
                          batch_size=args.batch_size, images=False, open_world=args.open_world)
    rows, skipped = read_feature_rows(args.features, bundle)
    for row, image, reason in skipped:
        print(f"predict: skipped row {row} ({image}): {reason}", file=sys.stderr)
    for result in predict_feature_rows(predictor, rows, top_k=args.top_k, explain=args.explain):
        print(json_text(result.to_json()) if args.json else result.to_text())
    if skipped:
        print(f"predict: {len(rows)} row(s) predicted, {len(skipped)} skipped", file=sys.stderr)
        return 1
    return 0
