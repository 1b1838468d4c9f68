"""What a new class is given as, checked against the bundle it joins, and turned into its semantic vector.

    classes = parse_new_classes(info, attributes="0.1,...", description=None, name="zebra")   -> [NewClass]
    vector = class_vector_for(bundle, NewClass("zebra", description="a striped horse"))        -> (k,) tensor

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

from bsegn.app.bundle_semantics import fields_from_config, uses_attributes, uses_text
from bsegn.core.errors import BundleError


@dataclass(frozen=True)
class NewClass:
    name: str
    attributes: list[float] | None = None
    description: str | None = None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_file_argument(value: str) -> bool:
    """A CSV path rather than values or words: an existing file, or a `.csv` name without spaces."""
    return Path(value).is_file() or (value.lower().endswith(".csv") and not any(c.isspace() for c in value))


def _csv_rows(path: Path, expected: str) -> list[tuple[int, list[str]]]:
    from bsegn.datasets.csv_rows import read_csv_rows

    if not path.is_file():
        raise BundleError(f"{'attribute' if 'attribute' in expected else 'description'} file {path} does not exist")
    return read_csv_rows(path, expected)  # DataError naming the line of a non-UTF-8 byte


def _unique(names: dict[str, str], class_name: str, where: str) -> None:
    if not class_name:
        raise BundleError(f"{where}: the class name is empty")
    if class_name.casefold() in names:
        raise BundleError(f"{where}: class {class_name!r} is given twice ({names[class_name.casefold()]!r}); names "
                          "are compared ignoring case")
    names[class_name.casefold()] = class_name


def parse_attributes(value: str, semantic_dim: int, name: str | None = None) -> list[tuple[str, list[float]]]:
    """`v1,v2,...` (needs name) or a CSV file `name,<attribute columns...>` -> [(name, values)].

    The CSV's first row is a header when none of its attribute cells is a number, and a data row
    otherwise (a typo in a value is then reported, not taken for a header), so no class is lost. Raises
    BundleError when there is no class, a row has the wrong number of values, a value is not a number
    representable as float32 (the model's type: 1e39 is refused), or two names differ only in case."""
    path = Path(value)
    rows: list[tuple[str, list[str], str]] = []
    if path.suffix.lower() == ".csv" or path.is_file():
        lines = _csv_rows(path, f"rows `name,<{semantic_dim} attribute values>`")
        if lines and len(lines[0][1]) > 1 and not any(_is_number(cell) for cell in lines[0][1][1:]):
            lines = lines[1:]  # a header: `name,<attribute names...>` (a data row with a typo is no header)
        if not lines:
            raise BundleError(f"{path} holds no class rows; expected rows `name,<{semantic_dim} attribute values>` "
                              "(a header row `name,<attribute names...>` is optional)")
        rows = [(row[0].strip(), row[1:], f"{path}:{number}") for number, row in lines]
    else:
        if not name:
            raise BundleError("--name is needed when --attributes is a list of values")
        rows.append((name.strip(), value.split(","), "--attributes"))
    out, names = [], {}
    for class_name, values, where in rows:
        _unique(names, class_name, where)
        if len(values) != semantic_dim:
            raise BundleError(f"{where}: {len(values)} attribute values for {class_name!r}; this model's classes "
                              f"have {semantic_dim} (one per attribute, in the bundle's attribute order)")
        if not all(_is_number(v) for v in values):
            raise BundleError(f"{where}: attribute values for {class_name!r} must be numbers")
        vector = torch.tensor([float(v) for v in values], dtype=torch.float32)  # the model's type: checked after
        if not bool(torch.isfinite(vector).all()):
            raise BundleError(f"{where}: attribute values for {class_name!r} contain NaN or infinity, or values too "
                              f"large for float32 (|v| > {torch.finfo(torch.float32).max:.3g})")
        out.append((class_name, vector.tolist()))
    return out


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
        rows = [(name.strip(), value, "--description")]
    out, names = [], {}
    for class_name, description, where in rows:
        _unique(names, class_name, where)
        if not description.strip():
            raise BundleError(f"{where}: the description of {class_name!r} is empty; write what the class looks like")
        out.append((class_name, " ".join(description.split())))
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
        raise BundleError(f"class {(missing or extra)[0]!r} has {'no description' if missing else 'no attribute values'}; "
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
    attribute_dim = bundle.trained.semantic_dim - bundle.text_dim if bundle.attribute_dim is None else bundle.attribute_dim
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
