"""Seen-class fine-tuning: learns, changes the weights, resumes exactly, never touches test/unseen images."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsegn.backbone.factory import create_backbone
from bsegn.backbone.finetune import FinetuneConfig, finetune_backbone
from bsegn.backbone.seen_images import allowed_training_indices, check_training_indices
from bsegn.core.errors import ConfigError, DataError
from bsegn.datasets.splits import ZSLSplit


def read_history(output_dir):
    """history.jsonl, the per-epoch records a fine-tuning run writes (epoch 0 = before training)."""
    path = Path(output_dir) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _tiny_benchmark(root, per_class=10, size=24):
    """4 classes with distinct colour patterns: 0,1,2 seen (2 = the val class), 3 unseen.

    Per seen class: 7 trainval + 3 test_seen images; the unseen class: test_unseen only.
    Relative paths are sorted (the xlsa17 convention) and locs are 0-based.
    """
    rng = np.random.default_rng(0)
    base = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 220], [200, 200, 40]], dtype=np.float64)
    files, labels = [], []
    for label in range(4):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 30, (size, size, 3))
            pixels = np.clip(base[label] + noise, 0, 255).astype(np.uint8)
            pixels[: size // 2, :, label % 3] = 255 - pixels[: size // 2, :, label % 3]  # a class-specific stripe
            name = f"c{label}/img_{i:02d}.jpg"
            Image.fromarray(pixels).save(root / name, quality=92)
            files.append(name)
            labels.append(label)
    order = np.argsort(files)
    files = [files[i] for i in order]
    labels = np.asarray(labels)[order]
    trainval, test_seen, test_unseen, train, val = [], [], [], [], []
    for label in range(4):
        members = np.flatnonzero(labels == label)
        if label == 3:
            test_unseen += members.tolist()
            continue
        trainval += members[:7].tolist()
        test_seen += members[7:].tolist()
        (val if label == 2 else train).extend(members[:7].tolist())
    semantics = np.eye(4, 5, dtype=np.float32) + 0.1
    split = ZSLSplit(
        benchmark="tiny", class_names=[f"c{i}" for i in range(4)],
        semantics=semantics / np.linalg.norm(semantics, axis=1, keepdims=True),
        locs={name: np.asarray(sorted(v), dtype=np.int64) for name, v in
              dict(trainval=trainval, test_seen=test_seen, test_unseen=test_unseen, train=train, val=val).items()},
        seen_classes=np.array([0, 1, 2]), unseen_classes=np.array([3]), labels=labels, image_files=files)
    return root, split


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_benchmark(tmp_path_factory.mktemp("tiny_images"))


def _backbone():
    torch.manual_seed(0)
    return create_backbone("test_resnet", "none")


def _config(**overrides):
    options = dict(epochs=2, batch_size=8, lr_backbone=0.02, lr_head=0.05, warmup_epochs=0.5, optimizer="sgd")
    options.update(overrides)
    return FinetuneConfig(**options)


def _finetune(root, split, config, output_dir, **options):
    """finetune_backbone with the tests' small settings (32 px images, 30 % held out, seed 1, no bars)."""
    options = {"image_size": 32, "val_fraction": 0.3, "seed": 1, "progress": False, **options}
    return finetune_backbone(_backbone(), root, split, config, output_dir=output_dir, **options)


def _leaky(split, **changes):
    """A copy of `split` with some fields changed (locs merged), as a broken split file would give."""
    return dataclasses.replace(split, **{**changes, "locs": {**split.locs, **changes.get("locs", {})}})


def test_allowed_indices_exclude_test_and_unseen(tiny):
    _, split = tiny
    final, seen = allowed_training_indices(split, "final")
    assert np.array_equal(final, split.locs["trainval"]) and seen.tolist() == [0, 1, 2]
    validation, train_classes = allowed_training_indices(split, "validation")
    assert np.array_equal(validation, split.locs["train"]) and train_classes.tolist() == [0, 1]
    for protocol in ("final", "validation"):
        for name in ("test_seen", "test_unseen"):
            with pytest.raises(DataError, match="refusing"):
                check_training_indices(split, protocol, [int(final[0]), int(split.locs[name][0])])
    with pytest.raises(DataError, match="refusing"):  # a val-class image under the validation protocol
        check_training_indices(split, "validation", split.locs["val"][:1])


