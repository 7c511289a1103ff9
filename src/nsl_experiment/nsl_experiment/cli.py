"""``nsl experiment ...``: the simulated paper reproduction.

nsl experiment run [--stages pretrain,evaluate_base,...] [--output runs/experiment]
    [--config F] [--set [section.]field=value ...]
nsl experiment report [--output runs/experiment] [--report-dir DIR]   re-render from the stamps
nsl experiment evaluate --checkpoint C --task T [--severity S] --episodes N
    [--seeds evaluation|validation|calibration]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from nsl_sim.tasks import TASKS

from .cache import read_json
from .config import ExperimentConfig
from .seeds import SEED_SETS

#: The stages in order, for the help text (nsl_experiment.pipeline.STAGES is the source).
STAGE_NAMES = (
    "pretrain",
    "evaluate_base",
    "calibrate",
    "collect_targets",
    "finetune_sweep",
    "online_finetune",
    "continual",
    "report",
)


def _config(args: argparse.Namespace) -> ExperimentConfig:
    cfg = ExperimentConfig.load(args.config) if args.config else ExperimentConfig()
    overrides = list(args.set or [])
    if getattr(args, "workers", None):
        overrides.append(f"workers={args.workers}")
    return cfg.with_overrides(overrides) if overrides else cfg


def _log(msg: str) -> None:
    print(msg, flush=True)


def _stop_on_sigterm() -> None:
    """SIGTERM -> SystemExit, so worker pools are terminated and nothing is left running."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


#: Table II's baselines at the largest tier, as the sweep stamp names them and as printed.
SWEEP_BASELINES = (
    ("scratch", "scratch"),
    ("reinit_head", "reinit head"),
    ("agnostic_trunk", "agnostic trunk"),
)


def _baseline_rate(entry: dict | None) -> str:
    """Format a baseline's success rate, or "not run" (baselines off or an older stamp)."""
    return "not run" if entry is None else f"{entry['result']['success_rate']:.3f}"


def _rate(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] ({r['successes']}/{r['episodes']})"


def _calibrate_lines(res: dict) -> list[str]:
    lines = []
    for task, r in res["table_i"].items():
        if task == "base":
            lines.append(f"base: base policy {_rate(r['result'])}")
        else:
            status = r.get("status") or ("reached" if r["reached"] else "drop not reached")
            flag = "" if status == "reached" else f" ({status})"
            solvable = {True: "solvable", False: "NOT solvable"}.get(r.get("solvable"), "?")
            lines.append(
                f"{task}: severity {r['severity']:g}{flag}, {solvable}, "
                f"base policy {_rate(r['result'])}, drop {r['drop']:+.3f}"
            )
    return lines


def headlines(name: str, res: dict) -> list[str]:
    """Return the headline numbers of a stage's summary, one line each."""
    if name == "pretrain" and res.get("imported_from"):
        return [f"base checkpoint {res['checkpoint_id']} (imported from {res['imported_from']})"]
    if name == "pretrain":
        val = next(
            r["validation"] for r in res["rounds"] if r["checkpoint_id"] == res["checkpoint_id"]
        )
        part = f" part {res['chosen_part']}" if res.get("chosen_part") else ""
        return [
            f"base checkpoint {res['checkpoint_id']} (round {res['chosen_round']}{part}"
            + (f", validation {_rate(val)})" if val else ")")
        ]
    if name == "evaluate_base":
        return [f"{task}: {_rate(r)}" for task, r in res["results"].items()]
    if name == "calibrate":
        return _calibrate_lines(res)
    if name == "collect_targets":
        return [
            f"{task}: {_rate(t['collected'])} successful exploration grasps"
            for task, t in res["tasks"].items()
        ]
    if name == "finetune_sweep":
        return [
            f"{task}: "
            + ", ".join(f"{n}: {e['result']['success_rate']:.3f}" for n, e in row["tiers"].items())
            + "".join(
                f" | {label} {_baseline_rate(row.get(key))}" for key, label in SWEEP_BASELINES
            )
            for task, row in res["tasks"].items()
        ]
    if name == "online_finetune":
        if res.get("skipped"):
            return [f"skipped: {res['skipped']}"]
        return [
            f"{task}: "
            + ", ".join(
                f"round {r['round']} validation {r['validation']['success_rate']:.3f}"
                f"{'' if r['accepted'] else ' (rejected)'}"
                for r in row["rounds"]
            )
            + f" | policy in force {_rate(row['result'])}"
            for task, row in res["tasks"].items()
        ]
    if name == "continual":
        return [f"step {s['step']} {s['task']}: {_rate(s['result'])}" for s in res["steps"]] + [
            f"final policy on {task}: {_rate(r)}" for task, r in res["final"].items()
        ]
    if name == "report":
        verdict = {True: "PASS", False: "FAIL", None: "NOT RUN"}
        return [f"{verdict[c['passed']]}: {c['check']}" for c in res["acceptance"]] + res["files"]
    return []


def cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline's stages."""
    # heavy: the pipeline imports torch and pybullet; `nsl --help` stays fast without them
    from .pipeline import run

    _stop_on_sigterm()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    results = run(_config(args), args.output, stages, _log)
    for name, res in results["stages"].items():
        _log(f"{name}: done in {res['wall_clock_s']:.0f} s")
        for line in headlines(name, res):
            _log(f"  {line}")
    _log(f"summary: {os.path.join(args.output, 'summary.json')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render a run's report from its stage stamps."""
    # heavy: the report's modules import the pipeline's units (torch, pybullet)
    from .report.render import report_folder, write_report

    output = Path(args.output)
    if not (output / "stages").is_dir():
        _log(f"{output}: no stages/ folder (not a run folder of nsl experiment run)")
        return 1
    report_dir = args.report_dir
    if not report_dir:  # where the run itself reports
        saved = read_json(output / "config.json") or {}
        report_dir = saved.get("runtime", {}).get("report_dir", "")
    res = write_report(output, report_folder(report_dir, output), _log)
    for line in headlines("report", res):
        _log(f"  {line}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on a task."""
    # heavy: evaluation imports torch and pybullet; `nsl --help` stays fast without them
    from nsl_policy.checkpoint import load_checkpoint

    from .episodes import task_spec
    from .units.evaluate import evaluate_checkpoint

    _stop_on_sigterm()
    res = evaluate_checkpoint(
        args.checkpoint,
        task_spec(args.task, args.severity),
        args.episodes,
        _config(args),
        args.seeds,
        _log if args.verbose else None,
    )
    # The result names what it scored, so a figure can be traced to its checkpoint.
    res = {
        "checkpoint": os.path.abspath(args.checkpoint),
        "checkpoint_id": load_checkpoint(args.checkpoint).checkpoint_id,
        **res,
    }
    lo, hi = res["ci95"]
    _log(
        f"{args.task} (severity {res['severity']:g}): success {res['success_rate']:.3f} "
        f"(95% CI {lo:.3f}-{hi:.3f}, {res['successes']}/{res['episodes']} episodes, "
        f"{args.seeds} seeds from {res['first_seed']}, test objects, {res['seconds']:.0f} s)"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


def _common(q: argparse.ArgumentParser) -> None:
    q.add_argument("--config", default="", help="YAML/JSON file of ExperimentConfig fields")
    q.add_argument(
        "--set",
        action="append",
        metavar="[SECTION.]FIELD=VALUE",
        help="override a config field (YAML value), repeatable, e.g. --set rounds=2 "
        "or --set study.tiers=[25,100]",
    )
    q.add_argument(
        "--workers", type=int, default=0, help="episode worker processes (default: config, 1)"
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``nsl experiment`` and its subcommands."""
    p = subparsers.add_parser(
        "experiment",
        help="simulated reproduction of the paper: pre-training, challenges, "
        "fine-tuning study, continual learning, report",
    )
    sub = p.add_subparsers(dest="experiment_command", required=True)
    r = sub.add_parser("run", help="run the pipeline's stages (cached and resumable)")
    r.add_argument(
        "--stages",
        default="",
        help=f"comma-separated stages (default all: {','.join(STAGE_NAMES)})",
    )
    r.add_argument(
        "--output", default="runs/experiment", help="run folder (default runs/experiment)"
    )
    _common(r)
    r.set_defaults(fn=cmd_run)

    rep = sub.add_parser(
        "report",
        help="re-render the report (tables, acceptance, plots) from a run's stage stamps; "
        "runs no episodes",
    )
    rep.add_argument(
        "--output", default="runs/experiment", help="run folder (default runs/experiment)"
    )
    rep.add_argument(
        "--report-dir",
        default="",
        help="where to write it (default: the run's report_dir, else <output>/report)",
    )
    rep.set_defaults(fn=cmd_report)

    e = sub.add_parser(
        "evaluate", help="greedy CEM policy on held-out test objects, success with 95%% Wilson CI"
    )
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--task", default="base", choices=sorted(TASKS))
    e.add_argument(
        "--severity",
        type=float,
        default=None,
        help="TaskConfig.severity of the task (default: the task's own, 1; > 1 exaggerates it)",
    )
    e.add_argument("--episodes", type=int, default=200)
    e.add_argument(
        "--seeds",
        default="evaluation",
        choices=tuple(SEED_SETS),
        help="episode seed set: evaluation (reported numbers), validation (choices) or "
        "calibration (the challenges' severities)",
    )
    e.add_argument("--json", default="", help="also write the result as JSON here")
    e.add_argument("--verbose", action="store_true")
    _common(e)
    e.set_defaults(fn=cmd_evaluate)


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser(prog="nsl")
    add_commands(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args()
    sys.exit(a.fn(a))
