"""A BERT sentence encoder in plain torch: the fast path of bsegn.datasets.text_encoder.

    reason = unsupported_reason(folder)      # None when the folder can be encoded here
    encoder = BertSentenceEncoder.load(folder)
    vectors, token_counts = encoder.encode_with_counts(texts)

For a sentence-transformers folder made of a BERT transformer (config.json: model_type "bert", absolute
positions, GELU), mean pooling (1_Pooling/config.json) and optionally Normalize, nothing else: the default
all-MiniLM-L6-v2 is one. It gives the vectors sentence-transformers gives (tests/test_data_text_fast.py
compares them) without importing sentence-transformers or transformers, whose import took most of the
time of a short `bsegn add-class` (bench/text_encoder.py measures both).

Written from the BERT paper (Devlin et al. 2019, after Vaswani et al. 2017) and the folder's config:
* tokens: the folder's tokenizer.json (the `tokenizers` library: lower-casing, WordPiece, [CLS] text
  [SEP]), truncated to sentence_bert_config.json's max_seq_length, padded on the right;
* embeddings: word + position + token type (all type 0), then LayerNorm;
* each layer: multi-head self-attention over the non-padding tokens, output projection, residual,
  LayerNorm; then a GELU feed-forward, residual, LayerNorm (post-norm);
* the sentence: the mean of the last layer's token vectors over the attention mask, L2-normalised.
Weights come from model.safetensors only (never a pickle): loading runs no code from the folder.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np

from bsegn.core.errors import WeightsError

MEAN_POOLING = (["mean"], ["pooling_mode_mean_tokens"])  # sentence-transformers 6 / earlier configs
BERT_TOKENIZERS = (None, "BertTokenizer", "BertTokenizerFast")


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _modules_reason(folder: Path) -> str | None:
    modules = _json(folder / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        return "no readable modules.json"
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]  # text_encoder checked the package
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return f"modules {kinds} are not Transformer, Pooling[, Normalize]"
    if modules[0].get("path", "") != "":
        return "the Transformer module is not in the folder itself"
    pooling = _json(folder / str(modules[1].get("path", "")) / "config.json")
    if not isinstance(pooling, dict):
        return "no readable pooling config.json"
    modes = [pooling["pooling_mode"]] if "pooling_mode" in pooling else sorted(
        key for key, value in pooling.items() if key.startswith("pooling_mode_") and value)
    if modes not in MEAN_POOLING:
        return f"pooling {modes} is not mean pooling"
    return None


def _tokenizer_reason(folder: Path) -> str | None:
    spec = _json(folder / "tokenizer.json")
    if not isinstance(spec, dict):
        return "no readable tokenizer.json"
    normalizer, post = spec.get("normalizer") or {}, spec.get("post_processor") or {}
    if (spec.get("model") or {}).get("type") != "WordPiece" or normalizer.get("type") != "BertNormalizer":
        return "tokenizer.json is not a BERT WordPiece tokenizer"
    if [next(iter(part)) for part in post.get("single", [{}])] != ["SpecialToken", "Sequence", "SpecialToken"]:
        return "tokenizer.json does not wrap a text as [CLS] text [SEP]"
    options = _json(folder / "tokenizer_config.json") or {}
    if options.get("tokenizer_class") not in BERT_TOKENIZERS:
        return f"tokenizer class {options.get('tokenizer_class')!r} is not BERT's"
    # transformers rebuilds the normalizer from tokenizer_config.json where the two disagree: only agreeing
    # folders are encoded here
    for option, key in (("do_lower_case", "lowercase"), ("tokenize_chinese_chars", "handle_chinese_chars"),
                        ("strip_accents", "strip_accents")):
        if option in options and options[option] != normalizer.get(key):
            return f"tokenizer_config.json's {option} differs from tokenizer.json"
    return None


def max_seq_length(folder: Path) -> int | None:
    """The token limit sentence-transformers applies: sentence_bert_config.json's max_seq_length, or (folders
    saved by sentence-transformers 6) tokenizer_config.json's model_max_length."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        value = (_json(folder / name) or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def unsupported_reason(folder: Path) -> str | None:
    """Why `folder` cannot be encoded by BertSentenceEncoder (None when it can)."""
    config = _json(folder / "config.json")
    if not isinstance(config, dict) or config.get("model_type") != "bert":
        return "config.json does not say model_type 'bert'"
    if config.get("position_embedding_type", "absolute") != "absolute" or config.get("hidden_act") != "gelu":
        return "not absolute positions with GELU"
    length = max_seq_length(folder)
    if length is None:
        return "no max_seq_length in sentence_bert_config.json (or model_max_length in tokenizer_config.json)"
    if not 2 < length <= int(config.get("max_position_embeddings", 0)):
        return "max_seq_length is beyond the position embeddings"
    if not (folder / "model.safetensors").is_file():
        return "no model.safetensors"
    return _modules_reason(folder) or _tokenizer_reason(folder)


