"""`ros2 launch nsl_bringup finetune.launch.py [name:=value ...]`: the 'finetune' graph of nsl_bringup.graph."""

from nsl_bringup.launch_description import generate


def generate_launch_description():
    return generate("finetune")
