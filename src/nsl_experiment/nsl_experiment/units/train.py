"""Training units: QT-Opt runs, the grasp-value classifier and the re-initialised head."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nsl_policy.checkpoint import load_checkpoint, save_checkpoint
from nsl_policy.model import QNetwork
from nsl_trainer.grasp_values import (
    GraspValueConfig,
    fit_grasp_values,
    grasp_rows,
    log_every,
    new_network,
)
from nsl_trainer.runs import train_transitions

from ..cache import Context, read_stamp, stable_hash, unit_key, write_stamp
from .labels import LocationLabels, load_episodes, location_labels


def initial_checkpoint(ctx: Context) -> Path:
    """Return a fresh network per ``init_scheme``.

    (seeded), as checkpoints/init_<scheme>.safetensors.
    """
    cfg = ctx.config
    scheme = cfg.learner.init_scheme
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seeds.seed)
        model = QNetwork(cfg.model_config())
        if scheme == "kaiming":
            for m in model.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    torch.nn.init.zeros_(m.bias)
    path = ctx.path("checkpoints", f"init_{scheme}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        str(path), model, {"kind": "init", "init_scheme": scheme, "seed": cfg.seeds.seed}
    )
    return path


def fresh_network(ctx: Context) -> QNetwork:
    """Return the fresh network a supervised unit starts from, per ``init_scheme`` (seeded)."""
    cfg = ctx.config
    if cfg.learner.init_scheme == "default":
        return new_network(cfg.model_config(), cfg.seeds.seed)
    return load_checkpoint(initial_checkpoint(ctx), device="cpu").model


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_dir(ctx: Context, name: str, key: str) -> Path:
    """Return the trainer's run directory of a unit: its full state, for resuming mid-training."""
    return ctx.path("checkpoints", f"{name}.{key}.run")


