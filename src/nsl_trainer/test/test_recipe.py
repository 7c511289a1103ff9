"""FineTuneRecipe: one owner of the fine-tuning recipe, the trainer node's defaults included."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from nsl_policy.model import QNetwork, QNetworkConfig
from nsl_trainer.config import QTOptConfig
from nsl_trainer.jobs import TrainerSettings
from nsl_trainer.node_settings import SETTINGS, SETTINGS_FIELDS, trainer_settings
from nsl_trainer.recipe import FineTuneRecipe
from nsl_trainer.state import load_state, save_state
from nsl_trainer.trainer import QTOptTrainer

TRAINER_YAML = (
    Path(__file__).resolve().parents[2] / "nsl_bringup" / "nsl_bringup" / "config" / "trainer.yaml"
)
RECIPE_SETTINGS = {
    "default_steps": "steps",
    "target_fraction": "target_fraction",
    "policy_weights": "policy_weights",
    "mc_mix": "mc_mix",
    "location_weight": "location_weight",
    "location_labels": "location_labels",
}
"""The trainer's settings that are the recipe's (setting name: recipe field)."""


def test_the_recipe_is_the_papers_plus_its_options():
    r = FineTuneRecipe()
    assert (r.steps, r.target_fraction) == (1000, 0.5)
    assert (r.policy_weights, r.mc_mix, r.location_weight, r.location_labels) == (
        "polyak",
        0.5,
        1.0,
        "hindsight",
    )
    assert r.qtopt_overrides() == {
        "policy_weights": "polyak",
        "mc_mix": 0.5,
        "location_weight": 1.0,
        "location_labels": "hindsight",
    }
    base = QTOptConfig(batch_size=8, seed=3, learning_rate=2e-3)
    config = r.qtopt_config(base)
    assert (config.batch_size, config.seed, config.learning_rate) == (8, 3, 2e-3)
    assert config.finetune_learning_rate() == 2e-3 * base.finetune_lr_scale  # QTOptConfig's
    assert (config.policy_weights, config.mc_mix, config.location_weight) == ("polyak", 0.5, 1.0)
    # Every option off: plain QT-Opt with the online network exported.
    off = FineTuneRecipe(policy_weights="online", mc_mix=0.0, location_weight=0.0)
    plain = off.qtopt_config(base)
    assert (plain.policy_weights, plain.mc_mix, plain.location_weight) == ("online", 0.0, 0.0)
    assert not off.uses_location
    none = FineTuneRecipe(location_labels="none")
    assert not none.uses_location and none.qtopt_overrides()["location_weight"] == 0.0
    assert "location_labels" not in none.qtopt_overrides()


@pytest.mark.parametrize(
    "name,value",
    [
        ("steps", 0),
        ("steps", 2.0),
        ("steps", True),
        ("target_fraction", 0.0),
        ("target_fraction", 1.5),
        ("target_fraction", float("nan")),
        ("policy_weights", "ema"),
        ("mc_mix", -0.1),
        ("mc_mix", 1.1),
        ("location_weight", -1.0),
        ("location_weight", float("inf")),
        ("location_labels", "sim"),
        ("location_labels", ""),
    ],
)
def test_every_recipe_field_is_checked_by_name(name, value):
    with pytest.raises(ValueError, match=rf"^FineTuneRecipe\.{name} must be .*got"):
        FineTuneRecipe(**{name: value})


NON_DEFAULT_RECIPE = FineTuneRecipe(
    steps=7,
    target_fraction=0.25,
    policy_weights="online",
    mc_mix=0.0,
    location_weight=2.0,
    location_labels="none",
)
"""A recipe whose every field differs from the default's."""


def test_non_default_recipe_differs_in_every_field():
    default = FineTuneRecipe()
    for f in fields(FineTuneRecipe):
        assert getattr(NON_DEFAULT_RECIPE, f.name) != getattr(default, f.name), f.name


@pytest.mark.parametrize("kind", ["mapping", "namespace"])
def test_from_fields_takes_every_field_present_and_ignores_the_rest(kind):
    values = {**asdict(NON_DEFAULT_RECIPE), "batch_size": 3, "output": "o.safetensors"}
    source = values if kind == "mapping" else argparse.Namespace(**values)
    assert FineTuneRecipe.from_fields(source) == NON_DEFAULT_RECIPE
    partial = {"mc_mix": 0.0} if kind == "mapping" else argparse.Namespace(mc_mix=0.0)
    assert FineTuneRecipe.from_fields(partial) == FineTuneRecipe(mc_mix=0.0)


