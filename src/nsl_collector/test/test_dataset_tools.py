"""Cache, tiers, merge, verify, CLI, CDR prefix parsing and the ROS-free collector logic."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from dataset_helpers import MSG_DIR, make_episode, serialize_episode
from nsl_collector import loading as loading_mod
from nsl_collector.cache import TransitionCache
from nsl_collector import session as session_mod
from nsl_collector.cdr import CdrError, episode_result, parse_exploration, step_key
from nsl_collector.dataset import (
    BagRecorder,
    DatasetError,
    load_transitions,
    read_episodes,
    writer_typestore,
)
from nsl_collector.session import Collector, CollectorConfig
from nsl_collector.tools import merge_bags, split_tiers, tier_order, verify
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from nsl_collector.cli import add_commands


def write_bag(path, episodes, metadata=None):
    with BagRecorder(path, metadata or {"task": "base"}, msg_dir=MSG_DIR, fsync=False) as rec:
        for steps, result in episodes:
            rec.write_episode(steps, result)
    return path


def many_episodes(root, n_bags, per_bag, n=2, start=0):
    bags, k = [], start
    for b in range(n_bags):
        bags.append(
            write_bag(
                root / f"session_{b}",
                [make_episode(k + i, n=n, hw=(8, 8)) for i in range(per_bag)],
            )
        )
        k += per_bag
    return bags


# ------------------------------------------------------------------------- cache
def test_cache_hit_equal_and_invalidated_on_change(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    a = write_bag(tmp_path / "data" / "a", [make_episode(i, n=3) for i in range(3)])
    b = write_bag(tmp_path / "data" / "b", [make_episode(i, n=2) for i in range(3, 5)])
    cold = load_transitions([tmp_path / "data"], cache_dir=cache_dir)
    assert len(list(cache_dir.iterdir())) == 2  # one entry per bag
    # Second load: no bag is decoded at all.
    monkeypatch.setattr(
        loading_mod, "_read_bag", lambda *a, **k: pytest.fail("decoded a cached bag")
    )
    warm = load_transitions([tmp_path / "data"], cache_dir=cache_dir)
    for field in ("image", "state", "action", "reward", "done", "next_index", "episode"):
        np.testing.assert_array_equal(getattr(warm, field), getattr(cold, field))
    monkeypatch.undo()
    monkeypatch.setenv("NSL_DATASET_CACHE", str(tmp_path / "unused"))
    # A changed bag (rewritten with other content) is decoded again; the other one is not.
    decoded = []
    real = loading_mod._read_bag
    monkeypatch.setattr(
        loading_mod, "_read_bag", lambda bag, *r: (decoded.append(bag.name), real(bag, *r))[1]
    )

    shutil.rmtree(b)
    write_bag(b, [make_episode(i, n=4) for i in range(3, 6)])
    again = load_transitions([tmp_path / "data"], cache_dir=cache_dir)
    assert decoded == ["b"] and again.num_episodes == 6 and len(again) == 9 + 12
    # Same size and content, only mtime changed: invalidated too.
    st = (a / "a.mcap").stat()
    os.utime(a / "a.mcap", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    decoded.clear()
    load_transitions([a], cache_dir=cache_dir)
    assert decoded == ["a"]
    # Same size and mtime, different bytes (an image edited in place): the content hash sees it.
    data = (a / "a.mcap").read_bytes()
    img = make_episode(0, n=3)[0][0].image
    assert data.count(img.tobytes()) == 1
    (a / "a.mcap").write_bytes(data.replace(img.tobytes(), (255 - img).tobytes()))
    os.utime(a / "a.mcap", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    decoded.clear()
    edited = load_transitions([a], cache_dir=cache_dir)
    assert decoded == ["a"]
    # The chunk CRC finds the edit: the edited episode is left out, never trained on.
    assert edited.num_episodes == 2 and len(edited) == 6
    assert not any((edited.image == 255 - img).all(axis=(1, 2, 3)))
    assert not list(tmp_path.joinpath("unused").glob("*"))  # cache_dir argument wins over the env


def test_cache_of_a_growing_recording(tmp_path):
    """An unclosed bag that grows (the collector is still recording) is re-read."""
    cache_dir = tmp_path / "cache"
    rec = BagRecorder(tmp_path / "live", {}, msg_dir=MSG_DIR, fsync=False)
    rec.write_episode(*make_episode(0, n=2))
    assert load_transitions([tmp_path / "live"], cache_dir=cache_dir).num_episodes == 1
    rec.write_episode(*make_episode(1, n=2))
    assert load_transitions([tmp_path / "live"], cache_dir=cache_dir).num_episodes == 2
    rec.close()
    assert load_transitions([tmp_path / "live"], cache_dir=cache_dir).num_episodes == 2
    assert TransitionCache(cache_dir).clear() == 1
    assert load_transitions([tmp_path / "live"], cache=False).num_episodes == 2
    assert not any(cache_dir.iterdir())


def test_default_cache_location(tmp_path, monkeypatch):
    monkeypatch.delenv("NSL_DATASET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert TransitionCache().root == tmp_path / "xdg" / "nsl" / "transitions"
    monkeypatch.setenv("NSL_DATASET_CACHE", str(tmp_path / "env"))
    write_bag(tmp_path / "bag", [make_episode(0)])
    load_transitions(tmp_path / "bag")
    assert len(list((tmp_path / "env").iterdir())) == 1
    assert sorted(p.name for p in (tmp_path / "bag").iterdir()) == [
        "bag.mcap",
        "metadata.yaml",
        "nsl_session.yaml",
    ]


# ------------------------------------------------------------------------- tiers
def test_tier_split_nested_and_deterministic(tmp_path):
    bags = many_episodes(tmp_path / "data", 4, 25)  # 100 episodes
    res = split_tiers(
        [tmp_path / "data"], tmp_path / "tiers", tiers=[10, 25, 50, 100, 200], seed=3
    )
    assert [t["tier"] for t in res["tiers"]] == [10, 25, 50, 100] and res["left_out"] == [200]
    sets = {}
    for t in res["tiers"]:
        eps = read_episodes(t["manifest"])
        ids = [e.episode_id for e in eps]
        assert len(ids) == len(set(ids)) == t["tier"]
        sets[t["tier"]] = set(ids)
        tr = load_transitions(t["manifest"])
        assert tr.num_episodes == t["tier"] and len(tr) == 2 * t["tier"]
    assert sets[10] < sets[25] < sets[50] < sets[100]
    # Deterministic: same seed, same tiers (whatever order the inputs are given in).
    again = split_tiers(list(reversed(bags)), tmp_path / "tiers2", tiers=[10, 25, 50, 100], seed=3)
    for t1, t2 in zip(res["tiers"], again["tiers"]):
        assert {e.episode_id for e in read_episodes(t2["manifest"])} == sets[t1["tier"]]
    other = [e for _, e, _ in tier_order([tmp_path / "data"], seed=4)[:25]]
    assert set(other) != sets[25]
    # A manifest loads the same rows as the episodes it names.
    tr = load_transitions(res["tiers"][0]["manifest"])
    eps = read_episodes(res["tiers"][0]["manifest"])
    np.testing.assert_array_equal(tr.image[::2], np.stack([e.steps[0].image for e in eps]))
    np.testing.assert_array_equal(tr.reward[1::2], [float(e.success) for e in eps])


def test_tier_bags_and_merge_are_standard_bags(tmp_path):
    many_episodes(tmp_path / "data", 2, 10, n=3)
    res = split_tiers(
        [tmp_path / "data"],
        tmp_path / "tiers",
        tiers=[5, 10],
        seed=0,
        write_bags=True,
        msg_dir=MSG_DIR,
    )
    for t in res["tiers"]:
        bag = tmp_path / "tiers" / f"tier_{t['tier']:04d}"
        want = {e.episode_id for e in read_episodes(t["manifest"])}
        got = read_episodes(bag)
        assert {e.episode_id for e in got} == want and got.unclosed == []
        with open(bag / f"{bag.name}.mcap", "rb") as f:  # independent reader
            seen = {
                m.episode_id
                for _, _, _, m in make_reader(
                    f, decoder_factories=[DecoderFactory()]
                ).iter_decoded_messages()
            }
        assert seen == want
    # Merge the 10-tier with one source bag: duplicates skipped once; content identical.
    merged = merge_bags(
        [tmp_path / "tiers" / "tier_0010", tmp_path / "data" / "session_0"],
        tmp_path / "merged",
        msg_dir=MSG_DIR,
    )
    src = {e.episode_id: e for e in read_episodes(tmp_path / "data")}
    got = read_episodes(tmp_path / "merged")
    assert merged["episodes"] == len(got) == len({e.episode_id for e in got})
    assert {e.episode_id for e in got} == {
        e.episode_id for e in read_episodes(tmp_path / "tiers" / "tier_0010")
    } | {e.episode_id for e in read_episodes(tmp_path / "data" / "session_0")}
    for e in got:
        np.testing.assert_array_equal(e.images, src[e.episode_id].images)
        assert e.success == src[e.episode_id].success
    assert got.sessions[0]["derived_from"] == "nsl data merge"
    with pytest.raises(DatasetError, match="exists"):
        merge_bags([tmp_path / "data"], tmp_path / "merged", msg_dir=MSG_DIR)


def test_manifest_of_a_changed_bag_is_refused(tmp_path):
    many_episodes(tmp_path / "data", 1, 5)
    res = split_tiers([tmp_path / "data"], tmp_path / "tiers", tiers=[5], seed=0)

    shutil.rmtree(tmp_path / "data" / "session_0")
    write_bag(tmp_path / "data" / "session_0", [make_episode(i, n=2, hw=(8, 8)) for i in range(3)])
    with pytest.raises(DatasetError, match="changed since the manifest"):
        load_transitions(res["tiers"][0]["manifest"])
    with pytest.raises(DatasetError, match="changed since the manifest"):
        read_episodes(res["tiers"][0]["manifest"])


# ------------------------------------------------------------------------- verify + CLI
def run_cli(argv):
    parser = argparse.ArgumentParser(prog="nsl")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.fn(args)


def test_verify_reports_damage_by_name_and_carries_on(tmp_path, capsys):
    data = tmp_path / "data"
    good = write_bag(data / "good", [make_episode(i) for i in range(3)])
    trunc = write_bag(data / "truncated", [make_episode(i) for i in range(3)])
    raw = (trunc / "truncated.mcap").read_bytes()
    (trunc / "truncated.mcap").write_bytes(raw[: len(raw) // 2])
    garbage = data / "garbage"
    garbage.mkdir()
    (garbage / "garbage.mcap").write_bytes(
        np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    )
    badmeta = write_bag(data / "badmeta", [make_episode(0)])
    (badmeta / "metadata.yaml").write_text("{{{ no yaml")
    rec = BagRecorder(data / "crashed", {}, msg_dir=MSG_DIR, fsync=False)  # never closed
    rec.write_episode(*make_episode(5))
    for msg in serialize_episode(writer_typestore(MSG_DIR), *make_episode(6), finish=False):
        rec.write_raw(*msg)
    later = write_bag(data / "zz_after", [make_episode(7)])
    checks = {c.bag.name: c for c in verify([data])}
    assert {n: c.status for n, c in checks.items()} == {
        "badmeta": "damaged",  # its .mcap read as an unclosed recording
        "crashed": "recovered",
        "garbage": "corrupt",
        "good": "ok",
        "truncated": "damaged",  # recovered up to the cut, with the damage named
        "zz_after": "ok",
    }
    assert checks["truncated"].episodes == 1 and checks["badmeta"].episodes == 1
    assert (
        "truncated.mcap" in checks["truncated"].detail
        and "truncated" in checks["truncated"].detail
    )
    assert (
        "garbage.mcap" in checks["garbage"].detail and "metadata.yaml" in checks["badmeta"].detail
    )
    assert (
        checks["crashed"].episodes == 1
        and checks["crashed"].skipped == 1
        and "in flight" in checks["crashed"].detail
    )
    assert checks["good"].episodes == 3 and checks["zz_after"].episodes == 1
    capsys.readouterr()
    assert run_cli(["data", "verify", str(data)]) == 1
    out = capsys.readouterr().out
    for name in ("truncated.mcap", "garbage.mcap", "badmeta"):
        assert name in out
    assert (
        f"OK         {good}" in out
        and f"OK         {later}" in out
        and "6 bag(s) checked, 3 damaged" in out
    )
    assert run_cli(["data", "verify", str(good), str(later)]) == 0


def test_cli_info_split_merge(tmp_path, capsys, monkeypatch):
    many_episodes(tmp_path / "data", 2, 15)
    assert run_cli(["data", "info", str(tmp_path / "data"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["complete"] == 30 and info["tasks"] == {"base": 30} and info["success_rate"] == 0.5
    assert run_cli(["data", "info", str(tmp_path / "data")]) == 0
    assert "30 complete episode(s)" in capsys.readouterr().out
    assert (
        run_cli(
            ["data", "split", str(tmp_path / "data"), "--out", str(tmp_path / "t"), "--seed", "1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "tier   25: 25 episodes" in out
        and "left out (only 30 complete episodes): [50, 100, 200, 400, 800]" in out
    )
    assert yaml.safe_load((tmp_path / "t" / "tier_0025.yaml").read_text())["seed"] == 1
    assert run_cli(["data", "info", str(tmp_path / "t" / "tier_0025.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] == 25
    monkeypatch.setenv("NSL_MSGS_DIR", str(MSG_DIR))  # where no ament index has nsl_msgs
    assert run_cli(["data", "merge", str(tmp_path / "data"), "--out", str(tmp_path / "m")]) == 0
    assert "30 episodes, 60 steps" in capsys.readouterr().out
    assert run_cli(["data", "info", str(tmp_path / "nope")]) == 1
    assert "nope" in capsys.readouterr().err


# ------------------------------------------------------------------------- CDR prefix parsing
def test_cdr_parsing_matches_rclpy_and_rosbags():
    # ROS 2 only for this comparison: the rest of this module runs without it.
    from rclpy.serialization import serialize_message

    from nsl_msgs.msg import EpisodeResult, StepRecord

    m = StepRecord()
    m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id = 12, 345, "robot_7"
    m.episode_id, m.step_index = "e-\u00e9-42", 9
    m.image.data = bytes(range(7))
    k = step_key(serialize_message(m))
    assert (k.stamp_ns, k.frame_id, k.episode_id, k.step_index) == (
        12_000_000_345,
        "robot_7",
        "e-\u00e9-42",
        9,
    )
    for frame in ("", "a", "ab", "abc", "abcd"):  # every alignment of the following int64
        r = EpisodeResult(
            episode_id="x" * len(frame),
            task=frame,
            seed=-(2**40),
            success=True,
            num_steps=17,
            checkpoint_id="c",
            exploration='{"epsilon": 0.2}',
            complete=False,
            message="why",
        )
        r.header.frame_id = frame
        info = episode_result(serialize_message(r))
        assert (
            info.task,
            info.seed,
            info.success,
            info.num_steps,
            info.checkpoint_id,
            info.exploration,
            info.complete,
            info.message,
        ) == (frame, -(2**40), True, 17, "c", '{"epsilon": 0.2}', False, "why")
    ts = writer_typestore(MSG_DIR)  # the rosbags serializer agrees
    (_, _, _, raw), *_ = serialize_episode(ts, *make_episode(3, n=1))
    assert step_key(raw).episode_id == "ep-0003"
    for bad in (b"", b"\x00\x01\x00\x00\x05", b"\x12\x34\x00\x00" + bytes(20)):
        with pytest.raises(CdrError):
            step_key(bad)


# ------------------------------------------------------------------------- collector logic
def raw_msgs(i, n, hw=(8, 8), **kw):
    msgs = serialize_episode(writer_typestore(MSG_DIR), *make_episode(i, n=n, hw=hw, **kw))
    return [m[3] for m in msgs[:-1]], msgs[-1][3]


def test_collector_discard_order_and_bounds(tmp_path):
    col = Collector(
        CollectorConfig(tmp_path, "base", max_pending=2, max_steps=4, fsync=False, msg_dir=MSG_DIR)
    )
    assert col.stop_session() == (
        False,
        "no session open (no complete episode recorded since the last stop)",
    )
    ok, path = col.start_session()
    assert ok and path.startswith(str(tmp_path / "base" / "session_"))
    assert col.start_session()[0] is False
    steps, res = raw_msgs(0, 3)
    for s in steps:
        assert col.on_step(s) == "buffered"
    assert col.on_result(res) == "written"
    # Result overtaking its steps (separate topics): held until the steps are in.
    steps, res = raw_msgs(1, 3)
    col.on_step(steps[0])
    assert col.on_result(res) == "waiting"
    col.on_step(steps[1])
    assert col.on_step(steps[2]) == "written"
    # Discard the episode in flight: its later steps and its result are ignored.
    steps, res = raw_msgs(2, 3)
    col.on_step(steps[0])
    assert col.discard_episode()[0] and col.discard_episode()[0] is False
    assert col.on_step(steps[1]) == "ignored" and col.on_result(res) == "discarded"
    # Too many steps: dropped. Too many pending: the oldest dropped.
    steps, res = raw_msgs(3, 6)
    assert [col.on_step(s) for s in steps][4] == "dropped"
    assert col.on_result(res) == "dropped"
    for i in (4, 5, 6):
        col.on_step(raw_msgs(i, 2)[0][0])
    assert col.status()["pending_episodes"] == 2
    assert col.on_result(raw_msgs(4, 2)[1]) == "dropped"
    aborted = raw_msgs(7, 1, complete=False, message="arm error")
    col.on_step(aborted[0][0])
    assert col.on_result(aborted[1]) == "aborted"
    ok, closed = col.stop_session()
    assert closed == path
    eps = read_episodes(path)
    assert [e.episode_id for e in eps] == ["ep-0000", "ep-0001"] and eps.skipped == []
    side = yaml.safe_load(
        (tmp_path / "base" / path.rsplit("/", 1)[1] / "nsl_session.yaml").read_text()
    )
    s = side["session"]
    assert s["task"] == "base" and s["robot"] == "sim" and s["checkpoint_id"] == "ckpt-0"
    assert s["checkpoints"] == ["ckpt-0"] and "exploration" not in s
    assert s["exploration_settings"] == [
        {"exploration": {"epsilon": 0.2, "i": i}, "episodes": 1} for i in (0, 1)
    ]  # the written episodes' only: not the discarded, dropped or aborted ones
    assert "rosbags" in s["software"] and "nsl_collector" in s["software"] and s["ended"]
    st = col.status()
    assert (st["discarded_episodes"], st["aborted_episodes"], st["episodes_written"]) == (1, 1, 2)
    assert st["dropped_episodes"] == 3 and st["pending_bytes"] == len(
        raw_msgs(6, 2)[0][0]
    )  # ep 5 pushed out by 7


def feed(col, i, task, n=2):
    steps, res = raw_msgs(i, n, task=task)
    for s in steps:
        col.on_step(s)
    return col.on_result(res)


def feed_exploring(col, i, exploration) -> str:
    """Feed episode ``i`` with ``exploration`` (a dict, or text as the EpisodeResult holds it)."""
    steps, result = make_episode(i, n=2, hw=(8, 8))
    result.exploration = exploration
    msgs = serialize_episode(writer_typestore(MSG_DIR), steps, result)
    for m in msgs[:-1]:
        col.on_step(m[3])
    return col.on_result(msgs[-1][3])


GREEDY = {"epsilon": 0.0, "noise_std": 0.0}
EXPLORING = {"epsilon": 0.1, "noise_std": 0.1}


def test_the_session_metadata_counts_each_exploration_setting_of_its_episodes(tmp_path):
    """Every setting a session's episodes ran with is listed with its count, crash or close."""
    col = Collector(CollectorConfig(tmp_path, "base", fsync=False, msg_dir=MSG_DIR))
    assert feed_exploring(col, 0, GREEDY) == "written"
    bag = Path(col.status()["session"])
    assert feed_exploring(col, 1, EXPLORING) == "written"
    # The sidecar counts every episode written so far (what a crash now would leave readable).
    assert session_of(bag)["exploration_settings"] == [
        {"exploration": GREEDY, "episodes": 1},
        {"exploration": EXPLORING, "episodes": 1},
    ]
    # Key order does not make a new setting; text that is no JSON is kept as it came.
    assert feed_exploring(col, 2, {"noise_std": 0.1, "epsilon": 0.1}) == "written"
    assert feed_exploring(col, 3, json.dumps(EXPLORING)) == "written"
    assert feed_exploring(col, 4, "eps=0.3") == "written"
    assert feed_exploring(col, 5, GREEDY) == "written"
    ok, closed = col.stop_session()
    assert ok and closed == str(bag)
    expected = [
        {"exploration": GREEDY, "episodes": 2},
        {"exploration": EXPLORING, "episodes": 3},
        {"exploration": {"raw": "eps=0.3"}, "episodes": 1},
    ]
    session = session_of(bag)
    assert session["exploration_settings"] == expected and "exploration" not in session
    assert "exploration_unlisted_episodes" not in session
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    custom = json.loads(info["custom_data"]["nsl_session"])
    assert custom["exploration_settings"] == expected
    # Each episode's own setting is in its EpisodeResult, as the reader gives it back.
    assert [e.exploration for e in read_episodes(bag)] == [
        GREEDY,
        EXPLORING,
        EXPLORING,
        EXPLORING,
        {"raw": "eps=0.3"},
        GREEDY,
    ]


