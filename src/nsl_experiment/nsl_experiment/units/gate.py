"""Gate units: validation success, what choices.

(rounds, continual steps, online rounds) compare.
"""

from __future__ import annotations

from pathlib import Path

from nsl_policy.sequential import PROMOTE, compare_counts

from ..cache import Context
from ..episodes import TaskSpec, resolve_task
from .evaluate import evaluate_cached, unit_label


def validate(
    ctx: Context, checkpoint: Path, checkpoint_id: str, task: TaskSpec = "base"
) -> dict | None:
    """Validation-seed success of a checkpoint on ``task``, cached next to the checkpoint.

    None when ``validation_episodes`` is 0.
    """
    episodes = ctx.config.evaluation.validation_episodes
    if episodes <= 0:
        return None
    name = resolve_task(task).name
    suffix = "validation" if task == "base" else f"validation_{name}"
    return evaluate_cached(
        ctx,
        f"{unit_label(ctx, checkpoint)}/{suffix}",
        checkpoint.with_name(f"{checkpoint.stem}.{suffix}.json"),
        checkpoint,
        checkpoint_id,
        task,
        kind="validate",
        episodes=episodes,
        seed_set="validation",
    )


def gate_validation(ctx: Context, checkpoint: Path, checkpoint_id: str, task: TaskSpec) -> dict:
    """Return what a gate (continual step, online round) compares, cached next to the checkpoint.

    Success on ``gate_episodes`` episodes of the gate seed block, or with 0 the checkpoint's
    :func:`validate` result.
    """
    episodes = ctx.config.evaluation.gate_episodes
    if not episodes:
        return validate(ctx, checkpoint, checkpoint_id, task)
    suffix = f"gate_{resolve_task(task).name}"
    return evaluate_cached(
        ctx,
        f"{unit_label(ctx, checkpoint)}/{suffix}",
        checkpoint.with_name(f"{checkpoint.stem}.{suffix}.json"),
        checkpoint,
        checkpoint_id,
        task,
        kind="gate",
        episodes=episodes,
        seed_set="gate",
    )


def guard_accepts(proposed: dict, previous: dict) -> tuple[bool, dict]:
    """Return whether a candidate's gate result lets it replace the policy in force, and why.

    The robot's rollout code decides (``nsl_policy.sequential.compare_counts``, the trial's cap
    rule on fixed counts): accepted when its success rate is at least the one in force.
    """
    # Counts from the rate (the summary's defining field): success_rate = successes / episodes.
    counts = [
        (round(r["success_rate"] * r["episodes"]), r["episodes"]) for r in (proposed, previous)
    ]
    decision, evidence = compare_counts(*counts[0], *counts[1])
    return decision == PROMOTE, evidence
