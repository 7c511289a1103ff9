"""ExperimentConfig: the seed ranges, the sections and the checks of every setting."""

from __future__ import annotations

import pytest
from experiment_helpers import make_config
from nsl_experiment.config import ExperimentConfig
from nsl_experiment.seeds import (
    BOOTSTRAP_SEEDS,
    CALIBRATION_SEEDS,
    CONTINUAL_ORDER,
    CONTINUAL_SEEDS,
    EVALUATION_SEEDS,
    GATE_SEEDS,
    MAX_EPISODES_PER_RANGE,
    MAX_ONLINE_ROUND_EPISODES,
    MAX_ONLINE_ROUNDS,
    MAX_ROUNDS,
    ONLINE_SEEDS,
    ROUND_SEEDS,
    SEED_STRIDE,
    STUDY_TASKS,
    TARGET_SEEDS,
    VALIDATION_SEEDS,
    online_seed_offset,
    round_seed_offset,
)
from nsl_trainer.config import QTOptConfig
from nsl_trainer.jobs import TrainerSettings
from nsl_trainer.recipe import FineTuneRecipe


def test_seed_ranges_never_overlap():
    """Every use draws up to MAX_EPISODES_PER_RANGE seeds from its own range."""
    starts = [BOOTSTRAP_SEEDS, VALIDATION_SEEDS, CALIBRATION_SEEDS, EVALUATION_SEEDS, GATE_SEEDS]
    starts += [round_seed_offset(r) for r in range(1, MAX_ROUNDS + 1)]
    starts += [TARGET_SEEDS + 100_000 * i for i in range(len(STUDY_TASKS))]
    starts += [CONTINUAL_SEEDS + 100_000 * i for i in range(len(CONTINUAL_ORDER))]
    starts += [ONLINE_SEEDS + 100_000 * i for i in range(len(STUDY_TASKS))]
    # A task's online rounds share its range: each round its own block, all inside the range.
    for task in STUDY_TASKS:
        first = ONLINE_SEEDS + 100_000 * STUDY_TASKS.index(task)
        blocks = [online_seed_offset(task, k) for k in range(2, MAX_ONLINE_ROUNDS + 1)]
        assert all(b - a >= MAX_ONLINE_ROUND_EPISODES for a, b in zip([first] + blocks, blocks))
        assert blocks[-1] + MAX_ONLINE_ROUND_EPISODES <= first + MAX_EPISODES_PER_RANGE
    with pytest.raises(ValueError, match="online round"):
        online_seed_offset("base", 1)  # round 1 explores with the base policy's grasps
    starts.sort()
    assert all(b - a >= MAX_EPISODES_PER_RANGE for a, b in zip(starts, starts[1:]))
    assert starts[-1] + MAX_EPISODES_PER_RANGE <= SEED_STRIDE
    assert round_seed_offset(9) == ROUND_SEEDS + 900_000  # rounds 1-9 kept their seeds
    with pytest.raises(ValueError, match="round"):
        round_seed_offset(0)


