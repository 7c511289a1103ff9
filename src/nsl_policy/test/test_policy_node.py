"""System tests of the real policy_node against a fake arm + camera node in the test process.

The policy_node is started as a separate process by the runner.

The fake serves ``arm/reset_episode`` and ``arm/execute_step``, publishes ``camera/image_raw``
after each reset and step (in a chosen encoding and size, or not at all when "stalled"), and
records every command it gets. The test also listens to step records, episode results and the
active checkpoint, and talks to ``policy/load_checkpoint`` and ``trainer/checkpoints``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save as st_save

from nsl_bringup.cli import main as nsl
from nsl_bringup.graph import NodeSpec
from nsl_bringup.runner import GraphRunner, isolated_environment
from nsl_common import names
from nsl_common.service_call import call_service
from nsl_policy.checkpoint import init_checkpoint
from nsl_policy.diagnostics import node_entries
from nsl_policy.episode_guard import ENDED_BY_DEACTIVATION
from nsl_policy.model import QNetworkConfig

pytestmark = pytest.mark.system

rclpy = pytest.importorskip("rclpy")
# After the skip: these need ROS 2 (rclpy and the built messages).
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from nsl_bringup.status import read_status  # noqa: E402
from nsl_common.lifecycle import change_state, get_state  # noqa: E402
from nsl_common.qos import ANNOUNCE_QOS, CAMERA_QOS, LATCHED_QOS, RECORD_QOS  # noqa: E402
from nsl_msgs.msg import (  # noqa: E402
    CheckpointInfo,
    EpisodeResult,
    RolloutDecision,
    StepRecord,
)
from nsl_msgs.srv import ExecuteStep, LoadCheckpoint, ResetEpisode, RolloutCommand  # noqa: E402

SMALL = dict(image_size=64, width=8, embed_width=16, fc_width=16)
MAX_STEPS = 5
# A camera pixel in each encoding, and the RGB pixel the policy must see.
ENCODED = {
    "rgb8": ([200, 20, 10], (200, 20, 10)),
    "bgr8": ([10, 20, 200], (200, 20, 10)),
    "rgba8": ([30, 60, 90, 255], (30, 60, 90)),
    "mono8": ([77], (77, 77, 77)),
    "16UC1": ([1, 2], None),
}


# ---- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ros():
    """Give this module its own DDS domain (localhost only) and rclpy context.

    Other test modules' contexts are untouched.
    """
    env = isolated_environment()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    context = rclpy.Context()
    rclpy.init(context=context)
    yield env, context
    rclpy.try_shutdown(context=context)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@dataclass
class Checkpoints:
    a: Path
    b: Path
    id_a: str
    id_b: str
    bad: dict  # name -> (path, fragment the rejection message must contain)
    marker: Path  # created if the pickle ever runs


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Checkpoints:
    d = tmp_path_factory.mktemp("policy_ckpts")
    cfg = QNetworkConfig(**SMALL)
    a, b = d / "a.safetensors", d / "b.safetensors"
    id_a, id_b = init_checkpoint(a, cfg, seed=0), init_checkpoint(b, cfg, seed=1)
    bad = {}
    init_checkpoint(
        d / "size96.safetensors", QNetworkConfig(**{**SMALL, "image_size": 96}), seed=2
    )
    bad["other image_size"] = (d / "size96.safetensors", "image_size")
    init_checkpoint(d / "width16.safetensors", QNetworkConfig(**{**SMALL, "width": 16}), seed=3)
    bad["other width"] = (d / "width16.safetensors", "width")
    with safe_open(str(a), "pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["fc.4.weight"] = tensors["fc.4.weight"].clone()
    tensors["fc.4.weight"][0, 0] = float("nan")
    (d / "nan.safetensors").write_bytes(st_save(tensors, metadata=header))
    bad["NaN weights"] = (d / "nan.safetensors", "non-finite")
    blob = a.read_bytes()
    (d / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    bad["truncated file"] = (d / "truncated.safetensors", "truncated")
    marker = d / "pickle_ran"
    _Evil.marker = str(marker)
    (d / "evil.safetensors").write_bytes(pickle.dumps({"state_dict": _Evil()}))
    bad["pickle"] = (d / "evil.safetensors", "not a valid safetensors file")
    bad["missing file"] = (d / "nowhere.safetensors", "does not exist")
    return Checkpoints(a, b, id_a, id_b, bad, marker)


class Log:
    """Collects the policy process's output (prefixed by the runner) and echoes it to pytest."""

    def __init__(self):
        self.lines: list[str] = []
        self._lock = threading.Condition()
        self._echo = sys.stdout  # pytest's capture; later lookups may be the terminal

    def write(self, text: str) -> None:
        with self._lock:
            self.lines.append(text)
            self._lock.notify_all()
        self._echo.write(text)

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        """Block until ``predicate(text so far)`` holds."""
        with self._lock:
            if not self._lock.wait_for(lambda: predicate("".join(self.lines)), timeout=timeout):
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for {what} in the policy's output"
                )

    def flush(self) -> None:
        pass

    def text(self) -> str:
        with self._lock:
            return "".join(self.lines)


