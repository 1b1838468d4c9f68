"""A run's guards: one run per run folder (the lock), everything checked before any compute (config,
output folder, data), clear one-line errors from `train.py` (also under `accelerate launch -q`), and
two runs of the same command giving the same numbers."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import SCRATCH_BACKBONE

from bsegn.core.errors import DataError
from bsegn.core.locks import LOCK_NAME, RunFolderBusy, RunLock

REPO = Path(__file__).resolve().parent.parent
# a demo small enough for the checks that run before any compute (generated once per session)
TINY_DEMO = ["--data.demo_images_per_class", "3", "--data.demo_image_size", "16"]


def _train_py():
    """train.py as a module (its main() runs in this process: no interpreter start per test)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = _train_py().main(list(args))
    return code, capsys.readouterr().err


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lock(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": 0.0}))


# --- the lock -------------------------------------------------------------------------------------

def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    first = RunLock(tmp_path / "run").acquire()
    with pytest.raises(RunFolderBusy, match=f"in use by another run \\(pid {os.getpid()} on host "):
        RunLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # no private files left


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    _write_lock(tmp_path, _dead_pid())
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("holder, words", [({"host": "elsewhere.example"}, "on host elsewhere.example"),
                                           (None, "an unreadable lock record")])
def test_a_lock_that_cannot_be_judged_stale_is_kept(tmp_path, holder, words):
    if holder is None:
        (tmp_path / LOCK_NAME).write_text("{half a rec")
    else:
        _write_lock(tmp_path, _dead_pid(), holder["host"])  # a pid dead here means nothing for another host
    with pytest.raises(RunFolderBusy, match=words):
        RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).exists()


def test_release_removes_only_its_own_lock(tmp_path):
    lock = RunLock(tmp_path).acquire()
    _write_lock(tmp_path, 1, "other")  # replaced behind its back (someone deleted it, another run took it)
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "other"


def test_a_second_run_on_a_locked_folder_is_refused_before_any_work(tmp_path, capsys):
    _write_lock(tmp_path / "run", os.getpid())  # a live holder: this process
    code, err = _train(capsys, "--output", str(tmp_path / "run"), *TINY_DEMO)
    assert code == 2 and "Traceback" not in err
    assert f"in use by another run (pid {os.getpid()} on host {socket.gethostname()}" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME, "log.txt"]  # no config.yaml, no stage


def _config(tmp_path, *extra):
    from bsegn.app.config import load_run_config

    return load_run_config(None, ["--run.output", str(tmp_path / "run"), *TINY_DEMO, *extra])


def test_the_lock_is_held_during_the_run_and_released_after_it_and_after_an_error(tmp_path, monkeypatch):
    import bsegn.app.pipeline as pipeline

    lock = tmp_path / "run" / LOCK_NAME

    def body(config, run_dir, data, accelerator):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        return {"T1": 1.0}

    monkeypatch.setattr(pipeline, "_run_locked", body)
    assert pipeline.run_pipeline(_config(tmp_path)) == {"T1": 1.0}
    assert not lock.exists()

    def failing(*args):
        raise RuntimeError("stage failed")

    monkeypatch.setattr(pipeline, "_run_locked", failing)
    with pytest.raises(RuntimeError, match="stage failed"):
        pipeline.run_pipeline(_config(tmp_path))
    assert not lock.exists()


# --- preflight: data ------------------------------------------------------------------------------

def _fake_benchmark(seen, unseen, *, train=None, val=None):
    from bsegn.datasets.splits import ZSLSplit

    classes = sorted(seen + unseen)
    labels = np.repeat(np.array(classes), 4)
    where = lambda ids: np.flatnonzero(np.isin(labels, ids))  # noqa: E731
    split = ZSLSplit(benchmark="fake", class_names=[f"c{c}" for c in classes],
                     semantics=np.eye(len(classes), dtype=np.float32),
                     locs={"trainval": where(seen), "test_seen": np.zeros(0, np.int64), "test_unseen": where(unseen),
                           "train": None if train is None else where(train), "val": None if val is None else where(val)},
                     seen_classes=np.array(seen), unseen_classes=np.array(unseen), labels=labels,
                     image_files=[f"{i}.jpg" for i in range(len(labels))])
    return SimpleNamespace(split=split, features=None, image_root=tmp_root)


tmp_root = Path("/nonexistent-images")


