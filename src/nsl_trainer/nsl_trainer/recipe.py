"""FineTuneRecipe: the one fine-tuning recipe of the trainer node and the experiment pipeline.

The paper's recipe is a pre-trained checkpoint fine-tuned on base + target data sampled 50/50
at 25% of the pre-training learning rate (``QTOptConfig.finetune_lr_scale``, which owns the
rate). On top of it come three options, each with its off value: mixed Monte-Carlo targets
(``mc_mix`` 0), exporting the Polyak-averaged network (``policy_weights`` "online") and the
auxiliary location loss on hindsight labels (``location_weight`` 0 or ``location_labels``
"none"). The trainer node's defaults (``jobs.TrainerSettings``) and the experiment's
``FinetuneConfig`` read theirs from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .config import POLICY_WEIGHTS, QTOptConfig, is_int, is_number

RECIPE_LOCATION_LABELS = ("hindsight", "none")
"""Where a fine-tune's location labels come from: "hindsight" (``nsl_trainer.hindsight``, from
the episodes' successful grasps, which robot data has too) or "none" (no location loss)."""


@dataclass(frozen=True)
class FineTuneRecipe:
    """How a checkpoint is fine-tuned on new data (the trainer node's and the experiment's)."""

    steps: int = 1000
    """Gradient steps of a fine-tune."""
    target_fraction: float = 0.5
    """Share of each batch drawn from the target data (the rest from the base data); the paper
    samples 50/50."""
    policy_weights: str = "polyak"
    """Network written as the checkpoint (``QTOptConfig.policy_weights``): "polyak" (the
    Polyak-averaged target network 1) or "online"; polyak, because it did better than the
    online network on most fine-tunes of a simulated study."""
    mc_mix: float = 0.5
    """Weight of the recorded episode's return in the Bellman target (``QTOptConfig.mc_mix``);
    0 = plain QT-Opt targets."""
    location_weight: float = 1.0
    """Weight of the auxiliary object-location loss (``QTOptConfig.location_weight``); 0 = none."""
    location_labels: str = "hindsight"
    """Labels of the location loss: "hindsight" (where each successful grasp closed, seen from
    the earlier steps of its episode) or "none" (no location loss)."""

    def __post_init__(self) -> None:
        """Check every field; raise ValueError naming the first bad one."""
        rules: list[tuple[str, bool, str]] = [
            ("steps", is_int(self.steps) and self.steps >= 1, "a positive integer"),
            (
                "target_fraction",
                is_number(self.target_fraction) and 0 < self.target_fraction <= 1,
                "in (0, 1]",
            ),
            (
                "policy_weights",
                self.policy_weights in POLICY_WEIGHTS,
                " or ".join(f'"{w}"' for w in POLICY_WEIGHTS),
            ),
            ("mc_mix", is_number(self.mc_mix) and 0 <= self.mc_mix <= 1, "in [0, 1]"),
            (
                "location_weight",
                is_number(self.location_weight) and self.location_weight >= 0,
                "a number >= 0",
            ),
            (
                "location_labels",
                self.location_labels in RECIPE_LOCATION_LABELS,
                " or ".join(f'"{s}"' for s in RECIPE_LOCATION_LABELS),
            ),
        ]
        for name, ok, what in rules:
            if not ok:
                raise ValueError(
                    f"FineTuneRecipe.{name} must be {what}, got {getattr(self, name)!r}"
                )

    @classmethod
    def from_fields(
        cls, source: Mapping[str, Any] | object, names: Mapping[str, str] | None = None
    ) -> FineTuneRecipe:
        """Return the recipe of every field that ``source`` holds, by field name.

        ``source`` is a mapping (its keys) or any object (its attributes: an argparse namespace,
        a settings dataclass). ``names`` maps a field to the name ``source`` holds it under when
        the two differ. A field ``source`` lacks keeps its default and any other name in it is
        ignored, so a new recipe field needs no edit here or in the callers. Raises ValueError
        naming the first bad field.
        """
        names = dict(names or {})
        field_names = [f.name for f in fields(cls)]
        unknown = sorted(set(names) - set(field_names))
        if unknown:
            raise ValueError(f"FineTuneRecipe has no field {', '.join(unknown)}")
        missing = object()
        chosen: dict[str, Any] = {}
        for name in field_names:
            key = names.get(name, name)
            if isinstance(source, Mapping):
                value = source.get(key, missing)
            else:
                value = getattr(source, key, missing)
            if value is not missing:
                chosen[name] = value
        return cls(**chosen)

    @property
    def uses_location(self) -> bool:
        """Whether the fine-tunes train the location loss (a weight > 0 and labels to use)."""
        return self.location_weight > 0 and self.location_labels != "none"

    def qtopt_overrides(self) -> dict[str, Any]:
        """Return the QTOptConfig fields this recipe sets (on top of the run's other settings)."""
        overrides: dict[str, Any] = {
            "policy_weights": self.policy_weights,
            "mc_mix": float(self.mc_mix),
            "location_weight": float(self.location_weight) if self.uses_location else 0.0,
        }
        if self.uses_location:
            overrides["location_labels"] = self.location_labels
        return overrides

    def qtopt_config(self, base: QTOptConfig | None = None) -> QTOptConfig:
        """Return ``base`` (default ``QTOptConfig()``) with this recipe's overrides."""
        data = (base or QTOptConfig()).to_dict()
        return QTOptConfig.from_dict({**data, **self.qtopt_overrides()})


@dataclass(frozen=True)
class ExplorationRecipe:
    """How the grasps a fine-tune learns from are collected (the demo's and the study's)."""

    epsilon: float = 0.1
    """Probability of a uniformly random action per step."""
    noise_std: float = 0.1
    """Gaussian noise on the CEM action (normalised units): grasps near the policy's own aim;
    the study's exploration, which the demo shares so that both run one recipe."""

    def __post_init__(self) -> None:
        """Check every field; raise ValueError naming the first bad one."""
        for name, hi in (("epsilon", 1.0), ("noise_std", 2.0)):
            value = getattr(self, name)
            if not (is_number(value) and 0 <= value <= hi):
                raise ValueError(f"ExplorationRecipe.{name} must be in [0, {hi:g}], got {value!r}")
