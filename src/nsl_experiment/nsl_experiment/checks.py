"""Validation helpers of the config sections: each checks one field and normalises its type."""

from __future__ import annotations

import math
from typing import Any


def bad(section: Any, name: str, why: str) -> ValueError:
    """Return the error of a field that fails its check.

    Named ``ExperimentConfig.<section>.<field>``.
    """
    where = getattr(section, "SECTION", "")
    prefix = f"ExperimentConfig.{where}." if where else "ExperimentConfig."
    return ValueError(f"{prefix}{name}: {why} (got {getattr(section, name)!r})")


def check_int(section: Any, name: str, lo: int, hi: int = 10**9) -> None:
    """Check that a field is an integer in ``lo..hi`` (booleans are refused)."""
    v = getattr(section, name)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise bad(section, name, f"must be an integer in {lo}..{hi}")


def check_float(section: Any, name: str, lo: float, hi: float, lo_open: bool = False) -> None:
    """Check that a field is a finite number in ``[lo, hi]``.

    (``(lo, hi]`` when ``lo_open``), stored as a float.
    """
    v = getattr(section, name)
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not math.isfinite(v)
        or not (lo < v if lo_open else lo <= v)
        or not v <= hi
    ):
        raise bad(section, name, f"must be a number in {'(' if lo_open else '['}{lo}, {hi}]")
    object.__setattr__(section, name, float(v))


def check_bool(section: Any, name: str) -> None:
    """Check that a field is a boolean."""
    if not isinstance(getattr(section, name), bool):
        raise bad(section, name, "must be true or false")


def as_tuple(section: Any, name: str) -> tuple:
    """Check that a field is a non-empty sequence field, stored as a tuple.

    (YAML and JSON give lists).
    """
    v = getattr(section, name)
    if not isinstance(v, (list, tuple)) or not v:
        raise bad(section, name, "must be a non-empty list")
    object.__setattr__(section, name, tuple(v))
    return tuple(v)


def check_names(section: Any, name: str, allowed: tuple[str, ...]) -> None:
    """Distinct names out of ``allowed``."""
    values = as_tuple(section, name)
    if len(set(values)) != len(values) or not set(values) <= set(allowed):
        raise bad(section, name, f"must be distinct names from {list(allowed)}")


def check_mapping(section: Any, name: str) -> None:
    """Check that a field is a mapping of field overrides of a library config."""
    if not isinstance(getattr(section, name), dict):
        raise bad(section, name, "must be a mapping of field overrides")


def check_increasing(section: Any, name: str, kind: type, positive: bool = True) -> tuple:
    """Check that a field is a non-empty strictly increasing sequence of ``kind`` numbers.

    (> 0 when ``positive``).
    """
    values = as_tuple(section, name)
    ok = all(
        not isinstance(v, bool)
        and isinstance(v, (int, float) if kind is float else int)
        and math.isfinite(v)
        and (v > 0 or not positive)
        for v in values
    ) and all(a < b for a, b in zip(values, values[1:]))
    if not ok:
        raise bad(section, name, f"must be increasing positive {kind.__name__}s")
    if kind is float:
        object.__setattr__(section, name, tuple(float(v) for v in values))
    return getattr(section, name)
