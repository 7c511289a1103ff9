"""YAML task files, texture files, reference physics, oracle evaluation, ``nsl sim`` commands."""

import hashlib
from pathlib import Path
import argparse

import numpy as np
import pytest

from nsl_sim import assets, cli
from nsl_sim.env import GraspEnv, SimConfig
from nsl_sim.evaluate import (
    evaluate_oracle,
    GALLERY_LABEL_HEIGHT,
    run_oracle_episode,
    wilson_interval,
)
from nsl_sim.tasks import TASKS, TaskConfig, get_task, load_task_yaml

EXAMPLE = Path(__file__).resolve().parent.parent / "nsl_sim" / "examples" / "dusk_checker.yaml"
SEED = 5


@pytest.fixture(scope="module")
def env():
    e = GraspEnv(SimConfig())
    yield e
    e.close()


@pytest.fixture(scope="module")
def base_image(env):
    return env.reset(SEED, "base").image.copy()


def diff(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def stripes_png(path: Path) -> Path:
    img = np.full((64, 64, 3), (220, 30, 30), np.uint8)  # red with dark stripes
    img[:, ::8] = (20, 20, 20)
    path.write_bytes(assets.encode_png(img))
    return path


def test_example_yaml_loads_and_changes_the_world(env, base_image):
    task = get_task(str(EXAMPLE))  # a path ending in .yaml is accepted wherever a task name is
    assert task.name == "dusk_checker" and task.severity == 0.8 and task.checker_squares == 12
    assert (
        task.shadows and task.texture == "checkerboard"
    )  # from "base: checkerboard" + own values
    eff = task.effective()
    assert eff.camera_offset == pytest.approx((0.0, 0.024, -0.016))
    img = env.reset(SEED, str(EXAMPLE)).image
    d = diff(img, base_image)
    print(f"dusk_checker vs base: {d:.1f}")
    assert d > 15.0
    assert env.task.name == "dusk_checker"


def test_yaml_name_defaults_to_file_stem_and_relative_texture(tmp_path, env, base_image):
    stripes_png(tmp_path / "stripes.png")
    (tmp_path / "sub").mkdir()
    yml = tmp_path / "sub" / "striped_tray.yaml"
    yml.write_text("texture: ../stripes.png\n")
    task = load_task_yaml(str(yml))
    assert task.name == "striped_tray"
    assert task.texture == str(tmp_path / "stripes.png")
    img = env.reset(SEED, task).image
    assert diff(img, base_image) > 10.0
    # the texture is visible: the (grey) tray and table turn red
    red_excess = img[..., 0].astype(float).mean() - img[..., 1].astype(float).mean()
    base_excess = base_image[..., 0].astype(float).mean() - base_image[..., 1].astype(float).mean()
    print(f"red excess {red_excess:.1f} vs base {base_excess:.1f}")
    assert red_excess > base_excess + 30


def test_bad_texture_paths_give_clear_errors(tmp_path, env):
    missing = tmp_path / "bad_tex.yaml"
    missing.write_text("name: bad_tex\ntexture: /no/such/dir/wood.png\n")
    with pytest.raises(
        ValueError, match=r"texture file not found: '/no/such/dir/wood.png'"
    ) as err:
        get_task(str(missing))
    assert str(missing) in str(err.value)
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a PNG")
    with pytest.raises(ValueError, match="not a PNG, JPEG"):
        TaskConfig(name="x", texture=str(not_image))
    with pytest.raises(ValueError, match="cannot be read"):
        get_task(str(tmp_path / "absent.yaml"))
    # a texture file deleted after the task was defined: the reset fails clearly, the env recovers
    tex = stripes_png(tmp_path / "gone.png")
    task = TaskConfig(name="gone", texture=str(tex))
    tex.unlink()
    with pytest.raises(ValueError, match="missing or not an image"):
        env.reset(SEED, task)
    with pytest.raises(RuntimeError):  # no episode after a failed reset
        env.step([0, 0, 0], 0.0, False, False)
    assert env.reset(SEED, "base").image.shape == (64, 64, 3)


def test_every_named_task_differs_from_base_by_a_measured_amount(env, base_image):
    """Appearance tasks change the image, geometry tasks the actual gripper pose (same seed)."""
    env.reset(SEED, "base")
    base_pose = env.gripper_pose()[0]
    measured = {}
    for name in TASKS:
        if name == "base":
            continue
        img = env.reset(SEED, name).image
        pose = env.gripper_pose()[0]
        measured[name] = (diff(img, base_image), float(np.linalg.norm(pose - base_pose)))
    print(measured)
    for name in ("checkerboard", "harsh_light"):
        assert measured[name][0] > 15.0, name
    assert measured["transparent_objects"][0] > 0.3
    assert measured["extend_gripper_1cm"][1] == pytest.approx(0.01, abs=0.002)
    assert measured["offset_gripper_10cm"][1] == pytest.approx(0.10, abs=0.005)
    for name in ("checkerboard", "harsh_light", "transparent_objects"):
        assert measured[name][1] < 1e-6, name  # appearance only


def test_determinism_images_and_outcome_fresh_envs():
    """Same seed and task in two separate envs: bit-identical images, poses and outcome."""

    def episode(task):
        e = GraspEnv(SimConfig(image_size=48))
        try:
            h = hashlib.sha1()
            h.update(e.reset(31, task).image.tobytes())
            while True:
                r = e.step(*e.oracle_action())
                h.update(r.observation.image.tobytes())
                h.update(np.asarray(e.gripper_pose()[0]).tobytes())
                if r.done:
                    return h.hexdigest(), r.grasp_success, r.info["lifted_object"]
        finally:
            e.close()

    a, b = episode("harsh_light"), episode("harsh_light")
    assert a == b


def test_reference_physics_settings():
    ref = SimConfig.reference_physics(image_size=32)
    assert (ref.solver_iterations, ref.gravity, ref.arm_max_velocity, ref.early_exit) == (
        150,
        -10.0,
        0.35,
        False,
    )
    assert ref.settle_steps == 1500 and ref.close_steps == 500 and ref.lift_steps == 500
    assert SimConfig.reference_physics(num_objects=5).settle_steps == 2500
    with pytest.raises(ValueError, match="gravity"):
        SimConfig(gravity=5.0)
    e = GraspEnv(ref)
    try:
        e.reset(2)
        r = e.step([0.0, 0.0, -0.03], 0.0, False, False)
        assert r.info["substeps"] == 80  # no early exit: always the full 80 physics steps
        assert r.observation.height == pytest.approx(0.12, abs=0.01)
    finally:
        e.close()
    fast = GraspEnv(SimConfig(image_size=32))
    try:
        fast.reset(2)
        assert fast.step([0.0, 0.0, -0.03], 0.0, False, False).info["substeps"] < 80
    finally:
        fast.close()


def test_wilson_interval():
    lo, hi = wilson_interval(80, 100)
    assert lo == pytest.approx(0.7112, abs=1e-3) and hi == pytest.approx(0.8666, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_evaluate_oracle_matches_single_episodes():
    res = evaluate_oracle("base", episodes=2, seed=40, config=SimConfig(image_size=32))
    e = GraspEnv(SimConfig(image_size=32))
    try:
        singles = [run_oracle_episode(e, 40 + i)[0] for i in range(2)]
    finally:
        e.close()
    assert res.outcomes == singles and res.successes == sum(singles)
    assert res.task == "base" and res.episodes == 2
    lo, hi = res.ci
    assert lo <= res.rate <= hi
    assert "95% CI" in res.line()


def test_nsl_sim_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "g.png"
    args = parser.parse_args(
        ["sim", "gallery", "--output", str(out), "--size", "32", "--tasks", "base", "checkerboard"]
        + ["--task-severity", "checkerboard=0.5"]
    )
    assert args.fn(args) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG")
    cv2 = pytest.importorskip("cv2")  # optional (as in nsl_sim.evaluate): decodes the PNG
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    top = GALLERY_LABEL_HEIGHT
    assert img.shape == (2 * 32 + top, 2 * 32 + 2, 3)
    left, right = img[top:, :32].astype(int), img[top:, 34:].astype(int)
    assert np.abs(left - right).mean() > 8  # base vs checkerboard (grey-ish at 0.5) columns
    zoomed = tmp_path / "zoomed.png"
    args = parser.parse_args(
        ["sim", "gallery", "--output", str(zoomed), "--size", "32", "--tasks", "base"]
        + ["--camera-fov", "24"]
    )
    assert args.fn(args) == 0
    narrow = cv2.imdecode(np.frombuffer(zoomed.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(narrow[top:].astype(int) - left).mean() > 5  # another framing of base
    args = parser.parse_args(["sim", "gallery", "--output", str(zoomed), "--camera-fov", "200"])
    assert args.fn(args) == 2 and "camera_fov" in capsys.readouterr().err

    args = parser.parse_args(
        ["sim", "eval-oracle", "--task", "base", "--episodes", "2", "--size", "32", "--seed", "40"]
    )
    assert args.fn(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("oracle on base: success") and "95% CI" in line and "(" in line

    args = parser.parse_args(["sim", "eval-oracle", "--task", "nope", "--episodes", "1"])
    assert args.fn(args) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["sim", "eval-oracle", "--episodes", "0"])
