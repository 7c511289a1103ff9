"""Hindsight location labels (nsl_trainer.hindsight) against the simulator's.

Scripted grasps in the sim, recorded as the pipeline records them (normalised action vectors
that the arm receives as commands). On every successful episode the hindsight label of each step
must be where the gripper's commanded position was when the fingers closed, seen from that step;
at the grasp step it must be near the sim's own label (the offset to the nearest object's
centre, nsl_experiment.episodes.episode_locations), which the fine-tunes' labels stand in for.
"""

from __future__ import annotations

import numpy as np
import pytest
from nsl_collector.transitions import Transitions
from nsl_experiment.episodes import episode_locations, policy_state
from nsl_policy.action_space import ActionSpace, GraspCommand
from nsl_sim.env import GraspEnv, SimConfig
from nsl_sim.tasks import get_task
from nsl_trainer.hindsight import closing_step, episode_rows, hindsight_locations

EPISODES = 24
"""Even seeds: the oracle; odd seeds: the oracle with noise on its horizontal moves."""
NOISE_STD = 0.2
"""Std of the Gaussian noise on the noisy episodes' normalised x/y moves."""


@pytest.fixture(scope="module")
def grasps():
    """Scripted episodes in the sim: their transitions, sim labels and commanded positions."""
    sim = SimConfig(image_size=32, num_objects=3, render_final=False)
    space = ActionSpace(sim.max_translation, sim.max_rotation)
    task = get_task("base")
    env = GraspEnv(sim)
    columns: dict[str, list] = {k: [] for k in ("image", "state", "action", "reward", "done")}
    episode, sim_labels, commanded, closed_at, clipped = [], [], [], [], []
    try:
        for seed in range(EPISODES):
            rng = np.random.default_rng(seed)
            obs = env.reset(seed, task)
            actions, positions, done, closed, clip = [], [], False, None, False
            while not done:
                t, r, c, term = env.oracle_action()
                vec = space.to_vector(GraspCommand(tuple(map(float, t)), float(r), c, term))
                if seed % 2:
                    vec[:2] = np.clip(vec[:2] + rng.normal(0.0, NOISE_STD, 2), -1.0, 1.0)
                cmd = space.to_command(vec)
                positions.append(env.commanded_pose()[0][:2])
                columns["image"].append(obs.image)
                columns["state"].append(policy_state(obs))
                columns["action"].append(vec)
                res = env.step(cmd.translation, cmd.rotation, cmd.close_gripper, cmd.terminate)
                done, obs = res.done, res.observation
                clip |= res.info["clipped"]
                if closed is None and (cmd.close_gripper or cmd.terminate or done):
                    closed = env.commanded_pose()[0][:2]
                columns["reward"].append(float(done and res.grasp_success))
                columns["done"].append(done)
                episode.append(seed)
                actions.append(vec)
            sim_labels.append(episode_locations(env, seed, task, np.array(actions)))
            commanded.append(np.array(positions))
            closed_at.append(closed)
            clipped.append(clip)
    finally:
        env.close()
    n = len(episode)
    done = np.array(columns["done"])
    transitions = Transitions(
        image=np.array(columns["image"]),
        state=np.array(columns["state"]),
        action=np.array(columns["action"], dtype=np.float32),
        reward=np.array(columns["reward"], dtype=np.float32),
        done=done,
        next_index=np.where(done, np.arange(n), np.arange(n) + 1),
        episode=np.array(episode),
    )
    return sim, transitions, np.concatenate(sim_labels), commanded, closed_at, clipped


def test_hindsight_labels_are_where_the_grasp_closed_and_near_the_sims(grasps):
    sim, transitions, sim_labels, commanded, closed_at, clipped = grasps
    # The dataset loader scales recorded commands with ActionSpace(), the sim's own step size.
    assert ActionSpace().max_translation == sim.max_translation
    labels = hindsight_locations(transitions)
    rows = episode_rows(transitions)
    success = [bool(transitions.reward[r[-1]] > 0) for r in rows]
    assert sum(success) >= EPISODES // 2, success
    exact = 0
    at_grasp: list[tuple[int, float]] = []
    before: dict[int, list[float]] = {}
    for seed, (r, ok) in enumerate(zip(rows, success)):
        if not ok:
            assert np.isnan(labels[r]).all()
            continue
        grasp = closing_step(transitions.action[r])
        assert not np.isnan(labels[r[: grasp + 1]]).any()
        assert np.isnan(labels[r[grasp + 1 :]]).all()
        if not clipped[seed]:  # no workspace clip: the moves are the commanded positions' steps
            truth = closed_at[seed] - commanded[seed][: grasp + 1]
            np.testing.assert_allclose(labels[r[: grasp + 1]], truth, atol=1e-6)
            exact += 1
        error = np.linalg.norm(labels[r] - sim_labels[r], axis=1)
        at_grasp.append((seed, float(error[grasp])))
        for k in range(grasp):
            before.setdefault(grasp - k, []).append(float(error[k]))
    assert exact >= sum(success) // 2, (exact, clipped)
    near = [e < 0.01 for _, e in at_grasp]
    oracle = [e < 0.01 for seed, e in at_grasp if seed % 2 == 0]
    report = "; ".join(
        f"{k} step(s) before the grasp: {np.mean(np.array(v) < 0.01):.0%} within 1 cm, "
        f"median {100 * np.median(v):.1f} cm (n={len(v)})"
        for k, v in sorted(before.items())
    )
    print(
        f"\nhindsight vs sim labels at the grasp step: {np.mean(near):.0%} within 1 cm "
        f"(oracle {np.mean(oracle):.0%}, {len(near)} grasps); {report}"
    )
    assert np.mean(near) > 0.5 and np.mean(oracle) >= 0.75, at_grasp
