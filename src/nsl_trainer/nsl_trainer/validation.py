"""Cheap checks of fine-tune requests: the datasets exist and hold at least one episode.

The trainer node must answer at once, so this never decodes a message: for a closed bag the
message counts in metadata.yaml say whether it holds an EpisodeResult; for an unclosed one (a
recording that was killed) the MCAP records are scanned for a message on an EpisodeResult
channel. The worker's full read reports anything the quick check cannot see (e.g. all episodes
aborted) as a failed job.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from nsl_collector.dataset import EPISODE_RESULT, DatasetError, find_bags
from nsl_collector.mcap_scan import scan_mcap


def _count_in_metadata(bag: Path) -> int | None:
    meta = bag / "metadata.yaml"
    if not meta.is_file():
        return None
    try:
        info = yaml.safe_load(meta.read_text(encoding="utf-8"))["rosbag2_bagfile_information"]
        topics = info.get("topics_with_message_count") or []
        counts = [
            int(t.get("message_count", 0))
            for t in topics
            if t.get("topic_metadata", {}).get("type") == EPISODE_RESULT
        ]
        files = info.get("relative_file_paths") or []
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"{meta}: not a valid rosbag2 metadata.yaml: {exc}") from exc
    for f in files:
        if not (bag / f).is_file():
            raise DatasetError(f"{bag / f}: listed in {meta} but missing")
    if not files:
        raise DatasetError(f"{meta}: lists no storage file")
    return sum(counts)


def _count_by_scan(bag: Path, strict: bool) -> int:
    files = [bag] if bag.is_file() else sorted(bag.glob("*.mcap"))
    n = 0
    for f in files:
        scan = scan_mcap(f, require_complete=False, strict=strict)
        wanted = {
            cid
            for cid, ch in scan.channels.items()
            if getattr(scan.schemas.get(ch.schema_id), "name", "") == EPISODE_RESULT
        }
        n += sum(1 for cid, _, _ in scan.messages if cid in wanted)
    return n


def _bag_episode_results(bag: Path, strict: bool = False) -> int:
    n = _count_in_metadata(bag) if bag.is_dir() else None
    return n if n is not None else _count_by_scan(bag, strict)


def episode_results(path: str | Path) -> int:
    """Return the number of EpisodeResult messages in the bag(s) at ``path``.

    ``path`` is a bag, an .mcap file or a dataset folder; no message is decoded. Raises
    DatasetError for a missing path, a folder that holds no bag, or a bag that cannot be read.
    """
    return sum(_bag_episode_results(bag) for bag in find_bags(path))


def check_dataset(path: str | Path, *, strict: bool = False) -> str | None:
    """Why ``path`` cannot be trained on, or None.

    A bag that cannot be read is left to the worker, which skips it with a warning (the damage
    policy of nsl_collector.loading), while another bag under ``path`` holds episodes;
    ``strict``: any unreadable bag refuses ``path``.
    """
    try:
        bags = find_bags(path)
    except (DatasetError, OSError) as exc:
        return f"dataset '{path}' is unusable: {exc}"
    n, damaged = 0, []
    for bag in bags:
        try:
            n += _bag_episode_results(bag, strict)
        except (DatasetError, OSError) as exc:
            if strict:
                return f"dataset '{path}' is unusable (strict): {exc}"
            damaged.append(str(exc))
    if damaged and n < 1:
        return f"dataset '{path}' is unusable: {'; '.join(damaged[:3])}"
    if n < 1:
        return f"dataset '{path}' holds no episode (no EpisodeResult recorded)"
    return None
