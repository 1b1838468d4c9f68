"""The gate registry (bsegn.generative.gate_registry): a gate kind declared in one place reaches fit_gates,
run.gate and its help, the bundle (save, checks, load), predict and add-class with no library code naming
it. The proof is a toy gate defined and registered here, in the test, and taken through all of them."""
import dataclasses
from pathlib import Path

import pytest
import torch
from test_app_bundle import CLASSES, IMAGE_SIZE, shared_tiny_bundle
from test_app_bundle_gate import _rewrite_tensors

from bsegn.app.bundle import load_bundle, save_bundle
from bsegn.core.errors import BundleError, ConfigError
from bsegn.generative.gates import GATE_REGISTRY, DomainGate, fit_gate, gate_inputs, register_gate


class ToyGate(DomainGate):
    """Unseen when the mFIM feature is far (Euclidean) from the mean of the real seen ones: one buffer."""

    kind = "toy"
    summary = "the mFIM feature is far from the seen training features' mean (a test's gate)"
    reads_integrated = True
    refit_when_classes_change = True
    fits = 0  # how often fit_on ran

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("centre", torch.zeros(dim))

    @classmethod
    def fit_on(cls, fitting):
        cls.fits += 1
        gate = cls(fitting.integrated.shape[1])
        gate.centre = fitting.integrated.mean(0)
        return gate

    @classmethod
    def from_state(cls, state):
        return cls(state["centre"].shape[0])

    @property
    def feature_dim(self):
        return self.centre.shape[0]

    def domain_score(self, inputs):
        return (inputs.integrated - self.centre).norm(dim=1)


@pytest.fixture
def toy():
    register_gate(ToyGate)
    try:
        yield ToyGate
    finally:
        GATE_REGISTRY.pop("toy")  # the session's other tests measure every registered gate


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return shared_tiny_bundle(tmp_path_factory)


def _toy_bundle(saved: Path, folder: Path) -> Path:
    """The tiny bundle with a fitted toy gate at the median score of some images (both decisions occur)."""
    bundle = load_bundle(saved)
    gate = fit_gate("toy", bundle.trained, bundle.train_features, bundle.train_labels, range(len(CLASSES)))
    gate.threshold, gate.temperature = float(gate.domain_score(_inputs(bundle, _images())).median()), 0.5
    return save_bundle(dataclasses.replace(bundle, gate=gate), folder)


