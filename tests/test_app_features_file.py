"""train.py on pre-extracted features (xlsa17 res101.mat): the backbone stages are skipped, the model is
trained and evaluated on the features, its bundle has no backbone and says so when asked to read an image
(it answers features: tests/test_app_predict_features.py),
and a feature file that does not match the split is refused by name."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bsegn.app.config import load_run_config
from bsegn.core.errors import DataError
from bsegn.datasets.features import FeatureSet, write_res101_mat


@pytest.fixture(scope="module")
def demo_features(tmp_path_factory):
    """Features of the demo split's images that carry their class attributes (plus noise): the demo
    split's 960 images and labels, written as an xlsa17 res101.mat."""
    from bsegn.datasets.demo import ensure_demo_dataset

    root = tmp_path_factory.mktemp("features")
    _, split = ensure_demo_dataset(root / "cache", images_per_class=24, image_size=32, seed=0)
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(split.semantic_dim, 48))
    features = np.maximum(split.semantics[split.labels] @ mixing + 0.3 * rng.normal(size=(len(split.labels), 48)), 0)
    path = write_res101_mat(root / "res101.mat", FeatureSet(features.astype(np.float32), split.labels,
                                                            list(split.image_files)))
    return path, root / "cache"


def _overrides(path, tmp_path, *extra):
    return ["--data.features_file", str(path), "--data.demo_images_per_class", "24", "--data.demo_image_size", "32",
            "--run.output", str(tmp_path / "run"), "--run.threshold", "0",
            "--generative.epochs", "6", "--generative.syn_num", "50", *extra]


def _config(path, cache, tmp_path, *extra):
    return load_run_config(None, _overrides(path, tmp_path, *extra))


def test_training_on_a_feature_file_skips_the_backbone(demo_features, tmp_path, monkeypatch, capsys):
    from bsegn.app.bundle import load_bundle
    from bsegn.app.inference import Predictor
    from bsegn.app.pipeline import run_pipeline
    from bsegn.core.errors import BundleError
    from bsegn.core.logs import setup_logging

    path, cache = demo_features
    monkeypatch.setenv("BSEGN_CACHE", str(cache))
    setup_logging("info")  # messages go to stderr (train.py and the CLI set this up)
    metrics = run_pipeline(_config(path, cache, tmp_path))
    log = capsys.readouterr().err
    assert "backbone stages skipped" in log and "fine-tuning" not in log
    assert not (tmp_path / "run" / "backbone").exists()
    assert metrics["T1"] > 3 * 100 / 10, metrics  # 10 unseen classes: far above chance on features with signal
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(saved)[:4] == ["T1", "U", "S", "H"]
    bundle = load_bundle(tmp_path / "run")
    assert bundle.backbone is None
    with pytest.raises(BundleError, match="no backbone"):
        Predictor(bundle)
    card = (tmp_path / "run" / "bundle" / "README.md").read_text()  # the card promises features, no images
    assert "has no backbone: it classifies features of that kind (48 per image), never images" in card
    assert "predict IMAGE_OR_FOLDER" not in card and "predict --features FEATURES.safetensors" in card


def test_a_feature_file_of_other_images_is_refused(demo_features, tmp_path, monkeypatch):
    from bsegn.app.pipeline import run_pipeline
    from bsegn.datasets.features import read_res101_mat

    path, cache = demo_features
    monkeypatch.setenv("BSEGN_CACHE", str(cache))
    features = read_res101_mat(path)
    short = write_res101_mat(tmp_path / "short.mat", features.subset(np.arange(len(features) - 5)))
    with pytest.raises(DataError, match="indexes 960"):
        run_pipeline(_config(short, cache, tmp_path))
    swapped = FeatureSet(features.features, np.roll(features.labels, 24), features.image_ids)
    wrong = write_res101_mat(tmp_path / "wrong.mat", swapped)
    with pytest.raises(DataError, match="label"):
        run_pipeline(_config(wrong, cache, tmp_path))


def test_changed_generative_config_restarts_the_stage_and_validation_excludes_test_classes(
        demo_features, tmp_path, monkeypatch):
    """Rerunning a run folder with another generative config retrains BSeGN (no stale checkpoint, no
    traceback); the validation protocol's label space is its train + val classes only, so the
    test-unseen classes never act as decoys there."""
    from bsegn.app.bundle import load_bundle
    from bsegn.app.pipeline import run_pipeline
    from bsegn.datasets.protocol import validation_protocol

    path, cache = demo_features
    monkeypatch.setenv("BSEGN_CACHE", str(cache))
    run_pipeline(_config(path, cache, tmp_path, "--run.protocol", "validation"))
    run_pipeline(_config(path, cache, tmp_path, "--run.protocol", "validation", "--generative.epochs", "4"))
    losses = (tmp_path / "run" / "generative" / "losses.csv").read_text().splitlines()[1:]
    assert [int(float(line.split(",")[0])) for line in losses] == [1, 2, 3, 4]  # started over, 4 epochs
    bundle = load_bundle(tmp_path / "run", with_backbone=False)
    split = validation_protocol(read_split(cache), seed=0)
    expected = sorted(set(split.seen_classes.tolist()) | set(split.unseen_classes.tolist()))
    assert bundle.gzsl.class_ids.tolist() == expected and len(expected) < len(split.class_names)


def read_split(cache):
    from bsegn.datasets.demo import ensure_demo_dataset

    return ensure_demo_dataset(cache, images_per_class=24, image_size=32, seed=0)[1]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_train_py_under_accelerate_launch_with_two_processes(demo_features, tmp_path):
    """`accelerate launch --num_processes 2 train.py` (gloo on CPU): both ranks train and exit with status
    0 (the process group is destroyed before exit; without that a rank could abort at interpreter
    shutdown and the launcher fail the finished run), one report, one run folder written by rank 0."""
    from bsegn.app.bundle import load_bundle

    path, cache = demo_features
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "NO_ALBUMENTATIONS_UPDATE": "1", "BSEGN_CACHE": str(cache)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "29518", "train.py", *_overrides(path, tmp_path)]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "terminate called" not in result.stderr
    assert "Grad strides do not match" not in result.stderr  # the critic's known, harmless DDP warning is silenced
    assert result.stderr.count("final protocol on demo: T1") == 1, result.stderr[-2000:]
    assert "[bsegn rank" not in result.stderr  # rank 1 says nothing but warnings
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert metrics["T1"] > 3 * 100 / 10, metrics  # as one process: far above chance on features with signal
    assert load_bundle(tmp_path / "run", with_backbone=False).gzsl.class_ids.numel() == 40
