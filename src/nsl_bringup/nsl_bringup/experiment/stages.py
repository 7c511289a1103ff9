"""Stages of the experiment pipeline. Each is a function ``stage(ctx) -> dict`` (its summary).

Every unit of work is cached: it writes a JSON stamp holding a key (a hash of the config fields
it reads and the keys/ids of its inputs) next to its outputs, and is skipped when the stamp's key
matches and the outputs exist. Work is written to a temporary name and renamed when complete,
so an interrupted run resumes at the last complete unit (a bag of ``chunk_episodes`` episodes, a
training run, an evaluation task). A stage gets its inputs from the same cached units that
produced them (calibration, exploration grasps), so a stage run on its own finds that work cached
(or does it); only the base checkpoint and its data must come from an earlier pretrain run.

Each stage ends by writing stages/<stage>.json: its summary plus ``provenance``, the wall-clock,
hardware and config of the invocation that last did work for it (a fully cached re-run keeps
them). The report stage reads only these stamps.

Stages (in order; ``STAGES``):
  pretrain         bootstrap data on ``base`` (scripted oracle + noise + random exploration),
                   offline QT-Opt, then ``rounds`` of on-policy collection + retraining.
                   With ``grasp_value_steps``, "grasp values first": at round
                   ``grasp_value_round`` (0: instead of the offline QT-Opt) a network trained
                   as a supervised classifier of the grasps so far replaces the current one,
                   and QT-Opt starts anew from it on all the data so far, in validated parts.
                   Output: checkpoints/base.safetensors, datasets/base/... (the base data that
                   fine-tuning mixes in, listed in the stamp).
                   With ``base_checkpoint``, it imports that checkpoint instead, and the base
                   data becomes the base control's exploration grasps.
  evaluate_base    greedy CEM policy on held-out test objects, for each of ``eval_tasks`` (the
                   registered tasks at their nominal severity).
  calibrate        the paper's Table I. Per challenge, severities (``calibration_severities``,
                   nsl_sim.tasks.TaskConfig.severity) are tried in order until the base policy's
                   success on *validation* episodes is ``calibration_drop`` below its success on
                   base (:func:`choose_severity`); the chosen TaskConfig is the challenge task of
                   every later stage. Then the base policy on *evaluation* episodes on base and on
                   each calibrated challenge.
  collect_targets  ``target_episodes`` exploration grasps (epsilon-greedy base policy, train
                   objects, seeds TARGET_SEEDS) per study task: the calibrated challenges and
                   ``base``, the control. Tier n is the first n of them, so tiers are nested.
  finetune_sweep   Table II. Per study task and tier: fine-tune the base checkpoint on the base
                   data + the tier, sampled ``target_fraction`` from the tier, at the fine-tuning
                   learning rate (25% of pre-training), ``finetune_steps`` steps. At the largest
                   tier also "scratch" (a fresh network on the tier only, pre-training learning
                   rate, ``scratch_steps``) and "reinit head" (the base checkpoint with
                   ``reinit_modules`` re-initialised, then fine-tuned like the tier). Every
                   checkpoint is evaluated on its task (evaluation seeds, test objects).
  online_finetune  Table II's "online" column, only with ``online_rounds`` > 0: per study task,
                   the largest tier's grasps spent in rounds of exploring with the policy in
                   force, fine-tuning it on all grasps so far and keeping the result only if it
                   validates at least as well (the paper's "offline fine-tuning and online
                   evaluation", Sec. VI-B).
  continual        Table III. The challenges in CONTINUAL_ORDER, each step fine-tuning the
                   policy in force (the first: the base checkpoint, so it is the sweep's
                   largest-tier run) on base data + the challenge's largest tier; with
                   ``continual_guard`` the result replaces the policy in force only if it does
                   no worse on validation episodes of that challenge. The policy in force after
                   each step is evaluated on its challenge, the final one on every task.
  report           from the stamps only: ``report_dir``/paper_reproduction.md (Tables I-III,
                   acceptance checks, wall-clock and hardware, the command), summary.json, plots.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .config import (
    BOOTSTRAP_SEEDS,
    CONTINUAL_SEEDS,
    SEED_SETS,
    STAGE_FIELDS,
    STUDY_TASKS,
    TARGET_SEEDS,
    ExperimentConfig,
    online_seed_offset,
    round_seed_offset,
    stable_hash,
)
from .episodes import (
    POLICY,
    SCRIPTED,
    EpisodeOutcome,
    TaskSpec,
    location_job,
    resolve_task,
    run_jobs,
    success_summary,
    task_spec,
)

if TYPE_CHECKING:
    from nsl_collector.transitions import Transitions

#: Bumped when a stage's code changes what it produces (invalidates caches).
CODE_VERSION = 1
#: Episodes per evaluation job (fixed, so results do not depend on the worker count).
EVAL_JOB_EPISODES = 25


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Context:
    """A run: its config, output folder and log."""

    config: ExperimentConfig
    output: Path
    log_fn: Callable[[str], None] = print
    work_done: int = 0
    """Units of work (bags, training runs, evaluations) done, not found cached, in this stage."""
    stage_started: float = field(default_factory=time.monotonic)

    def log(self, msg: str) -> None:
        self.log_fn(f"[experiment {time.strftime('%H:%M:%S')}] {msg}")

    def path(self, *parts: str) -> Path:
        return self.output.joinpath(*parts)


# ------------------------------------------------------------------ caching
def read_stamp(stamp: Path, key: str, outputs: list[Path]) -> dict | None:
    """The stamp's payload when it holds ``key`` and every output exists, else None."""
    try:
        data = json.loads(stamp.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if data.get("key") != key or not all(p.exists() for p in outputs):
        return None
    return data


def write_stamp(stamp: Path, key: str, payload: dict) -> dict:
    data = {"key": key, "finished": _now(), **payload}
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, stamp)
    return data


def unit_key(ctx: Context, kind: str, **inputs: Any) -> str:
    return stable_hash(
        {
            "code": CODE_VERSION,
            "kind": kind,
            "config": ctx.config.subset(STAGE_FIELDS[kind]),
            "inputs": inputs,
        }
    )


