"""The bench scripts' own plumbing (their measurements run outside CI): arguments and table rendering."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_zsl_bench_refuses_bad_epoch_candidates_before_any_work():
    for bad, says in (("3,x", "whole numbers"), ("0,3", ">= 1")):
        out = subprocess.run([sys.executable, str(BENCH / "zsl.py"), "--select-epochs", bad],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and says in out.stderr, out.stderr


def test_table_renders_a_bench_json_and_a_merged_gpu_session_file(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import table
    finally:
        sys.path.remove(str(BENCH))
    payload = {"methods": {"bsegn": {"T1": 26.24, "U": 19.1, "S": 12.6, "H": 15.04, "T1_std": 1.4, "U_std": 2.2,
                                     "S_std": 2.0, "H_std": 1.1, "seeds": 3, "epochs": 6},
                           "eszsl": {"T1": 20.8, "U": 17.9, "S": 8.6, "H": 11.6, "T1_std": 0.0, "U_std": 0.0,
                                     "S_std": 0.0, "H_std": 0.0, "seeds": 1}},
               "chosen_on_validation": {"bsegn": {"epochs": 6, "calibration_gamma": 12.0,
                                                "validation": {"T1": 20.44, "U": 13.7, "S": 19.8, "H": 16.19}}}}
    single = tmp_path / "one.json"
    single.write_text(json.dumps(payload))
    merged = tmp_path / "runs.json"
    merged.write_text(json.dumps({"awa1_main": payload}))
    for path in (single, merged):
        lines = table.rows(table.bench_payloads(path))
        assert lines[2] == ("| bsegn | 26.2 ± 1.4 | 19.1 ± 2.2 | 12.6 ± 2.0 | 15.0 ± 1.1 | stacking (-12) |  |  | 6 "
                            "| 20.4 / 16.2 |")
        assert lines[3] == "| eszsl | 20.8 | 17.9 | 8.6 | 11.6 |  |  |  |  |  |"
    # today's files: one row per method and gate, with the gate's threshold, AUROC, oracle H, validation H
    payload["methods"] = {"bsegn [learned]": {**payload["methods"]["bsegn"], "gate": "learned", "threshold": 0.25,
                                              "domain_auroc": 0.8123, "oracle_H": 30.04}}
    payload["chosen_on_validation"]["bsegn"]["validation_gates"] = {"learned": {"H": 18.26}}
    single.write_text(json.dumps(payload))
    assert table.rows(table.bench_payloads(single))[2] == (
        "| bsegn [learned] | 26.2 ± 1.4 | 19.1 ± 2.2 | 12.6 ± 2.0 | 15.0 ± 1.1 | learned (0.25) | 0.812 | 30.0 | 6 "
        "| 20.4 / 18.3 |")


def harness():
    sys.path.insert(0, str(BENCH))
    try:
        import harness as module
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_oracle_mode_is_labelled_and_never_below_the_last_epoch(tmp_path):
    """The oracle (best epoch on TEST, as public ZSL code does) steps through the same epochs as a normal
    run: its best H can only be >= the last epoch's H, and every result carries the label."""
    from test_generative_training import TINY, feature_split, gaussian_benchmark

    from bsegn.generative.config import BSeGNConfig
    from bsegn.generative.experiment import run_bsegn

    bench = harness()
    features, split = feature_split(gaussian_benchmark())
    config = BSeGNConfig.from_dict({**TINY, "epochs": 3})
    oracle = bench.run_bsegn_oracle(features, split, config, tmp_path / "oracle")
    last = run_bsegn(features, split, config, show_progress=False).result
    assert oracle["oracle"] == bench.ORACLE_LABEL and "TEST" in bench.ORACLE_LABEL
    assert 1 <= oracle["H_epoch"] <= 3 and 1 <= oracle["T1_epoch"] <= 3
    assert oracle["H"] >= last["H"] - 1e-6 and oracle["T1"] >= last["T1"] - 1e-6


