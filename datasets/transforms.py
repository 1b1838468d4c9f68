"""Image -> tensor transforms built from a backbone's timm data config.

The data config is timm's dict: input_size (3, H, W), interpolation, mean, std, crop_pct.

* `EvalTransform` reproduces timm's eval transform (resize the shorter side to size / crop_pct,
  center crop, normalise) with PIL, numpy and torch only: it sits on `predict`'s cold-start
  path, where importing albumentations (about 2.5 s) or timm (3.6 s) would be user-visible.
* `build_train_transform` is the albumentations augmentation used for fine-tuning (imported
  lazily, with the PyPI update check turned off first).
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from bsegn.datasets.images import SOURCE_SIZE

_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
DEFAULT_CROP_PCT = 0.875  # timm's default when a config gives none
DRAFT_MARGIN = 2  # reduced_decode keeps >= 2x the resized size, so the antialiased resize still reduces >= 2x


def _image_size(data_config: dict[str, Any]) -> tuple[int, int]:
    """(H, W) from a timm data config's input_size (C, H, W) or a plain int."""
    size = data_config["input_size"]
    if isinstance(size, int):
        return size, size
    return int(size[-2]), int(size[-1])


def _interpolation(data_config: dict[str, Any]) -> str:
    name = data_config.get("interpolation") or "bilinear"
    if name == "random":  # timm's train-only option; eval uses bilinear
        name = "bilinear"
    if name not in _PIL_RESAMPLE:
        raise ValueError(f"unsupported interpolation {name!r}; expected one of {sorted(_PIL_RESAMPLE)}")
    return name


