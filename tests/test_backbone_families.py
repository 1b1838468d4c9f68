"""Every timm family: the features the backbone really returns size the fine-tuning heads, the extraction
buffer and its description (finding 9: MobileNetV3/V4, GhostNet and LCNet return their head_hidden_size
features, 1024 for mobilenetv3_small_100, not timm's num_features 576)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bsegn.backbone.extract import extract_features
from bsegn.backbone.factory import create_backbone
from bsegn.backbone.heads import HEAD_KINDS, SeenClassifier, build_head

ROOT = Path(__file__).resolve().parents[1]
PRE_LOGITS_HEADS = ["mobilenetv3_small_100", "mobilenetv3_large_100", "mobilenetv4_conv_small", "ghostnet_100",
                    "lcnet_050"]
OTHERS = ["resnet10t", "convnext_atto", "deit_tiny_patch16_224", "efficientnet_b0", "regnety_002", "densenet121",
          "dla34"]
FIXED_SIZE = ("deit_",)  # ViTs take their own input size only


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_images")
    rng = np.random.default_rng(0)
    files = [f"k{i}/im{i}.png" for i in range(3)]
    for name in files:
        (root / name).parent.mkdir()
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(root / name)
    return root, files


def _check_family(name, images):
    backbone = create_backbone(name, "none", seed=0)
    size = backbone.data_config["input_size"][-1] if name.startswith(FIXED_SIZE) else 32
    with torch.no_grad():
        width = backbone.eval()(torch.randn(2, 3, size, size)).shape[1]
    assert backbone.num_features == width and backbone.describe()["num_features"] == width
    semantics = np.random.default_rng(1).random((3, 5)).astype(np.float32)
    for kind in HEAD_KINDS:  # one fine-tuning step with each seen-class head
        model = SeenClassifier(backbone, build_head(kind, backbone.num_features, semantics)).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, size, size)), torch.tensor([0, 2]))
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    root, files = images
    features, bad = extract_features(backbone, root, files, None, batch_size=2, num_workers=0, image_size=size,
                                     progress=False)
    assert bad == [] and features.features.shape == (len(files), width) and features.features.any()
    assert features.meta["backbone"]["num_features"] == width
    return width, int(backbone.model.num_features)


def test_mobilenetv3_heads_and_extraction_use_the_real_width(images):
    """Fast guard: without the fix the heads are 576 wide and the first step fails (mat1 and mat2 shapes)."""
    assert _check_family("mobilenetv3_small_100", images) == (1024, 576)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRE_LOGITS_HEADS[1:] + OTHERS)
def test_timm_families(name, images):
    width, timm_num_features = _check_family(name, images)
    assert (width != timm_num_features) == (name in PRE_LOGITS_HEADS)


@pytest.mark.slow
def test_demo_run_with_a_mobilenetv3_backbone(tmp_path):
    """train.py end to end (fine-tuning, extraction, BSeGN, bundle) with mobilenetv3_small_100, reduced."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1",
               BSEGN_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, str(ROOT / "train.py"), "--backbone.model", "mobilenetv3_small_100", "--backbone.weights", "none",
               "--data.demo_images_per_class", "12", "--data.demo_image_size", "32", "--backbone.image_size", "32",
               "--finetune.epochs", "1", "--generative.epochs", "1", "--generative.syn_num", "10",
               "--run.threshold", "0", "--run.output", str(tmp_path / "run")]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = tmp_path / "run" / "bundle"
    assert (bundle / "config.json").is_file() and (bundle / "model.safetensors").is_file()
    assert '"num_features": 1024' in (tmp_path / "run" / "backbone" / "backbone.json").read_text()
