"""``nsl demo`` end to end with tiny sizes: three phases in one graph, two bags, one table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nsl_bringup.demo_config import DemoConfig

from nsl_collector.reader import read_episodes

pytestmark = pytest.mark.system


def test_the_demo_records_base_and_challenge_apart_fine_tunes_and_reports(tmp_path):
    out = tmp_path / "demo"
    # Its own process: the demo joins a DDS domain of its own and owns rclpy there.
    result = subprocess.run(
        [sys.executable, "-m", "nsl_bringup.cli", "demo", "--output", str(out)]
        + "--task checkerboard --base-episodes 3 --eval-episodes 3 --collect-episodes 4".split()
        + ["--finetune-steps", "5"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    log = (out / "nodes.log").read_text()[-3000:] if (out / "nodes.log").is_file() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + log
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["phase"]: r for r in summary["rows"]}
    assert [(r["phase"], r["task"]) for r in summary["rows"]] == [
        ("base", "base"),
        ("before", "checkerboard"),
        ("after", "checkerboard"),
    ]
    assert rows["base"]["checkpoint"] == rows["before"]["checkpoint"]
    assert rows["after"]["checkpoint"] != rows["before"]["checkpoint"]
    assert rows["base"]["episodes"] == rows["before"]["episodes"] == 3
    # The robot waited while the trainer trained; the inactive policy swapped the checkpoint in.
    assert "the robot waits while the trainer trains" in result.stdout
    assert summary["robot_ran_while_training"] is False
    assert summary["episodes_while_training"] == 0 and summary["finetune_steps_per_s"] > 0
    assert summary["finetune_steps"] == 5 and set(summary["wall_s"]) == {
        "start",
        "base",
        "before",
        "collect",
        "fine-tune",
        "after",
        "total",
    }
    # The base bag holds the greedy base episodes; the challenge bag the evaluation and the
    # exploration grasps on the challenge, each under its task's folder.
    base, target = (Path(summary["datasets"][k]) for k in ("base", "target"))
    assert base.parent == out / "datasets" / "base"
    assert target.parent == out / "datasets" / "checkerboard"
    base_episodes, target_episodes = read_episodes(base), read_episodes(target)
    assert len(base_episodes) == summary["base_episodes_recorded"] >= 3
    assert {e.task for e in base_episodes} == {"base"}
    assert {e.exploration["epsilon"] for e in base_episodes} == {0.0}
    assert {e.task for e in target_episodes} == {"checkerboard"}
    explore = DemoConfig()  # the grasps are collected with its (the study's) exploration
    epsilons = [e.exploration["epsilon"] for e in target_episodes]
    assert epsilons.count(0.0) >= 3 and epsilons.count(explore.epsilon) >= 4
    noises = [e.exploration.get("noise_std") for e in target_episodes]
    assert noises.count(explore.noise_std) >= 4
    assert (out / "phases.png").stat().st_size > 5000
    table = result.stdout
    assert "| base   | base         |" in table and "| after  | checkerboard |" in table
    assert "before vs after on checkerboard: the 95% CIs" in table
