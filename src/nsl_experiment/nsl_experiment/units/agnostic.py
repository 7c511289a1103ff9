"""The task-agnostic trunk: the init of Table II's "agnostic trunk" baseline (paper: ImageNet).

The paper compares fine-tuning its RL-pre-trained network with the same fine-tuning of a network
whose convolutional trunk was pre-trained on ImageNet and whose other parts are random. Here
the trunk is the Q-network's own, trained by supervised learning to locate the objects in
rendered scenes (nsl_trainer.agnostic_trunk):

- scenes: ``agnostic_scenes`` images of the base task with the train objects at reset (before
  any move: no grasp action, no reward), each with its objects' image positions
  (nsl_sim.solvability.render_scenes), at the bootstrap episodes' seeds: the scenes the RL
  pre-training's data starts from, so the two trunks saw the same world and differ in what
  they learned from it;
- trunk: the fresh network a run from scratch starts from (``init_scheme``), its trunk trained
  ``agnostic_steps`` steps; the other parts keep that fresh initialisation.

Both are cached units: datasets/agnostic_scenes/scenes.npz and
checkpoints/agnostic_trunk.safetensors, each with a stamp of its key.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from nsl_policy.checkpoint import save_checkpoint
from nsl_sim.env import SimConfig
from nsl_sim.solvability import render_scenes
from nsl_sim.tasks import get_task
from nsl_trainer.agnostic_trunk import fit_agnostic_trunk, trunk_modules
from nsl_trainer.config import AgnosticTrunkConfig
from nsl_trainer.grasp_values import log_every

from ..cache import Context, read_stamp, unit_key, write_stamp
from ..episodes import run_jobs
from ..seeds import BOOTSTRAP_SEEDS
from .collect import seed_range
from .train import cached_checkpoint, fresh_network, torch_threads

#: Scenes per rendering job (a job's images travel back to the parent process in one piece).
SCENES_PER_JOB = 250


def render_job(spec: dict) -> dict:
    """Render one job's scenes: ``spec`` holds sim (SimConfig kwargs) and seeds.

    Returns {"images": (N, H, W, 3) uint8, "positions": (N, K, 2) float32 pixels}.
    """
    scenes = render_scenes(
        get_task("base"), spec["seeds"], SimConfig(**spec["sim"], object_split="train")
    )
    return {"images": scenes.images, "positions": scenes.labels.astype(np.float32)}


def agnostic_scenes(ctx: Context) -> tuple[np.ndarray, np.ndarray, str]:
    """Return the rendered scenes (images, positions) of the trunk and their key (cached)."""
    cfg = ctx.config
    n = cfg.agnostic_trunk.agnostic_scenes
    key = unit_key(ctx, "agnostic_scenes", ("seeds",), sim=cfg.sim_kwargs(), scenes=n)
    out = ctx.path("datasets", "agnostic_scenes", "scenes.npz")
    stamp = out.with_suffix(".json")
    if read_stamp(stamp, key, [out]) is not None:
        with np.load(out, allow_pickle=False) as f:
            ctx.log(f"agnostic_scenes: {n} scenes cached")
            return f["images"], f["positions"], key
    ctx.work_done += 1
    t0 = time.monotonic()
    seeds = seed_range(cfg, BOOTSTRAP_SEEDS, n)
    specs = [
        {"sim": cfg.sim_kwargs(), "seeds": seeds[i : i + SCENES_PER_JOB]}
        for i in range(0, n, SCENES_PER_JOB)
    ]
    ctx.log(f"agnostic_scenes: rendering {n} scenes of base (train objects) at reset")
    parts = run_jobs(
        specs, cfg.runtime.workers, lambda m: ctx.log(f"agnostic_scenes: {m}"), job=render_job
    )
    images = np.concatenate([p["images"] for p in parts])
    positions = np.concatenate([p["positions"] for p in parts])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial.npz")
    np.savez_compressed(tmp, images=images, positions=positions)
    os.replace(tmp, out)
    seconds = time.monotonic() - t0
    write_stamp(stamp, key, {"scenes": n, "first_seed": seeds[0], "seconds": seconds})
    ctx.log(f"agnostic_scenes: wrote {out.name} in {seconds:.0f} s")
    return images, positions, key


def agnostic_trunk(ctx: Context) -> tuple[Path, str, dict]:
    """Return the task-agnostic trunk's checkpoint (path, id, stamp), trained when not cached.

    checkpoints/agnostic_trunk.safetensors: a fresh network (``init_scheme``) whose
    :func:`nsl_trainer.agnostic_trunk.trunk_modules` are trained to locate the objects of
    :func:`agnostic_scenes`; its stamp holds the held-out position error and the blind guess's.
    """
    cfg = ctx.config
    section = cfg.agnostic_trunk
    images, positions, scenes_key = agnostic_scenes(ctx)
    key = unit_key(
        ctx, "agnostic_trunk", ("seeds", "learner", "agnostic_trunk"), scenes=scenes_key
    )
    name = "agnostic_trunk"
    out, stamp, hit = cached_checkpoint(ctx, name, key)
    if hit is not None:
        return out, hit["checkpoint_id"], hit
    t0 = time.monotonic()
    trunk_config = AgnosticTrunkConfig(steps=section.agnostic_steps, seed=cfg.seeds.seed)
    net = fresh_network(ctx)
    ctx.log(
        f"{name}: {trunk_config.steps} supervised steps locating the objects of "
        f"{len(images)} scenes (no RL)"
    )
    with torch_threads(cfg.runtime.threads):
        metrics = fit_agnostic_trunk(
            net, images, positions, trunk_config, log_every(trunk_config.steps, ctx.log, name)
        )
    modules = trunk_modules(net)
    checkpoint_id = save_checkpoint(  # atomic
        str(out),
        net,
        {
            "kind": "agnostic_trunk",
            "trained_modules": modules,
            "task": "object image positions (Chamfer loss), base scenes at reset, train objects",
            "config": trunk_config.to_dict(),
            "metrics": metrics,
        },
    )
    seconds = time.monotonic() - t0
    data = write_stamp(
        stamp,
        key,
        {
            "checkpoint": out.name,
            "checkpoint_id": checkpoint_id,
            "steps": trunk_config.steps,
            "trained_modules": modules,
            "metrics": metrics,
            "seconds": seconds,
        },
    )
    ctx.log(
        f"{name}: wrote {out.name} ({checkpoint_id}) in {seconds:.0f} s; held-out position "
        f"error {_px(metrics['held_out_error_px'])} px vs blind {_px(metrics['blind_error_px'])}"
    )
    return out, checkpoint_id, data


def _px(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
