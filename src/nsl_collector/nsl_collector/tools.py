"""Dataset tools behind ``nsl data``: verify, split into nested size tiers, merge. ROS-free.

Split and merge copy episodes as the recorded CDR bytes (no re-encoding), so the new bags hold
exactly what was recorded, in standard rosbag2/MCAP form.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .cdr import CdrError, episode_result, step_key
from .errors import DatasetError
from .mcap_scan import scan_mcap
from .msgtypes import EPISODE_RESULT, STEP_RECORD, writer_typestore
from .layout import MANIFEST_FORMAT, bag_files, discover, find_bags, is_manifest, read_manifest
from .reader import read_episodes
from .recorder import BagRecorder

PAPER_TIERS = (25, 50, 100, 200, 400, 800)


# ---------------------------------------------------------------------------- verify
@dataclass
class BagCheck:
    """What :func:`verify` found for one bag (or for a path that holds none)."""

    bag: Path
    status: str
    """ok | recovered (unclosed recording, readable up to the crash) | damaged (readable, with
    damaged parts skipped: ``detail`` names them) | corrupt (unreadable) | missing (no such
    path)."""
    episodes: int = 0
    skipped: int = 0
    detail: str = ""


def _message_count_check(bag: Path, have: int) -> str:
    """'' or why metadata.yaml's message count disagrees with the ``have`` messages scanned."""
    _files, _closed, _comp, info = bag_files(bag)
    want = int((info or {}).get("message_count", -1))
    if want >= 0 and want != have:
        return f"{bag}: metadata.yaml counts {want} messages, the MCAP file holds {have}"
    return ""


def _check_bag(bag: Path) -> BagCheck:
    eps = read_episodes(bag)
    if eps.damaged_bags:
        return BagCheck(bag, "corrupt", detail=eps.damaged_bags[0][1])
    damage = list(eps.damage)
    if not eps.unclosed and not damage and bag.is_dir():
        damage += list(filter(None, [_message_count_check(bag, eps.messages)]))
    bad = [s for s in eps.skipped if s.damaged]
    parts = list(damage) + [n for n in eps.notes if n not in damage]
    if eps.skipped:
        parts.append(
            "skipped: " + "; ".join(f"{s.episode_id}: {s.reason}" for s in eps.skipped[:5])
        )
    status = "damaged" if damage or bad else "recovered" if eps.unclosed else "ok"
    return BagCheck(bag, status, len(eps), len(eps.skipped), "; ".join(parts))


def verify(paths: list[str | Path]) -> list[BagCheck]:
    """Check every bag under ``paths``, every CRC included.

    A damaged bag is reported (by file, chunk and episode) and the rest still checked. A closed bag
    must be complete and its metadata.yaml message count must match.
    """
    out: list[BagCheck] = []
    for p in paths:
        if not Path(p).exists():
            out.append(BagCheck(Path(p), "missing", detail=f"{p}: no such file or directory"))
            continue
        try:
            bags, notes = discover(p)
        except DatasetError as exc:
            out.append(BagCheck(Path(p), "corrupt", detail=str(exc)))
            continue
        for note in notes:
            out.append(BagCheck(Path(p), "layout", detail=note))
        for bag in bags:
            try:
                out.append(_check_bag(bag))
            except DatasetError as exc:
                out.append(BagCheck(bag, "corrupt", detail=str(exc)))
    return out


# ---------------------------------------------------------------------------- raw episodes
def _check_definitions(bag: Path, schemas: dict, store) -> None:
    for sc in schemas.values():
        if sc.name in (STEP_RECORD, EPISODE_RESULT):
            mine = store.generate_msgdef(sc.name, ros_version=2)[0]
            if sc.data.decode("utf-8", "replace").strip() != mine.strip():
                raise DatasetError(
                    f"{bag}: was recorded with a different {sc.name} definition than the "
                    "installed nsl_msgs; copying it raw would mislabel it (read it and re-record "
                    "instead)"
                )


def raw_episodes(bag: Path, keep: set[str] | None, store) -> list[tuple[str, list, tuple]]:
    """Return the raw messages of the complete episodes of ``bag``.

    As (episode id, [(log time, StepRecord CDR)], (log time, EpisodeResult CDR)): the episodes
    of ``bag`` (those read_episodes returns), restricted to ``keep``, in bag order.
    """
    usable = {e.episode_id for e in read_episodes(bag)}
    if keep is not None:
        usable &= keep
    files, _closed, compression, _info = bag_files(bag)
    if compression:
        raise DatasetError(f"{bag}: message-compressed bags cannot be copied raw")
    steps: dict[str, list] = {}
    results: dict[str, tuple] = {}
    order: list[str] = []
    for f in files:
        scan = scan_mcap(f, require_complete=False)
        _check_definitions(bag, scan.schemas, store)
        kinds = {
            cid: scan.schemas[ch.schema_id].name
            for cid, ch in scan.channels.items()
            if ch.schema_id in scan.schemas
        }
        for cid, log_time, data in scan.messages:
            kind = kinds.get(cid)
            try:
                if kind == STEP_RECORD:
                    eid = step_key(data).episode_id
                    if eid in usable:
                        steps.setdefault(eid, []).append((log_time, bytes(data)))
                elif kind == EPISODE_RESULT:
                    eid = episode_result(data).episode_id
                    if eid in usable and eid not in results:
                        results[eid] = (log_time, bytes(data))
                        order.append(eid)
            except CdrError as exc:
                raise DatasetError(f"{f}: cannot parse a {kind} message: {exc}") from exc
    return [(eid, steps.get(eid, []), results[eid]) for eid in order]


