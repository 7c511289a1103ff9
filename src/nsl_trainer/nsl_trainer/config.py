"""QTOptConfig: the hyper-parameters of offline QT-Opt, apart from the code that uses them.

Importing this module does not import torch (``nsl_policy.cem``, where CEMConfig lives, does):
the command-line parsers read its names and the fine-tuning recipe without paying for torch,
which is imported when a QTOptConfig is first made.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nsl_policy.cem import CEMConfig

POLICY_WEIGHTS = ("online", "polyak")
"""Networks a run can write as its checkpoint (``QTOptConfig.policy_weights``)."""
LOCATION_LABELS = ("sim", "hindsight")
"""Sources of the location loss's labels (``QTOptConfig.location_labels``)."""


def is_int(v: Any) -> bool:
    """Whether ``v`` is an int (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """Whether ``v`` is a finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _cem_config_class() -> type[CEMConfig]:
    """Return CEMConfig, importing ``nsl_policy.cem`` (and so torch) on first use (module doc)."""
    from nsl_policy.cem import CEMConfig

    return CEMConfig


def _default_target_cem() -> CEMConfig:
    return _cem_config_class()(population=16, elites=4, iterations=2)


@dataclass(frozen=True)
class QTOptConfig:
    """Hyper-parameters of offline QT-Opt (Kalashnikov et al. 2018)."""

    batch_size: int = 64
    """Transitions per gradient step."""
    learning_rate: float = 1e-3
    """Adam learning rate of pre-training and training from scratch."""
    finetune_lr_scale: float = 0.25
    """Fine-tuning runs at learning_rate x this (the paper fine-tunes at 25% of pre-training)."""
    discount: float = 0.9
    """Discount gamma of the Bellman target (QT-Opt's value)."""
    polyak: float = 0.995
    """Target network 1 <- polyak * target 1 + (1 - polyak) * online network, every step."""
    target2_lag: int = 100
    """Target network 2 is a copy of target network 1 refreshed every this many steps."""
    target_action: str = "cem"
    """How a* = argmax_a' Q_targ1(s', a') is found: "cem" (target_cem) or "random" (best of
    target_samples uniform actions)."""
    target_samples: int = 64
    """Uniform samples per next state when target_action == "random"."""
    target_cem: CEMConfig = field(default_factory=_default_target_cem)
    """CEM of the Bellman target; 16 x 2 (QT-Opt: 64 x 2) keeps a CPU step fast."""
    augment: bool = True
    """Random-shift and photometric augmentation of s and s' (independently)."""
    crop_pad: int = 4
    """Random shift: pad by this many pixels (edge replicate) and crop back (0 = off)."""
    brightness: float = 0.1
    """Photometric: add U(-b, b) to all pixels (images in [0, 1])."""
    contrast: float = 0.1
    """Photometric: scale deviations from the image mean by U(1 - c, 1 + c)."""
    mc_lower_bound: bool = False
    """Lower-bound the Bellman target by the recorded episode's discounted return (not in
    QT-Opt); off, as in QT-Opt."""
    mc_mix: float = 0.0
    """Weight m of the recorded episode's discounted return in the target, y = (1 - m) x
    Bellman target + m x return (mixed Monte-Carlo, Ostrovski et al. 2017); 0 = plain QT-Opt."""
    conservative_weight: float = 0.0
    """Weight of the conservative CQL(H) term (Kumar et al. 2020) that lowers actions the data
    never tried; 0 = plain QT-Opt."""
    conservative_samples: int = 16
    """Uniform random actions per state in the conservative term (plus the data action and
    the online network's CEM argmax, found with ``target_cem``)."""
    grasp_fraction: float = 0.0
    """Share of each batch redrawn from episode-final transitions (the grasp attempts) of the
    same part (base or target), on top of their natural share; 0 = uniform rows, as QT-Opt."""
    grad_clip: float = 10.0
    """Clip the gradient's global norm to this (0 = off)."""
    policy_weights: str = "online"
    """Network a run writes as its checkpoint: "online" (the one the gradient steps update) or
    "polyak" (target network 1); online, as QT-Opt."""
    location_weight: float = 0.0
    """Weight of the auxiliary object-location loss (not in QT-Opt; ``losses.LocationLoss``);
    0 = none."""
    location_labels: str = "sim"
    """Labels of the location loss: "sim" (``Transitions.location``, replayed from the
    simulator; every row needs one) or "hindsight" (``nsl_trainer.hindsight``: where each
    successful grasp closed, seen from the earlier steps of its episode; other rows have none)."""
    seed: int = 0
    """Seeds batch sampling, augmentation and the target-action search."""

    def __post_init__(self) -> None:
        """Check every field; raise ValueError naming the first bad one."""
        rules: list[tuple[str, bool, str]] = [
            (
                "batch_size",
                is_int(self.batch_size) and self.batch_size >= 1,
                "a positive integer",
            ),
            (
                "learning_rate",
                is_number(self.learning_rate) and self.learning_rate > 0,
                "a positive number",
            ),
            (
                "finetune_lr_scale",
                is_number(self.finetune_lr_scale) and self.finetune_lr_scale > 0,
                "a positive number",
            ),
            ("discount", is_number(self.discount) and 0 <= self.discount < 1, "in [0, 1)"),
            ("polyak", is_number(self.polyak) and 0 <= self.polyak < 1, "in [0, 1)"),
            (
                "target2_lag",
                is_int(self.target2_lag) and self.target2_lag >= 1,
                "a positive integer",
            ),
            ("target_action", self.target_action in ("cem", "random"), '"cem" or "random"'),
            (
                "target_samples",
                is_int(self.target_samples) and self.target_samples >= 1,
                "a positive integer",
            ),
            ("target_cem", isinstance(self.target_cem, _cem_config_class()), "a CEMConfig"),
            ("augment", isinstance(self.augment, bool), "a bool"),
            (
                "crop_pad",
                is_int(self.crop_pad) and 0 <= self.crop_pad <= 64,
                "an integer in [0, 64]",
            ),
            ("brightness", is_number(self.brightness) and 0 <= self.brightness <= 1, "in [0, 1]"),
            ("contrast", is_number(self.contrast) and 0 <= self.contrast < 1, "in [0, 1)"),
            ("mc_lower_bound", isinstance(self.mc_lower_bound, bool), "a bool"),
            ("mc_mix", is_number(self.mc_mix) and 0 <= self.mc_mix <= 1, "in [0, 1]"),
            (
                "conservative_weight",
                is_number(self.conservative_weight) and self.conservative_weight >= 0,
                "a number >= 0",
            ),
            (
                "conservative_samples",
                is_int(self.conservative_samples) and self.conservative_samples >= 1,
                "a positive integer",
            ),
            (
                "grasp_fraction",
                is_number(self.grasp_fraction) and 0 <= self.grasp_fraction <= 1,
                "in [0, 1]",
            ),
            ("grad_clip", is_number(self.grad_clip) and self.grad_clip >= 0, "a number >= 0"),
            (
                "policy_weights",
                self.policy_weights in POLICY_WEIGHTS,
                " or ".join(f'"{w}"' for w in POLICY_WEIGHTS),
            ),
            (
                "location_weight",
                is_number(self.location_weight) and self.location_weight >= 0,
                "a number >= 0",
            ),
            (
                "location_labels",
                self.location_labels in LOCATION_LABELS,
                " or ".join(f'"{s}"' for s in LOCATION_LABELS),
            ),
            ("seed", is_int(self.seed), "an integer"),
        ]
        for name, ok, what in rules:
            if not ok:
                raise ValueError(f"QTOptConfig.{name} must be {what}, got {getattr(self, name)!r}")

    def finetune_learning_rate(self) -> float:
        """Return the fine-tuning learning rate: ``learning_rate`` x ``finetune_lr_scale``.

        The one definition of the recipe's rate that the trainer node, the CLI, the experiment
        and the demo all use.
        """
        return self.learning_rate * self.finetune_lr_scale

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-able dict (``target_cem`` as a nested dict)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QTOptConfig:
        """Return the config of ``to_dict``'s output; unknown fields raise ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown QTOptConfig fields: {unknown}")
        data = dict(data)
        if isinstance(data.get("target_cem"), dict):
            data["target_cem"] = _cem_config_class()(**data["target_cem"])
        return cls(**data)


@dataclass(frozen=True)
class AgnosticTrunkConfig:
    """Settings of the supervised trunk training."""

    steps: int = 1000
    """Adam steps: on 1000 rendered scenes the training loss levels off by about 1000 (1500
    steps halved it again but left the held-out error at 3.0 px, against 7.7 px blind)."""
    learning_rate: float = 1e-3
    """Adam learning rate (the pre-training rate of QT-Opt)."""
    batch_size: int = 64
    """Scenes per step, drawn uniformly with replacement from the training scenes."""
    held_out_fraction: float = 0.2
    """Share of the scenes (the last ones) kept out of training to measure the position error;
    0: all train, no error measured."""
    seed: int = 0
    """Seeds the position head's initialisation and the batches."""

    def __post_init__(self) -> None:
        """Check every field; raise ValueError naming the first bad one."""
        for name, lo in (("steps", 1), ("batch_size", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(
                    f"AgnosticTrunkConfig.{name} must be an integer >= {lo}, got {v!r}"
                )
        for name, lo, hi, lo_open in (
            ("learning_rate", 0.0, 1.0, True),
            ("held_out_fraction", 0.0, 0.5, False),
        ):
            v = getattr(self, name)
            ok = (
                not isinstance(v, bool)
                and isinstance(v, (int, float))
                and math.isfinite(v)
                and (lo < v if lo_open else lo <= v)
                and v <= hi
            )
            if not ok:
                raise ValueError(
                    f"AgnosticTrunkConfig.{name} must be a number in "
                    f"{'(' if lo_open else '['}{lo}, {hi}], got {v!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain data (checkpoint metadata)."""
        return asdict(self)
