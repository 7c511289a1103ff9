"""PyBullet grasping world with the paper's challenge variations (ROS-free library).

Also the sim node, which serves the arm and camera interfaces.
"""
