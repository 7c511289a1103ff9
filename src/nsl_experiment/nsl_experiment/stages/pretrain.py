"""Stage pretrain: the base policy.

Bootstrap data on ``base`` (scripted oracle + noise + random exploration), offline QT-Opt, then
``rounds`` of on-policy collection + retraining; the best round on validation episodes is the
base. With ``grasp_value_steps``, at round ``grasp_value_round`` a network trained to classify
the grasps so far replaces the current one and QT-Opt starts anew from it, in validated parts.
Output: checkpoints/base.safetensors and the base data that fine-tuning mixes in (listed in the
stamp). With ``base_checkpoint``, the stage imports that checkpoint instead, and the base data
becomes the base control's exploration grasps.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from nsl_policy.checkpoint import load_checkpoint
from nsl_policy.shipped import base_checkpoint as shipped_base_checkpoint
from nsl_sim.config import LEGACY_CAMERA_FOV

from ..cache import Context, finish_stage, unit_key
from ..episodes import success_summary
from ..seeds import round_seed_offset
from ..units.collect import collect_bootstrap, collect_policy, seed_range
from ..units.gate import validate
from ..units.train import grasp_values, train

#: The config sections of the pre-training runs (offline QT-Opt and the rounds).
PRETRAIN_SECTIONS = ("seeds", "sim", "learner", "pretrain")


def trained_camera_fov(metadata: dict) -> float:
    """Return the camera field of view a checkpoint's training images had (its metadata)."""
    sim = metadata.get("sim")
    if isinstance(sim, dict) and "camera_fov" in sim:
        return float(sim["camera_fov"])
    return LEGACY_CAMERA_FOV


def import_base(ctx: Context) -> dict:
    """Check the ``base_checkpoint`` and copy it to checkpoints/base.safetensors."""
    cfg = ctx.config
    given = cfg.pretrain.base_checkpoint
    source = shipped_base_checkpoint() if given == "shipped" else Path(given)
    loaded = load_checkpoint(source)  # CheckpointError names the file and what is wrong with it
    image_size = cfg.sim.image_size
    if loaded.config.image_size != image_size:
        raise ValueError(
            f"base_checkpoint {source}: the network takes {loaded.config.image_size}-pixel "
            f"images, the experiment renders {image_size} "
            f"(set image_size={loaded.config.image_size})"
        )
    trained_fov = trained_camera_fov(loaded.metadata)
    if trained_fov != cfg.sim.camera_fov:
        raise ValueError(
            f"base_checkpoint {source} was trained on images of a {trained_fov:g} degree camera, "
            f"the experiment renders {cfg.sim.camera_fov:g} (set camera_fov={trained_fov:g})"
        )
    final = ctx.path("checkpoints", "base.safetensors")
    if final.exists() and (held := load_checkpoint(final).checkpoint_id) != loaded.checkpoint_id:
        # Every cached unit of the folder hangs off its base; never overwrite one.
        raise ValueError(
            f"{ctx.output} already has the base policy {held}, not {loaded.checkpoint_id} from "
            f"{source}: a run folder studies one base policy, so use another --output"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".partial")
    shutil.copyfile(source, tmp)
    os.replace(tmp, final)
    ctx.log(
        f"base policy: {loaded.checkpoint_id} imported from {source} (not pre-trained here); "
        f"fine-tuning mixes in the base control's {cfg.study.target_episodes} exploration "
        "grasps as base data"
    )
    summary = {
        "stage": "pretrain",
        "imported_from": str(source),
        "checkpoint": str(final),
        "checkpoint_id": loaded.checkpoint_id,
        "chosen_round": None,
        "chosen_part": None,
        "rounds": [],
        "base_data": {"targets": "base"},
    }
    return finish_stage(ctx, "pretrain", loaded.checkpoint_id, summary)


def best(ctx: Context, entries: list[dict]) -> dict:
    """Return the entry with the best validation success (ties.

    The later); without validation the last.
    """
    if ctx.config.evaluation.validation_episodes <= 0:
        return entries[-1]
    return max(reversed(entries), key=lambda e: e["validation"]["success_rate"])


def from_grasp_values(
    ctx: Context,
    r: int,
    data_key: Any,
    bags: list[Path],
    round_bags: list[Path],
    timings: dict[str, float],
) -> tuple[list[dict], dict]:
    """Round ``r`` = ``grasp_value_round``: grasp values on all data so far, then QT-Opt from them.

    One QT-Opt run at the pre-training rate, checkpointed and validated at the end of each of
    ``grasp_value_checks`` parts. Returns the parts' round entries and the grasp-value stamp.
    """
    cfg = ctx.config
    gv = cfg.grasp_values
    sections = (*PRETRAIN_SECTIONS, "grasp_values")
    path, init_id, grasp_stamp = grasp_values(
        ctx, f"grasp_values_round_{r}", bags + round_bags, data_key
    )
    timings[f"round_{r}_grasp_values_s"] = grasp_stamp["seconds"]
    per_part = gv.grasp_value_qtopt_steps // gv.grasp_value_checks
    run_key = unit_key(ctx, "grasp_value_qtopt", sections, round=r, init=init_id, data=data_key)
    parts = []
    for j in range(1, gv.grasp_value_checks + 1):
        # One QT-Opt run, stopped at each part's end: part j resumes part j-1's run directory.
        last = j == gv.grasp_value_checks
        ckpt, ckpt_id, st = train(
            ctx,
            f"pretrain_round_{r}_part_{j}",
            path,
            bags,
            round_bags,
            j * per_part,
            cfg.learner.learning_rate,
            0.5,
            unit_key(
                ctx, "grasp_value_qtopt", sections, round=r, part=j, init=init_id, data=data_key
            ),
            run=(f"pretrain_round_{r}_qtopt", run_key, not last),
        )
        timings[f"round_{r}_part_{j}_train_s"] = st["seconds"]
        parts.append(
            {
                "round": r,
                "part": j,
                "qtopt_steps": j * per_part,
                "checkpoint": ckpt.name,
                "checkpoint_id": ckpt_id,
                "train": st,
                "validation": validate(ctx, ckpt, ckpt_id),
            }
        )
    return parts, grasp_stamp


