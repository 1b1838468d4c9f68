"""The short public API: load a trained bundle and classify images in three lines.

    from bsegn.app.api import load_model
    model = load_model("runs/demo-final")            # a run folder or its bundle/
    answer = model.predict(Image.open("x.jpg"))        # Prediction: answer.top, answer.unseen, answer.p_unseen
    answer.top[0]                                      # ClassScore("blue_dotted_cross", 7, 0.99, seen=False)

Images are PIL images, or tensors / arrays of RGB pixels (3, H, W) (floats in [0, 1] or uint8); a list
or a (B, 3, H, W) batch gives one Prediction per image. They go through the bundle's own eval transform, as
`predict` does, and the answers are the inference engine's (bsegn.app.inference) as they are: the gate's
seen-or-unseen decision and p_unseen with the classes, `to_json()` giving `predict --json`'s object. Modes:
"gzsl" (all classes, the default: the bundle's seen-or-unseen gate decides the domain and the first class
is that domain's best), "zsl" (unseen classes only), "seen" (seen classes only). A bundle with an open-world
rule also answers `answer.unknown` (none of its classes) and `answer.p_unknown`: load_model(open_world="auto"), the
default, where the bundle's run chose the rule on its validation protocol; "on" (or True) for any rule, "off"
(or False) never, as predict --open-world.

`model.predict_features(rows)` answers features instead: rows (N, D) or one row (D,) of the kind the model
was trained on (its backbone's output, e.g. a `bsegn extract` cache's rows). It is the only input of a model
trained on pre-extracted features, which has no backbone to read images with.
"""
from __future__ import annotations

import os
from typing import Any

from bsegn.app.inference import ClassScore, Prediction, Predictor

__all__ = ["ClassScore", "Model", "Prediction", "load_model"]


class Model:
    """A loaded bundle, ready to classify images, or features (see load_model)."""

    def __init__(self, bundle, *, mode: str = "gzsl", device: str = "cpu", open_world: str | bool = "auto"):
        self.bundle = bundle
        # a bundle without a backbone loads too: predict_features answers, predict says it cannot read images
        self.predictor = Predictor(bundle, mode=mode, device=device, images=False, open_world=open_world)

    @property
    def classes(self) -> list[str]:
        return list(self.bundle.class_names)

    def predict(self, images, *, top_k: int = 5) -> Prediction | list[Prediction]:
        """One image -> its Prediction (top_k classes best first, the gate's decision, p_unseen); a list or
        batch of images -> one Prediction each."""
        import torch

        self.predictor.require_images()
        single = not isinstance(images, (list, tuple)) and not (_is_array(images) and images.ndim == 4)
        batch = [images] if single else list(images)
        tensors = torch.stack([self.predictor.transform(_to_pil(image)) for image in batch])
        answers = self.predictor.predict_tensors(tensors, top_k=top_k)
        return answers[0] if single else answers

    def predict_features(self, features, *, top_k: int = 5) -> Prediction | list[Prediction]:
        """One row (D,) -> its Prediction; rows (N, D) (array or tensor) -> one Prediction each. DataError for
        another dimension than the model's or a row holding NaN or Inf."""
        single = _is_array(features) and features.ndim == 1
        answers = self.predictor.predict_features(features[None] if single else features, top_k=top_k)
        return answers[0] if single else answers


def load_model(path: str | os.PathLike | None = None, *, mode: str = "gzsl", device: str = "cpu",
               open_world: str | bool = "auto") -> Model:
    """A run folder or bundle folder (default: $BSEGN_MODEL, else the newest bundle under ./runs) -> Model.
    BundleError when it is missing or damaged. A bundle trained on pre-extracted features loads too, for
    Model.predict_features (it has no backbone to read images with). open_world: answer `unknown` (with
    p_unknown) for an image of none of the classes: "auto" where the bundle's run chose its rule on validation,
    "on" / True by any rule it has (ConfigError saying why when none), "off" / False: always a class."""
    from bsegn.app.bundle import load_bundle
    from bsegn.app.model_lookup import default_model

    bundle = load_bundle(path if path is not None else default_model(), device=device, with_train_features=False)
    return Model(bundle, mode=mode, device=device, open_world=open_world)


def _is_array(value: Any) -> bool:
    return hasattr(value, "ndim") and hasattr(value, "shape")


def _to_pil(image):
    """A PIL image as RGB; a (3, H, W) tensor/array of floats in [0, 1] or uint8 as a PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if _is_array(image):
        import torch
        from torchvision.transforms.functional import to_pil_image

        tensor = torch.as_tensor(image)
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor must be (3, H, W) or (1, H, W), got {tuple(tensor.shape)}")
        return to_pil_image(tensor).convert("RGB")
    raise TypeError(f"expected a PIL image or a (3, H, W) tensor/array, got {type(image).__name__}")
