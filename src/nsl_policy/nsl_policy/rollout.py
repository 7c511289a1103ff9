"""The rollout gate: which validated checkpoint goes in force, on what evidence, and roll back.

ROS-free; the policy node wraps it. It sits in :class:`nsl_policy.checkpoint_slot.CheckpointSlot`
between "validated" and "in force" (the slot's ``gate``) and decides in one of three modes,
settable at run time:

- ``immediate``: every validated checkpoint goes in force at the next episode boundary;
- ``manual``: a validated checkpoint is held until the operator promotes or rejects it
  (:meth:`Rollout.promote`, :meth:`Rollout.reject`); the incumbent keeps running;
- ``trial``: the candidate is held and episodes alternate between it and the incumbent on the
  live task; :class:`nsl_policy.sequential.TrialTest` decides promote or reject.

A promoted checkpoint (in any mode) is then watched (:class:`nsl_policy.sequential.WatchTest`)
against the incumbent's record for ``watch_episodes`` episodes and rolled back by itself when
its success falls significantly below it.

Records are kept per checkpoint and task (the world an episode ran in), and a candidate or a
watched checkpoint is compared only on the task its episodes run on: a trial's pairs and the
incumbent record that sharpens it are of one task, and a watch uses the previous checkpoint's
record on the watched episodes' task. A new task (from the next episode after the policy's
``task`` changes) starts a trial afresh on it and re-bases the watch on the previous
checkpoint's record there; without a record of at least :data:`MIN_RECORD` episodes on it the
checkpoint is not watched (``unwatched`` in :meth:`Rollout.status` says why), and a trial
decision's reason says when the incumbent had no record on the task.

Every decision (:class:`Decision`) carries its evidence and reason; it goes to ``on_decision``
(the node publishes and logs it) and to the checkpoint's lineage, a JSON list beside the
checkpoint file (``<file>.rollout.json``).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .checkpoint import LoadedCheckpoint
from .checkpoint_slot import CheckpointSlot, Held
from .sequential import CONTINUE, PROMOTE, REJECT, TrialSettings, TrialTest, WatchTest

MODES = ("immediate", "manual", "trial")
ROLLBACK = "rollback"
MIN_RECORD = 10
"""Complete episodes an incumbent needs before a promoted successor is watched against it:
fewer give a reference rate too rough to call a fall significant."""


def lineage_path(checkpoint_path: str | Path) -> Path:
    """Return the decision record file that sits beside a checkpoint."""
    return Path(f"{checkpoint_path}.rollout.json")


@dataclass(frozen=True)
class Decision:
    """One rollout decision with its evidence, as published, logged and recorded."""

    decision: str
    """``promote``, ``reject`` or ``rollback``."""
    mode: str
    candidate_id: str
    """The checkpoint decided on (for a roll back: the promoted one that is rolled back)."""
    incumbent_id: str
    """The checkpoint it was compared with (for a roll back: the one restored)."""
    reason: str
    evidence: dict = field(default_factory=dict)
    trial_id: str = ""
    stamp: float = field(default_factory=time.time)
    """Seconds since the epoch."""

    def to_dict(self) -> dict:
        """Return the decision as a JSON-able dict."""
        return asdict(self)

    def summary(self) -> str:
        """Return one log line: what, which checkpoints, the counts, why."""
        counts = ""
        cand, inc = self.evidence.get("candidate"), self.evidence.get("incumbent")
        if cand and inc:
            counts = (
                f" ({cand['successes']}/{cand['episodes']} vs {inc['successes']}/"
                f"{inc['episodes']}, log LR {self.evidence.get('log_likelihood_ratio')})"
            )
        return (
            f"rollout {self.mode}: {self.decision} {self.candidate_id} against "
            f"{self.incumbent_id or 'none'}{counts}: {self.reason}"
        )


def append_lineage(checkpoint_path: str | Path, decision: Decision) -> Path:
    """Append ``decision`` to the record beside the checkpoint (atomic replace); return it."""
    path = lineage_path(checkpoint_path)
    try:
        records = json.loads(path.read_text())
        if not isinstance(records, list):
            records = [records]
    except (OSError, ValueError):
        records = []
    records.append(decision.to_dict())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        json.dump(records, out, indent=1)
    os.replace(tmp, path)
    return path


@dataclass
class Record:
    """Complete episodes of one checkpoint on one task since this node started."""

    successes: int = 0
    episodes: int = 0

    @property
    def rate(self) -> float:
        """Return the success rate (0 before any episode)."""
        return self.successes / self.episodes if self.episodes else 0.0


@dataclass
class _Trial:
    candidate: LoadedCheckpoint
    incumbent_id: str
    task: str
    """The task its episodes are paired on (and the incumbent's record is taken from)."""
    test: TrialTest
    trial_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


@dataclass
class _Watch:
    promoted_id: str
    previous: LoadedCheckpoint
    task: str
    """The task it watches on (the previous checkpoint's record on it is the reference)."""
    test: WatchTest | None
    """None: the previous checkpoint has too short a record on ``task`` (``unwatched``)."""
    unwatched: str = ""


class Rollout:
    """The gate for a :class:`CheckpointSlot` (see the module doc); thread-safe.

    Lock order: the slot's lock, then this one (the slot calls :meth:`gate`, :meth:`choose`
    and, through the owner's ``on_swap``, :meth:`in_force`); this class calls the slot only
    with its own lock released.
    """

    def __init__(
        self,
        mode: str = "trial",
        settings: TrialSettings | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        record_lineage: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"rollout mode must be one of {', '.join(MODES)} (got {mode!r})")
        self.mode = mode
        self.settings = settings or TrialSettings()
        self.on_decision = on_decision
        """Called with every decision after it is carried out (the node publishes and logs it)."""
        self._record_lineage = record_lineage
        self._lock = threading.Lock()
        self._slot: CheckpointSlot | None = None
        self._records: dict[tuple[str, str], Record] = {}  # (checkpoint id, task) -> record
        self._task = ""  # the latest episode's task: a new trial or watch compares on it
        self._trial: _Trial | None = None
        self._watch: _Watch | None = None
        self._active: LoadedCheckpoint | None = None
        self._rejected: dict[str, str] = {}  # id -> reason, so a re-announcement is not retried
        self._restoring = ""  # the id a roll back puts in force: it is not watched
        self.decisions: list[Decision] = []

    def attach(self, slot: CheckpointSlot) -> None:
        """Use ``slot`` for promotions, rejections and roll backs (its gate is :meth:`gate`)."""
        self._slot = slot

    # ---- called by the slot ---------------------------------------------------------------
    def gate(self, loaded: LoadedCheckpoint) -> str | Held | None:
        """Decide on a validated candidate: approve (immediate, first one), hold, or refuse."""
        superseded = None
        with self._lock:
            if self._active is None or self.mode == "immediate":
                return None
            if loaded.checkpoint_id == self._active.checkpoint_id:
                return "already in force"
            if self.mode == "trial" and loaded.checkpoint_id in self._rejected:
                return f"rejected earlier ({self._rejected[loaded.checkpoint_id]})"
            if self._trial is not None:
                superseded = self._trial
            self._trial = None
            if self.mode == "trial":
                self._trial = self._new_trial(loaded, self._active.checkpoint_id, self._task)
        if superseded is not None:
            self._emit(
                self._trial_decision(
                    superseded, REJECT, f"superseded by checkpoint {loaded.checkpoint_id}"
                ),
                superseded.candidate.path,
            )
        if self.mode == "trial":
            return Held("on trial against the incumbent")
        return Held("waiting for the operator (manual mode)")

    def choose(self, active: LoadedCheckpoint, held: LoadedCheckpoint) -> LoadedCheckpoint:
        """Return the checkpoint the next episode runs on (the held candidate on its turn)."""
        with self._lock:
            trial = self._trial
            if (
                self.mode == "trial"
                and trial is not None
                and trial.candidate.checkpoint_id == held.checkpoint_id
                and trial.incumbent_id == active.checkpoint_id
                and trial.test.next_is_candidate()
            ):
                return held
            return active

    def in_force(self, loaded: LoadedCheckpoint, previous: LoadedCheckpoint | None) -> None:
        """Note a checkpoint going in force (from the owner's ``on_swap``); start its watch."""
        with self._lock:
            self._active = loaded
            restoring, self._restoring = loaded.checkpoint_id == self._restoring, ""
            self._watch = None
            if previous is None or restoring or self.settings.watch_episodes <= 0:
                return
            self._watch = _Watch(loaded.checkpoint_id, previous, self._task, None)
            self._base_watch(self._watch, self._task)

    def _new_trial(self, candidate: LoadedCheckpoint, incumbent_id: str, task: str) -> _Trial:
        """Return a trial of ``candidate`` on ``task``, with the incumbent's record there."""
        record = self._records.get((incumbent_id, task), Record())
        return _Trial(
            candidate,
            incumbent_id,
            task,
            TrialTest(self.settings, record.successes, record.episodes),
        )

    def _base_watch(self, watch: _Watch, task: str) -> None:
        """Watch on ``task`` against the previous checkpoint's record there (none if too short)."""
        record = self._records.get((watch.previous.checkpoint_id, task), Record())
        watch.task = task
        if record.episodes >= MIN_RECORD:
            watch.test, watch.unwatched = WatchTest(record.rate, self.settings), ""
        else:
            watch.test = None
            watch.unwatched = (
                f"{watch.promoted_id} is not watched on task {task!r}: "
                f"{watch.previous.checkpoint_id} has {record.episodes} complete episodes on it "
                f"(a watch needs {MIN_RECORD})"
            )

    # ---- episodes -------------------------------------------------------------------------
    def episode_role(self, checkpoint_id: str, task: str) -> dict:
        """Return the rollout tag of an episode on ``checkpoint_id`` and ``task`` as it starts.

        The tag goes into its result. A task other than the last episode's starts the trial
        afresh on it and re-bases the watch (module doc).
        """
        with self._lock:
            self._task = task
            trial = self._trial
            if trial is not None and trial.task != task:
                # Pairs compare two checkpoints in one world: the new world starts a new trial.
                trial = self._trial = self._new_trial(trial.candidate, trial.incumbent_id, task)
            watch = self._watch
            if watch is not None and watch.task != task:
                self._base_watch(watch, task)
            tag = {"mode": self.mode, "role": "in_force"}
            if trial is not None and checkpoint_id == trial.candidate.checkpoint_id:
                tag.update(role="candidate", trial_id=trial.trial_id)
            elif trial is not None and checkpoint_id == trial.incumbent_id:
                tag.update(role="incumbent", trial_id=trial.trial_id)
            elif (
                watch is not None and watch.test is not None and checkpoint_id == watch.promoted_id
            ):
                tag.update(role="watched")
            return tag

    def episode_done(
        self, checkpoint_id: str, task: str, tag: dict, success: bool, complete: bool
    ) -> list[Decision]:
        """Count an episode on ``task`` (aborted ones are not evidence); apply its decisions.

        ``tag`` is what :meth:`episode_role` returned as the episode started; returns the
        decisions it concluded, carried out.
        """
        if not complete:
            return []
        decided: list[tuple[Decision, LoadedCheckpoint | None]] = []
        with self._lock:
            record = self._records.setdefault((checkpoint_id, task), Record())
            record.episodes += 1
            record.successes += int(success)
            trial = self._trial
            if trial is not None and tag.get("trial_id") == trial.trial_id and task == trial.task:
                outcome = trial.test.add(tag.get("role") == "candidate", success)
                if outcome != CONTINUE:
                    self._trial = None
                    reason = trial.test.reason
                    if trial.test.prior_episodes == 0:
                        reason += (
                            f" (the incumbent {trial.incumbent_id} had no record on task "
                            f"{trial.task!r})"
                        )
                    decided.append((self._trial_decision(trial, outcome, reason), None))
            watch = self._watch
            if (
                watch is not None
                and watch.test is not None
                and checkpoint_id == watch.promoted_id
                and task == watch.task
            ):
                outcome = watch.test.add(success)
                if outcome == ROLLBACK:
                    reason = (
                        f"success {watch.test.successes}/{watch.test.episodes} on task {task!r} "
                        f"fell significantly below {watch.previous.checkpoint_id}'s record "
                        f"{watch.test.reference_rate:.3f} on it"
                    )
                    decided.append((self._rollback_decision(watch, reason), watch.previous))
                if outcome != CONTINUE:
                    self._watch = None
        return [self._apply(decision, restore) for decision, restore in decided]

    # ---- operator -------------------------------------------------------------------------
    def held_candidate(self) -> LoadedCheckpoint | None:
        """Return the held candidate (manual or trial), if any."""
        return self._slot.held if self._slot is not None else None

    def promote(self, checkpoint_id: str = "", reason: str = "") -> Decision:
        """Promote the held candidate (``checkpoint_id``: must be it; empty: whichever)."""
        return self._operator(PROMOTE, checkpoint_id, reason or "promoted by the operator")

    def reject(self, checkpoint_id: str = "", reason: str = "") -> Decision:
        """Reject the held candidate (``checkpoint_id``: must be it; empty: whichever)."""
        return self._operator(REJECT, checkpoint_id, reason or "rejected by the operator")

    def _operator(self, decision: str, checkpoint_id: str, reason: str) -> Decision:
        held = self.held_candidate()
        if held is None or (checkpoint_id and held.checkpoint_id != checkpoint_id):
            raise LookupError(
                f"no held candidate {checkpoint_id}".rstrip()
                + (f" (held: {held.checkpoint_id})" if held is not None else "")
            )
        with self._lock:
            trial, self._trial = self._trial, None
            incumbent = self._active.checkpoint_id if self._active is not None else ""
        if trial is not None and trial.candidate.checkpoint_id == held.checkpoint_id:
            result = self._trial_decision(trial, decision, reason)
        else:
            result = Decision(decision, self.mode, held.checkpoint_id, incumbent, reason)
        return self._apply(result)

    def set_mode(self, mode: str) -> list[Decision]:
        """Change the mode; a held candidate follows it (immediate promotes it, trial tests it)."""
        if mode not in MODES:
            raise ValueError(f"rollout mode must be one of {', '.join(MODES)} (got {mode!r})")
        with self._lock:
            old, self.mode = self.mode, mode
        held = self.held_candidate()
        if held is None or old == mode:
            return []
        if mode == "immediate":
            return [self.promote(held.checkpoint_id, "mode set to immediate")]
        with self._lock:
            active = self._active
            if mode == "manual":
                self._trial = None  # its counts stay in the records; the operator decides
            elif active is not None:
                self._trial = self._new_trial(held, active.checkpoint_id, self._task)
        return []

    # ---- state ----------------------------------------------------------------------------
    def status(self) -> dict:
        """Return the mode, records, trial progress and watch, as the monitor reports them.

        ``records`` maps checkpoint id, then task, to its counts; ``watch`` is None when
        nothing is watched, and ``unwatched`` then says why a swapped-in checkpoint is not.
        """
        with self._lock:
            records: dict[str, dict[str, dict]] = {}
            for (checkpoint_id, task), record in self._records.items():
                records.setdefault(checkpoint_id, {})[task] = asdict(record)
            watch = self._watch
            status = {
                "mode": self.mode,
                "in_force": self._active.checkpoint_id if self._active is not None else "",
                "records": records,
                "trial": None,
                "watch": None,
                "unwatched": watch.unwatched if watch is not None else "",
            }
            if self._trial is not None:
                status["trial"] = {
                    "trial_id": self._trial.trial_id,
                    "candidate_id": self._trial.candidate.checkpoint_id,
                    "incumbent_id": self._trial.incumbent_id,
                    "task": self._trial.task,
                    **self._trial.test.evidence(),
                }
            if watch is not None and watch.test is not None:
                status["watch"] = {
                    "promoted_id": watch.promoted_id,
                    "previous_id": watch.previous.checkpoint_id,
                    "task": watch.task,
                    **watch.test.evidence(),
                }
            return status

    # ---- decisions ------------------------------------------------------------------------
    def _trial_decision(self, trial: _Trial, decision: str, reason: str) -> Decision:
        return Decision(
            decision,
            self.mode,
            trial.candidate.checkpoint_id,
            trial.incumbent_id,
            reason,
            {**trial.test.evidence(), "task": trial.task},
            trial.trial_id,
        )

    def _rollback_decision(self, watch: _Watch, reason: str) -> Decision:
        return Decision(
            ROLLBACK,
            self.mode,
            watch.promoted_id,
            watch.previous.checkpoint_id,
            reason,
            {**watch.test.evidence(), "task": watch.task},
        )

    def _apply(self, decision: Decision, restore: LoadedCheckpoint | None = None) -> Decision:
        """Carry out a decision on the slot, then record and announce it (no lock held)."""
        slot = self._slot
        path = ""
        if decision.decision == PROMOTE:
            held = slot.held if slot is not None else None
            path = held.path if held is not None else ""
            if slot is not None:
                slot.promote_held(decision.candidate_id)
        elif decision.decision == REJECT:
            held = slot.held if slot is not None else None
            path = held.path if held is not None else ""
            if slot is not None:
                slot.drop_held(decision.candidate_id)
            with self._lock:
                self._rejected[decision.candidate_id] = decision.reason
        elif decision.decision == ROLLBACK and restore is not None:
            active = slot.active if slot is not None else None
            path = active.path if active is not None else ""
            with self._lock:
                self._rejected[decision.candidate_id] = decision.reason
                self._restoring = restore.checkpoint_id
            if slot is not None:
                slot.approve(restore)
        self._emit(decision, path)
        return decision

    def _emit(self, decision: Decision, checkpoint_path: str) -> None:
        with self._lock:
            self.decisions.append(decision)
        if self._record_lineage and checkpoint_path:
            try:
                append_lineage(checkpoint_path, decision)
            except OSError:
                pass  # a read-only checkpoint folder: the topic, log and bag still have it
        if self.on_decision is not None:
            self.on_decision(decision)
