r"""Compare the fine-tuning sweeps of two experiment runs on validation episodes, unit by unit.

Validation episodes are never the evaluation seeds. Units are every tier, scratch and the
re-initialised head of every study task. Use it to choose between two settings of the
fine-tuning runs (for example ``finetune_qtopt={"policy_weights": "polyak"}`` against the
default) without looking at the evaluation numbers the report shows.

    .venv/bin/python research/compare_sweeps.py runs/experiment_kp runs/experiment_kp_polyak \
        --workers 2

Both runs need a finished finetune_sweep stage on the same calibration. Results are cached per
checkpoint id in <run>/probes/sweep_validation.json, so a second call only prints. Prints one
line per unit and, last, one JSON object: per run the mean validation success over the tiers
and the units where the two differ by more than the 95% interval of a difference at this n.
Results: docs/results/decisions.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def sweep_units(run: Path) -> dict[tuple[str, str], tuple[Path, str]]:
    """{(task, unit): (checkpoint path, checkpoint id)} of a run's finished sweep stage."""
    stamp = json.loads((run / "stages" / "finetune_sweep.json").read_text())
    units = {}
    for task, row in stamp["tasks"].items():
        entries = {f"tier_{n}": e for n, e in row["tiers"].items()}
        entries.update(scratch=row["scratch"], reinit_head=row["reinit_head"])
        for unit, entry in entries.items():
            units[(task, unit)] = (run / entry["checkpoint"], entry["checkpoint_id"])
    return units


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "runs", nargs=2, type=Path, help="two experiment run folders (nsl experiment run --output)"
    )
    ap.add_argument(
        "--episodes", type=int, default=60, help="validation episodes per checkpoint (default 60)"
    )
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--tiers-only", action="store_true", help="skip scratch and the re-initialised head"
    )
    args = ap.parse_args()

    from nsl_experiment.config import ExperimentConfig
    from nsl_experiment.cache import Context
    from nsl_experiment.units.calibration import calibration, study_spec
    from nsl_experiment.units.evaluate import evaluate_checkpoint

    a, b = args.runs
    cfgs, cals, units, caches = [], [], [], []
    for run in args.runs:
        cfgs.append(ExperimentConfig.from_run(run, workers=args.workers))
        cals.append(calibration(Context(cfgs[-1], run, lambda m: None)))
        try:
            units.append(sweep_units(run))
        except FileNotFoundError:
            ap.error(f"{run}: no finished finetune_sweep stage (stages/finetune_sweep.json)")
        cache_path = run / "probes" / "sweep_validation.json"
        caches.append(
            (cache_path, json.loads(cache_path.read_text()) if cache_path.exists() else {})
        )
    if cals[0]["challenges"] != cals[1]["challenges"]:
        ap.error(
            "the two runs calibrated the challenges differently: their sweeps are not comparable"
        )
    shared = [
        k
        for k in units[0]
        if k in units[1] and not (args.tiers_only and not k[1].startswith("tier_"))
    ]

    def validate(i: int, task: str, path: Path, checkpoint_id: str) -> dict:
        cache_path, cache = caches[i]
        key = f"{checkpoint_id}:{args.episodes}"
        if key not in cache:
            res = evaluate_checkpoint(
                path, study_spec(cals[i], task), args.episodes, cfgs[i], "validation"
            )
            cache[key] = {
                "success_rate": res["success_rate"],
                "episodes": res["episodes"],
                "ci95": res["ci95"],
            }
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache, indent=2, sort_keys=True))
        return cache[key]

    rows = []
    for task, unit in shared:
        ra, rb = (validate(i, task, *units[i][(task, unit)]) for i in (0, 1))
        pa, pb = ra["success_rate"], rb["success_rate"]
        # 95% interval of a difference of two independent proportions at this n (normal approx.).
        half = 1.96 * math.sqrt(
            max(pa * (1 - pa), 1e-9) / ra["episodes"] + max(pb * (1 - pb), 1e-9) / rb["episodes"]
        )
        rows.append(
            {
                "task": task,
                "unit": unit,
                a.name: pa,
                b.name: pb,
                "difference": pb - pa,
                "clear": abs(pb - pa) > half,
            }
        )
        print(
            f"{task:22s} {unit:12s} {a.name} {pa:.3f}  {b.name} {pb:.3f}  diff {pb - pa:+.3f} "
            f"(+-{half:.3f}{', clear' if abs(pb - pa) > half else ''})",
            flush=True,
        )
    tiers = [r for r in rows if r["unit"].startswith("tier_")]
    summary = {
        "episodes": args.episodes,
        "units": len(rows),
        "mean_over_tiers": {
            run.name: round(sum(r[run.name] for r in tiers) / max(1, len(tiers)), 4)
            for run in args.runs
        },
        "worst_tier": {
            run.name: min((r[run.name] for r in tiers), default=None) for run in args.runs
        },
        "clear_differences": [
            {k: r[k] for k in ("task", "unit", "difference")} for r in rows if r["clear"]
        ],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
