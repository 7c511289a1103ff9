"""The ``nsl`` command's help: graph arguments listed, no library noise (no ROS needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
