"""Checks of the values read from a bag: images within bounds, every number finite, in range.

A failed check raises ValueError naming the step and the field; the reader then
skips the episode by name (never clips the value into training).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_RGB_CHANNELS = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
MAX_IMAGE_SIDE = 4096
"""Largest image height or width accepted (pixels): far above any camera the policy uses, small
enough that a damaged size field cannot make the reader allocate gigabytes."""
MAX_GRIPPER_HEIGHT = 10.0
"""Largest |gripper height| accepted (metres): a value beyond any arm's reach is damage."""


def decode_image(img: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a sensor_msgs/Image; ValueError if it is malformed."""
    enc = img.encoding.lower()
    if enc not in _RGB_CHANNELS:
        raise ValueError(f"unsupported image encoding {img.encoding!r}")
    c, order = _RGB_CHANNELS[enc]
    h, w, step = int(img.height), int(img.width), int(img.step)
    data = np.asarray(img.data, dtype=np.uint8)
    if h <= 0 or w <= 0 or step < w * c or data.size < step * h:
        raise ValueError(f"image {h}x{w} {enc}, step {step}: holds {data.size} bytes")
    rows = data[: step * h].reshape(h, step)[:, : w * c].reshape(h, w, c)
    if enc == "rgb8":
        return rows.copy()
    return np.ascontiguousarray(rows[:, :, list(order)])


def check_step_values(tr: np.ndarray, rot: np.ndarray, recs: list) -> None:
    """ValueError naming the step and field of the first value out of range (see module doc)."""
    for name, values in (("action.translation", tr), ("action.rotation", rot)):
        bad = ~np.isfinite(values)
        if bad.any():
            step = int(np.flatnonzero(bad.reshape(len(recs), -1).any(axis=1))[0])
            raise ValueError(f"step {step}: non-finite {name} {values[step].tolist()}")
    for i, r in enumerate(recs):
        g = r.gripper_state
        height, fraction, q = float(g.height), float(g.step_fraction), float(r.q_value)
        if not math.isfinite(height) or abs(height) > MAX_GRIPPER_HEIGHT:
            raise ValueError(f"step {i}: gripper_state.height {height} is not a height in metres")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"step {i}: gripper_state.step_fraction {fraction} is not in [0, 1]")
        if math.isinf(q):
            raise ValueError(f"step {i}: q_value {q} is infinite (NaN means not computed)")
        h, w = int(r.image.height), int(r.image.width)
        if not (0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE):
            raise ValueError(f"step {i}: image size {h}x{w} is outside 1..{MAX_IMAGE_SIDE}")
