"""The options of ``nsl demo`` (light: ``nsl --help`` builds the demo's flags from them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from nsl_sim.tasks import SEVERITY_SEPARATOR, TASKS, get_task
from nsl_trainer.recipe import ExplorationRecipe

BASE_TASK = "base"
"""The task the base data is recorded on (phase 1) and the policy was trained for."""
CHALLENGES = tuple(name for name in TASKS if name != BASE_TASK)

DEFAULT_CHALLENGE = "checkerboard"
"""The demo's challenge: of the two tried (checkerboard, harsh light), the one whose fine-tune on
the demo's own bags gained on validation episodes (docs/results, "The demo")."""
DEFAULT_SEVERITY = 0.5
"""Severity of the demo's challenge: the one the calibration chose for it in the published
Table I (docs/results/summary.json, ``table_i``); test_demo fails when the two differ, so a new
calibration updates this one value."""
DEFAULT_TASK = f"{DEFAULT_CHALLENGE}{SEVERITY_SEPARATOR}{DEFAULT_SEVERITY:g}"
"""The demo's default ``task`` option, built from the two above."""


SEED_BLOCK = 1_000_000
"""Scene seeds of each kind of episode start this far apart (``DemoConfig.seed_blocks``)."""
_EVALUATION_BLOCK = 0
"""The scenes the base, before and after evaluations share."""
_OWN_BLOCKS = {"base grasps": 1, "new grasps": 2, "while training": 3}
"""Phases that always run scenes of their own."""
_APART_BLOCKS = {"base": 4, "after": 5}
"""Where an evaluation that is also training data runs instead of the shared scenes."""
SEED_BLOCKS = 1 + max(_EVALUATION_BLOCK, *_OWN_BLOCKS.values(), *_APART_BLOCKS.values())
"""Blocks any configuration uses."""
MAX_SEED = 2**31 - 1 - SEED_BLOCKS * SEED_BLOCK
"""Largest ``seed``: every block stays inside the policy node's seed range (0..2**31 - 1)."""


def _option(default, text: str):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class DemoConfig:
    """Options of ``nsl demo``; each field's ``help`` metadata is its ``--help`` line."""

    # 200 episodes per phase can separate the rates of DEFAULT_TASK before and after.
    task: str = _option(
        DEFAULT_TASK,
        f"challenge task the world changes to in phase 2 ({', '.join(CHALLENGES)}), "
        f"optionally at a severity: <task>{SEVERITY_SEPARATOR}<severity>",
    )
    base_episodes: int = _option(200, "phase 1: greedy evaluation episodes on the base task")
    base_grasps: int = _option(
        400,
        "phase 1: exploration grasps on the base task, recorded as the base data "
        "(0: the greedy base episodes are the base data)",
    )
    eval_episodes: int = _option(
        200, "greedy evaluation episodes on the challenge before and after fine-tuning"
    )
    collect_episodes: int = _option(
        400,
        "phase 2: exploration grasps on the challenge, recorded as the new data "
        "(0: the greedy evaluation episodes before are the new data)",
    )
    epsilon: float = _option(
        ExplorationRecipe().epsilon, "exploration while collecting: random-action rate, in (0, 1]"
    )
    noise_std: float = _option(
        ExplorationRecipe().noise_std,
        "exploration while collecting: Gaussian noise on the policy's actions, in [0, 2]",
    )
    seed: int = _option(
        0,
        "scene seed of the evaluations: base, before and after run the same scenes "
        f"(episode k: seed + k); the grasps run scenes of their own (seed + {SEED_BLOCK:_} + k "
        f"on base, seed + {2 * SEED_BLOCK:_} + k on the challenge); an evaluation that is "
        "also training data (--base-grasps 0, --collect-episodes 0) keeps its scenes apart",
    )
    output: str = _option("", "run folder (empty: runs/demo-<time>)")
    checkpoint: str = _option(
        "", "start checkpoint (empty: the shipped base checkpoint, else a random initialisation)"
    )
    timeout: float = _option(900.0, "seconds any single phase may take")
    finetune_steps: int = _option(0, "gradient steps of the fine-tune (0: the trainer's default)")
    robot_runs_while_training: bool = _option(
        False,
        "keep the robot running greedy episodes while the trainer trains; without it the "
        "robot waits and the fine-tune does not share the CPU with the episodes",
    )

    def seed_blocks(self) -> dict[str, int]:
        """Return each phase's scene block: episode j resets with seed + block x SEED_BLOCK + j.

        The evaluations share block 0, so before and after (and the base evaluation) run the
        same scenes, except an evaluation that is also training data (``base_grasps`` or
        ``collect_episodes`` 0): its scenes then keep out of the evaluations after it.
        """
        shared = _EVALUATION_BLOCK
        return {
            "base": shared if self.base_grasps else _APART_BLOCKS["base"],
            "before": shared,
            "after": shared if self.collect_episodes else _APART_BLOCKS["after"],
            **_OWN_BLOCKS,
        }

    def __post_init__(self) -> None:
        problems = []
        name = self.task.partition(SEVERITY_SEPARATOR)[0] if isinstance(self.task, str) else None
        if name not in CHALLENGES:
            problems.append(
                f"task must be one of the challenge tasks {', '.join(CHALLENGES)}, optionally "
                f"as <task>{SEVERITY_SEPARATOR}<severity> (got {self.task!r}; phase 1 runs "
                f"{BASE_TASK})"
            )
        else:
            try:
                get_task(self.task)
            except ValueError as exc:
                problems.append(f"task: {exc}")
        for name, least in (
            ("base_episodes", 1),
            ("base_grasps", 0),
            ("eval_episodes", 1),
            ("collect_episodes", 0),
            ("finetune_steps", 0),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                problems.append(f"{name} must be an integer >= {least} (got {value!r})")
            elif name == "seed" and value > MAX_SEED:
                problems.append(f"seed must be <= {MAX_SEED} (got {value!r})")
            elif name.endswith(("episodes", "grasps")) and value > SEED_BLOCK:
                problems.append(f"{name} must be <= {SEED_BLOCK} (got {value!r})")
        # Exploration episodes are told from the greedy evaluation by their epsilon.
        if not (isinstance(self.epsilon, (int, float)) and 0 < self.epsilon <= 1):
            problems.append(f"epsilon must be in (0, 1] (got {self.epsilon!r})")
        if not (
            isinstance(self.noise_std, (int, float))
            and not isinstance(self.noise_std, bool)
            and 0 <= self.noise_std <= 2
        ):
            problems.append(f"noise_std must be in [0, 2] (got {self.noise_std!r})")
        if not (
            isinstance(self.timeout, (int, float))
            and math.isfinite(self.timeout)
            and self.timeout > 0
        ):
            problems.append(f"timeout must be > 0 seconds (got {self.timeout!r})")
        if not isinstance(self.robot_runs_while_training, bool):
            problems.append(
                "robot_runs_while_training must be True or False "
                f"(got {self.robot_runs_while_training!r})"
            )
        if self.checkpoint and not Path(self.checkpoint).is_file():
            problems.append(f"checkpoint {self.checkpoint!r} is not a file")
        if problems:
            raise ValueError("invalid demo options: " + "; ".join(problems))


OPTIONS = tuple(fields(DemoConfig))
"""The options, in order: name, type (from the default), default and ``help`` metadata."""
