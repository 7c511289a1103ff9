"""Mutations of real bags and checkpoints, and the invariants every reader must keep.

Shared by the fuzz tests (test_fuzz.py, hypothesis) and bench/fuzz_datasets.py (a long run).
A mutation is a list of (kind, offset, payload): ``truncate`` at offset, ``flip`` xors the
payload into the bytes at offset, ``insert`` puts the payload at offset. Invariants:

* bags: reading raises nothing but DatasetError, returns within the time limit, returns only
  episodes identical to those written, and returns every *intact* episode (its chunk and the
  definitions chunk untouched by the mutation) unless the whole file was refused because its
  start was damaged;
* checkpoints: loading raises nothing but CheckpointError, returns within the time limit, and a
  checkpoint that does load has the original weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataset_helpers import MSG_DIR, make_episode
import torch
from nsl_collector.dataset import BagRecorder, DatasetError, read_episodes
from nsl_policy.checkpoint import CheckpointError, init_checkpoint, load_checkpoint
from nsl_policy.model import QNetworkConfig

EPISODES = 4
STEPS = 3
HW = (8, 8)


def write_fixture_bag(path: Path, *, close: bool) -> Path:
    """Write a bag of EPISODES episodes with the recorder (closed, or left open: a crash)."""
    rec = BagRecorder(path, {"task": "base"}, msg_dir=MSG_DIR, fsync=False)
    for i in range(EPISODES):
        rec.write_episode(*make_episode(i, n=STEPS, hw=HW))
    if close:
        rec.close()
    return path


def chunk_ranges(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every top-level chunk record of an intact MCAP file, in file order."""
    out, pos = [], 8
    while pos + 9 <= len(data):
        op, length = data[pos], int.from_bytes(data[pos + 1 : pos + 9], "little")
        if op == 0x06:
            out.append((pos, pos + 9 + length))
        if op == 0x02:
            break
        pos += 9 + length
    return out


@dataclass
class BagTarget:
    """One fixture bag: its directory, its MCAP bytes and where each episode's chunk lies."""

    bag: Path
    mcap: Path
    data: bytes
    closed: bool
    definitions: tuple[int, int]
    episodes: dict[str, tuple[int, int]] = field(default_factory=dict)
    expected: dict = field(default_factory=dict)


def bag_target(path: Path, *, close: bool) -> BagTarget:
    """Write a fixture bag and map its chunks (definitions first, then one per episode)."""
    bag = write_fixture_bag(path, close=close)
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    ranges = chunk_ranges(data)
    assert len(ranges) == EPISODES + 1, ranges
    target = BagTarget(bag, mcap, data, close, ranges[0])
    for i, r in enumerate(ranges[1:]):
        eid = f"ep-{i:04d}"
        target.episodes[eid] = r
        target.expected[eid] = make_episode(i, n=STEPS, hw=HW)
    return target


def apply(data: bytes, mutation: list[tuple[str, int, bytes]]) -> tuple[bytes, list]:
    """Return the mutated bytes and the touched original ranges (or cut/insertion points)."""
    buf = bytearray(data)
    touched = []  # in original offsets: ("range", a, b) or ("cut", at) or ("insert", at)
    shift = []  # (original offset, bytes inserted there) so later ops map back
    for kind, offset, payload in mutation:
        offset = min(max(offset, 0), len(buf))
        orig = offset - sum(n for at, n in shift if at < offset)
        if kind == "truncate":
            del buf[offset:]
            touched.append(("cut", orig))
        elif kind == "flip":
            for k, b in enumerate(payload):
                if offset + k < len(buf) and b:
                    buf[offset + k] ^= b
            touched.append(("range", orig, orig + len(payload)))
        elif kind == "insert":
            buf[offset:offset] = payload
            shift.append((offset, len(payload)))
            touched.append(("insert", orig))
    return bytes(buf), touched


def intact(r: tuple[int, int], touched: list) -> bool:
    """Whether the chunk at ``r`` survives ``touched`` byte for byte, in one piece."""
    start, end = r
    for t in touched:
        if t[0] == "cut" and t[1] < end:
            return False
        if t[0] == "range" and t[1] < end and t[2] > start:
            return False
        if t[0] == "insert" and start < t[1] < end:
            return False
    return True


class InvariantBroken(AssertionError):
    """A reader broke a fuzz invariant; the message says which and how."""


