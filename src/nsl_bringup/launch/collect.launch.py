"""`ros2 launch nsl_bringup collect.launch.py [name:=value ...]`: the 'collect' graph of nsl_bringup.graph."""

from nsl_bringup.launch_description import generate


def generate_launch_description():
    return generate("collect")
