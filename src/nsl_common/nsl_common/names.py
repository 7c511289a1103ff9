"""The names of the NSL graph: nodes, topics and services, each defined once.

Every name is relative, so it resolves under the node's namespace (``namespace:=robot1`` puts
the whole graph under ``/robot1``) and several robots run side by side. Nodes, the graph
description, the client and the tests import these constants instead of repeating the strings.
"""

from __future__ import annotations

# Node names, as the graph starts them (``__node``); a node's parameter services hang off them.
SIM_NODE = "sim"
ARM_NODE = "arm"
POLICY_NODE = "policy"
COLLECTOR_NODE = "collector"
TRAINER_NODE = "trainer"

# The arm interface, served by the sim node or the real arm node.
ARM_RESET_SERVICE = "arm/reset_episode"
ARM_STEP_SERVICE = "arm/execute_step"
GRIPPER_STATE_TOPIC = "arm/gripper_state"
CAMERA_TOPIC = "camera/image_raw"

# What the policy publishes and serves.
STEP_RECORDS_TOPIC = "step_records"
EPISODE_RESULTS_TOPIC = "episode_results"
LOAD_CHECKPOINT_SERVICE = f"{POLICY_NODE}/load_checkpoint"
ACTIVE_CHECKPOINT_TOPIC = f"{POLICY_NODE}/active_checkpoint"
POLICY_SET_PARAMETERS_SERVICE = f"{POLICY_NODE}/set_parameters"
POLICY_SET_PARAMETERS_ATOMICALLY_SERVICE = f"{POLICY_NODE}/set_parameters_atomically"
ROLLOUT_DECISION_TOPIC = f"{POLICY_NODE}/rollout_decision"
PROMOTE_SERVICE = f"{POLICY_NODE}/promote"
REJECT_SERVICE = f"{POLICY_NODE}/reject"

# The standard diagnostics topic: absolute, the one place outside the namespace, since
# rqt_robot_monitor and diagnostic_aggregator read it there (entries name their robot).
DIAGNOSTICS = "/diagnostics"

# The trainer.
FINE_TUNE_SERVICE = f"{TRAINER_NODE}/fine_tune"
CANCEL_JOB_SERVICE = f"{TRAINER_NODE}/cancel"
TRAINER_STATUS_TOPIC = f"{TRAINER_NODE}/status"
CHECKPOINT_ANNOUNCE_TOPIC = f"{TRAINER_NODE}/checkpoints"

# The collector.
START_SESSION_SERVICE = f"{COLLECTOR_NODE}/start_session"
STOP_SESSION_SERVICE = f"{COLLECTOR_NODE}/stop_session"
DISCARD_EPISODE_SERVICE = f"{COLLECTOR_NODE}/discard_episode"
COLLECTOR_STATUS_TOPIC = f"{COLLECTOR_NODE}/status"


def qualified_node_name(namespace: str, node: str) -> str:
    """Return the fully qualified name of ``node`` under ``namespace`` (``/robot1/policy``)."""
    namespace = namespace.strip("/")
    return f"/{namespace}/{node}" if namespace else f"/{node}"


def bag_topic(name: str) -> str:
    """Return the topic under which a session bag stores ``name``.

    It is absolute, so datasets recorded under any namespace read alike.
    """
    return "/" + name
