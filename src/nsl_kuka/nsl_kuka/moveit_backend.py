"""The ArmBackend of a real Kuka arm through MoveIt 2's Python API (moveit_py).

Only importable on a robot computer with MoveIt 2 installed; elsewhere ``MoveItBackend(...)``
raises ``BackendUnavailable`` with what to install. Cartesian steps are planned to a pose goal of
``tool_link`` and executed; the gripper is driven through a control_msgs/GripperCommand action and
its finger gap read from joint states.
"""

from __future__ import annotations

import math
import threading

from geometry_msgs.msg import PoseStamped
from rclpy.action import ActionClient
from sensor_msgs.msg import JointState

from nsl_kuka.arm_logic import ToolPose


class BackendUnavailable(RuntimeError):
    pass


def _require(module: str, what: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise BackendUnavailable(
            f"{what} is not installed ({exc}). The real-arm node needs a full ROS 2 install "
            "with MoveIt 2 (apt: ros-$ROS_DISTRO-moveit-py ros-$ROS_DISTRO-control-msgs) and the "
            "robot's MoveIt configuration; for simulation use the sim node instead "
            "(collect.launch.py sim:=true)."
        ) from exc


class MoveItBackend:
    def __init__(
        self,
        node,
        planning_group: str,
        tool_link: str,
        planning_frame: str,
        gripper_action: str,
        finger_joints: tuple[str, ...],
        finger_gap_scale: float,
        timeout: float,
    ):
        planning = _require("moveit.planning", "moveit_py (MoveIt 2 Python API)")
        control_msgs = _require("control_msgs.action", "control_msgs")
        self._node, self._PoseStamped = node, PoseStamped
        self._moveit = planning.MoveItPy(node_name=f"{node.get_name()}_moveit")
        self._arm = self._moveit.get_planning_component(planning_group)
        self._tool_link, self._frame, self._timeout = tool_link, planning_frame, timeout
        self._GripperCommand = control_msgs.GripperCommand
        self._gripper = ActionClient(node, control_msgs.GripperCommand, gripper_action)
        self._finger_joints, self._gap_scale = finger_joints, finger_gap_scale
        self._joint_positions: dict[str, float] = {}
        self._lock = threading.Lock()
        node.create_subscription(JointState, "joint_states", self._on_joints, 10)

    def _on_joints(self, msg) -> None:
        with self._lock:
            self._joint_positions.update(zip(msg.name, msg.position))

    def tool_pose(self) -> ToolPose:
        with self._moveit.get_planning_scene_monitor().read_only() as scene:
            pose = scene.current_state.get_pose(self._tool_link)
        q = pose.orientation
        yaw = math.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z))
        return ToolPose((pose.position.x, pose.position.y, pose.position.z), yaw)

    def move_to(self, pose: ToolPose) -> None:
        goal = self._PoseStamped()
        goal.header.frame_id = self._frame
        goal.pose.position.x, goal.pose.position.y, goal.pose.position.z = pose.position
        # Tool pointing down (180 degrees about x), then yaw about the vertical axis.
        half = pose.yaw / 2
        goal.pose.orientation.x, goal.pose.orientation.y = math.cos(half), math.sin(half)
        goal.pose.orientation.z, goal.pose.orientation.w = 0.0, 0.0
        self._arm.set_start_state_to_current_state()
        self._arm.set_goal_state(pose_stamped_msg=goal, pose_link=self._tool_link)
        plan = self._arm.plan()
        if not plan:
            raise RuntimeError(f"MoveIt found no plan to {pose}")
        self._moveit.execute(plan.trajectory, controllers=[])

    def set_gripper(self, closed: bool) -> None:
        if not self._gripper.wait_for_server(timeout_sec=self._timeout):
            raise RuntimeError("gripper action server not available")
        goal = self._GripperCommand.Goal()
        goal.command.position = 0.0 if closed else 1.0
        goal.command.max_effort = 40.0
        done = threading.Event()
        future = self._gripper.send_goal_async(goal)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(self._timeout):
            raise RuntimeError("gripper did not accept the command in time")

    def finger_gap(self) -> float:
        with self._lock:
            values = [self._joint_positions.get(j) for j in self._finger_joints]
        if any(v is None for v in values):
            raise RuntimeError(f"no joint state for finger joints {self._finger_joints}")
        return self._gap_scale * sum(abs(v) for v in values)
