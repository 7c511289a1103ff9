"""Solvability checks: whether a challenge at a severity is still a task that can be done.

A challenge should make the base policy fail without making grasping impossible. ROS-free.

Appearance challenges (texture, light, object opacity: the gripper is the stock one)
    Image-based, on ``episodes`` scenes of one object each (so the probe's label is
    unambiguous: with three objects and "the nearest" as the label a probe this small does not
    learn even on base), rendered with and without the object:

    * ``pixel_share``: pixels the objects change on the challenge / pixels they change on base
      (same scenes). Pass: >= :data:`MIN_PIXEL_SHARE`.
    * ``probe_error_px``: a small supervised localisation probe (a conv net with a spatial
      soft-argmax, :func:`probe_error`) trained on the challenge's own images to output the
      object's image position, mean error on held-out scenes
      (64-pixel image units). Pass: <= :data:`MAX_PROBE_RATIO` x the same probe's error on base.

Geometry challenges (the gripper differs from the stock one)
    ``aware_oracle``: success of :func:`nsl_sim.scripted.aware_oracle_action` (the oracle that
    knows the variation) on ``episodes`` scenes. Pass: >= the nominal oracle's success on base on
    the same scenes minus :data:`MAX_ORACLE_DROP`.

:class:`SolvabilityChecker` caches the base figures, so a calibration checks several severities
for the price of one base measurement. ``nsl sim solvability`` prints the figures.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .env import GraspEnv, SimConfig
from .evaluate import wilson_interval
from .scripted import aware_oracle_action, oracle_action
from .tasks import NOMINAL_GRIPPER_KEY, TaskConfig, get_task

__all__ = [
    "MAX_ORACLE_DROP",
    "MAX_PROBE_RATIO",
    "MIN_PIXEL_SHARE",
    "SOLVABILITY_SEED",
    "Scenes",
    "SolvabilityChecker",
    "SolvabilityResult",
    "check_kind",
    "probe_error",
    "render_scenes",
]

#: The objects must still change at least half the pixels they change on base.
MIN_PIXEL_SHARE = 0.5
#: The localisation probe may be at most 1.5x as far off as on base (its spread between
#: training seeds on base is about 10-20%, so smaller ratios would flag noise).
MAX_PROBE_RATIO = 1.5
#: The oracle that knows a geometry change may lose at most 0.10 against the nominal oracle.
MAX_ORACLE_DROP = 0.10
#: A pixel changes when some colour channel moves by more than this (0..255): above
#: TinyRenderer's anti-aliasing and shading noise between two renders of one scene.
CHANGE_THRESHOLD = 12
#: First scene seed of the checks: inside the calibration block of the experiment (6 000 000),
#: after its first 50 000 episodes, so a check never reuses a calibration episode.
SOLVABILITY_SEED = 6_050_000
#: Scenes per check when not given: the probe's train/test split is 150/50 (geometry: 100).
DEFAULT_EPISODES = {"appearance": 200, "geometry": 100}


def check_kind(task: TaskConfig) -> str:
    """Return "geometry" when the task changes the gripper, else "appearance"."""
    return "geometry" if task.effective().gripper_key != NOMINAL_GRIPPER_KEY else "appearance"


@dataclass
class Scenes:
    """Camera images of scenes at reset, with and without their objects, and probe labels."""

    images: np.ndarray
    """(N, H, W, 3) uint8 at reset."""
    empty: np.ndarray
    """(N, H, W, 3) uint8, the same moment with the objects removed."""
    labels: np.ndarray
    """(N, 2) image position (column, row; pixels) of the object nearest the gripper's start."""

    def changed_pixels(self) -> np.ndarray:
        """Pixels per scene that the objects change (any channel by > CHANGE_THRESHOLD)."""
        diff = np.abs(self.images.astype(np.int16) - self.empty.astype(np.int16)).max(-1)
        return (diff > CHANGE_THRESHOLD).sum(axis=(1, 2))


