"""`bsegn add-class` / `remove-class` on the tiny bundle: the model read is never overwritten unless
--in-place (and then atomically), CSV input cannot lose a class to header detection, values are
checked as the model's float32, names are unique ignoring case. Fast."""
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_app_bundle import CLASSES, _tiny_bundle, shared_tiny_bundle

from bsegn.app.add_class import add_classes, parse_attributes
from bsegn.app.bundle import CONFIG_NAME, MODEL_NAME, load_bundle
from bsegn.app.class_inputs import normalised_like_bundle
from bsegn.core.errors import BundleError
from bsegn.core.files import file_sha256

DIM = 5
VALUES = "0.1,0.2,0.3,0.4,0.5"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return shared_tiny_bundle(tmp_path_factory)


@pytest.fixture
def run_folder(saved, tmp_path) -> Path:
    """A run folder holding the bundle as bundle/ (and a file that must survive)."""
    run = tmp_path / "run"
    shutil.copytree(saved, run / "bundle")
    (run / "metrics.json").write_text("{}")
    return run


def _digests(folder: Path) -> tuple[str, str]:
    return file_sha256(folder / CONFIG_NAME), file_sha256(folder / MODEL_NAME)


def _bsegn(capsys, *args) -> tuple[int, str]:
    from bsegn.app.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("model, out", [("run", "run"), ("run", "run/bundle"), ("run/bundle", "run/bundle"),
                                        ("run/bundle", "run"), ("run/bundle", "run/bundle/../bundle")])
def test_out_naming_the_model_is_refused_and_the_model_kept(run_folder, capsys, model, out):
    base = run_folder.parent
    before = _digests(run_folder / "bundle")
    code, err = _bsegn(capsys, "add-class", "--model", str(base / model), "--name", "new", "--attributes", VALUES,
                       "--out", str(base / out))
    assert code == 2 and "Traceback" not in err and "model being read" in err, err
    assert _digests(run_folder / "bundle") == before and (run_folder / "metrics.json").is_file()


def test_in_place_replaces_the_bundle_whole(run_folder, capsys):
    code, err = _bsegn(capsys, "add-class", "--model", str(run_folder), "--name", "new", "--attributes", VALUES,
                       "--in-place")
    assert code == 0, err
    assert load_bundle(run_folder).class_names == CLASSES + ["new"]
    assert (run_folder / "metrics.json").is_file()
    assert sorted(p.name for p in run_folder.iterdir()) == ["bundle", "metrics.json"]  # no temporary left
    code, err = _bsegn(capsys, "remove-class", "--model", str(run_folder / "bundle"), "--name", "NEW",
                       "--out", str(run_folder / "bundle"), "--in-place")  # names compared ignoring case
    assert code == 0, err
    assert load_bundle(run_folder).class_names == CLASSES


def test_a_failed_in_place_write_leaves_the_model_whole(run_folder, monkeypatch):
    import bsegn.app.bundle.save as bundle_save

    before = _digests(run_folder / "bundle")

    def half_written(bundle, folder):
        (folder / MODEL_NAME).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(bundle_save, "_write_bundle", half_written)
    with pytest.raises(OSError, match="disk full"):
        add_classes(run_folder, [("new", [0.1] * DIM)], None, in_place=True)
    assert _digests(run_folder / "bundle") == before
    assert sorted(p.name for p in run_folder.iterdir()) == ["bundle", "metrics.json"]


def test_out_must_be_given_or_in_place(run_folder, capsys):
    code, err = _bsegn(capsys, "add-class", "--model", str(run_folder), "--name", "x", "--attributes", VALUES)
    assert code == 2 and "give --out FOLDER" in err


def test_an_out_folder_that_is_not_a_bundle_is_not_replaced(run_folder, saved, tmp_path, capsys):
    other = tmp_path / "documents"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    code, err = _bsegn(capsys, "add-class", "--model", str(saved), "--name", "x", "--attributes", VALUES,
                       "--out", str(other))
    assert code == 2 and "not an empty folder" in err and (other / "thesis.tex").read_text() == "precious"
    code, err = _bsegn(capsys, "add-class", "--model", str(run_folder), "--name", "x", "--attributes", VALUES,
                       "--out", str(run_folder / "bundle" / "inner"))
    assert code == 2 and "inside the model" in err
    (tmp_path / "empty").mkdir()  # an empty folder may be filled
    code, err = _bsegn(capsys, "add-class", "--model", str(saved), "--name", "x", "--attributes", VALUES,
                       "--out", str(tmp_path / "empty"))
    assert code == 0, err
    assert load_bundle(tmp_path / "empty").class_names[-1] == "x"


