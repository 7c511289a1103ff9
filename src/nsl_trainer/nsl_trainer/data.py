"""TrainingData: base and target transitions on the training device, ready to sample from."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from nsl_collector.transitions import Transitions
from nsl_policy.action_space import ACTION_DIM, STATE_DIM, canonical_actions
from nsl_policy.image import resize_batch

from .augment import augment_images, edge_pad, photometric, random_crops
from .config import LOCATION_LABELS, QTOptConfig
from .hindsight import hindsight_locations

LOCATION_SCALE = 0.05
"""Metres per unit of the location labels and head (the workspace is about 0.25 m wide)."""


def load_datasets(
    paths: Sequence[str | os.PathLike], *, strict: bool = False
) -> Transitions | None:
    """Return the transitions of the bags (or dataset folders) at ``paths``, None without any.

    Damaged bags and episodes are skipped with a warning naming the file, the episode and the
    reason (logged by ``nsl_collector``); ``strict``: DatasetError instead, so that a job
    trains only on data that is whole (nsl_collector.loading's damage policy).
    """
    paths = [os.fspath(p) for p in paths or []]
    if not paths:
        return None
    from nsl_collector.dataset import load_transitions  # optional: the rosbag2 reader is heavy

    return load_transitions(paths, strict=strict)


def _location_labels(part: Transitions, source: str, name: str) -> np.ndarray:
    """Return the (rows, 2) location labels (m) of the ``name`` data from ``source``."""
    if source == "hindsight":
        return hindsight_locations(part, name=name)
    if part.location is None:
        raise ValueError(
            "QTOptConfig.location_weight > 0 with location_labels 'sim' needs location labels "
            f"(Transitions.location) for every transition; the {name} data have none. Labels "
            "come from the simulator (the experiment's location labels); for robot data set "
            "location_labels to 'hindsight' or location_weight to 0"
        )
    return part.location


class TrainingData:
    """Base and target transitions on the training device, images at network size (uint8 NHWC).

    Rows [0, n_base) are base data, [n_base, n_base + n_target) target data. ``location``:
    the location labels' source (``QTOptConfig.location_labels``: "sim" or "hindsight"), None:
    no labels.
    """

    def __init__(
        self,
        base: Transitions | None,
        target: Transitions | None,
        image_size: int,
        device: torch.device,
        crop_pad: int = 0,
        location: str | None = None,
    ) -> None:
        named = [
            (n, p) for n, p in (("base", base), ("target", target)) if p is not None and len(p)
        ]
        parts = [p for _, p in named]
        if not parts:
            raise ValueError("no transitions to train on")
        if location is not None and location not in LOCATION_LABELS:
            raise ValueError(f"location must be None, 'sim' or 'hindsight', got {location!r}")
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
        """(N, 2) location labels in units of LOCATION_SCALE (only when asked for); NaN rows
        have no label."""
        self.labelled = (0, 0)
        """Rows with a location label: (base, target)."""
        if location is not None:
            self.location = torch.as_tensor(
                np.concatenate([_location_labels(p, location, name) for name, p in named])
                / LOCATION_SCALE
            ).to(dev)
            labelled = torch.isfinite(self.location).all(dim=1).cpu()
            self.labelled = (
                int(labelled[: self.n_base].sum()),
                int(labelled[self.n_base :].sum()),
            )
        self._mc_return: torch.Tensor | None = None
        final = self.done.nonzero(as_tuple=True)[0].cpu()
        self.final_rows = (final[final < self.n_base], final[final >= self.n_base])
        """Row numbers of the episode-final transitions (the grasp attempts): (base, target)."""

    def mc_return(self, discount: float) -> torch.Tensor:
        """Return each row's discounted return of the rest of its recorded episode (cached)."""
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
        """Return ``augment_images(self.image[rows], ...)``, cropping from the stored padding."""
        if not (config.augment and config.crop_pad > 0 and config.crop_pad == self.crop_pad):
            return augment_images(self.image[rows], config, generator)
        h, w = self.image.shape[1:3]
        return photometric(
            random_crops(self.padded, rows.tolist(), h, w, self.crop_pad, generator),
            config,
            generator,
        )
