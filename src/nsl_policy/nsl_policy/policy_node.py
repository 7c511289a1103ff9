"""ROS 2 node: the QT-Opt policy that runs closed-loop grasp episodes against the arm interface.

Each episode: reset the arm, then per step wait for a camera image newer than the last arm
command, choose an action with CEM on the Q-function, publish the step record, send the step to
the arm; finally publish the episode result. The episode loop runs in its own thread (service
replies and images arrive through the executor), so no callback ever blocks.

Safety: no command without a fresh observation and a valid checkpoint; commands are clipped to
the per-step and workspace limits; non-finite actions are never sent.

Hot-swap: a checkpoint announced by the trainer (``trainer/checkpoints``) or sent to
``policy/load_checkpoint`` is loaded and validated (architecture, finite weights, smoke
inference) at once; it goes into use at the next episode boundary, so every episode, and every
step record, is chosen by exactly one checkpoint. A rejected checkpoint leaves the old one in use.
"""
from __future__ import annotations

import math
import threading
import uuid

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import Image

from nsl_msgs.msg import CheckpointInfo, EpisodeResult, GraspAction, GripperState, StepRecord
from nsl_msgs.srv import ExecuteStep, LoadCheckpoint, ResetEpisode
from nsl_policy.action_space import ActionSpace
from nsl_policy.cem import CEMConfig
from nsl_policy.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint, validate_for_swap
from nsl_policy.image import resize_for_network, to_rgb
from nsl_policy.policy import ExplorationConfig, GraspPolicy

RECORD_QOS = QoSProfile(depth=200, reliability=QoSReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
ANNOUNCE_QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)