def test_an_out_naming_another_bundle_is_refused_and_that_bundle_kept(run_folder, saved, tmp_path, capsys):
    """Issue 25: --out naming another existing bundle replaced it silently (its classes gone, exit 0)."""
    before = _digests(run_folder / "bundle")
    for out in (run_folder / "bundle", run_folder):
        code, err = _bsegn(capsys, "add-class", "--model", str(saved), "--name", "x", "--attributes", VALUES,
                           "--out", str(out))
        assert code == 2 and "Traceback" not in err and "already holds a bundle" in err and "--in-place" in err, err
    assert _digests(run_folder / "bundle") == before
    (run_folder / "bundle").rename(run_folder / "bundle.old")  # the copy a killed write leaves is a bundle too
    code, err = _bsegn(capsys, "add-class", "--model", str(saved), "--name", "x", "--attributes", VALUES,
                       "--out", str(run_folder / "bundle"))
    assert code == 2 and "already holds a bundle" in err


def _csv(tmp_path, text) -> str:
    path = tmp_path / "new.csv"
    path.write_text(text)
    return str(path)


def test_a_csv_without_header_loses_no_row(tmp_path):
    rows = parse_attributes(_csv(tmp_path, f"a,{VALUES}\nb,{VALUES}\n"), DIM)
    assert [name for name, _ in rows] == ["a", "b"]
    with_header = parse_attributes(_csv(tmp_path, f"name,{','.join(f'att{j}' for j in range(DIM))}\na,{VALUES}\n"), DIM)
    assert [name for name, _ in with_header] == ["a"]
    single = parse_attributes(_csv(tmp_path, f"only,{VALUES}"), DIM)
    assert single == [("only", pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5]))]
    with pytest.raises(BundleError, match="new.csv:1: attribute values for 'a' must be numbers"):
        parse_attributes(_csv(tmp_path, f"a,0.1,0.2,O.3,0.4,0.5\nb,{VALUES}\n"), DIM)  # a typo, not a header


@pytest.mark.parametrize("text", ["", "\n\n", "name,a0,a1,a2,a3,a4\n"])
def test_a_csv_with_no_class_row_is_refused(tmp_path, text):
    with pytest.raises(BundleError, match="holds no class rows"):
        parse_attributes(_csv(tmp_path, text), DIM)


def test_values_are_checked_as_float32(tmp_path):
    with pytest.raises(BundleError, match="too large for float32"):
        parse_attributes("1e39,0,0,0,0", DIM, "huge")
    with pytest.raises(BundleError, match="NaN or infinity"):
        parse_attributes(_csv(tmp_path, "a,nan,0,0,0,0\n"), DIM)
    with pytest.raises(BundleError, match="must be numbers"):
        parse_attributes("1,2,three,4,5", DIM, "x")
    assert parse_attributes("1e30,0,0,0,0", DIM, "big")[0][1][0] == pytest.approx(1e30)


def test_normalisation_of_huge_or_tiny_vectors_does_not_overflow():
    """xlsa17-style (unit-norm) bundles: 1e30 used to overflow the float32 norm to inf, giving an
    all-zero vector past the all-zero check; 1e-30 underflowed to a zero norm."""
    unit = torch.nn.functional.normalize(torch.rand(4, DIM), dim=1)
    bundle = SimpleNamespace(trained=SimpleNamespace(semantics=unit))
    for scale in (1e30, 1e-30):
        out = normalised_like_bundle(bundle, torch.full((DIM,), scale), "x")
        assert torch.isfinite(out).all() and out.norm().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(BundleError, match="all-zero"):
        normalised_like_bundle(bundle, torch.zeros(DIM), "zero")


