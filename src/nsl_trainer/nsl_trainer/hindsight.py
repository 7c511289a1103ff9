"""Hindsight location labels: where an episode's successful grasp closed, seen from each step.

A robot has no simulator to say where the objects are, but a successful grasp shows where one
was: the fingers closed on it. Each step of such an episode, up to the step that closed the
fingers, is labelled with the horizontal offset (m, tray frame) from the commanded gripper
position at that step to where the fingers closed. The offset is the sum of the translations
executed from that step up to and including the closing step: a step moves first and then
closes (``nsl_msgs/GraspAction``, ``nsl_sim.env.GraspEnv.step``). The closing step is the
first one that closes or terminates (terminating closes the gripper), else the episode's
last (the forced close at the step limit). Rows of failed episodes and rows after the fingers
closed get NaN: they have no label, and the location loss skips them.

The translation of a row is ``action[0:2] * max_translation``, clipped per axis as the arm
clips it. The recorded action is what was sent to the arm; a position clipped by the
workspace limits after that (``SimConfig.commanded_move``) is not in the data, so a label
is off by what the workspace clipped on the way to the grasp.

An episode whose rows are not chained step after step (a gap or a step out of order, as data
from a crashed session can hold) has no hindsight labels: its rows get NaN, a warning on the
``nsl_trainer.hindsight`` logger counts and names such episodes, and its transitions still
train the Q-function.
"""

from __future__ import annotations

import logging

import numpy as np

from nsl_collector.transitions import Transitions
from nsl_policy.action_space import CLOSE_INDEX, TERMINATE_INDEX, ActionSpace

logger = logging.getLogger(__name__)

MAX_NAMED_EPISODES = 10
"""Unchained episodes a warning names by number; the rest are only counted."""


def split_episodes(transitions: Transitions) -> tuple[list[np.ndarray], list[int]]:
    """Return the rows of each chained episode in step order, and the numbers of the others.

    An episode is chained when every row but its last has ``next_index`` at the episode's next
    row and only its last row is ``done``.
    """
    n = len(transitions)
    if n == 0:
        return [], []
    episode = np.asarray(transitions.episode)
    order = np.argsort(episode, kind="stable")
    sorted_episode = episode[order]
    starts = np.flatnonzero(np.r_[True, sorted_episode[1:] != sorted_episode[:-1]])
    last = np.zeros(n, dtype=bool)
    last[np.r_[starts[1:], n] - 1] = True
    nxt = np.asarray(transitions.next_index)[order]
    done = np.asarray(transitions.done, dtype=bool)[order]
    # A row is linked when it is done exactly at its episode's end and otherwise points at the
    # episode's next row.
    following = np.r_[order[1:], -1]
    linked = (done == last) & (last | (nxt == following))
    episode_linked = np.logical_and.reduceat(linked, starts)
    chained, unchained = [], []
    for rows, ok in zip(np.split(order, starts[1:]), episode_linked):
        if ok:
            chained.append(rows)
        else:
            unchained.append(int(episode[rows[0]]))
    return chained, unchained


def episode_rows(transitions: Transitions) -> list[np.ndarray]:
    """Return each episode's rows in step order; raise ValueError naming unchained episodes.

    Every row but an episode's last must have ``next_index`` at the episode's next row, and
    only the last may be ``done`` (:func:`split_episodes` keeps the chained ones instead).
    """
    chained, unchained = split_episodes(transitions)
    if unchained:
        raise ValueError(
            "hindsight labels need every episode's rows linked step after step by next_index, "
            f"done on its last row only; not so in {_episodes_text(unchained)}"
        )
    return chained


def _episodes_text(numbers: list[int]) -> str:
    """Return '3 episode(s) (1, 4, 9)', naming at most MAX_NAMED_EPISODES of ``numbers``."""
    named = ", ".join(str(e) for e in numbers[:MAX_NAMED_EPISODES])
    more = (
        f" and {len(numbers) - MAX_NAMED_EPISODES} more"
        if len(numbers) > MAX_NAMED_EPISODES
        else ""
    )
    return f"{len(numbers)} episode(s) ({named}{more})"


def closing_step(actions: np.ndarray) -> int:
    """Return the step of an episode's ``actions`` (steps, 6) after whose move the fingers closed.

    The first step that closes or terminates, else the last one.
    """
    closes = (actions[:, CLOSE_INDEX] > 0) | (actions[:, TERMINATE_INDEX] > 0)
    hits = np.flatnonzero(closes)
    return int(hits[0]) if len(hits) else len(actions) - 1


def hindsight_locations(
    transitions: Transitions, action_space: ActionSpace | None = None, name: str = ""
) -> np.ndarray:
    """Return the (N, 2) float32 hindsight labels (m) of ``transitions``; NaN where none.

    ``action_space`` scales the normalised actions to metres; default ``ActionSpace()``, the
    scaling the dataset loader turns recorded commands into actions with. Unchained episodes
    get no labels, with one warning naming them in the ``name`` data ("base", "target").
    """
    space = action_space or ActionSpace()
    out = np.full((len(transitions), 2), np.nan, dtype=np.float32)
    action = np.asarray(transitions.action, dtype=np.float64)
    reward = np.asarray(transitions.reward)
    moves = np.clip(action[:, :2], -1.0, 1.0) * space.max_translation
    chained, unchained = split_episodes(transitions)
    if unchained:
        logger.warning(
            "hindsight labels: skipped %s of the %sdata whose rows are not linked step after "
            "step by next_index (done on the last row only); their transitions still train "
            "the Q-function, without location labels",
            _episodes_text(unchained),
            f"{name} " if name else "",
        )
    for rows in chained:
        if not reward[rows[-1]] > 0:
            continue
        grasp = rows[: closing_step(action[rows]) + 1]
        out[grasp] = np.cumsum(moves[grasp][::-1], axis=0)[::-1]
    return out
