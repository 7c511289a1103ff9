"""Finding bags: dataset folders, bag directories, single .mcap files and episode manifests.

Discovery never lets one file hide others: a folder is one bag only when it holds a
metadata.yaml, or .mcap files and no bag below it. A folder with bags below it is a dataset
root: every bag under it is found, and a loose .mcap file beside them is read as a bag of its
own, with a note that the layout is unexpected (notes are logged as warnings).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from .errors import DatasetError
from .recorder import SESSION_FILE

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "nsl-episode-manifest"


def is_manifest(path: str | Path) -> bool:
    """Whether ``path`` is an episode manifest file (a .yaml that is not a metadata.yaml)."""
    p = Path(path)
    return p.is_file() and p.suffix in (".yaml", ".yml") and p.name != "metadata.yaml"


def read_manifest(path: str | Path) -> dict[Path, list[str]]:
    """Read an episode manifest (what ``nsl data split`` writes): {bag: [episode ids]}.

    Bag paths in the file are relative to the manifest's folder (or absolute).
    """
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, ValueError, RecursionError) as exc:
        raise DatasetError(f"{p}: cannot read the manifest: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"{p}: not an episode manifest (format: {MANIFEST_FORMAT} expected)")
    out: dict[Path, list[str]] = {}
    try:
        for item in doc["bags"]:
            bag = Path(item["bag"])
            out.setdefault(bag if bag.is_absolute() else p.parent / bag, []).extend(
                str(e) for e in item["episodes"]
            )
    except (KeyError, TypeError) as exc:
        raise DatasetError(
            f"{p}: malformed manifest (bags: [{{bag, episodes}}] expected): {exc}"
        ) from exc
    return out


def _holds_bag_below(d: Path) -> bool:
    return any(
        m.parent != d for m in (*d.rglob("metadata.yaml"), *d.rglob("*.mcap")) if m.is_file()
    )


def discover(path: str | Path) -> tuple[list[Path], list[str]]:
    """(bags under ``path``, notes on an unexpected layout); see the module doc.

    ``path`` is a bag directory, a single .mcap file, a metadata.yaml, a dataset folder or an
    episode manifest. DatasetError if it is missing or holds no bag.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory (missing)")
    if p.is_file():
        if is_manifest(p):
            return list(read_manifest(p)), []
        if p.name == "metadata.yaml":
            return [p.parent], []
        if p.suffix != ".mcap":
            raise DatasetError(f"{p}: not a bag (expected a rosbag2 directory or an .mcap file)")
        return [p], []
    notes: list[str] = []
    loose = sorted(m for m in p.glob("*.mcap") if m.is_file())
    if (p / "metadata.yaml").is_file() or (loose and not _holds_bag_below(p)):
        if _holds_bag_below(p):
            notes.append(f"{p}: is a bag and also holds bags below it; those are not read")
        return [p], notes
    dirs = {m.parent for m in p.rglob("metadata.yaml") if m.is_file() and m.parent != p}
    dirs |= {m.parent for m in p.rglob("*.mcap") if m.is_file() and m.parent != p}
    bags = sorted(d for d in dirs if not any(a in dirs for a in d.parents if a != d))
    nested = sorted(dirs - set(bags))
    for d in nested:
        notes.append(f"{d}: a bag inside the bag {next(a for a in d.parents if a in dirs)}")
    bags += nested
    for m in loose:
        notes.append(
            f"{m}: a loose .mcap file at the dataset root beside session folders "
            "(unexpected layout); read as a bag of its own"
        )
    bags += loose
    if not bags:
        raise DatasetError(
            f"{p}: no rosbag2 bag in this directory (no metadata.yaml or .mcap file)"
        )
    return bags, notes


def find_bags(path: str | Path) -> list[Path]:
    """Bags under ``path`` (see :func:`discover`), layout notes logged as warnings."""
    bags, notes = discover(path)
    for note in notes:
        log.warning("%s", note)
    return bags


def bag_files(bag: Path, notes: list[str] | None = None) -> tuple[list[Path], bool, str, dict]:
    """(MCAP files, closed?, message compression, metadata.yaml info) of one bag.

    ``notes``: where an unexpected file layout is reported (an .mcap the metadata does not list).
    """
    if bag.is_file():
        return [bag], False, "", {}  # closed-ness decided by the footer
    meta = bag / "metadata.yaml"
    if not meta.is_file():
        files = sorted(f for f in bag.glob("*.mcap") if f.is_file())
        if not files:
            raise DatasetError(f"{bag}: no metadata.yaml and no .mcap file: not a rosbag2 bag")
        return files, False, "", {}
    try:
        doc = yaml.safe_load(meta.read_text(encoding="utf-8"))
        info = doc["rosbag2_bagfile_information"]
        storage = info.get("storage_identifier", "")
        rel = [str(r) for r in info.get("relative_file_paths") or []]
        mode = info.get("compression_mode", "") or ""
        fmt = info.get("compression_format", "") or ""
    except Exception as exc:  # noqa: BLE001 - any malformed YAML document is a bad file
        raise DatasetError(f"{meta}: not a valid rosbag2 metadata.yaml: {exc}") from exc
    if storage != "mcap":
        raise DatasetError(f"{bag}: storage {storage!r} is not supported (only MCAP bags)")
    if mode == "file":
        raise DatasetError(
            f"{bag}: file-compressed bags are not supported (decompress the .mcap.{fmt} first)"
        )
    if mode == "message" and fmt != "zstd":
        raise DatasetError(f"{bag}: unsupported message compression {fmt!r}")
    files = [bag / r for r in rel]
    for f in files:
        if not f.is_file():
            raise DatasetError(f"{f}: listed in {meta} but missing")
    if not files:
        raise DatasetError(f"{meta}: lists no storage file")
    if notes is not None:
        for extra in sorted(set(bag.glob("*.mcap")) - set(files)):
            notes.append(f"{extra}: not listed in {meta}; not read")
    return files, True, mode, info


def session_metadata(bag: Path, info: dict | None) -> dict:
    """Return the session metadata: the sidecar's, else metadata.yaml's custom_data, or {}."""
    side = (bag if bag.is_dir() else bag.parent) / SESSION_FILE
    if side.is_file():
        try:
            doc = yaml.safe_load(side.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("session"), dict):
                return doc["session"]
        except (yaml.YAMLError, ValueError, OSError, RecursionError):
            pass
    custom = (info or {}).get("custom_data") or {}
    if isinstance(custom, dict) and "nsl_session" in custom:
        try:
            doc = json.loads(custom["nsl_session"])
            return doc if isinstance(doc, dict) else {}
        except (ValueError, TypeError, RecursionError):
            pass
    return {}
