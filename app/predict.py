"""`predict IMAGE [IMAGE|DIR ...] [--model RUN_OR_BUNDLE]`: name the class of images with a bundle.

    predictor = Predictor(load_bundle(path), mode="gzsl")
    results = predictor.predict_paths(paths, top_k=5)
    # [{"image", "mode", "top": [{"class", "class_id", "probability", "seen"}], "unseen", "p_unseen"}, ...]

The seen-or-unseen decision is the bundle's gate (bsegn.generative.gates): in gzsl mode `unseen` is the
gate's decision and the first class of `top` is the class gate.predict names (an unseen class exactly
when `unseen`); `p_unseen` is the gate's sigmoid((score - threshold) / temperature) (the temperature fitted on
the validation protocol with the threshold: a calibrated probability there), above 0.5 exactly when it
calls the image unseen, reported in every mode. `--threshold T` overrides the gate's threshold.

Without --model: $BSEGN_MODEL, else the most recently written bundle under ./runs.

Cold start matters here: this path imports torch, timm (to build the backbone), PIL, numpy and
bsegn's own modules only; no accelerate, albumentations, scipy or matplotlib.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, NamedTuple

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


class Decision(NamedTuple):
    """A batch's answer before it is put in words: features (B, d), scores (B, K) over class_ids (K,)
    (gzsl mode: seen columns shifted per image so that their argmax lies in the gate's domain),
    columns (B,) the column each image is given, unseen (B,) bool, p_unseen (B,)."""

    features: Any
    scores: Any
    class_ids: Any
    columns: Any
    unseen: Any
    p_unseen: Any


class Predictor:
    """Bundle + mode -> the gate's decision and class scores for images.

    mode: "gzsl" (all classes: the gate decides seen or unseen, that domain's expert names the class),
    "zsl" (unseen classes only) or "seen" (seen classes only). threshold: the gate's threshold (default
    the bundle's, chosen on validation).
    """

    def __init__(self, bundle, *, mode: str = "gzsl", threshold: float | None = None,
                 device: str = "cpu", batch_size: int = 32, max_pixels: int | None = None):
        from bsegn.datasets.images import DEFAULT_MAX_PIXELS
        from bsegn.core.errors import BundleError, ConfigError
        from bsegn.datasets.transforms import build_eval_transform

        if mode not in MODES:
            raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        threshold = gate_threshold(threshold)
        if max_pixels is not None and max_pixels < 1:
            raise ConfigError(f"max_pixels (--max-pixels) must be >= 1, got {max_pixels}")
        if bundle.backbone is None:
            raise BundleError("this bundle has no backbone (trained on pre-extracted features): it cannot read images")
        self.bundle, self.mode, self.device, self.batch_size = bundle, mode, resolve_device(device), batch_size
        self.gate = bundle.gate
        self.threshold = float(bundle.gate.threshold if threshold is None else threshold)
        self._last: Decision | None = None
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)  # None: the reader's limit
        self.transform = build_eval_transform(bundle.data_config)
        bundle.backbone.to(self.device).eval()
        bundle.trained.to(self.device)
        bundle.gzsl.to(self.device)
        if bundle.zsl is not None:
            bundle.zsl.to(self.device)

    def decide(self, images) -> Decision:
        """images (B, 3, H, W) normalised -> the Decision (the gate reads the GZSL scores in every mode)."""
        import torch

        from bsegn.generative.classifier import class_log_probs, gzsl_scores
        from bsegn.generative.gates import gate_inputs

        bundle, gate, trained = self.bundle, self.gate, self.bundle.trained
        with torch.no_grad():
            images = images.to(self.device)
            features = bundle.backbone(images).float()
            integrated = trained.integrate(features)  # once: every classifier and the gate read it
            zsl_scores = None
            if bundle.zsl is not None and (self.mode == "zsl" or bundle.unseen_ranking == "zsl"):
                zsl_scores = class_log_probs(trained, bundle.zsl, features, integrated=integrated)
            scores = gzsl_scores(trained, bundle.gzsl, bundle.zsl, features, unseen_ranking=bundle.unseen_ranking,
                                 zsl_scores=zsl_scores, integrated=integrated).cpu()  # what the gate was tuned on
            inputs = gate_inputs(trained, bundle.gzsl, bundle.zsl, features, kinds=[gate.kind], scores=scores,
                                 integrated=integrated)
            score = gate.domain_score(inputs)  # read once: decision, p_unseen and class
            margin = gate.margin(inputs, self.threshold, score)
            unseen, p_unseen = margin > 0, gate.p_unseen(inputs, self.threshold, score)
            class_ids = bundle.gzsl.class_ids.cpu()
            seen = inputs.seen_columns
            if self.mode == "gzsl":
                columns = gate.predict(inputs, self.threshold, score)
                best_seen, best_unseen = scores[:, seen].max(1).values, scores[:, ~seen].max(1).values
                # Seen columns lowered per image by the offset that makes "best unseen - best seen" the gate's
                # margin: their softmax ranks the gate's domain first. For stacking the offset is gamma itself.
                offset = torch.full_like(margin, -self.threshold) if gate.kind == "stacking" else \
                    margin - (best_unseen - best_seen)
                return Decision(features, scores - offset[:, None] * seen.float(), class_ids, columns, unseen, p_unseen)
            if self.mode == "seen":  # (unseen_ranking moves unseen columns only)
                scores, class_ids = scores[:, seen], class_ids[seen]
            elif zsl_scores is not None:
                scores, class_ids = zsl_scores.cpu(), bundle.zsl.class_ids.cpu()
            else:  # no separate ZSL classifier (so no re-ranking): the GZSL one restricted to unseen columns
                scores, class_ids = scores[:, ~seen], class_ids[~seen]
            return Decision(features, scores, class_ids, scores.argmax(1), torch.full_like(unseen, self.mode == "zsl"),
                            p_unseen)

    def last_p_unseen(self) -> list[float]:
        """The gate's p(unseen) of each image of the last batch predict_tensors answered."""
        return [round(float(p), 6) for p in self._last.p_unseen]

    def explain(self, features, class_id: int, top: int = 5) -> dict[str, Any]:
        """What the semantic decoder reads from the image next to the class's vector (app.explain)."""
        from bsegn.app.explain import explain_features

        return explain_features(self.bundle, features, class_id, top)

    def predict_tensors(self, images, *, top_k: int = 5, explain: bool = False) -> list[dict[str, Any]]:
        """images (B, 3, H, W), the bundle's eval transform applied -> per image {"top": [{"class",
        "class_id", "probability", "seen"}, ...], "unseen", "p_unseen"} (and "explain"), the class the
        decision names first."""
        import torch

        decision = self.decide(images)
        self._last = decision
        features, class_ids = decision.features, decision.class_ids
        probabilities = torch.softmax(decision.scores, dim=1)
        values, columns = probabilities.topk(min(top_k, decision.scores.shape[1]), dim=1)
        answers = []
        for row in range(len(values)):
            order = columns[row].tolist()
            named = int(decision.columns[row])
            if order[0] != named:  # a tie at the threshold: the decision's class goes first all the same
                order = [named] + [c for c in order if c != named][:len(order) - 1]
            top = []
            for column in order:
                cid = int(class_ids[column])
                top.append({"class": self.bundle.class_names[cid], "class_id": cid,
                            "probability": round(float(probabilities[row, column]), 6),
                            "seen": bool(self.bundle.seen_mask[cid])})
            answer = {"top": top, "unseen": bool(decision.unseen[row]),
                      "p_unseen": round(float(decision.p_unseen[row]), 6)}
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
                return self.transform.to_uint8(open_rgb(path, max_pixels=self.max_pixels)), None
            except ImageError as error:  # the reader's advice, in predict's terms
                return None, str(error).replace("raise max_pixels", "raise the limit with --max-pixels N")
            except (OSError, ValueError) as error:  # anything PIL raises past open_rgb's checks
                return None, f"{path}: cannot read image ({error})"

        threads = decode_threads(self.device.type)
        pool = ThreadPoolExecutor(max_workers=threads) if threads else InlineExecutor()
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
                images = self.transform.normalize(torch.stack(tensors))
                for path, answer in zip(batch_paths, self.predict_tensors(images, top_k=top_k, explain=explain)):
                    results.append({"image": str(path), "mode": self.mode, **answer})
            if bar is not None:
                bar.update(len(batch))
        pool.shutdown()
        if bar is not None:
            bar.close()
        return results


MAX_DECODE_THREADS = 4


def decode_threads(device_type: str) -> int:
    """Threads that decode the next batch while the network works on this one: on a GPU, all cores but
    one (up to MAX_DECODE_THREADS); on the CPU only cores the network's own threads leave free. Measured
    on 2 cores with torch's 2 threads (bench/predict.py, demo bundle, medians of 9 passes): decoding in
    the main thread between batches 0.66 of the bare forward's images/s, one overlapping thread 0.62, two
    0.58 (a decoding thread takes a core from the forward's OpenMP team, which then waits at every
    barrier): 0 threads there."""
    import torch

    from bsegn.datasets.image_dataset import available_cores

    spare = available_cores() - (1 if device_type == "cuda" else torch.get_num_threads())
    return max(0, min(spare, MAX_DECODE_THREADS))


class InlineExecutor:
    """ThreadPoolExecutor's submit/shutdown, run in the calling thread at submit time."""

    def submit(self, function, *args) -> Future:
        future = Future()
        future.set_result(function(*args))
        return future

    def shutdown(self) -> None:
        pass


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
    parser.add_argument("--threshold", type=float, default=None,
                        help="the gate's threshold: an image is called unseen when the gate's domain score is above "
                             "it (default: the bundle's, chosen on validation)")
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


def gate_threshold(threshold: float | None) -> float | None:
    """The threshold predict applies: --threshold T, or None (the gate's own); ConfigError for a number out of
    a threshold's range (bundle_gate: finite, |T| <= 1e9)."""
    from bsegn.app.bundle_gate import threshold_problem
    from bsegn.core.errors import ConfigError

    if threshold is not None and threshold_problem(threshold):
        raise ConfigError(f"the gate threshold (--threshold) {threshold_problem(threshold)}")
    return threshold


def _format_text(result: dict[str, Any]) -> str:
    top = ", ".join(f"{t['class']} {t['probability']:.3f}{'' if t['seen'] else ' (unseen)'}" for t in result["top"])
    lines = [f"{result['image']}: {top}" + (f"  [p(unseen) {result['p_unseen']:.3f}]" if "p_unseen" in result else "")]
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


def no_compile_cache() -> None:
    """Point torch's compile cache at the existing temporary folder, unless the user chose one: importing
    torchvision imports torch._dynamo, which creates `$TMPDIR/torchinductor_<user>/` on import, although
    predict and serve never compile. Nothing is written there unless something compiles. For the CLI
    commands only (a library user's process keeps torch's default)."""
    import tempfile

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.gettempdir())


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from bsegn.app.bundle import load_bundle
    from bsegn.core.errors import ConfigError
    from bsegn.core.files import json_text

    no_compile_cache()
    if args.top_k < 1 or args.batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be >= 1")
    resolve_device(args.device)  # before the bundle is read (the other options: checked by Predictor)

    paths, problems = collect_images(args.images)
    for problem in problems:
        print(f"predict: {problem}", file=sys.stderr)
    bundle = load_bundle(args.model or default_model(), device="cpu", with_train_features=False)
    predictor = Predictor(bundle, mode=args.mode, threshold=args.threshold, device=args.device,
                          batch_size=args.batch_size, max_pixels=args.max_pixels)
    failures = []

    def on_error(path, message):
        failures.append(path)
        print(f"predict: skipped {message}", file=sys.stderr)

    results = predictor.predict_paths(paths, top_k=args.top_k, explain=args.explain, on_error=on_error,
                                      progress=len(paths) > 50 and not args.no_progress and not args.json)
    for result in results:
        print(json_text(result) if args.json else _format_text(result))  # valid JSON: never a bare NaN
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
