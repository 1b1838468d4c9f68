"""Bundles edited WITH their hashes recomputed (so the integrity checks pass) are still refused, by a
BundleError naming the field: class lists, ids, sizes, the gate, input size, weights. Uses the tiny
bundle of test_app_bundle.py; every test is fast."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_app_bundle import bundle_copy, saved  # noqa: F401 (the tiny bundle's fixtures)

from bsegn.app.bundle import CONFIG_NAME, MODEL_NAME, load_bundle, read_bundle_info
from bsegn.app.bundle.layout import config_digest
from bsegn.core.errors import BundleError
from bsegn.core.files import file_sha256


def rewrite_config(folder: Path, edit) -> None:
    """Apply edit(values) to config.json and recompute its own hash, as a careful forger would."""
    path = folder / CONFIG_NAME
    values = json.loads(path.read_text())
    edit(values)
    values["config_sha256"] = config_digest(values)
    path.write_text(json.dumps(values))


def _set(path: str, value):
    def edit(values):
        *parents, last = path.split("/")
        target = values
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if isinstance(target, list) else last] = value
    return edit


_DELETE = object()


def _short_classes(values):
    values["classes"] = values["classes"][:-1]


def _short_row(values):
    values["bsegn"]["semantics"][2] = values["bsegn"]["semantics"][2][:-1]


EDITS = [
    (_short_classes, "'classes'"),
    (_set("bsegn/seen_classes/0", 999), "'bsegn.seen_classes'"),
    (_set("bsegn/unseen_classes", [4, 4]), "'bsegn.unseen_classes'"),
    (_set("bsegn/unseen_classes", [3, 4, 5]), "'bsegn.seen_classes / unseen_classes'"),
    (_set("bsegn/seen_classes", [0, 1, 2]), "'classes\\[\\].seen'"),
    (_set("classes/0/seen", False), "'classes\\[\\].seen'"),
    (_set("classes/1/name", "class0"), "'classes'"),
    (_set("classes/1", "class1"), "'classes\\[1\\]'"),
    (_set("gzsl_classes", _DELETE), "'gzsl_classes' is missing"),
    (_set("bsegn/semantics", _DELETE), "'bsegn.semantics'"),
    (_set("gzsl_classes/0", 6), "'gzsl_classes'"),
    (_set("zsl_classes", [5, 17]), "'zsl_classes'"),
    (_set("bsegn/feature_dim", "512"), "'bsegn.feature_dim'"),
    (_set("bsegn/semantic_dim", 4), "'bsegn.semantics\\[0\\]'"),
    (_short_row, "'bsegn.semantics\\[2\\]'"),
    (_set("bsegn/semantics/1/0", "0.5"), "'bsegn.semantics\\[1\\]'"),
    (_set("bsegn/config/hidden", -1), "'bsegn.config'"),
    (_set("data_config/input_size", [3, 100000, 100000]), "'data_config.input_size'"),
    (_set("data_config/input_size", ["3", "32", "32"]), "'data_config.input_size'"),
    (_set("data_config/input_size", [3, 32]), "'data_config.input_size'"),
    (_set("data_config/std", [0.2, 0.0, 0.2]), "'data_config.std'"),
    (_set("gate/threshold", float("nan")), "'gate.threshold'"),
    (_set("gate/threshold", "0.5"), "'gate.threshold'"),
    (_set("gate/kind", "oracle"), "'gate' names an unknown gate 'oracle'"),
    (_set("gate", _DELETE), "'gate'"),
    (_set("gate", "stacking"), "'gate'"),
    (_set("unseen_ranking", "best"), "'unseen_ranking'"),
    (_set("attribute_names", ["a0"]), "'attribute_names'"),
    (_set("backbone/num_features", 7), "'backbone.num_features'"),
]


@pytest.mark.parametrize("edit, field", EDITS, ids=[f"{i}-{f}" for i, (_, f) in enumerate(EDITS)])
def test_an_edited_config_with_a_recomputed_hash_is_refused_by_field(bundle_copy, edit, field):
    rewrite_config(bundle_copy, edit)
    with pytest.raises(BundleError, match=f"field {field}"):
        read_bundle_info(bundle_copy)  # before any tensor is read
    with pytest.raises(BundleError, match=f"field {field}"):
        load_bundle(bundle_copy)


def test_the_unedited_bundle_passes_every_check(saved):
    assert load_bundle(saved).num_classes == 6


def test_a_huge_input_size_is_refused_before_anything_is_allocated(bundle_copy, monkeypatch):
    """The check runs before the backbone or the transform exist: nothing reaches torch.zeros."""
    rewrite_config(bundle_copy, _set("data_config/input_size", [3, 100000, 100000]))
    import bsegn.app.bundle.load as bundle_load

    monkeypatch.setattr(bundle_load, "build_backbone", lambda *a: pytest.fail("backbone built"))
    with pytest.raises(BundleError, match="must be an integer in \\[8, 4096\\]"):
        load_bundle(bundle_copy)


def _rewrite_weights(folder: Path, name: str, value: float) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / MODEL_NAME))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = value
    save_file(tensors, str(folder / MODEL_NAME), metadata={"format": "bsegn-bundle"})

    def edit(values):
        values["model_bytes"] = (folder / MODEL_NAME).stat().st_size
        values["model_sha256"] = file_sha256(folder / MODEL_NAME)
    rewrite_config(folder, edit)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_or_infinite_weights_with_recomputed_hashes_are_refused(saved, tmp_path, value):
    from safetensors.torch import load_file

    names = [n for n, t in load_file(str(saved / MODEL_NAME)).items() if t.is_floating_point()]
    for name in (next(n for n in names if n.startswith("bsegn.")), next(n for n in names if n.startswith("gzsl.")),
                 next(n for n in names if n.startswith("backbone."))):
        folder = Path(shutil.copytree(saved, tmp_path / f"{name}-{value}"))
        _rewrite_weights(folder, name, value)
        with pytest.raises(BundleError, match=f"tensor '{name}' holds NaN or infinity"):
            load_bundle(folder)


def test_predict_reports_a_schema_error_in_one_line(bundle_copy, tmp_path, capsys):
    from PIL import Image

    from bsegn.app.cli import predict_main

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    rewrite_config(bundle_copy, _set("bsegn/seen_classes/0", 999))
    assert predict_main([str(tmp_path / "x.png"), "--model", str(bundle_copy)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "'bsegn.seen_classes'" in err and len(err.strip().splitlines()) == 1


def test_finite_weights_of_every_dtype_pass(tmp_path):
    """Integer tensors (replay labels) are not checked for finiteness; float16 replay features are."""
    from bsegn.app.bundle.schema import check_finite_tensors

    check_finite_tensors({"a": torch.arange(3), "b": torch.ones(2, dtype=torch.float16)}, tmp_path)
    with pytest.raises(BundleError, match="'b'"):
        check_finite_tensors({"a": torch.arange(3), "b": torch.tensor([1.0, math.inf], dtype=torch.float16)}, tmp_path)
