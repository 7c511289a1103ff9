"""Episode logic of the real arm against a fake backend (no ROS, no MoveIt)."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest

from nsl_kuka.arm_logic import ArmConfig, GraspEpisode, ToolPose, plan_step
from nsl_bringup.runner import find_executable


class FakeArm:
    def __init__(self, gap_after_close: float = 0.0):
        self.pose = ToolPose((0.5, 0.0, 0.3), 0.0)
        self.closed = False
        self.gap_after_close = gap_after_close
        self.moves: list[ToolPose] = []

    def tool_pose(self):
        return self.pose

    def move_to(self, pose):
        self.moves.append(pose)
        self.pose = pose

    def set_gripper(self, closed):
        self.closed = closed

    def finger_gap(self):
        return self.gap_after_close if self.closed else 0.08


CONFIG = ArmConfig()


def test_steps_are_clipped_to_step_and_workspace_limits():
    target, clipped = plan_step(CONFIG, ToolPose((0.74, 0.0, 0.03), 0.0), (0.5, 0.0, -0.5), 2.0)
    assert clipped
    assert target.position[0] == pytest.approx(
        0.75
    )  # workspace x limit (0.74 + 0.03 clipped to 0.75)
    assert target.position[2] == pytest.approx(0.02)  # z limit
    assert target.yaw == pytest.approx(0.25)  # rotation limit
    target, clipped = plan_step(CONFIG, ToolPose((0.5, 0.0, 0.3), 0.0), (0.01, -0.01, 0.0), 0.1)
    assert not clipped and target.position == pytest.approx((0.51, -0.01, 0.3))


@pytest.mark.parametrize(
    "translation,rotation", [((math.nan, 0, 0), 0.0), ((0, 0, 0), math.inf), ((0, 0), 0.0)]
)
def test_malformed_steps_are_refused_without_motion(translation, rotation):
    arm = FakeArm()
    episode = GraspEpisode(CONFIG, arm)
    episode.reset()
    moves = len(arm.moves)
    with pytest.raises(ValueError):
        episode.step(translation, rotation, False, False)
    assert len(arm.moves) == moves


def test_every_commanded_pose_stays_in_the_workspace():
    rng = np.random.default_rng(0)
    arm = FakeArm()
    episode = GraspEpisode(CONFIG, arm)
    for _ in range(20):
        episode.reset()
        while not episode.done:
            episode.step(
                rng.uniform(-1, 1, 3),
                float(rng.uniform(-3, 3)),
                bool(rng.random() < 0.1),
                bool(rng.random() < 0.1),
            )
    for pose in arm.moves:
        assert np.all(np.asarray(pose.position) >= np.asarray(CONFIG.workspace_low) - 1e-12)
        assert np.all(np.asarray(pose.position) <= np.asarray(CONFIG.workspace_high) + 1e-12)
        assert -math.pi / 2 <= pose.yaw <= math.pi / 2


@pytest.mark.parametrize("gap,success", [(0.02, True), (0.0, False)])
def test_terminate_closes_lifts_and_reads_the_outcome_from_the_finger_gap(gap, success):
    arm = FakeArm(gap_after_close=gap)
    episode = GraspEpisode(CONFIG, arm)
    episode.reset()
    z_before = arm.pose.position[2]
    outcome = episode.step((0, 0, -0.03), 0.0, False, True)
    assert outcome.done and outcome.gripper_closed and arm.closed
    assert outcome.grasp_success is success
    assert arm.pose.position[2] == pytest.approx(
        min(z_before - 0.03 + CONFIG.lift_height, CONFIG.workspace_high[2])
    )
    with pytest.raises(RuntimeError, match="reset first"):
        episode.step((0, 0, 0), 0.0, False, False)


def test_step_limit_forces_close_and_lift():
    episode = GraspEpisode(ArmConfig(max_steps=3), FakeArm(gap_after_close=0.01))
    episode.reset()
    outcomes = [episode.step((0, 0, 0), 0.0, False, False) for _ in range(3)]
    assert [o.done for o in outcomes] == [False, False, True]
    assert outcomes[-1].step_fraction == 1.0


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="workspace_low"):
        ArmConfig(workspace_low=(1, 0, 0), workspace_high=(0.5, 1, 1))
    with pytest.raises(ValueError, match="start_position"):
        ArmConfig(start_position=(2.0, 0.0, 0.3))


def test_node_without_moveit_exits_with_what_to_install(tmp_path):
    pytest.importorskip("rclpy")
    try:
        import moveit  # noqa: F401

        pytest.skip("MoveIt 2 is installed here: the node would try to reach a robot")
    except ImportError:
        pass

    out = subprocess.run(
        [find_executable("nsl_kuka", "kuka_arm_node"), "--ros-args", "-r", "__ns:=/nomoveit"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"},
    )
    assert out.returncode == 2
    assert "moveit_py" in out.stdout and "sim:=true" in out.stdout
