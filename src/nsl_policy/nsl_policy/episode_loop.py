"""The policy node's episode loop: wait until ready, then run episodes against the arm.

A mixin of :class:`nsl_policy.policy_node.PolicyNode` (it uses the node's clients, publishers,
camera input, slot, rollout and monitor, all made by configure). Per episode: reset the arm,
then per step wait for a camera image newer than the last arm command, choose an action with
CEM, publish the step record and send the step; finally publish the result. ``_halt`` (a
deactivation or shutdown) ends the episode at the next step boundary; ``_stop`` (shutdown)
also interrupts the arm call in flight and publishes nothing more.
"""

from __future__ import annotations

import math
import threading
import time
import uuid

import numpy as np
import rclpy

from nsl_common import names
from nsl_common.service_call import ServiceCallError, call_service
from nsl_msgs.msg import EpisodeResult, GraspAction, GripperState
from nsl_msgs.srv import ExecuteStep, ResetEpisode

from .camera_input import observation_array
from .episode_guard import (
    ENDED_BY_DEACTIVATION,
    CameraProblem,
    EpisodeAborted,
    EpisodeEnded,
    not_ready_reason,
)
from .policy import GraspPolicy
from .policy_messages import grasp_action, step_record
from .safety import UnsafeCommand, safe_command


class EpisodeLoop:
    """Runs the episodes of the policy node (module doc)."""

    # ---- the arm --------------------------------------------------------------------------
    def call(self, client, request, what: str):
        """Call an arm service from the episode thread; shutdown (not deactivate) interrupts it."""
        self._check_halt()
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
            return grasp_action(safe_command(vector, state.height, self.limits))
        except UnsafeCommand as exc:
            raise EpisodeAborted(str(exc)) from exc

    # ---- episodes -------------------------------------------------------------------------
    def _check_halt(self) -> None:
        """Raise when the loop must end: shutdown, or a deactivation (at a step boundary)."""
        if self._stop.is_set():
            raise EpisodeAborted("node is shutting down")
        if self._halt.is_set():
            raise EpisodeEnded(ENDED_BY_DEACTIVATION)

    def _not_ready(self) -> str | None:
        """Say why no episode may start now (caller holds _cond); None when ready."""
        camera = self.camera
        return not_ready_reason(
            self.slot is not None and self.slot.active is not None,
            camera.publishers,
            camera.blocked,
            camera.refused_encoding,
            camera.topic,
            names.LOAD_CHECKPOINT_SERVICE,
        )

    def wait_until_ready(self) -> bool:
        """Block (on the condition, no polling) until an episode may start; False on shutdown."""
        said = None
        while True:
            with self._cond:
                while True:
                    if self._halt.is_set():
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
                    if self._halt.is_set() or not rclpy.ok(context=self.context):
                        return False
                    if said != client.srv_name:
                        self.get_logger().warn(f"waiting for the arm service {client.srv_name}")
                        said = client.srv_name
            with self._cond:
                if self._not_ready() is None:
                    return True

    def run_episodes(self) -> None:
        """Run episodes until deactivated, shut down or ``max_episodes`` (over activations)."""
        limit = self.config["max_episodes"]
        while limit == 0 or self._episodes_run < limit:
            if not self.wait_until_ready():
                break
            with self._cond:
                seed, self._next_seed = self._next_seed, self._next_seed + 1
            self.run_episode(seed=seed)
            self._episodes_run += 1
        self.get_logger().info(f"episode loop finished after {self._episodes_run} episodes")

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
        tag = self.rollout.episode_role(checkpoint_id, task)
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
                self._check_halt()  # a deactivation ends the episode here, before any command
                if period and last_step_at is not None:
                    delay = last_step_at + period - time.monotonic()
                    # control_rate: a timed wait, woken by a deactivation or shutdown
                    if delay > 0 and self._halt.wait(delay):
                        self._check_halt()
                image_msg = self.camera.wait_for_image(
                    fresh_after,
                    self.config["observation_timeout"],
                    self._halt.is_set,
                    self._check_halt,
                )
                image = observation_array(image_msg, size)
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
                record = step_record(
                    episode_id,
                    step_index,
                    image,
                    image_msg,
                    state,
                    action,
                    choice,
                    checkpoint_id,
                    self.get_clock().now().to_msg(),
                    self.frame_id,
                )
                self.step_pub.publish(record)
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
                    self.camera.blocked = True
            result.message = (
                str(exc) if isinstance(exc, EpisodeAborted) else f"{type(exc).__name__}: {exc}"
            )
            log = (
                self.get_logger().info
                if isinstance(exc, EpisodeEnded)
                else self.get_logger().error
            )
            log(f"episode {episode_id[:8]} aborted after {steps} steps: {result.message}")
        result.num_steps = steps
        # Count it before publishing, so a decision it concludes travels in its own result.
        self.rollout.episode_done(checkpoint_id, task, tag, result.success, result.complete)
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
