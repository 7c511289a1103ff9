"""The configuration of the simulated study: :class:`ExperimentConfig`, composed of sections.

Each section (nsl_experiment.sections) is a frozen dataclass; a unit of work's cache key hashes
the sections it reads. Field names are unique across sections, so a flat ``name=value`` (the
``--set`` option, a YAML file of flat fields) finds its section; ``section.name=value`` and
nested mappings work too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from nsl_trainer.config import QTOptConfig

from .checks import bad
from .sections import (
    AgnosticTrunkSection,
    BootstrapConfig,
    CalibrationConfig,
    EvaluationConfig,
    ExplorationConfig,
    FinetuneConfig,
    GraspValuesConfig,
    LearnerConfig,
    PretrainConfig,
    RuntimeConfig,
    SeedsConfig,
    SimSection,
    StudyConfig,
)
from .seeds import CONTINUAL_ORDER, MAX_ONLINE_ROUND_EPISODES, SEED_STRIDE, STUDY_TASKS

if TYPE_CHECKING:
    from nsl_policy.cem import CEMConfig
    from nsl_policy.model import QNetworkConfig


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of ``nsl experiment run``, by section; the defaults are the shipped recipe."""

    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    sim: SimSection = field(default_factory=SimSection)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    grasp_values: GraspValuesConfig = field(default_factory=GraspValuesConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    agnostic_trunk: AgnosticTrunkSection = field(default_factory=AgnosticTrunkSection)
    study: StudyConfig = field(default_factory=StudyConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        """Check the settings that span sections, and build the library configs once."""
        gv, study, ev = self.grasp_values, self.study, self.evaluation
        if gv.grasp_value_steps and gv.grasp_value_round > self.pretrain.rounds:
            raise bad(gv, "grasp_value_round", f"must be in 0..rounds ({self.pretrain.rounds})")
        if self.pretrain.base_checkpoint and not study.base_control:
            raise bad(
                self.pretrain,
                "base_checkpoint",
                "needs base_control=true: the base control's exploration grasps are the "
                "fine-tunes' base data when the checkpoint's pre-training data is not at hand",
            )
        gated = ev.validation_episodes > 0 or ev.gate_episodes > 0
        if study.online_rounds:
            per_round, rest = divmod(study.tiers[-1], study.online_rounds)
            if rest or per_round % self.sim.chunk_episodes:
                raise bad(
                    study,
                    "online_rounds",
                    f"must split the largest tier ({study.tiers[-1]} grasps) into equal rounds "
                    f"of whole bags (chunk_episodes {self.sim.chunk_episodes})",
                )
            if per_round > MAX_ONLINE_ROUND_EPISODES:
                raise bad(
                    study,
                    "online_rounds",
                    f"gives rounds of {per_round} grasps, more than the "
                    f"{MAX_ONLINE_ROUND_EPISODES} of a round's seed range",
                )
            if not gated:
                raise bad(
                    study,
                    "online_rounds",
                    "needs validation_episodes or gate_episodes > 0 (the online evaluation "
                    "of every round)",
                )
        if study.continual_guard and not gated:
            raise bad(
                study,
                "continual_guard",
                "needs validation_episodes > 0 (the gate compares validation "
                "success); set continual_guard=false for the plain chain",
            )
        # Build the library configs once so a typo fails here, not an hour into a run.
        try:
            self.model_config()
            self.qtopt_config(finetune=True)
            self.cem_config()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ExperimentConfig: {exc}") from None

    # --- the study --------------------------------------------------------------------
    def study_tasks(self) -> tuple[str, ...]:
        """Tasks explored and fine-tuned on (Table II rows), in STUDY_TASKS order."""
        chosen = set(self.study.challenges) | ({"base"} if self.study.base_control else set())
        return tuple(t for t in STUDY_TASKS if t in chosen)

    def continual_chain(self) -> tuple[str, ...]:
        """Return the studied challenges in the paper's continual order."""
        return tuple(t for t in CONTINUAL_ORDER if t in self.study.challenges)

    def finetune_learning_rate(self) -> float:
        """Return the fine-tuning learning rate, QTOptConfig.finetune_learning_rate()."""
        return self.qtopt_config(finetune=True).finetune_learning_rate()

    # --- library configs ----------------------------------------------------------------
    def model_config(self) -> QNetworkConfig:
        """Return the Q-network's config: ``model`` overrides at the sim's image size."""
        # nsl_policy.model imports torch: loaded here, as the nsl parser reads this module
        from nsl_policy.model import QNetworkConfig

        model, image_size = self.learner.model, self.sim.image_size
        if "image_size" in model and model["image_size"] != image_size:
            raise ValueError("model.image_size must equal image_size (leave it out)")
        return QNetworkConfig.from_dict({**model, "image_size": image_size})

    def qtopt_config(self, finetune: bool = False) -> QTOptConfig:
        """QT-Opt settings of pre-training, or (``finetune``) of the study's fine-tuning runs."""
        overrides = {**self.learner.qtopt, **(self.finetune.finetune_qtopt if finetune else {})}
        if not finetune and self.pretrain.pretrain_location_weight > 0:
            overrides["location_weight"] = self.pretrain.pretrain_location_weight
        return QTOptConfig.from_dict(
            {**overrides, "seed": self.seeds.seed, "learning_rate": self.learner.learning_rate}
        )

    def cem_config(self) -> CEMConfig:
        """CEM settings for acting (collection and evaluation)."""
        # nsl_policy.cem imports torch: loaded here, as in model_config.
        from nsl_policy.cem import CEMConfig

        return CEMConfig(**self.learner.policy_cem)

    def sim_kwargs(self) -> dict[str, Any]:
        """SimConfig fields shared by every stage (the object split is set per use)."""
        sim = self.sim
        return {
            "image_size": sim.image_size,
            "camera_fov": sim.camera_fov,
            "max_steps": sim.max_steps,
            "num_objects": sim.num_objects,
        }

    def seed_base(self, offset: int) -> int:
        """First episode seed of the range at ``offset`` (nsl_experiment.seeds)."""
        return self.seeds.seed * SEED_STRIDE + offset

    def sections(self, *names: str) -> dict[str, dict[str, Any]]:
        """Return the named sections as plain data, what a cache key hashes."""
        data = self.to_dict()
        return {name: data[name] for name in names}

    # --- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested by section, tuples as lists: the JSON/YAML form (config.json of a run)."""
        return {
            f.name: {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
            for f in fields(self)
            for section in (dataclasses.asdict(getattr(self, f.name)),)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """From a mapping of sections ({"study": {...}}), flat fields or ``section.field`` keys."""
        values: dict[str, dict[str, Any]] = {name: {} for name in SECTION_TYPES}
        unknown = []
        for key, value in data.items():
            if key in SECTION_TYPES and isinstance(value, dict):
                for name, v in value.items():
                    if name not in SECTION_FIELDS[key]:
                        unknown.append(f"{key}.{name}")
                    values[key][name] = v
                continue
            section, _, name = key.rpartition(".")
            section = section or FIELD_SECTION.get(name, "")
            if section not in SECTION_TYPES or name not in SECTION_FIELDS[section]:
                unknown.append(key)
                continue
            values[section][name] = value
        if unknown:
            raise ValueError(f"unknown ExperimentConfig fields: {sorted(unknown)}")
        return cls(**{name: SECTION_TYPES[name](**v) for name, v in values.items()})

    @classmethod
    def from_run(cls, output: str | Path, **overrides: Any) -> ExperimentConfig:
        """Return the config a run folder was made with (its config.json), plus ``overrides``."""
        with open(Path(output) / "config.json", encoding="utf-8") as f:
            saved = json.load(f)
        return cls.from_dict({**flatten(saved), **overrides})

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        """From a YAML or JSON file of sections or fields."""
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: an experiment config must be a mapping")
        return cls.from_dict(data)

    def with_overrides(self, items: list[str]) -> ExperimentConfig:
        """Copy with ``name=value`` or ``section.name=value`` overrides (values parsed as YAML).

        For example ``rounds=2``, ``study.tiers=[25, 100]``, ``model={width: 48}``.
        """
        data = flatten(self.to_dict())
        for item in items:
            if "=" not in item:
                raise ValueError(f"expected name=value, got {item!r}")
            key, value = item.split("=", 1)
            section, _, name = key.strip().rpartition(".")
            if name not in FIELD_SECTION or section not in ("", FIELD_SECTION[name]):
                raise ValueError(f"unknown ExperimentConfig fields: [{key.strip()!r}]")
            data[name] = yaml.safe_load(value)
        return self.from_dict(data)


def flatten(nested: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return a nested config dict (ExperimentConfig.to_dict) as flat field names."""
    return {name: value for section in nested.values() for name, value in section.items()}


#: The section type of each ExperimentConfig field, and each section's field names.
SECTION_TYPES: dict[str, type] = {f.name: f.default_factory for f in fields(ExperimentConfig)}
SECTION_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(f.name for f in fields(t)) for name, t in SECTION_TYPES.items()
}
FIELD_SECTION: dict[str, str] = {n: s for s, names in SECTION_FIELDS.items() for n in names}
if len(FIELD_SECTION) != sum(len(names) for names in SECTION_FIELDS.values()):
    raise RuntimeError("ExperimentConfig: a field name is used by two sections")
