"""Turn a graph of nsl_bringup.graph into a ROS 2 launch description (needs launch and launch_ros).

The launch files are one line each on top of this, so ``ros2 launch`` and ``nsl up`` start the
same nodes with the same parameters. A managed node (``NodeSpec.lifecycle``) becomes a
launch_ros ``LifecycleNode``: launch emits its configure transition at start and its activate
transition once it reaches inactive, as the runner does through the lifecycle services.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
import launch.events
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    ExecuteProcess,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from nsl_bringup.graph import GRAPHS, NodeSpec, resolve


def launch_nodes(graph_name: str, values: dict[str, str]) -> list:
    """Return the launch actions of a graph: its nodes, and the transitions of managed ones."""
    namespace, specs = resolve(graph_name, values)
    config = Path(get_package_share_directory("nsl_bringup")) / "config"
    actions = []
    for spec in specs:
        node = node_action(spec, namespace, config)
        actions.append(node)
        if spec.lifecycle:
            actions += activation(node)
    return actions


def transition(node: LifecycleNode, transition_id: int) -> EmitEvent:
    """Return the action that asks ``node`` for a lifecycle transition."""
    return EmitEvent(
        event=ChangeState(
            lifecycle_node_matcher=launch.events.matches_action(node),
            transition_id=transition_id,
        )
    )


def activation(node: LifecycleNode) -> list:
    """Return the actions that configure ``node`` and activate it once it is inactive."""
    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            start_state="configuring",
            goal_state="inactive",
            entities=[transition(node, Transition.TRANSITION_ACTIVATE)],
        )
    )
    return [activate, transition(node, Transition.TRANSITION_CONFIGURE)]


def respawn_options(spec: NodeSpec) -> dict:
    """Return launch's respawn arguments of ``spec`` (the retry limit where launch has it)."""
    if not spec.respawn:
        return {}
    options = {"respawn": True, "respawn_delay": spec.respawn_delay}
    if "respawn_max_retries" in inspect.signature(ExecuteProcess.__init__).parameters:
        options["respawn_max_retries"] = spec.respawn_max_retries
    return options


def node_action(spec: NodeSpec, namespace: str, config: Path) -> Node:
    """Return the launch_ros node of ``spec`` (a LifecycleNode for a managed one)."""
    kind = LifecycleNode if spec.lifecycle else Node
    return kind(
        package=spec.package,
        executable=spec.executable,
        name=spec.name,
        # LifecycleNode requires a namespace ('' is the root); Node takes None for none.
        namespace=namespace or ("" if spec.lifecycle else None),
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
