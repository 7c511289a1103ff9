"""A task-agnostic image trunk: the Q-network's trunk trained without RL.

The paper's Table II compares fine-tuning the RL-pre-trained network with the same fine-tuning
from a network whose convolutional trunk was pre-trained on ImageNet and whose other parts are
random ("ImageNet"). ImageNet is not at hand here, so the task-agnostic trunk of this project is
the Q-network's own trunk (nsl_policy.model.QNetwork: ``trunk``, and ``keypoints`` for the
"keypoints" head), trained by supervised learning to locate objects in images: from a scene's
image a small position head regresses one point per object, and the loss is the symmetric
nearest-point (Chamfer) distance between the predicted points and the objects' image positions,
so their order does not matter. The images hold no grasp action and no reward: they are scenes
as they are before any move (nsl_experiment renders them in the sim with the train objects).

Only the trunk modules and the position head are optimised; every other part of the network
(the action embedding, the merge convolutions, the Q head) keeps the fresh initialisation it was
given, so the network is the init of a fine-tune like the paper's. The position head is thrown
away. No augmentation: shifting an image moves the positions it is trained to tell.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from nsl_policy.image import resize_batch, to_tensor
from nsl_policy.model import QNetwork, default_device

from .config import AgnosticTrunkConfig

ProgressFn = Callable[[int, dict], None]
#: QNetwork modules that only see the image (the trunk this module trains), where present.
TRUNK_MODULES = ("trunk", "keypoints")
#: Hidden units of the position head.
POSITION_HIDDEN = 256


def trunk_modules(model: QNetwork) -> list[str]:
    """Return the names of ``model``'s modules that only see the image (its trunk)."""
    return [name for name in TRUNK_MODULES if hasattr(model, name)]


class PositionHead(torch.nn.Module):
    """Trunk features (flattened) -> MLP -> ``points`` image positions (x, y) in [-1, 1]."""

    def __init__(self, model: QNetwork, points: int) -> None:
        super().__init__()
        s = model.config.image_size
        with torch.no_grad():  # the feature size of this architecture
            n = model.encode(torch.zeros(1, 3, s, s, device=model.device)).flatten(1).shape[1]
        self.points = points
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n, POSITION_HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(POSITION_HIDDEN, 2 * points),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the predicted positions (B, points, 2) of features (B, ...)."""
        return self.net(features.flatten(1)).reshape(len(features), self.points, 2)


def squared_distances(predicted: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Return the squared distances (B, P, K) of points (B, P, 2) to objects (B, K, 2)."""
    return ((predicted[:, :, None, :] - objects[:, None, :, :]) ** 2).sum(-1)


def chamfer_sq(predicted: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Return the symmetric nearest-point loss (B,) of points (B, P, 2) and objects (B, K, 2).

    The mean squared distance of each predicted point to its nearest object plus that of each
    object to its nearest predicted point.
    """
    d = squared_distances(predicted, objects)
    return d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)


def object_error(predicted: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Return each scene's mean distance (B,) from an object (B, K, 2) to its nearest point."""
    return squared_distances(predicted, objects).min(dim=1).values.sqrt().mean(dim=1)


def check_scenes(images: np.ndarray, positions: np.ndarray) -> None:
    """Raise ValueError unless ``images`` (N, H, W, 3) uint8 and ``positions`` (N, K, 2) match."""
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"images must be a uint8 (N, H, W, 3) array, got {images.dtype} {images.shape}"
        )
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square, got {images.shape[1]}x{images.shape[2]}")
    if positions.ndim != 3 or positions.shape[0] != len(images) or positions.shape[2] != 2:
        raise ValueError(
            f"positions must be (N, K, 2) for {len(images)} images, got {positions.shape}"
        )
    if positions.shape[1] < 1:
        raise ValueError("positions must hold at least one object per scene")
    if not np.all(np.isfinite(positions)):
        raise ValueError("positions hold NaN or inf")


