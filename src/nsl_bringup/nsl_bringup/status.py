"""``nsl status``: read the policy's learning monitor once from ``/diagnostics`` and print it."""

from __future__ import annotations

import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from nsl_common import names
from nsl_policy.diagnostics import DIAGNOSTICS_DEPTH, node_entries
from nsl_policy.monitor import format_entries


def policy_names(array: DiagnosticArray, namespace: str | None) -> list[str]:
    """Return the policy nodes reporting in ``array`` (only ``namespace``'s when given)."""
    wanted_name = (
        names.qualified_node_name(namespace, names.POLICY_NODE) if namespace is not None else ""
    )
    found = []
    for status in array.status:
        node = status.name.split(": ", 1)[0]
        wanted = (
            node == wanted_name
            if namespace is not None
            else node.endswith(f"/{names.POLICY_NODE}")
        )
        if wanted and node not in found:
            found.append(node)
    return found


def read_status(namespace: str | None, timeout: float) -> dict[str, list[tuple[int, str, str]]]:
    """Return ``{policy node: its entries}`` from the first report on /diagnostics.

    Empty when no policy reported within ``timeout`` seconds.
    """
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("nsl_status", context=context)
    arrays: list[DiagnosticArray] = []
    node.create_subscription(
        DiagnosticArray,
        names.DIAGNOSTICS,
        lambda msg: arrays.append(msg) if policy_names(msg, namespace) else None,
        DIAGNOSTICS_DEPTH,
    )
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while not arrays and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=min(0.1, max(0.0, deadline - time.monotonic())))
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    if not arrays:
        return {}
    return {name: node_entries(arrays[0], name) for name in policy_names(arrays[0], namespace)}


def format_status(status: dict[str, list[tuple[int, str, str]]]) -> str:
    """Return the entries of every policy node as terminal text, one block per node."""
    return "\n\n".join(f"{name}\n{format_entries(entries)}" for name, entries in status.items())
