"""Offline QT-Opt (Kalashnikov et al. 2018) as used by "Never Stop Learning" (Julian et al. 2020).

One update step:
  1. sample a batch: each element comes from the target-task data with probability
     ``target_fraction`` and from the base data otherwise (fine-tuning uses 0.5);
  2. a* = argmax_a' Q_targ1(s', a') by CEM (or the best of N uniform samples) on target network 1;
  3. y = r + discount * (1 - done) * min(sigmoid Q_targ1(s', a*), sigmoid Q_targ2(s', a*))
     (clipped double Q-learning; Q_targ1 is a Polyak average of the online network, Q_targ2 a
     lagged copy of Q_targ1 refreshed every ``target2_lag`` steps);
     with ``mc_lower_bound``, y = max(y, discounted Monte-Carlo return of the recorded episode):
     the return the data's own behaviour achieved is a lower bound on the optimal Q, and
     taking it speeds up the propagation of the sparse success reward through 10-step episodes;
     with ``mc_mix`` = m > 0, y = (1 - m) y + m x that return (mixed Monte-Carlo): every move's
     target then carries its own episode's outcome, not only what the bootstrapped values know;
  4. loss = binary cross-entropy of sigmoid Q(s, a) against y; one Adam step. With
     ``location_weight`` > 0 (not in QT-Opt) the loss adds weight x the smooth-L1 error of a
     small head that reads the trunk's features and the gripper state and regresses the
     offset from the commanded gripper to the nearest object (simulator labels,
     ``Transitions.location``); the head is the trainer's, never part of a checkpoint. With
     ``conservative_weight`` > 0 (not in QT-Opt; CQL(H), Kumar et al. 2020) the loss adds
     weight x (logsumexp of the logits of the data action, ``conservative_samples`` uniform
     actions and the online network's CEM argmax) - logit of the data action): it pushes down
     the actions an argmax can find but the data never tried.
Images are augmented (random shift via crop-of-padding, brightness/contrast) on the fly.
Fine-tuning = the same algorithm started from a pre-trained checkpoint, at
``finetune_lr_scale`` x the pre-training learning rate (paper: 1e-4 = 25% of pre-training).

Random numbers (batch sampling, augmentation, target-action search) are counter-based: before
every step the trainer's generators are seeded from (config.seed, process rank, step number).
The sampler's whole state is therefore the step counter, so a resumed run draws exactly the
batches an uninterrupted one would, also under DistributedDataParallel (each rank draws its own
batches; gradients are averaged by DDP, so all ranks keep identical weights).

Training state (``save_state``/``load_state``): online network, both target networks, Adam's
moments and step counts, the step counter and sample counts, in one safetensors file whose
header holds the JSON metadata. Loading never unpickles anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nsl_collector.transitions import Transitions
from nsl_policy.action_space import ACTION_DIM, STATE_DIM, canonical_actions, policy_actions
from nsl_policy.cem import CEMConfig, cem_maximize
from nsl_policy.checkpoint import atomic_write
from nsl_policy.image import resize_batch
from nsl_policy.model import QNetwork, QNetworkConfig, default_device

ProgressFn = Callable[[int, dict], Any]

LOCATION_SCALE = 0.05
"""Metres per unit of the location head's output (the workspace is about 0.25 m wide)."""
LOCATION_HIDDEN = 64
"""Hidden units of the location head."""

STATE_FORMAT = "nsl-qtopt-state"
STATE_VERSION = 1
METRIC_KEYS = (
    "loss",
    "mean_q",
    "q_std",
    "q_min",
    "q_max",
    "mean_target",
    "td_error",
    "td_error_max",
    "grad_norm",
    "batch_target_fraction",
)
"""Per-step metrics returned by ``QTOptTrainer.train_step`` (floats)."""