def test_from_fields_reads_renamed_fields_and_names_bad_values():
    source = {"default_steps": 7, "steps": 99}
    assert FineTuneRecipe.from_fields(source, names={"steps": "default_steps"}).steps == 7
    with pytest.raises(ValueError, match=r"^FineTuneRecipe\.mc_mix must be in \[0, 1\], got 2"):
        FineTuneRecipe.from_fields(argparse.Namespace(mc_mix=2))
    with pytest.raises(ValueError, match="FineTuneRecipe has no field step"):
        FineTuneRecipe.from_fields(source, names={"step": "default_steps"})


def test_trainer_settings_carry_every_recipe_field():
    """Each recipe field is a trainer setting, and TrainerSettings.recipe() passes its value."""
    assert sorted(RECIPE_SETTINGS.values()) == sorted(f.name for f in fields(FineTuneRecipe))
    settings = TrainerSettings(
        checkpoint_dir="x",
        **{s: getattr(NON_DEFAULT_RECIPE, f) for s, f in RECIPE_SETTINGS.items()},
    )
    assert settings.recipe() == NON_DEFAULT_RECIPE


def test_qtopt_checks_its_location_labels():
    assert QTOptConfig().location_labels == "sim"  # pre-training's simulator labels
    with pytest.raises(ValueError, match="QTOptConfig.location_labels must be"):
        QTOptConfig(location_labels="none")


def test_the_trainer_nodes_defaults_are_the_recipe():
    """TrainerSettings, the node's parameter table and its built settings give FineTuneRecipe()."""
    assert TrainerSettings(checkpoint_dir="x").recipe() == FineTuneRecipe()
    for setting, field in RECIPE_SETTINGS.items():
        assert SETTINGS[setting].default == getattr(FineTuneRecipe(), field), setting
    assert set(SETTINGS_FIELDS) <= set(SETTINGS)
    values = {name: s.default for name, s in SETTINGS.items()}
    built = trainer_settings(values, "/tmp/checkpoints")
    assert built.recipe() == FineTuneRecipe() and built.checkpoint_dir == "/tmp/checkpoints"
    defaults = TrainerSettings(checkpoint_dir="checkpoints")
    for f in fields(TrainerSettings):
        assert SETTINGS[f.name].default == getattr(defaults, f.name), f.name
    with pytest.raises(ValueError, match="FineTuneRecipe.mc_mix"):
        trainer_settings({**values, "mc_mix": 2.0}, "/tmp/checkpoints")


def test_trainer_yaml_leaves_the_recipe_to_its_owner():
    """trainer.yaml sets no recipe setting (a copied value would outlive a recipe change)."""
    params = yaml.safe_load(TRAINER_YAML.read_text())["/**"]["ros__parameters"]
    assert not set(params) & set(RECIPE_SETTINGS), set(params) & set(RECIPE_SETTINGS)
    assert set(params) <= set(SETTINGS), set(params) - set(SETTINGS)
    for name in RECIPE_SETTINGS:
        assert f"# {name}:" in TRAINER_YAML.read_text(), name


def test_a_state_written_before_a_new_setting_still_resumes(tmp_path):
    """A state without ``location_labels`` (older code) loads while the setting is its default."""
    cfg = QNetworkConfig(image_size=32, width=8)
    trainer = QTOptTrainer(QNetwork(cfg), QTOptConfig(batch_size=4), "cpu")
    path = tmp_path / "state.safetensors"
    save_state(trainer, path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["state"])
    del meta["qtopt_config"]["location_labels"]
    save_file(tensors, str(path), metadata={**header, "state": json.dumps(meta)})
    load_state(QTOptTrainer(QNetwork(cfg), QTOptConfig(batch_size=4), "cpu"), path)
    hindsight = QTOptConfig(batch_size=4, location_labels="hindsight")
    with pytest.raises(ValueError, match="location_labels"):
        load_state(QTOptTrainer(QNetwork(cfg), hindsight, "cpu"), path)


def test_the_demo_and_the_study_collect_with_the_one_exploration_recipe():
    from nsl_bringup.demo_config import DemoConfig
    from nsl_experiment.sections import ExplorationConfig
    from nsl_trainer.recipe import ExplorationRecipe

    recipe = ExplorationRecipe()
    study = ExplorationConfig()
    demo = DemoConfig()
    assert (study.target_epsilon, study.target_noise_std) == (recipe.epsilon, recipe.noise_std)
    assert (demo.epsilon, demo.noise_std) == (recipe.epsilon, recipe.noise_std)
    with pytest.raises(ValueError, match="ExplorationRecipe.noise_std must be in"):
        ExplorationRecipe(noise_std=-0.1)
    with pytest.raises(ValueError, match="noise_std must be in"):
        DemoConfig(noise_std=3.0)
