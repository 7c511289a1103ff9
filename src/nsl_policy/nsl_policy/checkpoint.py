"""Checkpoint format: one safetensors file (weights), its header the model config and metadata.

The header carries the model config and the training metadata. Loading never unpickles anything, so
a checkpoint cannot run code.

Header metadata (all strings, as safetensors requires):
    nsl_format     "nsl-qnet"
    format_version "1"
    model_config   JSON of QNetworkConfig.to_dict()
    metadata       JSON: parent checkpoint id, datasets, steps, learning_rate, metrics,
                   created (UTC ISO 8601), format_version, checkpoint_id, plus anything given
    checkpoint_id  first 12 hex digits of the sha256 of the weights (names, dtypes, shapes, bytes)
    content_id     first 12 hex digits of the sha256 of checkpoint_id, model_config and metadata
                   as stored: edited lineage (parent, datasets, job id) changes it

Loading is bounded whatever the bytes: only regular files (a FIFO or device is refused before it
is opened, and the file is opened without blocking), at most ``max_bytes`` (default
MAX_FILE_BYTES) read, a header of at most MAX_HEADER_BYTES, JSON nested at most MAX_JSON_DEPTH
deep, and every failure raised as CheckpointError naming the file. Checkpoints written before
content ids existed (the base shipped before a4af17f4b2e1) load with ``content_verified`` False.

Writes are atomic: a temporary file in the destination folder, fsync, os.replace, fsync of the
folder. A reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import stat
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .action_space import ACTION_DIM, STATE_DIM
from .model import QNetwork, QNetworkConfig

import numpy as np

FORMAT_NAME = "nsl-qnet"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 2 * 1024**3
"""Largest checkpoint file loaded (bytes): some 50 times the Q-network's size, far below the
memory of a robot computer, so a huge or sparse file cannot exhaust it."""
MAX_HEADER_BYTES = 16 * 1024**2
"""Largest safetensors header (bytes): headers hold config and lineage JSON of a few KiB."""
MAX_JSON_DEPTH = 64
"""Deepest JSON nesting accepted: the format nests 3 levels; deeper input is hostile and would
overflow the JSON parser's recursion."""


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
    content_id: str = ""
    """Id over weights, model config and metadata (see the module doc)."""
    content_verified: bool = False
    """The file stated a content id and it matched (False for checkpoints that predate it)."""


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


def content_id(ckpt_id: str, model_config: str, metadata: str) -> str:
    """Content id: sha256 over the weights id and the model config and metadata JSON texts."""
    h = hashlib.sha256()
    for part in (ckpt_id, model_config, metadata):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:12]


def _cpu_state_dict(model: QNetwork) -> dict[str, torch.Tensor]:
    # Standard (NCHW-contiguous) layout on disk, whatever the in-memory format.
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike, model: QNetwork, metadata: dict[str, Any] | None = None
) -> str:
    """Write ``model`` and ``metadata`` (JSON-serialisable) to ``path`` atomically.

    Returns the checkpoint id (the weights id).
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
    config_json = json.dumps(model.config.to_dict(), sort_keys=True)
    header = {
        "nsl_format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "model_config": config_json,
        "metadata": meta_json,
        "checkpoint_id": ckpt_id,
        "content_id": content_id(ckpt_id, config_json, meta_json),
    }
    blob = st_save(tensors, metadata=header)
    atomic_write(path, blob)
    return ckpt_id


def atomic_write(path: str | os.PathLike, blob: bytes) -> None:
    """Write ``blob`` to ``path`` so readers see the old file or the new one, never a part.

    A temporary file in the same folder, fsync, os.replace, then fsync of the folder.
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


def _read_file(path: str, max_bytes: int) -> bytes:
    """Read the file: regular files only, opened without blocking, at most ``max_bytes``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from None
    _check_kind(path, st, max_bytes)
    try:
        # O_NONBLOCK: a FIFO swapped in after the stat cannot block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from None
    try:
        _check_kind(path, os.fstat(fd), max_bytes)
        chunks, total = [], 0
        while total <= max_bytes:
            block = os.read(fd, min(1 << 24, max_bytes + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from None
    finally:
        os.close(fd)
    if total > max_bytes:
        raise CheckpointError(f"checkpoint {path} grew past the {max_bytes}-byte limit")
    return b"".join(chunks)


def _check_kind(path: str, st: os.stat_result, max_bytes: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(
            f"checkpoint {path} is not a regular file (a FIFO, socket or device): refused"
        )
    if st.st_size > max_bytes:
        raise CheckpointError(
            f"checkpoint {path} is {st.st_size} bytes, over the {max_bytes}-byte limit"
        )


def _json_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text (strings ignored), without recursion."""
    raw = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    quote = raw == ord('"')
    if quote.any():
        # A quote is escaped when an odd run of backslashes precedes it.
        idx = np.arange(len(raw))
        last_other = np.maximum.accumulate(np.where(raw != ord("\\"), idx, -1))
        run_before = np.zeros(len(raw), dtype=np.int64)
        run_before[1:] = idx[:-1] - last_other[:-1]
        quote &= run_before % 2 == 0
        inside = (np.cumsum(quote) % 2 == 1) & ~quote
    else:
        inside = np.zeros(len(raw), dtype=bool)
    step = np.zeros(len(raw), dtype=np.int64)
    step[np.isin(raw, (ord("["), ord("{")))] = 1
    step[np.isin(raw, (ord("]"), ord("}")))] = -1
    step[inside] = 0
    return int(np.cumsum(step).max(initial=0))