def stream_seed(seed: int, rank: int, step: int, stream: int) -> int:
    """Seed of random stream ``stream`` for gradient step ``step`` on process ``rank``."""
    digest = hashlib.blake2b(f"{seed}:{rank}:{step}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dist_info() -> tuple[int, int]:
    """(world size, rank) of the default torch.distributed process group, (1, 0) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


@dataclass(frozen=True)
class QTOptConfig:
    """Hyper-parameters of offline QT-Opt."""

    batch_size: int = 64
    """Transitions per gradient step."""
    learning_rate: float = 1e-3
    """Adam learning rate for pre-training / training from scratch."""
    finetune_lr_scale: float = 0.25
    """Fine-tuning uses learning_rate x this (paper: 1e-4, 25% of pre-training)."""
    discount: float = 0.9
    """Discount gamma of the Bellman target (QT-Opt: 0.9)."""
    polyak: float = 0.995
    """Target network 1 <- polyak * target 1 + (1 - polyak) * online network, every step."""
    target2_lag: int = 100
    """Target network 2 is a copy of target network 1 refreshed every this many steps."""
    target_action: str = "cem"
    """How a* = argmax_a' Q_targ1(s', a') is found: "cem" (target_cem) or "random" (best of
    target_samples uniform actions)."""
    target_samples: int = 64
    """Uniform samples per next state when target_action == "random"."""
    target_cem: CEMConfig = field(
        default_factory=lambda: CEMConfig(population=16, elites=4, iterations=2)
    )
    """CEM for the Bellman target. QT-Opt uses 64 x 2 on dedicated Bellman-updater machines; the
    default here is 16 x 2 so a CPU step stays fast. Set CEMConfig() for the paper's values."""
    augment: bool = True
    """Random-shift and photometric augmentation of s and s' (independently)."""
    crop_pad: int = 4
    """Random shift: pad by this many pixels (edge replicate) and crop back (0 = off)."""
    brightness: float = 0.1
    """Photometric: add U(-b, b) to all pixels (images in [0, 1])."""
    contrast: float = 0.1
    """Photometric: scale deviations from the image mean by U(1 - c, 1 + c)."""
    mc_lower_bound: bool = False
    """Lower-bound the Bellman target by the recorded episode's discounted Monte-Carlo return
    (not in QT-Opt; speeds up learning from few, mostly scripted episodes)."""
    mc_mix: float = 0.0
    """Weight m of the recorded episode's discounted return in the target: y = (1 - m) x
    Bellman target + m x return (mixed Monte-Carlo, Ostrovski et al. 2017; not in QT-Opt). It
    biases the values towards the data's own behaviour, and it lets a move's outcome reach its
    value in one update instead of one bootstrap per step. 0 = plain QT-Opt."""
    conservative_weight: float = 0.0
    """Weight of the conservative (CQL(H)) term, 0 = plain QT-Opt. A stronger acting CEM made
    the pre-trained policy worse (0.38 -> 0.19 on validation going from 64 x 2 to 1024 x 4
    samples), i.e. the Q-function overrates actions its data never tried; this term lowers
    them (docs/results/base_policy.md)."""
    conservative_samples: int = 16
    """Uniform random actions per state in the conservative term (plus the data action and
    the online network's CEM argmax, found with ``target_cem``)."""
    grasp_fraction: float = 0.0
    """Share of each batch drawn from episode-final transitions (the grasp attempts, whose
    target is the reward itself), on top of their natural share (about 1 in 6). 0 = uniform
    rows, as QT-Opt. Every QT-Opt Q-function so far ranked held-out grasp outcomes barely
    better than chance (AUC ~0.6), below a supervised classifier of the same network on the
    same grasps (~0.77), and a Q that cannot tell a good grasp from a bad one gives every
    state the same value. The base/target split is kept: a base row is replaced by a base
    grasp, a target row by a target grasp. Measured (docs/results/base_policy.md, probe 13):
    0.3 raised offline validation success from 0.19 to 0.28, but not the pre-training recipe;
    a supervised grasp classifier as the starting network did more (probe 14)."""
    grad_clip: float = 10.0
    """Clip the gradient's global norm to this (0 = off)."""
    policy_weights: str = "online"
    """Which network a training run writes as its checkpoint: "online" (the network the
    gradient steps update; every checkpoint so far) or "polyak" (target network 1, the Polyak
    average of the online weights, ``polyak`` per step). Across a whole fine-tuning study
    (500-step fine-tunes, 60 validation episodes each) the Polyak network did better on 11 of
    18 runs and worse on 4, and never collapsed (docs/results/keypoints_polyak/README.md); the
    experiment's fine-tunes use it. Pre-training with it (every round's checkpoint and collecting
    policy) reached 0.43 on base evaluation against the online network's 0.51, one seed
    (docs/results/base_policy.md, probe 18)."""
    location_weight: float = 0.0
    """Weight of an auxiliary object-location loss (not in QT-Opt), 0 = none. A small head
    (``LocationHead``) reads the trunk's features of s and the gripper state and regresses
    ``Transitions.location``, the offset from the commanded gripper to the nearest object, in
    units of ``LOCATION_SCALE``; its smooth-L1 loss x this weight is added to the QT-Opt loss.
    Every transition then needs a label, which only the simulator knows
    (nsl_bringup.experiment.episodes.location_job). QT-Opt's trunk alone learned features that
    did not tell the Q-head where the objects are: no checkpoint's first move aimed at an
    object more often than a fixed move did. With weight 1, offline QT-Opt on the same data
    went from 0.43 / 0.38 to 0.67 / 0.665 on base evaluation episodes (two seeds), and first
    moves aimed (docs/results/base_policy.md, probe 19). The head is re-created for every run
    and is not saved in checkpoints, so policies and their loading are unchanged."""
    seed: int = 0
    """Seeds batch sampling, augmentation and the target-action search."""

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"QTOptConfig.{name} must be {what}, got {getattr(self, name)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        check("batch_size", is_int(self.batch_size) and self.batch_size >= 1, "a positive integer")
        check(
            "learning_rate",
            is_num(self.learning_rate) and self.learning_rate > 0,
            "a positive number",
        )
        check(
            "finetune_lr_scale",
            is_num(self.finetune_lr_scale) and self.finetune_lr_scale > 0,
            "a positive number",
        )
        check("discount", is_num(self.discount) and 0 <= self.discount < 1, "in [0, 1)")
        check("polyak", is_num(self.polyak) and 0 <= self.polyak < 1, "in [0, 1)")
        check(
            "target2_lag", is_int(self.target2_lag) and self.target2_lag >= 1, "a positive integer"
        )
        check("target_action", self.target_action in ("cem", "random"), '"cem" or "random"')
        check(
            "target_samples",
            is_int(self.target_samples) and self.target_samples >= 1,
            "a positive integer",
        )
        check("target_cem", isinstance(self.target_cem, CEMConfig), "a CEMConfig")
        check("augment", isinstance(self.augment, bool), "a bool")
        check(
            "crop_pad", is_int(self.crop_pad) and 0 <= self.crop_pad <= 64, "an integer in [0, 64]"
        )
        check("brightness", is_num(self.brightness) and 0 <= self.brightness <= 1, "in [0, 1]")
        check("contrast", is_num(self.contrast) and 0 <= self.contrast < 1, "in [0, 1)")
        check("mc_lower_bound", isinstance(self.mc_lower_bound, bool), "a bool")
        check("mc_mix", is_num(self.mc_mix) and 0 <= self.mc_mix <= 1, "in [0, 1]")
        check(
            "conservative_weight",
            is_num(self.conservative_weight) and self.conservative_weight >= 0,
            "a number >= 0",
        )
        check(
            "conservative_samples",
            is_int(self.conservative_samples) and self.conservative_samples >= 1,
            "a positive integer",
        )
        check(
            "grasp_fraction",
            is_num(self.grasp_fraction) and 0 <= self.grasp_fraction <= 1,
            "in [0, 1]",
        )
        check("grad_clip", is_num(self.grad_clip) and self.grad_clip >= 0, "a number >= 0")
        check(
            "policy_weights", self.policy_weights in ("online", "polyak"), '"online" or "polyak"'
        )
        check(
            "location_weight",
            is_num(self.location_weight) and self.location_weight >= 0,
            "a number >= 0",
        )
        check("seed", is_int(self.seed), "an integer")

    def finetune_learning_rate(self) -> float:
        """Return the fine-tuning learning rate: ``learning_rate`` x ``finetune_lr_scale``.

        The one definition of the recipe's rate that the trainer node, the CLI, the experiment
        and the demo all use.
        """
        return self.learning_rate * self.finetune_lr_scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QTOptConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown QTOptConfig fields: {unknown}")
        data = dict(data)
        if isinstance(data.get("target_cem"), dict):
            data["target_cem"] = CEMConfig(**data["target_cem"])
        return cls(**data)


