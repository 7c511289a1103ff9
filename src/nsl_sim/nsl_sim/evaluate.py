"""Oracle evaluation and the task gallery (used by ``nsl sim``, the benchmark and the docs).

ROS-free. :func:`evaluate_oracle` runs scripted oracle grasps on consecutive seeds and returns the
success rate with a 95% Wilson interval; :func:`render_gallery` tiles the camera view of every
task into one image.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from .assets import encode_png
from .config import camera_fields
from .env import GraspEnv, SimConfig
from .tasks import TASKS, TaskConfig, get_task

__all__ = [
    "wilson_interval",
    "OracleResult",
    "run_oracle_episode",
    "evaluate_oracle",
    "gallery_views",
    "gallery_label",
    "render_gallery",
    "write_png",
]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    phat = successes / n
    denom = 1.0 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


@dataclass
class OracleResult:
    task: str
    episodes: int
    successes: int
    seconds: float
    steps: int
    outcomes: list[bool] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes)

    @property
    def episodes_per_s(self) -> float:
        return self.episodes / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        lo, hi = self.ci
        return (
            f"oracle on {self.task}: success {self.rate:.3f} ({self.successes}/{self.episodes}), "
            f"95% CI [{lo:.3f}, {hi:.3f}]; "
            f"{self.steps / max(1, self.episodes):.1f} steps/episode, "
            f"{self.episodes_per_s:.2f} episodes/s"
        )

    def as_dict(self) -> dict:
        lo, hi = self.ci
        return {
            "task": self.task,
            "episodes": self.episodes,
            "successes": self.successes,
            "success": self.rate,
            "ci95": [lo, hi],
            "seconds": self.seconds,
            "episodes_per_s": self.episodes_per_s,
            "steps_per_episode": self.steps / max(1, self.episodes),
        }


def run_oracle_episode(
    env: GraspEnv, seed: int, task: str | TaskConfig | None = None
) -> tuple[bool, int]:
    """One scripted oracle episode; (grasp success, control steps)."""
    env.reset(seed, task)
    while True:
        res = env.step(*env.oracle_action())
        if res.done:
            return bool(res.grasp_success), int(res.info["steps"])


def evaluate_oracle(
    task: str | TaskConfig = "base",
    episodes: int = 100,
    seed: int = 0,
    config: SimConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> OracleResult:
    """Oracle success on ``episodes`` consecutive seeds starting at ``seed``."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    task_cfg = get_task(task)
    outcomes: list[bool] = []
    steps = 0
    env = GraspEnv(config or SimConfig(), task=task_cfg)
    try:
        t0 = time.perf_counter()
        for i in range(episodes):
            ok, n = run_oracle_episode(env, seed + i)
            outcomes.append(ok)
            steps += n
            if progress:
                progress(i + 1, sum(outcomes))
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    return OracleResult(
        task=task_cfg.name,
        episodes=episodes,
        successes=sum(outcomes),
        seconds=seconds,
        steps=steps,
        outcomes=outcomes,
    )


def gallery_views(
    task: str | TaskConfig, seed: int = 0, size: int = 128, camera_fov: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the camera images of one task: at reset, and at the oracle's grasp pose.

    The second is just before the gripper closes, where gripper geometry changes show.
    ``camera_fov`` (degrees): the sim's default when None.
    """
    env = GraspEnv(SimConfig(image_size=size, **camera_fields(camera_fov)), task=task)
    try:
        start = env.reset(seed).image
        grasp = start
        for _ in range(env.config.max_steps - 1):
            t, r, close, term = env.oracle_action()
            res = env.step(t, r, close, False)
            grasp = res.observation.image
            if term or res.done:
                break
        return start, grasp
    finally:
        env.close()


#: Height (pixels) of the two-line label above each gallery column.
GALLERY_LABEL_HEIGHT = 30


def _label(width: int, height: int, lines: Sequence[str]) -> np.ndarray:
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    try:
        import cv2  # optional: labels are a nicety, the column order is documented
    except ImportError:
        return strip
    scale = 0.4 if width >= 100 else 0.3
    step = height // max(1, len(lines))
    for i, text in enumerate(lines):
        cv2.putText(
            strip,
            text,
            (3, (i + 1) * step - 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return strip


def gallery_label(task: TaskConfig) -> list[str]:
    """Return the two label lines of a gallery column: the name; severity and saturated knobs."""
    if task.name == "base":
        return [task.name, "nominal"]
    saturated = task.effective().saturated
    return [task.name, f"severity {task.severity:g}" + (" (saturated)" if saturated else "")]


def render_gallery(
    tasks: Sequence[str | TaskConfig] | None = None,
    seed: int = 0,
    size: int = 128,
    severities: Mapping[str, float] | None = None,
    camera_fov: float | None = None,
) -> np.ndarray:
    """Return one image: a column per task (label, view at reset, view at the grasp pose).

    ``severities`` maps task names to the severity shown (e.g. the calibration's choice); a
    task not in it is shown at its own severity. Each label names the severity and marks a
    task whose knobs saturated at their physical bounds.
    """
    names = list(tasks) if tasks is not None else list(TASKS)
    chosen = dict(severities or {})
    cols = []
    gap = np.full((2 * size + GALLERY_LABEL_HEIGHT, 2, 3), 255, dtype=np.uint8)
    for t in names:
        cfg = get_task(t)
        if cfg.name in chosen and cfg.name != "base":
            cfg = dataclasses.replace(cfg, severity=float(chosen[cfg.name]))
        start, grasp = gallery_views(cfg, seed, size, camera_fov)
        label = _label(size, GALLERY_LABEL_HEIGHT, gallery_label(cfg))
        cols.append(np.concatenate([label, start, grasp], axis=0))
        cols.append(gap)
    return np.concatenate(cols[:-1], axis=1)


def write_png(path: str, img: np.ndarray) -> int:
    """Write an RGB image as PNG (OpenCV's encoder with filtering when present); bytes written."""
    try:
        import cv2  # optional: OpenCV's encoder compresses better; encode_png is the fallback

        ok, buf = cv2.imencode(
            ".png", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9]
        )
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        data = buf.tobytes()
    except ImportError:
        data = encode_png(img)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return len(data)
