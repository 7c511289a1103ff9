"""ROS 2 node: records grasp episodes into one rosbag2 (MCAP) bag per session.

A thin adapter over :class:`nsl_collector.session.Collector` (ROS-free): step records, episode
results and (``record_camera``) raw camera frames arrive as serialized CDR (raw subscriptions)
and are written to the bag unchanged. An episode's steps are held until its result arrives and
then written and flushed as one MCAP chunk, so a crash loses at most the episode in flight.
A session holds one task's episodes (``<dataset_root>/<task>/``): an episode of another task
(the policy's task changed at run time) closes it and opens the next one under its task.

Services (std_srvs/Trigger): ``collector/start_session`` (reply: the new bag's path),
``collector/stop_session`` (reply: the closed bag's path), ``collector/discard_episode``.
Topic ``collector/status`` (std_msgs/String, JSON, latched): counters after every change.
"""

from __future__ import annotations

import json

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from nsl_common import names
from nsl_common.node_main import run_node
from nsl_common.paths import writable_dir
from nsl_common.qos import LATCHED_QOS, RECORD_QOS, SENSOR_QOS
from nsl_collector.session import Collector, CollectorConfig
from nsl_msgs.msg import EpisodeResult, StepRecord

# name: (default, description); types follow the defaults.
PARAMETERS = {
    "dataset_root": (
        "datasets",
        "bags go to <dataset_root>/<task>/session_<UTC time>, one task per session",
    ),
    "task": (
        "base",
        "task of a session opened before any episode (start_session) or of episodes naming "
        "none; otherwise a session goes under its episodes' task",
    ),
    "robot": ("sim", "robot name, or 'sim' for the simulator; stored in the session metadata"),
    "checkpoint": (
        "",
        "policy checkpoint path for the session metadata "
        "(the checkpoint ids come from the episodes)",
    ),
    "auto_start": (
        True,
        "open a session at the first complete episode; "
        "false: only collector/start_session opens one",
    ),
    "record_camera": (
        False,
        "also record the raw camera stream (camera/image_raw) into the session bag",
    ),
    "max_pending_episodes": (
        8,
        "episodes buffered awaiting their result; the oldest is dropped beyond this",
    ),
    "max_steps_per_episode": (200, "steps buffered per episode; an episode with more is dropped"),
    "max_pending_megabytes": (
        512,
        "bytes buffered over all pending episodes; the oldest are dropped beyond this",
    ),
    "max_episodes_per_bag": (
        0,
        "roll over to a new session bag after this many episodes (0: never)",
    ),
    "max_bag_megabytes": (
        4096,
        "roll over to a new session bag at this MCAP size (0: never); bounds memory",
    ),
    "fsync": (
        True,
        "fsync the bag after every episode (durable against power loss, not only process crashes)",
    ),
}
_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    str: ParameterType.PARAMETER_STRING,
}


class CollectorNode(Node):
    def __init__(self) -> None:
        super().__init__(names.COLLECTOR_NODE)
        for name, (default, text) in PARAMETERS.items():
            self.declare_parameter(
                name,
                default,
                ParameterDescriptor(description=text, type=_TYPES[type(default)], read_only=True),
            )
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        cfg = CollectorConfig(
            dataset_root=writable_dir(p("dataset_root"), "dataset_root"),
            task=p("task"),
            robot=p("robot"),
            namespace=self.get_namespace(),
            max_pending=int(p("max_pending_episodes")),
            max_steps=int(p("max_steps_per_episode")),
            max_pending_bytes=int(p("max_pending_megabytes")) << 20,
            max_episodes_per_bag=int(p("max_episodes_per_bag")),
            max_bag_bytes=int(p("max_bag_megabytes")) * 1024 * 1024,
            auto_start=bool(p("auto_start")),
            record_camera=bool(p("record_camera")),
            checkpoint=p("checkpoint"),
            fsync=bool(p("fsync")),
        )
        self.collector = Collector(
            cfg, log=self._log, clock_ns=lambda: self.get_clock().now().nanoseconds
        )
        self.status_pub = self.create_publisher(String, names.COLLECTOR_STATUS_TOPIC, LATCHED_QOS)
        self.create_subscription(
            StepRecord, names.STEP_RECORDS_TOPIC, self.on_step, RECORD_QOS, raw=True
        )
        self.create_subscription(
            EpisodeResult, names.EPISODE_RESULTS_TOPIC, self.on_result, RECORD_QOS, raw=True
        )
        if cfg.record_camera:
            self.create_subscription(
                Image,
                names.CAMERA_TOPIC,
                self.collector.on_camera,
                SENSOR_QOS,
                raw=True,
            )
        for service, fn in (
            (names.START_SESSION_SERVICE, self.collector.start_session),
            (names.STOP_SESSION_SERVICE, self.collector.stop_session),
            (names.DISCARD_EPISODE_SERVICE, self.collector.discard_episode),
        ):
            self.create_service(Trigger, service, self._trigger(fn))
        self._dirty = False
        self.create_timer(0.2, self._status_timer)
        self.publish_status()
        self.get_logger().info(
            f"collector ready; sessions go to {cfg.dataset_root}/<task of their episodes>"
            f"{' (with the camera stream)' if cfg.record_camera else ''}"
        )

    def _log(self, level: str, text: str) -> None:
        if not rclpy.ok():  # shutting down: the rosout publisher is gone
            print(f"[collector] {text}", flush=True)
            return
        # One call site per severity: rclpy refuses different severities from the same line.
        logger = self.get_logger()
        if level == "error":
            logger.error(text)
        elif level == "warn":
            logger.warning(text)
        else:
            logger.info(text)

    def publish_status(self) -> None:
        self._dirty = False
        if rclpy.ok():
            self.status_pub.publish(String(data=json.dumps(self.collector.status())))

    def on_step(self, raw: bytes) -> None:
        # A step that completes an episode (its result came first) updates the status at once;
        # other steps through the 5 Hz timer: a step is not worth a status message each.
        if self.collector.on_step(raw) == "written":
            self.publish_status()
        else:
            self._dirty = True

    def _status_timer(self) -> None:
        if self._dirty:
            self.publish_status()

    def on_result(self, raw: bytes) -> None:
        self.collector.on_result(raw)
        self.publish_status()

    def _trigger(self, fn):
        def handle(request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
            response.success, response.message = fn()
            self.publish_status()
            return response

        return handle

    def destroy_node(self) -> None:
        collector = getattr(
            self, "collector", None
        )  # absent when __init__ failed (bad parameters)
        if collector is not None:
            collector.close()
        super().destroy_node()


def main(args=None) -> None:
    run_node(CollectorNode, "collector_node", args)


if __name__ == "__main__":
    main()