class FakeRobot:
    """Fake arm + camera and an observer of everything the policy publishes.

    One rclpy node spinning in a background thread; its waits block the test thread on a
    condition.
    """

    def __init__(
        self,
        context,
        namespace: str,
        width: int = 64,
        height: int = 64,
        encoding: str = "rgb8",
        start_heights=(0.25,),
        step_delay: float = 0.0,
        min_steps: int = 0,
    ):
        self.Image = Image
        self.CheckpointInfo = CheckpointInfo
        self.LoadCheckpoint = LoadCheckpoint
        self.node = Node("fake_robot", namespace=namespace, context=context)
        self.cond = threading.Condition()
        self.width, self.height, self.encoding = width, height, encoding
        self.start_heights = start_heights
        self.step_delay = step_delay
        # Terminate requests before this many steps are ignored: an untrained network may
        # terminate every episode at its first step, and some tests need episodes in flight.
        self.min_steps = min_steps
        self.camera_on = True
        self.commands_at_first_refused = None
        # ("reset", seed, task) | ("step", height_before, translation, rotation, close, terminate)
        self.commands: list[tuple] = []
        self.results: list = []
        self.steps: list = []
        self.active: list = []
        self.gripper_height = 0.25
        self.episode_steps = 0
        self.node.create_service(ResetEpisode, names.ARM_RESET_SERVICE, self._on_reset)
        self.node.create_service(ExecuteStep, names.ARM_STEP_SERVICE, self._on_step)
        self.image_pub = self.node.create_publisher(Image, names.CAMERA_TOPIC, CAMERA_QOS)
        self.announce_pub = self.node.create_publisher(
            CheckpointInfo, names.CHECKPOINT_ANNOUNCE_TOPIC, ANNOUNCE_QOS
        )
        self.node.create_subscription(
            StepRecord, names.STEP_RECORDS_TOPIC, lambda m: self._add(self.steps, m), RECORD_QOS
        )
        self.node.create_subscription(
            EpisodeResult,
            names.EPISODE_RESULTS_TOPIC,
            lambda m: self._add(self.results, m),
            RECORD_QOS,
        )
        # Depth 10 (not the publisher's 1): every swap is kept, not only the latest.
        self.node.create_subscription(
            CheckpointInfo,
            names.ACTIVE_CHECKPOINT_TOPIC,
            lambda m: self._add(self.active, m),
            ANNOUNCE_QOS,
        )
        self.load_client = self.node.create_client(LoadCheckpoint, names.LOAD_CHECKPOINT_SERVICE)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True, name="fake-robot")
        self.thread.start()

    # -- the fake arm and camera --
    def _add(self, store: list, msg) -> None:
        with self.cond:
            store.append(msg)
            self.cond.notify_all()

    def publish_image(self) -> None:
        # The policy's subscription may still be matching right after start: give it a moment.
        deadline = time.monotonic() + 3.0
        while self.image_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        pixel, rgb = ENCODED[self.encoding]
        with self.cond:
            if rgb is None and self.commands_at_first_refused is None:
                self.commands_at_first_refused = len(self.commands)
        data = np.tile(np.array(pixel, dtype=np.uint8), self.width * self.height)
        msg = self.Image(
            width=self.width,
            height=self.height,
            encoding=self.encoding,
            step=self.width * len(pixel),
        )
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "fake_camera"
        msg.data = data.tobytes()
        self.image_pub.publish(msg)

    def _on_reset(self, request, response):
        with self.cond:
            self.gripper_height = self.start_heights[
                sum(1 for c in self.commands if c[0] == "reset") % len(self.start_heights)
            ]
            self.episode_steps = 0
            self.commands.append(("reset", request.seed, request.task))
            self.cond.notify_all()
            camera_on = self.camera_on
        response.success = True
        response.gripper_state.height = self.gripper_height
        if camera_on:
            self.publish_image()
        return response

    def _on_step(self, request, response):
        a = request.action
        with self.cond:
            self.commands.append(
                (
                    "step",
                    self.gripper_height,
                    tuple(float(x) for x in a.translation),
                    float(a.rotation),
                    a.close_gripper,
                    a.terminate,
                )
            )
            self.episode_steps += 1
            if math.isfinite(a.translation[2]):
                self.gripper_height += float(a.translation[2])
            self.cond.notify_all()
            camera_on = self.camera_on
        if self.step_delay:
            time.sleep(self.step_delay)
        response.success = True
        response.gripper_state.height = self.gripper_height
        response.gripper_state.closed = bool(a.close_gripper)
        response.done = (
            bool(a.terminate) and self.episode_steps >= self.min_steps
        ) or self.episode_steps >= MAX_STEPS
        response.grasp_success = response.done and self.episode_steps % 2 == 0
        if camera_on:
            self.publish_image()
        return response

    # -- what the test uses --
    def wait_until(self, predicate, timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout=timeout):
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def complete(self, checkpoint_id: str | None = None) -> list:
        return [
            r
            for r in self.results
            if r.complete and (checkpoint_id is None or r.checkpoint_id == checkpoint_id)
        ]

    def count(self, kind: str) -> int:
        with self.cond:
            return sum(1 for c in self.commands if c[0] == kind)

    def load(self, path, timeout: float = 30.0):
        assert self.load_client.wait_for_service(timeout_sec=timeout), (
            "policy/load_checkpoint not available"
        )
        done = threading.Event()
        future = self.load_client.call_async(self.LoadCheckpoint.Request(path=str(path)))
        future.add_done_callback(lambda _f: done.set())
        assert done.wait(timeout), "policy/load_checkpoint did not answer"
        return future.result()

    def announce(self, path, checkpoint_id: str) -> None:
        self.announce_pub.publish(self.CheckpointInfo(checkpoint_id=checkpoint_id, path=str(path)))

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=5)
        self.node.destroy_node()


