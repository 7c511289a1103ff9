"""Training runs: the four modes (pretrain, finetune, scratch, continual) as library calls, with
periodic checkpoints, resume, TensorBoard logs, progress callbacks and cancellation.

A run writes into its run directory (default: ``<output without suffix>.run/``):

    state.safetensors                 training state every ``checkpoint_every`` steps and at the end
                                      (QTOptTrainer.save_state: networks, targets, Adam, step, ...)
    checkpoints/step_0000500.safetensors  policy checkpoints (nsl-qnet format) at the same steps
    tensorboard/                      scalars every ``log_every`` steps (torch.utils.tensorboard)

and finally the policy checkpoint at ``output_path``. Started again with the same arguments, a
run resumes from ``state.safetensors`` at the step it reached (``resume=False`` starts over).
Under torchrun/DDP only rank 0 writes files; every rank trains.
"""

from __future__ import annotations

import collections
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from nsl_collector.transitions import Transitions
from nsl_policy.model import QNetwork, QNetworkConfig, default_device

from .qtopt import METRIC_KEYS, QTOptConfig, QTOptTrainer, _Data, load_datasets

MODES = ("pretrain", "finetune", "scratch", "continual")
STATE_FILE = "state.safetensors"
ProgressFn = Callable[[int, dict], Any]


class Cancelled(Exception):
    """A run stopped on request; its state was saved at ``step`` (resumable)."""

    def __init__(self, step: int, state_path: str | None) -> None:
        super().__init__(
            f"cancelled at step {step}" + (f"; state saved to {state_path}" if state_path else "")
        )
        self.step, self.state_path = step, state_path


@dataclass
class RunResult:
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
    """``<output without its extension>.run`` beside the output. Only the last suffix goes:
    ``lr2.5e-4.safetensors`` -> ``lr2.5e-4.run`` (not ``lr2.run``, which ``lr2.7e-4`` would share).
    """
    p = Path(output_path)
    return str(p.with_name((p.name[: -len(p.suffix)] if p.suffix else p.name) + ".run"))


def _writer(run_dir: str, purge_step: int | None):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"), purge_step=purge_step)


def exported_network(trainer: Any) -> Any:
    """The network a run writes as its checkpoint (``QTOptConfig.policy_weights``)."""
    return trainer.target1 if trainer.config.policy_weights == "polyak" else trainer.model


