"""The base policy of a run folder: checkpoints/base.safetensors, written by stage pretrain."""

from __future__ import annotations

from pathlib import Path

from nsl_policy.checkpoint import load_checkpoint

from ..cache import Context


def base_checkpoint(ctx: Context) -> tuple[Path, str]:
    """Return the base policy checkpoint of the pretrain stage and its id."""
    ckpt = ctx.path("checkpoints", "base.safetensors")
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: run the pretrain stage first")
    return ckpt, load_checkpoint(ckpt).checkpoint_id
