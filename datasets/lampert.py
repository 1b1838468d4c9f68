"""The original Animals-with-Attributes v1 image features (Lampert et al. 2009) as a ZSL benchmark.

Files: `<features_dir>/<class>-<type>.pic.bz2`, one bz2-compressed Python pickle of a float64 array
(images of that class, D) per class; types lss (2000-d, the default), surf, sift, rgsift (2000-d),
phog (252-d). Concatenating the classes in alphabetical order of class name gives the image list
that xlsa17's AWA1 `att_splits.mat` locs index (N = 30,475; checked: every loc is class-consistent,
see docs/data.md), so the pair is a real benchmark with the standard split.

Safety: the files are pickles. They are read with `RestrictedUnpickler`, which admits only the three
globals a numpy array pickle needs (numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype)
and refuses anything else before it is called, so a crafted file cannot run code. Never plain
pickle.load.

Decoding all 50 files takes a while, so the decoded (N, D) array is cached as an .npz in
cache_dir(), keyed by the files' names, sizes and mtimes (loaded with allow_pickle=False).
"""
from __future__ import annotations

import bz2
import io
import pickle
from pathlib import Path

import numpy as np

from bsegn.core.errors import DataError
from bsegn.core.files import atomic_file, digest_json
from bsegn.datasets.features import FeatureSet
from bsegn.datasets.paths import cache_dir
from bsegn.datasets.splits import ZSLSplit

FEATURE_TYPES = ("lss", "surf", "sift", "rgsift", "phog")

# module -> names admitted; numpy 2 moved numpy.core to numpy._core (numpy.core still works but warns).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class UnsafePickleError(DataError):
    """A pickle referenced something other than a numpy array; it was refused, nothing was executed."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and nothing else.

    `find_class` is the only way a pickle reaches a Python callable, so refusing every other
    (module, name) there means no function from the file is ever resolved, let alone called.
    """

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refused to unpickle {module}.{name}: only numpy arrays are allowed in feature files"
            )
        return super().find_class(module, name)


def load_numpy_pickle(path: str | Path) -> np.ndarray:
    """Read one `.pic.bz2` (or plain `.pic`) file holding a single numpy array, safely."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot be read ({error}); the file is missing or corrupt.") from error
    try:
        value = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: {error}") from None
    except Exception as error:  # a malformed pickle: many exception types
        raise DataError(f"{path}: not a valid numpy pickle ({type(error).__name__}: {error}).") from error
    if not isinstance(value, np.ndarray):
        raise DataError(f"{path}: holds a {type(value).__name__}, expected a numpy array.")
    return value


def hellinger_normalise(counts: np.ndarray) -> np.ndarray:
    """Hellinger map of bag-of-words histograms (N, D) -> (N, D): sqrt of the L1-normalised rows.

    Makes the dot product of two rows their Bhattacharyya coefficient, the usual kernel for
    histogram features; an all-zero row stays zero.
    """
    counts = np.asarray(counts, dtype=np.float64)
    totals = np.abs(counts).sum(axis=1, keepdims=True)
    return np.sqrt(np.abs(counts) / np.maximum(totals, 1e-12)).astype(np.float32)


def features_dir_beside(splits_dir: str | Path) -> Path:
    """The Lampert features folder as the data notes lay it out (docs/data.md): `AWA1_Lampert2009/feat` in the
    folder given as splits_dir, or beside it when splits_dir is AWA1's own folder."""
    splits_dir = Path(splits_dir)
    candidates = [splits_dir / "AWA1_Lampert2009" / "feat", splits_dir.parent / "AWA1_Lampert2009" / "feat"]
    return next((folder for folder in candidates if folder.is_dir()), candidates[0])


def _feature_files(features_dir: Path, class_names: list[str], feature_type: str) -> list[Path]:
    files = [features_dir / f"{name}-{feature_type}.pic.bz2" for name in class_names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"{features_dir}: {len(missing)} of {len(files)} AwA1 '{feature_type}' feature files are missing "
            f"(first: {missing[0]}). Expected one <class>-{feature_type}.pic.bz2 per class of Animals with "
            "Attributes v1 (Lampert 2009)."
        )
    return files


def _cache_key(files: list[Path], feature_type: str) -> str:
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return digest_json({"feature_type": feature_type, "files": stats})


