"""Shared fixtures of the system tests: a real node graph started through the runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from node_output import GraphLog
from nsl_bringup.runner import isolated_environment


@pytest.fixture(scope="session")
def ros_isolation():
    """Own DDS domain and localhost-only discovery for this run, also for in-process clients."""
    env = isolated_environment()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def rclpy_context(ros_isolation):
    import rclpy  # only for the tests that start a graph: test_lint needs no ROS 2

    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture
def graph_log() -> GraphLog:
    """Node output of one test, shown with its report when it fails."""
    return GraphLog()


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    # torch (under nsl_policy) is slow to import: only the tests that need a checkpoint wait.
    from nsl_policy.checkpoint import init_checkpoint
    from nsl_policy.model import QNetworkConfig

    path = tmp_path_factory.mktemp("ckpt") / "random_init.safetensors"
    init_checkpoint(str(path), QNetworkConfig(), seed=0)
    return path
