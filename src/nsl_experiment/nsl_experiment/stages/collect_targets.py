"""Stage collect_targets: ``target_episodes`` exploration grasps per study task.

The epsilon-greedy base policy on train objects, on the calibrated challenges and on ``base``
(the control); tier n is the first n of them, so tiers are nested.
"""

from __future__ import annotations

from ..cache import Context, finish_stage, stable_hash
from ..episodes import resolve_task
from ..units.base import base_checkpoint
from ..units.calibration import calibration
from ..units.collect import bags_key
from ..units.study import targets


def collect_targets(ctx: Context) -> dict:
    """Stage 4: the exploration grasps of every study task (the calibrated challenges and base)."""
    data = targets(ctx, ctx.config.study_tasks(), calibration(ctx))
    tasks = {
        name: {
            "task": resolve_task(d.spec).to_dict(),
            "collected": d.collected,
            "bags": [str(b.relative_to(ctx.output)) for b in d.bags],
            "data_key": bags_key(d.bags),
        }
        for name, d in data.items()
    }
    for name, t in tasks.items():
        ctx.log(
            f"collect_targets/{name}: {t['collected']['episodes']} grasps, "
            f"success {t['collected']['success_rate']:.3f}"
        )
    return finish_stage(
        ctx,
        "collect_targets",
        stable_hash([t["data_key"] for t in tasks.values()]),
        {"stage": "collect_targets", "checkpoint_id": base_checkpoint(ctx)[1], "tasks": tasks},
    )