def _decode_all(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """-> raw features (N, D) float32 in the files' order, per-file image counts (C,)."""
    arrays = [load_numpy_pickle(f) for f in files]
    dims = {a.shape[1] if a.ndim == 2 else None for a in arrays}
    if len(dims) != 1 or None in dims:
        raise DataError(f"{files[0].parent}: the feature files do not all hold 2-d arrays of one width "
                        f"(widths {sorted(str(d) for d in dims)}).")
    counts = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    return np.concatenate(arrays).astype(np.float32), counts


def _load_raw(features_dir: Path, class_names: list[str], feature_type: str) -> tuple[np.ndarray, np.ndarray]:
    files = _feature_files(features_dir, class_names, feature_type)
    cache = cache_dir() / f"awa1-lampert-{feature_type}-{_cache_key(files, feature_type)}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as stored:
                return stored["features"], stored["counts"]
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    features, counts = _decode_all(files)
    with atomic_file(cache) as temp, open(temp, "wb") as handle:  # a handle: np.savez would append ".npz" to a name
        np.savez(handle, features=features, counts=counts)
    return features, counts


def load_awa1_lampert(features_dir: str | Path | None = None, splits_dir: str | Path | None = None,
                      feature_type: str = "lss", hellinger: bool = True) -> tuple[FeatureSet, ZSLSplit]:
    """The AwA1 Lampert 2009 features paired with xlsa17's AWA1 att_splits.mat.

    Args:
        features_dir: folder of `<class>-<type>.pic.bz2` files (default: features_dir_beside(splits_dir)).
        splits_dir: folder of AWA1's att_splits.mat + class lists, or its parent (required).
        feature_type: lss (default), surf, sift, rgsift or phog.
        hellinger: apply the Hellinger map (sqrt of L1-normalised counts) to every row; default on.

    Returns:
        (FeatureSet with features (30475, D) float32, labels (N,) int64 into split.class_names,
        image_ids "<class>/<index in class>"), and the AWA1 ZSLSplit with labels set and validated.
    """
    from bsegn.datasets.xlsa17 import load_xlsa17

    if feature_type not in FEATURE_TYPES:
        raise DataError(f"unknown AwA1 feature type {feature_type!r}; expected one of {', '.join(FEATURE_TYPES)}.")
    if splits_dir is None:
        raise DataError("AwA1 Lampert features: pass splits_dir, the folder of AWA1's att_splits.mat (its "
                        "features are looked up in AWA1_Lampert2009/feat there or beside it; docs/data.md).")
    features_dir = Path(features_dir) if features_dir is not None else features_dir_beside(splits_dir)
    if not features_dir.is_dir():
        raise DataError(f"{features_dir}: no such folder; expected the AwA1 v1 'feat' folder of "
                        f"<class>-{feature_type}.pic.bz2 files.")

    split = load_xlsa17("AWA1", splits_dir)
    # The image order the AWA1 locs index: classes in alphabetical order of name, images in file order.
    order = sorted(range(split.num_classes), key=lambda i: split.class_names[i])
    ordered_names = [split.class_names[i] for i in order]
    raw, counts = _load_raw(features_dir, ordered_names, feature_type)
    labels = np.repeat(np.array(order, dtype=np.int64), counts)
    image_ids = [f"{name}/{j:05d}" for name, count in zip(ordered_names, counts) for j in range(count)]
    features = hellinger_normalise(raw) if hellinger else raw
    split.benchmark = "AWA1-Lampert2009"
    split.image_files = None
    split.notes.append(f"AwA1 Lampert 2009 '{feature_type}' features ({raw.shape[1]}-d bag of words"
                       f"{', Hellinger-normalised' if hellinger else ', raw counts'}); classes concatenated "
                       "alphabetically form the image list the AWA1 locs index.")
    split.sources.append(str(features_dir))
    from bsegn.datasets.xlsa17 import validate_split

    split.labels = labels
    validate_split(split, labels, source=f"{features_dir} + {split.sources[0]}")
    feature_set = FeatureSet(features, labels, image_ids, {
        "benchmark": "AWA1-Lampert2009", "feature_type": feature_type, "hellinger": bool(hellinger),
        "features_dir": str(features_dir),
    })
    return feature_set, split
