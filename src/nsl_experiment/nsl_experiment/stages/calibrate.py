"""Stage calibrate: the paper's Table I.

Per challenge, severities (``calibration_severities``, those past the challenge's physical
bounds lowered to where its world stops changing) are tried in order: the solvability check
(nsl_sim.solvability), then, when it passes, the base policy on the calibration episodes, until
the base policy's success there is ``calibration_drop`` below its success on base
(nsl_experiment.units.calibration.choose_severity); the chosen TaskConfig is the challenge task
of every later stage. Then the base policy on evaluation episodes on base and every challenge.
"""

from __future__ import annotations

from ..cache import Context, finish_stage, stable_hash
from ..units.base import base_checkpoint
from ..units.calibration import REACHED, calibration, study_spec
from ..units.evaluate import evaluate_base_on


def calibrate(ctx: Context) -> dict:
    """Stage 3 (Table I): calibrate the challenges, then evaluate the base policy on each."""
    ckpt, ckpt_id = base_checkpoint(ctx)
    settings = ctx.config.calibration
    cal = calibration(ctx)
    base = evaluate_base_on(ctx, ckpt, ckpt_id, "base")
    table = {"base": {"severity": None, "reached": None, "result": base, "drop": 0.0}}
    for name, c in cal["challenges"].items():
        drop = "n/a" if c["drop"] is None else f"{c['drop']:+.3f}"
        ctx.log(
            f"calibrate/{name}: severity {c['severity']:g}, "
            f"{'solvable' if c['solvable'] else 'NOT solvable'}, drop on "
            f"{settings.calibration_seed_set} episodes {drop}"
            + ("" if c["status"] == REACHED else f" ({c['status'].upper()})")
        )
        res = evaluate_base_on(ctx, ckpt, ckpt_id, study_spec(cal, name))
        table[name] = {
            "severity": c["severity"],
            "reached": c["reached"],
            "status": c["status"],
            "solvable": c["solvable"],
            "solvability": c["solvability"],
            "result": res,
            "drop": base["success_rate"] - res["success_rate"],
        }
    summary = {
        "stage": "calibrate",
        "checkpoint_id": ckpt_id,
        "calibration_drop": settings.calibration_drop,
        "calibration_episodes": settings.calibration_episodes,
        "calibration": cal,
        "table_i": table,
    }
    return finish_stage(ctx, "calibrate", stable_hash(cal), summary)
