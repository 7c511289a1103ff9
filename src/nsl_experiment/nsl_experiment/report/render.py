"""Write a run's report: paper_reproduction.md, summary.json and the plots."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from .acceptance import (
    BASE_MIN_SUCCESS,
    MAX_CONTINUAL_PENALTY,
    MAX_FINETUNE_GRASPS,
    MIN_CHALLENGE_DROP,
    MIN_CHALLENGES_RECOVERED,
    MIN_RECOVERED_SHARE,
    acceptance,
)
from .markdown import render_markdown, reproduce_commands
from .plots import CONTINUAL_PLOT, SWEEP_PLOT, plot_continual, plot_sweep
from .tables import STAGE_ORDER, consistency_warnings, load_stamps, tables

REPORT_NAME = "paper_reproduction.md"
SUMMARY_NAME = "summary.json"


def report_folder(report_dir: str, run_dir: Path) -> Path:
    """Where a run reports: ``report_dir`` when set, else <run folder>/report."""
    return Path(report_dir) if report_dir else run_dir / "report"


def write_report(run_dir: Path, report_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Render the report of ``run_dir`` into ``report_dir``.

    Paper_reproduction.md, summary.json and the plots of the tables that exist. Returns {"stage",
    "files", "acceptance", "warnings"}.
    """
    stamps = load_stamps(run_dir)
    numbers = tables(stamps)
    checks = acceptance(numbers)
    warnings = consistency_warnings(stamps)
    commands = reproduce_commands(stamps, run_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    plots = {}
    if numbers["table_ii"] and numbers["table_ii"]["tasks"]:
        plot_sweep(numbers, report_dir / SWEEP_PLOT)
        plots["sweep"] = SWEEP_PLOT
    if numbers["table_iii"] and numbers["table_iii"]["steps"]:
        plot_continual(numbers, report_dir / CONTINUAL_PLOT)
        plots["continual"] = CONTINUAL_PLOT
    markdown = render_markdown(numbers, checks, stamps, run_dir, commands, warnings, plots)
    (report_dir / REPORT_NAME).write_text(markdown + "\n")
    summary = {
        "run": str(run_dir),
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commands": commands,
        "acceptance": checks,
        "warnings": warnings,
        **numbers,
        "stages": {
            name: stamps[name]["provenance"]
            for name in STAGE_ORDER
            if "provenance" in stamps.get(name, {})
        },
        "thresholds": {
            "base_min_success": BASE_MIN_SUCCESS,
            "min_challenge_drop": MIN_CHALLENGE_DROP,
            "max_finetune_grasps": MAX_FINETUNE_GRASPS,
            "min_recovered_share": MIN_RECOVERED_SHARE,
            "min_challenges_recovered": MIN_CHALLENGES_RECOVERED,
            "max_continual_penalty": MAX_CONTINUAL_PENALTY,
        },
    }
    (report_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, sort_keys=True))
    files = [str(report_dir / f) for f in (REPORT_NAME, SUMMARY_NAME, *plots.values())]
    log(
        f"report: acceptance {sum(1 for c in checks if c['passed'])} of {len(checks)} checks "
        "pass; "
        f"wrote {', '.join(files)}"
    )
    return {"stage": "report", "files": files, "acceptance": checks, "warnings": warnings}
