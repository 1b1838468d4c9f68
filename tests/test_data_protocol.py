"""The validation protocol never contains a test image of the original split."""
import numpy as np
import pytest

from bsegn.core.errors import DataError
from bsegn.datasets.demo import ensure_demo_dataset
from bsegn.datasets.protocol import validation_protocol
from bsegn.datasets.xlsa17 import load_xlsa17, validate_split


def _check(split, valid):
    test = np.concatenate([split.loc("test_seen"), split.loc("test_unseen")])
    for name in ("trainval", "test_seen", "test_unseen"):
        assert not np.isin(valid.loc(name), test).any(), f"{name} holds an original test image"
    labels = split.labels
    train_classes = np.unique(labels[split.loc("train")])
    val_classes = np.unique(labels[split.loc("val")])
    assert np.array_equal(valid.seen_classes, train_classes) and np.array_equal(valid.unseen_classes, val_classes)
    # The three new splits partition the train/val images that are not test images.
    pool = np.setdiff1d(np.concatenate([split.loc("train"), split.loc("val")]), test)
    new = np.concatenate([valid.loc(n) for n in ("trainval", "test_seen", "test_unseen")])
    assert len(new) == len(np.unique(new)) and np.array_equal(np.sort(new), pool)
    held = len(valid.loc("test_seen")) / (len(valid.loc("test_seen")) + len(valid.loc("trainval")))
    assert 0.15 < held <= 0.25
    validate_split(valid, labels, source="validation")
    assert valid.locs["train"] is None


def test_validation_protocol_on_demo(tmp_path):
    _, split = ensure_demo_dataset(tmp_path, images_per_class=10, image_size=32)
    # The demo mirrors xlsa17: its val/train contain test_seen images, which must be removed.
    assert np.isin(split.loc("test_seen"), split.loc("val")).any()
    valid = validation_protocol(split, seed=1)
    _check(split, valid)
    assert not np.array_equal(valid.loc("test_seen"), validation_protocol(split, seed=2).loc("test_seen"))
    assert np.array_equal(valid.loc("test_seen"), validation_protocol(split, seed=1).loc("test_seen"))


def test_validation_protocol_on_real_cub(shared_data):
    split = load_xlsa17("CUB", shared_data / "CUB")
    classes_txt = [line.split()[1] for line in (shared_data / "CUB" / "classes.txt").read_text().splitlines() if line.strip()]
    images = sorted(line.split()[1] for line in (shared_data / "CUB" / "images.txt").read_text().splitlines() if line.strip())
    class_of = {name: split.class_names.index(name) for name in classes_txt}
    split.labels = np.array([class_of[path.split("/")[0]] for path in images])
    # protocol.md: CUB's train_loc holds 1,173 test_seen images, val_loc 591.
    assert np.isin(split.loc("train"), split.loc("test_seen")).sum() == 1173
    assert np.isin(split.loc("val"), split.loc("test_seen")).sum() == 591
    valid = validation_protocol(split)
    _check(split, valid)
    assert len(valid.loc("test_unseen")) == 2946 - 591


def test_needs_labels(shared_data):
    with pytest.raises(DataError, match="needs per-image labels"):
        validation_protocol(load_xlsa17("AWA2", shared_data / "AWA2"))
