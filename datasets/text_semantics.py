"""Class semantics from words: the class names made readable, or a description per class, embedded by a
sentence encoder (bsegn.datasets.text_encoder), alone or beside the attributes.

    apply_semantics(split, mode, descriptions=None, encoder="minilm", pooling=None) -> ZSLSplit
    parse_semantics("text@local-dir:PATH") -> ("text", "local-dir:PATH")
    class_vector(mode, *, attributes=None, text=None, encoder="minilm", pooling="sentence", name="new class")
    embed_class_texts(texts, encoder="minilm", pooling="sentence", labels=None) -> (C, k) unit rows
    class_texts(split, descriptions=None) -> C texts          readable_name(name) -> str
    read_descriptions_csv(path) -> {class: description}        (CSV class,description)

Modes (what ZSLSplit.semantics holds afterwards; ZSLSplit.semantic_kind records it):
* "attributes": the split as loaded (xlsa17 `att`, your CSV's attribute columns), unchanged;
* "text": the unit-norm text embedding of each class's text (384-d with MiniLM);
* "attributes+text": [a / |a|, t / |t|] / sqrt(2): the L2-normalised attribute vector and the text
  embedding side by side, each half of norm 1/sqrt(2), so the whole vector has unit norm like the
  attribute vectors and neither source outweighs the other whatever their dimensions (85 vs 384).

Pooling (how one class text becomes one vector; recorded as `text_pooling`, chosen on the validation
protocol, docs/results.md "Class names as words"):
* "words" when every class is known by its name only: the mean of the embeddings of its words, each word
  encoded alone, renormalised (the averaged word vectors of the classic ZSL class embeddings, Socher et al.
  2013, Akata et al. 2015): a name made of words other classes share ("blue dotted cross", "polar bear")
  becomes the sum of those words' vectors, so classes that share a word share a direction, as classes that
  share an attribute do;
* "sentence" when descriptions are given: the encoder reads each whole text.

A class's text is its description when one is given, else its name made readable
("blue_dotted_cross" -> "blue dotted cross", "german+shepherd" -> "german shepherd",
"001.Black_footed_Albatross" -> "black footed albatross"). Descriptions are matched to classes by
exact name or by readable name. The split keeps the texts used (`class_texts`) and the encoder
(`text_encoder`, `text_encoder_id`) so a model bundle can record them and embed new classes alike.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np

from bsegn.core.errors import DataError
from bsegn.core.logs import get_logger
from bsegn.datasets.splits import ZSLSplit
from bsegn.datasets.text_encoder import DEFAULT_ENCODER, encode_texts, resolve_encoder, unit_rows

SEMANTIC_MODES = ("attributes", "text", "attributes+text")
TEXT_POOLINGS = ("sentence", "words")
WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")  # letters/digits, with inner apostrophes or hyphens kept
PLACEHOLDER_NAME = re.compile(r"^class_\d+$")

logger = get_logger(__name__)


def readable_name(name: str) -> str:
    """A class name as words: a leading "<digits>." dropped, "_" and "+" as spaces, lower case."""
    text = re.sub(r"^\s*\d+\.", "", str(name))
    text = re.sub(r"[_+]+", " ", text)
    text = " ".join(text.split()).lower()
    return text or str(name).strip()


def parse_semantics(value: str, encoder: str = DEFAULT_ENCODER) -> tuple[str, str]:
    """A semantics option -> (mode, encoder): "text" -> ("text", encoder); "text@local-dir:PATH" ->
    ("text", "local-dir:PATH") (one config key can name both). DataError on an unknown mode."""
    mode, _, named = str(value).strip().partition("@")
    return check_mode(mode), (named.strip() or encoder)


def check_mode(mode: str) -> str:
    if mode not in SEMANTIC_MODES:
        raise DataError(f"unknown semantics {mode!r}; expected one of {', '.join(SEMANTIC_MODES)}.")
    return mode


def check_pooling(pooling: str) -> str:
    if pooling not in TEXT_POOLINGS:
        raise DataError(f"unknown text pooling {pooling!r}; expected one of {', '.join(TEXT_POOLINGS)}.")
    return pooling


def text_words(text: str) -> list[str]:
    """The words of a class text, lower case ("Blue-grey heron's crest" -> ["blue-grey", "heron's", "crest"])."""
    return WORD.findall(str(text).lower())


def embed_class_texts(texts: list[str], encoder: str = DEFAULT_ENCODER, pooling: str = "sentence", *,
                      labels: list[str] | None = None) -> np.ndarray:
    """C class texts -> (C, k) float32 unit rows, pooled as `pooling` says (module doc). With "words" each
    distinct word is encoded once (and cached like any text); DataError names a class whose text has no word."""
    check_pooling(pooling)
    labels = list(labels) if labels is not None else list(texts)
    if pooling == "sentence":
        return encode_texts(list(texts), encoder, labels=labels)
    words = [text_words(text) for text in texts]
    for label, found in zip(labels, words):
        if not found:
            raise DataError(f"class {label!r}: its text has no words (letters or digits) to embed; give the class "
                            "a description with words in it.")
    vocabulary = sorted({word for found in words for word in found})
    index = {word: i for i, word in enumerate(vocabulary)}
    vectors = encode_texts(vocabulary, encoder, labels=vocabulary).astype(np.float64)
    means = np.stack([vectors[[index[word] for word in found]].mean(0) for found in words])
    return unit_rows(means).astype(np.float32)


def read_descriptions_csv(path: str | Path) -> dict[str, str]:
    """CSV `class,description` (header optional, one row per class) -> {class: description}.

    DataError on a missing or non-UTF-8 file, a row without exactly two columns or a class given twice;
    an empty description is a warning (the row is skipped: that class's name is used)."""
    from bsegn.datasets.csv_rows import read_csv_rows

    path = Path(path)
    rows = read_csv_rows(path, "a CSV with one class,description row per class")
    if rows and [cell.lower() for cell in rows[0][1][:2]] == ["class", "description"]:
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: no class,description rows; write one row per class (quote descriptions that "
                        "contain commas).")
    descriptions: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) != 2:
            raise DataError(f"{path}, line {line}: {len(cells)} columns; expected class,description (put the "
                            "description in double quotes when it contains a comma).")
        name, description = cells
        if name in first_line:
            raise DataError(f"{path}, line {line}: class {name!r} appears twice (first on line {first_line[name]}); "
                            "keep one description per class.")
        first_line[name] = line
        if not description:
            logger.warning("%s, line %d (class %r): empty description; the class name is used instead. Write a "
                           "description or remove the row.", path, line, name)
            continue
        descriptions[name] = description
    return descriptions


