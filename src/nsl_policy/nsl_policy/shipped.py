"""The base checkpoint shipped with nsl_policy: what ``nsl demo`` and the experiment start from."""

from __future__ import annotations

from pathlib import Path

#: Package data: installed beside this module and to share/nsl_policy/checkpoints/.
SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"


def base_checkpoint() -> Path:
    """Path of the shipped base Q-function checkpoint (it may be absent in a bare checkout)."""
    return SHIPPED_DIR / "base.safetensors"
