"""`predict --features FILE`: a bsegn feature cache (the .safetensors `bsegn extract` writes) as a bundle's input.

    rows, skipped = read_feature_rows(path, bundle)   # FeatureSet of the rows to answer; [(row, image id, why)]
    predictions = predict_feature_rows(predictor, rows, top_k=5)

What is checked, each a DataError of one line before any row is answered: the file is a feature cache whose
content matches the sha256 it was written with (bsegn.datasets.features), its rows have the dimension the
model reads, and, for a bundle with a backbone, the features come from that backbone (same timm model, same
weights hash: features of other weights would be answered confidently and wrongly). A bundle trained on
pre-extracted features carries no backbone identity: only the dimension can be checked. Rows are skipped and
reported, the others answered: those holding NaN or Inf, and those of images extraction could not read
(zeros in the cache, listed in its meta's bad_indices).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bsegn.core.errors import DataError
from bsegn.datasets.features import FeatureSet, load_feature_cache, read_feature_cache_header


def read_feature_rows(path: str | Path, bundle) -> tuple[FeatureSet, list[tuple[int, str, str]]]:
    """The cache at `path` checked against `bundle` -> (the answerable rows (M, D), [(row, image id, reason)]
    of the skipped ones, in file order)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such feature file; --features takes the .safetensors file `bsegn extract` writes")
    try:
        header = read_feature_cache_header(path)
    except DataError:
        raise DataError(f"{path}: not a bsegn feature cache; --features takes the .safetensors file `bsegn extract` "
                        "writes") from None
    features = load_feature_cache(path)  # its sha256 checked: an edited or damaged file is refused here
    expected = bundle.trained.feature_dim
    if features.dim != expected:
        raise DataError(f"{path}: features of dimension {features.dim}, but this model reads {expected}; give "
                        "features of the kind it was trained on")
    if bundle.backbone is not None:
        _check_backbone(path, header, bundle.backbone)
    unreadable = set(int(i) for i in features.meta.get("bad_indices", []))
    finite = np.isfinite(features.features).all(axis=1)
    skipped = [(row, features.image_ids[row], "its image could not be read when the features were extracted"
                if row in unreadable else "its features hold NaN or Inf")
               for row in range(len(features)) if row in unreadable or not finite[row]]
    keep = np.setdiff1d(np.arange(len(features)), [row for row, _, _ in skipped])
    return features.subset(keep), skipped


def _check_backbone(path: Path, header: dict, backbone) -> None:
    """DataError unless the cache was extracted by `backbone` (timm model name and the hash of its weights)."""
    from bsegn.backbone.factory import weights_hash

    ours = (backbone.model_name, weights_hash(backbone.model))
    theirs = (header.get("model_name"), header.get("weights_hash"))
    if theirs != ours:
        raise DataError(f"{path}: features of {theirs[0]} (weights {theirs[1]}), but this bundle's backbone is "
                        f"{ours[0]} (weights {ours[1]}); extract them with this bundle's backbone, or give the images")


def predict_feature_rows(predictor, rows: FeatureSet, *, top_k: int = 5, explain: bool = False) -> list:
    """One Prediction per row (named by its image id), `predictor.batch_size` rows at a time."""
    answers = []
    for start in range(0, len(rows), predictor.batch_size):
        stop = start + predictor.batch_size
        answers += predictor.predict_features(rows.features[start:stop], top_k=top_k, explain=explain,
                                              names=rows.image_ids[start:stop])
    return answers
