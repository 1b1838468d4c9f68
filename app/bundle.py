"""The model bundle: everything `predict` and `add-class` need, in a folder that loads without
executing code.

    bundle/
      config.json        format + version, backbone identity and data config, class names, seen flags,
                         semantic matrix, attribute names, BSeGN metadata (its config, mFIM dims), the
                         classifiers' label spaces, the seen-or-unseen gate (kind, threshold) and the
                         unseen ranking, metrics, package versions, size and sha256 of model.safetensors
                         and a sha256 over config.json's own content
      model.safetensors  backbone.*  timm state_dict of the (fine-tuned) backbone
                         bsegn.*     TrainedBSeGN: generator, decoder, embedder, mFIM statistics
                         gzsl.* / zsl.*  final classifiers (all classes / unseen classes)
                         gate.*      the gate's fitted parts (app.bundle_gate; none for stacking)
                         replay.features / replay.labels  the real seen trainval features (float16), so
                                     add-class refits the GZSL classifier on the same real data as training
      README.md          model card

    save_bundle(bundle, folder); bundle = load_bundle(RUN_OR_BUNDLE_DIR)

The folder is written whole beside its place and renamed into it (core.files.atomic_folder). A
truncated or edited file, a bundle of another format version, or one whose content is not a valid
model (app.bundle_schema: fields, ranges, finite weights) raises BundleError with a message that says
what is wrong; nothing is unpickled, nothing is executed.
"""
from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bsegn.app.bundle_backbone import StoredBackbone, build_backbone
from bsegn.app.bundle_gate import gate_card_lines, gate_from_bundle
from bsegn.app.bundle_schema import check_bundle_config, check_finite_tensors
from bsegn.app.bundle_semantics import fields_from_config, record_of, semantic_fields, uses_text  # noqa: F401
from bsegn.core.errors import BundleError
from bsegn.core.files import (atomic_file, atomic_folder, digest_json, existing_folder, file_sha256, json_text,
                              remove_stale_temporaries)
from bsegn.core.locks import BundleLock
from bsegn.core.logs import get_logger

log = get_logger(__name__)

BUNDLE_FORMAT = "bsegn-bundle"
FORMAT_VERSION = 3  # 2: the lean BSeGNConfig, gamma and unseen_ranking beside it; 3: the gate replaces gamma
READABLE_VERSIONS = (FORMAT_VERSION,)  # 0.1.0 is the first release: no older format to read
CONFIG_NAME = "config.json"
MODEL_NAME = "model.safetensors"
FULL_DIGEST = 64  # hex digits: the whole sha256


