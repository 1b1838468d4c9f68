"""Raw image folders: the sorted-path rule, `check_images`, and `bsegn data check` naming a deleted file."""
import numpy as np
import pytest

from bsegn.app.cli import main
from bsegn.core.errors import DataError
from bsegn.datasets.benchmarks import check_benchmark_images, load_benchmark
from bsegn.datasets.image_folders import list_images
from bsegn.datasets.xlsa17 import load_xlsa17


def _touch(root, relative_paths):
    for relative in relative_paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def test_sorted_relative_paths_on_a_fake_tree(tmp_path):
    root = tmp_path / "AwA2" / "JPEGImages"
    _touch(root, ["zebra/zebra_10.jpg", "zebra/zebra_9.jpg", "antelope/b.JPG", "antelope/a.png",
                  "grizzly+bear/x.jpg", "antelope/.hidden.jpg", "antelope/notes.txt", ".cache/y.jpg"])
    expected = ["antelope/a.png", "antelope/b.JPG", "grizzly+bear/x.jpg", "zebra/zebra_10.jpg", "zebra/zebra_9.jpg"]
    assert list_images(tmp_path / "AwA2", "AWA2") == expected  # finds JPEGImages/ itself
    assert list_images(root, "AWA2") == expected
    sun = tmp_path / "SUN" / "images"
    _touch(sun, ["b/bar/sun_2.jpg", "a/apartment_building/outdoor/sun_1.jpg", "a/abbey/sun_3.jpg"])
    assert list_images(tmp_path / "SUN", "SUN") == [
        "a/abbey/sun_3.jpg", "a/apartment_building/outdoor/sun_1.jpg", "b/bar/sun_2.jpg"]


@pytest.fixture
def fake_cub(tmp_path, shared_data):
    """An empty-file CUB_200_2011/images tree with every real CUB path (11,788 files)."""
    lines = (shared_data / "CUB" / "images.txt").read_text().splitlines()
    paths = [line.split()[1] for line in lines if line.strip()]
    root = tmp_path / "CUB_200_2011"
    _touch(root / "images", paths)
    return root, sorted(paths)


def test_cub_sorted_paths_reproduce_the_ps_split(fake_cub, shared_data):
    root, paths = fake_cub
    files = list_images(root, "CUB")
    assert files == paths
    split = load_xlsa17("CUB", shared_data / "CUB")
    # bookworm's derived PS list: the files at trainval + test_unseen locs of the sorted list, exactly.
    ps = {line.split()[0] for line in (shared_data / "CUB" / "image_label_PS.txt").read_text().splitlines() if line}
    at_locs = {files[i] for i in np.concatenate([split.loc("trainval"), split.loc("test_unseen")])}
    assert at_locs == ps
    report = check_benchmark_images("CUB", root, shared_data / "CUB", decode=False)  # empty stand-in files
    assert report.ok, report.problems
    assert report.splits["test_unseen"] == {"expected": 2967, "present": 2967}
    benchmark = load_benchmark("CUB", splits_dir=shared_data / "CUB", images_root=root)
    assert benchmark.image_root == root / "images" and len(benchmark.split.labels) == 11788


def test_data_check_names_a_deleted_and_an_extra_file(fake_cub, shared_data, capsys):
    root, paths = fake_cub
    deleted = paths[5000]
    (root / "images" / deleted).unlink()
    (root / "images" / "001.Black_footed_Albatross" / "stray_copy.jpg").touch()
    status = main(["data", "check", "--data.benchmark", "CUB", "--data.images_root", str(root), "--data.splits_dir", str(shared_data / "CUB"),
                   "--no-decode"])
    out = capsys.readouterr().out
    assert status == 1
    assert deleted in out and "stray_copy.jpg" in out and "NOT OK" in out
    report = check_benchmark_images("CUB", root, shared_data / "CUB", decode=False)
    assert report.missing == [deleted] and report.num_unexpected == 1
    assert sum(c["expected"] - c["present"] for n, c in report.splits.items() if n in ("trainval", "test_seen", "test_unseen")) == 1
    with pytest.raises(DataError, match="does not match the split"):
        load_benchmark("CUB", splits_dir=shared_data / "CUB", images_root=root)


def test_count_only_check_catches_a_shift(tmp_path, shared_data):
    """APY has no image list here: a missing or extra file shows as a count mismatch."""
    root = tmp_path / "APY_images"
    _touch(root, [f"img_{i:05d}.jpg" for i in range(100)])
    report = check_benchmark_images("APY", root, shared_data / "APY", decode=False)
    assert not report.ok and "found 100 images but the split indexes 15339" in report.problems[0]
    assert any("verified for AWA2 and CUB only" in note for note in report.notes)


def test_demo_check_names_a_deleted_file(tmp_path, capsys):
    benchmark = load_benchmark("demo", images_per_class=3, image_size=32, root=tmp_path)
    assert main(["data", "check", "--data.benchmark", "demo", "--data.images_root", str(benchmark.image_root)]) == 0
    victim = benchmark.image_files[7]
    (benchmark.image_root / victim).unlink()
    capsys.readouterr()
    assert main(["data", "check", "--data.benchmark", "demo", "--data.images_root", str(benchmark.image_root), "--json"]) == 1
    out = capsys.readouterr().out
    assert victim in out and '"ok": false' in out


def test_image_batch_moves_with_accelerate_send_to_device():
    """accelerate's prepared DataLoader moves batches with send_to_device, which calls `.to()` on objects
    it does not know: ImageBatch must move ALL its tensors (the first GPU run found the images left on
    the CPU beside a model on the GPU). The meta device stands in for a GPU."""
    import torch
    from accelerate.utils import send_to_device

    from bsegn.datasets.image_dataset import ImageBatch

    batch = ImageBatch(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), torch.tensor([4, 5]), torch.tensor([7]))
    moved = send_to_device(batch, torch.device("meta"))
    assert isinstance(moved, ImageBatch)
    assert {t.device.type for t in (moved.images, moved.labels, moved.indices, moved.bad_indices)} == {"meta"}
    assert moved.images.shape == (2, 3, 8, 8) and len(moved) == 2
    assert batch.images.device.type == "cpu"  # the original is untouched
