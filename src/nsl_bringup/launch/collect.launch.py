"""The 'collect' graph of nsl_bringup.graph.

Usage: `ros2 launch nsl_bringup collect.launch.py [name:=value ...]`.
"""

from nsl_bringup.launch_description import generate


def generate_launch_description():
    return generate("collect")
