"""Reading grasp-episode bags without ROS: episodes, transitions and dataset summaries.

Message definitions come from the bag itself (MCAP schema records), never from .msg files, so
old bags stay readable. Bags whose recording was killed (no metadata.yaml, MCAP without footer)
are recovered up to the last complete record; the episodes that cannot be used are reported.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from .errors import DatasetError
from .mcap_scan import McapScan, scan_mcap
from .msgtypes import EPISODE_RESULT, STEP_RECORD, reader_typestore
from .recorder import SESSION_FILE
from .transitions import Transitions

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


class EpisodeList(list):
    """``list[Episode]`` (complete, usable episodes in bag order) plus the reading report."""

    def __init__(self, episodes: Iterable[Episode] = (), *, path: Path | None = None) -> None:
        super().__init__(episodes)
        self.path = path
        self.skipped: list[SkippedEpisode] = []
        self.sessions: list[dict] = []
        """Session metadata of each bag read."""
        self.unclosed: list[Path] = []
        """Bags whose recording did not close them (crash): recovered up to the truncation point."""
        self.notes: list[str] = []

    @property
    def in_flight(self) -> list[SkippedEpisode]:
        return [s for s in self.skipped if s.in_flight]


# ---------------------------------------------------------------------------- locating bags
def _is_bag_dir(d: Path) -> bool:
    return (d / "metadata.yaml").is_file() or any(d.glob("*.mcap"))


MANIFEST_FORMAT = "nsl-episode-manifest"


def is_manifest(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix in (".yaml", ".yml") and p.name != "metadata.yaml"


def read_manifest(path: str | Path) -> dict[Path, list[str]]:
    """An episode manifest (what ``nsl data split`` writes): {bag: [episode ids]} in bag order.
    Bag paths in the file are relative to the manifest's folder (or absolute).
    """
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"{p}: cannot read the manifest: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"{p}: not an episode manifest (format: {MANIFEST_FORMAT} expected)")
    out: dict[Path, list[str]] = {}
    try:
        for item in doc["bags"]:
            bag = Path(item["bag"])
            out.setdefault(bag if bag.is_absolute() else p.parent / bag, []).extend(
                str(e) for e in item["episodes"]
            )
    except (KeyError, TypeError) as exc:
        raise DatasetError(
            f"{p}: malformed manifest (bags: [{{bag, episodes}}] expected): {exc}"
        ) from exc
    return out


def find_bags(path: str | Path) -> list[Path]:
    """Bags under ``path``: the bag itself (a bag directory or a single .mcap file), every bag
    directory below a dataset directory (sorted), or the bags an episode manifest names.
    DatasetError if there is none.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory")
    if p.is_file():
        if is_manifest(p):
            return list(read_manifest(p))
        if p.suffix != ".mcap":
            if p.name == "metadata.yaml":
                return [p.parent]
            raise DatasetError(f"{p}: not a bag (expected a rosbag2 directory or an .mcap file)")
        return [p]
    if _is_bag_dir(p):
        return [p]
    bags = sorted(
        {m.parent for m in p.rglob("metadata.yaml")} | {m.parent for m in p.rglob("*.mcap")}
    )
    if not bags:
        raise DatasetError(
            f"{p}: no rosbag2 bag in this directory (no metadata.yaml or .mcap file)"
        )
    return bags


def _bag_files(bag: Path) -> tuple[list[Path], bool, str, dict | None]:
    """(MCAP files, closed?, message compression, metadata.yaml info)."""
    if bag.is_file():
        return [bag], False, "", None  # closed-ness decided by the footer
    meta = bag / "metadata.yaml"
    if not meta.is_file():
        files = sorted(bag.glob("*.mcap"))
        if not files:
            raise DatasetError(f"{bag}: no metadata.yaml and no .mcap file: not a rosbag2 bag")
        return files, False, "", None
    try:
        doc = yaml.safe_load(meta.read_text(encoding="utf-8"))
        info = doc["rosbag2_bagfile_information"]
        storage = info.get("storage_identifier", "")
        rel = info.get("relative_file_paths") or []
        mode = info.get("compression_mode", "") or ""
        fmt = info.get("compression_format", "") or ""
    except Exception as exc:
        raise DatasetError(f"{meta}: not a valid rosbag2 metadata.yaml: {exc}") from exc
    if storage != "mcap":
        raise DatasetError(f"{bag}: storage {storage!r} is not supported (only MCAP bags)")
    if mode == "file":
        raise DatasetError(
            f"{bag}: file-compressed bags are not supported (decompress the .mcap.{fmt} first)"
        )
    if mode == "message" and fmt != "zstd":
        raise DatasetError(f"{bag}: unsupported message compression {fmt!r}")
    files = [bag / r for r in rel]
    for f in files:
        if not f.is_file():
            raise DatasetError(f"{f}: listed in {meta} but missing")
    if not files:
        raise DatasetError(f"{meta}: lists no storage file")
    return files, True, mode, info