def _images() -> torch.Tensor:
    return torch.randn(12, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def _inputs(bundle, images):
    with torch.no_grad():
        features = bundle.backbone(images).float()
    return gate_inputs(bundle.trained, bundle.gzsl, bundle.zsl, features, kinds=list(GATE_REGISTRY))


def test_a_gate_registered_outside_the_library_goes_from_fit_to_bundle_to_predict(toy, saved, tmp_path):
    from bsegn.app.inference import Predictor

    folder = _toy_bundle(saved, tmp_path / "toy")
    bundle = load_bundle(folder)
    assert type(bundle.gate) is ToyGate and bundle.gate.temperature == 0.5
    integrated = bundle.trained.integrate(bundle.train_features)
    assert torch.allclose(bundle.gate.centre, integrated.mean(0))  # its own state, back from safetensors
    inputs = _inputs(bundle, _images())
    answers = Predictor(bundle).predict_tensors(_images(), top_k=3)
    assert [a.unseen for a in answers] == bundle.gate.unseen(inputs).tolist()
    assert 0 < sum(a.unseen for a in answers) < len(answers)
    assert [a.p_unseen for a in answers] == pytest.approx(bundle.gate.p_unseen(inputs).tolist())


def test_the_bundle_checks_a_registered_gate_by_what_it_declares(toy, saved, tmp_path):
    """Its tensors are its own (from_state + a strict load) and it reads the model's mFIM width."""
    folder = _toy_bundle(saved, tmp_path / "toy")

    def narrow(tensors):
        tensors["gate.centre"] = tensors["gate.centre"][:-1].contiguous()

    _rewrite_tensors(folder, narrow)
    with pytest.raises(BundleError, match="toy gate's tensors .* do not fit it"):
        load_bundle(folder)
    folder = _toy_bundle(saved, tmp_path / "extra")
    _rewrite_tensors(folder, lambda tensors: tensors.update({"gate.other": torch.ones(2)}))
    with pytest.raises(BundleError, match="toy gate's tensors .* do not fit it"):
        load_bundle(folder)


def test_add_class_refits_a_registered_gate_as_it_declares(toy, saved, tmp_path, monkeypatch):
    from bsegn.app.add_class import add_classes

    source = _toy_bundle(saved, tmp_path / "toy")
    before = ToyGate.fits
    out = load_bundle(add_classes(source, [("new", [0.1, 0.2, 0.3, 0.4, 0.5])], tmp_path / "added"))
    assert ToyGate.fits == before + 1 and type(out.gate) is ToyGate
    assert (out.gate.threshold, out.gate.temperature) == (load_bundle(source).gate.threshold, 0.5)  # kept
    monkeypatch.setattr(ToyGate, "refit_when_classes_change", False)
    add_classes(source, [("newer", [0.5, 0.4, 0.3, 0.2, 0.1])], tmp_path / "added-again")
    assert ToyGate.fits == before + 1  # a gate that reads the seen classes only stays as it is


def test_run_gate_and_its_help_come_from_the_registry(toy):
    from bsegn.app.config import config_help, load_run_config

    assert load_run_config(None, ["--run.gate", "toy"]).run.gate == "toy"
    text = config_help()
    table = text[text.index("Gates (run.gate"):].splitlines()[1:]
    assert [line.split()[0] for line in table] == list(GATE_REGISTRY)  # every gate, its summary beside it
    assert table[-1].split(None, 1) == ["toy", ToyGate.summary]
    GATE_REGISTRY.pop("toy")
    with pytest.raises(ConfigError, match="run.gate 'toy' is not a gate"):
        load_run_config(None, ["--run.gate", "toy"])
    register_gate(ToyGate)  # for the fixture's clean-up


def test_a_kind_is_registered_once():
    taken = type("AnotherGaussian", (DomainGate,), {"kind": "gaussian"})
    with pytest.raises(ValueError, match="'gaussian' .* registered already"):
        register_gate(taken)
    with pytest.raises(ValueError, match="not a name"):
        register_gate(type("Unnamed", (DomainGate,), {"kind": "two words"}))
    assert GATE_REGISTRY["gaussian"].__name__ == "GaussianGate"


def test_every_built_in_gate_restores_itself_from_its_own_state(saved):
    """gate_from_state (from_state's sizes, then a strict load) gives every registered gate back with the same
    tensors and scores; each declares a summary, and a feature_dim exactly when it reads the mFIM features."""
    from bsegn.generative.gates import fit_gates, gate_from_state

    bundle = load_bundle(saved)
    gates = fit_gates(list(GATE_REGISTRY), bundle.trained, bundle.train_features, bundle.train_labels,
                      range(len(CLASSES)), classifiers=(bundle.gzsl, bundle.zsl))
    inputs = _inputs(bundle, _images())
    for kind, gate in gates.items():
        gate.threshold, gate.temperature = 0.25, 2.0
        again = gate_from_state(gate.metadata(), {k: v.clone() for k, v in gate.state_dict().items()})
        before, after = gate.state_dict(), again.state_dict()
        assert type(again) is type(gate) and again.metadata() == gate.metadata(), kind
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), kind
        assert torch.equal(again.domain_score(inputs), gate.domain_score(inputs)), kind
        assert gate.summary and (gate.feature_dim is not None) == gate.reads_integrated, kind
        if gate.reads_integrated:
            assert gate.feature_dim == bundle.trained.integrate(bundle.train_features[:1]).shape[1], kind


def test_a_registered_gate_that_needs_the_decoder_is_refused_without_one(toy, monkeypatch):
    from bsegn.app.config import load_run_config

    monkeypatch.setattr(ToyGate, "requires_decoder", True)
    with pytest.raises(ConfigError, match="run.gate toy reads the semantic decoder"):
        load_run_config(None, ["--run.gate", "toy", "--generative.lambda_cyc", "0"])
