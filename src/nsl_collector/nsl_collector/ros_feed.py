"""Publish synthetic grasp episodes to a collector node over ROS 2 (tests and benchmarks).

:class:`EpisodeFeed` owns an rclpy node in its own context (so it never disturbs another rclpy
user in the same process), publishes StepRecords/EpisodeResults/camera frames with the
collector's QoS, follows ``collector/status`` and calls the collector's Trigger services.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from nsl_common import names
from nsl_common.qos import LATCHED_QOS, RECORD_QOS, SENSOR_QOS
from nsl_msgs.msg import EpisodeResult, StepRecord

SERVICES = {
    "start_session": names.START_SESSION_SERVICE,
    "stop_session": names.STOP_SESSION_SERVICE,
    "discard_episode": names.DISCARD_EPISODE_SERVICE,
}
"""The collector's Trigger services by the short name :meth:`EpisodeFeed.call` takes."""


class EpisodeFeed:
    def __init__(self, namespace: str = "", name: str = "episode_feed") -> None:
        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(name, namespace=namespace, context=self.context)
        self.StepRecord, self.EpisodeResult, self.Image, self.Trigger = (
            StepRecord,
            EpisodeResult,
            Image,
            Trigger,
        )
        self.step_pub = self.node.create_publisher(
            StepRecord, names.STEP_RECORDS_TOPIC, RECORD_QOS
        )
        self.result_pub = self.node.create_publisher(
            EpisodeResult, names.EPISODE_RESULTS_TOPIC, RECORD_QOS
        )
        self.camera_pub = self.node.create_publisher(Image, names.CAMERA_TOPIC, SENSOR_QOS)
        self.status: dict = {}
        self._cond = threading.Condition()
        self.node.create_subscription(
            String, names.COLLECTOR_STATUS_TOPIC, self._on_status, LATCHED_QOS
        )
        self.clients = {
            short: self.node.create_client(Trigger, service) for short, service in SERVICES.items()
        }
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._spin.start()
        self.steps_published = 0
        self.episodes_published = 0

    def _spin_loop(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shutdown
            pass

    def _on_status(self, msg) -> None:
        with self._cond:
            self.status = json.loads(msg.data)
            self._cond.notify_all()

    # ------------------------------------------------------------------ waiting
    def wait_for(self, predicate, timeout: float, what: str) -> dict:
        """Wait until predicate(status) holds; returns the status. TimeoutError names ``what``."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: bool(self.status) and predicate(self.status), timeout=timeout
            ):
                raise TimeoutError(
                    f"timed out after {timeout:.0f} s waiting for {what}; "
                    f"last status {self.status}"
                )
            return dict(self.status)

    def wait_connected(self, timeout: float = 30.0, camera: bool = False) -> None:
        deadline = time.monotonic() + timeout
        pubs = [self.step_pub, self.result_pub] + ([self.camera_pub] if camera else [])
        while not all(p.get_subscription_count() > 0 for p in pubs):
            if time.monotonic() > deadline:
                raise TimeoutError("the collector's subscriptions were not discovered")
            time.sleep(0.05)
        for c in self.clients.values():
            if not c.wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
                raise TimeoutError(f"service {c.srv_name} not available")
        self.wait_for(
            lambda s: True, max(1.0, deadline - time.monotonic()), "the collector's status"
        )

    def call(self, service: str, timeout: float = 30.0):
        future = self.clients[service].call_async(self.Trigger.Request())
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"collector/{service} did not answer within {timeout} s")
        return future.result()

    # ------------------------------------------------------------------ publishing
    def image(self, hw: tuple[int, int], seed: int) -> bytes:
        return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8).tobytes()

    def step(
        self,
        episode_id: str,
        index: int,
        image: bytes,
        hw: tuple[int, int],
        *,
        last: bool = False,
        checkpoint_id: str = "ckpt-feed",
    ) -> None:
        m = self.StepRecord()
        m.header.stamp = self.node.get_clock().now().to_msg()
        m.header.frame_id = self.node.get_namespace()
        m.episode_id, m.step_index = episode_id, index
        im = m.image
        im.header = m.header
        im.height, im.width, im.encoding, im.step = hw[0], hw[1], "rgb8", hw[1] * 3
        im.data = image
        m.gripper_state.closed = last
        m.gripper_state.height = 0.3 - 0.01 * index
        m.gripper_state.step_fraction = index / 10.0
        m.action.translation = [0.01, -0.01, 0.0]
        m.action.rotation = 0.1
        m.action.close_gripper = last
        m.action.terminate = last
        m.q_value = 0.5
        m.checkpoint_id = checkpoint_id
        self.step_pub.publish(m)
        self.steps_published += 1

    def result(
        self,
        episode_id: str,
        num_steps: int,
        *,
        success: bool = True,
        seed: int = 0,
        task: str = "base",
        complete: bool = True,
        checkpoint_id: str = "ckpt-feed",
    ) -> None:
        r = self.EpisodeResult()
        r.header.stamp = self.node.get_clock().now().to_msg()
        r.header.frame_id = self.node.get_namespace()
        r.episode_id, r.task, r.seed, r.success, r.num_steps = (
            episode_id,
            task,
            seed,
            success,
            num_steps,
        )
        r.checkpoint_id, r.exploration, r.complete = (
            checkpoint_id,
            json.dumps({"epsilon": 0.1}),
            complete,
        )
        r.message = "" if complete else "aborted by the feed"
        self.result_pub.publish(r)
        self.episodes_published += 1

    def episode(
        self,
        steps: int,
        hw: tuple[int, int],
        *,
        seed: int = 0,
        images: list[bytes] | None = None,
        period: float = 0.0,
        finish: bool = True,
        **result_kwargs,
    ) -> str:
        """Publish one episode (``period`` seconds between steps); returns its id."""
        eid = str(uuid.uuid4())
        t = time.monotonic()
        for j in range(steps):
            img = images[j % len(images)] if images else self.image(hw, seed * 1000 + j)
            self.step(
                eid,
                j,
                img,
                hw,
                last=j == steps - 1,
                **{k: v for k, v in result_kwargs.items() if k == "checkpoint_id"},
            )
            if period:
                t += period
                time.sleep(max(0.0, t - time.monotonic()))
        if finish:
            self.result(eid, steps, seed=seed, **result_kwargs)
        return eid

    def camera(self, hw: tuple[int, int], image: bytes) -> None:
        im = self.Image()
        im.header.stamp = self.node.get_clock().now().to_msg()
        im.height, im.width, im.encoding, im.step = hw[0], hw[1], "rgb8", hw[1] * 3
        im.data = image
        self.camera_pub.publish(im)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        self._spin.join(timeout=2)
