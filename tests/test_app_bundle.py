"""The model bundle without the demo training: a tiny bundle (random test_resnet backbone + a small
untrained TrainedBSeGN with fitted classifiers) is saved, loaded, tampered with and used through the
public API and `predict`. Each test takes well under 5 s."""
import dataclasses
import json
import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bsegn.app.bundle import CONFIG_NAME, MODEL_NAME, Bundle, load_bundle, save_bundle
from bsegn.core.errors import BundleError

CLASSES = [f"class{c}" for c in range(6)]
SEEN, UNSEEN = [0, 1, 2, 3], [4, 5]
IMAGE_SIZE = 32


def _tiny_bundle(folder: Path, *, unseen_ranking: str = "gzsl", gate: str = "stacking", threshold: float = -0.5,
                 semantics=None, class_names=None, attribute_names=None, bsegn_options=None, **save_options) -> Path:
    """A tiny bundle; `semantics` (C, k) default to random 5-d vectors of CLASSES, `gate`: the kind of its
    seen-or-unseen gate (fitted on the tiny training features) at `threshold` (stacking at -0.5: gamma
    0.5), `save_options`: other Bundle fields (e.g. the semantic fields of a text bundle, `metrics=`)."""
    from bsegn.backbone.factory import create_backbone
    from bsegn.generative.classifier import fit_final_classifier
    from bsegn.generative.config import BSeGNConfig
    from bsegn.generative.gates import fit_gate
    from bsegn.generative.model import TrainedBSeGN

    torch.manual_seed(0)
    backbone = create_backbone("test_resnet", "none")
    config = BSeGNConfig.from_dict({"hidden": 16, "embedder_hidden": 8, "syn_num": 4, "classifier_epochs": 1,
                                    **(bsegn_options or {})})
    if semantics is None:
        semantics = torch.rand(len(CLASSES), 5, generator=torch.Generator().manual_seed(0))
        attribute_names = [f"a{j}" for j in range(5)]
    semantics = torch.as_tensor(semantics)
    trained = TrainedBSeGN(config, backbone.num_features, semantics.shape[1], semantics, SEEN, UNSEEN).eval()
    features = torch.rand(24, backbone.num_features, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor(SEEN * 6)
    trained.fit_integration(features)
    gzsl = fit_final_classifier(trained, features, labels, list(range(len(CLASSES))))
    zsl = fit_final_classifier(trained, None, None, UNSEEN)
    fitted = fit_gate(gate, trained, features, labels, list(range(len(semantics))), seed=0, classifiers=(gzsl, zsl))
    fitted.threshold = threshold
    return save_bundle(Bundle(backbone=backbone, trained=trained, gzsl=gzsl, zsl=zsl,
                              class_names=class_names or CLASSES, attribute_names=attribute_names,
                              data_config=backbone.data_config_at(IMAGE_SIZE), gate=fitted,
                              unseen_ranking=unseen_ranking, train_features=features, train_labels=labels,
                              benchmark="tiny", run_config={"run": {}},
                              **{"metrics": {"T1": 12.345, "U": 1.0, "S": 2.0, "H": 1.33333, "protocol": "final"},
                                 **save_options}), folder)


def shared_tiny_bundle(tmp_path_factory) -> Path:
    """The default tiny bundle, built once per test session for the modules that only read it (a test that
    changes a bundle copies it first); seven modules building their own took about 15 s of the fast tier."""
    folder = tmp_path_factory.getbasetemp() / "tiny-shared" / "bundle"
    if not (folder / CONFIG_NAME).is_file():
        _tiny_bundle(folder)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return shared_tiny_bundle(tmp_path_factory)


@pytest.fixture
def bundle_copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "bundle"))


def _image(colour=(200, 30, 30)):
    from PIL import Image

    return Image.new("RGB", (40, 40), colour)


def test_bundle_round_trip_keeps_everything_predict_needs(saved):
    bundle = load_bundle(saved)
    assert bundle.class_names == CLASSES and bundle.unseen_ranking == "gzsl"
    assert bundle.gate.kind == "stacking" and bundle.gate.threshold == -0.5
    assert bundle.seen_mask.tolist() == [True] * 4 + [False] * 2
    assert bundle.trained.config.hidden == 16 and bundle.backbone.model_name == "test_resnet"
    info = json.loads((saved / CONFIG_NAME).read_text())
    assert info["bsegn"]["config"]["hidden"] == 16 and "generator_hidden" not in info["bsegn"]["config"]
    assert info["unseen_ranking"] == "gzsl" and info["gate"] == {"kind": "stacking", "threshold": -0.5, "temperature": 1.0}
    assert info["format_version"] == 3 and "gamma" not in info
    card = (saved / "README.md").read_text()
    assert "| final | 12.3 | 1.0 | 2.0 | 1.3 |" in card
    assert "gate `stacking`, threshold -0.5 (calibrated stacking, gamma 0.5)" in card
    assert "predict IMAGE_OR_FOLDER --model THIS_FOLDER" in card and "has no backbone" not in card  # reads images