def render_scenes(task: TaskConfig, seeds: range, config: SimConfig) -> Scenes:
    """Render ``task`` on every seed: the reset image, the same without objects, the label."""
    images, empty, labels = [], [], []
    env = GraspEnv(config, task=task)
    try:
        start = np.asarray(config.start_position, dtype=np.float64)
        for seed in seeds:
            images.append(env.reset(seed).image)
            offset = env.nearest_object_offset(start[:2])
            target = start[:2] + (offset if offset is not None else np.zeros(2))
            labels.append(env.project_to_image([target[0], target[1], 0.02]))
            empty.append(env.render_without_objects())
    finally:
        env.close()
    return Scenes(np.stack(images), np.stack(empty), np.asarray(labels, dtype=np.float64))


def probe_error(
    images: np.ndarray, labels: np.ndarray, steps: int = 600, seed: int = 0
) -> tuple[float, float]:
    """Train the localisation probe on the first 75% of the scenes; test on the rest.

    Returns (mean test error, the error of always answering the training labels' mean), both
    in pixels of a 64-pixel image. The probe: RGB minus the training images' mean image (a
    background model any learner can form; without it this small probe stays at chance on
    objects of opacity 0.44 or less, which still change most of their pixels), standardised
    per image, plus two coordinate channels; two 3x3 convolutions (16 channels, the first with
    stride 2), a 1x1 convolution to a heat map and a spatial soft-argmax; Adam, ``steps`` steps
    of 32 images.
    """
    import torch  # heavy: only the appearance checks train a network

    n = len(images)
    n_train = int(round(0.75 * n))
    if n_train < 8 or n - n_train < 4:
        raise ValueError(f"the probe needs at least 16 scenes, got {n}")
    size = images.shape[1]
    scale = 64.0 / size
    torch.manual_seed(seed)
    pixels = images.astype(np.float32)
    pixels -= pixels[:n_train].mean(axis=0)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1.0)
    grid = torch.linspace(-1.0, 1.0, size)
    coords = torch.stack(torch.meshgrid(grid, grid, indexing="xy"))[None].expand(n, -1, -1, -1)
    x = torch.cat([x, coords], dim=1)
    y = torch.from_numpy(labels.astype(np.float32)) / size * 2.0 - 1.0  # to -1..1
    net = torch.nn.Sequential(
        torch.nn.Conv2d(5, 16, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 1, 1),
    )
    half = size // 2
    g = torch.linspace(-1.0, 1.0, half)
    gx, gy = torch.meshgrid(g, g, indexing="xy")

    def predict(batch: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(net(batch).flatten(1), dim=1)
        return torch.stack([weights @ gx.flatten(), weights @ gy.flatten()], dim=1)

    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, n_train, (min(32, n_train),), generator=gen)
        loss = ((predict(x[idx]) - y[idx]) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = predict(x[n_train:])
    to_px = size / 2.0 * scale
    err = float(((pred - y[n_train:]) ** 2).sum(1).sqrt().mean()) * to_px
    chance = float(((y[:n_train].mean(0) - y[n_train:]) ** 2).sum(1).sqrt().mean()) * to_px
    return err, chance


@dataclass
class SolvabilityResult:
    """The figures of one check and whether the task passed."""

    task: str
    severity: float
    kind: str
    passed: bool
    figures: dict[str, Any]
    saturated: tuple[str, ...] = ()
    criteria: list[str] = field(default_factory=list)

    def line(self) -> str:
        """Return a one-line summary: task, severity, pass/fail and the figures."""
        sat = f" (saturated: {', '.join(self.saturated)})" if self.saturated else ""
        figures = ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.figures.items()
        )
        verdict = "solvable" if self.passed else "NOT solvable"
        return f"{self.task} at severity {self.severity:g}{sat}: {verdict}; {figures}"

    def as_dict(self) -> dict[str, Any]:
        """Return the plain-data form (for JSON and Table I)."""
        return dataclasses.asdict(self)


