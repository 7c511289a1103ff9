"""call_service against a real service in this process."""

from __future__ import annotations

import os
import threading

import pytest

rclpy = pytest.importorskip("rclpy")
# After the skip: these need ROS 2.
from nsl_common.service_call import call_service, ServiceCallError  # noqa: E402
from rclpy.callback_groups import ReentrantCallbackGroup  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402


@pytest.fixture
def spun_node():
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=1 + os.getpid() % 100)
    node = rclpy.create_node("service_call_test", context=context)
    executor = MultiThreadedExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def test_reply_timeout_and_interrupt(spun_node):
    release = threading.Event()

    def slow(request, response):
        release.wait(5)
        response.success, response.message = True, "done"
        return response

    spun_node.create_service(Trigger, "slow", slow, callback_group=ReentrantCallbackGroup())
    client = spun_node.create_client(Trigger, "slow")
    release.set()
    assert call_service(client, Trigger.Request(), timeout=10).message == "done"
    release.clear()
    with pytest.raises(ServiceCallError, match="did not answer within"):
        call_service(client, Trigger.Request(), timeout=0.5)
    stop, wake = threading.Event(), threading.Event()
    threading.Timer(0.2, lambda: (stop.set(), wake.set())).start()
    with pytest.raises(ServiceCallError, match="interrupted"):
        call_service(client, Trigger.Request(), timeout=30, wake=wake, interrupted=stop.is_set)
    release.set()
    # A reply never sets the caller's stop condition.
    quiet = threading.Event()
    assert call_service(
        client, Trigger.Request(), timeout=10, wake=threading.Event(), interrupted=quiet.is_set
    ).success
    assert not quiet.is_set()
    missing = spun_node.create_client(Trigger, "nobody_serves_this")
    with pytest.raises(ServiceCallError, match="not available"):
        call_service(missing, Trigger.Request(), timeout=0.3)
