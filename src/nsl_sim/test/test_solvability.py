"""Physical bounds of the challenge knobs and the solvability checks (ROS-free)."""

import dataclasses
import math

import numpy as np
import pytest

from nsl_sim.cli import _severities
from nsl_sim.env import GraspEnv, SimConfig
from nsl_sim.evaluate import gallery_label
from nsl_sim.scripted import aware_oracle_action, oracle_action
from nsl_sim.solvability import SolvabilityChecker, check_kind, probe_error, render_scenes
from nsl_sim.tasks import PHYSICAL_BOUNDS, TASKS, get_task

SEEDS = range(6_050_000, 6_050_012)


def at(name: str, severity: float):
    return dataclasses.replace(TASKS[name], severity=severity)


def within(name: str, value: float) -> bool:
    lo, hi = PHYSICAL_BOUNDS[name]
    return lo - 1e-9 <= value <= hi + 1e-9


@pytest.mark.parametrize("severity", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_severity_stays_inside_the_physical_bounds(name, severity):
    eff = at(name, severity).effective()
    for knob in ("object_alpha", "light_ambient", "light_diffuse", "light_specular"):
        assert within(knob, getattr(eff, knob)), knob
    for knob in ("finger_extension", "finger_width_scale", "finger_friction", "camera_noise"):
        assert within(knob, getattr(eff, knob)), knob
    assert all(within("light_color", v) for v in eff.light_color)
    d = eff.light_direction
    assert math.degrees(math.atan2(d[2], math.hypot(d[0], d[1]))) >= 12.0 - 1e-6
    assert np.linalg.norm(eff.gripper_offset) <= PHYSICAL_BOUNDS["gripper_offset"][1] + 1e-9
    if eff.texture == "checkerboard":
        assert eff.checker_squares <= PHYSICAL_BOUNDS["checker_squares"][1]


def test_the_reviewed_extrapolations_now_saturate_visibly():
    transparent = at("transparent_objects", 1.5).effective()
    assert transparent.object_alpha == pytest.approx(0.15)
    assert transparent.saturated == ("object_alpha",)
    harsh = at("harsh_light", 1.5).effective()
    assert harsh.light_ambient == pytest.approx(0.1) and "light_ambient" in harsh.saturated
    extend = at("extend_gripper_1cm", 3.0).effective()
    assert (extend.finger_width_scale, extend.finger_friction) == pytest.approx((0.3, 0.3))
    assert extend.finger_extension == pytest.approx(0.03)
    # Up to severity 1 the named variations are unchanged.
    for name in TASKS:
        assert TASKS[name].effective().saturated == ()
        assert TASKS[name].saturation_severity() >= 1.0
    assert TASKS["transparent_objects"].saturation_severity() == pytest.approx(0.85 / 0.75)
    assert TASKS["offset_gripper_10cm"].saturation_severity() == pytest.approx(1.5)
    assert gallery_label(at("transparent_objects", 2.0))[1] == "severity 2 (saturated)"


def test_check_kind():
    assert check_kind(TASKS["offset_gripper_10cm"]) == "geometry"
    assert check_kind(TASKS["extend_gripper_1cm"]) == "geometry"
    for name in ("checkerboard", "harsh_light", "transparent_objects"):
        assert check_kind(TASKS[name]) == "appearance"


def test_scenes_show_the_objects_at_every_severity():
    """Objects change pixels around their label, also at the saturated transparency."""
    world = SimConfig(num_objects=1, object_split="test")
    base = render_scenes(get_task("base"), SEEDS, world)
    glass = render_scenes(at("transparent_objects", 3.0), SEEDS, world)
    assert base.changed_pixels().min() > 0 and glass.changed_pixels().min() > 0
    assert glass.changed_pixels().sum() < base.changed_pixels().sum()
    np.testing.assert_allclose(glass.labels, base.labels, atol=0.01)  # same physics
    diff = np.abs(base.images.astype(int) - base.empty.astype(int)).max(-1) > 12
    assert base.labels.shape == (len(SEEDS), 1, 2)
    for mask, (u, v) in zip(diff, base.labels[:, 0]):
        rows, cols = np.nonzero(mask)
        assert cols.min() - 2 <= u <= cols.max() + 2 and rows.min() - 2 <= v <= rows.max() + 2


def test_probe_learns_the_object_position_on_base():
    world = SimConfig(num_objects=1, object_split="test")
    scenes = render_scenes(get_task("base"), range(6_050_000, 6_050_040), world)
    err, chance = probe_error(scenes.images, scenes.labels, steps=150)
    assert err < chance


def test_aware_oracle_knows_the_offset():
    def rate(policy, task):
        ok = 0
        with GraspEnv(SimConfig(), task=task) as env:
            for seed in range(10):
                env.reset(seed)
                while True:
                    res = env.step(*policy(env))
                    if res.done:
                        ok += res.grasp_success
                        break
        return ok

    with GraspEnv(SimConfig(), task="offset_gripper_10cm") as env:
        env.reset(0)
        np.testing.assert_allclose(np.abs(env.tool_error()), [0.1, 0, 0], atol=1e-4)
    assert (
        rate(aware_oracle_action, "offset_gripper_10cm")
        >= rate(oracle_action, "offset_gripper_10cm") + 3
    )
    # Without a geometry change the aware oracle is the oracle.
    assert rate(aware_oracle_action, "base") == rate(oracle_action, "base")


def test_checker_returns_figures_and_a_verdict():
    checker = SolvabilityChecker(SimConfig(object_split="test"), episodes=16, probe_steps=30)
    geometry = checker.check("offset_gripper_10cm", 1.0)
    assert geometry.kind == "geometry" and isinstance(geometry.passed, bool)
    assert {"aware_oracle", "base_oracle", "episodes"} <= set(geometry.figures)
    appearance = checker.check("transparent_objects", 2.0)
    assert appearance.kind == "appearance" and appearance.saturated == ("object_alpha",)
    assert 0.0 < appearance.figures["pixel_share"] < 1.0
    assert {"probe_error_px", "base_probe_error_px", "chance_error_px"} <= set(appearance.figures)
    assert "transparent_objects at severity 2 (saturated: object_alpha)" in appearance.line()


def test_gallery_severity_arguments():
    tasks = ["base", "harsh_light"]
    assert _severities(tasks, 1.5, ["harsh_light=0.5"]) == {"base": 1.5, "harsh_light": 0.5}
    with pytest.raises(ValueError, match="NAME=SEVERITY"):
        _severities(tasks, None, ["harsh_light"])
