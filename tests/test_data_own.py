"""Your own data: class folders + attributes CSV, and the clear errors for what can go wrong."""
import numpy as np
import pytest

from bsegn.core.errors import DataError
from bsegn.datasets.benchmarks import load_benchmark
from bsegn.datasets.own_data import load_own_data
from bsegn.datasets.xlsa17 import validate_split

CLASSES = {"cat": "seen", "dog": "seen", "cow": "seen", "hen": "seen", "fox": "seen", "owl": "unseen", "yak": "unseen"}


def _make(tmp_path, images=10, rows=None, header="class,split,furry,legs,wings"):
    root = tmp_path / "images"
    for i, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(images):
            (root / name / f"{j:03d}.jpg").touch()
    if rows is None:
        rows = [f"{name},{split},{i % 2},{2 + 2 * (i % 2)},{0.5 * (i % 3)}" for i, (name, split) in enumerate(CLASSES.items())]
    csv = tmp_path / "attributes.csv"
    csv.write_text("\n".join([header] + rows) + "\n")
    return root, csv


def test_own_data_split(tmp_path):
    root, csv = _make(tmp_path)
    split = load_own_data(root, csv, seed=3)
    assert split.class_names == list(CLASSES) and split.attribute_names == ["furry", "legs", "wings"]
    assert np.allclose(np.linalg.norm(split.semantics, axis=1), 1.0)
    assert split.original_semantics[1].tolist() == [1.0, 4.0, 0.5]
    assert split.image_files == sorted(split.image_files) and len(split.image_files) == 70
    assert len(split.loc("test_seen")) == 5 * 2 and len(split.loc("trainval")) == 5 * 8
    assert len(split.loc("test_unseen")) == 20
    validate_split(split, split.labels, source="own")  # seen/unseen consistency, train/val disjoint
    assert len(np.unique(split.labels[split.loc("val")])) == 2  # 1/3 of 5 seen classes
    assert np.array_equal(load_own_data(root, csv, seed=3).loc("test_seen"), split.loc("test_seen"))
    benchmark = load_benchmark("own", images_root=root, attributes_csv=csv)
    assert benchmark.image_files == split.image_files


@pytest.mark.parametrize("rows, message", [
    (["cat,seen,1,4,0", "dog,seen,1,4", "cow,seen,0,4,0"], r"line 3 \(class 'dog'\): 4 values but the header has 5"),
    (["cat,seen,1,4,0", "dog,seen,nan,4,0"], r"line 3 \(class 'dog'\), column 'furry': 'nan' is not a finite number"),
    (["cat,seen,,,"], r"seen class 'cat' has no attribute values"),
    (["cat,maybe,1,1,1"], r"split must be 'seen' or 'unseen'"),
    (["cat,seen,1,x,1"], r"column 'legs': 'x' is not a number"),
])
def test_csv_errors(tmp_path, rows, message):
    root, csv = _make(tmp_path, rows=rows)
    with pytest.raises(DataError, match=message):
        load_own_data(root, csv)


def test_folder_errors(tmp_path):
    root, csv = _make(tmp_path)
    (root / "emu").mkdir()
    (root / "emu" / "1.jpg").touch()
    with pytest.raises(DataError, match=r"emu: class folder has no row in .*every class needs attributes"):
        load_own_data(root, csv)
    (root / "emu" / "1.jpg").unlink()
    (root / "emu").rmdir()
    for image in (root / "yak").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"class 'yak' .* has no images"):
        load_own_data(root, csv)