def _session(bag: Path, info: dict | None) -> dict:
    side = (bag if bag.is_dir() else bag.parent) / SESSION_FILE
    if side.is_file():
        try:
            doc = yaml.safe_load(side.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("session"), dict):
                return doc["session"]
        except yaml.YAMLError:
            pass
    custom = (info or {}).get("custom_data") or {}
    if "nsl_session" in custom:
        try:
            return json.loads(custom["nsl_session"])
        except ValueError:
            pass
    return {}


# ---------------------------------------------------------------------------- decoding
_RGB_CHANNELS = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}


def _image(img: Any) -> np.ndarray:
    enc = img.encoding.lower()
    if enc not in _RGB_CHANNELS:
        raise ValueError(f"unsupported image encoding {img.encoding!r}")
    c, order = _RGB_CHANNELS[enc]
    h, w, step = int(img.height), int(img.width), int(img.step)
    data = np.asarray(img.data, dtype=np.uint8)
    if h <= 0 or w <= 0 or step < w * c or data.size < step * h:
        raise ValueError(f"image {h}x{w} {enc}, step {step}: holds {data.size} bytes")
    rows = data[: step * h].reshape(h, step)[:, : w * c].reshape(h, w, c)
    if enc == "rgb8":
        return rows.copy()
    return np.ascontiguousarray(rows[:, :, list(order)])


def _decode_scan(scan: McapScan, bag: Path, message_compression: str) -> tuple[list, list]:
    """Decode StepRecords and EpisodeResults (found by type, on any topic) of one MCAP file."""
    wanted = {}
    for ch in scan.channels.values():
        sc = scan.schemas.get(ch.schema_id)
        if sc is None:
            raise DatasetError(
                f"{scan.path}: channel {ch.topic!r} refers to missing schema {ch.schema_id}"
            )
        if sc.name in (STEP_RECORD, EPISODE_RESULT):
            if ch.message_encoding != "cdr":
                raise DatasetError(
                    f"{scan.path}: channel {ch.topic!r} has encoding {ch.message_encoding!r}, not cdr"
                )
            if not sc.data:
                raise DatasetError(f"{scan.path}: schema {sc.name} stores no message definition")
            wanted[ch.id] = sc
    if not wanted:
        return [], []
    try:
        store = reader_typestore(sorted({(s.name, s.encoding, s.data) for s in wanted.values()}))
    except Exception as exc:
        raise DatasetError(
            f"{scan.path}: cannot parse the message definitions stored in the bag: {exc}"
        ) from exc
    decompress = None
    if message_compression == "message":
        from .mcap_scan import _decompress

        decompress = lambda d: _decompress("zstd", d, 0)  # noqa: E731
    steps, results = [], []
    for cid, log_time, data in scan.messages:
        sc = wanted.get(cid)
        if sc is None:
            continue
        try:
            if decompress is not None:
                data = decompress(data)
            msg = store.deserialize_cdr(data, sc.name)
        except Exception as exc:
            raise DatasetError(
                f"{scan.path}: cannot decode a {sc.name} message (log time {log_time}): {exc}"
            ) from exc
        (steps if sc.name == STEP_RECORD else results).append(msg)
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
    tr = np.array([np.asarray(r.action.translation, dtype=np.float64) for r in recs]).reshape(n, 3)
    rot = np.array([float(r.action.rotation) for r in recs], dtype=np.float64)
    close = np.array([bool(r.action.close_gripper) for r in recs])
    term = np.array([bool(r.action.terminate) for r in recs])
    # Same arithmetic as ActionSpace.to_vector, vectorised.
    actions = np.empty((n, 6), dtype=np.float32)
    actions[:, :3] = tr / action_space.max_translation
    actions[:, 3] = rot / action_space.max_rotation
    actions[:, 4] = np.where(close, 1.0, -1.0)
    actions[:, 5] = np.where(term, 1.0, -1.0)
    np.clip(actions, -1.0, 1.0, out=actions)
    steps = []
    shape = None
    for i, r in enumerate(recs):
        img = _image(r.image)
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
    try:
        exploration = json.loads(res.exploration) if res.exploration else {}
        if not isinstance(exploration, dict):
            exploration = {"value": exploration}
    except ValueError:
        exploration = {"raw": res.exploration}
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


