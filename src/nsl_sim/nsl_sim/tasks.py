"""Named challenge tasks (world variations) for the grasping simulator.

The "Never Stop Learning" paper (Julian et al., CoRL 2020) fine-tunes a pre-trained
grasping policy to a set of challenge variations. This module describes every variation as
one generic, documented :class:`TaskConfig` of knobs (surface texture, lighting, gripper
geometry, object appearance, camera pose). :class:`nsl_sim.env.GraspEnv` applies them.

Named tasks (``TASKS``):

``base``
    The nominal world.
``checkerboard``
    Black/white checkerboard texture on the tray and table (generated with numpy and cached
    as a PNG file in a temp folder, nothing binary is committed).
``harsh_light``
    Low, warm, strong directional light with hard shadows and strong specular highlights.
``extend_gripper_1cm``
    Finger tips 1 cm longer (a modified copy of the Kuka SDF is written to a cache folder).
    The arm controller does not know: the fingers hit things 1 cm earlier than expected. As in
    the paper, whose extension also "significantly narrow[ed] its width and compliance", the
    tips are half as wide and grip with less friction (0.5 instead of the stock pads' 0.8).
``offset_gripper_10cm``
    The whole gripper (palm and fingers) sits 10 cm to the side of the wrist, where the
    controller thinks it is (modified SDF copy). Commands and the reported height keep the
    nominal geometry, so the gripper lands 10 cm off target.
``transparent_objects``
    Objects are see-through (alpha 0.25). TinyRenderer ignores alpha, so the env blends a
    background render (tray without objects, arm moved out of view, taken once per episode)
    into the object pixels of the segmentation mask.

``severity`` scales every knob between the nominal world (0.0) and the full variation (1.0);
values above 1.0 exaggerate it (a checkerboard gets finer squares). :meth:`TaskConfig.effective`
returns the scaled values, each kept inside its physical range (:data:`PHYSICAL_BOUNDS`): a
knob that would leave it saturates at the bound and is named in ``EffectiveTask.saturated``
(:meth:`TaskConfig.saturation_severity` is where the first knob saturates), so no severity
makes objects invisible, the scene black or the gripper unable to hold. Whether a task is
still solvable at a severity is measured by :mod:`nsl_sim.solvability`.

User-defined variations load from YAML with :func:`load_task_yaml`, e.g.::

    name: dim_checker
    texture: checkerboard
    checker_squares: 12
    light_color: [0.6, 0.6, 0.7]
    severity: 0.5
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from .severity import PHYSICAL_BOUNDS, EffectiveTask, scale_knobs

__all__ = [
    "PHYSICAL_BOUNDS",
    "TaskConfig",
    "TASKS",
    "get_task",
    "is_task_file",
    "load_task_yaml",
    "task_from_dict",
]

Vec3 = tuple[float, float, float]


# ---------------------------------------------------------------------------------------
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _as_tuple(v: Any) -> tuple:
    if isinstance(v, (list, tuple)):
        return tuple(_as_tuple(x) if isinstance(x, (list, tuple)) else x for x in v)
    raise ValueError(f"expected a sequence, got {v!r}")


def _vec3(v: Any, field_name: str, lo: float = -math.inf, hi: float = math.inf) -> Vec3:
    try:
        t = tuple(v)
    except TypeError:
        raise ValueError(f"TaskConfig.{field_name}: must be 3 numbers, got {v!r}") from None
    if len(t) != 3 or not all(_finite(x) for x in t):
        raise ValueError(f"TaskConfig.{field_name}: must be 3 finite numbers, got {v!r}")
    if not all(lo <= x <= hi for x in t):
        raise ValueError(f"TaskConfig.{field_name}: values must be in {lo}..{hi}, got {v!r}")
    return tuple(float(x) for x in t)  # type: ignore[return-value]


def _lists(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_lists(x) for x in v]
    return v


def image_format(path: str) -> str | None:
    """Return the image format of a file from its first bytes.

    "png", "jpeg", "bmp", "gif"; "tga" by extension (TGA has no signature); None when it is none
    of these or cannot be read. PyBullet's texture loader accepts these formats and silently
    ignores anything else.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if path.lower().endswith(".tga") and len(head) >= 8:
        return "tga"
    return None


#: Nominal light used by every task unless overridden (TinyRenderer's own defaults are
#: implicit; we pass explicit values so that the nominal look is pinned down).
NOMINAL_LIGHT_DIRECTION: Vec3 = (0.3, 0.2, 1.0)
NOMINAL_LIGHT_COLOR: Vec3 = (1.0, 1.0, 1.0)
NOMINAL_AMBIENT = 0.6
NOMINAL_DIFFUSE = 0.35
NOMINAL_SPECULAR = 0.05
#: Lateral friction of the stock Kuka finger tips (kuka_with_gripper2.sdf).
FINGER_FRICTION = 0.8


