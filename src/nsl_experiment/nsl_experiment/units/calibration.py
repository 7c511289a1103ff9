"""Calibration units: each challenge's severity, chosen on the calibration episodes."""

from __future__ import annotations

from ..cache import Context
from ..episodes import TaskSpec, resolve_task, task_spec
from .base import base_checkpoint
from .evaluate import evaluate_cached

#: The config sections a calibration episode set reads.
CALIBRATION_SECTIONS = ("seeds", "sim", "learner", "calibration")


def choose_severity(
    base_rate: float, trials: list[tuple[float, float]], min_drop: float
) -> tuple[float, bool]:
    """Apply the calibration rule to ``trials``, (severity, success rate) in increasing severity.

    Returns (the first severity whose rate is at least ``min_drop`` below ``base_rate``, True),
    or (the last severity tried, False) when none is.
    """
    if not trials:
        raise ValueError("choose_severity: no severity was tried")
    for severity, rate in trials:
        # Rates are k/n: tolerate float rounding of the difference.
        if base_rate - rate >= min_drop - 1e-9:
            return severity, True
    return trials[-1][0], False


def calibration(ctx: Context) -> dict:
    """Each challenge's severity per the calibration rule (cached units).

    Measured on the base policy's and the challenges' ``calibration_seed_set`` episodes;
    severities are evaluated in order and only until the rule is met. Returns {"checkpoint_id",
    "base_validation", "challenges": {name: {severity, reached, task, drop, trials}}}.
    """
    cal = ctx.config.calibration
    ckpt, ckpt_id = base_checkpoint(ctx)

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
        for severity in cal.calibration_severities:
            res = measure(task_spec(name, severity), f"{name}_severity_{severity:g}")
            trials.append(
                {
                    "severity": severity,
                    "result": res,
                    "drop": base["success_rate"] - res["success_rate"],
                }
            )
            chosen, reached = choose_severity(
                base["success_rate"],
                [(t["severity"], t["result"]["success_rate"]) for t in trials],
                cal.calibration_drop,
            )
            if reached:
                break
        chosen_trial = next(t for t in trials if t["severity"] == chosen)
        challenges[name] = {
            "severity": chosen,
            "reached": reached,
            "drop": chosen_trial["drop"],
            "task": resolve_task(task_spec(name, chosen)).to_dict(),
            "trials": trials,
        }
    return {"checkpoint_id": ckpt_id, "base_validation": base, "challenges": challenges}


def study_spec(cal: dict, name: str) -> TaskSpec:
    """Return the task spec of a study task.

    ``base`` itself, or a challenge at its calibrated severity.
    """
    return name if name == "base" else task_spec(name, cal["challenges"][name]["severity"])
