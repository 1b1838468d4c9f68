"""The short public API: load a trained bundle and classify images in three lines.

    from bsegn.app.api import load_model
    model = load_model("runs/demo-final")            # a run folder or its bundle/
    model.predict(Image.open("x.jpg"))                 # [ClassScore("blue_dotted_cross", 0.99, seen=False), ...]

Images are PIL images, or tensors / arrays of RGB pixels (3, H, W) (floats in [0, 1] or uint8); a list
or a (B, 3, H, W) batch gives one list per image. They go through the bundle's own eval transform, as
`predict` does. Modes: "gzsl" (all classes, the default: the bundle's seen-or-unseen gate decides the
domain and the first class is that domain's best), "zsl" (unseen classes only), "seen" (seen classes only).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["ClassScore", "Model", "load_model"]


@dataclass(frozen=True)
class ClassScore:
    """One class of an image's answer: its name, probability and whether it was seen in training."""

    name: str
    probability: float
    seen: bool

    def __str__(self) -> str:
        return f"{self.name} {self.probability:.3f}{'' if self.seen else ' (unseen)'}"


class Model:
    """A loaded bundle, ready to classify images (see load_model)."""

    def __init__(self, bundle, *, mode: str = "gzsl", device: str = "cpu"):
        from bsegn.app.predict import Predictor

        self.bundle = bundle
        self.predictor = Predictor(bundle, mode=mode, device=device)

    @property
    def classes(self) -> list[str]:
        return list(self.bundle.class_names)

    def predict(self, images, *, top_k: int = 5) -> list[ClassScore] | list[list[ClassScore]]:
        """One image -> its top_k classes, best first; a list or batch of images -> one such list each."""
        import torch

        single = not isinstance(images, (list, tuple)) and not (_is_array(images) and images.ndim == 4)
        batch = [images] if single else list(images)
        tensors = torch.stack([self.predictor.transform(_to_pil(image)) for image in batch])
        answers = [[ClassScore(t["class"], t["probability"], t["seen"]) for t in answer["top"]]
                   for answer in self.predictor.predict_tensors(tensors, top_k=top_k)]
        return answers[0] if single else answers


def load_model(path: str | os.PathLike | None = None, *, mode: str = "gzsl", device: str = "cpu") -> Model:
    """A run folder or bundle folder (default: $BSEGN_MODEL, else the newest bundle under ./runs) -> Model.
    BundleError when it is missing, damaged or has no backbone (a bundle trained on pre-extracted features)."""
    from bsegn.app.bundle import load_bundle
    from bsegn.app.predict import default_model

    bundle = load_bundle(path if path is not None else default_model(), device=device, with_train_features=False)
    return Model(bundle, mode=mode, device=device)


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
