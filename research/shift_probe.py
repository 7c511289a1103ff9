"""Measure whether the base policy's aim depends on absolute image position.

Training augments every image with a random shift of up to ``crop_pad`` pixels (4 px = ~5 cm at
the tray) while the action stays the same. A Q-function that aims from where the objects lie
relative to the visible fingers is unaffected by such a shift; one that maps absolute pixel
positions to moves is blurred by it. This runs a checkpoint greedily on validation seeds (test
objects, base task) with every observation shifted by ``--shift`` pixels (edge replicate) and
reports success with a 95% Wilson interval and the tool-to-nearest-object distance at the close.

    .venv/bin/python research/shift_probe.py --episodes 100 --shift 0 2 4
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


def shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Return ``image`` (H, W, C) moved by dx columns and dy rows, edges replicated."""
    h, w = image.shape[:2]
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    return image[rows][:, cols]


def run(checkpoint: str, episodes: int, dx: int, dy: int) -> dict:
    """Run ``episodes`` greedy episodes with shifted observations; return success and aim."""
    sim = SimConfig(object_split="test")
    space = ActionSpace(sim.max_translation, sim.max_rotation)
    policy = GraspPolicy(load_checkpoint(checkpoint, device="cpu").model, CEMConfig(), seed=0)
    successes, aim = 0, []
    with GraspEnv(sim) as env:
        for seed in range(VALIDATION_SEEDS, VALIDATION_SEEDS + episodes):
            obs = env.reset(seed=seed, task="base")
            done, k = False, 0
            while not done:
                image = shifted(obs.image, dx, dy)
                cmd = space.to_command(policy.select_action(image, policy_state(obs)).vector)
                closing = cmd.close_gripper or cmd.terminate or k + 1 >= sim.max_steps
                if closing:  # where the fingers close: this step moves first, then closes
                    at = np.asarray(env.gripper_pose()[0], dtype=float)
                    at[:2] += np.asarray(cmd.translation[:2], dtype=float)
                    off = env.nearest_object_offset(at)
                    aim.append(float(np.linalg.norm(off)) if off is not None else float("nan"))
                res = env.step(cmd.translation, cmd.rotation, cmd.close_gripper, cmd.terminate)
                done, obs, k = res.done, res.observation, k + 1
                if done:
                    successes += bool(res.grasp_success)
    lo, hi = wilson_interval(successes, episodes)
    aim_cm = np.array(aim[:episodes]) * 100
    return {
        "shift_px": [dx, dy],
        "episodes": episodes,
        "success": successes / episodes,
        "ci95": [round(lo, 3), round(hi, 3)],
        "aim_median_cm": round(float(np.nanmedian(aim_cm)), 2),
        "aim_over_3cm": round(float(np.nanmean(aim_cm > 3)), 3),
    }


def main() -> None:
    """Parse arguments and print one JSON line per shift."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default=str(base_checkpoint()))
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--shift", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--axis", choices=("x", "y"), default="x")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for s in args.shift:
        dx, dy = (s, 0) if args.axis == "x" else (0, s)
        print(json.dumps(run(args.checkpoint, args.episodes, dx, dy)), flush=True)


if __name__ == "__main__":
    main()
