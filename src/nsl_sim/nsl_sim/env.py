"""ROS-free PyBullet grasping world: a Kuka iiwa with a two-finger gripper over a tray of objects.

This is the simulated robot of the NSL project (QT-Opt style grasping, Kalashnikov et al. 2018;
"Never Stop Learning", Julian et al. 2020). It follows the action semantics of pybullet_envs'
``KukaDiverseObjectEnv`` but is its own implementation: one private physics connection per
env (several envs per process are independent), explicit seeding, a sorted train/test split,
and fewer wasted physics steps. This module is the episode API (:class:`GraspEnv`); the world
layout and the object split are in :mod:`nsl_sim.world`, the camera in :mod:`nsl_sim.camera`,
the arm's kinematics and motors in :mod:`nsl_sim.arm`, and the settings with their physics
differences from pybullet_envs in :mod:`nsl_sim.config`.

Actions (one control step)
    ``translation`` (3 floats, m, tray frame) is clipped per axis to +-``max_translation`` and
    added to the commanded gripper-tip position, which is then clipped to the workspace box.
    ``rotation`` (rad) is clipped to +-``max_rotation`` and added to the commanded yaw, which is
    clipped to [-pi/2, pi/2] (the gripper is symmetric). ``yaw`` is the world-frame angle of the
    finger closing axis. The arm follows with inverse kinematics + joint position control.
    ``close_gripper=True`` closes the fingers after the move; they stay closed for the rest of
    the episode (later steps move with closed fingers). ``terminate=True``, or reaching
    ``max_steps`` control steps, closes the fingers (if open) after the move, lifts the gripper
    to ``lift_height`` and ends the episode. Success: some object's origin ends more than
    ``lift_success_height`` above the tray floor (the sim's "lifted object" check).

Observation
    RGB image (image_size x image_size, uint8; rendered after the step's motion),
    gripper_closed, height of the commanded tool
    point above the tray floor as the arm believes it (forward kinematics with the *nominal*
    gripper geometry; the geometry tasks change the real gripper, not the belief) and
    step_fraction = steps taken / max_steps. :meth:`GraspEnv.gripper_pose` returns the *actual*
    tool point (centre between the finger tips, including task geometry changes).
    Same seed + task => bit-identical images and outcomes regardless of history.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pybullet as p
from pybullet_utils import bullet_client

from . import scripted
from .arm import Arm
from .camera import Camera, blend_objects
from .config import SimConfig
from .tasks import EffectiveTask, TaskConfig, get_task
from .world import (
    TRAY_ORIGIN,
    build_world,
    lifted_object,
    object_files,
    object_footprint,
    settle,
)

#: The default camera's vertical field of view (degrees); SimConfig.camera_fov owns it.
CAMERA_FOV = SimConfig.camera_fov

__all__ = ["CAMERA_FOV", "SimConfig", "Observation", "StepResult", "GraspEnv", "object_files"]


@dataclass
class Observation:
    """What the robot sees and knows about itself."""

    image: np.ndarray
    """(H, W, 3) uint8 RGB camera image."""
    gripper_closed: bool
    """True once the fingers were commanded closed."""
    height: float
    """Tool point above the tray floor (m), as the arm believes it (nominal kinematics)."""
    step_fraction: float
    """Control steps taken / max_steps (0 at reset, 1 at the forced end)."""


@dataclass
class StepResult:
    """Outcome of one control step."""

    observation: Observation
    done: bool
    grasp_success: bool
    """An object was lifted above lift_success_height (only meaningful when done)."""
    info: dict = field(default_factory=dict)


class GraspEnv:
    """PyBullet grasping world with its own physics connection. See the module docstring."""

    def __init__(self, config: SimConfig | None = None, task: str | TaskConfig = "base") -> None:
        self._config = config if config is not None else SimConfig()
        if not isinstance(self._config, SimConfig):
            raise TypeError(f"config must be a SimConfig, got {type(self._config).__name__}")
        self._task = get_task(task)
        self._objects_all = object_files(self._config.object_split)
        self._p: bullet_client.BulletClient | None = bullet_client.BulletClient(
            connection_mode=p.DIRECT
        )
        self._world_key: tuple | None = None
        self._robot = -1
        self._arm = Arm(self._client, self._robot, self._config)
        self._camera = Camera()
        self._object_ids: list[int] = []
        self._object_names: list[str] = []
        self._saved_state = -1
        self._eff: EffectiveTask = self._task.effective()
        self._background: np.ndarray | None = None
        self._target_pos = np.array(self._config.start_position, dtype=np.float64)
        self._target_yaw = float(self._config.start_yaw)
        self._steps = 0
        self._closed = False
        self._done = True
        self._started = False
        self._seed: int | None = None

    # -------------------------------------------------------------- properties
    @property
    def config(self) -> SimConfig:
        return self._config

    @property
    def task(self) -> TaskConfig:
        return self._task

    @property
    def done(self) -> bool:
        return self._done

    @property
    def steps(self) -> int:
        return self._steps

    # -------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Disconnect the physics server (idempotent)."""
        if self._p is not None:
            try:
                self._p.disconnect()
            except Exception:  # pragma: no cover - already gone
                pass
            self._p = None

    def __enter__(self) -> "GraspEnv":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def _client(self) -> bullet_client.BulletClient:
        if self._p is None:
            raise RuntimeError("GraspEnv is closed")
        return self._p

    def _build_world(self, eff: EffectiveTask) -> None:
        c = self._client()
        self._robot = build_world(c, self._config, eff, self._task.name)
        self._arm = Arm(self._client, self._robot, self._config)
        self._arm.go_to_start()
        self._saved_state = c.saveState()
        self._world_key = (eff.gripper_key, eff.texture, eff.checker_squares, eff.checker_colors)
        self._object_ids = []

    # -------------------------------------------------------------- poses
    def gripper_pose(self) -> tuple[np.ndarray, float]:
        """Actual tool point (tray frame, m) and yaw of the finger closing axis (rad, -pi/2..pi/2).

        Includes task geometry changes (finger extension, gripper offset) that the arm does
        not know about; compare :attr:`Observation.height` (the arm's belief).
        """
        return self._arm.actual_tool(self._eff.finger_extension)

    def tool_error(self) -> np.ndarray:
        """Return the actual minus the believed tool point (m, tray frame).

        The task's gripper geometry change (finger extension, gripper offset) that the
        controller does not know; zero on base.
        """
        return self.gripper_pose()[0] - self._arm.believed_tool()

    def commanded_pose(self) -> tuple[np.ndarray, float]:
        """Return the commanded (already clipped) tool position (tray frame) and yaw."""
        return self._target_pos.copy(), self._target_yaw

    # -------------------------------------------------------------- episode API
    def reset(self, seed: int, task: str | TaskConfig | None = None) -> Observation:
        """Start an episode. Same seed + task => bit-identical images and outcomes."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        seed = int(seed)
        new_task = get_task(task) if task is not None else self._task
        c = self._client()
        # From here on the previous episode is gone; a failure below leaves no episode running.
        self._started, self._done = False, True
        self._task = new_task
        eff = self._task.effective()
        self._eff = eff
        cfg = self._config
        key = (eff.gripper_key, eff.texture, eff.checker_squares, eff.checker_colors)
        if key != self._world_key or not self._config.reuse_world:
            self._world_key = None
            self._build_world(eff)
        else:
            for uid in self._object_ids:
                c.removeBody(uid)
            self._object_ids = []
            c.restoreState(self._saved_state)
            self._arm.reset_to_start()
        rng = np.random.default_rng(seed)

        # Draws are independent of the task so that a seed gives the same objects in every task.
        idx = rng.choice(len(self._objects_all), size=cfg.num_objects, replace=False)
        lo, hi = np.array(cfg.object_region_low), np.array(cfg.object_region_high)
        xy = lo + (hi - lo) * rng.random((cfg.num_objects, 2))
        yaws = rng.uniform(-math.pi, math.pi, cfg.num_objects)
        cam_noise = rng.normal(0.0, 1.0, 3)
        self._camera.aim(c, eff, cam_noise, self._config.camera_fov)

        self._background = None
        if eff.object_alpha < 1.0:
            # Background for see-through objects: tray without objects, arm swung out of view.
            c.resetJointState(self._robot, 0, 1.2)
            self._background = self._render_raw()[0]
            c.resetJointState(self._robot, 0, self._arm.start_joints[0])

        self._object_names = []
        for i, k in enumerate(idx):
            path = self._objects_all[int(k)]
            orn = p.getQuaternionFromEuler([0, 0, float(yaws[i])])
            pos = TRAY_ORIGIN + np.array([xy[i, 0], xy[i, 1], 0.06 + 0.05 * i])
            uid = c.loadURDF(path, pos.tolist(), orn, globalScaling=eff.object_scale)
            self._object_ids.append(uid)
            self._object_names.append(os.path.basename(path)[:-5])
        settle(c, self._object_ids, cfg)

        self._target_pos = np.array(cfg.start_position, dtype=np.float64)
        self._target_yaw = float(cfg.start_yaw)
        self._steps = 0
        self._closed = False
        self._done = False
        self._started = True
        self._seed = seed
        return self._observe()

    def step(
        self, translation: Sequence[float], rotation: float, close_gripper: bool, terminate: bool
    ) -> StepResult:
        """One control step (see the module docstring for the semantics)."""
        if not self._started:
            raise RuntimeError("call reset(seed) before step()")
        if self._done:
            raise RuntimeError("episode is done; call reset(seed) to start a new one")
        try:
            t = np.asarray(translation, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"translation must be 3 numbers, got {translation!r}") from None
        if t.shape != (3,):
            raise ValueError(f"translation must be 3 numbers, got shape {t.shape}")
        if not np.all(np.isfinite(t)):
            raise ValueError(f"translation must be finite, got {t.tolist()}")
        try:
            r = float(rotation)
        except (TypeError, ValueError):
            raise ValueError(f"rotation must be a number, got {rotation!r}") from None
        if not math.isfinite(r):
            raise ValueError(f"rotation must be finite, got {r}")
        cfg = self._config
        t_clip, new_pos = cfg.commanded_move(self._target_pos, t)
        r_clip = float(np.clip(r, -cfg.max_rotation, cfg.max_rotation))
        new_yaw = float(np.clip(self._target_yaw + r_clip, -math.pi / 2, math.pi / 2))
        clipped = bool(
            np.any(t_clip != t)
            or r_clip != r
            or np.any(new_pos != self._target_pos + t_clip)
            or new_yaw != self._target_yaw + r_clip
        )
        self._target_pos, self._target_yaw = new_pos, new_yaw

        substeps = self._arm.move_to(new_pos, new_yaw, cfg.max_substeps)
        if bool(close_gripper) and not self._closed:
            substeps += self._close_fingers()
        self._steps += 1
        done = bool(terminate) or self._steps >= cfg.max_steps
        success = False
        lifted: str | None = None
        if done:
            if not self._closed:
                substeps += self._close_fingers()
            substeps += self._lift()
            lifted = lifted_object(
                self._client(), self._object_ids, self._object_names, cfg.lift_success_height
            )
            success = lifted is not None
            self._done = True
        obs = self._observe(render=not done or cfg.render_final)
        info = {
            "steps": self._steps,
            "clipped": clipped,
            "substeps": substeps,
            "terminated_by_agent": bool(terminate),
            "lifted_object": lifted,
            "objects": list(self._object_names),
            "task": self._task.name,
            "seed": self._seed,
        }
        return StepResult(observation=obs, done=done, grasp_success=success, info=info)

    def _close_fingers(self) -> int:
        used = self._arm.close_fingers()
        self._closed = True
        return used

    def _lift(self) -> int:
        cfg = self._config
        pos = self._target_pos.copy()
        pos[2] = cfg.lift_height
        return self._arm.move_to(pos, self._target_yaw, cfg.lift_steps, tol=0.01)

    # -------------------------------------------------------------- observation
    def _render_raw(self) -> tuple[np.ndarray, np.ndarray]:
        segmentation = self._background is not None
        return self._camera.render(
            self._client(), self._eff, self._config.image_size, segmentation
        )

    def render(self) -> np.ndarray:
        """Return the current camera image (H, W, 3) uint8, with the task's appearance."""
        rgb, seg = self._render_raw()
        if self._background is not None and self._object_ids:
            rgb = blend_objects(
                rgb, seg, self._background, self._object_ids, self._eff.object_alpha
            )
        return rgb

    def render_without_objects(self) -> np.ndarray:
        """Remove the objects and return the camera image without them; ends the episode.

        With :meth:`render` of the same moment this shows which pixels the objects change
        (:mod:`nsl_sim.solvability`).
        """
        c = self._client()
        for uid in self._object_ids:
            c.removeBody(uid)
        self._object_ids, self._object_names = [], []
        self._started, self._done = False, True
        return self.render()

    def project_to_image(self, point: Sequence[float]) -> np.ndarray:
        """Return the pixel coordinates of a tray-frame point in this episode's camera image.

        (column, row), 0..image_size.
        """
        return self._camera.project(point, self._config.image_size)

    def _observe(self, render: bool = True) -> Observation:
        n = self._config.image_size
        img = self.render() if render else np.zeros((n, n, 3), dtype=np.uint8)
        height = float(self._arm.believed_tool()[2])
        return Observation(
            image=img,
            gripper_closed=self._closed,
            height=height,
            step_fraction=self._steps / self._config.max_steps,
        )

    # -------------------------------------------------------------- scripted policies
    def object_positions(self) -> list[np.ndarray]:
        """Object origins in the tray frame (simulator state; for tests and scripted policies)."""
        c = self._client()
        return [
            np.array(c.getBasePositionAndOrientation(u)[0]) - TRAY_ORIGIN for u in self._object_ids
        ]

    def object_centres(self) -> list[np.ndarray]:
        """Return each object's mesh-bounding-box centre (xy, tray frame).

        The point the oracle aims at (simulator state; for scripted policies and diagnostics).
        """
        return [self._object_footprint(u)[0] for u in self._object_ids]

    def nearest_object_offset(self, xy: Sequence[float]) -> np.ndarray | None:
        """Return the horizontal offset (m, tray frame) from ``xy`` to the nearest object.

        To its centre (the mesh centre the oracle aims at); None when the tray holds no object.
        Simulator state: the label of the auxiliary location loss
        (nsl_experiment.episodes.location_job).
        """
        offsets = [c - np.asarray(xy, dtype=np.float64)[:2] for c in self.object_centres()]
        return min(offsets, key=lambda d: float(np.linalg.norm(d))) if offsets else None

    def oracle_action(self) -> tuple[np.ndarray, float, bool, bool]:
        """Return the scripted grasp action from simulator state.

        Go above the nearest object, align the fingers with its narrow side, descend, terminate.
        Returns (translation, rotation, close, terminate).
        """
        return scripted.oracle_action(self)

    def _object_footprint(self, uid: int) -> tuple[np.ndarray, float, float, float]:
        """(centre xy in tray frame, narrow-axis yaw, top height, bottom height) of one object."""
        return object_footprint(self._client(), uid)
