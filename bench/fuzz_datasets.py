"""Long fuzz run of the bag reader and the checkpoint loader (the suite's test_fuzz, longer).

For each target (a closed bag, a crashed bag, a checkpoint) it applies N seeded random
mutations (1-3 of: truncation, byte flips, inserted random bytes, inserted well-framed records)
and checks the invariants of src/nsl_collector/test/fuzz_helpers.py: only DatasetError /
CheckpointError raised, no hang (10 s per read), no altered data returned, no intact episode
lost. Prints one line of figures per target; exits 1 on the first broken invariant.

    nice -n 10 .venv/bin/python bench/fuzz_datasets.py --mutations 10000
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src" / "nsl_collector" / "test"))

from fuzz_helpers import (  # noqa: E402 - the helpers live beside the tests that share them
    InvariantBroken,
    bag_target,
    check_bag,
    check_checkpoint,
    checkpoint_fixture,
    random_mutation,
)


def run_bag(root: Path, close: bool, n: int, seed: int) -> dict:
    """Fuzz one fixture bag ``n`` times; return the figures."""
    target = bag_target(root / ("closed" if close else "crashed"), close=close)
    rng = np.random.default_rng(seed)
    figures = {"mutations": 0, "refused": 0, "episodes_read": 0, "intact": 0, "max_s": 0.0}
    t0 = time.monotonic()
    for _ in range(n):
        t = time.monotonic()
        got = check_bag(target, random_mutation(rng, len(target.data)))
        figures["max_s"] = max(figures["max_s"], time.monotonic() - t)
        figures["mutations"] += 1
        figures["refused"] += got["refused"]
        figures["episodes_read"] += got["read"]
        figures["intact"] += got["intact"]
    figures["total_s"] = time.monotonic() - t0
    return figures


def run_checkpoint(root: Path, n: int, seed: int) -> dict:
    """Fuzz one fixture checkpoint ``n`` times; return the figures."""
    path = root / "ckpt.safetensors"
    data, weights = checkpoint_fixture(path)
    rng = np.random.default_rng(seed)
    figures = {"mutations": 0, "loaded": 0, "max_s": 0.0}
    t0 = time.monotonic()
    for _ in range(n):
        t = time.monotonic()
        got = check_checkpoint(path, data, weights, random_mutation(rng, len(data)))
        figures["max_s"] = max(figures["max_s"], time.monotonic() - t)
        figures["mutations"] += 1
        figures["loaded"] += got["loaded"]
    figures["total_s"] = time.monotonic() - t0
    return figures


def main() -> int:
    """Run every target; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutations", type=int, default=10_000, help="per target")
    parser.add_argument("--seed", type=int, default=30)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # every damaged read warns; the figures say enough
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {time.ctime()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            for name, run in (
                ("closed bag", lambda: run_bag(root, True, args.mutations, args.seed)),
                ("crashed bag", lambda: run_bag(root, False, args.mutations, args.seed + 1)),
                ("checkpoint", lambda: run_checkpoint(root, args.mutations, args.seed + 2)),
            ):
                f = run()
                rate = f["mutations"] / f["total_s"]
                rest = ", ".join(
                    f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in f.items()
                )
                print(f"{name}: {rest}, {rate:.0f} mutations/s, 0 invariants broken", flush=True)
        except InvariantBroken as exc:
            print(f"INVARIANT BROKEN: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
