"""The open-world rule chosen on a run's own validation protocol (generative/open_world_choice.py) and carried to
the run's bundle (app/run_outputs.py): val classes withheld from the class list play unknown, test images are
never read, the threshold keeps within the H budget, and every run without a validation choice says why.
A tiny BSeGN on the demo's classes with generated features (a linear map of the attributes plus noise)."""
import numpy as np
import pytest
import torch

from bsegn.core.errors import ConfigError
from bsegn.generative import open_world_choice
from bsegn.generative.open_world_choice import choose_open_world, classifiers_without, withheld_classes

TINY = {"epochs": 2, "hidden": 16, "embedder_hidden": 16, "syn_num": 20, "classifier_epochs": 3, "batch_size": 32}


@pytest.fixture(scope="module")
def tiny_validation_run():
    """(config, validation ProtocolOutcome, final split, features) where every FINAL test image's feature row is
    NaN: a choice that read one would come out NaN."""
    from bsegn.app.config import load_run_config
    from bsegn.app.pipeline import ProtocolOutcome
    from bsegn.datasets.benchmarks import load_benchmark
    from bsegn.datasets.features import FeatureSet
    from bsegn.datasets.protocol import validation_protocol
    from bsegn.generative.experiment import run_bsegn

    config = load_run_config(None, ["--run.gate", "combined", *[f"--generative.{k}={v}" for k, v in TINY.items()]])
    split = load_benchmark("demo", images_per_class=8, image_size=32).split
    rng = np.random.default_rng(1)
    means = np.asarray(split.semantics) @ rng.normal(size=(split.semantic_dim, 12))
    rows = np.abs(means[split.labels] + 0.2 * rng.normal(size=(len(split.labels), 12))).astype(np.float32)
    rows[np.concatenate([split.loc("test_seen"), split.loc("test_unseen")])] = np.nan
    features = FeatureSet(rows, np.asarray(split.labels), [f"photo{i}" for i in range(len(rows))])
    validation = validation_protocol(split, seed=0)
    # val classes with different photo counts (3 to 7), so that the count of unknown photos tells which classes
    # played unknown
    unseen_photos = validation.locs["test_unseen"]
    validation.locs["test_unseen"] = np.concatenate([unseen_photos[split.labels[unseen_photos] == c][:3 + c % 5]
                                                     for c in validation.unseen_classes])
    run = run_bsegn(features, validation, config.generative, seed=0, gates={"combined": None}, show_progress=False)
    return config, ProtocolOutcome(run, None, features, validation, None), split, features


def _parse(overrides):
    from bsegn.app.config import load_run_config

    return load_run_config(None, overrides)


def test_withheld_classes_are_a_seeded_third_of_the_val_classes_and_one_always_stays():
    val = np.arange(10, 16)
    drawn = withheld_classes(val, seed=3)
    assert len(drawn) == 2 and set(drawn) <= set(val) and list(drawn) == sorted(drawn)
    assert np.array_equal(drawn, withheld_classes(val, seed=3))  # seeded
    assert len(withheld_classes([4, 5], seed=0)) == 1  # round(2 / 3): one withheld, one kept
    assert len(withheld_classes([4], seed=0)) == 0  # withholding it would leave the model no unseen class


def test_a_share_that_would_withhold_every_val_class_withholds_none(monkeypatch):
    monkeypatch.setattr(open_world_choice, "WITHHELD_FRACTION", 1.0)
    assert len(withheld_classes([4, 5], seed=0)) == 0  # the model must keep an unseen class


