"""Start-up checks of the folders a node writes into."""

from __future__ import annotations

import os
from pathlib import Path


def writable_dir(path: str | os.PathLike, parameter: str) -> Path:
    """Resolve ``path``, create it if missing and check that it is writable.

    Raises ValueError naming ``parameter`` and the path otherwise, so the node refuses to start
    instead of failing on its first write.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        resolved.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{parameter} '{path}' cannot be created: {exc.strerror or exc}") from exc
    if not os.access(resolved, os.W_OK | os.X_OK):
        raise ValueError(f"{parameter} '{path}' is not writable")
    return resolved
