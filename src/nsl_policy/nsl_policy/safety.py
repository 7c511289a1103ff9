"""The command clamp: every command the policy sends stays inside the arm's limits.

Pure functions, no ROS: the policy node calls :func:`safe_command` on every action it chooses,
and the tests check the clamp directly. A command is clipped to the per-step translation and
rotation limits and, along the vertical axis, kept inside the workspace's height band; a
gripper outside the band is moved back towards it by at most one step. Commands that are not
finite are refused, never sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .action_space import ActionSpace, GraspCommand


class UnsafeCommand(ValueError):
    """A command that cannot be made safe (a non-finite component); it must not be sent."""


@dataclass(frozen=True)
class CommandLimits:
    """Per-step and workspace limits of the commands the policy sends."""

    max_translation: float = 0.03
    """Largest Cartesian step per axis, metres; the action space the sim trains with."""
    max_rotation: float = 0.25
    """Largest rotation per step, radians; the action space the sim trains with."""
    min_height: float = 0.0
    """Lowest gripper height above the tray, metres; 0 lets the fingers reach the tray floor."""
    max_height: float = 0.5
    """Highest gripper height above the tray, metres; loose (the sim stops at 0.30 m): set the
    real cell's."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Return what is wrong with these limits, one sentence each (empty when valid)."""
        found = []
        for name in ("max_translation", "max_rotation"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                found.append(f"{name} must be > 0 (got {value})")
        if not (
            math.isfinite(self.min_height)
            and math.isfinite(self.max_height)
            and self.min_height < self.max_height
        ):
            found.append(
                f"min_height ({self.min_height}) must be below max_height ({self.max_height})"
            )
        return found

    def action_space(self) -> ActionSpace:
        """Return the action space that scales normalised actions to these per-step limits."""
        return ActionSpace(self.max_translation, self.max_rotation)


def clamp_command(command: GraspCommand, height: float, limits: CommandLimits) -> GraspCommand:
    """Clip ``command`` to ``limits`` for a gripper at ``height`` metres above the tray.

    Raises UnsafeCommand when the result is not finite (a non-finite command or height).
    """
    max_t = limits.max_translation
    t = np.clip(np.asarray(command.translation, dtype=np.float64), -max_t, max_t)
    # Keep the gripper between the height limits without exceeding the per-step limit; a gripper
    # outside them is moved back towards them by at most one step.
    lo = max(-max_t, limits.min_height - height)
    hi = min(max_t, limits.max_height - height)
    if lo <= hi:
        t[2] = min(max(t[2], lo), hi)
    else:
        t[2] = max_t if height < limits.min_height else -max_t
    rotation = float(np.clip(command.rotation, -limits.max_rotation, limits.max_rotation))
    if not (np.all(np.isfinite(t)) and math.isfinite(rotation) and math.isfinite(height)):
        raise UnsafeCommand(f"refusing to send a non-finite command {t.tolist()} {rotation}")
    return GraspCommand(
        translation=(float(t[0]), float(t[1]), float(t[2])),
        rotation=rotation,
        close_gripper=command.close_gripper,
        terminate=command.terminate,
    )


def safe_command(vector: np.ndarray, height: float, limits: CommandLimits) -> GraspCommand:
    """Turn a normalised action ``vector`` into a physical command inside ``limits``.

    Raises UnsafeCommand for a vector with non-finite components or a non-finite result.
    """
    try:
        command = limits.action_space().to_command(vector)
    except ValueError as exc:
        raise UnsafeCommand(f"refusing to send a command: {exc}") from exc
    return clamp_command(command, height, limits)
