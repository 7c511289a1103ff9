"""The policy node's settings: each one's default, meaning and range, and their checks.

ROS-free: the node declares one ROS parameter per entry of :data:`SETTINGS` (policy.yaml lists
the same names with a comment each) and refuses to start when :func:`check_settings` finds a
problem. The safety limits' defaults come from :class:`nsl_policy.safety.CommandLimits`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nsl_common.settings import Setting
from nsl_common.task_names import task_name_problem

from .policy import ExplorationConfig
from .rollout import MODES
from .safety import CommandLimits
from .sequential import ON_CAP, TrialSettings

LIMITS = CommandLimits()
TRIAL = TrialSettings()
TRIAL_SETTINGS = {
    "rollout_alpha": "alpha",
    "rollout_beta": "beta",
    "rollout_min_improvement": "min_improvement",
    "rollout_max_episodes": "max_episodes",
    "rollout_on_cap": "on_cap",
    "rollout_watch_episodes": "watch_episodes",
    "rollout_watch_alpha": "watch_alpha",
    "rollout_min_drop": "min_drop",
}
"""The settings that make up the :class:`TrialSettings` (setting name: field name)."""
LIMIT_SETTINGS = ("max_translation", "max_rotation", "min_height", "max_height")
"""The settings that make up the :class:`CommandLimits` (same names as its fields)."""


SETTINGS: dict[str, Setting] = {
    "checkpoint": Setting(
        "", "Q-function checkpoint (safetensors); the arm does not move without a valid one"
    ),
    "task": Setting(
        "base",
        "task sent to the arm on reset and recorded with every episode; settable at run time "
        "(the world changed), applies from the next episode",
        runtime=True,
    ),
    "autostart": Setting(
        True,
        "run episodes as soon as arm, camera and checkpoint are ready "
        "(false: only serve checkpoints)",
    ),
    "max_episodes": Setting(
        0, "stop after this many episodes (0: until shut down)", int_range=(0, 2**31 - 1)
    ),
    "max_steps": Setting(
        10, "control steps per episode; the last one terminates", int_range=(1, 10000)
    ),
    "seed": Setting(
        0,
        "scene seed of the first episode; episode k resets with seed + k; settable at run time "
        "(the next episode starts at the new seed: an evaluation can re-run the same scenes)",
        int_range=(0, 2**31 - 1),
        runtime=True,
    ),
    "epsilon": Setting(
        0.1,
        "exploration: probability of a uniformly random action per step; settable at run time, "
        "applies from the next episode",
        float_range=(0.0, 1.0),
        runtime=True,
    ),
    "noise_std": Setting(
        0.0,
        "exploration: std of Gaussian noise added to CEM actions (normalised units); "
        "settable at run time, applies from the next episode",
        float_range=(0.0, 10.0),
        runtime=True,
    ),
    "cem_population": Setting(64, "CEM samples per iteration (paper: 64)", int_range=(1, 100000)),
    "cem_elites": Setting(6, "CEM elite samples (paper: 6)", int_range=(1, 100000)),
    "cem_iterations": Setting(2, "CEM iterations (paper: 2)", int_range=(1, 1000)),
    "control_rate": Setting(
        0.0,
        "largest rate of arm steps, Hz (0: as fast as arm, camera and CEM allow)",
        float_range=(0.0, 1000.0),
    ),
    "max_translation": Setting(
        LIMITS.max_translation, "safety: largest Cartesian step per axis, metres"
    ),
    "max_rotation": Setting(LIMITS.max_rotation, "safety: largest rotation per step, radians"),
    "min_height": Setting(
        LIMITS.min_height, "safety: lowest gripper height above the tray, metres (workspace)"
    ),
    "max_height": Setting(
        LIMITS.max_height, "safety: highest gripper height above the tray, metres (workspace)"
    ),
    "observation_timeout": Setting(
        2.0, "seconds to wait for a fresh camera image before aborting the episode"
    ),
    "settle_time": Setting(
        0.0,
        "a fresh image must be this much newer than the arm's reply (0: newer than the request)",
    ),
    "arm_timeout": Setting(30.0, "seconds to wait for the arm to reset or execute a step"),
    "rollout_mode": Setting(
        "trial",
        "how a validated checkpoint goes in force: immediate, manual (policy/promote, "
        "policy/reject) or trial (interleaved episodes and a sequential test; the default, "
        "so no fine-tune acts unproven); settable at run time",
        runtime=True,
    ),
    "rollout_alpha": Setting(
        TRIAL.alpha,
        "trial: largest probability of promoting a candidate that is not better",
        float_range=(0.001, 0.49),
    ),
    "rollout_beta": Setting(
        TRIAL.beta,
        "trial: probability of rejecting a candidate better by rollout_min_improvement",
        float_range=(0.001, 0.49),
    ),
    "rollout_min_improvement": Setting(
        TRIAL.min_improvement,
        "trial: smallest gain in success rate worth detecting (absolute)",
        float_range=(0.01, 0.99),
    ),
    "rollout_max_episodes": Setting(
        TRIAL.max_episodes,
        "trial: episodes (both checkpoints) before rollout_on_cap applies",
        int_range=(2, 100000),
    ),
    "rollout_on_cap": Setting(
        TRIAL.on_cap, "trial: at the cap, reject, promote_if_not_worse or extend (once)"
    ),
    "rollout_watch_episodes": Setting(
        TRIAL.watch_episodes,
        "episodes a promoted checkpoint stays watched for a roll back (0: not watched)",
        int_range=(0, 100000),
    ),
    "rollout_watch_alpha": Setting(
        TRIAL.watch_alpha,
        "largest probability of rolling back a checkpoint as good as its predecessor's record",
        float_range=(0.001, 0.49),
    ),
    "rollout_min_drop": Setting(
        TRIAL.min_drop,
        "fall in success rate below the predecessor's record that the watch detects",
        float_range=(0.01, 0.99),
    ),
}


def trial_settings(values: dict[str, Any]) -> TrialSettings:
    """Return the rollout's :class:`TrialSettings` from the node's settings."""
    return TrialSettings(**{field: values[name] for name, field in TRIAL_SETTINGS.items()})


def check_settings(values: dict[str, Any]) -> CommandLimits:
    """Check the settings together and return the safety limits they give.

    Raises ValueError naming every problem (ranges of single settings are ROS's to check).
    """
    problems = []
    problem = task_name_problem(values["task"])
    if problem is not None:
        problems.append(f"task {problem}")
    if values["cem_elites"] > values["cem_population"]:
        problems.append(
            f"cem_elites ({values['cem_elites']}) must not exceed "
            f"cem_population ({values['cem_population']})"
        )
    for name in ("observation_timeout", "arm_timeout"):
        if not (math.isfinite(values[name]) and values[name] > 0):
            problems.append(f"{name} must be > 0 (got {values[name]})")
    if not (math.isfinite(values["settle_time"]) and values["settle_time"] >= 0):
        problems.append(f"settle_time must be >= 0 (got {values['settle_time']})")
    if values["rollout_mode"] not in MODES:
        problems.append(
            f"rollout_mode must be one of {', '.join(MODES)} (got {values['rollout_mode']!r})"
        )
    if values["rollout_on_cap"] not in ON_CAP:
        problems.append(
            f"rollout_on_cap must be one of {', '.join(ON_CAP)} (got {values['rollout_on_cap']!r})"
        )
    else:
        try:
            trial_settings(values)
        except ValueError as exc:
            problems.append(str(exc))
    limits = None
    try:
        limits = CommandLimits(**{name: values[name] for name in LIMIT_SETTINGS})
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise ValueError("invalid policy parameters: " + "; ".join(problems))
    return limits


@dataclass(frozen=True)
class RuntimeChange:
    """What a run-time parameter change changes; None where it leaves a setting as it is."""

    exploration: ExplorationConfig
    """The exploration from the next episode (the current one when unchanged)."""
    rollout_mode: str | None = None
    task: str | None = None
    seed: int | None = None
    """The next episode's scene seed (the ones after it count up from it)."""


def runtime_update(current: ExplorationConfig, changes: dict[str, Any]) -> RuntimeChange:
    """Return the exploration, rollout mode, task and seed after run-time parameter ``changes``.

    ``changes`` maps setting names to new values (others are ignored: ROS refuses changes of
    read-only ones). Raises ValueError with the reason (ROS checks the numeric ranges).
    """
    values = {"epsilon": current.epsilon, "noise_std": current.noise_std}
    for name in values:
        if name in changes:
            values[name] = float(changes[name])
    mode = changes.get("rollout_mode")
    if mode is not None and mode not in MODES:
        raise ValueError(f"rollout_mode must be one of {', '.join(MODES)} (got {mode!r})")
    task = changes.get("task")
    if task is not None:
        problem = task_name_problem(task)
        if problem is not None:
            raise ValueError(f"task {problem}")
    seed = changes.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer (got {seed!r})")
    return RuntimeChange(ExplorationConfig(**values), mode, task, seed)
