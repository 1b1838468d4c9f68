"""The field checks every part of a bundle's config.json is read through, and the one error they raise.

    invalid(folder, field, problem) -> BundleError    the message every schema failure carries
    require_int / require_number / require_list / require_ids / require_text / require_choice
                                                      a field's value, or invalid
    number_problem(value, low, high) -> str | None    why a number is out of range (also for user input:
                                                      predict --threshold, run.threshold)

Each failure names the field and says what it must be, never an IndexError or a 30 GB allocation later.
"""
from __future__ import annotations

import math
from pathlib import Path

from bsegn.core.errors import BundleError

MAX_DIM = 1 << 20  # feature / semantic dimensions


def invalid(folder: Path, field: str, problem: str) -> BundleError:
    """The error of a config.json field that is not what a bundle holds (`problem`: what it must be)."""
    return BundleError(f"{folder}: config.json field {field!r} {problem}; the bundle was edited or damaged: "
                       "re-copy it or re-run train.py")


def number_problem(value, low: float = -math.inf, high: float = math.inf, *, positive: bool = False) -> str | None:
    """Why `value` is not a finite number in [low, high] (above 0 when `positive`), or None when it is one.
    A bool is no number here: JSON's true must not pass as 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high or (positive and value <= 0):
        span = f" from {low:.0e} to {high:.0e}" if math.isfinite(low) and math.isfinite(high) else ""
        return f"must be a finite {'positive ' if positive else ''}number{span}, got {value!r}"
    return None


def require_number(folder: Path, field: str, value, low: float = -math.inf, high: float = math.inf, *,
                   positive: bool = False) -> float:
    problem = number_problem(value, low, high, positive=positive)
    if problem:
        raise invalid(folder, field, problem)
    return float(value)


def require_int(folder: Path, field: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(folder, field, f"must be an integer in [{low}, {high}], got {value!r}")
    return value


def require_list(folder: Path, field: str, value, length: int | None = None) -> list:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        found = type(value).__name__ + ("" if not isinstance(value, list) else f" of {len(value)}")
        raise invalid(folder, field, f"must be a list{'' if length is None else f' of {length}'}, got {found}")
    return value


def require_ids(folder: Path, field: str, value, count: int, *, allow_empty: bool = True) -> list[int]:
    """Distinct class ids in [0, count)."""
    ids = [require_int(folder, field, v, 0, count - 1) for v in require_list(folder, field, value)]
    if len(set(ids)) != len(ids) or (not ids and not allow_empty):
        raise invalid(folder, field, "must list distinct class ids" + ("" if allow_empty else ", at least one"))
    return ids


def require_text(folder: Path, field: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(folder, field, f"must be non-empty text, got {value!r}")
    return value


def require_choice(folder: Path, field: str, value, choices) -> str:
    if value not in choices:
        raise invalid(folder, field, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value
