"""The training loop: QT-Opt steps on loaded data up to a step count.

Every training in the package goes through :func:`run_steps`: the runs (``nsl train``, the
trainer node's jobs, the experiment, the benchmark) and tests that drive a trainer directly.
Hooks let a caller log, checkpoint and save the state for a cancellation; the loop itself
writes no files.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any, Callable

import numpy as np

from nsl_collector.transitions import Transitions

from .data import TrainingData
from .trainer import QTOptTrainer

ProgressFn = Callable[[int, dict[str, float]], Any]
"""``progress(step, metrics)``, called after every step (1-based)."""

SUMMARY_KEYS = ("loss", "mean_q", "td_error", "mean_target")
"""Metrics the summary averages over the last 10% of steps (with the aux losses' metrics)."""


class Cancelled(Exception):
    """A run stopped on request at ``step``; its state went to ``state_path`` (resumable)."""

    def __init__(self, step: int, state_path: str | None) -> None:
        super().__init__(
            f"cancelled at step {step}" + (f"; state saved to {state_path}" if state_path else "")
        )
        self.step, self.state_path = step, state_path


def training_data(
    trainer: QTOptTrainer, base: Transitions | None, target: Transitions | None = None
) -> TrainingData:
    """Return base + target as ``trainer`` trains on them (device, padding, location labels).

    A trainer with a location loss gets labels from ``QTOptConfig.location_labels``: the
    transitions' simulator labels, or hindsight labels of both parts (``nsl_trainer.hindsight``).
    """
    has_base = base is not None and len(base) > 0
    has_target = target is not None and len(target) > 0
    if not has_base and not has_target:
        raise ValueError("no training data: both base and target data sets are empty")
    cfg = trainer.config
    return TrainingData(
        base if has_base else None,
        target if has_target else None,
        trainer.model.config.image_size,
        trainer.device,
        crop_pad=cfg.crop_pad if cfg.augment else 0,
        location=cfg.location_labels if trainer.needs_location else None,
    )


def check_target_fraction(target_fraction: float) -> float:
    """Return ``target_fraction`` as a float; raise ValueError unless it is a number in [0, 1]."""
    if not (
        isinstance(target_fraction, (int, float))
        and not isinstance(target_fraction, bool)
        and math.isfinite(target_fraction)
        and 0 <= target_fraction <= 1
    ):
        raise ValueError(f"target_fraction must be in [0, 1], got {target_fraction!r}")
    return float(target_fraction)


def sampled_fraction(data: TrainingData, target_fraction: float) -> float:
    """Return the target share batches are drawn with: ``target_fraction`` with both parts.

    With only one part every row comes from it (1 for target only, 0 for base only).
    """
    check_target_fraction(target_fraction)
    if data.n_base and data.n_target:
        return float(target_fraction)
    return 1.0 if data.n_target else 0.0


def run_steps(
    trainer: QTOptTrainer,
    data: TrainingData,
    total_steps: int,
    target_fraction: float = 0.5,
    *,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_cancel: Callable[[int], str | None] | None = None,
    log_every: int = 10,
    on_log: Callable[[int, dict[str, float], dict[str, float]], None] | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train until ``trainer.step_count`` reaches ``total_steps``; return summary metrics.

    Batches draw target rows with ``sampled_fraction(data, target_fraction)``.
    ``progress(step, metrics)`` runs after every step with the step's metrics plus the sampled
    fractions so far, the learning rate and steps/s. ``should_stop()`` runs before every step:
    when true, ``on_cancel(step)`` saves what it wants and returns the state's path, and
    :class:`Cancelled` is raised. Every ``log_every`` steps ``on_log(step, means, metrics)``
    gets the metrics' means since the last call; every ``checkpoint_every`` steps (0: never;
    not at the end) ``on_checkpoint(step)`` runs. The summary: sample counts and fractions of
    the whole run, ``loss`` / ``mean_q`` / ``td_error`` / ``mean_target`` (and the aux losses'
    metrics) averaged over the last 10% of ``total_steps``, ``initial_loss`` over the first
    10% (when this call ran them), and timing.
    """
    if not (isinstance(total_steps, int) and not isinstance(total_steps, bool)):
        raise ValueError(f"total_steps must be an integer, got {total_steps!r}")
    if trainer.step_count > total_steps:
        raise ValueError(
            f"the trainer is at step {trainer.step_count}, beyond total_steps={total_steps}"
        )
    if not (isinstance(log_every, int) and log_every >= 1):
        raise ValueError(f"log_every must be a positive integer, got {log_every!r}")
    frac = sampled_fraction(data, target_fraction)
    lr = trainer.learning_rate
    start = trainer.step_count
    tenth = max(1, total_steps // 10)
    window: list[dict[str, float]] = []
    tail: collections.deque = collections.deque(maxlen=tenth)
    head: list[float] = []
    t_log = t0 = time.perf_counter()
    steps_per_s = math.nan
    trainer.model.train()
    while trainer.step_count < total_steps:
        if should_stop is not None and should_stop():
            state_path = on_cancel(trainer.step_count) if on_cancel is not None else None
            raise Cancelled(trainer.step_count, state_path)
        raw = trainer.train_step(data, frac)
        step = trainer.step_count
        window.append(raw)
        tail.append(raw)
        if step <= tenth:
            head.append(raw["loss"])
        total = max(1, trainer.samples_base + trainer.samples_target)
        m = dict(
            raw,
            base_fraction=trainer.samples_base / total,
            target_fraction=trainer.samples_target / total,
            learning_rate=lr,
            steps_per_s=steps_per_s,
        )
        if step % log_every == 0 or step == total_steps:
            now = time.perf_counter()
            steps_per_s = len(window) / max(now - t_log, 1e-9)
            t_log = now
            m["steps_per_s"] = steps_per_s
            if on_log is not None:
                on_log(step, {k: float(np.mean([w[k] for w in window])) for k in raw}, m)
            window = []
        if progress is not None:
            progress(step, m)
        if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
            if on_checkpoint is not None:
                on_checkpoint(step)
    trainer.model.eval()
    elapsed = time.perf_counter() - t0
    total = max(1, trainer.samples_base + trainer.samples_target)
    summary: dict[str, Any] = {
        "steps": total_steps,
        "steps_this_session": total_steps - start,
        "base_samples": trainer.samples_base,
        "target_samples": trainer.samples_target,
        "base_fraction": trainer.samples_base / total,
        "target_fraction": trainer.samples_target / total,
        "learning_rate": lr,
        "seconds": elapsed,
        "ms_per_step": 1000.0 * elapsed / max(1, total_steps - start),
    }
    averaged = SUMMARY_KEYS + tuple(
        a.metric for a in trainer.aux_losses.values() if a.metric is not None
    )
    if tail:
        for k in averaged:
            if k in tail[-1]:
                summary[k] = float(np.mean([t[k] for t in tail]))
    if head:
        summary["initial_loss"] = float(np.mean(head))
    return summary
