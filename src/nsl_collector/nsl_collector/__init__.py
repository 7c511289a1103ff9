"""Grasp-episode recording to rosbag2 (MCAP) datasets.

The dataset library (ROS-free) and the collector node.
"""
