"""nsl_msgs message types for the ROS-free dataset library (rosbags typestores).

Writing registers the ``.msg`` files of nsl_msgs (found by :func:`find_msg_dir`); reading never
needs them: it builds its types from the message definitions stored in the bag itself.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from nsl_common.names import EPISODE_RESULTS_TOPIC, STEP_RECORDS_TOPIC, bag_topic

from .errors import DatasetError

PACKAGE = "nsl_msgs"
STEP_RECORD = "nsl_msgs/msg/StepRecord"
EPISODE_RESULT = "nsl_msgs/msg/EpisodeResult"
STEP_TOPIC = bag_topic(STEP_RECORDS_TOPIC)
RESULT_TOPIC = bag_topic(EPISODE_RESULTS_TOPIC)

# Preferred base stores for the standard types (std_msgs, sensor_msgs, builtin_interfaces): the
# project runs ROS 2 Kilted; those messages are identical (same type hashes) in Jazzy and later.
_BASE_STORES = ("ROS2_KILTED", "ROS2_JAZZY", "ROS2_LYRICAL", "LATEST")


def base_store() -> Stores:
    for name in _BASE_STORES:
        if hasattr(Stores, name):
            return getattr(Stores, name)
    raise DatasetError("rosbags has no ROS 2 typestore (need rosbags >= 0.10)")


def find_msg_dir() -> Path:
    """Directory holding nsl_msgs' ``.msg`` files.

    Looked up, in order: the ament index (``share/nsl_msgs/msg`` of an installed, sourced
    workspace), ``NSL_MSGS_DIR``, then the running interpreter's prefix (the NSL virtualenv is
    itself the install prefix of nsl_msgs, also when AMENT_PREFIX_PATH is not set).
    """
    try:  # optional: ament_index_python is there only in a ROS 2 environment
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        pass
    else:
        try:
            d = Path(get_package_share_directory(PACKAGE)) / "msg"
        except Exception:  # PackageNotFoundError, or a broken AMENT_PREFIX_PATH
            d = None
        if d is not None and any(d.glob("*.msg")):
            return d
    env = os.environ.get("NSL_MSGS_DIR")
    if env:
        d = Path(env).expanduser()
        if not d.is_dir() or not any(d.glob("*.msg")):
            raise DatasetError(
                f"NSL_MSGS_DIR={env!r} is not a directory holding nsl_msgs .msg files"
            )
        return d
    d = Path(sys.prefix) / "share" / PACKAGE / "msg"
    if any(d.glob("*.msg")):
        return d
    raise DatasetError(
        "cannot find the nsl_msgs .msg files: "
        "source a ROS 2 workspace where nsl_msgs is installed "
        "(ament index), or set NSL_MSGS_DIR to the nsl_msgs msg directory "
        "(e.g. export NSL_MSGS_DIR=<repo>/src/nsl_msgs/msg), or pass msg_dir explicitly"
    )


def writer_typestore(msg_dir: str | Path | None = None) -> Typestore:
    """Build a typestore: the standard ROS 2 types plus every nsl_msgs ``.msg`` in ``msg_dir``."""
    d = Path(msg_dir) if msg_dir is not None else find_msg_dir()
    files = sorted(d.glob("*.msg"))
    if not files:
        raise DatasetError(f"{d}: no .msg files (expected the nsl_msgs msg directory)")
    types = {}
    for f in files:
        try:
            types.update(
                get_types_from_msg(f.read_text(encoding="utf-8"), f"{PACKAGE}/msg/{f.stem}")
            )
        except Exception as exc:
            raise DatasetError(f"{f}: cannot parse message definition: {exc}") from exc
    store = get_typestore(base_store())
    store.register(types)
    for name in (STEP_RECORD, EPISODE_RESULT):
        if name not in store.fielddefs:
            raise DatasetError(f"{d}: {name.rsplit('/', 1)[-1]}.msg is missing")
    return store


_reader_cache: dict[tuple, Typestore] = {}
_reader_lock = threading.Lock()


def reader_typestore(schemas: list[tuple[str, str, bytes]]) -> Typestore:
    """Build a typestore only from message definitions stored in a bag.

    ``schemas``: (type name, encoding "ros2msg"/"ros2idl", definition text) of the types to
    decode. Cached, so many bags written with the same definitions share compiled decoders.
    """
    key = tuple(sorted(schemas))
    with _reader_lock:
        store = _reader_cache.get(key)
        if store is not None:
            return store
        store = get_typestore(Stores.EMPTY)
        for name, encoding, data in key:
            text = data.decode("utf-8")
            if encoding == "ros2msg":
                types = get_types_from_msg(text, name)
            elif encoding == "ros2idl":
                types = get_types_from_idl(text)
            else:
                raise ValueError(f"unsupported schema encoding {encoding!r} for {name}")
            # Several schemas carry the same dependency (std_msgs/Header...); first one wins.
            store.register({k: v for k, v in types.items() if k not in store.fielddefs})
        if len(_reader_cache) > 64:
            _reader_cache.clear()
        _reader_cache[key] = store
        return store