def _match_descriptions(class_names: list[str], descriptions: dict[str, str], source: str) -> dict[int, str]:
    """{class id: description}; keys match a class by exact name, else by readable name."""
    exact = {name: i for i, name in enumerate(class_names)}
    readable: dict[str, int] = {}
    for i, name in enumerate(class_names):
        readable.setdefault(readable_name(name), i)
    out: dict[int, str] = {}
    for key, description in descriptions.items():
        class_id = exact.get(key, readable.get(readable_name(key)))
        if class_id is None:
            raise DataError(f"{source}: class {key!r} is not a class of this benchmark; spell it as in the split "
                            f"(e.g. {class_names[0]!r}) or remove its row.")
        if class_id in out:
            raise DataError(f"{source}: class {class_names[class_id]!r} is described twice ({key!r}); keep one row.")
        if not str(description).strip():
            raise DataError(f"{source}: class {key!r} has an empty description; write one or leave the class out "
                            "(its name is used).")
        out[class_id] = " ".join(str(description).split())
    return out


def class_texts(split: ZSLSplit, descriptions: dict[str, str] | str | Path | None = None) -> list[str]:
    """The text of each class: its description (argument, else split.descriptions), else its readable name.

    `descriptions` may be a dict or the path of a class,description CSV. DataError when a description
    names no class of the split, or when a class without one has only a placeholder name (FLO's
    class_001...), which carries no meaning."""
    source = "descriptions"
    if isinstance(descriptions, (str, Path)):
        source = str(descriptions)
        descriptions = read_descriptions_csv(descriptions)
    elif descriptions is None:
        descriptions = split.descriptions or {}
    by_id = _match_descriptions(split.class_names, dict(descriptions), source)
    texts = []
    for i, name in enumerate(split.class_names):
        if i not in by_id and PLACEHOLDER_NAME.match(name):
            raise DataError(f"{split.benchmark}: class {name!r} has no real name and no description; text semantics "
                            "need a descriptions file (CSV class,description) covering such classes.")
        texts.append(by_id.get(i, readable_name(name)))
    if by_id and len(by_id) < len(texts):
        logger.info("%s: %d of %d classes described; the others use their names", split.benchmark, len(by_id),
                    len(texts))
    return texts