def test_validation_picks_epochs_and_thresholds_from_rows_equal_to_separate_runs(tmp_path):
    """select_on_validation scores each candidate epoch count through checkpoints; every row must equal a
    separate run of that many epochs (same thresholds chosen, same T1/H for each gate), and the pick is
    the best T1 + H row of the first gate."""
    from test_generative_training import TINY, feature_split, gaussian_benchmark

    from bsegn.generative.config import BSeGNConfig
    from bsegn.generative.experiment import run_bsegn

    bench = harness()
    features, split = feature_split(gaussian_benchmark(seed=3))
    split.protocol = "validation"
    config = BSeGNConfig.from_dict({**TINY, "epochs": 9})
    choose = {"stacking": None, "gaussian": None}
    picked = bench.select_on_validation(features, split, config, tmp_path / "select", [3, 1], thresholds=choose,
                                        unseen_ranking="zsl")
    assert [row["epoch"] for row in picked["rows"]] == [1, 3]
    for row in picked["rows"]:
        alone = run_bsegn(features, split, config.replace(epochs=row["epoch"]), gates=choose,
                          unseen_ranking="zsl", show_progress=False).result
        assert alone["gamma"] == row["gamma"] == -row["threshold"]
        for kind in choose:
            assert alone["gates"][kind]["threshold"] == row["gates"][kind]["threshold"]
            assert abs(alone["gates"][kind]["H"] - row["gates"][kind]["H"]) < 1e-6
        assert abs(alone["T1"] - row["T1"]) < 1e-6 and abs(alone["H"] - row["H"]) < 1e-6
    best = max(picked["rows"], key=lambda r: r["T1"] + r["H"])
    assert picked["epochs"] == best["epoch"]
    assert picked["thresholds"] == {kind: best["gates"][kind]["threshold"] for kind in choose}
    with pytest.raises(ValueError, match="epochs to score"):
        bench.select_on_validation(features, split, config, tmp_path / "bad", [0, 2])


def test_validation_over_several_seeds_chooses_on_their_mean(tmp_path):
    """With seeds, each row is the mean of the per-seed rows of that epoch: T1 averaged, each threshold the
    best of the seed-averaged H curve (not any one seed's best), and the pick is the best mean T1 + H."""
    from test_generative_training import TINY, feature_split, gaussian_benchmark

    from bsegn.generative.config import BSeGNConfig

    bench = harness()
    features, split = feature_split(gaussian_benchmark(seed=3))
    split.protocol = "validation"
    config = BSeGNConfig.from_dict({**TINY, "epochs": 9})
    choose = {"stacking": None, "energy": None}
    picked = bench.select_on_validation(features, split, config, tmp_path / "two", [1, 2], seeds=[0, 1],
                                        thresholds=choose)
    alone = [bench.score_epochs(features, split, config, tmp_path / f"alone-{s}", [1, 2], thresholds=choose, seed=s)
             for s in (0, 1)]
    for j, row in enumerate(picked["rows"]):
        assert row["epoch"] == j + 1 and row["seeds"] == 2
        assert row["T1"] == pytest.approx((alone[0][j]["T1"] + alone[1][j]["T1"]) / 2)
        # stacking: both seeds share the gamma grid, so the mean curve is the pointwise mean
        mean_h = {p0["threshold"]: (p0["H"] + p1["H"]) / 2 for p0, p1 in
                  zip(alone[0][j]["gates"]["stacking"]["curve"], alone[1][j]["gates"]["stacking"]["curve"])}
        assert row["H"] == pytest.approx(max(mean_h.values()))
        assert mean_h[row["threshold"]] == pytest.approx(row["H"])
        # energy: each seed's H read at every candidate of both seeds (a step function), then averaged
        curves = [alone[s][j]["gates"]["energy"]["curve"] for s in (0, 1)]

        def h_at(curve, t):
            below = [p for p in sorted(curve, key=lambda p: p["threshold"]) if p["threshold"] <= t]
            return (below[-1] if below else min(curve, key=lambda p: p["threshold"]))["H"]

        energy = row["gates"]["energy"]
        best_mean = max((h_at(curves[0], t) + h_at(curves[1], t)) / 2 for c in curves for t in (p["threshold"] for p in c))
        assert energy["H"] == pytest.approx(best_mean)
        assert (h_at(curves[0], energy["threshold"]) + h_at(curves[1], energy["threshold"])) / 2 == pytest.approx(best_mean)
    best = max(picked["rows"], key=lambda r: r["T1"] + r["H"])
    assert picked["epochs"] == best["epoch"] and picked["thresholds"]["stacking"] == best["threshold"]
    with pytest.raises(ValueError, match="at least one"):
        bench.select_on_validation(features, split, config, tmp_path / "none", [1], seeds=[])


def test_eszsl_choice_is_made_on_validation_by_t1_plus_h():
    from eszsl import choose_eszsl, run_eszsl  # bench/eszsl.py (tests/conftest.py)
    from test_generative_training import feature_split, gaussian_benchmark

    features, split = feature_split(gaussian_benchmark())
    gamma_reg, lam, result = choose_eszsl(features, split, (0.1, 10.0))
    scores = {(g, l): run_eszsl(features, split, g, l) for g in (0.1, 10.0) for l in (0.1, 10.0)}
    assert result == scores[(gamma_reg, lam)]
    assert result["T1"] + result["H"] == max(r["T1"] + r["H"] for r in scores.values())


