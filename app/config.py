"""The run config: one object per run, from a YAML file plus command-line overrides.

    config = load_run_config("configs/demo.yaml", ["--generative.epochs", "5", "--backbone.model", "resnet10t"])
    config.to_dict()  # written resolved to <run>/config.yaml; the same dict reproduces the run

Sections:
    data        which benchmark and where its files are (demo: generated on first use)
    backbone    timm model name, weights source, extraction options
    finetune    bsegn.backbone.finetune.FinetuneConfig fields (enabled: false skips fine-tuning)
    generative  bsegn.generative.config.BSeGNConfig fields
    run         protocol, output folder, calibration gamma, seed

An unknown key in any section is refused with the list of valid ones: a typo never silently falls
back to a default.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bsegn.datasets.splits import DataError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


class ConfigFileError(DataError):
    """The run config file or an override is wrong; the message says which key and why."""


@dataclass
class DataSection:
    benchmark: str = "demo"
    splits_dir: str | None = None
    images_root: str | None = None
    attributes_csv: str | None = None
    # pre-extracted features instead of images: xlsa17 res101.mat or a bsegn feature cache
    # (.safetensors). The backbone stages are skipped and the bundle classifies features, not images.
    features_file: str | None = None
    demo_images_per_class: int = 40
    demo_image_size: int = 64
    demo_seed: int = 0


@dataclass
class BackboneSection:
    model: str = "resnet101"
    weights: str = "default"
    image_size: int | None = None  # override the model's input size (the demo's 64 px images)
    batch_size: int = 64
    num_workers: int = 2
    flip_average: bool = False


@dataclass
class RunSection:
    protocol: str = "final"  # "final" (trainval -> test) or "validation" (train classes -> val classes)
    output: str | None = None  # run folder; default runs/<benchmark>-<protocol>
    gamma: float | None = None  # calibrated stacking; None with calibration on: chosen on validation
    seed: int = 0
    plots: bool = True


SECTIONS = ("data", "backbone", "finetune", "generative", "run")


@dataclass
class RunConfig:
    data: DataSection = field(default_factory=DataSection)
    backbone: BackboneSection = field(default_factory=BackboneSection)
    finetune: dict[str, Any] = field(default_factory=lambda: {"enabled": True})
    generative: dict[str, Any] = field(default_factory=dict)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        return {"data": asdict(self.data), "backbone": asdict(self.backbone),
                "finetune": copy.deepcopy(self.finetune), "generative": copy.deepcopy(self.generative),
                "run": asdict(self.run)}

    # --- typed views of the free-form sections (validated by their owners' dataclasses) ---------

    def bsegn_config(self):
        from bsegn.generative.config import BSeGNConfig, ConfigError

        try:
            return BSeGNConfig.from_dict({"seed": self.run.seed, **self.generative})
        except (ConfigError, TypeError) as error:
            raise ConfigFileError(f"generative section: {error}") from None

    @property
    def finetune_enabled(self) -> bool:
        return bool(self.finetune.get("enabled", True))

    def finetune_config(self):
        from bsegn.backbone.finetune import FinetuneConfig

        values = {k: v for k, v in self.finetune.items() if k != "enabled"}
        values.setdefault("image_size", self.backbone.image_size)
        values.setdefault("seed", self.run.seed)
        known = {f.name for f in fields(FinetuneConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigFileError(f"finetune section: unknown key(s) {', '.join(unknown)}; "
                                  f"valid: enabled, {', '.join(sorted(known))}")
        try:
            config = FinetuneConfig(**values)
            config.validate()
        except (TypeError, ValueError) as error:
            raise ConfigFileError(f"finetune section: {error}") from None
        return config

    def validate(self) -> None:
        if self.run.protocol not in ("final", "validation"):
            raise ConfigFileError(f"run.protocol must be 'final' or 'validation', not {self.run.protocol!r}")
        self.bsegn_config()
        if self.finetune_enabled:
            self.finetune_config()

    def output_dir(self) -> Path:
        if self.run.output:
            return Path(self.run.output)
        return Path("runs") / f"{self.data.benchmark.lower()}-{self.run.protocol}"


def _section_from_dict(cls, values: dict[str, Any], name: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigFileError(f"{name} section: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return cls(**values)


def run_config_from_dict(values: dict[str, Any]) -> RunConfig:
    values = dict(values or {})
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise ConfigFileError(f"unknown config section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    for name in SECTIONS:
        if values.get(name) is not None and not isinstance(values[name], dict):
            raise ConfigFileError(f"config section {name!r} must be a mapping, got {type(values[name]).__name__}")
    config = RunConfig(
        data=_section_from_dict(DataSection, values.get("data") or {}, "data"),
        backbone=_section_from_dict(BackboneSection, values.get("backbone") or {}, "backbone"),
        finetune={"enabled": True, **(values.get("finetune") or {})},
        generative=dict(values.get("generative") or {}),
        run=_section_from_dict(RunSection, values.get("run") or {}, "run"),
    )
    config.validate()
    return config


def parse_overrides(arguments: list[str]) -> dict[str, dict[str, Any]]:
    """`--section.key value` (or `--section.key=value`) pairs -> nested dict; values parsed as YAML
    scalars/lists, so `--generative.epochs 5`, `--run.gamma null`, `--generative.mfim_levels [x,s]` work."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if not argument.startswith("--") or "." not in argument:
            raise ConfigFileError(f"unexpected argument {argument!r}: overrides look like --section.key VALUE "
                                  f"(sections: {', '.join(SECTIONS)})")
        key, has_value, value = argument[2:].partition("=")
        if not has_value:
            if index + 1 >= len(arguments):
                raise ConfigFileError(f"override {argument} needs a value")
            value = arguments[index + 1]
            index += 1
        index += 1
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ConfigFileError(f"override --{key}: the section must be one of {', '.join(SECTIONS)}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out.setdefault(section, {})[name.replace("-", "_")] = parsed
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"config file {path} does not exist; the configs/ folder has one per benchmark")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigFileError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigFileError(f"config file {path} must hold a mapping of sections")
    return values


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (default configs/demo.yaml) + `--section.key value` overrides -> validated RunConfig."""
    values = load_yaml(path or DEFAULT_CONFIG)
    for section, changes in parse_overrides(list(overrides or [])).items():
        values.setdefault(section, {})
        if values[section] is None:
            values[section] = {}
        values[section].update(changes)
    return run_config_from_dict(values)


def write_run_config(config: RunConfig, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
