"""ROS-free PyBullet grasping world: a Kuka iiwa with a two-finger gripper over a tray of objects.

This is the simulated robot of the NSL project (QT-Opt style grasping, Kalashnikov et al. 2018;
"Never Stop Learning", Julian et al. 2020). It follows the action semantics of pybullet_envs'
``KukaDiverseObjectEnv`` but is its own implementation: one private physics connection per
env (several envs per process are independent), explicit seeding, a sorted train/test split,
and fewer wasted physics steps.

World layout (world frame, metres)
    * Kuka base at (-0.1, 0, 0.07) (as in pybullet_envs), ``kuka_iiwa/kuka_with_gripper2.sdf``.
    * ``tray/tray.urdf`` at (0.6, 0, -0.19), yawed by pi (as in pybullet_envs, 4 cm closer to
      the robot so the whole workspace is reachable); ``table/table.urdf`` under it and
      ``plane.urdf`` at z = -1 for the camera background.
    * **Tray frame**: origin at the centre of the tray floor surface, world (0.6, 0, -0.184),
      axes parallel to the world axes. All positions of the API are in this frame.
      Note: the stock tray mesh has a slanted face near tray-frame x = +0.10..+0.15; the default
      workspace and object region stay on the robot side of it.
    * Camera: fixed pinhole camera above and behind the robot's shoulder looking at the tray
      centre (pose as in pybullet_envs, re-targeted to this tray), TinyRenderer, rendered only
      when an observation is returned.

Objects
    ``pybullet_data/random_urdfs`` (1000 procedurally generated objects). The list of URDF
    files is **sorted by name**; object index ``i`` (0-based in that sorted list, which is the
    same as the folder number 000..999) is a *test* object when ``i % 10 == 0`` (100 objects)
    and a *train* object otherwise (900 objects). That matches the folder-name rule of
    pybullet_envs (folders ending in 0 are test objects) but does not depend on glob order.
    ``num_objects`` distinct objects of the split are drawn per episode from the seed, placed
    at random positions/yaws inside ``object_region_low/high`` and dropped from a few
    centimetres onto the tray floor.

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

Physics settings (differences from pybullet_envs' KukaDiverseObjectEnv, all in SimConfig;
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
import glob
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pybullet as p
import pybullet_data
from pybullet_utils import bullet_client

from . import assets, scripted
from .tasks import (
    FINGER_FRICTION,
    NOMINAL_GRIPPER_KEY,
    EffectiveTask,
    TaskConfig,
    get_task,
    image_format,
)

__all__ = ["SimConfig", "Observation", "StepResult", "GraspEnv", "object_files"]

Vec3 = tuple[float, float, float]

# ------------------------------------------------------------------ world constants
DATA_PATH = pybullet_data.getDataPath()
KUKA_SDF = os.path.join(DATA_PATH, "kuka_iiwa", "kuka_with_gripper2.sdf")
KUKA_BASE_POS = (-0.1, 0.0, 0.07)
TRAY_POS = (0.6, 0.0, -0.19)
TRAY_ORN = (0.0, 0.0, 1.0, 0.0)  # yaw pi, as in pybullet_envs
TRAY_FLOOR_Z = -0.184  # world z of the tray floor surface (measured with rayTest)
TRAY_ORIGIN = np.array([TRAY_POS[0], TRAY_POS[1], TRAY_FLOOR_Z])

EE_LINK = 6  # lbr_iiwa_link_7 (wrist flange): the IK target link
GRIPPER_LINK = 7  # base_link of the gripper, child of the yaw joint 7
YAW_JOINT = 7
FINGER_A, FINGER_B, TIP_A, TIP_B = 8, 11, 10, 13
NUM_ARM_JOINTS = 7
WRIST_TO_GRIPPER = 0.044  # base_link origin along the flange z axis
#: Tool point (centre between the open finger tips, at their lowest point) in the gripper
#: base_link frame. The fingers sit 2.1 cm to the side of the wrist axis in this SDF.
TOOL_IN_GRIPPER = np.array([0.0, 0.021, 0.226])
DOWN_ORN = p.getQuaternionFromEuler([0.0, -math.pi, 0.0])

# null-space IK settings (as pybullet_envs' kuka.py)
IK_LL = [-0.967, -2, -2.96, 0.19, -2.96, -2.09, -3.05]
IK_UL = [0.967, 2, 2.96, 2.29, 2.96, 2.09, 3.05]
IK_JR = [5.8, 4, 5.8, 4, 5.8, 4, 6]
IK_RP = [0, 0, 0, 0.5 * math.pi, 0, -math.pi * 0.5 * 0.66, 0]
ARM_FORCE = 200.0
FINGER_A_FORCE, FINGER_B_FORCE, FINGER_TIP_FORCE = 2.0, 2.5, 2.0
FINGER_OPEN = 0.3

#: Camera eye relative to the tray origin (pybullet_envs' camera re-targeted to this tray).
CAMERA_EYE = (0.45, -0.35, 0.9)
CAMERA_TARGET = (-0.02, 0.0, 0.0)
CAMERA_FOV = 38.0


#: Arm joint angles of the start pose per (start_position, start_yaw); the arm chain is the
#: same for every gripper variant, so one IK solution serves all tasks.
_START_JOINTS_CACHE: dict[tuple, list[float]] = {}

# ------------------------------------------------------------------ object split
_OBJECT_FILES: list[str] | None = None


def object_files(split: str) -> list[str]:
    """Sorted URDF paths of one split ("train": 900 objects, "test": 100 objects)."""
    global _OBJECT_FILES
    if split not in ("train", "test"):
        raise ValueError(f"object_split must be 'train' or 'test', got {split!r}")
    if _OBJECT_FILES is None:
        _OBJECT_FILES = sorted(glob.glob(os.path.join(DATA_PATH, "random_urdfs", "*", "*.urdf")))
        if not _OBJECT_FILES:
            raise RuntimeError(f"no random_urdfs found under {DATA_PATH}")
    test = split == "test"
    return [f for i, f in enumerate(_OBJECT_FILES) if (i % 10 == 0) == test]


# ------------------------------------------------------------------ config / results
def _vec(v: Any, n: int, name: str) -> tuple[float, ...]:
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"SimConfig.{name}: must be {n} numbers, got {v!r}") from None
    if len(t) != n or not all(math.isfinite(x) for x in t):
        raise ValueError(f"SimConfig.{name}: must be {n} finite numbers, got {v!r}")
    return t


@dataclass
class SimConfig:
    """Settings of the simulated grasping world. Positions are in the tray frame (m)."""

    image_size: int = 64
    """Side of the square RGB camera image (pixels), 32..472."""
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


# ------------------------------------------------------------------ the environment
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
        self._object_ids: list[int] = []
        self._object_names: list[str] = []
        self._saved_state = -1
        self._start_joints: list[float] | None = None
        self._eff: EffectiveTask = self._task.effective()
        self._background: np.ndarray | None = None
        self._target_pos = np.array(self._config.start_position, dtype=np.float64)
        self._target_yaw = float(self._config.start_yaw)
        self._steps = 0
        self._closed = False
        self._done = True
        self._started = False
        self._finger_angle = FINGER_OPEN
        self._view = self._proj = None
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

    # -------------------------------------------------------------- world building
    def _build_world(self, eff: EffectiveTask) -> None:
        c = self._client()
        cfg = self._config
        c.resetSimulation()
        c.setPhysicsEngineParameter(
            numSolverIterations=cfg.solver_iterations, deterministicOverlappingPairs=1
        )
        c.setTimeStep(cfg.time_step)
        c.setGravity(0, 0, cfg.gravity)
        plane = c.loadURDF(os.path.join(DATA_PATH, "plane.urdf"), [0, 0, -1])
        table = c.loadURDF(
            os.path.join(DATA_PATH, "table", "table.urdf"), [0.5, 0.0, -0.82], [0, 0, 0, 1]
        )
        tray = c.loadURDF(os.path.join(DATA_PATH, "tray", "tray.urdf"), TRAY_POS, TRAY_ORN)
        sdf = (
            KUKA_SDF
            if eff.gripper_key == NOMINAL_GRIPPER_KEY
            else assets.gripper_sdf(
                eff.finger_extension,
                eff.gripper_offset,
                eff.finger_width_scale,
                None if eff.finger_friction == FINGER_FRICTION else eff.finger_friction,
            )
        )
        self._robot = c.loadSDF(sdf)[0]
        c.resetBasePositionAndOrientation(self._robot, KUKA_BASE_POS, [0, 0, 0, 1])
        if eff.texture != "none":
            tex_path = (
                assets.checkerboard_texture(eff.checker_squares, eff.checker_colors)
                if eff.texture == "checkerboard"
                else eff.texture
            )
            if image_format(tex_path) is None:  # PyBullet would warn and return a valid-looking id
                raise ValueError(
                    f"task {self._task.name!r}: texture {tex_path!r} is missing or not an "
                    "image file"
                )
            try:
                tex = c.loadTexture(tex_path)
            except p.error as exc:
                raise ValueError(
                    f"task {self._task.name!r}: cannot load texture {tex_path!r}: {exc}"
                ) from None
            if tex < 0:
                raise ValueError(f"task {self._task.name!r}: cannot load texture {tex_path!r}")
            for body in (tray, table, plane):
                for link in range(-1, c.getNumJoints(body)):
                    c.changeVisualShape(body, link, textureUniqueId=tex, rgbaColor=[1, 1, 1, 1])
        key = (tuple(cfg.start_position), cfg.start_yaw)
        if key not in _START_JOINTS_CACHE:
            self._compute_start_joints()
            _START_JOINTS_CACHE[key] = list(self._start_joints)  # type: ignore[arg-type]
        self._start_joints = list(_START_JOINTS_CACHE[key])
        self._set_robot_to_start()
        self._saved_state = c.saveState()
        self._world_key = (eff.gripper_key, eff.texture, eff.checker_squares, eff.checker_colors)
        self._object_ids = []

    def _compute_start_joints(self) -> None:
        """Solve the start pose once per world by iterated IK with reset joint states."""
        c = self._client()
        cfg = self._config
        rest = [0.006418, 0.413184, -0.011401, -1.589317, 0.005379, 1.137684, -0.006539]
        for j in range(NUM_ARM_JOINTS):
            c.resetJointState(self._robot, j, rest[j])
        wrist = self._wrist_target(np.array(cfg.start_position), cfg.start_yaw)
        for _ in range(30):
            q = c.calculateInverseKinematics(
                self._robot,
                EE_LINK,
                wrist,
                DOWN_ORN,
                IK_LL,
                IK_UL,
                IK_JR,
                IK_RP,
                maxNumIterations=50,
                residualThreshold=1e-6,
            )
            for j in range(NUM_ARM_JOINTS):
                c.resetJointState(self._robot, j, q[j])
        self._start_joints = [float(v) for v in q[:NUM_ARM_JOINTS]]

    def _set_robot_to_start(self) -> None:
        c = self._client()
        assert self._start_joints is not None
        for j in range(c.getNumJoints(self._robot)):
            c.resetJointState(self._robot, j, 0.0)
        for j, q in enumerate(self._start_joints):
            c.resetJointState(self._robot, j, q)
        c.resetJointState(self._robot, YAW_JOINT, -self._config.start_yaw)
        c.resetJointState(self._robot, FINGER_A, -FINGER_OPEN)
        c.resetJointState(self._robot, FINGER_B, FINGER_OPEN)
        self._apply_arm_targets(self._start_joints, self._config.start_yaw)
        self._apply_fingers(FINGER_OPEN)

    # -------------------------------------------------------------- kinematics helpers
    @staticmethod
    def _gripper_orn(yaw: float) -> Sequence[float]:
        _, q = p.multiplyTransforms(
            [0, 0, 0], DOWN_ORN, [0, 0, 0], p.getQuaternionFromEuler([0, 0, -yaw])
        )
        return q

    def _wrist_target(self, tool_tray: np.ndarray, yaw: float) -> list[float]:
        """World position of the flange (IK link) that puts the nominal tool point at tool_tray."""
        tool_world = TRAY_ORIGIN + tool_tray
        rot_flange = np.array(p.getMatrixFromQuaternion(DOWN_ORN)).reshape(3, 3)
        rot_grip = np.array(p.getMatrixFromQuaternion(self._gripper_orn(yaw))).reshape(3, 3)
        wrist = (
            tool_world
            - rot_flange @ np.array([0, 0, WRIST_TO_GRIPPER])
            - rot_grip @ TOOL_IN_GRIPPER
        )
        return wrist.tolist()

    def _believed_tool(self) -> np.ndarray:
        """Tool point (tray frame) from the flange pose and yaw joint with nominal geometry."""
        c = self._client()
        st = c.getLinkState(self._robot, EE_LINK, computeForwardKinematics=1)
        pos, orn = np.array(st[4]), st[5]
        a = c.getJointState(self._robot, YAW_JOINT)[0]
        rot_flange = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
        rot_grip = rot_flange @ np.array(
            p.getMatrixFromQuaternion(p.getQuaternionFromEuler([0, 0, a]))
        ).reshape(3, 3)
        tool = pos + rot_flange @ np.array([0, 0, WRIST_TO_GRIPPER]) + rot_grip @ TOOL_IN_GRIPPER
        return tool - TRAY_ORIGIN

    def gripper_pose(self) -> tuple[np.ndarray, float]:
        """Actual tool point (tray frame, m) and yaw of the finger closing axis (rad, -pi/2..pi/2).

        Includes task geometry changes (finger extension, gripper offset) that the arm does
        not know about; compare :attr:`Observation.height` (the arm's belief).
        """
        c = self._client()
        st = c.getLinkState(self._robot, GRIPPER_LINK, computeForwardKinematics=1)
        pos, orn = np.array(st[4]), st[5]
        rot = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
        local = TOOL_IN_GRIPPER + np.array([0.0, 0.0, self._eff.finger_extension])
        tool = pos + rot @ local - TRAY_ORIGIN
        x_axis = rot[:, 0]
        yaw = _wrap_half_pi(math.atan2(x_axis[1], x_axis[0]))
        return tool, yaw

    def tool_error(self) -> np.ndarray:
        """Return the actual minus the believed tool point (m, tray frame).

        The task's gripper geometry change (finger extension, gripper offset) that the
        controller does not know; zero on base.
        """
        return self.gripper_pose()[0] - self._believed_tool()

    def commanded_pose(self) -> tuple[np.ndarray, float]:
        """Return the commanded (already clipped) tool position (tray frame) and yaw."""
        return self._target_pos.copy(), self._target_yaw

    # -------------------------------------------------------------- motor commands
    def _apply_arm_targets(self, joints: Sequence[float], yaw: float) -> None:
        c = self._client()
        vmax = self._config.arm_max_velocity
        for j in range(NUM_ARM_JOINTS):
            c.setJointMotorControl2(
                self._robot,
                j,
                p.POSITION_CONTROL,
                targetPosition=joints[j],
                targetVelocity=0,
                force=ARM_FORCE,
                maxVelocity=vmax,
                positionGain=0.3,
                velocityGain=1,
            )
        c.setJointMotorControl2(
            self._robot,
            YAW_JOINT,
            p.POSITION_CONTROL,
            targetPosition=-yaw,
            force=ARM_FORCE,
            maxVelocity=vmax * 2,
        )

    def _apply_fingers(self, angle: float) -> None:
        c = self._client()
        self._finger_angle = angle
        c.setJointMotorControl2(
            self._robot, FINGER_A, p.POSITION_CONTROL, targetPosition=-angle, force=FINGER_A_FORCE
        )
        c.setJointMotorControl2(
            self._robot, FINGER_B, p.POSITION_CONTROL, targetPosition=angle, force=FINGER_B_FORCE
        )
        c.setJointMotorControl2(
            self._robot, TIP_A, p.POSITION_CONTROL, targetPosition=0, force=FINGER_TIP_FORCE
        )
        c.setJointMotorControl2(
            self._robot, TIP_B, p.POSITION_CONTROL, targetPosition=0, force=FINGER_TIP_FORCE
        )

    def _solve_ik(self, pos: np.ndarray, yaw: float) -> list[float]:
        c = self._client()
        q = c.calculateInverseKinematics(
            self._robot,
            EE_LINK,
            self._wrist_target(pos, yaw),
            DOWN_ORN,
            IK_LL,
            IK_UL,
            IK_JR,
            IK_RP,
            maxNumIterations=40,
            residualThreshold=1e-5,
        )
        return list(q[:NUM_ARM_JOINTS])

    def _move_to(self, pos: np.ndarray, yaw: float, max_substeps: int, tol: float = 0.002) -> int:
        """Drive the arm to the commanded pose; returns the physics steps used."""
        c = self._client()
        used = 0
        while used < max_substeps:
            if used % 20 == 0:
                self._apply_arm_targets(self._solve_ik(pos, yaw), yaw)
            c.stepSimulation()
            used += 1
            if used % 4 == 0 and self._config.early_exit:
                err = np.max(np.abs(self._believed_tool() - pos))
                yaw_err = abs(c.getJointState(self._robot, YAW_JOINT)[0] + yaw)
                if err < tol and yaw_err < 0.02:
                    break
        return used

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
            self._set_robot_to_start()
        rng = np.random.default_rng(seed)

        # Draws are independent of the task so that a seed gives the same objects in every task.
        idx = rng.choice(len(self._objects_all), size=cfg.num_objects, replace=False)
        lo, hi = np.array(cfg.object_region_low), np.array(cfg.object_region_high)
        xy = lo + (hi - lo) * rng.random((cfg.num_objects, 2))
        yaws = rng.uniform(-math.pi, math.pi, cfg.num_objects)
        cam_noise = rng.normal(0.0, 1.0, 3)

        eye = np.array(CAMERA_EYE) + np.array(eff.camera_offset) + eff.camera_noise * cam_noise
        self._view = c.computeViewMatrix(
            (TRAY_ORIGIN + eye).tolist(),
            (TRAY_ORIGIN + np.array(CAMERA_TARGET)).tolist(),
            [0, 0, 1],
        )
        self._proj = c.computeProjectionMatrixFOV(CAMERA_FOV, 1.0, 0.05, 5.0)

        self._background = None
        if eff.object_alpha < 1.0:
            # Background for see-through objects: tray without objects, arm swung out of view.
            c.resetJointState(self._robot, 0, 1.2)
            self._background = self._render_raw()[0]
            c.resetJointState(self._robot, 0, self._start_joints[0])  # type: ignore[index]

        self._object_names = []
        for i, k in enumerate(idx):
            path = self._objects_all[int(k)]
            orn = p.getQuaternionFromEuler([0, 0, float(yaws[i])])
            pos = TRAY_ORIGIN + np.array([xy[i, 0], xy[i, 1], 0.06 + 0.05 * i])
            uid = c.loadURDF(path, pos.tolist(), orn, globalScaling=eff.object_scale)
            self._object_ids.append(uid)
            self._object_names.append(os.path.basename(path)[:-5])
        self._settle()

        self._target_pos = np.array(cfg.start_position, dtype=np.float64)
        self._target_yaw = float(cfg.start_yaw)
        self._steps = 0
        self._closed = False
        self._done = False
        self._started = True
        self._seed = seed
        return self._observe()

    def _settle(self) -> None:
        c = self._client()
        for i in range(self._config.settle_steps):
            c.stepSimulation()
            if i % 10 == 9 and i >= 59 and self._config.early_exit:
                still = True
                for uid in self._object_ids:
                    v, w = c.getBaseVelocity(uid)
                    if max(abs(x) for x in v) > 0.01 or max(abs(x) for x in w) > 0.2:
                        still = False
                        break
                if still:
                    break

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

        substeps = self._move_to(new_pos, new_yaw, cfg.max_substeps)
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
            lifted = self._lifted_object()
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
        c = self._client()
        n = self._config.close_steps
        ramp = max(1, n // 2)
        for i in range(n):
            self._apply_fingers(max(0.0, FINGER_OPEN * (1.0 - (i + 1) / ramp)))
            c.stepSimulation()
        self._closed = True
        return n

    def _lift(self) -> int:
        cfg = self._config
        pos = self._target_pos.copy()
        pos[2] = cfg.lift_height
        return self._move_to(pos, self._target_yaw, cfg.lift_steps, tol=0.01)

    def _lifted_object(self) -> str | None:
        c = self._client()
        best, best_z = None, -math.inf
        for uid, name in zip(self._object_ids, self._object_names):
            z = c.getBasePositionAndOrientation(uid)[0][2] - TRAY_FLOOR_Z
            if z > self._config.lift_success_height and z > best_z:
                best, best_z = name, z
        return best

    # -------------------------------------------------------------- observation
    def _render_raw(self) -> tuple[np.ndarray, np.ndarray]:
        c = self._client()
        eff = self._eff
        n = self._config.image_size
        w, h, rgba, _depth, seg = c.getCameraImage(
            n,
            n,
            viewMatrix=self._view,
            projectionMatrix=self._proj,
            lightDirection=list(eff.light_direction),
            lightColor=list(eff.light_color),
            lightDistance=2.0,
            shadow=1 if eff.shadows else 0,
            lightAmbientCoeff=eff.light_ambient,
            lightDiffuseCoeff=eff.light_diffuse,
            lightSpecularCoeff=eff.light_specular,
            renderer=p.ER_TINY_RENDERER,
            flags=p.ER_NO_SEGMENTATION_MASK if self._background is None else 0,
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[:, :, :3]
        seg_arr = np.asarray(seg).reshape(h, w) if self._background is not None else np.empty(0)
        return np.ascontiguousarray(rgb), seg_arr

    def render(self) -> np.ndarray:
        """Return the current camera image (H, W, 3) uint8, with the task's appearance."""
        rgb, seg = self._render_raw()
        if self._background is not None and self._object_ids:
            mask = np.isin(seg & ((1 << 24) - 1), self._object_ids)
            a = self._eff.object_alpha
            blend = a * rgb.astype(np.float32) + (1.0 - a) * self._background.astype(np.float32)
            rgb = np.where(mask[:, :, None], np.rint(blend).astype(np.uint8), rgb)
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
        if self._view is None or self._proj is None:
            raise RuntimeError("call reset(seed) before project_to_image()")
        view = np.asarray(self._view, dtype=np.float64).reshape(4, 4).T  # PyBullet: column-major
        proj = np.asarray(self._proj, dtype=np.float64).reshape(4, 4).T
        world = np.append(TRAY_ORIGIN + np.asarray(point, dtype=np.float64)[:3], 1.0)
        clip = proj @ view @ world
        ndc = clip[:3] / clip[3]
        n = self._config.image_size
        return np.array([(ndc[0] + 1.0) / 2.0 * n, (1.0 - ndc[1]) / 2.0 * n])

    def _observe(self, render: bool = True) -> Observation:
        n = self._config.image_size
        img = self.render() if render else np.zeros((n, n, 3), dtype=np.uint8)
        height = float(self._believed_tool()[2])
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
        c = self._client()
        pos, orn = c.getBasePositionAndOrientation(uid)
        verts = np.asarray(c.getMeshData(uid, -1)[1], dtype=np.float64)
        rot = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
        world = verts @ rot.T + np.array(pos) - TRAY_ORIGIN
        xy = world[:, :2]
        centre = (xy.max(0) + xy.min(0)) / 2.0
        d = xy - xy.mean(0)
        evals, evecs = np.linalg.eigh(d.T @ d)
        narrow = evecs[:, 0]  # smallest spread: close the fingers along it
        yaw = _wrap_half_pi(math.atan2(narrow[1], narrow[0]))
        return centre, yaw, float(world[:, 2].max()), float(world[:, 2].min())


def _wrap_half_pi(a: float) -> float:
    """Wrap an axis angle into [-pi/2, pi/2)."""
    return (a + math.pi / 2) % math.pi - math.pi / 2