def pretrain(ctx: Context) -> dict:
    """Stage 1: the base policy (or, with ``base_checkpoint``, :func:`import_base`)."""
    cfg = ctx.config
    pre, gv = cfg.pretrain, cfg.grasp_values
    if pre.base_checkpoint:
        return import_base(ctx)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    bags, boot, secs = collect_bootstrap(ctx)
    timings["bootstrap_collect_s"] = secs
    boot_key = [unit_key(ctx, "bootstrap", ("seeds", "sim", "bootstrap"))]
    boot_summary = success_summary(boot)
    ctx.log(
        f"bootstrap: {boot_summary['episodes']} episodes, "
        f"success {boot_summary['success_rate']:.3f}"
    )
    grasp_stamp = None
    round_bags: list[Path] = []
    if gv.grasp_value_steps and gv.grasp_value_round == 0:
        rounds, grasp_stamp = from_grasp_values(ctx, 0, boot_key, bags, round_bags, timings)
        pick = best(ctx, rounds)
        ckpt, ckpt_id = ctx.path("checkpoints", pick["checkpoint"]), pick["checkpoint_id"]
    else:
        key = unit_key(ctx, "pretrain_train", PRETRAIN_SECTIONS, data=boot_key)
        ckpt, ckpt_id, st = train(
            ctx,
            "pretrain_round_0",
            None,
            bags,
            [],
            pre.pretrain_steps,
            cfg.learner.learning_rate,
            0.5,
            key,
        )
        timings["round_0_train_s"] = st["seconds"]
        rounds = [
            {
                "round": 0,
                "checkpoint": ckpt.name,
                "checkpoint_id": ckpt_id,
                "train": st,
                "validation": validate(ctx, ckpt, ckpt_id),
            }
        ]
    for r in range(1, pre.rounds + 1):
        seeds = seed_range(cfg, round_seed_offset(r), pre.round_episodes)
        new_bags, outs, secs = collect_policy(
            ctx,
            f"round_{r}",
            ckpt,
            ckpt_id,
            seeds,
            "base",
            pre.round_epsilon,
            pre.round_noise_std,
            key_kind="round",
            section="pretrain",
        )
        timings[f"round_{r}_collect_s"] = secs
        round_bags += new_bags
        coll = success_summary(outs)
        ctx.log(
            f"round_{r}: collected {coll['episodes']} episodes with {ckpt_id}, "
            f"success {coll['success_rate']:.3f}"
        )
        data_key = [boot_key, [str(b.relative_to(ctx.output)) for b in round_bags]]
        if gv.grasp_value_steps and r == gv.grasp_value_round:
            parts, grasp_stamp = from_grasp_values(ctx, r, data_key, bags, round_bags, timings)
            parts[0]["collected"] = coll
            rounds += parts
            pick = best(ctx, parts)  # the next round explores with the best validated part
            ckpt, ckpt_id = ctx.path("checkpoints", pick["checkpoint"]), pick["checkpoint_id"]
            continue
        key = unit_key(ctx, "round", PRETRAIN_SECTIONS, round=r, init=ckpt_id, data=data_key)
        ckpt, ckpt_id, st = train(
            ctx,
            f"pretrain_round_{r}",
            ckpt,
            bags,
            round_bags,
            pre.round_steps,
            pre.round_learning_rate,
            0.5,
            key,
        )
        timings[f"round_{r}_train_s"] = st["seconds"]
        rounds.append(
            {
                "round": r,
                "checkpoint": ckpt.name,
                "checkpoint_id": ckpt_id,
                "train": st,
                "collected": coll,
                "validation": validate(ctx, ckpt, ckpt_id),
            }
        )
    chosen = rounds[-1]
    if cfg.evaluation.validation_episodes > 0:  # best on validation seeds; ties: the later
        chosen = best(ctx, rounds)
        ckpt, ckpt_id = ctx.path("checkpoints", chosen["checkpoint"]), chosen["checkpoint_id"]
        part = f" part {chosen['part']}" if "part" in chosen else ""
        ctx.log(
            f"base policy: round {chosen['round']}{part} ({ckpt_id}), chosen on validation seeds"
        )
    final = ctx.path("checkpoints", "base.safetensors")
    shutil.copyfile(ckpt, final)
    summary = {
        "stage": "pretrain",
        "checkpoint": str(final),
        "checkpoint_id": ckpt_id,
        "chosen_round": chosen["round"],
        "chosen_part": chosen.get("part"),
        "bootstrap": boot_summary,
        "grasp_values": grasp_stamp,
        "rounds": rounds,
        "timings": timings,
        "seconds_this_run": time.monotonic() - t0,
        # All pre-training data: what fine-tuning mixes in as "base data" (the paper's 50/50).
        "base_data": {"bags": [str(b.relative_to(ctx.output)) for b in bags + round_bags]},
    }
    return finish_stage(ctx, "pretrain", ckpt_id, summary)
