"""The checkpoint slot: which checkpoint is in force, and how a candidate replaces it.

ROS-free; the policy node wraps it. A candidate goes through these stages:

1. **staged**: :meth:`CheckpointSlot.stage` loads it (safe load, no unpickling) and
2. **validated**: checks it (architecture matches the one in force, finite weights, a smoke
   inference), then asks the optional ``gate``, which may refuse it with a reason, approve it,
   or **hold** it (:class:`Held`: the rollout gate keeps it for a trial or for the operator;
   :meth:`CheckpointSlot.begin_episode` may run episodes on it, and
   :meth:`CheckpointSlot.promote_held` approves or :meth:`CheckpointSlot.drop_held` drops it);
3. **approved**: it waits for the episode boundary (at once when no episode runs) and
4. **in force**: :meth:`CheckpointSlot.begin_episode` or :meth:`CheckpointSlot.end_episode`
   puts it in, and ``on_swap`` tells the owner (who builds the policy and announces it).

Every episode runs on exactly one checkpoint: between ``begin_episode`` and ``end_episode``
nothing is swapped. A refused candidate leaves the one in force untouched, and the outcome
says why. When two candidates are approved before a boundary, the later one goes in force.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint, validate_for_swap


@dataclass(frozen=True)
class Held:
    """A gate's verdict: keep the candidate held (neither in force nor refused)."""

    message: str


Gate = Callable[[LoadedCheckpoint], "str | Held | None"]
"""Decides on a validated candidate: None approves it, a string refuses it with that reason,
a :class:`Held` holds it (a later held candidate replaces an earlier one)."""

Chooser = Callable[[LoadedCheckpoint, LoadedCheckpoint], LoadedCheckpoint]
"""Given (in force, held), returns the checkpoint the next episode runs on; called under the
slot's lock, it must not call back into the slot."""

OnSwap = Callable[[LoadedCheckpoint, LoadedCheckpoint | None], None]
"""Called with (new, previous) when a checkpoint goes in force, under the slot's lock, never
during an episode; it must not call back into the slot. If it raises, the previous checkpoint
stays in force."""


@dataclass(frozen=True)
class StageOutcome:
    """What became of a staged candidate."""

    accepted: bool
    """True when it passed validation and the gate (in force now or from the next episode)."""
    message: str
    """Why it was refused, or where it stands when accepted."""
    checkpoint_id: str
    """The accepted candidate's id; when refused, the id still in force ('' for none)."""
    in_force: bool = False
    """True when it went in force at once (no episode was running)."""
    held: bool = False
    """True when the gate holds it (a trial, or the operator's decision, is pending)."""


def path_problem(path: object) -> str | None:
    """Why ``path`` (a LoadCheckpoint request's or an announcement's) names no checkpoint file.

    Returns a message starting ``path:``, or None for a regular file. Only ``os.stat`` runs
    (it never opens the file, so a FIFO cannot block the caller).
    """
    if not isinstance(path, str):
        return f"path: must be a string, got {type(path).__name__}"
    if not path.strip():
        return f"path: blank ({path!r}); name a checkpoint file"
    if "\x00" in path:
        return f"path: {path!r} holds a NUL character"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"path: checkpoint {path} does not exist"
    except (OSError, ValueError) as exc:
        return f"path: checkpoint {path} cannot be read: {exc}"
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
        return f"path: checkpoint {path} is not a regular file ({kind}): refused"
    return None


