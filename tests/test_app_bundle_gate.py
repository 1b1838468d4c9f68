"""The seen-or-unseen gate in the app: stored in the bundle (kind + threshold in config.json, tensors in
model.safetensors under the sha256), driving
predict's flag and p_unseen, moved by --threshold, and kept reachable by add-class. Uses the tiny bundle
of test_app_bundle.py; every test is fast."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_app_bundle import CLASSES, IMAGE_SIZE, _tiny_bundle
from test_app_bundle_checks import _DELETE, _set, rewrite_config

from bsegn.app.bundle import CONFIG_NAME, MODEL_NAME, load_bundle, save_bundle
from bsegn.core.errors import BundleError
from bsegn.generative.gates import GATES, fit_gate, gate_inputs

KINDS = ("stacking", "gaussian", "learned", "semantic", "combined")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gates")
    return {kind: _tiny_bundle(root / kind, gate=kind, threshold=0.0) for kind in KINDS}


def _images(count: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def _gate_view(bundle, images):
    """The gate's inputs for these images, computed here without the Predictor."""
    with torch.no_grad():
        features = bundle.backbone(images).float()
    return gate_inputs(bundle.trained, bundle.gzsl, bundle.zsl, features, unseen_ranking=bundle.unseen_ranking)


@pytest.mark.parametrize("kind", KINDS)
def test_a_round_trip_keeps_the_gate(bundles, tmp_path, kind):
    bundle = load_bundle(bundles[kind])
    gate = fit_gate(kind, bundle.trained, bundle.train_features, bundle.train_labels, range(len(CLASSES)), seed=3,
                    classifiers=(bundle.gzsl, bundle.zsl))
    gate.threshold, gate.temperature = 1.25, 3.5
    bundle.gate = gate
    again = load_bundle(save_bundle(bundle, tmp_path / "again"))
    assert again.gate.kind == kind and again.gate.threshold == 1.25 and type(again.gate) is type(gate)
    assert again.gate.temperature == 3.5
    before, after = gate.state_dict(), again.gate.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert bool(before) == (kind not in ("stacking", "semantic"))  # the fitted gates do store tensors
    inputs = _gate_view(again, _images())
    assert torch.equal(gate.domain_score(inputs), again.gate.domain_score(inputs))
    info = json.loads((tmp_path / "again" / CONFIG_NAME).read_text())
    assert info["gate"] == {"kind": kind, "threshold": 1.25, "temperature": 3.5}


@pytest.mark.parametrize("field, value", [("temperature", 0), ("temperature", -1.0), ("temperature", float("nan")),
                                          ("temperature", "2"), ("temperature", True), ("temperature", 1e-300),
                                          ("temperature", 1e300), ("threshold", 1e308), ("threshold", -1e10),
                                          ("threshold", float("inf")), ("threshold", None)])
def test_a_gate_number_out_of_range_is_refused(bundles, tmp_path, field, value):
    """Issue 25: a gate threshold of 1e308 (hash recomputed) passed the schema, and serve then answered
    /predict with a plain-text 500 (NaN in the answer); a temperature of 1e-300 gives 0 / 0."""
    folder = Path(shutil.copytree(bundles["gaussian"], tmp_path / "bundle"))
    rewrite_config(folder, _set(f"gate/{field}", value))
    with pytest.raises(BundleError, match=f"'gate.{field}' must be a finite number from"):
        load_bundle(folder)
    rewrite_config(folder, _set(f"gate/{field}", 1e9 if field == "threshold" else 1e-9))  # the range's ends load
    assert getattr(load_bundle(folder).gate, field) == (1e9 if field == "threshold" else 1e-9)


def test_a_bundle_saved_before_the_temperature_loads_with_temperature_one(bundles, tmp_path):
    folder = Path(shutil.copytree(bundles["gaussian"], tmp_path / "bundle"))
    rewrite_config(folder, _set("gate/temperature", 7.0))
    assert load_bundle(folder).gate.temperature == 7.0
    rewrite_config(folder, _set("gate/temperature", _DELETE))
    assert load_bundle(folder).gate.temperature == 1.0


