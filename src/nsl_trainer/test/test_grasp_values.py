"""nsl_trainer.grasp_values: the supervised grasp-value phase ("grasp values first")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsl_collector.transitions import Transitions
from nsl_policy.model import QNetworkConfig
from nsl_trainer.grasp_values import GraspValueConfig, fit_grasp_values, grasp_rows, new_network
from nsl_policy.image import to_tensor

SMALL = QNetworkConfig(image_size=32, width=8, embed_width=8, fc_width=8)


def seen_grasps(n_episodes: int, seed: int) -> Transitions:
    """Return two-step episodes whose grasp succeeds iff a white square is in the image.

    The grasp is the second step; the outcome can only be told by looking. The first step is a
    dark frame with a random outcome-free reward of 0.
    """
    rng = np.random.default_rng(seed)
    n = 2 * n_episodes
    image = rng.integers(0, 80, (n, 32, 32, 3), dtype=np.uint8)
    success = rng.random(n_episodes) < 0.4
    for e in np.flatnonzero(success):
        r, c = rng.integers(4, 20, 2)
        image[2 * e + 1, r : r + 8, c : c + 8] = 255
    done = np.tile([False, True], n_episodes)
    reward = np.zeros(n, np.float32)
    reward[1::2] = success
    return Transitions(
        image=image,
        state=np.zeros((n, 3), np.float32),
        action=rng.uniform(-1, 1, (n, 6)).astype(np.float32),
        reward=reward,
        done=done,
        next_index=np.where(done, np.arange(n), np.arange(n) + 1),
        episode=np.arange(n) // 2,
    )


def test_grasp_rows_are_the_episode_ends():
    data = seen_grasps(5, seed=0)
    assert grasp_rows(data).tolist() == [1, 3, 5, 7, 9]


def test_learns_an_outcome_only_the_image_tells():
    train, held_out = seen_grasps(300, seed=1), seen_grasps(200, seed=2)
    net = new_network(SMALL, seed=0)
    losses = []
    fit_grasp_values(
        net, train, GraspValueConfig(steps=300, seed=0), lambda step, m: losses.append(m["loss"])
    )
    assert len(losses) == 300 and not net.training
    rows = grasp_rows(held_out)
    with torch.no_grad():
        logits = net(
            to_tensor(held_out.image[rows]),
            torch.as_tensor(held_out.state[rows]),
            torch.as_tensor(held_out.action[rows]),
        ).numpy()
    success = held_out.reward[rows] > 0
    # successes score well above failures on episodes it never saw, and the loss fell
    assert logits[success].mean() > logits[~success].mean() + 2.0
    assert np.mean(losses[-30:]) < 0.5 * np.mean(losses[:30])


def test_seeded():
    data = seen_grasps(40, seed=3)
    a = fit_grasp_values(new_network(SMALL, seed=0), data, GraspValueConfig(steps=5, seed=4))
    b = fit_grasp_values(new_network(SMALL, seed=0), data, GraspValueConfig(steps=5, seed=4))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_bad_data_and_config_are_named():
    data = seen_grasps(10, seed=5)
    one_class = Transitions(
        image=data.image,
        state=data.state,
        action=data.action,
        reward=np.zeros_like(data.reward),
        done=data.done,
        next_index=data.next_index,
        episode=data.episode,
    )
    with pytest.raises(ValueError, match="all failures"):
        fit_grasp_values(new_network(SMALL, 0), one_class, GraspValueConfig(steps=1))
    nan = Transitions(
        image=data.image,
        state=np.full_like(data.state, np.nan),
        action=data.action,
        reward=data.reward,
        done=data.done,
        next_index=data.next_index,
        episode=data.episode,
    )
    with pytest.raises(FloatingPointError, match="step 1"):
        fit_grasp_values(new_network(SMALL, 0), nan, GraspValueConfig(steps=3))
    with pytest.raises(ValueError, match="steps"):
        GraspValueConfig(steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        GraspValueConfig(learning_rate=float("nan"))
    with pytest.raises(ValueError, match="unknown"):
        GraspValueConfig.from_dict({"stepz": 3})
