"""Stage finetune_sweep: Table II.

Per study task and tier: fine-tune the base checkpoint on the base data + the tier (sampled
``target_fraction`` from the tier) at the fine-tuning learning rate for ``finetune_steps``. At
the largest tier also "scratch" (a fresh network on the tier only, pre-training learning rate,
``scratch_steps``), "reinit head" (the base with ``reinit_modules`` re-initialised, then
fine-tuned like the tier) and "agnostic trunk" (a fresh network whose trunk was trained without
RL to locate objects, nsl_experiment.units.agnostic, then fine-tuned like the tier: the paper's
ImageNet comparison). Every checkpoint is evaluated on its task (evaluation seeds).
"""

from __future__ import annotations

from typing import Any

from ..cache import Context, finish_stage, stable_hash, unit_key
from ..episodes import resolve_task
from ..units.agnostic import agnostic_trunk
from ..units.base import base_checkpoint
from ..units.calibration import calibration
from ..units.evaluate import trained_entry
from ..units.study import FINETUNE_SECTIONS, base_data, finetune_on, sweep_unit_name, targets
from ..units.train import reinit_checkpoint, train


def finetune_sweep(ctx: Context) -> dict:
    """Stage 5 (Table II): every tier and the three baselines, per study task."""
    cfg = ctx.config
    ft = cfg.finetune
    ckpt, ckpt_id = base_checkpoint(ctx)
    base = base_data(ctx)
    largest = cfg.study.tiers[-1]
    reinit, reinit_id, reset = reinit_checkpoint(ctx, ckpt)
    agnostic = agnostic_trunk(ctx) if cfg.study.baselines else None
    rows = {}
    for name, target in targets(ctx, cfg.study_tasks(), calibration(ctx)).items():
        row: dict[str, Any] = {"task": resolve_task(target.spec).to_dict(), "tiers": {}}
        for n in cfg.study.tiers:
            row["tiers"][str(n)] = finetune_on(
                ctx, sweep_unit_name(name, n), ckpt, ckpt_id, base, target, n
            )[2]
        row["scratch"] = row["reinit_head"] = row["agnostic_trunk"] = None
        if agnostic is not None:  # study.baselines
            target_bags, target_key = target.tier(largest, cfg.sim.chunk_episodes)
            key = unit_key(
                ctx,
                "scratch",
                FINETUNE_SECTIONS,
                target=target_key,
                episodes=largest,
                task=target.spec,
            )
            # Scratch: a fresh network on the target grasps only, at the pre-training rate.
            s_ckpt, s_id, st = train(
                ctx,
                f"sweep/{name}/scratch_{largest:04d}",
                None,
                [],
                target_bags,
                ft.scratch_steps,
                cfg.learner.learning_rate,
                1.0,
                key,
                target_episodes=largest,
                finetune=True,
            )
            row["scratch"] = trained_entry(ctx, s_ckpt, s_id, st, target.spec)
            row["reinit_head"] = finetune_on(
                ctx,
                f"sweep/{name}/reinit_head_{largest:04d}",
                reinit,
                reinit_id,
                base,
                target,
                largest,
            )[2]
            row["reinit_head"]["modules"] = reset
            row["agnostic_trunk"] = finetune_on(
                ctx,
                f"sweep/{name}/agnostic_trunk_{largest:04d}",
                agnostic[0],
                agnostic[1],
                base,
                target,
                largest,
            )[2]
        rows[name] = row
    summary = {
        "stage": "finetune_sweep",
        "checkpoint_id": ckpt_id,
        "tiers": list(cfg.study.tiers),
        "largest_tier": largest,
        "finetune_steps": ft.finetune_steps,
        "scratch_steps": ft.scratch_steps,
        "learning_rate": cfg.finetune_learning_rate(),
        "scratch_learning_rate": cfg.learner.learning_rate,
        "target_fraction": ft.target_fraction,
        "agnostic_trunk": None
        if agnostic is None
        else {
            "checkpoint_id": agnostic[1],
            "steps": agnostic[2]["steps"],
            "trained_modules": agnostic[2]["trained_modules"],
            "metrics": agnostic[2]["metrics"],
        },
        "tasks": rows,
    }
    trained = {
        name: [
            e["checkpoint_id"]
            for e in (
                *row["tiers"].values(),
                row["scratch"],
                row["reinit_head"],
                row["agnostic_trunk"],
            )
            if e is not None
        ]
        for name, row in rows.items()
    }
    return finish_stage(ctx, "finetune_sweep", stable_hash(trained), summary)
