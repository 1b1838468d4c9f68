"""The synthetic demo benchmark: deterministic, valid split, attributes = generative factors."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from bsegn.core.errors import DataError
from bsegn.datasets.demo import ATTRIBUTE_NAMES, demo_classes, ensure_demo_dataset


def _digest_tree(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    first, _ = ensure_demo_dataset(tmp_path / "a", images_per_class=3, image_size=32, seed=5)
    second, _ = ensure_demo_dataset(tmp_path / "b", images_per_class=3, image_size=32, seed=5)
    other, _ = ensure_demo_dataset(tmp_path / "c", images_per_class=3, image_size=32, seed=6)
    assert _digest_tree(first.parent) == _digest_tree(second.parent)
    assert _digest_tree(first.parent) != _digest_tree(other.parent)
    # Only the finished folder is left behind (generation goes through a temp folder + rename).
    assert [p.name for p in (tmp_path / "a").iterdir()] == [first.parent.name]


def test_split_is_valid_and_well_formed(tmp_path):
    image_root, split = ensure_demo_dataset(tmp_path, images_per_class=5, image_size=48, seed=0)
    assert split.num_classes >= 30 and split.benchmark == "demo"
    assert len(split.unseen_classes) == split.num_classes // 4
    assert split.attribute_names == list(ATTRIBUTE_NAMES)
    assert np.allclose(np.linalg.norm(split.semantics, axis=1), 1.0)
    assert set(np.unique(split.original_semantics)) == {0.0, 1.0}
    n = split.num_classes * 5
    assert len(split.image_files) == n and split.image_files == sorted(split.image_files)
    assert sorted(p.relative_to(image_root).as_posix() for p in image_root.rglob("*.jpg")) == split.image_files
    labels = split.labels
    assert set(labels[split.loc("trainval")]) == set(split.seen_classes)
    assert set(labels[split.loc("test_seen")]) == set(split.seen_classes)
    assert set(labels[split.loc("test_unseen")]) == set(split.unseen_classes)
    # trainval and test_seen partition the seen images (20 % = 1 of 5 per class); test_unseen = all unseen images.
    seen_images = np.flatnonzero(np.isin(labels, split.seen_classes))
    assert sorted(np.concatenate([split.loc("trainval"), split.loc("test_seen")])) == list(seen_images)
    assert len(split.loc("test_seen")) == len(split.seen_classes)
    assert len(split.loc("test_unseen")) == 5 * len(split.unseen_classes)
    # train/val: a class split of the seen classes over all seen images, like xlsa17's.
    train_classes, val_classes = set(labels[split.loc("train")]), set(labels[split.loc("val")])
    assert not train_classes & val_classes and train_classes | val_classes == set(split.seen_classes)
    # Every attribute value is shown by some seen class and by some train class.
    assert (split.original_semantics[split.seen_classes].max(axis=0) == 1).all()
    assert (split.original_semantics[sorted(train_classes)].max(axis=0) == 1).all()
    # Real JPEG files of the requested size.
    with Image.open(image_root / split.image_files[0]) as image:
        assert image.format == "JPEG" and image.size == (48, 48) and image.mode == "RGB"


def test_class_names_are_the_factors():
    train, val, unseen = demo_classes()
    assert len(train) + len(val) + len(unseen) >= 30
    assert not set(unseen) & set(train + val)


def test_reuses_the_generated_folder(tmp_path):
    image_root, _ = ensure_demo_dataset(tmp_path, images_per_class=2, image_size=32)
    stamp = (image_root.parent / "att_splits.mat").stat().st_mtime_ns
    again, split = ensure_demo_dataset(tmp_path, images_per_class=2, image_size=32)
    assert again == image_root and (image_root.parent / "att_splits.mat").stat().st_mtime_ns == stamp
    assert len(split.image_files) == 2 * split.num_classes


def test_bad_parameters_are_refused(tmp_path):
    with pytest.raises(DataError, match="images_per_class"):
        ensure_demo_dataset(tmp_path, images_per_class=1)
