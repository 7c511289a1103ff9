"""Dataset I/O benchmark: recording through the real collector node over ROS 2, and loading.

  nice -n 5 .venv/bin/python bench/dataset_io.py [--episodes-64 60] [--episodes-472 20] \
      [--steps 10]

(run with AMENT_PREFIX_PATH=.venv, as ./nsl does, or from an installed workspace)

1. record_images_per_s_64 / _472: collector_node started as its own process (nsl_bringup
   runner, isolated domain, Fast DDS shared-memory profile); this process publishes episodes of
   ``--steps`` StepRecords + an EpisodeResult as fast as the collector takes them (at most 2
   episodes on the wire, paced by collector/status), fsync on. Images/s = steps recorded / time,
   counted only when no step was dropped (else 0, and the drops are printed).
2. dropped_steps: 472x472 at 10 Hz control (one step per 100 ms, as a policy would), steps
   published minus StepRecords found in the closed bag.
3. load_transitions_per_s_cold / _cached: load_transitions of the 64x64 recording with an empty
   cache (decode + cache write), then again (cache hit).

Prints figures as it goes; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def record(
    root: Path, hw: tuple[int, int], episodes: int, steps: int, period: float, task: str
) -> dict:
    from nsl_bringup.graph import NodeSpec
    from nsl_bringup.runner import GraphRunner

    from nsl_collector.dataset import read_episodes
    from nsl_collector.ros_feed import EpisodeFeed

    class Quiet:
        lines: list = []

        def write(self, t):
            self.lines.append(t)

        def flush(self):
            pass

    out = Quiet()
    runner = GraphRunner(
        [
            NodeSpec(
                "collector",
                "nsl_collector",
                "collector_node",
                "collector.yaml",
                {"dataset_root": str(root), "task": task, "auto_start": False},
            )
        ],
        output=out,
    )
    runner.start()
    feed = EpisodeFeed(name=f"bench_feed_{task}")
    try:
        feed.wait_connected()
        reply = feed.call("start_session")
        assert reply.success, reply.message
        images = [feed.image(hw, i) for i in range(8)]
        t0 = time.perf_counter()
        for i in range(episodes):
            feed.episode(steps, hw, images=images, seed=i, period=period)
            feed.wait_for(
                lambda s, n=i: s["episodes_written"] + s["dropped_episodes"] >= n - 1,
                120,
                f"episode {i}",
            )
        st = feed.wait_for(
            lambda s: s["episodes_written"] + s["dropped_episodes"] >= episodes,
            120,
            "the last episode",
        )
        elapsed = time.perf_counter() - t0
        bag = Path(feed.call("stop_session").message)
    finally:
        feed.close()
        runner.stop()
    recorded = sum(e.num_steps for e in read_episodes(bag))
    published = feed.steps_published
    return {
        "bag": bag,
        "elapsed_s": elapsed,
        "published": published,
        "recorded": recorded,
        "dropped": published - recorded,
        "images_per_s": recorded / elapsed,
        "status": st,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--episodes-64", type=int, default=60)
    ap.add_argument("--episodes-472", type=int, default=20)
    ap.add_argument("--episodes-10hz", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()

    from nsl_bringup.runner import fastdds_environment, isolated_environment

    os.environ.update(
        {**isolated_environment(1 + (os.getpid() + 61) % 100), **fastdds_environment()}
    )
    from nsl_collector.dataset import load_transitions

    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
        f"python {platform.python_version()}; "
        f"loadavg {open('/proc/loadavg').read().split()[:3]}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="nsl-bench-") as tmp:
        root = Path(tmp) / "datasets"
        r64 = record(root, (64, 64), args.episodes_64, args.steps, 0.0, "rec64")
        print(
            f"64x64   max rate: {r64['recorded']}/{r64['published']} steps recorded "
            f"in {r64['elapsed_s']:.2f} s "
            f"= {r64['images_per_s']:.0f} images/s, dropped {r64['dropped']}",
            flush=True,
        )
        r472 = record(root, (472, 472), args.episodes_472, args.steps, 0.0, "rec472")
        print(
            f"472x472 max rate: {r472['recorded']}/{r472['published']} steps recorded "
            f"in {r472['elapsed_s']:.2f} s = {r472['images_per_s']:.0f} images/s "
            f"({r472['images_per_s'] * 472 * 472 * 3 / 1e6:.0f} MB/s), "
            f"dropped {r472['dropped']}",
            flush=True,
        )
        r10 = record(root, (472, 472), args.episodes_10hz, args.steps, 0.1, "rec472_10hz")
        print(
            f"472x472 at 10 Hz: {r10['recorded']}/{r10['published']} steps recorded, "
            f"dropped {r10['dropped']}",
            flush=True,
        )

        cache = Path(tmp) / "cache"
        t = time.perf_counter()
        cold = load_transitions(r64["bag"], cache_dir=cache)
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        warm = load_transitions(r64["bag"], cache_dir=cache)
        t_warm = time.perf_counter() - t
        assert len(warm) == len(cold)
        t = time.perf_counter()
        big = load_transitions(r472["bag"], cache_dir=cache)
        t_big_cold = time.perf_counter() - t
        t = time.perf_counter()
        load_transitions(r472["bag"], cache_dir=cache)
        t_big_warm = time.perf_counter() - t
        print(
            f"load 64x64:   {len(cold)} transitions cold {t_cold * 1e3:.0f} ms "
            f"= {len(cold) / t_cold:.0f}/s, cached {t_warm * 1e3:.1f} ms "
            f"= {len(cold) / t_warm:.0f}/s ({t_cold / t_warm:.0f}x)",
            flush=True,
        )
        print(
            f"load 472x472: {len(big)} transitions cold {t_big_cold * 1e3:.0f} ms "
            f"= {len(big) / t_big_cold:.0f}/s, cached {t_big_warm * 1e3:.1f} ms "
            f"= {len(big) / t_big_warm:.0f}/s ({t_big_cold / t_big_warm:.0f}x)",
            flush=True,
        )
    print(f"loadavg after: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    result = {
        "record_images_per_s_64": round(r64["images_per_s"], 1) if r64["dropped"] == 0 else 0.0,
        "record_images_per_s_472": round(r472["images_per_s"], 1) if r472["dropped"] == 0 else 0.0,
        "dropped_steps": r10["dropped"],
        "load_transitions_per_s_cold": round(len(cold) / t_cold, 1),
        "load_transitions_per_s_cached": round(len(cold) / t_warm, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
