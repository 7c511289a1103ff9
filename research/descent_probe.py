"""Measure whether the base policy misses because it reaches the floor before it has aimed.

Runs a checkpoint greedily on validation seeds (test objects, base task) and scales the
executed downward translation by ``--descent-scale`` (the policy still chooses the action; only
its descent is slowed), so the closed loop gets more steps to correct its aim before the
fingers reach the objects; ``--xy-gain`` scales the executed horizontal move instead (does the
policy aim the right way but move too little?). Reports success with a 95% Wilson interval and
the horizontal distance from the tool to the nearest object centre when the gripper closes.

    .venv/bin/python research/descent_probe.py --episodes 100 --descent-scale 1.0 0.5
    .venv/bin/python research/descent_probe.py --episodes 100 --descent-scale 1.0 --xy-gain 1 2
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from nsl_experiment.episodes import policy_state
from nsl_experiment.seeds import VALIDATION_SEEDS
from nsl_policy.action_space import ActionSpace
from nsl_policy.cem import CEMConfig
from nsl_policy.checkpoint import load_checkpoint
from nsl_policy.policy import GraspPolicy
from nsl_policy.shipped import base_checkpoint
from nsl_sim.env import GraspEnv, SimConfig
from nsl_sim.evaluate import wilson_interval


def run(
    checkpoint: str, episodes: int, descent_scale: float, max_steps: int, xy_gain: float = 1.0
) -> dict:
    """Run ``episodes`` greedy episodes and return success and aim figures."""
    sim = SimConfig(object_split="test", max_steps=max_steps)
    space = ActionSpace(sim.max_translation, sim.max_rotation)
    policy = GraspPolicy(load_checkpoint(checkpoint, device="cpu").model, CEMConfig(), seed=0)
    successes, aim, steps = 0, [], []
    with GraspEnv(sim) as env:
        for seed in range(VALIDATION_SEEDS, VALIDATION_SEEDS + episodes):
            obs = env.reset(seed=seed, task="base")
            done, k = False, 0
            while not done:
                cmd = space.to_command(policy.select_action(obs.image, policy_state(obs)).vector)
                t = np.asarray(cmd.translation, dtype=float)
                if t[2] < 0:
                    t[2] *= descent_scale
                # the sim clips each axis to max_translation again
                t[:2] *= xy_gain
                closing = cmd.close_gripper or cmd.terminate or k + 1 >= sim.max_steps
                res = env.step(t, cmd.rotation, cmd.close_gripper, cmd.terminate)
                if closing and not aim[len(steps) :]:
                    off = env.nearest_object_offset(env.gripper_pose()[0])
                    aim.append(float(np.linalg.norm(off)) if off is not None else float("nan"))
                done, obs, k = res.done, res.observation, k + 1
                if done:
                    successes += bool(res.grasp_success)
            steps.append(k)
    lo, hi = wilson_interval(successes, episodes)
    aim_cm = np.array(aim[:episodes]) * 100
    return {
        "descent_scale": descent_scale,
        "xy_gain": xy_gain,
        "max_steps": max_steps,
        "episodes": episodes,
        "success": successes / episodes,
        "ci95": [round(lo, 3), round(hi, 3)],
        "mean_steps": float(np.mean(steps)),
        "aim_median_cm": round(float(np.nanmedian(aim_cm)), 2),
        "aim_over_3cm": round(float(np.nanmean(aim_cm > 3)), 3),
    }


def main() -> None:
    """Parse arguments and print one JSON line per descent scale."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default=str(base_checkpoint()))
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--descent-scale", type=float, nargs="+", default=[1.0, 0.5])
    ap.add_argument(
        "--xy-gain",
        type=float,
        nargs="+",
        default=[1.0],
        help="scale the executed horizontal move (does the policy aim right but move too little?)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    for scale in args.descent_scale:
        for gain in args.xy_gain:
            row = run(args.checkpoint, args.episodes, scale, args.max_steps, gain)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
