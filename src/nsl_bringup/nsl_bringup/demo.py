"""The main job: the whole NSL loop in simulation, from one command.

Starts the sim_demo graph (sim, policy, collector, trainer as separate processes over ROS 2) on
a task, then: evaluates the policy greedily (epsilon 0), collects exploration grasps (epsilon
set at run time through the policy's parameter), closes the recording session, asks the trainer
to fine-tune on it through the ROS service, waits for the policy to hot-swap the announced
checkpoint, evaluates greedily again, and prints a before/after table with 95% intervals and
writes a plot. Every episode of the run is recorded and trained on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nsl_common.loop_client import LoopClient, ensure_rclpy
from nsl_bringup.graph import resolve
from nsl_bringup.runner import GraphRunner, isolated_environment
from nsl_msgs.msg import TrainerStatus
from nsl_msgs.srv import FineTune
from nsl_policy.shipped import base_checkpoint
from nsl_sim.evaluate import wilson_interval
from std_srvs.srv import Trigger

SHIPPED_BASE_CHECKPOINT = base_checkpoint()


@dataclass
class DemoConfig:
    """Options of ``nsl demo``."""

    task: str = "checkerboard"
    """Task the policy runs on and is fine-tuned for (a challenge of the paper, or base)."""
    eval_episodes: int = 50
    """Greedy evaluation episodes before and after fine-tuning."""
    collect_episodes: int = 150
    """Exploration grasps collected for fine-tuning."""
    finetune_steps: int = 500
    """Gradient steps of the fine-tuning job."""
    epsilon: float = 0.2
    """Exploration while collecting."""
    seed: int = 0
    """Seed of the first episode."""
    output: str = ""
    """Run folder (default runs/demo-<time>)."""
    checkpoint: str = ""
    """Start checkpoint (default: the shipped base checkpoint, else a random initialisation)."""
    timeout: float = 900.0
    """Seconds any single phase may take."""

    def __post_init__(self) -> None:
        if self.eval_episodes < 1 or self.collect_episodes < 0 or self.finetune_steps < 1:
            raise ValueError(
                "eval_episodes and finetune_steps must be >= 1, collect_episodes >= 0"
            )
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def start_checkpoint(config: DemoConfig, run_dir: Path) -> str:
    if config.checkpoint:
        return str(Path(config.checkpoint).resolve())
    if SHIPPED_BASE_CHECKPOINT.is_file():
        return str(SHIPPED_BASE_CHECKPOINT)
    # torch (under nsl_policy.checkpoint) is slow to import; needed only without a shipped one.
    from nsl_policy.checkpoint import init_checkpoint
    from nsl_policy.model import QNetworkConfig

    path = run_dir / "checkpoints" / "random_init.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    init_checkpoint(str(path), QNetworkConfig(), seed=config.seed)
    say(f"no shipped base checkpoint yet: starting from a random initialisation ({path})")
    return str(path)


def run_demo(config: DemoConfig) -> dict:
    t0 = time.monotonic()
    run_dir = Path(
        config.output or f"runs/demo-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    ).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = start_checkpoint(config, run_dir)
    namespace = "demo"
    _, nodes = resolve(
        "sim_demo",
        {
            "namespace": namespace,
            "task": config.task,
            "checkpoint": checkpoint,
            "epsilon": "0.0",
            "seed": str(config.seed),
            "dataset_root": str(run_dir / "datasets"),
            "checkpoint_dir": str(run_dir / "checkpoints"),
        },
    )
    env = isolated_environment()
    os.environ.update(env)  # the client node joins the graph's isolated domain
    log = open(run_dir / "nodes.log", "w")
    say(f"run folder {run_dir}; node output in {run_dir / 'nodes.log'}")
    runner = GraphRunner(nodes, namespace=namespace, env=env, output=log)
    runner.start()
    ensure_rclpy()
    client = LoopClient(namespace=namespace)
    try:

        def guard(what: str):
            died = runner.first_exit
            if died is not None:
                raise RuntimeError(f"{died.describe()} while {what}; see {run_dir / 'nodes.log'}")

        say("waiting for the policy to load its checkpoint")
        client.wait_until(
            lambda: client.active_checkpoint is not None or runner.first_exit is not None,
            120,
            "the policy's checkpoint",
        )
        guard("starting")
        before_id = client.active_checkpoint.checkpoint_id
        say(
            f"policy runs checkpoint {before_id} on '{config.task}'; "
            f"greedy evaluation, {config.eval_episodes} episodes"
        )
        before = client.wait_for_episodes(
            before_id,
            config.eval_episodes,
            config.timeout,
            epsilon=0.0,
            progress=lambda n: say(f"  evaluation episode {n}/{config.eval_episodes}"),
        )
        guard("evaluating")
        if config.collect_episodes:
            client.set_exploration(config.epsilon)
            say(
                f"collecting {config.collect_episodes} exploration grasps "
                f"(epsilon {config.epsilon})"
            )
            client.wait_for_episodes(
                before_id,
                config.collect_episodes,
                config.timeout,
                epsilon=config.epsilon,
                progress=lambda n: say(f"  grasp {n}/{config.collect_episodes}"),
            )
            guard("collecting")
        # Every episode so far belongs in the session bag.
        client.wait_for_recorded(
            config.eval_episodes + config.collect_episodes,
            120,
            stop=lambda: runner.first_exit is not None,
        )
        guard("recording")
        reply = client.call(client.stop_session_client, Trigger.Request())
        if not reply.success:
            raise RuntimeError(f"collector could not close the session: {reply.message}")
        bag = reply.message
        say(f"recorded session {bag}")
        client.set_exploration(0.0)  # from here on the robot runs greedily: the after-evaluation
        request = FineTune.Request(
            target_datasets=[bag], init_checkpoint=checkpoint, steps=config.finetune_steps
        )
        reply = client.call(client.fine_tune_client, request)
        if not reply.accepted:
            raise RuntimeError(f"trainer refused the fine-tune request: {reply.message}")
        job = reply.job_id
        say(
            f"fine-tuning job {job}: {config.finetune_steps} steps "
            "(the robot keeps running meanwhile)"
        )
        last = [-1]

        def job_done() -> bool:
            s = client.trainer_status
            if s is None or s.job_id != job or runner.first_exit is not None:
                return runner.first_exit is not None
            if s.step != last[0] and s.state == TrainerStatus.STATE_RUNNING:
                last[0] = s.step
                say(f"  step {s.step}/{s.total_steps} loss {s.loss:.4f}")
            return s.state in (
                TrainerStatus.STATE_SUCCEEDED,
                TrainerStatus.STATE_FAILED,
                TrainerStatus.STATE_CANCELLED,
            )

        client.wait_until(job_done, config.timeout, f"fine-tuning job {job}")
        guard("fine-tuning")
        if client.trainer_status.state != TrainerStatus.STATE_SUCCEEDED:
            raise RuntimeError(f"fine-tuning failed: {client.trainer_status.message}")
        client.wait_until(
            lambda: client.active_checkpoint.checkpoint_id != before_id,
            120,
            "the policy to swap in the new checkpoint",
        )
        after_id = client.active_checkpoint.checkpoint_id
        say(
            f"policy hot-swapped to {after_id}; greedy evaluation, {config.eval_episodes} episodes"
        )
        # The policy watches a swapped-in checkpoint and rolls it back when it does significantly
        # worse than the one before; the after-evaluation then ends with the episodes it had.
        after = client.wait_for_episodes(
            after_id,
            config.eval_episodes,
            config.timeout,
            epsilon=0.0,
            progress=lambda n: say(f"  evaluation episode {n}/{config.eval_episodes}"),
            stop=lambda: client.active_checkpoint.checkpoint_id != after_id,
        )
        rolled_back = client.active_checkpoint.checkpoint_id != after_id
        if rolled_back:
            say(
                f"the policy rolled {after_id} back to {client.active_checkpoint.checkpoint_id} "
                f"after {len(after)} episodes: it did significantly worse than the checkpoint "
                "before it"
            )
    finally:
        client.close()
        runner.stop()
        log.close()

    rows = []
    for label, ckpt, results in (("before", before_id, before), ("after", after_id, after)):
        wins = sum(r.success for r in results)
        lo, hi = wilson_interval(wins, len(results))  # (0, 1) when a rollback left no episode
        rows.append(
            {
                "phase": label,
                "checkpoint": ckpt,
                "episodes": len(results),
                "successes": wins,
                "success_rate": wins / len(results) if results else float("nan"),
                "ci95": [lo, hi],
            }
        )
    summary = {
        "task": config.task,
        "rows": rows,
        "dataset": bag,
        "job_id": job,
        "rolled_back": rolled_back,
        "wall_clock_s": time.monotonic() - t0,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_path = write_plot(rows, config.task, run_dir / "before_after.png")
    print()
    print("| phase  | checkpoint   | episodes | success | 95% CI        |")
    print("|--------|--------------|----------|---------|---------------|")
    for r in rows:
        print(
            f"| {r['phase']:<6} | {r['checkpoint']:<12} | {r['episodes']:>8} "
            f"| {r['success_rate']:>7.2f} | [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] |"
        )
    print()
    say(
        f"done in {summary['wall_clock_s']:.0f} s; summary in {run_dir / 'summary.json'}, "
        f"plot in {plot_path}"
    )
    return summary


def write_plot(rows: list[dict], task: str, path: Path) -> Path:
    """Bar chart of success before and after fine-tuning, with 95% Wilson intervals."""
    # matplotlib is slow to import and only draws this plot; Agg must be chosen before pyplot.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    fig, ax = plt.subplots(figsize=(4, 3.2), dpi=120)
    rates = [r["success_rate"] for r in rows]
    errors = [
        [r["success_rate"] - r["ci95"][0] for r in rows],
        [r["ci95"][1] - r["success_rate"] for r in rows],
    ]
    labels = [f"{r['phase']}\n{r['checkpoint'][:8]}\n(n={r['episodes']})" for r in rows]
    ax.bar(labels, rates, yerr=errors, capsize=6, color=["#999999", "#2a7ab9"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("grasp success (95% CI)")
    ax.set_title(f"{task}: before vs after fine-tuning", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
