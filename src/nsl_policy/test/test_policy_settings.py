"""The policy node's settings (ROS-free): defaults are valid, bad combinations are named."""

from __future__ import annotations

import pytest

from nsl_policy.policy import ExplorationConfig
from nsl_policy.policy_settings import (
    LIMIT_SETTINGS,
    SETTINGS,
    RuntimeChange,
    check_settings,
    runtime_update,
    trial_settings,
)
from nsl_policy.sequential import TrialSettings
from nsl_policy.safety import CommandLimits

DEFAULTS = {name: s.default for name, s in SETTINGS.items()}


def test_the_defaults_pass_and_give_the_default_limits():
    assert check_settings(DEFAULTS) == CommandLimits()
    assert {name: DEFAULTS[name] for name in LIMIT_SETTINGS} == vars(CommandLimits())


def test_only_exploration_the_task_the_seed_and_the_rollout_mode_change_at_run_time():
    runtime = {name for name, s in SETTINGS.items() if s.runtime}
    assert runtime == {"epsilon", "noise_std", "task", "seed", "rollout_mode"}


def test_a_run_time_seed_is_passed_on_and_a_bad_one_refused():
    current = ExplorationConfig(epsilon=0.1, noise_std=0.0)
    assert runtime_update(current, {"seed": 1200}).seed == 1200
    assert runtime_update(current, {"epsilon": 0.0}).seed is None
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            runtime_update(current, {"seed": bad})


def test_a_run_time_change_says_what_changes_and_refuses_a_bad_task():
    current = ExplorationConfig(epsilon=0.1, noise_std=0.0)
    change = runtime_update(current, {"task": "checkerboard", "epsilon": 0.0})
    assert change == RuntimeChange(
        ExplorationConfig(epsilon=0.0, noise_std=0.0), None, "checkerboard"
    )
    assert runtime_update(current, {"rollout_mode": "manual"}).task is None
    for bad, reason in (
        ("", "task must not be blank"),
        (" base", "task must not start or end with white space"),
        ("x/y.yaml", "task must be one folder name"),
        ("..", "task must be one folder name"),
    ):
        with pytest.raises(ValueError, match=reason):
            runtime_update(current, {"task": bad})
    with pytest.raises(ValueError, match="task must not be blank"):
        check_settings({**DEFAULTS, "task": ""})


def test_the_rollout_settings_are_the_trial_defaults_and_are_checked():
    assert trial_settings(DEFAULTS) == TrialSettings() and DEFAULTS["rollout_mode"] == "trial"
    values = {**DEFAULTS, "rollout_mode": "yolo", "rollout_on_cap": "toss"}
    with pytest.raises(ValueError, match="rollout_mode must be one of.*rollout_on_cap"):
        check_settings(values)


def test_every_problem_is_named_at_once():
    values = {
        **DEFAULTS,
        "cem_elites": 65,
        "min_height": 0.4,
        "max_height": 0.3,
        "arm_timeout": 0.0,
        "settle_time": -1.0,
    }
    with pytest.raises(ValueError) as info:
        check_settings(values)
    message = str(info.value)
    assert message.startswith("invalid policy parameters: ")
    for fragment in (
        "cem_elites (65) must not exceed cem_population (64)",
        "min_height (0.4) must be below max_height (0.3)",
        "arm_timeout must be > 0",
        "settle_time must be >= 0",
    ):
        assert fragment in message, message


def test_limits_come_from_the_settings():
    limits = check_settings({**DEFAULTS, "max_translation": 0.01, "max_height": 0.2})
    assert (limits.max_translation, limits.max_height) == (0.01, 0.2)
