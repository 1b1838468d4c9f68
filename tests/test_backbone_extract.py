"""Feature extraction: own dims per architecture, a cache that never mixes backbones, bad images
skipped and listed, and 2 processes giving the same features in the same order as one.

Run as a script (under `accelerate launch`) it is the worker of the 2-process test.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsegn.backbone.extract import cached_extract_features, extract_features
from bsegn.backbone.factory import create_backbone


def _image_tree(root, count=11, size=20):
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        name = f"k{i % 3}/im{i:02d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size + i, 3), dtype=np.uint8)).save(root / name)
        files.append(name)
    return sorted(files)


def _random_backbone(name="test_resnet", seed=0):
    torch.manual_seed(seed)
    return create_backbone(name, "none")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract_images")
    return root, _image_tree(root)


def test_architectures_get_caches_of_their_own_dims(tree, tmp_path):
    root, files = tree
    labels = np.arange(len(files)) % 3
    paths = {}
    for name in ("test_resnet", "test_efficientnet", "test_vit"):
        backbone = _random_backbone(name)
        size = backbone.data_config["input_size"][-1] if name == "test_vit" else 32  # ViT: fixed size
        features, bad, path, reused = cached_extract_features(
            backbone, root, files, labels, dataset_id="tree", cache_dir=tmp_path, batch_size=4,
            num_workers=0, image_size=size, progress=False)
        assert not reused and bad == []
        assert features.features.shape == (len(files), backbone.num_features)
        assert np.isfinite(features.features).all() and features.labels.tolist() == labels.tolist()
        assert features.image_ids == files
        again, _, again_path, reused = cached_extract_features(
            backbone, root, files, labels, dataset_id="tree", cache_dir=tmp_path, batch_size=4,
            num_workers=0, image_size=size, progress=False)
        assert reused and again_path == path
        assert np.array_equal(again.features, features.features)
        paths[name] = path
    assert len(set(paths.values())) == 3
    # a differently initialised backbone of the same architecture gets its own cache
    other = _random_backbone("test_resnet", seed=1)
    _, _, other_path, reused = cached_extract_features(
        other, root, files, labels, dataset_id="tree", cache_dir=tmp_path, batch_size=4, num_workers=0,
        image_size=32, progress=False)
    assert not reused and other_path != paths["test_resnet"]


def test_bad_images_are_skipped_and_listed(tree, tmp_path):
    root, files = tree
    bad_root = tmp_path / "images"
    for name in files:
        (bad_root / name).parent.mkdir(parents=True, exist_ok=True)
        (bad_root / name).write_bytes((root / name).read_bytes())
    (bad_root / files[3]).write_bytes(b"")
    (bad_root / files[7]).write_text("not a png")
    backbone = _random_backbone()
    features, bad = extract_features(backbone, bad_root, files, None, batch_size=4, num_workers=0,
                                     image_size=32, progress=False)
    assert bad == [files[3], files[7]]
    assert features.meta["bad_indices"] == [3, 7]
    assert not features.features[[3, 7]].any() and features.features[[0, 1, 2]].any(axis=1).all()
    good, _ = extract_features(backbone, root, files, None, batch_size=4, num_workers=0, image_size=32,
                               progress=False)
    keep = [i for i in range(len(files)) if i not in (3, 7)]
    assert np.allclose(good.features[keep], features.features[keep], atol=1e-5)


def test_flip_average_changes_features_and_cache_key(tree, tmp_path):
    root, files = tree
    backbone = _random_backbone()
    plain, _, plain_path, _ = cached_extract_features(backbone, root, files, None, dataset_id="tree",
                                                      cache_dir=tmp_path, num_workers=0, image_size=32, progress=False)
    flipped, _, flip_path, _ = cached_extract_features(backbone, root, files, None, dataset_id="tree",
                                                       cache_dir=tmp_path, num_workers=0, image_size=32,
                                                       flip_average=True, progress=False)
    assert plain_path != flip_path
    assert not np.allclose(plain.features, flipped.features)


def test_exif_rotated_copy_gives_the_same_features(tmp_path):
    """Finding 8: a copy stored sideways with EXIF Orientation=6 extracts the features of the upright image."""
    upright = np.asarray(Image.fromarray(np.random.default_rng(5).integers(0, 256, (6, 9, 3), dtype=np.uint8))
                         .resize((45, 30), Image.Resampling.BILINEAR))
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    Image.fromarray(upright).save(tmp_path / "upright.png")
    sideways.save(tmp_path / "phone.png", exif=exif.tobytes())
    sideways.save(tmp_path / "untagged.png")  # the same pixels without the tag: really sideways
    files = ["upright.png", "phone.png", "untagged.png"]
    features, bad = extract_features(_random_backbone(), tmp_path, files, None, batch_size=3, num_workers=0,
                                     image_size=32, progress=False)
    rows = features.features
    assert bad == [] and np.allclose(rows[0], rows[1], atol=1e-6)
    assert not np.allclose(rows[0], rows[2], atol=1e-3)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one(tree, tmp_path):
    root, files = tree
    from safetensors.torch import save_file

    backbone = _random_backbone()
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(weights))
    single, _ = extract_features(create_backbone("test_resnet", weights), root, files, None, batch_size=4,
                                 num_workers=0, image_size=32, progress=False)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1",
               OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "29517",
               __file__, str(root), str(weights), str(tmp_path / "out.npy"), ",".join(files)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes=2" in result.stdout
    multi = np.load(tmp_path / "out.npy")
    assert multi.shape == single.features.shape  # exact count: 11 images, no padding duplicates
    assert np.allclose(multi, single.features, atol=1e-5)


def _worker(root, weights, out, files):
    """Run under `accelerate launch`: extract with 2 processes, the main one saves the result."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    backbone = create_backbone("test_resnet", weights)
    features, _ = extract_features(backbone, root, files, None, batch_size=4, num_workers=0, image_size=32,
                                   accelerator=accelerator, progress=False)
    if accelerator.is_main_process:
        np.save(out, features.features)
        print(f"processes={accelerator.num_processes}")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the gloo group: without it a rank could abort at exit (SIGABRT)
    # Even so, torch's teardown at interpreter exit aborted rank 0 once on a loaded machine ("terminate called
    # without an active exception", SIGABRT; .ci/run on 2026-12-06) after the result was written: the test
    # judges the written result, so the worker leaves without the C++ static destructors.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4].split(","))


