"""Calibration units: each challenge's severity, chosen among the solvable ones.

Per challenge, the candidate severities (``calibration_severities``, each lowered to the least
severity that gives the same world, :func:`candidate_severities`) are tried in increasing order:
first the solvability check (nsl_sim.solvability: can the task still be done at all), then, if
it passes, the base policy on the calibration episodes. The first solvable severity that drops
the base policy by ``calibration_drop`` is the challenge (:func:`choose_severity`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from nsl_sim.env import SimConfig
from nsl_sim.solvability import (
    SolvabilityChecker,
)
from nsl_sim.tasks import TaskConfig, get_task

from ..cache import Context, read_stamp, unit_key, write_stamp
from ..episodes import TaskSpec, resolve_task, task_spec
from ..seeds import SOLVABILITY_SEEDS
from .base import base_checkpoint
from .evaluate import evaluate_cached
from .train import torch_threads

#: The config sections a calibration episode set reads.
CALIBRATION_SECTIONS = ("seeds", "sim", "learner", "calibration")
#: The config sections a solvability check reads (its episodes and probe steps are key inputs,
#: so a change of the candidate severities or of the drop re-measures nothing).
SOLVABILITY_SECTIONS = ("seeds", "sim")
#: Highest severity :func:`same_world_severity` looks at: every bound is reached well below it.
SEVERITY_LIMIT = 10.0

#: Table I's status of a challenge.
REACHED = "reached"
DROP_NOT_REACHED = "drop not reached"
NONE_SOLVABLE = "no solvable severity"


def world_signature(task: TaskConfig) -> tuple:
    """Return what the world of ``task`` looks and acts like: its knobs, rounded.

    Leaves out what changes nothing: the saturated list, the checker size without a
    checkerboard, the light direction's length (the renderer normalises it).
    """
    knobs = dataclasses.asdict(task.effective())
    knobs.pop("saturated")
    if knobs["texture"] != "checkerboard":
        knobs.pop("checker_squares")
    direction = knobs["light_direction"]
    length = math.sqrt(sum(v * v for v in direction)) or 1.0
    knobs["light_direction"] = [v / length for v in direction]

    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 9)
        if isinstance(value, (list, tuple)):
            return tuple(rounded(v) for v in value)
        return value

    return tuple(sorted((k, rounded(v)) for k, v in knobs.items()))


def world_limit(task: TaskConfig) -> float:
    """Return the least severity (to 0.01) past which ``task``'s world stops changing.

    Every knob of a challenge saturates at its physical bound (nsl_sim.severity), so higher
    severities are the same world; :data:`SEVERITY_LIMIT` when the world still changes below it.
    """

    def world(s: float) -> tuple:
        return world_signature(dataclasses.replace(task, severity=s))

    target = world(SEVERITY_LIMIT)
    lo, hi = 0.0, SEVERITY_LIMIT
    if world(lo) == target:
        return lo
    for _ in range(50):  # bisection: knobs move monotonically with severity, then stop
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if world(mid) == target else (mid, hi)
    for candidate in (round(hi, 2), math.ceil(hi * 100 - 1e-6) / 100):
        if candidate < SEVERITY_LIMIT and world(candidate) == target:
            return candidate
    return SEVERITY_LIMIT


def candidate_severities(name: str, severities: tuple[float, ...]) -> list[float]:
    """Return the severities to try for challenge ``name``, in increasing order.

    Each of ``severities`` past the challenge's :func:`world_limit` is lowered to it, so a
    world is measured once.
    """
    limit = world_limit(get_task(name))
    if limit >= SEVERITY_LIMIT:  # still changing at the limit: keep every severity
        limit = math.inf
    out: list[float] = []
    for s in severities:
        s = min(s, limit)
        if not out or s > out[-1] + 1e-9:
            out.append(s)
    return out


def choose_severity(
    base_rate: float, trials: list[tuple[float, float | None, bool]], min_drop: float
) -> tuple[float | None, bool]:
    """Apply the calibration rule to ``trials``: (severity, success rate, solvable), increasing.

    Only solvable trials count (an unsolvable one has no rate: None). Returns (the first
    solvable severity whose rate is at least ``min_drop`` below ``base_rate``, True); when
    none is, (the solvable severity with the largest drop, False), the nearest to the rule; and
    (None, False) when no severity tried is solvable.
    """
    if not trials:
        raise ValueError("choose_severity: no severity was tried")
    solvable = [(s, rate) for s, rate, ok in trials if ok and rate is not None]
    for severity, rate in solvable:
        # Rates are k/n: tolerate float rounding of the difference.
        if base_rate - rate >= min_drop - 1e-9:
            return severity, True
    if not solvable:
        return None, False
    return min(solvable, key=lambda t: (t[1], t[0]))[0], False


def solvability_checker(ctx: Context) -> SolvabilityChecker:
    """Return the checker of a calibration: the run's world on test objects, base measured once.

    Its scenes are the SOLVABILITY_SEEDS range of the run's master seed.
    """
    cal = ctx.config.calibration
    return SolvabilityChecker(
        SimConfig(**ctx.config.sim_kwargs(), object_split="test"),
        episodes=cal.solvability_episodes or None,
        seed=ctx.config.seed_base(SOLVABILITY_SEEDS),
        probe_steps=cal.solvability_probe_steps,
    )


def solvability_cached(
    ctx: Context, checker: SolvabilityChecker, name: str, severity: float, label: str
) -> dict:
    """Return ``checker.check(name, severity)`` as a dict, a cached unit.

    Keyed by the world (seeds, sim), the task spec, the check's scenes, probe steps and the
    pass thresholds of nsl_sim.solvability.
    """
    spec = task_spec(name, severity)
    key = unit_key(
        ctx,
        "solvability",
        SOLVABILITY_SECTIONS,
        task=spec,
        episodes=checker.episodes,
        seed=checker.seed,
        probe_steps=checker.probe_steps,
        thresholds=checker.thresholds.key(),
    )
    stamp = ctx.path("stages", "calibrate", "solvability", f"{label}.json")
    hit = read_stamp(stamp, key, [])
    if hit is not None:
        ctx.log(f"calibrate/{label}: solvability cached")
        return hit["solvability"]
    ctx.work_done += 1
    with torch_threads(ctx.config.runtime.threads):
        result = checker.check(name, severity).as_dict()
    write_stamp(stamp, key, {"solvability": result})
    verdict = "solvable" if result["passed"] else "NOT solvable"
    ctx.log(f"calibrate/{label}: {verdict} ({result['figures'].get('seconds', 0):.0f} s)")
    return result


def calibration(ctx: Context) -> dict:
    """Each challenge's severity per the calibration rule (cached units).

    Measured on the base policy's and the challenges' ``calibration_seed_set`` episodes;
    severities are tried in order and only until the rule is met; an unsolvable severity is
    not evaluated. Returns {"checkpoint_id", "base_validation", "calibration_episodes",
    "challenges": {name: {severity, reached, status, solvable, solvability, drop, task,
    trials}}}; each trial: {severity, solvability, result (None when unsolvable), drop}.
    When no severity is solvable the challenge keeps the least one tried, flagged.
    """
    cal = ctx.config.calibration
    ckpt, ckpt_id = base_checkpoint(ctx)
    checker = solvability_checker(ctx)

    def measure(spec: TaskSpec, label: str) -> dict:
        return evaluate_cached(
            ctx,
            f"calibrate/{label}",
            ctx.path("stages", "calibrate", "validation", f"{label}.json"),
            ckpt,
            ckpt_id,
            spec,
            kind="calibrate",
            sections=CALIBRATION_SECTIONS,
            episodes=cal.calibration_episodes,
            seed_set=cal.calibration_seed_set,
        )

    base = measure("base", "base")
    challenges = {}
    for name in ctx.config.study.challenges:
        trials: list[dict] = []
        chosen, reached = None, False
        for severity in candidate_severities(name, cal.calibration_severities):
            label = f"{name}_severity_{severity:g}"
            solv = solvability_cached(ctx, checker, name, severity, label)
            res = measure(task_spec(name, severity), label) if solv["passed"] else None
            trials.append(
                {
                    "severity": severity,
                    "solvability": solv,
                    "result": res,
                    "drop": None if res is None else base["success_rate"] - res["success_rate"],
                }
            )
            rule = [
                (t["severity"], (t["result"] or {}).get("success_rate"), t["result"] is not None)
                for t in trials
            ]
            chosen, reached = choose_severity(base["success_rate"], rule, cal.calibration_drop)
            if reached:
                break
        status = REACHED if reached else DROP_NOT_REACHED if chosen is not None else NONE_SOLVABLE
        chosen_trial = next(
            (t for t in trials if t["severity"] == chosen), trials[0]
        )  # no solvable severity: the least one, the nearest to solvable
        challenges[name] = {
            "severity": chosen_trial["severity"],
            "reached": reached,
            "status": status,
            "solvable": chosen_trial["solvability"]["passed"],
            "solvability": chosen_trial["solvability"],
            "drop": chosen_trial["drop"],
            "task": resolve_task(task_spec(name, chosen_trial["severity"])).to_dict(),
            "trials": trials,
        }
    return {
        "checkpoint_id": ckpt_id,
        "base_validation": base,
        "calibration_episodes": cal.calibration_episodes,
        "challenges": challenges,
    }


def study_spec(cal: dict, name: str) -> TaskSpec:
    """Return the task spec of a study task.

    ``base`` itself, or a challenge at its calibrated severity.
    """
    return name if name == "base" else task_spec(name, cal["challenges"][name]["severity"])
