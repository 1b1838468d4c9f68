"""New unseen classes from their semantics alone (attribute values, or a description for a model trained
with text semantics), without retraining: the point of zero-shot learning.

The bundled generator synthesises features for the new classes, and the final classifier is refitted
(seconds) on the bundle's real seen training features plus synthetic features of every unseen class,
exactly as in training. A gate fitted on synthetic features of every class (its registry entry says
refit_when_classes_change: learned, cosmo, combined) is refitted too, keeping its threshold, so that a class
added later is reachable; the other gates read the seen classes only and stay. Each added class's
reachability is reported: the share of its synthetic features the gate calls unseen (a warning naming the
class below REACHABLE). `remove_classes` is the inverse (for
unseen classes). What a new class may be given, and how it becomes a semantic vector:
bsegn.app.class_inputs.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from bsegn.app.bundle import Bundle, load_bundle, resolve_bundle_dir, save_bundle
from bsegn.app.class_inputs import NewClass, class_vector_for, new_class_names, parse_attributes  # noqa: F401
from bsegn.core.errors import BundleError
from bsegn.core.files import OLD_SUFFIX
from bsegn.core.locks import BundleLock
from bsegn.core.logs import get_logger

log = get_logger(__name__)
REACHABLE = 0.5  # below this share of its synthetic features called unseen, an added class gets a warning


def refit_classifiers(bundle: Bundle, trained=None):
    """The GZSL (all classes) and ZSL (unseen only) classifiers refitted for `trained` (default: the
    bundle's) on the bundle's training features; BundleError when the fit is not finite."""
    from bsegn.generative.classifier import fit_final_classifier
    from bsegn.generative.experiment import split_classes

    trained = trained if trained is not None else bundle.trained
    if bundle.train_features is None:
        raise BundleError(f"{bundle.path} holds no training features; it cannot be refitted")
    all_classes = split_classes(trained.seen_classes, trained.unseen_classes)
    classifier = fit_final_classifier(trained, bundle.train_features.float(), bundle.train_labels, all_classes)
    zsl_classifier = fit_final_classifier(trained, None, None, trained.unseen_classes)  # unseen-only label space
    for fitted in (classifier, zsl_classifier):
        if not all(bool(torch.isfinite(v).all()) for v in fitted.state_dict().values()):
            raise BundleError("the refitted classifier is not finite: the new attribute values are far off the scale "
                              f"of the model's classes (max |value| {trained.semantics.abs().max():.3g}); "
                              "nothing written")
    return classifier, zsl_classifier


def refit_gate(bundle: Bundle, trained=None, classifiers=None):
    """The bundle's gate for `trained`'s classes: a gate whose kind is refit_when_classes_change refitted on the
    bundle's training features and synthetic features of every class (its threshold and p_unseen's temperature
    kept; the old gate goes to the fit as `previous`, whose parts that read the seen classes only a kind may
    keep); any other gate as it is. classifiers: the refitted (gzsl, zsl) a gate that reads the classifiers'
    scores is fitted under (default the bundle's)."""
    from bsegn.generative.experiment import split_classes
    from bsegn.generative.gates import fit_gate, gate_class

    trained = trained if trained is not None else bundle.trained
    if not gate_class(bundle.gate.kind).refit_when_classes_change:
        return bundle.gate
    if bundle.train_features is None:
        raise BundleError(f"{bundle.path} holds no training features; its {bundle.gate.kind} gate cannot be refitted")
    gate = fit_gate(bundle.gate.kind, trained, bundle.train_features.float(), bundle.train_labels,
                    split_classes(trained.seen_classes, trained.unseen_classes),
                    classifiers=classifiers or (bundle.gzsl, bundle.zsl), unseen_ranking=bundle.unseen_ranking,
                    previous=bundle.gate)
    gate.threshold, gate.temperature = bundle.gate.threshold, bundle.gate.temperature
    return gate


def reachability(trained, gzsl, zsl, gate, class_ids, names, unseen_ranking: str = "gzsl") -> dict[str, float]:
    """{name: the share of the class's trained.config.syn_num synthetic features that `gate` calls unseen}
    for each of `class_ids`; a warning naming each class below REACHABLE."""
    from bsegn.generative.gates import gate_inputs

    class_ids = [int(c) for c in class_ids]
    fake, labels = trained.synthesize(class_ids, trained.config.syn_num, seed=trained.seed + 21)
    unseen = gate.unseen(gate_inputs(trained, gzsl, zsl, fake, unseen_ranking=unseen_ranking, kinds=[gate.kind]))
    shares = {}
    for class_id, name in zip(class_ids, names):
        shares[name] = float(unseen[labels.cpu() == class_id].float().mean())
        if shares[name] < REACHABLE:
            log.warning("class %r is hard to reach: the %s gate calls only %.0f%% of its synthetic features unseen, so "
                        "its images will mostly be named as a seen class; check its attribute values (or lower the "
                        "gate's threshold with predict --threshold)", name, gate.kind, 100 * shares[name])
    return shares


def changed_metrics(metrics: dict) -> dict:
    """The card's metrics after classes changed: the original model's, with a note saying so."""
    return {"note": "classes changed after evaluation: metrics of the original model",
            **{k: v for k, v in metrics.items() if k != "note"}}


def _refitted(bundle: Bundle, trained, class_names: list[str], class_texts, added: int = 0) -> Bundle:
    """A new Bundle: `bundle` with `trained`'s classes (named `class_names`), its classifiers and gate
    refitted; the reachability of the last `added` classes reported. `bundle` itself is not changed."""
    classifier, zsl_classifier = refit_classifiers(bundle, trained)
    gate = refit_gate(bundle, trained, (classifier, zsl_classifier))
    if added:
        shares = reachability(trained, classifier, zsl_classifier, gate, range(len(class_names) - added,
                              len(class_names)), class_names[-added:], bundle.unseen_ranking)
        log.info("reachability (share of synthetic features the %s gate calls unseen): %s", gate.kind,
                 ", ".join(f"{name} {100 * share:.0f}%" for name, share in shares.items()))
    return dataclasses.replace(bundle, trained=trained.eval(), gzsl=classifier.eval(), zsl=zsl_classifier.eval(),
                               gate=gate, class_names=list(class_names), class_texts=class_texts,
                               open_world=refit_rule(bundle, trained, classifier),
                               metrics=changed_metrics(bundle.metrics))


def refit_rule(bundle: Bundle, trained, classifier):
    """The bundle's open-world rule fitted again to the changed class list (None stays None): a class the rule
    never saw would otherwise be answered "unknown" (bsegn.generative.open_world.refit_open_world)."""
    from bsegn.generative.open_world import refit_open_world

    if bundle.open_world is None:
        return None
    return refit_open_world(bundle.open_world, trained, classifier, bundle.train_features, bundle.train_labels)


def extended(bundle: Bundle, new_classes: list, text_encoder: str | None = None) -> Bundle:
    """`bundle` with unseen classes appended (a new Bundle; `bundle` is not changed, so a server keeps
    answering with it meanwhile): NewClass(name, attributes, description) items or (name, attribute
    values) pairs, names by the one rule (class_inputs.new_class_names: trimmed, printable, unique
    ignoring case), every vector made before anything is refitted."""
    new_classes = [c if isinstance(c, NewClass) else NewClass(c[0], attributes=list(c[1])) for c in new_classes]
    names = new_class_names([c.name for c in new_classes], bundle.class_names)
    trained = copy.deepcopy(bundle.trained)
    for new, name in zip(new_classes, names):
        trained.add_class(class_vector_for(bundle, dataclasses.replace(new, name=name), text_encoder))
    texts = None if bundle.class_texts is None else list(bundle.class_texts) + [c.description for c in new_classes]
    return _refitted(bundle, trained, list(bundle.class_names) + names, texts, added=len(names))


def _source_folder(model: str | Path) -> Path:
    """The folder the bundle of `model` lives in (resolved): `<name>` also when only `<name>.old`, the copy
    a killed write leaves, is there to read (a write puts the bundle back under its name)."""
    found = resolve_bundle_dir(model)
    if found.name.endswith(OLD_SUFFIX) and found != Path(model):
        found = found.with_name(found.name[:-len(OLD_SUFFIX)])
    return found.resolve()


def output_folder(model: str | Path, out: str | Path | None, *, in_place: bool = False) -> Path:
    """Where add-class / remove-class write the new bundle (always whole: save_bundle's atomic_folder).

    Refused: `out` naming the bundle being read (the run folder or its bundle/, paths resolved) unless
    `in_place`; `out` holding that bundle (the run folder when the model is its bundle/: the whole run
    would be replaced) or inside it; `out` a file, another bundle, or a non-empty folder (replaced whole)."""
    source = _source_folder(model)
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
    check_new_folder(target, out)
    return target


def check_new_folder(target: Path, given: str | Path) -> None:
    """BundleError unless `target` is free for a new bundle: absent (no `.old` copy either) or an empty folder;
    a bundle there (or a run folder holding one) is named as such."""
    try:
        resolve_bundle_dir(target)  # a bundle, a run folder with one, or the `.old` copy a killed write left
    except BundleError:
        pass
    else:
        raise BundleError(f"--out {given} already holds a bundle, which would be replaced: give a new or empty "
                          f"folder (to change that bundle, give it as --model with --in-place)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BundleError(f"--out {given} exists and is not an empty folder; it would be replaced whole: give a new "
                          "or empty folder")


def _write(model: str | Path, out: Path, change) -> Path:
    """Read the bundle of `model`, `change` it, write it to `out`, all under out's lock (a second writer
    waits or is refused naming the holder: never a lost update); stale temporaries of killed writes go."""
    with BundleLock(out):
        if out != _source_folder(model):
            check_new_folder(out, out)  # again under the lock: another writer may have got there first
        bundle = load_bundle(model, with_backbone="tensors", with_train_features=True)  # written back as read
        return save_bundle(change(bundle), out)


def add_classes(bundle_path: str | Path, new_classes: list, out: str | Path | None, *, in_place: bool = False,
                text_encoder: str | None = None) -> Path:
    """Append unseen classes to a bundle: NewClass(name, attributes, description) items, or (name, attribute
    values) pairs; write the result to `out` (see output_folder; `in_place`: replace the bundle read,
    atomically). Every class is checked and embedded before anything is written. `text_encoder`: the
    encoder for descriptions (default: the bundle's; its identity must be the bundle's)."""
    out = output_folder(bundle_path, out, in_place=in_place)
    return _write(bundle_path, out, lambda bundle: extended(bundle, new_classes, text_encoder))


def remove_classes(bundle_path: str | Path, remove: list[str], out: str | Path | None, *,
                   in_place: bool = False) -> Path:
    """Drop unseen classes by name (seen classes have real training features and stay); `out`, `in_place`:
    as for add_classes."""
    out = output_folder(bundle_path, out, in_place=in_place)
    return _write(bundle_path, out, lambda bundle: _without(bundle, remove))


def _without(bundle: Bundle, remove: list[str]) -> Bundle:
    from bsegn.generative.model import TrainedBSeGN

    trained = bundle.trained
    # names compared ignoring case, as add-class compares them
    position = {name.casefold(): i for i, name in enumerate(bundle.class_names)}
    unknown = [n for n in remove if n.strip().casefold() not in position]
    if unknown:
        raise BundleError(f"no class named {', '.join(map(repr, unknown))} in {bundle.path} (names are compared "
                          "ignoring case)")
    drop = {position[n.strip().casefold()] for n in remove}
    if drop & set(trained.seen_classes.tolist()):
        raise BundleError("only unseen classes can be removed (seen classes are part of the trained model)")
    keep = [c for c in range(trained.num_classes) if c not in drop]
    new_id = {old: new for new, old in enumerate(keep)}
    meta = trained.metadata()
    meta["semantics"] = trained.semantics[keep].tolist()
    meta["seen_classes"] = [new_id[c] for c in trained.seen_classes.tolist()]
    meta["unseen_classes"] = [new_id[c] for c in trained.unseen_classes.tolist() if c in new_id]
    relabelled = dataclasses.replace(bundle, train_labels=torch.tensor(
        [new_id[int(c)] for c in bundle.train_labels.tolist()], dtype=torch.long))
    texts = None if bundle.class_texts is None else [bundle.class_texts[c] for c in keep]
    return _refitted(relabelled, TrainedBSeGN.from_state(meta, trained.state_dict()),
                     [bundle.class_names[c] for c in keep], texts)