class PolicyProcess:
    """The real policy_node, started by the runner as its own process."""

    def __init__(self, env: dict, namespace: str, params: dict):
        self.log = Log()
        base = {
            "max_steps": MAX_STEPS,
            "observation_timeout": 1.0,
            "arm_timeout": 10.0,
            "epsilon": 0.3,
            # The hot-swap tests check the slot's mechanics: no trial between load and use.
            "rollout_mode": "immediate",
        }
        # A managed node: the runner configures and activates it, as nsl up does.
        spec = NodeSpec(
            "policy",
            "nsl_policy",
            "policy_node",
            "policy.yaml",
            {**base, **params},
            lifecycle=True,
        )
        self.runner = GraphRunner(
            [spec], namespace=namespace, env={**env, "OMP_NUM_THREADS": "1"}, output=self.log
        )
        self.runner.start()

    def stop(self) -> None:
        codes = self.runner.stop()
        assert self.runner.first_exit is None, (
            f"{self.runner.first_exit.describe()}\n{self.log.text()[-3000:]}"
        )
        assert all(code in (0, -2) for code in codes.values()), (
            f"policy did not stop cleanly: {codes}\n{self.log.text()[-6000:]}"
        )


_counter = [0]


@pytest.fixture
def graph(ros, request):
    """Start a fake robot and the policy process in a fresh namespace (a factory); stop both."""
    env, context = ros
    started = []

    def start(params: dict, **robot_args) -> tuple[FakeRobot, PolicyProcess]:
        _counter[0] += 1
        namespace = f"pt{os.getpid()}_{_counter[0]}"
        robot = FakeRobot(context, namespace, **robot_args)
        policy = PolicyProcess(env, namespace, params)
        started.append((robot, policy))
        return robot, policy

    yield start
    for robot, policy in started:
        try:
            policy.stop()
        finally:
            robot.close()


def check_episodes_consistent(robot: FakeRobot) -> dict:
    """Return every result's step records as {episode_id: records}, checked for consistency.

    Contiguous indices, same checkpoint as the result, and as many as the arm executed in that
    episode.
    """
    with robot.cond:
        results, steps, commands = list(robot.results), list(robot.steps), list(robot.commands)
    by_episode = defaultdict(list)
    for s in steps:
        by_episode[s.episode_id].append(s)
    # Arm steps per episode, in order (the fake sees episodes as reset ... reset).
    arm_counts = []
    for c in commands:
        if c[0] == "reset":
            arm_counts.append(0)
        else:
            arm_counts[-1] += 1
    for k, r in enumerate(results):
        records = by_episode[r.episode_id]
        assert [s.step_index for s in records] == list(range(r.num_steps)), (
            f"episode {k}: step indices"
        )
        assert {s.checkpoint_id for s in records} <= {r.checkpoint_id}, (
            f"episode {k} mixes checkpoints"
        )
        assert arm_counts[k] == r.num_steps, (
            f"episode {k}: the arm executed {arm_counts[k]} steps, {r.num_steps} recorded"
        )
        json.loads(r.exploration)
    assert set(by_episode) <= {r.episode_id for r in results} | {
        steps[-1].episode_id if steps else ""
    }, "step records of an episode without a result (other than the one in flight)"
    return by_episode


