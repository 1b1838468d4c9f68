"""The AwA1 Lampert 2009 loader: safe unpickling, Hellinger map, the real benchmark pairing."""
import bz2
import os
import pickle
import time

import numpy as np
import pytest

from bsegn.core.errors import DataError
from bsegn.datasets.lampert import (
    RestrictedUnpickler,
    UnsafePickleError,
    hellinger_normalise,
    load_awa1_lampert,
    load_numpy_pickle,
)


class _RunsShell:
    """Pickles to a call of os.system: what a malicious feature file would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_crafted_pickle_is_refused_without_executing(tmp_path, protocol):
    marker = tmp_path / "executed"
    payload = pickle.dumps(_RunsShell(marker), protocol=protocol)
    assert b"system" in payload  # the crafted file really references os.system
    path = tmp_path / "evil-lss.pic.bz2"
    path.write_bytes(bz2.compress(payload))
    with pytest.raises(UnsafePickleError, match=r"(posix|os|nt)\.system"):
        load_numpy_pickle(path)
    assert not marker.exists(), "the pickle's payload ran"


def test_pickle_hiding_a_call_inside_an_array_is_refused(tmp_path):
    # A legitimate array followed by a builtins.eval reference in a tuple: refused as a whole.
    path = tmp_path / "mixed.pic"
    path.write_bytes(pickle.dumps((np.zeros(3), _CallsEval()), protocol=4))
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_numpy_pickle(path)


def test_numpy_array_pickle_loads(tmp_path):
    array = np.arange(12, dtype=np.float64).reshape(3, 4) * 1.5
    path = tmp_path / "ok-lss.pic.bz2"
    # Protocol 4 (protocol 2 on Python 3 routes bytes through _codecs.encode, which is refused).
    path.write_bytes(bz2.compress(pickle.dumps(array, protocol=4)))
    loaded = load_numpy_pickle(path)
    assert loaded.dtype == np.float64 and np.array_equal(loaded, array)
    # A pickle of a plain int is not an array: a clear error, not a crash later.
    path.write_bytes(bz2.compress(pickle.dumps(7, protocol=2)))
    with pytest.raises(DataError, match="expected a numpy array"):
        load_numpy_pickle(path)


def test_python2_style_numpy_pickle_names_are_mapped():
    # The real files (Python 2, NumPy 1) reference numpy.core.multiarray._reconstruct.
    unpickler = RestrictedUnpickler(__import__("io").BytesIO(b""), encoding="latin1")
    assert unpickler.find_class("numpy.core.multiarray", "_reconstruct") is not None
    with pytest.raises(UnsafePickleError):
        unpickler.find_class("numpy", "load")


def test_hellinger_rows():
    counts = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [4.0, 4.0, 8.0]])
    mapped = hellinger_normalise(counts)
    assert np.allclose(mapped[0], np.sqrt([0.25, 0.75, 0.0]))
    assert np.allclose(mapped[1], 0.0)
    assert np.allclose((mapped[[0, 2]] ** 2).sum(axis=1), 1.0)


@pytest.mark.slow
def test_real_awa1_lampert_benchmark(shared_data):
    features_dir = shared_data / "AWA1_Lampert2009" / "feat"
    start = time.perf_counter()
    feature_set, split = load_awa1_lampert(features_dir, shared_data / "AWA1")
    first = time.perf_counter() - start
    assert feature_set.features.shape == (30475, 2000) and feature_set.features.dtype == np.float32
    assert len(split.loc("trainval")) + len(split.loc("test_seen")) + len(split.loc("test_unseen")) == 30475
    # The alphabetical concatenation makes every loc class-consistent (validated in the loader; checked here too).
    assert set(np.unique(feature_set.labels[split.loc("test_unseen")])) == set(split.unseen_classes)
    assert set(np.unique(feature_set.labels[split.loc("trainval")])) == set(split.seen_classes)
    train_classes = np.unique(feature_set.labels[split.loc("train")])
    assert len(train_classes) == 27 and len(np.unique(feature_set.labels[split.loc("val")])) == 13
    assert np.allclose((feature_set.features.astype(np.float64) ** 2).sum(axis=1), 1.0, atol=1e-4)
    assert feature_set.image_ids[0] == "antelope/00000"
    start = time.perf_counter()
    raw, _ = load_awa1_lampert(features_dir, shared_data / "AWA1", hellinger=False)
    second = time.perf_counter() - start
    assert second < first  # the decoded arrays come from the cache
    assert raw.features.max() > 1.0  # raw bag-of-words counts
    assert np.allclose(hellinger_normalise(raw.features), feature_set.features, atol=1e-6)


def test_missing_feature_files_are_named(tmp_path, shared_data):
    with pytest.raises(DataError, match="antelope-lss.pic.bz2"):
        load_awa1_lampert(tmp_path, shared_data / "AWA1")


def test_lampert_through_the_benchmark_door_and_validation_protocol(shared_data):
    from bsegn.datasets.benchmarks import load_benchmark
    from bsegn.datasets.protocol import validation_protocol

    benchmark = load_benchmark("AWA1-Lampert2009", splits_dir=shared_data / "AWA1")
    split = benchmark.split
    assert benchmark.features.features.shape[0] == len(split.labels) == 30475 and benchmark.image_root is None
    # protocol.md: AWA1's train_loc holds 3,404 test_seen images and val_loc 1,554.
    assert np.isin(split.loc("train"), split.loc("test_seen")).sum() == 3404
    assert np.isin(split.loc("val"), split.loc("test_seen")).sum() == 1554
    valid = validation_protocol(split)
    test = np.concatenate([split.loc("test_seen"), split.loc("test_unseen")])
    for name in ("trainval", "test_seen", "test_unseen"):
        assert not np.isin(valid.loc(name), test).any()
    assert len(valid.seen_classes) == 27 and len(valid.unseen_classes) == 13
    assert len(valid.loc("test_unseen")) == 7926 - 1554
