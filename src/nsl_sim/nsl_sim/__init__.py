"""PyBullet grasping world with the paper's challenge variations (ROS-free library) and the sim node serving the arm and camera interfaces."""
