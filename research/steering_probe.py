r"""Ask whether a Q-function knows which moves bring the gripper closer to an object.

On frames of the noisy scripted oracle (held-out test objects, validation seeds), with the
nearest object more than 2 cm away, it scores random horizontal moves that all descend one full
step without rotating (close and terminate off). It reports, averaged over frames, the AUC of
its ranking of the frame's moves that end closer to the nearest object against those that do
not (0.5 = chance). The labels come from the simulator state, which the policy never sees.

- ``--checkpoint CK``: a trained Q-function (e.g. a base policy), as it is.
- ``--fit-steps N``: a fresh network of the same architecture, trained for N steps as a plain
  supervised classifier of that label on train-object frames: what the architecture can learn
  when the label is given on every move. ``--blind`` trains it on black images (the control:
  what the gripper state and the move alone predict).

    .venv/bin/python research/steering_probe.py \
        --checkpoint src/nsl_policy/nsl_policy/checkpoints/base.safetensors \
        --fit-steps 3000 --cache runs/perception

The frames and their cache are research/perception_probe.py's. The last line printed is one
JSON object with the figures. Results: docs/results/decisions.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from grasp_outcome_probe import roc_auc  # research/ is on sys.path when run as a script
from perception_probe import cached_frames


def move_labels(offsets, moves):
    """Label 1 each horizontal move (..., K, 2) (m) that ends closer to the object, else 0.

    The object is at ``offsets`` (..., 2) from the gripper; closer means than the gripper is now.
    """
    import numpy as np

    o = offsets[..., None, :]
    return (np.linalg.norm(o - moves, axis=-1) < np.linalg.norm(o, axis=-1)).astype(np.float32)


def random_moves(n: int, k: int, max_translation: float, rng, horizontal_only: bool = False):
    """Draw normalised actions (n, k, 6), close and terminate off, and their moves (n, k, 2) in m.

    ``horizontal_only``: every move descends a full step without rotating, so that moves of one
    frame differ only in x and y.
    """
    import numpy as np

    actions = rng.uniform(-1.0, 1.0, (n, k, 6)).astype(np.float32)
    actions[..., 4:] = -1.0
    if horizontal_only:
        actions[..., 2], actions[..., 3] = -1.0, 0.0
    return actions, actions[..., :2] * max_translation


def within_frame_auc(q, labels) -> float:
    """Return the mean over frames (rows, with both labels) of the AUC of that frame's moves.

    It measures whether the Q-function prefers the closer moves *in the same scene*, not which
    scenes it likes.
    """
    import numpy as np

    aucs = [roc_auc(qi, li) for qi, li in zip(q, labels) if 0 < li.sum() < len(li)]
    return float(np.mean(aucs))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--checkpoint",
        required=True,
        help="a policy checkpoint (.safetensors); its architecture "
        "is also the one --fit-steps trains",
    )
    ap.add_argument(
        "--fit-steps",
        type=int,
        default=0,
        help="also train a supervised classifier (default 0: no)",
    )
    ap.add_argument(
        "--blind", action="store_true", help="the classifier sees black images (control)"
    )
    ap.add_argument(
        "--train-episodes",
        type=int,
        default=2400,
        help="oracle episodes on train objects (default 2400)",
    )
    ap.add_argument(
        "--test-episodes",
        type=int,
        default=150,
        help="oracle episodes on test objects (default 150)",
    )
    ap.add_argument("--moves", type=int, default=16, help="random moves per frame (default 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="perception_probe's frame cache folder")
    args = ap.parse_args()
    if (
        min(args.test_episodes, args.moves) < 1
        or args.fit_steps < 0
        or (args.fit_steps and args.train_episodes < 1)
    ):
        ap.error(
            "--test-episodes, --moves (and --train-episodes with --fit-steps) must be >= 1, "
            "--fit-steps >= 0"
        )

    import numpy as np
    import torch

    from nsl_experiment.seeds import VALIDATION_SEEDS
    from nsl_policy.checkpoint import load_checkpoint
    from nsl_policy.model import QNetwork
    from nsl_sim.env import SimConfig

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    loaded = load_checkpoint(args.checkpoint, device="cpu")
    size, max_t = loaded.model.config.image_size, SimConfig().max_translation

    def far(data):  # frames whose nearest object is > 2 cm away: there the direction matters
        keep = np.linalg.norm(data[2], axis=1) > 0.02
        return tuple(x[keep] for x in data)

    def tensors(images, states, actions, blind=False):
        x = (
            torch.from_numpy(images * 0 if blind else images)
            .permute(0, 3, 1, 2)
            .float()
            .div_(255.0)
        )
        return (
            x.contiguous(memory_format=torch.channels_last),
            torch.from_numpy(states),
            torch.from_numpy(actions),
        )

    test = far(
        cached_frames(
            size,
            "test",
            range(VALIDATION_SEEDS, VALIDATION_SEEDS + args.test_episodes),
            0.5,
            args.cache,
        )
    )
    test_actions, test_moves = random_moves(
        len(test[0]), args.moves, max_t, np.random.default_rng(args.seed + 1), horizontal_only=True
    )
    test_labels = move_labels(test[2], test_moves)

    def auc_of(net, blind=False) -> float:
        x, s, a = tensors(test[0], test[1], test_actions, blind)
        with torch.no_grad():
            q = torch.cat(
                [
                    net.score(net.encode(x[i : i + 128]), s[i : i + 128], a[i : i + 128])
                    for i in range(0, len(x), 128)
                ]
            )
        return round(within_frame_auc(q.numpy(), test_labels), 3)

    result = {
        "checkpoint_id": loaded.checkpoint_id,
        "test_frames": int(len(test[0])),
        "moves_per_frame": args.moves,
        "closer_share": round(float(test_labels.mean()), 3),
        "auc": auc_of(loaded.model.eval()),
    }
    print(
        f"{loaded.checkpoint_id}: ranks moves that bring the gripper closer with AUC "
        f"{result['auc']} ({len(test[0])} test frames x {args.moves} moves)"
    )
    if args.fit_steps:
        train = far(cached_frames(size, "train", range(args.train_episodes), 0.5, args.cache))
        net = QNetwork(loaded.model.config)
        rng = np.random.default_rng(args.seed)

        def batch_loss():
            idx = rng.integers(0, len(train[0]), 64)
            actions, moves = random_moves(64, args.moves, max_t, rng)
            x, s, a = tensors(train[0][idx], train[1][idx], actions, args.blind)
            return torch.nn.functional.binary_cross_entropy_with_logits(
                net.score(net.encode(x), s, a), torch.from_numpy(move_labels(train[2][idx], moves))
            )

        from nsl_trainer.grasp_values import log_every, train_classifier

        train_classifier(
            net,
            batch_loss,
            args.fit_steps,
            progress=log_every(
                args.fit_steps, lambda msg: print(msg, file=sys.stderr, flush=True), "  classifier"
            ),
        )
        result["classifier"] = {
            "steps": args.fit_steps,
            "blind": args.blind,
            "auc": auc_of(net, args.blind),
        }
        print(
            f"supervised classifier of the same architecture ({args.fit_steps} steps"
            f"{', blind' if args.blind else ''}): AUC {result['classifier']['auc']}"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
