"""launch_testing: the sim node from the collect graph's launch description.

It serves the arm interface (reset, step, refusal of an unknown task) and publishes camera
images.

Runs where ROS 2 launch_testing is installed (the docker/ image: `launch_test` or pytest with the
launch_testing plugin); reported as skipped elsewhere.
"""

from __future__ import annotations

import unittest

import pytest

from nsl_common import names

pytest.importorskip(
    "launch_testing",
    reason="ROS 2 launch_testing is not installed here (not on PyPI); runs in the docker/ image",
)

# After the skip: these need ROS 2 launch_testing, rclpy and the built messages.
import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import rclpy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from nsl_bringup.launch_description import launch_nodes  # noqa: E402
from nsl_msgs.msg import GraspAction  # noqa: E402
from nsl_msgs.srv import ExecuteStep, ResetEpisode  # noqa: E402

NAMESPACE = "launch_test"


@pytest.mark.launch_test
def generate_test_description():
    sim = [
        n
        for n in launch_nodes("collect", {"namespace": NAMESPACE, "task": "base"})
        if getattr(n, "node_executable", None) == "sim_node"
    ]
    return launch.LaunchDescription([*sim, launch_testing.actions.ReadyToTest()])


class TestSimNodeServesTheArmInterface(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node("launch_test_client", namespace=NAMESPACE)

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def call(self, srv_type, name, request):
        client = self.node.create_client(srv_type, name)
        self.assertTrue(client.wait_for_service(timeout_sec=60), f"{name} not available")
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=60)
        self.assertIsNotNone(future.result(), f"{name} did not answer")
        return future.result()

    def test_reset_step_and_camera(self):
        images = []
        self.node.create_subscription(Image, names.CAMERA_TOPIC, images.append, 10)
        reply = self.call(
            ResetEpisode, names.ARM_RESET_SERVICE, ResetEpisode.Request(task="base", seed=3)
        )
        self.assertTrue(reply.success, reply.message)
        step = self.call(
            ExecuteStep,
            names.ARM_STEP_SERVICE,
            ExecuteStep.Request(action=GraspAction(terminate=True)),
        )
        self.assertTrue(step.success and step.done, step.message)
        end = self.node.get_clock().now().nanoseconds + 10 * 10**9
        while not images and self.node.get_clock().now().nanoseconds < end:
            rclpy.spin_once(self.node, timeout_sec=0.5)
        self.assertTrue(images, "no camera image")
        self.assertEqual(
            (images[-1].width, images[-1].height, images[-1].encoding), (64, 64, "rgb8")
        )

    def test_unknown_task_is_refused_and_the_node_keeps_serving(self):
        reply = self.call(
            ResetEpisode,
            names.ARM_RESET_SERVICE,
            ResetEpisode.Request(task="no_such_task", seed=1),
        )
        self.assertFalse(reply.success)
        self.assertIn("no_such_task", reply.message)
        self.assertTrue(
            self.call(
                ResetEpisode, names.ARM_RESET_SERVICE, ResetEpisode.Request(task="base", seed=1)
            ).success
        )


@launch_testing.post_shutdown_test()
class TestSimNodeExitsCleanly(unittest.TestCase):
    def test_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0, -2, -15])
