"""Launch files: they build launch_ros Nodes from the same graph description as the runner.

ROS 2 ``launch``/``launch_ros`` are not installable from PyPI; where they are missing these tests
are reported as skipped with that reason (they run in the Docker image, see docker/).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nsl_bringup.graph import GRAPHS, config_dir, resolve

LAUNCH_DIR = Path(__file__).resolve().parent.parent / "launch"

launch_ros = pytest.importorskip(
    "launch_ros",
    reason="ROS 2 launch_ros is not installed here (not on PyPI); runs in the docker/ image",
)
# After the skip: these need ROS 2 launch and launch_ros.
import nsl_bringup.launch_description as ld  # noqa: E402
from launch.actions import DeclareLaunchArgument  # noqa: E402


def load_launch_file(name: str):
    spec = importlib.util.spec_from_file_location(name, LAUNCH_DIR / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@pytest.mark.parametrize("graph", ["collect", "finetune", "sim_demo"])
def test_launch_file_declares_the_graph_arguments(graph):
    description = load_launch_file(f"{graph}.launch.py")
    declared = {a.name for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert declared == {a.name for a in GRAPHS[graph].arguments}


@pytest.mark.parametrize(
    "graph,args",
    [
        ("collect", {"task": "checkerboard", "namespace": "r2"}),
        ("sim_demo", {}),
        ("collect", {"sim": "false", "camera_topic": "/cam/image"}),
    ],
)
def test_launch_nodes_match_the_runner(graph, args, monkeypatch):
    """The launch file passes each node exactly what the runner passes on its command line."""
    captured, managed = [], []
    monkeypatch.setattr(ld, "Node", lambda **kwargs: captured.append(kwargs) or kwargs)
    monkeypatch.setattr(
        ld,
        "LifecycleNode",
        lambda **kwargs: captured.append({**kwargs, "managed": True}) or kwargs,
    )
    monkeypatch.setattr(ld, "activation", lambda node: managed.append(node["name"]) or [])
    monkeypatch.setattr(ld, "get_package_share_directory", lambda _pkg: str(config_dir().parent))
    ld.launch_nodes(graph, args)
    namespace, specs = resolve(graph, args)
    assert len(captured) == len(specs)
    # Managed nodes are LifecycleNodes that launch configures and activates, as the runner does.
    assert managed == [spec.name for spec in specs if spec.lifecycle]
    for kwargs, spec in zip(captured, specs):
        assert kwargs.pop("managed", False) == spec.lifecycle
        assert (kwargs["package"], kwargs["executable"], kwargs["name"]) == (
            spec.package,
            spec.executable,
            spec.name,
        )
        assert kwargs["namespace"] == (namespace or ("" if spec.lifecycle else None))
        assert kwargs["parameters"] == [str(config_dir() / spec.params_file), spec.parameters]
        assert kwargs["remappings"] == list(spec.remappings)
        assert kwargs.get("respawn", False) == spec.respawn  # restarts as the runner does
        if spec.respawn:
            assert kwargs["respawn_delay"] == spec.respawn_delay
