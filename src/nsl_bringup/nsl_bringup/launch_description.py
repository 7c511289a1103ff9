"""Turn a graph of nsl_bringup.graph into a ROS 2 launch description (needs launch and launch_ros).

The launch files are one line each on top of this, so ``ros2 launch`` and ``nsl up`` start the
same nodes with the same parameters.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    OpaqueFunction,
    SetEnvironmentVariable,
)
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from nsl_bringup.graph import GRAPHS, NodeSpec, resolve


def launch_nodes(graph_name: str, values: dict[str, str]) -> list[Node]:
    namespace, specs = resolve(graph_name, values)
    config = Path(get_package_share_directory("nsl_bringup")) / "config"
    return [node_action(spec, namespace, config) for spec in specs]


def respawn_options(spec: NodeSpec) -> dict:
    """Return launch's respawn arguments of ``spec`` (the retry limit where launch has it)."""
    if not spec.respawn:
        return {}
    options = {"respawn": True, "respawn_delay": spec.respawn_delay}
    if "respawn_max_retries" in inspect.signature(ExecuteProcess.__init__).parameters:
        options["respawn_max_retries"] = spec.respawn_max_retries
    return options


def node_action(spec: NodeSpec, namespace: str, config: Path) -> Node:
    return Node(
        package=spec.package,
        executable=spec.executable,
        name=spec.name,
        namespace=namespace or None,
        parameters=[str(config / spec.params_file), dict(spec.parameters)],
        remappings=list(spec.remappings),
        output="screen",
        emulate_tty=True,
        **respawn_options(spec),
    )


def generate(graph_name: str) -> LaunchDescription:
    graph = GRAPHS[graph_name]

    def nodes(context, *_args, **_kwargs):
        values = {a.name: LaunchConfiguration(a.name).perform(context) for a in graph.arguments}
        return launch_nodes(graph_name, values)

    declared = [
        DeclareLaunchArgument(
            a.name,
            default_value=a.default,
            description=a.description,
            **({"choices": list(a.choices)} if a.choices else {}),
        )
        for a in graph.arguments
    ]
    # Large images (e.g. 472x472) need Fast DDS's bigger shared-memory segment; a profile the
    # user set already wins.
    profile = []
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:
        xml = Path(get_package_share_directory("nsl_bringup")) / "config" / "fastdds_shm.xml"
        profile = [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", str(xml))]
    return LaunchDescription([*declared, *profile, OpaqueFunction(function=nodes)])
