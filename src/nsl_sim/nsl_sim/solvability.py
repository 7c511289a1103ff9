"""Solvability checks: whether a challenge at a severity is still a task that can be done.

A challenge should make the base policy fail without making grasping impossible. ROS-free.
Every pass threshold is a field of :class:`SolvabilityThresholds`.

Appearance challenges (texture, light, object opacity: the gripper is the stock one)
    Image-based, on ``episodes`` scenes of the checker's world (the calibration's: three objects
    each), rendered with and without their objects:

    * ``pixel_share``: pixels the objects change on the challenge / pixels they change on base
      (same scenes). Pass: >= ``min_pixel_share``.
    * ``probe_error_px``: a small supervised localisation probe (a conv net with a spatial
      soft-argmax, :func:`probe_error`) trained on the challenge's own images to point at an
      object, mean distance to the nearest object on held-out scenes (64-pixel image units).
      Pass: <= ``max_probe_ratio`` x the same probe's error on base, and ``probe_gain`` (the
      share of base's advantage over a blind guess that the challenge keeps) >=
      ``min_probe_gain``. When the probe does not beat the blind guess on base by
      ``min_base_probe_advantage`` (too few scenes or steps) it cannot tell, and only the pixel
      share decides (``probe_judged`` False).

Geometry challenges (the gripper differs from the stock one)
    ``aware_oracle``: success of :func:`nsl_sim.scripted.aware_oracle_action` (the oracle that
    knows the variation) on ``episodes`` scenes. Pass: >= the nominal oracle's success on base on
    the same scenes minus ``max_oracle_drop``.

Negative controls (:func:`negative_control`) are the worlds past :data:`PHYSICAL_BOUNDS` that
the bounds exist to avoid; the checks must say "not solvable" on them. No task name or
severity reaches them.

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
from .severity import EffectiveTask
from .tasks import NOMINAL_GRIPPER_KEY, TaskConfig, get_task

__all__ = [
    "CHECK_VERSION",
    "MAX_ORACLE_DROP",
    "MAX_PROBE_RATIO",
    "MIN_PIXEL_SHARE",
    "NEGATIVE_CONTROLS",
    "SOLVABILITY_SEED",
    "THRESHOLDS",
    "OutOfBoundsTask",
    "Scenes",
    "SolvabilityChecker",
    "SolvabilityResult",
    "SolvabilityThresholds",
    "check_kind",
    "negative_control",
    "probe_error",
    "render_scenes",
]

#: Bumped whenever a check measures differently with the same thresholds, scenes and steps (a
#: cached check result of another version is stale).
CHECK_VERSION = 2


@dataclass(frozen=True)
class SolvabilityThresholds:
    """Pass thresholds of the solvability checks: the one place they are set."""

    min_pixel_share: float = 0.5
    """The objects must still change at least half the pixels they change on base: with fewer,
    most of each object (its extent, the narrow side a grasp needs) looks like the empty tray."""
    change_threshold: int = 12
    """A pixel changes when some colour channel moves by more than this (0..255): above
    TinyRenderer's anti-aliasing and shading noise between two renders of one scene."""
    max_probe_ratio: float = 1.5
    """The localisation probe may be at most 1.5x as far off as on base: smaller ratios would
    flag the probe's own spread between training seeds."""
    min_probe_gain: float = 0.5
    """The probe must keep half of base's advantage over the blind guess: the ratio alone
    passes a probe at chance whenever the blind guess is within 1.5x of base's error (in
    clutter a fixed point is never far from some object)."""
    min_base_probe_advantage: float = 0.25
    """On base the probe must cut the blind guess's error by a quarter for its comparisons to
    mean anything; below (too few scenes or steps) the probe criteria are not judged."""
    max_oracle_drop: float = 0.10
    """The oracle that knows a geometry change may lose at most 0.10 against the nominal oracle:
    about the 95% half-width of a rate near 0.85 on 100 episodes."""

    def __post_init__(self) -> None:
        ranges = {
            "min_pixel_share": (0.0, 1.0),
            "change_threshold": (0, 254),
            "max_probe_ratio": (1.0, float("inf")),
            "min_probe_gain": (0.0, 1.0),
            "min_base_probe_advantage": (0.0, 1.0),
            "max_oracle_drop": (0.0, 1.0),
        }
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(
                    f"SolvabilityThresholds.{name}: must be in {lo}..{hi}, got {value!r}"
                )

    def key(self) -> dict[str, Any]:
        """Return what a cached check result depends on besides its scenes: version, thresholds."""
        return {"check_version": CHECK_VERSION, **dataclasses.asdict(self)}


#: The default thresholds.
THRESHOLDS = SolvabilityThresholds()
#: Aliases of the default thresholds (the calibration and Table I read these names).
MIN_PIXEL_SHARE = THRESHOLDS.min_pixel_share
MAX_PROBE_RATIO = THRESHOLDS.max_probe_ratio
MAX_ORACLE_DROP = THRESHOLDS.max_oracle_drop
#: First scene seed of the checks: inside the calibration block of the experiment (6 000 000),
#: after its first 50 000 episodes, so a check never reuses a calibration episode.
SOLVABILITY_SEED = 6_050_000
#: Scenes per check when not given: the probe's train/test split is 150/50 (geometry: 100).
DEFAULT_EPISODES = {"appearance": 200, "geometry": 100}

