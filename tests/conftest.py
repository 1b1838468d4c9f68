"""Test-wide settings: never touch the network, one torch thread, find the real data."""
import os

# Set before any test imports timm / huggingface_hub / albumentations.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# bench/'s modules (what only the benches use, the checkout's real-data folder) import by their names, as in
# the bench scripts; appended, so that no installed package is ever shadowed by a bench module's name
sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))

from shared_data import shared_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """The real benchmark metadata folder; tests that need it skip with a reason when absent."""
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data (real benchmark split files) is absent; set BSEGN_SHARED_DATA to run this test")
    return root


@pytest.fixture
def bsegn_log(caplog):
    """caplog for the "bsegn" loggers (bsegn.core.logs), also after setup_logging() has stopped them
    propagating to the root logger that caplog listens on. Use bsegn_log.records / .text."""
    import logging

    logger = logging.getLogger("bsegn")
    propagate = logger.propagate
    logger.addHandler(caplog.handler)
    logger.propagate = False  # not twice through the root
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated data goes to a per-session temp cache, never the user's ~/.cache."""
    monkeypatch.setenv("BSEGN_CACHE", str(tmp_path_factory.getbasetemp() / "bsegn-cache"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread in the test process: on this shared 2-core machine two OpenMP threads competing
    with other processes ran a small training step up to 30x slower (measured 1.6 s vs 0.056 s).
    Subprocess tests (train.py, accelerate launch) set their own thread counts."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# The reduced demo runs that fine-tune (a few epochs at 32 px) do it on a small random-init CNN, as the demo
# did before it read the frozen ImageNet Lite0: fast, and it exercises fine-tuning with the attribute head.
SCRATCH_BACKBONE = ["--backbone.model", "resnet10t", "--backbone.weights", "none", "--finetune.optimizer", "adamw",
                    "--finetune.lr_backbone", "0.002", "--finetune.lr_head", "0.005", "--finetune.warmup_epochs", "0.5",
                    "--finetune.head", "attribute"]
