"""Reading grasp-episode bags without ROS: episodes, transitions and dataset summaries.

Message definitions come from the bag itself (MCAP schema records), never from .msg files, so
old bags stay readable. Bags whose recording was killed (no metadata.yaml, MCAP without footer)
are recovered up to the last complete record; the episodes that cannot be used are reported.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .cdr import parse_exploration
from .errors import DatasetError
from .layout import (
    MANIFEST_FORMAT,
    bag_files,
    discover,
    find_bags,
    is_manifest,
    read_manifest,
    session_metadata,
)
from .mcap_scan import McapScan, decompress_message, scan_mcap
from .msgtypes import EPISODE_RESULT, STEP_RECORD, reader_typestore
from .transitions import transitions_from_episodes
from .values import check_step_values, decode_image

__all__ = [
    "MANIFEST_FORMAT",
    "Episode",
    "EpisodeList",
    "SkippedEpisode",
    "Step",
    "bag_files",
    "dataset_info",
    "discover",
    "find_bags",
    "is_manifest",
    "read_episodes",
    "read_manifest",
    "transitions_from_episodes",
]

log = logging.getLogger(__name__)


@dataclass
class Step:
    step_index: int
    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    state: np.ndarray
    """(3,) float32: gripper closed (0/1), height (m), step fraction."""
    action: np.ndarray
    """(6,) float32 normalised action (nsl_policy.action_space)."""
    q_value: float
    exploratory: bool
    stamp_ns: int
    checkpoint_id: str


@dataclass
class Episode:
    episode_id: str
    task: str
    seed: int
    success: bool
    checkpoint_id: str
    exploration: dict
    """Parsed from the JSON string in EpisodeResult (``{"raw": text}`` if it is not JSON)."""
    steps: list[Step]
    robot: str = ""
    """header.frame_id of the EpisodeResult."""
    end_stamp_ns: int = 0
    bag: Path | None = None

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def images(self) -> np.ndarray:
        return np.stack([s.image for s in self.steps])

    @property
    def states(self) -> np.ndarray:
        return np.stack([s.state for s in self.steps])

    @property
    def actions(self) -> np.ndarray:
        return np.stack([s.action for s in self.steps])


@dataclass
class SkippedEpisode:
    bag: Path
    episode_id: str
    reason: str
    steps_found: int = 0
    in_flight: bool = False
    """True when the bag was not closed and the episode has no result: it was being recorded
    when the recording stopped."""
    damaged: bool = True
    """False for what a recording normally leaves out (an aborted episode, the episode in
    flight at a crash); True for damage (bad values, lost steps or results)."""


class EpisodeList(list):
    """``list[Episode]`` (complete, usable episodes in bag order) plus the reading report."""

    def __init__(self, episodes: Iterable[Episode] = (), *, path: Path | None = None) -> None:
        super().__init__(episodes)
        self.path = path
        self.skipped: list[SkippedEpisode] = []
        self.sessions: list[dict] = []
        """Session metadata of each bag read."""
        self.unclosed: list[Path] = []
        """Bags whose recording did not close them (crash): recovered up to the truncation."""
        self.notes: list[str] = []
        self.damage: list[str] = []
        """Damage found and skipped (each names the file, and the chunk or episode)."""
        self.damaged_bags: list[tuple[Path, str]] = []
        """Bags that could not be read at all, with the reason; the other bags were read."""
        self.messages = 0
        """MCAP messages scanned (what a closed bag's metadata.yaml should count)."""

    @property
    def in_flight(self) -> list[SkippedEpisode]:
        return [s for s in self.skipped if s.in_flight]

    def extend_report(self, other: "EpisodeList") -> None:
        """Add ``other``'s report (not its episodes) to this one."""
        self.skipped += other.skipped
        self.sessions += other.sessions
        self.unclosed += other.unclosed
        self.notes += other.notes
        self.damage += other.damage
        self.damaged_bags += other.damaged_bags
        self.messages += other.messages


# ---------------------------------------------------------------------------- decoding
def _decode_scan(scan: McapScan, message_compression: str, out: EpisodeList) -> tuple[list, list]:
    """Decode StepRecords and EpisodeResults (found by type, on any topic) of one MCAP file.

    A message that does not decode is left out and noted in ``out.damage``.
    """
    wanted = {}
    for ch in scan.channels.values():
        sc = scan.schemas.get(ch.schema_id)
        if sc is None:
            out.damage.append(
                f"{scan.path}: channel {ch.topic!r} refers to missing schema {ch.schema_id}"
            )
            continue
        if sc.name in (STEP_RECORD, EPISODE_RESULT):
            if ch.message_encoding != "cdr":
                raise DatasetError(
                    f"{scan.path}: channel {ch.topic!r} has encoding {ch.message_encoding!r}, "
                    "not cdr"
                )
            if not sc.data:
                raise DatasetError(f"{scan.path}: schema {sc.name} stores no message definition")
            wanted[ch.id] = sc
    if not wanted:
        return [], []
    try:
        store = reader_typestore(sorted({(s.name, s.encoding, s.data) for s in wanted.values()}))
    except Exception as exc:  # noqa: BLE001 - any parse failure of stored text is a bad bag
        raise DatasetError(
            f"{scan.path}: cannot parse the message definitions stored in the bag: {exc}"
        ) from exc
    steps, results = [], []
    undecodable = []
    for cid, log_time, data in scan.messages:
        sc = wanted.get(cid)
        if sc is None:
            continue
        try:
            if message_compression == "message":
                data = decompress_message(data)
            msg = store.deserialize_cdr(data, sc.name)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a damaged message
            undecodable.append(f"{sc.name} at log time {log_time}: {exc}")
            continue
        (steps if sc.name == STEP_RECORD else results).append(msg)
    if undecodable:
        out.damage.append(
            f"{scan.path}: {len(undecodable)} message(s) do not decode and were left out "
            f"(first: {undecodable[0]})"
        )
    return steps, results


def _stamp(h: Any) -> int:
    return int(h.stamp.sec) * 1_000_000_000 + int(h.stamp.nanosec)


def _build_episode(eid: str, res: Any, recs: list, bag: Path, action_space) -> Episode:
    recs = sorted(recs, key=lambda r: r.step_index)
    idx = [int(r.step_index) for r in recs]
    if idx != list(range(len(recs))):
        raise ValueError(
            f"step indices are not 0..{len(recs) - 1} (duplicates or gaps): {idx[:20]}"
        )
    n = len(recs)
    tr = np.array([np.asarray(r.action.translation, dtype=np.float64) for r in recs])
    if tr.shape != (n, 3):
        raise ValueError(f"action.translation has shape {tr.shape[1:]}, not (3,)")
    rot = np.array([float(r.action.rotation) for r in recs], dtype=np.float64)
    check_step_values(tr, rot, recs)
    close = np.array([bool(r.action.close_gripper) for r in recs])
    term = np.array([bool(r.action.terminate) for r in recs])
    # Same arithmetic as ActionSpace.to_vector, vectorised: finite commands beyond the action
    # space's reach are clipped to it, as the arm would have executed them.
    actions = np.empty((n, 6), dtype=np.float32)
    actions[:, :3] = tr / action_space.max_translation
    actions[:, 3] = rot / action_space.max_rotation
    actions[:, 4] = np.where(close, 1.0, -1.0)
    actions[:, 5] = np.where(term, 1.0, -1.0)
    np.clip(actions, -1.0, 1.0, out=actions)
    steps = []
    shape = None
    for i, r in enumerate(recs):
        img = decode_image(r.image)
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise ValueError(f"image shape changes within the episode: {shape} then {img.shape}")
        g = r.gripper_state
        steps.append(
            Step(
                step_index=idx[i],
                image=img,
                state=np.array(
                    [1.0 if g.closed else 0.0, g.height, g.step_fraction], dtype=np.float32
                ),
                action=actions[i],
                q_value=float(r.q_value),
                exploratory=bool(r.exploratory),
                stamp_ns=_stamp(r.header),
                checkpoint_id=r.checkpoint_id,
            )
        )
    exploration = parse_exploration(res.exploration)
    return Episode(
        episode_id=eid,
        task=res.task,
        seed=int(res.seed),
        success=bool(res.success),
        checkpoint_id=res.checkpoint_id,
        exploration=exploration,
        steps=steps,
        robot=res.header.frame_id,
        end_stamp_ns=_stamp(res.header),
        bag=bag,
    )


def _scan_files(bag: Path, out: EpisodeList, strict: bool) -> tuple[list, list, bool]:
    """(StepRecords, EpisodeResults, unclosed?) of every MCAP file of ``bag``."""
    try:
        files, closed, compression, info = bag_files(bag, out.notes)
    except DatasetError as exc:
        if strict or not (bag / "metadata.yaml").is_file() or not any(bag.glob("*.mcap")):
            raise
        # A damaged metadata.yaml: the .mcap files are read as an unclosed recording.
        out.damage.append(f"{exc}; the .mcap file(s) read as an unclosed recording")
        files, closed, compression, info = sorted(bag.glob("*.mcap")), False, "", {}
    out.sessions.append(session_metadata(bag, info))
    steps, results = [], []
    unclosed = False
    for f in files:
        scan = scan_mcap(f, require_complete=closed, strict=strict)
        out.damage += scan.damage
        out.messages += len(scan.messages)
        if not scan.complete:
            unclosed = True
            if scan.truncated_at is not None and scan.truncated_at < scan.size:
                out.notes.append(
                    f"{f}: recording was not closed; ignored {scan.size - scan.truncated_at} "
                    f"bytes of incomplete data after offset {scan.truncated_at}"
                )
            else:
                out.notes.append(
                    f"{f}: recording was not closed (no MCAP footer); all records are complete"
                )
        s, r = _decode_scan(scan, compression, out)
        steps += s
        results += r
    return steps, results, unclosed


def _read_bag(bag: Path, action_space, out: EpisodeList, strict: bool = False) -> None:
    """Add ``bag``'s usable episodes and its report to ``out`` (see :func:`read_episodes`)."""
    part = EpisodeList(path=bag)
    try:
        steps, results, unclosed = _scan_files(bag, part, strict)
    except DatasetError as exc:
        if strict:
            raise
        out.damaged_bags.append((bag, str(exc)))
        return
    if unclosed:
        part.unclosed.append(bag)
    damage_hint = f" (the bag is damaged: {part.damage[0]})" if part.damage else ""
    by_ep: dict[str, list] = {}
    for rec in steps:
        by_ep.setdefault(rec.episode_id, []).append(rec)
    res_by_ep: dict[str, list] = {}
    for res in results:
        res_by_ep.setdefault(res.episode_id, []).append(res)
    try:
        for eid, rs in res_by_ep.items():
            recs = by_ep.get(eid, [])
            res = rs[0]

            def skip(reason: str, damaged: bool = True) -> None:
                part.skipped.append(SkippedEpisode(bag, eid, reason, len(recs), damaged=damaged))

            if len(rs) > 1:
                skip(f"{len(rs)} EpisodeResults for the same episode id")
            elif not res.complete:
                skip(
                    f"aborted (result.complete is false): {res.message or 'no reason given'}",
                    damaged=False,
                )
            elif len(recs) != res.num_steps:
                skip(
                    f"step count mismatch: EpisodeResult says {res.num_steps}, the bag holds "
                    f"{len(recs)} StepRecords{damage_hint}"
                )
            elif not recs:
                skip("no steps")
            else:
                try:
                    part.append(_build_episode(eid, res, recs, bag, action_space))
                except (ValueError, TypeError, OverflowError) as exc:
                    skip(str(exc))
        for eid, recs in by_ep.items():
            if eid not in res_by_ep:
                lost = bool(part.damage) or not unclosed
                reason = (
                    f"no EpisodeResult{damage_hint}"
                    if lost
                    else "no EpisodeResult: in flight when the recording stopped"
                )
                part.skipped.append(
                    SkippedEpisode(
                        bag, eid, reason, len(recs), in_flight=not lost, damaged=bool(part.damage)
                    )
                )
    except AttributeError as exc:
        raise DatasetError(
            f"{bag}: the stored message definitions lack a field this reader needs: {exc}"
        ) from exc
    bad = [s for s in part.skipped if s.damaged]
    if strict and part.damage:
        raise DatasetError(part.damage[0])
    if strict and bad:
        raise DatasetError(f"{bag}: damaged episode {bad[0].episode_id}: {bad[0].reason}")
    out += part
    out.extend_report(part)


def _warn_damage(report: EpisodeList) -> None:
    """Log each damaged bag, chunk and episode ``report`` skipped, once (its caller warns)."""
    for bag, reason in report.damaged_bags:
        log.warning("skipped the damaged bag %s: %s", bag, reason)
    for d in report.damage:
        log.warning("%s", d)
    for s in report.skipped:
        if s.damaged:
            log.warning("%s: skipped the damaged episode %s: %s", s.bag, s.episode_id, s.reason)


def read_episodes(path: str | Path, *, action_space=None, strict: bool = False) -> EpisodeList:
    """Read the complete, usable episodes of a bag, a dataset directory or a manifest.

    Returns them in bag order, as an :class:`EpisodeList` whose report says what was left out
    and why.

    Damage policy: a damaged episode (values out of range, steps lost) or a damaged part of a
    bag (a chunk whose CRC fails, a truncated file) is skipped with a warning naming the file
    and episode or chunk, and the rest is used; a bag that cannot be read at all is listed in
    ``damaged_bags``. ``strict``: raise DatasetError at the first damage instead. Raises
    DatasetError for a missing path, or when no bag under ``path`` could be read.
    """
    if action_space is None:
        from nsl_policy.action_space import ActionSpace  # the default scaling of actions

        action_space = ActionSpace()
    p = Path(path)
    out = EpisodeList(path=p)
    if is_manifest(p):
        for bag, ids in read_manifest(p).items():
            part = EpisodeList(path=bag)
            if not bag.exists():
                raise DatasetError(f"{p}: names {bag}, which does not exist")
            _read_bag(bag, action_space, part, strict)
            _warn_damage(part)
            by_id = {e.episode_id: e for e in part}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise DatasetError(
                    f"{p}: {len(missing)} episode(s) it names are not complete episodes of {bag} "
                    f"(e.g. {missing[0]}): the bag changed since the manifest was written"
                )
            keep = set(ids)
            out += [e for e in part if e.episode_id in keep]
            out.extend_report(part)
        return out
    bags, notes = discover(p)
    out.notes += notes
    for note in notes:
        log.warning("%s", note)
    for bag in bags:
        part = EpisodeList(path=bag)
        _read_bag(bag, action_space, part, strict)
        _warn_damage(part)
        out += part
        out.extend_report(part)
    if len(out.damaged_bags) == len(bags):
        raise DatasetError("; ".join(reason for _bag, reason in out.damaged_bags))
    for s in out.skipped:
        if not s.damaged:
            log.info("%s: skipped episode %s: %s", s.bag, s.episode_id, s.reason)
    return out


def dataset_info(path: str | Path, *, strict: bool = False) -> dict:
    """Summarise a bag or dataset directory (plain types, YAML/JSON-ready).

    Damage is handled as in :func:`read_episodes` and listed under ``damage`` and
    ``damaged_bags``.
    """
    eps = read_episodes(path, strict=strict)
    n = len(eps)
    succ = sum(e.success for e in eps)
    tasks: Counter = Counter(e.task for e in eps)
    task_succ: Counter = Counter(e.task for e in eps if e.success)
    shapes = sorted({tuple(e.steps[0].image.shape) for e in eps})
    return {
        "path": str(path),
        "bags": [str(b) for b in discover(path)[0]],
        "episodes": n + len({(s.bag, s.episode_id) for s in eps.skipped}),
        "complete": n,
        "skipped": len(eps.skipped),
        "in_flight": len(eps.in_flight),
        "successes": int(succ),
        "success_rate": (succ / n) if n else math.nan,
        "tasks": dict(sorted(tasks.items())),
        "task_success_rate": {t: task_succ[t] / c for t, c in sorted(tasks.items())},
        "checkpoints": dict(sorted(Counter(e.checkpoint_id for e in eps).items())),
        "steps": sum(e.num_steps for e in eps),
        "image_shapes": [list(s) for s in shapes],
        "unclosed_bags": [str(b) for b in eps.unclosed],
        "skipped_episodes": [
            {
                "bag": str(s.bag),
                "episode_id": s.episode_id,
                "reason": s.reason,
                "steps_found": s.steps_found,
                "damaged": s.damaged,
            }
            for s in eps.skipped
        ],
        "damage": list(eps.damage),
        "damaged_bags": [{"bag": str(b), "reason": r} for b, r in eps.damaged_bags],
        "sessions": eps.sessions,
        "notes": list(eps.notes),
    }
