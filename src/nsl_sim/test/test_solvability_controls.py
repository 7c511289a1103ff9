"""Negative controls of the solvability checks: "not solvable" where nothing can be done.

The worlds are those the physical bounds exist to avoid (nsl_sim.solvability.NEGATIVE_CONTROLS);
the same checks must pass base and each challenge at its named severity.
"""

import dataclasses
import math

import pytest

from nsl_sim.env import SimConfig
from nsl_sim.solvability import (
    NEGATIVE_CONTROLS,
    THRESHOLDS,
    OutOfBoundsTask,
    SolvabilityChecker,
    SolvabilityThresholds,
    check_kind,
    negative_control,
)
from nsl_sim.tasks import PHYSICAL_BOUNDS, TASKS, get_task

WORLD = SimConfig(object_split="test")  # the calibration's: 64x64, three objects


def elevation_deg(direction) -> float:
    return math.degrees(math.atan2(direction[2], math.hypot(direction[0], direction[1])))


def test_negative_controls_are_the_worlds_past_the_bounds():
    invisible = negative_control("invisible_objects").effective()
    assert invisible.object_alpha == 0.0 < PHYSICAL_BOUNDS["object_alpha"][0]
    black = negative_control("black_scene").effective()
    assert black.light_ambient == 0.0 < PHYSICAL_BOUNDS["light_ambient"][0]
    assert elevation_deg(black.light_direction) < 1.0 < PHYSICAL_BOUNDS["light_elevation"][0]
    gripper = negative_control("unholdable_gripper").effective()
    assert gripper.finger_width_scale == 0.2 < PHYSICAL_BOUNDS["finger_width_scale"][0]
    assert gripper.finger_friction == 0.05 < PHYSICAL_BOUNDS["finger_friction"][0]
    assert gripper.finger_extension == pytest.approx(0.03)
    # The other knobs are the bounded task's at that severity.
    harsh = dataclasses.replace(TASKS["harsh_light"], severity=1.5).effective()
    assert (black.light_diffuse, black.light_color) == (harsh.light_diffuse, harsh.light_color)
    assert [check_kind(negative_control(n)) for n in sorted(NEGATIVE_CONTROLS)] == [
        "appearance",
        "appearance",
        "geometry",
    ]


def test_no_task_name_or_severity_reaches_a_negative_control():
    for name in NEGATIVE_CONTROLS:
        with pytest.raises(ValueError, match="unknown task"):
            get_task(name)
        with pytest.raises(ValueError, match="unknown task"):
            get_task(negative_control(name).name)
    for severity in (1.5, 3.0, 10.0):
        for name in TASKS:
            assert not isinstance(get_task(name), OutOfBoundsTask)
            eff = dataclasses.replace(TASKS[name], severity=severity).effective()
            assert eff.object_alpha >= 0.15 and eff.light_ambient >= 0.1
            assert eff.finger_width_scale >= 0.3 and eff.finger_friction >= 0.3
    with pytest.raises(ValueError, match="unknown negative control 'dark'"):
        negative_control("dark")
    with pytest.raises(ValueError, match="unknown knob"):
        OutOfBoundsTask(out_of_bounds=(("object_opacity", 0.0),))


def test_thresholds_are_validated_and_keyed():
    assert SolvabilityChecker().thresholds is THRESHOLDS
    with pytest.raises(ValueError, match="min_pixel_share"):
        SolvabilityThresholds(min_pixel_share=1.5)
    with pytest.raises(ValueError, match="max_probe_ratio"):
        SolvabilityThresholds(max_probe_ratio=0.5)
    assert THRESHOLDS.key() != SolvabilityThresholds(min_probe_gain=0.6).key()
    assert "check_version" in THRESHOLDS.key()


@pytest.fixture(scope="module")
def appearance_checker():
    return SolvabilityChecker(WORLD, episodes=32, probe_steps=300)


@pytest.mark.parametrize("name", ["base", "checkerboard", "harsh_light", "transparent_objects"])
def test_appearance_check_passes_base_and_the_named_challenges(appearance_checker, name):
    result = appearance_checker.check(name, 1.0)
    assert result.passed, result.criteria
    assert result.figures["objects"] == 3 and result.figures["probe_judged"] is True


def test_appearance_check_fails_invisible_objects(appearance_checker):
    result = appearance_checker.check(negative_control("invisible_objects"))
    assert not result.passed
    f = result.figures
    assert f["pixel_share"] < 0.05 < THRESHOLDS.min_pixel_share
    # The probe alone fails it too: it is no better than the blind guess.
    assert f["probe_gain"] < THRESHOLDS.min_probe_gain
    assert f["probe_error_px"] > THRESHOLDS.max_probe_ratio * f["base_probe_error_px"]


def test_appearance_check_fails_the_black_scene(appearance_checker):
    result = appearance_checker.check(negative_control("black_scene"))
    assert not result.passed
    assert result.figures["pixel_share"] < THRESHOLDS.min_pixel_share
    assert result.figures["mean_pixel"] < 0.2 * result.figures["base_mean_pixel"]


@pytest.fixture(scope="module")
def geometry_checker():
    return SolvabilityChecker(WORLD, episodes=30)


@pytest.mark.parametrize("name", ["offset_gripper_10cm", "extend_gripper_1cm"])
def test_geometry_check_passes_the_named_challenges(geometry_checker, name):
    result = geometry_checker.check(name, 1.0)
    assert result.kind == "geometry" and result.passed, result.criteria


def test_geometry_check_fails_the_unholdable_gripper(geometry_checker):
    result = geometry_checker.check(negative_control("unholdable_gripper"))
    assert result.kind == "geometry" and not result.passed, result.criteria
    f = result.figures
    assert f["aware_oracle"] < f["base_oracle"] - 2 * THRESHOLDS.max_oracle_drop