def test_a_session_lists_a_bounded_number_of_exploration_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(session_mod, "MAX_EXPLORATION_SETTINGS", 2)
    col = Collector(CollectorConfig(tmp_path, "base", fsync=False, msg_dir=MSG_DIR))
    for i, epsilon in enumerate((0.1, 0.2, 0.3, 0.1, 0.4)):
        assert feed_exploring(col, i, {"epsilon": epsilon}) == "written"
    bag = Path(col.stop_session()[1])
    session = session_of(bag)
    assert session["exploration_settings"] == [
        {"exploration": {"epsilon": 0.1}, "episodes": 2},
        {"exploration": {"epsilon": 0.2}, "episodes": 1},
    ]
    assert session["exploration_unlisted_episodes"] == 2  # 0.3 and 0.4


def test_each_bag_of_a_rolled_over_session_counts_its_own_episodes(tmp_path):
    col = Collector(
        CollectorConfig(tmp_path, "base", max_episodes_per_bag=2, fsync=False, msg_dir=MSG_DIR)
    )
    for i, setting in enumerate((GREEDY, EXPLORING, EXPLORING)):
        assert feed_exploring(col, i, setting) == "written"
    second = Path(col.stop_session()[1])
    first = Path(session_of(second)["continues"])
    assert session_of(first)["exploration_settings"] == [
        {"exploration": GREEDY, "episodes": 1},
        {"exploration": EXPLORING, "episodes": 1},
    ]
    assert session_of(second)["exploration_settings"] == [
        {"exploration": EXPLORING, "episodes": 1}
    ]