def _tensor_bytes(path: Path, name: str) -> tuple[int, int]:
    """The byte range of tensor `name` in a safetensors file."""
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8:8 + header])[name]["data_offsets"]
    return 8 + header + start, 8 + header + end


@pytest.mark.parametrize("kind, name", [("gaussian", "gate.means"), ("learned", "gate.network.0.weight")])
def test_a_tampered_gate_tensor_is_refused(bundles, tmp_path, kind, name):
    folder = Path(shutil.copytree(bundles[kind], tmp_path / "bundle"))
    model = folder / MODEL_NAME
    start, end = _tensor_bytes(model, name)
    data = bytearray(model.read_bytes())
    data[(start + end) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="content does not match the sha256"):
        load_bundle(folder)


def _rewrite_tensors(folder: Path, edit) -> None:
    """edit(tensors) on model.safetensors, then both hashes recomputed (a careful forger)."""
    from safetensors.torch import load_file, save_file

    from bsegn.core.files import file_sha256

    tensors = load_file(str(folder / MODEL_NAME))
    edit(tensors)
    save_file(tensors, str(folder / MODEL_NAME), metadata={"format": "bsegn-bundle"})
    rewrite_config(folder, lambda v: v.update(model_bytes=(folder / MODEL_NAME).stat().st_size,
                                              model_sha256=file_sha256(folder / MODEL_NAME)))


def _drop_gate(tensors):
    for name in [n for n in tensors if n.startswith("gate.")]:
        del tensors[name]


def _narrow_means(tensors):  # means and precision agree with each other, not with the mFIM features
    tensors["gate.means"] = tensors["gate.means"][:, :-1].contiguous()
    tensors["gate.precision"] = tensors["gate.precision"][:-1, :-1].contiguous()


def _five_parts(tensors):  # a standardisation for a part combined does not have
    for name in ("gate.centre", "gate.scale"):
        tensors[name] = torch.cat([tensors[name], tensors[name][:1]])


@pytest.mark.parametrize("kind, tensors_edit, config_edit", [
    ("gaussian", _drop_gate, None),                                 # tensors missing
    ("combined", _five_parts, None),
    ("learned", _drop_gate, None),
    ("gaussian", _narrow_means, None),                              # a dimension that is not the mFIM's
    ("stacking", None, _set("gate/kind", "gaussian")),               # a kind whose tensors are not there
    ("learned", None, _set("gate/kind", "gaussian")),                # another kind's tensors
    ("gaussian", None, _set("gate/kind", "stacking")),               # tensors a stacking gate has none of
])
def test_missing_or_inconsistent_gate_tensors_are_refused(bundles, tmp_path, kind, tensors_edit, config_edit):
    folder = Path(shutil.copytree(bundles[kind], tmp_path / "bundle"))
    if tensors_edit:
        _rewrite_tensors(folder, tensors_edit)
    if config_edit:
        rewrite_config(folder, config_edit)
    with pytest.raises(BundleError, match="gate's tensors in model.safetensors do not fit it") as error:
        load_bundle(folder)
    assert "\n" not in str(error.value)