def test_a_refit_that_is_not_finite_writes_nothing(saved, tmp_path, monkeypatch):
    import bsegn.generative.classifier as classifier_module

    original = classifier_module.fit_final_classifier

    def diverged(*args, **kwargs):
        fitted = original(*args, **kwargs)
        with torch.no_grad():
            next(fitted.parameters()).fill_(float("nan"))
        return fitted

    monkeypatch.setattr(classifier_module, "fit_final_classifier", diverged)
    with pytest.raises(BundleError, match="refitted classifier is not finite"):
        add_classes(saved, [("x", [1e30] * DIM)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_names_are_unique_ignoring_case(saved, tmp_path):
    with pytest.raises(BundleError, match="given twice"):
        parse_attributes(_csv(tmp_path, f"blue_dotted_cross,{VALUES}\nBLUE_DOTTED_CROSS,{VALUES}\n"), DIM)
    with pytest.raises(BundleError, match="already in the model \\(as 'class0'"):
        add_classes(saved, [("CLASS0", [0.1] * DIM)], tmp_path / "out")
    with pytest.raises(BundleError, match="class name is empty"):
        parse_attributes(_csv(tmp_path, f" ,{VALUES}\n"), DIM)


def test_add_class_refits_a_learned_gate_with_the_new_class_keeping_its_threshold(tmp_path):
    """The learned gate is trained on synthetic unseen features: after add-class it is the gate fitted on
    the new class list (the new class among the unseen ones), at the bundle's threshold."""
    from test_app_bundle_checks import _set, rewrite_config

    from bsegn.generative.gates import fit_gate

    source = _tiny_bundle(tmp_path / "learned", gate="learned", threshold=0.25)
    rewrite_config(source, _set("gate/temperature", 2.5))  # p_unseen's temperature, as validation fitted it
    old = load_bundle(source).gate.state_dict()
    new = load_bundle(add_classes(source, [("new", [0.9, 0.1, 0.9, 0.1, 0.9])], tmp_path / "out"))
    assert new.gate.kind == "learned" and new.gate.threshold == 0.25 and new.gate.temperature == 2.5
    expected = fit_gate("learned", new.trained, new.train_features, new.train_labels, range(len(CLASSES) + 1))
    assert all(torch.equal(new.gate.state_dict()[k], expected.state_dict()[k]) for k in expected.state_dict())
    assert not all(torch.equal(new.gate.state_dict()[k], old[k]) for k in old)


def test_a_gate_of_seen_classes_only_is_kept_as_it_is(tmp_path):
    source = _tiny_bundle(tmp_path / "gaussian", gate="gaussian", threshold=3.0)
    old = load_bundle(source).gate
    new = load_bundle(add_classes(source, [("new", [0.1] * DIM)], tmp_path / "out")).gate
    assert new.kind == "gaussian" and new.threshold == 3.0
    assert all(torch.equal(new.state_dict()[k], v) for k, v in old.state_dict().items())


def test_add_class_reports_reachability_and_warns_of_an_unreachable_class(tmp_path, bsegn_log):
    """Reachable: the gate calls the new class's synthetic features unseen (no warning). Built unreachable
    (a threshold no score reaches): a one-line warning naming the class."""
    import logging

    from bsegn.app.add_class import reachability

    bsegn_log.set_level(logging.INFO, logger="bsegn")
    reachable = load_bundle(add_classes(_tiny_bundle(tmp_path / "a", gate="learned", threshold=0.0),
                                        [("zebra", [0.9, 0.1, 0.9, 0.1, 0.9])], tmp_path / "a-out"))
    shares = reachability(reachable.trained, reachable.gzsl, reachable.zsl, reachable.gate, [6], ["zebra"])
    assert shares["zebra"] > 0.5
    assert "reachability" in bsegn_log.text and "zebra 100%" in bsegn_log.text
    assert not [r for r in bsegn_log.records if r.levelname == "WARNING" and r.name == "bsegn.app.add_class"]
    add_classes(_tiny_bundle(tmp_path / "b", gate="learned", threshold=1e9), [("okapi", [0.9, 0.1, 0.9, 0.1, 0.9])],
                tmp_path / "b-out")
    warnings = [r.getMessage() for r in bsegn_log.records
                if r.levelname == "WARNING" and r.name == "bsegn.app.add_class"]
    assert len(warnings) == 1 and "'okapi' is hard to reach" in warnings[0] and "0%" in warnings[0]
    assert "\n" not in warnings[0]


def test_add_class_writes_the_backbone_back_as_it_read_it_without_building_it(saved, tmp_path, monkeypatch):
    """add-class keeps the backbone's tensors as stored (no timm model is built for a refit of the
    classifiers), and the bundle it writes still loads a working backbone with the same weights."""
    from safetensors.torch import load_file

    import bsegn.app.bundle.load as bundle_load

    def no_build(*_, **__):
        raise AssertionError("add-class built the backbone")

    with monkeypatch.context() as patch:
        patch.setattr(bundle_load, "build_backbone", no_build)
        out = add_classes(saved, [("new", [0.1, 0.2, 0.3, 0.4, 0.5])], tmp_path / "out")
    before, after = load_file(str(saved / MODEL_NAME)), load_file(str(Path(out) / MODEL_NAME))
    backbone = sorted(k for k in before if k.startswith("backbone."))
    assert backbone and backbone == sorted(k for k in after if k.startswith("backbone."))
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    reloaded = load_bundle(out)
    assert reloaded.backbone.model_name == load_bundle(saved).backbone.model_name
    assert reloaded.class_names == CLASSES + ["new"]


def test_add_class_never_imports_torch_dynamo(tmp_path):
    """add-class's speed rests on never importing torch._dynamo (1.6-2.4 s here, more than its refits):
    torch.optim's optimizers import it on first use, so do timm and torchvision; the refits use
    generative.adam and the backbone is written back unbuilt. A fresh process refits a combined gate (the
    final classifiers and the learned network) and must end without the module loaded."""
    import subprocess
    import sys

    source = _tiny_bundle(tmp_path / "combined", gate="combined", threshold=0.0)
    script = ("import sys\nfrom bsegn.app.add_class import add_classes\n"
              f"add_classes({str(source)!r}, [('new', [0.9, 0.1, 0.9, 0.1, 0.9])], {str(tmp_path / 'out')!r})\n"
              "print('dynamo loaded' if 'torch._dynamo' in sys.modules else 'dynamo absent')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "dynamo absent"
    assert load_bundle(tmp_path / "out").class_names[-1] == "new"


def test_add_class_refits_a_combined_gate_but_keeps_its_seen_only_parts(tmp_path, monkeypatch):
    """Adding an unseen class changes what the combined gate's learned network and its standardised scores
    see, not the real seen features: no covariance is refitted (the Gaussian part and its log distance's
    cross-fitted centre and scale are the bundle's), and the result is the full fit on the new class list."""
    from bsegn.generative import gates
    from bsegn.generative.gates import fit_gate

    source = _tiny_bundle(tmp_path / "combined", gate="combined", threshold=0.5)
    old = load_bundle(source).gate

    def no_covariance_fit(*args, **kwargs):
        raise AssertionError("add-class refitted the combined gate's Gaussian part")

    with monkeypatch.context() as patch:
        patch.setattr(gates.GaussianGate, "fit", no_covariance_fit)
        new = load_bundle(add_classes(source, [("new", [0.9, 0.1, 0.9, 0.1, 0.9])], tmp_path / "out"))
    assert new.gate.kind == "combined" and new.gate.threshold == 0.5
    for key, value in old.gaussian.state_dict().items():  # the bundle's, to the bit
        assert torch.equal(new.gate.gaussian.state_dict()[key], value), key
    assert new.gate.centre[1] == old.centre[1] and new.gate.scale[1] == old.scale[1]
    # the rest is the full fit on the new class list (from the bundle's stored, rounded training features)
    expected = fit_gate("combined", new.trained, new.train_features, new.train_labels, range(len(CLASSES) + 1),
                        classifiers=(new.gzsl, new.zsl), unseen_ranking=new.unseen_ranking)
    for key, value in expected.learned.state_dict().items():
        assert torch.equal(new.gate.learned.state_dict()[key], value), key
    others = [0, 2, 3]
    torch.testing.assert_close(new.gate.centre[others], expected.centre[others], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new.gate.scale[others], expected.scale[others], rtol=1e-5, atol=1e-6)
    assert not torch.equal(new.gate.learned.network[0].weight, old.learned.network[0].weight)