@pytest.mark.parametrize("benchmark, extra, words", [
    (lambda: _fake_benchmark([0, 1, 2], []), ["--run.threshold", "-1.0"], "no unseen class"),
    (lambda: _fake_benchmark([0, 1], [2]), [], "train/val"),
    (lambda: _fake_benchmark([0, 1], [2], train=[0, 1], val=[]), [], "validation protocol needs"),
    (lambda: _fake_benchmark([0, 1], [2], train=[], val=[0, 1]), [], "validation protocol needs"),
    (lambda: _fake_benchmark([0, 1], [2], train=[0], val=[1]), ["--run.protocol", "validation",
                                                                 "--run.threshold", "0"], None),
])
def test_infeasible_data_is_refused_before_any_compute(tmp_path, monkeypatch, benchmark, extra, words):
    import bsegn.app.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_run_benchmark", lambda config: benchmark())
    config = _config(tmp_path, *extra)
    if words is None:  # feasible: preflight passes
        assert pipeline.preflight(config).split.benchmark == "fake"
        return
    monkeypatch.setattr("accelerate.Accelerator", lambda *a, **k: pytest.fail("an Accelerator was created"))
    with pytest.raises(DataError, match=words):
        pipeline.run_pipeline(config)
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_protocol_split_without_training_images_or_unseen_classes_is_refused():
    """check_classes runs on each protocol's split (also after unreadable images were dropped)."""
    from bsegn.app.pipeline import check_classes

    def split(trainval, unseen):
        return SimpleNamespace(benchmark="fake", seen_classes=np.array([0, 1]), unseen_classes=np.array(unseen),
                               locs={"trainval": np.array(trainval, dtype=np.int64)})

    check_classes(split([0, 1], [2]), "final")
    with pytest.raises(DataError, match="fake \\(final protocol\\): no seen class has training images"):
        check_classes(split([], [2]), "final")
    with pytest.raises(DataError, match="fake \\(validation protocol\\): no unseen classes"):
        check_classes(split([0, 1], []), "validation")


# --- train.py's errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--generative.lr", "-1"], "generative.lr must be > 0"),
    (["--generative.epochs", "five"], "generative.epochs must be an integer"),
    (["--generative.epochs", "2.5"], "generative.epochs must be an integer"),
    (["--generative.epochs"], "--generative.epochs needs a value"),
    (["--config", "."], "is a folder"),
])
def test_config_errors_are_one_line_before_anything_is_written(tmp_path, capsys, args, words):
    code, err = _train(capsys, "--output", str(tmp_path / "run"), *args)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_trailing_flag_without_value_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as stop:
        _train_py().main(["--output"])
    assert stop.value.code == 2 and "--output: expected one argument" in capsys.readouterr().err


