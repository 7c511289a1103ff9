"""Stage continual: Table III, the paper's continual chain (Sec. V, Fig. 4).

Step k fine-tunes the policy in force after step k-1 (step 0: the base checkpoint) on the base
data + that challenge's largest tier with the sweep's recipe, and is evaluated on its challenge;
the final policy is then evaluated on every task of the chain and on base (what later
fine-tuning does to earlier tasks).

``continual_guard`` (default): a step's checkpoint (the candidate) replaces the policy in force
only if it gates at least as well on the step's task; a rejected step keeps the policy in force.
Without the guard every candidate is accepted (the paper).

Data: by default every step trains on collect_targets' grasps (the paper reuses the grasps its
single-step study collected with the base policy), so step 0's candidate is exactly the sweep's
largest-tier unit. ``continual_recollect``: steps >= 1 collect fresh grasps with the policy in
force (seeds CONTINUAL_SEEDS + 100 000 x step), as an online learner would.
"""

from __future__ import annotations

from pathlib import Path

from ..cache import Context, finish_stage
from ..episodes import TaskSpec, resolve_task, success_summary
from ..seeds import CONTINUAL_SEEDS
from ..units.base import base_checkpoint
from ..units.calibration import calibration, study_spec
from ..units.collect import collect_policy, seed_range
from ..units.evaluate import evaluate_base_on, evaluate_trained
from ..units.gate import gate_validation, guard_accepts
from ..units.study import TargetData, base_data, finetune_on, sweep_unit_name, targets


def continual(ctx: Context) -> dict:
    """Stage 6 (Table III): the chain of fine-tunes over the challenges, gated by default."""
    cfg = ctx.config
    study = cfg.study
    chain = cfg.continual_chain()
    largest = study.tiers[-1]
    init, init_id = base_checkpoint(ctx)
    base_id = init_id
    base = base_data(ctx)
    cal = calibration(ctx)
    data = targets(ctx, chain[:1] if study.continual_recollect else chain, cal)
    # One folder per variant, so switching guard or recollect in a run folder keeps the other
    # variant's step checkpoints (their cache) instead of training over them.
    folder = (
        "continual"
        + ("_guarded" if study.continual_guard else "")
        + ("_recollect" if study.continual_recollect else "")
    )

    def evaluate_in_force(checkpoint: Path, checkpoint_id: str, spec: TaskSpec) -> dict:
        # The base policy's evaluations are Table I's (same seeds): reuse them.
        if checkpoint_id == base_id:
            return evaluate_base_on(ctx, checkpoint, checkpoint_id, spec)
        return evaluate_trained(ctx, checkpoint, checkpoint_id, spec)

    steps = []
    for k, name in enumerate(chain):
        target = data.get(name)
        if target is None:  # continual_recollect, step >= 1: explore with the policy in force
            spec = study_spec(cal, name)
            bags, outcomes, _ = collect_policy(
                ctx,
                f"continual_step_{k}",
                init,
                init_id,
                seed_range(cfg, CONTINUAL_SEEDS + 100_000 * k, largest),
                spec,
                cfg.exploration.target_epsilon,
                cfg.exploration.target_noise_std,
                key_kind="targets",
                section="exploration",
                key_inputs={"task": spec, "step": k},
            )
            target = TargetData(spec, bags, success_summary(outcomes))
        unit = sweep_unit_name(name, largest) if k == 0 else f"{folder}/step_{k}_{name}"
        cand, cand_id, candidate = finetune_on(ctx, unit, init, init_id, base, target, largest)
        step = {
            "step": k,
            "task": name,
            "severity": resolve_task(target.spec).severity,
            "collected": target.collected,
            "candidate": candidate,
            "accepted": True,
            "guard": None,
        }
        if study.continual_guard:
            previous = gate_validation(ctx, init, init_id, target.spec)
            proposed = gate_validation(ctx, cand, cand_id, target.spec)
            step["accepted"], evidence = guard_accepts(proposed, previous)
            step["guard"] = {
                "evidence": evidence,
                "candidate_validation": proposed,
                "previous_validation": previous,
                "previous_checkpoint_id": init_id,
            }
            ctx.log(
                f"continual/step_{k}_{name}: candidate {proposed['success_rate']:.3f} vs policy "
                f"in force {previous['success_rate']:.3f} on validation: "
                f"{'accepted' if step['accepted'] else 'REJECTED'}"
            )
        if step["accepted"]:
            init, init_id = cand, cand_id
            step.update(
                checkpoint=candidate["checkpoint"],
                checkpoint_id=cand_id,
                result=candidate["result"],
            )
        else:
            step.update(
                checkpoint=str(init.relative_to(ctx.output)),
                checkpoint_id=init_id,
                result=evaluate_in_force(init, init_id, target.spec),
            )
        steps.append(step)
    final = {
        name: evaluate_in_force(init, init_id, study_spec(cal, name)) for name in ("base",) + chain
    }
    summary = {
        "stage": "continual",
        "base_checkpoint_id": base_id,
        "order": list(chain),
        "episodes_per_step": largest,
        "recollect": study.continual_recollect,
        "guard": study.continual_guard,
        "steps": steps,
        "final_checkpoint_id": init_id,
        "final": final,
    }
    return finish_stage(ctx, "continual", init_id, summary)