@dataclass
class Bundle:
    """A loaded (or about to be saved) model.

    backbone: FeatureBackbone or None (feature-only bundles cannot read images).
    trained: TrainedBSeGN (its semantics (C, k), seen_classes, unseen_classes define the classes).
    gzsl: FinalClassifier over all C classes; zsl: FinalClassifier over the unseen classes.
    class_names: C names; gate: the DomainGate (bsegn.generative.gates) that decides seen or unseen, its
    threshold set (default: calibrated stacking at threshold 0, i.e. no correction);
    unseen_ranking: "gzsl" or "zsl" (the ZSL classifier re-ranks the unseen columns), as in training.
    train_features (M, d) float32 / train_labels (M,): the real seen trainval features (stored as replay.*).
    data_config: the timm data config the features were extracted with (input size included).
    """

    backbone: Any
    trained: Any
    gzsl: Any
    zsl: Any
    class_names: list[str]
    gate: Any = None
    unseen_ranking: str = "gzsl"  # which classifier names an unseen class in GZSL mode (run.unseen_ranking)
    attribute_names: list[str] | None = None
    data_config: dict[str, Any] = field(default_factory=dict)
    train_features: torch.Tensor | None = None  # add_class refits on these real seen trainval features
    train_labels: torch.Tensor | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)
    benchmark: str = ""
    semantic_kind: str = "attributes"  # attributes, sentences, text, attributes+text (app.bundle_semantics)
    text_encoder: str | None = None  # text semantics: the encoder as named ("minilm", "local-dir:PATH")
    text_encoder_id: str | None = None  # and its identity (a class added by description must use the same)
    text_pooling: str | None = None  # and how a class text became one vector ("sentence" when None)
    attribute_dim: int | None = None  # the attribute part of a semantic vector (None: all of it)
    text_dim: int = 0  # the text part (after the attribute part)
    class_texts: list[str] | None = None  # the text of every class (text semantics)
    path: Path | None = None  # the folder it was loaded from
    info: dict[str, Any] = field(default_factory=dict)  # config.json as read

    def __post_init__(self):
        if self.gate is None:
            from bsegn.generative.gates import StackingGate

            self.gate = StackingGate()
        if self.text_pooling is None and uses_text(self.semantic_kind):
            self.text_pooling = "sentence"  # what every text bundle did before pooling was recorded

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seen_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        mask[self.trained.seen_classes] = True
        return mask


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("bsegn", "torch", "timm", "safetensors", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def config_digest(config: dict[str, Any]) -> str:
    """The sha256 of config.json's content (every key but config_sha256 itself, key order ignored)."""
    return digest_json({k: v for k, v in config.items() if k != "config_sha256"}, length=FULL_DIGEST)


def save_bundle(bundle_or_folder, folder: str | os.PathLike | None = None, *, backbone=None, trained=None,
                classifier=None, zsl_classifier=None, class_names=None, attribute_names=None, data_config=None,
                gate=None, unseen_ranking: str = "gzsl", metrics=None, train_features=None,
                train_labels=None, benchmark: str = "", run_config=None, semantic_kind: str = "attributes",
                semantic: dict[str, Any] | None = None) -> Path:
    """Write model.safetensors, config.json (with both hashes) and README.md as one folder.

    Two call forms: save_bundle(bundle, folder), or save_bundle(folder, backbone=..., trained=...,
    classifier=GZSL FinalClassifier, class_names=..., data_config=..., gate=DomainGate (its threshold set;
    None: stacking at threshold 0), unseen_ranking=..., metrics=... (the card shows "domain_auroc" and
    "oracle_H" when present), train_features=(M, d) real seen trainval features, train_labels=(M,), ...);
    `semantic`: app.bundle_semantics.semantic_fields(split) (kind, encoder, dims, class texts).
    """
    if isinstance(bundle_or_folder, Bundle):
        bundle = bundle_or_folder
    else:
        folder = bundle_or_folder
        bundle = Bundle(backbone=backbone, trained=trained, gzsl=classifier, zsl=zsl_classifier,
                        class_names=list(class_names), gate=gate, unseen_ranking=unseen_ranking,
                        attribute_names=attribute_names, data_config=dict(data_config or {}),
                        metrics=dict(metrics or {}), run_config=dict(run_config or {}), benchmark=benchmark or "",
                        **(semantic or {"semantic_kind": semantic_kind}),
                        train_features=None if train_features is None else torch.as_tensor(train_features).float(),
                        train_labels=None if train_labels is None else torch.as_tensor(train_labels).long())
    folder = Path(folder)
    with BundleLock(folder):  # one writer at a time (add-class holds it already, from its read on)
        for stale in remove_stale_temporaries(folder):
            log.info("removed %s, left by a write to %s that was interrupted", stale, folder)
        with atomic_folder(folder) as temp:
            _write_bundle(bundle, temp)
    return folder


def _bundle_tensors(bundle: Bundle) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    if bundle.backbone is not None:
        tensors.update({f"backbone.{k}": v for k, v in bundle.backbone.model.state_dict().items()})
    tensors.update({f"bsegn.{k}": v for k, v in bundle.trained.state_dict().items()})
    tensors.update({f"gzsl.{k}": v for k, v in bundle.gzsl.state_dict().items()})
    if bundle.zsl is not None:
        tensors.update({f"zsl.{k}": v for k, v in bundle.zsl.state_dict().items()})
    if bundle.train_features is not None:
        tensors["replay.features"] = bundle.train_features.to(torch.float16)
        tensors["replay.labels"] = bundle.train_labels.to(torch.long)
    tensors.update({f"gate.{k}": v for k, v in bundle.gate.state_dict().items()})
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _write_bundle(bundle: Bundle, folder: Path) -> None:
    from safetensors.torch import save_file

    model_path = folder / MODEL_NAME
    with atomic_file(model_path) as temp:  # safetensors creates its file 0600; atomic_file gives the umask's mode
        save_file(_bundle_tensors(bundle), str(temp), metadata={"format": BUNDLE_FORMAT})
    backbone_info = None
    if bundle.backbone is not None:
        backbone_info = {"model_name": bundle.backbone.model_name, "weights_id": bundle.backbone.weights_id,
                         "num_features": bundle.backbone.num_features}
    config = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "benchmark": bundle.benchmark,
        "backbone": backbone_info,
        "data_config": bundle.data_config,
        "classes": [{"name": n, "seen": bool(s)} for n, s in zip(bundle.class_names, bundle.seen_mask.tolist())],
        "attribute_names": bundle.attribute_names,
        **record_of(bundle),
        "bsegn": bundle.trained.metadata(),  # its config, dims, semantic matrix, seen/unseen ids
        "gzsl_classes": bundle.gzsl.class_ids.tolist(),
        "zsl_classes": None if bundle.zsl is None else bundle.zsl.class_ids.tolist(),
        "gate": bundle.gate.metadata(),
        "unseen_ranking": bundle.unseen_ranking,
        "metrics": bundle.metrics,
        "run_config": bundle.run_config,
        "versions": package_versions(),
        "model_bytes": model_path.stat().st_size,
        "model_sha256": file_sha256(model_path),
    }
    config = json.loads(json_text(config))  # hashed exactly as it is written and read; a NaN metric is null
    config["config_sha256"] = config_digest(config)
    try:
        check_bundle_config(config, folder)  # a bundle that would not load is never written
    except BundleError as error:
        raise BundleError(f"the bundle was not written: its content is not valid ({error})") from None
    (folder / CONFIG_NAME).write_text(json_text(config, indent=1))
    (folder / "README.md").write_text(model_card(config))


