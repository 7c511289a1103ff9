"""One node setting without ROS: its default, what it means, its range, whether it may change.

A node lists its settings as a table (name: :class:`Setting`) in a ROS-free module and declares
them with :func:`nsl_common.parameters.declare_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One setting: its default (which also fixes its ROS type), what it means, its range."""

    default: Any
    description: str
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    runtime: bool = False
    """True: it may change while the node runs (its ROS parameter is not read-only)."""