class EpisodeAborted(RuntimeError):
    """The episode cannot go on safely (no fresh image, arm error); it is not trained on."""


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        d = ParameterDescriptor
        self.declare_parameter("checkpoint", "", d(description="Q-function checkpoint (safetensors); the arm does not move without a valid one"))
        self.declare_parameter("task", "base", d(description="task sent to the arm on reset and recorded with every episode"))
        self.declare_parameter("autostart", True, d(description="run episodes as soon as arm, camera and checkpoint are ready"))
        self.declare_parameter("max_episodes", 0, d(description="stop after this many episodes (0: until shut down)"))
        self.declare_parameter("max_steps", 10, d(description="control steps per episode; the last one terminates"))
        self.declare_parameter("seed", 0, d(description="seed of the first episode; episode k resets with seed + k"))
        self.declare_parameter("epsilon", 0.1, d(description="probability of a uniformly random action per step"))
        self.declare_parameter("noise_std", 0.0, d(description="std of Gaussian noise added to CEM actions"))
        self.declare_parameter("cem_population", 64, d(description="CEM samples per iteration (paper: 64)"))
        self.declare_parameter("cem_elites", 6, d(description="CEM elite samples (paper: 6)"))
        self.declare_parameter("cem_iterations", 2, d(description="CEM iterations (paper: 2)"))
        self.declare_parameter("max_translation", 0.03, d(description="largest Cartesian step per axis, metres"))
        self.declare_parameter("max_rotation", 0.25, d(description="largest rotation per step, radians"))
        self.declare_parameter("min_height", 0.0, d(description="workspace: lowest gripper height above the tray, metres"))
        self.declare_parameter("max_height", 0.5, d(description="workspace: highest gripper height above the tray, metres"))
        self.declare_parameter("observation_timeout", 2.0, d(description="seconds to wait for a fresh camera image before aborting the episode"))
        self.declare_parameter("settle_time", 0.0, d(description="a fresh image must be this much newer than the arm's reply (0: newer than the request)"))
        self.declare_parameter("arm_timeout", 30.0, d(description="seconds to wait for the arm to reset or execute a step"))
        self.config = self._read_config()

        self.action_space = ActionSpace(self.config["max_translation"], self.config["max_rotation"])
        self.exploration = ExplorationConfig(epsilon=self.config["epsilon"], noise_std=self.config["noise_std"])
        self.cem = CEMConfig(population=self.config["cem_population"], elites=self.config["cem_elites"],
                             iterations=self.config["cem_iterations"])
        self.frame_id = self.get_namespace().strip("/") or "robot"

        self._lock = threading.Lock()
        self._image_ready = threading.Condition(self._lock)
        self._latest_image: Image | None = None
        self._latest_stamp_ns = -1
        self._active: LoadedCheckpoint | None = None
        self._pending: LoadedCheckpoint | None = None
        self.policy: GraspPolicy | None = None
        self._stop = threading.Event()
        self._call_done: threading.Event | None = None  # the arm call in flight, woken on shutdown

        io_group = ReentrantCallbackGroup()
        swap_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Image, "camera/image_raw", self.on_image, qos_profile_sensor_data, callback_group=io_group)
        self.reset_client = self.create_client(ResetEpisode, "arm/reset_episode", callback_group=io_group)
        self.step_client = self.create_client(ExecuteStep, "arm/execute_step", callback_group=io_group)
        self.step_pub = self.create_publisher(StepRecord, "step_records", RECORD_QOS)
        self.result_pub = self.create_publisher(EpisodeResult, "episode_results", RECORD_QOS)
        self.active_pub = self.create_publisher(CheckpointInfo, "policy/active_checkpoint", LATCHED_QOS)
        self.create_service(LoadCheckpoint, "policy/load_checkpoint", self.on_load_checkpoint, callback_group=swap_group)
        self.create_subscription(CheckpointInfo, "trainer/checkpoints", self.on_announcement, ANNOUNCE_QOS, callback_group=swap_group)

        if self.config["checkpoint"]:
            ok, message = self.stage_checkpoint(self.config["checkpoint"])
            if not ok:
                self.get_logger().error(f"{message}; the arm will not move until a valid checkpoint is loaded")
        else:
            self.get_logger().warn("no checkpoint parameter: the arm will not move until one is loaded (policy/load_checkpoint)")
        self._loop = threading.Thread(target=self.run_episodes, name="episode-loop", daemon=True)
        if self.config["autostart"]:
            self._loop.start()

    def _read_config(self) -> dict:
        cfg = {name: self.get_parameter(name).value for name in self._parameters if name != "use_sim_time"}
        problems = []
        for name in ("max_steps", "cem_population", "cem_elites", "cem_iterations"):
            if cfg[name] < 1:
                problems.append(f"{name} must be >= 1 (got {cfg[name]})")
        for name in ("max_translation", "max_rotation", "observation_timeout", "arm_timeout"):
            if not cfg[name] > 0:
                problems.append(f"{name} must be > 0 (got {cfg[name]})")
        if not 0.0 <= cfg["epsilon"] <= 1.0:
            problems.append(f"epsilon must be in [0, 1] (got {cfg['epsilon']})")
        if cfg["noise_std"] < 0 or cfg["settle_time"] < 0 or cfg["max_episodes"] < 0:
            problems.append("noise_std, settle_time and max_episodes must be >= 0")
        if not cfg["min_height"] < cfg["max_height"]:
            problems.append(f"min_height ({cfg['min_height']}) must be below max_height ({cfg['max_height']})")
        if problems:
            raise ValueError("invalid policy parameters: " + "; ".join(problems))
        return cfg

    # ---- observations ---------------------------------------------------------------------
    def on_image(self, msg: Image) -> None:
        stamp = Time.from_msg(msg.header.stamp).nanoseconds
        with self._image_ready:
            self._latest_image, self._latest_stamp_ns = msg, stamp
            self._image_ready.notify_all()

    def wait_for_image(self, newer_than_ns: int) -> Image:
        timeout = self.config["observation_timeout"]
        with self._image_ready:
            fresh = self._image_ready.wait_for(lambda: self._latest_stamp_ns > newer_than_ns or self._stop.is_set(), timeout=timeout)
            if not fresh or self._stop.is_set():
                raise EpisodeAborted(f"no camera image newer than the last arm command within {timeout:.1f} s")
            return self._latest_image

    def observation_array(self, msg: Image) -> np.ndarray:
        size = self.policy.model.config.image_size
        try:
            rgb = to_rgb(msg.data, msg.width, msg.height, msg.encoding)
        except ValueError as exc:
            raise EpisodeAborted(f"camera image refused: {exc}") from exc
        return resize_for_network(rgb, size)

    # ---- checkpoints ----------------------------------------------------------------------
    def stage_checkpoint(self, path: str) -> tuple[bool, str]:
        """Load and validate ``path``; on success it goes into use at the next episode boundary."""
        expected = self._active.config if self._active is not None else None
        try:
            loaded = load_checkpoint(path, expected_config=expected)
            validate_for_swap(loaded, expected)
        except CheckpointError as exc:
            self.get_logger().error(f"checkpoint rejected, keeping {self.active_id or 'none'}: {exc}")
            return False, str(exc)
        with self._lock:
            self._pending = loaded
            idle = self.policy is None
        if idle:
            self.swap_if_pending()
        return True, f"checkpoint {loaded.checkpoint_id} validated; in use from the next episode"

    def swap_if_pending(self) -> None:
        """Put a validated checkpoint into use. Called only between episodes."""
        with self._lock:
            loaded, self._pending = self._pending, None
        if loaded is None:
            return
        if self.policy is None:
            self.policy = GraspPolicy(loaded.model, self.cem, self.exploration, seed=self.config["seed"])
        else:
            self.policy.swap_model(loaded.model)
        previous, self._active = self._active, loaded
        info = CheckpointInfo(checkpoint_id=loaded.checkpoint_id, path=str(loaded.path),
                              parent_id=str(loaded.metadata.get("parent") or ""), job_id=str(loaded.metadata.get("job_id", "")))
        info.header.stamp = self.get_clock().now().to_msg()
        info.header.frame_id = self.frame_id
        self.active_pub.publish(info)
        self.get_logger().info(f"checkpoint in use: {loaded.checkpoint_id} ({loaded.path})"
                               + (f", replacing {previous.checkpoint_id}" if previous else ""))

    @property
    def active_id(self) -> str:
        return self._active.checkpoint_id if self._active is not None else ""

    def on_load_checkpoint(self, request: LoadCheckpoint.Request, response: LoadCheckpoint.Response) -> LoadCheckpoint.Response:
        response.success, response.message = self.stage_checkpoint(request.path)
        response.checkpoint_id = self._pending.checkpoint_id if response.success and self._pending else self.active_id
        return response

    def on_announcement(self, msg: CheckpointInfo) -> None:
        if msg.checkpoint_id and msg.checkpoint_id == self.active_id:
            return
        self.get_logger().info(f"trainer announced checkpoint {msg.checkpoint_id} ({msg.path})")
        self.stage_checkpoint(msg.path)

    # ---- the arm --------------------------------------------------------------------------
    def call(self, client, request, what: str):
        """Call an arm service from the episode thread; the executor delivers the reply."""
        if not client.wait_for_service(timeout_sec=self.config["arm_timeout"]):
            raise EpisodeAborted(f"arm service {client.srv_name} not available")
        done = self._call_done = threading.Event()
        if self._stop.is_set():
            raise EpisodeAborted("node is shutting down")
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        done.wait(self.config["arm_timeout"])
        if self._stop.is_set():
            future.cancel()
            raise EpisodeAborted("node is shutting down")
        if not future.done() or future.result() is None:
            future.cancel()
            raise EpisodeAborted(f"arm did not answer {what} within {self.config['arm_timeout']:.0f} s")
        return future.result()

    def safe_action(self, vector: np.ndarray, state: GripperState) -> GraspAction:
        """Physical command within the per-step and workspace limits; never NaN."""
        command = self.action_space.to_command(vector)  # raises on non-finite components
        t = np.clip(np.asarray(command.translation, dtype=np.float64), -self.config["max_translation"], self.config["max_translation"])
        # Keep the gripper between the workspace's height limits.
        t[2] = np.clip(t[2], self.config["min_height"] - state.height, self.config["max_height"] - state.height)
        rotation = float(np.clip(command.rotation, -self.config["max_rotation"], self.config["max_rotation"]))
        if not (np.all(np.isfinite(t)) and math.isfinite(rotation)):
            raise EpisodeAborted(f"non-finite command {t.tolist()} {rotation}")
        return GraspAction(translation=t.astype(np.float32), rotation=rotation,
                           close_gripper=command.close_gripper, terminate=command.terminate)

    # ---- episodes -------------------------------------------------------------------------
    def run_episodes(self) -> None:
        episode = 0
        while not self._stop.is_set() and (self.config["max_episodes"] == 0 or episode < self.config["max_episodes"]):
            self.swap_if_pending()
            if self.policy is None:
                # No valid checkpoint: never move the arm. Wait for one to be staged.
                self._stop.wait(0.5)
                continue
            try:
                self.run_episode(seed=self.config["seed"] + episode)
            except Exception as exc:  # keep serving: a failed episode must not kill the node
                self.get_logger().error(f"episode failed: {exc}")
                self._stop.wait(1.0)
            episode += 1
        self.get_logger().info(f"episode loop finished after {episode} episodes")

    def run_episode(self, seed: int) -> None:
        episode_id = str(uuid.uuid4())
        checkpoint_id = self.active_id
        task = self.config["task"]
        result = EpisodeResult(episode_id=episode_id, task=task, seed=seed, checkpoint_id=checkpoint_id,
                               exploration=self.exploration.to_json(), complete=False)
        steps = 0
        try:
            sent_ns = self.get_clock().now().nanoseconds
            reply = self.call(self.reset_client, ResetEpisode.Request(task=task, seed=seed), "reset")
            if not reply.success:
                raise EpisodeAborted(f"arm refused reset: {reply.message}")
            state = reply.gripper_state
            fresh_after = self._fresh_threshold(sent_ns)
            max_steps = self.config["max_steps"]
            for step_index in range(max_steps):
                image_msg = self.wait_for_image(fresh_after)
                image = self.observation_array(image_msg)
                state.step_fraction = step_index / max_steps
                state_vec = np.array([float(state.closed), state.height, state.step_fraction], dtype=np.float32)
                choice = self.policy.select_action(image, state_vec)
                action = self.safe_action(choice.vector, state)
                if step_index == max_steps - 1:
                    action.terminate = True
                self.publish_step(episode_id, step_index, image, image_msg, state, action, choice, checkpoint_id)
                steps += 1
                sent_ns = self.get_clock().now().nanoseconds
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
        except EpisodeAborted as exc:
            if self._stop.is_set():
                return  # shutting down: nothing can be published any more
            result.message = str(exc)
            self.get_logger().error(f"episode {episode_id[:8]} aborted: {exc}")
        result.num_steps = steps
        result.header.stamp = self.get_clock().now().to_msg()
        result.header.frame_id = self.frame_id
        self.result_pub.publish(result)
        if result.complete:
            self.get_logger().info(f"episode {episode_id[:8]} seed={seed} steps={steps} "
                                   f"{'SUCCESS' if result.success else 'failure'} checkpoint={checkpoint_id}")

    def _fresh_threshold(self, sent_ns: int) -> int:
        settle = self.config["settle_time"]
        if settle > 0:
            return self.get_clock().now().nanoseconds + int(settle * 1e9)
        return sent_ns

    def publish_step(self, episode_id, step_index, image, image_msg, state, action, choice, checkpoint_id) -> None:
        record = StepRecord(episode_id=episode_id, step_index=step_index, gripper_state=state, action=action,
                            q_value=float(choice.q_value), exploratory=bool(choice.exploratory), checkpoint_id=checkpoint_id)
        record.header.stamp = self.get_clock().now().to_msg()
        record.header.frame_id = self.frame_id
        record.image.header = image_msg.header
        record.image.height, record.image.width = image.shape[:2]
        record.image.encoding, record.image.step = "rgb8", image.shape[1] * 3
        record.image.data = np.ascontiguousarray(image).tobytes()
        self.step_pub.publish(record)

    def shutdown(self) -> None:
        self._stop.set()
        if self._call_done is not None:
            self._call_done.set()
        with self._image_ready:
            self._image_ready.notify_all()
        if self._loop.is_alive():
            self._loop.join(timeout=self.config["arm_timeout"])


def main(args=None) -> None:
    rclpy.init(args=args)
    node = None
    executor = MultiThreadedExecutor(num_threads=3)
    try:
        node = PolicyNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        print(f"policy_node: {exc}", flush=True)
        raise SystemExit(2)
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
