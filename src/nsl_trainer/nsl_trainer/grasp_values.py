"""Grasp values first: supervised training of the Q-network on recorded grasp outcomes.

QT-Opt's target for a move is 0.9 x V(next state), and V rests on the grasp values (the final
step's target is the reward itself). When the grasp values ignore the image, every move gets
the same target, and QT-Opt never learns to steer. At this project's data budgets that is what
it learned from a random init: grasp AUC 0.53-0.64 and steering AUC 0.49-0.52, while the same
network trained as a plain classifier of the grasps' outcomes reached 0.76 and 0.78
(docs/results/decisions.md, probes 11-14).

:func:`fit_grasp_values` trains the network with binary cross-entropy on the final transition
(the grasp) of every recorded episode. The label is the episode's success, so the logit means
what QT-Opt's logit means at the grasp step. QT-Opt started from this network learned to steer
(probe 14) and, in that run, beat every random-init base; repeated runs did not (probe 15).
The experiment pipeline runs it as an opt-in phase (``ExperimentConfig.grasp_value_steps``);
``nsl train grasp-values`` runs it on any bags.

No augmentation: the classifier must first learn to see the object under the gripper, and
random shifts of a 64-pixel image move it by several centimetres.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import numpy as np
import torch

from nsl_collector.transitions import Transitions
from nsl_policy.action_space import canonical_actions
from nsl_policy.image import resize_batch, to_tensor
from nsl_policy.model import QNetwork, QNetworkConfig, default_device

ProgressFn = Callable[[int, dict], None]


@dataclass
class GraspValueConfig:
    """Settings of the supervised grasp-value phase."""

    steps: int = 3000
    """Adam steps. Held-out grasp AUC at 3000 steps: 0.71 on 17 113 grasps, 0.60 on another 16 000
    (0.71 at 8000); docs/results/decisions.md, probes 12 and 15. QT-Opt from a 3000-step
    network steered in probe 14, and not in its repetitions (probe 15)."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 64
    """Grasps per step, drawn uniformly with replacement."""
    seed: int = 0
    """Seeds the network initialisation (when not started from a checkpoint) and the batches."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seed" else 1):
                raise ValueError(
                    f"GraspValueConfig.{name}: must be an integer >= "
                    f"{0 if name == 'seed' else 1}, got {v!r}"
                )
        lr = self.learning_rate
        if (
            isinstance(lr, bool)
            or not isinstance(lr, (int, float))
            or not math.isfinite(lr)
            or not 0 < lr <= 1
        ):
            raise ValueError(
                f"GraspValueConfig.learning_rate: must be a number in (0, 1], got {lr!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraspValueConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown GraspValueConfig fields: {unknown}")
        return cls(**data)


def grasp_rows(transitions: Transitions) -> np.ndarray:
    """Return the indices of the grasp attempts: every episode's final row (``done``)."""
    return np.flatnonzero(np.asarray(transitions.done, dtype=bool))


def train_classifier(
    net: torch.nn.Module,
    batch_loss: Callable[[], torch.Tensor],
    steps: int,
    learning_rate: float = 1e-3,
    progress: ProgressFn | None = None,
) -> torch.nn.Module:
    """Run ``steps`` Adam steps on ``batch_loss()`` (the loss of a fresh batch).

    ``progress(step, {"loss": ...})`` is called after every step. Returns ``net`` in eval mode.
    """
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    for step in range(1, steps + 1):
        loss = batch_loss()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"grasp-value loss is {loss.item()} at step {step} (NaN/inf in the data?)"
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step, {"loss": loss.item()})
    return net.eval()


def fit_grasp_values(
    model: QNetwork,
    transitions: Transitions,
    config: GraspValueConfig | None = None,
    progress: ProgressFn | None = None,
    device: torch.device | str | None = None,
) -> QNetwork:
    """Train ``model`` (in place, and returned) as a classifier of the grasps' outcomes.

    The loss is the binary cross-entropy of Q(image, state, recorded action) against
    ``reward > 0`` on every episode's final row. Actions are put in the canonical form QT-Opt
    scores (nsl_policy.action_space.canonical_actions). Raises ValueError when the data holds no
    grasps, or only successes or only failures (nothing to tell apart). ``device``: CUDA when
    present unless given.
    """
    config = config or GraspValueConfig()
    final = grasp_rows(transitions)
    if len(final) == 0:
        raise ValueError("no grasp attempts in the data (no episode ends)")
    label = torch.as_tensor(np.asarray(transitions.reward, dtype=np.float32)[final] > 0).float()
    successes = int(label.sum())
    if successes in (0, len(final)):
        raise ValueError(
            f"the {len(final)} grasps are all {'successes' if successes else 'failures'}: "
            "the grasp values need both outcomes"
        )
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    images = resize_batch(np.asarray(transitions.image)[final], model.config.image_size)
    state = torch.as_tensor(np.asarray(transitions.state, dtype=np.float32)[final])
    action = canonical_actions(
        torch.as_tensor(np.asarray(transitions.action, dtype=np.float32)[final])
    )
    rng = np.random.default_rng(config.seed)

    def batch_loss() -> torch.Tensor:
        b = rng.integers(0, len(final), config.batch_size)
        return torch.nn.functional.binary_cross_entropy_with_logits(
            model(to_tensor(images[b]).to(device), state[b].to(device), action[b].to(device)),
            label[b].to(device),
        )

    return train_classifier(model, batch_loss, config.steps, config.learning_rate, progress)


def new_network(model_config: QNetworkConfig, seed: int) -> QNetwork:
    """Return a fresh QNetwork initialised from ``seed`` (the RNG state outside is unchanged)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return QNetwork(model_config)


def log_every(steps: int, log: Callable[[str], None], label: str = "grasp values") -> ProgressFn:
    """Return a progress function that logs ten lines over ``steps`` steps."""
    every, t0 = max(1, steps // 10), time.monotonic()

    def progress(step: int, m: dict) -> None:
        if step % every == 0 or step == steps:
            seconds = time.monotonic() - t0
            log(f"{label}: step {step}/{steps}, loss {m['loss']:.3f} ({seconds:.0f} s)")

    return progress
