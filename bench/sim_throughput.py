#!/usr/bin/env python3
"""Benchmark of the nsl_sim grasping world (issue 3 acceptance).

Measures, in one run:
  * grasp episodes/s of one process (one GraspEnv, scripted oracle policy) at 64x64 and 128x128;
  * the same for pybullet_envs' KukaDiverseObjectEnv (the performance peer) at equal image size and
    object count, in a throwaway venv with pybullet==3.2.7 and gym==0.23.1 from PyPI
    (build/bench_peer_venv, created on first use), run in a subprocess of that venv. The peer runs
    its own action semantics with uniform random actions (its "height hack" descends every step
    and grasps below 10 cm, so every peer episode ends in a close-and-lift as ours do);
  * the oracle's success on ``base`` over --oracle-episodes seeds with the default physics, and
    on the same seeds with pybullet_envs' physics settings (SimConfig.reference_physics()), so the
    effect of the faster physics settings on the task is visible;
  * the scaling of 2 processes over 1 (each process runs --scaling-episodes; the rate of each
    worker is timed inside the worker after a barrier, so start-up is not counted).

Usage (from the repository root, with the workspace venv):
  nice -n 5 .venv/bin/python bench/sim_throughput.py          # full run (~15-25 min on 2 cores)
  nice -n 5 .venv/bin/python bench/sim_throughput.py --quick  # a couple of minutes, rough figures

The last line printed is one JSON object with the keys episodes_per_s_64,
peer_episodes_per_s_64, ratio_vs_peer, oracle_success_base, two_process_scaling (and more).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / "build" / "bench_peer_venv"
PEER_REQUIREMENTS = ["pybullet==3.2.7", "gym==0.23.1"]
PEER_MODULE = "pybullet_envs.bullet.kuka_diverse_object_gym_env"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ peer side
def peer_worker(size: int, episodes: int, num_objects: int, seed: int) -> None:
    """Run KukaDiverseObjectEnv with random actions inside the peer venv; print one JSON line."""
    import random

    import numpy as np
    from pybullet_envs.bullet.kuka_diverse_object_gym_env import KukaDiverseObjectEnv

    random.seed(seed)
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    env = KukaDiverseObjectEnv(
        renders=False, isDiscrete=False, width=size, height=size, numObjects=num_objects
    )

    def episode() -> tuple[int, float]:
        env.reset()
        done, steps, reward = False, 0, 0.0
        while not done:
            _obs, reward, done, _info = env.step(rng.uniform(-1.0, 1.0, 3))
            steps += 1
        return steps, float(reward)

    episode()  # warm-up (first loads), not timed
    steps = successes = 0
    t0 = time.perf_counter()
    for _ in range(episodes):
        s, r = episode()
        steps += s
        successes += r > 0
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "episodes": episodes,
                "seconds": seconds,
                "episodes_per_s": episodes / seconds,
                "steps_per_episode": steps / episodes,
                "successes": int(successes),
            }
        ),
        flush=True,
    )


def base_python() -> str:
    """Return a plain CPython to create the peer venv from (not the workspace venv's wrapper)."""
    for cand in (getattr(sys, "_base_executable", None), "/usr/bin/python3"):
        if cand and os.path.exists(cand):
            return cand
    return "python3"


def ensure_peer_venv() -> Path:
    py = PEER_VENV / "bin" / "python"
    check = [str(py), "-c", f"import {PEER_MODULE}"]
    if py.exists() and subprocess.run(check, capture_output=True, cwd="/tmp").returncode == 0:
        return py
    log(f"[bench] creating the peer venv {PEER_VENV} with {' '.join(PEER_REQUIREMENTS)} (PyPI)")
    subprocess.run([base_python(), "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_REQUIREMENTS],
        check=True,
    )
    subprocess.run(check, check=True, capture_output=True, cwd="/tmp")
    return py


def run_peer(py: Path, size: int, episodes: int, num_objects: int, seed: int) -> dict:
    cmd = [
        str(py),
        str(Path(__file__).resolve()),
        "--peer-worker",
        "--size",
        str(size),
        "--episodes",
        str(episodes),
        "--num-objects",
        str(num_objects),
        "--seed",
        str(seed),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd="/tmp")
    if out.returncode != 0:
        raise RuntimeError(f"peer worker failed ({out.returncode}):\n{out.stderr[-3000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------ our side
def our_throughput(
    size: int, episodes: int, num_objects: int, seed: int, reference: bool = False
) -> dict:
    from nsl_sim.env import GraspEnv, SimConfig
    from nsl_sim.evaluate import run_oracle_episode

    kw = dict(image_size=size, num_objects=num_objects)
    env = GraspEnv(SimConfig.reference_physics(**kw) if reference else SimConfig(**kw))
    try:
        run_oracle_episode(env, seed + 999_999)  # warm-up (asset cache, IK cache), not timed
        steps = successes = 0
        t0 = time.perf_counter()
        for i in range(episodes):
            ok, n = run_oracle_episode(env, seed + i)
            steps += n
            successes += ok
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    return {
        "episodes": episodes,
        "seconds": seconds,
        "episodes_per_s": episodes / seconds,
        "steps_per_episode": steps / episodes,
        "successes": successes,
    }


def _oracle_worker(args) -> list[bool]:
    seeds, reference, num_objects = args
    from nsl_sim.env import GraspEnv, SimConfig
    from nsl_sim.evaluate import run_oracle_episode

    cfg = (
        SimConfig.reference_physics(num_objects=num_objects)
        if reference
        else SimConfig(num_objects=num_objects)
    )
    env = GraspEnv(cfg)
    try:
        return [run_oracle_episode(env, s)[0] for s in seeds]
    finally:
        env.close()


def oracle_success(episodes: int, reference: bool, num_objects: int, processes: int = 2) -> dict:
    """Oracle success on base, seeds 0..episodes-1 (split over worker processes; order kept)."""
    import multiprocessing as mp

    from nsl_sim.evaluate import wilson_interval

    seeds = list(range(episodes))
    chunks = [seeds[i::processes] for i in range(processes)]
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_oracle_worker, [(c, reference, num_objects) for c in chunks])
    outcomes = {s: ok for c, part in zip(chunks, parts) for s, ok in zip(c, part)}
    k = sum(outcomes.values())
    lo, hi = wilson_interval(k, episodes)
    return {
        "episodes": episodes,
        "successes": k,
        "success": k / episodes,
        "ci95": [lo, hi],
        "wall_s": time.perf_counter() - t0,
        "outcomes": [outcomes[s] for s in seeds],
    }


def _scaling_worker(barrier, queue, episodes: int, seed: int, num_objects: int) -> None:
    from nsl_sim.env import GraspEnv, SimConfig
    from nsl_sim.evaluate import run_oracle_episode

    env = GraspEnv(SimConfig(num_objects=num_objects))
    run_oracle_episode(env, seed + 999_999)  # warm-up
    barrier.wait()
    t0 = time.perf_counter()
    for i in range(episodes):
        run_oracle_episode(env, seed + i)
    queue.put(episodes / (time.perf_counter() - t0))
    env.close()


def scaled_rate(processes: int, episodes: int, num_objects: int) -> float:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(
            target=_scaling_worker, args=(barrier, queue, episodes, 20_000 + 1000 * i, num_objects)
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    rates = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


# ------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--episodes",
        type=int,
        default=60,
        help="timed episodes per throughput figure at 64x64 (default 60)",
    )
    ap.add_argument(
        "--episodes-128", type=int, default=30, help="timed episodes at 128x128 (default 30)"
    )
    ap.add_argument(
        "--peer-episodes",
        type=int,
        default=30,
        help="timed peer episodes per image size (default 30)",
    )
    ap.add_argument(
        "--oracle-episodes",
        type=int,
        default=200,
        help="episodes for the oracle success on base (default 200)",
    )
    ap.add_argument(
        "--reference-episodes",
        type=int,
        default=200,
        help="episodes for the oracle success with pybullet_envs' physics (default 200; 0 skips)",
    )
    ap.add_argument(
        "--scaling-episodes",
        type=int,
        default=30,
        help="episodes per process for the scaling figure (default 30)",
    )
    ap.add_argument(
        "--num-objects",
        type=int,
        default=3,
        help="objects per episode, both simulators (default 3)",
    )
    ap.add_argument("--seed", type=int, default=10_000, help="first seed of the timed episodes")
    ap.add_argument(
        "--skip-peer", action="store_true", help="do not measure the peer (its keys are null)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="small counts for a smoke run (rough figures)"
    )
    ap.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.peer_worker:
        peer_worker(a.size, a.episodes, a.num_objects, a.seed)
        return 0
    if a.quick:
        a.episodes, a.episodes_128, a.peer_episodes = 8, 4, 4
        a.oracle_episodes, a.reference_episodes, a.scaling_episodes = 20, 10, 6

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine = (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}"
    )
    load0 = open("/proc/loadavg").read().split()[:3]
    log(f"[bench] {started} on {machine}; loadavg {load0}")
    import pybullet

    res: dict = {
        "date": started,
        "machine": machine,
        "pybullet_api": pybullet.getAPIVersion(),
        "num_objects": a.num_objects,
    }

    for size, n in ((64, a.episodes), (128, a.episodes_128)):
        r = our_throughput(size, n, a.num_objects, a.seed)
        res[f"ours_{size}"] = r
        print(
            f"nsl_sim {size}x{size}: {r['episodes_per_s']:.3f} episodes/s per process "
            f"({r['episodes']} oracle episodes, {r['steps_per_episode']:.1f} steps/episode)",
            flush=True,
        )

    if not a.skip_peer:
        py = ensure_peer_venv()
        for size in (64, 128):
            r = run_peer(py, size, a.peer_episodes, a.num_objects, a.seed)
            res[f"peer_{size}"] = r
            print(
                f"KukaDiverseObjectEnv {size}x{size}: {r['episodes_per_s']:.3f} episodes/s "
                f"per process ({r['episodes']} random-action episodes, "
                f"{r['steps_per_episode']:.1f} steps/episode)",
                flush=True,
            )

    o = oracle_success(a.oracle_episodes, reference=False, num_objects=a.num_objects)
    res["oracle_base"] = {k: v for k, v in o.items() if k != "outcomes"}
    print(
        f"oracle success on base (default physics): {o['success']:.3f} "
        f"({o['successes']}/{o['episodes']}), "
        f"95% CI [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}]",
        flush=True,
    )
    if a.reference_episodes > 0:
        ro = oracle_success(a.reference_episodes, reference=True, num_objects=a.num_objects)
        res["oracle_base_reference_physics"] = {k: v for k, v in ro.items() if k != "outcomes"}
        m = min(a.reference_episodes, a.oracle_episodes)
        both = sum(x == y for x, y in zip(o["outcomes"][:m], ro["outcomes"][:m]))
        res["oracle_base_reference_physics"]["same_outcome_as_default"] = both / m
        print(
            f"oracle success on base (pybullet_envs physics): {ro['success']:.3f} "
            f"({ro['successes']}/{ro['episodes']}), "
            f"95% CI [{ro['ci95'][0]:.3f}, {ro['ci95'][1]:.3f}]; "
            f"same outcome on {both}/{m} seeds",
            flush=True,
        )
        rr = our_throughput(64, max(4, a.episodes // 4), a.num_objects, a.seed, reference=True)
        res["ours_64_reference_physics"] = rr
        print(
            f"nsl_sim 64x64 with pybullet_envs physics: {rr['episodes_per_s']:.3f} "
            "episodes/s per process",
            flush=True,
        )

    r1 = scaled_rate(1, a.scaling_episodes, a.num_objects)
    r2 = scaled_rate(2, a.scaling_episodes, a.num_objects)
    res["scaling"] = {"one_process_episodes_per_s": r1, "two_processes_episodes_per_s": r2}
    print(f"1 process: {r1:.3f} episodes/s; 2 processes: {r2:.3f} episodes/s in total", flush=True)

    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    ours64 = res["ours_64"]["episodes_per_s"]
    peer64 = res["peer_64"]["episodes_per_s"] if "peer_64" in res else None
    summary = {
        "episodes_per_s_64": round(ours64, 4),
        "episodes_per_s_128": round(res["ours_128"]["episodes_per_s"], 4),
        "peer_episodes_per_s_64": round(peer64, 4) if peer64 else None,
        "peer_episodes_per_s_128": round(res["peer_128"]["episodes_per_s"], 4)
        if "peer_128" in res
        else None,
        "ratio_vs_peer": round(ours64 / peer64, 3) if peer64 else None,
        "oracle_success_base": round(o["success"], 4),
        "oracle_success_base_ci95": [round(x, 4) for x in o["ci95"]],
        "oracle_episodes": o["episodes"],
        "oracle_success_base_reference_physics": (
            round(res["oracle_base_reference_physics"]["success"], 4)
            if "oracle_base_reference_physics" in res
            else None
        ),
        "two_process_scaling": round(r2 / r1, 3),
        "date": started,
        "loadavg_start_end": [load0, res["loadavg_end"]],
    }
    res["summary"] = summary
    out = ROOT / "build" / "bench_sim_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    log(f"[bench] details in {out}")
    sys.stdout.flush()
    try:  # PyBullet's C code prints (argv[0]=...) through C stdio: flush it before the last line
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:
        pass
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