def check_bag(target: BagTarget, mutation: list, time_limit: float = 10.0) -> dict:
    """Read the mutated bag and check the invariants; returns counts for the figures."""
    mutated, touched = apply(target.data, mutation)
    target.mcap.write_bytes(mutated)
    t0 = time.monotonic()
    try:
        got = read_episodes(target.bag)
        error = None
    except DatasetError as exc:
        got, error = [], exc
    except Exception as exc:  # noqa: BLE001 - any other type is the bug being looked for
        raise InvariantBroken(f"{type(exc).__name__}: {exc} on {mutation!r}") from exc
    finally:
        target.mcap.write_bytes(target.data)
    elapsed = time.monotonic() - t0
    if elapsed > time_limit:
        raise InvariantBroken(f"took {elapsed:.1f} s on {mutation!r}")
    by_id = {e.episode_id: e for e in got}
    for eid, ep in by_id.items():
        if eid not in target.expected or not _same(ep, *target.expected[eid]):
            raise InvariantBroken(f"returned an altered or foreign episode {eid} on {mutation!r}")
    should = [
        eid
        for eid, r in target.episodes.items()
        if intact(r, touched) and intact(target.definitions, touched)
    ]
    lost = [eid for eid in should if eid not in by_id]
    header_damaged = not intact((0, 8), touched)
    if lost and not (error is not None and header_damaged):
        raise InvariantBroken(f"lost intact episode(s) {lost} ({error}) on {mutation!r}")
    return {"read": len(by_id), "intact": len(should), "refused": error is not None}


def _same(ep, steps, result) -> bool:
    if ep.num_steps != len(steps) or ep.success != result.success:
        return False
    return all(np.array_equal(g.image, s.image) for g, s in zip(ep.steps, steps))


def checkpoint_fixture(path: Path) -> tuple[bytes, dict]:
    """Write a small checkpoint; return its bytes and its weights."""
    cfg = QNetworkConfig(image_size=32, width=8, embed_width=16, fc_width=16)
    init_checkpoint(path, cfg)
    weights = {k: v.clone() for k, v in load_checkpoint(path).model.state_dict().items()}
    return path.read_bytes(), weights


def check_checkpoint(
    path: Path, data: bytes, weights: dict, mutation: list, time_limit: float = 10.0
) -> dict:
    """Load the mutated checkpoint and check the invariants; returns counts for the figures."""
    mutated, _touched = apply(data, mutation)
    path.write_bytes(mutated)
    t0 = time.monotonic()
    try:
        loaded = load_checkpoint(path)
    except CheckpointError:
        loaded = None
    except BaseException as exc:  # noqa: BLE001 - any other type is the bug being looked for
        raise InvariantBroken(f"{type(exc).__name__}: {exc} on {mutation!r}") from exc
    elapsed = time.monotonic() - t0
    if elapsed > time_limit:
        raise InvariantBroken(f"took {elapsed:.1f} s on {mutation!r}")
    if loaded is not None:
        state = loaded.model.state_dict()
        if set(state) != set(weights) or not all(
            torch.equal(state[k].cpu(), weights[k].cpu()) for k in weights
        ):
            raise InvariantBroken(f"loaded altered weights on {mutation!r}")
    return {"loaded": loaded is not None}


def random_mutation(rng: np.random.Generator, size: int) -> list[tuple[str, int, bytes]]:
    """1-3 random mutations of a file of ``size`` bytes (the bench's generator)."""
    out = []
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.choice(["truncate", "flip", "flip", "insert", "insert_record"])
        offset = int(rng.integers(0, size + 1))
        if kind == "truncate":
            out.append(("truncate", offset, b""))
        elif kind == "flip":
            n = int(rng.integers(1, 9))
            out.append(("flip", offset, bytes(rng.integers(1, 256, n, dtype=np.uint8))))
        elif kind == "insert":
            n = int(rng.integers(1, 64))
            out.append(("insert", offset, bytes(rng.integers(0, 256, n, dtype=np.uint8))))
        else:
            out.append(("insert", offset, fake_record(rng)))
    return out


def fake_record(rng: np.random.Generator) -> bytes:
    """Make a well-framed record of a random (often real) opcode with a random body."""
    op = int(rng.choice([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x0F, 0x42]))
    body = bytes(rng.integers(0, 256, int(rng.integers(0, 48)), dtype=np.uint8))
    return bytes([op]) + len(body).to_bytes(8, "little") + body
