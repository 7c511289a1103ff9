"""Stages of the experiment pipeline. Each is a function ``stage(ctx) -> dict`` (its summary).

Every unit of work is cached: it writes a JSON stamp holding a key (a hash of the config fields
it reads and the keys/ids of its inputs) next to its outputs, and is skipped when the stamp's key
matches and the outputs exist. Work is written to a temporary name and renamed when complete,
so an interrupted run resumes at the last complete unit (a bag of ``chunk_episodes`` episodes, a
training run, an evaluation task).

Stages (in order; ``STAGES``):
  pretrain       bootstrap data on ``base`` (scripted oracle + noise + random exploration),
                 offline QT-Opt, then ``rounds`` of on-policy collection + retraining.
                 Output: checkpoints/base.safetensors, datasets/base/...
  evaluate_base  greedy CEM policy on held-out test objects, for each of ``eval_tasks`` (Table I).

Future stages of issue 7 (not implemented yet; add a function and an entry in ``STAGES``):
  calibrate      challenge severities until the base policy drops by >= 0.15 (uses
                 ``evaluate_checkpoint`` with the validation seeds and ``TaskConfig.severity``).
  finetune_sweep per challenge: 800 exploration grasps with the base policy (``collect_policy``),
                 nested tiers 25..800, ``nsl_trainer.qtopt.finetune`` at each tier + scratch +
                 head re-initialisation, each evaluated (Table II).
  continual      the paper's chain of challenges (Table III).
  report         tables, plots and summary.json into docs/results/.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import (BOOTSTRAP_SEEDS, EVALUATION_SEEDS, ROUND_SEEDS, STAGE_FIELDS, VALIDATION_SEEDS,
                     ExperimentConfig, stable_hash)
from .episodes import POLICY, SCRIPTED, EpisodeOutcome, run_jobs, success_summary

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
    skipped: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

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
    return stable_hash({"code": CODE_VERSION, "kind": kind, "config": ctx.config.subset(STAGE_FIELDS[kind]),
                        "inputs": inputs})


# ------------------------------------------------------------------ data collection
def _chunks(seeds: list[int], size: int) -> list[list[int]]:
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def collect(ctx: Context, name: str, kind: str, key_kind: str, seeds: list[int], task: str, split: str,
            extra: dict, key_inputs: dict) -> tuple[list[Path], list[EpisodeOutcome], float]:
    """Collect ``seeds`` episodes into bags datasets/<task>/<name>/chunk_NNN (cached per chunk).
    Returns (bag paths, outcomes, seconds spent collecting in this call)."""
    cfg = ctx.config
    folder = ctx.path("datasets", task, name)
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
        specs.append({"kind": kind, "task": task, "split": split, "seeds": chunk, "sim": cfg.sim_kwargs(),
                      "bag": str(bag), "threads": cfg.threads,
                      "metadata": {"task": task, "robot": "sim", "experiment": name, "chunk": i, "kind": kind,
                                   "split": split},
                      **extra})
    t0 = time.monotonic()
    if specs:
        ctx.log(f"{name}: collecting {sum(len(s['seeds']) for s in specs)} episodes in {len(specs)} bag(s) "
                f"({len(bags) - len(specs)} cached)")
        def done(j: int, out: list[dict]) -> None:
            i, stamp, key = stamps[j]
            write_stamp(stamp, key, {"episodes": out})
            results[i] = out

        run_jobs(specs, cfg.workers, lambda m: ctx.log(f"{name}: {m}"), done)
    else:
        ctx.log(f"{name}: {len(bags)} bag(s) cached")
    outcomes = [EpisodeOutcome(**r) for i in sorted(results) for r in results[i]]
    return bags, outcomes, time.monotonic() - t0


def collect_bootstrap(ctx: Context) -> tuple[list[Path], list[EpisodeOutcome], float]:
    cfg = ctx.config
    seeds = [cfg.seed_base(BOOTSTRAP_SEEDS) + i for i in range(cfg.bootstrap_episodes)]
    extra = {"rng_seed": cfg.seed, "random_fraction": cfg.bootstrap_random_fraction,
             "noise_max": cfg.bootstrap_noise_max, "epsilon_max": cfg.bootstrap_epsilon_max,
             "p_close": cfg.bootstrap_p_close}
    return collect(ctx, "bootstrap", SCRIPTED, "bootstrap", seeds, "base", "train", extra, {})


def collect_policy(ctx: Context, name: str, checkpoint: Path, checkpoint_id: str, seeds: list[int], task: str,
                   epsilon: float, noise_std: float, key_kind: str = "round") -> tuple[list[Path], list[EpisodeOutcome], float]:
    """Exploration grasps with a checkpoint (epsilon-greedy CEM), recorded as bags."""
    cfg = ctx.config
    extra = {"checkpoint": str(checkpoint), "cem": dict(cfg.policy_cem), "epsilon": epsilon, "noise_std": noise_std,
             "policy_seed": seeds[0] if seeds else 0}
    return collect(ctx, name, POLICY, key_kind, seeds, task, "train", extra,
                   {"checkpoint": checkpoint_id, "epsilon": epsilon, "noise_std": noise_std})


# ------------------------------------------------------------------ training
def initial_checkpoint(ctx: Context) -> Path:
    """A freshly initialised network per ``init_scheme`` (seeded), saved as checkpoints/init_<scheme>.safetensors.
    Training from it with an explicit learning rate is pre-training (the trainer labels it "finetune")."""
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
    save_checkpoint(str(path), model, {"kind": "init", "init_scheme": cfg.init_scheme, "seed": cfg.seed})
    return path


def jitter_binary_actions(transitions, seed) -> None:
    """In place: the close/terminate components (+-1 as read from bags) become same-sign values
    uniform in (0, 1] (see ExperimentConfig.binary_action_jitter)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = transitions.action
    mag = rng.uniform(1e-3, 1.0, size=(len(a), 2)).astype(a.dtype)
    a[:, 4:6] = np.where(a[:, 4:6] > 0, mag, -mag)


