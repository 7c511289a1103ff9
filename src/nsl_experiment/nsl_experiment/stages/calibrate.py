"""Stage calibrate: the paper's Table I.

Per challenge, severities (``calibration_severities``) are tried in order until the base
policy's success on the calibration episodes is ``calibration_drop`` below its success on base
(nsl_experiment.units.calibration.choose_severity); the chosen TaskConfig is the challenge task
of every later stage. Then the base policy on evaluation episodes on base and every challenge.
"""

from __future__ import annotations

from ..cache import Context, finish_stage, stable_hash
from ..units.base import base_checkpoint
from ..units.calibration import calibration, study_spec
from ..units.evaluate import evaluate_base_on


def calibrate(ctx: Context) -> dict:
    """Stage 3 (Table I): calibrate the challenges, then evaluate the base policy on each."""
    ckpt, ckpt_id = base_checkpoint(ctx)
    settings = ctx.config.calibration
    cal = calibration(ctx)
    base = evaluate_base_on(ctx, ckpt, ckpt_id, "base")
    table = {"base": {"severity": None, "reached": None, "result": base, "drop": 0.0}}
    for name, c in cal["challenges"].items():
        ctx.log(
            f"calibrate/{name}: severity {c['severity']:g} (drop on "
            f"{settings.calibration_seed_set} episodes {c['drop']:+.3f}, "
            f"{'reached' if c['reached'] else 'NOT reached'}: {settings.calibration_drop:.2f})"
        )
        res = evaluate_base_on(ctx, ckpt, ckpt_id, study_spec(cal, name))
        table[name] = {
            "severity": c["severity"],
            "reached": c["reached"],
            "result": res,
            "drop": base["success_rate"] - res["success_rate"],
        }
    summary = {
        "stage": "calibrate",
        "checkpoint_id": ckpt_id,
        "calibration_drop": settings.calibration_drop,
        "calibration": cal,
        "table_i": table,
    }
    return finish_stage(ctx, "calibrate", stable_hash(cal), summary)
