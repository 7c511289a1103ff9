"""Checkpoint format: one safetensors file (weights) whose header carries the model config and
the training metadata. Loading never unpickles anything, so a checkpoint cannot run code.

Header metadata (all strings, as safetensors requires):
    nsl_format     "nsl-qnet"
    format_version "1"
    model_config   JSON of QNetworkConfig.to_dict()
    metadata       JSON: parent checkpoint id, datasets, steps, learning_rate, metrics,
                   created (UTC ISO 8601), format_version, checkpoint_id, plus anything given
    checkpoint_id  first 12 hex digits of the sha256 of the weights (names, dtypes, shapes, bytes)

Writes are atomic: a temporary file in the destination folder, fsync, os.replace, fsync of the
folder. A reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .action_space import ACTION_DIM, STATE_DIM
from .model import QNetwork, QNetworkConfig

FORMAT_NAME = "nsl-qnet"
FORMAT_VERSION = 1
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(Exception):
    """A checkpoint that cannot (or must not) be used; the message names the file and why."""


@dataclass
class LoadedCheckpoint:
    model: QNetwork
    config: QNetworkConfig
    metadata: dict[str, Any]
    checkpoint_id: str
    path: str
    extra: dict[str, Any] = field(default_factory=dict)


def weights_id(state_dict: dict[str, torch.Tensor]) -> str:
    """Content id of a set of weights: sha256 over sorted names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        # reshape(-1): a 0-dim tensor (a scalar parameter) cannot be viewed as bytes directly;
        # for every other shape the bytes are the same as before.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


def _cpu_state_dict(model: QNetwork) -> dict[str, torch.Tensor]:
    # Standard (NCHW-contiguous) layout on disk, whatever the in-memory format.
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike, model: QNetwork, metadata: dict[str, Any] | None = None
) -> str:
    """Write ``model`` and ``metadata`` (JSON-serialisable) to ``path`` atomically; returns the
    checkpoint id.
    """
    path = os.fspath(path)
    tensors = _cpu_state_dict(model)
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"refusing to save {path}: tensor {name!r} has non-finite values"
            )
    ckpt_id = weights_id(tensors)
    meta = dict(metadata or {})
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta["format_version"] = FORMAT_VERSION
    meta["checkpoint_id"] = ckpt_id
    try:
        meta_json = json.dumps(meta, sort_keys=True, allow_nan=True, default=str)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"metadata for {path} is not JSON-serialisable: {e}") from e
    header = {
        "nsl_format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(model.config.to_dict(), sort_keys=True),
        "metadata": meta_json,
        "checkpoint_id": ckpt_id,
    }
    blob = st_save(tensors, metadata=header)
    atomic_write(path, blob)
    return ckpt_id


