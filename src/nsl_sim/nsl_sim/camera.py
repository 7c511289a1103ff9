"""The grasping world's camera: a fixed pinhole camera rendered with TinyRenderer.

It sits above and behind the robot's shoulder looking at the tray centre (pose as in
pybullet_envs, re-targeted to this tray); a task may move it (offset, per-episode noise) and
change its lights. It renders only when an observation is returned.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pybullet as p
from pybullet_utils import bullet_client

from .tasks import EffectiveTask
from .world import TRAY_ORIGIN

__all__ = ["CAMERA_EYE", "CAMERA_TARGET", "Camera", "blend_objects"]

#: Camera eye relative to the tray origin (pybullet_envs' camera re-targeted to this tray).
CAMERA_EYE = (0.45, -0.35, 0.9)
CAMERA_TARGET = (-0.02, 0.0, 0.0)


class Camera:
    """View and projection of one episode's camera; unset until :meth:`aim`."""

    def __init__(self) -> None:
        self.view: Sequence[float] | None = None
        self.proj: Sequence[float] | None = None

    def aim(
        self,
        c: bullet_client.BulletClient,
        eff: EffectiveTask,
        noise: np.ndarray,
        fov: float,
    ) -> None:
        """Place the camera for an episode, ``fov`` degrees wide (vertically).

        Its eye moves by the task's offset plus its noise scale x ``noise``.
        """
        eye = np.array(CAMERA_EYE) + np.array(eff.camera_offset) + eff.camera_noise * noise
        self.view = c.computeViewMatrix(
            (TRAY_ORIGIN + eye).tolist(),
            (TRAY_ORIGIN + np.array(CAMERA_TARGET)).tolist(),
            [0, 0, 1],
        )
        self.proj = c.computeProjectionMatrixFOV(fov, 1.0, 0.05, 5.0)

    def render(
        self,
        c: bullet_client.BulletClient,
        eff: EffectiveTask,
        size: int,
        segmentation: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the (size, size, 3) uint8 image under the task's lights, and its segmentation.

        The segmentation mask (body ids in the low 24 bits) is empty unless ``segmentation``.
        """
        w, h, rgba, _depth, seg = c.getCameraImage(
            size,
            size,
            viewMatrix=self.view,
            projectionMatrix=self.proj,
            lightDirection=list(eff.light_direction),
            lightColor=list(eff.light_color),
            lightDistance=2.0,
            shadow=1 if eff.shadows else 0,
            lightAmbientCoeff=eff.light_ambient,
            lightDiffuseCoeff=eff.light_diffuse,
            lightSpecularCoeff=eff.light_specular,
            renderer=p.ER_TINY_RENDERER,
            flags=0 if segmentation else p.ER_NO_SEGMENTATION_MASK,
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[:, :, :3]
        seg_arr = np.asarray(seg).reshape(h, w) if segmentation else np.empty(0)
        return np.ascontiguousarray(rgb), seg_arr

    def project(self, point: Sequence[float], size: int) -> np.ndarray:
        """Return the (column, row) pixel, 0..size, of a tray-frame point."""
        if self.view is None or self.proj is None:
            raise RuntimeError("call reset(seed) before project_to_image()")
        view = np.asarray(self.view, dtype=np.float64).reshape(4, 4).T  # PyBullet: column-major
        proj = np.asarray(self.proj, dtype=np.float64).reshape(4, 4).T
        world = np.append(TRAY_ORIGIN + np.asarray(point, dtype=np.float64)[:3], 1.0)
        clip = proj @ view @ world
        ndc = clip[:3] / clip[3]
        return np.array([(ndc[0] + 1.0) / 2.0 * size, (1.0 - ndc[1]) / 2.0 * size])


def blend_objects(
    rgb: np.ndarray,
    seg: np.ndarray,
    background: np.ndarray,
    object_ids: list[int],
    alpha: float,
) -> np.ndarray:
    """Show ``background`` through the objects' pixels of ``rgb`` with opacity ``alpha``."""
    mask = np.isin(seg & ((1 << 24) - 1), object_ids)
    blend = alpha * rgb.astype(np.float32) + (1.0 - alpha) * background.astype(np.float32)
    return np.where(mask[:, :, None], np.rint(blend).astype(np.uint8), rgb)
