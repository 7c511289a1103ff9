"""``nsl experiment ...``: the simulated paper reproduction (issue 7).

  nsl experiment run [--stages pretrain,evaluate_base] [--output runs/experiment] [--config F] [--set k=v ...]
  nsl experiment evaluate --checkpoint C --task T --episodes N [--seeds evaluation|validation]
"""
from __future__ import annotations

import json
import os
import sys


def _config(args):
    from .config import ExperimentConfig

    cfg = ExperimentConfig.load(args.config) if args.config else ExperimentConfig()
    overrides = list(args.set or [])
    if getattr(args, "workers", None):
        overrides.append(f"workers={args.workers}")
    return cfg.with_overrides(overrides) if overrides else cfg


def _log(msg: str) -> None:
    print(msg, flush=True)


def _stop_on_sigterm() -> None:
    """SIGTERM -> SystemExit, so worker pools are terminated and nothing is left running."""
    import signal

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def cmd_run(args) -> int:
    _stop_on_sigterm()
    from .stages import STAGES, run

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else list(STAGES)
    cfg = _config(args)
    results = run(cfg, args.output, stages, _log)
    for name, res in results["stages"].items():
        _log(f"{name}: done in {res['wall_clock_s']:.0f} s")
        if name == "evaluate_base":
            for task, r in res["results"].items():
                lo, hi = r["ci95"]
                _log(f"  {task}: {r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] ({r['successes']}/{r['episodes']})")
    _log(f"summary: {os.path.join(args.output, 'summary.json')}")
    return 0


def cmd_evaluate(args) -> int:
    _stop_on_sigterm()
    from .stages import evaluate_checkpoint

    cfg = _config(args)
    res = evaluate_checkpoint(args.checkpoint, args.task, args.episodes, cfg, args.seeds, _log if args.verbose else None)
    lo, hi = res["ci95"]
    _log(f"{args.task}: success {res['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}, {res['successes']}/{res['episodes']} "
         f"episodes, {args.seeds} seeds from {res['first_seed']}, test objects, {res['seconds']:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


def add_commands(subparsers) -> None:
    from nsl_sim.tasks import TASKS

    p = subparsers.add_parser("experiment", help="simulated reproduction of the paper: pre-training, evaluation, ...")
    sub = p.add_subparsers(dest="experiment_command", required=True)

    def common(q) -> None:
        q.add_argument("--config", default="", help="YAML/JSON file of ExperimentConfig fields")
        q.add_argument("--set", action="append", metavar="FIELD=VALUE",
                       help="override a config field (YAML value), repeatable, e.g. --set rounds=2")
        q.add_argument("--workers", type=int, default=0, help="episode worker processes (default: config, 1)")

    r = sub.add_parser("run", help="run the pipeline's stages (cached and resumable)")
    r.add_argument("--stages", default="", help="comma-separated stages (default all: pretrain,evaluate_base)")
    r.add_argument("--output", default="runs/experiment", help="run folder (default runs/experiment)")
    common(r)
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("evaluate", help="greedy CEM policy on held-out test objects, success with 95%% Wilson CI")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--task", default="base", choices=sorted(TASKS))
    e.add_argument("--episodes", type=int, default=200)
    e.add_argument("--seeds", default="evaluation", choices=("evaluation", "validation"),
                   help="episode seed set: evaluation (reported numbers) or validation (for choices)")
    e.add_argument("--json", default="", help="also write the result as JSON here")
    e.add_argument("--verbose", action="store_true")
    common(e)
    e.set_defaults(fn=cmd_evaluate)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(prog="nsl")
    add_commands(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args()
    sys.exit(a.fn(a))
