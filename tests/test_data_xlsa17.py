"""xlsa17 split files: every count of protocol.md's table from the real files, and split validation."""
import numpy as np
import pytest

from bsegn.core.errors import DataError
from bsegn.datasets.splits import ZSLSplit
from bsegn.datasets.xlsa17 import load_xlsa17, validate_split

# protocol.md: classes seen (train + val) / unseen, semantic dim, trainval / test_seen / test_unseen.
TABLE = {
    "CUB": (150, 100, 50, 50, 312, 7057, 1764, 2967, 200),
    "CUB-sent": (150, 100, 50, 50, 1024, 7057, 1764, 2967, 200),
    "AWA2": (40, 27, 13, 10, 85, 23527, 5882, 7913, 50),
    "AWA1": (40, 27, 13, 10, 85, 19832, 4958, 5685, 50),
    "SUN": (645, 580, 65, 72, 102, 10320, 2580, 1440, 717),
    "FLO": (82, 62, 20, 20, 1024, 5631, 1403, 1155, 102),
    "APY": (20, 15, 5, 12, 64, 5932, 1483, 7924, 32),
}
IMAGES = {"CUB": 11788, "CUB-sent": 11788, "AWA2": 37322, "AWA1": 30475, "SUN": 14340, "FLO": 8189, "APY": 15339}


@pytest.mark.parametrize("benchmark", sorted(TABLE))
def test_protocol_table_counts(shared_data, benchmark):
    seen, _train_c, _val_c, unseen, k, trainval, test_seen, test_unseen, classes = TABLE[benchmark]
    split = load_xlsa17(benchmark, shared_data)
    assert split.num_classes == classes and split.semantic_dim == k
    assert len(split.loc("trainval")) == trainval
    assert len(split.loc("test_seen")) == test_seen
    assert len(split.loc("test_unseen")) == test_unseen
    assert trainval + test_seen + test_unseen == IMAGES[benchmark]
    locs = np.concatenate([split.loc(n) for n in ("trainval", "test_seen", "test_unseen")])
    assert locs.min() == 0 and locs.max() == IMAGES[benchmark] - 1 and len(np.unique(locs)) == len(locs)
    assert split.semantics.dtype == np.float32
    if benchmark == "FLO":
        assert split.seen_classes is None and split.unseen_classes is None
        assert split.class_names[0] == "class_001" and any("no class names" in n for n in split.notes)
        assert split.semantic_kind == "sentences"
    else:
        assert len(split.seen_classes) == seen and len(split.unseen_classes) == unseen
    if benchmark == "APY":
        assert split.locs["train"] is None and split.locs["val"] is None
        with pytest.raises(DataError, match="no 'train' split"):
            split.loc("train")
    else:
        # xlsa17's train/val are over trainval + test_seen (protocol.md's caution).
        both = np.sort(np.concatenate([split.loc("train"), split.loc("val")]))
        assert np.array_equal(both, np.sort(np.concatenate([split.loc("trainval"), split.loc("test_seen")])))


def test_awa_attributes_are_l2_normalised(shared_data):
    split = load_xlsa17("AWA2", shared_data / "AWA2")
    assert np.allclose(np.linalg.norm(split.semantics, axis=1), 1.0, atol=1e-5)
    assert split.original_semantics.shape == (50, 85)
    assert split.class_names[0] == "antelope"
    # predicates.txt beside the split names the 85 columns; original_att == the raw continuous matrix in that order.
    assert len(split.attribute_names) == 85 and split.attribute_names[:2] == ["black", "white"]
    raw = np.loadtxt(shared_data / "AWA2" / "predicate-matrix-continuous.txt")
    assert np.allclose(split.original_semantics[1:], raw[1:], atol=1e-4)  # antelope's missing values differ


def test_cub_train_val_counts_from_sent_splits(shared_data):
    split = load_xlsa17("CUB", shared_data / "CUB")
    assert len(split.loc("train")) == 5875 and len(split.loc("val")) == 2946
    assert any("sent_splits.mat" in note for note in split.notes)
    sent = load_xlsa17("CUB", shared_data, semantics="sent")
    assert sent.semantic_kind == "sentences" and sent.semantic_dim == 1024 and sent.benchmark == "CUB-sent"


def test_cub_labels_from_ps_list_validate(shared_data):
    """The derived PS image list gives per-image labels: the real split must validate against them."""
    split = load_xlsa17("CUB", shared_data / "CUB")
    classes_txt = [line.split()[1] for line in (shared_data / "CUB" / "classes.txt").read_text().splitlines() if line.strip()]
    images = [line.split()[1] for line in (shared_data / "CUB" / "images.txt").read_text().splitlines() if line.strip()]
    order = np.argsort(images)  # the locs index the sorted relative paths
    class_of = {name: split.class_names.index(name) for name in classes_txt}
    labels = np.array([class_of[images[i].split("/")[0]] for i in order])
    validate_split(split, labels, source="CUB/images.txt")
    assert len(np.unique(labels[split.loc("train")])) == 100 and len(np.unique(labels[split.loc("val")])) == 50
    # Shuffling the image order breaks the class-consistency: a clear error naming the file and index.
    broken = labels[np.random.default_rng(0).permutation(len(labels))]
    with pytest.raises(DataError, match=r"images.txt: trainval holds image index \d+"):
        validate_split(split, broken, source="CUB/images.txt")


def _toy_split():
    locs = {"trainval": np.array([0, 1]), "test_seen": np.array([2]), "test_unseen": np.array([3]),
            "train": np.array([0, 2]), "val": np.array([1])}
    return ZSLSplit("toy", ["a", "b", "c"], np.eye(3, dtype=np.float32), locs,
                    seen_classes=np.array([0, 1]), unseen_classes=np.array([2]))


def test_validate_split_rules():
    split = _toy_split()
    validate_split(split, np.array([0, 1, 0, 2]), source="toy.mat")
    with pytest.raises(DataError, match=r"toy.mat: test_unseen holds image index 3 .*'a'"):
        validate_split(split, np.array([0, 1, 0, 0]), source="toy.mat")
    with pytest.raises(DataError, match=r"test_seen holds image index 2 .*'c'"):
        validate_split(split, np.array([0, 1, 2, 2]), source="toy.mat")
    with pytest.raises(DataError, match=r"val holds image index 1 .*also a train class"):
        validate_split(split, np.array([0, 0, 0, 2]), source="toy.mat")
    with pytest.raises(DataError, match="outside the 3 labelled images"):
        validate_split(split, np.array([0, 1, 0]), source="toy.mat")


def test_missing_split_file_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=r"no att_splits.mat found \(looked at .*AWA2"):
        load_xlsa17("AWA2", tmp_path)
    with pytest.raises(DataError, match="unknown xlsa17 benchmark"):
        load_xlsa17("IMAGENET", tmp_path)


def test_data_error_is_the_core_one_and_still_importable_from_splits():
    from bsegn.datasets import splits

    assert splits.DataError is DataError and issubclass(DataError, ValueError)


@pytest.mark.parametrize("benchmark", ["CUB", "AWA2", "AWA1-Lampert2009"])
def test_no_split_folder_is_guessed(benchmark, tmp_path, monkeypatch):
    # the library reads only what the user names: with no --data.splits_dir it says so, even from a checkout
    # that has ../shared/data beside it
    from bsegn.datasets.benchmarks import load_benchmark, load_split

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no split folder given.*--data.splits_dir"):
        load_split(benchmark)
    with pytest.raises(DataError, match="no split folder given"):
        load_benchmark(benchmark)
