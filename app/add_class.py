"""New unseen classes from their attribute vectors alone, without retraining: the point of zero-shot learning.

The bundled generator synthesises features for the new classes, and the final classifier is refitted
(seconds) on the bundle's real seen training features plus synthetic features of every unseen class,
exactly as in training. `remove_classes` is the inverse (for unseen classes).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from bsegn.app.bundle import Bundle, load_bundle, save_bundle
from bsegn.core.errors import BundleError


def parse_attributes(value: str, semantic_dim: int, name: str | None = None) -> list[tuple[str, list[float]]]:
    """`v1,v2,...` (needs name) or a CSV file `name,<attribute columns...>` -> [(name, values)].
    Raises BundleError when a row has the wrong number of values or a value is not a finite number."""
    path = Path(value)
    rows: list[tuple[str, list[str]]] = []
    if path.suffix.lower() == ".csv" or path.is_file():
        if not path.is_file():
            raise BundleError(f"attribute file {path} does not exist")
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise BundleError(f"{path} is empty; expected a header `name,<attribute columns...>`")
            for line, row in enumerate(reader, start=2):
                if row:
                    rows.append((row[0].strip(), row[1:], f"{path}:{line}"))
    else:
        if not name:
            raise BundleError("--name is needed when --attributes is a list of values")
        rows.append((name, value.split(","), "--attributes"))
    out = []
    for class_name, values, where in rows:
        if len(values) != semantic_dim:
            raise BundleError(f"{where}: {len(values)} attribute values for {class_name!r}; this model's classes "
                              f"have {semantic_dim} (one per attribute, in the bundle's attribute order)")
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            raise BundleError(f"{where}: attribute values for {class_name!r} must be numbers") from None
        if not all(math.isfinite(v) for v in numbers):
            raise BundleError(f"{where}: attribute values for {class_name!r} contain NaN or infinity")
        out.append((class_name, numbers))
    return out


def _normalised_like_bundle(bundle: Bundle, vector: torch.Tensor) -> torch.Tensor:
    """xlsa17-style semantics are L2-normalised per class: a raw attribute vector is normalised the same way."""
    norms = bundle.trained.semantics.norm(dim=1)
    if torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        if vector.norm() == 0:
            raise BundleError("an all-zero attribute vector cannot describe a class")
        return vector / vector.norm()
    return vector


def _refit_and_save(bundle: Bundle, class_names: list[str], out: str | Path) -> Path:
    from bsegn.generative.classifier import fit_final_classifier
    from bsegn.generative.experiment import split_classes

    trained = bundle.trained
    if bundle.train_features is None:
        raise BundleError(f"{bundle.path} holds no training features; it cannot be refitted")
    all_classes = split_classes(trained.seen_classes, trained.unseen_classes)
    classifier = fit_final_classifier(trained, bundle.train_features.float(), bundle.train_labels, all_classes)
    zsl_classifier = fit_final_classifier(trained, None, None, trained.unseen_classes)  # unseen-only label space
    return save_bundle(out, backbone=bundle.backbone, trained=trained, classifier=classifier,
                       zsl_classifier=zsl_classifier,
                       class_names=class_names, attribute_names=bundle.attribute_names,
                       data_config=bundle.data_config, gamma=bundle.gamma, unseen_ranking=bundle.unseen_ranking,
                       metrics={"note": "classes changed after evaluation: metrics of the original model",
                                **{k: v for k, v in bundle.metrics.items() if k != "note"}},
                       train_features=bundle.train_features, train_labels=bundle.train_labels,
                       benchmark=bundle.info.get("benchmark", ""), run_config=bundle.info.get("run_config"),
                       semantic_kind=bundle.semantic_kind)


def add_classes(bundle_path: str | Path, new_classes: list[tuple[str, list[float]]], out: str | Path) -> Path:
    """Append unseen classes [(name, attribute values)] to a bundle; write the result to `out`."""
    bundle = load_bundle(bundle_path, with_train_features=True)
    names = list(bundle.class_names)
    for name, values in new_classes:
        if name in names:
            raise BundleError(f"class {name!r} is already in the model; choose another name")
        vector = torch.tensor(values, dtype=torch.float32)
        if vector.numel() != bundle.trained.semantic_dim:
            raise BundleError(f"{name!r}: {vector.numel()} values; the model needs {bundle.trained.semantic_dim}")
        bundle.trained.add_class(_normalised_like_bundle(bundle, vector))
        names.append(name)
    return _refit_and_save(bundle, names, out)


def remove_classes(bundle_path: str | Path, remove: list[str], out: str | Path) -> Path:
    """Drop unseen classes by name (seen classes have real training features and stay)."""
    from bsegn.generative.model import TrainedBSeGN

    bundle = load_bundle(bundle_path, with_train_features=True)
    trained = bundle.trained
    unknown = [n for n in remove if n not in bundle.class_names]
    if unknown:
        raise BundleError(f"no class named {', '.join(map(repr, unknown))} in {bundle.path}")
    drop = {bundle.class_names.index(n) for n in remove}
    if drop & set(trained.seen_classes.tolist()):
        raise BundleError("only unseen classes can be removed (seen classes are part of the trained model)")
    keep = [c for c in range(trained.num_classes) if c not in drop]
    new_id = {old: new for new, old in enumerate(keep)}
    meta = trained.metadata()
    meta["semantics"] = trained.semantics[keep].tolist()
    meta["seen_classes"] = [new_id[c] for c in trained.seen_classes.tolist()]
    meta["unseen_classes"] = [new_id[c] for c in trained.unseen_classes.tolist() if c in new_id]
    bundle.trained = TrainedBSeGN.from_state(meta, trained.state_dict())
    bundle.train_labels = torch.tensor([new_id[int(c)] for c in bundle.train_labels.tolist()], dtype=torch.long)
    return _refit_and_save(bundle, [bundle.class_names[c] for c in keep], out)