def td_target(
    reward: torch.Tensor,
    done: torch.Tensor,
    next_logit1: torch.Tensor,
    next_logit2: torch.Tensor,
    discount: float,
) -> torch.Tensor:
    """Clipped double-Q Bellman target in probability space:
    y = r + discount * (1 - done) * min(sigmoid(l1), sigmoid(l2)), clamped to [0, 1] (the
    cross-entropy needs a probability; with QT-Opt's 0/1 terminal reward it already is one).
    """
    not_done = 1.0 - done.to(reward.dtype)
    next_q = torch.minimum(torch.sigmoid(next_logit1), torch.sigmoid(next_logit2))
    return (reward + discount * not_done * next_q).clamp(0.0, 1.0)


class LocationHead(torch.nn.Module):
    """The auxiliary location head: trunk features (flattened) ++ gripper state -> MLP -> the
    (2,) offset to the nearest object in units of LOCATION_SCALE.
    """

    def __init__(self, model: QNetwork) -> None:
        super().__init__()
        s = model.config.image_size
        was_training = model.training
        with torch.no_grad():  # the feature size of this architecture
            model.eval()
            n = (
                model.encode(torch.zeros(1, 3, s, s, device=next(model.parameters()).device))
                .flatten(1)
                .shape[1]
            )
            model.train(was_training)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n + STATE_DIM, LOCATION_HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(LOCATION_HIDDEN, 2),
        )

    def forward(self, features: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([features.flatten(1), state.to(features.dtype)], dim=1))


