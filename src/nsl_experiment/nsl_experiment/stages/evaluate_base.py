"""Stage evaluate_base: the base policy on ``eval_tasks`` (nominal severity), evaluation seeds."""

from __future__ import annotations

from ..cache import Context, finish_stage
from ..units.base import base_checkpoint
from ..units.evaluate import evaluate_base_on


def evaluate_base(ctx: Context) -> dict:
    """Stage 2: the base checkpoint on ``eval_tasks``, evaluation seeds, test objects."""
    ckpt, ckpt_id = base_checkpoint(ctx)
    results = {
        task: evaluate_base_on(ctx, ckpt, ckpt_id, task)
        for task in ctx.config.evaluation.eval_tasks
    }
    return finish_stage(
        ctx,
        "evaluate_base",
        ckpt_id,
        {"stage": "evaluate_base", "checkpoint_id": ckpt_id, "results": results},
    )