class EvalTransform:
    """timm's eval transform without timm: PIL image or (H, W, 3) uint8 array -> (3, H, W) float32.

    Picklable (DataLoader workers) and stateless. The sizes follow timm exactly: scale size =
    floor(size / crop_pct); the shorter side is resized to it (the longer to int(scale * long /
    short), as torchvision does); the center crop offset rounds half-to-even like torchvision.

    reduced_decode: let the JPEG decoder reduce a file by 1/2, 1/4 or 1/8 while it stays at least
    DRAFT_MARGIN times the resized size (open_rgb's decode_size = `decode_size`); the resize then
    starts from that image, to the size computed from the file's own size, so only the resampling
    differs, never the geometry. Off by default (the output of a full decode; predict decodes in full).
    Measured with ImageNet EfficientNet-Lite0 on 7 photos: pooled features within 2-7 % (relative
    L2; cosine >= 0.996) of a full decode with the margin of 2, 7-15 % without it.
    """

    def __init__(self, data_config: dict[str, Any], *, reduced_decode: bool = False):
        self.image_size = _image_size(data_config)
        self.crop_pct = float(data_config.get("crop_pct") or DEFAULT_CROP_PCT)
        self.interpolation = _interpolation(data_config)
        self.mean = tuple(float(v) for v in data_config.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(v) for v in data_config.get("std", (0.229, 0.224, 0.225)))
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        self.reduced_decode = bool(reduced_decode)

    def describe(self) -> dict[str, Any]:
        """Everything that determines the output: part of the feature-cache key."""
        described = {
            "kind": "eval-center-crop",
            "image_size": list(self.image_size),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }
        if self.reduced_decode:  # only when on: the keys of caches made without it stay as they were
            described["reduced_decode"] = True
        return described

    def decode_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The size a (width, height) file may be decoded at (see reduced_decode), or None: in full."""
        if not self.reduced_decode:
            return None
        new_w, new_h = self.resized_size(width, height)
        return new_w * DRAFT_MARGIN, new_h * DRAFT_MARGIN

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shorter-side resize, as timm/torchvision compute it."""
        target_h, target_w = self.image_size
        scale_h, scale_w = math.floor(target_h / self.crop_pct), math.floor(target_w / self.crop_pct)
        if scale_h == scale_w:
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = scale_h, int(scale_h * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        # Non-square target (timm's ResizeKeepRatio): scale by the smaller of the two ratios.
        ratio = min(height / scale_h, width / scale_w)
        return round(width / ratio), round(height / ratio)

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        return self.normalize(self.to_uint8(image))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) or (B, 3, H, W) from to_uint8 -> float32 normalised: the same elementwise steps
        for one image or a stacked batch, so a batch normalised at once equals its images one by one, bit
        for bit (predict normalises a whole batch in one call: per image, these four small tensor ops cost
        a tenth of a 64-px image's whole preprocessing)."""
        return pixels.float().div_(255.0).sub_(self._mean).div_(self._std)

    def to_uint8(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """PIL image or (H, W, 3) uint8 array -> (3, H, W) uint8: resized and cropped, not yet normalised
        (a quarter of the float tensor's bytes, for worker queues and host-to-device copies)."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        new_w, new_h = self.resized_size(*image.info.get(SOURCE_SIZE, image.size))
        if (new_w, new_h) != image.size:
            image = image.resize((new_w, new_h), _PIL_RESAMPLE[self.interpolation])
        crop_h, crop_w = self.image_size
        array = np.asarray(image)
        if new_h < crop_h or new_w < crop_w:  # only with crop_pct > 1: pad with zeros as torchvision
            pad_h, pad_w = max(crop_h - new_h, 0), max(crop_w - new_w, 0)
            array = np.pad(array, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
            new_h, new_w = array.shape[:2]
        top = int(round((new_h - crop_h) / 2.0))
        left = int(round((new_w - crop_w) / 2.0))
        array = array[top : top + crop_h, left : left + crop_w]
        if not array.flags.writeable:  # np.asarray(PIL image) is read-only; torch wants its own copy
            array = array.copy()
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


class TrainTransform:
    """Albumentations augmentation for fine-tuning: (H, W, 3) uint8 RGB array -> (3, H, W) float32.

    RandomResizedCrop to the backbone's input size (scale 0.08-1, timm's default range), horizontal
    flip, colour jitter, normalise with the backbone's mean/std. Built lazily so that pickling it
    into DataLoader workers does not pickle albumentations objects.
    """

    def __init__(self, data_config: dict[str, Any], *, scale: tuple[float, float] = (0.08, 1.0),
                 hflip: float = 0.5, color_jitter: float = 0.4, seed: int | None = None):
        self.image_size = _image_size(data_config)
        self.interpolation = _interpolation(data_config)
        self.mean = tuple(float(v) for v in data_config.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(v) for v in data_config.get("std", (0.229, 0.224, 0.225)))
        self.scale = tuple(scale)
        self.hflip = float(hflip)
        self.color_jitter = float(color_jitter)
        self.seed = seed
        self._pipeline: Callable | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "train-random-resized-crop", "image_size": list(self.image_size),
                "scale": list(self.scale), "hflip": self.hflip, "color_jitter": self.color_jitter,
                "mean": list(self.mean), "std": list(self.std)}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pipeline"] = None
        return state

    def _build(self):
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never wait on PyPI
        import albumentations as A  # noqa: N812  (the library's own convention)
        import cv2

        cv2_interp = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
                      "bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4,
                      "box": cv2.INTER_AREA, "hamming": cv2.INTER_LINEAR}[self.interpolation]
        jitter = self.color_jitter
        steps = [A.RandomResizedCrop(size=self.image_size, scale=self.scale, interpolation=cv2_interp)]
        if self.hflip > 0:
            steps.append(A.HorizontalFlip(p=self.hflip))
        if jitter > 0:
            steps.append(A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=0.0, p=0.8))
        # max_pixel_value=255: uint8 input scaled to 0..1 before mean/std, as timm does.
        steps.append(A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0))
        kwargs = {} if self.seed is None else {"seed": self.seed}
        return A.Compose(steps, **kwargs)

    def __call__(self, image: Image.Image | np.ndarray, seed: int | None = None) -> torch.Tensor:
        """Augment one image; with `seed`, the augmentation depends only on that seed.

        Fine-tuning passes a seed made of (run seed, epoch, image index), so an epoch's
        augmentations are the same whatever the worker count, and a resumed run repeats them.
        """
        if self._pipeline is None:
            self._pipeline = self._build()
        if seed is not None:
            self._pipeline.set_random_seed(seed)
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        out = self._pipeline(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).float()


def build_eval_transform(data_config: dict[str, Any], *, reduced_decode: bool = False) -> EvalTransform:
    """The deterministic eval transform (see EvalTransform)."""
    return EvalTransform(data_config, reduced_decode=reduced_decode)


def build_train_transform(data_config: dict[str, Any], **options) -> TrainTransform:
    """The albumentations train augmentation (see TrainTransform for options)."""
    return TrainTransform(data_config, **options)