def _read_bag(bag: Path, action_space, out: EpisodeList) -> None:
    files, closed, compression, info = _bag_files(bag)
    out.sessions.append(_session(bag, info))
    steps, results = [], []
    unclosed = False
    for f in files:
        scan = scan_mcap(f, require_complete=closed)
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
        s, r = _decode_scan(scan, bag, compression)
        steps += s
        results += r
    if unclosed:
        out.unclosed.append(bag)

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

            def skip(reason: str) -> None:
                out.skipped.append(SkippedEpisode(bag, eid, reason, len(recs)))

            if len(rs) > 1:
                skip(f"{len(rs)} EpisodeResults for the same episode id")
            elif not res.complete:
                skip(f"aborted (result.complete is false): {res.message or 'no reason given'}")
            elif len(recs) != res.num_steps:
                skip(
                    f"step count mismatch: EpisodeResult says {res.num_steps}, the bag holds {len(recs)} StepRecords"
                )
            elif not recs:
                skip("no steps")
            else:
                try:
                    out.append(_build_episode(eid, res, recs, bag, action_space))
                except ValueError as exc:
                    skip(str(exc))
        for eid, recs in by_ep.items():
            if eid not in res_by_ep:
                reason = (
                    "no EpisodeResult: in flight when the recording stopped"
                    if unclosed
                    else "no EpisodeResult"
                )
                out.skipped.append(SkippedEpisode(bag, eid, reason, len(recs), in_flight=unclosed))
    except AttributeError as exc:
        raise DatasetError(
            f"{bag}: the stored message definitions lack a field this reader needs: {exc}"
        ) from exc


def read_episodes(path: str | Path, *, action_space=None) -> EpisodeList:
    """Complete, usable episodes of a bag (or of every bag under a dataset directory), in bag
    order, as an :class:`EpisodeList` whose ``skipped`` lists the episodes left out and why
    (no EpisodeResult / in flight, aborted, step count mismatch, ...).

    Raises DatasetError (naming the file) for a missing path or a corrupt, truncated (closed
    bag) or garbage file.
    """
    if action_space is None:
        from nsl_policy.action_space import ActionSpace

        action_space = ActionSpace()
    p = Path(path)
    out = EpisodeList(path=p)
    if is_manifest(p):
        for bag, ids in read_manifest(p).items():
            part = EpisodeList(path=bag)
            if not bag.exists():
                raise DatasetError(f"{p}: names {bag}, which does not exist")
            _read_bag(bag, action_space, part)
            by_id = {e.episode_id: e for e in part}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise DatasetError(
                    f"{p}: {len(missing)} episode(s) it names are not complete episodes of {bag} "
                    f"(e.g. {missing[0]}): the bag changed since the manifest was written"
                )
            keep = set(ids)
            out += [e for e in part if e.episode_id in keep]
            out.sessions += part.sessions
            out.unclosed += part.unclosed
            out.notes += part.notes
        return out
    for bag in find_bags(p):
        _read_bag(bag, action_space, out)
    for s in out.skipped:
        log.info("%s: skipped episode %s: %s", s.bag, s.episode_id, s.reason)
    return out


def transitions_from_episodes(episodes: list[Episode]) -> Transitions:
    """QT-Opt transitions of ``episodes`` (all with the same image shape)."""
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


def _select_episodes(tr: Transitions, keep: np.ndarray) -> Transitions:
    """The rows of the episodes flagged in ``keep`` (indexed by episode number), renumbered."""
    rows = keep[tr.episode]
    if rows.all():
        return tr
    idx = np.flatnonzero(rows)
    new_row = np.full(len(tr), -1, dtype=np.int64)
    new_row[idx] = np.arange(len(idx))
    renum = np.cumsum(keep) - 1
    return Transitions(
        image=tr.image[idx],
        state=tr.state[idx],
        action=tr.action[idx],
        reward=tr.reward[idx],
        done=tr.done[idx],
        next_index=new_row[tr.next_index[idx]],
        episode=renum[tr.episode[idx]],
        location=None if tr.location is None else tr.location[idx],
    )


