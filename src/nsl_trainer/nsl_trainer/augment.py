"""Image augmentation of QT-Opt's batches: a random shift and brightness/contrast jitter.

The shift is a crop of an edge-padded image; every draw comes from a CPU generator, so that a
step's draws are reproducible.
"""

from __future__ import annotations

import torch

from .config import QTOptConfig


def edge_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Return uint8 (B, H, W, C) images padded by ``pad`` pixels replicating the edges."""
    h, w = images.shape[1:3]
    rows = (torch.arange(h + 2 * pad, device=images.device) - pad).clamp_(0, h - 1)
    cols = (torch.arange(w + 2 * pad, device=images.device) - pad).clamp_(0, w - 1)
    return images.index_select(1, rows).index_select(2, cols)


def random_crops(
    padded: torch.Tensor, rows: list[int], h: int, w: int, pad: int, generator: torch.Generator
) -> torch.Tensor:
    """Return one random (h, w) window per listed row of ``padded``: a shift of up to ``pad``."""
    dy = torch.randint(0, 2 * pad + 1, (len(rows),), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (len(rows),), generator=generator).tolist()
    return torch.stack([padded[r, y : y + h, x : x + w] for r, y, x in zip(rows, dy, dx)])


def photometric(
    images: torch.Tensor, config: QTOptConfig, generator: torch.Generator
) -> torch.Tensor:
    """Return float channels_last images in [0, 1] from uint8 (B, H, W, 3), jittered.

    The brightness and contrast jitter are ``config``'s (none when ``config.augment`` is False).
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
    """Return float (B, 3, H, W) channels_last images in [0, 1] from uint8 (B, H, W, 3).

    They get the random shift (a crop of the edge-replicated, ``crop_pad``-padded image) and the
    brightness/contrast jitter of ``config`` (none when ``config.augment`` is False). Random
    numbers come from ``generator`` (CPU).
    """
    if config.augment and config.crop_pad > 0:
        b, h, w, _ = images.shape
        images = random_crops(
            edge_pad(images, config.crop_pad), list(range(b)), h, w, config.crop_pad, generator
        )
    return photometric(images, config, generator)
