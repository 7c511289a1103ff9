"""Loading QT-Opt transitions from bags, dataset folders and manifests, through the cache.

Damage policy (as :func:`nsl_collector.reader.read_episodes`): damaged episodes and bags are
skipped with a warning naming the file, the episode and the reason, and the rest is used;
``strict=True`` refuses instead. Images must have one shape for one training set: the shape of
most episodes is used, and an episode at another size is skipped by name (refused in strict
mode), never stretched or allowed to refuse the whole set.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .layout import discover, is_manifest, read_manifest
from .reader import EpisodeList, _read_bag, transitions_from_episodes
from .transitions import Transitions

log = logging.getLogger(__name__)


def _select_episodes(tr: Transitions, keep: np.ndarray) -> Transitions:
    """Select the rows of the episodes flagged in ``keep`` (by episode number), renumbered."""
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


def _majority_shape(episodes: list) -> tuple | None:
    shapes = Counter(e.steps[0].image.shape for e in episodes)
    return max(shapes, key=lambda s: (shapes[s], -list(shapes).index(s))) if shapes else None


def _refuse_damage(bag: Path, meta: dict) -> None:
    """DatasetError if a cached bag's report holds damage (strict mode reads no damaged data)."""
    if meta.get("damage"):
        raise DatasetError(meta["damage"][0])
    bad = [s for s in meta.get("skipped", []) if len(s) > 2 and s[2]]
    if bad:
        raise DatasetError(f"{bag}: damaged episode {bad[0][0]}: {bad[0][1]}")


def _warn_damage(bag: Path, meta: dict) -> None:
    """Log a bag's damage once, whether its report was just read or came from the cache."""
    for d in meta.get("damage", []):
        log.warning("%s", d)
    for eid, reason, *damaged in meta["skipped"]:
        if damaged and damaged[0]:
            log.warning("%s: skipped the damaged episode %s: %s", bag, eid, reason)


def _bag_transitions(bag: Path, action_space, cache, strict: bool) -> tuple[Transitions, dict]:
    """One bag's transitions and meta (episode ids, image shape, skipped, damage), cached."""
    if cache is not None:
        hit = cache.get(bag, action_space)
        if hit is not None:
            if strict:
                _refuse_damage(bag, hit[1])
            return hit
        from .cache import bag_fingerprint  # cycle-free: cache needs only transitions

        fingerprint = bag_fingerprint(bag, full=cache.full)  # before reading: a change meanwhile
    out = EpisodeList(path=bag)
    _read_bag(bag, action_space, out, strict)
    skipped = [[s.episode_id, s.reason, s.damaged] for s in out.skipped]
    shape = _majority_shape(list(out))
    usable = [e for e in out if e.steps[0].image.shape == shape]
    for e in out:
        if e.steps[0].image.shape != shape:
            reason = f"images of {e.steps[0].image.shape}, the bag's other episodes {shape}"
            if strict:
                raise DatasetError(f"{bag}: episode {e.episode_id}: {reason}")
            skipped.append([e.episode_id, reason, True])
    tr = transitions_from_episodes(usable)
    meta = {
        "bag": str(bag),
        "episode_ids": [e.episode_id for e in usable],
        "image_shape": list(shape) if shape else None,
        "skipped": skipped,
        "damage": list(out.damage)
        + [f"skipped the damaged bag {b}: {r}" for b, r in out.damaged_bags],
    }
    if cache is not None and not out.damaged_bags:
        cache.put(bag, action_space, tr, meta, fingerprint)
    return tr, meta


def load_transitions(
    paths: list[str | Path] | str | Path,
    action_space=None,
    *,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    strict: bool = False,
) -> Transitions:
    """Load the QT-Opt transitions of every complete episode in ``paths``.

    ``paths``: bags, dataset directories or episode manifests. Reward 1 on the last step of a
    successful episode else 0, done on the last step, next_index to the next row (itself on the
    last step). Episodes are numbered in reading order.

    ``cache``: decoded bags are kept in an on-disk cache (:mod:`nsl_collector.cache`; location
    ``cache_dir``, ``$NSL_DATASET_CACHE`` or ``~/.cache/nsl/transitions``) and reused while the
    bag is unchanged. ``strict``: refuse (DatasetError) on any damaged bag or episode instead of
    skipping it with a warning (see the module doc). A path that is missing or holds no usable
    episode is always refused.
    """
    if action_space is None:
        from nsl_policy.action_space import ActionSpace  # the default scaling of actions

        action_space = ActionSpace()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("load_transitions: no paths given")
    for p in paths:
        if not p.exists():
            raise DatasetError(f"{p}: no such file or directory (missing)")
    store = None
    if cache:
        from .cache import TransitionCache  # cycle-free: the cache imports only transitions

        store = TransitionCache(cache_dir)
    parts: list[tuple[Path, Transitions, dict]] = []
    for p in paths:
        if is_manifest(p):
            selection = read_manifest(p)
        else:
            bags, notes = discover(p)
            for note in notes:
                log.warning("%s", note)
            selection = {b: None for b in bags}
        found, skipped = 0, []
        for bag, ids in selection.items():
            if not bag.exists():
                raise DatasetError(f"{p}: names {bag}, which does not exist")
            tr, meta = _bag_transitions(bag, action_space, store, strict)
            _warn_damage(bag, meta)
            if ids is not None:
                have = {e: k for k, e in enumerate(meta["episode_ids"])}
                missing = [i for i in ids if i not in have]
                if missing:
                    raise DatasetError(
                        f"{p}: {len(missing)} episode(s) it names are not complete episodes of "
                        f"{bag} (e.g. {missing[0]}): the bag changed since the manifest was "
                        "written"
                    )
                keep = np.zeros(len(meta["episode_ids"]), dtype=bool)
                keep[[have[i] for i in ids]] = True
                tr = _select_episodes(tr, keep)
            else:
                skipped += [(bag, *s) for s in meta["skipped"]]
            found += tr.num_episodes
            parts.append((bag, tr, meta))
        if not found:
            why = "; ".join(f"{e}: {r}" for _b, e, r, *_ in skipped[:5]) or "no episodes at all"
            raise DatasetError(f"{p}: holds no complete episode ({why})")
    return _stack(parts, strict)


def _stack(parts: list[tuple[Path, Transitions, dict]], strict: bool) -> Transitions:
    """One set of the parts whose images have the shape most episodes have; the rest skipped."""
    parts = [(b, t, m) for b, t, m in parts if len(t)]
    counts: Counter = Counter()
    for _bag, tr, _meta in parts:
        counts[tr.image.shape[1:]] += tr.num_episodes
    shape = max(counts, key=lambda s: counts[s])
    keep = []
    for bag, tr, meta in parts:
        if tr.image.shape[1:] == shape:
            keep.append(tr)
            continue
        reason = (
            f"{bag}: episode(s) {', '.join(meta['episode_ids'][:5])} have images of "
            f"{tuple(tr.image.shape[1:])}, most episodes {tuple(shape)}"
        )
        if strict:
            raise DatasetError(f"{reason}; cannot stack them into one set")
        log.warning("skipped: %s", reason)
    return keep[0] if len(keep) == 1 else Transitions.concatenate(keep)
