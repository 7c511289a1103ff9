"""ROS 2 node: records grasp episodes into one rosbag2 (MCAP) bag per session.

Step records and episode results arrive as serialized CDR (raw subscriptions) and are written to
the bag unchanged. An episode's steps are held until its result arrives and then written in one
go, so a crash loses at most the episode in flight. Aborted episodes (result.complete false)
are dropped. ``collector/stop_session`` closes the current bag (its path is in the reply); the
next episode opens a new session.
"""
from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from pathlib import Path

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from rclpy.serialization import deserialize_message
from std_srvs.srv import Trigger

from nsl_collector.dataset import BagRecorder
from nsl_msgs.msg import EpisodeResult, StepRecord

RECORD_QOS = QoSProfile(depth=200, reliability=QoSReliabilityPolicy.RELIABLE)
STEP_TYPE = "nsl_msgs/msg/StepRecord"
RESULT_TYPE = "nsl_msgs/msg/EpisodeResult"


class CollectorNode(Node):
    def __init__(self) -> None:
        super().__init__("collector")
        d = ParameterDescriptor
        self.declare_parameter("dataset_root", "datasets", d(description="bags go to <dataset_root>/<task>/<session>"))
        self.declare_parameter("task", "base", d(description="task folder and session metadata"))
        self.declare_parameter("robot", "sim", d(description="robot name or 'sim', stored in the session metadata"))
        self.declare_parameter("max_pending_episodes", 8, d(description="episodes buffered awaiting their result; older ones are dropped"))
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        self.dataset_root = Path(p("dataset_root")).resolve()
        self.task, self.robot = p("task"), p("robot")
        self.max_pending = int(p("max_pending_episodes"))
        if self.max_pending < 1:
            raise ValueError(f"max_pending_episodes must be >= 1, got {self.max_pending}")
        if not self.task or "/" in self.task:
            raise ValueError(f"task must be a non-empty name without '/', got '{self.task}'")

        self.recorder: BagRecorder | None = None
        self.session_path: Path | None = None
        self.episodes_written = 0
        # episode id -> [(timestamp ns, cdr bytes)], oldest first; bounded by max_pending.
        self.pending: OrderedDict[str, list[tuple[int, bytes]]] = OrderedDict()
        self.create_subscription(StepRecord, "step_records", self.on_step, RECORD_QOS, raw=True)
        self.create_subscription(EpisodeResult, "episode_results", self.on_result, RECORD_QOS, raw=True)
        self.create_service(Trigger, "collector/stop_session", self.on_stop_session)
        self.get_logger().info(f"collector ready; sessions go to {self.dataset_root / self.task}")

    def open_session(self, first_result: EpisodeResult) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S_%f")
        self.session_path = self.dataset_root / self.task / f"session_{stamp}"
        metadata = {"task": self.task, "robot": self.robot, "namespace": self.get_namespace(),
                    "checkpoint_id": first_result.checkpoint_id, "exploration": first_result.exploration,
                    "started": stamp, "software": "nsl 0.1.0"}
        self.recorder = BagRecorder(self.session_path, metadata)
        self.episodes_written = 0
        self.get_logger().info(f"recording session {self.session_path}")

    def on_step(self, raw: bytes) -> None:
        msg = deserialize_message(raw, StepRecord)
        steps = self.pending.setdefault(msg.episode_id, [])
        steps.append((self.get_clock().now().nanoseconds, raw))
        while len(self.pending) > self.max_pending:
            dropped, records = self.pending.popitem(last=False)
            self.get_logger().warn(f"dropping {len(records)} steps of episode {dropped[:8]}: its result never arrived")

    def on_result(self, raw: bytes) -> None:
        result = deserialize_message(raw, EpisodeResult)
        steps = self.pending.pop(result.episode_id, [])
        if not result.complete:
            self.get_logger().warn(f"episode {result.episode_id[:8]} aborted ({result.message}); not recorded")
            return
        if len(steps) != result.num_steps:
            self.get_logger().error(f"episode {result.episode_id[:8]}: {len(steps)} step records for {result.num_steps} steps; not recorded")
            return
        if self.recorder is None:
            self.open_session(result)
        self.recorder.write_episode_raw(steps, (self.get_clock().now().nanoseconds, raw))
        self.episodes_written += 1

    def close_session(self) -> str:
        if self.recorder is None:
            return ""
        self.recorder.close()
        path, self.recorder = str(self.session_path), None
        note = f"closed session {path} with {self.episodes_written} episodes"
        if rclpy.ok():
            self.get_logger().info(note)
        else:  # shutting down: the rosout publisher is gone
            print(f"[collector] {note}", flush=True)
        return path

    def on_stop_session(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        path = self.close_session()
        response.success = bool(path)
        response.message = path if path else "no session open (no complete episode recorded since the last stop)"
        return response

    def destroy_node(self) -> None:
        self.close_session()
        super().destroy_node()


def main(args=None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = CollectorNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        print(f"collector_node: {exc}", flush=True)
        raise SystemExit(2)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
