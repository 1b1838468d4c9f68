"""`predict --features FILE` and the API's predict_features: a bundle trained on pre-extracted features (no
backbone) answers the rows of a feature cache, an image bundle too when the cache is of its own backbone; each
kind of bad input is one line (wrong dimension, another backbone, a file that is no cache, an edited cache),
NaN rows and rows of unreadable images are skipped and reported while the rest are answered. The tiny bundle
of test_app_bundle; each test well under 5 s."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_app_bundle import shared_tiny_bundle

from bsegn.app.bundle import load_bundle, save_bundle
from bsegn.app.cli import predict_main
from bsegn.app.inference import Predictor
from bsegn.core.errors import BundleError, DataError
from bsegn.datasets.features import FeatureSet, load_feature_cache, save_feature_cache


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory) -> Path:
    return shared_tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def feature_bundle(image_bundle, tmp_path_factory) -> Path:
    """The tiny bundle as a features-trained run writes it: no backbone, no data config."""
    bundle = load_bundle(image_bundle)
    folder = tmp_path_factory.mktemp("features-bundle") / "bundle"
    return save_bundle(dataclasses.replace(bundle, backbone=None, data_config={}), folder)


def _rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, dim)).astype(np.float32)


def _cache(path: Path, rows: np.ndarray, header=None, bad_indices=()) -> Path:
    ids = [f"flower/{i}.jpg" for i in range(len(rows))]
    meta = {"bad_indices": list(bad_indices)}
    return save_feature_cache(path, FeatureSet(rows, np.full(len(rows), -1), ids, meta),
                              header or {"model_name": "some_model", "weights_hash": "0" * 16})


def _predict(capsys, *argv):
    code = predict_main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_features_bundle_answers_each_row_by_its_image_id(feature_bundle, tmp_path, capsys):
    bundle = load_bundle(feature_bundle)
    dim = bundle.trained.feature_dim
    rows = _rows(5, dim)
    cache = _cache(tmp_path / "f.safetensors", rows)
    code, out, err = _predict(capsys, "--features", cache, "--model", feature_bundle, "--json", "--top-k", 3)
    assert code == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    expected = Predictor(bundle, images=False).predict_features(rows, top_k=3)
    assert [a["image"] for a in answers] == [f"flower/{i}.jpg" for i in range(5)]
    assert [{k: v for k, v in a.items() if k != "image"} for a in answers] == [e.to_json() for e in expected]
    code, out, _ = _predict(capsys, "--features", cache, "--model", feature_bundle)
    assert code == 0 and out.splitlines()[0].startswith("flower/0.jpg: ") and "p(unseen)" in out


def test_an_image_bundle_answers_features_of_its_own_backbone_as_it_answers_the_images(image_bundle, tmp_path,
                                                                                        capsys):
    from bsegn.backbone.factory import weights_hash

    bundle = load_bundle(image_bundle)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    predictor = Predictor(bundle)
    with torch.no_grad():
        rows = bundle.backbone(images).float().numpy()
    header = {"model_name": bundle.backbone.model_name, "weights_hash": weights_hash(bundle.backbone.model)}
    cache = _cache(tmp_path / "own.safetensors", rows, header)
    code, out, err = _predict(capsys, "--features", cache, "--model", image_bundle, "--json")
    assert code == 0, err
    from_images = [answer.to_json() for answer in predictor.predict_tensors(images)]
    assert [{k: v for k, v in json.loads(line).items() if k != "image"} for line in out.splitlines()] == from_images
    # features of other weights (or another model) would be answered wrongly: refused by name
    other = _cache(tmp_path / "other.safetensors", rows, {**header, "weights_hash": "f" * 16})
    code, out, err = _predict(capsys, "--features", other, "--model", image_bundle)
    assert code == 2 and not out and len(err.splitlines()) == 1
    assert f"features of test_resnet (weights {'f' * 16}), but this bundle's backbone is test_resnet" in err


def test_nan_rows_and_unreadable_images_are_skipped_and_reported_the_rest_answered(feature_bundle, tmp_path, capsys):
    rows = _rows(4, load_bundle(feature_bundle).trained.feature_dim)
    rows[1, 3] = np.nan
    cache = _cache(tmp_path / "f.safetensors", rows, bad_indices=[2])
    code, out, err = _predict(capsys, "--features", cache, "--model", feature_bundle, "--json")
    assert code == 1
    assert [json.loads(line)["image"] for line in out.splitlines()] == ["flower/0.jpg", "flower/3.jpg"]
    assert "skipped row 1 (flower/1.jpg): its features hold NaN or Inf" in err
    assert "skipped row 2 (flower/2.jpg): its image could not be read" in err
    assert "2 row(s) predicted, 2 skipped" in err


@pytest.mark.parametrize("case", ["dimension", "not a cache", "missing", "edited rows", "edited ids"])
def test_bad_feature_files_are_one_line_each(feature_bundle, tmp_path, capsys, case):
    from safetensors.numpy import save_file

    dim = load_bundle(feature_bundle).trained.feature_dim
    path = _cache(tmp_path / "f.safetensors", _rows(3, dim + (7 if case == "dimension" else 0)))
    says = {"dimension": f"features of dimension {dim + 7}, but this model reads {dim}",
            "not a cache": "not a bsegn feature cache", "missing": "no such feature file",
            "edited rows": "does not match the sha256", "edited ids": "does not match the sha256"}[case]
    if case == "not a cache":
        path.write_bytes(b"\xff\xd8\xff\xe0 a JPEG, say")
    elif case == "missing":
        path = tmp_path / "nothing.safetensors"
    elif case == "edited rows":  # the last float's bytes changed in place, the header left as it was
        data = bytearray(path.read_bytes())
        data[-4:] = np.float32(123.0).tobytes()
        path.write_bytes(bytes(data))
    elif case == "edited ids":  # rewritten with another image id list, the digest copied over
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as handle:
            metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
        save_file(tensors, str(path), metadata={**metadata, "image_ids": json.dumps(["a", "b", "c"])})
    code, out, err = _predict(capsys, "--features", path, "--model", feature_bundle)
    assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
    assert says in err


def test_a_cache_whose_rows_and_ids_disagree_is_a_data_error(tmp_path):
    """A hand-made file with the digest of its own (wrong) content still cannot be read as features."""
    from safetensors.numpy import save_file

    from bsegn.datasets.features import _content_digest

    metadata = {"format": "bsegn-feature-cache-v1", "header": "{}", "image_ids": json.dumps(["only one"]),
                "meta": "{}"}
    tensors = {"features": np.zeros((2, 3), dtype=np.float32), "labels": np.zeros(2, dtype=np.int64)}
    metadata["content_sha256"] = _content_digest(tensors["features"], tensors["labels"], metadata)
    save_file(tensors, str(tmp_path / "odd.safetensors"), metadata=metadata)
    with pytest.raises(DataError, match="not a consistent feature cache"):
        load_feature_cache(tmp_path / "odd.safetensors")


def test_images_and_features_together_or_neither_are_refused(feature_bundle, tmp_path, capsys):
    cache = _cache(tmp_path / "f.safetensors", _rows(2, load_bundle(feature_bundle).trained.feature_dim))
    code, _, err = _predict(capsys, "x.jpg", "--features", cache, "--model", feature_bundle)
    assert code == 2 and "not both" in err
    code, _, err = _predict(capsys, "--model", feature_bundle)
    assert code == 2 and "give image files or folders, or --features FILE" in err
    code, _, err = _predict(capsys, tmp_path, "--model", feature_bundle)  # images with a features bundle
    assert code == 2 and "no backbone" in err and "predict --features FILE" in err


def test_the_python_api_predicts_features_and_says_why_not_images(feature_bundle):
    import bsegn

    model = bsegn.load_model(feature_bundle)
    dim = model.bundle.trained.feature_dim
    rows = _rows(3, dim)
    answers = model.predict_features(rows, top_k=2)
    assert [a.to_json() for a in answers] == [a.to_json() for a in Predictor(model.bundle, images=False)
                                               .predict_features(rows, top_k=2)]
    one = model.predict_features(torch.as_tensor(rows[1]))
    assert one.to_json() == model.predict_features(rows[1:2])[0].to_json() and len(one.top) == 5
    with pytest.raises(BundleError, match="no backbone.*predict_features"):
        model.predict(torch.rand(3, 8, 8))
    with pytest.raises(DataError, match=rf"this model reads rows \(N, {dim}\)"):
        model.predict_features(_rows(2, dim + 1))
    rows[2, 0] = np.inf
    with pytest.raises(DataError, match=r"feature rows \[2\] hold NaN or Inf"):
        model.predict_features(rows)


def test_each_model_card_prints_the_commands_its_bundle_answers(image_bundle, feature_bundle):
    image_card = (image_bundle / "README.md").read_text()
    feature_card = (feature_bundle / "README.md").read_text()
    assert "predict IMAGE_OR_FOLDER --model THIS_FOLDER" in image_card
    assert "predict --features FEATURES.safetensors --model THIS_FOLDER" in image_card
    assert "predict IMAGE_OR_FOLDER" not in feature_card and "predict --features FEATURES.safetensors" in feature_card
    dim = load_bundle(feature_bundle).trained.feature_dim
    assert f"it classifies features of that kind ({dim} per image), never images" in feature_card
    assert ".predict_features(rows)" in feature_card
