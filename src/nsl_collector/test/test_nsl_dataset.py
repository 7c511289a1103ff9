"""Tests of the ROS-free dataset library (nsl_collector.dataset): no ROS needed."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from dataset_helpers import MSG_DIR, make_episode, serialize_episode
from nsl_collector.dataset import (
    EPISODE_RESULT,
    RESULT_TOPIC,
    STEP_RECORD,
    STEP_TOPIC,
    BagRecorder,
    DatasetError,
    StepData,
    dataset_info,
    find_msg_dir,
    load_transitions,
    read_episodes,
    writer_typestore,
)
from nsl_policy.action_space import ActionSpace, GraspCommand
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from nsl_collector.loading import _select_episodes
from nsl_collector.transitions import Transitions


def write_bag(path, episodes, metadata=None, **kw):
    with BagRecorder(
        path, metadata or {"task": "base", "robot": "sim"}, msg_dir=MSG_DIR, **kw
    ) as rec:
        for steps, result in episodes:
            rec.write_episode(steps, result)
    return path


def expected_action(s: StepData) -> np.ndarray:
    """ActionSpace.to_vector of the command as stored (float32 fields)."""
    tr = tuple(float(x) for x in np.asarray(s.translation, np.float32))
    return ActionSpace().to_vector(
        GraspCommand(tr, float(np.float32(s.rotation)), s.close_gripper, s.terminate)
    )


def assert_episode_equal(ep, steps, result):
    assert ep.episode_id == result.episode_id
    assert ep.task == result.task and ep.seed == result.seed and ep.success == result.success
    assert ep.checkpoint_id == result.checkpoint_id
    assert ep.exploration == result.exploration
    assert ep.robot == result.frame_id
    assert ep.num_steps == len(steps)
    for j, (got, s) in enumerate(zip(ep.steps, steps)):
        assert got.step_index == j
        assert got.image.dtype == np.uint8 and got.image.shape == s.image.shape
        np.testing.assert_array_equal(got.image, s.image)
        assert got.state.shape == (3,) and got.state.dtype == np.float32
        np.testing.assert_allclose(
            got.state, [float(s.gripper_closed), s.gripper_height, s.step_fraction], rtol=1e-6
        )
        assert got.action.shape == (6,) and got.action.dtype == np.float32
        np.testing.assert_allclose(got.action, expected_action(s), atol=1e-6)
        if math.isnan(s.q_value):
            assert math.isnan(got.q_value)
        else:
            assert got.q_value == pytest.approx(s.q_value)
        assert got.exploratory == s.exploratory
        assert got.stamp_ns == s.stamp_ns
        assert got.checkpoint_id == result.checkpoint_id


# ------------------------------------------------------------------------- round trips
def test_write_episode_round_trip(tmp_path):
    eps = [make_episode(i, n=3 + i) for i in range(4)]
    bag = write_bag(
        tmp_path / "bag",
        eps,
        {
            "task": "base",
            "robot": "sim",
            "checkpoint": "ckpt-0",
            "exploration": {"epsilon": 0.2},
            "software": {"nsl": "0.1.0"},
        },
    )
    assert (bag / "metadata.yaml").is_file() and (bag / "bag.mcap").is_file()
    got = read_episodes(bag)
    assert len(got) == 4 and got.skipped == [] and got.unclosed == []
    for ep, (steps, result) in zip(got, eps):
        assert_episode_equal(ep, steps, result)
    assert got[0].images.shape == (3, 16, 20, 3) and got[0].actions.shape == (3, 6)
    # Session metadata: sidecar and rosbag2 custom_data.
    assert got.sessions == [
        {
            "task": "base",
            "robot": "sim",
            "checkpoint": "ckpt-0",
            "exploration": {"epsilon": 0.2},
            "software": {"nsl": "0.1.0"},
        }
    ]
    side = yaml.safe_load((bag / "nsl_session.yaml").read_text())
    assert (
        side["state"] == "closed"
        and side["episodes_written"] == 4
        and side["steps_written"] == 3 + 4 + 5 + 6
    )
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert json.loads(meta["custom_data"]["nsl_session"])["checkpoint"] == "ckpt-0"
    assert meta["storage_identifier"] == "mcap" and meta["version"] == 9
    counts = {
        t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]
    }
    assert counts == {STEP_TOPIC: 18, RESULT_TOPIC: 4}


def test_raw_cdr_path(tmp_path):
    """The ROS node passes rclpy-serialized bytes; emulate them with a rosbags typestore."""
    ts = writer_typestore(MSG_DIR)
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    img = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)
    with BagRecorder(tmp_path / "raw", {"task": "base"}, msg_dir=MSG_DIR) as rec:
        for j in range(2):
            h = Header(stamp=Time(sec=5, nanosec=j), frame_id="r")
            msg = T[STEP_RECORD](
                header=h,
                episode_id="e1",
                step_index=j,
                image=T["sensor_msgs/msg/Image"](
                    header=h,
                    height=8,
                    width=6,
                    encoding="rgb8",
                    is_bigendian=0,
                    step=18,
                    data=img.reshape(-1),
                ),
                gripper_state=T["nsl_msgs/msg/GripperState"](
                    closed=bool(j), height=0.2, step_fraction=j / 2
                ),
                action=T["nsl_msgs/msg/GraspAction"](
                    translation=np.array([0.03, -0.015, 0.0], np.float32),
                    rotation=-0.125,
                    close_gripper=bool(j),
                    terminate=bool(j),
                ),
                q_value=0.5,
                exploratory=False,
                checkpoint_id="c",
            )
            rec.write_raw(
                STEP_TOPIC,
                "nsl_msgs/msg/StepRecord",
                5_000_000_000 + j,
                bytes(ts.serialize_cdr(msg, STEP_RECORD)),
            )
        res = T[EPISODE_RESULT](
            header=Header(stamp=Time(sec=6, nanosec=0), frame_id="r"),
            episode_id="e1",
            task="t",
            seed=7,
            success=True,
            num_steps=2,
            checkpoint_id="c",
            exploration="{}",
            complete=True,
            message="",
            rollout="",
        )
        rec.write_raw(
            RESULT_TOPIC,
            "nsl_msgs/EpisodeResult",
            6_000_000_000,
            bytes(ts.serialize_cdr(res, EPISODE_RESULT)),
        )
    (ep,) = read_episodes(tmp_path / "raw")
    assert ep.episode_id == "e1" and ep.success and ep.seed == 7 and ep.num_steps == 2
    np.testing.assert_array_equal(ep.steps[1].image, img)
    np.testing.assert_allclose(ep.steps[0].action, [1, -0.5, 0, -0.5, -1, -1], atol=1e-6)
    np.testing.assert_allclose(ep.steps[1].action, [1, -0.5, 0, -0.5, 1, 1], atol=1e-6)
    np.testing.assert_allclose(ep.steps[1].state, [1, 0.2, 0.5], rtol=1e-6)


def test_write_episode_raw(tmp_path):
    """The collector node's path: it buffers an episode's CDR bytes and writes them in one go."""
    ts = writer_typestore(MSG_DIR)
    eps = [make_episode(i, n=3) for i in range(2)]
    with BagRecorder(tmp_path / "bag", {"task": "base"}, msg_dir=MSG_DIR) as rec:
        for steps, result in eps:
            msgs = serialize_episode(ts, steps, result)
            rec.write_episode_raw([(t, b) for _, _, t, b in msgs[:-1]], (msgs[-1][2], msgs[-1][3]))
        assert (rec.episodes_written, rec.steps_written) == (2, 6)
    got = read_episodes(tmp_path / "bag")
    for ep, (steps, result) in zip(got, eps):
        assert_episode_equal(ep, steps, result)


def test_independent_mcap_reader(tmp_path):
    """Read the bag with mcap + mcap_ros2 (not rosbags nor our code) and rosbags' Reader."""
    eps = [make_episode(i, n=4) for i in range(3)]
    bag = write_bag(tmp_path / "bag", eps)
    counts, steps_seen, results = {}, [], []
    with open(bag / "bag.mcap", "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        schemas = {s.name: s for s in summary.schemas.values()}
        assert (
            schemas[STEP_RECORD].encoding == "ros2msg"
            and schemas[EPISODE_RESULT].encoding == "ros2msg"
        )
        assert (
            schemas[STEP_RECORD]
            .data.decode()
            .startswith("std_msgs/Header header\nstring episode_id")
        )
        assert b"MSG: sensor_msgs/Image" in schemas[STEP_RECORD].data
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            assert channel.message_encoding == "cdr"
            (steps_seen if schema.name == STEP_RECORD else results).append(decoded)
    assert counts == {STEP_TOPIC: 12, RESULT_TOPIC: 3}
    for k, (steps, result) in enumerate(eps):
        r = results[k]
        assert (r.episode_id, r.task, r.seed, r.success, r.num_steps, r.complete) == (
            result.episode_id,
            result.task,
            result.seed,
            result.success,
            4,
            True,
        )
        assert json.loads(r.exploration) == result.exploration and r.header.frame_id == "robot1"
        for j, s in enumerate(steps):
            m = steps_seen[4 * k + j]
            assert m.episode_id == result.episode_id and m.step_index == j
            assert (m.image.height, m.image.width, m.image.encoding, m.image.step) == (
                16,
                20,
                "rgb8",
                60,
            )
            assert bytes(m.image.data) == s.image.tobytes()
            np.testing.assert_allclose(m.action.translation, s.translation, rtol=1e-6)
            assert m.action.terminate == s.terminate and m.gripper_state.closed == s.gripper_closed
    # rosbags' own rosbag2 reader (what ros2 bag tools see): metadata and hashes.
    from rosbags.rosbag2 import Reader

    with Reader(bag) as rd:
        assert rd.message_count == 15
        conns = {c.topic: c for c in rd.connections}
        assert conns[STEP_TOPIC].msgtype == STEP_RECORD
        assert conns[STEP_TOPIC].digest == writer_typestore(MSG_DIR).hash_rihs01(STEP_RECORD)
        assert conns[STEP_TOPIC].digest.startswith("RIHS01_")


def test_reading_needs_no_msg_files_and_uses_stored_definitions(tmp_path, monkeypatch):
    """An 'old' bag with a different StepRecord definition stays readable from its msgdef."""
    old = tmp_path / "old_msgs"
    old.mkdir()
    for f in MSG_DIR.glob("*.msg"):
        text = f.read_text()
        if f.name == "StepRecord.msg":
            text = text.replace("float32 q_value", "float32 legacy_field\nfloat32 q_value")
        (old / f.name).write_text(text)
    steps, result = make_episode(0, n=3)
    with BagRecorder(tmp_path / "bag", {}, msg_dir=old) as rec:
        for msg in serialize_episode(
            writer_typestore(old), steps, result, extra_step_fields={"legacy_field": 1.5}
        ):
            rec.write_raw(*msg)
    with pytest.raises(DatasetError, match=r"legacy_field|StepRecord"):
        with BagRecorder(tmp_path / "bag2", {}, msg_dir=old) as rec:
            rec.write_episode(steps, result)  # write_episode fills only the current fields
    monkeypatch.delenv("NSL_MSGS_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "ament_index_python", None)
    monkeypatch.setitem(
        sys.modules, "ament_index_python.packages", None
    )  # also when rclpy imported it
    monkeypatch.setattr(
        sys, "prefix", str(tmp_path / "no_prefix")
    )  # nor in the interpreter's prefix
    with pytest.raises(DatasetError, match="NSL_MSGS_DIR"):
        find_msg_dir()
    (ep,) = read_episodes(tmp_path / "bag")
    assert_episode_equal(ep, steps, result)


def test_find_msg_dir_env(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ament_index_python", None)
    monkeypatch.setitem(
        sys.modules, "ament_index_python.packages", None
    )  # also when rclpy imported it
    monkeypatch.setenv("NSL_MSGS_DIR", str(MSG_DIR))
    assert find_msg_dir() == MSG_DIR
    monkeypatch.setenv("NSL_MSGS_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="NSL_MSGS_DIR"):
        find_msg_dir()


def test_action_vectors_match_action_space(tmp_path):
    eps = [make_episode(i, n=6) for i in range(3)]
    write_bag(tmp_path / "bag", eps)
    got = read_episodes(tmp_path / "bag")
    clipped = 0
    for ep, (steps, _) in zip(got, eps):
        for g, s in zip(ep.steps, steps):
            np.testing.assert_array_equal(g.action, expected_action(s))
            clipped += int(np.any(np.abs(g.action[:3]) == 1.0))
    assert clipped > 0  # the helper draws displacements beyond max_translation
    # A custom scaling is honoured.
    wide = read_episodes(
        tmp_path / "bag", action_space=ActionSpace(max_translation=0.1, max_rotation=1.0)
    )
    s = eps[0][0][0]
    np.testing.assert_allclose(
        wide[0].steps[0].action[:4], [*(np.array(s.translation) / 0.1), s.rotation], atol=1e-6
    )


def test_step_data_from_vector(tmp_path):
    v = np.array([0.5, -1.0, 0.25, -0.5, 1.0, -1.0], np.float32)
    s = StepData.from_vector(np.zeros((4, 4, 3), np.uint8), [1.0, 0.1, 0.5], v)
    assert s.gripper_closed and s.close_gripper and not s.terminate
    _, result = make_episode(0, n=1)
    write_bag(tmp_path / "bag", [([s], result)])
    (ep,) = read_episodes(tmp_path / "bag")
    np.testing.assert_allclose(ep.steps[0].action, v, atol=1e-6)


# ------------------------------------------------------------------------- skipped episodes
def test_incomplete_episodes_are_reported(tmp_path):
    good = make_episode(0, n=3)
    aborted = make_episode(1, n=2, complete=False, message="observation timeout")
    mismatch = make_episode(2, n=3, num_steps=5)
    bag = tmp_path / "bag"
    with BagRecorder(bag, {}, msg_dir=MSG_DIR) as rec:
        for steps, result in (good, aborted, mismatch):
            rec.write_episode(steps, result)
        # Steps of an episode whose result never came (closed bag: not "in flight").
        for msg in serialize_episode(
            writer_typestore(MSG_DIR), *make_episode(3, n=2), finish=False
        ):
            rec.write_raw(*msg)
    got = read_episodes(bag)
    assert [e.episode_id for e in got] == ["ep-0000"]
    reasons = {s.episode_id: s.reason for s in got.skipped}
    assert set(reasons) == {"ep-0001", "ep-0002", "ep-0003"}
    assert "aborted" in reasons["ep-0001"] and "observation timeout" in reasons["ep-0001"]
    assert "step count mismatch" in reasons["ep-0002"]
    assert "no EpisodeResult" in reasons["ep-0003"]
    assert got.in_flight == []  # the bag was closed
    info = dataset_info(bag)
    assert (info["episodes"], info["complete"], info["skipped"], info["steps"]) == (4, 1, 3, 3)


def test_load_transitions(tmp_path):
    a = write_bag(
        tmp_path / "a", [make_episode(0, n=3, success=True), make_episode(1, n=2, success=False)]
    )
    b = write_bag(tmp_path / "b", [make_episode(2, n=4, success=True)])
    tr = load_transitions([a, str(b)])
    assert len(tr) == 9 and tr.num_episodes == 3
    assert tr.image.shape == (9, 16, 20, 3) and tr.image.dtype == np.uint8
    assert tr.state.shape == (9, 3) and tr.action.shape == (9, 6)
    assert tr.state.dtype == np.float32 and tr.action.dtype == np.float32
    np.testing.assert_array_equal(tr.episode, [0, 0, 0, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(tr.done, [0, 0, 1, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(tr.reward, [0, 0, 1, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(tr.next_index, [1, 2, 2, 4, 4, 6, 7, 8, 8])
    steps0 = make_episode(0, n=3)[0]
    np.testing.assert_array_equal(tr.image[1], steps0[1].image)
    np.testing.assert_array_equal(tr.next_image[0], steps0[1].image)
    np.testing.assert_array_equal(tr.action[2], expected_action(steps0[2]))
    # A dataset directory holding both bags gives the same set.
    tr2 = load_transitions([tmp_path])
    np.testing.assert_array_equal(tr2.image, tr.image)


def test_transitions_carry_optional_location_labels(tmp_path):
    """Location labels (simulator-only) travel with their rows.

    Through concatenation, prefixes and manifests' episode selections; wrong shapes and NaNs are
    refused.
    """
    a = write_bag(tmp_path / "a", [make_episode(0, n=3), make_episode(1, n=2)])
    b = write_bag(tmp_path / "b", [make_episode(2, n=4)])
    ta, tb = load_transitions([a]), load_transitions([b])
    assert ta.location is None
    la, lb = (
        np.arange(10, dtype=np.float32).reshape(5, 2),
        -np.arange(8, dtype=np.float32).reshape(4, 2),
    )
    both = Transitions.concatenate([ta.with_location(la), tb.with_location(lb)])
    np.testing.assert_array_equal(both.location, np.concatenate([la, lb]))
    assert Transitions.concatenate([ta.with_location(la), tb]).location is None  # all or none
    np.testing.assert_array_equal(both.rows(5).location, la)
    with pytest.raises(ValueError, match="cut an episode"):
        both.rows(4)
    second = _select_episodes(both, np.array([False, True, False]))
    np.testing.assert_array_equal(second.location, la[3:])
    with pytest.raises(ValueError, match=r"location must be \(5, 2\)"):
        ta.with_location(lb)
    with pytest.raises(ValueError, match="non-finite"):
        ta.with_location(np.full((5, 2), np.nan))


def test_load_transitions_errors(tmp_path):
    good = write_bag(tmp_path / "good", [make_episode(0)])
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=str(missing)):
        load_transitions([good, missing])
    empty = write_bag(tmp_path / "empty", [make_episode(1, complete=False, message="arm error")])
    with pytest.raises(DatasetError, match=f"{empty}.*no complete episode"):
        load_transitions([good, empty])
    with pytest.raises(DatasetError, match=str(missing)):
        read_episodes(missing)
    with pytest.raises(DatasetError, match=str(missing)):
        dataset_info(missing)


def test_dataset_info(tmp_path):
    write_bag(tmp_path / "s1", [make_episode(i, n=2, task="base") for i in range(4)])
    write_bag(
        tmp_path / "s2",
        [make_episode(i, n=3, task="checkerboard", success=True) for i in range(4, 6)],
    )
    info = dataset_info(tmp_path)
    assert info["episodes"] == 6 and info["complete"] == 6 and info["steps"] == 14
    assert info["successes"] == 4 and info["success_rate"] == pytest.approx(4 / 6)
    assert info["tasks"] == {"base": 4, "checkerboard": 2}
    assert info["task_success_rate"] == {"base": 0.5, "checkerboard": 1.0}
    assert info["checkpoints"] == {"ckpt-0": 3, "ckpt-1": 3}
    assert info["image_shapes"] == [[16, 20, 3]] and len(info["bags"]) == 2
    json.dumps(info)


# ------------------------------------------------------------------------- damage
def test_truncated_closed_bag_is_recovered_with_a_warning(tmp_path, caplog):
    bag = write_bag(tmp_path / "bag", [make_episode(i) for i in range(3)])
    mcap = bag / "bag.mcap"
    data = mcap.read_bytes()
    mcap.write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        got = read_episodes(bag)
    assert [e.episode_id for e in got] == ["ep-0000"]  # the episode cut in two is left out
    assert_episode_equal(got[0], *make_episode(0))
    assert got.damage and f"{mcap}: truncated" in got.damage[0] and "closed" in got.damage[0]
    assert f"{mcap}: truncated" in caplog.text
    assert load_transitions([bag]).num_episodes == 1
    with pytest.raises(DatasetError, match=f"{mcap}.*truncated"):
        read_episodes(bag, strict=True)
    with pytest.raises(DatasetError, match=str(mcap)):
        load_transitions([bag], strict=True)


def test_garbage_files_raise(tmp_path):
    bag = write_bag(tmp_path / "bag", [make_episode(0)])
    rng = np.random.default_rng(0)
    (bag / "bag.mcap").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DatasetError, match=f"{bag / 'bag.mcap'}.*not an MCAP"):
        read_episodes(bag)
    # Unclosed bag (no metadata.yaml) with garbage: still an error, not "recovered".
    (bag / "metadata.yaml").unlink()
    with pytest.raises(DatasetError, match="not an MCAP"):
        read_episodes(bag)
    # Garbage metadata.yaml: refused in strict mode, else the .mcap is read as unclosed.
    bag2 = write_bag(tmp_path / "bag2", [make_episode(0)])
    (bag2 / "metadata.yaml").write_text("{{{ not yaml")
    with pytest.raises(DatasetError, match="metadata.yaml"):
        read_episodes(bag2, strict=True)
    got = read_episodes(bag2)
    assert len(got) == 1 and "metadata.yaml" in got.damage[0]
    # Valid MCAP framing, corrupt record inside a chunk (the definitions' chunk, the first).
    bag3 = write_bag(tmp_path / "bag3", [make_episode(0)])
    raw = bytearray((bag3 / "bag3.mcap").read_bytes())
    i = raw.index(b"\x06", 8 + 9 + 10)  # first chunk opcode after the header record
    raw[i + 9 + 16 : i + 9 + 24] = (10**9).to_bytes(8, "little")  # absurd uncompressed size
    (bag3 / "bag3.mcap").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="bag3.mcap.*chunk 1"):
        read_episodes(bag3, strict=True)
    # The closed bag's summary repeats the definitions: the episode is still read.
    got = read_episodes(bag3)
    assert [e.episode_id for e in got] == ["ep-0000"] and "chunk 1" in got.damage[0]
    # A non-bag directory and a non-bag file.
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="no rosbag2 bag"):
        read_episodes(tmp_path / "plain")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DatasetError, match="x.txt"):
        read_episodes(tmp_path / "x.txt")


def test_recorder_refuses_existing_path(tmp_path):
    write_bag(tmp_path / "bag", [make_episode(0)])
    with pytest.raises(DatasetError, match="exists"):
        BagRecorder(tmp_path / "bag", {}, msg_dir=MSG_DIR)


def test_unclosed_bag_truncated_anywhere_is_recovered(tmp_path):
    """Cut a flushed-but-unclosed recording at every kind of offset: complete episodes survive."""
    src = tmp_path / "src"
    rec = BagRecorder(src, {"task": "base"}, msg_dir=MSG_DIR, fsync=False)
    sizes = []
    for i in range(4):
        rec.write_episode(*make_episode(i, n=3))
        sizes.append(rec.mcap_path.stat().st_size)
    data = rec.mcap_path.read_bytes()  # never closed: no summary/footer, no metadata.yaml
    ends, pos = [], 8  # where each chunk record (the definitions, then one per episode) ends
    while pos < len(data):
        op, length = data[pos], int.from_bytes(data[pos + 1 : pos + 9], "little")
        pos += 9 + length
        if op == 0x06:
            ends.append(pos)
    definitions_end, ends = ends[0], ends[1:]
    assert len(ends) == 4 and all(e <= sz for e, sz in zip(ends, sizes))
    assert not (src / "metadata.yaml").exists()
    for cut in sorted(
        {
            0,
            3,
            8,
            20,
            definitions_end,
            ends[0] - 1,
            ends[0],
            ends[0] + 1,
            sizes[0],
            ends[1] + 50,
            ends[2] - 9,
            ends[3],
            len(data),
        }
    ):
        bag = tmp_path / f"cut{cut}"
        bag.mkdir()
        (bag / "x.mcap").write_bytes(data[:cut])
        got = read_episodes(bag)
        expect = sum(e <= cut for e in ends)
        assert [e.episode_id for e in got] == [f"ep-{i:04d}" for i in range(expect)], cut
        assert got.unclosed == [bag]
    # A zero-filled tail (what a file system crash can leave) counts as truncation too...
    bag = tmp_path / "zeros"
    bag.mkdir()
    (bag / "x.mcap").write_bytes(data + bytes(4096))
    assert len(read_episodes(bag)) == 4
    rec.close()
    # ...but not in a closed bag, where it is damage: named, and refused in strict mode.
    closed = rec.mcap_path.read_bytes()
    rec.mcap_path.write_bytes(closed + bytes(100))
    with pytest.raises(DatasetError, match="src.mcap"):
        read_episodes(src, strict=True)
    got = read_episodes(src)
    assert len(got) == 4 and "src.mcap" in got.damage[0]
    rec.mcap_path.write_bytes(closed)
    assert len(read_episodes(src)) == 4 and read_episodes(src).unclosed == []
    with pytest.raises(DatasetError, match="closed"):
        rec.write_episode(*make_episode(9))


# ------------------------------------------------------------------------- SIGKILL
CHILD = textwrap.dedent("""
    import sys, time
    sys.path[:0] = {paths!r}
    from dataset_helpers import MSG_DIR, make_episode, serialize_episode
    from nsl_collector.dataset import BagRecorder, STEP_TOPIC, RESULT_TOPIC
    from nsl_collector.dataset import STEP_RECORD, EPISODE_RESULT
    from nsl_collector.msgtypes import writer_typestore
    mode = sys.argv[2]
    rec = BagRecorder(sys.argv[1], {{"task": "base", "mode": mode}}, msg_dir=MSG_DIR)
    ts = writer_typestore(MSG_DIR)

    def raw_episode(i, n, finish=True):
        # What the ROS node does: steps as they come, then the result, all as CDR bytes.
        for msg in serialize_episode(ts, *make_episode(i, n=n), finish=finish):
            rec.write_raw(*msg)

    if mode == "inflight":
        for i in range(3):
            rec.write_episode(*make_episode(i, n=4))
            print("DONE", i, flush=True)
        raw_episode(3, 5)
        print("DONE", 3, flush=True)
        raw_episode(4, 6, finish=False)  # in flight: 6 of its steps written, no result
        print("INFLIGHT", flush=True)
        time.sleep(120)
    else:  # "stream": write as fast as possible until killed
        i = 0
        while True:
            if i % 2:
                rec.write_episode(*make_episode(i, n=3, hw=(64, 64)))
            else:
                for msg in serialize_episode(ts, *make_episode(i, n=3)):
                    rec.write_raw(*msg)
            print("DONE", i, flush=True)
            i += 1
""")


def run_child(tmp_path, bag, mode, kill_after_lines, extra_delay=0.0):
    script = tmp_path / "child.py"
    here = str(Path(__file__).resolve().parent)
    script.write_text(CHILD.format(paths=[here] + [p for p in sys.path if p]))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(bag), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 30
        while len(lines) < kill_after_lines:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"child ended early: {proc.stderr.read()}")
            lines.append(line.split())
            assert time.monotonic() < deadline
        time.sleep(extra_delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        lines += [ln.split() for ln in proc.stdout.read().splitlines()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return [int(x[1]) for x in lines if x and x[0] == "DONE"]


def tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_sigkill_mid_episode(tmp_path):
    other = write_bag(tmp_path / "data" / "earlier_session", [make_episode(i) for i in range(2)])
    before_other = tree_digest(other)
    bag = tmp_path / "data" / "crashed"
    done = run_child(tmp_path, bag, "inflight", kill_after_lines=5)
    assert done == [0, 1, 2, 3]
    assert not (bag / "metadata.yaml").exists()
    assert yaml.safe_load((bag / "nsl_session.yaml").read_text())["state"] == "recording"
    crashed_before = tree_digest(bag)
    got = read_episodes(bag)
    assert [e.episode_id for e in got] == ["ep-0000", "ep-0001", "ep-0002", "ep-0003"]
    for ep, i in zip(got, range(4)):
        assert_episode_equal(ep, *make_episode(i, n=5 if i == 3 else 4))
    assert got.unclosed == [bag]
    (inflight,) = got.skipped
    assert inflight.episode_id == "ep-0004" and inflight.in_flight and inflight.steps_found == 6
    assert "in flight" in inflight.reason
    assert got.sessions == [{"task": "base", "mode": "inflight"}]
    # Reading changed nothing; the other session's bag is untouched and whole.
    assert tree_digest(bag) == crashed_before and tree_digest(other) == before_other
    assert len(read_episodes(other)) == 2
    tr = load_transitions([tmp_path / "data"])
    assert tr.num_episodes == 6 and len(tr) == 2 * 5 + 3 * 4 + 5
    info = dataset_info(bag)
    assert info["complete"] == 4 and info["in_flight"] == 1 and info["unclosed_bags"] == [str(bag)]


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.05])
def test_sigkill_while_streaming(tmp_path, delay):
    """Kill at an arbitrary moment of fast continuous writing.

    Every episode reported written is readable and intact; nothing else is returned; the partial
    tail is ignored.
    """
    bag = tmp_path / "bag"
    done = run_child(tmp_path, bag, "stream", kill_after_lines=6, extra_delay=delay)
    got = read_episodes(bag)
    ids = [e.episode_id for e in got]
    assert ids[: len(done)] == [f"ep-{i:04d}" for i in done]
    assert len(ids) <= len(done) + 1  # at most the episode being reported when killed
    for ep in got:
        i = int(ep.episode_id.split("-")[1])
        assert_episode_equal(ep, *make_episode(i, n=3, hw=(64, 64) if i % 2 else (16, 20)))
    assert all(s.in_flight for s in got.skipped) and len(got.skipped) <= 1
