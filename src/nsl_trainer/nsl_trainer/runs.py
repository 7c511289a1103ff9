"""Training runs: pretrain, finetune, scratch and continual chains as library calls.

Runs have periodic checkpoints, resume, TensorBoard logs, progress and cancellation. A run
writes into its run directory (default: ``<output without suffix>.run/``):

    state.safetensors      training state every ``checkpoint_every`` steps and at the end
                           (:mod:`.state`: networks, targets, Adam, step, ...)
    checkpoints/step_0000500.safetensors   policy checkpoints (nsl-qnet format), same steps
    tensorboard/           scalars every ``log_every`` steps (torch.utils.tensorboard)

and finally the policy checkpoint at ``output_path``. Started again with the same arguments, a
run resumes from ``state.safetensors`` at the step it reached (``resume=False`` starts over).
Under torchrun/DDP only rank 0 writes files; every rank trains. The steps themselves are
:func:`.loop.run_steps`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from nsl_collector.transitions import Transitions
from nsl_policy.checkpoint import (
    CheckpointError,
    _cpu_state_dict,
    load_checkpoint,
    save_checkpoint,
    weights_id,
)
from nsl_policy.model import QNetwork, QNetworkConfig, default_device

from .config import QTOptConfig
from .data import load_datasets
from .recipe import FineTuneRecipe
from .loop import ProgressFn, run_steps, sampled_fraction, training_data
from .state import load_state, save_state
from .trainer import QTOptTrainer

MODES = ("pretrain", "finetune", "scratch")
"""Modes of one run; a continual chain is :func:`continual`."""
STATE_FILE = "state.safetensors"


@dataclass
class RunResult:
    """What a run produced."""

    checkpoint_id: str
    checkpoint_path: str
    run_dir: str
    mode: str
    steps: int
    resumed_from: int
    """Step the run resumed from (0: a fresh start)."""
    metrics: dict = field(default_factory=dict)
    parent: str | None = None


def default_run_dir(output_path: str | os.PathLike) -> str:
    """Return ``<output without its extension>.run`` beside the output.

    Only the last suffix goes: ``lr2.5e-4.safetensors`` -> ``lr2.5e-4.run`` (not ``lr2.run``,
    which ``lr2.7e-4`` would share).
    """
    p = Path(output_path)
    return str(p.with_name((p.name[: -len(p.suffix)] if p.suffix else p.name) + ".run"))


def _writer(run_dir: str, purge_step: int | None) -> Any:
    from torch.utils.tensorboard import SummaryWriter  # optional: only runs that log need it

    return SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"), purge_step=purge_step)


def exported_network(trainer: QTOptTrainer) -> QNetwork:
    """Return the network a run writes as its checkpoint (``QTOptConfig.policy_weights``)."""
    return trainer.target1 if trainer.config.policy_weights == "polyak" else trainer.model


def _check_arguments(
    mode: str, steps: int, checkpoint_every: int, init_checkpoint: str | None
) -> None:
    if mode not in MODES:
        raise ValueError(
            "mode must be pretrain, finetune or scratch (continual: use continual()), "
            f"got {mode!r}"
        )
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 0):
        raise ValueError(
            "checkpoint_every must be an integer >= 0 (0: only at the end), "
            f"got {checkpoint_every!r}"
        )
    if mode == "finetune" and not init_checkpoint:
        raise ValueError(
            "finetune needs an init checkpoint (scratch: the same recipe from a random init)"
        )
    if mode != "finetune" and init_checkpoint:
        raise ValueError(
            f"{mode} starts from a random init; it takes no init checkpoint (use finetune)"
        )


def train_transitions(
    mode: str,
    base: Transitions | None,
    target: Transitions | None,
    steps: int,
    *,
    output_path: str,
    init_checkpoint: str | None = None,
    learning_rate: float | None = None,
    target_fraction: float = FineTuneRecipe().target_fraction,
    seed: int = 0,
    config: QTOptConfig | None = None,
    model_config: QNetworkConfig | None = None,
    device: torch.device | str | None = None,
    datasets: dict | None = None,
    run_dir: str | None = None,
    checkpoint_every: int = 0,
    log_every: int = 10,
    resume: bool = True,
    tensorboard: bool = True,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    num_threads: int | None = None,
    extra_metadata: dict | None = None,
) -> RunResult:
    """Run one training run on loaded transitions; return the result checkpoint.

    ``mode``: "pretrain" (random init from ``seed``, ``config.learning_rate``), "finetune"
    (from ``init_checkpoint``, ``config.finetune_learning_rate()``) or "scratch" (the fine-tune
    recipe from a random init, the paper's baseline). ``learning_rate`` overrides the mode's.
    Batches draw from target with probability ``target_fraction`` (default the recipe's, the
    paper's equal sampling) when both sets are given, else from the one given. The QT-Opt
    settings are ``config``'s as given (a fine-tune's recipe: ``FineTuneRecipe.qtopt_config``).
    ``model_config`` sets the architecture of a random init and is checked against the init
    checkpoint otherwise.
    ``progress(step, metrics)`` runs after every step; ``should_stop()`` before every step:
    when true the state is saved and :class:`.loop.Cancelled` raised. ``num_threads`` sets
    torch's CPU threads of this process. The checkpoint is written atomically to
    ``output_path``.
    """
    _check_arguments(mode, steps, checkpoint_every, init_checkpoint)
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    config = config or QTOptConfig()
    if config.seed != seed:
        config = QTOptConfig.from_dict({**config.to_dict(), "seed": seed})
    dev = torch.device(device) if device is not None else default_device()
    if init_checkpoint:
        loaded = load_checkpoint(init_checkpoint, expected_config=model_config, device=dev)
        model, parent = loaded.model, loaded.checkpoint_id
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = QNetwork(model_config or QNetworkConfig())
        parent = None
    default_lr = config.learning_rate if mode == "pretrain" else config.finetune_learning_rate()
    lr = float(learning_rate) if learning_rate is not None else default_lr
    trainer = QTOptTrainer(model, config, dev, learning_rate=lr)
    data = training_data(trainer, base, target)
    frac = sampled_fraction(data, target_fraction)
    rank0 = trainer.rank == 0
    run_dir = os.fspath(run_dir) if run_dir else default_run_dir(output_path)
    state_path = os.path.join(run_dir, STATE_FILE)
    signature = {
        "mode": mode,
        "parent": parent,
        "learning_rate": lr,
        "target_fraction": frac,
        "seed": seed,
        "datasets": datasets or {},
        "world_size": trainer.world_size,
        "num_transitions": {"base": data.n_base, "target": data.n_target},
    }
    start = 0
    if resume and os.path.isfile(state_path):
        saved = load_state(trainer, state_path).get("run", {})
        diffs = {k: (saved.get(k), v) for k, v in signature.items() if saved.get(k) != v}
        if diffs:
            raise ValueError(
                f"run directory {run_dir} holds the state of a different run (saved vs now: "
                f"{diffs}); use another run directory or resume=False (--no-resume) to start over"
            )
        if trainer.step_count > steps:
            raise ValueError(
                f"run directory {run_dir} is at step {trainer.step_count}, beyond the requested "
                f"{steps} steps"
            )
        start = trainer.step_count
    metadata = {
        "parent": parent,
        "kind": mode,
        "datasets": datasets or {},
        "num_transitions": signature["num_transitions"],
        "learning_rate": lr,
        "target_fraction": frac,
        "seed": seed,
        "qtopt_config": config.to_dict(),
        "run_dir": os.path.abspath(run_dir),
        "world_size": trainer.world_size,
        **(extra_metadata or {}),
    }
    if data.location is not None:
        metadata["labelled_transitions"] = dict(zip(("base", "target"), data.labelled))

    def write_state(step: int = 0) -> str | None:
        if rank0:
            save_state(trainer, state_path, {"run": signature})
        return state_path if rank0 else None

    def write_checkpoint(step: int) -> None:
        write_state()
        if rank0:
            save_checkpoint(
                os.path.join(run_dir, "checkpoints", f"step_{step:07d}.safetensors"),
                exported_network(trainer),
                {**metadata, "steps": step, "final": False},
            )

    writer = _writer(run_dir, start) if (tensorboard and rank0) else None

    def log(step: int, means: dict[str, float], m: dict[str, float]) -> None:
        for k, v in means.items():
            writer.add_scalar(f"train/{k}", v, step)
        writer.add_scalar("sampling/target_fraction", m["target_fraction"], step)
        writer.add_scalar("sampling/base_fraction", m["base_fraction"], step)
        writer.add_scalar("train/learning_rate", lr, step)
        writer.add_scalar("perf/steps_per_s", m["steps_per_s"], step)

    try:
        summary = run_steps(
            trainer,
            data,
            steps,
            frac,
            progress=progress,
            should_stop=should_stop,
            on_cancel=write_state,
            log_every=log_every,
            on_log=log if writer is not None else None,
            checkpoint_every=checkpoint_every,
            on_checkpoint=write_checkpoint,
        )
    finally:
        if writer is not None:
            writer.close()
    exported = exported_network(trainer)
    write_state()
    final = {**metadata, "steps": steps, "final": True, "resumed_from": start, "metrics": summary}
    if rank0:
        checkpoint_id = save_checkpoint(output_path, exported, final)
    else:
        checkpoint_id = weights_id(_cpu_state_dict(exported))
    return RunResult(
        checkpoint_id=checkpoint_id,
        checkpoint_path=os.path.abspath(output_path),
        run_dir=run_dir,
        mode=mode,
        steps=steps,
        resumed_from=start,
        metrics=summary,
        parent=parent,
    )


def train(
    mode: str,
    base_paths: Sequence[str],
    target_paths: Sequence[str],
    steps: int,
    *,
    output_path: str,
    strict: bool = False,
    **kwargs: Any,
) -> RunResult:
    """Run ``train_transitions`` on the bags (or dataset folders) at the given paths.

    ``strict``: refuse (DatasetError) a damaged bag or episode instead of training on the rest
    (:func:`.data.load_datasets`).
    """
    base_paths = [os.fspath(p) for p in base_paths or []]
    target_paths = [os.fspath(p) for p in target_paths or []]
    base = load_datasets(base_paths, strict=strict)
    target = load_datasets(target_paths, strict=strict)
    kwargs.setdefault("datasets", {"base": base_paths, "target": target_paths})
    return train_transitions(mode, base, target, steps, output_path=output_path, **kwargs)


def _finished_task(out: str, prev_id: str | None, name: str) -> RunResult | None:
    """Return the result already at ``out`` when it is task ``name`` descending from prev_id."""
    try:
        c = load_checkpoint(out)
    except CheckpointError:
        return None
    if c.metadata.get("parent") != prev_id or c.metadata.get("continual", {}).get("task") != name:
        return None
    return RunResult(
        checkpoint_id=c.checkpoint_id,
        checkpoint_path=os.path.abspath(out),
        run_dir=c.metadata.get("run_dir", ""),
        mode=c.metadata.get("kind", ""),
        steps=int(c.metadata.get("steps", 0)),
        resumed_from=int(c.metadata.get("steps", 0)),
        metrics=c.metadata.get("metrics", {}),
        parent=prev_id,
    )


def continual(
    init_checkpoint: str | None,
    base_paths: Sequence[str],
    tasks: Sequence[tuple[str, Sequence[str]]],
    steps: int,
    *,
    output_dir: str,
    accumulate: bool = False,
    resume: bool = True,
    progress_factory: Callable[[int, str], ProgressFn | None] | None = None,
    load: Callable[[Sequence[str]], Transitions | None] = load_datasets,
    **kwargs: Any,
) -> list[RunResult]:
    """Fine-tune a chain of tasks ``[(name, target paths), ...]``, each from the previous result.

    Task 0 starts from ``init_checkpoint`` (None: from scratch). Base data: ``base_paths``
    (plus every earlier task's data when ``accumulate``). Results go to
    ``output_dir/NN-<name>.safetensors`` with run directories next to them; with ``resume`` a
    task whose result exists (and descends from the previous one) is not trained again and an
    interrupted task resumes.
    """
    if not tasks:
        raise ValueError("continual needs at least one task")
    names = [n for n, _ in tasks]
    for name in names:
        if not name or any(c in name for c in "/\\") or names.count(name) > 1:
            raise ValueError(
                f"task names must be unique and contain no path separators, got {names}"
            )
    os.makedirs(output_dir, exist_ok=True)
    base_paths = [os.fspath(p) for p in base_paths or []]
    results: list[RunResult] = []
    prev_path, prev_id = init_checkpoint, None
    if init_checkpoint:
        prev_id = load_checkpoint(init_checkpoint).checkpoint_id
    earlier: list[str] = []
    chain = [prev_id] if prev_id else []
    for i, (name, paths) in enumerate(tasks):
        out = os.path.join(output_dir, f"{i + 1:02d}-{name}.safetensors")
        paths = [os.fspath(p) for p in paths]
        if not paths:
            raise ValueError(f"task {name!r} has no data paths")
        bases = base_paths + (earlier if accumulate else [])
        done = _finished_task(out, prev_id, name) if resume and os.path.isfile(out) else None
        if done is None:
            done = train_transitions(
                "finetune" if prev_path else "scratch",
                load(bases),
                load(paths),
                steps,
                output_path=out,
                init_checkpoint=prev_path,
                datasets={"base": bases, "target": paths},
                resume=resume,
                progress=progress_factory(i, name) if progress_factory else None,
                extra_metadata={"continual": {"index": i, "task": name, "chain": list(chain)}},
                **kwargs,
            )
        results.append(done)
        chain.append(done.checkpoint_id)
        prev_path, prev_id = out, done.checkpoint_id
        earlier += paths
    return results
