"""``nsl demo`` end to end, tiny sizes: three phases in one graph, a bag per kind, one table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nsl_bringup.demo_config import SEED_BLOCK, DemoConfig

from nsl_collector.reader import read_episodes

pytestmark = pytest.mark.system


def test_the_demo_records_base_and_challenge_apart_fine_tunes_and_reports(tmp_path):
    out = tmp_path / "demo"
    # Its own process: the demo joins a DDS domain of its own and owns rclpy there.
    result = subprocess.run(
        [sys.executable, "-m", "nsl_bringup.cli", "demo", "--output", str(out)]
        + "--task checkerboard --base-episodes 3 --base-grasps 4".split()
        + "--eval-episodes 3 --collect-episodes 4".split()
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
        "base grasps",
        "before",
        "collect",
        "fine-tune",
        "after",
        "total",
    }
    # One bag per kind of episode, each under its task's folder: the greedy evaluations are
    # recorded apart from the exploration grasps, and only the grasps are trained on.
    bags = {k: Path(v) for k, v in summary["datasets"].items()}
    assert set(bags) == {
        "base_evaluation",
        "base",
        "before_evaluation",
        "target",
        "after_evaluation",
    }
    assert len(set(bags.values())) == 5
    explore = DemoConfig()  # the grasps are collected with its (the study's) exploration
    # The evaluations run the same scenes (seeds from the demo's seed, 0); the grasps their own.
    seeds = {name: sorted(e.seed for e in read_episodes(bag)) for name, bag in bags.items()}
    for name in ("base_evaluation", "before_evaluation", "after_evaluation"):
        assert seeds[name] == list(range(len(seeds[name]))), (name, seeds[name])
    assert min(seeds["base"]) == SEED_BLOCK and min(seeds["target"]) == 2 * SEED_BLOCK
    paired = summary["paired"]
    assert paired["scenes"] == rows["after"]["episodes"] == rows["before"]["episodes"]
    assert "scenes both evaluations ran" in result.stdout
    for name, task, epsilon, least in (
        ("base_evaluation", "base", 0.0, 3),
        ("base", "base", explore.epsilon, 4),
        ("before_evaluation", "checkerboard", 0.0, 3),
        ("target", "checkerboard", explore.epsilon, 4),
        ("after_evaluation", "checkerboard", 0.0, 3),
    ):
        assert bags[name].parent == out / "datasets" / task, name
        episodes = read_episodes(bags[name])
        assert len(episodes) >= least, name
        assert {e.task for e in episodes} == {task}, name
        assert {e.exploration["epsilon"] for e in episodes} == {epsilon}, name
        if epsilon:
            assert {e.exploration.get("noise_std") for e in episodes} == {explore.noise_std}
    assert summary["base_episodes_recorded"] == len(read_episodes(bags["base"]))
    assert (out / "phases.png").stat().st_size > 5000
    table = result.stdout
    assert "| base   | base         |" in table and "| after  | checkerboard |" in table
    assert "before vs after on checkerboard: the 95% CIs" in table