def test_finetune_refuses_test_or_unseen_indices(tiny, tmp_path):
    """finetune_backbone checks the indices it is given before anything is built."""
    root, split = tiny
    unseen_image = int(split.locs["test_unseen"][0])
    with pytest.raises(DataError, match="refusing"):
        _finetune(root, split, _config(epochs=1), tmp_path, indices=np.append(split.locs["trainval"], unseen_image))
    assert not (tmp_path / "history.jsonl").exists()


def test_guard_filters_test_images_listed_in_trainval(tiny):
    """A test_seen image also listed in trainval (a leak in the split files) is never trained on."""
    _, split = tiny
    test_image = int(split.locs["test_seen"][0])
    leaky = _leaky(split, locs={"trainval": np.append(split.locs["trainval"], test_image)})
    allowed, _ = allowed_training_indices(leaky, "final")
    assert test_image not in allowed.tolist() and len(allowed) == len(split.locs["trainval"])


def test_guard_filters_test_unseen_images_listed_in_trainval(tiny):
    """An image in both trainval and test_unseen (a leak in the split files) is never trained on, even
    when its label is a seen class: only the test_unseen rule catches it."""
    _, split = tiny
    leaked = int(split.locs["trainval"][0])
    leaky = _leaky(split, locs={"test_unseen": np.append(split.locs["test_unseen"], leaked)})
    for protocol in ("final", "validation"):
        assert leaked not in allowed_training_indices(leaky, protocol)[0].tolist()


def test_guard_filters_unseen_class_images(tiny):
    """An unseen-class image listed in trainval but in no test loc is still never trained on."""
    _, split = tiny
    unseen_image = int(split.locs["test_unseen"][0])
    locs = {"trainval": np.append(split.locs["trainval"], unseen_image), "test_unseen": split.locs["test_unseen"][1:]}
    # the seen-class filter: the split does not say which classes are unseen
    leaky = _leaky(split, unseen_classes=None, locs=locs)
    assert unseen_image not in allowed_training_indices(leaky, "final")[0].tolist()
    # the unseen-class rule: a class listed as both seen and unseen counts as unseen
    leaky = _leaky(split, seen_classes=np.array([0, 1, 2, 3]), locs=locs)
    assert unseen_image not in allowed_training_indices(leaky, "final")[0].tolist()


def test_guard_validation_protocol_never_trains_on_val_images(tiny):
    """Under the validation protocol the val classes play unseen: a val image listed in train is filtered."""
    _, split = tiny
    val_image = int(split.locs["val"][0])
    leaky = _leaky(split, locs={"train": np.append(split.locs["train"], val_image)})
    assert val_image not in allowed_training_indices(leaky, "validation")[0].tolist()


def test_finetune_config_checks_ranges_and_keys():
    assert FinetuneConfig.from_dict({"epochs": 0}).epochs == 0  # 0 = no fine-tuning, a valid config
    with pytest.raises(ConfigError, match="finetune.lr_head must be > 0"):
        FinetuneConfig.from_dict({"lr_head": -1})
    with pytest.raises(ConfigError, match="finetune.head"):
        FinetuneConfig.from_dict({"head": "mlp"})
    with pytest.raises(ConfigError, match="unknown key"):
        FinetuneConfig.from_dict({"label_smoothing": 0.1})
    with pytest.raises(ConfigError, match="finetune.epochs must be an integer"):
        FinetuneConfig.from_dict({"epochs": 2.5})
    with pytest.raises(ConfigError, match="epochs is 0"):
        finetune_backbone(None, "unused", None, FinetuneConfig(epochs=0), output_dir="unused")


