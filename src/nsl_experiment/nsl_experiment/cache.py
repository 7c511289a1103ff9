"""The run context, the cache stamps and the unit keys.

Every unit of work writes a JSON stamp holding a key next to its outputs and is skipped when
the stamp's key matches and the outputs exist. A key hashes CODE_VERSION, the unit's kind, the
config sections it reads and the keys or ids of its inputs, so changing a setting redoes exactly
the units that read its section.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import ExperimentConfig

#: Bumped when the code changes what a unit produces or how keys are made (invalidates caches).
CODE_VERSION = 2


def now() -> str:
    """Return the current UTC time, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def stable_hash(obj: Any) -> str:
    """Short content hash of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
        """Log ``msg`` with the time of day."""
        self.log_fn(f"[experiment {time.strftime('%H:%M:%S')}] {msg}")

    def path(self, *parts: str) -> Path:
        """Return a path inside the run folder."""
        return self.output.joinpath(*parts)


def unit_key(ctx: Context, kind: str, sections: tuple[str, ...], **inputs: Any) -> str:
    """Return the cache key of a unit of ``kind`` that reads config ``sections`` and ``inputs``."""
    return stable_hash(
        {
            "code": CODE_VERSION,
            "kind": kind,
            "config": ctx.config.sections(*sections),
            "inputs": inputs,
        }
    )


def read_json(path: Path) -> dict | None:
    """Return a JSON file's content, None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def read_stamp(stamp: Path, key: str, outputs: list[Path]) -> dict | None:
    """Return the stamp's payload when it holds ``key`` and every output exists, else None."""
    data = read_json(stamp)
    if data is None or data.get("key") != key or not all(p.exists() for p in outputs):
        return None
    return data


def write_stamp(stamp: Path, key: str, payload: dict) -> dict:
    """Write ``payload`` with ``key`` and the time atomically to ``stamp``.

    Returns what it wrote.
    """
    data = {"key": key, "finished": now(), **payload}
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, stamp)
    return data


def hardware() -> dict[str, Any]:
    """Return what the work ran on.

    Training uses CUDA when present, episodes always run on the CPU.
    """
    # imported here, not at the top: the nsl parser reads this module and stays torch-free
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
    """Write the stage stamp stages/<name>.json: ``summary`` plus ``provenance``.

    Provenance is the wall-clock since the stage started, the hardware and the config. A stage
    that found all its work cached keeps the provenance of the invocation that did the work, so
    the report shows what the work cost.
    """
    stamp = ctx.path("stages", f"{name}.json")
    previous = read_json(stamp) or {}
    provenance = previous.get("provenance")
    if ctx.work_done or provenance is None:
        provenance = {
            "wall_clock_s": time.monotonic() - ctx.stage_started,
            "finished": now(),
            "work_units": ctx.work_done,
            "hardware": hardware(),
            "config": ctx.config.to_dict(),
        }
    return write_stamp(stamp, key, {**summary, "provenance": provenance})
