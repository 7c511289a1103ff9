"""ROS 2 node: the real Kuka arm behind NSL's arm interface, through MoveIt 2.

Serves ``arm/reset_episode`` and ``arm/execute_step`` exactly like the sim node, so the policy
and the collector do not know which one they talk to. Steps are clipped to the configured
workspace; non-finite steps are refused without moving. Without MoveIt 2 the node exits at once
with a message saying what to install.
"""

from __future__ import annotations

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from nsl_common import names
from nsl_common.node_main import run_node
from nsl_kuka.arm_logic import ArmConfig, GraspEpisode, StepOutcome
from nsl_kuka.moveit_backend import BackendUnavailable, MoveItBackend
from nsl_msgs.msg import GripperState
from nsl_msgs.srv import ExecuteStep, ResetEpisode


def declare_arm_parameters(node: Node) -> None:
    """Declare the arm node's parameters (also used to document them where MoveIt is missing)."""
    d = ParameterDescriptor
    defaults = ArmConfig()
    node.declare_parameter(
        "workspace_low",
        list(defaults.workspace_low),
        d(description="lowest tool position x, y, z (m, planning frame)"),
    )
    node.declare_parameter(
        "workspace_high",
        list(defaults.workspace_high),
        d(description="highest tool position x, y, z (m, planning frame)"),
    )
    node.declare_parameter(
        "tray_height",
        defaults.tray_height,
        d(description="z of the tray floor (m); heights are reported above it"),
    )
    node.declare_parameter(
        "max_translation",
        defaults.max_translation,
        d(description="largest displacement per axis and step (m)"),
    )
    node.declare_parameter(
        "max_rotation", defaults.max_rotation, d(description="largest rotation per step (rad)")
    )
    node.declare_parameter(
        "max_steps", defaults.max_steps, d(description="steps before the forced close-and-lift")
    )
    node.declare_parameter(
        "lift_height", defaults.lift_height, d(description="lift after closing (m)")
    )
    node.declare_parameter(
        "min_object_gap",
        defaults.min_object_gap,
        d(description="finger gap after lifting that counts as a held object (m)"),
    )
    node.declare_parameter(
        "start_position",
        list(defaults.start_position),
        d(description="tool position at each episode start (m)"),
    )
    node.declare_parameter(
        "start_yaw", defaults.start_yaw, d(description="tool yaw at each episode start (rad)")
    )
    node.declare_parameter(
        "planning_group", "manipulator", d(description="MoveIt planning group of the arm")
    )
    node.declare_parameter("tool_link", "tool0", d(description="link whose pose the steps move"))
    node.declare_parameter(
        "planning_frame", "world", d(description="frame of the workspace limits")
    )
    node.declare_parameter(
        "gripper_action",
        "gripper_controller/gripper_cmd",
        d(description="control_msgs/GripperCommand action"),
    )
    node.declare_parameter(
        "finger_joints",
        ["finger_joint"],
        d(description="joints whose positions give the finger gap"),
    )
    node.declare_parameter(
        "finger_gap_scale", 1.0, d(description="metres of finger gap per unit of joint position")
    )
    node.declare_parameter("timeout", 10.0, d(description="seconds to wait for the gripper"))


class KukaArmNode(Node):
    def __init__(self) -> None:
        super().__init__(names.ARM_NODE)
        declare_arm_parameters(self)
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        self.config = ArmConfig(
            workspace_low=tuple(p("workspace_low")),
            workspace_high=tuple(p("workspace_high")),
            tray_height=p("tray_height"),
            max_translation=p("max_translation"),
            max_rotation=p("max_rotation"),
            max_steps=p("max_steps"),
            lift_height=p("lift_height"),
            min_object_gap=p("min_object_gap"),
            start_position=tuple(p("start_position")),
            start_yaw=p("start_yaw"),
        )
        backend = MoveItBackend(
            self,
            p("planning_group"),
            p("tool_link"),
            p("planning_frame"),
            p("gripper_action"),
            tuple(p("finger_joints")),
            p("finger_gap_scale"),
            p("timeout"),
        )
        self.episode = GraspEpisode(self.config, backend)
        group = MutuallyExclusiveCallbackGroup()  # one motion at a time
        self.create_service(
            ResetEpisode, names.ARM_RESET_SERVICE, self.on_reset, callback_group=group
        )
        self.create_service(
            ExecuteStep, names.ARM_STEP_SERVICE, self.on_step, callback_group=group
        )
        self.get_logger().info("Kuka arm ready")

    @staticmethod
    def _state(outcome: StepOutcome) -> GripperState:
        return GripperState(
            closed=outcome.gripper_closed,
            height=outcome.height,
            step_fraction=outcome.step_fraction,
        )

    def on_reset(self, request, response):
        try:
            outcome = self.episode.reset()
        except RuntimeError as exc:
            response.success, response.message = False, f"reset failed: {exc}"
            return response
        response.success, response.gripper_state = True, self._state(outcome)
        return response

    def on_step(self, request, response):
        a = request.action
        try:
            outcome = self.episode.step(
                list(a.translation), float(a.rotation), bool(a.close_gripper), bool(a.terminate)
            )
        except (ValueError, RuntimeError) as exc:
            response.success, response.message = False, f"step refused: {exc}"
            self.get_logger().error(response.message)
            return response
        response.success, response.gripper_state = True, self._state(outcome)
        response.done, response.grasp_success = outcome.done, outcome.grasp_success
        response.message = "clipped to the workspace" if outcome.clipped else ""
        return response


def main(args=None) -> None:
    run_node(KukaArmNode, "kuka_arm_node", args, threads=2, config_errors=(BackendUnavailable,))


if __name__ == "__main__":
    main()
