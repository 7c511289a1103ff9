"""The sections of :class:`nsl_experiment.config.ExperimentConfig`, one frozen dataclass each.

A unit of work's cache key hashes the sections it reads (nsl_experiment.cache.unit_key), so a
section holds the settings that change the same units: the exploration noise of the study's
grasps is its own section because changing it re-collects them, and nothing else.
Field names are unique across sections, so ``--set name=value`` finds a field's section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nsl_policy.model_recipe import BASE_MODEL
from nsl_sim.config import CAMERA_FOV_RANGE, SimConfig
from nsl_sim.tasks import TASKS
from nsl_trainer.config import AgnosticTrunkConfig
from nsl_trainer.recipe import ExplorationRecipe, FineTuneRecipe

from .checks import (
    as_tuple,
    bad,
    check_bool,
    check_float,
    check_increasing,
    check_int,
    check_mapping,
    check_names,
)
from .seeds import CHALLENGES, MAX_EPISODES_PER_RANGE, MAX_ONLINE_ROUNDS, MAX_ROUNDS

#: The fine-tuning recipe's defaults, shared with the robot's trainer node.
RECIPE = FineTuneRecipe()
#: The task-agnostic trunk's training defaults (nsl_trainer.agnostic_trunk).
AGNOSTIC_TRUNK = AgnosticTrunkConfig()
#: Modules of nsl_policy.model.QNetwork that the head re-initialisation ablation may reset.
REINIT_MODULES = ("embed", "head", "fc")


@dataclass(frozen=True)
class SeedsConfig:
    """Seeds: where every random draw of the study starts."""

    SECTION = "seeds"
    seed: int = 0
    """Master seed: episode seeds, network initialisation.

    Batch sampling and CEM derive from it.
    """

    def __post_init__(self) -> None:
        check_int(self, "seed", 0, 10**6)


@dataclass(frozen=True)
class SimSection:
    """The simulated world and how its episodes are recorded."""

    SECTION = "sim"
    image_size: int = 64
    """Camera image side (pixels) of the sim and the Q-network input; 64 is the shipped base's."""
    camera_fov: float = SimConfig.camera_fov
    """The fixed camera's vertical field of view (degrees): how much of the image the tray fills.
    A checkpoint sees well only at the framing it was trained with."""
    max_steps: int = 10
    """Control steps per grasp episode before the forced close-and-lift, as in the paper."""
    num_objects: int = 3
    """Objects dropped into the tray per episode: several, so the policy must pick one."""
    chunk_episodes: int = 100
    """Episodes per bag, the unit of caching and resuming data collection."""

    def __post_init__(self) -> None:
        check_int(self, "image_size", 32, 472)
        check_float(self, "camera_fov", *CAMERA_FOV_RANGE)
        check_int(self, "max_steps", 1, 100)
        check_int(self, "num_objects", 1, 10)
        check_int(self, "chunk_episodes", 1, 100_000)


@dataclass(frozen=True)
class LearnerConfig:
    """The Q-network, how it learns (QT-Opt) and how it acts (CEM), in every stage."""

    SECTION = "learner"
    learning_rate: float = 1e-3
    """Adam learning rate of pre-training.

    Fine-tuning uses QTOptConfig.finetune_learning_rate().
    """
    init_scheme: str = "default"
    """Initialisation of a fresh network: "default" (nsl_policy.model's Kaiming-normal) or
    "kaiming" (Kaiming-normal re-applied to every layer, the output layer included)."""
    model: dict = field(default_factory=lambda: dict(BASE_MODEL))
    """Overrides of nsl_policy.model.QNetworkConfig (image_size comes from the sim section). The
    default is the shipped base's keypoint head (nsl_policy.model_recipe.BASE_MODEL); a value
    replaces the whole mapping, so ``model={width: 48}`` is the conv head at width 48."""
    qtopt: dict = field(default_factory=lambda: {"mc_mix": 0.5})
    """Overrides of nsl_trainer's QTOptConfig (seed and learning rate are set per run); mixing
    each target half and half with the episode's return (mc_mix 0.5) gave the best base."""
    policy_cem: dict = field(default_factory=dict)
    """Overrides of nsl_policy.cem.CEMConfig for acting (collection and evaluation)."""

    def __post_init__(self) -> None:
        check_float(self, "learning_rate", 0.0, 1.0, lo_open=True)
        if self.init_scheme not in ("default", "kaiming"):
            raise bad(self, "init_scheme", 'must be "default" or "kaiming"')
        for name in ("model", "qtopt", "policy_cem"):
            check_mapping(self, name)


