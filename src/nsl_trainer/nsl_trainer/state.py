"""Training state save/load: everything a resumed run needs, in one safetensors file.

The file holds the online network, both target networks, the auxiliary losses' modules, Adam's
moments and step counts as tensors; the step counter, sample counts and configs are JSON in the
header. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from nsl_policy.checkpoint import atomic_write

from .config import QTOptConfig
from .trainer import QTOptTrainer

STATE_FORMAT = "nsl-qtopt-state"
STATE_VERSION = 1


def _state_modules(trainer: QTOptTrainer) -> list[tuple[str, torch.nn.Module]]:
    mods = [
        ("model.", trainer.model),
        ("target1.", trainer.target1),
        ("target2.", trainer.target2),
    ]
    return mods + [
        (loss.state_prefix, loss.module)
        for loss in trainer.aux_losses.values()
        if loss.module is not None
    ]


def state_tensors(trainer: QTOptTrainer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return the trainer's state as (tensors for safetensors, JSON-able metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, net in _state_modules(trainer):
        for k, v in net.state_dict().items():
            tensors[prefix + k] = v.detach().to("cpu").contiguous()
    opt = trainer.optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if not torch.is_tensor(v):
                v = torch.tensor(v)
            tensors[f"optim.{pid}.{k}"] = v.detach().to("cpu").contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in opt["param_groups"]
    ]
    meta = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "step": trainer.step_count,
        "samples_base": trainer.samples_base,
        "samples_target": trainer.samples_target,
        "qtopt_config": trainer.config.to_dict(),
        "model_config": trainer.model.config.to_dict(),
        "optimizer_param_groups": groups,
        "rng": "counter-based: stream_seed(seed, rank, step)",
    }
    return tensors, meta


def save_state(
    trainer: QTOptTrainer, path: str | os.PathLike, extra: dict[str, Any] | None = None
) -> None:
    """Write the trainer's state to ``path`` atomically; ``extra`` goes into the metadata."""
    tensors, meta = state_tensors(trainer)
    meta["extra"] = extra or {}
    blob = st_save(
        tensors, metadata={"nsl_format": STATE_FORMAT, "state": json.dumps(meta, default=str)}
    )
    atomic_write(path, blob)


def load_state(trainer: QTOptTrainer, path: str | os.PathLike) -> dict[str, Any]:
    """Restore a state written by ``save_state`` into ``trainer``; return its "extra" metadata.

    The trainer must have the same network and QT-Opt config; raises ValueError naming the
    problem otherwise.
    """
    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise ValueError(f"training state {path} is unreadable: {exc}") from exc
    if header.get("nsl_format") != STATE_FORMAT:
        raise ValueError(f"{path} is not an NSL training state (no nsl_format={STATE_FORMAT!r})")
    meta = json.loads(header["state"])
    if meta.get("version") != STATE_VERSION:
        raise ValueError(
            f"training state {path} has version {meta.get('version')!r}; "
            f"this code reads {STATE_VERSION}"
        )
    if meta["model_config"] != trainer.model.config.to_dict():
        raise ValueError(
            f"training state {path} is for another network: {meta['model_config']} "
            f"vs {trainer.model.config.to_dict()}"
        )
    # A field newer than the state was at its default when the state was written.
    saved = {**QTOptConfig().to_dict(), **meta["qtopt_config"]}
    diffs = {
        k: (saved.get(k), v) for k, v in trainer.config.to_dict().items() if saved.get(k) != v
    }
    if diffs:
        raise ValueError(
            f"training state {path} was written with other QT-Opt settings (state vs now): {diffs}"
        )
    for prefix, net in _state_modules(trainer):
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        net.load_state_dict(sd)  # copies into the existing (channels_last) parameters
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer = trainer.optimizer
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
    for param, st in optimizer.state.items():  # moments back in the parameters' layout
        for name, v in list(st.items()):
            if torch.is_tensor(v) and v.shape == param.shape and v.dim() == 4:
                st[name] = torch.empty_like(param).copy_(v)
    trainer.step_count = int(meta["step"])
    trainer.samples_base = int(meta["samples_base"])
    trainer.samples_target = int(meta["samples_target"])
    return meta.get("extra", {})