def read_json(path: Path) -> dict | None:
    """A JSON file's content, None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def hardware() -> dict[str, Any]:
    """What the work ran on: training uses CUDA when present, episodes always run on the CPU."""
    import platform

    import torch

    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
    }


def finish_stage(ctx: Context, name: str, key: str, summary: dict) -> dict:
    """Write the stage stamp stages/<name>.json: ``summary`` plus ``provenance`` (wall-clock since
    the stage started, hardware, config). A stage that found all its work cached keeps the
    provenance of the invocation that did the work, so the report shows what the work cost.
    """
    stamp = ctx.path("stages", f"{name}.json")
    previous = read_json(stamp) or {}
    provenance = previous.get("provenance")
    if ctx.work_done or provenance is None:
        provenance = {
            "wall_clock_s": time.monotonic() - ctx.stage_started,
            "finished": _now(),
            "work_units": ctx.work_done,
            "hardware": hardware(),
            "config": ctx.config.to_dict(),
        }
    return write_stamp(stamp, key, {**summary, "provenance": provenance})


# ------------------------------------------------------------------ data collection
def _chunks(seeds: list[int], size: int) -> list[list[int]]:
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


def collect(
    ctx: Context,
    name: str,
    kind: str,
    key_kind: str,
    seeds: list[int],
    task: TaskSpec,
    split: str,
    extra: dict,
    key_inputs: dict,
) -> tuple[list[Path], list[EpisodeOutcome], float]:
    """Collect ``seeds`` episodes into bags datasets/<task name>/<name>/chunk_NNN (cached per
    chunk). Returns (bag paths, outcomes, seconds spent collecting in this call).
    """
    cfg = ctx.config
    resolved = resolve_task(task)
    folder = ctx.path("datasets", resolved.name, name)
    label = f"{resolved.name}/{name}"
    specs, bags, stamps, results = [], [], [], {}
    for i, chunk in enumerate(_chunks(seeds, cfg.chunk_episodes)):
        bag = folder / f"chunk_{i:03d}"
        stamp = folder / f"chunk_{i:03d}.json"
        key = unit_key(ctx, key_kind, chunk=i, seeds=[chunk[0], len(chunk)], **key_inputs)
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
                "threads": cfg.threads,
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
            f"{label}: collecting {sum(len(s['seeds']) for s in specs)} episodes in {len(specs)} bag(s) "
            f"({len(bags) - len(specs)} cached)"
        )

        def done(j: int, out: list[dict]) -> None:
            i, stamp, key = stamps[j]
            write_stamp(stamp, key, {"episodes": out})
            results[i] = out

        run_jobs(specs, cfg.workers, lambda m: ctx.log(f"{label}: {m}"), done)
    else:
        ctx.log(f"{label}: {len(bags)} bag(s) cached")
    outcomes = [EpisodeOutcome(**r) for i in sorted(results) for r in results[i]]
    return bags, outcomes, time.monotonic() - t0


def collect_bootstrap(ctx: Context) -> tuple[list[Path], list[EpisodeOutcome], float]:
    cfg = ctx.config
    seeds = seed_range(cfg, BOOTSTRAP_SEEDS, cfg.bootstrap_episodes)
    extra = {
        "rng_seed": cfg.seed,
        "random_fraction": cfg.bootstrap_random_fraction,
        "noise_max": cfg.bootstrap_noise_max,
        "epsilon_max": cfg.bootstrap_epsilon_max,
        "p_close": cfg.bootstrap_p_close,
        "decoy_fraction": cfg.bootstrap_decoy_fraction,
    }
    return collect(ctx, "bootstrap", SCRIPTED, "bootstrap", seeds, "base", "train", extra, {})


def collect_policy(
    ctx: Context,
    name: str,
    checkpoint: Path,
    checkpoint_id: str,
    seeds: list[int],
    task: TaskSpec,
    epsilon: float,
    noise_std: float,
    key_kind: str = "round",
    key_inputs: dict | None = None,
) -> tuple[list[Path], list[EpisodeOutcome], float]:
    """Exploration grasps with a checkpoint (epsilon-greedy CEM), recorded as bags. ``key_inputs``:
    more inputs of the bags' cache keys (e.g. the task, when it is not always ``base``).
    """
    cfg = ctx.config
    extra = {
        "checkpoint": str(checkpoint),
        "cem": dict(cfg.policy_cem),
        "epsilon": epsilon,
        "noise_std": noise_std,
        "policy_seed": seeds[0] if seeds else 0,
    }
    return collect(
        ctx,
        name,
        POLICY,
        key_kind,
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


def seed_range(cfg: ExperimentConfig, offset: int, count: int) -> list[int]:
    """``count`` episode seeds from the range at ``offset`` (see config's seed ranges)."""
    return [cfg.seed_base(offset) + i for i in range(count)]


def bags_key(bags: list[Path]) -> str:
    """Content identity of collected bags: a hash of their chunk stamps' keys."""
    keys = []
    for bag in bags:
        stamp = read_json(bag.with_name(bag.name + ".json"))
        if stamp is None or "key" not in stamp:
            raise FileNotFoundError(
                f"{bag}: no stamp {bag.name}.json next to it (not a complete bag of this pipeline)"
            )
        keys.append(stamp["key"])
    return stable_hash(keys)


# ------------------------------------------------------------------ training
def initial_checkpoint(ctx: Context) -> Path:
    """A freshly initialised network per ``init_scheme`` (seeded), saved as checkpoints/init_<scheme>.safetensors.
    Training from it with an explicit learning rate is pre-training (the trainer labels it "finetune").
    """
    import torch
    from nsl_policy.checkpoint import save_checkpoint
    from nsl_policy.model import QNetwork

    cfg = ctx.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = QNetwork(cfg.model_config())
        if cfg.init_scheme == "kaiming":
            for m in model.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    torch.nn.init.zeros_(m.bias)
    path = ctx.path("checkpoints", f"init_{cfg.init_scheme}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        str(path), model, {"kind": "init", "init_scheme": cfg.init_scheme, "seed": cfg.seed}
    )
    return path


def _run_dir(ctx: Context, name: str, key: str) -> Path:
    return ctx.path("checkpoints", f"{name}.{key}.run")


def _run_options(ctx: Context, name: str, key: str, steps: int) -> dict:
    """Mid-training resume: nsl_trainer saves its full state (weights, targets, optimiser,
    step) into checkpoints/<name>.<key>.run every ``steps // 10`` steps and resumes from it when
    the same unit (same key) is started again (older trainers without run directories just train).
    """
    import inspect

    from nsl_trainer import qtopt

    if "run_options" not in inspect.signature(qtopt.finetune_transitions).parameters:
        return {}
    return {
        "run_dir": str(_run_dir(ctx, name, key)),
        "checkpoint_every": max(50, steps // 10),
        "resume": True,
        "tensorboard": False,
        "log_every": max(1, steps // 20),
    }


def first_episodes(transitions: Transitions, n: int) -> Transitions:
    """The first ``n`` episodes of a Transitions set. Rows are stored episode after episode, so
    they are a prefix of the rows and every ``next_index`` in it stays inside it.
    """
    episode = transitions.episode
    if transitions.num_episodes < n:
        raise ValueError(
            f"asked for the first {n} episodes of a set of {transitions.num_episodes}"
        )
    if len(episode) and np.any(np.diff(episode) < 0):
        raise ValueError("transitions are not stored episode after episode")
    return transitions.rows(int(np.searchsorted(episode, n)))  # up to the first row of episode n


def location_file(bag: Path) -> Path:
    """The location labels' sidecar of a collected bag: chunk_NNN.location.npz beside chunk_NNN."""
    return bag.with_name(bag.name + ".location.npz")


@dataclass
class LocationLabels:
    """One bag's location labels (``QTOptConfig.location_weight``)."""

    offsets: np.ndarray
    """(rows, 2) float32 offsets (m) from the commanded gripper to the nearest object."""
    steps: np.ndarray
    """Steps of each episode, in reading order (they must match the bag's transitions)."""


def location_labels(ctx: Context, bags: list[Path]) -> list[LocationLabels]:
    """Per bag, its location labels (``QTOptConfig.location_weight``), computed by
    replaying its episodes in the sim (:func:`episodes.location_job`) into a sidecar beside
    it, cached: a sidecar holds its bag's chunk key and is redone when the bag was
    re-collected. Raises ValueError when a bag has no stamp (not collected by this pipeline).
    """
    from nsl_collector.dataset import DatasetError

    def chunk_key(bag: Path) -> str:
        stamp = read_json(bag.with_name(bag.name + ".json"))
        if stamp is None or "key" not in stamp:
            raise ValueError(
                f"{bag}: no stamp {bag.name}.json beside it; location labels are made for bags this "
                "pipeline collected in the sim"
            )
        return stamp["key"]

    keys = {bag: chunk_key(bag) for bag in bags}

    def cached(bag: Path) -> LocationLabels | None:
        try:
            with np.load(location_file(bag), allow_pickle=False) as f:
                if str(f["key"]) != keys[bag] or int(f["steps"].sum()) != len(f["offsets"]):
                    return None
                return LocationLabels(f["offsets"], f["steps"])
        except (OSError, KeyError, ValueError):
            return None

    labels = [cached(b) for b in bags]
    todo = [b for b, lab in zip(bags, labels) if lab is None]
    if todo:
        ctx.work_done += len(todo)
        ctx.log(
            f"location labels: replaying the episodes of {len(todo)} bag(s) in the sim "
            f"({len(bags) - len(todo)} cached)"
        )
        specs = [
            {
                "bag": str(b),
                "sim": ctx.config.sim_kwargs(),
                "output": str(location_file(b)),
                "key": keys[b],
            }
            for b in todo
        ]
        try:
            run_jobs(
                specs,
                ctx.config.workers,
                lambda m: ctx.log(f"location labels: {m}"),
                job=location_job,
            )
        except DatasetError as exc:
            raise ValueError(f"location labels: {exc}") from exc
        labels = [lab if lab is not None else cached(b) for b, lab in zip(bags, labels)]
    missing = [b for b, lab in zip(bags, labels) if lab is None]
    if missing:
        raise ValueError(f"location labels of {missing[0]} were not written")
    return labels  # type: ignore[return-value]


def load_episodes(
    bags: list[Path], episodes: int | None = None, location: list[LocationLabels] | None = None
) -> Transitions:
    """Transitions of the bags (in order), only their first ``episodes`` episodes when given (a
    tier). ``location``: each bag's labels (:func:`location_labels`), attached row for row.
    """
    from nsl_collector.dataset import load_transitions

    transitions = load_transitions([str(b) for b in bags])
    if location is not None:
        steps = np.concatenate([lab.steps for lab in location])
        if not np.array_equal(steps, np.bincount(transitions.episode, minlength=len(steps))):
            raise ValueError(
                f"the location labels of {len(bags)} bag(s) do not match their episodes ({len(steps)} "
                f"labelled, {transitions.num_episodes} read): a bag changed after its labels were "
                "made; delete its .location.npz to redo them"
            )
        transitions = transitions.with_location(np.concatenate([lab.offsets for lab in location]))
    return transitions if episodes is None else first_episodes(transitions, episodes)


def tier_bags(bags: list[Path], episodes: int, chunk_episodes: int) -> list[Path]:
    """The bags that hold the first ``episodes`` episodes of ``bags`` (chunks of ``chunk_episodes``)."""
    return bags[: math.ceil(episodes / chunk_episodes)]


def cached_checkpoint(ctx: Context, name: str, key: str) -> tuple[Path, Path, dict | None]:
    """checkpoints/<name>.safetensors, its stamp, and the stamp's payload when it holds ``key``
    (logged as cached); None counts the unit as work to do.
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
    ``finetune``: a run of the study (its QT-Opt settings include ``finetune_qtopt``).
    ``run``: (name, key, keep) of the trainer's run directory when it is not this unit's own: a
    unit with more ``steps`` and the same init, data and run continues the run from where it
    stopped (optimiser and target networks included); ``keep`` leaves it for such a unit.
    """
    from nsl_trainer.qtopt import finetune_transitions

    cfg = ctx.config
    out, stamp, hit = cached_checkpoint(ctx, name, key)
    if hit is not None:
        return out, hit["checkpoint_id"], hit
    run_name, run_key, keep_run = run or (name, key, False)
    t0 = time.monotonic()
    qtopt_config = cfg.qtopt_config(finetune)

    def labels(bags: list[Path]) -> list[LocationLabels] | None:
        return location_labels(ctx, bags) if qtopt_config.location_weight > 0 else None

    base = load_episodes(base_bags, location=labels(base_bags)) if base_bags else None
    target = (
        load_episodes(target_bags, target_episodes, location=labels(target_bags))
        if target_bags
        else None
    )
    n_base, n_target = (
        (len(base) if base is not None else 0),
        (len(target) if target is not None else 0),
    )
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
                f"mean_q {m.get('mean_q', float('nan')):.3f}{location} ({time.monotonic() - t_train:.0f} s)"
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    # Relative to the run folder, so a moved/copied run folder resumes (the trainer checks them).
    datasets = {
        "base": [str(b.relative_to(ctx.output)) for b in base_bags],
        "target": [str(b.relative_to(ctx.output)) for b in target_bags],
    }
    if target_episodes is not None:
        datasets["target_episodes"] = target_episodes
    if init is None and cfg.init_scheme != "default":
        init = initial_checkpoint(ctx)
    checkpoint_id = finetune_transitions(
        str(init) if init is not None else None,
        base,
        target,
        steps,
        output_path=str(tmp),
        learning_rate=learning_rate,
        target_fraction=target_fraction if (n_base and n_target) else 0.5,
        progress=progress,
        seed=cfg.seed,
        config=qtopt_config,
        model_config=cfg.model_config(),
        num_threads=cfg.threads,
        datasets=datasets,
        **_run_options(ctx, run_name, run_key, steps),
    )
    os.replace(tmp, out)
    if not keep_run:
        shutil.rmtree(_run_dir(ctx, run_name, run_key), ignore_errors=True)
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


# ------------------------------------------------------------------ evaluation
def evaluate_checkpoint(
    checkpoint: str | Path,
    task: TaskSpec,
    episodes: int,
    config: ExperimentConfig,
    seed_set: str = "evaluation",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Greedy CEM policy (no exploration) on held-out test objects. ``task``: a task name or a
    TaskConfig dict (e.g. a calibrated challenge). ``seed_set``: "evaluation" (reported numbers),
    "validation" (choices: settings, rounds, the base) or "calibration" (the challenges'
    severities). Returns the success summary with its 95% Wilson interval.
    """
    offset = SEED_SETS[seed_set]
    resolved = resolve_task(task)
    seeds = seed_range(config, offset, episodes)
    specs = [
        {
            "kind": POLICY,
            "task": task,
            "split": "test",
            "seeds": chunk,
            "sim": config.sim_kwargs(),
            "bag": None,
            "threads": config.threads,
            "checkpoint": str(checkpoint),
            "cem": dict(config.policy_cem),
            "epsilon": 0.0,
            "noise_std": 0.0,
            "policy_seed": chunk[0],
        }
        for chunk in _chunks(seeds, EVAL_JOB_EPISODES)
    ]
    t0 = time.monotonic()
    outs = run_jobs(specs, config.workers, log)
    outcomes = [EpisodeOutcome(**r) for out in outs for r in out]
    summary = success_summary(outcomes)
    summary.update(
        {
            "task": resolved.name,
            "severity": resolved.severity,
            "seed_set": seed_set,
            "first_seed": config.seed_base(offset),
            "object_split": "test",
            "seconds": time.monotonic() - t0,
        }
    )
    return summary


def evaluate_cached(
    ctx: Context,
    label: str,
    stamp: Path,
    checkpoint: Path,
    checkpoint_id: str,
    task: TaskSpec,
    *,
    kind: str = "evaluate",
    episodes: int | None = None,
    seed_set: str = "evaluation",
    **key_inputs: Any,
) -> dict:
    """``evaluate_checkpoint`` as a cached unit: its result lives in ``stamp``, keyed by the
    ``kind`` config fields, the checkpoint id, the task spec and ``key_inputs``. ``episodes``
    defaults to ``eval_episodes``.
    """
    key = unit_key(ctx, kind, checkpoint=checkpoint_id, task=task, **key_inputs)
    hit = read_stamp(stamp, key, [])
    if hit is not None:
        ctx.log(f"{label}: cached")
        return hit["result"]
    ctx.work_done += 1
    episodes = ctx.config.eval_episodes if episodes is None else episodes
    ctx.log(f"{label}: {episodes} {seed_set} episodes")
    res = evaluate_checkpoint(
        checkpoint, task, episodes, ctx.config, seed_set, lambda m: ctx.log(f"{label}: {m}")
    )
    res["checkpoint_id"] = checkpoint_id
    write_stamp(stamp, key, {"result": res})
    lo, hi = res["ci95"]
    ctx.log(
        f"{label}: success {res['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] (n={res['episodes']}, "
        f"{res['seconds']:.0f} s)"
    )
    return res


def unit_label(ctx: Context, checkpoint: Path) -> str:
    """A checkpoint's name in logs: its path under checkpoints/ without suffix (every sweep task
    has a "tier_0400"), or its stem when it lives elsewhere.
    """
    where = checkpoint.with_suffix("")
    root = ctx.path("checkpoints")
    return str(where.relative_to(root)) if where.is_relative_to(root) else where.name


# ------------------------------------------------------------------ stages
def validate(
    ctx: Context, checkpoint: Path, checkpoint_id: str, task: TaskSpec = "base"
) -> dict | None:
    """Validation-seed success of a checkpoint on ``task`` (cached next to the checkpoint; None
    when ``validation_episodes`` is 0).
    """
    cfg = ctx.config
    if cfg.validation_episodes <= 0:
        return None
    name = resolve_task(task).name
    suffix = (
        "validation" if task == "base" else f"validation_{name}"
    )  # base keeps its older stamp name
    stamp = checkpoint.with_name(f"{checkpoint.stem}.{suffix}.json")
    return evaluate_cached(
        ctx,
        f"{unit_label(ctx, checkpoint)}/{suffix}",
        stamp,
        checkpoint,
        checkpoint_id,
        task,
        kind="validate",
        episodes=cfg.validation_episodes,
        seed_set="validation",
    )


def gate_validation(ctx: Context, checkpoint: Path, checkpoint_id: str, task: TaskSpec) -> dict:
    """What a gate (continual step, online round) compares: success on ``gate_episodes`` episodes
    of the gate seed block, or with 0 the checkpoint's :func:`validate` result. Cached next to
    the checkpoint.
    """
    cfg = ctx.config
    if not cfg.gate_episodes:
        return validate(ctx, checkpoint, checkpoint_id, task)
    suffix = f"gate_{resolve_task(task).name}"
    return evaluate_cached(
        ctx,
        f"{unit_label(ctx, checkpoint)}/{suffix}",
        checkpoint.with_name(f"{checkpoint.stem}.{suffix}.json"),
        checkpoint,
        checkpoint_id,
        task,
        kind="gate",
        episodes=cfg.gate_episodes,
        seed_set="gate",
    )


def grasp_values(
    ctx: Context, name: str, bags: list[Path], data_key: Any
) -> tuple[Path, str, dict]:
    """ "Grasp values first": a fresh network (seeded, ``init_scheme``) trained as a supervised
    classifier of the grasps' outcomes in ``bags`` for ``grasp_value_steps`` steps, saved as
    checkpoints/<name>.safetensors (cached; ``data_key`` identifies the bags). Returns (path, id,
    stamp).
    """
    import torch
    from nsl_policy.checkpoint import load_checkpoint, save_checkpoint
    from nsl_trainer.grasp_values import (
        GraspValueConfig,
        fit_grasp_values,
        grasp_rows,
        log_every,
        new_network,
    )

    cfg = ctx.config
    key = unit_key(ctx, "grasp_values", data=data_key)
    out, stamp, hit = cached_checkpoint(ctx, name, key)
    if hit is not None:
        return out, hit["checkpoint_id"], hit
    t0 = time.monotonic()
    data = load_episodes(bags)
    grasps = grasp_rows(data)
    success = float((np.asarray(data.reward)[grasps] > 0).mean()) if len(grasps) else float("nan")
    ctx.log(
        f"{name}: {cfg.grasp_value_steps} supervised steps on {len(grasps)} grasps "
        f"(success {success:.3f})"
    )
    if cfg.init_scheme == "default":
        net = new_network(cfg.model_config(), cfg.seed)
    else:
        net = load_checkpoint(initial_checkpoint(ctx), device="cpu").model
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        fit_grasp_values(
            net,
            data,
            GraspValueConfig(steps=cfg.grasp_value_steps, seed=cfg.seed),
            log_every(cfg.grasp_value_steps, ctx.log, name),
        )  # on CUDA when present
    finally:
        torch.set_num_threads(threads)
    checkpoint_id = save_checkpoint(
        str(out),
        net.cpu(),
        {  # atomic
            "kind": "grasp_values",
            "steps": cfg.grasp_value_steps,
            "seed": cfg.seed,
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
            "steps": cfg.grasp_value_steps,
            "grasps": int(len(grasps)),
            "grasp_success": success,
            "seconds": seconds,
        },
    )
    ctx.log(f"{name}: wrote {out.name} ({checkpoint_id}) in {seconds:.0f} s")
    return out, checkpoint_id, data_stamp


def shipped_base_checkpoint() -> Path:
    """The base checkpoint shipped in the nsl_bringup package (what ``./nsl demo`` starts from)."""
    from nsl_bringup.demo import SHIPPED_BASE_CHECKPOINT

    return SHIPPED_BASE_CHECKPOINT


def import_base(ctx: Context) -> dict:
    """Stage 1 with ``base_checkpoint``: check the given checkpoint and copy it to
    checkpoints/base.safetensors. The base data is then the base control's exploration grasps.
    """
    from nsl_policy.checkpoint import load_checkpoint

    cfg = ctx.config
    source = (
        shipped_base_checkpoint()
        if cfg.base_checkpoint == "shipped"
        else Path(cfg.base_checkpoint)
    )
    loaded = load_checkpoint(source)  # CheckpointError names the file and what is wrong with it
    if loaded.config.image_size != cfg.image_size:
        raise ValueError(
            f"base_checkpoint {source}: the network takes {loaded.config.image_size}-pixel images, "
            f"the experiment renders {cfg.image_size} (set image_size={loaded.config.image_size})"
        )
    final = ctx.path("checkpoints", "base.safetensors")
    if final.exists() and (held := load_checkpoint(final).checkpoint_id) != loaded.checkpoint_id:
        # Every cached unit of the folder hangs off its base; never overwrite one (maybe pre-trained here).
        raise ValueError(
            f"{ctx.output} already has the base policy {held}, not {loaded.checkpoint_id} from "
            f"{source}: a run folder studies one base policy, so use another --output"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".partial")
    shutil.copyfile(source, tmp)
    os.replace(tmp, final)
    ctx.log(
        f"base policy: {loaded.checkpoint_id} imported from {source} (not pre-trained here); fine-tuning mixes "
        f"in the base control's {cfg.target_episodes} exploration grasps as base data"
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


def pretrain(ctx: Context) -> dict:
    """Stage 1: the base policy (or, with ``base_checkpoint``, :func:`import_base`)."""
    cfg = ctx.config
    if cfg.base_checkpoint:
        return import_base(ctx)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    bags, boot, secs = collect_bootstrap(ctx)
    timings["bootstrap_collect_s"] = secs
    boot_key = [unit_key(ctx, "bootstrap"), cfg.bootstrap_episodes]
    boot_summary = success_summary(boot)
    ctx.log(
        f"bootstrap: {boot_summary['episodes']} episodes, success {boot_summary['success_rate']:.3f}"
    )
    grasp_stamp = None
    round_bags: list[Path] = []

    def from_grasp_values(r: int, data_key: Any) -> list[dict]:
        """Round ``r`` = ``grasp_value_round``: grasp values on all data so far, then one QT-Opt
        run from them at the pre-training rate, checkpointed and validated at the end of each of
        ``grasp_value_checks`` parts. Returns the parts' round entries.
        """
        nonlocal grasp_stamp
        path, init_id, grasp_stamp = grasp_values(
            ctx, f"grasp_values_round_{r}", bags + round_bags, data_key
        )
        timings[f"round_{r}_grasp_values_s"] = grasp_stamp["seconds"]
        per_part = cfg.grasp_value_qtopt_steps // cfg.grasp_value_checks
        run_key = unit_key(ctx, "grasp_value_qtopt", round=r, init=init_id, data=data_key)
        parts = []
        for j in range(1, cfg.grasp_value_checks + 1):
            # One QT-Opt run, stopped at each part's end: part j resumes part j-1's run directory.
            last = j == cfg.grasp_value_checks
            ckpt, ckpt_id, st = train(
                ctx,
                f"pretrain_round_{r}_part_{j}",
                path,
                bags,
                round_bags,
                j * per_part,
                cfg.learning_rate,
                0.5,
                unit_key(ctx, "grasp_value_qtopt", round=r, part=j, init=init_id, data=data_key),
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
        return parts

    def best(entries: list[dict]) -> dict:
        """The entry with the best validation success (ties: the later one); the last without validation."""
        if cfg.validation_episodes <= 0:
            return entries[-1]
        return max(reversed(entries), key=lambda e: e["validation"]["success_rate"])

    if cfg.grasp_value_steps and cfg.grasp_value_round == 0:
        rounds = from_grasp_values(0, boot_key)
        pick = best(rounds)
        ckpt, ckpt_id = ctx.path("checkpoints", pick["checkpoint"]), pick["checkpoint_id"]
    else:
        key = unit_key(ctx, "pretrain_train", data=boot_key)
        ckpt, ckpt_id, st = train(
            ctx,
            "pretrain_round_0",
            None,
            bags,
            [],
            cfg.pretrain_steps,
            cfg.learning_rate,
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
    for r in range(1, cfg.rounds + 1):
        seeds = seed_range(cfg, round_seed_offset(r), cfg.round_episodes)
        new_bags, outs, secs = collect_policy(
            ctx, f"round_{r}", ckpt, ckpt_id, seeds, "base", cfg.round_epsilon, cfg.round_noise_std
        )
        timings[f"round_{r}_collect_s"] = secs
        round_bags += new_bags
        coll = success_summary(outs)
        ctx.log(
            f"round_{r}: collected {coll['episodes']} episodes with {ckpt_id}, success {coll['success_rate']:.3f}"
        )
        data_key = [boot_key, [str(b.relative_to(ctx.output)) for b in round_bags]]
        if cfg.grasp_value_steps and r == cfg.grasp_value_round:
            parts = from_grasp_values(r, data_key)
            parts[0]["collected"] = coll
            rounds += parts
            pick = best(parts)  # the next round explores with the best validated part
            ckpt, ckpt_id = ctx.path("checkpoints", pick["checkpoint"]), pick["checkpoint_id"]
            continue
        key = unit_key(ctx, "round", round=r, init=ckpt_id, data=data_key)
        ckpt, ckpt_id, st = train(
            ctx,
            f"pretrain_round_{r}",
            ckpt,
            bags,
            round_bags,
            cfg.round_steps,
            cfg.round_learning_rate,
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
    if cfg.validation_episodes > 0:  # best on validation seeds; ties go to the later round
        chosen = best(rounds)
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


def base_checkpoint(ctx: Context) -> tuple[Path, str]:
    """The base policy checkpoint of the pretrain stage and its id."""
    from nsl_policy.checkpoint import load_checkpoint

    ckpt = ctx.path("checkpoints", "base.safetensors")
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: run the pretrain stage first")
    return ckpt, load_checkpoint(ckpt).checkpoint_id


def base_data(ctx: Context) -> tuple[list[Path], str]:
    """The pre-training bags (bootstrap + on-policy rounds) listed by the pretrain stage's stamp,
    and their content key; for an imported base checkpoint, the base control's exploration
    grasps (collected here when they are not yet).
    """
    stamp = read_json(ctx.path("stages", "pretrain.json"))
    if stamp is None or "base_data" not in stamp:
        raise FileNotFoundError(
            f"{ctx.path('stages', 'pretrain.json')} does not list the base data (missing, or "
            "written by an older version): run the pretrain stage (its work is cached)"
        )
    if "targets" in stamp["base_data"]:
        if not ctx.config.base_control:
            raise ValueError(
                "the base checkpoint was imported, so the base data is the base control's exploration "
                "grasps: set base_control=true"
            )
        bags = targets(ctx, ("base",), {})["base"].bags
        return bags, bags_key(bags)
    bags = [ctx.output / b for b in stamp["base_data"]["bags"]]
    return bags, bags_key(bags)


def evaluate_base_on(ctx: Context, checkpoint: Path, checkpoint_id: str, task: TaskSpec) -> dict:
    """The base checkpoint on ``task``, evaluation seeds (cached). Registered tasks (a name) are
    stamped under stages/evaluate_base/, shared by evaluate_base and calibrate's Table I; other
    variations (a calibrated severity) under stages/calibrate/evaluation/.
    """
    name = resolve_task(task).name
    folder = ("evaluate_base",) if isinstance(task, str) else ("calibrate", "evaluation")
    return evaluate_cached(
        ctx,
        f"{'/'.join(folder)}/{name}",
        ctx.path("stages", *folder, f"{name}.json"),
        checkpoint,
        checkpoint_id,
        task,
    )


def evaluate_base(ctx: Context) -> dict:
    """Stage 2: the base checkpoint on ``eval_tasks`` (nominal tasks), evaluation seeds, test objects."""
    ckpt, ckpt_id = base_checkpoint(ctx)
    results = {task: evaluate_base_on(ctx, ckpt, ckpt_id, task) for task in ctx.config.eval_tasks}
    return finish_stage(
        ctx,
        "evaluate_base",
        ckpt_id,
        {"stage": "evaluate_base", "checkpoint_id": ckpt_id, "results": results},
    )


# ------------------------------------------------------------------ the fine-tuning study
def choose_severity(
    base_rate: float, trials: list[tuple[float, float]], min_drop: float
) -> tuple[float, bool]:
    """The calibration rule. ``trials``: (severity, success rate) in the order tried (increasing
    severity). Returns (the first severity whose rate is at least ``min_drop`` below
    ``base_rate``, True), or (the last severity tried, False) when none is.
    """
    if not trials:
        raise ValueError("choose_severity: no severity was tried")
    for severity, rate in trials:
        if (
            base_rate - rate >= min_drop - 1e-9
        ):  # rates are k/n: tolerate float rounding of the difference
            return severity, True
    return trials[-1][0], False


def calibration(ctx: Context) -> dict:
    """Each challenge's severity per the calibration rule, on the base policy's and the challenges'
    ``calibration_seed_set`` episodes (cached units).
    Severities are evaluated in order and only until the rule is met. Returns {"checkpoint_id",
    "base_validation", "challenges": {name: {severity, reached, task (TaskConfig dict), drop, trials}}}.
    """
    cfg = ctx.config
    ckpt, ckpt_id = base_checkpoint(ctx)

    def validation(spec: TaskSpec, label: str) -> dict:
        stamp = ctx.path("stages", "calibrate", "validation", f"{label}.json")
        return evaluate_cached(
            ctx,
            f"calibrate/{label}",
            stamp,
            ckpt,
            ckpt_id,
            spec,
            kind="calibrate",
            episodes=cfg.calibration_episodes,
            seed_set=cfg.calibration_seed_set,
        )

    base = validation("base", "base")
    challenges = {}
    for name in cfg.challenges:
        trials: list[dict] = []
        for severity in cfg.calibration_severities:
            res = validation(task_spec(name, severity), f"{name}_severity_{severity:g}")
            trials.append(
                {
                    "severity": severity,
                    "result": res,
                    "drop": base["success_rate"] - res["success_rate"],
                }
            )
            chosen, reached = choose_severity(
                base["success_rate"],
                [(t["severity"], t["result"]["success_rate"]) for t in trials],
                cfg.calibration_drop,
            )
            if reached:
                break
        chosen_trial = next(t for t in trials if t["severity"] == chosen)
        challenges[name] = {
            "severity": chosen,
            "reached": reached,
            "drop": chosen_trial["drop"],
            "task": resolve_task(task_spec(name, chosen)).to_dict(),
            "trials": trials,
        }
    return {"checkpoint_id": ckpt_id, "base_validation": base, "challenges": challenges}


def study_spec(cal: dict, name: str) -> TaskSpec:
    """The task spec of a study task: ``base`` itself, or a challenge at its calibrated severity."""
    return name if name == "base" else task_spec(name, cal["challenges"][name]["severity"])


def calibrate(ctx: Context) -> dict:
    """Stage 3 (Table I): calibrate the challenges on validation episodes, then evaluate the base
    policy on base and every calibrated challenge on evaluation episodes.
    """
    ckpt, ckpt_id = base_checkpoint(ctx)
    cal = calibration(ctx)
    base = evaluate_base_on(ctx, ckpt, ckpt_id, "base")
    table = {"base": {"severity": None, "reached": None, "result": base, "drop": 0.0}}
    for name, c in cal["challenges"].items():
        ctx.log(
            f"calibrate/{name}: severity {c['severity']:g} (drop on {ctx.config.calibration_seed_set} episodes "
            f"{c['drop']:+.3f}, "
            f"{'reached' if c['reached'] else 'NOT reached'}: {ctx.config.calibration_drop:.2f})"
        )
        res = evaluate_base_on(ctx, ckpt, ckpt_id, study_spec(cal, name))
        table[name] = {
            "severity": c["severity"],
            "reached": c["reached"],
            "result": res,
            "drop": base["success_rate"] - res["success_rate"],
        }
    summary = {
        "stage": "calibrate",
        "checkpoint_id": ckpt_id,
        "calibration_drop": ctx.config.calibration_drop,
        "calibration": cal,
        "table_i": table,
    }
    return finish_stage(ctx, "calibrate", stable_hash(cal), summary)


@dataclass
class TargetData:
    """A study task's exploration grasps: its spec, bags (in episode order) and collection summary."""

    spec: TaskSpec
    bags: list[Path]
    collected: dict

    def tier(self, episodes: int, chunk_episodes: int) -> tuple[list[Path], str]:
        """The bags holding the first ``episodes`` grasps and their content key."""
        bags = tier_bags(self.bags, episodes, chunk_episodes)
        return bags, bags_key(bags)


def targets(ctx: Context, names: tuple[str, ...], cal: dict) -> dict[str, TargetData]:
    """``target_episodes`` exploration grasps with the base policy on each study task in
    ``names`` (at its calibrated severity, from ``cal``; cached per bag), seeds TARGET_SEEDS +
    100 000 x the task's index in STUDY_TASKS, train objects.
    """
    cfg = ctx.config
    ckpt, ckpt_id = base_checkpoint(ctx)
    out = {}
    for name in names:
        spec = study_spec(cal, name)
        seeds = seed_range(
            cfg, TARGET_SEEDS + 100_000 * STUDY_TASKS.index(name), cfg.target_episodes
        )
        bags, outcomes, _ = collect_policy(
            ctx,
            "targets",
            ckpt,
            ckpt_id,
            seeds,
            spec,
            cfg.target_epsilon,
            cfg.target_noise_std,
            key_kind="targets",
            key_inputs={"task": spec},
        )
        out[name] = TargetData(spec, bags, success_summary(outcomes))
    return out


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


def evaluate_trained(ctx: Context, checkpoint: Path, checkpoint_id: str, spec: TaskSpec) -> dict:
    """A trained checkpoint on a task, evaluation seeds (cached next to the checkpoint)."""
    name = resolve_task(spec).name
    return evaluate_cached(
        ctx,
        f"{unit_label(ctx, checkpoint)} on {name}",
        checkpoint.with_name(f"{checkpoint.stem}.eval_{name}.json"),
        checkpoint,
        checkpoint_id,
        spec,
    )


def trained_entry(
    ctx: Context, checkpoint: Path, checkpoint_id: str, stamp: dict, spec: TaskSpec
) -> dict:
    """Summary of a trained-and-evaluated unit for a stage stamp."""
    return {
        "checkpoint": str(checkpoint.relative_to(ctx.output)),
        "checkpoint_id": checkpoint_id,
        "train": {
            k: stamp.get(k)
            for k in ("steps", "learning_rate", "transitions", "target_episodes", "seconds")
        },
        "result": evaluate_trained(ctx, checkpoint, checkpoint_id, spec),
    }


def finetune_unit(
    ctx: Context,
    name: str,
    init: Path,
    init_id: str,
    base: tuple[list[Path], str],
    target: TargetData,
    episodes: int,
) -> tuple[Path, str, dict]:
    """Fine-tune ``init`` on the base data + the first ``episodes`` target grasps (the paper's
    recipe: ``target_fraction`` of each batch from the target, learning rate x finetune_lr_scale,
    ``finetune_steps``; cached). Returns (checkpoint, id, training stamp).
    """
    cfg = ctx.config
    base_bags, base_key = base
    target_bags, target_key = target.tier(episodes, cfg.chunk_episodes)
    key = unit_key(
        ctx,
        "finetune",
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
        cfg.finetune_steps,
        cfg.finetune_learning_rate(),
        cfg.target_fraction,
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
    """:func:`finetune_unit`, evaluated on the target task. Returns (checkpoint, id, stamp entry)."""
    ckpt, ckpt_id, st = finetune_unit(ctx, name, init, init_id, base, target, episodes)
    return ckpt, ckpt_id, trained_entry(ctx, ckpt, ckpt_id, st, target.spec)


def sweep_unit_name(task: str, episodes: int) -> str:
    """Checkpoint name of the sweep's fine-tuning of the base checkpoint on ``episodes`` grasps of ``task``."""
    return f"sweep/{task}/tier_{episodes:04d}"


def reinit_modules(ctx: Context, model: Any) -> list[str]:
    """The ``reinit_modules`` that ``model`` has: a "keypoints" network has no ``head`` or
    ``embed`` (its ``fc`` scores keypoints + action directly), so the ablation resets ``fc``.
    """
    present = [m for m in ctx.config.reinit_modules if hasattr(model, m)]
    if not present:
        raise ValueError(
            f"reinit_modules {list(ctx.config.reinit_modules)}: the base network "
            f"({model.config.head} head) has none of them"
        )
    return present


def reinit_checkpoint(ctx: Context, base: Path) -> tuple[Path, str, list[str]]:
    """The base checkpoint with ``reinit_modules`` re-initialised: their weights are those of a
    fresh QNetwork (the library's own initialisation, seeded), the rest stays pre-trained.
    Written to checkpoints/reinit_head_init.safetensors. Returns (path, id, modules reset).
    """
    import torch
    from nsl_policy.checkpoint import load_checkpoint, save_checkpoint
    from nsl_policy.model import QNetwork

    cfg = ctx.config
    loaded = load_checkpoint(base, device="cpu")
    seed = (
        int(stable_hash(["reinit_head", cfg.seed]), 16) % 2**31
    )  # not the pre-training init's seed
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


def finetune_sweep(ctx: Context) -> dict:
    """Stage 5 (Table II): per study task, fine-tune the base checkpoint at every tier; at the
    largest tier also scratch and the head re-initialisation; evaluate each on its task.
    """
    cfg = ctx.config
    ckpt, ckpt_id = base_checkpoint(ctx)
    base = base_data(ctx)
    largest = cfg.tiers[-1]
    reinit, reinit_id, reset = reinit_checkpoint(ctx, ckpt)
    rows = {}
    for name, target in targets(ctx, cfg.study_tasks(), calibration(ctx)).items():
        row: dict[str, Any] = {"task": resolve_task(target.spec).to_dict(), "tiers": {}}
        for n in cfg.tiers:
            row["tiers"][str(n)] = finetune_on(
                ctx, sweep_unit_name(name, n), ckpt, ckpt_id, base, target, n
            )[2]
        target_bags, target_key = target.tier(largest, cfg.chunk_episodes)
        key = unit_key(ctx, "scratch", target=target_key, episodes=largest, task=target.spec)
        # Scratch: a fresh network on the target grasps only, at the pre-training learning rate.
        s_ckpt, s_id, st = train(
            ctx,
            f"sweep/{name}/scratch_{largest:04d}",
            None,
            [],
            target_bags,
            cfg.scratch_steps,
            cfg.learning_rate,
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
        rows[name] = row
    summary = {
        "stage": "finetune_sweep",
        "checkpoint_id": ckpt_id,
        "tiers": list(cfg.tiers),
        "largest_tier": largest,
        "finetune_steps": cfg.finetune_steps,
        "scratch_steps": cfg.scratch_steps,
        "learning_rate": cfg.finetune_learning_rate(),
        "scratch_learning_rate": cfg.learning_rate,
        "target_fraction": cfg.target_fraction,
        "tasks": rows,
    }
    trained = {
        name: [
            e["checkpoint_id"]
            for e in (*row["tiers"].values(), row["scratch"], row["reinit_head"])
        ]
        for name, row in rows.items()
    }
    return finish_stage(ctx, "finetune_sweep", stable_hash(trained), summary)


def online_finetune(ctx: Context) -> dict:
    """Stage (Table II's "online" column, with ``online_rounds``): offline fine-tuning mixed with
    online evaluation and exploration, the paper's proposed answer to when to stop fine-tuning
    (Sec. VI-B). Per study task, the largest tier's grasps are spent in ``online_rounds`` equal
    rounds. Round 1 fine-tunes the base checkpoint on the first of the base policy's exploration
    grasps (the sweep's unit when that count is a tier). Round k >= 2 collects its grasps with the
    policy in force (seeds :func:`online_seed_offset`), then fine-tunes the policy in force on
    the base data + all the task's grasps so far. A round's checkpoint replaces the policy in
    force only if it does at least as well on the task's validation episodes. The policy in
    force after the last round is evaluated on the task (evaluation seeds).
    """
    cfg = ctx.config
    if not cfg.online_rounds:
        ctx.log("online_finetune: online_rounds is 0, nothing to do")
        return {"stage": "online_finetune", "skipped": "online_rounds is 0"}
    ckpt, ckpt_id = base_checkpoint(ctx)
    base = base_data(ctx)
    largest = cfg.tiers[-1]
    per_round = largest // cfg.online_rounds
    rows = {}
    for name, explored in targets(ctx, cfg.study_tasks(), calibration(ctx)).items():
        spec = explored.spec
        in_force, in_force_id = ckpt, ckpt_id
        in_force_validation = gate_validation(ctx, ckpt, ckpt_id, spec)
        bags = tier_bags(explored.bags, per_round, cfg.chunk_episodes)
        rounds = []
        for k in range(1, cfg.online_rounds + 1):
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
                    cfg.target_epsilon,
                    cfg.target_noise_std,
                    key_kind="targets",
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
                f"online/{name}/round_{k}: {k * per_round} grasps, validation {proposed['success_rate']:.3f} vs "
                f"policy in force {in_force_validation['success_rate']:.3f}: "
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
                    "train": {
                        key: st.get(key)
                        for key in (
                            "steps",
                            "learning_rate",
                            "transitions",
                            "target_episodes",
                            "seconds",
                            "init",
                        )
                    },
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
            f"online/{name}: policy in force {in_force_id}, success {result['success_rate']:.3f} "
            f"(n={result['episodes']})"
        )
        rows[name] = {
            "task": resolve_task(spec).to_dict(),
            "rounds": rounds,
            "grasps": largest,
            "validation_episodes": (cfg.gate_episodes or cfg.validation_episodes)
            * (cfg.online_rounds + 1),
            "checkpoint": str(in_force.relative_to(ctx.output)),
            "checkpoint_id": in_force_id,
            "result": result,
        }
    summary = {
        "stage": "online_finetune",
        "checkpoint_id": ckpt_id,
        "online_rounds": cfg.online_rounds,
        "grasps_per_round": per_round,
        "finetune_steps": cfg.finetune_steps,
        "learning_rate": cfg.finetune_learning_rate(),
        "target_fraction": cfg.target_fraction,
        "tasks": rows,
    }
    return finish_stage(
        ctx,
        "online_finetune",
        stable_hash({n: r["checkpoint_id"] for n, r in rows.items()}),
        summary,
    )


def continual(ctx: Context) -> dict:
    """Stage 6 (Table III): the paper's continual chain (Sec. V, Fig. 4). Step k fine-tunes the
    policy in force after step k-1 (step 0: the base checkpoint) on the base data + that
    challenge's largest tier, with the sweep's recipe, and is evaluated on its challenge; the
    final policy is then evaluated on every task of the chain and on base (the paper's future
    work: what later fine-tuning does to earlier tasks).

    ``continual_guard`` (default): a step's checkpoint (the candidate) replaces the policy in force
    only if its validation success on the step's task is at least that of the policy in force;
    otherwise the step is rejected and the chain goes on from the policy in force. Every step
    reports the policy in force after it (``result``), the candidate's own evaluation and the
    two validation numbers. Without the guard every candidate is accepted (the paper).

    Data: the paper reuses, for every step, "800 exploration-grasp datasets for each Challenge
    Task" collected for its single-step study, where exploration always used the pre-trained base
    policy; so by default every step trains on collect_targets' grasps, and step 0's candidate is
    exactly the sweep's largest-tier run (the paper notes the same for Harsh Lighting; here it is
    the same cached unit). ``continual_recollect``: steps >= 1 instead collect fresh grasps with
    the policy in force (seeds CONTINUAL_SEEDS + 100 000 x step), as an online learner would.
    """
    cfg = ctx.config
    chain = cfg.continual_chain()
    largest = cfg.tiers[-1]
    init, init_id = base_checkpoint(ctx)
    base_id = init_id
    base = base_data(ctx)
    cal = calibration(ctx)
    data = targets(ctx, chain[:1] if cfg.continual_recollect else chain, cal)
    # One folder per variant, so switching guard or recollect in a run folder keeps the other
    # variant's step checkpoints (their cache) instead of training over them.
    folder = (
        "continual"
        + ("_guarded" if cfg.continual_guard else "")
        + ("_recollect" if cfg.continual_recollect else "")
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
                cfg.target_epsilon,
                cfg.target_noise_std,
                key_kind="targets",
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
        if cfg.continual_guard:
            previous = gate_validation(ctx, init, init_id, target.spec)
            proposed = gate_validation(ctx, cand, cand_id, target.spec)
            step["accepted"] = proposed["success_rate"] >= previous["success_rate"]
            step["guard"] = {
                "candidate_validation": proposed,
                "previous_validation": previous,
                "previous_checkpoint_id": init_id,
            }
            ctx.log(
                f"continual/step_{k}_{name}: candidate {proposed['success_rate']:.3f} vs policy in force "
                f"{previous['success_rate']:.3f} on validation: {'accepted' if step['accepted'] else 'REJECTED'}"
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
        "recollect": cfg.continual_recollect,
        "guard": cfg.continual_guard,
        "steps": steps,
        "final_checkpoint_id": init_id,
        "final": final,
    }
    return finish_stage(ctx, "continual", init_id, summary)


def report(ctx: Context) -> dict:
    """Stage 7: the paper-layout report, from the stage stamps only (runs no episodes)."""
    from .report import write_report

    return write_report(ctx.output, Path(ctx.config.report_dir), ctx.log)


#: The pipeline, in order.
STAGES: dict[str, Callable[[Context], dict]] = {
    "pretrain": pretrain,
    "evaluate_base": evaluate_base,
    "calibrate": calibrate,
    "collect_targets": collect_targets,
    "finetune_sweep": finetune_sweep,
    "online_finetune": online_finetune,
    "continual": continual,
    "report": report,
}


def run(
    config: ExperimentConfig,
    output: str | Path,
    stages: list[str] | None = None,
    log_fn: Callable[[str], None] = print,
) -> dict:
    """Run ``stages`` (default: all, in order); each skips the work that is already cached."""
    names = list(STAGES) if not stages else list(stages)
    for n in names:
        if n not in STAGES:
            raise ValueError(f"unknown stage {n!r} (stages: {', '.join(STAGES)})")
    ctx = Context(config, Path(output), log_fn)
    ctx.output.mkdir(parents=True, exist_ok=True)
    # Replaced, not rewritten in place: a run folder copied with hard links (cp -al, to reuse
    # its data) must not change the original's config.
    saved = ctx.output / "config.json"
    tmp = saved.with_name("config.json.tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, saved)
    results = {"config": config.to_dict(), "stages": {}, "started": _now(), "hardware": hardware()}
    for n in [s for s in STAGES if s in names]:
        ctx.work_done, ctx.stage_started = 0, time.monotonic()
        ctx.log(f"stage {n}")
        res = STAGES[n](ctx)
        res["wall_clock_s"] = time.monotonic() - ctx.stage_started
        results["stages"][n] = res
    results["finished"] = _now()
    (ctx.output / "summary.json").write_text(
        json.dumps(results, indent=2, sort_keys=True, default=str)
    )
    return results
