"""The policy node's camera input: the latest image, camera matching and the camera block.

Everything is guarded by the node's condition (``cond``), which it notifies on every image and
every change of matched publishers, so the episode loop waits on it without polling.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import Image

from nsl_common import names
from nsl_common.qos import SENSOR_QOS

from .episode_guard import CameraProblem
from .image import SUPPORTED_ENCODINGS, resize_for_network, to_rgb


class CameraInput:
    """Subscribes to the camera and keeps what the episode loop needs of it."""

    def __init__(self, node: Node, cond, callback_group=None) -> None:
        self._cond = cond
        self.latest: Image | None = None
        self.latest_stamp_ns = -1
        self.publishers: int | None = None  # None: the rmw has no matched events
        self.blocked = False  # set by a camera abort, cleared by the next usable image
        self.refused_encoding = ""
        self.topic = node.resolve_topic_name(names.CAMERA_TOPIC)
        try:
            events = SubscriptionEventCallbacks(matched=self.on_matched)
            self.subscription = node.create_subscription(
                Image,
                names.CAMERA_TOPIC,
                self.on_image,
                SENSOR_QOS,
                callback_group=callback_group,
                event_callbacks=events,
            )
            self.publishers = 0
        except Exception:  # noqa: BLE001 - an rmw without matched events: do not gate on matching
            self.subscription = node.create_subscription(
                Image, names.CAMERA_TOPIC, self.on_image, SENSOR_QOS, callback_group=callback_group
            )

    def on_matched(self, info) -> None:
        with self._cond:
            self.publishers = info.current_count
            self._cond.notify_all()

    def on_image(self, msg: Image) -> None:
        stamp = Time.from_msg(msg.header.stamp).nanoseconds
        usable = msg.encoding.lower() in SUPPORTED_ENCODINGS
        with self._cond:
            self.latest, self.latest_stamp_ns = msg, stamp
            if usable:
                self.blocked = False
            else:
                self.refused_encoding = msg.encoding
            self._cond.notify_all()

    def wait_for_image(
        self, newer_than_ns: int, timeout: float, halted: Callable[[], bool], check: Callable
    ) -> Image:
        """Return an image newer than ``newer_than_ns``; ``check()`` raises when ``halted()``."""
        with self._cond:
            fresh = self._cond.wait_for(
                lambda: self.latest_stamp_ns > newer_than_ns or halted(), timeout=timeout
            )
            check()
            if not fresh:
                raise CameraProblem(
                    f"camera stalled: no image on {self.topic} newer than the last arm "
                    f"command within observation_timeout {timeout:.1f} s"
                )
            return self.latest


def observation_array(msg: Image, size: int) -> np.ndarray:
    """Return the image as the network's RGB input of ``size``; CameraProblem if refused."""
    try:
        rgb = to_rgb(msg.data, msg.width, msg.height, msg.encoding, step=msg.step)
    except ValueError as exc:
        raise CameraProblem(f"camera image refused: {exc}") from exc
    return resize_for_network(rgb, size)
