"""The command clamp (ROS-free): every command stays inside the per-step and height limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsl_policy.action_space import GraspCommand
from nsl_policy.safety import CommandLimits, UnsafeCommand, clamp_command, safe_command

LIMITS = CommandLimits(max_translation=0.02, max_rotation=0.2, min_height=0.05, max_height=0.3)
EPS = 1e-9


def command(t=(0.0, 0.0, 0.0), rotation=0.0, close=False, terminate=False) -> GraspCommand:
    return GraspCommand(tuple(t), rotation, close, terminate)


def test_translation_and_rotation_are_clipped_per_axis():
    out = clamp_command(command((0.5, -0.5, 0.001), 3.0, True, False), 0.2, LIMITS)
    assert out.translation == pytest.approx((0.02, -0.02, 0.001))
    assert out.rotation == pytest.approx(0.2)
    assert (out.close_gripper, out.terminate) == (True, False)
    assert clamp_command(command(rotation=-3.0), 0.2, LIMITS).rotation == pytest.approx(-0.2)


def test_vertical_step_stops_at_the_height_band():
    # 1 cm above the floor of the band: a 2 cm step down is cut to 1 cm.
    assert clamp_command(command((0, 0, -0.02)), 0.06, LIMITS).translation[2] == pytest.approx(
        -0.01
    )
    # 0.5 cm below its top: a 2 cm step up is cut to 0.5 cm.
    assert clamp_command(command((0, 0, 0.02)), 0.295, LIMITS).translation[2] == pytest.approx(
        0.005
    )


def test_a_gripper_outside_the_band_moves_back_by_one_step():
    assert clamp_command(command((0, 0, 0.02)), 0.4, LIMITS).translation[2] == pytest.approx(-0.02)
    assert clamp_command(command((0, 0, -0.02)), 0.0, LIMITS).translation[2] == pytest.approx(0.02)


@pytest.mark.parametrize(
    "vector",
    [
        [math.nan, 0, 0, 0, 0, 0],
        [0, 0, 0, math.inf, 0, 0],
    ],
)
def test_non_finite_actions_are_refused(vector):
    with pytest.raises(UnsafeCommand, match="refusing to send a command"):
        safe_command(np.array(vector), 0.2, LIMITS)


def test_a_non_finite_height_is_refused():
    with pytest.raises(UnsafeCommand, match="non-finite"):
        clamp_command(command((0, 0, 0.01)), math.nan, LIMITS)


def test_safe_command_scales_then_clamps():
    out = safe_command(np.array([1.0, -1.0, -1.0, 0.5, 1.0, -1.0]), 0.06, LIMITS)
    assert out.translation == pytest.approx((0.02, -0.02, -0.01))
    assert out.rotation == pytest.approx(0.1)
    assert (out.close_gripper, out.terminate) == (True, False)


@pytest.mark.parametrize(
    ("limits", "fragment"),
    [
        (dict(max_translation=0.0), "max_translation must be > 0"),
        (dict(max_rotation=math.nan), "max_rotation must be > 0"),
        (dict(min_height=0.4, max_height=0.3), "min_height (0.4) must be below max_height"),
    ],
)
def test_invalid_limits_are_refused(limits, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        CommandLimits(**limits)


@settings(max_examples=300, deadline=None)
@given(
    vector=st.lists(st.floats(-5, 5), min_size=6, max_size=6),
    height=st.floats(-0.2, 0.8),
)
def test_every_command_is_finite_and_inside_the_limits(vector, height):
    out = safe_command(np.array(vector), height, LIMITS)
    t = out.translation
    assert all(math.isfinite(x) and abs(x) <= LIMITS.max_translation + EPS for x in t)
    assert math.isfinite(out.rotation) and abs(out.rotation) <= LIMITS.max_rotation + EPS
    if LIMITS.min_height <= height <= LIMITS.max_height:
        assert LIMITS.min_height - EPS <= height + t[2] <= LIMITS.max_height + EPS
    elif height > LIMITS.max_height:
        assert t[2] < 0
    else:
        assert t[2] > 0
