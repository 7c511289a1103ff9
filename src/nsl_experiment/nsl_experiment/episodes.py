"""Grasp episodes in the ROS-free sim: scripted bootstrap, policy collection, greedy evaluation.

Collected episodes are written with nsl_collector's BagRecorder, the format the robot's
collector node writes, so every trainer reads sim and robot data the same way.

Work is split into *jobs* (a chunk of episodes with fixed seeds, one bag per collection job) that
run in worker processes; a job's result depends only on its spec, never on the worker count.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from nsl_collector.dataset import (
    BagRecorder,
    DatasetError,
    EpisodeData,
    StepData,
    find_msg_dir,
)
from nsl_collector.reader import read_episodes
from nsl_policy.action_space import ActionSpace, GraspCommand
from nsl_policy.cem import CEMConfig
from nsl_policy.checkpoint import load_checkpoint
from nsl_policy.policy import ExplorationConfig, GraspPolicy
from nsl_sim.env import GraspEnv, Observation, SimConfig
from nsl_sim.evaluate import wilson_interval  # the project's one Wilson interval
from nsl_sim.scripted import grasp_at, random_action, random_grasp_goal
from nsl_sim.tasks import TaskConfig, get_task, task_from_dict

#: Episode kinds.
SCRIPTED = "scripted"
POLICY = "policy"

#: A task as job specs and cache keys carry it: a registered name (nsl_sim.tasks.TASKS) at its
#: own severity, or any other variation as a TaskConfig dict (``TaskConfig.to_dict()``).
TaskSpec = str | dict


def task_spec(name: str, severity: float | None = None) -> TaskSpec:
    """Return the spec of task ``name`` at ``severity`` (None: the task's own).

    The registered task stays its name, so its cache keys match those of plain-name
    evaluations (evaluate_base).
    """
    task = get_task(name)
    if severity is None or float(severity) == task.severity:
        return name
    return dataclasses.replace(task, severity=float(severity)).to_dict()


def resolve_task(spec: TaskSpec) -> TaskConfig:
    """Return the TaskConfig of a spec (a name or a TaskConfig dict)."""
    return task_from_dict(spec, source="task spec") if isinstance(spec, dict) else get_task(spec)


@dataclass
class EpisodeOutcome:
    """One episode's result."""

    seed: int
    success: bool
    steps: int
    kind: str


def success_summary(outcomes: list[EpisodeOutcome]) -> dict[str, Any]:
    """Success rate, its 95% Wilson interval and the mean episode length of ``outcomes``."""
    n = len(outcomes)
    k = sum(1 for o in outcomes if o.success)
    lo, hi = wilson_interval(k, n)
    return {
        "episodes": n,
        "successes": k,
        "success_rate": k / n if n else float("nan"),
        "ci95": [lo, hi],
        "mean_steps": float(np.mean([o.steps for o in outcomes])) if n else float("nan"),
    }


def msg_dir() -> Path | None:
    """Return nsl_msgs' .msg folder.

    That is the ament index / NSL_MSGS_DIR (nsl_collector's lookup), else the venv prefix or
    this source tree (``.venv/bin/nsl`` without a sourced workspace).
    """
    try:
        return find_msg_dir()
    except DatasetError:
        for d in (
            Path(sys.prefix) / "share" / "nsl_msgs" / "msg",
            Path(__file__).resolve().parents[2] / "nsl_msgs" / "msg",
        ):
            if d.is_dir() and any(d.glob("*.msg")):
                return d
        raise


def policy_state(obs: Observation) -> np.ndarray:
    """Return the policy's state input (closed, height, step fraction) of a sim observation."""
    return np.array(
        [1.0 if obs.gripper_closed else 0.0, obs.height, obs.step_fraction], dtype=np.float32
    )


def _scripted_actor(spec: dict, env: GraspEnv, seed: int) -> Callable:
    """Return the scripted actor of one episode, decided per episode from the seed.

    It is the oracle with per-episode noise/epsilon, or a purely random episode, or
    (``decoy_fraction``) the oracle's motion towards a random grasp pose.
    """
    space = ActionSpace(env.config.max_translation, env.config.max_rotation)
    rng = np.random.default_rng([spec["rng_seed"], seed])
    random_episode = rng.random() < spec["random_fraction"]
    noise = rng.uniform(0.0, spec["noise_max"])
    eps = rng.uniform(0.0, spec["epsilon_max"])
    # Drawn only when asked, so that the episodes of older configs stay bit-identical.
    decoy = (
        not random_episode
        and spec.get("decoy_fraction", 0.0) > 0
        and rng.random() < spec["decoy_fraction"]
    )
    goal = random_grasp_goal(rng, env.config) if decoy else None

    def act(obs) -> tuple[np.ndarray, float, bool]:
        if random_episode or rng.random() < eps:
            t, r, c, term = random_action(rng, env.config, p_close=spec.get("p_close", 0.0))
            explore = True
        elif goal is not None:
            t, r, c, term = grasp_at(env, *goal)
            explore = True
        else:
            t, r, c, term = env.oracle_action()
            explore = noise > 0
        vec = space.to_vector(
            GraspCommand(tuple(float(x) for x in t), float(r), bool(c), bool(term))
        )
        if not random_episode and noise > 0:
            vec[:4] = np.clip(vec[:4] + rng.normal(0.0, noise, 4), -1.0, 1.0)
        return vec.astype(np.float32), math.nan, explore

    return act


def _policy_actor(policy: GraspPolicy) -> Callable:
    def act(obs):
        choice = policy.select_action(obs.image, policy_state(obs))
        return choice.vector, choice.q_value, choice.exploratory

    return act


def run_job(spec: dict) -> list[dict]:
    """Run one job (a chunk of episodes) and return one dict per episode.

    ``spec``: kind (scripted|policy), task (a TaskSpec: name or TaskConfig dict), split
    (train|test), seeds, sim (SimConfig kwargs), bag (path or None), metadata, threads;
    scripted: rng_seed,
    random_fraction, noise_max, epsilon_max, decoy_fraction (optional); policy: checkpoint, cem
    (CEMConfig kwargs), epsilon, noise_std, policy_seed.
    """
    torch.set_num_threads(int(spec.get("threads", 1)))
    sim = SimConfig(**spec["sim"], object_split=spec["split"])
    task = resolve_task(spec["task"])
    env = GraspEnv(sim)
    space = ActionSpace(sim.max_translation, sim.max_rotation)
    policy = None
    checkpoint_id = ""
    if spec["kind"] == POLICY:
        loaded = load_checkpoint(spec["checkpoint"], device="cpu")
        checkpoint_id = loaded.checkpoint_id
        policy = GraspPolicy(
            loaded.model,
            CEMConfig(**spec.get("cem", {})),
            ExplorationConfig(spec.get("epsilon", 0.0), spec.get("noise_std", 0.0)),
            seed=int(spec["policy_seed"]),
            device="cpu",
        )
    bag_path = Path(spec["bag"]) if spec.get("bag") else None
    recorder = None
    if bag_path is not None:
        tmp = bag_path.with_name(bag_path.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        recorder = BagRecorder(
            tmp, dict(spec.get("metadata", {})), msg_dir(), fsync=False, flush_steps=False
        )
    exploration = (
        {}
        if policy is None
        else {"epsilon": spec.get("epsilon", 0.0), "noise_std": spec.get("noise_std", 0.0)}
    )
    if spec["kind"] == SCRIPTED:
        exploration = {
            "scripted": True,
            "random_fraction": spec["random_fraction"],
            "noise_max": spec["noise_max"],
            "epsilon_max": spec["epsilon_max"],
        }
        if spec.get("decoy_fraction", 0.0) > 0:
            exploration["decoy_fraction"] = spec["decoy_fraction"]
    results = []
    try:
        for seed in spec["seeds"]:
            obs = env.reset(seed=int(seed), task=task)
            act = (
                _scripted_actor(spec, env, int(seed)) if policy is None else _policy_actor(policy)
            )
            steps: list[StepData] = []
            done, success = False, False
            while not done:
                vec, q, explore = act(obs)
                cmd = space.to_command(vec)
                if recorder is not None:
                    steps.append(
                        StepData.from_vector(
                            obs.image,
                            policy_state(obs),
                            vec,
                            action_space=space,
                            q_value=float(q),
                            exploratory=bool(explore),
                            checkpoint_id=checkpoint_id or None,
                        )
                    )
                res = env.step(cmd.translation, cmd.rotation, cmd.close_gripper, cmd.terminate)
                done, success, obs = res.done, bool(res.grasp_success), res.observation
            if recorder is not None:
                recorder.write_episode(
                    steps,
                    EpisodeData(
                        episode_id=f"{spec['kind']}-{seed}",
                        task=task.name,
                        seed=int(seed),
                        success=success,
                        checkpoint_id=checkpoint_id,
                        exploration=exploration,
                    ),
                )
            results.append(
                {
                    "seed": int(seed),
                    "success": success,
                    "steps": int(res.info["steps"]),
                    "kind": spec["kind"],
                }
            )
    finally:
        env.close()
        if recorder is not None:
            recorder.close()
    if bag_path is not None:
        if bag_path.exists():
            shutil.rmtree(bag_path)
        os.replace(tmp, bag_path)
    return results


def episode_locations(
    env: GraspEnv, seed: int, task: TaskConfig, actions: np.ndarray
) -> np.ndarray:
    """Return the (steps, 2) float32 location labels of one recorded episode.

    A label is the horizontal offset (m) from the commanded gripper position before each step
    to the nearest object's centre.

    The episode is reset again with its seed and task (the same objects, settled the same way)
    but not stepped: the commanded position is integrated from the recorded actions and
    clipped as ``GraspEnv.step`` clips it (SimConfig.commanded_move), which is fast. Objects
    the gripper pushed later in the episode keep their settled position, so late labels are
    approximate.
    """
    env.reset(seed=int(seed), task=task)
    cfg = env.config
    space = ActionSpace(cfg.max_translation, cfg.max_rotation)
    pos = env.commanded_pose()[0].astype(np.float64)
    out = np.zeros((len(actions), 2), dtype=np.float32)
    for t, a in enumerate(actions):
        offset = env.nearest_object_offset(pos[:2])
        if offset is None:
            raise ValueError(
                f"episode seed {seed}: the tray holds no object, so it has no location label"
            )
        out[t] = offset
        pos = cfg.commanded_move(pos, np.asarray(space.to_command(a).translation))[1]
    return out


def location_job(spec: dict) -> dict:
    """Write the location labels of one bag recorded in the sim.

    ``spec``: bag, sim (SimConfig kwargs), output (.npz path), key (stored with them). The
    labels are row for row with ``load_transitions(bag)``: episodes in reading order. The task
    and object split come from the bag's session metadata (what ``run_job`` records). Writes
    ``offsets`` (rows, 2) float32, ``steps`` (steps per episode) and ``key`` atomically;
    returns {"episodes", "rows", "seconds"}.
    """
    t0 = time.monotonic()
    bag = Path(spec["bag"])
    episodes = read_episodes(bag)
    session = episodes.sessions[0] if episodes.sessions else {}
    if "task_config" not in session or "split" not in session:
        raise ValueError(
            f"{bag}: its session metadata does not name the task and object split (task_config, "
            "split): location labels need a bag this pipeline collected in the sim"
        )
    task = task_from_dict(session["task_config"], source=f"{bag} session")
    env = GraspEnv(SimConfig(**spec["sim"], object_split=session["split"]))
    try:
        parts = [episode_locations(env, e.seed, task, e.actions) for e in episodes]
    finally:
        env.close()
    offsets = np.concatenate(parts) if parts else np.zeros((0, 2), np.float32)
    out = Path(spec["output"])
    tmp = out.with_name(out.name + ".partial.npz")
    np.savez_compressed(
        tmp,
        offsets=offsets,
        steps=np.array([len(p) for p in parts], dtype=np.int64),
        key=np.array(str(spec.get("key", ""))),
    )
    os.replace(tmp, out)
    return {"episodes": len(parts), "rows": len(offsets), "seconds": time.monotonic() - t0}


def run_jobs(
    specs: list[dict],
    workers: int,
    log: Callable[[str], None] | None = None,
    on_done: Callable[[int, Any], None] | None = None,
    job: Callable[[dict], Any] = run_job,
) -> list:
    """Run ``job`` (default :func:`run_job`) on each spec; results in spec order.

    Jobs run in ``workers`` spawned processes when > 1. ``on_done(i, result)`` is called as each
    job finishes (in order), e.g. to stamp its bag as complete.
    """
    t0 = time.monotonic()
    out: list[list[dict] | None] = [None] * len(specs)
    if workers <= 1 or len(specs) <= 1:
        for i, s in enumerate(specs):
            out[i] = job(s)
            if on_done:
                on_done(i, out[i])
            if log:
                log(f"job {i + 1}/{len(specs)} done ({time.monotonic() - t0:.0f} s)")
    else:
        with mp.get_context("spawn").Pool(min(workers, len(specs))) as pool:
            pending = {i: pool.apply_async(job, (s,)) for i, s in enumerate(specs)}
            for i, r in pending.items():
                out[i] = r.get()
                if on_done:
                    on_done(i, out[i])
                if log:
                    log(f"job {i + 1}/{len(specs)} done ({time.monotonic() - t0:.0f} s)")
    return out  # type: ignore[return-value]
