"""The Kuka arm of the grasping world: kinematics and motor commands.

Kinematics: inverse kinematics to the commanded tool pose, the believed and the actual tool
point; motor commands: joint position control of arm, yaw joint and fingers.

The arm knows only the *nominal* gripper geometry: a task's geometry change (finger extension,
gripper offset) moves the real finger tips, not the controller's belief.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pybullet as p
from pybullet_utils import bullet_client

from .config import SimConfig
from .world import TRAY_ORIGIN, wrap_half_pi

__all__ = ["Arm", "FINGER_OPEN"]

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

#: Arm joint angles of the start pose per (start_position, start_yaw); the arm chain is the
#: same for every gripper variant, so one IK solution serves all tasks.
_START_JOINTS_CACHE: dict[tuple, list[float]] = {}


def _gripper_orn(yaw: float) -> Sequence[float]:
    _, q = p.multiplyTransforms(
        [0, 0, 0], DOWN_ORN, [0, 0, 0], p.getQuaternionFromEuler([0, 0, -yaw])
    )
    return q


def _wrist_target(tool_tray: np.ndarray, yaw: float) -> list[float]:
    """World position of the flange (IK link) that puts the nominal tool point at tool_tray."""
    tool_world = TRAY_ORIGIN + tool_tray
    rot_flange = np.array(p.getMatrixFromQuaternion(DOWN_ORN)).reshape(3, 3)
    rot_grip = np.array(p.getMatrixFromQuaternion(_gripper_orn(yaw))).reshape(3, 3)
    wrist = (
        tool_world - rot_flange @ np.array([0, 0, WRIST_TO_GRIPPER]) - rot_grip @ TOOL_IN_GRIPPER
    )
    return wrist.tolist()


class Arm:
    """The robot body ``robot`` in the physics connection that ``client()`` returns.

    ``client`` is a callable so that a closed environment raises its own error here too.
    """

    def __init__(
        self,
        client: Callable[[], bullet_client.BulletClient],
        robot: int,
        config: SimConfig,
    ) -> None:
        self._client = client
        self.robot = robot
        self._config = config

    # -------------------------------------------------------------- start pose
    def go_to_start(self) -> None:
        """Put the arm in the start pose (one IK solution per start pose, cached per process)."""
        cfg = self._config
        key = (tuple(cfg.start_position), cfg.start_yaw)
        if key not in _START_JOINTS_CACHE:
            _START_JOINTS_CACHE[key] = self._solve_start_joints()
        self.start_joints = list(_START_JOINTS_CACHE[key])
        self.reset_to_start()

    def _solve_start_joints(self) -> list[float]:
        """Solve the start pose by iterated IK with reset joint states."""
        c = self._client()
        cfg = self._config
        rest = [0.006418, 0.413184, -0.011401, -1.589317, 0.005379, 1.137684, -0.006539]
        for j in range(NUM_ARM_JOINTS):
            c.resetJointState(self.robot, j, rest[j])
        wrist = _wrist_target(np.array(cfg.start_position), cfg.start_yaw)
        for _ in range(30):
            q = c.calculateInverseKinematics(
                self.robot,
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
                c.resetJointState(self.robot, j, q[j])
        return [float(v) for v in q[:NUM_ARM_JOINTS]]

    def reset_to_start(self) -> None:
        """Reset every joint to the start pose (fingers open) and hold it."""
        c = self._client()
        for j in range(c.getNumJoints(self.robot)):
            c.resetJointState(self.robot, j, 0.0)
        for j, q in enumerate(self.start_joints):
            c.resetJointState(self.robot, j, q)
        c.resetJointState(self.robot, YAW_JOINT, -self._config.start_yaw)
        c.resetJointState(self.robot, FINGER_A, -FINGER_OPEN)
        c.resetJointState(self.robot, FINGER_B, FINGER_OPEN)
        self._apply_arm_targets(self.start_joints, self._config.start_yaw)
        self._apply_fingers(FINGER_OPEN)

    # -------------------------------------------------------------- kinematics
    def believed_tool(self) -> np.ndarray:
        """Tool point (tray frame) from the flange pose and yaw joint with nominal geometry."""
        c = self._client()
        st = c.getLinkState(self.robot, EE_LINK, computeForwardKinematics=1)
        pos, orn = np.array(st[4]), st[5]
        a = c.getJointState(self.robot, YAW_JOINT)[0]
        rot_flange = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
        rot_grip = rot_flange @ np.array(
            p.getMatrixFromQuaternion(p.getQuaternionFromEuler([0, 0, a]))
        ).reshape(3, 3)
        tool = pos + rot_flange @ np.array([0, 0, WRIST_TO_GRIPPER]) + rot_grip @ TOOL_IN_GRIPPER
        return tool - TRAY_ORIGIN

    def actual_tool(self, finger_extension: float) -> tuple[np.ndarray, float]:
        """Actual tool point (tray frame) and finger closing axis yaw of the real gripper.

        ``finger_extension`` (m) is the task's finger lengthening; a gripper offset is in the
        loaded model already.
        """
        c = self._client()
        st = c.getLinkState(self.robot, GRIPPER_LINK, computeForwardKinematics=1)
        pos, orn = np.array(st[4]), st[5]
        rot = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
        local = TOOL_IN_GRIPPER + np.array([0.0, 0.0, finger_extension])
        tool = pos + rot @ local - TRAY_ORIGIN
        x_axis = rot[:, 0]
        yaw = wrap_half_pi(math.atan2(x_axis[1], x_axis[0]))
        return tool, yaw

    def _solve_ik(self, pos: np.ndarray, yaw: float) -> list[float]:
        c = self._client()
        q = c.calculateInverseKinematics(
            self.robot,
            EE_LINK,
            _wrist_target(pos, yaw),
            DOWN_ORN,
            IK_LL,
            IK_UL,
            IK_JR,
            IK_RP,
            maxNumIterations=40,
            residualThreshold=1e-5,
        )
        return list(q[:NUM_ARM_JOINTS])

    # -------------------------------------------------------------- motion
    def move_to(self, pos: np.ndarray, yaw: float, max_substeps: int, tol: float = 0.002) -> int:
        """Drive the arm to the commanded pose; returns the physics steps used."""
        c = self._client()
        used = 0
        while used < max_substeps:
            if used % 20 == 0:
                self._apply_arm_targets(self._solve_ik(pos, yaw), yaw)
            c.stepSimulation()
            used += 1
            if used % 4 == 0 and self._config.early_exit:
                err = np.max(np.abs(self.believed_tool() - pos))
                yaw_err = abs(c.getJointState(self.robot, YAW_JOINT)[0] + yaw)
                if err < tol and yaw_err < 0.02:
                    break
        return used

    def close_fingers(self) -> int:
        """Ramp the fingers closed over ``close_steps`` physics steps; returns the steps used."""
        c = self._client()
        n = self._config.close_steps
        ramp = max(1, n // 2)
        for i in range(n):
            self._apply_fingers(max(0.0, FINGER_OPEN * (1.0 - (i + 1) / ramp)))
            c.stepSimulation()
        return n

    # -------------------------------------------------------------- motor commands
    def _apply_arm_targets(self, joints: Sequence[float], yaw: float) -> None:
        c = self._client()
        vmax = self._config.arm_max_velocity
        for j in range(NUM_ARM_JOINTS):
            c.setJointMotorControl2(
                self.robot,
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
            self.robot,
            YAW_JOINT,
            p.POSITION_CONTROL,
            targetPosition=-yaw,
            force=ARM_FORCE,
            maxVelocity=vmax * 2,
        )

    def _apply_fingers(self, angle: float) -> None:
        c = self._client()
        c.setJointMotorControl2(
            self.robot, FINGER_A, p.POSITION_CONTROL, targetPosition=-angle, force=FINGER_A_FORCE
        )
        c.setJointMotorControl2(
            self.robot, FINGER_B, p.POSITION_CONTROL, targetPosition=angle, force=FINGER_B_FORCE
        )
        c.setJointMotorControl2(
            self.robot, TIP_A, p.POSITION_CONTROL, targetPosition=0, force=FINGER_TIP_FORCE
        )
        c.setJointMotorControl2(
            self.robot, TIP_B, p.POSITION_CONTROL, targetPosition=0, force=FINGER_TIP_FORCE
        )
