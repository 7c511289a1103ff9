r"""Ask which weights of a fine-tuning run make the better policy: online or Polyak-averaged.

The Polyak average is target network 1. Re-trains one unit of an experiment run's fine-tuning
sweep (same config, same seeds, so the online weights come out identical to the sweep's),
writes both networks and runs each on validation episodes of the unit's task (never the
evaluation seeds).

    .venv/bin/python research/probe_policy_weights.py --run runs/experiment_kp \
        --task checkerboard --grasps 200

Writes <run>/probes/policy_weights_<task>_<grasps>/{online,polyak}.safetensors and prints one
VALIDATION line per network. Needs the run's pretrain, calibrate and collect_targets stages.
Results: docs/results/decisions.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--run",
        type=Path,
        required=True,
        help="experiment run folder (nsl experiment run --output)",
    )
    ap.add_argument(
        "--task", required=True, help="study task of the sweep unit, e.g. checkerboard"
    )
    ap.add_argument(
        "--grasps", type=int, required=True, help="the unit's tier (exploration grasps)"
    )
    ap.add_argument(
        "--episodes", type=int, default=60, help="validation episodes per network (default 60)"
    )
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    from nsl_experiment.config import ExperimentConfig
    from nsl_experiment.cache import Context
    from nsl_experiment.units.base import base_checkpoint
    from nsl_experiment.units.calibration import calibration, study_spec
    from nsl_experiment.units.evaluate import evaluate_checkpoint
    from nsl_experiment.units.labels import load_episodes
    from nsl_experiment.units.study import base_data, targets
    from nsl_policy.checkpoint import load_checkpoint, save_checkpoint
    from nsl_trainer.runs import train_transitions
    from nsl_trainer.state import load_state
    from nsl_trainer.trainer import QTOptTrainer

    cfg = ExperimentConfig.from_run(args.run, workers=args.workers)
    ctx = Context(cfg, args.run, print)
    init, _ = base_checkpoint(ctx)
    base_bags, _ = base_data(ctx)
    cal = calibration(ctx)
    target = targets(ctx, (args.task,), cal)[args.task]
    target_bags, _ = target.tier(args.grasps, cfg.sim.chunk_episodes)
    out = args.run / "probes" / f"policy_weights_{args.task}_{args.grasps}"
    out.mkdir(parents=True, exist_ok=True)
    # The study's fine-tuning settings, exporting the online network: the Polyak one is read
    # from the saved training state below.
    qtopt = dataclasses.replace(cfg.qtopt_config(finetune=True), policy_weights="online")
    train_transitions(
        "finetune",
        load_episodes(base_bags),
        load_episodes(target_bags, args.grasps),
        cfg.finetune.finetune_steps,
        output_path=str(out / "online.safetensors"),
        init_checkpoint=str(init),
        learning_rate=cfg.finetune_learning_rate(),
        target_fraction=cfg.finetune.target_fraction,
        seed=cfg.seeds.seed,
        config=qtopt,
        num_threads=cfg.runtime.threads,
        run_dir=str(out / "run"),
        tensorboard=False,
    )
    online = load_checkpoint(out / "online.safetensors", device="cpu")
    trainer = QTOptTrainer(online.model, qtopt, "cpu")
    load_state(trainer, out / "run" / "state.safetensors")  # holds target network 1
    polyak_id = save_checkpoint(
        str(out / "polyak.safetensors"),
        trainer.target1,
        {"kind": "probe_polyak", "parent": online.metadata.get("parent")},
    )
    print(f"online {online.checkpoint_id}, polyak {polyak_id}", flush=True)
    for name in ("online", "polyak"):
        res = evaluate_checkpoint(
            out / f"{name}.safetensors",
            study_spec(cal, args.task),
            args.episodes,
            cfg,
            "validation",
        )
        lo, hi = res["ci95"]
        print(
            f"{args.task} {args.grasps} {name} VALIDATION {res['success_rate']:.3f} "
            f"[{lo:.3f}, {hi:.3f}] (n={res['episodes']})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
