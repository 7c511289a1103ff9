"""The trainer node's settings: each one's default, meaning and range, without ROS.

The node declares one read-only ROS parameter per entry of :data:`SETTINGS` (trainer.yaml
lists the same names with a comment each) and builds :class:`jobs.TrainerSettings` from them
with :func:`trainer_settings`. The defaults are TrainerSettings' own, whose recipe settings are
``FineTuneRecipe()``'s.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from nsl_common.settings import Setting

from .jobs import TrainerSettings
from .recipe import RECIPE_LOCATION_LABELS

DEFAULTS = TrainerSettings(checkpoint_dir="checkpoints")


SETTINGS: dict[str, Setting] = {
    "checkpoint_dir": Setting(
        DEFAULTS.checkpoint_dir,
        "folder where fine-tuned checkpoints (and job run folders under runs/) are written",
    ),
    "mode": Setting(
        DEFAULTS.mode,
        "finetune: every job starts from a checkpoint (the request's init_checkpoint or "
        "default_checkpoint; a request with neither is refused); scratch: the same recipe from "
        "random weights, written as scratch-<job>",
    ),
    "default_checkpoint": Setting(
        DEFAULTS.default_checkpoint,
        "start checkpoint when a request names none (checked at start-up); empty: such "
        "requests are refused in mode finetune",
    ),
    "default_steps": Setting(
        DEFAULTS.default_steps,
        "gradient steps when a request says 0 (the fine-tuning recipe's, FineTuneRecipe.steps)",
        int_range=(1, 100_000_000),
    ),
    "target_fraction": Setting(
        DEFAULTS.target_fraction,
        "share of each batch drawn from the target data when a request says 0, the rest from "
        "the base data (the recipe's 50/50)",
        float_range=(0.0, 1.0),
    ),
    "learning_rate": Setting(
        DEFAULTS.learning_rate,
        "pre-training learning rate; a fine-tune without its own rate runs at "
        "QTOptConfig.finetune_learning_rate() of it (the paper's 25%)",
        float_range=(1e-9, 1.0),
    ),
    "batch_size": Setting(
        DEFAULTS.batch_size,
        "transitions per gradient step (default QTOptConfig.batch_size)",
        int_range=(1, 65536),
    ),
    "policy_weights": Setting(
        DEFAULTS.policy_weights,
        "network a job writes as its checkpoint: polyak (the Polyak-averaged target network; "
        "the recipe's, better on most simulated fine-tunes, docs/trainer.md) or online",
    ),
    "mc_mix": Setting(
        DEFAULTS.mc_mix,
        "weight of the recorded episode's discounted return mixed into each Bellman target "
        "(mixed Monte-Carlo; 0.0: plain QT-Opt targets)",
        float_range=(0.0, 1.0),
    ),
    "location_weight": Setting(
        DEFAULTS.location_weight,
        "weight of the auxiliary object-location loss on hindsight labels (where each "
        "successful grasp closed; 0.0: no location loss)",
        float_range=(0.0, 1000.0),
    ),
    "location_labels": Setting(
        DEFAULTS.location_labels,
        "labels of the location loss: "
        + " or ".join(RECIPE_LOCATION_LABELS)
        + " (none: no location loss)",
    ),
    "device": Setting(DEFAULTS.device, "auto (CUDA when present), cpu or cuda"),
    "checkpoint_every": Setting(
        DEFAULTS.checkpoint_every,
        "save training state + a checkpoint in the job's run folder every K steps "
        "(0: only at the end)",
        int_range=(0, 100_000_000),
    ),
    "num_threads": Setting(
        DEFAULTS.num_threads,
        "torch CPU threads of the worker (0: torch's default); leave a core for the sim/policy",
        int_range=(0, 1024),
    ),
    "max_steps": Setting(
        DEFAULTS.max_steps,
        "requests asking for more gradient steps are refused",
        int_range=(1, 1_000_000_000),
    ),
    "strict_datasets": Setting(
        DEFAULTS.strict_datasets,
        "refuse a fine-tune whose data holds a damaged bag or episode; false: skip it with a "
        "warning naming the file, episode and reason, and train on the rest (one damaged bag "
        "should not stop the robot learning)",
    ),
    "cancel_timeout": Setting(
        10.0,
        "seconds a cancelled worker gets to save its state and exit before it is terminated",
        float_range=(0.0, 3600.0),
    ),
}
"""Every parameter of the trainer node; all but cancel_timeout are TrainerSettings fields."""

SETTINGS_FIELDS = tuple(f.name for f in fields(TrainerSettings))
if set(SETTINGS_FIELDS) - set(SETTINGS):
    raise RuntimeError(
        f"trainer node settings lack TrainerSettings fields {set(SETTINGS_FIELDS) - set(SETTINGS)}"
    )


def trainer_settings(values: dict[str, Any], checkpoint_dir: str) -> TrainerSettings:
    """Return the TrainerSettings of the node's parameter ``values`` (by setting name).

    ``checkpoint_dir`` replaces the parameter's value (the node resolves it to a writable
    folder first). Raises ValueError naming the bad setting.
    """
    chosen = {name: values[name] for name in SETTINGS_FIELDS if name in values}
    return TrainerSettings(**{**chosen, "checkpoint_dir": checkpoint_dir})
