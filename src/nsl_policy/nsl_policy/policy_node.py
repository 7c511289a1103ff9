"""ROS 2 node: the QT-Opt policy that runs closed-loop grasp episodes against the arm interface.

A thin adapter around ``nsl_policy.policy.GraspPolicy``. Each episode: reset the arm, then per
step wait for a camera image newer than the last arm command, choose an action with CEM on the
Q-function, publish the step record, send the step to the arm; finally publish the episode
result. The episode loop runs in its own thread (service replies and images arrive through the
executor), so no callback ever blocks.

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

import math
import threading
import time
import uuid

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import Image

from nsl_common import names
from nsl_common.node_main import run_node
from nsl_common.parameters import descriptor
from nsl_common.qos import ANNOUNCE_QOS, LATCHED_QOS, RECORD_QOS, SENSOR_QOS
from nsl_common.service_call import ServiceCallError, call_service
from nsl_msgs.msg import CheckpointInfo, EpisodeResult, GraspAction, GripperState, StepRecord
from nsl_msgs.srv import ExecuteStep, LoadCheckpoint, ResetEpisode
from nsl_policy.cem import CEMConfig
from nsl_policy.checkpoint import LoadedCheckpoint
from nsl_policy.checkpoint_slot import CheckpointSlot, StageOutcome
from nsl_policy.diagnostics import DIAGNOSTICS_DEPTH, diagnostic_array
from nsl_policy.image import SUPPORTED_ENCODINGS, resize_for_network, to_rgb
from nsl_policy.monitor import LearningMonitor, status_entries, validation_score
from nsl_policy.policy import ExplorationConfig, GraspPolicy
from nsl_policy.policy_settings import SETTINGS, check_settings, trial_settings
from nsl_policy.rollout import MODES, Rollout
from nsl_policy.rollout_endpoints import RolloutEndpoints
from nsl_policy.safety import UnsafeCommand, safe_command


DIAGNOSTICS_PERIOD = 1.0
"""Seconds between /diagnostics reports besides the one after each episode: the 1 Hz that
diagnostic_updater uses, so monitors see a live node between slow episodes."""


class EpisodeAborted(RuntimeError):
    """The episode cannot go on safely (no fresh image, arm error); it is not trained on."""


class CameraProblem(EpisodeAborted):
    """No fresh or no usable camera image: the arm gets no command until a usable image arrives."""


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__(names.POLICY_NODE)
        # Shutdown state first: destroy_node() runs even when the constructor fails below.
        self._stop = threading.Event()
        self._call_wake: threading.Event | None = None  # wakes the arm call in flight on shutdown
        self._loop: threading.Thread | None = None
        for name, s in SETTINGS.items():
            d = descriptor(
                s.description,
                int_range=s.int_range,
                float_range=s.float_range,
                read_only=not s.runtime,
            )
            self.declare_parameter(name, s.default, d)
        self.config = {name: self.get_parameter(name).value for name in SETTINGS}
        self.limits = check_settings(self.config)  # ValueError: the node exits with the reason

        self.exploration = ExplorationConfig(
            epsilon=self.config["epsilon"], noise_std=self.config["noise_std"]
        )
        self.cem = CEMConfig(
            population=self.config["cem_population"],
            elites=self.config["cem_elites"],
            iterations=self.config["cem_iterations"],
        )
        self.frame_id = self.get_namespace().strip("/") or "robot"

        # One condition for everything the episode loop waits on: images, camera matching,
        # checkpoints coming into force, shutdown. Notified by the callbacks; nothing polls.
        self._cond = threading.Condition()
        self._latest_image: Image | None = None
        self._latest_stamp_ns = -1
        self._camera_publishers: int | None = None  # None: the rmw has no matched events
        self._camera_blocked = False  # set by a camera abort, cleared by the next usable image
        self._refused_encoding = ""
        self._next_exploration: ExplorationConfig | None = None  # applies from the next episode
        # The slot swaps checkpoints only between episodes; _on_swap builds the policy for it.
        self.policy: GraspPolicy | None = None
        self._policy_checkpoint_id = ""  # the checkpoint whose model the policy holds now
        self.rollout = Rollout(self.config["rollout_mode"], trial_settings(self.config))
        self.slot = CheckpointSlot(on_swap=self._on_swap, gate=self.rollout.gate)
        self.rollout.attach(self.slot)
        self.monitor = LearningMonitor()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        io_group = ReentrantCallbackGroup()
        swap_group = MutuallyExclusiveCallbackGroup()
        self.rollout_endpoints = RolloutEndpoints(
            self, self.rollout, self.frame_id, callback_group=swap_group, monitor=self.monitor
        )
        self.diagnostics_pub = self.create_publisher(
            DiagnosticArray, names.DIAGNOSTICS, DIAGNOSTICS_DEPTH
        )
        self.create_timer(DIAGNOSTICS_PERIOD, self.publish_diagnostics, callback_group=io_group)
        self._subscribe_camera(io_group)
        self.reset_client = self.create_client(
            ResetEpisode, names.ARM_RESET_SERVICE, callback_group=io_group
        )
        self.step_client = self.create_client(
            ExecuteStep, names.ARM_STEP_SERVICE, callback_group=io_group
        )
        self.step_pub = self.create_publisher(StepRecord, names.STEP_RECORDS_TOPIC, RECORD_QOS)
        self.result_pub = self.create_publisher(
            EpisodeResult, names.EPISODE_RESULTS_TOPIC, RECORD_QOS
        )
        self.active_pub = self.create_publisher(
            CheckpointInfo, names.ACTIVE_CHECKPOINT_TOPIC, LATCHED_QOS
        )
        self.create_service(
            LoadCheckpoint,
            names.LOAD_CHECKPOINT_SERVICE,
            self.on_load_checkpoint,
            callback_group=swap_group,
        )
        self.create_subscription(
            CheckpointInfo,
            names.CHECKPOINT_ANNOUNCE_TOPIC,
            self.on_announcement,
            ANNOUNCE_QOS,
            callback_group=swap_group,
        )

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
        self._loop = threading.Thread(target=self.run_episodes, name="episode-loop", daemon=True)
        if self.config["autostart"]:
            self._loop.start()

    # ---- observations ---------------------------------------------------------------------
    def _subscribe_camera(self, group) -> None:
        """Subscribe to the camera, gated on a matched publisher where the rmw reports one."""
        try:
            events = SubscriptionEventCallbacks(matched=self.on_camera_matched)
            self.create_subscription(
                Image,
                names.CAMERA_TOPIC,
                self.on_image,
                SENSOR_QOS,
                callback_group=group,
                event_callbacks=events,
            )
            self._camera_publishers = 0
        except Exception:  # noqa: BLE001 - an rmw without matched events: do not gate on matching
            self.create_subscription(
                Image, names.CAMERA_TOPIC, self.on_image, SENSOR_QOS, callback_group=group
            )

    def on_camera_matched(self, info) -> None:
        with self._cond:
            self._camera_publishers = info.current_count
            self._cond.notify_all()

    def on_image(self, msg: Image) -> None:
        stamp = Time.from_msg(msg.header.stamp).nanoseconds
        usable = msg.encoding.lower() in SUPPORTED_ENCODINGS
        with self._cond:
            self._latest_image, self._latest_stamp_ns = msg, stamp
            if usable:
                self._camera_blocked = False
            else:
                self._refused_encoding = msg.encoding
            self._cond.notify_all()

    def wait_for_image(self, newer_than_ns: int) -> Image:
        timeout = self.config["observation_timeout"]
        with self._cond:
            fresh = self._cond.wait_for(
                lambda: self._latest_stamp_ns > newer_than_ns or self._stop.is_set(),
                timeout=timeout,
            )
            if self._stop.is_set():
                raise EpisodeAborted("node is shutting down")
            if not fresh:
                raise CameraProblem(
                    f"camera stalled: no image on {self._camera_topic} newer than the last arm "
                    f"command within observation_timeout {timeout:.1f} s"
                )
            return self._latest_image

    @property
    def _camera_topic(self) -> str:
        return self.resolve_topic_name(names.CAMERA_TOPIC)

    def observation_array(self, msg: Image, size: int) -> np.ndarray:
        try:
            rgb = to_rgb(msg.data, msg.width, msg.height, msg.encoding, step=msg.step)
        except ValueError as exc:
            raise CameraProblem(f"camera image refused: {exc}") from exc
        return resize_for_network(rgb, size)

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
        """Publish the learning monitor's report on /diagnostics."""
        entries = status_entries(self.monitor.report(self.rollout.status()))
        array = diagnostic_array(entries, self.get_fully_qualified_name(), self.frame_id)
        array.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics_pub.publish(array)

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
        info = CheckpointInfo(
            checkpoint_id=loaded.checkpoint_id,
            path=str(loaded.path),
            parent_id=str(loaded.metadata.get("parent") or ""),
            job_id=str(loaded.metadata.get("job_id") or ""),
        )
        info.header.stamp = self.get_clock().now().to_msg()
        info.header.frame_id = self.frame_id
        self.active_pub.publish(info)
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
        still in use.
        """
        outcome = self.stage_checkpoint(request.path)
        response.success, response.checkpoint_id = outcome.accepted, outcome.checkpoint_id
        response.message = "" if outcome.accepted and not outcome.held else outcome.message
        return response

    def on_announcement(self, msg: CheckpointInfo) -> None:
        if msg.checkpoint_id and self.slot.knows(msg.checkpoint_id):
            return
        self.get_logger().info(f"trainer announced checkpoint {msg.checkpoint_id} ({msg.path})")
        self.stage_checkpoint(msg.path)

    # ---- the arm --------------------------------------------------------------------------
    def call(self, client, request, what: str):
        """Call an arm service from the episode thread; shutdown interrupts the wait."""
        if self._stop.is_set():
            raise EpisodeAborted("node is shutting down")
        try:
            self._call_wake = threading.Event()
            return call_service(
                client,
                request,
                self.config["arm_timeout"],
                wake=self._call_wake,
                interrupted=self._stop.is_set,
            )
        except ServiceCallError as exc:
            raise EpisodeAborted(
                "node is shutting down"
                if self._stop.is_set()
                else f"arm call ({what}) failed: {exc}"
            ) from exc

    def safe_action(self, vector: np.ndarray, state: GripperState) -> GraspAction:
        """Return the arm command for ``vector``, inside the safety limits and never NaN."""
        try:
            command = safe_command(vector, state.height, self.limits)
        except UnsafeCommand as exc:
            raise EpisodeAborted(str(exc)) from exc
        return GraspAction(
            translation=np.asarray(command.translation, dtype=np.float32),
            rotation=command.rotation,
            close_gripper=command.close_gripper,
            terminate=command.terminate,
        )

    # ---- episodes -------------------------------------------------------------------------
    def _not_ready(self) -> str | None:
        """Say why no episode may start now (caller holds _cond); None when ready."""
        if self.slot.active is None:
            return (
                "no valid checkpoint: the arm will not move until one is loaded "
                f"({names.LOAD_CHECKPOINT_SERVICE})"
            )
        if self._camera_publishers == 0:
            return (
                f"no camera publisher on {self._camera_topic}: "
                "waiting for one before moving the arm"
            )
        if self._camera_blocked:
            what = (
                f"images in unsupported encoding {self._refused_encoding!r}"
                if self._refused_encoding
                else "no image"
            )
            return (
                f"camera problem ({what} since the last abort): "
                "no arm command until a usable image arrives"
            )
        return None

    def wait_until_ready(self) -> bool:
        """Block (on the condition, no polling) until an episode may start; False on shutdown."""
        said = None
        while True:
            with self._cond:
                while True:
                    if self._stop.is_set():
                        return False
                    reason = self._not_ready()
                    if reason is None:
                        break
                    if reason != said:
                        self.get_logger().warn(reason)
                        said = reason
                    self._cond.wait()
            for client in (self.reset_client, self.step_client):
                while not client.wait_for_service(timeout_sec=1.0):
                    if self._stop.is_set() or not rclpy.ok(context=self.context):
                        return False
                    if said != client.srv_name:
                        self.get_logger().warn(f"waiting for the arm service {client.srv_name}")
                        said = client.srv_name
            with self._cond:
                if self._not_ready() is None:
                    return True

    def run_episodes(self) -> None:
        episode = 0
        while self.config["max_episodes"] == 0 or episode < self.config["max_episodes"]:
            if not self.wait_until_ready():
                break
            self.run_episode(seed=self.config["seed"] + episode)
            episode += 1
        self.get_logger().info(f"episode loop finished after {episode} episodes")

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Accept exploration and rollout mode changes at run time (from the next episode)."""
        with self._cond:
            current = self._next_exploration or self.exploration
        values = {"epsilon": current.epsilon, "noise_std": current.noise_std}
        mode = None
        for p in params:
            if p.name in values:
                values[p.name] = float(p.value)
            elif p.name == "rollout_mode":
                mode = p.value
        if mode is not None and mode not in MODES:
            reason = f"rollout_mode must be one of {', '.join(MODES)} (got {mode!r})"
            return SetParametersResult(successful=False, reason=reason)
        try:
            exploration = ExplorationConfig(**values)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self._cond:
            self._next_exploration = exploration
        if mode is not None and mode != self.rollout.mode:
            self.get_logger().info(f"rollout mode: {self.rollout.mode} -> {mode}")
            self.rollout.set_mode(mode)  # a held candidate follows (immediate promotes it)
        return SetParametersResult(successful=True)

    def run_episode(self, seed: int) -> None:
        """Run one episode at the episode boundary: swap in an approved checkpoint first."""
        checkpoint = self.slot.begin_episode(self.rollout.choose)
        if checkpoint is None:
            return  # no checkpoint in force (wait_until_ready saw one; cannot happen today)
        try:
            # The slot is held: the policy and the exploration stay fixed for the episode.
            with self._cond:
                if self._next_exploration is not None:
                    self.exploration, self._next_exploration = self._next_exploration, None
            policy = self.policy
            if self._policy_checkpoint_id != checkpoint.checkpoint_id:
                policy.swap_model(checkpoint.model)  # a trial episode of the held candidate
                self._policy_checkpoint_id = checkpoint.checkpoint_id
            policy.exploration = self.exploration
            self._run_episode(seed, checkpoint.checkpoint_id, policy)
        finally:
            self.slot.end_episode()

    def _run_episode(self, seed: int, checkpoint_id: str, policy: GraspPolicy) -> None:
        episode_id = str(uuid.uuid4())
        task = self.config["task"]
        tag = self.rollout.episode_role(checkpoint_id)
        result = EpisodeResult(
            episode_id=episode_id,
            task=task,
            seed=seed,
            checkpoint_id=checkpoint_id,
            exploration=self.exploration.to_json(),
            complete=False,
        )
        size = policy.model.config.image_size
        max_steps = self.config["max_steps"]
        period = 1.0 / self.config["control_rate"] if self.config["control_rate"] > 0 else 0.0
        steps = 0
        try:
            sent_ns = self.get_clock().now().nanoseconds
            reply = self.call(
                self.reset_client, ResetEpisode.Request(task=task, seed=seed), "reset"
            )
            if not reply.success:
                raise EpisodeAborted(f"arm refused reset: {reply.message}")
            state = reply.gripper_state
            fresh_after = self._fresh_threshold(sent_ns)
            last_step_at = None
            for step_index in range(max_steps):
                if period and last_step_at is not None:
                    delay = last_step_at + period - time.monotonic()
                    # control_rate: a timed wait, woken on shutdown
                    if delay > 0 and self._stop.wait(delay):
                        raise EpisodeAborted("node is shutting down")
                image_msg = self.wait_for_image(fresh_after)
                image = self.observation_array(image_msg, size)
                if not math.isfinite(state.height):
                    raise EpisodeAborted(
                        f"arm reported a non-finite gripper height {state.height}"
                    )
                state.step_fraction = step_index / max_steps
                state_vec = np.array(
                    [float(state.closed), state.height, state.step_fraction], dtype=np.float32
                )
                choice = policy.select_action(image, state_vec)
                action = self.safe_action(choice.vector, state)
                if step_index == max_steps - 1:
                    action.terminate = True
                self.publish_step(
                    episode_id, step_index, image, image_msg, state, action, choice, checkpoint_id
                )
                steps += 1
                sent_ns = self.get_clock().now().nanoseconds
                last_step_at = time.monotonic()
                reply = self.call(self.step_client, ExecuteStep.Request(action=action), "a step")
                if not reply.success:
                    raise EpisodeAborted(f"arm refused the step: {reply.message}")
                fresh_after = self._fresh_threshold(sent_ns)
                state = reply.gripper_state
                if reply.done:
                    result.success, result.complete = bool(reply.grasp_success), True
                    break
            else:
                raise EpisodeAborted("arm did not end the episode after the terminate step")
        except Exception as exc:  # noqa: BLE001 - any failure aborts this episode, never the node
            if self._stop.is_set():
                return  # shutting down: nothing can be published any more
            if isinstance(exc, CameraProblem):
                with self._cond:
                    self._camera_blocked = True
            result.message = (
                str(exc) if isinstance(exc, EpisodeAborted) else f"{type(exc).__name__}: {exc}"
            )
            self.get_logger().error(
                f"episode {episode_id[:8]} aborted after {steps} steps: {result.message}"
            )
        result.num_steps = steps
        # Count it before publishing, so a decision it concludes travels in its own result.
        self.rollout.episode_done(checkpoint_id, tag, result.success, result.complete)
        self.monitor.episode(checkpoint_id, task, result.success, result.complete)
        result.rollout = self.rollout_endpoints.result_tag(tag)
        result.header.stamp = self.get_clock().now().to_msg()
        result.header.frame_id = self.frame_id
        self.result_pub.publish(result)
        self.publish_diagnostics()
        if result.complete:
            self.get_logger().info(
                f"episode {episode_id[:8]} seed={seed} steps={steps} "
                f"{'SUCCESS' if result.success else 'failure'} checkpoint={checkpoint_id}"
            )

    def _fresh_threshold(self, sent_ns: int) -> int:
        settle = self.config["settle_time"]
        if settle > 0:
            return self.get_clock().now().nanoseconds + int(settle * 1e9)
        return sent_ns

    def publish_step(
        self, episode_id, step_index, image, image_msg, state, action, choice, checkpoint_id
    ) -> None:
        record = StepRecord(
            episode_id=episode_id,
            step_index=step_index,
            gripper_state=state,
            action=action,
            q_value=float(choice.q_value),
            exploratory=bool(choice.exploratory),
            checkpoint_id=checkpoint_id,
        )
        record.header.stamp = self.get_clock().now().to_msg()
        record.header.frame_id = self.frame_id
        record.image.header = image_msg.header
        record.image.height, record.image.width = image.shape[:2]
        record.image.encoding, record.image.step = "rgb8", image.shape[1] * 3
        record.image.data = np.ascontiguousarray(image).tobytes()
        self.step_pub.publish(record)

    def destroy_node(self) -> None:
        self.shutdown()
        super().destroy_node()

    def shutdown(self) -> None:
        self._stop.set()
        if self._call_wake is not None:
            self._call_wake.set()
        cond = getattr(self, "_cond", None)  # absent when the constructor failed early
        if cond is not None:
            with cond:
                cond.notify_all()
        if self._loop is not None and self._loop.is_alive():
            self._loop.join(timeout=self.config["arm_timeout"])


def main(args=None) -> None:
    run_node(PolicyNode, "policy_node", args, threads=3)


if __name__ == "__main__":
    main()