def _photo(path, width, height, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)


def test_loader_options_follow_the_device_and_the_worker_count(monkeypatch):
    from bsegn.datasets import image_dataset
    from bsegn.datasets.image_dataset import auto_workers, loader_options

    assert loader_options(0, "cpu", persistent=True) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(3, "cuda", persistent=True) == {"num_workers": 3, "pin_memory": True,
                                                          "prefetch_factor": 4, "persistent_workers": True}
    assert loader_options(2, "cpu")["persistent_workers"] is False
    monkeypatch.setattr(image_dataset, "available_cores", lambda: 16)
    assert auto_workers("cuda") == 12 and auto_workers("cuda", processes=4) == 3 and auto_workers("cpu") == 8
    monkeypatch.setattr(image_dataset, "available_cores", lambda: 2)
    assert auto_workers("cuda") == 1 and auto_workers("cpu") == 1 and auto_workers("cuda", processes=2) == 0
    assert loader_options(None, "cpu")["num_workers"] == 1
    with pytest.raises(ValueError):
        loader_options(-1, "cpu")


def test_workers_and_reduced_decode_leave_small_images_features_identical(tree):
    """The new loader settings never change a feature; reduced decoding changes none where no JPEG is at
    least 2 x DRAFT_MARGIN times the resized size (the demo's 64 px images, these 20 px PNGs)."""
    root, files = tree
    backbone = _random_backbone()
    common = dict(batch_size=4, image_size=32, progress=False)
    base, _ = extract_features(backbone, root, files, None, num_workers=0, **common)
    workers, _ = extract_features(backbone, root, files, None, num_workers=2, **common)
    reduced, _ = extract_features(backbone, root, files, None, num_workers=0, reduced_decode=True, **common)
    assert np.array_equal(base.features, workers.features) and np.array_equal(base.features, reduced.features)
    assert "reduced_decode" not in base.meta["transform"] and reduced.meta["transform"]["reduced_decode"] is True


def test_reduced_decode_keeps_the_geometry_and_stays_close(tmp_path):
    from bsegn.datasets.images import SOURCE_SIZE, open_rgb
    from bsegn.datasets.transforms import DRAFT_MARGIN, build_eval_transform

    config = {"input_size": (3, 32, 32), "crop_pct": 0.875, "interpolation": "bilinear"}
    full, reduced = build_eval_transform(config), build_eval_transform(config, reduced_decode=True)
    assert full.decode_size(640, 480) is None
    assert reduced.decode_size(640, 480) == tuple(DRAFT_MARGIN * v for v in full.resized_size(640, 480))
    _photo(tmp_path / "big.jpg", 643, 481)
    image = open_rgb(tmp_path / "big.jpg", decode_size=reduced.decode_size)
    assert image.size == (161, 121) and image.info[SOURCE_SIZE] == (643, 481)  # 1/4: still >= 2 x 48 x 36
    a, b = full(open_rgb(tmp_path / "big.jpg")), reduced(image)
    assert a.shape == b.shape == (3, 32, 32)
    assert 0 < float((a - b).abs().mean()) < 0.15  # normalised units: the resampling differs, not the crop
    # the resize goes to the size computed from the FILE's size (48 x 36), not the decoded one's (47 x 36)
    assert torch.equal(b, full(image.resize(full.resized_size(643, 481), Image.Resampling.BILINEAR)))
    from bsegn.datasets.image_dataset import ImageFolderDataset
    assert torch.equal(ImageFolderDataset(tmp_path, ["big.jpg"], None, reduced)[0][0], b)
    # never for other formats, nor for files stored rotated (EXIF orientation 6)
    Image.open(tmp_path / "big.jpg").save(tmp_path / "big.png")
    assert open_rgb(tmp_path / "big.png", decode_size=reduced.decode_size).size == (643, 481)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(tmp_path / "big.jpg").save(tmp_path / "rotated.jpg", exif=exif, quality=90)
    assert open_rgb(tmp_path / "rotated.jpg", decode_size=reduced.decode_size).size == (481, 643)


def test_reduced_decode_has_a_cache_of_its_own(tree, tmp_path):
    from bsegn.backbone.extract import feature_cache_key

    root, files = tree
    backbone = _random_backbone()
    off, header = feature_cache_key(backbone, files, None, dataset_id="tree", image_size=32)
    on, _ = feature_cache_key(backbone, files, None, dataset_id="tree", image_size=32, reduced_decode=True)
    assert off != on and "reduced_decode" not in header["transform"]