def stamp(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


# ---- (a) hot-swap ---------------------------------------------------------------------------
def test_hot_swap_while_episodes_run_loses_and_mixes_no_step(graph, checkpoints):
    ck = checkpoints
    robot, policy = graph(
        {"checkpoint": str(ck.a), "epsilon": 0.2, "noise_std": 0.1}, step_delay=0.03, min_steps=3
    )
    robot.wait_until(lambda: len(robot.complete(ck.id_a)) >= 2, 90, "two episodes on checkpoint A")
    requests = []  # (episode in flight at the request, id requested)
    for path, new_id, old_id, via in (
        (ck.b, ck.id_b, ck.id_a, "service"),
        (ck.a, ck.id_a, ck.id_b, "topic"),
        (ck.b, ck.id_b, ck.id_a, "service"),
    ):
        # Ask for the swap while an episode on the old checkpoint is in flight (its step 1 seen, no
        # result yet). Searched over all steps, not just the newest: a loaded machine may wake
        # this thread only after a later step has arrived.
        found: list[str] = []

        def episode_in_flight(old_id=old_id) -> bool:
            finished = {r.episode_id for r in robot.results}
            found[:] = [
                s.episode_id
                for s in robot.steps
                if s.step_index == 1 and s.checkpoint_id == old_id and s.episode_id not in finished
            ][-1:]
            return bool(found)

        robot.wait_until(episode_in_flight, 30, "an episode in flight")
        in_flight = found[0]
        done_before = len(robot.complete(new_id))
        if via == "service":
            reply = robot.load(path)
            assert reply.success and reply.message == "" and reply.checkpoint_id == new_id, reply
        else:
            robot.announce(path, new_id)
        requests.append((in_flight, new_id, old_id))
        robot.wait_until(
            lambda: robot.active and robot.active[-1].checkpoint_id == new_id,
            30,
            f"the swap to {new_id}",
        )
        robot.wait_until(
            lambda: len(robot.complete(new_id)) > done_before, 60, f"an episode on {new_id}"
        )
        assert robot.active[-1].path == str(path)

    by_episode = check_episodes_consistent(robot)
    with robot.cond:
        results, active = list(robot.results), list(robot.active)
    assert all(r.complete for r in results), [r.message for r in results if not r.complete]
    by_id = {r.episode_id: r for r in results}
    for in_flight, new_id, old_id in requests:
        # The episode in flight when the swap was requested finished on the old checkpoint...
        assert by_id[in_flight].checkpoint_id == old_id
        assert all(s.checkpoint_id == old_id for s in by_episode[in_flight])
    # ... and every change of checkpoint was published between two episodes: after the result of
    # the last episode on the old one, before the first step of the first on the new one.
    for prev, nxt in zip(results, results[1:]):
        if prev.checkpoint_id != nxt.checkpoint_id:
            switch = [
                m
                for m in active
                if m.checkpoint_id == nxt.checkpoint_id and stamp(prev) <= stamp(m)
            ]
            assert switch, (
                f"no active_checkpoint message for {nxt.checkpoint_id}"
                f" after episode {prev.episode_id}"
            )
            assert stamp(switch[0]) <= stamp(by_episode[nxt.episode_id][0]), (
                "swapped after the new episode's first step"
            )
    assert {r.checkpoint_id for r in results} == {ck.id_a, ck.id_b}
    assert "Traceback" not in policy.log.text()


# ---- (b) rejected checkpoints, (f) workspace limits ------------------------------------------
def test_rejected_checkpoints_keep_the_old_weights_and_commands_stay_in_limits(graph, checkpoints):
    ck = checkpoints
    limits = {"max_translation": 0.02, "max_rotation": 0.2, "min_height": 0.05, "max_height": 0.3}
    # Large exploration noise pushes actions to the box's faces; start heights near, and one
    # above, the limits.
    robot, policy = graph(
        {"checkpoint": str(ck.a), "epsilon": 0.5, "noise_std": 1.0, **limits},
        start_heights=(0.06, 0.29, 0.33),
    )
    robot.wait_until(lambda: len(robot.complete(ck.id_a)) >= 1, 90, "an episode on checkpoint A")
    for name, (path, fragment) in ck.bad.items():
        reply = robot.load(path)
        assert not reply.success, f"{name} accepted"
        assert fragment in reply.message and str(path) in reply.message, (name, reply.message)
        assert reply.checkpoint_id == ck.id_a
    for k, (name, (path, fragment)) in enumerate(ck.bad.items()):
        robot.announce(path, f"bad{k:09d}")
    policy.log.wait_for(
        lambda text: text.count("checkpoint rejected") >= 2 * len(ck.bad),
        60,
        "the announced checkpoints' rejection",
    )
    rejections = [
        line for line in policy.log.text().splitlines() if "checkpoint rejected" in line
    ][len(ck.bad) :]
    for path, fragment in ck.bad.values():
        assert any(str(path) in line and fragment in line for line in rejections), (
            path,
            fragment,
            rejections,
        )
    done = len(robot.complete())
    robot.wait_until(
        lambda: len(robot.complete()) >= done + 3, 60, "episodes after the rejections"
    )
    assert not ck.marker.exists(), "the pickle ran"
    with robot.cond:
        assert [m.checkpoint_id for m in robot.active] == [ck.id_a]
        assert all(r.checkpoint_id == ck.id_a for r in robot.results)
        assert all(r.complete for r in robot.results), [r.message for r in robot.results]
        exploration = json.loads(robot.results[0].exploration)
        commands = list(robot.commands)
    assert exploration == {"epsilon": 0.5, "noise_std": 1.0}
    check_episodes_consistent(robot)

    # (f) every command the arm got is finite and inside the per-step and height limits.
    steps = [c for c in commands if c[0] == "step"]
    assert len(steps) >= 10
    eps = 1e-6
    hit_limit = 0
    for _, height, t, rotation, _close, _terminate in steps:
        assert all(math.isfinite(x) for x in (*t, rotation))
        assert all(abs(x) <= limits["max_translation"] + eps for x in t), t
        assert abs(rotation) <= limits["max_rotation"] + eps
        hit_limit += any(abs(abs(x) - limits["max_translation"]) < eps for x in t)
        if limits["min_height"] <= height <= limits["max_height"]:
            assert limits["min_height"] - eps <= height + t[2] <= limits["max_height"] + eps, (
                height,
                t,
            )
        else:  # started outside the workspace: moved back towards it
            assert t[2] < 0 if height > limits["max_height"] else t[2] > 0
    assert hit_limit > 0, "no action reached the clip limit: the test did not exercise clipping"


def test_load_checkpoint_refuses_bad_paths_by_field_and_keeps_the_old_weights(
    graph, checkpoints, tmp_path
):
    """Blank paths, directories, FIFOs and devices: "path:" refusals, at once, A keeps running."""
    ck = checkpoints
    robot, policy = graph({"checkpoint": str(ck.a)})
    robot.wait_until(lambda: len(robot.complete(ck.id_a)) >= 1, 90, "an episode on checkpoint A")
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)  # opening it for reading would block the service until a writer comes
    for path, fragment in (
        ("", "blank"),
        ("  \t", "blank"),
        (str(tmp_path), "not a regular file (a directory)"),
        (str(fifo), "not a regular file"),
        ("/dev/null", "not a regular file"),
    ):
        reply = robot.load(path, timeout=10.0)
        assert not reply.success and reply.message.startswith("path: "), (path, reply.message)
        assert fragment in reply.message and reply.checkpoint_id == ck.id_a, (path, reply.message)
    done = len(robot.complete(ck.id_a))
    robot.wait_until(
        lambda: len(robot.complete(ck.id_a)) > done, 60, "an episode on A after the refusals"
    )
    reply = robot.load(ck.b)  # still serving: a valid checkpoint goes in
    assert reply.success and reply.checkpoint_id == ck.id_b, reply.message
    assert policy.runner.first_exit is None


