"""The units of work on their own.

Seeded collection, scripted actors, location labels, the initialisation, the calibration rule and
the head re-initialisation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("pybullet")
pytest.importorskip("torch")

import torch  # noqa: E402
from experiment_helpers import TINY, make_config  # noqa: E402
from nsl_collector.dataset import load_transitions  # noqa: E402
from nsl_experiment.cache import Context  # noqa: E402
from nsl_experiment.episodes import _scripted_actor, episode_locations  # noqa: E402
from nsl_experiment.units.calibration import (  # noqa: E402
    candidate_severities,
    choose_severity,
    world_limit,
    world_signature,
)
from nsl_experiment.units.collect import collect_bootstrap  # noqa: E402
from nsl_experiment.units.train import initial_checkpoint, reinit_modules  # noqa: E402
from nsl_policy.action_space import ActionSpace  # noqa: E402
from nsl_policy.checkpoint import load_checkpoint  # noqa: E402
from nsl_policy.model import QNetwork, QNetworkConfig  # noqa: E402
from nsl_sim.env import GraspEnv, SimConfig  # noqa: E402
from nsl_sim.tasks import get_task  # noqa: E402


def test_collection_is_seeded(tmp_path):
    cfg = make_config(**{**TINY, "bootstrap_episodes": 3, "chunk_episodes": 3})
    sets = []
    for name in ("a", "b"):
        bags, outcomes, _ = collect_bootstrap(Context(cfg, tmp_path / name, lambda m: None))
        sets.append((load_transitions([str(b) for b in bags]), [o.success for o in outcomes]))
    (a, sa), (b, sb) = sets
    assert sa == sb
    for field in ("image", "state", "action", "reward", "done"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    other, _, _ = collect_bootstrap(
        Context(
            make_config(**{**TINY, "bootstrap_episodes": 3, "chunk_episodes": 3, "seed": 1}),
            tmp_path / "c",
            lambda m: None,
        )
    )
    c = load_transitions([str(x) for x in other])
    assert len(c) != len(a) or not np.array_equal(c.image, a.image)


def test_decoy_bootstrap_episodes_aim_at_random_goals_and_leave_older_episodes_unchanged():
    """bootstrap_decoy_fraction.

    That share of the oracle episodes moves like the oracle towards a random grasp pose. Off (0),
    the episodes are those of the plain oracle (no extra draw).
    """
    with pytest.raises(ValueError, match="bootstrap_decoy_fraction"):
        make_config(bootstrap_decoy_fraction=1.5)
    old = {
        "rng_seed": 0,
        "random_fraction": 0.0,
        "noise_max": 0.0,
        "epsilon_max": 0.0,
        "p_close": 0.05,
    }
    env = GraspEnv(SimConfig())

    def episode(spec, seed):
        obs, actions = env.reset(seed), []
        act = _scripted_actor(spec, env, seed)
        while True:
            vec, _, explore = act(obs)
            actions.append(vec)
            res = env.step(*env_command(vec))
            obs = res.observation
            if res.done:
                return np.array(actions), explore, env.commanded_pose()[0]

    def env_command(vec):
        c = ActionSpace(env.config.max_translation, env.config.max_rotation).to_command(vec)
        return c.translation, c.rotation, c.close_gripper, c.terminate

    try:
        for seed in (11, 12):
            before, explore, oracle_end = episode(old, seed)
            assert not explore
            assert np.array_equal(before, episode({**old, "decoy_fraction": 0.0}, seed)[0])
            decoy, explore, decoy_end = episode({**old, "decoy_fraction": 1.0}, seed)
            assert explore  # recorded as exploration
            lo, hi = env.config.object_region_low, env.config.object_region_high
            assert (
                lo[0] - 0.005 <= decoy_end[0] <= hi[0] + 0.005
                and lo[1] - 0.005 <= decoy_end[1] <= hi[1] + 0.005
            )
            assert np.abs(np.asarray(decoy_end[:2]) - np.asarray(oracle_end[:2])).max() > 0.01, (
                "aims elsewhere"
            )
    finally:
        env.close()


@pytest.mark.parametrize("task", ["base", "offset_gripper_10cm"])
def test_location_labels_follow_the_commanded_gripper(task):
    """A recorded episode's labels, rebuilt from its seed and actions.

    Are the offsets from the gripper position the sim commanded before each step (workspace
    clipping included) to the nearest object as it settled.
    """
    actions = np.array(
        [[1, 1, -1, 0, -1, -1]] * 5 + [[-0.5, 0.2, -1, 0.3, -1, -1], [2.0, -3.0, 0.5, 0, -1, -1]],
        dtype=np.float32,
    )
    expected = []
    with GraspEnv(
        SimConfig(image_size=32, max_steps=10, num_objects=3, object_split="train")
    ) as env:
        env.reset(seed=7, task=get_task(task))
        centres = [c[:2] for c in env.object_centres()]
        for a in actions:
            pos = env.commanded_pose()[0][:2]
            expected.append(
                min((c - pos for c in centres), key=lambda d: float(np.linalg.norm(d)))
            )
            env.step(np.clip(a[:3], -1, 1) * env.config.max_translation, 0.0, False, False)
        assert env.commanded_pose()[0][0] == env.config.workspace_high[0]  # the moves were clipped
        labels = episode_locations(env, 7, get_task(task), actions)
    np.testing.assert_allclose(labels, np.array(expected), atol=1e-6)


def test_kaiming_init_checkpoint_feeds_the_image_through(tmp_path):
    cfg = make_config(**{**TINY, "init_scheme": "kaiming"})
    path = initial_checkpoint(Context(cfg, tmp_path, lambda m: None))
    model = load_checkpoint(path).model.eval()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(model.encode(images).std(dim=0).mean()) > 1e-3


def test_calibration_rule():
    # (severity, success rate on the calibration episodes, solvable)
    trials = [(1.0, 0.75, True), (1.5, 0.6, True), (2.0, 0.3, True)]
    assert choose_severity(0.8, trials, 0.2) == (1.5, True)  # the first with a drop >= 0.2
    assert choose_severity(0.7, [(1.0, 0.5, True)], 0.2) == (1.0, True)  # 0.2 in floats
    assert choose_severity(0.8, [(1.0, 0.1, True), (3.0, 0.0, True)], 0.2) == (1.0, True)
    with pytest.raises(ValueError):
        choose_severity(0.8, [], 0.2)


def test_calibration_chooses_only_solvable_severities():
    # An unsolvable severity is skipped even when it drops the base policy the most.
    trials = [(0.5, 0.75, True), (1.0, None, False), (1.5, 0.55, True)]
    assert choose_severity(0.8, trials, 0.2) == (1.5, True)
    assert choose_severity(0.8, [(1.0, 0.0, False), (1.5, 0.55, True)], 0.2) == (1.5, True)
    # No solvable severity drops enough: the solvable one with the largest drop, not reached
    # (never the highest severity, which is unsolvable here).
    trials = [(0.5, 0.7, True), (1.0, 0.65, True), (1.5, 0.7, True), (2.0, None, False)]
    assert choose_severity(0.8, trials, 0.2) == (1.0, False)
    assert choose_severity(0.8, [(1.0, 0.7, True), (2.0, 0.7, True)], 0.2) == (1.0, False)
    # Nothing solvable: no severity.
    assert choose_severity(0.8, [(1.0, None, False), (2.0, None, False)], 0.2) == (None, False)


def test_candidate_severities_stop_where_the_world_stops_changing():
    severities = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
    # Alpha saturates at 0.15 at severity 1.14: 1.5 .. 4 are that world, measured once.
    assert candidate_severities("transparent_objects", severities) == [0.5, 0.75, 1.0, 1.14]
    assert candidate_severities("offset_gripper_10cm", severities) == [0.5, 0.75, 1.0, 1.5]
    # The finger extension moves until 3 although the tips saturate at 1.4 and 1.67.
    assert candidate_severities("extend_gripper_1cm", severities)[-2:] == [2.0, 3.0]
    # The harsh light's direction still turns past every bound: nothing collapses.
    assert candidate_severities("harsh_light", severities + (12.0,)) == [*severities, 12.0]
    for name in ("transparent_objects", "offset_gripper_10cm", "checkerboard"):
        task = get_task(name)
        limit = world_limit(task)
        at = world_signature(dataclasses.replace(task, severity=limit))
        assert at == world_signature(dataclasses.replace(task, severity=9.0)), name
        assert at != world_signature(dataclasses.replace(task, severity=limit - 0.01)), name


def test_reinit_ablation_resets_the_modules_the_network_has(tmp_path):
    """A keypoints network scores keypoints + action in ``fc`` alone.

    The head ablation resets ``fc`` there, and refuses a list that names none of its modules.
    """
    keypoints = QNetwork(
        QNetworkConfig(image_size=32, width=8, fc_width=8, feature_size=8, head="keypoints")
    )
    conv = QNetwork(QNetworkConfig(image_size=32, width=8, fc_width=8))
    ctx = Context(make_config(), tmp_path, print)
    assert reinit_modules(ctx, conv) == ["head", "fc"]
    assert reinit_modules(ctx, keypoints) == ["fc"]
    ctx = Context(make_config(reinit_modules=("head",)), tmp_path, print)
    with pytest.raises(ValueError, match="keypoints head"):
        reinit_modules(ctx, keypoints)
