"""The bench side of the text semantics: --semantics reaches the split (bench/harness.py)."""
import argparse
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from bsegn.datasets.features import FeatureSet  # noqa: E402
from bsegn.datasets.splits import ZSLSplit  # noqa: E402


def _toy():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 12)
    features = rng.normal(size=(60, 7)).astype(np.float32) + labels[:, None].astype(np.float32)
    semantics = rng.random((5, 4)).astype(np.float32)
    trainval = np.flatnonzero(labels < 3)
    locs = {"trainval": trainval[::2], "test_seen": trainval[1::2], "test_unseen": np.flatnonzero(labels >= 3),
            "train": None, "val": None}
    split = ZSLSplit("toy", list("abcde"), semantics, locs, seen_classes=np.arange(3), unseen_classes=np.array([3, 4]),
                     labels=labels)
    return FeatureSet(features=features, labels=labels, image_ids=[str(i) for i in range(60)]), split


def test_semantics_option(monkeypatch, tmp_path):
    from harness import add_semantics_arguments, with_semantics

    from bsegn.datasets import text_encoder

    monkeypatch.setenv("BSEGN_CACHE", str(tmp_path))
    monkeypatch.setattr(text_encoder, "load_encoder", lambda spec: pytest.fail("no text encoder for attributes"))
    parser = argparse.ArgumentParser()
    add_semantics_arguments(parser)
    _, split = _toy()
    assert with_semantics(split, parser.parse_args([])) is split
    with pytest.raises(SystemExit, match="--descriptions needs --semantics text"):
        with_semantics(split, parser.parse_args(["--descriptions", "d.csv"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--semantics", "words"])
