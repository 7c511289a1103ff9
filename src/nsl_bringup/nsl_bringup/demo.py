"""The main job: the paper's story in simulation, in one command and one running graph.

Starts the sim_demo graph (sim, policy, collector, trainer as separate processes over ROS 2)
on the base task and tells the story in three phases, without restarting anything:

1. **base**: the policy runs greedily (epsilon 0) on the base task, the evaluation; then it
   logs exploration grasps there (``base_grasps``, the study's exploration): that session's
   bag is the base data, grasps of the policy the robot deploys, logged before the world
   changes.
2. **the world changes**: the policy's ``task`` is set to the challenge at run time (from the
   next episode). **before**: greedy evaluation on the challenge; then exploration grasps
   there: that session's bag is the new data.
3. **fine-tune**: the trainer's ``fine_tune`` service on the base and the new data with the
   trainer's recipe (its default steps, learning rate and base/target sampling); the policy
   hot-swaps the announced checkpoint; **after**: greedy evaluation on the challenge.

Between two kinds of episodes the demo deactivates the policy node (the episode in flight ends
incomplete and is not recorded), closes the collector's session and sets the next task and
exploration, so every bag holds one kind: with the default sizes the evaluations are recorded,
never trained on (``base_grasps`` or ``collect_episodes`` 0 trains on them instead). Unless
``robot_runs_while_training``, the robot waits while the trainer trains, so the fine-tune does
not share the CPU with the episodes.

It prints a table of the three evaluations with 95% Wilson intervals and the wall time of
each phase, says whether the before and after intervals overlap, and writes ``summary.json``
and ``phases.png`` into the run folder. The policy watches a swapped-in checkpoint and rolls
it back when it does significantly worse than the one before; the demo reports that.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import time
from pathlib import Path

from nsl_common.loop_client import LoopClient, ensure_rclpy
from nsl_bringup.demo_config import BASE_TASK, SEED_BLOCK, DemoConfig
from nsl_bringup.graph import resolve
from nsl_bringup.runner import GraphRunner, isolated_environment
from nsl_msgs.msg import EpisodeResult, TrainerStatus
from nsl_msgs.srv import FineTune
from nsl_policy.shipped import base_checkpoint
from nsl_sim.evaluate import wilson_interval
from std_srvs.srv import Trigger

SHIPPED_BASE_CHECKPOINT = base_checkpoint()
RECORDING_TIMEOUT = 120.0
"""Seconds the collector may take to write the episodes the demo has seen."""
RESULT_SETTLE_S = 1.0
"""Seconds without a new episode result after a pause before the demo counts the results."""
PHASE_COLORS = {"base": "#999999", "before": "#d9822b", "after": "#2a7ab9"}

__all__ = ["DemoConfig", "format_table", "phase_row", "run_demo", "summarize", "write_plot"]


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


# ---- results ----------------------------------------------------------------------------------
def phase_row(phase: str, task: str, checkpoint: str, results: list[EpisodeResult]) -> dict:
    """Return one evaluation's row: its episodes, successes, rate and 95% Wilson interval."""
    wins = sum(bool(r.success) for r in results)
    lo, hi = wilson_interval(wins, len(results))  # (0, 1) when a roll back left no episode
    return {
        "phase": phase,
        "task": task,
        "checkpoint": checkpoint,
        "episodes": len(results),
        "successes": wins,
        "success_rate": wins / len(results) if results else None,
        "ci95": [lo, hi],
    }


def paired_scenes(before: list[EpisodeResult], after: list[EpisodeResult]) -> dict:
    """Compare two evaluations on the scenes (seeds) both ran: outcome counts and McNemar's test.

    The exact two-sided McNemar p-value is the binomial test of the discordant scenes (success
    only before, only after) against a fair coin: small when the change, not the scenes, made
    the difference. A scene that ran more than once in a phase counts by its first episode.
    """
    first_before, first_after = {}, {}
    for results, first in ((before, first_before), (after, first_after)):
        for r in results:
            first.setdefault(int(r.seed), bool(r.success))
    seeds = sorted(set(first_before) & set(first_after))
    pairs = [(first_before[s], first_after[s]) for s in seeds]
    only_before = sum(b and not a for b, a in pairs)
    only_after = sum(a and not b for b, a in pairs)
    discordant = only_before + only_after
    tail = sum(math.comb(discordant, k) for k in range(min(only_before, only_after) + 1))
    p_value = min(1.0, 2 * tail / 2**discordant) if discordant else 1.0
    return {
        "scenes": len(pairs),
        "both": sum(b and a for b, a in pairs),
        "neither": sum(not b and not a for b, a in pairs),
        "only_before": only_before,
        "only_after": only_after,
        "mcnemar_p": p_value,
    }