@dataclass(frozen=True)
class TaskConfig:
    """One world variation. Every field is a knob; the defaults are the nominal world."""

    name: str = "base"
    """Task name (used for dataset folders and logs)."""

    severity: float = 1.0
    """Scales all deviations from the nominal world: 0 = nominal, 1 = the full variation."""

    # --- surface texture -------------------------------------------------------------
    texture: str = "none"
    """Texture of the tray, table and floor: ``"none"`` (stock look), ``"checkerboard"`` (generated
    from ``checker_squares``/``checker_colors``) or the path of an image file (PNG, JPEG, TGA,
    BMP; in a YAML file relative to the YAML file's folder). A missing file is refused here."""
    checker_squares: int = 8
    """Number of checker squares along one side of the texture image. Severity above 1
    multiplies it (finer squares, closer to object size), since the colours cannot get more
    contrasting than black and white."""
    checker_colors: tuple[Vec3, Vec3] = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    """RGB colours (0..1) of the two kinds of squares. Severity blends them toward grey."""

    # --- lighting (passed to getCameraImage) ----------------------------------------
    light_direction: Vec3 = NOMINAL_LIGHT_DIRECTION
    """Direction towards the light, world frame."""
    light_color: Vec3 = NOMINAL_LIGHT_COLOR
    """Light colour, RGB 0..1."""
    light_ambient: float = NOMINAL_AMBIENT
    """Ambient coefficient."""
    light_diffuse: float = NOMINAL_DIFFUSE
    """Diffuse coefficient."""
    light_specular: float = NOMINAL_SPECULAR
    """Specular coefficient."""
    shadows: bool = False
    """Render hard shadows (only when severity > 0)."""

    # --- gripper geometry (modified SDF copy) ---------------------------------------
    finger_extension: float = 0.0
    """Extra length of both finger tips (m), along the gripper axis."""
    gripper_offset: Vec3 = (0.0, 0.0, 0.0)
    """Displacement of the whole gripper from the wrist (m), in the wrist frame
    (x, y lateral, z along the gripper axis). The controller does not know about it."""
    finger_width_scale: float = 1.0
    """Width of the finger tips across the closing direction, as a fraction of the stock tips
    (0.2..1): narrower tips touch less of an object. Severity above 1 narrows further (to 0.3)."""
    finger_friction: float = FINGER_FRICTION
    """Lateral friction coefficient of the finger tips (the stock pads: 0.8); lower slips."""

    # --- objects --------------------------------------------------------------------
    object_alpha: float = 1.0
    """Object opacity 0..1 (1 = opaque); <1 blends the background into object pixels."""
    object_scale: float = 1.0
    """Uniform scale factor of the objects (changes their physics too)."""

    # --- camera ---------------------------------------------------------------------
    camera_offset: Vec3 = (0.0, 0.0, 0.0)
    """Shift of the camera eye (m, tray frame); the camera keeps looking at the tray."""
    camera_noise: float = 0.0
    """Std. dev. (m) of a per-episode random shift of the eye, drawn from the reset seed."""

    def __post_init__(self) -> None:
        def bad(field_name: str, why: str) -> ValueError:
            return ValueError(f"TaskConfig.{field_name}: {why}")

        if not isinstance(self.name, str) or not self.name:
            raise bad("name", "must be a non-empty string")
        if not _finite(self.severity) or self.severity < 0:
            raise bad("severity", f"must be a finite number >= 0, got {self.severity!r}")
        if not isinstance(self.texture, str) or not self.texture:
            raise bad(
                "texture",
                f"must be 'none', 'checkerboard' or an image file path, got {self.texture!r}",
            )
        if self.texture not in ("none", "checkerboard"):
            if not os.path.isfile(self.texture):
                raise bad(
                    "texture",
                    f"texture file not found: {self.texture!r} "
                    "(texture must be 'none', 'checkerboard' or the path of an image file)",
                )
            if image_format(self.texture) is None:
                raise bad("texture", f"{self.texture!r} is not a PNG, JPEG, BMP, GIF or TGA image")
        if not isinstance(self.checker_squares, int) or not 1 <= self.checker_squares <= 256:
            raise bad("checker_squares", f"must be an int in 1..256, got {self.checker_squares!r}")
        cc = _as_tuple(self.checker_colors)
        if len(cc) != 2:
            raise bad("checker_colors", "must be two RGB triples")
        object.__setattr__(
            self, "checker_colors", tuple(_vec3(c, "checker_colors", 0.0, 1.0) for c in cc)
        )
        object.__setattr__(self, "light_direction", _vec3(self.light_direction, "light_direction"))
        if all(v == 0 for v in self.light_direction):
            raise bad("light_direction", "must not be the zero vector")
        object.__setattr__(self, "light_color", _vec3(self.light_color, "light_color", 0.0, 10.0))
        for f in ("light_ambient", "light_diffuse", "light_specular"):
            v = getattr(self, f)
            if not _finite(v) or not 0.0 <= v <= 10.0:
                raise bad(f, f"must be a number in 0..10, got {v!r}")
        if not isinstance(self.shadows, bool):
            raise bad("shadows", f"must be a bool, got {self.shadows!r}")
        if not _finite(self.finger_extension) or not -0.02 <= self.finger_extension <= 0.05:
            raise bad(
                "finger_extension", f"must be in -0.02..0.05 m, got {self.finger_extension!r}"
            )
        object.__setattr__(
            self, "gripper_offset", _vec3(self.gripper_offset, "gripper_offset", -0.2, 0.2)
        )
        if not _finite(self.finger_width_scale) or not 0.2 <= self.finger_width_scale <= 1.0:
            raise bad("finger_width_scale", f"must be in 0.2..1, got {self.finger_width_scale!r}")
        if not _finite(self.finger_friction) or not 0.05 <= self.finger_friction <= 2.0:
            raise bad("finger_friction", f"must be in 0.05..2, got {self.finger_friction!r}")
        if not _finite(self.object_alpha) or not 0.0 <= self.object_alpha <= 1.0:
            raise bad("object_alpha", f"must be in 0..1, got {self.object_alpha!r}")
        if not _finite(self.object_scale) or not 0.3 <= self.object_scale <= 2.0:
            raise bad("object_scale", f"must be in 0.3..2.0, got {self.object_scale!r}")
        object.__setattr__(
            self, "camera_offset", _vec3(self.camera_offset, "camera_offset", -0.5, 0.5)
        )
        if not _finite(self.camera_noise) or not 0.0 <= self.camera_noise <= 0.2:
            raise bad("camera_noise", f"must be in 0..0.2 m, got {self.camera_noise!r}")

    # ------------------------------------------------------------------------------
    def effective(self) -> "EffectiveTask":
        """Return the knob values after applying ``severity``.

        A linear blend from nominal (above 1 an extrapolation), each knob saturated at its
        :data:`PHYSICAL_BOUNDS`; the saturated knobs are listed in ``EffectiveTask.saturated``.
        """
        return scale_knobs(self, NOMINAL, float(self.severity))

    def saturation_severity(self, limit: float = 10.0) -> float:
        """Return the lowest severity at which some knob saturates at its physical bound.

        ``limit`` when none does up to it. Severities up to this one scale the variation exactly.
        """
        if not scale_knobs(self, NOMINAL, limit).saturated:
            return limit
        lo, hi = 0.0, limit
        for _ in range(40):  # bisection to ~1e-11: knobs move monotonically with severity
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if scale_knobs(self, NOMINAL, mid).saturated else (mid, hi)
        return round(lo, 6)

    def to_dict(self) -> dict[str, Any]:
        """Return the plain-data form (lists instead of tuples), suitable for YAML/JSON."""
        return _lists(dataclasses.asdict(self))


