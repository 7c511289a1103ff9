"""QT-Opt transitions as flat arrays: what the dataset loader produces and the trainer consumes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .errors import DatasetError


@dataclass
class Transitions:
    """N transitions (s_t, a_t, r_t, s_{t+1}, done_t) from complete grasp episodes.

    Observations are stored once per step; ``next_index`` points at the row holding s_{t+1}.
    """

    image: np.ndarray
    """(N, H, W, 3) uint8 RGB observation s_t."""
    state: np.ndarray
    """(N, 3) float32 gripper state at s_t: closed (0/1), height (m), step fraction."""
    action: np.ndarray
    """(N, 6) float32 normalised action (nsl_policy.action_space)."""
    reward: np.ndarray
    """(N,) float32 reward: 1 on the last step of a successful episode, else 0."""
    done: np.ndarray
    """(N,) bool: the episode ended after this step (no bootstrap)."""
    next_index: np.ndarray
    """(N,) int64 row of s_{t+1}; equals the row itself when done."""
    episode: np.ndarray
    """(N,) int64 episode number within this set (0-based, in reading order)."""
    location: np.ndarray | None = None
    """Optional (N, 2) float32 horizontal offset (m) from the commanded gripper position at s_t
    to the nearest object's centre: simulator labels for QT-Opt's auxiliary location loss
    (QTOptConfig.location_weight). Bags do not hold them; None when absent."""

    def __post_init__(self) -> None:
        n = len(self.image)
        for name in ("state", "action", "reward", "done", "next_index", "episode"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Transitions.{name} has {len(getattr(self, name))} rows, image has {n}"
                )
        if self.location is not None:
            self.location = np.asarray(self.location, dtype=np.float32)
            if self.location.shape != (n, 2):
                raise ValueError(
                    f"Transitions.location must be ({n}, 2), got {self.location.shape}"
                )
            if not np.isfinite(self.location).all():
                raise ValueError("Transitions.location holds non-finite values")
        if n and (self.next_index.min() < 0 or self.next_index.max() >= n):
            raise ValueError("Transitions.next_index points outside the set")

    def __len__(self) -> int:
        return len(self.image)

    @property
    def num_episodes(self) -> int:
        return int(self.episode.max()) + 1 if len(self) else 0

    @property
    def next_state(self) -> np.ndarray:
        return self.state[self.next_index]

    @property
    def next_image(self) -> np.ndarray:
        return self.image[self.next_index]

    def with_location(self, location: np.ndarray | None) -> "Transitions":
        """Return this set with ``location`` labels (None: without)."""
        return dataclasses.replace(self, location=location)

    def rows(self, stop: int) -> "Transitions":
        """Return the first ``stop`` rows; every ``next_index`` must stay inside them."""
        if not 0 <= stop <= len(self):
            raise ValueError(f"rows({stop}) of a set of {len(self)}")
        if stop and int(self.next_index[:stop].max()) >= stop:
            raise ValueError(f"the first {stop} rows cut an episode")
        return Transitions(
            **{
                f.name: None if (v := getattr(self, f.name)) is None else v[:stop]
                for f in dataclasses.fields(self)
            }
        )

    @staticmethod
    def concatenate(parts: list["Transitions"]) -> "Transitions":
        """Join several sets; row and episode numbers are offset so they stay consistent.

        ``location`` is kept only when every part has it.
        """
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no transitions to concatenate")
        row_offset, episode_offset, next_index, episode = 0, 0, [], []
        for p in parts:
            next_index.append(p.next_index + row_offset)
            episode.append(p.episode + episode_offset)
            row_offset += len(p)
            episode_offset += p.num_episodes
        return Transitions(
            image=np.concatenate([p.image for p in parts]),
            state=np.concatenate([p.state for p in parts]),
            action=np.concatenate([p.action for p in parts]),
            reward=np.concatenate([p.reward for p in parts]),
            done=np.concatenate([p.done for p in parts]),
            next_index=np.concatenate(next_index),
            episode=np.concatenate(episode),
            location=(
                np.concatenate([p.location for p in parts])
                if all(p.location is not None for p in parts)
                else None
            ),
        )


def transitions_from_episodes(episodes: list) -> Transitions:
    """QT-Opt transitions of ``episodes`` (reader Episodes, all with one image shape)."""
    if not episodes:
        z = np.zeros(0, dtype=np.float32)
        return Transitions(
            image=np.zeros((0, 0, 0, 3), np.uint8),
            state=np.zeros((0, 3), np.float32),
            action=np.zeros((0, 6), np.float32),
            reward=z,
            done=np.zeros(0, bool),
            next_index=np.zeros(0, np.int64),
            episode=np.zeros(0, np.int64),
        )
    shape = episodes[0].steps[0].image.shape
    for e in episodes:
        if e.steps[0].image.shape != shape:
            raise DatasetError(
                f"{e.bag}: episode {e.episode_id} has {e.steps[0].image.shape} images, "
                f"other episodes {shape}; cannot stack them into one set"
            )
    n = sum(e.num_steps for e in episodes)
    image = np.empty((n, *shape), dtype=np.uint8)
    state = np.empty((n, 3), dtype=np.float32)
    action = np.empty((n, 6), dtype=np.float32)
    reward = np.zeros(n, dtype=np.float32)
    done = np.zeros(n, dtype=bool)
    episode = np.empty(n, dtype=np.int64)
    row = 0
    for k, e in enumerate(episodes):
        m = e.num_steps
        for j, s in enumerate(e.steps):
            image[row + j] = s.image
            state[row + j] = s.state
            action[row + j] = s.action
        episode[row : row + m] = k
        done[row + m - 1] = True
        reward[row + m - 1] = 1.0 if e.success else 0.0
        row += m
    next_index = np.arange(1, n + 1, dtype=np.int64)
    next_index[done] = np.flatnonzero(done)
    return Transitions(
        image=image,
        state=state,
        action=action,
        reward=reward,
        done=done,
        next_index=next_index,
        episode=episode,
    )
