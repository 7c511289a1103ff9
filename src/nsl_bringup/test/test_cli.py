"""The ``nsl`` command's help: graph arguments listed, no library noise (no ROS needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nsl_bringup.demo_config import OPTIONS as DEMO_OPTIONS
from nsl_bringup.graph import GRAPHS


def nsl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nsl_bringup.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", ["graph", "up"])
def test_graph_help_lists_every_launch_argument_with_its_default(command):
    result = nsl(command, "--help")
    assert result.returncode == 0, result.stderr
    for graph in GRAPHS.values():
        assert f"{graph.name}: {graph.description}" in result.stdout
        for argument in graph.arguments:
            assert f"  {argument.name}:=" in result.stdout, argument.name
            assert f"default '{argument.default}'" in result.stdout
    assert "sim:={true,false}" in result.stdout


@pytest.mark.parametrize(
    "args", [("--help",), ("sim", "--help"), ("data", "--help"), ("graph", "collect")]
)
def test_commands_print_no_pybullet_build_time(args):
    """Importing pybullet prints its build time; commands that do not simulate skip it."""
    result = nsl(*args)
    assert result.returncode == 0, result.stderr
    assert "build time" not in result.stdout + result.stderr


def test_demo_help_lists_every_option_with_its_default():
    result = nsl("demo", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps the help lines
    assert len(DEMO_OPTIONS) == 13
    for option in DEMO_OPTIONS:
        assert f"--{option.name.replace('_', '-')} " in text, option.name
        assert " ".join(option.metadata["help"].split()) in text, option.name
        if option.default != "":
            assert f"(default {option.default!r})" in text, option.name


def test_demo_refuses_bad_options_before_starting_anything():
    result = nsl("demo", "--task", "base", "--finetune-steps", "-1", "--output", "/proc/x")
    assert result.returncode == 1
    assert result.stderr.startswith("nsl: error: invalid demo options: task must be one of")
    assert "finetune_steps must be an integer >= 0 (got -1)" in result.stderr
    assert "build time" not in result.stdout + result.stderr  # no sim was imported