def _json(path: str, text: Any, what: str) -> Any:
    """Parse ``text`` (a JSON str) with bounded nesting; CheckpointError naming ``what``."""
    if not isinstance(text, str):
        raise CheckpointError(f"checkpoint {path} has a malformed {what} (not a JSON string)")
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(
            f"checkpoint {path} has {what} nested {depth} deep (at most {MAX_JSON_DEPTH})"
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path} has unreadable {what}: {e}") from None


def _read_header(path: str, blob: bytes) -> dict[str, str]:
    if len(blob) < 8:
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a safetensors file ({len(blob)} bytes)"
        )
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or n > MAX_HEADER_BYTES or 8 + n > len(blob):
        raise CheckpointError(
            f"checkpoint {path} is not a valid safetensors file (header length {n}, file size "
            f"{len(blob)}, at most {MAX_HEADER_BYTES}): truncated, garbage, or another format "
            "(e.g. a pickle)"
        )
    try:
        text = blob[8 : 8 + n].decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"checkpoint {path} has an unreadable safetensors header: {e}"
        ) from e
    header = _json(path, text, "safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path} has a malformed safetensors header")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"checkpoint {path} has malformed header metadata")
    return meta


def load_checkpoint(
    path: str | os.PathLike,
    expected_config: QNetworkConfig | None = None,
    device: torch.device | str = "cpu",
    *,
    max_bytes: int = MAX_FILE_BYTES,
) -> LoadedCheckpoint:
    """Load and check a checkpoint; raise only CheckpointError, naming the file and why.

    ``max_bytes``: the largest file accepted (see MAX_FILE_BYTES).
    """
    try:
        path = os.fspath(path)
    except TypeError as e:
        raise CheckpointError(f"checkpoint path {path!r} is not a path: {e}") from None
    try:
        return _load(path, expected_config, device, max_bytes)
    except CheckpointError:
        raise
    except (Exception, RecursionError) as e:  # noqa: BLE001 - the loader's one error type
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded: {type(e).__name__}: {e}"
        ) from None


def _load(path: str, expected_config, device, max_bytes: int) -> LoadedCheckpoint:
    blob = _read_file(path, max_bytes)
    header = _read_header(path, blob)
    if header.get("nsl_format") != FORMAT_NAME:
        raise CheckpointError(
            f"checkpoint {path} is not an NSL Q-network checkpoint (no "
            f"nsl_format={FORMAT_NAME!r} in its header)"
        )
    try:
        version = int(header.get("format_version", "-1"))
    except ValueError:
        version = -1
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {header.get('format_version')!r}; this code "
            f"reads {FORMAT_VERSION}"
        )
    if "model_config" not in header:
        raise CheckpointError(f"checkpoint {path} has no model_config in its header")
    try:
        config = QNetworkConfig.from_dict(_json(path, header["model_config"], "model_config"))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any config the class refuses is invalid
        raise CheckpointError(f"checkpoint {path} has an invalid model_config: {e}") from e
    if expected_config is not None and config != expected_config:
        diffs = ", ".join(
            f"{k}: checkpoint {a!r} vs expected {b!r}"
            for k, (a, b) in config.differences(expected_config).items()
        )
        raise CheckpointError(f"checkpoint {path} has an incompatible model config ({diffs})")
    metadata = _json(path, header.get("metadata", "{}"), "metadata JSON")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {path} metadata is not a JSON object")
    try:
        tensors = st_load(blob)
    except (SafetensorError, Exception) as e:  # noqa: BLE001 - any parse failure is a bad file
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {e}") from e
    with torch.device("meta"):  # shapes only: a hostile config allocates nothing
        expected = QNetwork(config).state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {path} does not match the architecture: missing tensors {missing}, "
            f"unexpected tensors {extra}"
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
            f"checkpoint {path} says its id is {stated} but its weights hash to {ckpt_id} "
            "(modified or corrupt)"
        )
    content = content_id(ckpt_id, header["model_config"], header.get("metadata", "{}"))
    stated_content = header.get("content_id")
    if stated_content is not None and stated_content != content:
        raise CheckpointError(
            f"checkpoint {path} says its content id is {stated_content} but its weights, "
            f"config and metadata hash to {content}: the lineage (parent, datasets, job id) "
            "or config was edited"
        )
    model = QNetwork(config)
    model.load_state_dict(tensors)
    model.to(device=torch.device(device), memory_format=torch.channels_last)
    model.eval()
    return LoadedCheckpoint(
        model=model,
        config=config,
        metadata=metadata,
        checkpoint_id=ckpt_id,
        path=path,
        content_id=content,
        content_verified=stated_content is not None,
    )


@torch.no_grad()
def validate_for_swap(
    loaded: LoadedCheckpoint, expected_config: QNetworkConfig | None = None, seed: int = 0
) -> None:
    """Raise CheckpointError unless ``loaded`` fits and passes a smoke inference.

    It must fit ``expected_config`` and give finite output on a fixed pseudo-random image,
    state and a few actions.
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
            f"checkpoint {loaded.path} gives non-finite or mis-shaped output in the smoke "
            "inference"
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
