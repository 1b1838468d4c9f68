"""`predict IMAGE [IMAGE|DIR ...] [--model RUN_OR_BUNDLE]`: name the class of images with a bundle.

    predictor = Predictor(load_bundle(path), mode="gzsl")
    results = predictor.predict_paths(paths, top_k=5)   # [{"image", "top": [{"class", "probability", "seen"}], ...}]

Without --model: $BSEGN_MODEL, else the most recently written bundle under ./runs.

Cold start matters here: this path imports torch, timm (to build the backbone), PIL, numpy and
bsegn's own modules only; no accelerate, albumentations, scipy or matplotlib.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MODES = ("gzsl", "zsl", "seen")


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


def resolve_device(name: str):
    """A torch.device that exists here; ConfigError naming the device otherwise (never a CUDA traceback)."""
    import torch

    from bsegn.core.errors import ConfigError

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"device {name!r} is not a device name ({error}); use cpu, cuda, cuda:1 or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"device {name!r}: {count or 'no'} CUDA device(s) visible here; use --device cpu"
                              + (f" or cuda:0..cuda:{count - 1}" if count else ""))
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device {name!r}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r}: predict runs on cpu, cuda or mps")
    return device


class Predictor:
    """Bundle + mode -> class scores for images.

    mode: "gzsl" (all classes, seen log-probabilities lowered by gamma: calibrated stacking),
    "zsl" (unseen classes only) or "seen" (seen classes only).
    """

    def __init__(self, bundle, *, mode: str = "gzsl", gamma: float | None = None, device: str = "cpu",
                 batch_size: int = 32, max_pixels: int | None = None):
        from bsegn.datasets.images import DEFAULT_MAX_PIXELS
        from bsegn.datasets.transforms import build_eval_transform

        from bsegn.core.errors import BundleError, ConfigError

        if mode not in MODES:
            raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if gamma is not None and not math.isfinite(gamma):
            raise ConfigError(f"calibration gamma (--calibration) must be a finite number, got {gamma}")
        if max_pixels is not None and max_pixels < 1:
            raise ConfigError(f"max_pixels (--max-pixels) must be >= 1, got {max_pixels}")
        if bundle.backbone is None:
            raise BundleError("this bundle has no backbone (trained on pre-extracted features): it cannot read images")
        self.bundle, self.mode, self.device, self.batch_size = bundle, mode, resolve_device(device), batch_size
        self.gamma = bundle.gamma if gamma is None else float(gamma)
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)  # None: the reader's limit
        self.transform = build_eval_transform(bundle.data_config)
        bundle.backbone.to(self.device).eval()
        bundle.trained.to(self.device)
        bundle.gzsl.to(self.device)
        if bundle.zsl is not None:
            bundle.zsl.to(self.device)

    def scores(self, images):
        """images (B, 3, H, W) normalised -> (features (B, d), scores (B, K), class_ids (K,))."""
        import torch

        from bsegn.generative.classifier import class_log_probs, gzsl_scores

        with torch.no_grad():
            images = images.to(self.device)
            features = self.bundle.backbone(images).float()
            if self.mode == "zsl" and self.bundle.zsl is not None:
                return features, class_log_probs(self.bundle.trained, self.bundle.zsl, features).cpu(), \
                    self.bundle.zsl.class_ids.cpu()
            if self.mode == "gzsl":  # the scores calibration was chosen on (the run's unseen_ranking applied)
                scores = gzsl_scores(self.bundle.trained, self.bundle.gzsl, self.bundle.zsl, features,
                                     unseen_ranking=self.bundle.unseen_ranking).cpu()
            else:
                scores = class_log_probs(self.bundle.trained, self.bundle.gzsl, features).cpu()
            class_ids = self.bundle.gzsl.class_ids.cpu()
            seen = self.bundle.seen_mask[class_ids]
            if self.mode == "seen":
                return features, scores[:, seen], class_ids[seen]
            if self.mode == "zsl":  # no separate ZSL classifier: the GZSL one restricted to unseen columns
                return features, scores[:, ~seen], class_ids[~seen]
            return features, scores - self.gamma * seen.float(), class_ids

    def explain(self, features, class_id: int, top: int = 5) -> dict[str, Any]:
        """What the semantic decoder reads from the image (a_hat) next to the class's vector."""
        import torch

        trained = self.bundle.trained
        if "decoder" not in trained.parts:
            return {"note": "this model has no semantic decoder (cycle switch off): nothing to explain"}
        with torch.no_grad():
            a_hat, _ = trained.parts["decoder"](features.reshape(1, -1))
        a_hat = a_hat[0].cpu()
        vector = trained.semantics[class_id].cpu()
        cosine = round(float(torch.nn.functional.cosine_similarity(a_hat, vector, dim=0)), 4)
        bundle = self.bundle
        if bundle.text_dim:
            return {**explain_text(bundle, a_hat, class_id), "cosine": cosine}
        names = bundle.attribute_names or [f"dim{j}" for j in range(len(vector))]
        return {"attributes_read": _attributes_read(a_hat, vector, names, top), "cosine": cosine}

    def predict_tensors(self, images, *, top_k: int = 5, explain: bool = False) -> list[dict[str, Any]]:
        """images (B, 3, H, W), the bundle's eval transform applied -> per image {"top": [{"class",
        "class_id", "probability", "seen"}, ...]} (and "explain"), best class first."""
        import torch

        features, scores, class_ids = self.scores(images)
        probabilities = torch.softmax(scores, dim=1)
        values, columns = probabilities.topk(min(top_k, scores.shape[1]), dim=1)
        answers = []
        for row in range(len(values)):
            top = []
            for value, column in zip(values[row].tolist(), columns[row].tolist()):
                cid = int(class_ids[column])
                top.append({"class": self.bundle.class_names[cid], "class_id": cid,
                            "probability": round(float(value), 6), "seen": bool(self.bundle.seen_mask[cid])})
            answer = {"top": top}
            if explain:
                answer["explain"] = self.explain(features[row], top[0]["class_id"])
            answers.append(answer)
        return answers

    def predict_paths(self, paths: list[Path], *, top_k: int = 5, explain: bool = False, progress: bool = False,
                      on_error=None) -> list[dict[str, Any]]:
        """Results in input order for readable images; `on_error(path, message)` for the others."""
        import torch

        from bsegn.datasets.images import ImageError, open_rgb

        results = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr)
        def load(path):
            """(tensor, None) or (None, message); runs in worker threads (PIL decoding releases the GIL)."""
            try:
                return self.transform(open_rgb(path, max_pixels=self.max_pixels)), None
            except ImageError as error:  # the reader's advice, in predict's terms
                return None, str(error).replace("raise max_pixels", "raise the limit with --max-pixels N")
            except (OSError, ValueError) as error:  # anything PIL raises past open_rgb's checks
                return None, f"{path}: cannot read image ({error})"

        from concurrent.futures import ThreadPoolExecutor

        # Decoding the next batch overlaps the network's work on this one (measured on the demo bundle:
        # sequential decoding made predict 0.67x the bare forward's images/s).
        pool = ThreadPoolExecutor(max_workers=2)
        batches = [paths[i:i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        pending = [pool.submit(load, p) for p in batches[0]] if batches else []
        for index, batch in enumerate(batches):
            loaded = [future.result() for future in pending]
            pending = [pool.submit(load, p) for p in batches[index + 1]] if index + 1 < len(batches) else []
            batch_paths, tensors = [], []
            for path, (tensor, message) in zip(batch, loaded):
                if tensor is None:
                    if on_error:
                        on_error(path, message)
                else:
                    tensors.append(tensor)
                    batch_paths.append(path)
            if tensors:
                for path, answer in zip(batch_paths, self.predict_tensors(torch.stack(tensors), top_k=top_k,
                                                                          explain=explain)):
                    results.append({"image": str(path), "mode": self.mode, **answer})
            if bar is not None:
                bar.update(len(batch))
        pool.shutdown()
        if bar is not None:
            bar.close()
        return results


def _attributes_read(a_hat, vector, names: list[str], top: int) -> list[dict[str, Any]]:
    import torch

    order = torch.argsort(a_hat, descending=True)[:top].tolist()
    return [{"attribute": names[j], "read": round(float(a_hat[j]), 4), "class_value": round(float(vector[j]), 4)}
            for j in order]


def explain_text(bundle, a_hat, class_id: int, top: int = 3) -> dict[str, Any]:
    """For a model trained with text semantics: the predicted class's text, and the classes whose text
    embedding is nearest (cosine) to the text part of what the decoder reads from the image; with
    attributes+text also the attributes it reads (the attribute part)."""
    import torch

    start = bundle.trained.semantic_dim - bundle.text_dim
    semantics = bundle.trained.semantics.cpu()
    similarity = torch.nn.functional.cosine_similarity(a_hat[start:].reshape(1, -1), semantics[:, start:], dim=1)
    texts = bundle.class_texts or list(bundle.class_names)
    nearest = torch.argsort(similarity, descending=True)[:top].tolist()
    out: dict[str, Any] = {"class_text": texts[class_id], "nearest_texts": [
        {"class": bundle.class_names[c], "text": texts[c], "cosine": round(float(similarity[c]), 4)} for c in nearest]}
    if start:
        names = (bundle.attribute_names or [f"dim{j}" for j in range(start)])[:start]
        out["attributes_read"] = _attributes_read(a_hat[:start], semantics[class_id, :start], names, 5)
    return out


class Prediction(dict):
    """One image's result (a dict, JSON-ready) with a text form."""

    def format(self) -> str:
        return _format_text(self)


def predict_paths(predictor: Predictor, paths: list[Path], *, top_k: int = 5, explain: bool = False,
                  on_error=None) -> list[Prediction]:
    """Predictor.predict_paths as Prediction objects (`.format()` gives predict's text line)."""
    return [Prediction(r) for r in predictor.predict_paths([Path(p) for p in paths], top_k=top_k,
                                                          explain=explain, on_error=on_error)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predict", description="Name the class of images with a bsegn model, "
                                     "including classes never seen in training.")
    parser.add_argument("images", nargs="+", help="image files and/or folders (recursed)")
    parser.add_argument("--model", default=None,
                        help="run folder written by train.py, or its bundle/ folder (default: $BSEGN_MODEL, else "
                             "the most recently written bundle under ./runs)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    parser.add_argument("--mode", choices=MODES, default="gzsl",
                        help="gzsl: all classes (default); zsl: unseen classes only; seen: seen classes only")
    parser.add_argument("--calibration", type=float, default=None,
                        help="calibrated-stacking gamma subtracted from seen-class log-probabilities "
                             "(default: the bundle's, chosen on validation)")
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


def _format_text(result: dict[str, Any]) -> str:
    top = ", ".join(f"{t['class']} {t['probability']:.3f}{'' if t['seen'] else ' (unseen)'}" for t in result["top"])
    lines = [f"{result['image']}: {top}"]
    explanation = result.get("explain")
    if explanation:
        if "note" in explanation:
            lines.append(f"    {explanation['note']}")
        if "class_text" in explanation:
            lines.append(f"    class text: {explanation['class_text']!r}; cosine {explanation['cosine']} to what the "
                         "decoder reads; nearest class texts:")
            lines += [f"      {t['cosine']:.3f}  {t['class']}: {t['text']}" for t in explanation["nearest_texts"]]
        if "attributes_read" in explanation:
            lines.append(f"    decoder reads (attribute: read / class value), cosine {explanation['cosine']}:")
            lines += [f"      {a['attribute']}: {a['read']:.3f} / {a['class_value']:.3f}"
                      for a in explanation["attributes_read"]]
    return "\n".join(lines)


def default_model(runs: str | os.PathLike = "runs") -> Path:
    """$BSEGN_MODEL, else the most recently written bundle under `runs` (said on stderr), else BundleError."""
    from bsegn.app.bundle import CONFIG_NAME
    from bsegn.core.errors import BundleError

    if os.environ.get("BSEGN_MODEL"):
        return Path(os.environ["BSEGN_MODEL"])
    written = [(path.stat().st_mtime, path.parent) for path in Path(runs).glob(f"*/bundle/{CONFIG_NAME}")]
    if not written:
        raise BundleError(f"no model given and none found: pass --model RUN_OR_BUNDLE, set $BSEGN_MODEL, or train "
                          f"one first (`accelerate launch train.py` writes {Path(runs) / 'demo-final' / 'bundle'})")
    newest = max(written)[1]
    print(f"predict: using the most recent model {newest} (choose another with --model or $BSEGN_MODEL)",
          file=sys.stderr)
    return newest


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from bsegn.app.bundle import load_bundle
    from bsegn.core.errors import ConfigError

    if args.top_k < 1 or args.batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be >= 1")
    resolve_device(args.device)  # before the bundle is read (the other options: checked by Predictor)

    paths, problems = collect_images(args.images)
    for problem in problems:
        print(f"predict: {problem}", file=sys.stderr)
    bundle = load_bundle(args.model or default_model(), device="cpu", with_train_features=False)
    predictor = Predictor(bundle, mode=args.mode, gamma=args.calibration, device=args.device,
                          batch_size=args.batch_size, max_pixels=args.max_pixels)
    failures = []

    def on_error(path, message):
        failures.append(path)
        print(f"predict: skipped {message}", file=sys.stderr)

    results = predictor.predict_paths(paths, top_k=args.top_k, explain=args.explain, on_error=on_error,
                                      progress=len(paths) > 50 and not args.no_progress and not args.json)
    for result in results:
        print(json.dumps(result) if args.json else _format_text(result))
    if failures or problems:
        print(f"predict: {len(results)} image(s) predicted, {len(failures) + len(problems)} skipped", file=sys.stderr)
        return 1
    return 0


def demo_prediction(run_dir: Path, outcome_split, image_root: Path) -> str | None:
    """Predict one test image of an unseen class with the written bundle (what `predict` would print)."""
    from bsegn.app.bundle import load_bundle

    unseen = outcome_split.loc("test_unseen")
    if not len(unseen):
        return None
    path = Path(image_root) / outcome_split.image_files[int(unseen[0])]
    predictor = Predictor(load_bundle(run_dir))
    truth = outcome_split.class_names[int(outcome_split.labels[int(unseen[0])])]
    for prediction in predict_paths(predictor, [path], top_k=3):
        return f"{prediction.format()}\n    (true class: {truth}, an unseen class)"
    return None
