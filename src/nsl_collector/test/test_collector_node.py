"""The real collector_node as a separate process over ROS 2.

Services, SIGKILL mid-episode, camera recording, 1000 episodes with bounded memory,
independent-reader round trip.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from dataset_helpers import MSG_DIR, make_episode
from nsl_collector.dataset import BagRecorder, dataset_info, load_transitions, read_episodes
from nsl_common import names
from nsl_common.names import bag_topic
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from nsl_bringup.graph import NodeSpec
from nsl_bringup.runner import fastdds_environment, GraphRunner, isolated_environment
from nsl_collector.ros_feed import EpisodeFeed
from nsl_collector.tools import verify

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def ros_env():
    env = {**isolated_environment(1 + (os.getpid() + 37) % 100), **fastdds_environment()}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class Log:
    def __init__(self):
        self.lines = []
        self._echo = sys.stdout  # pytest's capture; later lookups may be the terminal

    def write(self, text):
        self.lines.append(text)
        self._echo.write(text)

    def flush(self):
        pass

    def text(self):
        return "".join(self.lines)


def start_collector(root: Path, **params):
    log = Log()
    runner = GraphRunner(
        [
            NodeSpec(
                "collector",
                "nsl_collector",
                "collector_node",
                "collector.yaml",
                {"dataset_root": str(root), **params},
            )
        ],
        output=log,
    )
    runner.start()
    return runner, log


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_sigkill_mid_episode_over_ros(ros_env, tmp_path):
    root = tmp_path / "datasets"
    earlier = root / "base" / "session_earlier"
    with BagRecorder(earlier, {"task": "base"}, msg_dir=MSG_DIR) as rec:
        for i in range(2):
            rec.write_episode(*make_episode(i))
    before = digest(earlier)
    runner, log = start_collector(root, auto_start=False)
    feed = EpisodeFeed(name="crash_feed")
    try:
        feed.wait_connected()
        hw = (32, 32)
        # auto_start false: an episode before start_session is not recorded.
        feed.episode(2, hw, seed=99)
        feed.wait_for(lambda s: s["dropped_episodes"] == 1, 30, "the unrecorded episode")
        reply = feed.call("start_session")
        assert reply.success, reply.message
        bag = Path(reply.message)
        assert bag.parent == root / "base" and (bag / "nsl_session.yaml").is_file()
        assert not feed.call("start_session").success
        written = [feed.episode(3, hw, seed=i) for i in range(5)]
        feed.wait_for(lambda s: s["episodes_written"] == 5, 30, "5 episodes")
        # Discard the episode in flight: its remaining steps and result are not recorded.
        eid = feed.episode(2, hw, seed=50, finish=False)
        feed.wait_for(lambda s: s["pending_steps"] == 2, 30, "2 steps buffered")
        reply = feed.call("discard_episode")
        assert reply.success and eid in reply.message
        feed.step(eid, 2, feed.image(hw, 1), hw, last=True)
        feed.result(eid, 3)
        written.append(feed.episode(4, hw, seed=6))
        feed.wait_for(
            lambda s: s["episodes_written"] == 6 and s["discarded_episodes"] == 1, 30, "episode 6"
        )
        # The episode in flight at the kill: 3 of its steps received, no result.
        inflight = feed.episode(3, hw, seed=7, finish=False)
        feed.wait_for(lambda s: s["pending_steps"] == 3, 30, "the in-flight steps")
        os.kill(runner.pid("collector"), signal.SIGKILL)
        assert runner.wait(30).describe() == "node 'collector' killed by SIGKILL"
    finally:
        feed.close()
        runner.stop()
    assert not (bag / "metadata.yaml").exists()
    eps = read_episodes(bag)
    assert [e.episode_id for e in eps] == written and eps.unclosed == [bag]
    assert [e.num_steps for e in eps] == [3] * 5 + [4]
    assert inflight not in {s.episode_id for s in eps.skipped} | {
        e.episode_id for e in eps
    }  # never written
    assert all(e.checkpoint_id == "ckpt-feed" and e.success for e in eps)
    info = dataset_info(root)
    assert info["complete"] == 8 and info["unclosed_bags"] == [str(bag)]
    (meta,) = [
        s for s in info["sessions"] if "robot" in s
    ]  # the other bag's metadata is {"task": "base"}
    assert (
        meta["task"] == "base"
        and meta["robot"] == "sim"
        and meta["sim"] is True
        and meta["namespace"] == "/"
    )
    assert meta["checkpoint_id"] == "ckpt-feed"
    # Killed mid-session: the sidecar still counts every episode that was written.
    assert meta["exploration_settings"] == [{"exploration": {"epsilon": 0.1}, "episodes": 6}]
    assert meta["software"]["nsl_collector"] and meta["started"]
    assert digest(earlier) == before  # the other bag is untouched
    assert load_transitions(bag).num_episodes == 6

    assert {c.bag.name: c.status for c in verify([root])} == {
        "session_earlier": "ok",
        bag.name: "recovered",
    }


def test_1000_episodes_bounded_memory_camera_and_independent_reader(ros_env, tmp_path):
    root = tmp_path / "datasets"
    runner, log = start_collector(
        root, record_camera=True, fsync=False, max_episodes_per_bag=400, task="memtest"
    )
    feed = EpisodeFeed(name="memory_feed")
    hw = (16, 16)
    images = [feed.image(hw, i) for i in range(3)]
    samples = {}
    try:
        feed.wait_connected(camera=True)
        assert feed.call("start_session").success
        for i in range(1000):
            feed.episode(2, hw, images=images, seed=i, task="memtest")  # its session's task
            if i % 50 == 0:
                feed.camera(hw, images[0])
            if (
                i % 4 == 3
            ):  # flow control: a few episodes on the wire (a policy runs one at a time)
                feed.wait_for(
                    lambda s, n=i: s["episodes_written"] + s["dropped_episodes"] >= n - 4,
                    60,
                    f"episode {i}",
                )
            if i + 1 in (200, 1000):
                st = feed.wait_for(
                    lambda s, n=i + 1: s["episodes_written"] + s["dropped_episodes"] >= n,
                    60,
                    "all",
                )
                samples[i + 1] = (rss_kb(runner.pid("collector")), st)
        reply = feed.call("stop_session")
        assert reply.success
    finally:
        feed.close()
        codes = runner.stop()
    assert codes == {"collector": 0}, log.text()[-2000:]
    st = samples[1000][1]
    assert (
        st["episodes_written"] == 1000 and st["dropped_steps"] == 0 and st["pending_episodes"] == 0
    ), st
    growth_kb = samples[1000][0] - samples[200][0]
    print(
        f"collector RSS after 200 episodes {samples[200][0]} kB, after 1000 {samples[1000][0]} kB"
    )
    assert growth_kb < 8 * 1024, f"RSS grew {growth_kb} kB over 800 episodes"
    bags = sorted((root / "memtest").iterdir())
    assert len(bags) == 3 and reply.message == str(bags[-1])
    assert [len(read_episodes(b)) for b in bags] == [400, 400, 200]
    # Independent reader: every message of every bag decodes; camera frames are there.
    counts = Counter()
    for b in bags:
        with open(b / f"{b.name}.mcap", "rb") as f:
            for schema, channel, _, m in make_reader(
                f, decoder_factories=[DecoderFactory()]
            ).iter_decoded_messages():
                counts[(channel.topic, schema.name)] += 1
                if schema.name == "sensor_msgs/msg/Image":
                    assert (m.height, m.width, m.encoding) == (16, 16, "rgb8") and bytes(
                        m.data
                    ) == images[0]
                elif schema.name == "nsl_msgs/msg/StepRecord":
                    assert bytes(m.image.data) in images
    assert counts[(bag_topic(names.STEP_RECORDS_TOPIC), "nsl_msgs/msg/StepRecord")] == 2000
    assert counts[(bag_topic(names.EPISODE_RESULTS_TOPIC), "nsl_msgs/msg/EpisodeResult")] == 1000
    camera = counts[(bag_topic(names.CAMERA_TOPIC), "sensor_msgs/msg/Image")]
    assert 1 <= camera <= 20  # best effort