def _same_part(before, after) -> bool:
    """Two values of one Bundle field: modules and the backbone by their tensors (and metadata), the rest by ==."""
    if hasattr(before, "model_name"):  # the backbone: its identity and weights
        return (before.model_name, before.weights_id, before.num_features) == \
            (after.model_name, after.weights_id, after.num_features) and \
            _same_part(before.model.state_dict(), after.model.state_dict())
    if hasattr(before, "scorer") or hasattr(after, "scorer"):  # the open-world rule: its numbers and fitted score
        return None not in (before, after) and before.metadata() == after.metadata() and \
            _same_part(before.scorer, after.scorer)
    if hasattr(before, "state_dict"):
        same_metadata = not hasattr(before, "metadata") or before.metadata() == after.metadata()
        return type(before) is type(after) and same_metadata and _same_part(before.state_dict(), after.state_dict())
    if isinstance(before, dict) and before and all(torch.is_tensor(v) for v in before.values()):
        return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    if torch.is_tensor(before):
        return torch.equal(before, after)
    return before == after


def test_every_bundle_field_survives_save_and_load(saved, tmp_path):
    """save_bundle takes a Bundle and load_bundle gives every field of it back (but where it was read from):
    a field the writer drops, or one added to Bundle and never written, fails here by name."""
    from bsegn.generative.open_world import OpenWorldRule, fit_open_world

    bundle = load_bundle(saved, with_backbone="tensors")
    bundle.gate.threshold, bundle.gate.temperature = 0.75, 2.5
    rule = OpenWorldRule(fit_open_world("knn", bundle.trained, bundle.gzsl, bundle.train_features, bundle.train_labels),
                         1.25, 0.5, "validation")  # chosen_on travels with the rule
    changed = dataclasses.replace(
        bundle, unseen_ranking="zsl", attribute_names=[f"b{j}" for j in range(5)], metrics={"T1": 1.5, "note": "x"},
        run_config={"run": {"seed": 3}}, benchmark="other", data_config={**bundle.data_config, "crop_pct": 0.9},
        train_features=bundle.train_features[:10].half().float(), train_labels=bundle.train_labels[:10],
        semantic_kind="attributes+text", text_encoder="minilm", text_encoder_id="org/model@1", text_pooling="words",
        attribute_dim=3, text_dim=2, class_texts=[f"text of {name}" for name in bundle.class_names],
        class_names=[name.upper() for name in bundle.class_names], open_world=rule)
    again = load_bundle(save_bundle(changed, tmp_path / "again"), with_backbone="tensors")
    kept_aside = {"path", "info"}  # where it was loaded from, not content
    differ = [f.name for f in dataclasses.fields(Bundle)
              if f.name not in kept_aside and not _same_part(getattr(changed, f.name), getattr(again, f.name))]
    assert not differ, f"fields not saved and loaded back as they were: {differ}"
    assert {f.name for f in dataclasses.fields(Bundle)} - kept_aside - {"backbone", "trained", "gzsl", "zsl", "gate"} \
        <= {name for name, value in vars(changed).items() if not _same_part(value, getattr(bundle, name))}  # all changed


def test_bundle_files_take_the_umask_modes(saved):
    mask = os.umask(0)
    os.umask(mask)
    for name in (CONFIG_NAME, MODEL_NAME, "README.md"):
        assert stat.S_IMODE((saved / name).stat().st_mode) == 0o666 & ~mask, name


def test_a_failed_save_leaves_the_old_bundle_whole(bundle_copy, monkeypatch):
    import bsegn.app.bundle.save as bundle_save

    bundle = load_bundle(bundle_copy)

    def half_written(bundle, folder):
        (folder / MODEL_NAME).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(bundle_save, "_write_bundle", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(bundle, bundle_copy)
    load_bundle(bundle_copy)  # the old one, intact
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]  # no temporary folder left


def test_a_flipped_byte_inside_the_tensor_data_is_refused_by_the_sha256(bundle_copy):
    model = bundle_copy / MODEL_NAME
    data = bytearray(model.read_bytes())
    header = int.from_bytes(data[:8], "little")  # safetensors: 8-byte header length, JSON header, tensor data
    position = 8 + header + (len(data) - 8 - header) // 2
    data[position] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="content does not match the sha256 in config.json"):
        load_bundle(bundle_copy)


