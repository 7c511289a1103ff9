"""The demo's results (rows, summary, table, plot) and options, without running the graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("rclpy")  # the demo module imports the ROS messages
from nsl_bringup.cli import build_parser  # noqa: E402
from nsl_bringup.demo import (  # noqa: E402
    format_table,
    paired_scenes,
    phase_row,
    summarize,
    write_plot,
)
from nsl_bringup.demo_config import (  # noqa: E402
    CHALLENGES,
    DEFAULT_CHALLENGE,
    DEFAULT_SEVERITY,
    DEFAULT_TASK,
    MAX_SEED,
    SEED_BLOCK,
    SEED_BLOCKS,
    DemoConfig,
)
from nsl_msgs.msg import EpisodeResult  # noqa: E402


def episodes(successes: int, failures: int) -> list[EpisodeResult]:
    return [EpisodeResult(success=True, complete=True)] * successes + [
        EpisodeResult(success=False, complete=True)
    ] * failures


def rows(after: list[EpisodeResult]) -> list[dict]:
    return [
        phase_row("base", "base", "ckpt-base", episodes(70, 30)),
        phase_row("before", "checkerboard", "ckpt-base", episodes(10, 40)),
        phase_row("after", "checkerboard", "ckpt-fine", after),
    ]


PUBLISHED_SUMMARY = Path(__file__).resolve().parents[3] / "docs" / "results" / "summary.json"
"""The published results, whose Table I holds the severities the calibration chose."""

WALL = {"start": 12.0, "base": 150.4, "before": 61.0, "collect": 180.0, "fine-tune": 90.0}


def test_a_row_counts_successes_with_the_wilson_interval():
    row = phase_row("before", "checkerboard", "c1", episodes(10, 40))
    assert (row["episodes"], row["successes"], row["success_rate"]) == (50, 10, 0.2)
    lo, hi = row["ci95"]
    assert lo == pytest.approx(0.1124, abs=1e-3) and hi == pytest.approx(0.3304, abs=1e-3)
    empty = phase_row("after", "checkerboard", "c2", [])  # a roll back before any episode
    assert empty["success_rate"] is None and empty["ci95"] == [0.0, 1.0]


def test_summary_and_table_of_a_significant_recovery(tmp_path):
    summary = summarize(
        DemoConfig(task="checkerboard"),
        rows(episodes(35, 15)),
        {**WALL, "after": 60.0, "total": 553.4},
    )
    assert summary["before_after_cis_overlap"] is False and summary["recovered"] is True
    assert summary["config"]["task"] == "checkerboard"
    json.dumps(summary, allow_nan=False)  # summary.json stays strict JSON
    table = format_table(summary).splitlines()
    assert table[0].split("|")[1:-1] == [
        " phase  ",
        " task         ",
        " checkpoint ",
        " episodes ",
        " success ",
        " 95% CI       ",
    ]
    assert [line.split("|")[1].strip() for line in table[2:5]] == ["base", "before", "after"]
    assert "|       50 |    0.20 | [0.11, 0.33] |" in table[3]
    assert "|       50 |    0.70 | [0.56, 0.81] |" in table[4]
    assert table[5] == (
        "wall time: start 12 s, base 150 s, before 61 s, collect 180 s, fine-tune 90 s, "
        "after 60 s; total 553 s"
    )
    assert table[6] == (
        "before vs after on checkerboard: the 95% CIs do not overlap: "
        "success recovered significantly"
    )
    path = write_plot(summary, tmp_path / "phases.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_overlapping_intervals_and_a_roll_back_are_reported(tmp_path):
    summary = summarize(
        DemoConfig(),
        rows(episodes(3, 9)),
        {**WALL, "after": 20.0, "total": 500.0},
        rolled_back=True,
        rolled_back_from="ckpt-fine",
        rolled_back_to="ckpt-base",
    )
    assert summary["before_after_cis_overlap"] is True and summary["recovered"] is False
    text = format_table(summary)
    assert "the 95% CIs overlap: not separated at this number of episodes" in text
    assert "the policy rolled ckpt-fine back to ckpt-base during the after-evaluation" in text
    no_after = summarize(
        DemoConfig(),
        rows([]),
        {**WALL, "after": 1.0, "total": 500.0},
        rolled_back=True,
        rolled_back_from="ckpt-fine",
        rolled_back_to="ckpt-base",
    )
    assert "|        0 |       - | [0.00, 1.00] |" in format_table(no_after)
    write_plot(no_after, tmp_path / "empty.png")  # an empty phase draws as an empty bar


def scenes(outcomes: str, first_seed: int = 0) -> list[EpisodeResult]:
    """Episodes on consecutive seeds; "1" succeeds, "0" fails."""
    return [
        EpisodeResult(seed=first_seed + k, success=c == "1", complete=True)
        for k, c in enumerate(outcomes)
    ]


def test_paired_scenes_count_outcomes_per_scene_and_test_the_discordant_ones():
    paired = paired_scenes(scenes("1100" + "0" * 10), scenes("1010" + "1" * 10))
    assert {k: paired[k] for k in ("scenes", "both", "neither", "only_before", "only_after")} == {
        "scenes": 14,
        "both": 1,
        "neither": 1,
        "only_before": 1,
        "only_after": 11,
    }
    # Binomial(12, 0.5): P(X <= 1) = 13 / 4096, two-sided.
    assert paired["mcnemar_p"] == pytest.approx(26 / 4096)
    # Only scenes both phases ran count (an aborted episode skips a seed); a repeat counts once.
    shifted = paired_scenes(scenes("1111"), scenes("0000", first_seed=2) + scenes("1", 2))
    assert (shifted["scenes"], shifted["only_before"], shifted["mcnemar_p"]) == (2, 2, 0.5)
    same = paired_scenes(scenes("1010"), scenes("1010"))
    assert same["only_after"] == same["only_before"] == 0 and same["mcnemar_p"] == 1.0
    summary = summarize(
        DemoConfig(),
        rows(episodes(35, 15)),
        {**WALL, "after": 60.0, "total": 553.4},
        paired=paired,
    )
    assert (
        "on the 14 scenes both evaluations ran: 11 succeed only after, 1 only before "
        "(McNemar exact p = 0.00635)" in format_table(summary)
    )


def test_options_are_checked_and_every_problem_named():
    with pytest.raises(ValueError) as info:
        DemoConfig(
            task="base",
            base_episodes=0,
            base_grasps=-2,
            eval_episodes=0,
            collect_episodes=-1,
            epsilon=0.0,
            finetune_steps=-5,
            timeout=float("inf"),
            checkpoint="/no/such.safetensors",
            robot_runs_while_training="no",
        )
    message = str(info.value)
    for fragment in (
        "task must be one of the challenge tasks",
        "base_episodes must be an integer >= 1 (got 0)",
        "base_grasps must be an integer >= 0 (got -2)",
        "eval_episodes must be an integer >= 1 (got 0)",
        "collect_episodes must be an integer >= 0 (got -1)",
        "finetune_steps must be an integer >= 0 (got -5)",
        "epsilon must be in (0, 1] (got 0.0)",
        "timeout must be > 0 seconds (got inf)",
        "checkpoint '/no/such.safetensors' is not a file",
        "robot_runs_while_training must be True or False (got 'no')",
    ):
        assert fragment in message, message
    with pytest.raises(ValueError, match="task must be one of"):
        DemoConfig(task="chekerboard")
    with pytest.raises(ValueError, match="seed must be <= "):
        DemoConfig(seed=2**31)
    with pytest.raises(ValueError, match="base_grasps must be <= 1000000"):
        DemoConfig(base_grasps=1_000_001)


def test_the_evaluations_share_scenes_unless_one_is_training_data():
    blocks = DemoConfig().seed_blocks()
    assert blocks["base"] == blocks["before"] == blocks["after"]
    grasp_blocks = [blocks[k] for k in ("base grasps", "new grasps", "while training")]
    assert len(set(grasp_blocks)) == 3 and blocks["before"] not in grasp_blocks
    # The before-evaluation is the new data: the after-evaluation runs other scenes.
    no_new = DemoConfig(collect_episodes=0).seed_blocks()
    assert no_new["after"] != no_new["before"]
    # The base evaluation is the base data: its scenes keep out of before and after.
    no_base = DemoConfig(base_grasps=0).seed_blocks()
    assert no_base["base"] != no_base["before"] == no_base["after"]
    both = DemoConfig(base_grasps=0, collect_episodes=0).seed_blocks()
    assert len({both["base"], both["before"], both["after"]}) == 3
    # The largest seed keeps every phase's last episode inside the node's seed range.
    for config in (blocks, no_new, no_base, both):
        assert max(config.values()) < SEED_BLOCKS
    assert MAX_SEED + SEED_BLOCKS * SEED_BLOCK == 2**31 - 1
    assert "base" not in CHALLENGES and "checkerboard" in CHALLENGES
    assert DemoConfig(task="checkerboard@0.75").task == "checkerboard@0.75"
    with pytest.raises(ValueError, match="task: .*finite number >= 0"):
        DemoConfig(task="harsh_light@bright")
    with pytest.raises(ValueError, match="task must be one of"):
        DemoConfig(task="base@1")
    assert DemoConfig(collect_episodes=0, finetune_steps=0).finetune_steps == 0
    assert DemoConfig(base_grasps=0).base_grasps == 0  # the greedy base episodes are the data


def test_the_default_challenge_is_at_the_severity_the_calibration_chose():
    """DEFAULT_SEVERITY is Table I's for DEFAULT_CHALLENGE: a new calibration must update it."""
    assert DemoConfig().task == DEFAULT_TASK == f"{DEFAULT_CHALLENGE}@{DEFAULT_SEVERITY:g}"
    table_i = json.loads(PUBLISHED_SUMMARY.read_text())["table_i"]
    chosen = table_i[DEFAULT_CHALLENGE]
    assert chosen["reached"] is True, chosen
    assert chosen["severity"] == DEFAULT_SEVERITY, (
        f"the calibration chose {DEFAULT_CHALLENGE} at {chosen['severity']}; set "
        "nsl_bringup.demo_config.DEFAULT_SEVERITY to it"
    )


