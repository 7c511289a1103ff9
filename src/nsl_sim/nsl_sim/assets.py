"""Generated simulator assets (textures, modified robot descriptions), cached in a temp folder.

Nothing here is committed as a binary: files are generated from code on first use and
written atomically (temp file + rename) into ``$NSL_SIM_CACHE`` or
``<tempdir>/nsl_sim_assets_<uid>``, so concurrent processes can share the cache safely.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import tempfile
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pybullet_data

__all__ = ["cache_dir", "checkerboard_texture", "gripper_sdf"]

_KUKA_DIR = os.path.join(pybullet_data.getDataPath(), "kuka_iiwa")
_GRIPPER_LINKS = (
    "base_link",
    "left_finger",
    "left_finger_base",
    "left_finger_tip",
    "right_finger",
    "right_finger_base",
    "right_finger_tip",
)
_TIP_LINKS = ("left_finger_tip", "right_finger_tip")


def cache_dir() -> str:
    """Folder for generated assets (created on demand)."""
    path = os.environ.get("NSL_SIM_CACHE") or os.path.join(
        tempfile.gettempdir(), f"nsl_sim_assets_{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    )
    os.makedirs(path, exist_ok=True)
    return path


def _atomic_write(path: str, data: bytes) -> None:
    if os.path.exists(path):
        return
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def checkerboard_image(squares: int, colors, size: int = 256) -> np.ndarray:
    """(size, size, 3) uint8 checkerboard with ``squares`` squares per side."""
    idx = np.arange(size) * squares // size
    board = (idx[:, None] + idx[None, :]) % 2
    c = np.rint(np.asarray(colors, dtype=np.float64) * 255).astype(np.uint8)
    return c[board]


def encode_png(img: np.ndarray) -> bytes:
    """Minimal PNG encoder (8-bit RGB, stdlib zlib only): PyBullet's texture loader reads PNG."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def checkerboard_texture(squares: int, colors) -> str:
    """Path of a cached PNG checkerboard texture generated with numpy."""
    img = checkerboard_image(squares, colors)
    key = hashlib.sha1(img.tobytes()).hexdigest()[:16]
    path = os.path.join(cache_dir(), f"checker_{key}.png")
    _atomic_write(path, encode_png(img))
    return path


def _shift_pose(link: ET.Element, dx: float, dy: float, dz: float) -> None:
    pose = link.find("pose")
    if pose is None or pose.text is None:
        raise RuntimeError(f"link {link.get('name')} has no pose")
    v = [float(x) for x in pose.text.split()]
    v[0] += dx
    v[1] += dy
    v[2] += dz
    pose.text = " ".join(f"{x:.6g}" for x in v)


def gripper_sdf(
    finger_extension: float = 0.0,
    offset=(0.0, 0.0, 0.0),
    tip_width_scale: float = 1.0,
    tip_friction: float | None = None,
) -> str:
    """Path of a cached copy of ``kuka_with_gripper2.sdf`` with a modified gripper.

    ``finger_extension`` moves both finger tips further out along the gripper axis (longer
    fingers); ``offset`` moves the whole gripper (palm, fingers) relative to the wrist, in the
    wrist frame (the SDF's model frame at zero joint angles, z along the gripper axis).
    ``tip_width_scale`` scales the tip meshes (visual and collision) across the closing
    direction (the finger joints' axis, y); ``tip_friction`` replaces the tips' lateral
    friction (None keeps the SDF's). Mesh paths are made absolute so the copy loads from anywhere.
    """
    ext = float(finger_extension)
    off = tuple(float(v) for v in offset)
    width = float(tip_width_scale)
    ident = (round(ext, 6),) + tuple(round(v, 6) for v in off)
    if width != 1.0 or tip_friction is not None:  # the stock tips keep their earlier file names
        ident += (round(width, 6), None if tip_friction is None else round(float(tip_friction), 6))
    key = hashlib.sha1(repr(ident).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir(), f"kuka_gripper_{key}.sdf")
    if os.path.exists(path):
        return path
    with open(os.path.join(_KUKA_DIR, "kuka_with_gripper2.sdf"), "r", encoding="utf-8") as fh:
        text = fh.read()
    text = re.sub(r"<uri>\s*/?meshes/", f"<uri>{_KUKA_DIR}/meshes/", text)
    root = ET.fromstring(text)
    links = {link.get("name"): link for link in root.iter("link")}
    for name in _GRIPPER_LINKS:
        _shift_pose(links[name], *off)
    for name in _TIP_LINKS:
        tip = links[name]
        _shift_pose(tip, 0.0, 0.0, ext)
        for scale in tip.iter("scale"):
            scale.text = f"1 {width:.6g} 1"
        if tip_friction is not None:
            friction = tip.find("contact/lateral_friction")
            if friction is None:
                raise RuntimeError(f"link {name} has no contact/lateral_friction")
            friction.text = f"{float(tip_friction):.6g}"
    data = ET.tostring(root, encoding="unicode")
    _atomic_write(path, ('<?xml version="1.0" ?>\n' + data).encode("utf-8"))
    return path
