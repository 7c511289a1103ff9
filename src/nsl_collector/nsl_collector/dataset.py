"""The ROS-free dataset library: record grasp episodes to rosbag2 (MCAP) bags and read them back.

Facade over :mod:`recorder` (writing), :mod:`reader` (reading), :mod:`msgtypes` (types) and
:mod:`mcap_scan` (crash-tolerant MCAP scanning). Needs rosbags, numpy, pyyaml and nsl_policy;
never rclpy.
"""

from __future__ import annotations

from .errors import DatasetError
from .msgtypes import (
    EPISODE_RESULT,
    RESULT_TOPIC,
    STEP_RECORD,
    STEP_TOPIC,
    find_msg_dir,
    writer_typestore,
)
from .loading import load_transitions
from .reader import (
    Episode,
    EpisodeList,
    SkippedEpisode,
    Step,
    dataset_info,
    discover,
    find_bags,
    is_manifest,
    read_episodes,
    read_manifest,
    transitions_from_episodes,
)
from .recorder import SESSION_FILE, BagRecorder, EpisodeData, StepData

__all__ = [
    "BagRecorder",
    "DatasetError",
    "EPISODE_RESULT",
    "Episode",
    "EpisodeData",
    "EpisodeList",
    "RESULT_TOPIC",
    "SESSION_FILE",
    "STEP_RECORD",
    "STEP_TOPIC",
    "SkippedEpisode",
    "Step",
    "StepData",
    "dataset_info",
    "discover",
    "find_bags",
    "find_msg_dir",
    "is_manifest",
    "load_transitions",
    "read_episodes",
    "read_manifest",
    "transitions_from_episodes",
    "writer_typestore",
]
