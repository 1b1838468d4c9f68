"""The model bundle: everything `predict` and `add-class` need, in a folder that loads without
executing code.

    bundle/
      config.json        format + version, backbone identity and data config, class names, seen flags,
                         semantic matrix, attribute names, BSeGN metadata (config, mFIM dims), the
                         classifiers' label spaces, calibration gamma, metrics, package versions,
                         sha256 of model.safetensors and a sha256 over config.json's own content
      model.safetensors  backbone.*  timm state_dict of the (fine-tuned) backbone
                         bsegn.*     TrainedBSeGN: generator, decoder, embedder, mFIM statistics
                         gzsl.* / zsl.*  final classifiers (all classes / unseen classes)
                         replay.features / replay.labels  the real seen trainval features (float16), so
                                     add-class refits the GZSL classifier on the same real data as training
      README.md          model card

    save_bundle(bundle, folder); bundle = load_bundle(RUN_OR_BUNDLE_DIR)

A truncated or edited file, or a bundle of another format version, raises BundleError (a
DataError) with a message that says what is wrong; nothing is unpickled, nothing is executed.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bsegn.datasets.splits import DataError

BUNDLE_FORMAT = "bsegn-bundle"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
MODEL_NAME = "model.safetensors"


class BundleError(DataError):
    """A bundle is missing, damaged, edited or of an incompatible format version."""


@dataclass
class Bundle:
    """A loaded (or about to be saved) model.

    backbone: FeatureBackbone or None (feature-only bundles cannot read images).
    trained: TrainedBSeGN (its semantics (C, k), seen_classes, unseen_classes define the classes).
    gzsl: FinalClassifier over all C classes; zsl: FinalClassifier over the unseen classes.
    class_names: C names; gamma: calibrated-stacking offset subtracted from seen log-probabilities.
    replay_features (M, d) float32 / replay_labels (M,): real seen training features.
    data_config: the timm data config the features were extracted with (input size included).
    """

    backbone: Any
    trained: Any
    gzsl: Any
    zsl: Any
    class_names: list[str]
    gamma: float = 0.0
    attribute_names: list[str] | None = None
    data_config: dict[str, Any] = field(default_factory=dict)
    replay_features: torch.Tensor | None = None
    replay_labels: torch.Tensor | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)
    benchmark: str = ""
    semantic_kind: str = "attributes"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seen_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        mask[self.trained.seen_classes] = True
        return mask

    path: Path | None = None  # the folder it was loaded from
    info: dict[str, Any] = field(default_factory=dict)  # config.json as read

    # add_class refits on these: all real seen trainval features the run kept
    @property
    def train_features(self) -> torch.Tensor | None:
        return self.replay_features

    @train_features.setter
    def train_features(self, value) -> None:
        self.replay_features = None if value is None else torch.as_tensor(value, dtype=torch.float32)

    @property
    def train_labels(self) -> torch.Tensor | None:
        return self.replay_labels

    @train_labels.setter
    def train_labels(self, value) -> None:
        self.replay_labels = None if value is None else torch.as_tensor(value, dtype=torch.long)

    def class_index(self, name: str) -> int:
        lowered = [n.lower() for n in self.class_names]
        if name.lower() not in lowered:
            raise BundleError(f"no class named {name!r} in this bundle ({self.num_classes} classes)")
        return lowered.index(name.lower())


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("bsegn", "torch", "timm", "safetensors", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _canonical(config: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in config.items() if k != "config_sha256"}, sort_keys=True).encode()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(bundle_or_folder, folder: str | os.PathLike | None = None, *, backbone=None, trained=None,
                classifier=None, zsl_classifier=None, class_names=None, attribute_names=None, data_config=None,
                gamma: float = 0.0, metrics=None, train_features=None, train_labels=None, benchmark: str = "",
                run_config=None, semantic_kind: str = "attributes") -> Path:
    """Write model.safetensors, config.json (with both hashes) and README.md into a folder.

    Two call forms: save_bundle(bundle, folder), or save_bundle(folder, backbone=..., trained=...,
    classifier=GZSL FinalClassifier, class_names=..., data_config=..., gamma=..., metrics=...,
    train_features=(M, d) real seen trainval features, train_labels=(M,), ...).
    """
    from safetensors.torch import save_file

    if isinstance(bundle_or_folder, Bundle):
        bundle = bundle_or_folder
    else:
        folder = bundle_or_folder
        bundle = Bundle(backbone=backbone, trained=trained, gzsl=classifier, zsl=zsl_classifier,
                        class_names=list(class_names), gamma=float(gamma or 0.0), attribute_names=attribute_names,
                        data_config=dict(data_config or {}), metrics=dict(metrics or {}),
                        run_config=dict(run_config or {}), benchmark=benchmark or "", semantic_kind=semantic_kind)
        bundle.train_features = train_features
        bundle.train_labels = train_labels
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    if bundle.backbone is not None:
        tensors.update({f"backbone.{k}": v for k, v in bundle.backbone.model.state_dict().items()})
    tensors.update({f"bsegn.{k}": v for k, v in bundle.trained.state_dict().items()})
    tensors.update({f"gzsl.{k}": v for k, v in bundle.gzsl.state_dict().items()})
    if bundle.zsl is not None:
        tensors.update({f"zsl.{k}": v for k, v in bundle.zsl.state_dict().items()})
    if bundle.replay_features is not None:
        tensors["replay.features"] = bundle.replay_features.to(torch.float16)
        tensors["replay.labels"] = bundle.replay_labels.to(torch.long)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    model_path = folder / MODEL_NAME
    temp = folder / f".{MODEL_NAME}.tmp"
    save_file(tensors, str(temp), metadata={"format": BUNDLE_FORMAT})
    os.replace(temp, model_path)

    seen = bundle.seen_mask.tolist()
    backbone_info = None
    if bundle.backbone is not None:
        backbone_info = {"model_name": bundle.backbone.model_name, "weights_id": bundle.backbone.weights_id,
                         "num_features": bundle.backbone.num_features}
    config = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "benchmark": bundle.benchmark,
        "backbone": backbone_info,
        "data_config": _jsonable(bundle.data_config),
        "classes": [{"name": n, "seen": bool(s)} for n, s in zip(bundle.class_names, seen)],
        "attribute_names": bundle.attribute_names,
        "semantic_kind": bundle.semantic_kind,
        "bsegn": bundle.trained.metadata(),  # config, dims, semantic matrix, seen/unseen ids
        "gzsl_classes": bundle.gzsl.class_ids.tolist(),
        "zsl_classes": None if bundle.zsl is None else bundle.zsl.class_ids.tolist(),
        "gamma": float(bundle.gamma),
        "metrics": bundle.metrics,
        "run_config": bundle.run_config,
        "versions": package_versions(),
        "model_sha256": _sha256_file(model_path),
    }
    config["config_sha256"] = hashlib.sha256(_canonical(config)).hexdigest()
    temp = folder / f".{CONFIG_NAME}.tmp"
    temp.write_text(json.dumps(config, indent=1))
    os.replace(temp, folder / CONFIG_NAME)
    (folder / "README.md").write_text(model_card(config))
    return folder


def resolve_bundle_dir(path: str | os.PathLike) -> Path:
    """A bundle folder, or a run folder holding bundle/."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file() and (path / MODEL_NAME).exists():
        return path
    if (path / "bundle" / CONFIG_NAME).is_file():
        return path / "bundle"
    if not path.exists():
        raise BundleError(f"{path}: no such model; give a run folder (from train.py) or its bundle/ folder")
    raise BundleError(f"{path}: not a bundle (no {CONFIG_NAME} + {MODEL_NAME}, nor a bundle/ folder in it); "
                      "give the run folder train.py wrote or its bundle/")


