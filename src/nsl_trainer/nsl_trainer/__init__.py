"""Offline QT-Opt pre-training, fine-tuning and continual learning (ROS-free) and the trainer node with the fine-tune service."""
