r"""Ask whether the Q-function tells a grasp that will succeed from one that will fail.

On recorded episodes it did not train on, it scores each step's recorded action and reports,
by steps left to the end of the episode (0 = the grasp itself):

- AUC: how well Q ranks the steps of successful episodes above those of failed ones
  (0.5 = chance, 1.0 = perfect);
- mean Q against the episodes' success rate (calibration: QT-Opt's Q is a success
  probability, discounted by 0.9 per step left).

At the grasp (0 steps left) the Bellman target is the reward itself, so this is the
Q-function's foundation: a Q that cannot rank grasps gives every state about the same value,
and then no move is better than another.

``--fit-steps N --train BAGS`` also trains a fresh network of the checkpoint's architecture as
a plain supervised classifier of the grasp outcome (nsl_trainer.grasp_values), on the grasps
of BAGS only, and reports its AUC on the same held-out grasps: what the network can see at the
grasp moment when nothing but that is asked of it. ``--save-classifier PATH`` writes that
network as a policy checkpoint: QT-Opt started from it learned to steer (probe 14).

    .venv/bin/python research/grasp_outcome_probe.py \
        --checkpoint src/nsl_policy/nsl_policy/checkpoints/base.safetensors \
        --data runs/experiment/datasets/base/round_9

The last line is one JSON object with the figures. Results: docs/results/decisions.md.
"""

from __future__ import annotations

import argparse
import json
import sys


def roc_auc(scores, labels) -> float:
    """Return the area under the ROC curve of ``scores`` for binary ``labels``.

    Ties count one half; NaN when only one class is present.
    """
    import numpy as np

    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    start = 0
    for end in range(1, len(scores) + 1):
        if end == len(scores) or sorted_scores[end] != sorted_scores[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def episode_labels(reward, done):
    """Return (steps left to the episode's end, the episode's success) for every row.

    The transitions are stored episode by episode (``done`` marks each episode's last row).
    """
    import numpy as np

    done = np.asarray(done, dtype=bool)
    to_go, success = np.zeros(len(done), dtype=np.int64), np.zeros(len(done), dtype=bool)
    start = 0
    for end in np.flatnonzero(done):
        to_go[start : end + 1] = np.arange(end - start, -1, -1)
        success[start : end + 1] = reward[end] > 0
        start = end + 1
    if start != len(done):
        raise ValueError("the last episode has no final step")
    return to_go, success


def q_values(model, transitions, batch: int = 256):
    """sigmoid(Q(s, recorded a)) of every row, in the canonical action form QT-Opt trains on."""
    import numpy as np
    import torch

    from nsl_policy.action_space import canonical_actions
    from nsl_policy.image import resize_batch, to_tensor

    size = model.config.image_size
    out = []
    with torch.no_grad():
        for i in range(0, len(transitions.reward), batch):
            images = to_tensor(resize_batch(np.asarray(transitions.image[i : i + batch]), size))
            state = torch.as_tensor(np.asarray(transitions.state[i : i + batch], dtype=np.float32))
            action = canonical_actions(
                torch.as_tensor(np.asarray(transitions.action[i : i + batch], dtype=np.float32))
            )
            out.append(torch.sigmoid(model(images, state, action)).numpy())
    return np.concatenate(out)


def by_steps_to_go(q, to_go, success, max_to_go: int = 5) -> list[dict]:
    """One row of figures per number of steps left (0..max_to_go) with both outcomes present."""
    rows = []
    for k in range(max_to_go + 1):
        m = to_go == k
        if m.sum() and 0 < success[m].mean() < 1:
            rows.append(
                {
                    "steps_to_go": k,
                    "n": int(m.sum()),
                    "success": round(float(success[m].mean()), 3),
                    "mean_q": round(float(q[m].mean()), 3),
                    "auc": round(roc_auc(q[m], success[m]), 3),
                }
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", required=True, help="a policy checkpoint (.safetensors)")
    ap.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="bags (or folders of bags) of episodes the checkpoint did not train on",
    )
    ap.add_argument(
        "--fit-steps",
        type=int,
        default=0,
        help="also train a supervised grasp classifier for this many steps (default 0: no)",
    )
    ap.add_argument(
        "--train", nargs="+", default=[], help="bags whose grasps train the classifier"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the classifier (default 0)")
    ap.add_argument(
        "--save-classifier",
        default=None,
        metavar="PATH",
        help="write the classifier as a policy checkpoint, e.g. to start QT-Opt from it "
        "(nsl train finetune --init PATH; docs/results/decisions.md, probe 14)",
    )
    args = ap.parse_args()
    if args.fit_steps < 0:
        ap.error("--fit-steps must be >= 0")
    if args.fit_steps and not args.train:
        ap.error("--fit-steps needs --train BAGS")
    if args.save_classifier and not args.fit_steps:
        ap.error("--save-classifier needs --fit-steps N")

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from nsl_collector.dataset import load_transitions
    from nsl_policy.checkpoint import load_checkpoint

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    loaded = load_checkpoint(args.checkpoint, device="cpu")
    held_out = load_transitions(args.data)
    to_go, success = episode_labels(np.asarray(held_out.reward), held_out.done)
    q = q_values(loaded.model.eval(), held_out)
    episodes = int(np.asarray(held_out.done).sum())
    result = {
        "checkpoint_id": loaded.checkpoint_id,
        "episodes": episodes,
        "success": round(float(success[np.asarray(held_out.done, dtype=bool)].mean()), 3),
        "by_steps_to_go": by_steps_to_go(q, to_go, success),
    }
    for row in result["by_steps_to_go"]:
        print(
            f"{row['steps_to_go']} steps to go: {row['n']} steps, success {row['success']:.3f}, "
            f"mean Q {row['mean_q']:.3f}, AUC {row['auc']:.3f}"
        )
    if args.fit_steps:
        from nsl_trainer.grasp_values import (
            GraspValueConfig,
            fit_grasp_values,
            log_every,
            new_network,
        )

        net = fit_grasp_values(
            new_network(loaded.model.config, args.seed),
            load_transitions(args.train),
            GraspValueConfig(steps=args.fit_steps, seed=args.seed),
            log_every(args.fit_steps, log, "  classifier"),
        )
        grasp = to_go == 0
        result["classifier"] = {
            "steps": args.fit_steps,
            "grasp_auc": round(roc_auc(q_values(net, held_out)[grasp], success[grasp]), 3),
        }
        print(
            f"supervised grasp classifier ({args.fit_steps} steps): "
            f"AUC {result['classifier']['grasp_auc']:.3f} at the grasp"
        )
        if args.save_classifier:
            from nsl_policy.checkpoint import save_checkpoint

            result["classifier"]["checkpoint_id"] = save_checkpoint(
                args.save_classifier,
                net,
                {
                    "note": "supervised grasp-outcome classifier (grasp_outcome_probe.py)",
                    "datasets": list(args.train),
                    "steps": args.fit_steps,
                    "seed": args.seed,
                },
            )
            print(f"wrote {args.save_classifier} ({result['classifier']['checkpoint_id']})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
