"""A client node that drives and observes a running NSL graph (used by the demo and system tests).

It spins in a background thread; the ``wait_*`` and ``call`` methods block the *calling* thread
(never an executor callback) on conditions that the subscriptions signal.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rcl_interfaces.srv import SetParameters, SetParametersAtomically
from std_msgs.msg import String
from std_srvs.srv import Trigger

from nsl_common import names
from nsl_common.lifecycle import change_state
from nsl_common.qos import LATCHED_QOS, RECORD_QOS
from nsl_common.service_call import ServiceCallError, call_service
from nsl_msgs.msg import CheckpointInfo, EpisodeResult, TrainerStatus
from nsl_msgs.srv import FineTune, LoadCheckpoint


class LoopClient(Node):
    def __init__(
        self, namespace: str = "", name: str = "nsl_client", context: Context | None = None
    ) -> None:
        # A context of its own lets a client join another DDS domain than the process default.
        super().__init__(name, namespace=namespace or "/", context=context)
        self._cond = threading.Condition()
        self.results: list[EpisodeResult] = []
        self._last_result_s = time.monotonic()  # when the latest episode result arrived
        self.active_checkpoint: CheckpointInfo | None = None
        self.trainer_status: TrainerStatus | None = None
        self.collector_status: dict = {}
        """The collector's latest counters (its latched ``collector/status`` JSON)."""
        self.create_subscription(
            EpisodeResult, names.EPISODE_RESULTS_TOPIC, self._on_result, RECORD_QOS
        )
        self.create_subscription(
            CheckpointInfo, names.ACTIVE_CHECKPOINT_TOPIC, self._on_active, LATCHED_QOS
        )
        self.create_subscription(
            TrainerStatus, names.TRAINER_STATUS_TOPIC, self._on_status, LATCHED_QOS
        )
        self.create_subscription(
            String, names.COLLECTOR_STATUS_TOPIC, self._on_collector_status, LATCHED_QOS
        )
        self.fine_tune_client = self.create_client(FineTune, names.FINE_TUNE_SERVICE)
        self.stop_session_client = self.create_client(Trigger, names.STOP_SESSION_SERVICE)
        self.load_checkpoint_client = self.create_client(
            LoadCheckpoint, names.LOAD_CHECKPOINT_SERVICE
        )
        self.set_parameters_atomically_client = self.create_client(
            SetParametersAtomically, names.POLICY_SET_PARAMETERS_ATOMICALLY_SERVICE
        )
        self.set_parameters_client = self.create_client(
            SetParameters, names.POLICY_SET_PARAMETERS_SERVICE
        )
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self)
        self._spinner = threading.Thread(
            target=self._executor.spin, daemon=True, name="client-spin"
        )
        self._spinner.start()

    def _update(self, fn: Callable[[], None]) -> None:
        with self._cond:
            fn()
            self._cond.notify_all()

    def _on_result(self, msg: EpisodeResult) -> None:
        def add() -> None:
            self.results.append(msg)
            self._last_result_s = time.monotonic()

        self._update(add)

    def wait_for_quiet_results(self, quiet_s: float, timeout: float) -> None:
        """Block until no episode result has arrived for ``quiet_s`` seconds.

        After the policy has stopped (deactivated), its last results may still be on their way:
        the state change's reply and the results topic are separate channels. TimeoutError when
        results keep coming for ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                left = self._last_result_s + quiet_s - now
                if left <= 0:
                    return
                if now >= deadline:
                    raise TimeoutError(f"episode results still arriving after {timeout:.0f} s")
                self._cond.wait(min(left, deadline - now))

    def _on_active(self, msg: CheckpointInfo) -> None:
        self._update(lambda: setattr(self, "active_checkpoint", msg))

    def _on_status(self, msg: TrainerStatus) -> None:
        self._update(lambda: setattr(self, "trainer_status", msg))

    def _on_collector_status(self, msg: String) -> None:
        try:
            status = json.loads(msg.data)
        except ValueError:
            return  # not ours to judge here; the collector node logs its own state
        self._update(lambda: setattr(self, "collector_status", status))

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout=timeout):
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def wait_for_recorded(
        self,
        count: int,
        timeout: float,
        stop: Callable[[], bool] = lambda: False,
        since: dict | None = None,
    ) -> None:
        """Wait until the collector reports ``count`` episodes written, or ``stop()`` is true.

        The count comes from the latched collector status. The collector gets the results on
        its own subscription, later than this client on a loaded machine: close a session only
        after this. ``since`` is the collector status at the last session close: episodes the
        collector dropped after it count as handled (they are never written), and a status that
        still names that closed session counts nothing.
        """

        def handled() -> int:
            status = self.collector_status
            if since is None:
                return status.get("session_episodes", 0)
            if since.get("session") and status.get("session") == since["session"]:
                return 0
            dropped = status.get("dropped_episodes", 0) - since.get("dropped_episodes", 0)
            return status.get("session_episodes", 0) + dropped

        self.wait_until(
            lambda: handled() >= count or stop(),
            timeout,
            f"the collector to write {count} episodes",
        )

    def results_with(self, checkpoint_id: str, complete_only: bool = True) -> list[EpisodeResult]:
        with self._cond:
            return [
                r
                for r in self.results
                if r.checkpoint_id == checkpoint_id and (r.complete or not complete_only)
            ]

    def complete_results(self, task: str | None = None) -> list[EpisodeResult]:
        """Return the complete episodes seen so far (only those on ``task``, when given)."""
        with self._cond:
            return [r for r in self.results if r.complete and (task is None or r.task == task)]

    def wait_for_episodes(
        self,
        checkpoint_id: str,
        count: int,
        timeout: float,
        progress: Callable[[int], None] | None = None,
        epsilon: float | None = None,
        stop: Callable[[], bool] | None = None,
        task: str | None = None,
        seeds: range | None = None,
    ) -> list[EpisodeResult]:
        """Return the first ``count`` complete episodes run with ``checkpoint_id``.

        With ``epsilon``, only episodes with that exploration count, with ``task`` only those
        on that task, with ``seeds`` only those reset with a seed in that range; episodes that
        arrived already count too. When ``stop`` returns True (e.g.
        the checkpoint was rolled back), the episodes so far are returned, fewer than ``count``.
        """

        def matching() -> list[EpisodeResult]:
            return [
                r
                for r in self.results
                if r.checkpoint_id == checkpoint_id
                and r.complete
                and (task is None or r.task == task)
                and (seeds is None or r.seed in seeds)
                and (
                    epsilon is None or json.loads(r.exploration or "{}").get("epsilon") == epsilon
                )
            ]

        seen = [0]

        def enough() -> bool:
            n = len(matching())
            if progress and n != seen[0]:
                seen[0] = n
                progress(min(n, count))
            return n >= count or (stop is not None and stop())

        self.wait_until(enough, timeout, f"{count} episodes with checkpoint {checkpoint_id}")
        with self._cond:
            return matching()[:count]

    def set_exploration(
        self, epsilon: float, noise_std: float | None = None, timeout: float = 30.0
    ) -> None:
        """Set the policy's epsilon, and its action noise when given (from its next episode).

        Both change in one atomic parameter update, so no episode runs with only one of them.
        """
        values = {"epsilon": float(epsilon)}
        if noise_std is not None:
            values["noise_std"] = float(noise_std)
        request = SetParametersAtomically.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        result = self.call(self.set_parameters_atomically_client, request, timeout).result
        if not result.successful:
            raise ValueError(f"policy refused {values}: {result.reason}")

    def set_seed(self, seed: int, timeout: float = 30.0) -> None:
        """Set the policy's scene seed: its next episode resets with ``seed``, then + 1 each."""
        self._set_policy_parameter("seed", int(seed), timeout)

    def set_task(self, task: str, timeout: float = 30.0) -> None:
        """Set the policy's task, the world it runs in (applies from its next episode)."""
        self._set_policy_parameter("task", str(task), timeout)

    def set_policy_active(self, active: bool, timeout: float = 60.0) -> None:
        """Activate or deactivate the policy node (the robot runs episodes or waits).

        Deactivating ends the episode in flight at its next step boundary (published
        incomplete) and returns once the episode loop has stopped; an inactive policy still
        swaps in checkpoints it is sent or announced. RuntimeError when the node refuses.
        """
        target = names.qualified_node_name(self.get_namespace(), names.POLICY_NODE)
        change_state(self, target, "activate" if active else "deactivate", timeout)

    def _set_policy_parameter(self, name: str, value: int | float | str, timeout: float) -> None:
        """Set one policy parameter; ValueError with the policy's reason when it refuses."""
        message = Parameter(name, value=value).to_parameter_msg()
        request = SetParameters.Request(parameters=[message])
        result = self.call(self.set_parameters_client, request, timeout).results[0]
        if not result.successful:
            raise ValueError(f"policy refused {name}={value!r}: {result.reason}")

    def call(self, client, request, timeout: float = 30.0):
        try:
            return call_service(client, request, timeout)
        except ServiceCallError as exc:
            raise TimeoutError(str(exc)) from exc

    def close(self) -> None:
        self._executor.shutdown()
        self._spinner.join(timeout=5)
        self.destroy_node()


def ensure_rclpy() -> None:
    if not rclpy.ok():
        rclpy.init()
