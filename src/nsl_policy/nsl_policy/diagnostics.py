"""The learning monitor on ``/diagnostics``: its report as diagnostic_msgs/DiagnosticArray.

Each :class:`nsl_policy.monitor.StatusEntry` becomes one DiagnosticStatus named
``<node>: <entry>`` (``/robot1/policy: learning``, ``... : trial``, ``... : success <id>
<task>``) with the robot (namespace) as hardware_id, so rqt_robot_monitor and
diagnostic_aggregator group them per robot and ``nsl status`` finds its node's entries.
"""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from .monitor import StatusEntry

DIAGNOSTICS_DEPTH = 10
"""History of the /diagnostics publisher: the depth diagnostic_updater uses."""


def diagnostic_status(entry: StatusEntry, node_name: str, hardware_id: str) -> DiagnosticStatus:
    """Return one entry as a DiagnosticStatus under ``node_name``."""
    return DiagnosticStatus(
        level=bytes([entry.level]),
        name=f"{node_name}: {entry.name}",
        message=entry.message,
        hardware_id=hardware_id,
        values=[KeyValue(key=k, value=v) for k, v in entry.values.items()],
    )


def diagnostic_array(
    entries: list[StatusEntry], node_name: str, hardware_id: str
) -> DiagnosticArray:
    """Return the entries as a DiagnosticArray (the caller stamps its header)."""
    return DiagnosticArray(
        status=[diagnostic_status(entry, node_name, hardware_id) for entry in entries]
    )


def level_of(status: DiagnosticStatus) -> int:
    """Return a status's level as an int (the field is a byte)."""
    level = status.level
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)


def node_entries(array: DiagnosticArray, node_name: str) -> list[tuple[int, str, str]]:
    """Return ``(level, entry name, message)`` of the statuses of ``node_name`` in ``array``."""
    prefix = f"{node_name}: "
    return [
        (level_of(s), s.name[len(prefix) :], s.message)
        for s in array.status
        if s.name.startswith(prefix)
    ]
