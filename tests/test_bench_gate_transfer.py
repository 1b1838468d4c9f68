"""bench/gate_transfer.py: its nested split never reaches past the validation protocol, and it reports every
gate's H with its thresholds carried as a value and as a quantile."""
import json
import sys

import numpy as np
import pytest


@pytest.fixture(scope="module")
def gate_transfer():
    import gate_transfer  # bench/ is on the path (conftest)

    return gate_transfer


def _demo_features(tmp_path):
    from bsegn.datasets.benchmarks import load_benchmark
    from bsegn.datasets.features import FeatureSet, save_feature_cache

    split = load_benchmark("demo", images_per_class=6, image_size=32).split
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(split.num_classes, 8))
    features = (centres[split.labels] + 0.3 * rng.normal(size=(len(split.labels), 8))).astype(np.float32)
    cache = save_feature_cache(tmp_path / "features.safetensors", FeatureSet(
        np.abs(features), np.asarray(split.labels), [f"image{i}" for i in range(len(split.labels))]),
        {"source": "test"})
    return ["--data.demo_images_per_class", "6", "--data.demo_image_size", "32", "--data.features_file", str(cache)]


def test_nested_split_stays_inside_the_validation_protocol(gate_transfer, tmp_path):
    from bsegn.datasets.protocol import validation_protocol

    zsl = sys.modules["zsl"]
    _, _, split = zsl.load_features("demo", _demo_features(tmp_path))
    validation = validation_protocol(split, seed=0)
    nested = validation_protocol(gate_transfer.nested_split(validation, seed=0), seed=0)
    allowed = set(np.concatenate([validation.loc("trainval"), validation.loc("test_seen")]).tolist())
    used = set(np.concatenate([nested.loc(name) for name in ("trainval", "test_seen", "test_unseen")]).tolist())
    assert used == allowed  # every validation-seen image, no image of the validation's unseen (or test) classes
    inner, held = set(nested.seen_classes.tolist()), set(nested.unseen_classes.tolist())
    assert inner | held == set(validation.seen_classes.tolist()) and not inner & held
    assert len(held) == len(validation.seen_classes) // 3


def test_bench_reports_each_gate_carried_as_value_and_quantile(gate_transfer, tmp_path):
    out = tmp_path / "transfer.json"
    result = gate_transfer.main(["--config", "demo", "--gates", "stacking,energy", "--json", str(out),
                                 *_demo_features(tmp_path), "--generative.epochs", "1", "--generative.hidden", "16",
                                 "--generative.embedder_hidden", "16", "--generative.syn_num", "5",
                                 "--generative.classifier_epochs", "1"])
    written = json.loads(out.read_text())
    assert written["gates"] == result["gates"] and set(result["gates"]) == {"stacking", "energy"}
    for row in written["seeds"][0]["gates"].values():
        assert 0 <= row["kept_seen_share"] <= 1
        for key in ("H_own", "H_value", "H_quantile"):
            assert 0 <= row[key] <= 100
        assert row["H_own"] >= max(row["H_value"], row["H_quantile"]) - 1e-9  # the own optimum bounds both
