"""The policy node's outgoing messages, built from the ROS-free objects they report."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from nsl_msgs.msg import CheckpointInfo, GraspAction, StepRecord
from sensor_msgs.msg import Image

from .checkpoint import LoadedCheckpoint
from .safety import GraspCommand


def checkpoint_info(loaded: LoadedCheckpoint, stamp: TimeMsg, frame_id: str) -> CheckpointInfo:
    """Return the announcement of a checkpoint in force (id, path, parent, job)."""
    info = CheckpointInfo(
        checkpoint_id=loaded.checkpoint_id,
        path=str(loaded.path),
        parent_id=str(loaded.metadata.get("parent") or ""),
        job_id=str(loaded.metadata.get("job_id") or ""),
    )
    info.header.stamp, info.header.frame_id = stamp, frame_id
    return info


def grasp_action(command: GraspCommand) -> GraspAction:
    """Return the arm command message of a checked command."""
    return GraspAction(
        translation=np.asarray(command.translation, dtype=np.float32),
        rotation=command.rotation,
        close_gripper=command.close_gripper,
        terminate=command.terminate,
    )


def step_record(
    episode_id: str,
    step_index: int,
    image: np.ndarray,
    camera_msg: Image,
    state,
    action: GraspAction,
    choice,
    checkpoint_id: str,
    stamp: TimeMsg,
    frame_id: str,
) -> StepRecord:
    """Return a step's record: the network's RGB input, the state, the action and its choice."""
    record = StepRecord(
        episode_id=episode_id,
        step_index=step_index,
        gripper_state=state,
        action=action,
        q_value=float(choice.q_value),
        exploratory=bool(choice.exploratory),
        checkpoint_id=checkpoint_id,
    )
    record.header.stamp, record.header.frame_id = stamp, frame_id
    record.image.header = camera_msg.header
    record.image.height, record.image.width = image.shape[:2]
    record.image.encoding, record.image.step = "rgb8", image.shape[1] * 3
    record.image.data = np.ascontiguousarray(image).tobytes()
    return record
