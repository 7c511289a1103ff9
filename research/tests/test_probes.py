"""The research probes in research/ (ROS-free): they run on a real checkpoint and add up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nsl_policy.shipped import base_checkpoint

pytest.importorskip("pybullet")
pytest.importorskip("torch")

from trainer_helpers import write_bag  # noqa: E402  (pytest.ini's pythonpath; needs torch)

RESEARCH = Path(__file__).resolve().parents[1]
BASE = base_checkpoint()


def _import_tool(name: str):
    sys.path.insert(0, str(RESEARCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(RESEARCH))


def _tool(name: str, *args: str) -> list[str]:
    """Return the command line that runs research/<name>.py with ``args``."""
    return [sys.executable, str(RESEARCH / f"{name}.py"), *args]


def test_grasp_anatomy_measures_each_episode_and_adds_up():
    out = subprocess.run(
        _tool("grasp_anatomy", "--checkpoint", str(BASE), "--episodes", "3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    episodes, summary = lines[:-1], lines[-1]
    assert [e["seed"] for e in episodes] == [
        5_000_000,
        5_000_001,
        5_000_002,
    ]  # validation seeds only
    assert summary["episodes"] == 3 and summary["task"] == "base"
    ok = [e["success"] for e in episodes]
    assert summary["success"] == pytest.approx(sum(ok) / 3, abs=1e-3)
    # Every episode is a success, a miss or a fumble, by its distance to the nearest object.
    misses = sum(1 for e in episodes if not e["success"] and e["nearest_object_cm"] > 3.0)
    assert summary["missed"] == pytest.approx(misses / 3, abs=1e-3)
    assert summary["success"] + summary["missed"] + summary["fumbled"] == pytest.approx(
        1.0, abs=2e-3
    )
    for e in episodes:
        assert (
            0.0 <= e["nearest_object_cm"] < 40.0 and 0.0 <= e["nearest_from_start_cm"] < 40.0
        )  # inside the tray


def test_aim_probe_splits_each_miss_along_and_across_its_approach():
    out = subprocess.run(
        _tool("aim_probe", "--checkpoint", str(BASE), "--episodes", "4", "--threads", "1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 4 and 0.0 <= summary["success_rate"] <= 1.0
    misses = summary["misses_over_3cm"]
    assert summary["misses_stopped_short"] + summary["misses_went_past"] <= misses
    for outcome in ("success", "failure"):
        figures = summary[outcome]
        if figures["error_cm"] is not None:  # an outcome no episode had has no figures
            assert 0.0 <= figures["error_cm"] < 40.0 and -1.0 <= figures["first_move_cos"] <= 1.0
    # Every episode has a first step; no step moves more than the action bound allows (3 cm
    # per axis) towards its object.
    steps = summary["per_step"]
    assert steps["0"]["n"] == 4 and steps["0"]["height_cm"] == pytest.approx(15.0, abs=0.5)
    assert all(abs(s["closed_cm"]) <= 3.0 * 2**0.5 + 1e-6 for s in steps.values())


def test_grasp_anatomy_takes_cem_overrides_and_names_bad_ones():
    tool = _tool("grasp_anatomy", "--checkpoint", str(BASE), "--episodes", "1")
    out = subprocess.run(
        tool + ["--cem", "{population: 8, elites: 2, iterations: 1}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["cem"] == {
        "population": 8,
        "elites": 2,
        "iterations": 1,
    }
    bad = subprocess.run(
        tool + ["--cem", "{population: 2, elites: 4}"], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "elites" in bad.stderr, bad.stderr


def test_nearest_object_distance_is_zero_at_an_objects_centre():
    nearest_object_distance = _import_tool("grasp_anatomy").nearest_object_distance
    from nsl_sim.env import GraspEnv, SimConfig

    with GraspEnv(SimConfig(num_objects=2)) as env:
        env.reset(seed=3)
        centres = env.object_centres()
        assert nearest_object_distance(env, centres[1]) == pytest.approx(0.0, abs=1e-9)
        far = centres[0] + [0.5, 0.0]
        assert nearest_object_distance(env, far) == pytest.approx(
            min(float(((c - far) ** 2).sum() ** 0.5) for c in centres)
        )


def test_start_pose_figures_tell_a_blind_q_function_from_one_that_looks():
    import numpy as np

    figures = _import_tool("start_pose_probe").start_pose_figures
    offsets = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    blind = figures(
        np.tile([0.1, 0.9, 0.3], (4, 1)) + np.arange(4)[:, None] * 0.01,
        np.tile([0.02, 0.0], (4, 1)),
        offsets,
    )
    assert (
        blind["q_correlation_mean"] == pytest.approx(1.0)
        and blind["scenes_best_action_differs"] == 0
    )
    assert blind["first_move_towards_nearest"] == blind["fixed_move_towards_nearest"] == 0.25
    looking = figures(
        np.eye(4) + 0.1, offsets * 0.02, offsets
    )  # a different best action, and a move at the object
    assert looking["q_correlation_mean"] < 0 and looking["scenes_best_action_differs"] == 3
    assert (
        looking["first_move_towards_nearest"] == 1.0
        and looking["fixed_move_towards_nearest"] == 0.0
    )


def test_start_pose_probe_runs_on_the_shipped_base():
    out = subprocess.run(
        _tool("start_pose_probe", "--checkpoint", str(BASE), "--scenes", "3", "--actions", "16"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["scenes"] == 3 and result["actions"] == 16
    assert -1.0 <= result["q_correlation_min"] <= result["q_correlation_mean"] <= 1.0
    assert 0 <= result["scenes_best_action_differs"] <= 2
    assert 0 < result["first_move_cm_mean"] <= 100 * 0.03 * 2**0.5 + 1e-6  # inside one step's clip


def test_perception_probe_labels_are_the_offset_to_the_nearest_object():
    import numpy as np

    from nsl_sim.env import GraspEnv, SimConfig

    probe = _import_tool("perception_probe")
    images, states, offsets = probe.collect(64, "train", range(2), noise_max=0.0, progress_every=0)
    assert images.shape[1:] == (64, 64, 3) and images.dtype == np.uint8
    assert len(images) == len(states) == len(offsets) >= 2
    starts = np.flatnonzero(states[:, 2] == 0)
    assert len(starts) == 2  # one start frame per episode
    with GraspEnv(SimConfig(object_split="train")) as env:
        env.reset(seed=1, task="base")
        start_xy = env.commanded_pose()[0][:2]
        centres = env.object_centres()
    expected = min((c - start_xy for c in centres), key=lambda d: float(np.linalg.norm(d)))
    np.testing.assert_allclose(offsets[starts[1]], expected, atol=1e-5)
    # The noise-free oracle closes in on its object: the last frame is nearer than the first.
    assert np.linalg.norm(offsets[starts[1] - 1]) < np.linalg.norm(offsets[0])


def test_perception_probe_runs_and_reuses_its_frames(tmp_path):
    cmd = _tool(
        "perception_probe",
        "--train-episodes",
        "3",
        "--test-episodes",
        "2",
        "--steps",
        "5",
        "--threads",
        "1",
        "--cache",
        str(tmp_path),
    )
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert len(cached) == 2 and all(name.endswith(".npz") for name in cached)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert (
        first.stderr.count("collected") == 2 and "collected" not in second.stderr
    )  # the frames came from the cache
    a, b = (json.loads(out.stdout.splitlines()[-1]) for out in (first, second))
    assert a["train_frames"] == b["train_frames"] and a["test_frames"] == b["test_frames"] > 0
    assert a["median_error_cm"] == b["median_error_cm"]  # same frames, same seed: same training
    assert a["blind_median_error_cm"] > 0 and 0 <= a["within_3cm"] <= 1


def test_roc_auc_matches_counting_pairs():
    import numpy as np

    auc = _import_tool("grasp_outcome_probe").roc_auc
    assert (
        auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
        and auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    )
    assert auc([0.5] * 4, [0, 1, 0, 1]) == 0.5 and np.isnan(auc([0.1, 0.2], [1, 1]))
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 5, 200) / 4, rng.random(200) < 0.3  # many ties
    pos, neg = scores[labels], scores[~labels]
    pairs = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc(scores, labels) == pytest.approx(pairs)


def test_episode_labels_count_steps_to_the_grasp():
    import numpy as np

    labels = _import_tool("grasp_outcome_probe").episode_labels
    to_go, success = labels(np.array([0, 0, 1, 0, 0]), np.array([False, False, True, False, True]))
    assert to_go.tolist() == [2, 1, 0, 1, 0] and success.tolist() == [
        True,
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="no final step"):
        labels(np.array([0, 0]), np.array([True, False]))


def test_grasp_outcome_probe_scores_recorded_episodes(tmp_path):
    held_out, train = (
        write_bag(tmp_path / "held_out", 24, steps=2, seed=1),
        write_bag(tmp_path / "train", 12, steps=2, seed=2),
    )
    saved = tmp_path / "classifier.safetensors"
    out = subprocess.run(
        _tool(
            "grasp_outcome_probe",
            "--checkpoint",
            str(BASE),
            "--data",
            str(held_out),
            "--fit-steps",
            "2",
            "--train",
            str(train),
            "--save-classifier",
            str(saved),
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["episodes"] == 24 and [r["steps_to_go"] for r in result["by_steps_to_go"]] == [
        0,
        1,
    ]
    for row in result["by_steps_to_go"]:
        assert (
            row["n"] == 24
            and 0 < row["success"] < 1
            and 0 <= row["auc"] <= 1
            and 0 < row["mean_q"] < 1
        )
    assert result["classifier"]["steps"] == 2 and 0 <= result["classifier"]["grasp_auc"] <= 1
    from nsl_policy.checkpoint import load_checkpoint

    loaded = load_checkpoint(saved)  # a policy checkpoint QT-Opt can start from
    assert loaded.checkpoint_id == result["classifier"]["checkpoint_id"]
    assert loaded.model.config == load_checkpoint(BASE).model.config
    bad = subprocess.run(
        _tool(
            "grasp_outcome_probe",
            "--checkpoint",
            str(BASE),
            "--data",
            str(held_out),
            "--fit-steps",
            "5",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--fit-steps needs --train" in bad.stderr
    bad = subprocess.run(
        _tool(
            "grasp_outcome_probe",
            "--checkpoint",
            str(BASE),
            "--data",
            str(held_out),
            "--save-classifier",
            str(saved),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--save-classifier needs --fit-steps" in bad.stderr


def test_steering_labels_and_within_frame_auc():
    import numpy as np

    probe = _import_tool("steering_probe")
    offsets = np.array([[0.05, 0.0], [0.0, -0.05]])
    moves = np.array([[[0.03, 0.0], [-0.03, 0.0]], [[0.0, -0.03], [0.03, 0.03]]])
    assert probe.move_labels(offsets, moves).tolist() == [[1, 0], [1, 0]]
    actions, metres = probe.random_moves(
        5, 3, 0.03, np.random.default_rng(0), horizontal_only=True
    )
    assert (
        (actions[..., 2] == -1).all()
        and (actions[..., 3] == 0).all()
        and (actions[..., 4:] == -1).all()
    )
    assert np.allclose(metres, actions[..., :2] * 0.03)
    labels = np.array(
        [[1, 0, 0], [0, 1, 1], [1, 1, 1]]
    )  # the last frame has one label only: skipped
    assert (
        probe.within_frame_auc(np.array([[0.9, 0.1, 0.2], [0.9, 0.1, 0.2], [0, 0, 0]]), labels)
        == 0.5
    )
    # A Q that only likes some scenes better ranks nothing within a scene.
    assert (
        probe.within_frame_auc(np.array([[0.5, 0.5, 0.5], [0.9, 0.9, 0.9], [0, 0, 0]]), labels)
        == 0.5
    )


def test_steering_probe_runs_on_the_shipped_base():
    out = subprocess.run(
        _tool(
            "steering_probe",
            "--checkpoint",
            str(BASE),
            "--test-episodes",
            "3",
            "--moves",
            "8",
            "--fit-steps",
            "2",
            "--train-episodes",
            "1",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert (
        result["moves_per_frame"] == 8
        and result["test_frames"] > 0
        and 0 < result["closer_share"] < 1
    )
    assert (
        0 <= result["auc"] <= 1
        and 0 <= result["classifier"]["auc"] <= 1
        and result["classifier"]["steps"] == 2
    )


def test_aux_location_probe_trains_both_runs_and_caches_its_labels(tmp_path):
    data = write_bag(tmp_path / "data" / "bootstrap", 4, steps=2, size=64, seed=3)
    cmd = _tool(
        "aux_location_probe",
        "--data",
        str(data),
        "--steps",
        "3",
        "--threads",
        "1",
        "--workers",
        "1",
        "--log-every",
        "1",
        "--output",
        str(tmp_path / "out"),
    )
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout.splitlines()[-1])
    assert result["rows"] == 8 and [r["aux_weight"] for r in result["runs"]] == [0.0, 1.0]
    from nsl_policy.checkpoint import load_checkpoint

    for run in result["runs"]:
        assert load_checkpoint(run["checkpoint"]).checkpoint_id == run["checkpoint_id"]
        assert run["location_loss_last10pct"] > 0
    second = subprocess.run(cmd + ["--only", "aux"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert (
        "rows from" in second.stderr and "rows from" not in first.stderr
    )  # the labels came from the cache
    again = json.loads(second.stdout.splitlines()[-1])["runs"]
    assert [r["checkpoint_id"] for r in again] == [
        result["runs"][1]["checkpoint_id"]
    ]  # seeded: the same weights
