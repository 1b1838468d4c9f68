"""Per-image feature sets: the in-memory FeatureSet, xlsa17 `res101.mat` files and our feature cache.

* `FeatureSet`: features (N, D) float32, labels (N,) int64 0-based, image_ids (N), meta.
* `read_res101_mat` / `write_res101_mat`: the xlsa17 format (`features` D x N, `labels` N x 1 1-based
  into allclasses_names, `image_files` N x 1 cell), so published features can be used here and our
  features can feed other people's code.
* `save_feature_cache` / `load_feature_cache`: safetensors (features, labels) with a JSON header
  (backbone, weights hash, transform, dataset, image ids) in the safetensors metadata, and a sha256 over all
  of it (content_sha256) that loading checks: an edited or damaged cache is refused, never read as features.
  Loading never executes code from the file, and writes are atomic (bsegn.core.files.atomic_file).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bsegn.core.errors import DataError
from bsegn.core.files import atomic_file, digest_arrays, digest_json

CACHE_FORMAT = "bsegn-feature-cache-v1"
FULL_DIGEST = 64  # hex digits: the whole sha256


@dataclass
class FeatureSet:
    """Features of N images in the benchmark's image order.

    Attributes:
        features: (N, D) float32.
        labels: (N,) int64 0-based class ids into the split's class_names (-1 when unknown).
        image_ids: N image identifiers (relative paths, or "<class>/<index>" when no files exist).
        meta: free-form facts (feature type, normalisation, source files).
    """

    features: np.ndarray
    labels: np.ndarray
    image_ids: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.features = np.ascontiguousarray(self.features, dtype=np.float32)
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int64).ravel()
        self.image_ids = [str(i) for i in self.image_ids]
        if self.features.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {self.features.shape}")
        n = self.features.shape[0]
        if len(self.labels) != n or len(self.image_ids) != n:
            raise ValueError(f"{n} feature rows, {len(self.labels)} labels and {len(self.image_ids)} image ids")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def subset(self, indices: np.ndarray) -> "FeatureSet":
        """The rows `indices` (e.g. a split's locs), same meta."""
        indices = np.asarray(indices, dtype=np.int64)
        return FeatureSet(self.features[indices], self.labels[indices],
                          [self.image_ids[i] for i in indices], dict(self.meta))


# --- xlsa17 res101.mat -----------------------------------------------------------------------

def read_res101_mat(path: str | Path) -> FeatureSet:
    """Read an xlsa17 `res101.mat`: features (D, N), labels (N, 1) 1-based, image_files (N, 1) cell.

    Returns FeatureSet with features (N, D) float32 and labels 0-based.
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such feature file; expected xlsa17's res101.mat (features, labels, image_files).")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as error:
        raise DataError(f"{path}: cannot be read as a MATLAB .mat file ({error}).") from error
    for key in ("features", "labels"):
        if key not in mat:
            raise DataError(f"{path}: has no {key!r}; an xlsa17 res101.mat holds features, labels, image_files.")
    features = np.asarray(mat["features"]).T
    labels = np.asarray(mat["labels"]).astype(np.int64).ravel()
    if labels.size and labels.min() < 1:
        raise DataError(f"{path}: labels hold {int(labels.min())}; xlsa17 labels are 1-based (>= 1).")
    if "image_files" in mat:
        image_ids = [str(np.asarray(item).ravel()[0]).strip() for item in np.asarray(mat["image_files"]).ravel()]
    else:
        image_ids = [str(i) for i in range(features.shape[0])]
    if features.shape[0] != labels.size or len(image_ids) != labels.size:
        raise DataError(f"{path}: features hold {features.shape[0]} images (columns), labels {labels.size}, "
                        f"image_files {len(image_ids)}; they must agree.")
    return FeatureSet(features, labels - 1, image_ids, {"source": str(path), "format": "xlsa17-res101"})


def write_res101_mat(path: str | Path, feature_set: FeatureSet) -> Path:
    """Write `feature_set` as an xlsa17 res101.mat: features (D, N) float32, labels (N, 1) 1-based,
    image_files (N, 1)."""
    import scipy.io

    path = Path(path)
    if feature_set.labels.size and feature_set.labels.min() < 0:
        raise DataError("write_res101_mat: every image needs a known label (found -1); res101.mat labels are 1-based.")
    image_files = np.empty((len(feature_set), 1), dtype=object)
    for i, name in enumerate(feature_set.image_ids):
        image_files[i, 0] = np.array([name])
    with atomic_file(path) as temp, open(temp, "wb") as handle:
        scipy.io.savemat(handle, {
            "features": feature_set.features.T,
            "labels": (feature_set.labels + 1).reshape(-1, 1).astype(np.float64),
            "image_files": image_files,
        }, do_compression=False)
    return path


# --- our feature cache (safetensors) ----------------------------------------------------------

def save_feature_cache(path: str | Path, feature_set: FeatureSet, header: dict[str, Any]) -> Path:
    """Write features and labels as safetensors; `header` (JSON-able) and the image ids go in its metadata.

    header should name backbone, weights hash, transform and dataset: they decide whether a cache is
    still valid. Atomic: a kill never leaves a half-written file at `path`.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    metadata = {
        "format": CACHE_FORMAT,
        "header": json.dumps(header, sort_keys=True),
        "image_ids": json.dumps(feature_set.image_ids),
        "meta": json.dumps(feature_set.meta, sort_keys=True, default=str),
    }
    metadata["content_sha256"] = _content_digest(feature_set.features, feature_set.labels, metadata)
    with atomic_file(path) as temp:
        save_file({"features": feature_set.features, "labels": feature_set.labels}, str(temp), metadata=metadata)
    return path


def read_feature_cache_header(path: str | Path) -> dict[str, Any]:
    """Only the JSON header of a cache file (cheap: no tensor is read)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:
        raise DataError(f"{path}: not a readable feature cache ({error}); delete it to rebuild.") from error
    if metadata.get("format") != CACHE_FORMAT:
        raise DataError(f"{path}: not a bsegn feature cache (format {metadata.get('format')!r}); delete it to rebuild.")
    return json.loads(metadata["header"])


def load_feature_cache(path: str | Path) -> FeatureSet:
    """Read a cache written by save_feature_cache; meta gets the header under meta["header"]."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such feature cache.")
    read_feature_cache_header(path)  # refuses a foreign or unreadable file before any tensor is read
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            features = handle.get_tensor("features")
            labels = handle.get_tensor("labels")
    except Exception as error:
        raise DataError(f"{path}: not a readable feature cache ({error}); delete it to rebuild.") from error
    stored = metadata.get("content_sha256")
    # caches written before the digest existed carry none and load as they are; one that carries it must match
    if stored is not None and stored != _content_digest(features, labels, metadata):
        raise DataError(f"{path}: its content does not match the sha256 it was written with (edited or damaged); "
                        "extract the features again (bsegn extract).")
    try:
        meta = json.loads(metadata.get("meta", "{}"))
        meta["header"] = json.loads(metadata["header"])
        return FeatureSet(features, labels, json.loads(metadata["image_ids"]), meta)
    except (ValueError, KeyError, TypeError) as error:  # JSON, or rows / labels / image ids that disagree
        raise DataError(f"{path}: not a consistent feature cache ({error}); extract the features again.") from None


def _content_digest(features: np.ndarray, labels: np.ndarray, metadata: dict[str, str]) -> str:
    """sha256 over the tensors (dtype, shape, bytes) and every metadata entry but the digest itself."""
    text = {key: value for key, value in metadata.items() if key != "content_sha256"}
    return digest_json({"arrays": digest_arrays(features, labels, length=FULL_DIGEST), "metadata": text},
                       length=FULL_DIGEST)
