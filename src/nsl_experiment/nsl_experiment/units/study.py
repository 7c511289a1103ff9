"""The study's data and fine-tuning units: base data, exploration grasps, fine-tunes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cache import Context, read_json, unit_key
from ..episodes import TaskSpec, success_summary
from ..seeds import STUDY_TASKS, TARGET_SEEDS
from .base import base_checkpoint
from .calibration import study_spec
from .collect import bags_key, collect_policy, seed_range, tier_bags
from .evaluate import trained_entry
from .train import train

#: The config sections a fine-tune reads.
FINETUNE_SECTIONS = ("seeds", "sim", "learner", "finetune")


@dataclass
class TargetData:
    """A study task's exploration grasps.

    Its spec, bags (in episode order) and collection summary.
    """

    spec: TaskSpec
    bags: list[Path]
    collected: dict

    def tier(self, episodes: int, chunk_episodes: int) -> tuple[list[Path], str]:
        """Return the bags holding the first ``episodes`` grasps and their content key."""
        bags = tier_bags(self.bags, episodes, chunk_episodes)
        return bags, bags_key(bags)


def targets(ctx: Context, names: tuple[str, ...], cal: dict) -> dict[str, TargetData]:
    """``target_episodes`` exploration grasps with the base policy on each study task in ``names``.

    At its calibrated severity (from ``cal``), cached per bag, seeds TARGET_SEEDS + 100 000 x
    the task's index in STUDY_TASKS, train objects.
    """
    cfg = ctx.config
    ckpt, ckpt_id = base_checkpoint(ctx)
    out = {}
    for name in names:
        spec = study_spec(cal, name)
        seeds = seed_range(
            cfg, TARGET_SEEDS + 100_000 * STUDY_TASKS.index(name), cfg.study.target_episodes
        )
        bags, outcomes, _ = collect_policy(
            ctx,
            "targets",
            ckpt,
            ckpt_id,
            seeds,
            spec,
            cfg.exploration.target_epsilon,
            cfg.exploration.target_noise_std,
            key_kind="targets",
            section="exploration",
            key_inputs={"task": spec},
        )
        out[name] = TargetData(spec, bags, success_summary(outcomes))
    return out


def base_data(ctx: Context) -> tuple[list[Path], str]:
    """Return the base data fine-tunes mix in, and its content key.

    The pre-training bags (bootstrap + on-policy rounds) listed by the pretrain stage's stamp;
    for an imported base checkpoint, the base control's exploration grasps (collected here when
    they are not yet).
    """
    stamp = read_json(ctx.path("stages", "pretrain.json"))
    if stamp is None or "base_data" not in stamp:
        raise FileNotFoundError(
            f"{ctx.path('stages', 'pretrain.json')} does not list the base data: run the "
            "pretrain stage (its work is cached)"
        )
    if "targets" in stamp["base_data"]:
        if not ctx.config.study.base_control:
            raise ValueError(
                "the base checkpoint was imported, so the base data is the base control's "
                "exploration grasps: set base_control=true"
            )
        bags = targets(ctx, ("base",), {})["base"].bags
        return bags, bags_key(bags)
    bags = [ctx.output / b for b in stamp["base_data"]["bags"]]
    return bags, bags_key(bags)


def sweep_unit_name(task: str, episodes: int) -> str:
    """Checkpoint name of the sweep's fine-tune of the base on ``episodes`` grasps of ``task``."""
    return f"sweep/{task}/tier_{episodes:04d}"


def finetune_unit(
    ctx: Context,
    name: str,
    init: Path,
    init_id: str,
    base: tuple[list[Path], str],
    target: TargetData,
    episodes: int,
) -> tuple[Path, str, dict]:
    """Fine-tune ``init`` on the base data + the first ``episodes`` target grasps (cached).

    The fine-tuning recipe (nsl_trainer's FineTuneRecipe, the robot trainer's too): the paper's
    ``target_fraction`` of each batch from the target at the fine-tuning learning rate for
    ``finetune_steps``, with ``finetune_qtopt``'s options (Polyak export, mixed Monte-Carlo
    targets, the location loss on hindsight labels of base and target data alike). Returns
    (checkpoint, id, training stamp).
    """
    cfg = ctx.config
    base_bags, base_key = base
    target_bags, target_key = target.tier(episodes, cfg.sim.chunk_episodes)
    key = unit_key(
        ctx,
        "finetune",
        FINETUNE_SECTIONS,
        init=init_id,
        base=base_key,
        target=target_key,
        episodes=episodes,
        task=target.spec,
    )
    return train(
        ctx,
        name,
        init,
        base_bags,
        target_bags,
        cfg.finetune.finetune_steps,
        cfg.finetune_learning_rate(),
        cfg.finetune.target_fraction,
        key,
        target_episodes=episodes,
        finetune=True,
    )


def finetune_on(
    ctx: Context,
    name: str,
    init: Path,
    init_id: str,
    base: tuple[list[Path], str],
    target: TargetData,
    episodes: int,
) -> tuple[Path, str, dict]:
    """:func:`finetune_unit`, evaluated on the target task. Returns (checkpoint, id, entry)."""
    ckpt, ckpt_id, st = finetune_unit(ctx, name, init, init_id, base, target, episodes)
    return ckpt, ckpt_id, trained_entry(ctx, ckpt, ckpt_id, st, target.spec)