@dataclass(frozen=True)
class BootstrapConfig:
    """The scripted bootstrap grasps on ``base`` (train objects) before the first training."""

    SECTION = "bootstrap"
    bootstrap_episodes: int = 3000
    """Scripted bootstrap episodes: enough successes for offline QT-Opt to start from."""
    bootstrap_random_fraction: float = 0.2
    """Share of purely random episodes (nsl_sim.scripted.random_action), for action coverage."""
    bootstrap_noise_max: float = 0.5
    """Oracle episodes add Gaussian noise to the action, std drawn per episode in U(0, this)."""
    bootstrap_epsilon_max: float = 0.3
    """Oracle episodes take a random action per step with probability drawn in U(0, this)."""
    bootstrap_p_close: float = 0.05
    """Probability that a random step closes the gripper, so QT-Opt sees the close dimension."""
    bootstrap_decoy_fraction: float = 0.5
    """Share of oracle episodes that move like the oracle towards a random grasp pose (QT-Opt's
    scripted exploration), so only the image tells their successes from their failures."""

    def __post_init__(self) -> None:
        check_int(self, "bootstrap_episodes", 1)
        check_float(self, "bootstrap_random_fraction", 0.0, 1.0)
        check_float(self, "bootstrap_noise_max", 0.0, 2.0)
        check_float(self, "bootstrap_epsilon_max", 0.0, 1.0)
        check_float(self, "bootstrap_p_close", 0.0, 1.0)
        check_float(self, "bootstrap_decoy_fraction", 0.0, 1.0)


@dataclass(frozen=True)
class PretrainConfig:
    """Pre-training: offline QT-Opt on the bootstrap data, then on-policy rounds."""

    SECTION = "pretrain"
    base_checkpoint: str = ""
    """When set, study this checkpoint instead of pre-training one ("shipped": the base shipped
    with nsl_policy; a relative path is taken from the current directory). Its pre-training data
    is not at hand, so the fine-tunes mix in the base control's exploration grasps as base data,
    which needs ``base_control``. "": pre-train."""
    pretrain_steps: int = 4000
    """QT-Opt gradient steps of the offline pre-training on the bootstrap data."""
    rounds: int = 9
    """On-policy rounds after the offline pre-training (collect, retrain; 0..MAX_ROUNDS)."""
    round_episodes: int = 500
    """Episodes collected per on-policy round with the epsilon-greedy current policy."""
    round_steps: int = 500
    """Gradient steps per round, continuing from the previous checkpoint on all data so far;
    many short rounds beat few long ones."""
    round_epsilon: float = 0.1
    """Probability of a random action per step while collecting the rounds."""
    round_noise_std: float = 0.1
    """Gaussian noise on the CEM action while collecting the rounds."""
    round_learning_rate: float = 2.5e-4
    """Adam learning rate of the rounds: the fine-tuning rate, as they continue a trained net."""
    pretrain_location_weight: float = 1.0
    """Weight of QT-Opt's auxiliary object-location loss in pre-training (labels replayed from
    the sim, a chunk_NNN.location.npz beside each bag); it makes the first move aim. The
    fine-tunes use hindsight labels instead, as on a robot (``finetune_qtopt``). 0: none."""

    def __post_init__(self) -> None:
        if not isinstance(self.base_checkpoint, str):
            raise bad(self, "base_checkpoint", 'must be a path, "shipped" or ""')
        check_int(self, "pretrain_steps", 1)
        check_int(self, "rounds", 0, MAX_ROUNDS)
        check_int(self, "round_episodes", 1)
        check_int(self, "round_steps", 1)
        check_float(self, "round_epsilon", 0.0, 1.0)
        check_float(self, "round_noise_std", 0.0, 2.0)
        check_float(self, "round_learning_rate", 0.0, 1.0, lo_open=True)
        check_float(self, "pretrain_location_weight", 0.0, 1e3)


