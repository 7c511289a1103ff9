"""The standard ``main()`` of an NSL node: init, spin until Ctrl-C or shutdown, clean up.

A node's constructor raises on an invalid configuration (bad parameter value, missing
dependency); ``run_node`` prints that message and exits with code 2, so the runner and
``ros2 launch`` show the reason instead of a traceback.
"""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Callable

import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import (
    ExternalShutdownException,
    MultiThreadedExecutor,
    SingleThreadedExecutor,
)
from rclpy.node import Node

CLEANUP_STACKS_AFTER_S = 6.0  # below the runner's 10 s grace before SIGKILL
CONFIG_ERRORS: tuple[type[BaseException], ...] = (ValueError, ParameterException)


def run_node(
    make_node: Callable[[], Node],
    program: str,
    args=None,
    threads: int = 1,
    config_errors: tuple[type[BaseException], ...] = (),
) -> None:
    """Spin the node ``make_node()`` builds; ``threads`` > 1 uses a MultiThreadedExecutor."""
    rclpy.init(args=args)
    node = None
    executor = (
        MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
    )
    try:
        node = make_node()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except CONFIG_ERRORS + tuple(config_errors) as exc:
        print(f"{program}: {exc}", file=sys.stdout, flush=True)
        raise SystemExit(2)
    except RuntimeError:
        # Ctrl-C shuts the context down while the executor builds its wait set; rclpy then raises
        # RCLError ("context is not valid") instead of ExternalShutdownException. A normal stop.
        if rclpy.ok():
            raise
    finally:
        # A stop that hangs (a callback that never returns, a thread joined at interpreter exit)
        # prints every thread's stack, so the runner's log says where before it kills the
        # process. Not cancelled: the interpreter's exit after this is covered too.
        faulthandler.dump_traceback_later(CLEANUP_STACKS_AFTER_S)
        if node is not None:
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
