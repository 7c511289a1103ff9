"""``nsl train``'s command line: the fine-tuning commands run FineTuneRecipe unless told otherwise.

Parsing only (no training): the runs themselves are in test_runs.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys

import pytest

from nsl_trainer import cli
from nsl_trainer.config import QTOptConfig
from nsl_trainer.recipe import FineTuneRecipe

REQUIRED = {
    "finetune": ["--init", "base.safetensors", "--target", "t", "--output", "o.safetensors"],
    "scratch": ["--target", "t", "--output", "o.safetensors"],
    "continual": ["--task", "a=t", "--output-dir", "chain"],
}
"""Each fine-tuning command with its required arguments and nothing else."""

RECIPE_FLAGS = {
    "steps": ("--steps", "250", 250),
    "target_fraction": ("--target-fraction", "0.25", 0.25),
    "policy_weights": ("--policy-weights", "online", "online"),
    "mc_mix": ("--mc-mix", "0", 0.0),
    "location_weight": ("--location-weight", "0.5", 0.5),
    "location_labels": ("--location-labels", "none", "none"),
}
"""Recipe field: (its flag, a non-default value as typed, that value parsed)."""


def _parse(command: str, *extra: str) -> argparse.Namespace:
    return cli.parse_args([command, *REQUIRED[command], *extra])


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_the_fine_tuning_commands_default_to_the_recipe(command):
    args = _parse(command)
    assert cli.recipe_of(args) == FineTuneRecipe()
    config = cli.qtopt_config_of(args)
    assert config == FineTuneRecipe().qtopt_config()  # nothing else set either
    assert config.location_weight > 0 and config.location_labels == "hindsight"


def test_pretrain_keeps_qtopts_defaults():
    args = cli.parse_args(["pretrain", "--data", "d", "--steps", "3", "--output", "o"])
    assert cli.qtopt_config_of(args) == QTOptConfig()
    assert not hasattr(args, "location_weight")  # the location loss is the recipe's option


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_every_recipe_field_has_a_flag_of_its_name(command):
    """recipe_of reads the recipe's fields by name, so each needs a flag (else its default)."""
    assert set(RECIPE_FLAGS) == {f.name for f in dataclasses.fields(FineTuneRecipe)}
    args = _parse(command)
    for field in RECIPE_FLAGS:
        assert hasattr(args, field), field


@pytest.mark.parametrize("field", sorted(RECIPE_FLAGS))
def test_each_recipe_flag_overrides_its_setting_only(field):
    flag, text, value = RECIPE_FLAGS[field]
    assert getattr(FineTuneRecipe(), field) != value  # the flag changes something
    recipe = cli.recipe_of(_parse("finetune", flag, text))
    assert recipe == dataclasses.replace(FineTuneRecipe(), **{field: value})


def test_the_recipes_options_turn_off():
    args = _parse(
        "scratch", "--policy-weights", "online", "--mc-mix", "0", "--location-weight", "0"
    )
    config = cli.qtopt_config_of(args)
    assert (config.policy_weights, config.mc_mix, config.location_weight) == ("online", 0.0, 0.0)
    config = cli.qtopt_config_of(_parse("finetune", "--location-labels", "none"))
    assert config.location_weight == 0.0 and config.mc_mix == FineTuneRecipe().mc_mix


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--steps", "0", r"FineTuneRecipe\.steps must be a positive integer, got 0"),
        ("--steps", "ten", r"expected an integer, got 'ten'"),
        ("--target-fraction", "0", r"FineTuneRecipe\.target_fraction must be in \(0, 1\]"),
        ("--mc-mix", "1.5", r"FineTuneRecipe\.mc_mix must be in \[0, 1\], got 1\.5"),
        ("--mc-mix", "nan", r"FineTuneRecipe\.mc_mix must be in \[0, 1\], got nan"),
        ("--location-weight", "-1", r"FineTuneRecipe\.location_weight must be a number >= 0"),
        ("--location-weight", "x", r"expected a number, got 'x'"),
        ("--policy-weights", "best", r"invalid choice: 'best'"),
        ("--location-labels", "sim", r"invalid choice: 'sim'"),
    ],
)
def test_a_bad_recipe_value_is_refused_naming_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parse("finetune", flag, value)
    assert exit_.value.code == 2
    assert re.search(rf"argument {flag}: {message}", capsys.readouterr().err)


def test_pretrain_checks_mc_mix_by_qtopts_rule(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(
            ["pretrain", "--data", "d", "--steps", "3", "--output", "o", "--mc-mix", "2"]
        )
    assert "argument --mc-mix: QTOptConfig.mc_mix must be in [0, 1]" in capsys.readouterr().err


def test_help_shows_the_recipes_values(capsys):
    recipe = FineTuneRecipe()
    text = _help("finetune", capsys)
    # One entry per option: the lines from "  --flag" to the next option.
    entries = {
        m.group(1): " ".join(m.group(0).split())
        for m in re.finditer(r"^  (--[a-z-]+).*?(?=^  -|\Z)", text, re.M | re.S)
    }
    for field, (flag, _, _) in RECIPE_FLAGS.items():
        value = getattr(recipe, field)
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        assert f"default {shown}, the recipe's" in entries[flag], (flag, entries[flag])


def test_conservative_weight_needs_the_location_loss_off(capsys):
    args = _parse("finetune", "--conservative-weight", "0.5")
    assert cli.cmd_train(args) == 1
    assert "--conservative-weight > 0 needs the location loss off" in capsys.readouterr().err
    args = _parse("finetune", "--conservative-weight", "0.5", "--location-weight", "0")
    assert cli.qtopt_config_of(args).conservative_weight == 0.5


def test_torchrun_asks_for_the_location_loss_off(capsys, monkeypatch):
    """The location loss would bypass DDP's gradient averaging: refused before any training."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.cmd_train(_parse("finetune")) == 1
    err = capsys.readouterr().err
    assert "nsl train finetune: error: the location loss (--location-weight > 0)" in err
    assert "pass --location-weight 0" in err


def test_the_parser_and_the_recipe_load_without_torch():
    """Building the parser reads the recipe's defaults, yet imports no torch (nsl starts fast)."""
    code = (
        "import sys; from nsl_trainer import cli; cli.build_parser(); "
        "cli.parse_args(['finetune', '--init', 'i', '--target', 't', '--output', 'o']); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
