"""Fine-tuning jobs: a request checked field by field, then run in a worker process.

:func:`plan_job` turns a FineTune request into a :class:`FineTuneJob` or raises
:class:`RequestRefused` naming the field; it never raises anything else, whatever the request
holds. The worker reports back through a pipe. Messages sent on the connection (dicts):
{"event": "progress", "step", "total_steps", "loss", "metrics"} (every ``progress_every``
steps), {"event": "warning", "message"} for each damaged bag or episode the loader skipped
(naming file, episode and reason) and each set of episodes whose hindsight labels were
skipped, then exactly one of {"event": "succeeded",
"checkpoint_path", "checkpoint_id", "parent_id", "data_warnings"}, {"event": "cancelled",
"step", "message"} or {"event": "failed", "message"}.
Setting the job's cancel event makes the worker save its state and stop before the next
gradient step (the node terminates it if it does not stop in time).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nsl_policy.checkpoint import CheckpointError, load_checkpoint

from .config import QTOptConfig
from .loop import Cancelled, check_target_fraction
from .recipe import FineTuneRecipe
from .runs import train
from .validation import check_dataset

MODES = ("finetune", "scratch")
"""finetune: every job starts from a checkpoint (the request's or the default); scratch: the
same recipe from random weights (the paper's baseline), never announced as a fine-tune."""

MAX_DATA_WARNINGS = 50
"""Distinct loader warnings a job forwards; the rest are counted in one last warning (a dataset
with thousands of damaged episodes must not flood the trainer's log)."""

DATA_WARNING_LOGGERS = ("nsl_collector", "nsl_trainer.hindsight")
"""Loggers whose warnings a job forwards: the loader's (damaged bags and episodes) and the
hindsight labels' (episodes without labels, which still train the Q-function)."""

MAX_LEARNING_RATE = 1.0
"""Requests asking for a larger rate are refused (the node's learning_rate range ends here)."""


class RequestRefused(ValueError):
    """A fine-tune request cannot run: ``field`` names the request field, the message why."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


RECIPE = FineTuneRecipe()
"""The fine-tuning recipe's defaults, which the trainer's own defaults are."""

RECIPE_SETTING_NAMES = {"steps": "default_steps"}
"""Recipe fields that TrainerSettings holds under another name (the rest share the field's)."""


@dataclass(frozen=True)
class TrainerSettings:
    """The trainer's own settings: the defaults and limits requests are checked against.

    The recipe's settings (``default_steps``, ``target_fraction``, ``policy_weights``,
    ``mc_mix``, ``location_weight``, ``location_labels``) default to ``FineTuneRecipe()``'s.
    """

    checkpoint_dir: str
    """Folder of the jobs' checkpoints (and their run folders under runs/)."""
    mode: str = "finetune"
    """One of MODES; finetune, because the product fine-tunes a running policy."""
    default_checkpoint: str = ""
    """Start checkpoint when a request names none; empty: such requests are refused."""
    default_steps: int = RECIPE.steps
    """Gradient steps when a request says 0 (FineTuneRecipe.steps)."""
    max_steps: int = 10_000_000
    """Requests asking for more gradient steps are refused."""
    learning_rate: float = QTOptConfig().learning_rate
    """Pre-training rate; a request without a rate runs at QTOptConfig's fine-tuning share."""
    batch_size: int = QTOptConfig().batch_size
    """Transitions per gradient step."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    checkpoint_every: int = 1000
    """State and a checkpoint in the job's run folder every K steps (0: only at the end)."""
    num_threads: int = 0
    """torch CPU threads of the worker (0: torch's default)."""
    target_fraction: float = RECIPE.target_fraction
    """Share of each batch from the target data when a request says 0
    (FineTuneRecipe.target_fraction)."""
    policy_weights: str = RECIPE.policy_weights
    """Network written as the checkpoint: online or polyak (FineTuneRecipe.policy_weights)."""
    mc_mix: float = RECIPE.mc_mix
    """Weight of the episode's return in the Bellman target (FineTuneRecipe.mc_mix)."""
    location_weight: float = RECIPE.location_weight
    """Weight of the location loss (FineTuneRecipe.location_weight)."""
    location_labels: str = RECIPE.location_labels
    """Labels of the location loss: hindsight or none (FineTuneRecipe.location_labels)."""
    strict_datasets: bool = False
    """Refuse a job whose data holds a damaged bag or episode; False, because one damaged bag
    should not stop a robot from learning on the rest (each skip is a warning in the log)."""

    def __post_init__(self) -> None:
        """Check the settings; raise ValueError naming the first bad one."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be finetune or scratch, got '{self.mode}'")
        if self.mode == "scratch" and self.default_checkpoint:
            raise ValueError(
                "mode scratch trains from random weights; default_checkpoint must be empty, "
                f"got '{self.default_checkpoint}'"
            )
        if not 1 <= self.default_steps <= self.max_steps:
            raise ValueError(
                f"default_steps must be in [1, max_steps={self.max_steps}], "
                f"got {self.default_steps}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got '{self.device}'")
        self.recipe()  # ValueError naming the recipe's field

    def recipe(self) -> FineTuneRecipe:
        """Return the fine-tuning recipe of requests that leave steps and target_fraction 0."""
        return FineTuneRecipe.from_fields(self, names=RECIPE_SETTING_NAMES)

    def check_default_checkpoint(self) -> None:
        """Raise ValueError when default_checkpoint is set and does not load."""
        if self.default_checkpoint:
            problem = _checkpoint_problem(self.default_checkpoint)
            if problem:
                raise ValueError(f"default_checkpoint: {problem}")


@dataclass
class FineTuneJob:
    """Everything a worker needs to run one fine-tuning job (picklable)."""

    job_id: str
    base_datasets: list[str]
    target_datasets: list[str]
    init_checkpoint: str
    """Empty only in mode scratch (random initialisation)."""
    recipe: FineTuneRecipe
    """The job's recipe: the request's steps and target fraction, the trainer's defaults."""
    learning_rate: float
    output_path: str
    mode: str = "finetune"
    """One of MODES (runs.train's mode)."""
    batch_size: int = QTOptConfig().batch_size
    device: str = "auto"
    seed: int = 0
    run_dir: str = ""
    """State, periodic checkpoints and TensorBoard logs; empty: next to output_path."""
    checkpoint_every: int = 0
    progress_every: int = 0
    """Steps between progress messages; 0: every 10 steps (about 50 per job for short jobs)."""
    num_threads: int = 0
    """torch CPU threads in the worker; 0: torch's default."""
    strict_datasets: bool = False
    """Fail on damaged data instead of skipping it (TrainerSettings.strict_datasets)."""

    @property
    def steps(self) -> int:
        """Gradient steps of the job (its recipe's)."""
        return self.recipe.steps

    def qtopt_config(self) -> QTOptConfig:
        """Return the job's QT-Opt settings: its batch size and seed, then its recipe's."""
        return self.recipe.qtopt_config(QTOptConfig(batch_size=self.batch_size, seed=self.seed))


class _ForwardWarnings(logging.Handler):
    """Send the data's warnings on a job's connection, each distinct one once."""

    def __init__(self, conn) -> None:
        super().__init__(logging.WARNING)
        self.conn = conn
        self.sent: set[str] = set()
        self.dropped = 0
        self.closed = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record must not fail the job
            message = str(record.msg)
        if message in self.sent:
            return
        if len(self.sent) >= MAX_DATA_WARNINGS:
            self.dropped += 1
            return
        self.sent.add(message)
        try:
            self.conn.send({"event": "warning", "message": message})
        except Exception:  # noqa: BLE001 - a closed pipe must not fail the job; the end tells
            self.handleError(record)

    @property
    def count(self) -> int:
        """Distinct warnings seen (sent or dropped)."""
        return len(self.sent) + self.dropped

    def close(self) -> None:
        """Send the count of the dropped warnings, if any, and detach."""
        if self.dropped and not self.closed:
            self.conn.send(
                {"event": "warning", "message": f"and {self.dropped} more dataset warning(s)"}
            )
        self.closed = True
        super().close()


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

    data_logs = [logging.getLogger(name) for name in DATA_WARNING_LOGGERS]
    warnings = _ForwardWarnings(conn)
    for log in data_logs:
        log.addHandler(warnings)

    def stop_forwarding() -> None:
        """Send the last warning (the count of the dropped ones) before the final event."""
        for log in data_logs:
            log.removeHandler(warnings)
        warnings.close()

    try:
        result = train(
            job.mode,
            job.base_datasets,
            job.target_datasets,
            job.steps,
            output_path=job.output_path,
            init_checkpoint=job.init_checkpoint or None,
            learning_rate=job.learning_rate,
            target_fraction=job.recipe.target_fraction,
            progress=progress,
            seed=job.seed,
            config=job.qtopt_config(),
            device=None if job.device == "auto" else job.device,
            run_dir=job.run_dir or None,
            checkpoint_every=job.checkpoint_every,
            num_threads=job.num_threads or None,
            should_stop=(cancel.is_set if cancel is not None else None),
            extra_metadata={"job_id": job.job_id},
            strict=job.strict_datasets,
        )
        stop_forwarding()
        conn.send(
            {
                "event": "succeeded",
                "checkpoint_path": str(Path(result.checkpoint_path).resolve()),
                "checkpoint_id": result.checkpoint_id,
                "parent_id": result.parent or "",
                "data_warnings": warnings.count,
            }
        )
    except Cancelled as exc:
        stop_forwarding()
        conn.send({"event": "cancelled", "step": exc.step, "message": str(exc)})
    except BaseException as exc:  # report every failure to the node, then exit non-zero
        stop_forwarding()
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


def _checkpoint_problem(path: str) -> str | None:
    """Why the checkpoint at ``path`` cannot start a job, or None (it loads)."""
    try:
        load_checkpoint(path)
    except CheckpointError as exc:
        return f"'{path}' cannot be used: {exc}"
    except Exception as exc:  # noqa: BLE001 - a request must never raise out of the service
        return f"'{path}' cannot be used: {type(exc).__name__}: {exc}"
    return None


def _dataset_paths(field: str, paths: Sequence[Any], strict: bool) -> list[str]:
    """Return ``paths`` checked one by one (each a usable bag or dataset folder)."""
    checked = []
    for i, path in enumerate(paths):
        name = f"{field}[{i}]"
        if not isinstance(path, str) or not path.strip():
            # Path("") is the working directory: every bag under it, the live recording too.
            raise RequestRefused(name, f"empty path {path!r}; name a bag or dataset folder")
        if "\x00" in path:
            raise RequestRefused(name, f"path {path!r} holds a NUL character")
        try:
            problem = check_dataset(path, strict=strict)  # cheap: no message is decoded
        except Exception as exc:  # noqa: BLE001 - a request must never raise out of the service
            problem = f"dataset '{path}' is unusable: {type(exc).__name__}: {exc}"
        if problem:
            raise RequestRefused(name, problem)
        checked.append(path)
    return checked


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestRefused(field, f"must be a finite number, got {value!r}")
    return float(value)


def plan_job(request: Any, settings: TrainerSettings, job_id: str) -> FineTuneJob:
    """Return the job a FineTune request asks for; raise RequestRefused naming the bad field.

    ``request`` has the FineTune.Request fields. 0 (or empty) means the trainer's default for
    steps, learning_rate, target_fraction and init_checkpoint. In mode finetune a job needs a
    start checkpoint (the request's or ``default_checkpoint``) that loads; in mode scratch a
    request naming one is refused. Nothing but RequestRefused is raised.
    """
    steps = request.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise RequestRefused("steps", f"must be an integer >= 0 (0: default), got {steps!r}")
    if steps > settings.max_steps:
        raise RequestRefused(
            "steps", f"{steps} exceeds this trainer's max_steps ({settings.max_steps})"
        )
    learning_rate = _number("learning_rate", request.learning_rate)
    if not 0 <= learning_rate <= MAX_LEARNING_RATE:
        raise RequestRefused(
            "learning_rate",
            f"must be in (0, {MAX_LEARNING_RATE:g}] (0: default), got {learning_rate:g}",
        )
    fraction = _number("target_fraction", request.target_fraction)
    try:
        target_fraction = check_target_fraction(fraction) if fraction != 0 else None
    except ValueError as exc:
        raise RequestRefused("target_fraction", f"{exc} (0: default)") from None
    recipe = dataclasses.replace(
        settings.recipe(),
        steps=steps or settings.default_steps,
        target_fraction=target_fraction or settings.target_fraction,
    )
    if len(request.target_datasets) == 0:
        raise RequestRefused("target_datasets", "none given; name the new task's bags")
    strict = settings.strict_datasets
    target = _dataset_paths("target_datasets", request.target_datasets, strict)
    base = _dataset_paths("base_datasets", request.base_datasets, strict)
    resolved_target = {os.path.realpath(p) for p in target}
    for i, path in enumerate(base):
        if os.path.realpath(path) in resolved_target:
            raise RequestRefused(f"base_datasets[{i}]", f"'{path}' is also a target dataset")
    init = request.init_checkpoint
    if not isinstance(init, str) or (init and not init.strip()):
        raise RequestRefused("init_checkpoint", f"blank path {init!r}; leave it empty or name one")
    if settings.mode == "scratch" and init:
        raise RequestRefused(
            "init_checkpoint",
            "this trainer runs in mode scratch (random weights); it takes no init checkpoint",
        )
    init = init or settings.default_checkpoint
    if settings.mode == "finetune":
        if not init:
            raise RequestRefused(
                "init_checkpoint",
                "none given and the trainer has no default_checkpoint; a fine-tune starts "
                "from a checkpoint (training from random weights is the trainer's mode scratch)",
            )
        problem = _checkpoint_problem(init)
        if problem:
            raise RequestRefused("init_checkpoint", problem)
    directory = Path(settings.checkpoint_dir)
    return FineTuneJob(
        job_id=job_id,
        base_datasets=base,
        target_datasets=target,
        init_checkpoint=init,
        recipe=recipe,
        learning_rate=learning_rate
        or QTOptConfig(learning_rate=settings.learning_rate).finetune_learning_rate(),
        output_path=str(directory / f"{settings.mode}-{job_id}.safetensors"),
        mode=settings.mode,
        batch_size=settings.batch_size,
        device=settings.device,
        run_dir=str(directory / "runs" / job_id),
        checkpoint_every=settings.checkpoint_every,
        num_threads=settings.num_threads,
        strict_datasets=settings.strict_datasets,
    )


def describe(job: FineTuneJob) -> str:
    """Return the job's recipe in one line for the log (mode, steps, rate, data mix, options)."""
    r = job.recipe
    if not job.base_datasets:
        mix = "target data only"
    else:
        mix = f"target fraction={r.target_fraction:g}"
    start = f"from {job.init_checkpoint}" if job.init_checkpoint else "from random weights"
    location = (
        f"location loss {r.location_weight:g} on {r.location_labels} labels"
        if r.uses_location
        else "no location loss"
    )
    damage = "damaged data refused" if job.strict_datasets else "damaged data skipped"
    return (
        f"{job.mode} {start}: {r.steps} steps, lr={job.learning_rate:g}, {mix}, "
        f"mc_mix={r.mc_mix:g}, {location}, exports the {r.policy_weights} network, {damage}"
    )
