"""The grasping world's layout, its object split, and building it in a physics connection.

World layout (world frame, metres)
    * Kuka base at (-0.1, 0, 0.07) (as in pybullet_envs), ``kuka_iiwa/kuka_with_gripper2.sdf``.
    * ``tray/tray.urdf`` at (0.6, 0, -0.19), yawed by pi (as in pybullet_envs, 4 cm closer to
      the robot so the whole workspace is reachable); ``table/table.urdf`` under it and
      ``plane.urdf`` at z = -1 for the camera background.
    * **Tray frame**: origin at the centre of the tray floor surface, world (0.6, 0, -0.184),
      axes parallel to the world axes. All positions of the API are in this frame.
      Note: the stock tray mesh has a slanted face near tray-frame x = +0.10..+0.15; the default
      workspace and object region stay on the robot side of it.

Objects
    ``pybullet_data/random_urdfs`` (1000 procedurally generated objects). The list of URDF
    files is **sorted by name**; object index ``i`` (0-based in that sorted list, which is the
    same as the folder number 000..999) is a *test* object when ``i % 10 == 0`` (100 objects)
    and a *train* object otherwise (900 objects). That matches the folder-name rule of
    pybullet_envs (folders ending in 0 are test objects) but does not depend on glob order.
    ``num_objects`` distinct objects of the split are drawn per episode from the seed, placed
    at random positions/yaws inside ``object_region_low/high`` and dropped from a few
    centimetres onto the tray floor.
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import pybullet as p
import pybullet_data
from pybullet_utils import bullet_client

from . import assets
from .config import SimConfig
from .tasks import FINGER_FRICTION, NOMINAL_GRIPPER_KEY, EffectiveTask, image_format

__all__ = [
    "TRAY_FLOOR_Z",
    "TRAY_ORIGIN",
    "build_world",
    "lifted_object",
    "object_files",
    "object_footprint",
    "settle",
    "wrap_half_pi",
]

DATA_PATH = pybullet_data.getDataPath()
KUKA_SDF = os.path.join(DATA_PATH, "kuka_iiwa", "kuka_with_gripper2.sdf")
KUKA_BASE_POS = (-0.1, 0.0, 0.07)
TRAY_POS = (0.6, 0.0, -0.19)
TRAY_ORN = (0.0, 0.0, 1.0, 0.0)  # yaw pi, as in pybullet_envs
TRAY_FLOOR_Z = -0.184  # world z of the tray floor surface (measured with rayTest)
TRAY_ORIGIN = np.array([TRAY_POS[0], TRAY_POS[1], TRAY_FLOOR_Z])

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


def build_world(
    c: bullet_client.BulletClient, cfg: SimConfig, eff: EffectiveTask, task_name: str
) -> int:
    """Reset the simulation and load plane, table, tray and the task's robot; return the robot.

    The task's texture (if any) goes on tray, table and plane; ``task_name`` names the task in
    the error raised when it cannot be loaded.
    """
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
    robot = c.loadSDF(sdf)[0]
    c.resetBasePositionAndOrientation(robot, KUKA_BASE_POS, [0, 0, 0, 1])
    if eff.texture != "none":
        tex_path = (
            assets.checkerboard_texture(eff.checker_squares, eff.checker_colors)
            if eff.texture == "checkerboard"
            else eff.texture
        )
        if image_format(tex_path) is None:  # PyBullet would warn and return a valid-looking id
            raise ValueError(
                f"task {task_name!r}: texture {tex_path!r} is missing or not an image file"
            )
        try:
            tex = c.loadTexture(tex_path)
        except p.error as exc:
            raise ValueError(
                f"task {task_name!r}: cannot load texture {tex_path!r}: {exc}"
            ) from None
        if tex < 0:
            raise ValueError(f"task {task_name!r}: cannot load texture {tex_path!r}")
        for body in (tray, table, plane):
            for link in range(-1, c.getNumJoints(body)):
                c.changeVisualShape(body, link, textureUniqueId=tex, rgbaColor=[1, 1, 1, 1])
    return robot


def settle(c: bullet_client.BulletClient, object_ids: list[int], cfg: SimConfig) -> None:
    """Run physics until every dropped object is at rest, or ``cfg.settle_steps`` steps."""
    for i in range(cfg.settle_steps):
        c.stepSimulation()
        if i % 10 == 9 and i >= 59 and cfg.early_exit:
            still = True
            for uid in object_ids:
                v, w = c.getBaseVelocity(uid)
                if max(abs(x) for x in v) > 0.01 or max(abs(x) for x in w) > 0.2:
                    still = False
                    break
            if still:
                break


def lifted_object(
    c: bullet_client.BulletClient,
    object_ids: list[int],
    object_names: list[str],
    success_height: float,
) -> str | None:
    """Return the name of the highest object whose origin is above ``success_height``."""
    best, best_z = None, -math.inf
    for uid, name in zip(object_ids, object_names):
        z = c.getBasePositionAndOrientation(uid)[0][2] - TRAY_FLOOR_Z
        if z > success_height and z > best_z:
            best, best_z = name, z
    return best


def object_footprint(
    c: bullet_client.BulletClient, uid: int
) -> tuple[np.ndarray, float, float, float]:
    """(centre xy in tray frame, narrow-axis yaw, top height, bottom height) of one object."""
    pos, orn = c.getBasePositionAndOrientation(uid)
    verts = np.asarray(c.getMeshData(uid, -1)[1], dtype=np.float64)
    rot = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
    world = verts @ rot.T + np.array(pos) - TRAY_ORIGIN
    xy = world[:, :2]
    centre = (xy.max(0) + xy.min(0)) / 2.0
    d = xy - xy.mean(0)
    evals, evecs = np.linalg.eigh(d.T @ d)
    narrow = evecs[:, 0]  # smallest spread: close the fingers along it
    yaw = wrap_half_pi(math.atan2(narrow[1], narrow[0]))
    return centre, yaw, float(world[:, 2].max()), float(world[:, 2].min())


def wrap_half_pi(a: float) -> float:
    """Wrap an axis angle into [-pi/2, pi/2)."""
    return (a + math.pi / 2) % math.pi - math.pi / 2