def test_an_unknown_gate_is_one_line_listing_the_valid_ones(bundles, tmp_path, capsys):
    from bsegn.app.cli import predict_main

    folder = Path(shutil.copytree(bundles["stacking"], tmp_path / "bundle"))
    rewrite_config(folder, _set("gate/kind", "oracle"))
    image = tmp_path / "x.png"
    _pil().save(image)
    assert predict_main([str(image), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "unknown gate 'oracle'" in err and f"valid gates: {', '.join(GATES)}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_bundle_of_before_the_first_release_is_refused_by_its_version(bundles, tmp_path):
    # format 2 (a calibrated-stacking "gamma", no "gate") never shipped in a release: it is not read
    folder = Path(shutil.copytree(bundles["stacking"], tmp_path / "bundle"))

    def edit(values):
        values.update(format_version=2, gamma=0.7)
        del values["gate"]
    rewrite_config(folder, edit)
    with pytest.raises(BundleError, match="bundle format version 2, but this bsegn reads versions 3"):
        load_bundle(folder)


def _pil(colour=(200, 30, 30)):
    from PIL import Image

    return Image.new("RGB", (40, 40), colour)


@pytest.mark.parametrize("kind", KINDS)
def test_predicts_flag_is_the_gates_decision(bundles, kind):
    """The flag is the gate's decision at its threshold; the class named is gate.predict's; p_unseen is
    above 0.5 exactly for the images called unseen; both decisions occur (threshold at the median)."""
    from bsegn.app.inference import Predictor

    bundle = load_bundle(bundles[kind])
    images = _images()
    inputs = _gate_view(bundle, images)
    bundle.gate.threshold = float(bundle.gate.domain_score(inputs).median())
    expected_unseen = bundle.gate.unseen(inputs)
    expected_class = bundle.gzsl.class_ids[bundle.gate.predict(inputs)]
    assert 0 < int(expected_unseen.sum()) < len(images)
    predictor = Predictor(bundle)
    answers = predictor.predict_tensors(images, top_k=3)
    assert [a.unseen for a in answers] == expected_unseen.tolist()
    assert [a.top[0].class_id for a in answers] == expected_class.tolist()
    for answer in answers:
        assert answer.top[0].seen == (not answer.unseen)  # an unseen flag comes with an unseen class
        assert (answer.p_unseen > 0.5) == answer.unseen
        probabilities = [t.probability for t in answer.top]
        assert probabilities == sorted(probabilities, reverse=True)
    zsl = Predictor(bundle, mode="zsl").predict_tensors(images)
    assert [a.p_unseen for a in zsl] == [a.p_unseen for a in answers]  # the gate's, in every mode
    assert all(a.unseen and not any(t.seen for t in a.top) for a in zsl)


def test_the_class_named_is_the_gates_even_where_the_scores_rank_another_first(bundles, monkeypatch):
    """A tie at the threshold (forced here: the gate names each image's LAST-ranked column) still puts the
    gate's class first."""
    from bsegn.app.inference import Predictor

    bundle = load_bundle(bundles["gaussian"])
    images = _images(4)
    worst = _gate_view(bundle, images).scores.argmin(1)
    monkeypatch.setattr(bundle.gate, "predict", lambda inputs, threshold=None, score=None: worst)
    answers = Predictor(bundle).predict_tensors(images, top_k=3)
    assert [a.top[0].class_id for a in answers] == bundle.gzsl.class_ids[worst].tolist()
    assert all(len(a.top) == 3 and len({t.class_id for t in a.top}) == 3 for a in answers)


def test_threshold_moves_the_decisions(bundles, tmp_path, capsys):
    from bsegn.app.cli import predict_main

    folder = tmp_path / "images"
    folder.mkdir()
    for index, colour in enumerate([(200, 30, 30), (10, 200, 40), (0, 0, 255), (90, 90, 90)]):
        _pil(colour).save(folder / f"{index}.png")
    model = str(bundles["gaussian"])
    flags = {}
    for threshold in ("-1e9", "1e9"):
        assert predict_main([str(folder), "--model", model, "--json", f"--threshold={threshold}"]) == 0
        answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        flags[threshold] = [a["unseen"] for a in answers]
        assert all(a["top"][0]["seen"] != a["unseen"] for a in answers)
    assert flags == {"-1e9": [True] * 4, "1e9": [False] * 4}


def test_the_card_names_the_gate_and_its_measurements(tmp_path):
    metrics = {"T1": 1.0, "U": 1.0, "S": 1.0, "H": 1.0, "protocol": "final", "domain_auroc": 0.8123, "oracle_H": 71.25}
    folder = _tiny_bundle(tmp_path / "b", gate="gaussian", threshold=2.5, metrics=metrics)
    card = (folder / "README.md").read_text()
    assert "gate `gaussian`, threshold 2.5; domain AUROC 0.812, oracle-domain H 71.2" in card
    assert "domain AUROC" not in (_tiny_bundle(tmp_path / "c") / "README.md").read_text()
    assert "p(unseen) =" not in card  # temperature 1: p_unseen in the score's own units, nothing to say
    from bsegn.app.bundle.card import model_card

    config = json.loads((folder / CONFIG_NAME).read_text())
    config["gate"]["temperature"], config["metrics"]["p_unseen_ece"] = 3.25, 0.0412
    assert "p(unseen) = sigmoid((score - threshold) / 3.25), the temperature fitted on the validation protocol " \
           "(test: calibration error 0.041)" in model_card(config)


def test_serve_answers_the_gates_p_unseen_and_refits_a_learned_gate_for_an_added_class(tmp_path):
    """serve's p_unseen is the gate's sigmoid(domain score - threshold) for the image; a class added on
    the page refits the served model's learned gate (as add-class), its threshold kept."""
    from bsegn.app.serve_engine import Engine

    engine = Engine(_tiny_bundle(tmp_path / "learned", gate="learned", threshold=0.5))
    engine.start(background=False)
    bundle, images = engine.ready_predictor().bundle, _images(3)
    expected = bundle.gate.p_unseen(_gate_view(bundle, images)).tolist()
    served = [engine.submit(image).result(timeout=60).p_unseen for image in images]
    assert served == pytest.approx(expected, abs=1e-6) and any(abs(p - 0.5) > 1e-3 for p in served)
    old = bundle.gate
    engine.add_classes([("zebra", [0.9, 0.1, 0.9, 0.1, 0.9])])
    served = engine.ready_predictor().bundle
    expected = fit_gate("learned", served.trained, served.train_features, served.train_labels, range(len(CLASSES) + 1))
    assert served.gate is not old and served.gate.threshold == 0.5 and engine.ready_predictor().gate is served.gate
    assert all(torch.equal(served.gate.state_dict()[k], v) for k, v in expected.state_dict().items())
    engine.stop()


def test_a_combined_gate_saved_before_its_semantic_part_loads_with_three_parts(bundles, tmp_path):
    """A combined gate stored with three standardised parts (before the semantic margin joined it, or from a
    model without a decoder) loads as three parts and scores as their sum; four parts load as four."""
    four = load_bundle(bundles["combined"])
    assert four.gate.centre.shape == (4,)
    folder = Path(shutil.copytree(bundles["combined"], tmp_path / "bundle"))

    def first_three(tensors):
        for name in ("gate.centre", "gate.scale"):
            tensors[name] = tensors[name][:3].contiguous()

    _rewrite_tensors(folder, first_three)
    three = load_bundle(folder)
    assert three.gate.centre.shape == (3,)
    inputs = _gate_view(three, _images())
    parts = three.gate.parts(inputs)
    assert parts.shape[1] == 3
    expected = ((parts - four.gate.centre[:3]) / four.gate.scale[:3]).sum(1)
    assert torch.allclose(three.gate.domain_score(inputs), expected)


def test_a_semantic_gate_without_a_semantic_decoder_is_refused_at_load(tmp_path):
    folder = _tiny_bundle(tmp_path / "bundle", gate="semantic", threshold=0.0, bsegn_options={"lambda_cyc": 0.0})
    with pytest.raises(BundleError, match="semantic gate.*no semantic decoder") as error:
        load_bundle(folder)
    assert "\n" not in str(error.value)


def test_a_four_part_combined_gate_on_a_model_without_a_decoder_is_refused(tmp_path):
    """Without a semantic decoder combined has three parts: a fourth standardisation means an edited bundle."""
    folder = _tiny_bundle(tmp_path / "bundle", gate="combined", threshold=0.0, bsegn_options={"lambda_cyc": 0.0})
    assert load_bundle(folder).gate.centre.shape == (3,)

    def four(tensors):
        for name in ("gate.centre", "gate.scale"):
            tensors[name] = torch.cat([tensors[name], tensors[name][:1]])

    _rewrite_tensors(folder, four)
    with pytest.raises(BundleError, match="gate's tensors in model.safetensors do not fit it"):
        load_bundle(folder)
