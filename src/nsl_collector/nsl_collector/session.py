"""The collector's logic without ROS: sessions, per-episode buffering, discarding, bounds.

:class:`Collector` receives serialized messages (CDR bytes, as a raw ROS subscription delivers
them) and writes them into one rosbag2 bag per session through :class:`BagRecorder`. The ROS
node (``collector_node``) only forwards subscriptions and services to it.

Memory is bounded however long it runs:

* steps are buffered per episode until its result arrives, for at most ``max_pending`` episodes
  of at most ``max_steps`` steps each (beyond that the episode is dropped and counted);
* camera frames are never buffered: they go straight into the current MCAP chunk;
* a bag's in-memory index (a few hundred bytes per chunk) is bounded by rolling over to a new
  session bag after ``max_episodes_per_bag`` episodes or ``max_bag_bytes`` bytes;
* the sets of discarded/dropped episode ids and of checkpoints seen are capped.

A session holds the episodes of one task and goes under ``<dataset_root>/<task>/``, the task of
its first episode (``EpisodeResult.task``). When an episode of another task arrives (the world
changed at run time), the open session is closed and the recording goes on in a new session
under the new task, so no bag mixes tasks' episodes and nothing recorded is lost at the switch.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

from nsl_common.names import CAMERA_TOPIC as CAMERA_NAME
from nsl_common.names import bag_topic
from nsl_common.task_names import task_name_problem

from .cdr import CdrError, episode_result, parse_exploration, step_key
from .errors import DatasetError
from .msgtypes import EPISODE_RESULT, RESULT_TOPIC, STEP_TOPIC
from .recorder import BagRecorder

CAMERA_TOPIC = bag_topic(CAMERA_NAME)
IMAGE_TYPE = "sensor_msgs/msg/Image"
_MAX_REMEMBERED = 256  # discarded / dropped episode ids remembered (to ignore their late messages)
_MAX_CHECKPOINTS = 64
MAX_EXPLORATION_SETTINGS = 64
"""Distinct exploration settings a session's metadata lists; episodes with further ones are
only counted (``exploration_unlisted_episodes``), so the metadata stays bounded."""


def software_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("nsl_collector", "nsl_policy", "nsl_msgs", "rosbags", "rclpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class CollectorConfig:
    dataset_root: Path
    task: str
    """Task folder of a session opened before any episode (``start_session``), and of episodes
    whose result names no valid task; otherwise a session goes under its episodes' task."""
    robot: str = "sim"
    namespace: str = ""
    max_pending: int = 8
    """Episodes buffered while awaiting their result; the oldest is dropped beyond this."""
    max_steps: int = 200
    """Steps one episode may buffer; an episode with more is dropped."""
    max_pending_bytes: int = 512 * 1024 * 1024
    """Bytes buffered over all pending episodes; the oldest episodes are dropped beyond this."""
    max_episodes_per_bag: int = 0
    """Roll over to a new session bag after this many episodes (0: never)."""
    max_bag_bytes: int = 0
    """Roll over to a new session bag when its MCAP file reaches this size (0: never)."""
    auto_start: bool = True
    """Open a session when the first complete episode arrives (no start_session call needed)."""
    record_camera: bool = False
    checkpoint: str = ""
    """Policy checkpoint (path) stored in the session metadata, when the launch knows it."""
    fsync: bool = True
    msg_dir: Path | None = None

    def check(self) -> None:
        if self.max_pending < 1:
            raise ValueError(f"max_pending_episodes must be >= 1, got {self.max_pending}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps_per_episode must be >= 1, got {self.max_steps}")
        if self.max_episodes_per_bag < 0 or self.max_bag_bytes < 0:
            raise ValueError(
                "max_episodes_per_bag and max_bag_megabytes must be >= 0 (0: no limit)"
            )
        problem = task_name_problem(self.task)
        if problem is not None:
            raise ValueError(f"task {problem}")


@dataclass
class _Pending:
    steps: list = field(default_factory=list)
    """(timestamp ns, StepRecord CDR bytes) in arrival order."""
    result: tuple | None = None
    """(timestamp ns, EpisodeResult CDR bytes, ResultInfo) once the result has arrived."""
    nbytes: int = 0


