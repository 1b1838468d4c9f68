"""predict --explain: what the semantic decoder reads from an image, next to the predicted class's
semantic vector (attribute values; for text semantics the class texts nearest to what it reads)."""
from __future__ import annotations

from typing import Any


def explain_features(bundle, features, class_id: int, top: int = 5) -> dict[str, Any]:
    """What the semantic decoder reads from the image (a_hat) next to the class's vector."""
    import torch

    trained = bundle.trained
    if "decoder" not in trained.parts:
        return {"note": "this model has no semantic decoder (cycle switch off): nothing to explain"}
    with torch.no_grad():
        a_hat, _ = trained.parts["decoder"](features.reshape(1, -1))
    a_hat = a_hat[0].cpu()
    vector = trained.semantics[class_id].cpu()
    cosine = round(float(torch.nn.functional.cosine_similarity(a_hat, vector, dim=0)), 4)
    if bundle.text_dim:
        return {**explain_text(bundle, a_hat, class_id), "cosine": cosine}
    names = bundle.attribute_names or [f"dim{j}" for j in range(len(vector))]
    return {"attributes_read": _attributes_read(a_hat, vector, names, top), "cosine": cosine}


def _attributes_read(a_hat, vector, names: list[str], top: int) -> list[dict[str, Any]]:
    import torch

    order = torch.argsort(a_hat, descending=True)[:top].tolist()
    return [{"attribute": names[j], "read": round(float(a_hat[j]), 4), "class_value": round(float(vector[j]), 4)}
            for j in order]


def explain_text(bundle, a_hat, class_id: int, top: int = 3) -> dict[str, Any]:
    """For a model trained with text semantics: the predicted class's text, and the classes whose text
    embedding is nearest (cosine) to the text part of what the decoder reads from the image; with
    attributes+text also the attributes it reads (the attribute part)."""
    import torch

    start = bundle.trained.semantic_dim - bundle.text_dim
    semantics = bundle.trained.semantics.cpu()
    similarity = torch.nn.functional.cosine_similarity(a_hat[start:].reshape(1, -1), semantics[:, start:], dim=1)
    texts = bundle.class_texts or list(bundle.class_names)
    nearest = torch.argsort(similarity, descending=True)[:top].tolist()
    out: dict[str, Any] = {"class_text": texts[class_id], "nearest_texts": [
        {"class": bundle.class_names[c], "text": texts[c], "cosine": round(float(similarity[c]), 4)} for c in nearest]}
    if start:
        names = (bundle.attribute_names or [f"dim{j}" for j in range(start)])[:start]
        out["attributes_read"] = _attributes_read(a_hat[:start], semantics[class_id, :start], names, 5)
    return out