#: :attr:`EffectiveTask.gripper_key` of the stock gripper.
NOMINAL_GRIPPER_KEY = (0.0, 0.0, 0.0, 0.0, 1.0, FINGER_FRICTION)

#: The nominal world's knobs (severity 0 of every task).
NOMINAL = TaskConfig()

TASKS: dict[str, TaskConfig] = {
    "base": TaskConfig(name="base"),
    "checkerboard": TaskConfig(name="checkerboard", texture="checkerboard", checker_squares=8),
    "harsh_light": TaskConfig(
        name="harsh_light",
        light_direction=(-1.0, 0.6, 0.35),
        light_color=(1.0, 0.8, 0.55),
        light_ambient=0.15,
        light_diffuse=1.2,
        light_specular=0.8,
        shadows=True,
    ),
    "extend_gripper_1cm": TaskConfig(
        name="extend_gripper_1cm",
        finger_extension=0.01,
        finger_width_scale=0.5,
        finger_friction=0.5,
    ),
    "offset_gripper_10cm": TaskConfig(name="offset_gripper_10cm", gripper_offset=(0.1, 0.0, 0.0)),
    "transparent_objects": TaskConfig(name="transparent_objects", object_alpha=0.25),
}


SEVERITY_SEPARATOR = "@"
"""``<task>@<severity>`` names a task at another severity (``harsh_light@1.5``): one folder name,
so the policy can send it and the collector can file a session under it."""


