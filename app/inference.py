"""The inference engine: a bundle's gate and classifiers applied to images, answers as typed results.

    predictor = Predictor(load_bundle(path), mode="gzsl")
    results = predictor.predict_paths(paths, top_k=5)      # [Prediction, ...] in input order
    results[0].unseen, results[0].p_unseen, results[0].top[0].name
    results[0].to_json()   # predict --json's object: {"image", "mode", "top": [{"class", "class_id",
                           #   "probability", "seen"}, ...], "unseen", "p_unseen"} (+ "explain")
    predictor.predict_features(rows)   # rows (N, D) features of the bundle's kind -> [Prediction, ...]

A bundle trained on pre-extracted features has no backbone: Predictor(bundle, images=False) answers features
only (predict --features, the API's predict_features); asked for images, it says so in one line.

The seen-or-unseen decision is the bundle's gate (bsegn.generative.gates): in gzsl mode `unseen` is the
gate's decision and the first class of `top` is the class gate.predict names (an unseen class exactly
when `unseen`); `p_unseen` is the gate's sigmoid((score - threshold) / temperature) (the temperature fitted on
the validation protocol with the threshold: a calibrated probability there), above 0.5 exactly when it
calls the image unseen, reported in every mode. `threshold=` overrides the gate's threshold.

Open world: where the bundle has an open-world rule (train.py fits one; bsegn.generative.open_world) every answer
also says whether the image is of none of the model's classes, `unknown`, with `p_unknown` (to_json adds both;
the text says "unknown" with the nearest classes). open_world="auto" (the default; predict --open-world auto)
turns it on where the bundle's rule was chosen on its run's validation protocol (train.py does, within an H
allowance: bsegn.generative.open_world_choice), "on" for any rule (ConfigError naming why when there is none),
"off" never (bsegn.app.bundle.open_world.resolve_open_world).

A Predictor holds only what it was built with: every answer travels in the result it returns, so one
Predictor serves any number of callers and threads (bsegn serve's worker, the Python API, predict).

Cold start matters here: this path imports torch, timm (to build the backbone), PIL, numpy and
bsegn's own modules only; no accelerate, albumentations, scipy or matplotlib.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, NamedTuple

MODES = ("gzsl", "zsl", "seen")


@dataclasses.dataclass(frozen=True)
class ClassScore:
    """One class of an image's answer: its name, id (the bundle's class index), probability and whether it
    was seen in training."""

    name: str
    class_id: int
    probability: float
    seen: bool

    def to_json(self) -> dict[str, Any]:
        return {"class": self.name, "class_id": self.class_id, "probability": self.probability, "seen": self.seen}

    def __str__(self) -> str:
        return f"{self.name} {self.probability:.3f}{'' if self.seen else ' (unseen)'}"


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's answer: its classes best first (the first is the one the gate's decision names), the
    gate's decision (`unseen`) and its p(unseen), the mode, the image's name where it came from a file, and
    what the semantic decoder read (`explain`) where asked."""

    top: tuple[ClassScore, ...]
    unseen: bool
    p_unseen: float
    mode: str
    image: str | None = None
    explain: dict[str, Any] | None = None
    unknown: bool | None = None  # the open-world rule's answer: none of the model's classes (None: rule off)
    p_unknown: float | None = None

    def to_json(self) -> dict[str, Any]:
        """predict --json's object (and the body of serve's POST /predict)."""
        answer = {"image": self.image} if self.image is not None else {}
        answer |= {"mode": self.mode, "top": [score.to_json() for score in self.top], "unseen": self.unseen,
                   "p_unseen": self.p_unseen}
        if self.unknown is not None:
            answer |= {"unknown": self.unknown, "p_unknown": self.p_unknown}
        if self.explain is not None:
            answer["explain"] = self.explain
        return answer

    def to_text(self) -> str:
        """predict's text: one line of classes and p(unseen), then the explanation's lines where asked."""
        top = ", ".join(str(score) for score in self.top)
        lines = [f"{self.image}: {top}  [p(unseen) {self.p_unseen:.3f}]"]
        if self.unknown is not None:
            lines = [f"{self.image}: unknown (none of the model's classes; nearest: {top})  [p(unknown) "
                     f"{self.p_unknown:.3f}]" if self.unknown else f"{lines[0][:-1]}, p(unknown) {self.p_unknown:.3f}]"]
        explanation = self.explain
        if explanation:
            if "note" in explanation:
                lines.append(f"    {explanation['note']}")
            if "class_text" in explanation:
                lines.append(f"    class text: {explanation['class_text']!r}; cosine {explanation['cosine']} to what "
                             "the decoder reads; nearest class texts:")
                lines += [f"      {t['cosine']:.3f}  {t['class']}: {t['text']}" for t in explanation["nearest_texts"]]
            if "attributes_read" in explanation:
                lines.append(f"    decoder reads (attribute: read / class value), cosine {explanation['cosine']}:")
                lines += [f"      {a['attribute']}: {a['read']:.3f} / {a['class_value']:.3f}"
                          for a in explanation["attributes_read"]]
        return "\n".join(lines)


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