@contextlib.contextmanager
def one_thread():
    """torch on one CPU thread inside (the count restored after). A sentence is a few small matrices: on
    this shared 2-core machine under load, two OpenMP threads embedded 10 descriptions one by one in 5.1 s,
    one thread in 0.14 s (bench/add_class_text.py, docs/results.md); an idle machine gains little from two."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class BertSentenceEncoder:
    """Mean-pooled, L2-normalised BERT sentence vectors (float32 numpy), on the CPU, inference only."""

    def __init__(self, weights: dict, config: dict, tokenizer, max_seq_length: int, lower_case: bool = False):
        self.weights, self.max_seq_length, self.lower_case = weights, int(max_seq_length), lower_case
        self.heads, self.layers = int(config["num_attention_heads"]), int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.dimension = int(config["hidden_size"])
        self.tokenizer = tokenizer  # counts the full length (no truncation, no padding)
        self.truncating = tokenizer.__class__.from_str(tokenizer.to_str())
        self.truncating.enable_truncation(self.max_seq_length)

    @classmethod
    def load(cls, folder: Path) -> "BertSentenceEncoder":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        config = _json(folder / "config.json")
        sbert = _json(folder / "sentence_bert_config.json")
        try:
            weights = load_file(str(folder / "model.safetensors"), device="cpu")
        except (SafetensorError, OSError) as error:
            raise WeightsError(f"{folder / 'model.safetensors'}: unreadable ({error}); reinstall or re-save the "
                               "text encoder.") from None
        weights = {key.removeprefix("bert."): value.float() for key, value in weights.items()}
        _check_weights(weights, config, folder)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return cls(weights, config, tokenizer, max_seq_length(folder), bool((sbert or {}).get("do_lower_case", False)))

    def encode_with_counts(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, list[int]]:
        """(n, d) unit vectors of `texts` and each text's full token count ([CLS] and [SEP] included)."""
        import torch

        texts = [text.lower() if self.lower_case else text for text in texts]
        counts = [len(encoding.ids) for encoding in self.tokenizer.encode_batch(texts)]
        ids = [encoding.ids for encoding in self.truncating.encode_batch(texts)]
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        order = np.argsort([-len(row) for row in ids], kind="stable")  # similar lengths batched: less padding
        with torch.inference_mode(), one_thread():
            for start in range(0, len(order), batch_size):
                chosen = order[start:start + batch_size]
                width = max(len(ids[i]) for i in chosen)
                tokens = torch.zeros((len(chosen), width), dtype=torch.long)
                mask = torch.zeros((len(chosen), width), dtype=torch.bool)
                for row, i in enumerate(chosen):
                    tokens[row, :len(ids[i])] = torch.tensor(ids[i])
                    mask[row, :len(ids[i])] = True
                vectors[chosen] = self.forward(tokens, mask).numpy()
        return vectors, counts

    def forward(self, tokens, mask):
        """Token ids (b, L) and attention mask (b, L; True = a real token) -> unit sentence vectors (b, d)."""
        import torch
        import torch.nn.functional as F

        w, d = self.weights, self.dimension
        positions = torch.arange(tokens.shape[1])
        x = (F.embedding(tokens, w["embeddings.word_embeddings.weight"])
             + w["embeddings.position_embeddings.weight"][positions]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        keep = mask[:, None, None, :]  # (b, 1, 1, L): every query attends to the real tokens only
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}."
            heads = [self._linear(x, p + f"attention.self.{part}").unflatten(-1, (self.heads, d // self.heads))
                     .transpose(1, 2) for part in ("query", "key", "value")]
            attended = F.scaled_dot_product_attention(*heads, attn_mask=keep, scale=1 / math.sqrt(d // self.heads))
            x = self._norm(x + self._linear(attended.transpose(1, 2).flatten(2), p + "attention.output.dense"),
                           p + "attention.output.LayerNorm")
            hidden = F.gelu(self._linear(x, p + "intermediate.dense"))  # exact (erf) GELU, config "gelu"
            x = self._norm(x + self._linear(hidden, p + "output.dense"), p + "output.LayerNorm")
        weight = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weight).sum(1) / weight.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)

    def _linear(self, x, name):
        import torch.nn.functional as F

        return F.linear(x, self.weights[name + ".weight"], self.weights[name + ".bias"])

    def _norm(self, x, name):
        import torch.nn.functional as F

        return F.layer_norm(x, (self.dimension,), self.weights[name + ".weight"], self.weights[name + ".bias"],
                            self.eps)


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every weight the encoder uses and its shape, from config.json's sizes."""
    d, ff = int(config["hidden_size"]), int(config["intermediate_size"])
    shapes = {"embeddings.word_embeddings.weight": (int(config["vocab_size"]), d),
              "embeddings.position_embeddings.weight": (int(config["max_position_embeddings"]), d),
              "embeddings.token_type_embeddings.weight": (int(config.get("type_vocab_size", 2)), d),
              "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
    for layer in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{layer}."
        for name, out, into in (("attention.self.query", d, d), ("attention.self.key", d, d),
                                ("attention.self.value", d, d), ("attention.output.dense", d, d),
                                ("intermediate.dense", ff, d), ("output.dense", d, ff)):
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (out, into), (out,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"] = shapes[p + name + ".bias"] = (d,)
    return shapes


def _check_weights(weights: dict, config: dict, folder: Path) -> None:
    if int(config["hidden_size"]) % int(config["num_attention_heads"]):
        raise WeightsError(f"{folder}/config.json: hidden_size is not a multiple of num_attention_heads.")
    for name, shape in expected_shapes(config).items():
        if name not in weights:
            raise WeightsError(f"{folder / 'model.safetensors'} has no weight {name!r}; it is not the BERT model its "
                               "config.json describes. Re-save the model folder.")
        if tuple(weights[name].shape) != shape:
            raise WeightsError(f"{folder / 'model.safetensors'}: weight {name!r} has shape "
                               f"{tuple(weights[name].shape)}, config.json says {shape}. Re-save the model folder.")
