"""ROS 2 node: the QT-Opt policy that runs closed-loop grasp episodes against the arm interface.

A thin adapter around ``nsl_policy.policy.GraspPolicy``. Each episode: reset the arm, then per
step wait for a camera image newer than the last arm command, choose an action with CEM on the
Q-function, publish the step record, send the step to the arm; finally publish the episode
result. The episode loop runs in its own thread (service replies and images arrive through the
executor), so no callback ever blocks.

Safety: no command without a valid checkpoint, a matched camera and a fresh, decodable
observation. After an episode aborted for a camera problem (stalled topic, refused encoding)
the arm gets no further command, not even a reset, until a usable image arrives. Commands are
clipped to the per-step and workspace limits; non-finite commands are never sent.

Hot-swap: a checkpoint announced by the trainer (``trainer/checkpoints``) or sent to
``policy/load_checkpoint`` is loaded and validated (safe load, architecture, finite weights,
smoke inference) at once; it goes into use at the next episode boundary (at once when no
episode runs), so every episode and every step record is chosen by exactly one checkpoint. A
rejected checkpoint leaves the old one in use; the reply (or the log, for announcements) says why.
"""

from __future__ import annotations

import math
import threading
import time
import uuid

import numpy as np
import rclpy
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.time import Time
from sensor_msgs.msg import Image

from nsl_common.node_main import run_node
from nsl_common.service_call import ServiceCallError, call_service
from nsl_msgs.msg import CheckpointInfo, EpisodeResult, GraspAction, GripperState, StepRecord
from nsl_msgs.srv import ExecuteStep, LoadCheckpoint, ResetEpisode
from nsl_policy.action_space import ActionSpace
from nsl_policy.cem import CEMConfig
from nsl_policy.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    load_checkpoint,
    validate_for_swap,
)
from nsl_policy.image import SUPPORTED_ENCODINGS, resize_for_network, to_rgb
from nsl_policy.policy import ExplorationConfig, GraspPolicy