class _Data:
    """Base and target transitions on the training device, images at network size (uint8 NHWC).
    Rows [0, n_base) are base data, [n_base, n_base + n_target) target data.
    """

    def __init__(
        self,
        base: Transitions | None,
        target: Transitions | None,
        image_size: int,
        device: torch.device,
        crop_pad: int = 0,
        location: bool = False,
    ):
        parts = [p for p in (base, target) if p is not None and len(p)]
        if not parts:
            raise ValueError("no transitions to train on")
        self.n_base = len(base) if base is not None else 0
        self.n_target = len(target) if target is not None else 0
        offset, next_index = 0, []
        for p in parts:
            next_index.append(np.asarray(p.next_index, dtype=np.int64) + offset)
            offset += len(p)
        dev = device
        images = torch.as_tensor(
            np.concatenate(
                [resize_batch(np.asarray(p.image, dtype=np.uint8), image_size) for p in parts]
            )
        ).to(dev)
        # Random-shift augmentation crops from images edge-padded once here, not every batch.
        self.crop_pad = crop_pad
        self.padded = edge_pad(images, crop_pad) if crop_pad > 0 else images
        self.image = self.padded[
            :, crop_pad : crop_pad + image_size, crop_pad : crop_pad + image_size
        ]
        self.state = torch.as_tensor(
            np.concatenate(
                [np.asarray(p.state, dtype=np.float32).reshape(-1, STATE_DIM) for p in parts]
            )
        ).to(dev)
        # Canonical form (close = +1 when terminating), as CEM scores them.
        self.action = canonical_actions(
            torch.as_tensor(
                np.concatenate(
                    [np.asarray(p.action, dtype=np.float32).reshape(-1, ACTION_DIM) for p in parts]
                )
            )
        ).to(dev)
        self.reward = torch.as_tensor(
            np.concatenate([np.asarray(p.reward, dtype=np.float32).reshape(-1) for p in parts])
        ).to(dev)
        self.done = torch.as_tensor(
            np.concatenate([np.asarray(p.done, dtype=bool).reshape(-1) for p in parts])
        ).to(dev)
        self.next_index = torch.as_tensor(np.concatenate(next_index)).to(dev)
        for name in ("state", "action", "reward"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"transitions contain non-finite {name} values")
        self.location: torch.Tensor | None = None
        """(N, 2) location labels in units of LOCATION_SCALE (only when asked for)."""
        if location:
            unlabelled = [
                name
                for name, p in (("base", base), ("target", target))
                if p is not None and len(p) and p.location is None
            ]
            if unlabelled:
                raise ValueError(
                    f"QTOptConfig.location_weight > 0 needs location labels (Transitions.location) for "
                    f"every transition; the {' and '.join(unlabelled)} data have none. Labels come "
                    "from the simulator (nsl_bringup.experiment.stages.location_labels); for robot "
                    "data set location_weight to 0"
                )
            self.location = torch.as_tensor(
                np.concatenate([p.location for p in parts]) / LOCATION_SCALE
            ).to(dev)
        self._mc_return: torch.Tensor | None = None
        final = self.done.nonzero(as_tuple=True)[0].cpu()
        self.final_rows = (final[final < self.n_base], final[final >= self.n_base])
        """Row numbers of the episode-final transitions (the grasp attempts): (base, target)."""

    def mc_return(self, discount: float) -> torch.Tensor:
        """Discounted return of the rest of each row's recorded episode (computed once)."""
        if self._mc_return is None:
            g = self.reward.clone()
            live = ~self.done
            # Each pass extends the horizon by one step; stop at the fixed point (episode length).
            for _ in range(len(g)):
                new = self.reward + discount * live * g[self.next_index]
                if torch.equal(new, g):
                    break
                g = new
            self._mc_return = g.clamp_(0.0, 1.0)
        return self._mc_return

    def augmented(
        self, rows: torch.Tensor, config: QTOptConfig, generator: torch.Generator
    ) -> torch.Tensor:
        """``augment_images(self.image[rows], config, generator)``, cropping from the stored padding."""
        if not (config.augment and config.crop_pad > 0 and config.crop_pad == self.crop_pad):
            return augment_images(self.image[rows], config, generator)
        h, w = self.image.shape[1:3]
        return photometric(
            random_crops(self.padded, rows.tolist(), h, w, self.crop_pad, generator),
            config,
            generator,
        )


