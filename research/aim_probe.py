r"""Where a policy's grasps go relative to the objects: undershoot, overshoot or sideways.

Runs a checkpoint greedily on validation episodes (never the evaluation seeds). For each episode
it takes the object whose centre ends nearest the closing point as the one the policy went for,
and splits the closing error (closing point minus that object's centre, horizontal) into the
part along the start-to-object direction (negative: stopped short; positive: went past) and the
part across it. It also reports how far the gripper moved against how far it had to, and the
angle between the first move and the direction to the nearest object at the start.

    .venv/bin/python research/aim_probe.py \
        --checkpoint src/nsl_policy/nsl_policy/checkpoints/base.safetensors --episodes 150

Prints a summary as one JSON object. Results: docs/results/decisions.md.
"""

from __future__ import annotations

import argparse
import json


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--task", default="base")
    ap.add_argument("--episodes", type=int, default=150)
    ap.add_argument("--camera-fov", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from nsl_experiment.episodes import policy_state, resolve_task, task_spec
    from nsl_experiment.seeds import VALIDATION_SEEDS
    from nsl_policy.action_space import ActionSpace
    from nsl_policy.cem import CEMConfig
    from nsl_policy.checkpoint import load_checkpoint
    from nsl_policy.policy import ExplorationConfig, GraspPolicy
    from nsl_sim.env import GraspEnv, SimConfig

    kw = {} if args.camera_fov is None else {"camera_fov": args.camera_fov}
    sim = SimConfig(object_split="test", **kw)
    space = ActionSpace(sim.max_translation, sim.max_rotation)
    loaded = load_checkpoint(args.checkpoint, device="cpu")
    policy = GraspPolicy(loaded.model, CEMConfig(), ExplorationConfig(0.0, 0.0), seed=0)
    task = resolve_task(task_spec(args.task, None))
    rows = []
    with GraspEnv(sim) as env:
        for i in range(args.episodes):
            obs = env.reset(seed=VALIDATION_SEEDS + i, task=task)
            centres = [np.asarray(c)[:2] for c in env.object_centres()]
            start = env.commanded_pose()[0][:2].copy()
            path = [start]
            heights = [float(obs.height)]
            done = False
            while not done:
                choice = policy.select_action(obs.image, policy_state(obs))
                cmd = space.to_command(choice.vector)
                res = env.step(cmd.translation, cmd.rotation, cmd.close_gripper, cmd.terminate)
                path.append(env.commanded_pose()[0][:2].copy())
                done, obs = res.done, res.observation
                heights.append(float(obs.height))
            close = path[-1]
            target = min(centres, key=lambda c: np.linalg.norm(close - c))
            nearest_at_start = min(centres, key=lambda c: np.linalg.norm(start - c))
            need = target - start
            dist_need = float(np.linalg.norm(need))
            unit = need / dist_need if dist_need > 1e-6 else np.array([1.0, 0.0])
            err = close - target
            first = path[1] - path[0] if len(path) > 1 else np.zeros(2)
            to_near = nearest_at_start - start
            cos = float(first @ to_near / (np.linalg.norm(first) * np.linalg.norm(to_near) + 1e-9))
            rows.append(
                {
                    "success": bool(res.grasp_success),
                    "need_cm": 100 * dist_need,
                    "moved_cm": 100 * float(np.linalg.norm(close - start)),
                    "along_cm": 100 * float(err @ unit),
                    "across_cm": 100 * float(abs(err[0] * unit[1] - err[1] * unit[0])),
                    "error_cm": 100 * float(np.linalg.norm(err)),
                    "first_move_cos": cos,
                    "target_is_nearest": bool(np.allclose(target, nearest_at_start)),
                    "steps": len(path) - 1,
                    # per step: (height before, remaining distance to the target before, the
                    # part of the move that closes it)
                    "per_step": [
                        (
                            heights[k],
                            float(np.linalg.norm(target - path[k])),
                            float(
                                (path[k + 1] - path[k])
                                @ (target - path[k])
                                / (np.linalg.norm(target - path[k]) + 1e-9)
                            ),
                        )
                        for k in range(len(path) - 1)
                    ],
                }
            )
    ok = np.array([r["success"] for r in rows])

    def med(key, mask):
        v = np.array([r[key] for r in rows])[mask]
        return round(float(np.median(v)), 2) if len(v) else None

    out = {
        "checkpoint_id": loaded.checkpoint_id,
        "episodes": len(rows),
        "success_rate": float(ok.mean()),
    }
    for name, mask in (("success", ok), ("failure", ~ok)):
        out[name] = {
            k: med(k, mask)
            for k in ("need_cm", "moved_cm", "along_cm", "across_cm", "error_cm", "first_move_cos")
        }
        out[name]["target_is_nearest"] = round(
            float(np.mean([r["target_is_nearest"] for r, m in zip(rows, mask) if m])), 2
        )
    fail_rows = [r for r, m in zip(rows, ~ok) if m and r["error_cm"] > 3]
    out["misses_over_3cm"] = len(fail_rows)
    out["misses_stopped_short"] = sum(r["along_cm"] < -1.5 for r in fail_rows)
    out["misses_went_past"] = sum(r["along_cm"] > 1.5 for r in fail_rows)
    out["misses_sideways_gt_along"] = sum(
        abs(r["across_cm"]) > abs(r["along_cm"]) for r in fail_rows
    )
    # How much of the remaining distance each step closes, by step index (the last step is
    # the grasp itself and usually does not move).
    by_step = {}
    for r in rows:
        for k, (h, remaining, closed) in enumerate(r["per_step"]):
            by_step.setdefault(k, []).append((h, remaining, closed))
    out["per_step"] = {
        k: {
            "n": len(v),
            "height_cm": round(100 * float(np.median([x[0] for x in v])), 1),
            "remaining_cm": round(100 * float(np.median([x[1] for x in v])), 2),
            "closed_cm": round(100 * float(np.median([x[2] for x in v])), 2),
            "closed_share": round(
                float(np.median([x[2] / x[1] for x in v if x[1] > 0.01] or [0.0])), 2
            ),
        }
        for k, v in sorted(by_step.items())
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