class SolvabilityChecker:
    """Run the checks of several tasks and severities against one cached base measurement.

    ``config``: the world (default: 64x64 images, 3 test objects, as the calibration; the
    appearance checks use one object per scene); ``episodes``: scenes per check (default
    :data:`DEFAULT_EPISODES` per kind); scenes are the seeds ``seed`` .. ``seed + episodes - 1``.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        episodes: int | None = None,
        seed: int = SOLVABILITY_SEED,
        probe_steps: int = 600,
    ) -> None:
        if episodes is not None and episodes < 16:
            raise ValueError(
                f"episodes must be >= 16 (the probe's train/test split), got {episodes}"
            )
        self.config = config if config is not None else SimConfig(object_split="test")
        self.episodes = episodes
        self.seed = seed
        self.probe_steps = probe_steps
        self._base_scenes: dict[int, tuple[Scenes, float]] = {}
        self._base_oracle: dict[int, float] = {}

    def _seeds(self, kind: str) -> range:
        n = self.episodes if self.episodes is not None else DEFAULT_EPISODES[kind]
        return range(self.seed, self.seed + n)

    def check(self, task: str | TaskConfig, severity: float | None = None) -> SolvabilityResult:
        """Check ``task`` (a name, YAML path or TaskConfig) at ``severity`` (None: its own)."""
        cfg = get_task(task)
        if severity is not None:
            cfg = dataclasses.replace(cfg, severity=float(severity))
        kind = check_kind(cfg)
        t0 = time.perf_counter()
        if kind == "geometry":
            figures, criteria, passed = self._geometry(cfg)
        else:
            figures, criteria, passed = self._appearance(cfg)
        figures["seconds"] = round(time.perf_counter() - t0, 1)
        return SolvabilityResult(
            task=cfg.name,
            severity=cfg.severity,
            kind=kind,
            passed=passed,
            figures=figures,
            saturated=cfg.effective().saturated,
            criteria=criteria,
        )

    def _appearance(self, cfg: TaskConfig) -> tuple[dict, list[str], bool]:
        seeds = self._seeds("appearance")
        world = self.config.replace(num_objects=1)
        if len(seeds) not in self._base_scenes:
            base = render_scenes(get_task("base"), seeds, world)
            err, _ = probe_error(base.images, base.labels, self.probe_steps)
            self._base_scenes[len(seeds)] = (base, err)
        base, base_err = self._base_scenes[len(seeds)]
        scenes = render_scenes(cfg, seeds, world)
        share = float(scenes.changed_pixels().sum() / max(1, base.changed_pixels().sum()))
        err, chance = probe_error(scenes.images, scenes.labels, self.probe_steps)
        figures = {
            "scenes": len(seeds),
            "changed_px": float(scenes.changed_pixels().mean()),
            "base_changed_px": float(base.changed_pixels().mean()),
            "pixel_share": round(share, 3),
            "mean_pixel": float(scenes.images.mean()),
            "base_mean_pixel": float(base.images.mean()),
            "probe_error_px": round(err, 2),
            "base_probe_error_px": round(base_err, 2),
            "chance_error_px": round(chance, 2),
        }
        criteria = [
            f"pixel_share {share:.2f} >= {MIN_PIXEL_SHARE}",
            f"probe_error_px {err:.2f} <= {MAX_PROBE_RATIO} x base {base_err:.2f}",
        ]
        passed = share >= MIN_PIXEL_SHARE and err <= MAX_PROBE_RATIO * base_err
        return figures, criteria, passed

    def _geometry(self, cfg: TaskConfig) -> tuple[dict, list[str], bool]:
        seeds = self._seeds("geometry")
        if len(seeds) not in self._base_oracle:
            self._base_oracle[len(seeds)] = _oracle_rate(get_task("base"), seeds, self.config)
        base = self._base_oracle[len(seeds)]
        aware = _oracle_rate(cfg, seeds, self.config, aware=True)
        lo, hi = wilson_interval(round(aware * len(seeds)), len(seeds))
        figures = {
            "episodes": len(seeds),
            "aware_oracle": round(aware, 3),
            "aware_oracle_ci95": [round(lo, 3), round(hi, 3)],
            "base_oracle": round(base, 3),
        }
        criteria = [f"aware_oracle {aware:.3f} >= base_oracle {base:.3f} - {MAX_ORACLE_DROP}"]
        return figures, criteria, aware >= base - MAX_ORACLE_DROP - 1e-9


def _oracle_rate(task: TaskConfig, seeds: range, config: SimConfig, aware: bool = False) -> float:
    """Success rate of the (aware) oracle on ``task`` over ``seeds``."""
    policy = aware_oracle_action if aware else oracle_action
    successes = 0
    env = GraspEnv(config, task=task)
    try:
        for seed in seeds:
            env.reset(seed)
            while True:
                res = env.step(*policy(env))
                if res.done:
                    successes += int(res.grasp_success)
                    break
    finally:
        env.close()
    return successes / len(seeds)
