"""Read the few fields the collector needs straight from serialized (CDR) messages.

The collector node subscribes with ``raw=True`` and stores the bytes unchanged. To group step
records by episode it needs only ``episode_id`` and ``step_index``, which sit at the front of a
StepRecord, before the image: parsing them here costs microseconds, where deserializing a
472x472 StepRecord would copy the whole image. EpisodeResult has no large field and is parsed
in full. ROS-free; checked against rclpy's and rosbags' serializers in the tests.

Supported encapsulations: plain CDR (XCDR1, what rmw_fastrtps/cyclonedds send for these types)
and plain CDR2, little and big endian.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

# Encapsulation ids: 0x0000 CDR_BE, 0x0001 CDR_LE, 0x0006 CDR2_BE, 0x0007 CDR2_LE (plain).
_ENCAPSULATIONS = {0x0000: (">", 8), 0x0001: ("<", 8), 0x0006: (">", 4), 0x0007: ("<", 4)}


class CdrError(ValueError):
    """The bytes are not a serialized message of the expected type."""


class _Cursor:
    __slots__ = ("buf", "pos", "end", "order", "max_align")

    def __init__(self, raw: bytes | memoryview) -> None:
        buf = memoryview(raw).cast("B") if not isinstance(raw, memoryview) else raw.cast("B")
        if len(buf) < 4:
            raise CdrError(f"{len(buf)} bytes: too short for a CDR message")
        rep = int.from_bytes(bytes(buf[0:2]), "big")
        if rep not in _ENCAPSULATIONS:
            raise CdrError(f"unsupported CDR encapsulation 0x{rep:04x}")
        self.order, self.max_align = _ENCAPSULATIONS[rep]
        self.buf, self.pos, self.end = buf, 4, len(buf)

    def _align(self, n: int) -> None:
        n = min(n, self.max_align)
        rel = self.pos - 4
        self.pos += (-rel) % n

    def _take(self, fmt: str, size: int):
        self._align(size)
        if self.pos + size > self.end:
            raise CdrError("message ends inside a field")
        (v,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self) -> int:
        return self._take("I", 4)

    def i32(self) -> int:
        return self._take("i", 4)

    def i64(self) -> int:
        return self._take("q", 8)

    def boolean(self) -> bool:
        if self.pos >= self.end:
            raise CdrError("message ends inside a field")
        v = self.buf[self.pos]
        self.pos += 1
        return bool(v)

    def string(self) -> str:
        n = self.u32()
        if n == 0:
            return ""
        if self.pos + n > self.end:
            raise CdrError(f"string of {n} bytes runs past the end of the message")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        if raw[-1:] != b"\0":
            raise CdrError("string without its terminating NUL")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CdrError(f"string is not UTF-8: {exc}") from None

    def header(self) -> tuple[int, str]:
        sec = self.i32()
        nanosec = self.u32()
        return sec * 1_000_000_000 + nanosec, self.string()


@dataclass(frozen=True)
class StepKey:
    """The front of an nsl_msgs/StepRecord."""

    stamp_ns: int
    frame_id: str
    episode_id: str
    step_index: int


@dataclass(frozen=True)
class ResultInfo:
    """An nsl_msgs/EpisodeResult."""

    stamp_ns: int
    frame_id: str
    episode_id: str
    task: str
    seed: int
    success: bool
    num_steps: int
    checkpoint_id: str
    exploration: str
    complete: bool
    message: str


def parse_exploration(text: str) -> dict:
    """Return an EpisodeResult's ``exploration`` JSON text as a dict.

    Empty text gives {}, JSON that is no object {"value": it}, text that is no JSON
    {"raw": text}, so whatever an episode says is kept.
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {"raw": text}
    return value if isinstance(value, dict) else {"value": value}


def step_key(raw: bytes | memoryview) -> StepKey:
    """header, episode_id and step_index of a serialized StepRecord (the image is not touched)."""
    c = _Cursor(raw)
    stamp, frame = c.header()
    eid = c.string()
    return StepKey(stamp, frame, eid, c.u32())


def episode_result(raw: bytes | memoryview) -> ResultInfo:
    """Every field of a serialized EpisodeResult."""
    c = _Cursor(raw)
    stamp, frame = c.header()
    eid, task = c.string(), c.string()
    seed = c.i64()
    success = c.boolean()
    num_steps = c.u32()
    checkpoint_id, exploration = c.string(), c.string()
    complete = c.boolean()
    message = c.string()
    return ResultInfo(
        stamp,
        frame,
        eid,
        task,
        seed,
        success,
        num_steps,
        checkpoint_id,
        exploration,
        complete,
        message,
    )