def test_the_choice_withholds_val_classes_reads_no_test_image_and_keeps_within_the_budget(tiny_validation_run):
    _, outcome, split, _ = tiny_validation_run
    choice = choose_open_world(outcome.run, outcome.features, outcome.split, "combined", seed=0)
    val = outcome.split.unseen_classes
    assert set(choice["withheld_classes"]) <= set(val.tolist())
    assert choice["withheld_classes"] == withheld_classes(val, seed=open_world_choice.WITHHELD_SEED).tolist()
    assert len(choice["withheld_classes"]) == round(len(val) / 3)
    labels = outcome.features.labels
    val_photos = outcome.split.loc("test_unseen")
    assert choice["unknown_photos"] == int(np.isin(labels[val_photos], choice["withheld_classes"]).sum())
    assert choice["known_photos"] == len(outcome.split.loc("test_seen")) + len(val_photos) - choice["unknown_photos"]
    numbers = [choice[k] for k in ("auroc", "H_off", "H_on")]
    assert all(np.isfinite(numbers)), choice  # a final test image (NaN) read anywhere would show here
    if choice["threshold"] is not None:
        assert choice["chosen_on"] == "validation" and choice["temperature"] > 0 and choice["reason"] is None
        assert choice["H_drop"] <= open_world_choice.H_DROP_BUDGET and choice["caught"] > 0
    else:
        assert "more than" in choice["reason"]


def test_the_choice_is_refused_on_a_final_split(tiny_validation_run):
    _, outcome, split, features = tiny_validation_run
    with pytest.raises(ConfigError, match="test images"):
        choose_open_world(outcome.run, features, split, "combined")


def test_the_withheld_model_drops_the_classes_and_keeps_the_gate_threshold(tiny_validation_run):
    from bsegn.generative.experiment import split_tensors

    _, outcome, _, _ = tiny_validation_run
    data = split_tensors(outcome.features, outcome.split)
    withheld = torch.as_tensor(withheld_classes(outcome.split.unseen_classes, seed=26))
    gzsl, zsl, gate = classifiers_without(outcome.run, data, withheld, "combined")
    assert not torch.isin(gzsl.class_ids.cpu(), withheld).any() and not torch.isin(zsl.class_ids.cpu(), withheld).any()
    assert len(gzsl.class_ids) == len(data["all_classes"]) - len(withheld)
    assert gate is not outcome.run.gates["combined"]  # combined reads every class: refitted, as remove-class does
    assert (gate.threshold, gate.temperature) == (outcome.run.gates["combined"].threshold,
                                                  outcome.run.gates["combined"].temperature)


def test_runs_that_cannot_choose_say_why(tiny_validation_run, monkeypatch):
    from bsegn.app.run_outputs import open_world_choice as run_choice

    config, outcome, _, _ = tiny_validation_run
    assert "run.threshold was given" in run_choice(config, None)["reason"]
    monkeypatch.setattr(open_world_choice, "WITHHELD_FRACTION", 0.01)
    few = choose_open_world(outcome.run, outcome.features, outcome.split, "combined")
    assert few["threshold"] is None and "too few to withhold" in few["reason"]
    monkeypatch.undo()
    decoder = outcome.run.trained.parts.pop("decoder")
    try:
        no_decoder = choose_open_world(outcome.run, outcome.features, outcome.split, "combined", score="semantic")
    finally:
        outcome.run.trained.parts["decoder"] = decoder
    assert no_decoder["threshold"] is None and "lambda_cyc" in no_decoder["reason"]


def test_the_final_bundle_carries_the_threshold_chosen_on_validation(tiny_validation_run):
    from bsegn.app.run_outputs import final_open_world, open_world_choice

    config, outcome, _, _ = tiny_validation_run
    choice = {"chosen_on": "validation", "score": "knn", "threshold": 0.25, "temperature": 0.75, "reason": None}
    final = _parse(["--run.gate", "combined"])
    rule, record = final_open_world(final, outcome, choice)
    assert (rule.threshold, rule.temperature, rule.chosen_on, rule.scorer.kind) == (0.25, 0.75, "validation", "knn")
    assert rule.validated and record["threshold"] == 0.25
    test = record["test"]  # measured on the outcome's test locs once, after the choice
    assert 0 <= test["known_rejected"] <= 100 and test["H_on"] <= test["H_off"] + 1e-9
    none, closed = final_open_world(final, outcome, {**choice, "threshold": None, "reason": "why"})
    assert none is None and closed["reason"] == "why" and "test" not in closed
    chosen = open_world_choice(config, outcome)  # the run's own choice reaches the same record keys
    assert {"threshold", "temperature", "reason", "chosen_on", "caught", "H_off", "H_on"} <= set(chosen)
