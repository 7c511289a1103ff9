"""Location-label units and the loading of collected bags as transitions.

The labels of QT-Opt's auxiliary location loss are simulator state: each bag's episodes are
replayed in the sim once (nsl_experiment.episodes.location_job) into a sidecar beside the bag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nsl_collector.dataset import DatasetError, load_transitions
from nsl_collector.transitions import Transitions

from ..cache import Context
from ..episodes import location_job, run_jobs
from .collect import chunk_key


def location_file(bag: Path) -> Path:
    """Return the location labels' sidecar of a collected bag: chunk_NNN.location.npz beside it."""
    return bag.with_name(bag.name + ".location.npz")


@dataclass
class LocationLabels:
    """One bag's location labels (``QTOptConfig.location_weight``)."""

    offsets: np.ndarray
    """(rows, 2) float32 offsets (m) from the commanded gripper to the nearest object."""
    steps: np.ndarray
    """Steps of each episode, in reading order (they must match the bag's transitions)."""


def location_labels(ctx: Context, bags: list[Path]) -> list[LocationLabels]:
    """Per bag, its location labels, replayed in the sim into a sidecar beside it (cached).

    A sidecar holds its bag's chunk key and is redone when the bag was re-collected. Raises
    ValueError when a bag has no stamp (not collected by this pipeline).
    """
    try:
        keys = {bag: chunk_key(bag) for bag in bags}
    except FileNotFoundError as exc:
        raise ValueError(
            f"{exc}; location labels are made for bags collected in the sim"
        ) from None

    def cached(bag: Path) -> LocationLabels | None:
        try:
            with np.load(location_file(bag), allow_pickle=False) as f:
                if str(f["key"]) != keys[bag] or int(f["steps"].sum()) != len(f["offsets"]):
                    return None
                return LocationLabels(f["offsets"], f["steps"])
        except (OSError, KeyError, ValueError):
            return None

    labels = [cached(b) for b in bags]
    todo = [b for b, lab in zip(bags, labels) if lab is None]
    if todo:
        ctx.work_done += len(todo)
        ctx.log(
            f"location labels: replaying the episodes of {len(todo)} bag(s) in the sim "
            f"({len(bags) - len(todo)} cached)"
        )
        specs = [
            {
                "bag": str(b),
                "sim": ctx.config.sim_kwargs(),
                "output": str(location_file(b)),
                "key": keys[b],
            }
            for b in todo
        ]
        try:
            run_jobs(
                specs,
                ctx.config.runtime.workers,
                lambda m: ctx.log(f"location labels: {m}"),
                job=location_job,
            )
        except DatasetError as exc:
            raise ValueError(f"location labels: {exc}") from exc
        labels = [lab if lab is not None else cached(b) for b, lab in zip(bags, labels)]
    missing = [b for b, lab in zip(bags, labels) if lab is None]
    if missing:
        raise ValueError(f"location labels of {missing[0]} were not written")
    return labels  # type: ignore[return-value]


def first_episodes(transitions: Transitions, n: int) -> Transitions:
    """Return the first ``n`` episodes of a Transitions set.

    Rows are stored episode after episode, so they are a prefix of the rows and every
    ``next_index`` in it stays inside it.
    """
    episode = transitions.episode
    if transitions.num_episodes < n:
        raise ValueError(
            f"asked for the first {n} episodes of a set of {transitions.num_episodes}"
        )
    if len(episode) and np.any(np.diff(episode) < 0):
        raise ValueError("transitions are not stored episode after episode")
    return transitions.rows(int(np.searchsorted(episode, n)))  # up to the first row of episode n


def load_episodes(
    bags: list[Path], episodes: int | None = None, location: list[LocationLabels] | None = None
) -> Transitions:
    """Transitions of the bags (in order), only their first ``episodes`` episodes when given.

    ``location``: each bag's labels (:func:`location_labels`), attached row for row.
    """
    transitions = load_transitions([str(b) for b in bags])
    if location is not None:
        steps = np.concatenate([lab.steps for lab in location])
        if not np.array_equal(steps, np.bincount(transitions.episode, minlength=len(steps))):
            raise ValueError(
                f"the location labels of {len(bags)} bag(s) do not match their episodes "
                f"({len(steps)} labelled, {transitions.num_episodes} read): a bag changed after "
                "its labels were made; delete its .location.npz to redo them"
            )
        transitions = transitions.with_location(np.concatenate([lab.offsets for lab in location]))
    return transitions if episodes is None else first_episodes(transitions, episodes)