def test_exploration_text_of_any_kind_parses_to_a_dict():
    assert parse_exploration("") == {}
    assert parse_exploration('{"epsilon": 0.1}') == {"epsilon": 0.1}
    assert parse_exploration("0.1") == {"value": 0.1}
    assert parse_exploration("{bad") == {"raw": "{bad"}


def session_of(path):
    return yaml.safe_load((path / "nsl_session.yaml").read_text())["session"]


def test_a_task_switch_closes_the_session_and_records_on_under_the_new_task(tmp_path):
    logs = []
    col = Collector(
        CollectorConfig(tmp_path, "base", fsync=False, msg_dir=MSG_DIR),
        log=lambda level, text: logs.append((level, text)),
    )
    assert [feed(col, i, "base") for i in range(3)] == ["written"] * 3
    base_bag = col.status()["session"]
    assert base_bag.startswith(str(tmp_path / "base" / "session_"))
    assert col.status()["session_task"] == "base"
    # The world changed: the first checkerboard episode closes the base session.
    assert [feed(col, i, "checkerboard") for i in (3, 4)] == ["written"] * 2
    status = col.status()
    assert status["session_task"] == "checkerboard" and status["session_episodes"] == 2
    assert status["session"].startswith(str(tmp_path / "checkerboard" / "session_"))
    ok, challenge_bag = col.stop_session()
    assert ok and challenge_bag == status["session"]
    for bag, task, ids in ((base_bag, "base", [0, 1, 2]), (challenge_bag, "checkerboard", [3, 4])):
        episodes = read_episodes(bag)
        assert [e.episode_id for e in episodes] == [f"ep-{i:04d}" for i in ids]
        assert {e.task for e in episodes} == {task} and session_of(Path(bag))["task"] == task
        assert session_of(Path(bag))["ended"]
    assert status["episodes_written"] == 5 and status["dropped_episodes"] == 0
    # A session started after the switch goes under the latest episodes' task.
    ok, started = col.start_session()
    assert ok and started.startswith(str(tmp_path / "checkerboard" / "session_"))
    col.stop_session()
    # An episode naming no valid task goes under the configured one, with a warning.
    assert feed(col, 5, "a/b") == "written"
    assert col.status()["session"].startswith(str(tmp_path / "base" / "session_"))
    assert any(level == "warn" and "'a/b'" in text for level, text in logs)