def train_transitions(
    mode: str,
    base: Transitions | None,
    target: Transitions | None,
    steps: int,
    *,
    output_path: str,
    init_checkpoint: str | None = None,
    learning_rate: float | None = None,
    target_fraction: float = 0.5,
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
    """One training run on loaded transitions. ``mode``:

    - "pretrain": random init (``seed``), learning rate ``config.learning_rate``;
    - "finetune": init from ``init_checkpoint``, learning rate x ``config.finetune_lr_scale`` (0.25);
    - "scratch": the fine-tune recipe (lr, mixing, steps) from a random init (the paper's baseline).

    Batches draw from target with probability ``target_fraction`` (0.5: the paper's equal
    sampling) when both sets are given, else from the one given. ``learning_rate`` overrides the
    mode's default. ``progress(step, metrics)`` runs after every step; ``should_stop()`` before
    every step: when true the state is saved and :class:`Cancelled` raised. Returns the result
    checkpoint (written atomically to ``output_path``).
    """
    from nsl_policy.checkpoint import _cpu_state_dict, load_checkpoint, save_checkpoint, weights_id

    if mode not in ("pretrain", "finetune", "scratch"):
        raise ValueError(
            f"mode must be pretrain, finetune or scratch (continual: use continual()), got {mode!r}"
        )
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 0):
        raise ValueError(
            f"checkpoint_every must be an integer >= 0 (0: only at the end), got {checkpoint_every!r}"
        )
    if not (isinstance(log_every, int) and log_every >= 1):
        raise ValueError(f"log_every must be a positive integer, got {log_every!r}")
    if not (
        isinstance(target_fraction, (int, float))
        and math.isfinite(target_fraction)
        and 0 <= target_fraction <= 1
    ):
        raise ValueError(f"target_fraction must be in [0, 1], got {target_fraction!r}")
    if mode == "finetune" and not init_checkpoint:
        raise ValueError(
            "finetune needs an init checkpoint (scratch: the same recipe from a random init)"
        )
    if mode != "finetune" and init_checkpoint:
        raise ValueError(
            f"{mode} starts from a random init; it takes no init checkpoint (use finetune)"
        )
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    config = config or QTOptConfig()
    if config.seed != seed:
        config = QTOptConfig.from_dict({**config.to_dict(), "seed": seed})
    has_base = base is not None and len(base) > 0
    has_target = target is not None and len(target) > 0
    if not has_base and not has_target:
        raise ValueError("no training data: both base and target data sets are empty")
    frac = float(target_fraction) if (has_base and has_target) else (1.0 if has_target else 0.0)
    dev = torch.device(device) if device is not None else default_device()

    if init_checkpoint:
        loaded = load_checkpoint(init_checkpoint, expected_config=model_config, device=dev)
        model, parent = loaded.model, loaded.checkpoint_id
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = QNetwork(model_config or QNetworkConfig())
        parent = None
    default_lr = (
        config.learning_rate
        if mode == "pretrain"
        else config.finetune_learning_rate()
    )
    lr = float(learning_rate) if learning_rate is not None else default_lr

    trainer = QTOptTrainer(model, config, dev)
    trainer.set_learning_rate(lr)
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
        "num_transitions": {
            "base": len(base) if has_base else 0,
            "target": len(target) if has_target else 0,
        },
    }
    start = 0
    if resume and os.path.isfile(state_path):
        extra = trainer.load_state(state_path)
        saved = extra.get("run", {})
        diffs = {k: (saved.get(k), v) for k, v in signature.items() if saved.get(k) != v}
        if diffs:
            raise ValueError(
                f"run directory {run_dir} holds the state of a different run (saved vs now: {diffs}); "
                "use another run directory or resume=False (--no-resume) to start over"
            )
        if trainer.step_count > steps:
            raise ValueError(
                f"run directory {run_dir} is at step {trainer.step_count}, beyond the requested {steps} steps"
            )
        start = trainer.step_count
    data = _Data(
        base if has_base else None,
        target if has_target else None,
        model.config.image_size,
        trainer.device,
        crop_pad=config.crop_pad if config.augment else 0,
        location=trainer.location_head is not None,
    )
    writer = _writer(run_dir, start) if (tensorboard and rank0) else None
    base_metadata = {
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

    def save_state() -> None:
        if rank0:
            trainer.save_state(state_path, {"run": signature})

    window: list[dict[str, float]] = []
    tail: collections.deque = collections.deque(maxlen=max(1, steps // 10))
    head: list[float] = []
    t_log = time.perf_counter()
    t0 = t_log
    steps_per_s = math.nan
    trainer.model.train()
    try:
        while trainer.step_count < steps:
            if should_stop is not None and should_stop():
                save_state()
                raise Cancelled(trainer.step_count, state_path if rank0 else None)
            m = trainer.train_step(data, frac)
            step = trainer.step_count
            window.append(m)
            tail.append(m)
            if step <= max(1, steps // 10):
                head.append(m["loss"])
            total = max(1, trainer.samples_base + trainer.samples_target)
            m = dict(
                m,
                base_fraction=trainer.samples_base / total,
                target_fraction=trainer.samples_target / total,
                learning_rate=lr,
                steps_per_s=steps_per_s,
            )
            if step % log_every == 0 or step == steps:
                now = time.perf_counter()
                steps_per_s = len(window) / max(now - t_log, 1e-9)
                t_log = now
                m["steps_per_s"] = steps_per_s
                if writer is not None:
                    for k in METRIC_KEYS + (("location_loss",) if "location_loss" in m else ()):
                        writer.add_scalar(
                            f"train/{k}", float(np.mean([w[k] for w in window])), step
                        )
                    writer.add_scalar("sampling/target_fraction", m["target_fraction"], step)
                    writer.add_scalar("sampling/base_fraction", m["base_fraction"], step)
                    writer.add_scalar("train/learning_rate", lr, step)
                    writer.add_scalar("perf/steps_per_s", steps_per_s, step)
                window = []
            if progress is not None:
                progress(step, m)
            if checkpoint_every and step % checkpoint_every == 0 and step < steps:
                save_state()
                if rank0:
                    save_checkpoint(
                        os.path.join(run_dir, "checkpoints", f"step_{step:07d}.safetensors"),
                        exported_network(trainer),
                        {**base_metadata, "steps": step, "final": False},
                    )
    finally:
        if writer is not None:
            writer.close()
    trainer.model.eval()
    exported = exported_network(trainer)
    elapsed = time.perf_counter() - t0
    total = max(1, trainer.samples_base + trainer.samples_target)
    summary: dict[str, Any] = {
        "steps": steps,
        "steps_this_session": steps - start,
        "base_samples": trainer.samples_base,
        "target_samples": trainer.samples_target,
        "base_fraction": trainer.samples_base / total,
        "target_fraction": trainer.samples_target / total,
        "learning_rate": lr,
        "seconds": elapsed,
        "ms_per_step": 1000.0 * elapsed / max(1, steps - start),
    }
    if tail:
        for k in ("loss", "mean_q", "td_error", "mean_target", "location_loss"):
            if k in tail[-1]:
                summary[k] = float(np.mean([t[k] for t in tail]))
    if head:
        summary["initial_loss"] = float(np.mean(head))
    metadata = {
        **base_metadata,
        "steps": steps,
        "final": True,
        "resumed_from": start,
        "metrics": summary,
    }
    save_state()
    if rank0:
        ckpt_id = save_checkpoint(output_path, exported, metadata)
    else:
        ckpt_id = weights_id(_cpu_state_dict(exported))
    return RunResult(
        checkpoint_id=ckpt_id,
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
    **kwargs: Any,
) -> RunResult:
    """``train_transitions`` on the bags (or dataset folders) at the given paths."""
    base_paths = [os.fspath(p) for p in base_paths or []]
    target_paths = [os.fspath(p) for p in target_paths or []]
    base, target = load_datasets(base_paths), load_datasets(target_paths)
    kwargs.setdefault("datasets", {"base": base_paths, "target": target_paths})
    return train_transitions(mode, base, target, steps, output_path=output_path, **kwargs)


def pretrain(
    data_paths: Sequence[str], steps: int, *, output_path: str, **kwargs: Any
) -> RunResult:
    """Pre-train from a random init on ``data_paths`` at the pre-training learning rate."""
    return train("pretrain", data_paths, [], steps, output_path=output_path, **kwargs)


def finetune_run(
    init_checkpoint: str,
    base_paths: Sequence[str],
    target_paths: Sequence[str],
    steps: int,
    *,
    output_path: str,
    **kwargs: Any,
) -> RunResult:
    """Fine-tune ``init_checkpoint`` on base + target (50/50 by default) at 25% of the learning rate."""
    return train(
        "finetune",
        base_paths,
        target_paths,
        steps,
        output_path=output_path,
        init_checkpoint=init_checkpoint,
        **kwargs,
    )


def scratch(
    base_paths: Sequence[str],
    target_paths: Sequence[str],
    steps: int,
    *,
    output_path: str,
    **kwargs: Any,
) -> RunResult:
    """The fine-tune recipe from a random init (the paper's "Scratch" comparison)."""
    return train("scratch", base_paths, target_paths, steps, output_path=output_path, **kwargs)


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
    """Fine-tune a chain of tasks ``[(name, target paths), ...]``: task i starts from task i-1's
    result (task 0 from ``init_checkpoint``; None: from scratch). Base data: ``base_paths``
    (plus every earlier task's data when ``accumulate``). Results go to
    ``output_dir/NN-<name>.safetensors`` with run directories next to them; with ``resume`` a
    task whose result exists (and descends from the previous one) is not trained again and an
    interrupted task resumes.
    """
    from nsl_policy.checkpoint import CheckpointError, load_checkpoint

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
        done = None
        if resume and os.path.isfile(out):
            try:
                c = load_checkpoint(out)
                if (
                    c.metadata.get("parent") == prev_id
                    and c.metadata.get("continual", {}).get("task") == name
                ):
                    done = RunResult(
                        checkpoint_id=c.checkpoint_id,
                        checkpoint_path=os.path.abspath(out),
                        run_dir=c.metadata.get("run_dir", ""),
                        mode=c.metadata.get("kind", ""),
                        steps=int(c.metadata.get("steps", 0)),
                        resumed_from=int(c.metadata.get("steps", 0)),
                        metrics=c.metadata.get("metrics", {}),
                        parent=prev_id,
                    )
            except CheckpointError:
                done = None
        if done is None:
            mode = "finetune" if prev_path else "scratch"
            done = train_transitions(
                mode,
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
