"""The simulated reproduction of "Never Stop Learning", ROS-free.

``nsl experiment run`` runs the stages of :mod:`.pipeline` (cached, resumable, seeded) with an
:class:`.config.ExperimentConfig`: pre-training, the challenges (Table I), the fine-tuning sweep
(Table II), the continual chain (Table III) and the report (:mod:`.report`). It uses the
libraries behind the nodes (nsl_sim, nsl_policy, nsl_collector, nsl_trainer) and writes the
robot's bag format.
"""
