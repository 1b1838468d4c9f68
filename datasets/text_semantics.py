"""Class semantics from words: the class names made readable, or a description per class, embedded by a
sentence encoder (bsegn.datasets.text_encoder), alone or beside the attributes.

    apply_semantics(split, mode, descriptions=None, encoder="minilm") -> ZSLSplit
    parse_semantics("text@local-dir:PATH") -> ("text", "local-dir:PATH")
    class_vector(mode, *, attributes=None, text=None, encoder="minilm", name="new class") -> (k,) float32
    class_texts(split, descriptions=None) -> C texts          readable_name(name) -> str
    read_descriptions_csv(path) -> {class: description}        (CSV class,description)

Modes (what ZSLSplit.semantics holds afterwards; ZSLSplit.semantic_kind records it):
* "attributes": the split as loaded (xlsa17 `att`, your CSV's attribute columns), unchanged;
* "text": the unit-norm text embedding of each class's text (384-d with MiniLM);
* "attributes+text": [a / |a|, t / |t|] / sqrt(2): the L2-normalised attribute vector and the text
  embedding side by side, each half of norm 1/sqrt(2), so the whole vector has unit norm like the
  attribute vectors and neither source outweighs the other whatever their dimensions (85 vs 384).

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
                    encoder: str = DEFAULT_ENCODER) -> ZSLSplit:
    """`split` with its semantics taken from `mode` (see the module doc); a new ZSLSplit, `split` untouched.

    "attributes" returns `split` itself (DataError when it has no attribute vectors, e.g. a CSV with
    descriptions only). The text modes embed class_texts(split, descriptions) with `encoder`
    ("minilm" or "local-dir:PATH"; `mode` may also name it: "text@local-dir:PATH", see parse_semantics)
    and record the texts and the encoder on the result."""
    mode, encoder = parse_semantics(mode, encoder)
    has_attributes = split.semantics.ndim == 2 and split.semantics.shape[1] > 0
    if mode != "text" and not has_attributes:
        raise DataError(f"{split.benchmark}: the class table ({', '.join(split.sources) or 'no file'}) has no "
                        f"attribute values, so semantics {mode!r} is impossible; use semantics 'text' (the "
                        "descriptions or class names), or add attribute columns.")
    if mode == "attributes":
        return split
    texts = class_texts(split, descriptions)
    embeddings = encode_texts(texts, encoder, labels=split.class_names)
    spec = resolve_encoder(encoder)
    described = sum(text != readable_name(name) for text, name in zip(texts, split.class_names))
    note = (f"semantics {mode}: {spec.id} ({embeddings.shape[1]}-d) embeddings of {described} descriptions and "
            f"{len(texts) - described} class names")
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
        notes=list(split.notes) + [note])


def class_vector(mode: str, *, attributes=None, text: str | None = None, encoder: str = DEFAULT_ENCODER,
                 name: str = "new class") -> np.ndarray:
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
    embedding = encode_texts([text], encoder, labels=[name])
    if mode == "text":
        return embedding[0]
    return combine(np.asarray(attributes, dtype=np.float64).reshape(1, -1), embedding)[0]
