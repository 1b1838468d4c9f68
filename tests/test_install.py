"""bsegn installs like a library: a built wheel (not the editable checkout) finds its configs by name
and trains from another directory, as `pip install .` users run it.

The wheel is unpacked into a fresh virtual environment that sees this environment's dependencies
(torch, timm, ...) through a .pth line; .pth files are not processed in directories added that way,
so the editable install of the checkout stays invisible and only the wheel's files can be imported."""
import importlib.metadata
import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import SCRATCH_BACKBONE

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(root / "dist"), str(REPO_ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((root / "dist").glob("bsegn-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site_dir = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site_dir)
    (site_dir / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python, root


def _run(python, args, cwd, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_its_configs(wheel_env, tmp_path):
    python, _ = wheel_env
    result = _run(python, ["-c", "import sys, bsegn; print('torch' in sys.modules); import bsegn.app.config as c; "
                                 "print(c.__file__); print(c.load_run_config('awa1-lampert').data.benchmark); "
                                 "print(bsegn.__version__); print(bsegn.load_model.__module__)"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    torch_loaded, location, benchmark, version, api = result.stdout.split()
    assert str(REPO_ROOT) not in location  # imported from the wheel, not the checkout
    assert benchmark == "AWA1-Lampert2009"
    # the top-level package: the one version (bsegn/__init__.py, which pyproject reads), load_model on demand
    assert version == importlib.metadata.version("bsegn") and torch_loaded == "False" and api == "bsegn.app.api"


@pytest.mark.slow
def test_the_installed_bsegn_trains_the_demo_and_predicts_from_another_directory(wheel_env, tmp_path):
    """`bsegn train --config demo` (reduced) and `bsegn predict` from the wheel alone: the trainer is installed.
    The wheel is unpacked without console scripts, so the commands run as `python -m bsegn.app.cli`, the module
    the wheel's `bsegn` entry point names (checked here too)."""
    python, root = wheel_env
    entry_points = next(root.glob("venv/lib/python*/site-packages/bsegn-*.dist-info/entry_points.txt")).read_text()
    assert "bsegn = bsegn.app.cli:main" in entry_points and "predict = bsegn.app.cli:predict_main" in entry_points
    result = _run(python, ["-m", "bsegn.app.cli", "train", "--config", "demo", "--data.demo_images_per_class", "12",
                           "--data.demo_image_size", "32", "--backbone.image_size", "32", "--finetune.epochs", "1",
                           "--generative.epochs", "1", "--generative.syn_num", "10", "--generative.classifier_epochs",
                           "2", "--run.threshold", "0", "--output", "out", *SCRATCH_BACKBONE], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert (tmp_path / "out" / "bundle" / "model.safetensors").is_file()

    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    result = _run(python, ["-m", "bsegn.app.cli", "predict", "red.png", "--model", "out", "--json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.splitlines()[0])
    assert answer["top"] and answer["top"][0]["class"], answer
