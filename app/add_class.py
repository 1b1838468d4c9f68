"""New unseen classes from their attribute vectors alone, without retraining: the point of zero-shot learning.

The bundled generator synthesises features for the new classes, and the final classifier is refitted
(seconds) on the bundle's real seen training features plus synthetic features of every unseen class,
exactly as in training. `remove_classes` is the inverse (for unseen classes).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from bsegn.app.bundle import CONFIG_NAME, Bundle, load_bundle, resolve_bundle_dir, save_bundle
from bsegn.core.errors import BundleError


def parse_attributes(value: str, semantic_dim: int, name: str | None = None) -> list[tuple[str, list[float]]]:
    """`v1,v2,...` (needs name) or a CSV file `name,<attribute columns...>` -> [(name, values)].

    The CSV's first row is a header when none of its attribute cells is a number, and a data row
    otherwise (a typo in a value is then reported, not taken for a header), so no class is lost. Raises BundleError when there is no class,
    a row has the wrong number of values, a value is not a number representable as float32 (the
    model's type: 1e39 is refused), or two names differ only in case."""
    path = Path(value)
    rows: list[tuple[str, list[str], str]] = []
    if path.suffix.lower() == ".csv" or path.is_file():
        if not path.is_file():
            raise BundleError(f"attribute file {path} does not exist")
        with open(path, newline="") as handle:
            lines = [(number, row) for number, row in enumerate(csv.reader(handle), start=1) if any(c.strip() for c in row)]
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
        if not class_name:
            raise BundleError(f"{where}: the class name is empty")
        if class_name.casefold() in names:
            raise BundleError(f"{where}: class {class_name!r} is given twice ({names[class_name.casefold()]!r}); names "
                              "are compared ignoring case")
        names[class_name.casefold()] = class_name
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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalised_like_bundle(bundle: Bundle, vector: torch.Tensor, name: str) -> torch.Tensor:
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


def _refit_and_save(bundle: Bundle, class_names: list[str], out: str | Path) -> Path:
    from bsegn.generative.classifier import fit_final_classifier
    from bsegn.generative.experiment import split_classes

    trained = bundle.trained
    if bundle.train_features is None:
        raise BundleError(f"{bundle.path} holds no training features; it cannot be refitted")
    all_classes = split_classes(trained.seen_classes, trained.unseen_classes)
    classifier = fit_final_classifier(trained, bundle.train_features.float(), bundle.train_labels, all_classes)
    zsl_classifier = fit_final_classifier(trained, None, None, trained.unseen_classes)  # unseen-only label space
    for fitted in (classifier, zsl_classifier):
        if not all(bool(torch.isfinite(v).all()) for v in fitted.state_dict().values()):
            raise BundleError("the refitted classifier is not finite: the new attribute values are far off the scale "
                              f"of the model's classes (max |value| {trained.semantics.abs().max():.3g}); nothing written")
    return save_bundle(out, backbone=bundle.backbone, trained=trained, classifier=classifier,
                       zsl_classifier=zsl_classifier,
                       class_names=class_names, attribute_names=bundle.attribute_names,
                       data_config=bundle.data_config, gamma=bundle.gamma, unseen_ranking=bundle.unseen_ranking,
                       metrics={"note": "classes changed after evaluation: metrics of the original model",
                                **{k: v for k, v in bundle.metrics.items() if k != "note"}},
                       train_features=bundle.train_features, train_labels=bundle.train_labels,
                       benchmark=bundle.info.get("benchmark", ""), run_config=bundle.info.get("run_config"),
                       semantic_kind=bundle.semantic_kind)


def output_folder(model: str | Path, out: str | Path | None, *, in_place: bool = False) -> Path:
    """Where add-class / remove-class write the new bundle (always whole: save_bundle's atomic_folder).

    Refused: `out` naming the bundle being read (the run folder or its bundle/, paths resolved) unless
    `in_place`; `out` holding that bundle (the run folder when the model is its bundle/: the whole run
    would be replaced) or inside it; `out` a file, or a non-empty folder that is not a bundle (replaced whole)."""
    source = resolve_bundle_dir(model).resolve()
    if out is None:
        if not in_place:
            raise BundleError("give --out FOLDER for the new bundle, or --in-place to replace the model")
        return source
    target = Path(out).resolve()
    if target in (source, Path(model).resolve()):
        if not in_place:
            raise BundleError(f"--out {out} is the model being read ({source}): it would be overwritten; give "
                              "another --out, or --in-place to replace it")
        return source
    if target in source.parents:
        raise BundleError(f"--out {out} holds the model being read ({source}) and would be replaced whole by the new "
                          "bundle; give another --out (or --in-place)")
    if source in target.parents:
        raise BundleError(f"--out {out} is inside the model being read ({source}); give a folder outside it")
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / CONFIG_NAME).is_file())):
        raise BundleError(f"--out {out} exists and is not a bsegn bundle; it would be replaced whole: give a new "
                          "or empty folder")
    return target


def add_classes(bundle_path: str | Path, new_classes: list[tuple[str, list[float]]], out: str | Path | None, *,
                in_place: bool = False) -> Path:
    """Append unseen classes [(name, attribute values)] to a bundle; write the result to `out` (see
    output_folder; `in_place`: replace the bundle read, atomically)."""
    out = output_folder(bundle_path, out, in_place=in_place)
    bundle = load_bundle(bundle_path, with_train_features=True)
    names = list(bundle.class_names)
    for name, values in new_classes:
        known = {n.casefold(): n for n in names}
        if name.casefold() in known:
            raise BundleError(f"class {name!r} is already in the model (as {known[name.casefold()]!r}; names are "
                              "compared ignoring case); choose another name")
        vector = torch.tensor(values, dtype=torch.float32)
        if vector.numel() != bundle.trained.semantic_dim:
            raise BundleError(f"{name!r}: {vector.numel()} values; the model needs {bundle.trained.semantic_dim}")
        bundle.trained.add_class(_normalised_like_bundle(bundle, vector, name))
        names.append(name)
    return _refit_and_save(bundle, names, out)


def remove_classes(bundle_path: str | Path, remove: list[str], out: str | Path | None, *,
                   in_place: bool = False) -> Path:
    """Drop unseen classes by name (seen classes have real training features and stay); `out`, `in_place`:
    as for add_classes."""
    from bsegn.generative.model import TrainedBSeGN

    out = output_folder(bundle_path, out, in_place=in_place)
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
