"""The pipeline: the stages in order and :func:`run`.

Every unit of work is cached (nsl_experiment.cache), so an interrupted run resumes at the last
complete unit (a bag, a training run, an evaluation task). A stage gets its inputs from the
same cached units that produced them, so a stage run on its own finds that work cached (or
does it); only the base checkpoint and its data must come from an earlier pretrain run. Each
stage ends by writing stages/<stage>.json, which the report stage reads.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from .cache import Context, hardware, now
from .config import ExperimentConfig
from .stages.calibrate import calibrate
from .stages.collect_targets import collect_targets
from .stages.continual import continual
from .stages.evaluate_base import evaluate_base
from .stages.finetune_sweep import finetune_sweep
from .stages.online_finetune import online_finetune
from .stages.pretrain import pretrain
from .stages.report import report

#: The pipeline, in order.
STAGES: dict[str, Callable[[Context], dict]] = {
    "pretrain": pretrain,
    "evaluate_base": evaluate_base,
    "calibrate": calibrate,
    "collect_targets": collect_targets,
    "finetune_sweep": finetune_sweep,
    "online_finetune": online_finetune,
    "continual": continual,
    "report": report,
}


def run(
    config: ExperimentConfig,
    output: str | Path,
    stages: list[str] | None = None,
    log_fn: Callable[[str], None] = print,
) -> dict:
    """Run ``stages`` (default: all, in order); each skips the work that is already cached."""
    names = list(STAGES) if not stages else list(stages)
    for n in names:
        if n not in STAGES:
            raise ValueError(f"unknown stage {n!r} (stages: {', '.join(STAGES)})")
    ctx = Context(config, Path(output), log_fn)
    ctx.output.mkdir(parents=True, exist_ok=True)
    # Replaced, not rewritten in place: a run folder copied with hard links (cp -al, to reuse
    # its data) must not change the original's config.
    saved = ctx.output / "config.json"
    tmp = saved.with_name("config.json.tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, saved)
    results = {"config": config.to_dict(), "stages": {}, "started": now(), "hardware": hardware()}
    for n in [s for s in STAGES if s in names]:
        ctx.work_done, ctx.stage_started = 0, time.monotonic()
        ctx.log(f"stage {n}")
        res = STAGES[n](ctx)
        res["wall_clock_s"] = time.monotonic() - ctx.stage_started
        results["stages"][n] = res
    results["finished"] = now()
    (ctx.output / "summary.json").write_text(
        json.dumps(results, indent=2, sort_keys=True, default=str)
    )
    return results
