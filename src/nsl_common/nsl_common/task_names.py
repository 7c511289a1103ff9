"""The rule every task name follows (ROS-free): the policy sends it, the collector files by it.

A task names the world variation an episode ran in; the collector records a session under
``<dataset_root>/<task>/``, so a task must be usable as one folder name.
"""

from __future__ import annotations


def task_name_problem(task: object) -> str | None:
    """Return what is wrong with ``task`` as a task name, or None when it is a valid one."""
    if not isinstance(task, str):
        return f"must be a string, got {type(task).__name__}"
    if not task.strip():
        return "must not be blank"
    if task != task.strip():
        return f"must not start or end with white space (got {task!r})"
    if "/" in task or "\0" in task or task in (".", ".."):
        return f"must be one folder name: no '/', NUL, '.' or '..' (got {task!r})"
    return None