def is_task_file(name: object) -> bool:
    """Return True when ``name`` names a YAML task file (ends in .yaml or .yml)."""
    return isinstance(name, str) and name.lower().endswith((".yaml", ".yml"))


def get_task(name: str | TaskConfig) -> TaskConfig:
    """Return the named task, or the task of a YAML file path (``*.yaml``/``*.yml``).

    A YAML file is read with :func:`load_task_yaml`; a :class:`TaskConfig` passes through.

    Raises ValueError listing the valid names for an unknown name, or naming the file and the
    problem for a bad YAML file.
    """
    if isinstance(name, TaskConfig):
        return name
    if is_task_file(name):
        return load_task_yaml(name)  # type: ignore[arg-type]
    severity = None
    if isinstance(name, str) and SEVERITY_SEPARATOR in name:
        name, _, text = name.rpartition(SEVERITY_SEPARATOR)
        try:
            severity = float(text)
        except ValueError:
            severity = math.nan
        if not math.isfinite(severity) or severity < 0:
            raise ValueError(
                f"task {name}{SEVERITY_SEPARATOR}{text}: the severity after "
                f"'{SEVERITY_SEPARATOR}' must be a finite number >= 0"
            )
    try:
        task = TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))} "
            f"(a name may end in {SEVERITY_SEPARATOR}<severity>, e.g. harsh_light"
            f"{SEVERITY_SEPARATOR}1.5; or the path of a .yaml task file)"
        ) from None
    return task if severity is None else dataclasses.replace(task, severity=severity)


def task_from_dict(
    data: Mapping[str, Any], source: str = "task", base_dir: str | None = None
) -> TaskConfig:
    """Build a TaskConfig from a mapping. Unknown keys raise ValueError naming them.

    A key ``base`` names a task in ``TASKS`` whose values are the starting point. A relative
    ``texture`` file path is taken relative to ``base_dir`` (when given).
    """
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{source}: expected a mapping of TaskConfig fields, got {type(data).__name__}"
        )
    data = dict(data)
    start = get_task(data.pop("base", "base"))
    valid = {f.name for f in dataclasses.fields(TaskConfig)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(
            f"{source}: unknown TaskConfig key(s) {unknown}; "
            f"valid keys: {sorted(valid | {'base'})}"
        )
    kwargs = dataclasses.asdict(start)
    kwargs.update(data)
    tex = kwargs.get("texture")
    if (
        base_dir
        and isinstance(tex, str)
        and tex not in ("none", "checkerboard")
        and not os.path.isabs(os.path.expanduser(tex))
    ):
        kwargs["texture"] = os.path.normpath(os.path.join(base_dir, tex))
    elif isinstance(tex, str) and tex.startswith("~"):
        kwargs["texture"] = os.path.expanduser(tex)
    if "checker_colors" in kwargs:
        kwargs["checker_colors"] = _as_tuple(kwargs["checker_colors"])
    try:
        return TaskConfig(**kwargs)
    except TypeError as exc:  # pragma: no cover - defensive
        raise ValueError(f"{source}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_task_yaml(path: str) -> TaskConfig:
    """Load a user-defined variation from a YAML file of TaskConfig fields.

    The file may also hold the fields under a top-level ``task:`` key. Without a ``name`` the
    task is named after the file (``dim_checker.yaml`` -> ``dim_checker``). A relative
    ``texture`` path is relative to the file's folder. Every problem (missing file, bad YAML,
    unknown key, bad value, missing texture file) raises ValueError naming the file.
    """
    path = os.path.expanduser(str(path))
    try:
        with open(path, "r", encoding="utf-8") as fh:
            try:
                data = yaml.safe_load(fh)
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: invalid YAML: {exc}") from None
    except OSError as exc:
        raise ValueError(f"task file {path!r} cannot be read: {exc.strerror or exc}") from None
    if data is None:
        data = {}
    if isinstance(data, Mapping) and set(data) == {"task"}:
        data = data["task"]
    if isinstance(data, Mapping) and "name" not in data:
        data = {**data, "name": os.path.splitext(os.path.basename(path))[0]}
    return task_from_dict(data, source=str(path), base_dir=os.path.dirname(os.path.abspath(path)))
