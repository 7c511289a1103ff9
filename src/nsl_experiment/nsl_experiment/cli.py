"""``nsl experiment ...``: the simulated paper reproduction (issue 7).

nsl experiment run [--stages pretrain,evaluate_base,...] [--output runs/experiment] [--config F] [--set k=v ...]
nsl experiment report [--output runs/experiment] [--report-dir DIR]   re-render the report from the stamps
nsl experiment evaluate --checkpoint C --task T [--severity S] --episodes N
    [--seeds evaluation|validation|calibration]
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


def _rate(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] ({r['successes']}/{r['episodes']})"


def headlines(name: str, res: dict) -> list[str]:
    """The headline numbers of a stage's summary, one line each."""
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
        lines = []
        for task, r in res["table_i"].items():
            if task == "base":
                lines.append(f"base: base policy {_rate(r['result'])}")
            else:
                lines.append(
                    f"{task}: severity {r['severity']:g}{'' if r['reached'] else ' (drop not reached)'}, "
                    f"base policy {_rate(r['result'])}, drop {r['drop']:+.3f}"
                )
        return lines
    if name == "collect_targets":
        return [
            f"{task}: {_rate(t['collected'])} successful exploration grasps"
            for task, t in res["tasks"].items()
        ]
    if name == "finetune_sweep":
        return [
            f"{task}: "
            + ", ".join(f"{n}: {e['result']['success_rate']:.3f}" for n, e in row["tiers"].items())
            + f" | scratch {row['scratch']['result']['success_rate']:.3f}"
            + f" | reinit head {row['reinit_head']['result']['success_rate']:.3f}"
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


def cmd_run(args) -> int:
    _stop_on_sigterm()
    from .stages import STAGES, run

    stages = (
        [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else list(STAGES)
    )
    cfg = _config(args)
    results = run(cfg, args.output, stages, _log)
    for name, res in results["stages"].items():
        _log(f"{name}: done in {res['wall_clock_s']:.0f} s")
        for line in headlines(name, res):
            _log(f"  {line}")
    _log(f"summary: {os.path.join(args.output, 'summary.json')}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from .config import ExperimentConfig
    from .report import write_report

    output = Path(args.output)
    if not (output / "stages").is_dir():
        _log(f"{output}: no stages/ folder (not a run folder of nsl experiment run)")
        return 1
    report_dir = args.report_dir
    if not report_dir:  # where the run itself reports
        saved = output / "config.json"
        report_dir = (json.loads(saved.read_text()) if saved.exists() else {}).get(
            "report_dir", ExperimentConfig().report_dir
        )
    res = write_report(output, Path(report_dir), _log)
    for line in headlines("report", res):
        _log(f"  {line}")
    return 0


def cmd_evaluate(args) -> int:
    _stop_on_sigterm()
    from .stages import evaluate_checkpoint

    cfg = _config(args)
    from .episodes import task_spec

    res = evaluate_checkpoint(
        args.checkpoint,
        task_spec(args.task, args.severity),
        args.episodes,
        cfg,
        args.seeds,
        _log if args.verbose else None,
    )
    lo, hi = res["ci95"]
    _log(
        f"{args.task} (severity {res['severity']:g}): success {res['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}, "
        f"{res['successes']}/{res['episodes']} "
        f"episodes, {args.seeds} seeds from {res['first_seed']}, test objects, {res['seconds']:.0f} s)"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


def add_commands(subparsers) -> None:
    from nsl_sim.tasks import TASKS

    from .config import SEED_SETS

    p = subparsers.add_parser(
        "experiment",
        help="simulated reproduction of the paper: pre-training, challenges, "
        "fine-tuning study, continual learning, report",
    )
    sub = p.add_subparsers(dest="experiment_command", required=True)

    def common(q) -> None:
        q.add_argument("--config", default="", help="YAML/JSON file of ExperimentConfig fields")
        q.add_argument(
            "--set",
            action="append",
            metavar="FIELD=VALUE",
            help="override a config field (YAML value), repeatable, e.g. --set rounds=2",
        )
        q.add_argument(
            "--workers", type=int, default=0, help="episode worker processes (default: config, 1)"
        )

    r = sub.add_parser("run", help="run the pipeline's stages (cached and resumable)")
    r.add_argument(
        "--stages",
        default="",
        help="comma-separated stages (default all: pretrain,evaluate_base,"
        "calibrate,collect_targets,finetune_sweep,continual,report)",
    )
    r.add_argument(
        "--output", default="runs/experiment", help="run folder (default runs/experiment)"
    )
    common(r)
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
        help="where to write it (default: the run's report_dir, docs/results)",
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
        help="episode seed set: evaluation (reported numbers), validation (choices) or calibration "
        "(the challenges' severities)",
    )
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