def in_view(positions: np.ndarray, size: int) -> np.ndarray:
    """Return which scenes (N,) have every object inside the ``size``-pixel image."""
    return np.all((positions >= 0) & (positions <= size), axis=(1, 2))


def fit_agnostic_trunk(
    model: QNetwork,
    images: np.ndarray,
    positions: np.ndarray,
    config: AgnosticTrunkConfig | None = None,
    progress: ProgressFn | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Train ``model``'s trunk (in place) to locate the objects of ``images``; return metrics.

    ``images``: (N, H, W, 3) uint8 scenes (resized to the network's image size);
    ``positions``: (N, K, 2) image positions (column, row; pixels of ``images``) of each
    scene's K objects. Scenes with an object outside the image (one that fell out of the tray)
    are left out: it cannot be seen, and its distance would swamp the loss. The last
    ``held_out_fraction`` of the scenes left measure the result.
    ``progress(step, {"loss": ...})`` is called after every step. Only :func:`trunk_modules`
    change. ``device``: CUDA when present unless given; the model is left on the CPU, in eval
    mode. Returns {"scenes", "out_of_view", "train_scenes", "objects", "first_loss",
    "last_loss", "held_out_error_px", "blind_error_px"}: ``scenes`` counts those used, losses
    are the mean of the first and last tenth of the steps, errors the mean distance (pixels of
    ``images``) from an object to the nearest predicted point on the held-out scenes, for the
    trained trunk and for a blind guess (every point at the training objects' mean position);
    None without held-out scenes.
    """
    config = config or AgnosticTrunkConfig()
    check_scenes(images, positions)
    visible = in_view(positions, images.shape[1])
    out_of_view = int(len(images) - visible.sum())
    if out_of_view:
        images, positions = images[visible], positions[visible]
    n = len(images)
    n_train = n - int(round(config.held_out_fraction * n))
    if n_train < 1 or (config.held_out_fraction > 0 and n_train == n):
        raise ValueError(
            f"{n} scenes with every object in view ({out_of_view} without) leave no "
            f"{'training' if n_train < 1 else 'held-out'} scenes at held_out_fraction "
            f"{config.held_out_fraction}"
        )
    size = images.shape[1]
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    pixels = resize_batch(images, model.config.image_size)
    targets = torch.as_tensor(positions, dtype=torch.float32) / size * 2.0 - 1.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = PositionHead(model, positions.shape[1]).to(device)
    params = [p for name in trunk_modules(model) for p in getattr(model, name).parameters()]
    opt = torch.optim.Adam(params + list(head.parameters()), lr=config.learning_rate)
    rng = np.random.default_rng(config.seed)
    losses = []
    model.train()
    for step in range(1, config.steps + 1):
        b = rng.integers(0, n_train, config.batch_size)
        predicted = head(model.encode(to_tensor(pixels[b], device)))
        loss = chamfer_sq(predicted, targets[b].to(device)).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"trunk position loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, {"loss": losses[-1]})
    model.eval()
    tenth = max(1, config.steps // 10)
    metrics: dict[str, Any] = {
        "scenes": n,
        "out_of_view": out_of_view,
        "train_scenes": n_train,
        "objects": int(positions.shape[1]),
        "first_loss": float(np.mean(losses[:tenth])),
        "last_loss": float(np.mean(losses[-tenth:])),
        "held_out_error_px": None,
        "blind_error_px": None,
    }
    if n_train < n:
        to_px = size / 2.0
        held_out = targets[n_train:]
        with torch.no_grad():
            predicted = torch.cat(
                [
                    head(model.encode(to_tensor(pixels[i : i + 256], device))).cpu()
                    for i in range(n_train, n, 256)
                ]
            )
        blind = targets[:n_train].reshape(-1, 2).mean(dim=0).expand(len(held_out), 1, 2)
        metrics["held_out_error_px"] = float(object_error(predicted, held_out).mean()) * to_px
        metrics["blind_error_px"] = float(object_error(blind, held_out).mean()) * to_px
    model.cpu()
    return metrics
