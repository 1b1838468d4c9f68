"""Checks before any compute: unreadable image files in `bsegn data check`, and whether a class table
can run the final and validation protocols at all (bsegn.datasets.protocol.check_protocol_feasible)."""
import json

import numpy as np
import pytest
from PIL import Image

from bsegn.app.cli import main
from bsegn.core.errors import DataError
from bsegn.datasets.benchmarks import check_benchmark_images, load_benchmark
from bsegn.datasets.image_folders import find_unreadable_images
from bsegn.datasets.own_data import load_own_data
from bsegn.datasets.protocol import (
    MIN_SEEN_CLASSES_FOR_VALIDATION,
    check_protocol_feasible,
    protocol_problems,
    validation_protocol,
)
from bsegn.datasets.splits import ZSLSplit


def _own(tmp_path, splits, images=5):
    """An own-data folder of tiny real PNGs, one class per entry of `splits` ("seen"/"unseen")."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(splits):
        (root / f"c{i}").mkdir(parents=True)
        for j in range(images):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"c{i}" / f"{j}.png")
        rows.append(f"c{i},{split},{i % 3},{1 + i % 2}")
    csv = tmp_path / "classes.csv"
    csv.write_text("class,split,a,b\n" + "\n".join(rows) + "\n")
    return root, csv


def _data_check(root, csv, *extra):
    return main(["data", "check", "--data.benchmark", "own", "--data.images_root", str(root), "--data.attributes_csv", str(csv), *extra])


def test_data_check_names_and_counts_empty_and_undecodable_files(tmp_path, capsys):
    """Finding 5: 0-byte and corrupt files are named and counted, and the check fails."""
    root, csv = _own(tmp_path, ["seen"] * 4 + ["unseen"])
    assert _data_check(root, csv) == 0
    assert "OK" in capsys.readouterr().out
    (root / "c1" / "2.png").write_bytes(b"")
    (root / "c3" / "0.png").write_bytes(b"this is not a png")
    good = (root / "c4" / "1.png").read_bytes()
    (root / "c4" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    assert _data_check(root, csv) == 1
    out = capsys.readouterr().out
    assert "unreadable (1 empty, 2 undecodable)" in out and "NOT OK" in out
    for name in ("c1/2.png", "c3/0.png", "c4/1.png"):
        assert name in out
    assert _data_check(root, csv, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["num_empty"], report["num_undecodable"], report["ok"]) == (1, 2, False)
    assert report["unreadable"][0].startswith("c1/2.png: empty")
    assert _data_check(root, csv, "--no-decode") == 0  # names only: the quick check does not decode
    capsys.readouterr()


def test_find_unreadable_images_keeps_file_order(tmp_path):
    root, _ = _own(tmp_path, ["seen", "unseen"], images=3)
    (root / "c1" / "0.png").write_bytes(b"")
    (root / "c0" / "2.png").write_text("garbage")
    files = ["c0/0.png", "c0/2.png", "c1/0.png", "c1/1.png"]
    bad = find_unreadable_images(root, files, workers=2)
    assert [name for name, _ in bad] == ["c0/2.png", "c1/0.png"]
    assert bad[1][1] == "empty (0 bytes)" and "not an image" in bad[0][1]


def test_demo_check_decodes_images(tmp_path):
    benchmark = load_benchmark("demo", images_per_class=2, image_size=32, root=tmp_path)
    assert check_benchmark_images("demo", benchmark.image_root).ok
    (benchmark.image_root / benchmark.image_files[3]).write_bytes(b"")
    report = check_benchmark_images("demo", benchmark.image_root)
    assert not report.ok and report.num_empty == 1 and "re-copy them" in report.problems[-1]
    assert check_benchmark_images("demo", benchmark.image_root, decode=False).ok


def test_data_check_flags_a_class_table_without_unseen_class(tmp_path, capsys):
    """Finding 11: no unseen class is found before training, with what to do."""
    root, csv = _own(tmp_path, ["seen"] * 5)
    assert _data_check(root, csv) == 1
    out = capsys.readouterr().out
    assert "no unseen class" in out and "mark some classes `unseen`" in out
    split = load_own_data(root, csv)
    with pytest.raises(DataError, match="no unseen class"):
        check_protocol_feasible(split, "final")
    check_protocol_feasible(split, "validation")  # val classes play unseen there


def test_too_few_seen_classes_for_the_validation_protocol(tmp_path, capsys):
    """Finding 11: fewer seen classes than the validation protocol needs: a message saying what to do,
    not "no 'train' split"."""
    root, csv = _own(tmp_path, ["seen"] * (MIN_SEEN_CLASSES_FOR_VALIDATION - 1) + ["unseen"])
    assert _data_check(root, csv) == 1
    out = capsys.readouterr().out
    assert f"own data has 3 seen classes, and the validation protocol needs at least {MIN_SEEN_CLASSES_FOR_VALIDATION}" in out
    split = load_own_data(root, csv)
    check_protocol_feasible(split, "final")  # with a given gate threshold it trains
    with pytest.raises(DataError) as info:
        check_protocol_feasible(split, "final", needs_validation=True)
    message = str(info.value)
    for advice in ("mark more classes `seen`", "--run.threshold 0", "gamma 2.0"):
        assert advice in message
    assert "--run.protocol final" not in message  # already the final protocol
    with pytest.raises(DataError, match=r"--run.protocol final"):
        check_protocol_feasible(split, "validation")
    with pytest.raises(DataError, match="add seen classes"):
        validation_protocol(split)  # the protocol itself says so too
    root4, csv4 = _own(tmp_path / "four", ["seen"] * MIN_SEEN_CLASSES_FOR_VALIDATION + ["unseen"])
    assert protocol_problems(load_own_data(root4, csv4), "final", needs_validation=True) == []


def _split(train, val, labels, test_seen=(), unseen=(3,)):
    labels = np.asarray(labels)
    return ZSLSplit(
        benchmark="X", class_names=[f"k{i}" for i in range(4)], semantics=np.eye(4, dtype=np.float32),
        locs={"trainval": np.flatnonzero(labels < 3), "test_seen": np.asarray(test_seen, dtype=np.int64),
              "test_unseen": np.flatnonzero(labels == 3),
              "train": None if train is None else np.asarray(train), "val": None if val is None else np.asarray(val)},
        seen_classes=np.array([0, 1, 2]), unseen_classes=np.asarray(unseen, dtype=np.int64), labels=labels)


def test_feasibility_of_benchmark_splits():
    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    check_protocol_feasible(_split([0, 1, 2, 3], [4, 5], labels), "validation")
    with pytest.raises(DataError, match="define no train/val class split"):
        check_protocol_feasible(_split(None, None, labels), "final", needs_validation=True)
    # xlsa17-style val_loc made only of test_seen images: nothing is left to validate on
    with pytest.raises(DataError, match="leaves 2 train and 0 val classes"):
        check_protocol_feasible(_split([0, 1, 2, 3], [4, 5], labels, test_seen=[4, 5]), "validation")
    with pytest.raises(DataError, match="no unseen class"):
        check_protocol_feasible(_split([0, 1, 2, 3], [4, 5], labels, unseen=()), "final")
    with pytest.raises(DataError, match="unknown protocol"):
        check_protocol_feasible(_split(None, None, labels), "test")


def test_apy_has_no_validation_protocol(shared_data):
    from bsegn.datasets.xlsa17 import load_xlsa17

    split = load_xlsa17("APY", shared_data / "APY")
    check_protocol_feasible(split, "final")
    with pytest.raises(DataError, match=r"APY split files define no train/val.*--run.threshold 0"):
        check_protocol_feasible(split, "final", needs_validation=True)
