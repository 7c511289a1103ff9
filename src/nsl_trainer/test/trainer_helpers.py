"""Synthetic data for the trainer tests: transitions in memory and small rosbag2 bags."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nsl_collector.transitions import Transitions
from nsl_trainer.loop import ProgressFn, run_steps, training_data
from nsl_trainer.trainer import QTOptTrainer
from nsl_collector.dataset import BagRecorder, EpisodeData, StepData

MSG_DIR = Path(__file__).resolve().parents[2] / "nsl_msgs" / "msg"


def fit(
    trainer: QTOptTrainer,
    base: Transitions | None,
    target: Transitions | None = None,
    steps: int = 1000,
    target_fraction: float = 0.5,
    progress: ProgressFn | None = None,
) -> dict:
    """Run ``steps`` more steps of the training loop on ``trainer``; return its summary."""
    data = training_data(trainer, base, target)
    total = trainer.step_count + steps
    return run_steps(trainer, data, total, target_fraction, progress=progress)


def marker_images(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return dark noisy images with one bright 4x4 marker each, and the markers' places.

    Returns (images (n, S, S, 3) uint8, marker centres (n, 2) in the action's normalised [-1, 1]
    x/y coordinates).
    """
    rng = np.random.default_rng(seed)
    images = (40 + rng.integers(0, 20, (n, size, size, 3))).astype(np.uint8)
    centre = rng.uniform(-0.75, 0.75, (n, 2)).astype(np.float32)
    px = np.rint((centre + 1) / 2 * (size - 1)).astype(int)
    for i, (x, y) in enumerate(px):
        images[i, max(0, y - 2) : y + 2, max(0, x - 2) : x + 2] = 250
    return images, centre


def marker_success(action: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Return whether each grasp succeeds: its action's x/y within ``radius`` of the marker."""
    return np.linalg.norm(np.asarray(action)[:, :2] - centre, axis=1) < radius


def marker_task(
    n: int, radius: float = 0.5, size: int = 32, seed: int = 0
) -> tuple[Transitions, np.ndarray]:
    """Return one-step episodes of a random policy on the marker task and the marker centres."""
    images, centre = marker_images(n, size, seed)
    action = np.random.default_rng(seed + 1).uniform(-1, 1, (n, 6)).astype(np.float32)
    reward = marker_success(action, centre, radius).astype(np.float32)
    t = Transitions(
        image=images,
        state=np.zeros((n, 3), np.float32),
        action=action,
        reward=reward,
        done=np.ones(n, bool),
        next_index=np.arange(n),
        episode=np.arange(n),
    )
    return t, centre


def episodes_task(n_episodes: int, steps: int = 3, size: int = 32, seed: int = 0) -> Transitions:
    """Multi-step episodes with random images/actions; reward on the last step of half of them."""
    rng = np.random.default_rng(seed)
    n = n_episodes * steps
    done = (np.arange(n) % steps) == steps - 1
    return Transitions(
        image=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
        state=rng.random((n, 3)).astype(np.float32),
        action=rng.uniform(-1, 1, (n, 6)).astype(np.float32),
        reward=(done & (rng.random(n) < 0.5)).astype(np.float32),
        done=done,
        next_index=np.where(done, np.arange(n), np.arange(n) + 1),
        episode=np.arange(n) // steps,
    )


def write_bag(
    path: Path, n_episodes: int, steps: int = 3, size: int = 32, seed: int = 0, task: str = "base"
) -> Path:
    """Write a closed rosbag2 bag of ``n_episodes`` complete random episodes (BagRecorder)."""
    rng = np.random.default_rng(seed)
    with BagRecorder(path, {"task": task}, MSG_DIR, flush_steps=False, fsync=False) as rec:
        for e in range(n_episodes):
            recs = [
                StepData.from_vector(
                    rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                    [float(j == steps - 1), 0.3 - 0.05 * j, j / steps],
                    rng.uniform(-1, 1, 6),
                    stamp_ns=10**18 + (e * 10 + j) * 10**6,
                )
                for j in range(steps)
            ]
            rec.write_episode(
                recs,
                EpisodeData(
                    episode_id=f"{task}-{e}",
                    task=task,
                    seed=e,
                    success=bool(rng.random() < 0.5),
                    stamp_ns=10**18 + (e * 10 + 9) * 10**6,
                ),
            )
    return path