def test_a_task_switch_keeps_recording_without_auto_start_and_after_a_roll_over(tmp_path):
    col = Collector(
        CollectorConfig(
            tmp_path,
            "base",
            auto_start=False,
            max_episodes_per_bag=2,
            fsync=False,
            msg_dir=MSG_DIR,
        )
    )
    assert col.start_session()[0]
    assert [feed(col, i, "base") for i in range(2)] == ["written"] * 2  # rolled over at 2
    # The switch ends the rolled-over session: the recording goes on under the new task.
    assert feed(col, 2, "harsh_light") == "written"
    bags = {task: sorted((tmp_path / task).iterdir()) for task in ("base", "harsh_light")}
    assert [len(b) for b in bags.values()] == [1, 1]
    assert [len(read_episodes(b)) for b in bags["base"] + bags["harsh_light"]] == [2, 1]
    assert "continues" not in session_of(bags["harsh_light"][0])
    with pytest.raises(ValueError, match="task must not be blank"):
        CollectorConfig(tmp_path, " ").check()


def test_collector_memory_bounded_over_1000_episodes(tmp_path):
    """Record 1000 episodes (with abandoned ones mixed in): the buffers stay bounded.

    The bag rolls over, so the per-chunk index kept in memory is bounded too.
    """
    col = Collector(
        CollectorConfig(
            tmp_path,
            "base",
            max_pending=4,
            max_episodes_per_bag=300,
            fsync=False,
            msg_dir=MSG_DIR,
            record_camera=True,
        )
    )
    steps, res = raw_msgs(0, 3)
    ts = writer_typestore(MSG_DIR)
    T = ts.types
    frame = bytes(
        ts.serialize_cdr(
            T["sensor_msgs/msg/Image"](
                header=T["std_msgs/msg/Header"](
                    stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id=""
                ),
                height=8,
                width=8,
                encoding="rgb8",
                is_bigendian=0,
                step=24,
                data=np.zeros(192, np.uint8),
            ),
            "sensor_msgs/msg/Image",
        )
    )
    peak_pending = 0

    template = steps + [res]
    for i in range(1000):
        eid = f"ep-{i:04d}".encode()
        msgs = [re.sub(rb"ep-0000", eid, m) for m in template]
        for s in msgs[:-1]:
            col.on_step(s)
        col.on_camera(frame)
        if i % 10 == 5:  # abandoned: no result ever
            continue
        col.on_result(msgs[-1])
        peak_pending = max(peak_pending, col.status()["pending_episodes"])
        assert len(col.ignored) <= 256
    col.close()
    st = col.status()
    assert st["episodes_written"] == 900 and peak_pending <= 4 and st["pending_episodes"] <= 4
    assert (
        st["sessions"] == 3 and st["camera_frames"] == 999
    )  # the first frame came before the session opened
    bags = sorted((tmp_path / "base").iterdir())
    assert [len(read_episodes(b)) for b in bags] == [300, 300, 300]
    assert read_episodes(bags[1]).sessions[0]["continues"] == str(bags[0])
