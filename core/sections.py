"""Typed config sections: dataclasses whose fields carry a one-line help, built once from a mapping.

    @dataclass(frozen=True)
    class FinetuneConfig:
        epochs: int = option(10, "passes over the seen training images; 0 skips fine-tuning")

    config = build_section(FinetuneConfig, {"epochs": "5"}, "finetune")   # ConfigError: 'epochs' must be an integer

`build_section` refuses unknown keys (listing the valid ones) and values of the wrong type before the
dataclass is made: integers are integers (not 2.5, not "five", not True), floats accept integers,
booleans are booleans, `X | None` accepts None, `tuple[str, ...]` accepts a list. Range checks live in
each dataclass's `check()` and raise ConfigError naming the key.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

from bsegn.core.errors import ConfigError

EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def option(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with a default and a one-line description (printed by `train.py --help-config`)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a sequence default")
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def describe(cls) -> list[tuple[str, str, Any, str]]:
    """[(name, type, default, help)] of a section dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f.name, _type_name(hints[f.name]), f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(cls) if f.init]


def to_dict(section) -> dict[str, Any]:
    """A YAML/JSON-safe dict of a section (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(section).items()}


def build_section(cls, values: dict[str, Any] | None, name: str):
    """cls(**values) after refusing unknown keys and wrong types; then cls.check() if it has one."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    converted = {key: _convert(value, hints[key], f"{name}.{key}") for key, value in values.items()}
    section = cls(**converted)
    if hasattr(section, "check"):
        section.check()
    return section


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if _is_union(hint):
        return " | ".join(_type_name(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return f"list of {_type_name(args[0])}"
    return getattr(hint, "__name__", str(hint)).replace("NoneType", "null")


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _convert(value: Any, hint, where: str) -> Any:
    if _is_union(hint):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where} must be {_type_name(hint)}, got {value!r}")
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(v, item, where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 (PyYAML) reads 1e-3 (no dot) as a string; every user means the number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config type {hint!r}")


def require(condition: bool, message: str) -> None:
    """Range check helper for a section's check(): ConfigError(message) when condition is false."""
    if not condition:
        raise ConfigError(message)