RECORD_QOS = QoSProfile(depth=200, reliability=QoSReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(
    depth=1,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
)
ANNOUNCE_QOS = QoSProfile(
    depth=10,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
)


class EpisodeAborted(RuntimeError):
    """The episode cannot go on safely (no fresh image, arm error); it is not trained on."""


class CameraProblem(EpisodeAborted):
    """No fresh or no usable camera image: the arm gets no command until a usable image arrives."""


def _param(
    description: str,
    *,
    int_range: tuple[int, int] | None = None,
    float_range: tuple[float, float] | None = None,
    read_only: bool = True,
) -> ParameterDescriptor:
    """Descriptor; read-only unless the node applies changes at run time (exploration)."""
    d = ParameterDescriptor(description=description, read_only=read_only)
    if int_range is not None:
        d.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    if float_range is not None:
        d.floating_point_range = [
            FloatingPointRange(
                from_value=float(float_range[0]), to_value=float(float_range[1]), step=0.0
            )
        ]
    return d


# name -> (default, descriptor). policy.yaml lists the same parameters with a comment each.
PARAMETERS: dict[str, tuple[object, ParameterDescriptor]] = {
    "checkpoint": (
        "",
        _param("Q-function checkpoint (safetensors); the arm does not move without a valid one"),
    ),
    "task": ("base", _param("task sent to the arm on reset and recorded with every episode")),
    "autostart": (
        True,
        _param(
            "run episodes as soon as arm, camera and checkpoint are ready (false: only serve checkpoints)"
        ),
    ),
    "max_episodes": (
        0,
        _param("stop after this many episodes (0: until shut down)", int_range=(0, 2**31 - 1)),
    ),
    "max_steps": (
        10,
        _param("control steps per episode; the last one terminates", int_range=(1, 10000)),
    ),
    "seed": (0, _param("seed of the first episode; episode k resets with seed + k")),
    "epsilon": (
        0.1,
        _param(
            "exploration: probability of a uniformly random action per step; settable at run time, "
            "applies from the next episode",
            float_range=(0.0, 1.0),
            read_only=False,
        ),
    ),
    "noise_std": (
        0.0,
        _param(
            "exploration: std of Gaussian noise added to CEM actions (normalised units); settable at "
            "run time, applies from the next episode",
            float_range=(0.0, 10.0),
            read_only=False,
        ),
    ),
    "cem_population": (64, _param("CEM samples per iteration (paper: 64)", int_range=(1, 100000))),
    "cem_elites": (6, _param("CEM elite samples (paper: 6)", int_range=(1, 100000))),
    "cem_iterations": (2, _param("CEM iterations (paper: 2)", int_range=(1, 1000))),
    "control_rate": (
        0.0,
        _param(
            "largest rate of arm steps, Hz (0: as fast as arm, camera and CEM allow)",
            float_range=(0.0, 1000.0),
        ),
    ),
    "max_translation": (0.03, _param("safety: largest Cartesian step per axis, metres")),
    "max_rotation": (0.25, _param("safety: largest rotation per step, radians")),
    "min_height": (
        0.0,
        _param("safety: lowest gripper height above the tray, metres (workspace)"),
    ),
    "max_height": (
        0.5,
        _param("safety: highest gripper height above the tray, metres (workspace)"),
    ),
    "observation_timeout": (
        2.0,
        _param("seconds to wait for a fresh camera image before aborting the episode"),
    ),
    "settle_time": (
        0.0,
        _param(
            "a fresh image must be this much newer than the arm's reply (0: newer than the request)"
        ),
    ),
    "arm_timeout": (30.0, _param("seconds to wait for the arm to reset or execute a step")),
}


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        # Shutdown state first: destroy_node() runs even when the constructor fails below.
        self._stop = threading.Event()
        self._call_wake: threading.Event | None = None  # wakes the arm call in flight on shutdown
        self._loop: threading.Thread | None = None
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.config = self._read_config()

        self.action_space = ActionSpace(
            self.config["max_translation"], self.config["max_rotation"]
        )
        self.exploration = ExplorationConfig(
            epsilon=self.config["epsilon"], noise_std=self.config["noise_std"]
        )
        self._next_exploration: ExplorationConfig | None = (
            None  # set at run time, used from the next episode
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.cem = CEMConfig(
            population=self.config["cem_population"],
            elites=self.config["cem_elites"],
            iterations=self.config["cem_iterations"],
        )
        self.frame_id = self.get_namespace().strip("/") or "robot"

        # One condition for everything the episode loop waits on: images, camera matching,
        # checkpoints becoming active, shutdown. Notified by the callbacks; nothing polls.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._latest_image: Image | None = None
        self._latest_stamp_ns = -1
        self._image_seq = 0
        self._camera_publishers: int | None = (
            None  # None: matched events unsupported by the middleware
        )
        self._camera_blocked = False  # set by a camera abort, cleared by the next usable image
        self._refused_encoding = ""
        # Swaps happen under _swap_lock, never while _in_episode.
        self._swap_lock = threading.Lock()
        self._in_episode = False
        self._active: LoadedCheckpoint | None = None
        self._pending: LoadedCheckpoint | None = None
        self.policy: GraspPolicy | None = None

        io_group = ReentrantCallbackGroup()
        swap_group = MutuallyExclusiveCallbackGroup()
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks

            events = SubscriptionEventCallbacks(matched=self.on_camera_matched)
            self.create_subscription(
                Image,
                "camera/image_raw",
                self.on_image,
                qos_profile_sensor_data,
                callback_group=io_group,
                event_callbacks=events,
            )
            self._camera_publishers = 0
        except Exception:  # noqa: BLE001 - an rmw without matched events: do not gate on matching
            self.create_subscription(
                Image,
                "camera/image_raw",
                self.on_image,
                qos_profile_sensor_data,
                callback_group=io_group,
            )
        self.reset_client = self.create_client(
            ResetEpisode, "arm/reset_episode", callback_group=io_group
        )
        self.step_client = self.create_client(
            ExecuteStep, "arm/execute_step", callback_group=io_group
        )
        self.step_pub = self.create_publisher(StepRecord, "step_records", RECORD_QOS)
        self.result_pub = self.create_publisher(EpisodeResult, "episode_results", RECORD_QOS)
        self.active_pub = self.create_publisher(
            CheckpointInfo, "policy/active_checkpoint", LATCHED_QOS
        )
        self.create_service(
            LoadCheckpoint,
            "policy/load_checkpoint",
            self.on_load_checkpoint,
            callback_group=swap_group,
        )
        self.create_subscription(
            CheckpointInfo,
            "trainer/checkpoints",
            self.on_announcement,
            ANNOUNCE_QOS,
            callback_group=swap_group,
        )

        if self.config["checkpoint"]:
            ok, message, _ = self.stage_checkpoint(self.config["checkpoint"])
            if not ok:
                self.get_logger().error(
                    f"{message}; the arm will not move until a valid checkpoint is loaded"
                )
        else:
            self.get_logger().warn(
                "no checkpoint parameter: the arm will not move until one is loaded (policy/load_checkpoint)"
            )
        self._loop = threading.Thread(target=self.run_episodes, name="episode-loop", daemon=True)
        if self.config["autostart"]:
            self._loop.start()

    def _read_config(self) -> dict:
        cfg = {name: self.get_parameter(name).value for name in PARAMETERS}
        problems = []
        if cfg["cem_elites"] > cfg["cem_population"]:
            problems.append(
                f"cem_elites ({cfg['cem_elites']}) must not exceed cem_population ({cfg['cem_population']})"
            )
        for name in ("max_translation", "max_rotation", "observation_timeout", "arm_timeout"):
            if not (math.isfinite(cfg[name]) and cfg[name] > 0):
                problems.append(f"{name} must be > 0 (got {cfg[name]})")
        if not (math.isfinite(cfg["settle_time"]) and cfg["settle_time"] >= 0):
            problems.append(f"settle_time must be >= 0 (got {cfg['settle_time']})")
        if not (
            math.isfinite(cfg["min_height"])
            and math.isfinite(cfg["max_height"])
            and cfg["min_height"] < cfg["max_height"]
        ):
            problems.append(
                f"min_height ({cfg['min_height']}) must be below max_height ({cfg['max_height']})"
            )
        if problems:
            raise ValueError("invalid policy parameters: " + "; ".join(problems))
        return cfg

    # ---- observations ---------------------------------------------------------------------
    def on_camera_matched(self, info) -> None:
        with self._cond:
            self._camera_publishers = info.current_count
            self._cond.notify_all()

    def on_image(self, msg: Image) -> None:
        stamp = Time.from_msg(msg.header.stamp).nanoseconds
        usable = msg.encoding.lower() in SUPPORTED_ENCODINGS
        with self._cond:
            self._latest_image, self._latest_stamp_ns = msg, stamp
            self._image_seq += 1
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
                    f"camera stalled: no image on {self._camera_topic} newer than the last arm command "
                    f"within observation_timeout {timeout:.1f} s"
                )
            return self._latest_image

    @property
    def _camera_topic(self) -> str:
        return self.resolve_topic_name("camera/image_raw")

    def observation_array(self, msg: Image, size: int) -> np.ndarray:
        try:
            rgb = to_rgb(msg.data, msg.width, msg.height, msg.encoding, step=msg.step)
        except ValueError as exc:
            raise CameraProblem(f"camera image refused: {exc}") from exc
        return resize_for_network(rgb, size)

    # ---- checkpoints ----------------------------------------------------------------------
    def stage_checkpoint(self, path: str) -> tuple[bool, str, str]:
        """Load and validate ``path``; on success it goes into use at the next episode boundary
        (at once when no episode runs). Returns (accepted, message, id of the accepted checkpoint
        or, when rejected, of the one still in use); the message names the problem.
        """
        expected = self._active.config if self._active is not None else None
        try:
            loaded = load_checkpoint(path, expected_config=expected)
            validate_for_swap(loaded, expected)
        except CheckpointError as exc:
            message = str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong, the old weights stay
            message = f"checkpoint {path} could not be loaded: {exc!r}"
        else:
            message = ""
        if message:
            self.get_logger().error(
                f"checkpoint rejected, keeping {self.active_id or 'none'}: {message}"
            )
            return False, message, self.active_id
        with self._cond:
            self._pending = loaded
        with self._swap_lock:
            if not self._in_episode:
                self._swap_locked()
                return True, f"checkpoint {loaded.checkpoint_id} in use", loaded.checkpoint_id
        self.get_logger().info(
            f"checkpoint {loaded.checkpoint_id} validated; in use from the next episode"
        )
        return (
            True,
            f"checkpoint {loaded.checkpoint_id} validated; in use from the next episode",
            loaded.checkpoint_id,
        )

    def _swap_locked(self) -> None:
        """Put the validated pending checkpoint into use. Caller holds _swap_lock, no episode runs."""
        with self._cond:
            loaded, self._pending = self._pending, None
        if loaded is None:
            return
        if self.policy is None or self.policy.model.config != loaded.config:
            self.policy = GraspPolicy(
                loaded.model, self.cem, self.exploration, seed=self.config["seed"]
            )
        else:
            self.policy.swap_model(loaded.model)
        previous, self._active = self._active, loaded
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

    @property
    def active_id(self) -> str:
        return self._active.checkpoint_id if self._active is not None else ""

    def on_load_checkpoint(
        self, request: LoadCheckpoint.Request, response: LoadCheckpoint.Response
    ) -> LoadCheckpoint.Response:
        """Reply: success, message (why rejected; empty on success), checkpoint_id (the accepted
        checkpoint, in use from the next episode boundary; the one still in use when rejected).
        """
        response.success, message, response.checkpoint_id = self.stage_checkpoint(request.path)
        response.message = "" if response.success else message
        return response

    def on_announcement(self, msg: CheckpointInfo) -> None:
        pending = self._pending
        if msg.checkpoint_id and (
            msg.checkpoint_id == self.active_id
            or (pending is not None and msg.checkpoint_id == pending.checkpoint_id)
        ):
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
        """Physical command within the per-step and workspace limits; never NaN."""
        try:
            command = self.action_space.to_command(vector)  # raises on non-finite components
        except ValueError as exc:
            raise EpisodeAborted(f"refusing to send a command: {exc}") from exc
        max_t = self.config["max_translation"]
        t = np.clip(np.asarray(command.translation, dtype=np.float64), -max_t, max_t)
        # Keep the gripper between the height limits without exceeding the per-step limit; a
        # gripper outside them is moved back towards them by at most one step.
        lo = max(-max_t, self.config["min_height"] - state.height)
        hi = min(max_t, self.config["max_height"] - state.height)
        t[2] = (
            min(max(t[2], lo), hi)
            if lo <= hi
            else (max_t if state.height < self.config["min_height"] else -max_t)
        )
        rotation = float(
            np.clip(command.rotation, -self.config["max_rotation"], self.config["max_rotation"])
        )
        if not (np.all(np.isfinite(t)) and math.isfinite(rotation)):
            raise EpisodeAborted(f"refusing to send a non-finite command {t.tolist()} {rotation}")
        return GraspAction(
            translation=t.astype(np.float32),
            rotation=rotation,
            close_gripper=command.close_gripper,
            terminate=command.terminate,
        )

    # ---- episodes -------------------------------------------------------------------------
    def _not_ready(self) -> str | None:
        """Why no episode may start now (caller holds _cond); None when ready."""
        if self._active is None:
            return "no valid checkpoint: the arm will not move until one is loaded (policy/load_checkpoint)"
        if self._camera_publishers == 0:
            return f"no camera publisher on {self._camera_topic}: waiting for one before moving the arm"
        if self._camera_blocked:
            what = (
                f"images in unsupported encoding {self._refused_encoding!r}"
                if self._refused_encoding
                else "no image"
            )
            return f"camera problem ({what} since the last abort): no arm command until a usable image arrives"
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
        """Exploration may change at run time (e.g. greedy evaluation between collection runs)."""
        values = {"epsilon": self.exploration.epsilon, "noise_std": self.exploration.noise_std}
        if self._next_exploration is not None:
            values = {
                "epsilon": self._next_exploration.epsilon,
                "noise_std": self._next_exploration.noise_std,
            }
        for p in params:
            if p.name in values:
                values[p.name] = float(p.value)
        try:
            exploration = ExplorationConfig(**values)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self._swap_lock:
            self._next_exploration = exploration
        return SetParametersResult(successful=True)

    def run_episode(self, seed: int) -> None:
        with self._swap_lock:  # the episode boundary: swap, then no swap until it ends
            if self._next_exploration is not None:
                self.exploration, self._next_exploration = self._next_exploration, None
                if self.policy is not None:
                    self.policy.exploration = self.exploration
            self._swap_locked()
            self._in_episode = True
            checkpoint_id, policy = self.active_id, self.policy
        try:
            self._run_episode(seed, checkpoint_id, policy)
        finally:
            with self._swap_lock:
                self._in_episode = False
                self._swap_locked()

    def _run_episode(self, seed: int, checkpoint_id: str, policy: GraspPolicy) -> None:
        episode_id = str(uuid.uuid4())
        task = self.config["task"]
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
                    if delay > 0 and self._stop.wait(
                        delay
                    ):  # control_rate: a timed wait, woken on shutdown
                        raise EpisodeAborted("node is shutting down")
                image_msg = self.wait_for_image(fresh_after)
                image = self.observation_array(image_msg, size)
                if not (math.isfinite(state.height)):
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
        result.header.stamp = self.get_clock().now().to_msg()
        result.header.frame_id = self.frame_id
        self.result_pub.publish(result)
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
