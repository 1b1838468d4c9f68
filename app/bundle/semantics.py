"""How a bundle's classes are described: attribute values, words (a sentence encoder's embedding of each
class's text), or both side by side (bsegn.datasets.text_semantics).

    semantic_fields(split) -> dict          Bundle fields of a trained split's semantics (run_outputs)
    fields_from_config(config) -> dict      the same, read back from config.json (older bundles: attributes)
    record_of(bundle) -> dict               what config.json records of a Bundle's semantics
    check_semantic_fields(config, folder, count, semantic_dim)   their schema (app.bundle.schema calls it)
    uses_text(kind) / uses_attributes(kind)

config.json holds `semantic_kind` ("attributes", "sentences", "text", "attributes+text", ...),
`attribute_dim` and `text_dim` (their sum is the semantic dimension; the attribute part comes first),
and, when text is used, `text_encoder` (as named: "minilm" or "local-dir:PATH"), `text_encoder_id`
(the model's identity: add-class refuses an encoder of another id), `text_pooling` ("sentence" or
"words": how a class text became one vector; absent in bundles written before it existed, which all
pooled "sentence") and `class_texts` (the text of every class, in class order). A bundle written before
these fields existed is an attribute bundle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bsegn.app.bundle.checks import MAX_DIM, invalid, require_choice, require_int, require_list, require_text

SEMANTIC_KINDS = ("attributes", "sentences", "text", "attributes+text", "sentences+text")


def uses_text(kind: str | None) -> bool:
    return kind == "text" or str(kind).endswith("+text")


def uses_attributes(kind: str | None) -> bool:
    return kind != "text"


def semantic_fields(split) -> dict[str, Any]:
    """The semantic record of a trained split (its semantics, kind, class texts and encoder)."""
    dim = int(split.semantics.shape[1])
    kind = split.semantic_kind
    if not uses_text(kind):
        return {"semantic_kind": kind, "text_encoder": None, "text_encoder_id": None, "text_pooling": None,
                "attribute_dim": dim, "text_dim": 0, "class_texts": None}
    text_dim = dim
    if kind != "text":  # the text part's width: one (cached, so no model is loaded) embedding of a class text
        from bsegn.datasets.text_encoder import encode_texts

        text_dim = int(encode_texts(list(split.class_texts[:1]), split.text_encoder).shape[1])
    return {"semantic_kind": kind, "text_encoder": split.text_encoder, "text_encoder_id": split.text_encoder_id,
            "text_pooling": split.text_pooling or "sentence", "attribute_dim": dim - text_dim, "text_dim": text_dim,
            "class_texts": list(split.class_texts)}


def fields_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """Bundle keyword arguments from a (checked) config.json; missing fields: an attribute bundle's."""
    dim = int(config["bsegn"]["semantic_dim"])
    texts = config.get("class_texts")
    return {"semantic_kind": config.get("semantic_kind") or "attributes",
            "text_encoder": config.get("text_encoder"), "text_encoder_id": config.get("text_encoder_id"),
            "text_pooling": config.get("text_pooling"),  # absent: Bundle makes it "sentence" for text bundles
            "attribute_dim": int(config.get("attribute_dim", dim)), "text_dim": int(config.get("text_dim", 0)),
            "class_texts": None if texts is None else list(texts)}


def record_of(bundle) -> dict[str, Any]:
    """What config.json records of `bundle`'s semantics (attribute_dim defaults to the semantic dim)."""
    dim = int(bundle.trained.semantic_dim)
    text_dim = int(bundle.text_dim or 0)
    return {"semantic_kind": bundle.semantic_kind, "text_encoder": bundle.text_encoder,
            "text_encoder_id": bundle.text_encoder_id,
            "text_pooling": bundle.text_pooling if uses_text(bundle.semantic_kind) else None,
            "attribute_dim": dim - text_dim if bundle.attribute_dim is None else int(bundle.attribute_dim),
            "text_dim": text_dim, "class_texts": None if bundle.class_texts is None else list(bundle.class_texts)}


def check_semantic_fields(config: dict[str, Any], folder: Path, count: int, semantic_dim: int) -> None:
    """semantic_kind, attribute_dim + text_dim = bsegn.semantic_dim, and for text semantics the encoder
    and one text per class (a bundle without these fields is an attribute bundle: fields_from_config)."""
    kind = require_choice(folder, "semantic_kind", config.get("semantic_kind", "attributes"), SEMANTIC_KINDS)
    text = uses_text(kind)
    if not text and "attribute_dim" not in config and "text_dim" not in config:
        return  # an older attribute bundle
    for key in ("attribute_dim", "text_dim"):
        if key not in config:
            raise invalid(folder, key, "is missing")
    attribute_dim = require_int(folder, "attribute_dim", config["attribute_dim"], 0, MAX_DIM)
    text_dim = require_int(folder, "text_dim", config["text_dim"], 0, MAX_DIM)
    if attribute_dim + text_dim != semantic_dim:
        raise invalid(folder, "text_dim", f"({text_dim}) plus attribute_dim ({attribute_dim}) must equal "
                                          f"bsegn.semantic_dim ({semantic_dim})")
    if (text_dim > 0) != text or (attribute_dim > 0) != uses_attributes(kind):
        raise invalid(folder, "attribute_dim / text_dim", f"({attribute_dim} / {text_dim}) do not fit semantic_kind "
                                                          f"{kind!r}")
    if not text:
        for key in ("text_encoder", "text_encoder_id", "text_pooling", "class_texts"):
            if config.get(key) is not None:
                raise invalid(folder, key, f"must be null for semantic_kind {kind!r}")
        return
    require_text(folder, "text_encoder", config.get("text_encoder"))
    require_text(folder, "text_encoder_id", config.get("text_encoder_id"))
    from bsegn.datasets.text_semantics import TEXT_POOLINGS

    if config.get("text_pooling") is not None:  # absent: written before pooling existed
        require_choice(folder, "text_pooling", config["text_pooling"], TEXT_POOLINGS)
    for index, value in enumerate(require_list(folder, "class_texts", config.get("class_texts"), count)):
        require_text(folder, f"class_texts[{index}]", value)
