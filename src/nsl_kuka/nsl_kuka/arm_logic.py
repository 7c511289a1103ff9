"""ROS-free logic of a grasp episode on a real arm: where each step goes, and whether a grasp held.

The arm node turns each nsl_msgs/GraspAction into a target tool pose with ``plan_step`` (clipped
to the per-step and workspace limits), executes it through a backend (MoveIt 2 on the robot), and
ends the episode like the simulator does: on terminate or at the step limit the gripper closes,
the arm lifts, and the grasp counts as a success when the fingers stay apart by more than
``min_object_gap`` after lifting (something is between them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ArmConfig:
    """Limits and episode semantics of the real arm (parameters of the arm node)."""

    workspace_low: tuple[float, float, float] = (0.35, -0.25, 0.02)
    """Lowest tool position (x, y, z) in the planning frame, metres."""
    workspace_high: tuple[float, float, float] = (0.75, 0.25, 0.45)
    """Highest tool position (x, y, z) in the planning frame, metres."""
    tray_height: float = 0.0
    """z of the tray floor in the planning frame: heights reported to the policy are above it."""
    max_translation: float = 0.03
    """Largest displacement per axis and step, metres."""
    max_rotation: float = 0.25
    """Largest rotation per step, radians."""
    max_steps: int = 10
    """Steps before the arm forces close-and-lift."""
    lift_height: float = 0.2
    """How far the arm lifts after closing, metres."""
    min_object_gap: float = 0.005
    """Finger gap after lifting above which the grasp counts as a success, metres."""
    start_position: tuple[float, float, float] = (0.55, 0.0, 0.3)
    """Tool position at the start of every episode."""
    start_yaw: float = 0.0
    """Tool yaw at the start of every episode, radians."""

    def __post_init__(self) -> None:
        low, high = np.asarray(self.workspace_low), np.asarray(self.workspace_high)
        if low.shape != (3,) or high.shape != (3,) or not np.all(low < high):
            raise ValueError(
                f"workspace_low {self.workspace_low} must be below "
                f"workspace_high {self.workspace_high} on every axis"
            )
        if not np.all((low <= self.start_position) & (np.asarray(self.start_position) <= high)):
            raise ValueError(f"start_position {self.start_position} is outside the workspace")
        for name in ("max_translation", "max_rotation", "lift_height"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.min_object_gap < 0:
            raise ValueError(f"min_object_gap must be >= 0, got {self.min_object_gap}")


@dataclass(frozen=True)
class ToolPose:
    position: tuple[float, float, float]
    yaw: float


def plan_step(
    config: ArmConfig, current: ToolPose, translation, rotation: float
) -> tuple[ToolPose, bool]:
    """Target pose of one step and whether anything was clipped. Non-finite input is refused."""
    t = np.asarray(translation, dtype=np.float64).reshape(-1)
    if t.shape != (3,) or not np.all(np.isfinite(t)) or not math.isfinite(rotation):
        raise ValueError(
            f"non-finite or malformed step: translation={list(t)} rotation={rotation}"
        )
    clipped_t = np.clip(t, -config.max_translation, config.max_translation)
    target = np.clip(
        np.asarray(current.position) + clipped_t, config.workspace_low, config.workspace_high
    )
    clipped_r = float(np.clip(rotation, -config.max_rotation, config.max_rotation))
    yaw = (
        current.yaw + clipped_r + math.pi / 2
    ) % math.pi - math.pi / 2  # the gripper is symmetric
    was_clipped = bool(
        np.any(clipped_t != t)
        or clipped_r != rotation
        or np.any(target != np.asarray(current.position) + clipped_t)
    )
    return ToolPose(tuple(float(v) for v in target), yaw), was_clipped


class ArmBackend(Protocol):
    """What the episode logic needs from an arm (MoveIt 2 on the robot, a fake in tests)."""

    def tool_pose(self) -> ToolPose: ...
    def move_to(self, pose: ToolPose) -> None: ...
    def set_gripper(self, closed: bool) -> None: ...
    def finger_gap(self) -> float: ...


@dataclass
class StepOutcome:
    done: bool
    grasp_success: bool
    clipped: bool
    gripper_closed: bool
    height: float
    step_fraction: float


@dataclass
class GraspEpisode:
    """One episode on a real arm: reset to the start pose, steps, close-and-lift, outcome."""

    config: ArmConfig
    backend: ArmBackend
    steps: int = 0
    gripper_closed: bool = False
    done: bool = True
    history: list = field(default_factory=list)

    def reset(self) -> StepOutcome:
        self.backend.set_gripper(False)
        self.backend.move_to(ToolPose(self.config.start_position, self.config.start_yaw))
        self.steps, self.gripper_closed, self.done = 0, False, False
        return self._outcome(False, False)

    def step(
        self, translation, rotation: float, close_gripper: bool, terminate: bool
    ) -> StepOutcome:
        if self.done:
            raise RuntimeError("the episode is over: reset first")
        target, clipped = plan_step(self.config, self.backend.tool_pose(), translation, rotation)
        self.backend.move_to(target)
        self.steps += 1
        if close_gripper and not self.gripper_closed:
            self.backend.set_gripper(True)
            self.gripper_closed = True
        if terminate or self.steps >= self.config.max_steps:
            return self._close_and_lift(clipped)
        return self._outcome(False, clipped)

    def _close_and_lift(self, clipped: bool) -> StepOutcome:
        self.backend.set_gripper(True)
        self.gripper_closed = True
        pose = self.backend.tool_pose()
        lifted = (
            pose.position[0],
            pose.position[1],
            min(pose.position[2] + self.config.lift_height, self.config.workspace_high[2]),
        )
        self.backend.move_to(ToolPose(lifted, pose.yaw))
        success = self.backend.finger_gap() > self.config.min_object_gap
        self.done = True
        return StepOutcome(
            True,
            success,
            clipped,
            True,
            self._height(),
            min(1.0, self.steps / self.config.max_steps),
        )

    def _height(self) -> float:
        return float(self.backend.tool_pose().position[2] - self.config.tray_height)

    def _outcome(self, done: bool, clipped: bool) -> StepOutcome:
        return StepOutcome(
            done,
            False,
            clipped,
            self.gripper_closed,
            self._height(),
            self.steps / self.config.max_steps,
        )