def gate_threshold(threshold: float | None) -> float | None:
    """The threshold predict applies: --threshold T, or None (the gate's own); ConfigError for a number out of
    a threshold's range (app.bundle.gate: finite, |T| <= 1e9)."""
    from bsegn.app.bundle.gate import threshold_problem
    from bsegn.core.errors import ConfigError

    if threshold is not None and threshold_problem(threshold):
        raise ConfigError(f"the gate threshold (--threshold) {threshold_problem(threshold)}")
    return threshold


class Predictor:
    """Bundle + mode -> the gate's decision and class scores for images.

    mode: "gzsl" (all classes: the gate decides seen or unseen, that domain's expert names the class),
    "zsl" (unseen classes only) or "seen" (seen classes only). threshold: the gate's threshold (default
    the bundle's, chosen on validation).
    """

    def __init__(self, bundle, *, mode: str = "gzsl", threshold: float | None = None,
                 device: str = "cpu", batch_size: int = 32, max_pixels: int | None = None, images: bool = True,
                 open_world: str | bool = "auto"):
        from bsegn.app.bundle.open_world import resolve_open_world
        from bsegn.core.errors import ConfigError
        from bsegn.datasets.images import DEFAULT_MAX_PIXELS
        from bsegn.datasets.transforms import build_eval_transform

        if mode not in MODES:
            raise ConfigError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        threshold = gate_threshold(threshold)
        if max_pixels is not None and max_pixels < 1:
            raise ConfigError(f"max_pixels (--max-pixels) must be >= 1, got {max_pixels}")
        self.bundle, self.mode, self.device, self.batch_size = bundle, mode, resolve_device(device), batch_size
        if images:  # refused where it is built (predict IMAGE, serve at start), not at its first image
            self.require_images()
        self.gate = bundle.gate
        # auto: the bundle's rule where its run chose it on validation; on: any rule (ConfigError, why, if none)
        self.open_world = resolve_open_world(open_world, bundle.open_world, bundle.metrics, bundle.path)
        self.threshold = float(bundle.gate.threshold if threshold is None else threshold)
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)  # None: the reader's limit
        self.transform = None if bundle.backbone is None else build_eval_transform(bundle.data_config)
        if bundle.backbone is not None:
            bundle.backbone.to(self.device).eval()
        bundle.trained.to(self.device)
        bundle.gzsl.to(self.device)
        if bundle.zsl is not None:
            bundle.zsl.to(self.device)

    def require_images(self) -> None:
        """BundleError, saying what to use instead, when the bundle cannot read images (no backbone)."""
        from bsegn.core.errors import BundleError

        if self.bundle.backbone is None:
            raise BundleError("this bundle has no backbone (trained on pre-extracted features): it cannot read images; "
                              "give it features of the same kind (predict --features FILE, Model.predict_features)")

    def decide(self, images) -> Decision:
        """images (B, 3, H, W) normalised -> the Decision (the gate reads the GZSL scores in every mode)."""
        import torch

        self.require_images()
        with torch.no_grad():
            return self.decide_features(self.bundle.backbone(images.to(self.device)).float())

    def decide_features(self, features) -> Decision:
        """features (B, D) float, on the Predictor's device, as the bundle's backbone gives them -> the Decision."""
        import torch

        from bsegn.generative.classifier import class_log_probs, gzsl_scores
        from bsegn.generative.gates import gate_inputs

        bundle, gate, trained = self.bundle, self.gate, self.bundle.trained
        with torch.no_grad():
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

    def explain(self, features, class_id: int, top: int = 5) -> dict[str, Any]:
        """What the semantic decoder reads from the image next to the class's vector (app.explain)."""
        from bsegn.app.explain import explain_features

        return explain_features(self.bundle, features, class_id, top)

    def predict_tensors(self, images, *, top_k: int = 5, explain: bool = False) -> list[Prediction]:
        """images (B, 3, H, W), the bundle's eval transform applied -> one Prediction per image (no `image`
        name), the class the decision names first."""
        return self._answers(self.decide(images), top_k, explain)

    def predict_features(self, features, *, top_k: int = 5, explain: bool = False,
                         names: list[str] | None = None) -> list[Prediction]:
        """features (N, D): rows of the kind the bundle was trained on (its backbone's output, or the feature
        file it was trained from) -> one Prediction per row, named names[i] where given. DataError for another
        dimension or a row holding NaN or Inf (predict --features skips such rows before it gets here)."""
        import torch

        from bsegn.core.errors import DataError

        rows = torch.as_tensor(features, dtype=torch.float32)
        expected = self.bundle.trained.feature_dim
        if rows.ndim != 2 or rows.shape[1] != expected:
            raise DataError(f"features of shape {tuple(rows.shape)}: this model reads rows (N, {expected}), the "
                            "dimension of the features it was trained on")
        bad = (~torch.isfinite(rows).all(1)).nonzero().flatten().tolist()
        if bad:
            raise DataError(f"feature rows {bad[:5]}{' ...' if len(bad) > 5 else ''} hold NaN or Inf; drop or fix them")
        answers = self._answers(self.decide_features(rows.to(self.device)), top_k, explain)
        return answers if names is None else [dataclasses.replace(a, image=n) for a, n in zip(answers, names)]

    def _answers(self, decision: Decision, top_k: int, explain: bool) -> list[Prediction]:
        """A batch's Decision put in words: one Prediction per row, the decision's class first."""
        import torch

        features, class_ids = decision.features, decision.class_ids
        unknown, p_unknown = self.unknown(features)
        probabilities = torch.softmax(decision.scores, dim=1)
        values, columns = probabilities.topk(min(top_k, decision.scores.shape[1]), dim=1)
        answers = []
        for row in range(len(values)):
            order = columns[row].tolist()
            named = int(decision.columns[row])
            if order[0] != named:  # a tie at the threshold: the decision's class goes first all the same
                order = [named] + [c for c in order if c != named][:len(order) - 1]
            top = tuple(ClassScore(self.bundle.class_names[int(class_ids[column])], int(class_ids[column]),
                                   round(float(probabilities[row, column]), 6),
                                   bool(self.bundle.seen_mask[int(class_ids[column])])) for column in order)
            answers.append(Prediction(top, bool(decision.unseen[row]), round(float(decision.p_unseen[row]), 6),
                                      self.mode, explain=self.explain(features[row], top[0].class_id) if explain
                                      else None, unknown=None if unknown is None else bool(unknown[row]),
                                      p_unknown=None if unknown is None else round(float(p_unknown[row]), 6)))
        return answers

    def unknown(self, features):
        """features (B, d) -> (unknown (B,) bool, p_unknown (B,)) by the bundle's open-world rule
        (bsegn.generative.open_world), or (None, None) when it has none or open_world is off."""
        import torch

        if not self.open_world:
            return None, None
        rule = self.bundle.open_world
        with torch.no_grad():
            z = rule.scorer.score(self.bundle.trained, self.bundle.gzsl, features)
        return rule.unknown(z), rule.p_unknown(z)

    def predict_paths(self, paths: list[Path], *, top_k: int = 5, explain: bool = False, progress: bool = False,
                      on_error=None) -> list[Prediction]:
        """Predictions (each naming its image) in input order for readable images; `on_error(path, message)`
        for the others."""
        from bsegn.app.image_batches import read_batches

        self.require_images()
        results = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr)
        for readable, images, attempted in read_batches([Path(p) for p in paths], self.transform,
                                                        batch_size=self.batch_size, max_pixels=self.max_pixels,
                                                        device_type=self.device.type, on_error=on_error):
            if images is not None:
                answers = self.predict_tensors(images, top_k=top_k, explain=explain)
                results += [dataclasses.replace(answer, image=str(path)) for path, answer in zip(readable, answers)]
            if bar is not None:
                bar.update(attempted)
        if bar is not None:
            bar.close()
        return results