def read_bundle_config(folder: Path) -> dict[str, Any]:
    """config.json, checked: valid JSON, our format, a version we read, its own hash intact."""
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: damaged (not valid JSON: {error}); re-copy the bundle or re-run train.py") from None
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a bsegn bundle config (format {config.get('format') if isinstance(config, dict) else None!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{folder}: bundle format version {version!r}, but this bsegn reads version "
                          f"{FORMAT_VERSION}; use the bsegn version that wrote it ({config.get('versions', {}).get('bsegn')}) "
                          "or re-run train.py")
    if hashlib.sha256(_canonical(config)).hexdigest() != config.get("config_sha256"):
        raise BundleError(f"{path}: content does not match its integrity hash: the file was edited or "
                          "damaged; re-copy the bundle (bsegn add-class writes a new valid one)")
    return config


def read_bundle_info(path: str | os.PathLike) -> dict[str, Any]:
    """The verified config.json of a bundle (or run folder), without loading any tensor."""
    return read_bundle_config(resolve_bundle_dir(path))


def load_bundle(path: str | os.PathLike, *, device: str | torch.device = "cpu", with_backbone: bool = True,
                with_train_features: bool = True) -> Bundle:
    """Load and verify a bundle (or run folder). Never executes code from the files.
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
    if _sha256_file(model_path) != config["model_sha256"]:
        raise BundleError(f"{model_path}: does not match the sha256 in {CONFIG_NAME} (truncated, damaged or "
                          "replaced); re-copy the bundle")
    try:
        tensors = load_file(str(model_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise BundleError(f"{model_path}: cannot be read ({error})") from None

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

    backbone = None
    data_config = config.get("data_config") or {}
    if with_backbone and config.get("backbone"):
        backbone = build_backbone(config["backbone"], data_config, part("backbone"))
    replay = tensors.get("replay.features")
    bundle = Bundle(
        backbone=backbone, trained=trained.to(device).eval(), gzsl=gzsl.to(device).eval(),
        zsl=None if zsl is None else zsl.to(device).eval(),
        class_names=[c["name"] for c in config["classes"]], gamma=float(config.get("gamma") or 0.0),
        attribute_names=config.get("attribute_names"), data_config=data_config,
        replay_features=None if replay is None else replay.float(), replay_labels=tensors.get("replay.labels"),
        metrics=config.get("metrics") or {}, run_config=config.get("run_config") or {},
        benchmark=config.get("benchmark", ""), semantic_kind=config.get("semantic_kind", "attributes"))
    if backbone is not None:
        bundle.backbone = backbone.to(device).eval()
    if not with_train_features:
        bundle.replay_features = bundle.replay_labels = None
    bundle.path, bundle.info = folder, config
    return bundle


def build_backbone(info: dict[str, Any], data_config: dict[str, Any], state: dict[str, torch.Tensor]):
    """A FeatureBackbone from the bundle's identity + state_dict; timm builds the architecture only
    (pretrained=False): the weights come from model.safetensors."""
    import timm

    from bsegn.backbone.factory import FeatureBackbone

    try:
        model = timm.create_model(info["model_name"], pretrained=False, num_classes=0)
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as error:
        raise BundleError(f"the bundle's backbone weights do not fit {info.get('model_name')} "
                          f"({str(error)[:300]})") from None
    return FeatureBackbone(model, model_name=info["model_name"], data_config=data_config,
                           weights_id=info.get("weights_id", ""), weights_source="bundle")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def model_card(config: dict[str, Any]) -> str:
    """README.md: what the model is, what it was trained on, how well it did, how to use it."""
    classes = config["classes"]
    seen = [c["name"] for c in classes if c["seen"]]
    unseen = [c["name"] for c in classes if not c["seen"]]
    metrics = config.get("metrics") or {}
    backbone = config.get("backbone") or {}
    lines = [
        f"# bsegn model: {config.get('benchmark') or 'custom'}",
        "",
        "Generative zero-shot image classifier (BSeGN): a timm backbone turns an image into a feature; "
        "a final classifier trained on real seen-class features and BSeGN-synthesised unseen-class "
        "features (on multilevel mFIM features) names the class, including classes never seen in training.",
        "",
        "## Contents",
        f"- backbone: `{backbone.get('model_name', 'none (feature-only bundle)')}` "
        f"(weights id {backbone.get('weights_id', '-')}, {backbone.get('num_features', '-')}-d features)",
        f"- input: {config.get('data_config', {}).get('input_size')}",
        f"- classes: {len(classes)} ({len(seen)} seen, {len(unseen)} unseen), "
        f"semantics: {config.get('semantic_kind')} of dimension {len(config['bsegn']['semantics'][0])}",
        f"- unseen classes: {', '.join(unseen[:30])}{' ...' if len(unseen) > 30 else ''}",
        f"- calibration gamma: {config.get('gamma')}",
        "",
        "## Results (percent; T1: ZSL mean per-class top-1 on unseen; U/S/H: GZSL)",
    ]
    if metrics:
        lines.append("| protocol | T1 | U | S | H |")
        lines.append("|---|---|---|---|---|")
        lines.append(f"| {metrics.get('protocol', '?')} | " + " | ".join(
            f"{metrics[key]:.1f}" if isinstance(metrics.get(key), (int, float)) else "-" for key in ("T1", "U", "S", "H"))
            + " |")
    else:
        lines.append("not evaluated")
    lines += [
        "",
        "## Use",
        "```",
        "predict IMAGE_OR_FOLDER --model THIS_FOLDER [--top-k 5] [--mode gzsl|zsl|seen] [--explain] [--json]",
        "bsegn add-class --model THIS_FOLDER --name NAME --attributes VALUES_OR_CSV --out NEW_FOLDER",
        "```",
        "",
        "## Limits",
        "- Unseen classes are recognised from their semantic vectors only; quality depends on how well "
        "the attributes describe them.",
        "- Images unlike the training domain give confident but meaningless answers.",
        "",
        f"Format {config['format']} v{config['format_version']}; written with {config.get('versions')}.",
        "",
    ]
    return "\n".join(lines)