def run_options(ctx: Context, name: str, key: str, steps: int) -> dict:
    """Mid-training resume: the trainer saves its state every ``steps // 10`` steps."""
    return {
        "run_dir": str(run_dir(ctx, name, key)),
        "checkpoint_every": max(50, steps // 10),
        "resume": True,
        "tensorboard": False,
        "log_every": max(1, steps // 20),
    }


def cached_checkpoint(ctx: Context, name: str, key: str) -> tuple[Path, Path, dict | None]:
    """checkpoints/<name>.safetensors, its stamp, and the stamp's payload when it holds ``key``.

    A hit is logged as cached; None counts the unit as work to do.
    """
    out = ctx.path("checkpoints", f"{name}.safetensors")
    stamp = ctx.path("checkpoints", f"{name}.json")
    hit = read_stamp(stamp, key, [out])
    if hit is not None:
        ctx.log(f"{name}: cached checkpoint {hit['checkpoint_id']}")
    else:
        ctx.work_done += 1
    return out, stamp, hit


def train(
    ctx: Context,
    name: str,
    init: Path | None,
    base_bags: list[Path],
    target_bags: list[Path],
    steps: int,
    learning_rate: float,
    target_fraction: float,
    key: str,
    target_episodes: int | None = None,
    finetune: bool = False,
    run: tuple[str, str, bool] | None = None,
) -> tuple[Path, str, dict]:
    """QT-Opt on the bags into checkpoints/<name>.safetensors (cached). Returns (path, id, stamp).

    ``target_episodes``: train on the first that many episodes of ``target_bags`` only (a tier).
    ``finetune``: a run of the study (its QT-Opt settings include ``finetune_qtopt``, the
    fine-tuning recipe's by default, with its location loss on hindsight labels).
    ``run``: (name, key, keep) of the trainer's run directory when it is not this unit's own: a
    unit with more ``steps`` and the same init, data and run continues the run from where it
    stopped (optimiser and target networks included); ``keep`` leaves it for such a unit.
    """
    cfg = ctx.config
    out, stamp, hit = cached_checkpoint(ctx, name, key)
    if hit is not None:
        return out, hit["checkpoint_id"], hit
    run_name, run_key, keep_run = run or (name, key, False)
    t0 = time.monotonic()
    qtopt_config = cfg.qtopt_config(finetune)

    # Simulator labels are replayed here; hindsight labels (the fine-tunes', as on a robot) are
    # made by the trainer from the episodes themselves.
    sim_labels = qtopt_config.location_weight > 0 and qtopt_config.location_labels == "sim"

    def labels(bags: list[Path]) -> list[LocationLabels] | None:
        return location_labels(ctx, bags) if sim_labels else None

    base = load_episodes(base_bags, location=labels(base_bags)) if base_bags else None
    target = (
        load_episodes(target_bags, target_episodes, location=labels(target_bags))
        if target_bags
        else None
    )
    n_base = len(base) if base is not None else 0
    n_target = len(target) if target is not None else 0
    ctx.log(
        f"{name}: training {steps} steps on {n_base} base + {n_target} target transitions "
        f"(lr {learning_rate}, init {'scratch' if init is None else init.name})"
    )
    every = max(1, steps // 20)
    t_train = time.monotonic()

    def progress(step: int, m: dict) -> None:
        if step % every == 0 or step == steps:
            location = f" location {m['location_loss']:.4f}" if "location_loss" in m else ""
            ctx.log(
                f"{name}: step {step}/{steps} loss {m.get('loss', float('nan')):.4f} "
                f"mean_q {m.get('mean_q', float('nan')):.3f}{location} "
                f"({time.monotonic() - t_train:.0f} s)"
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    # Relative to the run folder, so a moved/copied run folder resumes (the trainer checks them).
    datasets: dict[str, Any] = {
        "base": [str(b.relative_to(ctx.output)) for b in base_bags],
        "target": [str(b.relative_to(ctx.output)) for b in target_bags],
    }
    if target_episodes is not None:
        datasets["target_episodes"] = target_episodes
    if init is None and cfg.learner.init_scheme != "default":
        init = initial_checkpoint(ctx)
    # From a random init, with an explicit learning rate, this is pre-training ("scratch" mode).
    checkpoint_id = train_transitions(
        "finetune" if init is not None else "scratch",
        base,
        target,
        steps,
        init_checkpoint=str(init) if init is not None else None,
        output_path=str(tmp),
        learning_rate=learning_rate,
        target_fraction=target_fraction,  # loop.sampled_fraction handles one-sided data
        progress=progress,
        seed=cfg.seeds.seed,
        config=qtopt_config,
        model_config=cfg.model_config(),
        num_threads=cfg.runtime.threads,
        datasets=datasets,
        # The world the images came from: a checkpoint sees well only at its camera framing.
        extra_metadata={"sim": cfg.sim_kwargs()},
        **run_options(ctx, run_name, run_key, steps),
    ).checkpoint_id
    os.replace(tmp, out)
    if not keep_run:
        shutil.rmtree(run_dir(ctx, run_name, run_key), ignore_errors=True)
    seconds = time.monotonic() - t0
    data = write_stamp(
        stamp,
        key,
        {
            "checkpoint_id": checkpoint_id,
            "steps": steps,
            "transitions": {"base": n_base, "target": n_target},
            "seconds": seconds,
            "learning_rate": learning_rate,
            "target_episodes": target_episodes,
            "init": None if init is None else init.name,
        },
    )
    ctx.log(f"{name}: wrote {out.name} ({checkpoint_id}) in {seconds:.0f} s")
    return out, checkpoint_id, data


def grasp_values(
    ctx: Context, name: str, bags: list[Path], data_key: Any
) -> tuple[Path, str, dict]:
    """Grasp values first: a fresh network trained to classify the grasps' outcomes in ``bags``.

    Trained ``grasp_value_steps`` steps and saved as checkpoints/<name>.safetensors (cached;
    ``data_key`` identifies the bags). Returns (path, id, stamp).
    """
    cfg = ctx.config
    steps = cfg.grasp_values.grasp_value_steps
    key = unit_key(ctx, "grasp_values", ("seeds", "sim", "learner", "grasp_values"), data=data_key)
    out, stamp, hit = cached_checkpoint(ctx, name, key)
    if hit is not None:
        return out, hit["checkpoint_id"], hit
    t0 = time.monotonic()
    data = load_episodes(bags)
    grasps = grasp_rows(data)
    success = float((np.asarray(data.reward)[grasps] > 0).mean()) if len(grasps) else float("nan")
    ctx.log(f"{name}: {steps} supervised steps on {len(grasps)} grasps (success {success:.3f})")
    net = fresh_network(ctx)
    with torch_threads(cfg.runtime.threads):
        fit_grasp_values(  # on CUDA when present
            net,
            data,
            GraspValueConfig(steps=steps, seed=cfg.seeds.seed),
            log_every(steps, ctx.log, name),
        )
    checkpoint_id = save_checkpoint(  # atomic
        str(out),
        net.cpu(),
        {
            "kind": "grasp_values",
            "steps": steps,
            "seed": cfg.seeds.seed,
            "datasets": {"base": [str(b.relative_to(ctx.output)) for b in bags]},
        },
    )
    seconds = time.monotonic() - t0
    data_stamp = write_stamp(
        stamp,
        key,
        {
            "checkpoint": out.name,
            "checkpoint_id": checkpoint_id,
            "steps": steps,
            "grasps": int(len(grasps)),
            "grasp_success": success,
            "seconds": seconds,
        },
    )
    ctx.log(f"{name}: wrote {out.name} ({checkpoint_id}) in {seconds:.0f} s")
    return out, checkpoint_id, data_stamp


def reinit_modules(ctx: Context, model: QNetwork) -> list[str]:
    """Return the ``reinit_modules`` that ``model`` has.

    A "keypoints" network has no ``head`` or ``embed`` (its ``fc`` scores keypoints + action
    directly), so the ablation resets ``fc`` there.
    """
    wanted = ctx.config.finetune.reinit_modules
    present = [m for m in wanted if hasattr(model, m)]
    if not present:
        raise ValueError(
            f"reinit_modules {list(wanted)}: the base network "
            f"({model.config.head} head) has none of them"
        )
    return present


def reinit_checkpoint(ctx: Context, base: Path) -> tuple[Path, str, list[str]]:
    """Return the base checkpoint with ``reinit_modules`` re-initialised.

    Their weights are those of a fresh QNetwork (the library's own initialisation, seeded), the
    rest stays pre-trained. Written to checkpoints/reinit_head_init.safetensors. Returns (path,
    id, modules reset).
    """
    loaded = load_checkpoint(base, device="cpu")
    # Not the pre-training init's seed.
    seed = int(stable_hash(["reinit_head", ctx.config.seeds.seed]), 16) % 2**31
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = QNetwork(loaded.config)
    modules = reinit_modules(ctx, loaded.model)
    for module in modules:
        getattr(loaded.model, module).load_state_dict(getattr(fresh, module).state_dict())
    path = ctx.path("checkpoints", "reinit_head_init.safetensors")
    ckpt_id = save_checkpoint(
        str(path),
        loaded.model,
        {"kind": "reinit_head", "parent": loaded.checkpoint_id, "modules": modules, "seed": seed},
    )
    return path, ckpt_id, modules
