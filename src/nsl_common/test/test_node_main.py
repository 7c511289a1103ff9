"""run_node in a process of its own: a stop that hangs prints every thread's stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("rclpy")

from nsl_common.node_main import CLEANUP_STACKS_AFTER_S  # noqa: E402

# A node whose clean-up hangs longer than the stack dump's delay, as a wedged callback would.
HANGING_NODE = textwrap.dedent(
    """
    import sys, time
    from rclpy.node import Node
    from nsl_common.node_main import run_node

    class HangsOnDestroy(Node):
        def __init__(self):
            super().__init__("hangs_on_destroy")
            print("spinning", flush=True)

        def destroy_node(self):
            wedged_in_cleanup(self)

    def wedged_in_cleanup(node):
        time.sleep({hang})
        Node.destroy_node(node)

    run_node(HangsOnDestroy, "hangs_on_destroy")
    """
)


def test_a_hanging_stop_prints_the_stacks_and_still_exits(tmp_path):
    hang = CLEANUP_STACKS_AFTER_S + 2.0
    script = tmp_path / "hanging_node.py"
    script.write_text(HANGING_NODE.format(hang=hang))
    env = {**os.environ, "ROS_DOMAIN_ID": str(1 + os.getpid() % 100)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "spinning"
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=hang + 20)
    finally:
        proc.kill()
    took = time.monotonic() - start
    assert proc.returncode == 0, err[-2000:]
    assert took >= hang
    # The dump names the function the clean-up hung in, in the main thread's stack.
    assert "wedged_in_cleanup" in err, err[-2000:]
    assert "Thread 0x" in err or "Current thread" in err, err[-2000:]