def _run_dir(ctx: Context, name: str, key: str) -> Path:
    return ctx.path("checkpoints", f"{name}.{key}.run")


def _run_options(ctx: Context, name: str, steps: int, key: str) -> dict:
    """Mid-training resume: nsl_trainer saves its full state (weights, targets, optimiser,
    step) into checkpoints/<name>.<key>.run every ``steps // 10`` steps and resumes from it when
    the same unit (same key) is started again (older trainers without run directories just train)."""
    import inspect

    from nsl_trainer import qtopt

    if "run_options" not in inspect.signature(qtopt.finetune_transitions).parameters:
        return {}
    return {"run_dir": str(_run_dir(ctx, name, key)), "checkpoint_every": max(50, steps // 10),
            "resume": True, "tensorboard": False, "log_every": max(1, steps // 20)}


def train(ctx: Context, name: str, init: Path | None, base_bags: list[Path], target_bags: list[Path], steps: int,
          learning_rate: float, target_fraction: float, key: str) -> tuple[Path, str, dict]:
    """QT-Opt on the bags into checkpoints/<name>.safetensors (cached). Returns (path, id, stamp)."""
    from nsl_collector.dataset import load_transitions
    from nsl_trainer.qtopt import finetune_transitions

    cfg = ctx.config
    out = ctx.path("checkpoints", f"{name}.safetensors")
    stamp = ctx.path("checkpoints", f"{name}.json")
    hit = read_stamp(stamp, key, [out])
    if hit is not None:
        ctx.log(f"{name}: cached checkpoint {hit['checkpoint_id']}")
        return out, hit["checkpoint_id"], hit
    t0 = time.monotonic()
    base = load_transitions([str(b) for b in base_bags]) if base_bags else None
    target = load_transitions([str(b) for b in target_bags]) if target_bags else None
    if cfg.binary_action_jitter:
        for i, t in enumerate((base, target)):
            if t is not None:
                jitter_binary_actions(t, [cfg.seed, i, int(stable_hash(name), 16) % 2**31])
    n_base, n_target = (len(base) if base is not None else 0), (len(target) if target is not None else 0)
    ctx.log(f"{name}: training {steps} steps on {n_base} base + {n_target} target transitions "
            f"(lr {learning_rate}, init {'scratch' if init is None else init.name})")
    every = max(1, steps // 20)
    t_train = time.monotonic()

    def progress(step: int, m: dict) -> None:
        if step % every == 0 or step == steps:
            ctx.log(f"{name}: step {step}/{steps} loss {m.get('loss', float('nan')):.4f} "
                    f"mean_q {m.get('mean_q', float('nan')):.3f} ({time.monotonic() - t_train:.0f} s)")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    # Relative to the run folder, so a moved/copied run folder resumes (the trainer checks them).
    datasets = {"base": [str(b.relative_to(ctx.output)) for b in base_bags],
                "target": [str(b.relative_to(ctx.output)) for b in target_bags]}
    if init is None and cfg.init_scheme != "default":
        init = initial_checkpoint(ctx)
    checkpoint_id = finetune_transitions(
        str(init) if init is not None else None, base, target, steps, output_path=str(tmp),
        learning_rate=learning_rate, target_fraction=target_fraction if (n_base and n_target) else 0.5,
        progress=progress, seed=cfg.seed, config=cfg.qtopt_config(), model_config=cfg.model_config(),
        num_threads=cfg.threads, datasets=datasets, **_run_options(ctx, name, steps, key))
    os.replace(tmp, out)
    shutil.rmtree(_run_dir(ctx, name, key), ignore_errors=True)
    seconds = time.monotonic() - t0
    data = write_stamp(stamp, key, {"checkpoint_id": checkpoint_id, "steps": steps, "transitions":
                                    {"base": n_base, "target": n_target}, "seconds": seconds,
                                    "learning_rate": learning_rate})
    ctx.log(f"{name}: wrote {out.name} ({checkpoint_id}) in {seconds:.0f} s")
    return out, checkpoint_id, data


# ------------------------------------------------------------------ evaluation
def evaluate_checkpoint(checkpoint: str | Path, task: str, episodes: int, config: ExperimentConfig,
                        seed_set: str = "evaluation", log: Callable[[str], None] | None = None) -> dict:
    """Greedy CEM policy (no exploration) on held-out test objects. ``seed_set``: "evaluation"
    (reported numbers) or "validation" (choices: settings, rounds, severities). Returns the
    success summary with its 95% Wilson interval."""
    offset = {"evaluation": EVALUATION_SEEDS, "validation": VALIDATION_SEEDS}[seed_set]
    first = config.seed_base(offset)
    seeds = [first + i for i in range(episodes)]
    specs = [{"kind": POLICY, "task": task, "split": "test", "seeds": chunk, "sim": config.sim_kwargs(), "bag": None,
              "threads": config.threads, "checkpoint": str(checkpoint), "cem": dict(config.policy_cem),
              "epsilon": 0.0, "noise_std": 0.0, "policy_seed": chunk[0]}
             for chunk in _chunks(seeds, EVAL_JOB_EPISODES)]
    t0 = time.monotonic()
    outs = run_jobs(specs, config.workers, log)
    outcomes = [EpisodeOutcome(**r) for out in outs for r in out]
    summary = success_summary(outcomes)
    summary.update({"task": task, "seed_set": seed_set, "first_seed": first, "object_split": "test",
                    "seconds": time.monotonic() - t0})
    return summary


# ------------------------------------------------------------------ stages
def validate(ctx: Context, checkpoint: Path, checkpoint_id: str) -> dict | None:
    """Validation-seed success of a checkpoint on ``base`` (cached; None when disabled)."""
    cfg = ctx.config
    if cfg.validation_episodes <= 0:
        return None
    stamp = checkpoint.with_name(checkpoint.stem + ".validation.json")
    key = unit_key(ctx, "evaluate", checkpoint=checkpoint_id, task="base", validation=cfg.validation_episodes)
    hit = read_stamp(stamp, key, [])
    if hit is not None:
        return hit["result"]
    res = evaluate_checkpoint(checkpoint, "base", cfg.validation_episodes, cfg, "validation")
    write_stamp(stamp, key, {"result": res})
    lo, hi = res["ci95"]
    ctx.log(f"{checkpoint.stem}: validation success {res['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"(n={res['episodes']}, {res['seconds']:.0f} s)")
    return res


def pretrain(ctx: Context) -> dict:
    """Stage 1: the base policy."""
    cfg = ctx.config
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    bags, boot, secs = collect_bootstrap(ctx)
    timings["bootstrap_collect_s"] = secs
    boot_key = [unit_key(ctx, "bootstrap"), cfg.bootstrap_episodes]
    boot_summary = success_summary(boot)
    ctx.log(f"bootstrap: {boot_summary['episodes']} episodes, success {boot_summary['success_rate']:.3f}")
    key = unit_key(ctx, "pretrain_train", data=boot_key)
    ckpt, ckpt_id, st = train(ctx, "pretrain_round_0", None, bags, [], cfg.pretrain_steps, cfg.learning_rate, 0.5, key)
    timings["round_0_train_s"] = st["seconds"]
    rounds = [{"round": 0, "checkpoint": ckpt.name, "checkpoint_id": ckpt_id, "train": st,
               "validation": validate(ctx, ckpt, ckpt_id)}]
    round_bags: list[Path] = []
    for r in range(1, cfg.rounds + 1):
        seeds = [cfg.seed_base(ROUND_SEEDS + 100_000 * r) + i for i in range(cfg.round_episodes)]
        new_bags, outs, secs = collect_policy(ctx, f"round_{r}", ckpt, ckpt_id, seeds, "base",
                                              cfg.round_epsilon, cfg.round_noise_std)
        timings[f"round_{r}_collect_s"] = secs
        round_bags += new_bags
        coll = success_summary(outs)
        ctx.log(f"round_{r}: collected {coll['episodes']} episodes with {ckpt_id}, success {coll['success_rate']:.3f}")
        key = unit_key(ctx, "round", round=r, init=ckpt_id, data=[boot_key, [str(b.relative_to(ctx.output)) for b in round_bags]])
        ckpt, ckpt_id, st = train(ctx, f"pretrain_round_{r}", ckpt, bags, round_bags, cfg.round_steps,
                                  cfg.round_learning_rate, 0.5, key)
        timings[f"round_{r}_train_s"] = st["seconds"]
        rounds.append({"round": r, "checkpoint": ckpt.name, "checkpoint_id": ckpt_id, "train": st,
                       "collected": coll, "validation": validate(ctx, ckpt, ckpt_id)})
    chosen = rounds[-1]
    if cfg.validation_episodes > 0:  # best on validation seeds; ties go to the later round
        chosen = max(reversed(rounds), key=lambda r: r["validation"]["success_rate"])
        ckpt, ckpt_id = ctx.path("checkpoints", chosen["checkpoint"]), chosen["checkpoint_id"]
        ctx.log(f"base policy: round {chosen['round']} ({ckpt_id}), chosen on validation seeds")
    final = ctx.path("checkpoints", "base.safetensors")
    shutil.copyfile(ckpt, final)
    summary = {"stage": "pretrain", "checkpoint": str(final), "checkpoint_id": ckpt_id, "chosen_round": chosen["round"],
               "bootstrap": boot_summary, "rounds": rounds, "timings": timings,
               "seconds_this_run": time.monotonic() - t0}
    write_stamp(ctx.path("stages", "pretrain.json"), ckpt_id, summary)
    return summary


def evaluate_base(ctx: Context) -> dict:
    """Stage 2: the base checkpoint on ``eval_tasks`` (Table I), evaluation seeds, test objects."""
    from nsl_policy.checkpoint import load_checkpoint

    cfg = ctx.config
    ckpt = ctx.path("checkpoints", "base.safetensors")
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: run the pretrain stage first")
    ckpt_id = load_checkpoint(ckpt).checkpoint_id
    results = {}
    for task in cfg.eval_tasks:
        stamp = ctx.path("stages", "evaluate_base", f"{task}.json")
        key = unit_key(ctx, "evaluate", checkpoint=ckpt_id, task=task)
        hit = read_stamp(stamp, key, [])
        if hit is not None:
            ctx.log(f"evaluate_base/{task}: cached")
            results[task] = hit["result"]
            continue
        ctx.log(f"evaluate_base/{task}: {cfg.eval_episodes} episodes")
        res = evaluate_checkpoint(ckpt, task, cfg.eval_episodes, cfg, "evaluation",
                                  lambda m, t=task: ctx.log(f"evaluate_base/{t}: {m}"))
        res["checkpoint_id"] = ckpt_id
        write_stamp(stamp, key, {"result": res})
        results[task] = res
        lo, hi = res["ci95"]
        ctx.log(f"evaluate_base/{task}: success {res['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] (n={res['episodes']})")
    summary = {"stage": "evaluate_base", "checkpoint_id": ckpt_id, "results": results}
    write_stamp(ctx.path("stages", "evaluate_base.json"), ckpt_id, summary)
    return summary


#: The pipeline, in order. Future stages (calibrate, finetune_sweep, continual, report) go here.
STAGES: dict[str, Callable[[Context], dict]] = {
    "pretrain": pretrain,
    "evaluate_base": evaluate_base,
}


def run(config: ExperimentConfig, output: str | Path, stages: list[str] | None = None,
        log_fn: Callable[[str], None] = print) -> dict:
    """Run ``stages`` (default: all, in order); each skips the work that is already cached."""
    names = list(STAGES) if not stages else list(stages)
    for n in names:
        if n not in STAGES:
            raise ValueError(f"unknown stage {n!r} (stages: {', '.join(STAGES)})")
    ctx = Context(config, Path(output), log_fn)
    ctx.output.mkdir(parents=True, exist_ok=True)
    (ctx.output / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    import platform

    results = {"config": config.to_dict(), "stages": {}, "started": _now(),
               "hardware": {"machine": platform.machine(), "cpus": os.cpu_count(), "processor": platform.processor()}}
    for n in [s for s in STAGES if s in names]:
        t0 = time.monotonic()
        ctx.log(f"stage {n}")
        res = STAGES[n](ctx)
        res["wall_clock_s"] = time.monotonic() - t0
        results["stages"][n] = res
    results["finished"] = _now()
    (ctx.output / "summary.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    return results