def test_a_valid_json_edit_of_the_config_is_refused_by_its_integrity_hash(bundle_copy):
    path = bundle_copy / CONFIG_NAME
    values = json.loads(path.read_text())
    values["gate"]["threshold"] = 0.0
    path.write_text(json.dumps(values, indent=1))
    with pytest.raises(BundleError, match="config.json: content does not match its integrity hash"):
        load_bundle(bundle_copy)
    values["format_version"] = 99
    path.write_text(json.dumps(values))
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(bundle_copy)
    path.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_a_truncated_model_file_is_refused(bundle_copy):
    model = bundle_copy / MODEL_NAME
    model.write_bytes(model.read_bytes()[:-1000])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(bundle_copy)


def test_predict_refuses_a_damaged_bundle_in_one_line(bundle_copy, capsys):
    from bsegn.app.cli import predict_main

    model = bundle_copy / MODEL_NAME
    model.write_bytes(model.read_bytes()[:-10])
    assert predict_main([str(bundle_copy), "--model", str(bundle_copy)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "truncated" in err


def test_public_api_classifies_pil_images_and_tensors(saved):
    from bsegn.app.api import ClassScore, Prediction, load_model

    model = load_model(saved)
    prediction = model.predict(_image(), top_k=3)
    assert isinstance(prediction, Prediction)
    answer = list(prediction.top)
    assert len(answer) == 3 and all(isinstance(a, ClassScore) for a in answer)
    assert {a.name for a in answer} <= set(CLASSES)
    assert [a.probability for a in answer] == sorted((a.probability for a in answer), reverse=True)
    assert all(a.seen == (CLASSES.index(a.name) in SEEN) for a in answer)
    assert model.predict(_image(), top_k=len(CLASSES)).top[0].probability <= 1.0
    pixels = torch.from_numpy(np.array(_image())).permute(2, 0, 1)  # uint8 (3, H, W)
    assert model.predict(pixels, top_k=3) == prediction
    assert model.predict(pixels.float() / 255, top_k=3).top[0].name == answer[0].name
    batch = model.predict([_image(), _image((0, 0, 255))], top_k=2)
    assert len(batch) == 2 and list(batch[0].top) == answer[:2]
    assert all(not a.seen for a in load_model(saved, mode="zsl").predict(_image()).top)



def _scores(predictor, images):
    """The class scores predict ranks: (features (B, d), scores (B, K), class_ids (K,)) of its decision."""
    decision = predictor.decide(images)
    return decision.features, decision.scores, decision.class_ids

def test_predict_gzsl_uses_the_bundles_unseen_ranking(saved):
    from bsegn.app.inference import Predictor

    bundle = load_bundle(saved)
    images = torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    _, plain, class_ids = _scores(Predictor(bundle, threshold=0.0), images)
    bundle.unseen_ranking = "zsl"
    _, ranked, same_ids = _scores(Predictor(bundle, threshold=0.0), images)
    _, zsl, zsl_ids = _scores(Predictor(bundle, mode="zsl"), images)
    assert torch.equal(class_ids, same_ids)
    unseen = ~bundle.seen_mask[class_ids]
    # seen against unseen as before; among the unseen classes, the ZSL classifier's choice
    assert torch.equal(unseen[plain.argmax(1)], unseen[ranked.argmax(1)])
    assert torch.equal(class_ids[unseen][ranked[:, unseen].argmax(1)], zsl_ids[zsl.argmax(1)])


def test_the_unseen_ranking_is_stored_in_the_bundle(tmp_path):
    assert load_bundle(_tiny_bundle(tmp_path / "zsl", unseen_ranking="zsl")).unseen_ranking == "zsl"


def test_predict_without_model_uses_the_newest_run_then_bsegn_model(saved, tmp_path, monkeypatch, capsys):
    from bsegn.app.cli import predict_main

    image = tmp_path / "x.png"
    _image().save(image)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BSEGN_MODEL", raising=False)
    assert predict_main([str(image)]) == 2
    err = capsys.readouterr().err
    assert "no model given" in err and "train.py" in err and "Traceback" not in err

    for name, age in (("older", 100), ("newer", 10)):
        shutil.copytree(saved, tmp_path / "runs" / name / "bundle")
        moment = time.time() - age
        os.utime(tmp_path / "runs" / name / "bundle" / CONFIG_NAME, (moment, moment))
    assert predict_main([str(image), "--json"]) == 0
    out, err = capsys.readouterr()
    assert f"using the most recent model {Path('runs') / 'newer' / 'bundle'}" in err
    assert json.loads(out)["image"] == str(image)

    monkeypatch.setenv("BSEGN_MODEL", str(tmp_path / "runs" / "older"))
    assert predict_main([str(image)]) == 0
    assert "most recent" not in capsys.readouterr().err
    monkeypatch.setenv("BSEGN_MODEL", str(tmp_path / "nothing"))
    assert predict_main([str(image)]) == 2
    assert "no such model" in capsys.readouterr().err


def test_predictor_applies_the_bundles_stacking_threshold(saved):
    """Calibrated stacking: the bundle's gamma (threshold -gamma, chosen on validation) is subtracted from
    every seen class's score in GZSL mode, unless --threshold gives another."""
    from bsegn.app.inference import Predictor

    bundle = load_bundle(saved)
    bundle.gate.threshold = -3.0
    images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))
    _, plain, class_ids = _scores(Predictor(bundle, threshold=0.0), images)
    _, default, _ = _scores(Predictor(bundle), images)
    _, given, _ = _scores(Predictor(bundle, threshold=-1.0), images)
    seen = bundle.seen_mask[class_ids].float()
    assert torch.allclose(plain - default, 3.0 * seen.expand_as(plain))
    assert torch.allclose(plain - given, 1.0 * seen.expand_as(plain))
    assert Predictor(load_bundle(saved)).threshold == -0.5  # as saved by _tiny_bundle