# ---- (c) camera stalled ---------------------------------------------------------------------
def test_stalled_camera_aborts_the_episode_and_stops_all_commands(graph, checkpoints):
    robot, policy = graph({"checkpoint": str(checkpoints.a), "observation_timeout": 0.8})
    robot.wait_until(lambda: len(robot.complete()) >= 1, 90, "an episode")
    robot.wait_until(
        lambda: robot.steps and robot.steps[-1].step_index == 1, 30, "an episode in flight"
    )
    with robot.cond:
        robot.camera_on = False  # the camera topic stalls from now on
    robot.wait_until(lambda: any(not r.complete for r in robot.results), 30, "the aborted episode")
    with robot.cond:
        aborted = [r for r in robot.results if not r.complete]
        commands_at_abort = len(robot.commands)
    assert (
        len(aborted) == 1
        and "camera stalled" in aborted[0].message
        and "observation_timeout" in aborted[0].message
    )
    time.sleep(3 * 0.8 + 1.0)  # several observation timeouts: nothing may happen
    with robot.cond:
        assert len(robot.commands) == commands_at_abort, robot.commands[commands_at_abort:]
        assert len(robot.results) == len([r for r in robot.results if r.complete]) + 1
    check_episodes_consistent(robot)
    # The camera comes back: one image, and the policy resumes.
    with robot.cond:
        robot.camera_on = True
    robot.publish_image()
    n = len(robot.complete())
    robot.wait_until(
        lambda: len(robot.complete()) > n, 60, "an episode after the camera recovered"
    )


# ---- (d) no valid checkpoint ----------------------------------------------------------------
def test_no_valid_checkpoint_no_command(graph, checkpoints):
    nan_path, _ = checkpoints.bad["NaN weights"]
    robot, policy = graph({"checkpoint": str(nan_path)})
    policy.log.wait_for(lambda text: "no valid checkpoint" in text, 60, "the policy to start")
    assert "non-finite" in policy.log.text()
    assert policy.runner.first_exit is None
    robot.publish_image()  # the camera works; still no checkpoint
    time.sleep(2.0)
    with robot.cond:
        assert (
            robot.commands == []
            and robot.results == []
            and robot.steps == []
            and robot.active == []
        )
    # A valid checkpoint loaded through the service: episodes start.
    reply = robot.load(checkpoints.a)
    assert reply.success and reply.checkpoint_id == checkpoints.id_a, reply
    robot.wait_until(
        lambda: len(robot.complete(checkpoints.id_a)) >= 1,
        60,
        "an episode once a checkpoint is loaded",
    )


