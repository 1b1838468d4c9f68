"""Every rule that ties config keys together refuses a bad combination with one ConfigError naming the keys,
before any compute; the same config without the offending value loads (so each case tests its rule)."""
import pytest

from bsegn.app.config import load_run_config
from bsegn.core.errors import ConfigError

# (overrides that break a rule, the message's start, the same overrides made valid)
CROSS_FIELD_RULES = [
    (["--data.descriptions", "d.csv"], "data.descriptions is given but data.semantics is 'attributes'",
     ["--data.descriptions", "d.csv", "--data.semantics", "text"]),
    (["--run.gate", "semantic", "--generative.lambda_cyc", "0"], "run.gate semantic reads the semantic decoder",
     ["--run.gate", "semantic", "--generative.lambda_cyc", "0.1"]),
    (["--generative.mfim_levels", "[h_R, s]"], "generative.mfim_levels must include 'x'",
     ["--generative.mfim_levels", "[x, h_R, s]"]),
]


@pytest.mark.parametrize("broken, message, fixed", CROSS_FIELD_RULES, ids=lambda value: str(value)[:40])
def test_each_cross_field_rule_refuses_its_combination(broken, message, fixed):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_run_config("demo", broken)
    load_run_config("demo", fixed)


def test_batch_size_must_divide_by_the_process_count():
    config = load_run_config("demo", ["--generative.batch_size", "64"])
    config.generative.check_process_count(1)
    config.generative.check_process_count(4)
    with pytest.raises(ConfigError, match=r"generative.batch_size 64 does not divide by the 3 processes.*"
                                          r"--generative.batch_size 66"):
        config.generative.check_process_count(3)


def test_the_pipeline_refuses_an_indivisible_batch_before_reading_any_data(tmp_path, monkeypatch):
    """Under `accelerate launch --num_processes 3` (WORLD_SIZE 3) a batch of 64 is refused at the pipeline's
    start: before the data is read, any Accelerator exists or anything is written."""
    import bsegn.app.pipeline as pipeline

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setattr(pipeline, "preflight", lambda config: pytest.fail("the data was read first"))
    config = load_run_config("demo", ["--run.output", str(tmp_path / "run"), "--generative.batch_size", "64"])
    with pytest.raises(ConfigError, match="does not divide by the 3 processes"):
        pipeline.run_pipeline(config)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_the_trainer_keeps_the_rule_for_library_callers():
    # BSeGNTrainer built directly (bench, notebooks) refuses the same way, before it builds any network
    from types import SimpleNamespace

    import numpy as np
    import torch

    from bsegn.generative.config import BSeGNConfig
    from bsegn.generative.trainer import BSeGNTrainer

    three_processes = SimpleNamespace(num_processes=3, device=torch.device("cpu"))
    features, labels, semantics = np.ones((4, 8), np.float32), np.array([0, 0, 1, 1]), np.eye(3, dtype=np.float32)
    with pytest.raises(ConfigError, match="does not divide by the 3 processes"):
        BSeGNTrainer(features, labels, semantics, [0, 1], [2], BSeGNConfig(batch_size=64), accelerator=three_processes)
