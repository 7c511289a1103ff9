"""Tests of the named challenge tasks and user-defined YAML variations."""

import dataclasses

import numpy as np
import pytest

from nsl_sim.env import GraspEnv, SimConfig
from nsl_sim.tasks import (
    FINGER_FRICTION,
    TASKS,
    TaskConfig,
    get_task,
    load_task_yaml,
    task_from_dict,
)

SEED = 3


@pytest.fixture(scope="module")
def env():
    e = GraspEnv(SimConfig())
    yield e
    e.close()


@pytest.fixture(scope="module")
def base(env):
    obs = env.reset(SEED, "base")
    pos, yaw = env.gripper_pose()
    return obs.image.astype(np.int16), pos, env._object_names


def image_diff(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_named_tasks_exist():
    assert set(TASKS) >= {
        "base",
        "checkerboard",
        "harsh_light",
        "extend_gripper_1cm",
        "offset_gripper_10cm",
        "transparent_objects",
    }
    for name, cfg in TASKS.items():
        assert cfg.name == name
        assert get_task(name) is cfg


def test_a_name_at_severity_is_the_named_task_at_that_severity():
    task = get_task("harsh_light@1.5")
    assert task == dataclasses.replace(TASKS["harsh_light"], severity=1.5)
    assert task.effective().light_ambient > 0  # saturates at its physical bound, not below


@pytest.mark.parametrize(
    "name, problem",
    [
        ("harsh_light@", "finite number"),
        ("harsh_light@dark", "finite number"),
        ("harsh_light@nan", "finite number"),
        ("harsh_light@-1", ">= 0"),
        ("purple_light@1", "unknown task 'purple_light'"),
    ],
)
def test_a_bad_severity_suffix_is_refused_with_the_reason(name, problem):
    with pytest.raises(ValueError, match=problem):
        get_task(name)


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_task("purple_light")
    for name in TASKS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "name,min_diff", [("checkerboard", 20.0), ("harsh_light", 15.0), ("transparent_objects", 0.3)]
)
def test_visual_tasks_change_the_image(env, base, name, min_diff):
    img = env.reset(SEED, name).image
    d = image_diff(img, base[0])
    print(f"{name}: mean |diff| vs base = {d:.2f}")
    assert d > min_diff
    assert env._object_names == base[2]  # same seed -> same objects in every task
    np.testing.assert_allclose(env.gripper_pose()[0], base[1], atol=1e-6)


def test_transparent_objects_only_change_object_pixels(env, base):
    img = env.reset(SEED, "transparent_objects").image
    _, seg = env._render_raw()
    obj = np.isin(seg & 0xFFFFFF, env._object_ids)
    assert obj.any()
    diff = np.abs(img.astype(np.int16) - base[0]).sum(-1)
    assert (diff[~obj] == 0).all()
    assert diff[obj].mean() > 5


def test_offset_gripper_moves_actual_gripper(env, base):
    obs = env.reset(SEED, "offset_gripper_10cm")
    pos, _ = env.gripper_pose()
    lateral = np.linalg.norm(pos[:2] - base[1][:2])
    assert lateral == pytest.approx(0.10, abs=0.005)
    assert pos[2] == pytest.approx(base[1][2], abs=0.003)
    # the arm's belief (height, commanded pose) is unchanged
    assert obs.height == pytest.approx(env.config.start_position[2], abs=0.005)
    assert image_diff(obs.image, base[0]) > 0.5


def test_extended_fingers_reach_lower(env, base):
    obs = env.reset(SEED, "extend_gripper_1cm")
    pos, _ = env.gripper_pose()
    assert base[1][2] - pos[2] == pytest.approx(0.01, abs=0.002)
    np.testing.assert_allclose(pos[:2], base[1][:2], atol=1e-3)
    assert image_diff(obs.image, base[0]) > 0.2


def _tip_links(env):
    c, robot = env._client(), env._robot
    return [
        (c, robot, j)
        for j in range(c.getNumJoints(robot))
        if b"tip" in c.getJointInfo(robot, j)[12]
    ]


def test_extended_fingers_are_narrower_and_slipperier(env, base):
    """Check that the extension also narrows the fingers and their compliance, as the paper's.

    Tips half as wide (across the closing direction), friction 0.5 instead of the stock 0.8.
    """

    def tips(task):
        env.reset(SEED, task)
        out = []
        for c, robot, j in _tip_links(env):
            lo, hi = c.getAABB(robot, j)
            out.append((c.getDynamicsInfo(robot, j)[1], min(hi[0] - lo[0], hi[1] - lo[1])))
        return out

    stock, extended = tips("base"), tips("extend_gripper_1cm")
    assert len(stock) == len(extended) == 2
    for (f0, w0), (f1, w1) in zip(stock, extended):
        assert f0 == pytest.approx(0.8) and f1 == pytest.approx(0.5)
        assert w1 < 0.75 * w0  # AABB margins keep the ratio above the mesh's 0.5
    eff = dataclasses.replace(TASKS["extend_gripper_1cm"], severity=2.0).effective()
    # Severity 2 asks for tips 0 wide with friction 0.2: both saturate at their physical bounds.
    assert (eff.finger_extension, eff.finger_width_scale, eff.finger_friction) == pytest.approx(
        (0.02, 0.3, 0.3)
    )
    assert set(eff.saturated) == {"finger_width_scale", "finger_friction"}


