"""Shared helpers of the dataset tests (also imported by the SIGKILL child process)."""

from __future__ import annotations

from pathlib import Path
import json

import numpy as np
from nsl_collector.dataset import (
    EPISODE_RESULT,
    EpisodeData,
    RESULT_TOPIC,
    STEP_RECORD,
    STEP_TOPIC,
    StepData,
)

MSG_DIR = Path(__file__).resolve().parents[2] / "nsl_msgs" / "msg"


def make_episode(
    i: int,
    n: int = 5,
    *,
    success: bool | None = None,
    task: str = "base",
    hw=(16, 20),
    **result_kwargs,
):
    rng = np.random.default_rng(1000 + i)
    steps = []
    for j in range(n):
        steps.append(
            StepData(
                image=rng.integers(0, 256, (*hw, 3), dtype=np.uint8),
                gripper_closed=j == n - 1,
                gripper_height=float(0.3 - 0.05 * j),
                step_fraction=j / n,
                translation=tuple(
                    float(x) for x in rng.uniform(-0.04, 0.04, 3)
                ),  # beyond 0.03: clipped
                rotation=float(rng.uniform(-0.3, 0.3)),
                close_gripper=j == n - 1,
                terminate=j == n - 1,
                q_value=float("nan") if j % 2 else 0.25 * j,
                exploratory=j % 2 == 1,
                stamp_ns=1_700_000_000_000_000_000 + i * 10**10 + j * 10**8,
            )
        )
    result = EpisodeData(
        episode_id=f"ep-{i:04d}",
        task=task,
        seed=100 + i,
        success=(i % 2 == 0) if success is None else success,
        checkpoint_id=f"ckpt-{i // 3}",
        exploration={"epsilon": 0.2, "i": i},
        stamp_ns=1_700_000_000_000_000_000 + i * 10**10 + n * 10**8,
        frame_id="robot1",
        **result_kwargs,
    )
    return steps, result


def serialize_episode(
    ts, steps, result, *, finish: bool = True, extra_step_fields: dict | None = None
):
    """Serialize an episode as rclpy would for the collector node's ``write_raw``.

    Returns (topic, type, log time, CDR bytes) per message (emulated with a rosbags typestore).
    """
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]

    def header(ns):
        return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=result.frame_id)

    out = []
    for j, s in enumerate(steps):
        h = header(s.stamp_ns)
        m = T[STEP_RECORD](
            header=h,
            episode_id=result.episode_id,
            step_index=j,
            image=T["sensor_msgs/msg/Image"](
                header=h,
                height=s.image.shape[0],
                width=s.image.shape[1],
                encoding="rgb8",
                is_bigendian=0,
                step=s.image.shape[1] * 3,
                data=s.image.reshape(-1),
            ),
            gripper_state=T["nsl_msgs/msg/GripperState"](
                closed=s.gripper_closed, height=s.gripper_height, step_fraction=s.step_fraction
            ),
            action=T["nsl_msgs/msg/GraspAction"](
                translation=np.array(s.translation, np.float32),
                rotation=s.rotation,
                close_gripper=s.close_gripper,
                terminate=s.terminate,
            ),
            q_value=s.q_value,
            exploratory=s.exploratory,
            checkpoint_id=result.checkpoint_id,
            **(extra_step_fields or {}),
        )
        out.append((STEP_TOPIC, STEP_RECORD, s.stamp_ns, bytes(ts.serialize_cdr(m, STEP_RECORD))))
    if finish:
        has_rollout = "rollout" in T[EPISODE_RESULT].__dataclass_fields__
        r = T[EPISODE_RESULT](
            **({"rollout": ""} if has_rollout else {}),
            header=header(result.stamp_ns),
            episode_id=result.episode_id,
            task=result.task,
            seed=result.seed,
            success=result.success,
            num_steps=len(steps) if result.num_steps is None else result.num_steps,
            checkpoint_id=result.checkpoint_id,
            exploration=result.exploration
            if isinstance(result.exploration, str)
            else json.dumps(result.exploration),  # as BagRecorder stores it
            complete=result.complete,
            message=result.message,
        )
        out.append(
            (
                RESULT_TOPIC,
                EPISODE_RESULT,
                result.stamp_ns,
                bytes(ts.serialize_cdr(r, EPISODE_RESULT)),
            )
        )
    return out