# ---- (e) camera encodings and sizes --------------------------------------------------------
def test_camera_encodings_are_converted_and_unsupported_ones_refused(graph, checkpoints):
    # control_rate: steps at most every 20 ms (a timed wait; no figure is asserted).
    robot, policy = graph(
        {"checkpoint": str(checkpoints.a), "epsilon": 0.0, "control_rate": 50.0},
        width=100,
        height=80,
        encoding="bgr8",
    )
    for encoding in ("bgr8", "rgba8", "mono8"):
        with robot.cond:
            robot.encoding = encoding
            first = len(robot.results)
        # The episode after the switch ran entirely on images in the new encoding.
        robot.wait_until(
            lambda: len(robot.complete()) >= first + 2, 60, f"episodes with {encoding} images"
        )
        episode = robot.results[first + 1].episode_id
        records = [s for s in robot.steps if s.episode_id == episode]
        assert records
        for s in records:
            assert (s.image.width, s.image.height, s.image.encoding) == (64, 64, "rgb8")
            pixels = np.frombuffer(bytes(s.image.data), dtype=np.uint8).reshape(64, 64, 3)
            assert (pixels == np.array(ENCODED[encoding][1], dtype=np.uint8)).all(), encoding
    with robot.cond:
        robot.encoding = "16UC1"
        first_result = len(robot.results)
    robot.wait_until(
        lambda: any(not r.complete for r in robot.results[first_result:]),
        60,
        "the 16UC1 episode's abort",
    )
    with robot.cond:
        aborted = [r for r in robot.results[first_result:] if not r.complete]
    assert len(aborted) == 1
    assert "16UC1" in aborted[0].message and "unsupported image encoding" in aborted[0].message, (
        aborted[0].message
    )
    time.sleep(2.5)
    with robot.cond:
        # No command was sent after the first 16UC1 image was published.
        assert len(robot.commands) == robot.commands_at_first_refused, robot.commands[
            robot.commands_at_first_refused :
        ]
        assert len(robot.results) == first_result + 1
    check_episodes_consistent(robot)
    assert "no arm command until a usable image arrives" in policy.log.text()


# ---- parameters -----------------------------------------------------------------------------
def test_invalid_parameters_stop_the_node_with_a_message(ros, checkpoints):
    env, _ = ros
    for params, fragment in (
        ({"epsilon": 1.5}, "epsilon"),
        ({"cem_elites": 65}, "cem_elites"),
        ({"min_height": 0.4, "max_height": 0.3}, "min_height"),
    ):
        log = Log()
        spec = NodeSpec(
            "policy",
            "nsl_policy",
            "policy_node",
            "policy.yaml",
            {"checkpoint": str(checkpoints.a), **params},
            lifecycle=True,
        )
        runner = GraphRunner([spec], namespace=f"pt{os.getpid()}_bad", env=env, output=log)
        runner.start()
        try:
            died = runner.wait(timeout=60)
        finally:
            runner.stop()
        assert died is not None and died.returncode == 2, log.text()
        assert fragment in log.text(), log.text()


# ---- exploration changed at run time ----------------------------------------------------------
def test_exploration_changes_at_run_time_from_the_next_episode(graph, checkpoints):
    ck = checkpoints
    robot, policy = graph({"checkpoint": str(ck.a), "epsilon": 0.5})
    robot.wait_until(lambda: len(robot.complete(ck.id_a)) >= 2, 90, "exploratory episodes")
    client = robot.node.create_client(SetParameters, names.POLICY_SET_PARAMETERS_SERVICE)

    def set_epsilon(value: float):
        p = Parameter(
            name="epsilon",
            value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value),
        )
        return call_service(client, SetParameters.Request(parameters=[p]), timeout=30).results[0]

    refused = set_epsilon(1.5)
    assert not refused.successful and "epsilon" in refused.reason
    assert set_epsilon(0.0).successful
    with robot.cond:
        before = len(robot.results)
    robot.wait_until(
        lambda: sum(json.loads(r.exploration)["epsilon"] == 0.0 for r in robot.complete()) >= 3,
        90,
        "greedy episodes",
    )
    with robot.cond:
        results, steps = list(robot.results), list(robot.steps)
    epsilons = [json.loads(r.exploration)["epsilon"] for r in results]
    # One switch, at an episode boundary: 0.5 ... 0.5, then 0.0 ... 0.0 (at most the episode
    # in flight stays 0.5).
    assert epsilons[: before - 1] == [0.5] * (before - 1)
    switch = epsilons.index(0.0)
    assert all(e == 0.0 for e in epsilons[switch:]) and switch <= before + 1
    greedy_ids = {r.episode_id for r in results[switch:]}
    greedy_steps = [s for s in steps if s.episode_id in greedy_ids]
    assert greedy_steps and not any(s.exploratory for s in greedy_steps)
    assert any(s.exploratory for s in steps if s.episode_id not in greedy_ids)
    check_episodes_consistent(robot)


