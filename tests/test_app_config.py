"""The run config: YAML + dotted overrides, unknown keys refused, every shipped config valid."""
from pathlib import Path

import pytest
import yaml

from bsegn.app.config import ConfigFileError, load_run_config, parse_overrides, write_run_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_overrides_are_typed_and_applied():
    config = load_run_config(None, ["--generative.epochs", "7", "--backbone.model=resnet18",
                                    "--run.gamma", "0.5", "--generative.mfim_levels", "[x, s]"])
    assert config.bsegn_config().epochs == 7
    assert config.backbone.model == "resnet18"
    assert config.run.gamma == 0.5
    assert config.bsegn_config().mfim_levels == ("x", "s")


@pytest.mark.parametrize("overrides, words", [
    (["--generative.epochz", "3"], "epochz"),
    (["--backbone.modle", "x"], "modle"),
    (["--training.epochs", "3"], "section must be one of"),
    (["--finetune.lr", "0.1"], "lr"),
    (["--run.protocol", "test"], "protocol"),
    (["epochs", "3"], "unexpected argument"),
])
def test_unknown_or_bad_keys_are_refused_by_name(overrides, words):
    with pytest.raises(ConfigFileError, match=words):
        load_run_config(None, overrides)


def test_unknown_yaml_section_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {benchmark: demo}\nmodel: {x: 1}\n")
    with pytest.raises(ConfigFileError, match="unknown config section"):
        load_run_config(path)


def test_written_config_reproduces_the_run(tmp_path):
    config = load_run_config(None, ["--generative.epochs", "4", "--run.seed", "3"])
    write_run_config(config, tmp_path / "config.yaml")
    again = load_run_config(tmp_path / "config.yaml")
    assert again.to_dict() == config.to_dict()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["generative"]["epochs"] == 4


@pytest.mark.parametrize("name", ["demo", "cub", "cub-sent", "awa1", "awa2", "sun", "flo", "apy"])
def test_every_shipped_config_is_valid(name):
    config = load_run_config(CONFIGS / f"{name}.yaml")
    if name != "demo":
        assert config.backbone.model == "resnet101"
        assert config.data.benchmark.lower().replace("_", "-") == name


def test_awa1_lampert_config_trains_on_features_without_fine_tuning():
    config = load_run_config(CONFIGS / "awa1-lampert.yaml")
    assert config.data.benchmark == "AWA1-Lampert2009" and not config.finetune_enabled
    assert config.bsegn_config().calibration


def test_parse_overrides_needs_a_value():
    with pytest.raises(ConfigFileError, match="needs a value"):
        parse_overrides(["--generative.epochs"])


def test_mixed_precision_is_left_to_accelerate_unless_the_config_sets_it(tmp_path):
    """`accelerate launch --mixed_precision fp16 train.py` must work: a config that asks for no precision
    passes None, so accelerate reads its launcher's choice; a precision in the config wins."""
    import os
    import subprocess
    import sys

    from bsegn.app.pipeline import accelerator_options

    assert accelerator_options(load_run_config(None, []))["mixed_precision"] is None
    chosen = load_run_config(None, ["--generative.mixed_precision", "bf16", "--finetune.mixed_precision", "bf16"])
    assert accelerator_options(chosen)["mixed_precision"] == "bf16"
    # In a fresh process (accelerate's state is per process): the launcher's setting is what the run gets.
    code = ("from accelerate import Accelerator; from bsegn.app.config import load_run_config; "
            "from bsegn.app.pipeline import accelerator_options; "
            "print(Accelerator(**accelerator_options(load_run_config(None, []))).mixed_precision)")
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "bf16"