def combine(attributes: np.ndarray, text: np.ndarray) -> np.ndarray:
    """The attributes+text vector(s): [a/|a|, t/|t|] / sqrt(2) per row (unit norm, halves weighted equally)."""
    attributes, text = np.atleast_2d(attributes), np.atleast_2d(text)
    return (np.concatenate([unit_rows(attributes), unit_rows(text)], axis=1) / math.sqrt(2.0)).astype(np.float32)


def apply_semantics(split: ZSLSplit, mode: str = "attributes", descriptions: dict[str, str] | str | Path | None = None,
                    encoder: str = DEFAULT_ENCODER, pooling: str | None = None) -> ZSLSplit:
    """`split` with its semantics taken from `mode` (see the module doc); a new ZSLSplit, `split` untouched.

    "attributes" returns `split` itself (DataError when it has no attribute vectors, e.g. a CSV with
    descriptions only). The text modes embed class_texts(split, descriptions) with `encoder`
    ("minilm" or "local-dir:PATH"; `mode` may also name it: "text@local-dir:PATH", see parse_semantics)
    pooled as `pooling` says ("sentence" or "words"; None: the module doc's rule, words for names alone and
    sentences where descriptions are given) and record the texts, the encoder and the pooling on the result."""
    mode, encoder = parse_semantics(mode, encoder)
    if pooling is not None:
        check_pooling(pooling)
    has_attributes = split.semantics.ndim == 2 and split.semantics.shape[1] > 0
    if mode != "text" and not has_attributes:
        raise DataError(f"{split.benchmark}: the class table ({', '.join(split.sources) or 'no file'}) has no "
                        f"attribute values, so semantics {mode!r} is impossible; use semantics 'text' (the "
                        "descriptions or class names), or add attribute columns.")
    if mode == "attributes":
        return split
    texts = class_texts(split, descriptions)
    described = sum(text != readable_name(name) for text, name in zip(texts, split.class_names))
    pooling = pooling or ("sentence" if described else "words")
    embeddings = embed_class_texts(texts, encoder, pooling, labels=split.class_names)
    spec = resolve_encoder(encoder)
    note = (f"semantics {mode}: {spec.id} ({embeddings.shape[1]}-d) embeddings of {described} descriptions and "
            f"{len(texts) - described} class names" + (", averaged over their words" if pooling == "words" else ""))
    if mode == "text":
        semantics, attribute_names, kind = embeddings, None, "text"
    else:
        semantics = combine(split.semantics, embeddings)
        attribute_names = None
        if split.attribute_names is not None:
            attribute_names = list(split.attribute_names) + [f"text:{j}" for j in range(embeddings.shape[1])]
        kind = f"{split.semantic_kind}+text"
    return dataclasses.replace(
        split, semantics=semantics, attribute_names=attribute_names, semantic_kind=kind,
        original_semantics=None, class_texts=texts, text_encoder=spec.name, text_encoder_id=spec.id,
        text_pooling=pooling, notes=list(split.notes) + [note])


def class_vector(mode: str, *, attributes=None, text: str | None = None, encoder: str = DEFAULT_ENCODER,
                 pooling: str = "sentence", name: str = "new class") -> np.ndarray:
    """The semantic vector of ONE class, made exactly as apply_semantics makes a split's: for adding a
    class to a trained model. `text`: its description (or readable name); `attributes`: its raw values
    (normalised here). DataError when what `mode` needs is missing."""
    check_mode(mode.replace("sentences+", "attributes+"))
    if mode != "text" and attributes is None:
        raise DataError(f"class {name!r}: semantics {mode!r} need its attribute values; give them.")
    if mode == "attributes":
        return unit_rows(np.asarray(attributes, dtype=np.float64).reshape(1, -1))[0]
    if text is None:
        raise DataError(f"class {name!r}: semantics {mode!r} need a description; give one (or its name).")
    embedding = embed_class_texts([text], encoder, pooling, labels=[name])
    if mode == "text":
        return embedding[0]
    return combine(np.asarray(attributes, dtype=np.float64).reshape(1, -1), embedding)[0]