class Collector:
    """Thread-safe; ``log(level, text)`` receives what the node should log."""

    def __init__(
        self,
        config: CollectorConfig,
        log: Callable[[str, str], None] | None = None,
        clock_ns: Callable[[], int] | None = None,
    ) -> None:
        config.check()
        self.cfg = config
        self.log = log or (lambda level, text: None)
        self.clock_ns = clock_ns or time.time_ns
        self._lock = threading.RLock()
        self.recorder: BagRecorder | None = None
        self.session_path: Path | None = None
        self.session_task = config.task  # the task of the open session (or of the last one)
        self.latest_task = config.task  # the task of the latest episode: start_session's folder
        self._bad_task = ""  # the last invalid task an episode named (warned about once)
        self._next: dict | None = None  # metadata of the next part after a roll-over
        self.part = 0
        # episode id -> its buffered steps (and result, when that overtook steps), oldest first.
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self._pending_bytes = 0
        self.ignored: OrderedDict[str, str] = (
            OrderedDict()
        )  # episode id -> why (discarded / dropped)
        self.checkpoints: OrderedDict[str, None] = OrderedDict()
        # The open session's exploration settings (canonical JSON -> [setting, episodes]), in
        # the order first seen, and the episodes whose setting is past the list's bound.
        self.explorations: OrderedDict[str, list] = OrderedDict()
        self.unlisted_exploration_episodes = 0
        self.counts = {
            "episodes_written": 0,
            "steps_written": 0,
            "camera_frames": 0,
            "sessions": 0,
            "discarded_episodes": 0,
            "dropped_episodes": 0,
            "dropped_steps": 0,
            "aborted_episodes": 0,
            "bad_messages": 0,
        }

    # ------------------------------------------------------------------ sessions
    def _metadata(self, task: str) -> dict:
        c = self.cfg
        return {
            "task": task,
            "robot": c.robot,
            "sim": c.robot == "sim",
            "namespace": c.namespace,
            "policy_checkpoint": c.checkpoint,
            "record_camera": c.record_camera,
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
            "host": platform.node(),
            "software": software_versions(),
        }

    def _open(self, task: str, extra: dict | None = None) -> Path:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S_%f")
        path = self.cfg.dataset_root / task / f"session_{stamp}"
        meta = self._metadata(task)
        meta.update(extra or {})
        self.recorder = BagRecorder(path, meta, self.cfg.msg_dir, fsync=self.cfg.fsync)
        self.session_path, self.session_task = path, task
        self.checkpoints.clear()
        self.explorations.clear()
        self.unlisted_exploration_episodes = 0
        self.counts["sessions"] += 1
        self.log("info", f"recording session {path}")
        return path

    def start_session(self) -> tuple[bool, str]:
        """Open a new session bag. Refused (False, reason) while one is open."""
        with self._lock:
            if self.recorder is not None:
                return False, f"a session is open already: {self.session_path} (stop it first)"
            self.part, self._next = 0, None
            try:
                return True, str(self._open(self.latest_task))
            except (DatasetError, OSError) as exc:
                return False, f"cannot open a session: {exc}"

    def _close(self, note: str = "closed") -> str:
        rec, path = self.recorder, self.session_path
        if rec is None:
            return ""
        self.recorder = None
        try:
            rec.update_metadata(
                {
                    "ended": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),
                    "checkpoints": list(self.checkpoints),
                }
            )
        finally:
            rec.close()
        self.log("info", f"{note} session {path} with {rec.episodes_written} episodes")
        return str(path)

    def stop_session(self) -> tuple[bool, str]:
        """Close the open session; (True, bag path) or (False, why not)."""
        with self._lock:
            path = self._close()
            if not path and self._next is not None:  # rolled over, next part not opened yet
                path = self._next["continues"]
            self._next = None
            if not path:
                return False, "no session open (no complete episode recorded since the last stop)"
            return True, path

    def discard_episode(self) -> tuple[bool, str]:
        """Drop the episode in flight (the latest one with buffered steps and no result yet).

        Its buffered steps go now, its later steps and result when they arrive.
        """
        with self._lock:
            if not self.pending:
                return False, "no episode in flight (no step buffered since the last result)"
            eid = next(reversed(self.pending))
            ep = self._unpend(eid)
            self._ignore(eid, "discarded")
            self.counts["discarded_episodes"] += 1
            note = f"discarded episode {eid} ({len(ep.steps)} steps buffered)"
            self.log("info", note)
            return True, note

    def close(self) -> str:
        with self._lock:
            return self._close()

    # ------------------------------------------------------------------ messages
    def _ignore(self, eid: str, why: str) -> None:
        self.ignored[eid] = why
        self.ignored.move_to_end(eid)
        while len(self.ignored) > _MAX_REMEMBERED:
            self.ignored.popitem(last=False)

    def _drop(self, eid: str, n: int, why: str) -> None:
        self._ignore(eid, "dropped")
        self.counts["dropped_episodes"] += 1
        self.counts["dropped_steps"] += n
        self.log("warn", f"dropping episode {eid} ({n} steps buffered): {why}")

    def on_step(self, raw: bytes | memoryview, stamp_ns: int | None = None) -> str:
        """Buffer a StepRecord and return what happened.

        One of: buffered, written (it completed an episode whose result came first), ignored,
        dropped, bad.
        """
        try:
            key = step_key(raw)
        except CdrError as exc:
            self.counts["bad_messages"] += 1
            self.log("error", f"unreadable StepRecord ({exc}); ignored")
            return "bad"
        with self._lock:
            eid = key.episode_id
            if eid in self.ignored:
                if self.ignored[eid] == "dropped":
                    self.counts["dropped_steps"] += 1
                return "ignored"
            ep = self.pending.get(eid)
            if ep is None:
                ep = self.pending[eid] = _Pending()
            if len(ep.steps) >= self.cfg.max_steps:
                self._unpend(eid)
                self._drop(
                    eid,
                    len(ep.steps) + 1,
                    f"more than max_steps_per_episode={self.cfg.max_steps} steps",
                )
                return "dropped"
            ep.steps.append((self.clock_ns() if stamp_ns is None else stamp_ns, bytes(raw)))
            ep.nbytes += len(raw)
            self._pending_bytes += len(raw)
            if ep.result is not None:  # the result overtook the last steps (separate topics)
                return self._try_finish(eid, ep)
            self._bound_pending()
            return "buffered"

    def _unpend(self, eid: str) -> "_Pending | None":
        ep = self.pending.pop(eid, None)
        if ep is not None:
            self._pending_bytes -= ep.nbytes
        return ep

    def _bound_pending(self) -> None:
        # Episodes holding steps count against max_pending; results waiting for steps still on
        # their way (a few hundred bytes each) only against a looser cap.
        while (
            sum(1 for e in self.pending.values() if e.steps) > self.cfg.max_pending
            or len(self.pending) > 8 * self.cfg.max_pending
            or (len(self.pending) > 1 and self._pending_bytes > self.cfg.max_pending_bytes)
        ):
            old, ep = self.pending.popitem(last=False)
            why = (
                f"{len(ep.steps)} of its {ep.result[2].num_steps} steps arrived"
                if ep.result is not None
                else "its result never arrived"
            )
            self._pending_bytes -= ep.nbytes
            self._drop(
                old,
                len(ep.steps),
                f"{why} (more than max_pending_episodes={self.cfg.max_pending} "
                f"episodes or max_pending_megabytes={self.cfg.max_pending_bytes >> 20} waiting)",
            )

    def on_result(self, raw: bytes | memoryview, stamp_ns: int | None = None) -> str:
        """Handle an EpisodeResult and return what happened.

        One of: written, waiting (for steps still on their way), aborted, discarded, dropped,
        mismatch, error, bad.
        """
        try:
            res = episode_result(raw)
        except CdrError as exc:
            self.counts["bad_messages"] += 1
            self.log("error", f"unreadable EpisodeResult ({exc}); ignored")
            return "bad"
        with self._lock:
            eid = res.episode_id
            if eid in self.ignored:
                self._unpend(eid)
                return self.ignored[eid]
            if not res.complete:
                self._unpend(eid)
                self.counts["aborted_episodes"] += 1
                self.log("warn", f"episode {eid} aborted ({res.message}); not recorded")
                return "aborted"
            ep = self.pending.get(eid)
            if ep is None:
                ep = self.pending[eid] = _Pending()
            ep.result = (self.clock_ns() if stamp_ns is None else stamp_ns, bytes(raw), res)
            status = self._try_finish(eid, ep)
            if status == "waiting":
                self._bound_pending()
            return status

    def _try_finish(self, eid: str, ep: "_Pending") -> str:
        stamp, raw, res = ep.result
        if len(ep.steps) < res.num_steps:
            return "waiting"
        self._unpend(eid)
        if len(ep.steps) != res.num_steps:
            self._drop(
                eid, len(ep.steps), f"{len(ep.steps)} step records for {res.num_steps} steps"
            )
            return "mismatch"
        steps = ep.steps
        task = self._task_of(res)
        self.latest_task = task
        switched = False
        if task != self.session_task and (self.recorder is not None or self._next is not None):
            # One task per session: the recording goes on under the new task.
            self._close(f"task changed to {task}: closed")
            self._next, switched = None, True
        if self.recorder is None and self._next is not None:
            self._reopen()
        if self.recorder is None:
            if not self.cfg.auto_start and not switched:
                self._drop(
                    eid, len(steps), "no session open (auto_start is false; call start_session)"
                )
                return "dropped"
            self.part = 0
            try:
                self._open(task)
            except (DatasetError, OSError) as exc:
                self._drop(eid, len(steps), f"cannot open a session: {exc}")
                return "error"
        rec = self.recorder
        if res.checkpoint_id and res.checkpoint_id not in self.checkpoints:
            if not self.checkpoints:
                rec.update_metadata({"checkpoint_id": res.checkpoint_id})
            self.checkpoints[res.checkpoint_id] = None
            while len(self.checkpoints) > _MAX_CHECKPOINTS:
                self.checkpoints.popitem(last=False)
        rec.write_episode_raw(steps, (stamp, raw), metadata=self._count_exploration(res))
        self.counts["episodes_written"] += 1
        self.counts["steps_written"] += len(steps)
        self._maybe_roll_over()
        return "written"

    def _count_exploration(self, res) -> dict:
        """Count episode ``res``'s exploration setting; return the session metadata saying so.

        ``exploration_settings``: each distinct setting of the session with its episodes, in
        the order first seen (the exploration of one episode is also in its EpisodeResult).
        """
        setting = parse_exploration(res.exploration)
        key = json.dumps(setting, sort_keys=True)
        if key in self.explorations:
            self.explorations[key][1] += 1
        elif len(self.explorations) < MAX_EXPLORATION_SETTINGS:
            self.explorations[key] = [setting, 1]
        else:
            self.unlisted_exploration_episodes += 1
        meta: dict = {
            "exploration_settings": [
                {"exploration": setting, "episodes": n}
                for setting, n in self.explorations.values()
            ]
        }
        if self.unlisted_exploration_episodes:
            meta["exploration_unlisted_episodes"] = self.unlisted_exploration_episodes
        return meta

    def on_camera(self, raw: bytes | memoryview, stamp_ns: int | None = None) -> bool:
        """Write a camera frame into the open session (not buffered; not flushed on its own)."""
        with self._lock:
            if self.recorder is None and self._next is not None:
                self._reopen()
            if self.recorder is None:
                return False
            self.recorder.write_raw(
                CAMERA_TOPIC,
                IMAGE_TYPE,
                self.clock_ns() if stamp_ns is None else stamp_ns,
                raw,
                flush=False,
            )
            self.counts["camera_frames"] += 1
            self._maybe_roll_over()
            return True

    def _reopen(self) -> None:
        extra, self._next = self._next, None
        self._open(self.session_task, extra)

    def _task_of(self, res) -> str:
        """Return the task folder of an episode: its own task, or the configured one."""
        problem = task_name_problem(res.task)
        if problem is None:
            return res.task
        if res.task and res.task != self._bad_task:
            self._bad_task = res.task
            self.log(
                "warn",
                f"episode {res.episode_id} names task {res.task!r}, which {problem}; "
                f"recorded under {self.cfg.task}",
            )
        return self.cfg.task

    def _maybe_roll_over(self) -> None:
        rec, c = self.recorder, self.cfg
        if rec is None:
            return
        full = (c.max_episodes_per_bag and rec.episodes_written >= c.max_episodes_per_bag) or (
            c.max_bag_bytes and rec.bytes_written >= c.max_bag_bytes
        )
        if full:  # the next bag opens with the next message, so no empty bag is left behind
            previous = self._close("rolled over")
            self.part += 1
            self._next = {"continues": previous, "part": self.part}

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        with self._lock:
            return {
                "session": str(self.session_path) if self.recorder is not None else "",
                "session_task": self.session_task if self.recorder is not None else "",
                "session_episodes": self.recorder.episodes_written
                if self.recorder is not None
                else 0,
                "pending_episodes": len(self.pending),
                "pending_steps": sum(len(e.steps) for e in self.pending.values()),
                "pending_bytes": self._pending_bytes,
                **self.counts,
            }


__all__ = [
    "CAMERA_TOPIC",
    "Collector",
    "CollectorConfig",
    "software_versions",
    "EPISODE_RESULT",
    "RESULT_TOPIC",
    "STEP_TOPIC",
]
