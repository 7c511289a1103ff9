"""Choose the fine-tuning step count and check the hindsight location loss, on validation seeds.

Fine-tunes the shipped base on a pipeline run's base-control grasps + one challenge's grasps
(50/50, FineTuneRecipe), saving a checkpoint every ``--every`` steps, and evaluates chosen steps
greedily on validation episodes at the challenge's calibrated severity. ``--location-weight``
runs the recipe with another location-loss weight (0 = no hindsight loss) for the ablation.

    .venv/bin/python research/finetune_steps_probe.py --run runs/cal --task harsh_light \
        --severity 1.5 --steps 2000 --evaluate 250 500 1000 2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from nsl_policy.shipped import base_checkpoint
from nsl_trainer.recipe import FineTuneRecipe
from nsl_trainer.runs import train


def bags(run: Path, task: str) -> list[str]:
    """Return the collected grasp bags of ``task`` in a pipeline run folder."""
    found = sorted(str(p.parent) for p in (run / "datasets" / task).glob("targets/chunk_*/*.mcap"))
    if not found:
        raise SystemExit(f"no bags of {task} under {run / 'datasets'}")
    return found


def evaluate(checkpoint: Path, task: str, severity: float, episodes: int, out: Path) -> dict:
    """Evaluate ``checkpoint`` with ``nsl experiment evaluate`` on validation seeds."""
    cmd = [
        "./nsl", "experiment", "evaluate", "--checkpoint", str(checkpoint), "--task", task,
        "--severity", str(severity), "--episodes", str(episodes), "--seeds", "validation",
        "--workers", "2", "--json", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    """Fine-tune, evaluate the chosen steps and print one JSON line per evaluated step."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default="runs/cal")
    ap.add_argument("--task", required=True)
    ap.add_argument("--severity", type=float, required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--evaluate", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--location-weight", type=float, default=FineTuneRecipe().location_weight)
    ap.add_argument("--output", default="runs/probe_steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="training seed (batches, augmentation)")
    ap.add_argument("--base-bags", nargs="*", help="base bags instead of the run's base grasps")
    ap.add_argument("--target-bags", nargs="*", help="target bags instead of the run's")
    ap.add_argument("--name", default="", help="output sub-folder (default from task/weight)")
    args = ap.parse_args()
    run = Path(args.run)
    recipe = dataclasses.replace(FineTuneRecipe(), location_weight=args.location_weight)
    name = args.name or f"{args.task}_loc{args.location_weight:g}"
    out = Path(args.output) / name
    out.mkdir(parents=True, exist_ok=True)
    result = train(
        "finetune",
        args.base_bags or bags(run, "base"),
        args.target_bags or bags(run, args.task),
        args.steps,
        output_path=str(out / "final.safetensors"),
        run_dir=str(out / "run"),
        init_checkpoint=str(base_checkpoint()),
        target_fraction=recipe.target_fraction,
        config=recipe.qtopt_config(),
        checkpoint_every=args.every,
        num_threads=args.threads,
        tensorboard=False,
        seed=args.seed,
    )
    print(json.dumps({"trained": name, "metrics": result.metrics}), flush=True, file=sys.stderr)
    for step in args.evaluate:
        ckpt = out / "run" / "checkpoints" / f"step_{step:07d}.safetensors"
        if step == args.steps:
            ckpt = out / "final.safetensors"
        r = evaluate(ckpt, args.task, args.severity, args.episodes, out / f"eval_{step}.json")
        keep = {k: r[k] for k in ("success_rate", "ci95", "episodes") if k in r}
        print(json.dumps({"task": args.task, "location_weight": args.location_weight,
                          "step": step, **keep}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
