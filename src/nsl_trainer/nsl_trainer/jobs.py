"""Fine-tuning jobs run in a worker process; progress goes back to the parent through a pipe.

Messages sent on the connection (dicts): {"event": "progress", "step", "total_steps", "loss",
"metrics"} (every ``progress_every`` steps), then exactly one of {"event": "succeeded",
"checkpoint_path", "checkpoint_id", "parent_id"}, {"event": "cancelled", "step", "message"} or
{"event": "failed", "message"}. Setting the job's cancel event makes the worker save its state
and stop before the next gradient step (the node terminates it if it does not stop in time).
"""

from __future__ import annotations

import math
import multiprocessing
import traceback
from dataclasses import dataclass
from pathlib import Path

from .config import QTOptConfig
from .loop import Cancelled
from .runs import train


@dataclass
class FineTuneJob:
    """Everything a worker needs to run one fine-tuning job (picklable)."""

    job_id: str
    base_datasets: list[str]
    target_datasets: list[str]
    init_checkpoint: str
    """Empty: random initialisation (the paper's "scratch" comparison: the same recipe)."""
    steps: int
    learning_rate: float
    target_fraction: float
    output_path: str
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    run_dir: str = ""
    """State, periodic checkpoints and TensorBoard logs; empty: next to output_path."""
    checkpoint_every: int = 0
    progress_every: int = 0
    """Steps between progress messages; 0: every 10 steps (about 50 per job for short jobs)."""
    num_threads: int = 0
    """torch CPU threads in the worker; 0: torch's default."""
    policy_weights: str = "online"
    """The network written as the checkpoint: "online" or "polyak" (QTOptConfig.policy_weights)."""


def run_job(job: FineTuneJob, conn, cancel=None) -> None:
    """Run ``job`` in this (worker) process, reporting on ``conn``; ``cancel`` stops it."""
    every = job.progress_every or max(1, min(job.steps // 50, 10))

    def progress(step: int, metrics: dict) -> None:
        if step % every == 0 or step == job.steps:
            conn.send(
                {
                    "event": "progress",
                    "step": int(step),
                    "total_steps": job.steps,
                    "loss": float(metrics.get("loss", math.nan)),
                    "metrics": dict(metrics),
                }
            )

    try:
        result = train(
            "finetune" if job.init_checkpoint else "scratch",
            job.base_datasets,
            job.target_datasets,
            job.steps,
            output_path=job.output_path,
            init_checkpoint=job.init_checkpoint or None,
            learning_rate=job.learning_rate,
            target_fraction=job.target_fraction,
            progress=progress,
            seed=job.seed,
            config=QTOptConfig(
                batch_size=job.batch_size, seed=job.seed, policy_weights=job.policy_weights
            ),
            device=None if job.device == "auto" else job.device,
            run_dir=job.run_dir or None,
            checkpoint_every=job.checkpoint_every,
            num_threads=job.num_threads or None,
            should_stop=(cancel.is_set if cancel is not None else None),
        )
        conn.send(
            {
                "event": "succeeded",
                "checkpoint_path": str(Path(result.checkpoint_path).resolve()),
                "checkpoint_id": result.checkpoint_id,
                "parent_id": result.parent or "",
            }
        )
    except Cancelled as exc:
        conn.send({"event": "cancelled", "step": exc.step, "message": str(exc)})
    except BaseException as exc:  # report every failure to the node, then exit non-zero
        conn.send(
            {
                "event": "failed",
                "message": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        )
        raise SystemExit(1)
    finally:
        conn.close()


def start_job(job: FineTuneJob):
    """Start ``job`` in a fresh (spawned) worker process.

    Returns (process, receiving end of its pipe, cancel event).
    """
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    cancel = ctx.Event()
    proc = ctx.Process(
        target=run_job, args=(job, child_conn, cancel), name=f"finetune-{job.job_id}", daemon=True
    )
    proc.start()
    child_conn.close()
    return proc, parent_conn, cancel
