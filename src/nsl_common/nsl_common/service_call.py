"""Call a ROS service from a plain thread (never an executor callback) and wait for the reply."""

from __future__ import annotations

import threading
from collections.abc import Callable


class ServiceCallError(RuntimeError):
    """The service is missing, did not answer in time, or the call was interrupted."""


def call_service(
    client,
    request,
    timeout: float,
    wake: threading.Event | None = None,
    interrupted: Callable[[], bool] = lambda: False,
):
    """Return the reply of ``client`` to ``request``.

    Raises ServiceCallError when the service is missing, does not answer within ``timeout``
    seconds, or is interrupted.

    To interrupt a call from another thread, pass a fresh ``wake`` event and an ``interrupted``
    predicate: set the predicate's condition, then ``wake``. The node of ``client`` must be spun by
    an executor in another thread, which delivers the reply.
    """
    if not client.wait_for_service(timeout_sec=timeout):
        raise ServiceCallError(f"service {client.srv_name} not available after {timeout:.0f} s")
    if interrupted():
        raise ServiceCallError(f"call to {client.srv_name} interrupted")
    done = wake or threading.Event()
    future = client.call_async(request)
    future.add_done_callback(lambda _f: done.set())
    done.wait(timeout)
    if not future.done():
        future.cancel()
        if interrupted():
            raise ServiceCallError(f"call to {client.srv_name} interrupted")
        raise ServiceCallError(f"service {client.srv_name} did not answer within {timeout:.0f} s")
    return future.result()
