#!/usr/bin/env python3
"""Action-selection latency of the QT-Opt policy, shared trunk versus naive CEM.

GraspPolicy.select_action (image trunk once per observation, shared by all CEM samples) versus a
naive CEM that recomputes the trunk for every sample, same model, same CEM (population 64,
6 elites, 2 iterations), measured in the same run.

    nice -n 5 .venv/bin/python bench/cem_latency.py [--threads 1] [--iters 200]

Prints one line per measurement and, as the last line, one JSON object with p50_ms_64,
p99_ms_64, p50_ms_128, speedup_vs_naive_64 (and more). Note ``cat /proc/loadavg`` next to the
figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src" / "nsl_policy"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nsl_policy.action_space import ACTION_DIM  # noqa: E402
from nsl_policy.cem import CEMConfig, cem_maximize  # noqa: E402
from nsl_policy.model import KEYPOINTS_RECIPE, QNetwork, QNetworkConfig  # noqa: E402
from nsl_policy.policy import ExplorationConfig, GraspPolicy  # noqa: E402


@torch.no_grad()
def naive_select_action(
    policy: GraspPolicy, image: np.ndarray, state: np.ndarray
) -> tuple[np.ndarray, float]:
    """Select an action with the same CEM over the same model, the trunk run for every sample.

    Every sample's score runs the whole network, trunk included (the N images are batched, so the
    comparison is with a batched forward, not a loop).
    """
    model = policy.model
    img, st = policy._inputs(model, image, state)

    def score(actions: torch.Tensor) -> torch.Tensor:  # (1, N, A) -> (1, N)
        n = actions.shape[1]
        images = img.expand(n, -1, -1, -1)
        return model(images, st.expand(n, -1), actions[0]).reshape(1, n)

    action, value = cem_maximize(
        score, 1, ACTION_DIM, policy.cem_config, generator=policy._generator, device=policy.device
    )
    return action[0].cpu().numpy(), float(torch.sigmoid(value[0]))


def measure(fn, inputs, iters: int, warmup: int) -> np.ndarray:
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    times = np.empty(iters)
    for i in range(iters):
        args = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(*args)
        times[i] = time.perf_counter() - t0
    return times * 1e3


def stats(ms: np.ndarray) -> dict[str, float]:
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the machine is shared)",
    )
    ap.add_argument(
        "--iters",
        type=int,
        default=200,
        help="timed action selections per size (naive: a quarter)",
    )
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument(
        "--width",
        type=int,
        default=QNetworkConfig().width,
        help="network width (default: the default config)",
    )
    ap.add_argument(
        "--head",
        choices=("conv", "keypoints"),
        default="conv",
        help="QNetworkConfig.head; keypoints uses the pipeline's recipe (16x16 map, fc 256)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cem = CEMConfig(population=64, elites=6, iterations=2)
    print(
        f"# {dt.datetime.now().isoformat(timespec='seconds')} {platform.node()} "
        f"{platform.processor() or platform.machine()} "
        f"cores={os.cpu_count()} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"loadavg={open('/proc/loadavg').read().split()[:3]}",
        flush=True,
    )
    print(
        f"# CEM population={cem.population} elites={cem.elites} iterations={cem.iterations}; "
        "exploration off",
        flush=True,
    )
    out: dict[str, float | int | str] = {}
    for size in (64, 128):
        recipe = KEYPOINTS_RECIPE if args.head == "keypoints" else {}
        config = QNetworkConfig(image_size=size, width=args.width, head=args.head, **recipe)
        policy = GraspPolicy(QNetwork(config), cem, ExplorationConfig(), seed=0, device="cpu")
        inputs = [
            (
                rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                np.array([0.0, rng.uniform(0.0, 0.3), k / 10], dtype=np.float32),
            )
            for k in range(10)
        ]
        fast = stats(measure(policy.select_action, inputs, args.iters, args.warmup))
        print(
            f"select_action {size}x{size}: p50 {fast['p50']:.2f} ms  p99 {fast['p99']:.2f} ms  "
            f"mean {fast['mean']:.2f} ms "
            f"({args.iters} calls)",
            flush=True,
        )
        out[f"p50_ms_{size}"], out[f"p99_ms_{size}"] = round(fast["p50"], 3), round(fast["p99"], 3)
        if size == 64:
            n_naive = max(10, args.iters // 4)
            naive = stats(
                measure(
                    lambda im, st: naive_select_action(policy, im, st),
                    inputs,
                    n_naive,
                    max(2, args.warmup // 2),
                )
            )
            speedup = naive["p50"] / fast["p50"]
            print(
                f"naive CEM (trunk per sample) {size}x{size}: p50 {naive['p50']:.2f} ms  "
                f"p99 {naive['p99']:.2f} ms "
                f"({n_naive} calls); speed-up of the shared trunk {speedup:.1f}x",
                flush=True,
            )
            out["naive_p50_ms_64"] = round(naive["p50"], 3)
            out["speedup_vs_naive_64"] = round(speedup, 2)
    out["threads"] = torch.get_num_threads()
    out["head"] = args.head
    out["loadavg_1m"] = float(open("/proc/loadavg").read().split()[0])
    print(
        json.dumps(
            {
                k: out[k]
                for k in (
                    "p50_ms_64",
                    "p99_ms_64",
                    "p50_ms_128",
                    "p99_ms_128",
                    "speedup_vs_naive_64",
                    "naive_p50_ms_64",
                    "head",
                    "threads",
                    "loadavg_1m",
                )
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
