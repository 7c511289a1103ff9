"""Camera images -> network input: decode sensor_msgs/Image data, resize, convert to tensors.

ROS-free: takes the raw ``data`` bytes, ``width``, ``height`` and ``encoding`` of a
sensor_msgs/Image (or an ndarray) so it needs neither cv_bridge nor rclpy.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

# encoding -> (channels, conversion to RGB or None when already RGB)
_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_ENCODINGS)


def to_rgb(
    data: bytes | bytearray | memoryview | np.ndarray,
    width: int,
    height: int,
    encoding: str,
    step: int | None = None,
) -> np.ndarray:
    """(height, width, 3) uint8 RGB image from raw image data in ``encoding``.

    ``step`` is the row length in bytes (sensor_msgs/Image.step); rows may be padded. Raises
    ValueError for an unsupported encoding or data whose length does not fit the size.
    """
    enc = encoding.lower() if isinstance(encoding, str) else encoding
    if enc not in _ENCODINGS:
        raise ValueError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    if not (
        isinstance(width, (int, np.integer))
        and isinstance(height, (int, np.integer))
        and width > 0
        and height > 0
    ):
        raise ValueError(f"image size must be positive integers, got {width}x{height}")
    channels, conversion = _ENCODINGS[enc]
    row = width * channels
    step = row if step in (None, 0) else int(step)
    if step < row:
        raise ValueError(
            f"image step {step} is shorter than a {encoding} row of {width} pixels ({row} bytes)"
        )
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ValueError(f"image array must be uint8, got {data.dtype}")
        buf = np.ascontiguousarray(data).reshape(-1)
    else:
        buf = np.frombuffer(data, dtype=np.uint8)
    expected = step * height
    if buf.size != expected:
        raise ValueError(
            f"image data has {buf.size} bytes, expected {expected} for "
            f"{width}x{height} {encoding} (step {step})"
        )
    img = buf.reshape(height, step)[:, :row].reshape(height, width, channels)
    if conversion is None:
        return np.ascontiguousarray(img)
    if channels == 1:
        img = img[:, :, 0]
    return cv2.cvtColor(np.ascontiguousarray(img), conversion)


def resize_for_network(img: np.ndarray, size: int) -> np.ndarray:
    """Return a square ``size`` x ``size`` copy of an (H, W, 3) uint8 image.

    Shrunk with cv2.INTER_AREA (enlarged with INTER_LINEAR) and not cropped, so non-square images
    are stretched. Returns the input unchanged when it already fits.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
    if img.shape[0] == size and img.shape[1] == size:
        return img
    interpolation = (
        cv2.INTER_AREA if img.shape[0] >= size and img.shape[1] >= size else cv2.INTER_LINEAR
    )
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=interpolation)


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size, 3) copy of an (N, H, W, 3) uint8 batch (no copy when it already fits)."""
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected an (N, H, W, 3) batch, got shape {images.shape}")
    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = resize_for_network(img, size)
    return out


def to_tensor(
    batch: np.ndarray | torch.Tensor, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Return a float (N, 3, H, W) tensor in [0, 1] from a uint8 (N, H, W, 3) batch.

    The tensor has channels_last memory; a single (H, W, 3) image becomes N = 1.
    """
    t = torch.as_tensor(batch)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[3] != 3:
        raise ValueError(f"expected a uint8 (N, H, W, 3) batch, got shape {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {t.dtype}")
    # NHWC memory permuted to NCHW is exactly the channels_last layout: no copy of the pixels.
    return (
        t.to(device)
        .permute(0, 3, 1, 2)
        .float()
        .div_(255.0)
        .contiguous(memory_format=torch.channels_last)
    )
