"""Drive a managed (lifecycle) node through its standard lifecycle services.

``<node>/get_state`` and ``<node>/change_state`` are the names every ROS 2 lifecycle node
serves. The runner brings its lifecycle nodes to active with this module's command line,
run as a child process with the graph's environment (so it shares the nodes' DDS domain)::

    python -m nsl_common.lifecycle /robot1/policy active --timeout 120

Tests use :func:`change_state` and :func:`get_state` from their own node.
"""

from __future__ import annotations

import argparse
import sys
import time
import weakref

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

TRANSITIONS = {
    "configure": Transition.TRANSITION_CONFIGURE,
    "activate": Transition.TRANSITION_ACTIVATE,
    "deactivate": Transition.TRANSITION_DEACTIVATE,
    "cleanup": Transition.TRANSITION_CLEANUP,
}
"""The transitions by name (shutdown's id depends on the state; :func:`shutdown_transition`)."""

GOAL = {
    "configure": "inactive",
    "activate": "active",
    "deactivate": "inactive",
    "cleanup": "unconfigured",
}
"""The state each transition ends in when it succeeds."""

RESEND_AFTER = 2.0
"""Seconds without an answer before a request is sent again: a reply sent before the
client's response reader was matched is lost (a DDS race), and a service call must not hang
on it."""

UP = {"unconfigured": "configure", "inactive": "activate"}
"""The transition that brings a node from each state one step towards active."""


def shutdown_transition(state: str) -> int:
    """Return the id of the shutdown transition from ``state``."""
    return {
        "unconfigured": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
        "inactive": Transition.TRANSITION_INACTIVE_SHUTDOWN,
        "active": Transition.TRANSITION_ACTIVE_SHUTDOWN,
    }[state]


def _call(node: Node, kind, service: str, request, timeout: float, spin):
    client = node.create_client(kind, service)
    try:
        deadline = time.monotonic() + timeout
        while not client.service_is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"lifecycle service {service} not available in {timeout:g} s")
            spin(0.1)
        while True:
            future, sent = client.call_async(request), time.monotonic()
            while not future.done() and time.monotonic() - sent < RESEND_AFTER:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"lifecycle service {service} did not answer in {timeout:g} s"
                    )
                spin(0.05)
            if future.done():
                return future.result()
    finally:
        node.destroy_client(client)


_OWN_EXECUTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""The executors this module made for nodes nothing else spins (reused by later calls)."""


def _waiter(node: Node):
    """Return ``spin(seconds)``: spin ``node`` when nothing else does, else just wait."""
    executor = _OWN_EXECUTORS.get(node)
    if executor is None:
        if node.executor is not None:
            return time.sleep  # another thread spins it
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        _OWN_EXECUTORS[node] = executor

    def spin(seconds: float) -> None:
        executor.spin_once(timeout_sec=seconds)

    return spin


def get_state(node: Node, target: str, timeout: float = 30.0) -> str:
    """Return the lifecycle state label of node ``target`` (fully qualified name)."""
    reply = _call(
        node, GetState, f"{target}/get_state", GetState.Request(), timeout, _waiter(node)
    )
    return reply.current_state.label


def change_state(node: Node, target: str, transition: str | int, timeout: float = 60.0) -> None:
    """Trigger ``transition`` (a name of :data:`TRANSITIONS` or an id) on node ``target``.

    Raises RuntimeError when the node refuses or fails it, TimeoutError when it does not answer.
    """
    transition_id = TRANSITIONS[transition] if isinstance(transition, str) else transition
    request = ChangeState.Request(transition=Transition(id=transition_id))
    reply = _call(node, ChangeState, f"{target}/change_state", request, timeout, _waiter(node))
    # A resent request finds the transition done: the state says whether it succeeded.
    if not reply.success and get_state(node, target, timeout) != GOAL.get(transition):
        raise RuntimeError(f"node {target} refused or failed the transition {transition}")


def bring_up(node: Node, target: str, timeout: float, say=print) -> str:
    """Configure and activate ``target`` as far as its state needs; return the final state."""
    state = get_state(node, target, timeout)
    while state in UP:
        change_state(node, target, UP[state], timeout)
        new = get_state(node, target, timeout)
        say(f"{target}: {state} -> {new}")
        if new == state:
            raise RuntimeError(f"node {target} stayed {state} after {UP[state]}")
        state = new
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bring a lifecycle node to active")
    parser.add_argument("node", help="fully qualified node name, e.g. /robot1/policy")
    parser.add_argument("state", choices=["active"], help="the state to reach")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per step")
    args = parser.parse_args(argv)
    rclpy.init()
    node = Node("nsl_lifecycle")
    try:
        state = bring_up(node, args.node, args.timeout, say=lambda text: print(text, flush=True))
    except (RuntimeError, TimeoutError) as exc:
        print(f"could not bring {args.node} to active: {exc}", flush=True)
        return 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0 if state == "active" else 1


if __name__ == "__main__":
    sys.exit(main())
