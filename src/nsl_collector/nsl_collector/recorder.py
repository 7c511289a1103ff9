"""Writing grasp episodes to a rosbag2 bag (MCAP storage) with rosbags, crash-safely.

Crash-safety design
-------------------
rosbags' MCAP writer keeps the current chunk in memory until it reaches 1 MiB and writes the
summary, footer and metadata.yaml only on ``close()``; its file object is buffered and never
flushed before that. A process killed mid-recording would therefore lose everything since the
last 1 MiB boundary and leave a file that rosbags cannot open. The recorder adds:

* a chunk boundary + ``flush()`` after every EpisodeResult (``write_raw``) and after every whole
  episode (``write_episode`` / ``write_episode_raw``: steps then result in one chunk), with
  ``os.fsync`` by default, so
  every episode whose result was written lies in complete MCAP chunk records in the OS;
* by default also a chunk boundary + flush after every StepRecord (``flush_steps``), so the
  steps of the episode in flight reach the file too and a reader can *report* that episode as
  incomplete instead of never seeing it;
* the session metadata in a sidecar ``nsl_session.yaml`` written (atomically) when the bag is
  opened, after every episode (so its ``episodes_written`` and ``steps_written`` count what
  a crash leaves readable, the episode in flight aside), and with the final counts at close;
* CRCs on every chunk, the data section and the summary (:mod:`nsl_collector.mcap_write`), so
  bytes changed after writing are found by the reader and ``nsl data verify``;
* writes only append; no file is ever rewritten in place except metadata.yaml/nsl_session.yaml,
  which are replaced atomically (write temp file, rename).

The reader (:mod:`nsl_collector.reader`) treats a bag without metadata.yaml as an unclosed
recording: it scans the MCAP records up to the truncation point, discarding a partial last
record, and reports episodes without an EpisodeResult.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from nsl_policy.action_space import ActionSpace
from rosbags.rosbag2 import StoragePlugin, Writer

from .errors import DatasetError
from .mcap_write import use_crc_writer
from .msgtypes import EPISODE_RESULT, RESULT_TOPIC, STEP_RECORD, STEP_TOPIC, writer_typestore

SESSION_FILE = "nsl_session.yaml"
FORMAT = "nsl-grasp-bag"
FORMAT_VERSION = 1


def _pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _normalise_type(msgtype: str) -> str:
    parts = msgtype.split("/")
    if len(parts) == 2:  # "nsl_msgs/StepRecord"
        return f"{parts[0]}/msg/{parts[1]}"
    return msgtype


@dataclass
class StepData:
    """One control step, mirroring nsl_msgs/StepRecord (for ROS-free producers)."""

    image: np.ndarray
    """(H, W, 3) uint8 RGB observation (stored as rgb8)."""
    gripper_closed: bool
    gripper_height: float
    """Metres above the tray floor."""
    step_fraction: float
    translation: Sequence[float]
    """Gripper displacement (x, y, z), metres (physical, as sent to the arm)."""
    rotation: float
    """Radians about the vertical axis."""
    close_gripper: bool
    terminate: bool
    q_value: float = math.nan
    exploratory: bool = False
    stamp_ns: int | None = None
    """When the action was chosen; default: the time of writing."""
    image_stamp_ns: int | None = None
    """Capture time of the image; default: ``stamp_ns``."""
    checkpoint_id: str | None = None
    """Default: the episode's checkpoint id."""

    @classmethod
    def from_vector(
        cls,
        image: np.ndarray,
        state: Sequence[float],
        action: Sequence[float],
        action_space=None,
        **kwargs: Any,
    ) -> "StepData":
        """Build a step from the policy's view.

        ``state``: (closed, height, step fraction); ``action``: a normalised action vector
        (converted with ``nsl_policy.action_space.ActionSpace``).
        """
        cmd = (action_space or ActionSpace()).to_command(np.asarray(action))
        s = np.asarray(state, dtype=np.float64).reshape(-1)
        if s.shape != (3,):
            raise ValueError(f"state must have 3 components, got shape {s.shape}")
        return cls(
            image=image,
            gripper_closed=bool(s[0] > 0.5),
            gripper_height=float(s[1]),
            step_fraction=float(s[2]),
            translation=cmd.translation,
            rotation=cmd.rotation,
            close_gripper=cmd.close_gripper,
            terminate=cmd.terminate,
            **kwargs,
        )


