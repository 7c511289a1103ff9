"""Stage online_finetune: Table II's "online" column, only with ``online_rounds`` > 0.

Offline fine-tuning mixed with online evaluation and exploration, the paper's proposed answer
to when to stop fine-tuning (Sec. VI-B). Per study task, the largest tier's grasps are spent in
``online_rounds`` equal rounds. Round 1 fine-tunes the base checkpoint on the first of the base
policy's exploration grasps (the sweep's unit when that count is a tier). Round k >= 2 collects
its grasps with the policy in force, then fine-tunes the policy in force on the base data + all
the task's grasps so far. A round's checkpoint replaces the policy in force only if it gates at
least as well; the policy in force after the last round is evaluated on the task.
"""

from __future__ import annotations

from ..cache import Context, finish_stage, stable_hash
from ..episodes import resolve_task, success_summary
from ..seeds import online_seed_offset
from ..units.base import base_checkpoint
from ..units.calibration import calibration
from ..units.collect import collect_policy, seed_range, tier_bags
from ..units.evaluate import evaluate_base_on, evaluate_trained
from ..units.gate import gate_validation
from ..units.study import TargetData, base_data, finetune_unit, sweep_unit_name, targets

#: The training stamp fields a round's entry reports.
TRAIN_FIELDS = ("steps", "learning_rate", "transitions", "target_episodes", "seconds", "init")


def online_finetune(ctx: Context) -> dict:
    """Stage (Table II's "online" column): rounds of exploring, fine-tuning and gating."""
    cfg = ctx.config
    study, ev = cfg.study, cfg.evaluation
    if not study.online_rounds:
        ctx.log("online_finetune: online_rounds is 0, nothing to do")
        return {"stage": "online_finetune", "skipped": "online_rounds is 0"}
    ckpt, ckpt_id = base_checkpoint(ctx)
    base = base_data(ctx)
    largest = study.tiers[-1]
    per_round = largest // study.online_rounds
    rows = {}
    for name, explored in targets(ctx, cfg.study_tasks(), calibration(ctx)).items():
        spec = explored.spec
        in_force, in_force_id = ckpt, ckpt_id
        in_force_validation = gate_validation(ctx, ckpt, ckpt_id, spec)
        bags = tier_bags(explored.bags, per_round, cfg.sim.chunk_episodes)
        rounds = []
        for k in range(1, study.online_rounds + 1):
            collected = None
            if k > 1:
                seeds = seed_range(cfg, online_seed_offset(name, k), per_round)
                new_bags, outcomes, _ = collect_policy(
                    ctx,
                    f"online_round_{k}",
                    in_force,
                    in_force_id,
                    seeds,
                    spec,
                    cfg.exploration.target_epsilon,
                    cfg.exploration.target_noise_std,
                    key_kind="targets",
                    section="exploration",
                    key_inputs={"task": spec, "online_round": k},
                )
                bags = bags + new_bags
                collected = success_summary(outcomes)
            unit = sweep_unit_name(name, per_round) if k == 1 else f"online/{name}/round_{k}"
            cand, cand_id, st = finetune_unit(
                ctx,
                unit,
                in_force,
                in_force_id,
                base,
                TargetData(spec, bags, explored.collected),
                k * per_round,
            )
            proposed = gate_validation(ctx, cand, cand_id, spec)
            accepted = proposed["success_rate"] >= in_force_validation["success_rate"]
            ctx.log(
                f"online/{name}/round_{k}: {k * per_round} grasps, validation "
                f"{proposed['success_rate']:.3f} vs policy in force "
                f"{in_force_validation['success_rate']:.3f}: "
                f"{'accepted' if accepted else 'REJECTED'}"
            )
            rounds.append(
                {
                    "round": k,
                    "grasps": k * per_round,
                    "explored_with": in_force_id,
                    "collected": collected,
                    "checkpoint": str(cand.relative_to(ctx.output)),
                    "checkpoint_id": cand_id,
                    "train": {key: st.get(key) for key in TRAIN_FIELDS},
                    "validation": proposed,
                    "in_force_validation": in_force_validation,
                    "accepted": accepted,
                }
            )
            if accepted:
                in_force, in_force_id, in_force_validation = cand, cand_id, proposed
        result = (
            evaluate_base_on(ctx, in_force, in_force_id, spec)
            if in_force_id == ckpt_id
            else evaluate_trained(ctx, in_force, in_force_id, spec)
        )
        ctx.log(
            f"online/{name}: policy in force {in_force_id}, success "
            f"{result['success_rate']:.3f} (n={result['episodes']})"
        )
        rows[name] = {
            "task": resolve_task(spec).to_dict(),
            "rounds": rounds,
            "grasps": largest,
            "validation_episodes": (ev.gate_episodes or ev.validation_episodes)
            * (study.online_rounds + 1),
            "checkpoint": str(in_force.relative_to(ctx.output)),
            "checkpoint_id": in_force_id,
            "result": result,
        }
    summary = {
        "stage": "online_finetune",
        "checkpoint_id": ckpt_id,
        "online_rounds": study.online_rounds,
        "grasps_per_round": per_round,
        "finetune_steps": cfg.finetune.finetune_steps,
        "learning_rate": cfg.finetune_learning_rate(),
        "target_fraction": cfg.finetune.target_fraction,
        "tasks": rows,
    }
    return finish_stage(
        ctx,
        "online_finetune",
        stable_hash({n: r["checkpoint_id"] for n, r in rows.items()}),
        summary,
    )
