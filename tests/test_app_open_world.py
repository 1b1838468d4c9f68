"""The open-world answer in the application: the bundle records the rule (checked on load), add-class and
remove-class refit it to the new class list, predict / the API answer "unknown" with p_unknown, and
--open-world off keeps the closed-world answer. Uses the tiny bundle of test_app_bundle.py."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_app_bundle import _image, saved  # noqa: F401 (the tiny bundle's fixture)
from test_app_bundle_checks import rewrite_config

from bsegn.app.bundle import CONFIG_NAME, MODEL_NAME, load_bundle, save_bundle
from bsegn.core.errors import BundleError


def _with_rule(saved_folder: Path, folder: Path, threshold: float = 0.0) -> Path:
    from bsegn.generative.open_world import OpenWorldRule, fit_open_world

    bundle = load_bundle(saved_folder)
    scorer = fit_open_world("prototype", bundle.trained, bundle.gzsl, bundle.train_features, bundle.train_labels)
    return save_bundle(dataclasses.replace(bundle, open_world=OpenWorldRule(scorer, threshold, 0.5)), folder)


@pytest.fixture(scope="module")
def open_bundle(saved, tmp_path_factory) -> Path:  # noqa: F811
    return _with_rule(saved, tmp_path_factory.mktemp("open") / "bundle")


@pytest.fixture
def open_copy(open_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(open_bundle, tmp_path / "bundle"))


def test_the_bundle_records_the_rule_and_loads_it_back(open_bundle):
    info = json.loads((open_bundle / CONFIG_NAME).read_text())
    assert info["open_world"] == {"score": "prototype", "threshold": 0.0, "temperature": 0.5, "classes": 6}
    bundle = load_bundle(open_bundle)
    features = bundle.train_features[:5]
    again = bundle.open_world.scorer.score(bundle.trained, bundle.gzsl, features)
    assert again.shape == (5,) and torch.isfinite(again).all()
    assert "answered `unknown`" in (open_bundle / "README.md").read_text()


def test_a_closed_world_bundle_has_no_rule(saved):  # noqa: F811
    assert load_bundle(saved).open_world is None
    assert json.loads((saved / CONFIG_NAME).read_text())["open_world"] is None


@pytest.mark.parametrize("edit, message", [
    (lambda v: v["open_world"].update(score="coin"), "'open_world.score'"),
    (lambda v: v["open_world"].update(threshold=float("inf")), "'open_world.threshold'"),
    (lambda v: v["open_world"].update(temperature=0.0), "'open_world.temperature'"),
    (lambda v: v["open_world"].update(classes=5), "'open_world.classes'"),
    (lambda v: v.update(open_world=None), "open_world.\\* tensors but config.json no open-world rule"),
])
def test_an_edited_rule_is_refused_by_a_message_naming_it(open_copy, edit, message):
    rewrite_config(open_copy, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(open_copy)


def test_a_rule_fitted_to_other_classes_is_refused(open_copy):
    from safetensors.torch import load_file, save_file

    from bsegn.core.files import file_sha256

    tensors = load_file(str(open_copy / MODEL_NAME))
    tensors["open_world.class_ids"] = torch.tensor([0, 1, 2, 3, 5, 4])  # the same count, another list
    save_file(tensors, str(open_copy / MODEL_NAME), metadata={"format": "bsegn-bundle"})
    rewrite_config(open_copy, lambda v: v.update(model_bytes=(open_copy / MODEL_NAME).stat().st_size,
                                                 model_sha256=file_sha256(open_copy / MODEL_NAME)))
    with pytest.raises(BundleError, match="fitted to classes"):
        load_bundle(open_copy)


def test_add_class_and_remove_class_refit_the_rule_to_the_new_class_list(open_copy, tmp_path):
    from bsegn.app.add_class import add_classes, remove_classes

    added = add_classes(open_copy, [("newcomer", [0.2] * 5)], tmp_path / "added")
    bundle = load_bundle(added)
    assert bundle.open_world.scorer.class_ids.tolist() == bundle.gzsl.class_ids.tolist() == list(range(7))
    assert bundle.open_world.scorer.prototypes.shape[0] == 7
    assert bundle.open_world.threshold == 0.0 and bundle.open_world.temperature == 0.5
    removed = load_bundle(remove_classes(added, ["class4", "newcomer"], tmp_path / "removed"))
    assert removed.open_world.scorer.class_ids.tolist() == removed.gzsl.class_ids.tolist() == list(range(5))


def test_predict_answers_unknown_with_p_unknown_and_off_keeps_the_closed_world(open_bundle):
    from bsegn.app.inference import Predictor

    bundle = load_bundle(open_bundle)
    image = Predictor(bundle).transform(_image())[None]
    # threshold -1e6: every image is further than that from every class -> unknown, p_unknown 1
    far = dataclasses.replace(bundle, open_world=dataclasses.replace(bundle.open_world, threshold=-1e6))
    answer = Predictor(far, open_world=True).predict_tensors(image)[0]
    assert answer.unknown is True and answer.p_unknown == pytest.approx(1.0)
    assert answer.to_json()["unknown"] is True and answer.to_json()["p_unknown"] == pytest.approx(1.0)
    text = answer.to_text()
    assert "unknown (none of the model's classes; nearest:" in text and answer.top[0].name in text
    near = dataclasses.replace(bundle, open_world=dataclasses.replace(bundle.open_world, threshold=1e6))
    assert Predictor(near, open_world=True).predict_tensors(image)[0].unknown is False
    closed = Predictor(far).predict_tensors(image)[0]  # off by default
    assert closed.unknown is None and "unknown" not in closed.to_json() and "p_unknown" not in closed.to_json()



def test_a_model_without_the_decoder_its_score_reads_gets_a_closed_world_bundle(open_bundle, monkeypatch):
    from bsegn.generative.open_world import open_world_rule

    bundle = load_bundle(open_bundle)
    monkeypatch.setattr("bsegn.generative.open_world.OPEN_WORLD_SCORE", "semantic")  # a score that reads the decoder
    assert open_world_rule(bundle.trained, bundle.gzsl, bundle.train_features, bundle.train_labels) is not None
    del bundle.trained.parts["decoder"]
    assert open_world_rule(bundle.trained, bundle.gzsl, bundle.train_features, bundle.train_labels) is None


def test_predict_json_and_the_api_carry_unknown_only_with_open_world_on(open_bundle, tmp_path, capsys):
    from test_app_bundle import _one_image

    from bsegn.app.api import load_model
    from bsegn.app.cli import predict_main

    image = _one_image(tmp_path)
    assert predict_main([str(image), "--model", str(open_bundle), "--json", "--open-world", "on"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert isinstance(answer["unknown"], bool) and 0.0 <= answer["p_unknown"] <= 1.0
    for off in ([], ["--open-world", "off"]):  # off by default: the threshold is not chosen per run yet
        assert predict_main([str(image), "--model", str(open_bundle), "--json", *off]) == 0
        assert "unknown" not in json.loads(capsys.readouterr().out)
    assert load_model(open_bundle, open_world=True).predict(_image()).p_unknown is not None
    assert load_model(open_bundle).predict(_image()).p_unknown is None


def test_serve_answers_unknown_only_when_asked(open_bundle):
    """bsegn serve --open-world on|off reaches the served engine; off by default, as predict and the API."""
    import argparse

    from bsegn.app import serve
    from bsegn.app.serve_engine import Engine, served_predictor

    bundle = load_bundle(open_bundle)
    assert served_predictor(bundle, "gzsl", "cpu").open_world is False
    assert served_predictor(bundle, "gzsl", "cpu", True).open_world is True
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    assert parser.parse_args(["serve"]).open_world == "off"
    assert parser.parse_args(["serve", "--open-world", "on"]).open_world == "on"
    assert Engine(open_bundle, open_world=True).open_world and not Engine(open_bundle).open_world