def resolve_bundle_dir(path: str | os.PathLike) -> Path:
    """A bundle folder, or a run folder holding bundle/; `<name>.old` (the copy atomic_folder keeps until its
    swap is done) where a killed write left only that, with a warning."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file() and (path / MODEL_NAME).exists():
        return path
    for folder in (path, path / "bundle"):
        found = existing_folder(folder)
        if found is not None and (found / CONFIG_NAME).is_file() and (found / MODEL_NAME).exists():
            if found != folder:
                _warn_old_copy(folder, found)
            return found
    if not path.exists():
        raise BundleError(f"{path}: no such model; give a run folder (from train.py) or its bundle/ folder")
    raise BundleError(f"{path}: not a bundle (no {CONFIG_NAME} + {MODEL_NAME}, nor a bundle/ folder in it); "
                      "give the run folder train.py wrote or its bundle/")


_warned_old_copies: set[Path] = set()


def _warn_old_copy(folder: Path, found: Path) -> None:
    if found not in _warned_old_copies:  # once per copy: a command resolves its model more than once
        _warned_old_copies.add(found)
        log.warning("%s is missing: reading %s, the copy a write that was interrupted left (the next write to "
                    "%s puts the bundle back under its name)", folder, found, folder)


def read_bundle_config(folder: Path) -> dict[str, Any]:
    """config.json, checked: valid JSON, our format, a version we read, its own hash intact."""
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: damaged (not valid JSON: {error}); re-copy the bundle or re-run train.py") from None
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise BundleError(f"{path}: not a bsegn bundle config (format {found!r})")
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{folder}: bundle format version {version!r}, but this bsegn reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}; use the bsegn version that wrote it "
                          f"({config.get('versions', {}).get('bsegn')}) or re-run train.py")
    if config_digest(config) != config.get("config_sha256"):
        raise BundleError(f"{path}: content does not match its integrity hash: the file was edited or "
                          "damaged; re-copy the bundle (bsegn add-class writes a new valid one)")
    check_bundle_config(config, folder)  # a hash recomputed after an edit passes the line above, not this
    return config


def read_bundle_info(path: str | os.PathLike) -> dict[str, Any]:
    """The verified config.json of a bundle (or run folder), without loading any tensor."""
    return read_bundle_config(resolve_bundle_dir(path))


def load_bundle(path: str | os.PathLike, *, device: str | torch.device = "cpu", with_backbone: bool | str = True,
                with_train_features: bool = True) -> Bundle:
    """Load and verify a bundle (or run folder). Never executes code from the files.
    with_backbone: True builds the timm backbone; "tensors" keeps its weights as stored (a StoredBackbone:
    enough to write the bundle again, as add-class does, without importing timm); False drops it.
    with_train_features: keep the stored real seen features (add-class needs them; predict does not)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from bsegn.generative.model import TrainedBSeGN
    from bsegn.generative.networks import FinalClassifier

    folder = resolve_bundle_dir(path)
    config = read_bundle_config(folder)
    model_path = folder / MODEL_NAME
    if not model_path.is_file():
        raise BundleError(f"{folder}: {MODEL_NAME} is missing")
    size = model_path.stat().st_size
    if size != config.get("model_bytes"):
        raise BundleError(f"{model_path}: truncated or replaced ({size} bytes, {CONFIG_NAME} says "
                          f"{config.get('model_bytes')}); re-copy the bundle")
    if file_sha256(model_path) != config.get("model_sha256"):
        raise BundleError(f"{model_path}: its content does not match the sha256 in {CONFIG_NAME} (damaged or "
                          "edited); re-copy the bundle")
    try:
        tensors = load_file(str(model_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{model_path}: cannot be read ({error})") from None
    check_finite_tensors(tensors, model_path)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    try:
        trained = TrainedBSeGN.from_state(config["bsegn"], part("bsegn"))
        gzsl = FinalClassifier(trained.mfim.output_dim, config["gzsl_classes"])
        gzsl.load_state_dict(part("gzsl"))
        zsl = None
        if config.get("zsl_classes") is not None:
            zsl = FinalClassifier(trained.mfim.output_dim, config["zsl_classes"])
            zsl.load_state_dict(part("zsl"))
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise BundleError(f"{folder}: the model does not fit its config ({str(error)[:300]})") from None
    gate = gate_from_bundle(config, part("gate"), trained.mfim.output_dim, folder, decoder="decoder" in trained.parts)

    backbone = None
    data_config = config.get("data_config") or {}
    if with_backbone == "tensors" and config.get("backbone"):
        backbone = StoredBackbone(config["backbone"], part("backbone"))
    elif with_backbone and config.get("backbone"):
        backbone = build_backbone(config["backbone"], data_config, part("backbone"))
    replay = tensors.get("replay.features")
    bundle = Bundle(
        backbone=backbone, trained=trained.to(device).eval(), gzsl=gzsl.to(device).eval(),
        zsl=None if zsl is None else zsl.to(device).eval(),
        class_names=[c["name"] for c in config["classes"]], gate=gate,
        unseen_ranking=config.get("unseen_ranking", "gzsl"),
        attribute_names=config.get("attribute_names"), data_config=data_config,
        train_features=None if replay is None else replay.float(), train_labels=tensors.get("replay.labels"),
        metrics=config.get("metrics") or {}, run_config=config.get("run_config") or {},
        benchmark=config.get("benchmark", ""), **fields_from_config(config))
    if backbone is not None:
        bundle.backbone = backbone.to(device).eval()
    if not with_train_features:
        bundle.train_features = bundle.train_labels = None
    bundle.path, bundle.info = folder, config
    return bundle


def model_card(config: dict[str, Any]) -> str:
    """README.md: what the model is, what it was trained on, how well it did, how to use it."""
    classes = config["classes"]
    seen = [c["name"] for c in classes if c["seen"]]
    unseen = [c["name"] for c in classes if not c["seen"]]
    metrics = config.get("metrics") or {}
    backbone = config.get("backbone") or {}
    lines = [
        f"# bsegn model: {markdown_code(config.get('benchmark') or 'custom')}",
        "",
        "Generative zero-shot image classifier (BSeGN): a timm backbone turns an image into a feature; "
        "a final classifier trained on real seen-class features and BSeGN-synthesised unseen-class "
        "features (on multilevel mFIM features) names the class, including classes never seen in training.",
        "",
        "## Contents",
        f"- backbone: {markdown_code(backbone.get('model_name', 'none (feature-only bundle)'))} "
        f"(weights id {backbone.get('weights_id', '-')}, {backbone.get('num_features', '-')}-d features)",
        f"- input: {config.get('data_config', {}).get('input_size')}",
        f"- classes: {len(classes)} ({len(seen)} seen, {len(unseen)} unseen), "
        f"semantics: {config.get('semantic_kind')} of dimension {len(config['bsegn']['semantics'][0])}"
        + (f" (text encoder {markdown_code(config.get('text_encoder_id'))}, each class text embedded "
           f"{'as the mean of its words' if config.get('text_pooling') == 'words' else 'whole'})"
           if uses_text(config.get('semantic_kind')) else ""),
        f"- unseen classes: {', '.join(map(markdown_code, unseen[:30]))}{' ...' if len(unseen) > 30 else ''}",
        *gate_card_lines(config),
        f"- unseen classes ranked by the {config.get('unseen_ranking', 'gzsl').upper()} classifier",
        "",
        "## Results (percent; T1: ZSL mean per-class top-1 on unseen; U/S/H: GZSL)",
    ]
    if metrics:
        lines.append("| protocol | T1 | U | S | H |")
        lines.append("|---|---|---|---|---|")
        lines.append(f"| {metrics.get('protocol', '?')} | " + " | ".join(
            f"{metrics[key]:.1f}" if isinstance(metrics.get(key), (int, float)) else "-"
            for key in ("T1", "U", "S", "H"))
            + " |")
    else:
        lines.append("not evaluated")
    # a model trained on pre-extracted features has no backbone: nothing here reads an image with it
    use = ["predict IMAGE_OR_FOLDER --model THIS_FOLDER [--top-k 5] [--mode gzsl|zsl|seen] [--explain] [--json]"] \
        if config.get("backbone") else []
    lines += [
        "",
        "## Use",
        *([] if use else ["Trained on pre-extracted features, this bundle has no backbone: predict, bsegn serve and "
                          "the Python API cannot read images with it. Train from images for a model that does."]),
        "```",
        *use,
        _add_class_line(config.get("semantic_kind")),
        "```",
        "",
        "## Limits",
        "- Unseen classes are recognised from their semantic vectors only; quality depends on how well "
        "the attributes (or descriptions) describe them.",
        "- Images unlike the training domain give confident but meaningless answers.",
        "",
        f"Format {config['format']} v{config['format_version']}; written with {config.get('versions')}.",
        "",
    ]
    return "\n".join(lines)


def markdown_code(text) -> str:
    """`text` as a Markdown code span: shown as it is, never read as Markdown or HTML (a class name such as
    `<img src=x onerror=...>` stays text), fenced with more backticks than it holds in a row."""
    text = " ".join(str(text).split())  # a code span is one line
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _add_class_line(kind: str | None) -> str:
    words = '--description "WORDS" (or a CSV name,description)'
    given = words if kind == "text" else ("--attributes VALUES_OR_CSV " + words if uses_text(kind) else
                                          "--attributes VALUES_OR_CSV")
    return f"bsegn add-class --model THIS_FOLDER --name NAME {given} --out NEW_FOLDER"