def test_output_that_is_a_file_or_not_writable_is_one_line(tmp_path, capsys, monkeypatch):
    import bsegn.core.locks as locks

    file = tmp_path / "taken"
    file.write_text("x")
    for output, words in ((file, "is a file, not a folder"), (file / "run", "is a file, so the run folder cannot")):
        code, err = _train(capsys, "--output", str(output))
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setattr(locks.os, "access", lambda path, mode: False)  # as a read-only folder answers (root ignores modes)
    code, err = _train(capsys, "--output", str(tmp_path / "new" / "run"))
    assert code == 2 and f"its parent {tmp_path} is not writable" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, err = _train(capsys, "--output", str(folder))
    finally:
        folder.chmod(0o755)
    assert code == 2 and "is not writable" in err


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_under_accelerate_launch_q_a_config_error_is_one_clear_line(tmp_path):
    """The README's form, `accelerate launch -q train.py`: accelerate's own launcher would otherwise add a
    CalledProcessError traceback under the one-line error (accelerate/commands/launch.py simple_launcher)."""
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", "1",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train.py",
                           "--output", str(tmp_path / "run"), "--generative.epochs", "five"],
                          cwd=REPO, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["train.py: error: generative.epochs must be an integer, got 'five'"], done.stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_locked_folder_stops_every_rank_of_a_two_process_run(tmp_path):
    """Rank 0 alone takes the lock; it tells the others (one broadcast), so every rank refuses and the
    launch ends non-zero quickly instead of rank 1 training into the folder or waiting forever."""
    from bsegn.app.config import load_run_config
    from bsegn.app.pipeline import load_run_benchmark

    load_run_benchmark(load_run_config(None, TINY_DEMO))  # generated before the two ranks read it
    _write_lock(tmp_path / "run", os.getpid())
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "29521", "train.py", "--output", str(tmp_path / "run"), *TINY_DEMO],
                          cwd=REPO, env={**ENV, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("train.py: error: run folder") == 2, done.stderr[-3000:]
    assert not (tmp_path / "run" / "config.yaml").exists()
    assert time.monotonic() - started < 240


REPRO = ["--data.demo_images_per_class", "12", "--data.demo_image_size", "32", "--backbone.image_size", "32",
         "--finetune.epochs", "1", "--generative.epochs", "1", "--run.threshold", "null", *SCRATCH_BACKBONE]


@pytest.mark.slow
def test_the_same_command_twice_gives_the_same_metrics(tmp_path):
    """Two runs of one reduced demo command (threshold null, so the validation protocol chooses every
    gate's threshold): T1, U, S, H, the thresholds and the domain AUROC agree exactly. Every random draw is seeded by run.seed (backbone init too)."""
    results = []
    for name in ("first", "second"):
        done = subprocess.run([sys.executable, "train.py", "--output", str(tmp_path / name), *REPRO], cwd=REPO, env=ENV,
                              capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["threshold_chosen_on"] == "validation"
        # p_unseen's temperature: fitted on validation with each threshold, carried to the final run and bundle
        bundle_gate = json.loads((tmp_path / name / "bundle" / "config.json").read_text())["gate"]
        for kind, row in metrics["gates"].items():
            assert row["temperature"] == metrics["validation_gates"][kind]["temperature"] > 0
        assert bundle_gate["temperature"] == metrics["temperature"] == metrics["gates"][metrics["gate"]]["temperature"]
        assert 0.0 <= metrics["p_unseen_ece"] <= 0.5 and metrics["p_unseen_nll"] > 0
        card = (tmp_path / name / "bundle" / "README.md").read_text()
        assert f"calibration error {metrics['p_unseen_ece']:.3f}" in card or bundle_gate["temperature"] == 1.0
        results.append({key: metrics[key] for key in ("T1", "U", "S", "H", "threshold", "domain_auroc", "temperature")}
                       | {kind: row["threshold"] for kind, row in metrics["validation_gates"].items()})
    assert results[0] == results[1]


def test_without_fine_tuning_the_images_are_extracted_once_for_both_protocols(tmp_path, capsys):
    """finetune.epochs 0: the validation and final protocols read the same backbone, so the validation run
    extracts into the final run's feature cache and the final run re-uses it."""
    out = tmp_path / "frozen"
    code, err = _train(capsys, "--output", str(out), "--data.demo_images_per_class", "8", "--data.demo_image_size", "16",
                       "--backbone.model", "test_resnet", "--backbone.weights", "none", "--backbone.image_size", "16",
                       "--finetune.epochs", "0",
                       "--generative.epochs", "1", "--generative.syn_num", "5", "--generative.classifier_epochs", "1",
                       "--run.threshold", "null", "--run.gate", "stacking")
    assert code == 0, err[-3000:]
    assert "features: extracted" in err and "features: re-used" in err
    assert err.index("features: extracted") < err.index("validation H") < err.index("features: re-used")
    assert not (out / "validation" / "features").exists() and list((out / "features").glob("*.safetensors"))
    assert json.loads((out / "metrics.json").read_text())["threshold_chosen_on"] == "validation"


def test_last_stage_fine_tuning_runs_the_trunk_once_for_both_protocols(tmp_path, capsys):
    """finetune.layers last_stage: the frozen trunk's maps are computed once (in the final run's folder) and
    serve both protocols; each protocol tunes its own last stage and writes its features where the feature
    stage finds them (nothing is extracted from the images again)."""
    out = tmp_path / "last"
    code, err = _train(capsys, "--output", str(out), "--data.demo_images_per_class", "8", "--data.demo_image_size", "16",
                       "--backbone.model", "test_resnet", "--backbone.weights", "none", "--backbone.image_size", "16",
                       "--finetune.epochs", "1", "--finetune.layers", "last_stage", "--finetune.batch_size", "16",
                       "--generative.epochs", "1", "--generative.syn_num", "5", "--generative.classifier_epochs", "1",
                       "--run.threshold", "null", "--run.gate", "stacking")
    assert code == 0, err[-3000:]
    assert err.count("features: re-used") == 2 and "features: extracted" not in err
    assert len(list((out / "trunk").glob("trunk_*.npy"))) == 1 and not (out / "validation" / "trunk").exists()
    tuned = [json.loads((folder / "backbone" / "backbone.json").read_text())["weights_id"]
             for folder in (out, out / "validation")]
    assert tuned[0] != tuned[1]  # each protocol's own last stage
