"""ROS parameter descriptors built from plain values (description, range, read-only)."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


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