# ---------------------------------------------------------------------------- split
def tier_order(paths: list[str | Path], seed: int) -> list[tuple[Path, str, bool]]:
    """Order all complete episodes of ``paths`` as (bag, episode id, success), seeded.

    The order depends only on the set of episode ids and the seed (not on file order).
    """
    eps = {}
    for p in paths:
        for e in read_episodes(p):
            if e.episode_id in eps:
                continue  # the same episode in two bags (a merged copy): counted once
            eps[e.episode_id] = (e.bag, e.episode_id, e.success)
    ids = sorted(eps)
    perm = np.random.default_rng(seed).permutation(len(ids))
    return [eps[ids[i]] for i in perm]


def split_tiers(
    paths: list[str | Path],
    out_dir: str | Path,
    tiers=PAPER_TIERS,
    seed: int = 0,
    write_bags: bool = False,
    msg_dir=None,
) -> dict:
    """Write nested size tiers.

    Tier n holds the first n episodes of :func:`tier_order`, so every
    tier contains all smaller ones. Writes ``tier_<n>.yaml`` manifests (which every reader and
    loader here accepts) and, with ``write_bags``, a standalone bag ``tier_<n>/`` per tier.
    Tiers larger than the dataset are left out (and reported).
    """
    out_dir = Path(out_dir)
    tiers = sorted({int(t) for t in tiers})
    if not tiers or tiers[0] < 1:
        raise DatasetError(f"tiers must be positive sizes, got {tiers}")
    order = tier_order(paths, seed)
    made, left_out = [], [t for t in tiers if t > len(order)]
    out_dir.mkdir(parents=True, exist_ok=True)
    store = writer_typestore(msg_dir) if write_bags else None
    sources = [str(Path(p).resolve()) for p in paths]
    for n in tiers:
        if n > len(order):
            continue
        chosen = order[:n]
        by_bag: dict[Path, list[str]] = {}
        for bag, eid, _ in chosen:
            by_bag.setdefault(bag, []).append(eid)
        manifest = out_dir / f"tier_{n:04d}.yaml"
        doc = {
            "format": MANIFEST_FORMAT,
            "version": 1,
            "tier": n,
            "seed": seed,
            "sources": sources,
            "episodes": n,
            "successes": int(sum(s for _, _, s in chosen)),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "bags": [{"bag": str(b.resolve()), "episodes": ids} for b, ids in by_bag.items()],
        }
        manifest.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        entry = {
            "tier": n,
            "manifest": str(manifest),
            "episodes": n,
            "successes": doc["successes"],
        }
        if write_bags:
            bag_out = out_dir / f"tier_{n:04d}"
            entry["bag"] = str(bag_out)
            _write_copy(
                bag_out,
                [(b, set(ids)) for b, ids in by_bag.items()],
                store,
                msg_dir,
                {"tier": n, "seed": seed, "sources": sources, "derived_from": "nsl data split"},
            )
        made.append(entry)
    return {"available": len(order), "seed": seed, "tiers": made, "left_out": left_out}


# ---------------------------------------------------------------------------- merge
def _write_copy(
    out: Path, selection: list[tuple[Path, set[str] | None]], store, msg_dir, metadata: dict
) -> dict:
    seen: set[str] = set()
    duplicates = 0
    sessions = []
    with BagRecorder(out, metadata, msg_dir, fsync=False) as rec:
        for bag, keep in selection:
            eps = raw_episodes(bag, keep, store)
            sessions.append(str(bag))
            for eid, steps, result in eps:
                if eid in seen:
                    duplicates += 1
                    continue
                seen.add(eid)
                rec.write_episode_raw(steps, result)
        counts = {"episodes": rec.episodes_written, "steps": rec.steps_written}
    return {**counts, "duplicates_skipped": duplicates, "bag": str(out)}


def merge_bags(paths: list[str | Path], out: str | Path, msg_dir=None) -> dict:
    """Write one new bag with every complete episode of ``paths``.

    ``paths``: bags, dataset folders, manifests, read in input order; an episode id seen before is
    skipped. Session metadata: the sources and their session metadata.
    """
    store = writer_typestore(msg_dir)
    selection: list[tuple[Path, set[str] | None]] = []
    for p in paths:
        if is_manifest(p):
            selection += [(b, set(ids)) for b, ids in read_manifest(p).items()]
        else:
            selection += [(b, None) for b in find_bags(p)]
    sessions = []
    for bag, _ in selection:
        sessions.append(
            {"bag": str(Path(bag).resolve()), "session": read_episodes(bag).sessions[:1]}
        )
    return _write_copy(
        Path(out),
        selection,
        store,
        msg_dir,
        {"merged_from": sessions, "derived_from": "nsl data merge"},
    )
