"""Severity: the knob values of a task at a severity, each inside its physical range.

:func:`scale_knobs` blends every knob of a :class:`nsl_sim.tasks.TaskConfig` linearly from the
nominal world (severity 0) to the named variation (1) and extrapolates above 1; each knob then
saturates at its :data:`PHYSICAL_BOUNDS`, and :class:`EffectiveTask` lists the saturated knobs,
so no severity makes objects invisible, the scene black or the gripper unable to hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .tasks import TaskConfig

__all__ = ["PHYSICAL_BOUNDS", "EffectiveTask", "scale_knobs"]

Vec3 = tuple[float, float, float]

#: Physical range of each knob after severity (min, max): ``effective()`` saturates a knob at
#: its bound. Each bound keeps the task possible in principle; the solvability checks measure
#: it. ``light_elevation`` is the light's angle above the table (deg); ``gripper_offset`` and
#: ``camera_offset`` bound the vector's length (m); ``light_color`` bounds each channel.
PHYSICAL_BOUNDS: dict[str, tuple[float, float]] = {
    # Below 0.15 opacity an object changes too few pixels to be seen (glass still shows).
    "object_alpha": (0.15, 1.0),
    # Some ambient light keeps the shadowed side of objects and tray above black.
    "light_ambient": (0.1, 10.0),
    "light_diffuse": (0.0, 2.5),
    "light_specular": (0.0, 1.5),
    # A warm tint, but no colour channel goes dark (objects of that colour would vanish).
    "light_color": (0.3, 1.5),
    # Light grazing the table below this angle leaves the tray almost black.
    "light_elevation": (12.0, 90.0),
    # Checker squares finer than this alias into noise at the camera's resolution.
    "checker_squares": (1.0, 32.0),
    # Longer fingers than 3 cm would hit the tray floor before the controller expects a grasp.
    "finger_extension": (-0.02, 0.03),
    # Narrower or slipperier tips than these cannot hold the objects' weight.
    "finger_width_scale": (0.3, 1.0),
    "finger_friction": (0.3, 2.0),
    # Beyond 15 cm the gripper cannot reach much of the object region inside the workspace.
    "gripper_offset": (0.0, 0.15),
    "object_scale": (0.5, 1.5),
    "camera_offset": (0.0, 0.3),
    "camera_noise": (0.0, 0.05),
}


@dataclass(frozen=True)
class EffectiveTask:
    """Knob values after ``severity`` was applied (see :meth:`TaskConfig.effective`)."""

    texture: str
    checker_squares: int
    checker_colors: tuple[Vec3, Vec3]
    light_direction: Vec3
    light_color: Vec3
    light_ambient: float
    light_diffuse: float
    light_specular: float
    shadows: bool
    finger_extension: float
    gripper_offset: Vec3
    finger_width_scale: float
    finger_friction: float
    object_alpha: float
    object_scale: float
    camera_offset: Vec3
    camera_noise: float
    saturated: tuple[str, ...] = ()
    """Knobs held at their :data:`PHYSICAL_BOUNDS` (the severity asked for more)."""

    @property
    def gripper_key(self) -> tuple[float, ...]:
        """Identify the gripper (geometry and tip friction).

        The robot is reloaded when it changes; ``nsl_sim.tasks.NOMINAL_GRIPPER_KEY`` is the stock
        gripper.
        """
        return (
            (round(self.finger_extension, 6),)
            + tuple(round(v, 6) for v in self.gripper_offset)
            + (round(self.finger_width_scale, 6), round(self.finger_friction, 6))
        )


def _bounded(name: str, value: float, saturated: list[str]) -> float:
    lo, hi = PHYSICAL_BOUNDS[name]
    if value < lo - 1e-9 or value > hi + 1e-9:
        saturated.append(name)
    return min(hi, max(lo, value))


def _bounded_norm(name: str, v: Vec3, saturated: list[str]) -> Vec3:
    length = math.sqrt(sum(x * x for x in v))
    hi = PHYSICAL_BOUNDS[name][1]
    if length <= hi + 1e-9:
        return v
    saturated.append(name)
    return tuple(x * hi / length for x in v)  # type: ignore[return-value]


def _bounded_direction(v: Vec3, saturated: list[str]) -> Vec3:
    """Keep the light at least the minimum elevation above the table, same azimuth."""
    horizontal = math.hypot(v[0], v[1])
    lo = PHYSICAL_BOUNDS["light_elevation"][0]
    if math.degrees(math.atan2(v[2], horizontal)) >= lo - 1e-9 or horizontal == 0:
        return v
    saturated.append("light_elevation")
    return (v[0], v[1], horizontal * math.tan(math.radians(lo)))


def scale_knobs(task: TaskConfig, nominal: TaskConfig, s: float) -> EffectiveTask:
    """Return ``task``'s knobs at severity ``s`` (``nominal``: the nominal world's), saturated."""
    base = nominal
    sat: list[str] = []

    def lerp(a: float, b: float) -> float:
        return a + s * (b - a)

    def lerp3(a: Vec3, b: Vec3) -> Vec3:
        return tuple(lerp(x, y) for x, y in zip(a, b))  # type: ignore[return-value]

    grey = (0.5, 0.5, 0.5)
    # Above 1 the colours are already saturated (black/white): exaggerate by finer squares.
    colors = tuple(
        tuple(min(1.0, max(0.0, v)) for v in lerp3(grey, c)) for c in task.checker_colors
    )
    squares = task.checker_squares * max(1.0, s)
    if task.texture == "checkerboard":
        squares = _bounded("checker_squares", squares, sat)
    channel_sat: list[str] = []
    light_color = tuple(
        _bounded("light_color", v, channel_sat) for v in lerp3(base.light_color, task.light_color)
    )
    sat += channel_sat[:1]

    def knob(name: str) -> float:
        return _bounded(name, lerp(getattr(base, name), getattr(task, name)), sat)

    return EffectiveTask(
        texture=task.texture if s > 0 else "none",
        checker_squares=min(256, round(squares)),
        checker_colors=colors,  # type: ignore[arg-type]
        light_direction=_bounded_direction(lerp3(base.light_direction, task.light_direction), sat),
        light_color=light_color,  # type: ignore[arg-type]
        light_ambient=knob("light_ambient"),
        light_diffuse=knob("light_diffuse"),
        light_specular=knob("light_specular"),
        shadows=task.shadows and s > 0,
        finger_extension=knob("finger_extension"),
        gripper_offset=_bounded_norm(
            "gripper_offset", lerp3(base.gripper_offset, task.gripper_offset), sat
        ),
        finger_width_scale=knob("finger_width_scale"),
        finger_friction=knob("finger_friction"),
        object_alpha=knob("object_alpha"),
        object_scale=knob("object_scale"),
        camera_offset=_bounded_norm(
            "camera_offset", lerp3(base.camera_offset, task.camera_offset), sat
        ),
        camera_noise=knob("camera_noise"),
        saturated=tuple(sat),
    )
