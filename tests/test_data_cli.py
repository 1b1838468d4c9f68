"""`bsegn data summary` through the CLI: protocol.md's numbers for every benchmark."""
import json

import pytest

from bsegn.app.cli import main

EXPECTED = {  # protocol.md's table; FLO's seen/unseen are not in its files (null)
    "CUB": (200, 150, 50, 312, 7057, 1764, 2967, 5875, 2946),
    "CUB-sent": (200, 150, 50, 1024, 7057, 1764, 2967, 5875, 2946),
    "AWA1": (50, 40, 10, 85, 19832, 4958, 5685, 16864, 7926),
    "AWA2": (50, 40, 10, 85, 23527, 5882, 7913, 20218, 9191),
    "SUN": (717, 645, 72, 102, 10320, 2580, 1440, 11600, 1300),
    "FLO": (102, None, None, 1024, 5631, 1403, 1155, 5878, 1156),
    "APY": (32, 20, 12, 64, 5932, 1483, 7924, None, None),
}
KEYS = ("num_classes", "num_seen", "num_unseen", "semantic_dim", "trainval", "test_seen", "test_unseen", "train", "val")


@pytest.mark.parametrize("benchmark", sorted(EXPECTED))
def test_summary_matches_protocol(benchmark, shared_data, capsys):
    folder = shared_data / benchmark.split("-")[0]
    assert main(["data", "summary", "--data.benchmark", benchmark, "--data.splits_dir", str(folder)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert list(summary) == ["benchmark", *KEYS] and summary["benchmark"] == benchmark
    assert tuple(summary[k] for k in KEYS) == EXPECTED[benchmark]


def test_summary_of_demo_and_own(tmp_path, capsys):
    from bsegn.datasets.demo import ensure_demo_dataset

    image_root, _ = ensure_demo_dataset(tmp_path, images_per_class=2, image_size=32)
    assert main(["data", "summary", "--data.benchmark", "demo", "--data.splits_dir", str(image_root.parent)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_classes"] == 40 and summary["num_unseen"] == 10 and summary["test_unseen"] == 20
    root = tmp_path / "own"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for j in range(5):
            (root / name / f"{j}.jpg").touch()
    csv = tmp_path / "att.csv"
    csv.write_text("class,split,x,y\na,seen,1,0\nb,unseen,0,1\n")
    assert main(["data", "summary", "--data.benchmark", "own", "--data.images_root", str(root), "--data.attributes_csv", str(csv)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["num_seen"], summary["trainval"], summary["test_seen"], summary["test_unseen"], summary["train"]) == (1, 4, 1, 5, None)


def test_missing_split_file_is_one_clear_line(tmp_path, capsys):
    assert main(["data", "summary", "--data.benchmark", "AWA2", "--data.splits_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no att_splits.mat found" in err and str(tmp_path) in err
    assert main(["data", "summary", "--data.benchmark", "MNIST", "--data.splits_dir", str(tmp_path)]) == 2
    assert "unknown benchmark 'MNIST'" in capsys.readouterr().err