class CheckpointSlot:
    """The checkpoint in force and the approved candidate waiting for the episode boundary."""

    def __init__(self, on_swap: OnSwap, gate: Gate | None = None) -> None:
        self._on_swap = on_swap
        self._gate = gate
        # One lock for the slot's state; loading and validating run outside it, so a slow load
        # never delays an episode boundary.
        self._lock = threading.Lock()
        self._active: LoadedCheckpoint | None = None
        self._approved: LoadedCheckpoint | None = None
        self._held: LoadedCheckpoint | None = None
        self._in_episode = False

    @property
    def active(self) -> LoadedCheckpoint | None:
        """Return the checkpoint in force (None before the first one).

        Read without the lock (a reference read is atomic), so callers may read it while
        holding their own locks; during an episode it does not change.
        """
        return self._active

    @property
    def active_id(self) -> str:
        """Return the id of the checkpoint in force ('' for none)."""
        active = self._active
        return active.checkpoint_id if active is not None else ""

    @property
    def held(self) -> LoadedCheckpoint | None:
        """Return the candidate the gate holds (None for none)."""
        return self._held

    def knows(self, checkpoint_id: str) -> bool:
        """Return whether ``checkpoint_id`` is in force, approved and waiting, or held."""
        with self._lock:
            return any(
                c is not None and c.checkpoint_id == checkpoint_id
                for c in (self._active, self._approved, self._held)
            )

    def stage(self, path: str) -> StageOutcome:
        """Load, validate and gate the checkpoint at ``path``; approve it when all pass.

        An approved candidate goes in force at once when no episode runs, else at the next
        episode boundary. Whatever goes wrong (a bad file, an exception in the model) refuses
        the candidate and keeps the checkpoint in force. A path that is blank, holds a NUL
        or is not a regular file is refused before any load (:func:`path_problem`).
        """
        problem = path_problem(path)
        if problem:
            return self._refused(problem)
        active = self._active
        expected = active.config if active is not None else None
        try:
            loaded = load_checkpoint(path, expected_config=expected)
            validate_for_swap(loaded, expected)
        except CheckpointError as exc:
            return self._refused(str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong, the old weights stay
            return self._refused(f"checkpoint {path} could not be loaded: {exc!r}")
        if self._gate is not None:
            try:
                verdict = self._gate(loaded)
            except Exception as exc:  # noqa: BLE001 - a failing gate approves nothing
                return self._refused(
                    f"checkpoint {loaded.checkpoint_id} refused: the gate failed: {exc!r}"
                )
            if isinstance(verdict, Held):
                with self._lock:
                    self._held = loaded
                return StageOutcome(
                    True,
                    f"checkpoint {loaded.checkpoint_id} validated and held: {verdict.message}",
                    loaded.checkpoint_id,
                    held=True,
                )
            if verdict is not None:
                return self._refused(f"checkpoint {loaded.checkpoint_id} refused: {verdict}")
        return self.approve(loaded)

    def approve(self, loaded: LoadedCheckpoint) -> StageOutcome:
        """Approve a validated checkpoint (a promotion, a roll back): in force at the boundary."""
        with self._lock:
            self._approved = loaded
            if not self._in_episode:
                try:
                    self._swap_locked()
                except Exception as exc:  # noqa: BLE001 - the owner could not use it: refuse
                    return self._refused(
                        f"checkpoint {loaded.checkpoint_id} could not be put in use: {exc!r}"
                    )
                return StageOutcome(
                    True, f"checkpoint {loaded.checkpoint_id} in use", loaded.checkpoint_id, True
                )
        return StageOutcome(
            True,
            f"checkpoint {loaded.checkpoint_id} validated; in use from the next episode",
            loaded.checkpoint_id,
        )

    def _refused(self, message: str) -> StageOutcome:
        return StageOutcome(False, message, self.active_id)

    def promote_held(self, checkpoint_id: str) -> StageOutcome | None:
        """Approve the held candidate if it is ``checkpoint_id``; None when it is not held."""
        with self._lock:
            held = self._held
            if held is None or held.checkpoint_id != checkpoint_id:
                return None
            self._held = None
        return self.approve(held)

    def drop_held(self, checkpoint_id: str) -> bool:
        """Drop the held candidate if it is ``checkpoint_id``; return whether it was held."""
        with self._lock:
            if self._held is None or self._held.checkpoint_id != checkpoint_id:
                return False
            self._held = None
            return True

    def begin_episode(self, choose: Chooser | None = None) -> LoadedCheckpoint | None:
        """Put the approved candidate in force, then hold the slot until :meth:`end_episode`.

        Returns the checkpoint the episode runs on: the one in force, or the held candidate
        when ``choose`` picks it (a trial episode). None when there is none: then the slot is
        not held and no episode may run.
        """
        with self._lock:
            self._swap_locked()
            self._in_episode = self._active is not None
            if self._active is not None and self._held is not None and choose is not None:
                return choose(self._active, self._held)
            return self._active

    def end_episode(self) -> None:
        """Release the slot after an episode and put an approved candidate in force."""
        with self._lock:
            self._in_episode = False
            self._swap_locked()

    def _swap_locked(self) -> None:
        """Put the approved candidate in force; the caller holds the lock, no episode runs."""
        loaded, self._approved = self._approved, None
        if loaded is None:
            return
        # In force before on_swap runs, so whoever on_swap wakes sees the new checkpoint.
        previous, self._active = self._active, loaded
        try:
            self._on_swap(loaded, previous)
        except BaseException:
            self._active = previous
            raise