@dataclass
class EpisodeData:
    """Outcome of one episode, mirroring nsl_msgs/EpisodeResult."""

    episode_id: str
    task: str
    seed: int
    success: bool
    checkpoint_id: str = ""
    exploration: dict | str = field(default_factory=dict)
    """Exploration settings; a dict is stored as JSON."""
    complete: bool = True
    message: str = ""
    num_steps: int | None = None
    """Default: the number of steps written with it."""
    stamp_ns: int | None = None
    """When the episode ended; default: the time of writing."""
    frame_id: str = ""
    """The robot's namespace or name (header.frame_id of every message)."""
    rollout: dict | str = ""
    """Rollout tag (mode, role, trial id, decisions); a dict is stored as JSON. Left out when the
    message definitions in use predate the field."""


class BagRecorder:
    """One rosbag2 bag (directory with metadata.yaml + one .mcap) per recording session.

    ``metadata``: session metadata (task, robot/sim, checkpoint, exploration, software
    versions...); any YAML/JSON-serialisable dict. Stored in ``nsl_session.yaml`` in the bag
    directory and in metadata.yaml's ``custom_data`` (key ``nsl_session``, JSON).

    ``flush_steps``: flush after every StepRecord so an episode in flight at a crash is visible
    (and reported) to readers; ``fsync``: fsync the file after every EpisodeResult.
    Thread-safe.
    """

    def __init__(
        self,
        path: str | Path,
        metadata: dict,
        msg_dir: str | Path | None = None,
        *,
        flush_steps: bool = True,
        fsync: bool = True,
    ) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise DatasetError(
                f"{self.path}: exists already; a bag is never overwritten or appended to"
            )
        if not isinstance(metadata, dict):
            raise DatasetError(
                f"{self.path}: session metadata must be a dict, got {type(metadata).__name__}"
            )
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"{self.path}: session metadata is not JSON-serialisable: {exc}"
            ) from exc
        self.metadata = dict(metadata)
        self.flush_steps = flush_steps
        self.fsync = fsync
        self._typestore = writer_typestore(msg_dir)
        self._lock = threading.Lock()
        self._connections: dict[tuple[str, str], Any] = {}
        self.episodes_written = 0
        self.steps_written = 0
        self.messages_written = 0
        self._created_ns = time.time_ns()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        use_crc_writer(self._writer)
        self._writer.open()
        storage = self._writer.storage
        if not all(hasattr(storage, a) for a in ("close_chunk", "chunk", "bio")) or not hasattr(
            storage.chunk, "msgs"
        ):
            self._writer.abort()
            raise DatasetError(
                f"{self.path}: this rosbags version ({_pkg_version('rosbags')}) has an MCAP "
                "writer without the chunk interface the crash-safe recorder relies on (tested "
                "with rosbags 0.11.x)"
            )
        self._storage = storage
        storage.bio.flush()  # the MCAP magic + header reach the file at once
        self._write_session("recording")
        self._writer.set_custom_data("nsl_session", json.dumps(self.metadata, sort_keys=True))
        self._closed = False
        for topic, msgtype in ((STEP_TOPIC, STEP_RECORD), (RESULT_TOPIC, EPISODE_RESULT)):
            self._connection(topic, msgtype)
        # The definitions get a chunk of their own, so damage to one episode's chunk cannot
        # take the message definitions (and with them every episode) of an unclosed bag along.
        storage.close_chunk()
        storage.bio.flush()

    # ------------------------------------------------------------------ helpers
    @property
    def mcap_path(self) -> Path:
        return Path(self._storage.path)

    def _write_session(self, state: str) -> None:
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "state": state,
            "created_unix_ns": self._created_ns,
            "storage_file": self.path.name + ".mcap",
            "writer": {
                "rosbags": _pkg_version("rosbags"),
                "nsl_collector": _pkg_version("nsl_collector"),
            },
            "episodes_written": self.episodes_written,
            "steps_written": self.steps_written,
            "session": self.metadata,
        }
        target = self.path / SESSION_FILE
        tmp = target.with_suffix(".yaml.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, target)

    def _connection(self, topic: str, msgtype: str):
        key = (topic, msgtype)
        conn = self._connections.get(key)
        if conn is None:
            if msgtype not in self._typestore.fielddefs:
                raise DatasetError(
                    f"{self.path}: unknown message type {msgtype!r} (not in the typestore)"
                )
            conn = self._writer.add_connection(topic, msgtype, typestore=self._typestore)
            self._connections[key] = conn
        return conn

    def _end_chunk(self, fsync: bool) -> None:
        st = self._storage
        if st.chunk.msgs:
            st.close_chunk()
        st.bio.flush()
        if fsync:
            os.fsync(st.bio.fileno())

    def _check_open(self) -> None:
        if self._closed:
            raise DatasetError(f"{self.path}: recorder is closed")

    # ------------------------------------------------------------------ writing
    def write_raw(
        self,
        topic: str,
        msgtype: str,
        timestamp_ns: int,
        cdr_bytes: bytes | memoryview,
        *,
        flush: bool | None = None,
    ) -> None:
        """Write one serialized message (CDR, e.g. from ``rclpy.serialize_message``).

        An EpisodeResult ends an MCAP chunk and is flushed (and fsynced) at once.

        ``flush``: end the chunk and flush after this message (default: ``flush_steps`` for
        other types). ``False`` lets messages of a side stream (the raw camera images) collect
        in the current chunk, which reaches the file at the next flush or at 1 MiB.
        """
        msgtype = _normalise_type(msgtype)
        with self._lock:
            self._check_open()
            conn = self._connection(topic, msgtype)
            self._writer.write(conn, int(timestamp_ns), cdr_bytes)
            self.messages_written += 1
            if msgtype == EPISODE_RESULT:
                self.episodes_written += 1
                self._end_chunk(self.fsync)
                self._write_session("recording")
            else:
                if msgtype == STEP_RECORD:
                    self.steps_written += 1
                if self.flush_steps if flush is None else flush:
                    self._end_chunk(False)

    def _check_serialisable(self, values: dict) -> None:
        """Raise DatasetError unless ``values`` can be stored as session metadata (JSON)."""
        try:
            json.dumps(values)
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"{self.path}: session metadata is not JSON-serialisable: {exc}"
            ) from exc

    def update_metadata(self, values: dict) -> None:
        """Merge ``values`` into the session metadata.

        The sidecar is rewritten now, metadata.yaml's custom_data at close.
        """
        self._check_serialisable(values)
        with self._lock:
            self._check_open()
            self.metadata.update(values)
            self._writer.set_custom_data("nsl_session", json.dumps(self.metadata, sort_keys=True))
            self._write_session("recording")

    @property
    def bytes_written(self) -> int:
        """Size of the MCAP file so far (flushed and buffered)."""
        return self._storage.bio.tell()

    def write_episode_raw(
        self,
        steps: Sequence[tuple[int, bytes | memoryview]],
        result: tuple[int, bytes | memoryview],
        *,
        step_topic: str = STEP_TOPIC,
        result_topic: str = RESULT_TOPIC,
        metadata: dict | None = None,
    ) -> None:
        """Write a whole episode from serialized messages in one go.

        ``steps`` as (timestamp_ns, StepRecord CDR bytes), then ``result`` (timestamp_ns,
        EpisodeResult CDR bytes); one MCAP chunk, flushed (and fsynced) when it returns. For a node
        that buffers episodes itself. ``metadata`` is merged into the session metadata with the
        episode, so the sidecar written after it already counts it.
        """
        if metadata:
            self._check_serialisable(metadata)
        with self._lock:
            self._check_open()
            if metadata:
                self.metadata.update(metadata)
                self._writer.set_custom_data(
                    "nsl_session", json.dumps(self.metadata, sort_keys=True)
                )
            sconn = self._connection(step_topic, STEP_RECORD)
            rconn = self._connection(result_topic, EPISODE_RESULT)
            for stamp, data in steps:
                self._writer.write(sconn, int(stamp), data)
            self._writer.write(rconn, int(result[0]), result[1])
            self.messages_written += len(steps) + 1
            self.steps_written += len(steps)
            self.episodes_written += 1
            self._end_chunk(self.fsync)
            self._write_session("recording")

    def write_episode(self, steps: Sequence[StepData], result: EpisodeData) -> None:
        """Write an episode's StepRecords then its EpisodeResult, as one MCAP chunk (flushed)."""
        T = self._typestore.types
        Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]

        def header(ns: int) -> Any:
            return Header(
                stamp=Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000)),
                frame_id=result.frame_id,
            )

        try:
            serialized, res_bytes, end = self._serialize_episode(steps, result, T, header)
        except TypeError as exc:
            raise DatasetError(
                f"{self.path}: cannot build the messages from StepData/EpisodeData with the "
                f"message definitions in use (.msg files changed?): {exc}"
            ) from exc
        with self._lock:
            self._check_open()
            sconn = self._connection(STEP_TOPIC, STEP_RECORD)
            rconn = self._connection(RESULT_TOPIC, EPISODE_RESULT)
            for stamp, data in serialized:
                self._writer.write(sconn, stamp, data)
            self._writer.write(rconn, end, res_bytes)
            self.messages_written += len(serialized) + 1
            self.steps_written += len(serialized)
            self.episodes_written += 1
            self._end_chunk(self.fsync)
            self._write_session("recording")

    def _serialize_episode(self, steps, result, T, header):
        ts = self._typestore
        Image, Step = T["sensor_msgs/msg/Image"], T[STEP_RECORD]
        Grip, Act, Res = (
            T["nsl_msgs/msg/GripperState"],
            T["nsl_msgs/msg/GraspAction"],
            T[EPISODE_RESULT],
        )
        now = time.time_ns()
        serialized: list[tuple[int, memoryview]] = []
        for i, s in enumerate(steps):
            img = np.asarray(s.image)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(
                    f"step {i}: image must be (H, W, 3) uint8, got {img.shape} {img.dtype}"
                )
            img = np.ascontiguousarray(img)
            stamp = now if s.stamp_ns is None else int(s.stamp_ns)
            tr = np.asarray(s.translation, dtype=np.float32).reshape(-1)
            if tr.shape != (3,):
                raise ValueError(f"step {i}: translation must have 3 components")
            msg = Step(
                header=header(stamp),
                episode_id=result.episode_id,
                step_index=i,
                image=Image(
                    header=header(stamp if s.image_stamp_ns is None else int(s.image_stamp_ns)),
                    height=img.shape[0],
                    width=img.shape[1],
                    encoding="rgb8",
                    is_bigendian=0,
                    step=img.shape[1] * 3,
                    data=img.reshape(-1),
                ),
                gripper_state=Grip(
                    closed=bool(s.gripper_closed),
                    height=float(s.gripper_height),
                    step_fraction=float(s.step_fraction),
                ),
                action=Act(
                    translation=tr,
                    rotation=float(s.rotation),
                    close_gripper=bool(s.close_gripper),
                    terminate=bool(s.terminate),
                ),
                q_value=float(s.q_value),
                exploratory=bool(s.exploratory),
                checkpoint_id=result.checkpoint_id if s.checkpoint_id is None else s.checkpoint_id,
            )
            serialized.append((stamp, ts.serialize_cdr(msg, STEP_RECORD)))
        end = now if result.stamp_ns is None else int(result.stamp_ns)
        exploration = (
            result.exploration
            if isinstance(result.exploration, str)
            else json.dumps(result.exploration, sort_keys=True)
        )
        extra = {}
        if "rollout" in getattr(Res, "__dataclass_fields__", {}):
            extra["rollout"] = (
                result.rollout
                if isinstance(result.rollout, str)
                else json.dumps(result.rollout, sort_keys=True)
            )
        res = Res(
            **extra,
            header=header(end),
            episode_id=result.episode_id,
            task=result.task,
            seed=int(result.seed),
            success=bool(result.success),
            num_steps=len(steps) if result.num_steps is None else int(result.num_steps),
            checkpoint_id=result.checkpoint_id,
            exploration=exploration,
            complete=bool(result.complete),
            message=result.message,
        )
        return serialized, ts.serialize_cdr(res, EPISODE_RESULT), end

    def close(self) -> None:
        """Write the MCAP summary/footer and metadata.yaml; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
            self._write_session("closed")

    def __enter__(self) -> "BagRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        # Close properly even on an exception: all complete episodes stay in a closed bag.
        self.close()
