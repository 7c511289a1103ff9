"""System tests of sim_node over ROS 2: real node processes started with the bringup runner.

Two sim nodes run at once under different namespaces (one built from a YAML task file); a test
client in this process calls their arm services and listens to their cameras. Bad requests
(unknown task, NaN action, bad texture file, step without an episode) must get a clear refusal
and leave the node serving; out-of-range actions are clipped.
"""

from __future__ import annotations

import math
import os
import threading
import time

import numpy as np
import pytest

from nsl_common import names
from nsl_bringup.graph import NodeSpec
from nsl_bringup.runner import GraphRunner, isolated_environment
from nsl_sim.assets import encode_png

pytestmark = pytest.mark.system

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("nsl_msgs.srv")
# After the skips: the messages and the executor need ROS 2.
from nsl_msgs.srv import ExecuteStep, ResetEpisode  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

NS_A = f"simtest_a_{os.getpid()}"
NS_B = f"simtest_b_{os.getpid()}"


class Log:
    def __init__(self):
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return "".join(self.lines)


class SimClient:
    """Service clients and a camera subscription for one namespace."""

    def __init__(self, node, namespace: str):
        self.reset_client = node.create_client(
            ResetEpisode, f"/{namespace}/{names.ARM_RESET_SERVICE}"
        )
        self.step_client = node.create_client(
            ExecuteStep, f"/{namespace}/{names.ARM_STEP_SERVICE}"
        )
        self.images: list = []
        self.cond = threading.Condition()
        self.image_sub = node.create_subscription(
            Image, f"/{namespace}/{names.CAMERA_TOPIC}", self._on_image, 10
        )

    def wait_for_camera(self, timeout: float = 30.0) -> None:
        """Wait until the camera subscription is matched.

        A frame published before that is lost (volatile QoS), e.g. right after a cold start on a
        loaded machine. rclpy has no event for a match, hence the poll.
        """
        deadline = time.monotonic() + timeout
        while self.image_sub.get_publisher_count() == 0:
            assert time.monotonic() < deadline, f"camera topic not matched within {timeout} s"
            time.sleep(0.05)

    def _on_image(self, msg) -> None:
        with self.cond:
            self.images.append(msg)
            self.cond.notify_all()

    @staticmethod
    def _call(client, request, timeout=60.0):
        assert client.wait_for_service(timeout_sec=timeout), (
            f"service {client.srv_name} not available"
        )
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        assert done.wait(timeout), f"no reply from {client.srv_name} within {timeout} s"
        return future.result()

    def reset(self, task: str = "", seed: int = 0):
        return self._call(self.reset_client, ResetEpisode.Request(task=task, seed=seed))

    def step(self, translation=(0.0, 0.0, 0.0), rotation=0.0, close=False, terminate=False):
        req = ExecuteStep.Request()
        req.action.translation = [float(v) for v in translation]
        req.action.rotation = float(rotation)
        req.action.close_gripper, req.action.terminate = close, terminate
        return self._call(self.step_client, req)

    def reset_and_image(self, task: str = "", seed: int = 0) -> tuple:
        """Reset and return (reply, the camera frame published by that reset)."""
        self.wait_for_camera()
        with self.cond:
            start = len(self.images)
        reply = self.reset(task, seed)
        if not reply.success:
            return reply, None
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.images) > start, 30), (
                "no camera frame after reset"
            )
            msg = self.images[-1]
        assert (msg.width, msg.height, msg.encoding) == (64, 64, "rgb8")
        return reply, np.frombuffer(bytes(msg.data), np.uint8).reshape(64, 64, 3)


def write_png(path, rgb) -> None:
    img = np.zeros((32, 32, 3), np.uint8)
    img[:] = rgb
    img[::4] = 0
    path.write_bytes(encode_png(img))


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    work = tmp_path_factory.mktemp("sim_node")
    write_png(work / "blue.png", (40, 60, 220))
    (work / "blue_tray.yaml").write_text("name: blue_tray\ntexture: blue.png\n")
    (work / "bad_texture.yaml").write_text(
        "name: bad_texture\ntexture: /no/such/folder/wood.png\n"
    )

    iso = isolated_environment()
    old = {k: os.environ.get(k) for k in iso}
    os.environ.update(iso)
    context = rclpy.Context()
    rclpy.init(context=context)
    logs, runners = {}, {}
    try:
        for ns, task in ((NS_A, "base"), (NS_B, str(work / "blue_tray.yaml"))):
            logs[ns] = Log()
            runners[ns] = GraphRunner(
                [
                    NodeSpec(
                        "sim", "nsl_sim", "sim_node", "sim.yaml", {"task": task, "image_size": 64}
                    )
                ],
                namespace=ns,
                env=iso,
                output=logs[ns],
            )
            runners[ns].start()

        node = rclpy.create_node("sim_node_test_client", context=context)
        clients = {ns: SimClient(node, ns) for ns in runners}
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        yield clients, runners, logs, work
        executor.shutdown()
        node.destroy_node()
    finally:
        codes = {ns: r.stop() for ns, r in runners.items()}
        rclpy.try_shutdown(context=context)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for ns, r in runners.items():
        assert r.first_exit is None, (
            f"sim node in {ns} died: {r.first_exit.describe()}\n{logs[ns].text()[-2000:]}"
        )
        assert all(c in (0, -2) for c in codes[ns].values()), (
            f"{ns}: {codes[ns]}\n{logs[ns].text()[-2000:]}"
        )


def alive(runners, logs):
    for ns, r in runners.items():
        assert r.first_exit is None, (
            f"sim node in {ns} died: {r.first_exit.describe()}\n{logs[ns].text()[-2000:]}"
        )