def _one_image(tmp_path, size=(40, 40)) -> Path:
    path = tmp_path / f"x{size[0]}.png"
    _image().resize(size).save(path)
    return path


def test_predict_refuses_a_missing_device_in_one_line(saved, tmp_path, capsys, monkeypatch):
    from bsegn.app.cli import predict_main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    for device, words in (("cuda", "no CUDA device"), ("cuda:3", "no CUDA device"), ("tpu", "not a device name")):
        assert predict_main([str(_one_image(tmp_path)), "--model", str(saved), "--device", device]) == 2, device
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_predict_refuses_a_threshold_that_is_not_finite(saved, tmp_path, capsys, value):
    from bsegn.app.cli import predict_main

    assert predict_main([str(_one_image(tmp_path)), "--model", str(saved), f"--threshold={value}"]) == 2
    assert "--threshold) must be a finite number" in capsys.readouterr().err


def test_predict_max_pixels_is_an_option_and_the_message_names_it(saved, tmp_path, capsys):
    from bsegn.app.cli import predict_main

    image = _one_image(tmp_path, (50, 50))
    assert predict_main([str(image), "--model", str(saved), "--max-pixels", "2000"]) == 1
    err = capsys.readouterr().err
    assert "over the limit of 2000" in err and "--max-pixels" in err and "raise max_pixels" not in err
    assert predict_main([str(image), "--model", str(saved), "--max-pixels", "2500"]) == 0
    assert predict_main([str(image), "--model", str(saved), "--max-pixels", "0"]) == 2
    assert "--max-pixels) must be >= 1" in capsys.readouterr().err


def test_decode_threads_only_use_cores_the_network_leaves_free(monkeypatch):
    """predict overlaps decoding with the forward only on cores the forward does not use: on the CPU the
    cores beyond torch's threads, on a GPU every core but the one feeding it (capped)."""
    import bsegn.datasets.image_dataset as image_dataset
    from bsegn.app.image_batches import MAX_DECODE_THREADS, decode_threads

    monkeypatch.setattr(image_dataset, "available_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert decode_threads("cpu") == 0 and decode_threads("cuda") == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert decode_threads("cpu") == 1
    monkeypatch.setattr(image_dataset, "available_cores", lambda: 64)
    assert decode_threads("cpu") == decode_threads("cuda") == MAX_DECODE_THREADS


def test_predict_paths_is_the_same_decoded_inline_or_in_threads(saved, tmp_path, monkeypatch):
    """Decoding in the calling thread or in a pool, batched normalisation: the answers of the images
    transformed one by one, for every image, in input order, bad files reported either way."""
    from PIL import Image

    import bsegn.app.image_batches as image_batches
    from bsegn.app.inference import Predictor

    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(paths[-1])
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths.insert(3, tmp_path / "bad.jpg")
    predictor = Predictor(load_bundle(saved), batch_size=3)
    alone = []  # each image transformed on its own, in the batches predict_paths forms (the bad file dropped)
    for start in range(0, len(paths), 3):
        good = [p for p in paths[start:start + 3] if p.name != "bad.jpg"]
        alone += predictor.predict_tensors(torch.stack([predictor.transform(Image.open(p).convert("RGB"))
                                                        for p in good]))
    outcomes = []
    for threads in (0, 2):
        monkeypatch.setattr(image_batches, "decode_threads", lambda device_type, n=threads: n)
        errors = []
        results = predictor.predict_paths(paths, on_error=lambda path, message: errors.append(path.name))
        outcomes.append(results)
        assert errors == ["bad.jpg"]
        assert [r.image for r in results] == [str(p) for p in paths if p.name != "bad.jpg"]
        assert [dataclasses.replace(r, image=None) for r in results] == alone
    assert outcomes[0] == outcomes[1]
