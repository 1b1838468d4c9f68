"""The open-world answer in the application: the bundle records the rule (checked on load), add-class and
remove-class refit it to the new class list, predict / the API / serve answer "unknown" with p_unknown by default
(auto) where the rule was chosen on its run's validation, --open-world off keeps the closed-world answer, a bundle
of the old code (one constant threshold) loads and stays off unless asked, and --open-world on without a rule says
why. Uses the tiny bundle of test_app_bundle.py."""
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

VALIDATION_RECORD = {"chosen_on": "validation", "score": "prototype", "threshold": 0.0, "temperature": 0.5,
                     "reason": None, "auroc": 0.8, "caught": 12.5, "H_off": 60.0, "H_on": 59.5, "H_drop": 0.5,
                     "withheld_classes": [4], "unknown_photos": 8, "known_photos": 40}


def _with_rule(saved_folder: Path, folder: Path, threshold: float = 0.0, chosen_on: str | None = "validation") -> Path:
    from bsegn.generative.open_world import OpenWorldRule, fit_open_world

    bundle = load_bundle(saved_folder)
    scorer = fit_open_world("prototype", bundle.trained, bundle.gzsl, bundle.train_features, bundle.train_labels)
    metrics = {**bundle.metrics, "open_world": VALIDATION_RECORD}
    return save_bundle(dataclasses.replace(bundle, open_world=OpenWorldRule(scorer, threshold, 0.5, chosen_on),
                                           metrics=metrics), folder)


@pytest.fixture(scope="module")
def open_bundle(saved, tmp_path_factory) -> Path:  # noqa: F811
    return _with_rule(saved, tmp_path_factory.mktemp("open") / "bundle")


@pytest.fixture
def open_copy(open_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(open_bundle, tmp_path / "bundle"))


def test_the_bundle_records_the_rule_and_loads_it_back(open_bundle):
    info = json.loads((open_bundle / CONFIG_NAME).read_text())
    assert info["open_world"] == {"score": "prototype", "threshold": 0.0, "temperature": 0.5, "classes": 6,
                                  "chosen_on": "validation"}
    bundle = load_bundle(open_bundle)
    features = bundle.train_features[:5]
    again = bundle.open_world.scorer.score(bundle.trained, bundle.gzsl, features)
    assert again.shape == (5,) and torch.isfinite(again).all()
    card = (open_bundle / "README.md").read_text()
    assert "answered `unknown`" in card and "chosen on the run's validation protocol" in card
    assert "caught 12.5 % of their photos" in card and "on by default" in card


def test_a_closed_world_bundle_has_no_rule(saved):  # noqa: F811
    assert load_bundle(saved).open_world is None
    assert json.loads((saved / CONFIG_NAME).read_text())["open_world"] is None


