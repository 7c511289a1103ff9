"""ROS 2 node: the PyBullet grasping world standing in for the Kuka arm and its camera.

Serves the arm interface (``arm/reset_episode``, ``arm/execute_step``), publishes the camera
image (``camera/image_raw``) after every reset and step (and optionally at ``camera_rate``) and
the gripper state.

``task`` (parameter, and the ``task`` of a reset request) is a named task (``base``,
``checkerboard``, ``harsh_light@1.5`` for a severity, ...) or the path of a YAML task file
(``task:=/path/my_variation.yaml``).

Bad requests never kill the node: an unknown task, a bad YAML file or texture, a step without
an episode or after its end, a non-finite action get ``success=false`` and a message saying
why; translations and rotations beyond the limits are clipped (the reply's message says so).
A bad ``task`` *parameter* at start-up is a configuration error: the node exits with code 2
and the reason.
"""

from __future__ import annotations

import math

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Image

from nsl_common import names
from nsl_common.node_main import run_node
from nsl_common.qos import CAMERA_QOS, LATCHED_QOS
from nsl_msgs.msg import GripperState
from nsl_msgs.srv import ExecuteStep, ResetEpisode
from nsl_sim.config import CAMERA_FOV_RANGE
from nsl_sim.env import GraspEnv, Observation, SimConfig


class SimNode(Node):
    def __init__(self) -> None:
        super().__init__(names.SIM_NODE)
        self.declare_parameter(
            "task",
            "base",
            ParameterDescriptor(
                description="world variation the sim builds until a reset names another"
            ),
        )
        self.declare_parameter(
            "image_size",
            SimConfig.image_size,
            ParameterDescriptor(description="camera image width = height, pixels (32..472)"),
        )
        self.declare_parameter(
            "num_objects",
            SimConfig.num_objects,
            ParameterDescriptor(description="objects dropped in the tray per episode"),
        )
        self.declare_parameter(
            "max_steps",
            SimConfig.max_steps,
            ParameterDescriptor(description="control steps before the forced close-and-lift"),
        )
        self.declare_parameter(
            "camera_fov",
            SimConfig.camera_fov,
            ParameterDescriptor(
                description="the camera's vertical field of view, degrees (10..90), a float; "
                "a checkpoint sees well only at the framing it was trained with",
                read_only=True,
                floating_point_range=[
                    FloatingPointRange(
                        from_value=CAMERA_FOV_RANGE[0], to_value=CAMERA_FOV_RANGE[1]
                    )
                ],
            ),
        )
        self.declare_parameter(
            "camera_rate",
            0.0,
            ParameterDescriptor(
                description="Hz of extra camera frames between steps; "
                "0: a frame after each reset and step only"
            ),
        )
        self.declare_parameter(
            "object_split",
            "train",
            ParameterDescriptor(description="object set: train or test (held-out objects)"),
        )
        p = self.get_parameter
        config = SimConfig(
            image_size=p("image_size").value,
            camera_fov=p("camera_fov").value,
            num_objects=p("num_objects").value,
            max_steps=p("max_steps").value,
            object_split=p("object_split").value,
        )
        self.env = GraspEnv(
            config, task=p("task").value
        )  # raises a clear error on a bad task/config
        self.frame_id = self.get_namespace().strip("/") or "sim"
        self.observation: Observation | None = None

        self.image_pub = self.create_publisher(Image, names.CAMERA_TOPIC, CAMERA_QOS)
        self.state_pub = self.create_publisher(
            GripperState, names.GRIPPER_STATE_TOPIC, LATCHED_QOS
        )
        self.create_service(ResetEpisode, names.ARM_RESET_SERVICE, self.on_reset)
        self.create_service(ExecuteStep, names.ARM_STEP_SERVICE, self.on_step)
        rate = p("camera_rate").value
        if rate < 0:
            raise ValueError(f"camera_rate must be >= 0 Hz, got {rate}")
        if rate > 0:
            self.create_timer(1.0 / rate, self.publish_observation)
        self.get_logger().info(
            f"sim ready: task={self.env.task.name} image={config.image_size}px "
            f"fov={config.camera_fov:g}deg "
            f"objects={config.num_objects}"
        )

    def gripper_state(self) -> GripperState:
        obs = self.observation
        if obs is None:
            return GripperState()
        return GripperState(
            closed=bool(obs.gripper_closed),
            height=float(obs.height),
            step_fraction=float(obs.step_fraction),
        )

    def publish_observation(self) -> None:
        if self.observation is None:
            return
        img = np.ascontiguousarray(self.observation.image, dtype=np.uint8)
        msg = Image(
            height=img.shape[0],
            width=img.shape[1],
            encoding="rgb8",
            is_bigendian=0,
            step=img.shape[1] * 3,
        )
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        msg.data = img.tobytes()  # bytes, not an ndarray: 60x faster (docs/platform.md)
        self.image_pub.publish(msg)
        self.state_pub.publish(self.gripper_state())

    def on_reset(
        self, request: ResetEpisode.Request, response: ResetEpisode.Response
    ) -> ResetEpisode.Response:
        try:
            self.observation = None
            if request.seed < 0:
                raise ValueError(f"seed must be >= 0, got {request.seed}")
            self.observation = self.env.reset(seed=int(request.seed), task=request.task or None)
        except Exception as exc:  # never let a request kill the node
            response.success, response.message = False, f"reset refused: {exc}"
            self.get_logger().error(response.message)
            return response
        self.publish_observation()
        response.success, response.gripper_state = True, self.gripper_state()
        return response

    def on_step(
        self, request: ExecuteStep.Request, response: ExecuteStep.Response
    ) -> ExecuteStep.Response:
        action = request.action
        values = [*action.translation, action.rotation]
        if self.observation is None:
            response.success, response.message = False, "no episode: call arm/reset_episode first"
            return response
        if not all(math.isfinite(v) for v in values):
            response.success, response.message = False, f"step refused: non-finite action {values}"
            self.get_logger().error(response.message)
            return response
        try:
            result = self.env.step(
                tuple(float(v) for v in action.translation),
                float(action.rotation),
                bool(action.close_gripper),
                bool(action.terminate),
            )
        except Exception as exc:  # e.g. a step after the episode ended; never kill the node
            response.success, response.message = False, f"step refused: {exc}"
            self.get_logger().error(response.message)
            return response
        self.observation = result.observation
        self.publish_observation()
        response.success, response.gripper_state = True, self.gripper_state()
        if result.info.get("clipped"):
            cfg = self.env.config
            response.message = (
                f"action clipped to the limits (translation +-{cfg.max_translation} m per axis, "
                f"rotation +-{cfg.max_rotation} rad, "
                f"workspace {list(cfg.workspace_low)}..{list(cfg.workspace_high)})"
            )
        response.done, response.grasp_success = bool(result.done), bool(result.grasp_success)
        return response

    def destroy_node(self) -> None:
        env = getattr(self, "env", None)  # absent when __init__ failed (bad parameters)
        if env is not None:
            env.close()
        super().destroy_node()


def main(args=None) -> None:
    run_node(SimNode, "sim_node", args)


if __name__ == "__main__":
    main()
