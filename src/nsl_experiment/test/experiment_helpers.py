"""The experiment tests' tiny config: every stage end to end in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsl_experiment.config import ExperimentConfig

# No random-goal bootstrap grasps: with 4 bootstrap episodes they would leave too few successes
# for the grasp-value phase; test_decoy_bootstrap_... covers them. No location loss in
# pre-training either (its sim replays label the bags; test_pretrain_location_weight_...
# covers it); the fine-tunes keep the recipe's, on hindsight labels, which cost no replay.
TINY: dict[str, Any] = dict(
    image_size=32,
    max_steps=3,
    num_objects=1,
    chunk_episodes=2,
    bootstrap_episodes=4,
    bootstrap_decoy_fraction=0.0,
    pretrain_location_weight=0.0,
    pretrain_steps=3,
    rounds=1,
    round_episodes=2,
    round_steps=2,
    eval_episodes=3,
    validation_episodes=2,
    eval_tasks=("base",),
    model={"width": 8, "embed_width": 8, "fc_width": 8},
    qtopt={"batch_size": 8, "target_cem": {"population": 4, "elites": 2, "iterations": 1}},
    policy_cem={"population": 8, "elites": 2, "iterations": 1},
    # The fine-tuning study: 2 challenges (in the continual order), 4 grasps per task in two bags.
    challenges=("offset_gripper_10cm", "checkerboard"),
    # 3 calibration episodes are no calibration (the report says so); 16 solvability scenes and
    # 30 probe steps make the checks take seconds.
    calibration_episodes=3,
    allow_few_calibration_episodes=True,
    calibration_severities=(1.0, 3.0),
    solvability_episodes=16,
    solvability_probe_steps=30,
    target_episodes=4,
    tiers=(2, 4),
    finetune_steps=2,
    scratch_steps=2,
    # The task-agnostic trunk: 5 rendered scenes (one held out) and 3 supervised steps.
    agnostic_scenes=5,
    agnostic_steps=3,
)


def make_config(**fields: Any) -> ExperimentConfig:
    """Return an ExperimentConfig from flat field names (each finds its section)."""
    return ExperimentConfig.from_dict(fields)


def tiny(out: Path, **overrides: Any) -> ExperimentConfig:
    """TINY with ``overrides``; it reports into <out>/report, the default report folder."""
    del out  # the run folder decides where the report goes
    return make_config(**{**TINY, **overrides})
