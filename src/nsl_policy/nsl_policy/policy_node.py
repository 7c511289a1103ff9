"""ROS 2 managed node: the QT-Opt policy that runs closed-loop grasp episodes against the arm.

A thin adapter around ``nsl_policy.policy.GraspPolicy``. Each episode: reset the arm, then per
step wait for a camera image newer than the last arm command, choose an action with CEM on the
Q-function, publish the step record, send the step to the arm; finally publish the episode
result. The episode loop (``nsl_policy.episode_loop``) runs in its own thread (service replies
and images arrive through the executor), so no callback ever blocks.

Lifecycle (``rclpy.lifecycle``): parameters are declared and checked at construction (an
invalid one exits with code 2); **configure** builds the rollout, the checkpoint slot and the
monitor, loads and validates the ``checkpoint`` parameter (a refused one is logged and the arm
waits for a valid one, as before) and creates the clients, publishers, subscriptions and
services; **activate** starts the episode loop (when ``autostart``); **deactivate** ends the
episode in flight at its next step boundary (the arm's reply to the step in flight is awaited,
no command is sent after; the episode is published incomplete, so it is recorded but not
trained on) and stops the loop; **cleanup** and **shutdown** release everything configure
made. ``nsl up``, the runner and the launch files bring the node to active.

Safety: no command without a valid checkpoint, a matched camera and a fresh, decodable
observation. After an episode aborted for a camera problem (stalled topic, refused encoding)
the arm gets no further command, not even a reset, until a usable image arrives. Commands are
clipped to the per-step and workspace limits and non-finite ones are never sent
(``nsl_policy.safety``).

Hot-swap (``nsl_policy.checkpoint_slot``): a checkpoint announced by the trainer
(``trainer/checkpoints``) or sent to ``policy/load_checkpoint`` is loaded and validated (safe
load, architecture, finite weights, smoke inference) at once; it goes into use at the next
episode boundary (at once when no episode runs), so every episode and every step record is
chosen by exactly one checkpoint. A rejected checkpoint leaves the old one in use; the reply
(or the log, for announcements) says why.

Run-time parameters: ``epsilon``, ``noise_std`` and ``task`` (the world changed: the task sent
to the arm on reset and recorded with every episode) apply from the next episode; a blank task,
or one that cannot name a folder, is refused with the reason.

Rollout (``nsl_policy.rollout``, parameter ``rollout_mode``, settable at run time): a validated
checkpoint goes in force at once (``immediate``), when the operator calls ``policy/promote``
(``manual``), or after a trial of interleaved candidate and incumbent episodes (``trial``);
decisions go to ``policy/rollout_decision``, the log, the next EpisodeResult's ``rollout``
field and the file beside the checkpoint (``nsl_policy.rollout_endpoints``).

Learning monitor (``nsl_policy.monitor``): success per checkpoint and task with 95% intervals,
the trial's progress and the stopped-improving signal, published on ``/diagnostics``
(``nsl_policy.diagnostics``) after every episode and once a second; ``nsl status`` prints it.
"""

from __future__ import annotations

import threading

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from nsl_common import names
from nsl_common.node_main import run_node
from nsl_common.parameters import declare_settings
from nsl_common.qos import ANNOUNCE_QOS, LATCHED_QOS, RECORD_QOS
from nsl_msgs.msg import CheckpointInfo, EpisodeResult, StepRecord
from nsl_msgs.srv import ExecuteStep, LoadCheckpoint, ResetEpisode
from nsl_policy.camera_input import CameraInput
from nsl_policy.cem import CEMConfig
from nsl_policy.checkpoint import LoadedCheckpoint
from nsl_policy.checkpoint_slot import CheckpointSlot, StageOutcome
from nsl_policy.diagnostics import DIAGNOSTICS_DEPTH, diagnostic_array
from nsl_policy.episode_loop import EpisodeLoop
from nsl_policy.monitor import LearningMonitor, status_entries, validation_score
from nsl_policy.policy import ExplorationConfig, GraspPolicy
from nsl_policy.policy_messages import checkpoint_info
from nsl_policy.policy_settings import SETTINGS, check_settings, runtime_update, trial_settings
from nsl_policy.rollout import Rollout
from nsl_policy.rollout_endpoints import RolloutEndpoints


DIAGNOSTICS_PERIOD = 1.0
"""Seconds between /diagnostics reports besides the one after each episode: the 1 Hz that
diagnostic_updater uses, so monitors see a live node between slow episodes."""

SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class PolicyNode(EpisodeLoop, LifecycleNode):
    """The policy node (module doc); the episodes themselves are :class:`EpisodeLoop`'s."""

    def __init__(self) -> None:
        # Transitions run in the default group; everything the episode loop needs (arm
        # replies, images) is in other groups, so a deactivate waiting for the loop never
        # holds it up.
        super().__init__(names.POLICY_NODE)
        # Shutdown state first: destroy_node() runs even when the constructor fails below.
        self._stop = threading.Event()  # shutdown: nothing is published any more
        self._halt = threading.Event()  # deactivate or shutdown: the episode loop ends
        self._call_wake: threading.Event | None = None  # wakes the arm call in flight on shutdown
        self._loop: threading.Thread | None = None
        self._episodes_run = 0  # across activations: max_episodes counts all
        self._state = "unconfigured"
        self._made: list = []  # (destroy function, entity) of everything configure created
        self.slot: CheckpointSlot | None = None
        self.rollout: Rollout | None = None
        self.rollout_endpoints: RolloutEndpoints | None = None
        self.monitor: LearningMonitor | None = None
        self.config = declare_settings(self, SETTINGS)
        self.limits = check_settings(self.config)  # ValueError: the node exits with the reason
        # The scene seed counts on across activations; setting the parameter restarts it.
        self._next_seed = self.config["seed"]
        self.frame_id = self.get_namespace().strip("/") or "robot"
        # One condition for everything the episode loop waits on: images, camera matching,
        # checkpoints coming into force, deactivation. Notified by the callbacks; nothing polls.
        self._cond = threading.Condition()
        self._next_exploration: ExplorationConfig | None = None  # applies from the next episode
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ---- lifecycle ------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Build the rollout, slot and monitor, stage the checkpoint, create the endpoints."""
        self.config = {name: self.get_parameter(name).value for name in SETTINGS}
        try:
            self.limits = check_settings(self.config)
        except ValueError as exc:
            self.get_logger().error(str(exc))
            return FAILURE
        self.exploration = ExplorationConfig(
            epsilon=self.config["epsilon"], noise_std=self.config["noise_std"]
        )
        self.cem = CEMConfig(
            population=self.config["cem_population"],
            elites=self.config["cem_elites"],
            iterations=self.config["cem_iterations"],
        )
        with self._cond:
            self._next_exploration = None
        # The slot swaps checkpoints only between episodes; _on_swap builds the policy for it.
        self.policy: GraspPolicy | None = None
        self._policy_checkpoint_id = ""  # the checkpoint whose model the policy holds now
        self.rollout = Rollout(self.config["rollout_mode"], trial_settings(self.config))
        self.slot = CheckpointSlot(on_swap=self._on_swap, gate=self.rollout.gate)
        self.rollout.attach(self.slot)
        self.monitor = LearningMonitor()
        self._create_endpoints()
        if self.config["checkpoint"]:
            outcome = self.stage_checkpoint(self.config["checkpoint"])
            if not outcome.accepted:
                self.get_logger().error(
                    f"{outcome.message}; the arm will not move until a valid checkpoint is loaded"
                )
        else:
            self.get_logger().warn(
                "no checkpoint parameter: the arm will not move until one is loaded "
                f"({names.LOAD_CHECKPOINT_SERVICE})"
            )
        self._state = "inactive"
        return SUCCESS

    def _create_endpoints(self) -> None:
        io_group = ReentrantCallbackGroup()
        swap_group = MutuallyExclusiveCallbackGroup()
        self.rollout_endpoints = RolloutEndpoints(
            self, self.rollout, self.frame_id, callback_group=swap_group, monitor=self.monitor
        )
        made = self._made
        self.camera = CameraInput(self, self._cond, io_group)
        made.append((self.destroy_subscription, self.camera.subscription))
        self.reset_client = self.create_client(
            ResetEpisode, names.ARM_RESET_SERVICE, callback_group=io_group
        )
        self.step_client = self.create_client(
            ExecuteStep, names.ARM_STEP_SERVICE, callback_group=io_group
        )
        made += [(self.destroy_client, self.reset_client), (self.destroy_client, self.step_client)]
        for attribute, kind, topic, qos in (
            ("step_pub", StepRecord, names.STEP_RECORDS_TOPIC, RECORD_QOS),
            ("result_pub", EpisodeResult, names.EPISODE_RESULTS_TOPIC, RECORD_QOS),
            ("active_pub", CheckpointInfo, names.ACTIVE_CHECKPOINT_TOPIC, LATCHED_QOS),
            ("diagnostics_pub", DiagnosticArray, names.DIAGNOSTICS, DIAGNOSTICS_DEPTH),
        ):
            setattr(self, attribute, self.create_publisher(kind, topic, qos))
            made.append((self.destroy_publisher, getattr(self, attribute)))
        service = self.create_service(
            LoadCheckpoint,
            names.LOAD_CHECKPOINT_SERVICE,
            self.on_load_checkpoint,
            callback_group=swap_group,
        )
        announcements = self.create_subscription(
            CheckpointInfo,
            names.CHECKPOINT_ANNOUNCE_TOPIC,
            self.on_announcement,
            ANNOUNCE_QOS,
            callback_group=swap_group,
        )
        timer = self.create_timer(
            DIAGNOSTICS_PERIOD, self.publish_diagnostics, callback_group=io_group
        )
        made += [
            (self.destroy_service, service),
            (self.destroy_subscription, announcements),
            (self.destroy_timer, timer),
        ]

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the episode loop (when ``autostart``)."""
        self._halt.clear()
        self._state = "active"
        if self.config["autostart"]:
            self._loop = threading.Thread(
                target=self.run_episodes, name="episode-loop", daemon=True
            )
            self._loop.start()
        self.publish_diagnostics()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """End the episode in flight at its next step boundary and stop the loop."""
        if not self._end_loop():
            self.get_logger().error("the episode loop did not stop; still active")
            return FAILURE
        self._state = "inactive"
        self.publish_diagnostics()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release what configure made (the rollout's records go; its lineage files stay)."""
        self._release()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the loop and release everything."""
        self.shutdown()
        self._release()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the loop and release everything; the node goes back to unconfigured."""
        self._end_loop()
        self._release()
        return SUCCESS

    def _end_loop(self) -> bool:
        """Stop the episode loop (its episode ends at a step boundary); False if it stays."""
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
        loop = self._loop
        if loop is not None and loop.is_alive() and loop is not threading.current_thread():
            loop.join(timeout=self.config["arm_timeout"] + self.config["observation_timeout"])
            if loop.is_alive():
                return False
        self._loop = None
        return True

    def _release(self) -> None:
        for destroy, entity in reversed(self._made):
            destroy(entity)
        self._made.clear()
        if self.rollout_endpoints is not None:
            self.rollout_endpoints.destroy()
        self.slot = self.rollout = self.rollout_endpoints = self.monitor = None
        self.policy = None
        self._state = "unconfigured"

    # ---- checkpoints ----------------------------------------------------------------------
    def stage_checkpoint(self, path: str) -> StageOutcome:
        """Stage ``path`` in the slot and log the outcome (refusals name the problem)."""
        outcome = self.slot.stage(path)
        if not outcome.accepted:
            self.get_logger().error(
                f"checkpoint rejected, keeping {self.slot.active_id or 'none'}: {outcome.message}"
            )
        elif not outcome.in_force:
            self.get_logger().info(outcome.message)
        held = self.slot.held
        if outcome.held and held is not None:
            self.monitor.checkpoint_seen(held.checkpoint_id, validation_score(held.metadata))
        return outcome

    def publish_diagnostics(self) -> None:
        """Publish the learning monitor's report on /diagnostics (configured states only)."""
        monitor, rollout, publisher = self.monitor, self.rollout, self.diagnostics_pub
        if monitor is None or rollout is None or self._stop.is_set():
            return
        entries = status_entries(monitor.report(rollout.status()), running=self._state)
        array = diagnostic_array(entries, self.get_fully_qualified_name(), self.frame_id)
        array.header.stamp = self.get_clock().now().to_msg()
        publisher.publish(array)

    def _on_swap(self, loaded: LoadedCheckpoint, previous: LoadedCheckpoint | None) -> None:
        """Build the policy for the checkpoint now in force and announce it (no episode runs)."""
        if self.policy is None or self.policy.model.config != loaded.config:
            self.policy = GraspPolicy(
                loaded.model, self.cem, self.exploration, seed=self.config["seed"]
            )
        else:
            self.policy.swap_model(loaded.model)
        self._policy_checkpoint_id = loaded.checkpoint_id
        self.rollout.in_force(loaded, previous)
        self.monitor.checkpoint_seen(loaded.checkpoint_id, validation_score(loaded.metadata))
        stamp = self.get_clock().now().to_msg()
        self.active_pub.publish(checkpoint_info(loaded, stamp, self.frame_id))
        self.get_logger().info(
            f"checkpoint in use: {loaded.checkpoint_id} ({loaded.path})"
            + (f", replacing {previous.checkpoint_id}" if previous else "")
        )
        with self._cond:
            self._cond.notify_all()

    def on_load_checkpoint(
        self, request: LoadCheckpoint.Request, response: LoadCheckpoint.Response
    ) -> LoadCheckpoint.Response:
        """Reply with success, message and checkpoint_id.

        The message says why a checkpoint was rejected, or that the rollout gate holds it (a
        trial, the operator), and is empty when it goes in force; checkpoint_id is the
        accepted checkpoint (in use from the next episode boundary) or, when rejected, the one
        still in use. A blank path, one holding a NUL or one that is not a regular file is
        refused with a message starting ``path:``; nothing raises out of this callback, and a
        refusal keeps the checkpoint in use.
        """
        try:
            outcome = self.stage_checkpoint(request.path)
        except Exception as exc:  # noqa: BLE001 - a request must never kill the node
            slot = self.slot
            response.success = False
            response.checkpoint_id = slot.active_id if slot is not None else ""
            response.message = f"internal error, checkpoint not loaded: {exc!r}"
            self.get_logger().error(f"load_checkpoint({request.path!r}) failed: {exc!r}")
            return response
        response.success, response.checkpoint_id = outcome.accepted, outcome.checkpoint_id
        response.message = "" if outcome.accepted and not outcome.held else outcome.message
        return response

    def on_announcement(self, msg: CheckpointInfo) -> None:
        try:
            if msg.checkpoint_id and self.slot.knows(msg.checkpoint_id):
                return
            self.get_logger().info(
                f"trainer announced checkpoint {msg.checkpoint_id} ({msg.path})"
            )
            self.stage_checkpoint(msg.path)
        except Exception as exc:  # noqa: BLE001 - an announcement must never kill the node
            self.get_logger().error(f"announced checkpoint {msg.path!r} failed: {exc!r}")

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Accept exploration, task, seed and rollout mode changes (from the next episode)."""
        with self._cond:
            current = self._next_exploration or getattr(self, "exploration", None)
        if current is None:  # not configured yet: configure reads the parameters...
            for p in params:
                if p.name == "seed":  # ...but the episodes' seed count starts here
                    self._seed_next_episode(p.value)
            return SetParametersResult(successful=True)
        try:
            change = runtime_update(current, {p.name: p.value for p in params})
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self._cond:
            self._next_exploration = change.exploration
        if change.task is not None and change.task != self.config["task"]:
            self.get_logger().info(
                f"task: {self.config['task']} -> {change.task} (from the next episode)"
            )
            # An episode reads its task once, as it starts: the one in flight keeps its own.
            self.config["task"] = change.task
        if change.seed is not None:
            self.get_logger().info(f"seed: the next episode resets with seed {change.seed}")
            self._seed_next_episode(change.seed)
        rollout, mode = self.rollout, change.rollout_mode
        if mode is not None and rollout is not None and mode != rollout.mode:
            self.get_logger().info(f"rollout mode: {rollout.mode} -> {mode}")
            rollout.set_mode(mode)  # a held candidate follows (immediate promotes it)
        return SetParametersResult(successful=True)

    def _seed_next_episode(self, seed: int) -> None:
        """Reset the next episode with ``seed`` (and count on from it)."""
        with self._cond:  # an episode takes its seed as it starts: the one in flight keeps its
            self._next_seed = seed

    def destroy_node(self) -> None:
        self.shutdown()
        super().destroy_node()

    def shutdown(self) -> None:
        """Stop the episode loop at once: the arm call in flight is interrupted."""
        self._stop.set()
        self._halt.set()
        if self._call_wake is not None:
            self._call_wake.set()
        cond = getattr(self, "_cond", None)  # absent when the constructor failed early
        if cond is not None:
            with cond:
                cond.notify_all()
        loop = self._loop
        if loop is not None and loop.is_alive() and loop is not threading.current_thread():
            loop.join(timeout=self.config["arm_timeout"])


def main(args=None) -> None:
    run_node(PolicyNode, "policy_node", args, threads=4)


if __name__ == "__main__":
    main()