#: The worlds the physical bounds exist to avoid, as the clamps before them gave them:
#: name -> (named task, severity, knobs set past :data:`PHYSICAL_BOUNDS`). The other knobs are
#: the bounded task's at that severity (already the same world as before the bounds).
NEGATIVE_CONTROLS: dict[str, tuple[str, float, dict[str, Any]]] = {
    # transparent_objects 1.5: alpha 1 + 1.5 x (0.25 - 1) clamped at 0.
    "invisible_objects": ("transparent_objects", 1.5, {"object_alpha": 0.0}),
    # harsh_light 1.5: ambient 0.6 + 1.5 x (0.15 - 0.6) clamped at 0, the light 0.8 deg above
    # the table (the unclamped blend of the nominal and harsh directions).
    "black_scene": (
        "harsh_light",
        1.5,
        {"light_ambient": 0.0, "light_direction": (-1.65, 0.8, 0.025)},
    ),
    # extend_gripper_1cm 3: tips 1 + 3 x (0.5 - 1) wide clamped at 0.2, friction clamped at 0.05.
    "unholdable_gripper": (
        "extend_gripper_1cm",
        3.0,
        {"finger_width_scale": 0.2, "finger_friction": 0.05},
    ),
}


@dataclass(frozen=True)
class OutOfBoundsTask(TaskConfig):
    """A task whose effective knobs are set past :data:`PHYSICAL_BOUNDS`: negative controls only.

    Build it with :func:`negative_control`; no task name, YAML file or severity gives one.
    """

    out_of_bounds: tuple[tuple[str, Any], ...] = ()
    """(effective knob, value) pairs that replace the bounded task's knobs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        knobs = {f.name for f in dataclasses.fields(EffectiveTask)} - {"saturated"}
        unknown = sorted({k for k, _ in self.out_of_bounds} - knobs)
        if unknown:
            raise ValueError(f"OutOfBoundsTask.out_of_bounds: unknown knob(s) {unknown}")

    def effective(self) -> EffectiveTask:
        """Return the bounded task's knobs with ``out_of_bounds`` replacing some."""
        return dataclasses.replace(super().effective(), **dict(self.out_of_bounds), saturated=())


def negative_control(name: str) -> OutOfBoundsTask:
    """Return the negative-control world ``name`` of :data:`NEGATIVE_CONTROLS`.

    A world past the physical bounds that no policy can solve, for testing that the checks can
    say "not solvable"; never a challenge.
    """
    try:
        task_name, severity, knobs = NEGATIVE_CONTROLS[name]
    except KeyError:
        raise ValueError(
            f"unknown negative control {name!r}; valid: {', '.join(sorted(NEGATIVE_CONTROLS))}"
        ) from None
    fields = dataclasses.asdict(get_task(task_name))
    fields.update(name=f"negative_control_{name}", severity=severity)
    return OutOfBoundsTask(**fields, out_of_bounds=tuple(sorted(knobs.items())))


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
    """(N, K, 2) image position (column, row; pixels) of each of the K objects."""

    def changed_pixels(self, threshold: int = THRESHOLDS.change_threshold) -> np.ndarray:
        """Pixels per scene that the objects change (any channel by > ``threshold``)."""
        diff = np.abs(self.images.astype(np.int16) - self.empty.astype(np.int16)).max(-1)
        return (diff > threshold).sum(axis=(1, 2))


def render_scenes(task: TaskConfig, seeds: range, config: SimConfig) -> Scenes:
    """Render ``task`` on every seed: the reset image, the same without objects, the labels.

    A label is an object's mesh centre (the point the oracle aims at) 2 cm above the floor.
    """
    images, empty, labels = [], [], []
    env = GraspEnv(config, task=task)
    try:
        for seed in seeds:
            images.append(env.reset(seed).image)
            labels.append([env.project_to_image([x, y, 0.02]) for x, y in env.object_centres()])
            empty.append(env.render_without_objects())
    finally:
        env.close()
    return Scenes(np.stack(images), np.stack(empty), np.asarray(labels, dtype=np.float64))