@pytest.mark.parametrize("edit, message", [
    (lambda v: v["open_world"].update(score="coin"), "'open_world.score'"),
    (lambda v: v["open_world"].update(threshold=float("inf")), "'open_world.threshold'"),
    (lambda v: v["open_world"].update(temperature=0.0), "'open_world.temperature'"),
    (lambda v: v["open_world"].update(classes=5), "'open_world.classes'"),
    (lambda v: v["open_world"].update(chosen_on="test"), "'open_world.chosen_on'"),
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
    assert bundle.open_world.validated  # still the threshold its run chose on validation
    removed = load_bundle(remove_classes(added, ["class4", "newcomer"], tmp_path / "removed"))
    assert removed.open_world.scorer.class_ids.tolist() == removed.gzsl.class_ids.tolist() == list(range(5))
    assert removed.open_world.validated


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
    assert Predictor(far).predict_tensors(image)[0].unknown is True  # auto: the rule was chosen on validation
    closed = Predictor(far, open_world="off").predict_tensors(image)[0]
    assert closed.unknown is None and "unknown" not in closed.to_json() and "p_unknown" not in closed.to_json()



def test_a_model_without_the_decoder_its_score_reads_gets_a_closed_world_bundle(open_bundle, monkeypatch):
    from bsegn.generative.open_world import open_world_rule

    bundle = load_bundle(open_bundle)
    choice = {**VALIDATION_RECORD, "score": "semantic"}  # a score that reads the decoder
    assert open_world_rule(bundle.trained, bundle.gzsl, bundle.train_features, bundle.train_labels, choice) is not None
    del bundle.trained.parts["decoder"]
    assert open_world_rule(bundle.trained, bundle.gzsl, bundle.train_features, bundle.train_labels, choice) is None


def test_predict_json_and_the_api_carry_unknown_unless_open_world_off(open_bundle, tmp_path, capsys):
    from test_app_bundle import _one_image

    from bsegn.app.api import load_model
    from bsegn.app.cli import predict_main

    image = _one_image(tmp_path)
    assert predict_main([str(image), "--model", str(open_bundle), "--json", "--open-world", "on"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert isinstance(answer["unknown"], bool) and 0.0 <= answer["p_unknown"] <= 1.0
    assert predict_main([str(image), "--model", str(open_bundle), "--json"]) == 0  # auto: a validated rule is on
    assert "p_unknown" in json.loads(capsys.readouterr().out)
    assert predict_main([str(image), "--model", str(open_bundle), "--json", "--open-world", "off"]) == 0
    assert "unknown" not in json.loads(capsys.readouterr().out)
    assert load_model(open_bundle, open_world=True).predict(_image()).p_unknown is not None
    assert load_model(open_bundle).predict(_image()).p_unknown is not None
    assert load_model(open_bundle, open_world="off").predict(_image()).p_unknown is None


def test_serve_answers_unknown_only_when_asked(open_bundle):
    """bsegn serve --open-world auto|on|off reaches the served engine; auto by default, as predict and the API."""
    import argparse

    from bsegn.app import serve
    from bsegn.app.serve_engine import Engine, served_predictor

    bundle = load_bundle(open_bundle)
    assert served_predictor(bundle, "gzsl", "cpu").open_world is True  # a rule chosen on validation: on
    assert served_predictor(bundle, "gzsl", "cpu", "off").open_world is False
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    assert parser.parse_args(["serve"]).open_world == "auto"
    assert parser.parse_args(["serve", "--open-world", "on"]).open_world == "on"
    engine = Engine(open_bundle, open_world="off")
    engine.load()
    assert engine.predictor.open_world is False


@pytest.fixture
def old_bundle(open_copy) -> Path:
    """A bundle as the code before the per-run choice wrote it: the flowers' constant, no chosen_on, no record."""
    def old(values):
        values["open_world"].pop("chosen_on")
        values["open_world"].update(threshold=3.1034, temperature=2.7038)
        values["metrics"].pop("open_world")
    rewrite_config(open_copy, old)
    return open_copy


def test_an_old_bundle_with_the_constant_rule_loads_and_answers_unknown_only_when_asked(old_bundle, caplog):
    from bsegn.app.bundle.card import model_card
    from bsegn.app.inference import Predictor

    bundle = load_bundle(old_bundle)
    assert bundle.open_world.threshold == 3.1034 and not bundle.open_world.validated
    assert Predictor(bundle).open_world is False  # auto: not chosen on its run's validation, so off
    with caplog.at_level("WARNING"):
        assert Predictor(bundle, open_world="on").open_world is True
    assert "not chosen on its run's validation" in caplog.text
    card = model_card(json.loads((old_bundle / CONFIG_NAME).read_text()))
    assert "one constant chosen on the flowers" in card and "off unless predict --open-world on" in card


def test_open_world_on_without_a_rule_says_why_and_what_to_do(saved, open_copy, tmp_path, capsys):  # noqa: F811
    from bsegn.app.api import load_model
    from bsegn.app.cli import predict_main
    from bsegn.app.inference import Predictor
    from bsegn.app.serve_engine import Engine
    from bsegn.core.errors import ConfigError

    image = str(_image_file(tmp_path))
    assert predict_main([image, "--model", str(saved), "--open-world", "on"]) == 2  # a bundle from before the rule
    err = capsys.readouterr().err
    assert "has no open-world rule" in err and "re-run train.py with run.threshold null" in err
    assert Predictor(load_bundle(saved)).open_world is False  # auto without a rule: a class, silently

    def chose_none(values):
        values["open_world"] = None
        values["metrics"]["open_world"] = {"chosen_on": None, "threshold": None, "reason": "RUN'S OWN REASON"}
    tensors_removed = _without_rule_tensors(open_copy)
    rewrite_config(tensors_removed, chose_none)
    with pytest.raises(ConfigError, match="its run chose none: RUN'S OWN REASON.*--open-world auto or off"):
        load_model(tensors_removed, open_world="on")
    with pytest.raises(ConfigError, match="RUN'S OWN REASON"):
        Engine(tensors_removed, open_world="on").load()
    copy = save_bundle(load_bundle(tensors_removed), tmp_path / "resaved")
    assert "open world: none (its run chose none: RUN'S OWN REASON)" in (copy / "README.md").read_text()


def _image_file(folder: Path) -> Path:
    path = folder / "photo.png"
    _image().save(path)
    return path


def _without_rule_tensors(folder: Path) -> Path:
    """The bundle with its open_world.* tensors gone (its hashes recomputed)."""
    from safetensors.torch import load_file, save_file

    from bsegn.core.files import file_sha256

    tensors = {k: v for k, v in load_file(str(folder / MODEL_NAME)).items() if not k.startswith("open_world.")}
    save_file(tensors, str(folder / MODEL_NAME), metadata={"format": "bsegn-bundle"})
    rewrite_config(folder, lambda v: v.update(model_bytes=(folder / MODEL_NAME).stat().st_size,
                                              model_sha256=file_sha256(folder / MODEL_NAME)))
    return folder


@pytest.mark.parametrize("setting", ["auto", "on", "off"])
def test_serve_hands_its_open_world_setting_to_the_engine(open_bundle, monkeypatch, setting):
    import argparse

    from bsegn.app import serve

    class Stop(Exception):
        pass

    def engine(path, **options):
        raise Stop(options["open_world"])

    monkeypatch.setattr("bsegn.app.serve_engine.Engine", engine)
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(open_bundle), "--open-world", setting, "--threads", "1"])
    with pytest.raises(Stop, match=setting):
        serve.run(args)


def test_an_open_world_setting_other_than_auto_on_off_is_refused(open_bundle):
    from bsegn.app.api import load_model
    from bsegn.core.errors import ConfigError

    with pytest.raises(ConfigError, match="open_world 'maybe': expected one of auto, on, off"):
        load_model(open_bundle, open_world="maybe")
