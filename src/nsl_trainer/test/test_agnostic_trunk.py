"""nsl_trainer.agnostic_trunk: the Q-network's trunk trained to locate objects, without RL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsl_policy.checkpoint import load_checkpoint, save_checkpoint
from nsl_policy.model import QNetworkConfig
from nsl_trainer.agnostic_trunk import (
    AgnosticTrunkConfig,
    chamfer_sq,
    fit_agnostic_trunk,
    trunk_modules,
)
from nsl_trainer.grasp_values import new_network

SMALL = QNetworkConfig(image_size=32, width=8, embed_width=8, fc_width=8)


def scenes(n: int, seed: int, objects: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Return ``n`` noisy dark 32x32 images with ``objects`` bright 6x6 squares; their centres."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, 32, 32, 3), dtype=np.uint8)
    corners = rng.integers(0, 26, (n, objects, 2))  # (column, row) of each square's corner
    for i in range(n):
        for c, r in corners[i]:
            images[i, r : r + 6, c : c + 6] = 230
    return images, (corners + 3.0).astype(np.float32)


def test_chamfer_ignores_the_order_of_the_points():
    objects = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    assert float(chamfer_sq(objects.flip(1), objects)) == 0.0
    # One point on one object: the other object is 2 (squared) from it, half the objects' mean.
    assert float(chamfer_sq(objects[:, :1], objects)) == pytest.approx(1.0)


def test_trunk_learns_the_positions_and_only_the_trunk_changes(tmp_path):
    images, positions = scenes(401, seed=1)
    positions[7, 1] = (-300.0, 40.0)  # an object that fell out of the tray: out of view
    fresh = new_network(SMALL, seed=3)
    net = new_network(SMALL, seed=3)
    losses = []
    metrics = fit_agnostic_trunk(
        net,
        images,
        positions,
        AgnosticTrunkConfig(steps=300, batch_size=32),
        lambda step, m: losses.append(m["loss"]),
        device="cpu",
    )
    assert len(losses) == 300 and not net.training
    assert (metrics["scenes"], metrics["out_of_view"], metrics["train_scenes"]) == (400, 1, 320)
    assert metrics["last_loss"] < 0.25 * metrics["first_loss"], metrics
    assert metrics["held_out_error_px"] < 0.5 * metrics["blind_error_px"], metrics
    assert trunk_modules(net) == ["trunk"]
    before, after = fresh.state_dict(), net.state_dict()
    for key, value in after.items():
        assert torch.equal(value, before[key]) == (not key.startswith("trunk.")), key
    # A normal checkpoint: it loads into the policy's network, trunk weights and all.
    path = tmp_path / "agnostic.safetensors"
    save_checkpoint(str(path), net, {"kind": "agnostic_trunk"})
    loaded = load_checkpoint(str(path), expected_config=SMALL, device="cpu")
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, after[key]), key


def test_keypoints_networks_train_their_spatial_softmax_too():
    config = QNetworkConfig(image_size=32, width=8, fc_width=8, head="keypoints", feature_size=8)
    net = new_network(config, seed=0)
    assert trunk_modules(net) == ["trunk", "keypoints"]
    images, positions = scenes(20, seed=2)
    fc = {k: v.clone() for k, v in net.fc.state_dict().items()}
    fit_agnostic_trunk(net, images, positions, AgnosticTrunkConfig(steps=3), device="cpu")
    assert all(torch.equal(v, net.fc.state_dict()[k]) for k, v in fc.items())


def test_bad_scenes_and_settings_are_refused():
    images, positions = scenes(10, seed=0)
    net = new_network(SMALL, seed=0)
    with pytest.raises(ValueError, match="positions must be"):
        fit_agnostic_trunk(net, images, positions[:5])
    with pytest.raises(ValueError, match="uint8"):
        fit_agnostic_trunk(net, images.astype(np.float32), positions)
    bad = positions.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_agnostic_trunk(net, images, bad)
    with pytest.raises(ValueError, match="no held-out scenes"):
        fit_agnostic_trunk(net, images[:2], positions[:2], AgnosticTrunkConfig(steps=1))
    with pytest.raises(ValueError, match="AgnosticTrunkConfig.steps"):
        AgnosticTrunkConfig(steps=0)
    with pytest.raises(ValueError, match="held_out_fraction"):
        AgnosticTrunkConfig(held_out_fraction=0.9)