def test_zsl_bench_reads_features_and_options_from_a_run_config(tmp_path):
    """The bench loads a run config's pre-extracted features as train.py does (its overrides applied, the
    split's labels checked against the file's) and refuses, saying what to do, a config that would need
    extraction from images first."""
    import numpy as np

    from bsegn.datasets.benchmarks import load_benchmark
    from bsegn.datasets.features import FeatureSet, save_feature_cache

    sys.path.insert(0, str(BENCH))
    try:
        import zsl
    finally:
        sys.path.remove(str(BENCH))
    split = load_benchmark("demo", images_per_class=4, image_size=32).split
    rng = np.random.default_rng(0)
    cache = save_feature_cache(tmp_path / "features.safetensors", FeatureSet(
        rng.normal(size=(len(split.labels), 8)).astype(np.float32), np.asarray(split.labels),
        [f"image{i}" for i in range(len(split.labels))]), {"source": "test"})
    overrides = ["--data.demo_images_per_class", "4", "--data.demo_image_size", "32", "--run.gate", "learned",
                 "--data.features_file", str(cache)]
    config, features, loaded = zsl.load_features("demo", overrides)
    assert config.run.gate == "learned" and features.features.shape == (len(split.labels), 8)
    assert np.array_equal(loaded.labels, split.labels)
    with pytest.raises(SystemExit, match="--data.features_file"):
        zsl.load_features("demo", overrides[:-2])


def test_gpu_session_script_parses_and_names_its_new_stages():
    script = BENCH / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for stage in ("wants images", "wants graphs", "wants predict", "BSEGN_CUDA_GRAPHS=1", "bench/images.py"):
        assert stage in text, stage