def atomic_write(path: str | os.PathLike, blob: bytes) -> None:
    """Write ``blob`` to ``path`` so readers see the old file or the new one, never a part:
    a temporary file in the same folder, fsync, os.replace, then fsync of the folder.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass  # not every filesystem lets a directory be fsynced


def _read_header(path: str, blob: bytes) -> dict[str, str]:
    if len(blob) < 8:
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a safetensors file ({len(blob)} bytes)"
        )
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or n > _MAX_HEADER or 8 + n > len(blob):
        raise CheckpointError(
            f"checkpoint {path} is not a valid safetensors file (header length {n}, file size {len(blob)}): "
            "truncated, garbage, or another format (e.g. a pickle)"
        )
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"checkpoint {path} has an unreadable safetensors header: {e}"
        ) from e
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path} has a malformed safetensors header")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has malformed header metadata")
    return meta


def load_checkpoint(
    path: str | os.PathLike,
    expected_config: QNetworkConfig | None = None,
    device: torch.device | str = "cpu",
) -> LoadedCheckpoint:
    """Load and check a checkpoint. Raises CheckpointError naming the file and the problem."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a directory, not a file") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    header = _read_header(path, blob)
    try:
        tensors = st_load(blob)
    except (SafetensorError, Exception) as e:  # noqa: BLE001 - any parse failure is a bad file
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from e

    if header.get("nsl_format") != FORMAT_NAME:
        raise CheckpointError(
            f"checkpoint {path} is not an NSL Q-network checkpoint (no nsl_format={FORMAT_NAME!r} in its header)"
        )
    try:
        version = int(header.get("format_version", "-1"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {header.get('format_version')!r}; this code reads {FORMAT_VERSION}"
        )
    if "model_config" not in header:
        raise CheckpointError(f"checkpoint {path} has no model_config in its header")
    try:
        config = QNetworkConfig.from_dict(json.loads(header["model_config"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has an invalid model_config: {e}") from e
    if expected_config is not None and config != expected_config:
        diffs = ", ".join(
            f"{k}: checkpoint {a!r} vs expected {b!r}"
            for k, (a, b) in config.differences(expected_config).items()
        )
        raise CheckpointError(f"checkpoint {path} has an incompatible model config ({diffs})")
    try:
        metadata = json.loads(header.get("metadata", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {path} metadata is not a JSON object")

    model = QNetwork(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {path} does not match the architecture: missing tensors {missing}, unexpected tensors {extra}"
        )
    shaped = [
        f"{k}: {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tensors[k].shape != v.shape
    ]
    if shaped:
        raise CheckpointError(f"checkpoint {path} has mis-shaped tensors ({'; '.join(shaped)})")
    bad_dtype = [
        f"{k}: {tensors[k].dtype}" for k, v in expected.items() if tensors[k].dtype != v.dtype
    ]
    if bad_dtype:
        raise CheckpointError(
            f"checkpoint {path} has tensors of the wrong dtype ({'; '.join(bad_dtype)})"
        )
    nonfinite = [
        k
        for k, t in tensors.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if nonfinite:
        raise CheckpointError(f"checkpoint {path} has non-finite weights in {nonfinite}")
    ckpt_id = weights_id(tensors)
    stated = header.get("checkpoint_id")
    if stated is not None and stated != ckpt_id:
        raise CheckpointError(
            f"checkpoint {path} says its id is {stated} but its weights hash to {ckpt_id} (modified or corrupt)"
        )
    model.load_state_dict(tensors)
    model.to(device=torch.device(device), memory_format=torch.channels_last)
    model.eval()
    return LoadedCheckpoint(
        model=model, config=config, metadata=metadata, checkpoint_id=ckpt_id, path=path
    )


@torch.no_grad()
def validate_for_swap(
    loaded: LoadedCheckpoint, expected_config: QNetworkConfig | None = None, seed: int = 0
) -> None:
    """Raise CheckpointError unless ``loaded`` fits ``expected_config`` and gives finite output on a
    smoke inference (a fixed pseudo-random image, state and a few actions).
    """
    if expected_config is not None and loaded.config != expected_config:
        diffs = ", ".join(
            f"{k}: checkpoint {a!r} vs running {b!r}"
            for k, (a, b) in loaded.config.differences(expected_config).items()
        )
        raise CheckpointError(
            f"checkpoint {loaded.path} does not fit the running policy ({diffs})"
        )
    model = loaded.model
    device = model.device
    g = torch.Generator().manual_seed(seed)
    s = loaded.config.image_size
    images = torch.rand(2, 3, s, s, generator=g).to(device)
    state = torch.rand(2, STATE_DIM, generator=g).to(device)
    actions = (torch.rand(2, 8, ACTION_DIM, generator=g) * 2 - 1).to(device)
    try:
        logits = model.score(model.encode(images), state, actions)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {loaded.path} failed the smoke inference: {e}") from e
    if logits.shape != (2, 8) or not bool(torch.isfinite(logits).all()):
        raise CheckpointError(
            f"checkpoint {loaded.path} gives non-finite or mis-shaped output in the smoke inference"
        )
    if not all(math.isfinite(float(x)) for x in torch.sigmoid(logits).flatten()):
        raise CheckpointError(f"checkpoint {loaded.path} gives non-finite probabilities")


def init_checkpoint(
    path: str | os.PathLike,
    config: QNetworkConfig | None = None,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Write a randomly initialised ("scratch") checkpoint; returns its id."""
    config = config or QNetworkConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = QNetwork(config)
    meta = {
        "parent": None,
        "datasets": {},
        "steps": 0,
        "learning_rate": None,
        "metrics": {},
        "kind": "scratch",
        "seed": seed,
    }
    meta.update(metadata or {})
    return save_checkpoint(path, model, meta)
