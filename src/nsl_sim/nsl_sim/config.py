"""Settings of the simulated grasping world (:class:`SimConfig`).

Physics settings (differences from pybullet_envs' KukaDiverseObjectEnv;
``SimConfig.reference_physics()`` restores pybullet_envs' values, and bench/sim_throughput.py
measures the oracle's success with both: docs/sim.md has the figures)
    * time step 1/240 s (same), gravity ``SimConfig.gravity`` -9.81 (pybullet_envs: -10),
      ``numSolverIterations`` = ``SimConfig.solver_iterations`` (default 50, PyBullet's default;
      pybullet_envs uses 150).
    * Arm: joint position control, force 200, position gain 0.3 (same); joint max velocity
      ``arm_max_velocity`` = 1.0 rad/s (pybullet_envs 0.35), so moves converge in fewer steps.
    * A control step runs physics sub-steps until the tool is within 2 mm / 0.02 rad of the
      commanded pose or ``max_substeps`` (default 80 = 1/3 s, pybullet_envs always runs 80).
    * Object settling: all objects are dropped at once from staggered heights and physics runs
      until every object is at rest (or ``settle_steps`` max) instead of 500 steps per object.
    * Grasp: fingers ramp closed over ``close_steps`` (finger forces as in pybullet_envs),
      then the arm lifts for at most ``lift_steps`` (stops once at ``lift_height``);
      pybullet_envs uses 500 + 500 steps.
    * Each reset rebuilds the world (resetSimulation, then plane, table, tray, robot; ~0.1 s)
      and resets joint states directly to a cached IK solution of the start pose. Measured:
      keeping the robot/tray loaded across episodes (``SimConfig.reuse_world=True``, a bit
      faster) makes results depend on earlier episodes (contact/broadphase caches), so it is
      off by default. With the default, same seed + task => bit-identical images and outcomes
      regardless of history, also with several envs in one process.
    * ``deterministicOverlappingPairs=1`` (sorted contact pairs).
    * Early-exit tests (settle, convergence) read the simulator state, so they are
      deterministic too; ``SimConfig.early_exit=False`` turns them off (always the full step
      counts, as pybullet_envs).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CAMERA_FOV_RANGE", "LEGACY_CAMERA_FOV", "SimConfig", "camera_fields"]


def _vec(v: Any, n: int, name: str) -> tuple[float, ...]:
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"SimConfig.{name}: must be {n} numbers, got {v!r}") from None
    if len(t) != n or not all(math.isfinite(x) for x in t):
        raise ValueError(f"SimConfig.{name}: must be {n} finite numbers, got {v!r}")
    return t


#: Accepted camera fields of view (degrees).
CAMERA_FOV_RANGE = (10.0, 90.0)
#: The field of view of every checkpoint made before checkpoints recorded theirs.
LEGACY_CAMERA_FOV = 38.0


def camera_fields(camera_fov: float | None) -> dict:
    """Return the SimConfig keyword for an optional field of view (None: the sim's default)."""
    return {} if camera_fov is None else {"camera_fov": camera_fov}


@dataclass
class SimConfig:
    """Settings of the simulated grasping world. Positions are in the tray frame (m)."""

    image_size: int = 64
    """Side of the square RGB camera image (pixels), 32..472."""
    camera_fov: float = 38.0
    """Vertical field of view of the fixed camera (degrees), 10..90. It sets how much of the
    image the tray fills: at 38 the object region spans ~24 of 64 pixels (1.25 cm per pixel)."""
    num_objects: int = 3
    """Objects dropped into the tray each episode, 1..10."""
    max_steps: int = 10
    """Control steps before the forced close-and-lift ends the episode."""
    object_split: str = "train"
    """"train" (900 objects) or "test" (100 objects): sorted random_urdfs, every 10th is test."""
    max_translation: float = 0.03
    """Per-step displacement clip per axis (m)."""
    max_rotation: float = 0.25
    """Per-step yaw clip (rad)."""
    workspace_low: tuple[float, float, float] = (-0.15, -0.15, 0.0)
    """Lower corner of the box the commanded tool point is clipped to (tray frame, m)."""
    workspace_high: tuple[float, float, float] = (0.10, 0.15, 0.30)
    """Upper corner of the workspace box (tray frame, m)."""
    lift_success_height: float = 0.1
    """An object whose origin ends this far above the tray floor counts as grasped (m)."""
    start_position: tuple[float, float, float] = (-0.02, 0.0, 0.15)
    """Commanded tool position at the start of every episode (tray frame, m)."""
    start_yaw: float = 0.0
    """Commanded gripper yaw at the start of every episode (rad)."""
    object_region_low: tuple[float, float] = (-0.11, -0.11)
    """Lower xy corner of the region objects are dropped into (tray frame, m)."""
    object_region_high: tuple[float, float] = (0.06, 0.11)
    """Upper xy corner of the object drop region (tray frame, m)."""
    lift_height: float = 0.30
    """Tool height above the tray floor the gripper lifts to at the end (m)."""
    time_step: float = 1.0 / 240.0
    """Physics time step (s)."""
    solver_iterations: int = 50
    """Constraint solver iterations per physics step (pybullet_envs uses 150)."""
    arm_max_velocity: float = 1.0
    """Joint velocity limit of the arm position controller (rad/s)."""
    max_substeps: int = 80
    """Max physics steps per control step (stops earlier once the tool reached its target)."""
    settle_steps: int = 300
    """Max physics steps to let dropped objects come to rest at reset."""
    close_steps: int = 80
    """Physics steps to close the fingers."""
    lift_steps: int = 200
    """Max physics steps of the final lift."""
    render_final: bool = True
    """Render an image for the final (done) observation; False returns a black image (faster)."""
    reuse_world: bool = False
    """Keep the loaded robot/tray between episodes (faster resets) instead of rebuilding the
    world. Measured: reusing makes episodes depend on history (not bit-identical across
    histories), so the default rebuilds the world on every reset."""
    gravity: float = -9.81
    """Vertical gravity (m/s^2; pybullet_envs uses -10)."""
    early_exit: bool = True
    """Stop the settle, move and lift loops once the simulator state has converged (objects at
    rest, tool at its target). False always runs the full ``settle_steps``, ``max_substeps`` and
    ``lift_steps``, as pybullet_envs does."""

    @classmethod
    def reference_physics(cls, **changes: Any) -> "SimConfig":
        """Return the physics settings of pybullet_envs' KukaDiverseObjectEnv (comparisons).

        150 solver iterations, gravity -10, arm joint velocity limit 0.35 rad/s, always 80
        physics steps per control step, 500 settle steps per object, 500 steps to close and
        500 to lift, no early exits. Everything else (world, camera, action semantics) is as
        the default. ``changes`` override fields (e.g. image_size).
        """
        num_objects = int(changes.get("num_objects", cls.num_objects))
        ref = dict(
            solver_iterations=150,
            gravity=-10.0,
            arm_max_velocity=0.35,
            max_substeps=80,
            settle_steps=min(5000, 500 * num_objects),
            close_steps=500,
            lift_steps=500,
            early_exit=False,
        )
        ref.update(changes)
        return cls(**ref)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SimConfig.{name}: {why} (got {getattr(self, name)!r})")

        def check_int(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise bad(name, f"must be an integer in {lo}..{hi}")
            setattr(self, name, int(v))

        def check_float(name: str, lo: float, hi: float) -> None:
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float, np.floating, np.integer))
                or not math.isfinite(v)
                or not lo <= v <= hi
            ):
                raise bad(name, f"must be a finite number in {lo}..{hi}")
            setattr(self, name, float(v))

        check_int("image_size", 32, 472)
        check_float("camera_fov", *CAMERA_FOV_RANGE)
        check_int("num_objects", 1, 10)
        check_int("max_steps", 1, 1000)
        if self.object_split not in ("train", "test"):
            raise bad("object_split", "must be 'train' or 'test'")
        check_float("max_translation", 1e-4, 0.2)
        check_float("max_rotation", 0.0, math.pi)
        self.workspace_low = _vec(self.workspace_low, 3, "workspace_low")  # type: ignore[assignment]
        self.workspace_high = _vec(self.workspace_high, 3, "workspace_high")  # type: ignore[assignment]
        if not all(lo < hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
            raise bad("workspace_high", "must be > workspace_low on every axis")
        if not (
            -0.2 <= self.workspace_low[0]
            and self.workspace_high[0] <= 0.15
            and -0.22 <= self.workspace_low[1]
            and self.workspace_high[1] <= 0.22
            and -0.02 <= self.workspace_low[2]
            and self.workspace_high[2] <= 0.5
        ):
            raise bad(
                "workspace_low",
                "workspace must lie within x -0.2..0.15, y -0.22..0.22, z -0.02..0.5",
            )
        check_float("lift_success_height", 0.01, 0.5)
        self.start_position = _vec(self.start_position, 3, "start_position")  # type: ignore[assignment]
        if not all(
            lo <= v <= hi
            for v, lo, hi in zip(self.start_position, self.workspace_low, self.workspace_high)
        ):
            raise bad("start_position", "must lie inside the workspace")
        check_float("start_yaw", -math.pi / 2, math.pi / 2)
        self.object_region_low = _vec(self.object_region_low, 2, "object_region_low")  # type: ignore[assignment]
        self.object_region_high = _vec(self.object_region_high, 2, "object_region_high")  # type: ignore[assignment]
        if not all(lo <= hi for lo, hi in zip(self.object_region_low, self.object_region_high)):
            raise bad("object_region_high", "must be >= object_region_low")
        if not all(-0.2 <= v <= 0.2 for v in self.object_region_low + self.object_region_high):
            raise bad(
                "object_region_low", "object region must lie within +-0.2 m of the tray centre"
            )
        check_float("lift_height", 0.05, 0.5)
        if self.lift_height <= self.lift_success_height:
            raise bad("lift_height", "must be above lift_success_height")
        check_float("time_step", 1e-4, 0.02)
        check_int("solver_iterations", 1, 1000)
        check_float("arm_max_velocity", 0.05, 10.0)
        check_int("max_substeps", 1, 2000)
        check_int("settle_steps", 0, 5000)
        check_int("close_steps", 1, 2000)
        check_int("lift_steps", 1, 5000)
        check_float("gravity", -20.0, 0.0)
        for name in ("render_final", "reuse_world", "early_exit"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be a bool")

    def replace(self, **changes: Any) -> "SimConfig":
        """Copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def commanded_move(
        self, position: np.ndarray, translation: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return what :meth:`GraspEnv.step` commands from ``position``.

        (the translation clipped per axis to +-max_translation, the new commanded position
        clipped to the workspace box).
        """
        t_clip = np.clip(translation, -self.max_translation, self.max_translation)
        return t_clip, np.clip(position + t_clip, self.workspace_low, self.workspace_high)