@dataclass(frozen=True)
class GraspValuesConfig:
    """Grasp values first: restart QT-Opt from a supervised grasp-outcome classifier."""

    SECTION = "grasp_values"
    grasp_value_steps: int = 0
    """When > 0, at round ``grasp_value_round`` a fresh network is trained this many steps to
    classify the outcomes of all grasps so far (nsl_trainer.grasp_values) and QT-Opt starts anew
    from it; off by default because repeated runs were no better than the shipped recipe."""
    grasp_value_qtopt_steps: int = 4000
    """QT-Opt steps after the grasp values.

    (at ``learning_rate``), in ``grasp_value_checks`` parts.
    """
    grasp_value_checks: int = 4
    """The QT-Opt run after the grasp values is validated at the end of each of this many equal
    parts, and the best part explores the next round: validation swings from part to part."""
    grasp_value_round: int = 0
    """Round (0..``rounds``) whose data, with all before it, trains the grasp values; 0 replaces
    the offline QT-Opt by them."""

    def __post_init__(self) -> None:
        check_int(self, "grasp_value_steps", 0)
        check_int(self, "grasp_value_checks", 1, 100)
        check_int(self, "grasp_value_qtopt_steps", self.grasp_value_checks)
        check_int(self, "grasp_value_round", 0, MAX_ROUNDS)


@dataclass(frozen=True)
class EvaluationConfig:
    """How checkpoints are measured: greedy CEM on held-out test objects."""

    SECTION = "evaluation"
    eval_episodes: int = 200
    """Evaluation episodes per task: a 95% interval of about +-0.07."""
    eval_tasks: tuple[str, ...] = ("base",) + CHALLENGES
    """Tasks the base checkpoint is evaluated on at their nominal severity.

    (stage evaluate_base).
    """
    validation_episodes: int = 60
    """When > 0, every pre-training round is evaluated on this many validation episodes and the
    best becomes the base policy (0: the last round); gates use them when gate_episodes is 0."""
    gate_episodes: int = 0
    """Episodes per gate decision (continual_guard, online rounds) from their own seed block,
    unbiased by the choice of the base; 0: the gates use the validation episodes."""

    def __post_init__(self) -> None:
        check_int(self, "eval_episodes", 1)
        as_tuple(self, "eval_tasks")
        for t in self.eval_tasks:
            if t not in TASKS:
                raise bad(self, "eval_tasks", f"unknown task {t!r} (known: {sorted(TASKS)})")
        check_int(self, "validation_episodes", 0)
        check_int(self, "gate_episodes", 0, MAX_EPISODES_PER_RANGE)


#: Fewest calibration episodes per (task, severity) of a real calibration: at 100 episodes a
#: 0.2 drop is about three standard errors of the difference of two success rates.
MIN_CALIBRATION_EPISODES = 100
#: Most episodes of a calibration or solvability range: the two share the calibration seed
#: block, the solvability scenes start 50 000 into it (nsl_experiment.seeds.SOLVABILITY_SEEDS).
MAX_CALIBRATION_EPISODES = 50_000


@dataclass(frozen=True)
class CalibrationConfig:
    """Table I: the severity of each challenge, chosen among the solvable ones."""

    SECTION = "calibration"
    calibration_episodes: int = MIN_CALIBRATION_EPISODES
    """Episodes per (task, severity) of the calibration; the base policy is measured on them
    too. At least MIN_CALIBRATION_EPISODES (100) unless ``allow_few_calibration_episodes``."""
    allow_few_calibration_episodes: bool = False
    """True lets ``calibration_episodes`` go below 100, for smoke tests only: the report then
    marks Table I as not a calibration and its acceptance check fails."""
    calibration_severities: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
    """Severities tried in this increasing order, each first lowered to the least severity that
    gives the same world (past its physical bounds a challenge stops changing:
    transparent_objects at 1.14, offset_gripper_10cm at 1.5, extend_gripper_1cm at 3,
    checkerboard at 3.94), so the list spans every challenge from a mild 0.5 up to its bounds
    without measuring a world twice; the first solvable one that drops the base policy by
    ``calibration_drop`` defines the challenge."""
    calibration_drop: float = 0.2
    """Drop (base minus challenge) a challenge must cause: a margin over the acceptance's 0.15."""
    calibration_seed_set: str = "calibration"
    """Seeds of the calibration: "calibration" (their own block) or "validation" (optimistic for
    the base, which was chosen on them)."""
    solvability_episodes: int = 0
    """Scenes per solvability check (nsl_sim.solvability), >= 16; 0: nsl_sim's defaults (200
    one-object scenes for appearance challenges, 100 oracle episodes for geometry ones), which
    resolve the checks' thresholds; fewer only make tests fast."""
    solvability_probe_steps: int = 600
    """Adam steps of the appearance checks' localisation probe: nsl_sim's default, enough for
    it to reach its base accuracy."""

    def __post_init__(self) -> None:
        check_int(self, "calibration_episodes", 1, MAX_CALIBRATION_EPISODES)
        check_bool(self, "allow_few_calibration_episodes")
        if (
            self.calibration_episodes < MIN_CALIBRATION_EPISODES
            and not self.allow_few_calibration_episodes
        ):
            raise bad(
                self,
                "calibration_episodes",
                f"must be >= {MIN_CALIBRATION_EPISODES} (a 0.2 drop needs them); "
                "allow_few_calibration_episodes=true for a smoke test",
            )
        check_increasing(self, "calibration_severities", float)
        check_float(self, "calibration_drop", 0.0, 1.0, lo_open=True)
        if self.calibration_seed_set not in ("calibration", "validation"):
            raise bad(self, "calibration_seed_set", "must be 'calibration' or 'validation'")
        check_int(self, "solvability_episodes", 0, MAX_CALIBRATION_EPISODES)
        if 0 < self.solvability_episodes < 16:
            raise bad(self, "solvability_episodes", "must be 0 or >= 16 (the probe's split)")
        check_int(self, "solvability_probe_steps", 1, 100_000)


