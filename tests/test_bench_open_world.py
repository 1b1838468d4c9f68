"""bench/open_world.py: removed classes leave the model entirely, the validation's stand-in unknowns are
validation images only, and the bench reports every score on the removed photos."""
import json

import numpy as np
import pytest
import open_world  # bench/ (on sys.path: tests/conftest.py)
import zsl


def _demo_cache(tmp_path) -> list[str]:
    """Overrides that point the demo config at a feature cache whose class means are a linear map of the class
    attributes (so a generator can learn unseen classes from them), plus noise."""
    from bsegn.datasets.benchmarks import load_benchmark
    from bsegn.datasets.features import FeatureSet, save_feature_cache

    split = load_benchmark("demo", images_per_class=6, image_size=32).split
    rng = np.random.default_rng(1)
    means = np.asarray(split.semantics) @ rng.normal(size=(split.semantic_dim, 8))
    rows = np.abs(means[split.labels] + 0.2 * rng.normal(size=(len(split.labels), 8))).astype(np.float32)
    ids = [f"photo{i}" for i in range(len(rows))]
    cache = save_feature_cache(tmp_path / "features.safetensors", FeatureSet(rows, np.asarray(split.labels), ids),
                               {"source": "test"})
    return ["--data.demo_images_per_class", "6", "--data.demo_image_size", "32", "--data.features_file", str(cache)]


def test_removed_classes_leave_the_semantics_and_every_loc(tmp_path):
    _, features, split = zsl.load_features("demo", _demo_cache(tmp_path))
    removed = open_world.drawn_classes(split.seen_classes, split.unseen_classes, 4, seed=26)
    assert np.isin(removed, split.unseen_classes).sum() == 1  # round(4 * 10 / 40) unseen, the rest seen
    kept_features, kept, unknown = open_world.without_classes(features, split, removed)
    assert set(unknown.tolist()) == set(np.flatnonzero(np.isin(features.labels, removed)).tolist())
    assert kept.semantics.shape[0] == split.num_classes - 4 and kept.num_classes == split.num_classes - 4
    for name, loc in kept.locs.items():
        if loc is not None:
            assert not np.isin(loc, unknown).any(), name
            # every kept image keeps its class: the same name under the renumbered id
            assert [kept.class_names[c] for c in kept_features.labels[loc]] == \
                [split.class_names[c] for c in features.labels[loc]]
    assert (kept_features.labels[unknown] == -1).all() and (kept.labels[unknown] == -1).all()
    listed = np.concatenate([kept.seen_classes, kept.unseen_classes])
    assert sorted(listed.tolist()) == list(range(kept.num_classes))
    assert not set(kept.class_names) & {split.class_names[i] for i in removed}


def test_validation_unknowns_are_withheld_validation_classes_never_test_photos(tmp_path):
    from bsegn.datasets.protocol import validation_protocol

    _, features, split = zsl.load_features("demo", _demo_cache(tmp_path))
    validation = validation_protocol(split, seed=0)
    _, val_split, val_unknown, withheld = open_world.withheld_validation(features, validation, seed=0)
    assert set(withheld.tolist()) <= set(validation.unseen_classes.tolist())
    assert len(withheld) == round(len(validation.unseen_classes) / 3)
    assert set(val_unknown.tolist()) <= set(validation.loc("test_unseen").tolist())  # validation images only
    test = set(split.loc("test_seen").tolist()) | set(split.loc("test_unseen").tolist())
    used = set(val_unknown.tolist()).union(*(set(val_split.loc(n).tolist()) for n in ("trainval", "test_seen",
                                                                                       "test_unseen")))
    assert not used & test
    assert val_split.protocol == "validation"
    assert len(val_split.unseen_classes) == len(validation.unseen_classes) - len(withheld)


def test_bench_reports_every_score_on_the_removed_photos(tmp_path):
    out = tmp_path / "open_world.json"
    open_world.main(["--config", "demo", "--removed", "4", "--seeds", "1", "--scores", "knn,prototype",
                     "--json", str(out), *_demo_cache(tmp_path), "--generative.epochs", "1",
                     "--generative.hidden", "16", "--generative.embedder_hidden", "16", "--generative.syn_num", "5",
                     "--generative.classifier_epochs", "1"])
    written = json.loads(out.read_text())
    assert written["validation"]["chosen"] in ("knn", "prototype") and len(written["removed"]) == 4
    for kind in ("knn", "prototype"):
        row = written["test"][kind]["removed"]
        assert 0 <= row["auroc"] <= 1 and 0 <= row["caught"] <= 100
        assert row["H_on"] <= row["H_off"] + 1e-9  # answering "unknown" can only cost a known photo


def test_transfer_bench_measures_the_validation_model_at_the_nested_threshold(tmp_path):
    import open_world_transfer  # bench/

    out = tmp_path / "transfer.json"
    open_world_transfer.main(["--config", "demo", "--json", str(out), *_demo_cache(tmp_path), "--run.gate", "stacking",
                              "--generative.epochs", "1", "--generative.hidden", "16", "--generative.embedder_hidden",
                              "16", "--generative.syn_num", "5", "--generative.classifier_epochs", "1"])
    row = json.loads(out.read_text())["seeds"][0]
    carried = row["validation_at_nested_threshold"]
    assert row["nested"]["withheld_classes"] and row["validation"]["withheld_classes"]
    assert not set(row["nested"]["withheld_classes"]) & set(row["validation"]["withheld_classes"])  # other steps
    if row["nested"]["threshold"] is None:  # nothing carried: the reject option is off
        assert carried["caught"] == 0.0 and carried["H_drop"] == 0.0
    assert 0 <= carried["auroc"] <= 1 and carried["H_on"] <= carried["H_off"] + 1e-9


def test_transfer_bench_stops_with_a_message_when_nothing_can_be_measured(monkeypatch):
    import open_world_transfer  # bench/

    import bsegn.generative.open_world_choice as choice

    # score_withheld answers None when the withheld val classes have no photos (or nothing else has)
    monkeypatch.setattr(choice, "score_withheld", lambda *args, **kwargs: None)
    monkeypatch.setattr("bsegn.generative.experiment.split_tensors", lambda features, split: {})
    split = type("Split", (), {"unseen_classes": np.arange(6)})()
    with pytest.raises(SystemExit, match="no validation photos"):
        open_world_transfer.measured_at(None, None, split, "stacking", 1.0, 0, "gzsl")
