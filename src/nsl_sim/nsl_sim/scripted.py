"""Scripted policies for the grasping world: a state-reading oracle and random exploration.

Both return the action tuple of :meth:`nsl_sim.env.GraspEnv.step`:
``(translation: np.ndarray(3), rotation: float, close_gripper: bool, terminate: bool)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

# Annotations only: nsl_sim.env imports this module (GraspEnv.oracle_action), not the reverse.
if TYPE_CHECKING:  # pragma: no cover
    from .env import GraspEnv, SimConfig

__all__ = [
    "aware_oracle_action",
    "grasp_at",
    "oracle_action",
    "random_action",
    "random_grasp_goal",
]

#: Finger tips go this far below the object's top (m) ...
GRASP_DEPTH = 0.07
#: ... but stay at least this high above the floor (m).
GRASP_MIN_HEIGHT = 0.008


def oracle_action(env: "GraspEnv") -> tuple[np.ndarray, float, bool, bool]:
    """Scripted grasp that reads the simulator state (object poses and meshes).

    Picks the object closest (xy) to the commanded gripper position among those inside the
    workspace, aims the finger closing axis along the object's narrow horizontal axis (PCA of
    its mesh vertices), moves above it while descending so that height, position and yaw arrive
    together, and terminates (close + lift) on the step that reaches the grasp pose.
    """
    pos, _ = env.commanded_pose()
    target = None if env.done else _nearest_grasp(env, pos[:2])
    if target is None:
        return np.zeros(3), 0.0, False, True
    return grasp_at(env, *target)


def aware_oracle_action(env: "GraspEnv") -> tuple[np.ndarray, float, bool, bool]:
    """Return the action of the oracle that knows the task's gripper geometry change.

    The change is a finger extension or gripper offset. The oracle plans with the actual tool point
    (:meth:`GraspEnv.tool_error` added to the commanded one) and commands the grasp pose minus that
    error, so the real finger tips arrive where :func:`oracle_action` would put nominal ones. Its
    success on a geometry challenge is how solvable that challenge is (:mod:`nsl_sim.solvability`).
    """
    pos, _ = env.commanded_pose()
    error = env.tool_error()
    target = None if env.done else _nearest_grasp(env, pos[:2] + error[:2])
    if target is None:
        return np.zeros(3), 0.0, False, True
    goal, yaw = target
    return grasp_at(env, goal - error, yaw)


def _nearest_grasp(env: "GraspEnv", xy: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Oracle grasp pose (tool goal, yaw) of the graspable object nearest ``xy``, if any."""
    cfg = env.config
    lo, hi = np.array(cfg.workspace_low), np.array(cfg.workspace_high)
    best = None
    for uid in env._object_ids:
        centre, narrow_yaw, top, bottom = env._object_footprint(uid)
        if not (
            lo[0] - 0.02 <= centre[0] <= hi[0] + 0.02 and lo[1] - 0.02 <= centre[1] <= hi[1] + 0.02
        ):
            continue
        if top < 0.0 or bottom > 0.15:  # fell out of the tray / resting on something odd
            continue
        d = float(np.linalg.norm(centre - xy))
        if best is None or d < best[0]:
            best = (d, centre, narrow_yaw, top)
    if best is None:
        return None
    _, centre, target_yaw, top = best
    return np.array([centre[0], centre[1], max(GRASP_MIN_HEIGHT, top - GRASP_DEPTH)]), target_yaw


def grasp_at(
    env: "GraspEnv", goal: np.ndarray, target_yaw: float
) -> tuple[np.ndarray, float, bool, bool]:
    """Return the oracle's motion towards any grasp pose.

    Move above ``goal`` (tray frame xyz, clipped to the workspace) while descending so that height,
    position and yaw arrive together, and terminate (close + lift) on the step that reaches it.
    """
    cfg = env.config
    pos, yaw = env.commanded_pose()
    if env.done:
        return np.zeros(3), 0.0, False, True
    lo, hi = np.array(cfg.workspace_low), np.array(cfg.workspace_high)
    goal = np.clip(np.asarray(goal, dtype=np.float64), lo, hi)
    mt, mr = cfg.max_translation, cfg.max_rotation

    dyaw = target_yaw - yaw
    # The gripper is symmetric: pick the equivalent target yaw that stays within [-pi/2, pi/2].
    for alt in (target_yaw - math.pi, target_yaw + math.pi):
        if -math.pi / 2 <= alt <= math.pi / 2 and abs(alt - yaw) < abs(dyaw):
            dyaw = alt - yaw
    rot = float(np.clip(dyaw, -mr, mr)) if mr > 0 else 0.0

    dxy = goal[:2] - pos[:2]
    move_xy = np.clip(dxy, -mt, mt)
    # steps still needed after this one for xy and yaw
    left_xy = max(0.0, float(np.max(np.abs(dxy - move_xy))))
    steps_after = max(
        math.ceil(left_xy / mt - 1e-9),
        math.ceil(max(0.0, abs(dyaw) - abs(rot)) / mr - 1e-9) if mr > 0 else 0,
    )
    z_allowed = goal[2] + steps_after * mt
    dz = float(np.clip(max(z_allowed, goal[2]) - pos[2], -mt, mt))
    move = np.array([move_xy[0], move_xy[1], dz])
    new = pos + move
    reached = (
        np.max(np.abs(new[:2] - goal[:2])) < 0.004
        and abs(new[2] - goal[2]) < 0.004
        and abs(dyaw - rot) < 0.03
    )
    return move, rot, False, bool(reached)


def random_grasp_goal(rng: np.random.Generator, config: "SimConfig") -> tuple[np.ndarray, float]:
    """Return a grasp pose drawn without looking.

    xy uniform over the object drop region, the oracle's lowest grasp height, yaw uniform.
    :func:`grasp_at` towards it is QT-Opt's scripted exploration ("lower the gripper to a random
    position and close"): it moves like the oracle, so its outcome depends on where the objects
    are, which only the image shows.
    """
    lo, hi = np.array(config.object_region_low), np.array(config.object_region_high)
    xy = rng.uniform(lo, hi)
    return np.array([xy[0], xy[1], GRASP_MIN_HEIGHT]), float(
        rng.uniform(-math.pi / 2, math.pi / 2)
    )


def random_action(
    rng: np.random.Generator,
    config: "SimConfig",
    p_close: float = 0.0,
    p_terminate: float = 0.1,
) -> tuple[np.ndarray, float, bool, bool]:
    """Random exploration action (QT-Opt style data collection).

    Translation is uniform per axis in +-max_translation for x/y and biased downwards for z
    (uniform in [-max_translation, +max_translation/4]) so random episodes reach the objects;
    rotation uniform in +-max_rotation; close/terminate with the given probabilities.
    """
    mt, mr = config.max_translation, config.max_rotation
    t = np.array([rng.uniform(-mt, mt), rng.uniform(-mt, mt), rng.uniform(-mt, mt / 4)])
    rot = float(rng.uniform(-mr, mr))
    close = bool(rng.random() < p_close)
    term = bool(rng.random() < p_terminate)
    return t, rot, close, term
