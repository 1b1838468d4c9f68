"""What a new class is given as, checked against the bundle it joins, and turned into its semantic vector.

    classes = parse_new_classes(info, attributes="0.1,...", description=None, name="zebra")   -> [NewClass]
    rows = parse_attributes_csv("name,a1,...\nzebra,0.1,...", semantic_dim)                   the page's upload
    vector = class_vector_for(bundle, NewClass("zebra", description="a striped horse"))        -> (k,) tensor
    names = new_class_names(["zebra"], bundle.class_names)      the one name rule (class_name), unique ignoring case

An attribute bundle takes attribute values (`v1,v2,...` with a name, or a CSV `name,<attributes...>`);
a text bundle takes a description (`--description "WORDS"` with a name, or a CSV `name,description`);
an attributes+text bundle takes both, matched by name. Giving a bundle what its classes are not
described by is refused in one line before anything is parsed or encoded, never a shape error. A
description is embedded exactly as training embedded the class texts (text_semantics.class_vector),
with the bundle's encoder: an encoder of another identity is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bsegn.app.bundle.semantics import fields_from_config, uses_attributes, uses_text
from bsegn.core.errors import BundleError

MAX_CLASS_NAME = 100  # characters: a name is shown on one line of predict's output and of the page
MAX_DESCRIPTION = 10_000


class NameTaken(BundleError):
    """A new class's name is the model's already, or is given twice (names compared ignoring case)."""


@dataclass(frozen=True)
class NewClass:
    name: str
    attributes: list[float] | None = None
    description: str | None = None


def class_name(name, where: str) -> str:
    """The one rule for a new class's name, for the CLI, the page, the HTTP API and the Python API: text,
    trimmed, 1 to MAX_CLASS_NAME characters, every one printable (no newline, tab, escape or other control
    character: a name is printed on one line of predict's output and shown on the page). Returns it
    trimmed; BundleError saying what is wrong."""
    if not isinstance(name, str):
        raise BundleError(f"{where}: a class name must be text, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise BundleError(f"{where}: the class name is empty; give a name")
    if len(name) > MAX_CLASS_NAME:
        raise BundleError(f"{where}: the class name has {len(name)} characters; at most {MAX_CLASS_NAME} are allowed")
    if not name.isprintable():
        raise BundleError(f"{where}: the class name {name!r} holds a control or other non-printing character "
                          "(newline, tab, escape...); use letters, digits, spaces and punctuation")
    return name


def new_class_names(names: list, existing=(), where: str = "new class", *, earlier=()) -> list[str]:
    """`names` checked by class_name and unique ignoring case, among themselves, against `existing` (the
    model's classes) and against `earlier` (names given before in the same input); NameTaken for a repeat."""
    known = {n.casefold(): n for n in existing}
    model = set(known)
    known.update({n.casefold(): n for n in earlier})
    out = []
    for name in names:
        name = class_name(name, where)
        key = name.casefold()
        if key in model:
            raise NameTaken(f"{where}: class {name!r} is already in the model (as {known[key]!r}; names are compared "
                            "ignoring case); choose another name")
        if key in known:
            raise NameTaken(f"{where}: class {name!r} is given twice ({known[key]!r}); names are compared "
                            "ignoring case")
        known[key] = name
        out.append(name)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _float(value) -> float | None:
    """A value given as text or a JSON number, as a float; None when it is neither (a bool is no number)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


def _is_existing_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except OSError:  # e.g. 312 attribute values are one "name" longer than a file name may be
        return False


def _is_file_argument(value: str) -> bool:
    """A CSV path rather than values or words: an existing file, or a `.csv` name without spaces."""
    return _is_existing_file(value) or (value.lower().endswith(".csv") and not any(c.isspace() for c in value))


def _csv_rows(path: Path, expected: str) -> list[tuple[int, list[str]]]:
    from bsegn.datasets.csv_rows import read_csv_rows

    if not path.is_file():
        raise BundleError(f"{'attribute' if 'attribute' in expected else 'description'} file {path} does not exist")
    return read_csv_rows(path, expected)  # DataError naming the line of a non-UTF-8 byte


def attribute_values(values: list, semantic_dim: int, where: str, name: str = "the class") -> list[float]:
    """Attribute values given as text or numbers -> floats; BundleError unless there are semantic_dim
    numbers, each finite and representable as float32 (the model's type: 1e39 is refused)."""
    if len(values) != semantic_dim:
        raise BundleError(f"{where}: {len(values)} attribute values for {name!r}; this model's classes "
                          f"have {semantic_dim} (one per attribute, in the bundle's attribute order)")
    numbers = [_float(v) for v in values]
    if any(n is None for n in numbers):
        raise BundleError(f"{where}: attribute values for {name!r} must be numbers")
    vector = torch.tensor(numbers, dtype=torch.float32)  # the model's type: checked after
    if not bool(torch.isfinite(vector).all()):
        raise BundleError(f"{where}: attribute values for {name!r} contain NaN or infinity, or values too "
                          f"large for float32 (|v| > {torch.finfo(torch.float32).max:.3g})")
    return vector.tolist()


def attribute_rows(lines: list[tuple[int, list[str]]], semantic_dim: int, source: str) -> list[tuple[str, list[float]]]:
    """CSV rows `name,<attribute values...>` (read_csv_rows' (line, cells)) -> [(name, values)], names by
    the one rule. The first row is a header when none of its attribute cells is a number, and a data row
    otherwise (a typo in a value is then reported, not taken for a header), so no class is lost."""
    if lines and len(lines[0][1]) > 1 and not any(_is_number(cell) for cell in lines[0][1][1:]):
        lines = lines[1:]  # a header: `name,<attribute names...>` (a data row with a typo is no header)
    if not lines:
        raise BundleError(f"{source} holds no class rows; expected rows `name,<{semantic_dim} attribute values>` "
                          "(a header row `name,<attribute names...>` is optional)")
    out, names = [], []
    for number, cells in lines:
        where = f"{source}:{number}"
        name = new_class_names([cells[0]], where=where, earlier=names)[0]
        names.append(name)
        out.append((name, attribute_values(cells[1:], semantic_dim, where, name)))
    return out


def parse_attributes(value: str, semantic_dim: int, name: str | None = None) -> list[tuple[str, list[float]]]:
    """`v1,v2,...` (needs name) or a CSV file `name,<attribute columns...>` (attribute_rows: header rule,
    checks) -> [(name, values)]. BundleError when there is no class, a row has the wrong number of
    values, a value is not a number representable as float32, or a name breaks the rule or repeats."""
    path = Path(value)
    if path.suffix.lower() == ".csv" or _is_existing_file(value):
        return attribute_rows(_csv_rows(path, f"rows `name,<{semantic_dim} attribute values>`"), semantic_dim,
                              str(path))
    if not name:
        raise BundleError("--name is needed when --attributes is a list of values")
    name = class_name(name, "--name")
    return [(name, attribute_values(value.split(","), semantic_dim, "--attributes", name))]


def parse_attributes_csv(text: str, semantic_dim: int, source: str = "the CSV") -> list[tuple[str, list[float]]]:
    """parse_attributes for CSV text in memory (the page's upload): the same rows, header rule and checks."""
    from bsegn.datasets.csv_rows import csv_text_rows

    return attribute_rows(csv_text_rows(text), semantic_dim, source)


def parse_descriptions(value: str, name: str | None = None) -> list[tuple[str, str]]:
    """`WORDS` (needs name) or a CSV file `name,description` (header optional) -> [(name, description)].

    BundleError naming the row for: no row, a row without exactly two cells, an empty name or an
    empty / whitespace-only description, a name given twice (ignoring case); DataError for a file
    that is not UTF-8 (naming the line)."""
    if _is_file_argument(value):
        path = Path(value)
        lines = _csv_rows(path, "rows `name,description` (quote descriptions that contain commas)")
        if lines and [cell.lower() for cell in lines[0][1]] in (["name", "description"], ["class", "description"]):
            lines = lines[1:]
        if not lines:
            raise BundleError(f"{path} holds no class rows; expected rows `name,description` (a header row "
                              "`name,description` is optional)")
        rows = []
        for number, cells in lines:
            if len(cells) != 2:
                raise BundleError(f"{path}:{number}: {len(cells)} cells; expected `name,description` (put the "
                                  "description in double quotes when it contains a comma)")
            rows.append((cells[0], cells[1], f"{path}:{number}"))
    else:
        if not name:
            raise BundleError("--name is needed when --description is the description itself (not a CSV file)")
        rows = [(name, value, "--description")]
    out, names = [], []
    for given, description, where in rows:
        name = new_class_names([given], where=where, earlier=names)[0]
        names.append(name)
        description = " ".join(description.split())
        if not description:
            raise BundleError(f"{where}: the description of {name!r} is empty; write what the class looks like")
        if len(description) > MAX_DESCRIPTION or not description.isprintable():
            raise BundleError(f"{where}: the description of {name!r} must be at most {MAX_DESCRIPTION} printable "
                              "characters (no control characters)")
        out.append((name, description))
    return out


def check_given(kind: str, *, attributes: bool, description: bool, what: str = "--attributes") -> None:
    """One-line refusal when a class is given what the bundle's classes are not described by (or lacks
    what they are)."""
    if description and not uses_text(kind):
        raise BundleError(f"this model's classes are described by {kind} values, not in words (semantics {kind}): "
                          f"a description cannot place a new class; give its values with {what}")
    if attributes and not uses_attributes(kind):
        raise BundleError("this model's classes are described in words (semantics text), not by attribute values: "
                          'give the new class a description (--description "WORDS" or a CSV name,description)')
    if uses_text(kind) and not description:
        raise BundleError(f"this model (semantics {kind}) places a class by its description: give --description "
                          '"WORDS" with --name, or a CSV name,description' + (f", and {what}" if uses_attributes(kind)
                                                                            else ""))
    if uses_attributes(kind) and not attributes:
        raise BundleError(f"this model (semantics {kind}) needs the new class's attribute values: give {what}")


def parse_new_classes(info: dict, *, attributes: str | None = None, description: str | None = None,
                      name: str | None = None) -> list[NewClass]:
    """The classes `bsegn add-class` was given, for the bundle whose config.json is `info`."""
    fields = fields_from_config(info)
    kind = fields["semantic_kind"]
    check_given(kind, attributes=attributes is not None, description=description is not None)
    values = parse_attributes(attributes, fields["attribute_dim"], name) if attributes is not None else None
    words = parse_descriptions(description, name) if description is not None else None
    if values is None:
        return [NewClass(n, description=d) for n, d in words]
    if words is None:
        return [NewClass(n, attributes=v) for n, v in values]
    by_name = {n.casefold(): d for n, d in words}
    missing = [n for n, _ in values if n.casefold() not in by_name]
    extra = sorted(set(by_name) - {n.casefold() for n, _ in values})
    if missing or extra:
        lacking = "no description" if missing else "no attribute values"
        raise BundleError(f"class {(missing or extra)[0]!r} has {lacking}; "
                          "give every new class both (the same names in --attributes and --description)")
    return [NewClass(n, attributes=v, description=by_name[n.casefold()]) for n, v in values]


def normalised_like_bundle(bundle, vector: torch.Tensor, name: str) -> torch.Tensor:
    """xlsa17-style semantics are L2-normalised per class: a raw attribute vector is normalised the same way
    (in float64, so huge values do not overflow on the way); the result must be finite and not all zero."""
    norms = bundle.trained.semantics.norm(dim=1)
    if torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        norm = vector.double().norm()
        if not norm > 0:
            raise BundleError(f"{name!r}: an all-zero attribute vector cannot describe a class")
        vector = (vector.double() / norm).float()
    if not bool(torch.isfinite(vector).all()) or not bool(vector.abs().sum() > 0):
        raise BundleError(f"{name!r}: the attribute vector is all zero or not representable; give values on the "
                          "scale of the model's classes")
    return vector


def text_encoder_of(bundle, encoder: str | None = None) -> str:
    """The encoder to embed new descriptions with (`encoder`, else the bundle's); BundleError when its
    identity is not the one the bundle's class texts were embedded with."""
    from bsegn.datasets.text_encoder import resolve_encoder

    name = encoder or bundle.text_encoder
    spec = resolve_encoder(name)
    if spec.id != bundle.text_encoder_id:
        raise BundleError(f"text encoder {name!r} is {spec.id}, but this model's classes were embedded with "
                          f"{bundle.text_encoder_id}; give that encoder (--text-encoder minilm, or local-dir:PATH of "
                          "the same model)")
    return name


def class_vector_for(bundle, new: NewClass, encoder: str | None = None) -> torch.Tensor:
    """The semantic vector of `new` for `bundle` (float32, the bundle's semantic dim)."""
    kind = bundle.semantic_kind
    check_given(kind, attributes=new.attributes is not None, description=new.description is not None)
    attribute_dim = bundle.attribute_dim
    if attribute_dim is None:
        attribute_dim = bundle.trained.semantic_dim - bundle.text_dim
    if new.attributes is not None and len(new.attributes) != attribute_dim:
        raise BundleError(f"{new.name!r}: {len(new.attributes)} attribute values; the model needs {attribute_dim}")
    if not uses_text(kind):
        return normalised_like_bundle(bundle, torch.tensor(new.attributes, dtype=torch.float32), new.name)
    if not new.description.strip():
        raise BundleError(f"{new.name!r}: the description is empty; write what the class looks like")
    from bsegn.datasets.text_semantics import class_vector

    mode = "text" if kind == "text" else "attributes+text"
    vector = torch.as_tensor(class_vector(mode, attributes=new.attributes, text=new.description,
                                          encoder=text_encoder_of(bundle, encoder),
                                          pooling=bundle.text_pooling, name=new.name), dtype=torch.float32)
    if vector.shape != (bundle.trained.semantic_dim,) or not bool(torch.isfinite(vector).all()):
        raise BundleError(f"{new.name!r}: the encoder gave a {tuple(vector.shape)} vector; the model needs "
                          f"({bundle.trained.semantic_dim},) finite values")
    return vector