def probe_error(
    images: np.ndarray, labels: np.ndarray, steps: int = 600, seed: int = 0
) -> tuple[float, float]:
    """Train the localisation probe on the first 75% of the scenes; test on the rest.

    ``labels``: (N, K, 2) object positions (or (N, 2), one object), pixels. The probe outputs
    one point per image and learns to put it on some object: its loss and error are the
    squared and plain distance to the nearest of the K objects. Returns (mean test error, the
    test error of the blind guess: the fixed point nearest the training objects, on a 33x33
    grid), both in pixels of a 64-pixel image.

    The probe: RGB minus the training images' mean image (a background model any learner can
    form, which this small probe needs for see-through objects), standardised per image, plus
    two coordinate channels; two 3x3 convolutions (16 channels, the first with stride 2), a
    1x1 convolution to a heat map and a spatial soft-argmax; Adam, ``steps`` steps of 32
    images.
    """
    import torch  # heavy: only the appearance checks train a network

    if labels.ndim == 2:
        labels = labels[:, None, :]
    n = len(images)
    n_train = int(round(0.75 * n))
    if n_train < 8 or n - n_train < 4:
        raise ValueError(f"the probe needs at least 16 scenes, got {n}")
    if labels.shape[0] != n or labels.shape[2] != 2:
        raise ValueError(f"labels must be (N, K, 2) for {n} images, got {labels.shape}")
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

    def nearest_sq(points: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
        """Squared distance of each point (B, 2) to its scene's nearest object (B, K, 2)."""
        return ((points[:, None, :] - objects) ** 2).sum(-1).min(dim=1).values

    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, n_train, (min(32, n_train),), generator=gen)
        loss = nearest_sq(predict(x[idx]), y[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = predict(x[n_train:])
    to_px = size / 2.0 * scale
    err = float(nearest_sq(pred, y[n_train:]).sqrt().mean()) * to_px
    c = torch.linspace(-1.0, 1.0, 33)
    candidates = torch.stack(torch.meshgrid(c, c, indexing="xy"), dim=-1).reshape(-1, 2)
    train_err = torch.stack([nearest_sq(p.expand(n_train, 2), y[:n_train]) for p in candidates])
    blind = candidates[int(train_err.sqrt().mean(dim=1).argmin())]
    chance = float(nearest_sq(blind.expand(n - n_train, 2), y[n_train:]).sqrt().mean()) * to_px
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

    ``config``: the world (default: 64x64 images, 3 test objects, as the calibration);
    ``episodes``: scenes per check (default :data:`DEFAULT_EPISODES` per kind); scenes are the
    seeds ``seed`` .. ``seed + episodes - 1``; ``thresholds``: the pass thresholds (default
    :data:`THRESHOLDS`).
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        episodes: int | None = None,
        seed: int = SOLVABILITY_SEED,
        probe_steps: int = 600,
        thresholds: SolvabilityThresholds | None = None,
    ) -> None:
        if episodes is not None and episodes < 16:
            raise ValueError(
                f"episodes must be >= 16 (the probe's train/test split), got {episodes}"
            )
        self.config = config if config is not None else SimConfig(object_split="test")
        self.episodes = episodes
        self.seed = seed
        self.probe_steps = probe_steps
        self.thresholds = thresholds if thresholds is not None else THRESHOLDS
        self._base_scenes: dict[int, tuple[Scenes, float, float]] = {}
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
        th = self.thresholds
        seeds = self._seeds("appearance")
        if len(seeds) not in self._base_scenes:
            base = render_scenes(get_task("base"), seeds, self.config)
            self._base_scenes[len(seeds)] = (
                base,
                *probe_error(base.images, base.labels, self.probe_steps),
            )
        base, base_err, base_chance = self._base_scenes[len(seeds)]
        scenes = render_scenes(cfg, seeds, self.config)
        changed = scenes.changed_pixels(th.change_threshold)
        base_changed = base.changed_pixels(th.change_threshold)
        share = float(changed.sum() / max(1, base_changed.sum()))
        err, chance = probe_error(scenes.images, scenes.labels, self.probe_steps)
        base_advantage = base_chance - base_err
        judged = base_advantage >= th.min_base_probe_advantage * base_chance
        gain = (chance - err) / base_advantage if base_advantage > 0 else 0.0
        figures = {
            "scenes": len(seeds),
            "objects": self.config.num_objects,
            "changed_px": float(changed.mean()),
            "base_changed_px": float(base_changed.mean()),
            "pixel_share": round(share, 3),
            "mean_pixel": float(scenes.images.mean()),
            "base_mean_pixel": float(base.images.mean()),
            "probe_error_px": round(err, 2),
            "base_probe_error_px": round(base_err, 2),
            "chance_error_px": round(chance, 2),
            "base_chance_error_px": round(base_chance, 2),
            "probe_gain": round(gain, 3),
            "probe_judged": judged,
        }
        criteria = [f"pixel_share {share:.2f} >= {th.min_pixel_share}"]
        passed = share >= th.min_pixel_share
        if judged:
            criteria += [
                f"probe_error_px {err:.2f} <= {th.max_probe_ratio} x base {base_err:.2f}",
                f"probe_gain {gain:.2f} >= {th.min_probe_gain} (blind guess {chance:.2f} px)",
            ]
            passed = passed and err <= th.max_probe_ratio * base_err and gain >= th.min_probe_gain
        else:
            criteria.append(
                f"probe not judged: on base it errs {base_err:.2f} px against the blind guess's "
                f"{base_chance:.2f} (needs {th.min_base_probe_advantage:.0%} less; more scenes "
                "or probe steps)"
            )
        return figures, criteria, passed

    def _geometry(self, cfg: TaskConfig) -> tuple[dict, list[str], bool]:
        th = self.thresholds
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
        criteria = [f"aware_oracle {aware:.3f} >= base_oracle {base:.3f} - {th.max_oracle_drop}"]
        return figures, criteria, aware >= base - th.max_oracle_drop - 1e-9


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
