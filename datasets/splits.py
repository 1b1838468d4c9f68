"""The one typed object every benchmark is read into: classes, semantics and split indices.

A benchmark in this project is an image list (N images, fixed order) plus a `ZSLSplit` that says
which class each class id is, its semantic vector, which classes are seen or unseen, and which
image indices form each split of Xian et al.'s proposed split (PS).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bsegn.core.errors import DataError

SPLIT_NAMES = ("trainval", "test_seen", "test_unseen", "train", "val")


@dataclass
class ZSLSplit:
    """Classes, semantics and split indices of one benchmark.

    Attributes:
        benchmark: short name, e.g. "CUB", "AWA2", "demo".
        class_names: C names, in the column order of the semantic matrix.
        semantics: (C, k) float32 class semantic vectors (xlsa17 `att` transposed:
            L2-normalised per class for attributes).
        locs: split name -> 0-based int64 image indices into the benchmark's image list, or None
            when the files do not define that split (APY has no train/val).
        seen_classes / unseen_classes: sorted 0-based class ids, or None when the files given do not
            say which classes are seen (FLO without per-image labels).
        labels: (N,) 0-based class id of every image, when known.
        image_files: N relative image paths (the order the locs index), when known.
        original_semantics: (C, k) raw attribute values (xlsa17 `original_att`), when present.
        attribute_names: k names of the semantic dimensions, when known.
        semantic_kind: where the semantics come from: "attributes", "sentences" (CUB's sentence
            embeddings), "text" (embedded class texts) or "attributes+text" / "sentences+text"
            (bsegn.datasets.text_semantics.apply_semantics).
        descriptions: class name -> description given with the data (your CSV's description column),
            used by the text semantics; None when the data gives none.
        class_texts: C texts the text semantics embedded (description or readable name), when used.
        text_encoder / text_encoder_id: the encoder as named ("minilm", "local-dir:PATH") and its
            identity (cache key; what a bundle records), when text semantics are used.
        text_pooling: how each class text became one vector ("sentence" or "words";
            bsegn.datasets.text_semantics), when text semantics are used.
        protocol: "final" (the benchmark's own split) or "validation" (validation_protocol's: val classes
            play unseen; the only kind of split a threshold or gamma may be chosen on).
        notes: facts about this benchmark a user should know (e.g. "FLO has no class names").
        sources: files this split was read from.
    """

    benchmark: str
    class_names: list[str]
    semantics: np.ndarray
    locs: dict[str, np.ndarray | None]
    seen_classes: np.ndarray | None = None
    unseen_classes: np.ndarray | None = None
    labels: np.ndarray | None = None
    image_files: list[str] | None = None
    original_semantics: np.ndarray | None = None
    attribute_names: list[str] | None = None
    semantic_kind: str = "attributes"
    descriptions: dict[str, str] | None = None
    class_texts: list[str] | None = None
    text_encoder: str | None = None
    text_encoder_id: str | None = None
    text_pooling: str | None = None
    protocol: str = "final"
    notes: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def semantic_dim(self) -> int:
        return int(self.semantics.shape[1])

    def loc(self, name: str) -> np.ndarray:
        """The 0-based indices of split `name`; a clear error when the files do not define it."""
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        value = self.locs.get(name)
        if value is None:
            raise DataError(
                f"{self.benchmark}: the split files given define no {name!r} split "
                f"(sources: {', '.join(self.sources) or 'none'})."
            )
        return value
