"""``nsl data``: dataset commands (ROS-free).

nsl data info PATH...                      episodes, success rate, tasks, checkpoints (--json)
nsl data verify PATH...                    check every bag; damaged files named, the rest checked
nsl data split PATH... --out DIR           nested size tiers 25..800 (seeded); --bags: as bags
nsl data merge PATH... --out BAG           one bag with every complete episode
nsl data cache clear|info                  the loader's transition cache
"""

from __future__ import annotations

import json
import sys

from .cache import TransitionCache
from .errors import DatasetError
from .reader import dataset_info
from .tools import PAPER_TIERS, merge_bags, split_tiers, verify


def _err(exc: Exception) -> int:
    print(f"nsl data: {exc}", file=sys.stderr)
    return 1


def cmd_info(args) -> int:
    status = 0
    for path in args.paths:
        try:
            info = dataset_info(path, strict=args.strict)
        except DatasetError as exc:
            status = _err(exc)
            continue
        if args.json:
            print(json.dumps(info))
            continue
        rate = info["success_rate"]
        print(
            f"{path}: {len(info['bags'])} bag(s), {info['complete']} complete episode(s) "
            f"({info['skipped']} skipped, {info['in_flight']} in flight), {info['steps']} steps"
        )
        print(
            f"  success rate: {rate:.3f} ({info['successes']}/{info['complete']})"
            if info["complete"]
            else "  success rate: n/a"
        )
        for t, n in info["tasks"].items():
            print(f"  task {t}: {n} episodes, success {info['task_success_rate'][t]:.3f}")
        for c, n in info["checkpoints"].items():
            print(f"  checkpoint {c or '(none)'}: {n} episodes")
        print(f"  image shapes: {info['image_shapes']}")
        for b in info["unclosed_bags"]:
            print(f"  unclosed (recovered): {b}")
        for s in info["skipped_episodes"][:20]:
            print(f"  skipped {s['episode_id']} in {s['bag']}: {s['reason']}")
        for d in info["damage"][:20]:
            print(f"  DAMAGED (skipped): {d}")
        for d in info["damaged_bags"]:
            print(f"  DAMAGED bag (skipped): {d['reason']}")
        for n in info["notes"]:
            if "layout" in n or "not listed" in n or "inside the bag" in n:
                print(f"  note: {n}")
    return status


def cmd_verify(args) -> int:
    checks = verify(args.paths)
    failing = {"corrupt", "damaged", "missing"} | ({"recovered"} if args.strict else set())
    bad = missing = 0
    for c in checks:
        if c.status == "layout":
            print(f"{'NOTE':<10} {c.detail}")
            continue
        if c.status in ("corrupt", "missing"):
            print(f"{c.status.upper():<10} {c.bag}: {c.detail}")
        else:
            extra = f" ({c.detail})" if c.detail else ""
            label = {"ok": "OK"}.get(c.status, c.status.upper())
            print(f"{label:<10} {c.bag}: {c.episodes} episode(s), {c.skipped} skipped{extra}")
        bad += c.status in failing and c.status != "missing"
        missing += c.status == "missing"
    n = sum(c.status not in ("layout", "missing") for c in checks)
    print(f"{n} bag(s) checked, {bad} damaged" + (f", {missing} missing" if missing else ""))
    return 1 if bad or missing else 0


def cmd_split(args) -> int:
    try:
        tiers = [int(t) for t in args.tiers.split(",") if t.strip()]
        res = split_tiers(args.paths, args.out, tiers, seed=args.seed, write_bags=args.bags)
    except (DatasetError, ValueError) as exc:
        return _err(exc)
    for t in res["tiers"]:
        where = t.get("bag", t["manifest"])
        print(
            f"tier {t['tier']:>4}: {t['episodes']} episodes, {t['successes']} successes -> {where}"
        )
    if res["left_out"]:
        print(f"left out (only {res['available']} complete episodes): {res['left_out']}")
    return 0


def cmd_merge(args) -> int:
    try:
        res = merge_bags(args.paths, args.out)
    except DatasetError as exc:
        return _err(exc)
    dup = res["duplicates_skipped"]
    print(
        f"wrote {res['bag']}: {res['episodes']} episodes, {res['steps']} steps"
        + (f", {dup} duplicate(s) skipped" if dup else "")
    )
    return 0


def cmd_cache(args) -> int:
    cache = TransitionCache(args.cache_dir)
    if args.action == "clear":
        print(f"removed {cache.clear()} entries from {cache.root}")
    else:
        entries = [p for p in cache.root.iterdir() if p.is_dir()] if cache.root.is_dir() else []
        size = sum(f.stat().st_size for p in entries for f in p.iterdir())
        print(f"{cache.root}: {len(entries)} entries, {size / 1e6:.1f} MB")
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="dataset tools: info, verify, split, merge",
        description="Grasp-episode datasets (rosbag2/MCAP bags, dataset folders, manifests).",
    )
    sub = p.add_subparsers(dest="data_command", required=True)
    c = sub.add_parser("info", help="episodes, success rate, tasks, checkpoints")
    c.add_argument("paths", nargs="+", help="bags, dataset folders or tier manifests")
    c.add_argument("--json", action="store_true", help="one JSON object per path")
    c.add_argument(
        "--strict",
        action="store_true",
        help="refuse a path with any damaged bag or episode (default: skip them with a warning)",
    )
    c.set_defaults(fn=cmd_info)
    c = sub.add_parser("verify", help="check bags; report damaged files by name and carry on")
    c.add_argument("paths", nargs="+")
    c.add_argument(
        "--strict",
        action="store_true",
        help="also fail on unclosed (crash-recovered) bags",
    )
    c.set_defaults(fn=cmd_verify)
    c = sub.add_parser("split", help="nested size tiers (seeded), as the paper's 800-grasp sets")
    c.add_argument("paths", nargs="+")
    c.add_argument(
        "--out", required=True, help="folder for tier_<n>.yaml manifests (and tier_<n>/ bags)"
    )
    c.add_argument(
        "--tiers", default=",".join(map(str, PAPER_TIERS)), help="comma-separated sizes"
    )
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--bags", action="store_true", help="also write each tier as a standalone bag")
    c.set_defaults(fn=cmd_split)
    c = sub.add_parser("merge", help="combine bags into one")
    c.add_argument("paths", nargs="+")
    c.add_argument("--out", required=True, help="new bag directory (must not exist)")
    c.set_defaults(fn=cmd_merge)
    c = sub.add_parser("cache", help="the loader's transition cache")
    c.add_argument("action", choices=("info", "clear"))
    c.add_argument(
        "--cache-dir", default=None, help="default: $NSL_DATASET_CACHE or ~/.cache/nsl/transitions"
    )
    c.set_defaults(fn=cmd_cache)
