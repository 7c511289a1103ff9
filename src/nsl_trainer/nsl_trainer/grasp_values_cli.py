"""``nsl train grasp-values``: the supervised grasp-outcome classifier, a start for QT-Opt.

  nsl train grasp-values --data BAG... --steps 3000 --output gv.safetensors
  nsl train finetune --init gv.safetensors ...

As in :mod:`.cli`, the library (torch) is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from nsl_collector.errors import DatasetError

from .cli_options import add_compute_and_network_options


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``grasp-values`` command to ``nsl train``'s subcommands."""
    c = subparsers.add_parser(
        "grasp-values",
        help="supervised grasp-outcome classifier, a start for QT-Opt (nsl_trainer.grasp_values)",
    )
    c.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="BAG",
        help="bags or dataset folders; every episode's final step is a grasp, "
        "labelled by its reward",
    )
    c.add_argument(
        "--output", required=True, help="result checkpoint (.safetensors), written atomically"
    )
    c.add_argument(
        "--init", default=None, help="checkpoint to start from (default: a fresh network)"
    )
    c.add_argument("--steps", type=int, default=3000, help="Adam steps (default 3000)")
    c.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    c.add_argument("--batch-size", type=int, default=64, help="grasps per step (default 64)")
    c.add_argument("--seed", type=int, default=0)
    add_compute_and_network_options(c, "of a fresh network")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(fn=cmd_grasp_values, mode="grasp-values")


def cmd_grasp_values(args: argparse.Namespace) -> int:
    """Run ``nsl train grasp-values``: fit_grasp_values on the bags, saved as a checkpoint."""
    # torch (also under the nsl_policy and nsl_trainer modules) is imported when the command runs.
    import torch

    from nsl_policy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from nsl_policy.model import QNetworkConfig
    from nsl_trainer.grasp_values import (
        GraspValueConfig,
        fit_grasp_values,
        grasp_rows,
        new_network,
    )
    from nsl_trainer.data import load_datasets

    try:
        config = GraspValueConfig(
            steps=args.steps, learning_rate=args.lr, batch_size=args.batch_size, seed=args.seed
        )
        if args.threads is not None:
            torch.set_num_threads(max(1, args.threads))
        if args.init:
            net = load_checkpoint(args.init, device="cpu").model
        else:
            net = new_network(
                QNetworkConfig(image_size=args.image_size, width=args.width), args.seed
            )
        data = load_datasets(args.data)
        rows = grasp_rows(data)
        print(
            f"{len(rows)} grasps, success {float((data.reward[rows] > 0).mean()):.3f}",
            file=sys.stderr,
        )
        bar = None
        if not args.quiet:
            from tqdm import tqdm  # heavy: imported when a command runs (module doc)

            bar = tqdm(
                total=args.steps,
                desc="grasp values",
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )

        def progress(step: int, m: dict) -> None:
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)

        try:
            fit_grasp_values(
                net, data, config, progress, device=None if args.device == "auto" else args.device
            )
        finally:
            if bar is not None:
                bar.close()
        checkpoint_id = save_checkpoint(
            args.output,
            net.cpu(),
            {
                "kind": "grasp_values",
                "init": args.init,
                "datasets": list(args.data),
                **config.to_dict(),
            },
        )
    except (
        DatasetError,
        CheckpointError,
        ValueError,
        FileNotFoundError,
        FloatingPointError,
    ) as exc:
        print(f"nsl train grasp-values: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output} (checkpoint {checkpoint_id}, {args.steps} steps on "
        f"{len(rows)} grasps)"
    )
    return 0
