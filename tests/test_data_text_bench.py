"""The bench side of the text semantics: bench/harness.py's shared-work ESZSL grid equals fit_eszsl pair by
pair (a guard on the faster grid search), and --semantics reaches the split."""
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


def test_eszsl_grid_equals_fit_eszsl():
    from harness import eszsl_grid

    from bsegn.generative.eszsl import fit_eszsl

    features, split = _toy()
    index = split.loc("trainval")
    grid = eszsl_grid(features, split, (0.1, 10.0), (0.01, 1.0))
    assert len(grid) == 4
    for (gamma, lam), projection in grid.items():
        expected = fit_eszsl(features.features[index], features.labels[index], split.semantics, split.seen_classes,
                             gamma, lam)
        assert np.allclose(projection.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6), (gamma, lam)


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