def _bag_transitions(bag: Path, action_space, cache) -> tuple[Transitions, dict]:
    """One bag's transitions and meta (episode ids, skipped), through the cache if given."""
    if cache is not None:
        hit = cache.get(bag, action_space)
        if hit is not None:
            return hit
        from .cache import bag_fingerprint

        fingerprint = bag_fingerprint(
            bag, full=cache.full
        )  # before reading: a change meanwhile invalidates
    out = EpisodeList(path=bag)
    _read_bag(bag, action_space, out)
    tr = transitions_from_episodes(list(out))
    meta = {
        "bag": str(bag),
        "episode_ids": [e.episode_id for e in out],
        "skipped": [[s.episode_id, s.reason] for s in out.skipped],
    }
    if cache is not None:
        cache.put(bag, action_space, tr, meta, fingerprint)
    return tr, meta


def load_transitions(
    paths: list[str | Path] | str | Path,
    action_space=None,
    *,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> Transitions:
    """QT-Opt transitions of every complete episode in ``paths`` (bags, dataset directories or
    episode manifests): reward 1 on the last step of a successful episode else 0, done on the
    last step, next_index to the next row (itself on the last step). Episodes are numbered in
    reading order.

    ``cache``: decoded bags are kept in an on-disk cache (:mod:`nsl_collector.cache`; location
    ``cache_dir``, ``$NSL_DATASET_CACHE`` or ``~/.cache/nsl/transitions``) and reused while the
    bag is unchanged.
    """
    if action_space is None:
        from nsl_policy.action_space import ActionSpace

        action_space = ActionSpace()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("load_transitions: no paths given")
    for p in paths:
        if not p.exists():
            raise DatasetError(f"{p}: no such file or directory")
    store = None
    if cache:
        from .cache import TransitionCache

        store = TransitionCache(cache_dir)
    parts: list[Transitions] = []
    for p in paths:
        selection = read_manifest(p) if is_manifest(p) else {b: None for b in find_bags(p)}
        found, skipped = 0, []
        for bag, ids in selection.items():
            if not bag.exists():
                raise DatasetError(f"{p}: names {bag}, which does not exist")
            tr, meta = _bag_transitions(bag, action_space, store)
            if ids is not None:
                have = {e: k for k, e in enumerate(meta["episode_ids"])}
                missing = [i for i in ids if i not in have]
                if missing:
                    raise DatasetError(
                        f"{p}: {len(missing)} episode(s) it names are not complete episodes of "
                        f"{bag} (e.g. {missing[0]}): the bag changed since the manifest was written"
                    )
                keep = np.zeros(len(meta["episode_ids"]), dtype=bool)
                keep[[have[i] for i in ids]] = True
                tr = _select_episodes(tr, keep)
            else:
                skipped += meta["skipped"]
            found += tr.num_episodes
            parts.append(tr)
        if not found:
            why = "; ".join(f"{e}: {r}" for e, r in skipped[:5]) or "no episodes at all"
            raise DatasetError(f"{p}: holds no complete episode ({why})")
        if skipped:
            log.warning(
                "%s: %d episode(s) skipped: %s",
                p,
                len(skipped),
                "; ".join(f"{e}: {r}" for e, r in skipped[:5]),
            )
    parts = [t for t in parts if len(t)]
    shapes = {t.image.shape[1:] for t in parts}
    if len(shapes) > 1:
        raise DatasetError(
            f"{', '.join(map(str, paths))}: episodes have different image shapes {sorted(shapes)}; "
            "cannot stack them into one set"
        )
    return parts[0] if len(parts) == 1 else Transitions.concatenate(parts)


def dataset_info(path: str | Path) -> dict:
    """Summary of a bag or dataset directory (plain types, YAML/JSON-ready)."""
    eps = read_episodes(path)
    n = len(eps)
    succ = sum(e.success for e in eps)
    tasks: Counter = Counter(e.task for e in eps)
    task_succ: Counter = Counter(e.task for e in eps if e.success)
    shapes = sorted({tuple(e.steps[0].image.shape) for e in eps})
    return {
        "path": str(path),
        "bags": [str(b) for b in find_bags(path)],
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
            }
            for s in eps.skipped
        ],
        "sessions": eps.sessions,
        "notes": list(eps.notes),
    }
