"""The rollout gate's ROS side for the policy node: decision topic, operator services, tags.

Decisions go to ``policy/rollout_decision`` (latched, so a late ``nsl status`` or recorder sees
the last one), to the log, and into the next EpisodeResult's ``rollout`` field, which the
collector records in the episode bag.
"""

from __future__ import annotations

import json
import threading

from rclpy.node import Node

from nsl_common import names
from nsl_common.qos import LATCHED_QOS
from nsl_msgs.msg import RolloutDecision
from nsl_msgs.srv import RolloutCommand

from .monitor import LearningMonitor
from .rollout import Decision, Rollout


def decision_message(decision: Decision) -> RolloutDecision:
    """Return the ROS message of a decision (the counts in fields, everything in evidence)."""
    evidence = decision.evidence
    candidate = evidence.get("candidate") or evidence.get("promoted") or {}
    incumbent = evidence.get("incumbent") or {}
    return RolloutDecision(
        decision=decision.decision,
        mode=decision.mode,
        candidate_id=decision.candidate_id,
        incumbent_id=decision.incumbent_id,
        trial_id=decision.trial_id,
        reason=decision.reason,
        candidate_episodes=int(candidate.get("episodes", 0)),
        candidate_successes=int(candidate.get("successes", 0)),
        incumbent_episodes=int(incumbent.get("episodes", 0)),
        incumbent_successes=int(incumbent.get("successes", 0)),
        log_likelihood_ratio=float(evidence.get("log_likelihood_ratio", 0.0)),
        evidence=json.dumps(decision.to_dict()),
    )


class RolloutEndpoints:
    """Publishes a rollout's decisions and serves ``policy/promote`` and ``policy/reject``."""

    def __init__(
        self,
        node: Node,
        rollout: Rollout,
        frame_id: str,
        callback_group=None,
        monitor: LearningMonitor | None = None,
    ) -> None:
        self._node = node
        self._monitor = monitor
        self._rollout = rollout
        self._frame_id = frame_id
        self._lock = threading.Lock()
        self._unbagged: list[dict] = []  # decisions not yet in an EpisodeResult
        self.publisher = node.create_publisher(
            RolloutDecision, names.ROLLOUT_DECISION_TOPIC, LATCHED_QOS
        )
        self._services = [
            node.create_service(
                RolloutCommand,
                names.PROMOTE_SERVICE,
                self._command(rollout.promote),
                callback_group=callback_group,
            ),
            node.create_service(
                RolloutCommand,
                names.REJECT_SERVICE,
                self._command(rollout.reject),
                callback_group=callback_group,
            ),
        ]
        rollout.on_decision = self.on_decision

    def destroy(self) -> None:
        """Destroy the publisher and the services (the node's cleanup)."""
        self._rollout.on_decision = None
        for service in self._services:
            self._node.destroy_service(service)
        self._node.destroy_publisher(self.publisher)

    def on_decision(self, decision: Decision) -> None:
        """Publish, log and queue a decision for the next episode result; tell the monitor."""
        if self._monitor is not None:
            self._monitor.decision(decision.decision, decision.candidate_id)
        msg = decision_message(decision)
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.header.frame_id = self._frame_id
        self.publisher.publish(msg)
        log = self._node.get_logger()
        (log.info if decision.decision == "promote" else log.warn)(decision.summary())
        with self._lock:
            self._unbagged.append(decision.to_dict())

    def result_tag(self, tag: dict) -> str:
        """Return an episode's rollout field: its tag and the decisions not yet recorded."""
        with self._lock:
            decisions, self._unbagged = self._unbagged, []
        return json.dumps({**tag, "decisions": decisions} if decisions else tag)

    def _command(self, decide):
        def serve(
            request: RolloutCommand.Request, response: RolloutCommand.Response
        ) -> RolloutCommand.Response:
            try:
                decision = decide(request.checkpoint_id, request.reason)
            except LookupError as exc:
                response.success, response.message = False, str(exc)
                return response
            response.success, response.message = True, decision.summary()
            response.decision = json.dumps(decision.to_dict())
            return response

        return serve
