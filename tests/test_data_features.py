"""Feature files: xlsa17 res101.mat round trip and our safetensors feature cache."""
import json

import numpy as np
import pytest
import scipy.io

from bsegn.core.errors import DataError
from bsegn.datasets.features import (
    FeatureSet,
    load_feature_cache,
    read_feature_cache_header,
    read_res101_mat,
    save_feature_cache,
    write_res101_mat,
)


def _feature_set(n=7, d=5):
    rng = np.random.default_rng(0)
    return FeatureSet(rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, 3, size=n),
                      [f"class_{i % 3}/img_{i:03d}.jpg" for i in range(n)], {"note": "test"})


def test_res101_round_trip_and_layout(tmp_path):
    original = _feature_set()
    path = write_res101_mat(tmp_path / "res101.mat", original)
    raw = scipy.io.loadmat(str(path))
    assert raw["features"].shape == (5, 7)  # D x N, as xlsa17
    assert raw["labels"].shape == (7, 1) and raw["labels"].min() >= 1  # 1-based
    assert np.array_equal(raw["labels"].ravel(), original.labels + 1)
    loaded = read_res101_mat(path)
    assert np.array_equal(loaded.features, original.features)
    assert np.array_equal(loaded.labels, original.labels) and loaded.labels.dtype == np.int64
    assert loaded.image_ids == original.image_ids
    assert not list(tmp_path.glob(".*tmp"))


def test_res101_errors(tmp_path):
    with pytest.raises(DataError, match="no such feature file"):
        read_res101_mat(tmp_path / "absent.mat")
    scipy.io.savemat(str(tmp_path / "bad.mat"), {"features": np.zeros((2, 3)), "labels": np.zeros((3, 1))})
    with pytest.raises(DataError, match="1-based"):
        read_res101_mat(tmp_path / "bad.mat")
    scipy.io.savemat(str(tmp_path / "short.mat"), {"features": np.zeros((2, 3)), "labels": np.ones((4, 1))})
    with pytest.raises(DataError, match="must agree"):
        read_res101_mat(tmp_path / "short.mat")


def test_feature_cache_round_trip(tmp_path):
    original = _feature_set()
    header = {"backbone": "test_resnet", "weights_hash": "abc123", "transform": {"size": 32}, "dataset": "demo"}
    path = save_feature_cache(tmp_path / "cache" / "features.safetensors", original, header)
    loaded = load_feature_cache(path)
    assert np.array_equal(loaded.features, original.features) and np.array_equal(loaded.labels, original.labels)
    assert loaded.image_ids == original.image_ids
    assert loaded.meta["header"] == header and loaded.meta["note"] == "test"
    assert read_feature_cache_header(path) == header
    assert [p.name for p in path.parent.iterdir()] == ["features.safetensors"]  # no temp file left


def test_feature_cache_refuses_foreign_files(tmp_path):
    from safetensors.numpy import save_file

    save_file({"features": np.zeros((1, 2), dtype=np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="not a bsegn feature cache"):
        load_feature_cache(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a readable feature cache"):
        load_feature_cache(tmp_path / "junk.safetensors")


def test_feature_set_checks_shapes():
    with pytest.raises(ValueError, match="7 feature rows, 6 labels"):
        FeatureSet(np.zeros((7, 2)), np.zeros(6), [str(i) for i in range(7)])
    subset = _feature_set().subset(np.array([2, 0]))
    assert subset.image_ids == ["class_2/img_002.jpg", "class_0/img_000.jpg"] and subset.features.shape == (2, 5)
    assert json.dumps(subset.meta)