def summarize(config: DemoConfig, rows: list[dict], wall_s: dict, **facts) -> dict:
    """Return the run's summary: rows, before/after comparison, wall times, options, ``facts``."""
    by_phase = {r["phase"]: r for r in rows}
    before, after = by_phase["before"]["ci95"], by_phase["after"]["ci95"]
    overlap = not (after[0] > before[1] or before[0] > after[1])
    return {
        "task": config.task,
        "rows": rows,
        "before_after_cis_overlap": overlap,
        "recovered": after[0] > before[1],
        "wall_s": wall_s,
        "config": dataclasses.asdict(config),
        **facts,
    }


def format_table(summary: dict) -> str:
    """Return the printed result: the three phases, wall times and the before/after verdict."""
    header = ("phase", "task", "checkpoint", "episodes", "success", "95% CI")
    lines = []
    for r in summary["rows"]:
        rate = r["success_rate"]
        lines.append(
            (
                r["phase"],
                r["task"],
                r["checkpoint"],
                str(r["episodes"]),
                "-" if rate is None else f"{rate:.2f}",
                f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]",
            )
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    right = {3, 4}  # numbers align right

    def cells(row) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            )
            + " |"
        )

    table = [cells(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    table += [cells(row) for row in lines]
    wall = summary["wall_s"]
    times = ", ".join(f"{name} {wall[name]:.0f} s" for name in wall if name != "total")
    table.append(f"wall time: {times}; total {wall['total']:.0f} s")
    if not summary["before_after_cis_overlap"]:
        verdict = (
            "do not overlap: success recovered significantly"
            if summary["recovered"]
            else "do not overlap: success fell significantly"
        )
    else:
        verdict = "overlap: not separated at this number of episodes"
    table.append(f"before vs after on {summary['task']}: the 95% CIs {verdict}")
    paired = summary.get("paired")
    if paired and paired["scenes"]:
        table.append(
            f"on the {paired['scenes']} scenes both evaluations ran: {paired['only_after']} "
            f"succeed only after, {paired['only_before']} only before "
            f"(McNemar exact p = {paired['mcnemar_p']:.3g}"
            + (
                "; the after-evaluation stopped at a roll back, which happens when it does "
                "worse, so this p favours 'worse'"
                if summary.get("rolled_back")
                else ""
            )
            + ")"
        )
    if summary.get("rolled_back"):
        table.append(
            f"the policy rolled {summary['rolled_back_from']} back to "
            f"{summary['rolled_back_to']} during the after-evaluation"
        )
    rate = summary.get("finetune_steps_per_s")
    if rate:
        meanwhile = (
            f"ran {summary.get('episodes_while_training', 0)} episodes"
            if summary.get("robot_ran_while_training")
            else "waited"
        )
        table.append(
            f"fine-tune: {summary['finetune_steps']} steps, {rate:.2f} steps/s "
            f"(the robot {meanwhile} meanwhile)"
        )
    return "\n".join(table)


def write_plot(summary: dict, path: Path) -> Path:
    """Bar chart of the three phases' success with 95% Wilson intervals."""
    # matplotlib is slow to import and only draws this plot; Agg must be chosen before pyplot.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    rows = summary["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    rates = [r["success_rate"] or 0.0 for r in rows]
    errors = [
        [rate - r["ci95"][0] if r["episodes"] else 0.0 for rate, r in zip(rates, rows)],
        [r["ci95"][1] - rate if r["episodes"] else 0.0 for rate, r in zip(rates, rows)],
    ]
    labels = [f"{r['phase']}\n{r['task']}\n(n={r['episodes']})" for r in rows]
    colors = [PHASE_COLORS.get(r["phase"], "#555555") for r in rows]
    ax.bar(labels, rates, yerr=errors, capsize=6, color=colors)
    ax.set_ylim(0, 1)
    ax.set_ylabel("grasp success (95% CI)")
    ax.set_title(f"base, then {summary['task']}: before and after fine-tuning", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- the run ----------------------------------------------------------------------------------
class _Clock:
    """Wall time of each phase, in the order they end."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.phases: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        self.phases[phase], self.last = now - self.last, now

    def wall_s(self) -> dict:
        return {**self.phases, "total": time.monotonic() - self.start}


def run_demo(config: DemoConfig) -> dict:
    """Run the three phases (module doc) and return the summary written to summary.json."""
    clock = _Clock()
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
            "task": BASE_TASK,
            "checkpoint": checkpoint,
            "epsilon": "0.0",
            "seed": str(config.seed + config.seed_blocks()["base"] * SEED_BLOCK),
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
        facts = _Phases(config, client, runner, checkpoint, run_dir, clock).run()
    finally:
        client.close()
        runner.stop()
        log.close()
    rows = facts.pop("rows")
    summary = summarize(config, rows, clock.wall_s(), **facts)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_path = write_plot(summary, run_dir / "phases.png")
    print()
    print(format_table(summary))
    print()
    say(f"summary in {run_dir / 'summary.json'}, plot in {plot_path}")
    return summary


class _Phases:
    """The three phases against the running graph (the client's waits block this thread)."""

    def __init__(
        self,
        config: DemoConfig,
        client: LoopClient,
        runner: GraphRunner,
        checkpoint: str,
        run_dir: Path,
        clock: _Clock,
    ) -> None:
        self.config, self.client, self.runner = config, client, runner
        self.checkpoint, self.run_dir, self.clock = checkpoint, run_dir, clock

    def guard(self, what: str) -> None:
        died = self.runner.first_exit
        if died is not None:
            raise RuntimeError(f"{died.describe()} while {what}; see {self.run_dir / 'nodes.log'}")

    def node_died(self) -> bool:
        return self.runner.first_exit is not None

    def episodes(
        self,
        what: str,
        checkpoint: str,
        count: int,
        task: str,
        epsilon: float,
        phase: str,
        **kw,
    ):
        """Wait for ``count`` complete episodes of ``phase`` (progress lines as they come).

        Only episodes on the phase's scenes count: a greedy episode run while training on the
        swapped-in checkpoint is not one of the after-evaluation's.
        """
        first = self.first_seed(phase)
        results = self.client.wait_for_episodes(
            checkpoint,
            count,
            self.config.timeout,
            epsilon=epsilon,
            task=task,
            seeds=range(first, first + SEED_BLOCK),
            progress=lambda n: say(f"  {what} {n}/{count}"),
            **kw,
        )
        self.guard(what)
        return results

    def pause_and_close_session(self, what: str) -> tuple[str, int]:
        """Stop the robot, close the collector's session once it holds every episode.

        Returns the session's bag and the episodes the collector wrote to it. Deactivating
        ends the episode in flight (published incomplete, not recorded), so the session holds
        exactly the complete episodes run since the last close; the next complete episode opens
        a new one. Each kind of episode (greedy evaluation, exploration grasps) gets a bag of
        its own.
        """
        client = self.client
        client.set_policy_active(False)
        client.wait_for_quiet_results(RESULT_SETTLE_S, RECORDING_TIMEOUT)
        in_session = len(client.complete_results()) - self.closed_episodes
        if in_session == 0:
            return "", 0  # no complete episode since the last close: no session is open
        client.wait_for_recorded(
            in_session, RECORDING_TIMEOUT, stop=self.node_died, since=self.at_last_close
        )
        self.guard(f"recording the {what}")
        status = dict(client.collector_status)
        reply = client.call(client.stop_session_client, Trigger.Request())
        if not reply.success:
            raise RuntimeError(f"collector could not close the {what} session: {reply.message}")
        dropped = status.get("dropped_episodes", 0) - self.at_last_close["dropped_episodes"]
        self.closed_episodes = len(client.complete_results())
        self.at_last_close = {**status, "session": reply.message}
        written = status.get("session_episodes", 0)
        say(f"{what}: {written} episodes in {reply.message}")
        if dropped:
            say(f"  the collector dropped {dropped} episodes of the {what} (see nodes.log)")
        return reply.message, written

    def first_seed(self, phase: str) -> int:
        """Return the scene seed of ``phase``'s first episode (DemoConfig.seed_blocks)."""
        return self.config.seed + self.config.seed_blocks()[phase] * SEED_BLOCK

    def resume(self, task: str, epsilon: float, noise_std: float, phase: str) -> None:
        """Set the next episodes' task, exploration and scenes (``phase``'s), then start again.

        The evaluations share their scenes, so before and after compare scene by scene.
        """
        self.client.set_task(task)
        self.client.set_exploration(epsilon, noise_std)
        self.client.set_seed(self.first_seed(phase))
        self.client.set_policy_active(True)

    def grasps(self, what: str, checkpoint: str, count: int, task: str) -> tuple[str, int]:
        """Run ``count`` exploration grasps on ``task`` in a session of their own: bag, count."""
        config = self.config
        phase = f"{what} grasps"
        self.resume(task, config.epsilon, config.noise_std, phase)
        self.episodes(f"{what} grasp", checkpoint, count, task, config.epsilon, phase)
        return self.pause_and_close_session(f"{what} data")

    def run(self) -> dict:
        config, client = self.config, self.client
        say("waiting for the policy to load its checkpoint")
        client.wait_until(
            lambda: client.active_checkpoint is not None or self.node_died(),
            120,
            "the policy's checkpoint",
        )
        self.guard("starting")
        base_id = client.active_checkpoint.checkpoint_id
        self.closed_episodes = 0  # complete episodes the client saw before the last close
        self.at_last_close = {"session": "", "dropped_episodes": 0}  # the collector's status
        self.clock.mark("start")
        bags = {}

        say(
            f"phase 1, base: checkpoint {base_id} runs greedily on '{BASE_TASK}', "
            f"{config.base_episodes} episodes; the collector records them"
        )
        base = self.episodes("base episode", base_id, config.base_episodes, BASE_TASK, 0.0, "base")
        bags["base_evaluation"], base_recorded = self.pause_and_close_session("base evaluation")
        self.clock.mark("base")
        if config.base_grasps:
            say(
                f"the robot logs {config.base_grasps} exploration grasps on '{BASE_TASK}' "
                f"(epsilon {config.epsilon}, action noise {config.noise_std}): the base data, "
                "grasps of the policy it deploys, as a robot logs them before the world changes"
            )
            bags["base"], base_recorded = self.grasps(
                "base", base_id, config.base_grasps, BASE_TASK
            )
            self.clock.mark("base grasps")
        else:
            bags["base"] = bags["base_evaluation"]

        say(f"phase 2, the world changes: task '{config.task}' from the next episode")
        blocks = config.seed_blocks()
        shared = " on the base evaluation's scenes" if blocks["base"] == blocks["before"] else ""
        say(
            f"before: greedy evaluation on '{config.task}', {config.eval_episodes} "
            f"episodes{shared}"
        )
        self.resume(config.task, 0.0, 0.0, "before")
        before = self.episodes(
            "evaluation episode", base_id, config.eval_episodes, config.task, 0.0, "before"
        )
        bags["before_evaluation"], _ = self.pause_and_close_session("evaluation before")
        self.clock.mark("before")
        if config.collect_episodes:
            say(
                f"collecting {config.collect_episodes} exploration grasps on '{config.task}' "
                f"(epsilon {config.epsilon}, action noise {config.noise_std})"
            )
            bags["target"], _ = self.grasps("new", base_id, config.collect_episodes, config.task)
        else:
            bags["target"] = bags["before_evaluation"]
        self.clock.mark("collect")
        if config.robot_runs_while_training:
            self.resume(config.task, 0.0, 0.0, "while training")  # greedy, a session of its own
        else:
            say(
                "the robot waits while the trainer trains (on a 2-core machine its episodes "
                "would share the CPU with the fine-tune and slow it; "
                "--robot-runs-while-training keeps it running)"
            )

        episodes_before_training = len(client.complete_results())
        job, total_steps, steps_per_s = self.fine_tune(bags["base"], bags["target"])
        # An inactive policy swaps an announced checkpoint in at once: no episode runs.
        client.wait_until(
            lambda: client.active_checkpoint.checkpoint_id != base_id or self.node_died(),
            120,
            "the policy to swap in the new checkpoint",
        )
        self.guard("swapping in the new checkpoint")
        after_id = client.active_checkpoint.checkpoint_id
        episodes_while_training = len(client.complete_results()) - episodes_before_training
        if config.robot_runs_while_training:
            # The episodes run during the fine-tune (on the old checkpoint, and on the new one
            # once swapped) get a bag of their own, apart from the after-evaluation's.
            bags["while_training"], _ = self.pause_and_close_session("episodes while training")
        self.resume(config.task, 0.0, 0.0, "after")
        say(f"the robot runs on {after_id}")
        self.clock.mark("fine-tune")
        paired = blocks["after"] == blocks["before"]
        say(
            f"policy hot-swapped to {after_id}; after: greedy evaluation on '{config.task}', "
            f"{config.eval_episodes} episodes"
            + (
                ", on the scenes of the evaluation before"
                if paired
                else ", on scenes of its own (the evaluation before is training data)"
            )
        )
        # The policy watches a swapped-in checkpoint and rolls it back when it does significantly
        # worse than the one before; the after-evaluation then ends with the episodes it had.
        after = self.episodes(
            "evaluation episode",
            after_id,
            config.eval_episodes,
            config.task,
            0.0,
            "after",
            stop=lambda: client.active_checkpoint.checkpoint_id != after_id,
        )
        restored = client.active_checkpoint.checkpoint_id
        bags["after_evaluation"], _ = self.pause_and_close_session("evaluation after")
        if restored != after_id:
            say(
                f"the policy rolled {after_id} back to {restored} after {len(after)} episodes: "
                "it did significantly worse than the checkpoint before it"
            )
        self.clock.mark("after")
        return {
            "rows": [
                phase_row("base", BASE_TASK, base_id, base),
                phase_row("before", config.task, base_id, before),
                phase_row("after", config.task, after_id, after),
            ],
            "paired": paired_scenes(before, after) if paired else None,
            "datasets": bags,
            "base_episodes_recorded": base_recorded,
            "job_id": job,
            "finetune_steps": total_steps,
            "finetune_steps_per_s": steps_per_s,
            "robot_ran_while_training": config.robot_runs_while_training,
            "episodes_while_training": episodes_while_training,
            "rolled_back": restored != after_id,
            "rolled_back_from": after_id if restored != after_id else "",
            "rolled_back_to": restored if restored != after_id else "",
        }

    def fine_tune(self, base_bag: str, target_bag: str) -> tuple[str, int, float | None]:
        """Fine-tune through the trainer's service; return the job id, its steps and steps/s.

        The rate is over the job's progress reports after its first step, from the first to the
        last (None with fewer than two): the training alone, without the worker's start and
        data loading.
        """
        client, config = self.client, self.config
        # Zero steps, learning rate and target fraction: the trainer's recipe decides them.
        request = FineTune.Request(
            base_datasets=[base_bag],
            target_datasets=[target_bag],
            init_checkpoint=self.checkpoint,
            steps=config.finetune_steps,
            learning_rate=0.0,
            target_fraction=0.0,
        )
        reply = client.call(client.fine_tune_client, request)
        if not reply.accepted:
            raise RuntimeError(f"trainer refused the fine-tune request: {reply.message}")
        job = reply.job_id
        meanwhile = "keeps running" if config.robot_runs_while_training else "waits"
        say(
            f"phase 3, fine-tuning job {job} on the base and the new data with the trainer's "
            f"recipe (the robot {meanwhile} meanwhile)"
        )
        last = [-1]
        reports: list[tuple[float, int]] = []  # (monotonic time, step) of progress reports

        def job_done() -> bool:
            s = client.trainer_status
            if s is None or s.job_id != job or self.node_died():
                return self.node_died()
            if s.step != last[0] and s.state == TrainerStatus.STATE_RUNNING:
                last[0] = s.step
                if s.step > 0:  # step 0 is reported before the worker has loaded the data
                    reports.append((time.monotonic(), int(s.step)))
                loss = f" loss {s.loss:.4f}" if math.isfinite(s.loss) else ""  # NaN: no step yet
                say(f"  step {s.step}/{s.total_steps}{loss}")
            return s.state in (
                TrainerStatus.STATE_SUCCEEDED,
                TrainerStatus.STATE_FAILED,
                TrainerStatus.STATE_CANCELLED,
            )

        client.wait_until(job_done, config.timeout, f"fine-tuning job {job}")
        self.guard("fine-tuning")
        status = client.trainer_status
        if status.state != TrainerStatus.STATE_SUCCEEDED:
            raise RuntimeError(f"fine-tuning failed: {status.message}")
        steps_per_s = None
        if len(reports) >= 2 and reports[-1][0] > reports[0][0]:
            (t0, step0), (t1, step1) = reports[0], reports[-1]
            steps_per_s = (step1 - step0) / (t1 - t0)
            say(f"fine-tune: {step1 - step0} steps in {t1 - t0:.0f} s, {steps_per_s:.2f} steps/s")
        return job, int(status.total_steps), steps_per_s