@dataclass(frozen=True)
class ExplorationConfig:
    """How the study's exploration grasps are collected (targets, online rounds, recollection)."""

    SECTION = "exploration"
    target_epsilon: float = ExplorationRecipe().epsilon
    """Probability of a random action per step while collecting exploration grasps."""
    target_noise_std: float = ExplorationRecipe().noise_std
    """Gaussian noise on the CEM action while collecting exploration grasps."""

    def __post_init__(self) -> None:
        check_float(self, "target_epsilon", 0.0, 1.0)
        check_float(self, "target_noise_std", 0.0, 2.0)


@dataclass(frozen=True)
class FinetuneConfig:
    """The study's fine-tuning recipe (sweep, scratch, re-initialised head, chain, online).

    Its defaults are nsl_trainer's FineTuneRecipe, the recipe the robot's trainer node runs.
    """

    SECTION = "finetune"
    finetune_steps: int = RECIPE.steps
    """Gradient steps of every fine-tuning run (FineTuneRecipe.steps)."""
    target_fraction: float = RECIPE.target_fraction
    """Share of each fine-tuning batch drawn from the target data; the paper samples 50/50
    (FineTuneRecipe.target_fraction)."""
    scratch_steps: int = 3000
    """Gradient steps of the scratch baseline (a fresh network on the target data only, at the
    pre-training ``learning_rate``)."""
    reinit_modules: tuple[str, ...] = ("head", "fc")
    """QNetwork modules that the "re-initialise the head" ablation resets before fine-tuning:
    the layers after the image and action merge; modules a network lacks are skipped."""
    finetune_qtopt: dict = field(default_factory=RECIPE.qtopt_overrides)
    """QTOptConfig overrides on top of ``qtopt`` for the fine-tunes only: the recipe's
    (FineTuneRecipe.qtopt_overrides(): Polyak export, mixed Monte-Carlo targets, the location
    loss on hindsight labels). A value replaces the whole mapping; {} gives the fine-tunes
    pre-training's settings without the location loss."""

    def __post_init__(self) -> None:
        check_int(self, "finetune_steps", 1)
        check_float(self, "target_fraction", 0.0, 1.0, lo_open=True)
        check_int(self, "scratch_steps", 1)
        check_names(self, "reinit_modules", REINIT_MODULES)
        check_mapping(self, "finetune_qtopt")


