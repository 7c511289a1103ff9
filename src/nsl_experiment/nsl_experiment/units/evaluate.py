"""Evaluation units: the greedy CEM policy on held-out test objects, cached per checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ..cache import Context, read_stamp, unit_key, write_stamp
from ..config import ExperimentConfig
from ..episodes import POLICY, EpisodeOutcome, TaskSpec, resolve_task, run_jobs, success_summary
from ..seeds import SEED_SETS
from .collect import chunks, seed_range

#: Episodes per evaluation job (fixed, so results do not depend on the worker count).
EVAL_JOB_EPISODES = 25
#: The config sections an evaluation reads: the world, acting (CEM) and the episode counts.
EVALUATION_SECTIONS = ("seeds", "sim", "learner", "evaluation")


def evaluate_checkpoint(
    checkpoint: str | Path,
    task: TaskSpec,
    episodes: int,
    config: ExperimentConfig,
    seed_set: str = "evaluation",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Greedy CEM policy (no exploration) on held-out test objects; success with a 95% CI.

    ``task``: a task name or a TaskConfig dict (e.g. a calibrated challenge). ``seed_set``:
    "evaluation" (reported numbers), "validation" (choices: rounds, the base), "calibration"
    (the challenges' severities) or "gate".
    """
    offset = SEED_SETS[seed_set]
    resolved = resolve_task(task)
    seeds = seed_range(config, offset, episodes)
    specs = [
        {
            "kind": POLICY,
            "task": task,
            "split": "test",
            "seeds": chunk,
            "sim": config.sim_kwargs(),
            "bag": None,
            "threads": config.runtime.threads,
            "checkpoint": str(checkpoint),
            "cem": dict(config.learner.policy_cem),
            "epsilon": 0.0,
            "noise_std": 0.0,
            "policy_seed": chunk[0],
        }
        for chunk in chunks(seeds, EVAL_JOB_EPISODES)
    ]
    t0 = time.monotonic()
    outs = run_jobs(specs, config.runtime.workers, log)
    outcomes = [EpisodeOutcome(**r) for out in outs for r in out]
    summary = success_summary(outcomes)
    summary.update(
        {
            "task": resolved.name,
            "severity": resolved.severity,
            "seed_set": seed_set,
            "first_seed": config.seed_base(offset),
            "object_split": "test",
            "seconds": time.monotonic() - t0,
        }
    )
    return summary


def evaluate_cached(
    ctx: Context,
    label: str,
    stamp: Path,
    checkpoint: Path,
    checkpoint_id: str,
    task: TaskSpec,
    *,
    kind: str = "evaluate",
    sections: tuple[str, ...] = EVALUATION_SECTIONS,
    episodes: int | None = None,
    seed_set: str = "evaluation",
    **key_inputs: Any,
) -> dict:
    """:func:`evaluate_checkpoint` as a cached unit, its result in ``stamp``.

    Keyed by ``kind``, the config ``sections``, the checkpoint id, the task spec and
    ``key_inputs``. ``episodes`` defaults to ``eval_episodes``.
    """
    key = unit_key(ctx, kind, sections, checkpoint=checkpoint_id, task=task, **key_inputs)
    hit = read_stamp(stamp, key, [])
    if hit is not None:
        ctx.log(f"{label}: cached")
        return hit["result"]
    ctx.work_done += 1
    episodes = ctx.config.evaluation.eval_episodes if episodes is None else episodes
    ctx.log(f"{label}: {episodes} {seed_set} episodes")
    res = evaluate_checkpoint(
        checkpoint, task, episodes, ctx.config, seed_set, lambda m: ctx.log(f"{label}: {m}")
    )
    res["checkpoint_id"] = checkpoint_id
    write_stamp(stamp, key, {"result": res})
    lo, hi = res["ci95"]
    ctx.log(
        f"{label}: success {res['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] "
        f"(n={res['episodes']}, {res['seconds']:.0f} s)"
    )
    return res


def unit_label(ctx: Context, checkpoint: Path) -> str:
    """Return a checkpoint's name in logs.

    Its path under checkpoints/ without suffix, else its stem.
    """
    where = checkpoint.with_suffix("")
    root = ctx.path("checkpoints")
    return str(where.relative_to(root)) if where.is_relative_to(root) else where.name


def evaluate_base_on(ctx: Context, checkpoint: Path, checkpoint_id: str, task: TaskSpec) -> dict:
    """Return the base checkpoint on ``task``, evaluation seeds (cached).

    Registered tasks (a name) are stamped under stages/evaluate_base/, shared by evaluate_base
    and calibrate's Table I; other variations (a calibrated severity) under
    stages/calibrate/evaluation/.
    """
    name = resolve_task(task).name
    folder = ("evaluate_base",) if isinstance(task, str) else ("calibrate", "evaluation")
    return evaluate_cached(
        ctx,
        f"{'/'.join(folder)}/{name}",
        ctx.path("stages", *folder, f"{name}.json"),
        checkpoint,
        checkpoint_id,
        task,
    )


def evaluate_trained(ctx: Context, checkpoint: Path, checkpoint_id: str, spec: TaskSpec) -> dict:
    """Return a trained checkpoint on a task, evaluation seeds (cached next to the checkpoint)."""
    name = resolve_task(spec).name
    return evaluate_cached(
        ctx,
        f"{unit_label(ctx, checkpoint)} on {name}",
        checkpoint.with_name(f"{checkpoint.stem}.eval_{name}.json"),
        checkpoint,
        checkpoint_id,
        spec,
    )


def trained_entry(
    ctx: Context, checkpoint: Path, checkpoint_id: str, stamp: dict, spec: TaskSpec
) -> dict:
    """Summary of a trained-and-evaluated unit for a stage stamp."""
    return {
        "checkpoint": str(checkpoint.relative_to(ctx.output)),
        "checkpoint_id": checkpoint_id,
        "train": {
            k: stamp.get(k)
            for k in ("steps", "learning_rate", "transitions", "target_episodes", "seconds")
        },
        "result": evaluate_trained(ctx, checkpoint, checkpoint_id, spec),
    }
