"""The simulated reproduction of "Never Stop Learning" (issue 7), ROS-free.

``nsl experiment run`` runs the stages of :mod:`.stages` (cached, resumable, seeded) with an
:class:`.config.ExperimentConfig`: pre-training, the challenges (Table I), the fine-tuning sweep
(Table II), the continual chain (Table III) and the report (:mod:`.report`);
``nsl experiment report`` re-renders the report from a run's stamps; ``nsl experiment evaluate``
evaluates any checkpoint. It uses
the libraries behind the nodes (nsl_sim, nsl_policy, nsl_collector, nsl_trainer) and writes the
robot's bag format.
"""

from .config import ExperimentConfig
from .episodes import wilson_interval
from .stages import STAGES, evaluate_checkpoint, run

__all__ = ["ExperimentConfig", "STAGES", "evaluate_checkpoint", "run", "wilson_interval"]
