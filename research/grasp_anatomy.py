r"""Measure where a policy grasps and why it fails, on validation episodes.

Runs a checkpoint greedily on validation
episodes (never the evaluation seeds) and, at each episode's grasp, measures the gripper's
horizontal distance to the nearest object, reading object poses from the simulator (which the
policy never sees) and taking the mesh centre the scripted oracle aims at.

    .venv/bin/python research/grasp_anatomy.py \
        --checkpoint src/nsl_policy/nsl_policy/checkpoints/base.safetensors

Prints one JSON line per episode, then a summary: success, how many episodes the agent ended
itself, failures that closed more than --miss cm away from every object ("missed": the policy
went to an empty spot) against failures next to one ("fumbled"), and how far the nearest object
was from the start position in successful against failed episodes (a policy that does not look
succeeds mostly when an object happens to lie under its fixed approach). The last line is one
JSON object with the figures. Results: docs/results/decisions.md.
"""

from __future__ import annotations

import argparse
import json
import sys


def nearest_object_distance(env, xy) -> float:
    """Horizontal distance (m) from ``xy`` (tray frame) to the nearest object's centre."""
    import numpy as np

    return float(np.linalg.norm(env.nearest_object_offset(xy)))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", required=True, help="a policy checkpoint (.safetensors)")
    ap.add_argument("--task", default="base", help="task name (default base)")
    ap.add_argument(
        "--severity", type=float, default=None, help="task severity (default: the task's own)"
    )
    ap.add_argument("--episodes", type=int, default=60, help="validation episodes (default 60)")
    ap.add_argument(
        "--miss",
        type=float,
        default=3.0,
        help="a failed grasp farther than this from every object "
        "(cm, bounding-box centre) counts as a miss (default 3)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--cem",
        default="{}",
        metavar="YAML",
        help="overrides of the acting CEMConfig, e.g. '{population: 256, iterations: 3}' "
        "(default: none)",
    )
    args = ap.parse_args()
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    import yaml

    from nsl_policy.cem import CEMConfig

    cem_overrides = yaml.safe_load(args.cem)
    if not isinstance(cem_overrides, dict):
        ap.error(f"--cem must be a YAML mapping of CEMConfig fields, got {args.cem!r}")
    try:  # before any simulator or checkpoint work
        cem = CEMConfig(**cem_overrides)
    except (TypeError, ValueError) as err:
        ap.error(f"--cem: {err}")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from nsl_experiment.seeds import VALIDATION_SEEDS
    from nsl_experiment.episodes import policy_state, resolve_task, task_spec
    from nsl_policy.action_space import ActionSpace
    from nsl_policy.checkpoint import load_checkpoint
    from nsl_policy.policy import ExplorationConfig, GraspPolicy
    from nsl_sim.env import GraspEnv, SimConfig

    sim = SimConfig(object_split="test")
    space = ActionSpace(sim.max_translation, sim.max_rotation)
    loaded = load_checkpoint(args.checkpoint, device="cpu")
    policy = GraspPolicy(loaded.model, cem, ExplorationConfig(0.0, 0.0), seed=0, device="cpu")
    task = resolve_task(task_spec(args.task, args.severity))
    rows = []
    with GraspEnv(sim) as env:
        for i in range(args.episodes):
            obs = env.reset(seed=VALIDATION_SEEDS + i, task=task)
            start_xy = env.commanded_pose()[0][:2]
            from_start = nearest_object_distance(env, start_xy)
            done = False
            while not done:
                choice = policy.select_action(obs.image, policy_state(obs))
                cmd = space.to_command(choice.vector)
                target = np.clip(
                    env.commanded_pose()[0]
                    + np.clip(cmd.translation, -sim.max_translation, sim.max_translation),
                    sim.workspace_low,
                    sim.workspace_high,
                )
                # Objects before the step that closes: the grasp and lift would move them.
                at_grasp = nearest_object_distance(env, target[:2])
                res = env.step(cmd.translation, cmd.rotation, cmd.close_gripper, cmd.terminate)
                done, obs = res.done, res.observation
            rows.append(
                {
                    "seed": VALIDATION_SEEDS + i,
                    "success": bool(res.grasp_success),
                    "steps": res.info["steps"],
                    "ended_by_agent": res.info["terminated_by_agent"],
                    "grasp_height_m": round(float(target[2]), 4),
                    "nearest_object_cm": round(100 * at_grasp, 2),
                    "nearest_from_start_cm": round(100 * from_start, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    ok = np.array([r["success"] for r in rows])
    dist = np.array([r["nearest_object_cm"] for r in rows])
    start = np.array([r["nearest_from_start_cm"] for r in rows])
    fails = ~ok

    def median(values, mask):
        return round(float(np.median(values[mask])), 2) if mask.any() else None

    summary = {
        "checkpoint_id": loaded.checkpoint_id,
        "task": task.name,
        "episodes": len(rows),
        "cem": cem_overrides,
        "success": round(float(ok.mean()), 3),
        "ended_by_agent": round(float(np.mean([r["ended_by_agent"] for r in rows])), 3),
        "missed": round(float(np.mean(fails & (dist > args.miss))), 3),
        "fumbled": round(float(np.mean(fails & (dist <= args.miss))), 3),
        "miss_cm": args.miss,
        "median_grasp_to_object_cm": {"success": median(dist, ok), "failure": median(dist, fails)},
        "median_start_to_object_cm": {
            "success": median(start, ok),
            "failure": median(start, fails),
        },
        "median_steps": float(np.median([r["steps"] for r in rows])),
    }
    start_cm = summary["median_start_to_object_cm"]
    print(
        f"{len(rows)} validation episodes on {task.name}: success {summary['success']:.3f}; "
        f"failures that missed every object by > {args.miss:g} cm {summary['missed']:.3f}, "
        f"that closed next to one {summary['fumbled']:.3f}; nearest object from the start "
        f"(median): {start_cm['success']} cm in successes, {start_cm['failure']} cm in failures"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