def test_the_robot_waits_during_the_fine_tune_unless_told_and_the_table_says_so():
    assert DemoConfig().robot_runs_while_training is False
    parse = build_parser().parse_args
    assert parse(["demo"]).robot_runs_while_training is False
    assert parse(["demo", "--robot-runs-while-training"]).robot_runs_while_training is True
    assert parse(["demo", "--no-robot-runs-while-training"]).robot_runs_while_training is False
    wall = {**WALL, "after": 60.0, "total": 553.4}
    waited = summarize(
        DemoConfig(),
        rows(episodes(35, 15)),
        wall,
        finetune_steps=1000,
        finetune_steps_per_s=2.5,
        robot_ran_while_training=False,
        episodes_while_training=0,
    )
    assert format_table(waited).splitlines()[-1] == (
        "fine-tune: 1000 steps, 2.50 steps/s (the robot waited meanwhile)"
    )
    ran = summarize(
        DemoConfig(robot_runs_while_training=True),
        rows(episodes(35, 15)),
        wall,
        finetune_steps=1000,
        finetune_steps_per_s=0.75,
        robot_ran_while_training=True,
        episodes_while_training=834,
    )
    assert format_table(ran).splitlines()[-1] == (
        "fine-tune: 1000 steps, 0.75 steps/s (the robot ran 834 episodes meanwhile)"
    )
    assert ran["config"]["robot_runs_while_training"] is True