def test_one_epoch_lowers_loss_and_changes_weights(tiny, tmp_path):
    root, split = tiny
    backbone = _backbone()
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    old_id = backbone.weights_id
    tuned = finetune_backbone(backbone, root, split, _config(epochs=1, lr_backbone=0.05), output_dir=tmp_path,
                              image_size=32, val_fraction=0.3, seed=1, progress=False)
    history = read_history(tmp_path)
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[1]["val_loss"] < history[0]["val_loss"]
    assert 0.0 <= history[1]["val_acc"] <= 1.0
    changed = [k for k, v in tuned.model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    assert tuned.weights_id != old_id and len(tuned.weights_id) == 16
    # the saved backbone loads back through the factory with identical features
    reloaded = create_backbone("test_resnet", tmp_path / "backbone.safetensors").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(images), tuned.eval()(images), atol=1e-6)


def test_resume_continues_exactly(tiny, tmp_path):
    root, split = tiny
    straight = _finetune(root, split, _config(), tmp_path / "straight")
    first = _finetune(root, split, _config(), tmp_path / "resumed", max_epochs_this_run=1)
    assert [h["epoch"] for h in read_history(tmp_path / "resumed")] == [0, 1]
    with pytest.raises(DataError, match="different config"):  # never resumed into another run
        _finetune(root, split, _config(lr_head=0.07), tmp_path / "resumed")
    resumed = _finetune(root, split, _config(), tmp_path / "resumed")
    assert [h["epoch"] for h in read_history(tmp_path / "resumed")] == [0, 1, 2]
    assert first is not resumed
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    assert read_history(tmp_path / "straight")[-1]["val_loss"] == pytest.approx(
        read_history(tmp_path / "resumed")[-1]["val_loss"], abs=1e-6)


def test_attribute_head_trains(tiny, tmp_path):
    root, split = tiny
    _finetune(root, split, _config(epochs=2, head="attribute"), tmp_path / "final")
    history = read_history(tmp_path / "final")
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    # validation protocol: the head covers only the train classes (the val class plays unseen)
    _finetune(root, split, _config(epochs=1, head="attribute"), tmp_path / "validation", protocol="validation")
    from safetensors.torch import load_file

    head = load_file(str(tmp_path / "validation" / "head.safetensors"))
    assert head["seen_semantics"].shape == (2, 5)


def test_augmentation_follows_the_epoch_the_sampler_hands_over(tiny):
    """Workers that persist across epochs hold a dataset copy made in epoch 0: the epoch must come with
    each index (EpochShuffleSampler's (epoch, position) pairs), not from the copy's set_epoch."""
    from bsegn.backbone.seen_images import AugmentedImages, EpochShuffleSampler
    from bsegn.datasets.image_dataset import ImageFolderDataset
    from bsegn.datasets.transforms import build_eval_transform, build_train_transform

    root, split = tiny
    config = _backbone().data_config_at(32)
    images = ImageFolderDataset(root, split.image_files, split.labels, build_eval_transform(config))
    stale = AugmentedImages(images, build_train_transform(config), seed=1)  # a worker's copy: epoch 0
    current = AugmentedImages(images, build_train_transform(config), seed=1)
    current.set_epoch(3)
    sampler = EpochShuffleSampler(len(images), seed=1)
    sampler.set_epoch(3)
    pairs = list(sampler)
    assert all(epoch == 3 for epoch, _ in pairs) and sorted(p for _, p in pairs) == list(range(len(images)))
    epoch, position = pairs[0]
    assert torch.equal(stale[(epoch, position)][0], current[position][0])
    assert not torch.equal(stale[position][0], current[position][0])


@pytest.mark.slow
def test_persistent_workers_train_exactly_as_the_main_process(tiny, tmp_path):
    """Two epochs with one persistent worker give the weights of two epochs without workers."""
    root, split = tiny
    inline = _finetune(root, split, _config(), tmp_path / "inline", num_workers=0)
    workers = _finetune(root, split, _config(), tmp_path / "workers", num_workers=1)
    for (name, a), b in zip(inline.model.state_dict().items(), workers.model.state_dict().values()):
        assert torch.equal(a, b), name