def test_the_task_and_the_seed_change_at_run_time_from_the_next_episode(graph, checkpoints):
    ck = checkpoints
    robot, policy = graph({"checkpoint": str(ck.a), "task": "base"}, step_delay=0.02, min_steps=3)
    robot.wait_until(lambda: len(robot.complete()) >= 2, 90, "episodes on the base task")
    client = robot.node.create_client(SetParameters, names.POLICY_SET_PARAMETERS_SERVICE)

    def set_task(value: str):
        p = Parameter(
            name="task",
            value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value),
        )
        return call_service(client, SetParameters.Request(parameters=[p]), timeout=30).results[0]

    for bad, reason in (("", "task must not be blank"), ("a/b", "task must be one folder name")):
        refused = set_task(bad)
        assert not refused.successful and reason in refused.reason, refused.reason
    assert set_task("checkerboard").successful
    with robot.cond:
        before = len(robot.results)
    robot.wait_until(
        lambda: sum(r.task == "checkerboard" for r in robot.complete()) >= 2,
        90,
        "episodes on the new task",
    )
    with robot.cond:
        results = list(robot.results)
        resets = [c[2] for c in robot.commands if c[0] == "reset"]
    tasks = [r.task for r in results]
    # One switch, at an episode boundary (the episode in flight keeps the old task; a result
    # still on its way is one more), and each episode's reset asked the arm for the task its
    # result records.
    switch = tasks.index("checkerboard")
    assert tasks[:switch] == ["base"] * switch and before <= switch <= before + 2
    assert set(tasks[switch:]) == {"checkerboard"}
    assert resets[: len(tasks)] == tasks

    # The scene seed restarts where it is set, from the next episode (a paired evaluation).
    def set_seed(value: int):
        p = Parameter(
            name="seed",
            value=ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value),
        )
        return call_service(client, SetParameters.Request(parameters=[p]), timeout=30).results[0]

    assert not set_seed(-3).successful
    assert set_seed(5000).successful
    robot.wait_until(
        lambda: sum(r.seed >= 5000 for r in robot.complete()) >= 2, 90, "episodes on new seeds"
    )
    with robot.cond:
        seeds = [r.seed for r in robot.results]
        reset_seeds = [c[1] for c in robot.commands if c[0] == "reset"]
    restart = seeds.index(5000)
    assert seeds[:restart] == list(range(restart))  # seed 0 + k until the change
    assert seeds[restart:] == list(range(5000, 5000 + len(seeds) - restart))
    assert reset_seeds[: len(seeds)] == seeds
    check_episodes_consistent(robot)


# ---- (g) rollout -----------------------------------------------------------------------------
def test_trial_rejects_at_its_cap_then_the_operator_promotes_in_manual_mode(graph, checkpoints):
    ck = checkpoints
    params = {"checkpoint": str(ck.a), "rollout_mode": "trial", "rollout_max_episodes": 4}
    robot, policy = graph({**params, "rollout_watch_episodes": 0})
    decisions = []
    robot.node.create_subscription(
        RolloutDecision,
        names.ROLLOUT_DECISION_TOPIC,
        lambda m: robot._add(decisions, m),
        LATCHED_QOS,
    )
    robot.wait_until(lambda: len(robot.complete(ck.id_a)) >= 1, 90, "episodes on a")
    reply = robot.load(ck.b)
    assert reply.success and reply.checkpoint_id == ck.id_b and "held" in reply.message.lower()
    robot.wait_until(lambda: decisions, 120, "the trial's decision")
    decision = decisions[0]
    assert (decision.decision, decision.candidate_id, decision.incumbent_id) == (
        "reject",
        ck.id_b,
        ck.id_a,
    )
    assert decision.candidate_episodes == decision.incumbent_episodes == 2
    assert "episode cap 4" in decision.reason and json.loads(decision.evidence)["evidence"]
    robot.wait_until(
        lambda: any(r.rollout and "decisions" in r.rollout for r in robot.results),
        30,
        "the decision in an episode result",
    )
    with robot.cond:
        results = list(robot.results)
    tags = [json.loads(r.rollout) for r in results]
    trial = [(r.checkpoint_id, t["role"]) for r, t in zip(results, tags) if "trial_id" in t]
    assert trial == [(ck.id_b, "candidate"), (ck.id_a, "incumbent")] * 2
    bagged = next(t for t in tags if "decisions" in t)["decisions"]
    assert [d["decision"] for d in bagged] == ["reject"] and bagged[0]["trial_id"]
    assert Path(f"{ck.b}.rollout.json").is_file()
    robot.wait_until(lambda: robot.complete()[-1].checkpoint_id == ck.id_a, 30, "a running")
    # Trial mode refuses the rejected checkpoint; manual mode holds it for the operator.
    refused = robot.load(ck.b)
    assert not refused.success and "rejected earlier" in refused.message
    client = robot.node.create_client(SetParameters, names.POLICY_SET_PARAMETERS_SERVICE)
    mode = Parameter(
        name="rollout_mode",
        value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="manual"),
    )
    assert call_service(client, SetParameters.Request(parameters=[mode]), 30).results[0].successful
    assert robot.load(ck.b).success
    promote = robot.node.create_client(RolloutCommand, names.PROMOTE_SERVICE)
    wrong = call_service(promote, RolloutCommand.Request(checkpoint_id=ck.id_a), 30)
    assert not wrong.success and ck.id_b in wrong.message
    done = call_service(promote, RolloutCommand.Request(reason="checked by hand"), 30)
    assert done.success and json.loads(done.decision)["reason"] == "checked by hand"
    robot.wait_until(lambda: len(robot.complete(ck.id_b)) >= 3, 90, "episodes on b")
    assert decisions[-1].decision == "promote" and decisions[-1].mode == "manual"
    check_episodes_consistent(robot)