def test_to_dict_holds_every_field_and_round_trips():
    """A TaskConfig dict (cache keys, metadata) names every knob, nominal ones included."""
    nominal = TaskConfig().to_dict()
    assert set(nominal) == {f.name for f in dataclasses.fields(TaskConfig)}
    assert (nominal["finger_width_scale"], nominal["finger_friction"]) == (1.0, FINGER_FRICTION)
    extended = TASKS["extend_gripper_1cm"]
    d = extended.to_dict()
    assert (d["finger_width_scale"], d["finger_friction"]) == (0.5, 0.5)
    assert task_from_dict(d) == extended
    assert task_from_dict(nominal) == TaskConfig()


def test_severity_zero_is_base(env, base):
    for name in ("checkerboard", "harsh_light", "offset_gripper_10cm"):
        cfg = dataclasses.replace(TASKS[name], severity=0.0)
        img = env.reset(SEED, cfg).image
        assert image_diff(img, base[0]) == 0.0, name
    half = dataclasses.replace(TASKS["offset_gripper_10cm"], severity=0.5)
    env.reset(SEED, half)
    assert np.linalg.norm(env.gripper_pose()[0][:2] - base[1][:2]) == pytest.approx(
        0.05, abs=0.004
    )


def test_checkerboard_severity_above_one_refines_the_squares(env):
    """Black/white cannot get more contrasting, so severity > 1 must still change the image."""
    full = TASKS["checkerboard"].effective()
    double = dataclasses.replace(TASKS["checkerboard"], severity=2.0).effective()
    assert double.checker_colors == full.checker_colors
    assert double.checker_squares == 2 * full.checker_squares
    a = env.reset(SEED, "checkerboard").image.copy()
    b = env.reset(SEED, dataclasses.replace(TASKS["checkerboard"], severity=2.0)).image
    assert image_diff(a, b) > 1.0


def test_task_switch_is_deterministic(env):
    a = env.reset(9, "checkerboard").image.copy()
    env.reset(9, "offset_gripper_10cm")
    b = env.reset(9, "checkerboard").image
    assert a.tobytes() == b.tobytes()
    assert env.task.name == "checkerboard"


def test_task_config_validation():
    with pytest.raises(ValueError, match="severity"):
        TaskConfig(severity=-1)
    with pytest.raises(ValueError, match="texture"):
        TaskConfig(texture="plaid")
    with pytest.raises(ValueError, match="object_alpha"):
        TaskConfig(object_alpha=2.0)
    with pytest.raises(ValueError, match="gripper_offset"):
        TaskConfig(gripper_offset=(0.0, 0.0))
    with pytest.raises(ValueError, match="finger_width_scale"):
        TaskConfig(finger_width_scale=0.1)
    with pytest.raises(ValueError, match="finger_friction"):
        TaskConfig(finger_friction=float("nan"))


def test_yaml_task_loads_and_runs(tmp_path, env, base):
    path = tmp_path / "dim_checker.yaml"
    path.write_text(
        "name: dim_checker\n"
        "texture: checkerboard\n"
        "checker_squares: 12\n"
        "checker_colors: [[0.2, 0.1, 0.1], [0.9, 0.9, 0.6]]\n"
        "light_color: [0.6, 0.6, 0.7]\n"
        "severity: 0.5\n"
    )
    task = load_task_yaml(str(path))
    assert task.name == "dim_checker" and task.checker_squares == 12 and task.severity == 0.5
    assert task.checker_colors[1] == (0.9, 0.9, 0.6)
    img = env.reset(SEED, task).image
    assert image_diff(img, base[0]) > 5.0
    # "base:" starts from a named task
    t2 = task_from_dict({"base": "harsh_light", "name": "harsher", "light_diffuse": 1.5})
    assert t2.shadows and t2.light_diffuse == 1.5


def test_yaml_bad_keys_and_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlight_colour: [1, 0, 0]\n")
    with pytest.raises(ValueError, match="light_colour"):
        load_task_yaml(str(bad))
    bad.write_text("name: x\nobject_alpha: 7\n")
    with pytest.raises(ValueError, match="object_alpha"):
        load_task_yaml(str(bad))
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_task_yaml(str(bad))
    bad.write_text("name: x\nbase: nope\n")
    with pytest.raises(ValueError, match="valid tasks"):
        load_task_yaml(str(bad))
