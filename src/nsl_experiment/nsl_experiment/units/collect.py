"""Data collection units: bags of scripted or policy episodes, cached per bag."""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..cache import Context, read_json, read_stamp, stable_hash, unit_key, write_stamp
from ..config import ExperimentConfig
from ..episodes import (
    POLICY,
    SCRIPTED,
    EpisodeOutcome,
    TaskSpec,
    resolve_task,
    run_jobs,
)
from ..seeds import BOOTSTRAP_SEEDS

#: The config sections a bag of policy grasps reads besides its own (seeds, sim, acting).
POLICY_SECTIONS = ("seeds", "sim", "learner")


def chunks(seeds: list[int], size: int) -> list[list[int]]:
    """``seeds`` in consecutive chunks of ``size``."""
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


def seed_range(cfg: ExperimentConfig, offset: int, count: int) -> list[int]:
    """``count`` episode seeds from the range at ``offset`` (nsl_experiment.seeds)."""
    return [cfg.seed_base(offset) + i for i in range(count)]


def collect(
    ctx: Context,
    name: str,
    kind: str,
    key_kind: str,
    sections: tuple[str, ...],
    seeds: list[int],
    task: TaskSpec,
    split: str,
    extra: dict,
    key_inputs: dict,
) -> tuple[list[Path], list[EpisodeOutcome], float]:
    """Collect ``seeds`` episodes into bags datasets/<task name>/<name>/chunk_NNN.

    Each bag is cached on its own key (``key_kind``, the config ``sections``, its seeds and
    ``key_inputs``). Returns (bag paths, outcomes, seconds spent collecting in this call).
    """
    cfg = ctx.config
    resolved = resolve_task(task)
    folder = ctx.path("datasets", resolved.name, name)
    label = f"{resolved.name}/{name}"
    specs, bags, stamps, results = [], [], [], {}
    for i, chunk in enumerate(chunks(seeds, cfg.sim.chunk_episodes)):
        bag = folder / f"chunk_{i:03d}"
        stamp = folder / f"chunk_{i:03d}.json"
        key = unit_key(
            ctx, key_kind, sections, chunk=i, seeds=[chunk[0], len(chunk)], **key_inputs
        )
        bags.append(bag)
        hit = read_stamp(stamp, key, [bag / "metadata.yaml"])
        if hit is not None:
            results[i] = hit["episodes"]
            continue
        stamps.append((i, stamp, key))
        specs.append(
            {
                "kind": kind,
                "task": task,
                "split": split,
                "seeds": chunk,
                "sim": cfg.sim_kwargs(),
                "bag": str(bag),
                "threads": cfg.runtime.threads,
                "metadata": {
                    "task": resolved.name,
                    "severity": resolved.severity,
                    "task_config": resolved.to_dict(),
                    "robot": "sim",
                    "experiment": name,
                    "chunk": i,
                    "kind": kind,
                    "split": split,
                },
                **extra,
            }
        )
    t0 = time.monotonic()
    if specs:
        ctx.work_done += len(specs)
        ctx.log(
            f"{label}: collecting {sum(len(s['seeds']) for s in specs)} episodes in "
            f"{len(specs)} bag(s) ({len(bags) - len(specs)} cached)"
        )

        def done(j: int, out: list[dict]) -> None:
            i, stamp, key = stamps[j]
            write_stamp(stamp, key, {"episodes": out})
            results[i] = out

        run_jobs(specs, cfg.runtime.workers, lambda m: ctx.log(f"{label}: {m}"), done)
    else:
        ctx.log(f"{label}: {len(bags)} bag(s) cached")
    outcomes = [EpisodeOutcome(**r) for i in sorted(results) for r in results[i]]
    return bags, outcomes, time.monotonic() - t0


def collect_bootstrap(ctx: Context) -> tuple[list[Path], list[EpisodeOutcome], float]:
    """Return the scripted bootstrap episodes on ``base`` (train objects)."""
    cfg = ctx.config
    boot = cfg.bootstrap
    seeds = seed_range(cfg, BOOTSTRAP_SEEDS, boot.bootstrap_episodes)
    extra = {
        "rng_seed": cfg.seeds.seed,
        "random_fraction": boot.bootstrap_random_fraction,
        "noise_max": boot.bootstrap_noise_max,
        "epsilon_max": boot.bootstrap_epsilon_max,
        "p_close": boot.bootstrap_p_close,
        "decoy_fraction": boot.bootstrap_decoy_fraction,
    }
    sections = ("seeds", "sim", "bootstrap")
    return collect(
        ctx, "bootstrap", SCRIPTED, "bootstrap", sections, seeds, "base", "train", extra, {}
    )


def collect_policy(
    ctx: Context,
    name: str,
    checkpoint: Path,
    checkpoint_id: str,
    seeds: list[int],
    task: TaskSpec,
    epsilon: float,
    noise_std: float,
    key_kind: str,
    section: str,
    key_inputs: dict | None = None,
) -> tuple[list[Path], list[EpisodeOutcome], float]:
    """Exploration grasps with a checkpoint (epsilon-greedy CEM), recorded as bags.

    ``section``: the config section that sets the exploration noise (pretrain, exploration).
    ``key_inputs``: more inputs of the bags' cache keys (e.g. the task).
    """
    extra = {
        "checkpoint": str(checkpoint),
        "cem": dict(ctx.config.learner.policy_cem),
        "epsilon": epsilon,
        "noise_std": noise_std,
        "policy_seed": seeds[0] if seeds else 0,
    }
    return collect(
        ctx,
        name,
        POLICY,
        key_kind,
        (*POLICY_SECTIONS, section),
        seeds,
        task,
        "train",
        extra,
        {
            "checkpoint": checkpoint_id,
            "epsilon": epsilon,
            "noise_std": noise_std,
            **(key_inputs or {}),
        },
    )


def chunk_key(bag: Path) -> str:
    """Return the cache key of a collected bag, from its stamp chunk_NNN.json beside it."""
    stamp = read_json(bag.with_name(bag.name + ".json"))
    if stamp is None or "key" not in stamp:
        raise FileNotFoundError(
            f"{bag}: no stamp {bag.name}.json beside it (not a complete bag of this pipeline)"
        )
    return stamp["key"]


def bags_key(bags: list[Path]) -> str:
    """Content identity of collected bags: a hash of their chunk stamps' keys."""
    return stable_hash([chunk_key(bag) for bag in bags])


def tier_bags(bags: list[Path], episodes: int, chunk_episodes: int) -> list[Path]:
    """Return the bags that hold the first ``episodes`` episodes of ``bags``.

    (chunks of that size).
    """
    return bags[: math.ceil(episodes / chunk_episodes)]