@pytest.mark.slow
def test_images_bench_writes_both_stages_with_their_ratios(tmp_path):
    out = tmp_path / "images.json"
    done = subprocess.run([sys.executable, str(BENCH / "images.py"), "--model", "test_resnet", "--images", "12",
                           "--batch-size", "4", "--image-size", "32", "--source-size", "120x90", "--workers", "1",
                           "--folder", str(tmp_path / "jpegs"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(list((tmp_path / "jpegs").rglob("*.jpg"))) == 12
    for stage in ("extract", "finetune"):
        entry = result[stage]
        # the JSON rounds the ratio to 3 decimals and the rates to 2: a tiny ratio (a 32-px test_resnet whose
        # whole path is mostly the workers' start) is off by up to 0.0005 from the rounded rates' quotient
        assert entry["ratio"] == pytest.approx(entry["whole_img_s"] / entry["bare_img_s"], rel=0.01, abs=1e-3)
        assert entry["bare_img_s"] > 0 and entry["pipeline_img_s"] > 0 and entry["workers"] == 1
    assert result["finetune"]["first_epoch_img_s"] > 0 and result["settings"]["model"] == "test_resnet"


def test_images_bench_reads_real_photos_spread_over_their_classes(tmp_path):
    """--photos DIR: the bench picks its images evenly over a class-folder tree, and fine-tuning's 10 bench
    labels follow the class folders (so a batch mixes classes as a real epoch does)."""
    sys.path.insert(0, str(BENCH))
    try:
        import images
    finally:
        sys.path.remove(str(BENCH))
    for klass in range(12):
        (tmp_path / f"class{klass:02d}").mkdir()
        for index in range(5):
            (tmp_path / f"class{klass:02d}" / f"{index}.jpg").write_bytes(b"x")
    files = images.real_photos(tmp_path, 12)
    assert len(files) == 12 and files[0] == "class00/0.jpg" and files[-1] == "class11/4.jpg"
    assert len({name.split("/")[0] for name in files}) >= 10  # spread, not the first class's photos
    labels = images.bench_labels(files)
    assert labels.max() == 9 and labels[files.index(next(f for f in files if f.startswith("class10")))] == 0
    with pytest.raises(SystemExit, match="no <class>/<image> files"):
        images.real_photos(tmp_path / "class00", 3)


def test_seed_files_merge_into_one_table_row_per_method():
    """bench/table.py --merge-seeds: per-seed files (zsl.py --seeds 1 --first-seed S) become mean and
    sample std over the seeds; files that chose other thresholds are not one protocol's seeds."""
    sys.path.insert(0, str(BENCH))
    try:
        import table
    finally:
        sys.path.remove(str(BENCH))

    def payload(h, t1, threshold=-3.0):
        return {"methods": {"bsegn [stacking]": {"T1": t1, "U": 40.0, "S": 80.0, "H": h, "T1_std": 0.0, "U_std": 0.0,
                                                 "S_std": 0.0, "H_std": 0.0, "seeds": 1, "gate": "stacking",
                                                 "threshold": threshold, "domain_auroc": 0.9}}}
    merged = table.merge_seeds([payload(47.0, 57.0), payload(49.0, 59.0), payload(51.0, 61.0)])
    row = merged["methods"]["bsegn [stacking]"]
    assert row["seeds"] == 3 and row["H"] == pytest.approx(49.0) and row["H_std"] == pytest.approx(2.0)
    assert row["T1"] == pytest.approx(59.0) and row["domain_auroc"] == pytest.approx(0.9)
    with pytest.raises(SystemExit, match="different thresholds"):
        table.merge_seeds([payload(47.0, 57.0), payload(49.0, 59.0, threshold=-2.0)])


def test_zsl_bench_finds_a_benchmarks_split_folder_in_the_shared_data(tmp_path, monkeypatch):
    """A benchmark config that leaves data.splits_dir empty gets the shared data folder's (the bench's own
    look-up; the library never guesses one), and a given one is kept."""
    sys.path.insert(0, str(BENCH))
    try:
        import zsl
    finally:
        sys.path.remove(str(BENCH))
    from bsegn.app import pipeline

    (tmp_path / "AWA1").mkdir()
    monkeypatch.setenv("BSEGN_SHARED_DATA", str(tmp_path))
    seen = []

    def preflight(config):
        seen.append(config.data.splits_dir)
        raise SystemExit("stop before loading")

    monkeypatch.setattr(pipeline, "preflight", preflight)
    for overrides, expected in (([], str(tmp_path / "AWA1")), (["--data.splits_dir", "/elsewhere"], "/elsewhere")):
        with pytest.raises(SystemExit, match="stop before loading"):
            zsl.load_features("awa1-lampert", overrides)
        assert seen[-1] == expected


def _demo_caches(tmp_path, names):
    """Feature caches of the same small demo split: one per name, each with its own random features."""
    import numpy as np

    from bsegn.datasets.benchmarks import load_benchmark
    from bsegn.datasets.features import FeatureSet, save_feature_cache

    split = load_benchmark("demo", images_per_class=4, image_size=32).split
    caches = {}
    for index, name in enumerate(names):
        rng = np.random.default_rng(index)
        ids = [f"image{i}" for i in range(len(split.labels))] if name != "other_photos" else \
            [f"other{i}" for i in range(len(split.labels))]
        caches[name] = save_feature_cache(tmp_path / f"{name}.safetensors", FeatureSet(
            rng.normal(size=(len(split.labels), 8)).astype(np.float32), np.asarray(split.labels), ids),
            {"source": "test"})
    return caches


def test_zsl_bench_chooses_on_the_validation_features_and_the_runs_validation_split(tmp_path):
    """--validation-features: the validation protocol's choices are made on that file (a backbone fine-tuned on
    the validation training classes only), and the validation split is the one train.py draws for run.seed."""
    import json

    import zsl  # bench/zsl.py (tests/conftest.py)
    from eszsl import choose_eszsl

    from bsegn.datasets.protocol import validation_protocol

    caches = _demo_caches(tmp_path, ["final", "validation"])
    overrides = ["--data.demo_images_per_class", "4", "--data.demo_image_size", "32"]
    out = tmp_path / "out.json"
    assert zsl.main(["--config", "demo", *overrides, "--data.features_file", str(caches["final"]),
                     "--validation-features", str(caches["validation"]), "--run.seed", "1",
                     "--methods", "eszsl", "--validation-only", "--json", str(out)]) == 0
    chosen = json.loads(out.read_text())["chosen_on_validation"]["eszsl"]

    def expected(cache, seed):
        _, features, split = zsl.load_features("demo", [*overrides, "--data.features_file", str(cache)])
        return choose_eszsl(features, validation_protocol(split, holdout_fraction=0.2, seed=seed), zsl.ESZSL_GRID)[2]

    right = expected(caches["validation"], 1)
    assert chosen["validation"] == pytest.approx({k: right[k] for k in ("T1", "U", "S", "H")})
    for wrong in (expected(caches["final"], 1), expected(caches["validation"], 0)):  # the file or the split ignored
        assert {k: wrong[k] for k in ("T1", "H")} != pytest.approx({k: right[k] for k in ("T1", "H")})


def test_zsl_bench_refuses_validation_features_of_other_photos(tmp_path, capsys):
    import zsl  # bench/zsl.py (tests/conftest.py)

    caches = _demo_caches(tmp_path, ["final", "other_photos"])
    code = zsl.main(["--config", "demo", "--data.demo_images_per_class", "4", "--data.demo_image_size", "32",
                     "--data.features_file", str(caches["final"]), "--validation-features", str(caches["other_photos"]),
                     "--methods", "eszsl", "--validation-only"])
    assert code == 2 and "--validation-features" in capsys.readouterr().err