def edge_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 (B, H, W, C) images padded by ``pad`` pixels replicating the edges (clamped indices)."""
    h, w = images.shape[1:3]
    rows = (torch.arange(h + 2 * pad, device=images.device) - pad).clamp_(0, h - 1)
    cols = (torch.arange(w + 2 * pad, device=images.device) - pad).clamp_(0, w - 1)
    return images.index_select(1, rows).index_select(2, cols)


def random_crops(
    padded: torch.Tensor, rows: list[int], h: int, w: int, pad: int, generator: torch.Generator
) -> torch.Tensor:
    """One random (h, w) window per listed row of ``padded``: a shift of up to ``pad`` pixels."""
    dy = torch.randint(0, 2 * pad + 1, (len(rows),), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (len(rows),), generator=generator).tolist()
    return torch.stack([padded[r, y : y + h, x : x + w] for r, y, x in zip(rows, dy, dx)])


def photometric(
    images: torch.Tensor, config: QTOptConfig, generator: torch.Generator
) -> torch.Tensor:
    """Float channels_last images in [0, 1] from uint8 (B, H, W, 3), with the brightness and
    contrast jitter of ``config``.
    """
    b = images.shape[0]
    dev = images.device
    x = images.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)  # channels_last memory
    if config.augment and (config.brightness > 0 or config.contrast > 0):
        c = (1.0 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * config.contrast).to(dev)
        br = ((torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * config.brightness).to(dev)
        shift = x.mean(dim=(1, 2, 3), keepdim=True).mul_(1.0 - c).add_(br)
        x = x.mul_(c).add_(shift).clamp_(0.0, 1.0)
    return x.contiguous(memory_format=torch.channels_last)


def augment_images(
    images: torch.Tensor, config: QTOptConfig, generator: torch.Generator
) -> torch.Tensor:
    """Float (B, 3, H, W) channels_last images in [0, 1] from uint8 (B, H, W, 3), with the random
    shift (a crop of the edge-replicated, ``crop_pad``-padded image) and brightness/contrast jitter
    of ``config`` (none when ``config.augment`` is False). Random numbers come from ``generator``
    (CPU).
    """
    if config.augment and config.crop_pad > 0:
        b, h, w, _ = images.shape
        images = random_crops(
            edge_pad(images, config.crop_pad), list(range(b)), h, w, config.crop_pad, generator
        )
    return photometric(images, config, generator)


class QTOptTrainer:
    """Offline QT-Opt on fixed data sets. ``model`` is trained in place."""

    def __init__(
        self,
        model: QNetwork,
        config: QTOptConfig | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = config or QTOptConfig()
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(device=self.device, memory_format=torch.channels_last).train()
        self.world_size, self.rank = dist_info()
        self.ddp: torch.nn.Module | None = None
        if self.world_size > 1:
            if self.config.conservative_weight > 0:  # its trunk pass bypasses DDP's gradient hooks
                raise ValueError(
                    "QTOptConfig.conservative_weight > 0 is not supported with several processes "
                    "(DistributedDataParallel); train in one process or set it to 0"
                )
            # DDP broadcasts rank 0's weights here and averages gradients in backward(); the
            # target networks are copied afterwards, so every rank starts from the same ones.
            from torch.nn.parallel import DistributedDataParallel

            ids = (
                [
                    self.device.index
                    if self.device.index is not None
                    else torch.cuda.current_device()
                ]
                if self.device.type == "cuda"
                else None
            )
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.target1 = self._frozen_copy(self.model)
        self.target2 = self._frozen_copy(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.learning_rate)
        self.location_head: LocationHead | None = None
        """The auxiliary location head (``location_weight`` > 0), trained by the same optimiser."""
        if self.config.location_weight > 0:
            if self.world_size > 1:  # the head's trunk pass would bypass DDP's gradient averaging
                raise ValueError(
                    "QTOptConfig.location_weight > 0 is not supported with several processes "
                    "(DistributedDataParallel); train in one process or set it to 0"
                )
            if self.config.conservative_weight > 0:
                raise ValueError(
                    "QTOptConfig.location_weight and conservative_weight cannot both be > 0 (not "
                    "implemented together)"
                )
            with torch.random.fork_rng(
                devices=[]
            ):  # the network's own init stays as without the head
                torch.manual_seed(stream_seed(self.config.seed, self.rank, 0, 2))
                self.location_head = LocationHead(self.model).to(self.device)
            self.optimizer.add_param_group({"params": list(self.location_head.parameters())})
        self._gen = torch.Generator().manual_seed(self.config.seed)  # CPU: batches, augmentation
        self._dev_gen = torch.Generator(device=self.device).manual_seed(
            self.config.seed + 1
        )  # target search
        self.step_count = 0
        self.samples_base = 0
        self.samples_target = 0
        self.last_batch: tuple[torch.Tensor, torch.Tensor] | None = None
        """(row indices, from_target) of the latest batch (CPU tensors), for inspection."""
        self.aux_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        """An extra loss term, ``aux_loss(images, rows)`` on the batch's augmented images and its
        row numbers (device tensor), added to the QT-Opt loss; None (the default) adds nothing.
        For auxiliary tasks on the trunk (tools/aux_location_probe.py); parameters of its own
        must be added to ``optimizer`` (``add_param_group``). One process only: a term that
        calls the model directly bypasses DistributedDataParallel's gradient averaging."""

    @staticmethod
    def _frozen_copy(model: QNetwork) -> QNetwork:
        m = copy.deepcopy(model).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_learning_rate(self, lr: float) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a positive number, got {lr!r}")
        for g in self.optimizer.param_groups:
            g["lr"] = float(lr)

    # --- pieces of one step (public so tests can check them one by one) -------------------
    def sample_indices(
        self, n_base: int, n_target: int, target_fraction: float, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the combined set (base rows first): each element is a target row with
        probability ``target_fraction``. Returns (indices (B,) int64, from_target (B,) bool).
        """
        if n_target == 0:
            from_target = torch.zeros(batch_size, dtype=torch.bool)
        elif n_base == 0:
            from_target = torch.ones(batch_size, dtype=torch.bool)
        else:
            from_target = torch.rand(batch_size, generator=self._gen) < target_fraction
        base_idx = torch.randint(0, max(n_base, 1), (batch_size,), generator=self._gen)
        target_idx = n_base + torch.randint(
            0, max(n_target, 1), (batch_size,), generator=self._gen
        )
        return torch.where(from_target, target_idx, base_idx), from_target

    def with_grasps(
        self, idx: torch.Tensor, from_target: torch.Tensor, data: "_Data"
    ) -> torch.Tensor:
        """``idx`` with each row, with probability ``grasp_fraction``, replaced by a random
        episode-final row of the same part (base or target).
        """
        frac = self.config.grasp_fraction
        if frac <= 0:
            return idx
        out = idx.clone()
        swap = torch.rand(len(idx), generator=self._gen) < frac
        for part, rows in ((~from_target, data.final_rows[0]), (from_target, data.final_rows[1])):
            pick = swap & part
            if len(rows) and bool(pick.any()):
                out[pick] = rows[
                    torch.randint(0, len(rows), (int(pick.sum()),), generator=self._gen)
                ]
        return out

    @torch.no_grad()
    def target_action(
        self, next_images: torch.Tensor, next_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """a* = argmax_a Q_targ1(s', a) and its target-1 logit, ((B, 6), (B,))."""
        net = self.target1
        feats = net.encode(next_images)
        b = next_images.shape[0]
        if self.config.target_action == "cem":
            return cem_maximize(
                lambda a: net.score(feats, next_state, a),
                b,
                ACTION_DIM,
                self.config.target_cem,
                generator=self._dev_gen,
                device=self.device,
                project=policy_actions,
            )
        actions = (
            torch.rand(
                b,
                self.config.target_samples,
                ACTION_DIM,
                generator=self._dev_gen,
                device=self.device,
            )
            * 2
            - 1
        )
        actions = policy_actions(actions)
        logits = net.score(feats, next_state, actions)
        best, idx = logits.max(dim=1)
        return actions[torch.arange(b, device=self.device), idx], best

    def conservative_logits(
        self, images: torch.Tensor, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of the data actions (B,), the CQL(H) term): one trunk pass scores the data
        action, ``conservative_samples`` uniform actions and the online CEM argmax per state.
        """
        cfg, b = self.config, images.shape[0]
        feats = self.model.encode(images)
        with torch.no_grad():  # the sampled actions are constants of the loss
            greedy, _ = cem_maximize(
                lambda a: self.model.score(feats, state, a),
                b,
                ACTION_DIM,
                cfg.target_cem,
                generator=self._dev_gen,
                device=self.device,
                project=policy_actions,
            )
            uniform = policy_actions(
                torch.rand(
                    b,
                    cfg.conservative_samples,
                    ACTION_DIM,
                    generator=self._dev_gen,
                    device=self.device,
                )
                * 2
                - 1
            )
        actions = torch.cat([action.unsqueeze(1), greedy.unsqueeze(1), uniform], dim=1)
        all_logits = self.model.score(feats, state, actions)
        logits = all_logits[:, 0]
        return logits, (torch.logsumexp(all_logits, dim=1) - logits).mean()

    @torch.no_grad()
    def bellman_target(
        self,
        reward: torch.Tensor,
        done: torch.Tensor,
        next_images: torch.Tensor,
        next_state: torch.Tensor,
    ) -> torch.Tensor:
        """Y for a batch; next states are only evaluated where the episode goes on."""
        y = reward.clone().clamp_(0.0, 1.0)
        live = (~done).nonzero(as_tuple=True)[0]
        if live.numel() == 0:
            return y
        ni, ns = next_images[live], next_state[live]
        a_star, logit1 = self.target_action(ni, ns)
        logit2 = self.target2(ni, ns, a_star)
        y[live] = td_target(reward[live], done[live], logit1, logit2, self.config.discount)
        return y

    @torch.no_grad()
    def update_targets(self) -> None:
        """Polyak-average target 1 towards the online network; refresh the lagged target 2."""
        p = self.config.polyak
        for t, s in zip(self.target1.parameters(), self.model.parameters()):
            t.lerp_(s, 1.0 - p)
        if self.step_count % self.config.target2_lag == 0:
            self.target2.load_state_dict(self.target1.state_dict())

    def seed_step(self) -> None:
        """Seed the generators for the next step from (seed, rank, step) (see the module doc)."""
        self._gen.manual_seed(stream_seed(self.config.seed, self.rank, self.step_count, 0))
        self._dev_gen.manual_seed(stream_seed(self.config.seed, self.rank, self.step_count, 1))

    def train_step(self, data: _Data, target_fraction: float) -> dict[str, float]:
        """One QT-Opt update (see the module doc); returns the METRIC_KEYS of this batch."""
        cfg = self.config
        self.seed_step()
        idx, from_target = self.sample_indices(
            data.n_base, data.n_target, target_fraction, cfg.batch_size
        )
        idx = self.with_grasps(idx, from_target, data)
        self.last_batch = (idx, from_target)
        idx = idx.to(self.device)
        nidx = data.next_index[idx]
        reward, done = data.reward[idx], data.done[idx]
        if bool(done.all()):  # no bootstrap needed: s' is never looked at
            images = next_images = data.augmented(idx, cfg, self._gen)
        else:  # s and s' in one batch: half the per-call cost
            both = data.augmented(torch.cat([idx, nidx]), cfg, self._gen)
            images, next_images = both[: len(idx)], both[len(idx) :]
        y = self.bellman_target(reward, done, next_images, data.state[nidx])
        if cfg.mc_lower_bound or cfg.mc_mix > 0:
            episode_return = data.mc_return(cfg.discount)[idx]
            if cfg.mc_lower_bound:
                y = torch.maximum(y, episode_return)
            if cfg.mc_mix > 0:
                y = torch.lerp(y, episode_return, cfg.mc_mix)
        location_loss = None
        if cfg.conservative_weight > 0:
            logits, conservative = self.conservative_logits(
                images, data.state[idx], data.action[idx]
            )
            loss = (
                F.binary_cross_entropy_with_logits(logits, y)
                + cfg.conservative_weight * conservative
            )
        elif self.location_head is not None:
            if data.location is None:
                raise ValueError("location_weight > 0: train on data built with location labels")
            feats = self.model.encode(images)  # one trunk pass for both losses
            logits = self.model.score(
                feats, data.state[idx], data.action[idx].unsqueeze(1)
            ).squeeze(1)
            location_loss = F.smooth_l1_loss(
                self.location_head(feats, data.state[idx]), data.location[idx]
            )
            loss = (
                F.binary_cross_entropy_with_logits(logits, y) + cfg.location_weight * location_loss
            )
        else:
            logits = (self.ddp or self.model)(images, data.state[idx], data.action[idx])
            loss = F.binary_cross_entropy_with_logits(logits, y)
        if self.aux_loss is not None:
            loss = loss + self.aux_loss(images, idx)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"QT-Opt loss became non-finite at step {self.step_count + 1}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.model.parameters() if p.grad is not None])
            )
        self.optimizer.step()
        self.step_count += 1
        self.update_targets()
        n_t = int(from_target.sum())
        self.samples_target += n_t
        self.samples_base += cfg.batch_size - n_t
        with torch.no_grad():
            q = torch.sigmoid(logits)
            td = (q - y).abs()
            extra = [location_loss.detach()] if location_loss is not None else []
            stats = torch.stack(
                [
                    loss.detach(),
                    q.mean(),
                    q.std(unbiased=False),
                    q.min(),
                    q.max(),
                    y.mean(),
                    td.mean(),
                    td.max(),
                    grad_norm.detach().float(),
                    *extra,
                ]
            ).tolist()  # one device sync
        out = dict(zip(METRIC_KEYS, stats))
        out["batch_target_fraction"] = n_t / cfg.batch_size
        if location_loss is not None:
            out["location_loss"] = stats[-1]
        return out

    # --- training state ---------------------------------------------------------------------
    def _state_modules(self) -> list[tuple[str, torch.nn.Module]]:
        mods = [("model.", self.model), ("target1.", self.target1), ("target2.", self.target2)]
        return mods + (
            [("location_head.", self.location_head)] if self.location_head is not None else []
        )

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything a resumed run needs: (tensors for safetensors, JSON-able metadata)."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, net in self._state_modules():
            for k, v in net.state_dict().items():
                tensors[prefix + k] = v.detach().to("cpu").contiguous()
        opt = self.optimizer.state_dict()
        for pid, st in opt["state"].items():
            for k, v in st.items():
                if not torch.is_tensor(v):
                    v = torch.tensor(v)
                tensors[f"optim.{pid}.{k}"] = v.detach().to("cpu").contiguous()
        groups = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
            for g in opt["param_groups"]
        ]
        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step_count,
            "samples_base": self.samples_base,
            "samples_target": self.samples_target,
            "qtopt_config": self.config.to_dict(),
            "model_config": self.model.config.to_dict(),
            "optimizer_param_groups": groups,
            "rng": "counter-based: stream_seed(seed, rank, step)",
        }
        return tensors, meta

    def save_state(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write the training state to ``path`` atomically (safetensors; ``extra`` goes into the
        JSON metadata under "extra").
        """
        from safetensors.torch import save as st_save

        tensors, meta = self.state_tensors()
        meta["extra"] = extra or {}
        blob = st_save(
            tensors, metadata={"nsl_format": STATE_FORMAT, "state": json.dumps(meta, default=str)}
        )
        atomic_write(path, blob)

    def load_state(self, path: str | os.PathLike) -> dict[str, Any]:
        """Restore a state written by ``save_state`` into this trainer (same network and QT-Opt
        config required); returns the "extra" metadata. Raises ValueError naming the problem.
        """
        from safetensors import safe_open

        path = os.fspath(path)
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
            raise ValueError(f"training state {path} is unreadable: {exc}") from exc
        if header.get("nsl_format") != STATE_FORMAT:
            raise ValueError(
                f"{path} is not an NSL training state (no nsl_format={STATE_FORMAT!r})"
            )
        meta = json.loads(header["state"])
        if meta.get("version") != STATE_VERSION:
            raise ValueError(
                f"training state {path} has version {meta.get('version')!r}; this code reads {STATE_VERSION}"
            )
        if meta["model_config"] != self.model.config.to_dict():
            raise ValueError(
                f"training state {path} is for another network: {meta['model_config']} "
                f"vs {self.model.config.to_dict()}"
            )
        mine = self.config.to_dict()
        diffs = {
            k: (meta["qtopt_config"].get(k), v)
            for k, v in mine.items()
            if meta["qtopt_config"].get(k) != v
        }
        if diffs:
            raise ValueError(
                f"training state {path} was written with other QT-Opt settings (state vs now): {diffs}"
            )
        for prefix, net in self._state_modules():
            sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            net.load_state_dict(sd)  # copies into the existing (channels_last) parameters
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        groups = meta["optimizer_param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        for pid, st in self.optimizer.state.items():  # moments back in the parameters' layout
            for name, v in list(st.items()):
                if torch.is_tensor(v) and v.shape == pid.shape and v.dim() == 4:
                    st[name] = torch.empty_like(pid).copy_(v)
        self.step_count = int(meta["step"])
        self.samples_base, self.samples_target = (
            int(meta["samples_base"]),
            int(meta["samples_target"]),
        )
        return meta.get("extra", {})

    def train(
        self,
        base: Transitions | None,
        target: Transitions | None = None,
        steps: int = 1000,
        target_fraction: float = 0.5,
        progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Run ``steps`` QT-Opt updates on base (+ target) data. ``progress(step, metrics)`` is
        called after every step (1-based). Returns summary metrics: loss / mean_q / td_error /
        mean_target averaged over the last 10% of steps (and ``initial_loss`` over the first
        10%), the sampled base/target fractions over all steps, and timing.
        """
        if not (isinstance(steps, int) and steps >= 0):
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        if not (math.isfinite(target_fraction) and 0.0 <= target_fraction <= 1.0):
            raise ValueError(f"target_fraction must be in [0, 1], got {target_fraction!r}")
        data = _Data(
            base,
            target,
            self.model.config.image_size,
            self.device,
            crop_pad=self.config.crop_pad if self.config.augment else 0,
            location=self.location_head is not None,
        )
        if data.n_target == 0 and target is not None and target_fraction > 0:
            raise ValueError("target data is empty but target_fraction > 0")
        if data.n_base == 0 and target_fraction < 1.0 and base is not None:
            raise ValueError("base data is empty but target_fraction < 1")
        self.model.train()
        start_base, start_target = self.samples_base, self.samples_target
        history: list[dict[str, float]] = []
        t0 = time.perf_counter()
        for i in range(steps):
            m = self.train_step(data, target_fraction)
            history.append(m)
            if progress is not None:
                progress(i + 1, m)
        elapsed = time.perf_counter() - t0
        n_base = self.samples_base - start_base
        n_target = self.samples_target - start_target
        total = max(1, n_base + n_target)
        window = max(1, steps // 10)
        summary: dict[str, Any] = {
            "steps": steps,
            "total_steps": self.step_count,
            "base_samples": n_base,
            "target_samples": n_target,
            "base_fraction": n_base / total,
            "target_fraction": n_target / total,
            "learning_rate": self.learning_rate,
            "seconds": elapsed,
            "ms_per_step": 1000.0 * elapsed / max(1, steps),
        }
        if history:
            for key in ("loss", "mean_q", "td_error", "mean_target"):
                summary[key] = float(np.mean([h[key] for h in history[-window:]]))
            summary["initial_loss"] = float(np.mean([h["loss"] for h in history[:window]]))
        self.model.eval()
        return summary


# --- top level: checkpoints in, checkpoint out ------------------------------------------------


def load_datasets(paths: Sequence[str]) -> Transitions | None:
    """Transitions of the bags at ``paths`` (None when there are none)."""
    paths = [os.fspath(p) for p in paths or []]
    if not paths:
        return None
    from nsl_collector.dataset import load_transitions  # lazy: the reader is optional here

    return load_transitions(paths)


def finetune_transitions(
    init_checkpoint: str | None,
    base: Transitions | None,
    target: Transitions | None,
    steps: int,
    *,
    output_path: str,
    learning_rate: float | None = None,
    target_fraction: float = 0.5,
    progress: ProgressFn | None = None,
    seed: int = 0,
    config: QTOptConfig | None = None,
    model_config: QNetworkConfig | None = None,
    device: torch.device | str | None = None,
    datasets: dict | None = None,
    num_threads: int | None = None,
    **run_options: Any,
) -> str:
    """``finetune`` on already loaded transitions; returns the new checkpoint id. ``run_options``
    go to :func:`nsl_trainer.runs.train_transitions` (run_dir, checkpoint_every, resume, ...).
    """
    from .runs import train_transitions

    return train_transitions(
        "finetune" if init_checkpoint else "scratch",
        base,
        target,
        steps,
        output_path=output_path,
        init_checkpoint=init_checkpoint or None,
        learning_rate=learning_rate,
        target_fraction=target_fraction,
        progress=progress,
        seed=seed,
        config=config,
        model_config=model_config,
        device=device,
        datasets=datasets,
        num_threads=num_threads,
        **run_options,
    ).checkpoint_id


def finetune(
    init_checkpoint: str | None,
    base_paths: Sequence[str],
    target_paths: Sequence[str],
    steps: int,
    *,
    output_path: str,
    learning_rate: float | None = None,
    target_fraction: float = 0.5,
    progress: ProgressFn | None = None,
    seed: int = 0,
    config: QTOptConfig | None = None,
    model_config: QNetworkConfig | None = None,
    device: torch.device | str | None = None,
    num_threads: int | None = None,
    **run_options: Any,
) -> str:
    """Fine-tune ``init_checkpoint`` (None: random init, the "scratch" comparison: the same recipe)
    with QT-Opt on the bags at ``base_paths`` + ``target_paths`` (sampled ``target_fraction``
    from target), write the result to ``output_path`` atomically and return its checkpoint id.

    ``learning_rate`` None means config.learning_rate x finetune_lr_scale (the paper's 25%). With
    no target paths all samples come from base (and vice versa). ``model_config`` sets the
    architecture from scratch and is checked against the checkpoint otherwise. ``num_threads``
    sets torch's CPU threads for this process. ``run_options``: see
    :func:`nsl_trainer.runs.train_transitions` (run_dir, checkpoint_every, log_every, resume,
    tensorboard, should_stop).
    """
    base_paths = [os.fspath(p) for p in base_paths or []]
    target_paths = [os.fspath(p) for p in target_paths or []]
    base = load_datasets(base_paths)
    target = load_datasets(target_paths)
    return finetune_transitions(
        init_checkpoint,
        base,
        target,
        steps,
        output_path=output_path,
        learning_rate=learning_rate,
        target_fraction=target_fraction,
        progress=progress,
        seed=seed,
        config=config,
        model_config=model_config,
        device=device,
        datasets={"base": base_paths, "target": target_paths},
        num_threads=num_threads,
        **run_options,
    )
