"""On-disk cache of decoded transitions, one entry per bag.

Decoding a bag (MCAP scan + CDR decoding of every StepRecord) is the slow part of loading a
dataset; the cache stores the result per bag as plain ``.npy`` arrays that load at disk speed.

* Location: ``cache_dir`` argument, else ``$NSL_DATASET_CACHE``, else
  ``$XDG_CACHE_HOME/nsl/transitions`` (``~/.cache/nsl/transitions``). Never inside the
  dataset, so bags stay as recorded and the repository stays clean.
* Key: the bag's resolved path, the reader's action scaling and the cache format version. An
  entry is valid only while the bag's fingerprint matches: for every file of the bag
  (metadata.yaml and the .mcap files) its name, size, mtime (ns) and a SHA-256 of its first and
  last 256 KiB (``verify="full"``: of the whole file). Closing a recording (metadata.yaml appears),
  appending to it, rewriting it or touching it all invalidate the entry.
* Writes are atomic (temporary directory + rename); a stale entry for the same bag is replaced.
  A damaged entry is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .transitions import Transitions

CACHE_VERSION = 2
"""2: entries hold the damage report, and bags are read with the value checks (version 1
entries may hold clipped non-finite actions)."""
_ARRAYS = ("image", "state", "action", "reward", "done", "next_index", "episode")
_EDGE = 1 << 18


def default_cache_dir() -> Path:
    env = os.environ.get("NSL_DATASET_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "nsl" / "transitions"


def _file_digest(path: Path, size: int, full: bool) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if full or size <= 2 * _EDGE:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        else:
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def bag_fingerprint(bag: Path, *, full: bool = False) -> list:
    """[(file name, size, mtime ns, sha256 of head+tail or whole)] of a bag's files."""
    if bag.is_file():
        files = [bag]
    else:
        files = sorted(
            [p for p in bag.glob("*.mcap")] + [p for p in (bag / "metadata.yaml",) if p.is_file()]
        )
    out = []
    for f in files:
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns, _file_digest(f, st.st_size, full)])
    return out


class TransitionCache:
    def __init__(self, cache_dir: str | Path | None = None, *, verify: str = "fast") -> None:
        if verify not in ("fast", "full"):
            raise ValueError(f"verify must be 'fast' or 'full', got {verify!r}")
        self.root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.full = verify == "full"
        self.hits = 0
        self.misses = 0

    def _entry(self, bag: Path, action_space) -> tuple[Path, str]:
        ident = json.dumps(
            [
                str(bag.resolve()),
                float(action_space.max_translation),
                float(action_space.max_rotation),
                CACHE_VERSION,
            ]
        )
        return self.root / hashlib.sha256(ident.encode()).hexdigest()[:32], ident

    def get(self, bag: Path, action_space) -> tuple[Transitions, dict] | None:
        entry, ident = self._entry(bag, action_space)
        meta_file = entry / "meta.json"
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if meta.get("ident") != ident or meta.get("fingerprint") != bag_fingerprint(
                bag, full=self.full
            ):
                self.misses += 1
                return None
            arrays = {k: np.load(entry / f"{k}.npy", allow_pickle=False) for k in _ARRAYS}
            tr = Transitions(**arrays)
        except (OSError, ValueError, KeyError, TypeError):
            self.misses += 1
            return None
        self.hits += 1
        return tr, meta

    def put(self, bag: Path, action_space, tr: Transitions, meta: dict, fingerprint: list) -> None:
        entry, ident = self._entry(bag, action_space)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            for k in _ARRAYS:
                np.save(tmp / f"{k}.npy", getattr(tr, k), allow_pickle=False)
            (tmp / "meta.json").write_text(
                json.dumps({**meta, "ident": ident, "fingerprint": fingerprint}), encoding="utf-8"
            )
            if entry.exists():
                shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        except OSError:
            # A cache that cannot be written (read-only, full disk) only costs speed.
            shutil.rmtree(locals().get("tmp", self.root / ".none"), ignore_errors=True)

    def clear(self) -> int:
        """Remove every entry; returns how many."""
        if not self.root.is_dir():
            return 0
        n = 0
        for p in self.root.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        return n