@dataclass(frozen=True)
class AgnosticTrunkSection:
    """Table II's "agnostic trunk" baseline: the paper's ImageNet comparison, without ImageNet.

    A fresh network (``init_scheme``) whose image trunk is trained by supervised learning, not
    RL, to locate the objects in rendered scenes of the base task with the train objects (at
    reset: no grasp action, no reward; nsl_trainer.agnostic_trunk, nsl_experiment.units.agnostic),
    its other parts left freshly initialised. It is then fine-tuned exactly like the largest tier
    (the fine-tuning recipe: base + target data, ``finetune_steps`` at the fine-tuning rate),
    as the paper fine-tuned its ImageNet network with the identical procedure. Trained when
    ``baselines`` is true. Budget at the defaults (image_size 64), before the fine-tunes: a few
    minutes on 2 CPU cores; measured 350 s (rendering 108 s with 2 workers, training 240 s with
    2 threads) at nice 19 beside a running experiment, and about 0.05 s a step when the cores
    were free. Its held-out position error was then 3.1 px against a blind guess's 7.7 px.
    """

    SECTION = "agnostic_trunk"
    agnostic_scenes: int = 1000
    """Scenes rendered for the trunk's task (at the bootstrap episodes' seeds, so both trunks
    saw the same scenes); those with an object out of view are left out and the last 20% of the
    rest measure its position error. About 0.15 s each on one core (``workers`` render in
    parallel)."""
    agnostic_steps: int = AGNOSTIC_TRUNK.steps
    """Adam steps of the trunk's object-location regression (batch 64, learning rate 1e-3);
    0.05-0.25 s each on 2 cores at image_size 64."""

    def __post_init__(self) -> None:
        # 5 scenes leave one held out, the fewest the position error is measured on.
        check_int(self, "agnostic_scenes", 5, MAX_EPISODES_PER_RANGE)
        check_int(self, "agnostic_steps", 1, 10**6)


@dataclass(frozen=True)
class StudyConfig:
    """What the study covers: tasks, grasp tiers, online rounds and the continual chain."""

    SECTION = "study"
    challenges: tuple[str, ...] = CHALLENGES
    """Challenge tasks of the study (a subset of CHALLENGES), chained in CONTINUAL_ORDER."""
    base_control: bool = True
    """Also explore and fine-tune on ``base`` itself, the paper's control row of Table II."""
    target_episodes: int = 800
    """Exploration grasps collected per study task with the base policy (train objects)."""
    tiers: tuple[int, ...] = (25, 50, 100, 200, 400, 800)
    """Grasp tiers of Table II: tier n fine-tunes on the first n exploration grasps (nested);
    scratch, the re-initialised head and the chain use the largest."""
    baselines: bool = True
    """Also train the three baselines at the largest tier: scratch (a fresh network on the grasps
    only), the re-initialised head and the task-agnostic trunk (section agnostic_trunk). False
    skips them (a quicker sweep; Table II shows them as not run and their checks are not
    measured)."""
    online_rounds: int = 0
    """When > 0, stage online_finetune spends the largest tier's grasps in this many rounds of
    exploring with the policy in force and fine-tuning it, each kept only if it gates at least
    as well (the paper's Sec. VI-B); every round's share must be whole bags. 0: off."""
    continual_recollect: bool = False
    """True: from its second step on, the chain collects fresh grasps with the policy in force
    instead of reusing the base policy's (the paper)."""
    continual_guard: bool = True
    """Gate every continual step: its checkpoint replaces the policy in force only if it does at
    least as well on the step's task, as a deployed learner must. False: the paper's chain."""

    def __post_init__(self) -> None:
        check_names(self, "challenges", CHALLENGES)
        check_bool(self, "base_control")
        check_bool(self, "baselines")
        check_int(self, "target_episodes", 1, MAX_EPISODES_PER_RANGE)
        tiers = as_tuple(self, "tiers")
        if (
            any(isinstance(t, bool) or not isinstance(t, int) for t in tiers)
            or any(a >= b for a, b in zip(tiers, tiers[1:]))
            or tiers[0] < 1
            or tiers[-1] > self.target_episodes
        ):
            raise bad(
                self,
                "tiers",
                f"must be increasing integers in 1..target_episodes ({self.target_episodes})",
            )
        check_int(self, "online_rounds", 0, MAX_ONLINE_ROUNDS)
        check_bool(self, "continual_recollect")
        check_bool(self, "continual_guard")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how fast a run works; no result depends on these, so no cache key reads them."""

    SECTION = "runtime"
    workers: int = 1
    """Processes that collect and evaluate episodes in parallel."""
    threads: int = 1
    """torch CPU threads per process."""
    report_dir: str = ""
    """Folder of the report (paper_reproduction.md, summary.json, plots); "": <output>/report.
    A relative path is taken from the current directory."""

    def __post_init__(self) -> None:
        check_int(self, "workers", 1, 64)
        check_int(self, "threads", 1, 64)
        if not isinstance(self.report_dir, str):
            raise bad(self, "report_dir", "must be a folder path or empty")