# ---- (h) learning monitor on /diagnostics, nsl status ------------------------------------------
def test_diagnostics_carry_the_learning_monitor_and_nsl_status_prints_it(graph, checkpoints):
    ck = checkpoints
    robot, policy = graph({"checkpoint": str(ck.a)})
    namespace = robot.node.get_namespace()
    arrays = []
    robot.node.create_subscription(
        DiagnosticArray, names.DIAGNOSTICS, lambda m: robot._add(arrays, m), 10
    )
    robot.wait_until(lambda: len(robot.complete(ck.id_a)) >= 3, 90, "episodes on a")
    node = f"{namespace}/{names.POLICY_NODE}"

    def counted(array) -> int:
        row = {s.name: s for s in array.status}.get(f"{node}: success {ck.id_a} base")
        return int({kv.key: kv.value for kv in row.values}["episodes"]) if row else 0

    robot.wait_until(
        lambda: any(counted(a) >= 3 for a in arrays), 30, "a report counting three episodes"
    )
    latest = next(a for a in reversed(arrays) if counted(a) >= 3)
    assert node_entries(latest, node)[0][1] == "learning"
    status = {s.name: s for s in latest.status}
    learning = status[f"{node}: learning"]
    values = {kv.key: kv.value for kv in learning.values}
    assert values["in_force"] == ck.id_a and values["stopped_improving"] == "false"
    assert values["rollout_mode"] == "immediate" and learning.hardware_id == namespace.strip("/")
    row = status[f"{node}: success {ck.id_a} base"]
    row_values = {kv.key: kv.value for kv in row.values}
    assert int(row_values["episodes"]) >= 3 and "95% CI" in row.message
    assert 0.0 <= float(row_values["ci95_low"]) <= float(row_values["ci95_high"]) <= 1.0

    read = read_status(namespace, 10.0)
    assert list(read) == [node] and read[node][0][1] == "learning"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out):
        assert nsl(["status", "--namespace", namespace, "--timeout", "10"]) == 0
    text = out.getvalue()
    assert node in text and "learning" in text and f"success {ck.id_a} base" in text, text
    with contextlib.redirect_stderr(err):
        assert nsl(["status", "--namespace", "nowhere", "--timeout", "1.5"]) == 1
    assert "no policy is running" in err.getvalue()


# ---- (i) lifecycle ---------------------------------------------------------------------------
def test_deactivate_ends_the_episode_in_flight_with_no_motion_after_and_activate_resumes(
    graph, checkpoints
):
    ck = checkpoints
    # Slow steps and no early terminate: every episode is in flight for about a second.
    robot, policy = graph({"checkpoint": str(ck.a)}, step_delay=0.2, min_steps=MAX_STEPS)
    node = policy.runner.node_name(names.POLICY_NODE)
    robot.wait_until(lambda: len(robot.complete(ck.id_a)) >= 1, 90, "an episode on a")
    assert get_state(robot.node, node) == "active"
    with robot.cond:
        done = len(robot.results)
    robot.wait_until(
        lambda: len(robot.results) == done and robot.steps and robot.steps[-1].step_index >= 1,
        30,
        "an episode in flight",
    )
    change_state(robot.node, node, "deactivate")  # returns once the loop has stopped
    with robot.cond:
        commands_at_deactivate = len(robot.commands)
        results = list(robot.results)
    assert get_state(robot.node, node) == "inactive"
    ended = results[-1]
    assert not ended.complete and ended.message == ENDED_BY_DEACTIVATION, ended
    assert ended.checkpoint_id == ck.id_a and 1 <= ended.num_steps < MAX_STEPS
    time.sleep(2.5)  # deactivated: no command, no episode
    with robot.cond:
        assert len(robot.commands) == commands_at_deactivate, robot.commands[
            commands_at_deactivate:
        ]
        assert len(robot.results) == len(results)
    check_episodes_consistent(robot)
    assert "Traceback" not in policy.log.text()

    change_state(robot.node, node, "activate")
    robot.wait_until(
        lambda: len(robot.complete(ck.id_a)) >= len([r for r in results if r.complete]) + 1,
        60,
        "an episode after activation",
    )
    with robot.cond:
        seeds = [r.seed for r in robot.results]
    assert len(set(seeds)) == len(seeds), "an episode seed repeated after activation"
    check_episodes_consistent(robot)
