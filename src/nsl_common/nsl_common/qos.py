"""The QoS profiles of the NSL graph, each defined once and used by publishers and subscribers.

A publisher and its subscribers must agree (a transient-local subscriber never matches a
volatile publisher), so both sides import the profile from here.
"""

from __future__ import annotations

from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)

RECORD_QOS = QoSProfile(depth=200, reliability=QoSReliabilityPolicy.RELIABLE)
"""Step records and episode results: reliable with a deep queue, since the collector writes
every one and a lost record is a lost training sample."""

LATCHED_QOS = QoSProfile(
    depth=1,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
)
"""State topics (status, active checkpoint, gripper state): the latest value is kept for
subscribers that join later."""

ANNOUNCE_QOS = QoSProfile(
    depth=10,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
)
"""Checkpoint announcements: latched like state, but the last few are kept, so a policy that
starts late still sees each recent checkpoint."""

CAMERA_QOS = QoSProfile(depth=2, reliability=QoSReliabilityPolicy.RELIABLE)
"""Camera publishers: reliable with a short queue, since one frame per step is what the policy
needs and a late frame is useless; best-effort subscribers are compatible."""

SENSOR_QOS = qos_profile_sensor_data
"""Camera subscribers: best effort, so any camera driver's publisher matches."""
