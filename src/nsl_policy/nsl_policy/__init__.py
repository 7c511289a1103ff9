"""QT-Opt Q-network, CEM action selection and checkpoint format (ROS-free), and the policy node.

The policy node runs grasp episodes and hot-swaps checkpoints.
"""
