r"""Ask whether the Q-function looks at the scene before its first move.

At the start pose of N validation scenes (test objects, never the evaluation seeds) it scores
the same random actions in every scene and reports:

- how alike the scenes' Q-values are (mean pairwise Pearson correlation over the actions:
  1.0 means the image does not change which action is best);
- how many scenes' best action differs from the most common one;
- how often the policy's first move (greedy CEM) points within 45 degrees of the nearest
  object, against the rate of one fixed move (the mean first move) in the same scenes.

    .venv/bin/python research/start_pose_probe.py \
        --checkpoint src/nsl_policy/nsl_policy/checkpoints/base.safetensors

The last line is one JSON object with the figures. Results: docs/results/decisions.md.
"""

from __future__ import annotations

import argparse
import json
import sys


def towards(move, offset) -> bool:
    """Whether a horizontal move points within 45 degrees of ``offset``."""
    import numpy as np

    n = float(np.linalg.norm(move) * np.linalg.norm(offset))
    return n > 0 and float(np.dot(move, offset)) / n > np.cos(np.pi / 4)


def start_pose_figures(q, moves, offsets) -> dict:
    """Return the probe's figures.

    From Q-values (scenes, actions), first moves (scenes, 2) and offsets to the nearest object
    (scenes, 2).
    """
    import numpy as np

    corr = np.corrcoef(q)[np.triu_indices(len(q), k=1)]
    best = q.argmax(axis=1)
    fixed = moves.mean(axis=0)
    return {
        "q_correlation_mean": round(float(corr.mean()), 4),
        "q_correlation_min": round(float(corr.min()), 4),
        "q_spread_across_scenes": round(float(q.std(axis=0).mean()), 4),
        "q_spread_across_actions": round(float(q.std(axis=1).mean()), 4),
        "scenes_best_action_differs": int((best != np.bincount(best).argmax()).sum()),
        "first_move_towards_nearest": round(
            float(np.mean([towards(m, o) for m, o in zip(moves, offsets)])), 3
        ),
        "fixed_move_towards_nearest": round(
            float(np.mean([towards(fixed, o) for o in offsets])), 3
        ),
        "first_move_cm_mean": round(float(100 * np.linalg.norm(moves, axis=1).mean()), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", required=True, help="a policy checkpoint (.safetensors)")
    ap.add_argument("--scenes", type=int, default=100, help="validation scenes (default 100)")
    ap.add_argument(
        "--actions",
        type=int,
        default=256,
        help="random actions scored in every scene (default 256)",
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of the random actions and the CEM (default 0)"
    )
    args = ap.parse_args()
    if args.scenes < 2 or args.actions < 2:
        ap.error("--scenes and --actions must be >= 2")

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from nsl_experiment.seeds import VALIDATION_SEEDS
    from nsl_experiment.episodes import policy_state
    from nsl_policy.action_space import ACTION_DIM, ActionSpace, policy_actions
    from nsl_policy.cem import CEMConfig
    from nsl_policy.checkpoint import load_checkpoint
    from nsl_policy.image import to_tensor
    from nsl_policy.policy import ExplorationConfig, GraspPolicy
    from nsl_sim.env import GraspEnv, SimConfig

    sim = SimConfig(object_split="test")
    space = ActionSpace(sim.max_translation, sim.max_rotation)
    loaded = load_checkpoint(args.checkpoint, device="cpu")
    model = loaded.model.eval()
    policy = GraspPolicy(
        model, CEMConfig(), ExplorationConfig(0.0, 0.0), seed=args.seed, device="cpu"
    )
    gen = torch.Generator().manual_seed(args.seed)
    actions = policy_actions(torch.rand(1, args.actions, ACTION_DIM, generator=gen) * 2 - 1)
    q_rows, first_moves, offsets = [], [], []
    with GraspEnv(sim) as env, torch.no_grad():
        for i in range(args.scenes):
            obs = env.reset(seed=VALIDATION_SEEDS + i, task="base")
            state = policy_state(obs)
            q = model.score(
                model.encode(to_tensor(obs.image)), torch.as_tensor(state).reshape(1, -1), actions
            )
            q_rows.append(torch.sigmoid(q)[0].numpy())
            first_moves.append(
                space.to_command(policy.select_action(obs.image, state).vector).translation[:2]
            )
            offsets.append(env.nearest_object_offset(env.commanded_pose()[0]))
    result = {
        "checkpoint_id": loaded.checkpoint_id,
        "scenes": args.scenes,
        "actions": args.actions,
        **start_pose_figures(np.stack(q_rows), np.stack(first_moves), np.stack(offsets)),
    }
    towards = 100 * result["first_move_towards_nearest"]
    fixed_towards = 100 * result["fixed_move_towards_nearest"]
    print(
        f"{args.scenes} start poses: Q correlation between scenes "
        f"{result['q_correlation_mean']} (min {result['q_correlation_min']}); best of "
        f"{args.actions} actions differs from the common one in "
        f"{result['scenes_best_action_differs']} scenes; first move within 45 deg of the "
        f"nearest object in {towards:.0f}% (a fixed move: {fixed_towards:.0f}%)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