def test_reset_step_and_camera(sims):
    clients, runners, logs, _ = sims
    a = clients[NS_A]
    reply, img = a.reset_and_image(seed=3)
    assert reply.success, reply.message
    assert not reply.gripper_state.closed
    assert reply.gripper_state.height == pytest.approx(0.15, abs=0.005)
    assert img.std() > 10
    r = a.step((0.0, 0.0, -0.02))
    assert r.success and not r.done and r.message == ""
    assert r.gripper_state.height == pytest.approx(0.13, abs=0.005)
    r = a.step(terminate=True)
    assert r.success and r.done and r.gripper_state.closed
    r = a.step()  # after the end of the episode: refused, node keeps serving
    assert not r.success and "episode is done" in r.message
    alive(runners, logs)


def test_invalid_task_name_is_refused_and_node_keeps_serving(sims):
    clients, runners, logs, _ = sims
    a = clients[NS_A]
    reply = a.reset(task="purple_unicorn", seed=1)
    assert not reply.success
    assert (
        "purple_unicorn" in reply.message
        and "valid tasks" in reply.message
        and "checkerboard" in reply.message
    )
    r = a.step()
    assert not r.success and "reset" in r.message  # no episode after a refused reset
    reply = a.reset(task="base", seed=1)
    assert reply.success, reply.message
    assert a.step((0.01, 0.0, 0.0)).success
    alive(runners, logs)


def test_non_finite_action_is_refused(sims):
    clients, runners, logs, _ = sims
    a = clients[NS_A]
    assert a.reset(seed=2).success
    for translation, rotation in (
        ((math.nan, 0.0, 0.0), 0.0),
        ((0.0, math.inf, 0.0), 0.0),
        ((0.0, 0.0, 0.0), -math.inf),
    ):
        r = a.step(translation, rotation)
        assert not r.success and "non-finite" in r.message, r.message
    r = a.step((0.0, 0.0, -0.01))  # the refused steps did not count or move the arm
    assert r.success and not r.done
    assert r.gripper_state.height == pytest.approx(0.14, abs=0.005)
    assert r.gripper_state.step_fraction == pytest.approx(0.1)
    alive(runners, logs)


def test_out_of_range_action_is_clipped(sims):
    clients, runners, logs, _ = sims
    a = clients[NS_A]
    assert a.reset(seed=4).success
    r = a.step((5.0, -5.0, 5.0), 3.0)
    assert r.success and not r.done
    assert "clipped" in r.message
    # +5 m up became the 3 cm per-step limit
    assert r.gripper_state.height == pytest.approx(0.18, abs=0.006)
    for _ in range(5):  # keeps climbing only to the workspace top (0.30 m)
        r = a.step((0.0, 0.0, 1.0))
    assert r.gripper_state.height == pytest.approx(0.30, abs=0.01)
    alive(runners, logs)


def test_yaml_task_with_bad_texture_gives_clear_error(sims):
    clients, runners, logs, work = sims
    a = clients[NS_A]
    bad = work / "bad_texture.yaml"
    reply = a.reset(task=str(bad), seed=1)
    assert not reply.success
    assert (
        "texture file not found" in reply.message and "/no/such/folder/wood.png" in reply.message
    )
    assert str(bad) in reply.message
    reply = a.reset(task=str(work / "missing.yaml"), seed=1)
    assert not reply.success and "missing.yaml" in reply.message
    assert a.reset(task="base", seed=1).success
    alive(runners, logs)


def test_two_namespaced_sims_at_once(sims):
    """Two sims serve at once; with the same seed and task their images are bit-identical.

    B was started with task:=<yaml file> (a blue tray).
    """
    clients, runners, logs, work = sims
    a, b = clients[NS_A], clients[NS_B]
    results = {}

    def reset(name, client, task):
        results[name] = client.reset_and_image(task=task, seed=7)

    threads = [
        threading.Thread(target=reset, args=("a", a, "base")),
        threading.Thread(target=reset, args=("b", b, "")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    (ra, img_a), (rb, img_b) = results["a"], results["b"]
    assert ra.success and rb.success, (ra.message, rb.message)
    blue = lambda img: float(img[..., 2].astype(int).mean() - img[..., 0].astype(int).mean())  # noqa: E731
    print(f"blue excess: a {blue(img_a):.1f}, b {blue(img_b):.1f}")
    assert blue(img_b) > blue(img_a) + 20  # B runs the YAML task (blue tray texture)
    # B steps while A's episode stays where it was
    rb2 = b.step((0.0, 0.0, -0.03))
    assert rb2.success and rb2.gripper_state.height == pytest.approx(0.12, abs=0.005)
    ra2 = a.step((0.0, 0.0, 0.0))
    assert ra2.gripper_state.height == pytest.approx(0.15, abs=0.005)
    # same seed and task in two processes: identical camera images
    _, img_b_base = b.reset_and_image(task="base", seed=7)
    assert img_b_base.tobytes() == img_a.tobytes()
    alive(runners, logs)
    assert "task=blue_tray" in logs[NS_B].text()


def test_bad_task_parameter_exits_with_clear_error():
    """A bad task *parameter* is a start-up configuration error: exit code 2 and the reason."""
    log = Log()
    runner = GraphRunner(
        [NodeSpec("sim", "nsl_sim", "sim_node", "sim.yaml", {"task": "no_such_world"})],
        namespace=f"simtest_c_{os.getpid()}",
        env=isolated_environment(),
        output=log,
    )
    runner.start()
    try:
        died = runner.wait(timeout=60)
    finally:
        runner.stop()
    assert died is not None and died.returncode == 2, log.text()
    assert "unknown task 'no_such_world'" in log.text()
