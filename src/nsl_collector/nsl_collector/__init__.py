"""Grasp-episode recording to rosbag2 (MCAP) datasets, the dataset library (ROS-free) and the collector node."""
