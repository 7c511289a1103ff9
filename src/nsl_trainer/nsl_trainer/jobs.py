"""Fine-tuning jobs run in a worker process; progress goes back to the parent through a pipe.

Messages sent on the connection (dicts): {"event": "progress", "step", "total_steps", "loss"},
then exactly one of {"event": "succeeded", "checkpoint_path", "checkpoint_id", "parent_id"} or
{"event": "failed", "message"}.
"""
from __future__ import annotations

import math
import multiprocessing
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class FineTuneJob:
    """Everything a worker needs to run one fine-tuning job (picklable)."""

    job_id: str
    base_datasets: list[str]
    target_datasets: list[str]
    init_checkpoint: str
    """Empty: random initialisation (the paper's "scratch" comparison)."""
    steps: int
    learning_rate: float
    target_fraction: float
    output_path: str
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    extra: dict = field(default_factory=dict)


def run_job(job: FineTuneJob, conn) -> None:
    """Worker process entry point."""
    from nsl_trainer.qtopt import QTOptConfig, finetune

    progress_every = max(1, job.steps // 50)

    def progress(step: int, metrics: dict) -> None:
        if step % progress_every == 0 or step == job.steps:
            loss = float(metrics.get("loss", math.nan))
            conn.send({"event": "progress", "step": int(step), "total_steps": job.steps, "loss": loss})

    try:
        checkpoint_id = finetune(
            job.init_checkpoint or None,
            job.base_datasets,
            job.target_datasets,
            job.steps,
            output_path=job.output_path,
            learning_rate=job.learning_rate,
            target_fraction=job.target_fraction,
            progress=progress,
            seed=job.seed,
            config=QTOptConfig(batch_size=job.batch_size),
            device=None if job.device == "auto" else job.device,
        )
        conn.send({"event": "succeeded", "checkpoint_path": str(Path(job.output_path).resolve()), "checkpoint_id": checkpoint_id})
    except BaseException as exc:  # report every failure to the node, then exit non-zero
        conn.send({"event": "failed", "message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        raise SystemExit(1)
    finally:
        conn.close()


def start_job(job: FineTuneJob):
    """Start ``job`` in a fresh (spawned) worker process; returns (process, receiving end)."""
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=run_job, args=(job, child_conn), name=f"finetune-{job.job_id}", daemon=True)
    proc.start()
    child_conn.close()
    return proc, parent_conn


def job_summary(job: FineTuneJob) -> dict:
    return asdict(job)