def test_config_validation():
    with pytest.raises(ValueError, match="init_scheme"):
        make_config(init_scheme="xavier")
    with pytest.raises(ValueError, match="rounds"):
        make_config(rounds=-1)
    with pytest.raises(ValueError, match="rounds"):
        make_config(rounds=MAX_ROUNDS + 1)
    with pytest.raises(ValueError, match="unknown"):
        make_config(model={"widht": 3})
    with pytest.raises(ValueError, match="grasp_value_round"):
        make_config(rounds=3, grasp_value_steps=10, grasp_value_round=4)
    with pytest.raises(ValueError, match="grasp_value_steps"):
        make_config(grasp_value_steps=-1)
    with pytest.raises(ValueError, match="grasp_value_qtopt_steps"):
        make_config(grasp_value_checks=4, grasp_value_qtopt_steps=3)
    with pytest.raises(ValueError, match="eval_tasks"):
        make_config(eval_tasks=("nope",))
    with pytest.raises(ValueError, match="camera_fov"):
        make_config(camera_fov=200)
    assert make_config().with_overrides(["camera_fov=24"]).sim_kwargs()["camera_fov"] == 24.0
    with pytest.raises(ValueError, match="unknown ExperimentConfig fields"):
        ExperimentConfig.from_dict({"bogus": 1})
    assert make_config().with_overrides(["rounds=2", "model={width: 48}"]).learner.model == {
        "width": 48
    }
    with pytest.raises(ValueError, match="tiers"):
        make_config(tiers=(25, 50, 900))  # beyond target_episodes
    with pytest.raises(ValueError, match="tiers"):
        make_config(tiers=(50, 25))
    with pytest.raises(ValueError, match="calibration_severities"):
        make_config(calibration_severities=(2.0, 1.0))
    with pytest.raises(ValueError, match="calibration_seed_set"):
        make_config(calibration_seed_set="evaluation")  # never choose on the reported episodes
    # A calibration needs >= 100 episodes per severity; fewer only as a declared smoke test.
    with pytest.raises(ValueError, match="calibration_episodes: must be >= 100"):
        make_config(calibration_episodes=50)
    assert make_config(
        calibration_episodes=50, allow_few_calibration_episodes=True
    ).calibration.allow_few_calibration_episodes
    with pytest.raises(ValueError, match="solvability_episodes"):
        make_config(solvability_episodes=8)  # the probe needs a train/test split
    with pytest.raises(ValueError, match="solvability_probe_steps"):
        make_config(solvability_probe_steps=0)
    with pytest.raises(ValueError, match="challenges"):
        make_config(challenges=("base",))
    with pytest.raises(ValueError, match="challenges"):
        make_config(challenges="checkerboard")
    with pytest.raises(ValueError, match="reinit_modules"):
        make_config(reinit_modules=("trunk",))
    with pytest.raises(ValueError, match="target_fraction"):
        make_config(target_fraction=0.0)
    # The task-agnostic trunk needs a held-out scene to measure it, and at least one step.
    with pytest.raises(ValueError, match="agnostic_trunk.agnostic_scenes"):
        make_config(agnostic_scenes=4)
    with pytest.raises(ValueError, match="agnostic_trunk.agnostic_steps"):
        make_config(agnostic_steps=0)
    assert make_config(agnostic_steps=7).agnostic_trunk.agnostic_steps == 7
    with pytest.raises(ValueError, match="continual_guard: needs validation_episodes > 0"):
        make_config(validation_episodes=0)
    assert make_config(validation_episodes=0, continual_guard=False).study.continual_guard is False
    with pytest.raises(ValueError, match="online_rounds: must split the largest tier"):
        make_config(online_rounds=3)  # 800 grasps do not split into 3 rounds of whole bags
    with pytest.raises(ValueError, match="online_rounds: must split the largest tier"):
        make_config(online_rounds=8, chunk_episodes=200)  # rounds of 100 grasps: half a bag of 200
    with pytest.raises(ValueError, match="online_rounds"):
        make_config(online_rounds=MAX_ONLINE_ROUNDS + 1)
    with pytest.raises(ValueError, match="online_rounds: needs validation_episodes"):
        make_config(online_rounds=4, validation_episodes=0, continual_guard=False)
    assert make_config(online_rounds=4).study.online_rounds == 4
    assert (
        make_config(
            online_rounds=4, validation_episodes=0, continual_guard=False, gate_episodes=200
        ).evaluation.gate_episodes
        == 200
    )
    assert make_config(
        validation_episodes=0, gate_episodes=200
    ).study.continual_guard  # the gate has its episodes
    with pytest.raises(ValueError, match="gate_episodes"):
        make_config(gate_episodes=-1)
    with pytest.raises(ValueError, match="base_checkpoint: needs base_control"):
        make_config(base_checkpoint="shipped", base_control=False)
    small = make_config().with_overrides(
        ["challenges=[checkerboard, harsh_light]", "base_control=false", "tiers=[25, 100]"]
    )
    assert small.study_tasks() == ("harsh_light", "checkerboard")
    assert small.continual_chain() == ("harsh_light", "checkerboard")  # the paper's order
    assert small.study.tiers == (
        25,
        100,
    ) and make_config().finetune_learning_rate() == pytest.approx(2.5e-4)


def test_the_pipeline_and_the_trainer_node_fine_tune_with_one_recipe():
    """The study's fine-tunes and the robot trainer's default jobs run FineTuneRecipe()."""
    recipe = FineTuneRecipe()
    cfg = ExperimentConfig()
    assert (cfg.finetune.finetune_steps, cfg.finetune.target_fraction) == (
        recipe.steps,
        recipe.target_fraction,
    )
    assert cfg.finetune.finetune_qtopt == recipe.qtopt_overrides()
    node = TrainerSettings(checkpoint_dir="checkpoints")
    assert node.recipe() == recipe
    pipeline = cfg.qtopt_config(finetune=True).to_dict()
    trainer = node.recipe().qtopt_config().to_dict()
    for name in recipe.qtopt_overrides():
        assert pipeline[name] == trainer[name] == recipe.qtopt_overrides()[name], name
    rate = QTOptConfig(learning_rate=node.learning_rate).finetune_learning_rate()
    assert cfg.finetune_learning_rate() == rate
    assert cfg.qtopt_config().location_labels == "sim"  # pre-training keeps the sim's labels
