"""Offline QT-Opt pre-training, fine-tuning and continual learning (ROS-free).

Also the trainer node with the fine-tune service. Modules: ``config`` (QTOptConfig), ``data``
(TrainingData), ``augment``, ``losses`` (auxiliary losses), ``trainer`` (the update core),
``state`` (training state save/load), ``loop`` (the training loop), ``runs`` (runs with files
and resume), ``jobs`` (the node's worker), ``cli`` (``nsl train``).
"""
