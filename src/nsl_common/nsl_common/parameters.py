"""ROS parameters from plain values: descriptors (description, range, read-only) and tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from .settings import Setting


def descriptor(
    description: str,
    *,
    int_range: tuple[int, int] | None = None,
    float_range: tuple[float, float] | None = None,
    read_only: bool = True,
) -> ParameterDescriptor:
    """Return a parameter descriptor; ROS then refuses values outside the range.

    Read-only by default, since most settings are read once at start-up.
    """
    d = ParameterDescriptor(description=description, read_only=read_only)
    if int_range is not None:
        d.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    if float_range is not None:
        low, high = float_range
        d.floating_point_range = [
            FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)
        ]
    return d


def declare_settings(node: Any, settings: Mapping[str, Setting]) -> dict[str, Any]:
    """Declare one parameter per entry of ``settings`` on ``node``; return their values.

    Each parameter has its setting's default, description and range, and is read-only unless
    the setting is a run-time one.
    """
    for name, s in settings.items():
        node.declare_parameter(
            name,
            s.default,
            descriptor(
                s.description,
                int_range=s.int_range,
                float_range=s.float_range,
                read_only=not s.runtime,
            ),
        )
    return {name: node.get_parameter(name).value for name in settings}
