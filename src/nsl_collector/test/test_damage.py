"""Issue 30: damaged bags and bad values are found, named and isolated; the rest is used."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import yaml

from dataset_helpers import MSG_DIR, make_episode
from nsl_collector.dataset import (
    BagRecorder,
    DatasetError,
    dataset_info,
    find_bags,
    load_transitions,
    read_episodes,
)
from nsl_collector.tools import verify
from mcap.reader import make_reader
from nsl_collector.cli import add_commands
from rosbags.rosbag2 import Reader


def write_bag(path, episodes, **kw):
    with BagRecorder(path, {"task": "base"}, msg_dir=MSG_DIR, fsync=False, **kw) as rec:
        for steps, result in episodes:
            rec.write_episode(steps, result)
    return path


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="nsl")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.fn(args)


def overwrite_image(bag, i, n=5):
    """Overwrite episode ``i``'s first image in place (same size: only a CRC can tell)."""
    mcap = next(bag.glob("*.mcap"))
    img = make_episode(i, n=n)[0][0].image.tobytes()
    data = mcap.read_bytes()
    assert data.count(img) == 1
    mcap.write_bytes(data.replace(img, bytes(255 - b for b in img)))
    return mcap


def test_bags_carry_crcs_that_standard_readers_check(tmp_path):
    bag = write_bag(tmp_path / "bag", [make_episode(i) for i in range(2)])
    with open(bag / "bag.mcap", "rb") as f:
        reader = make_reader(f, validate_crcs=True)
        assert sum(1 for _ in reader.iter_messages()) == 12
    with Reader(bag) as r:
        assert sum(1 for _ in r.messages()) == 12
    raw = (bag / "bag.mcap").read_bytes()
    i = raw.index(b"\x06", 8 + 9 + 10)  # the first chunk: its CRC field is set
    assert int.from_bytes(raw[i + 9 + 24 : i + 9 + 28], "little") != 0
    assert int.from_bytes(raw[-12:-8], "little") != 0  # the footer's summary CRC


def test_changed_bytes_are_found_named_and_never_trained_on(tmp_path, capsys):
    bag = write_bag(tmp_path / "bag", [make_episode(i) for i in range(3)])
    mcap = overwrite_image(bag, 1)
    (check,) = verify([bag])
    assert check.status == "damaged" and str(mcap) in check.detail
    assert "CRC mismatch" in check.detail and "chunk" in check.detail
    assert run_cli(["data", "verify", str(bag)]) == 1
    assert "DAMAGED" in capsys.readouterr().out
    got = read_episodes(bag)
    assert [e.episode_id for e in got] == ["ep-0000", "ep-0002"]
    assert load_transitions([bag]).num_episodes == 2
    with pytest.raises(DatasetError, match=f"{mcap}.*chunk .*CRC mismatch"):
        load_transitions([bag], strict=True, cache=False)


def test_one_damaged_bag_leaves_the_rest_of_the_dataset_usable(tmp_path, capsys, caplog):
    data = tmp_path / "data"
    write_bag(data / "a", [make_episode(i) for i in range(2)])
    bad = write_bag(data / "b", [make_episode(i) for i in range(2, 4)])
    (bad / "b.mcap").write_bytes(b"\x89MCAP0\r\n" + bytes(range(256)) * 8)
    write_bag(data / "c", [make_episode(4)])
    unreadable = write_bag(data / "d", [make_episode(5)])
    (unreadable / "d.mcap").write_bytes(b"not an mcap file at all")
    with caplog.at_level("WARNING"):
        info = dataset_info(data)
    assert info["complete"] == 3 and str(bad / "b.mcap") in " ".join(info["damage"])
    assert str(unreadable / "d.mcap") in info["damaged_bags"][0]["reason"]
    assert str(bad) in caplog.text and str(unreadable) in caplog.text
    assert load_transitions([data]).num_episodes == 3
    with pytest.raises(DatasetError, match="b.mcap"):
        load_transitions([data], strict=True)
    with pytest.raises(DatasetError, match="d.mcap"):
        load_transitions([data / "c", data / "d"], strict=True)
    assert run_cli(["data", "info", str(data)]) == 0
    assert "DAMAGED bag" in capsys.readouterr().out
    assert run_cli(["data", "info", "--strict", str(data)]) == 1


def test_a_mcap_at_the_dataset_root_hides_no_session(tmp_path):
    data = tmp_path / "data"
    write_bag(data / "s1", [make_episode(0)])
    write_bag(data / "s2", [make_episode(1)])
    loose = write_bag(tmp_path / "loose", [make_episode(2)])
    (loose / "loose.mcap").rename(data / "stray.mcap")
    bags = find_bags(data)
    assert bags == [data / "s1", data / "s2", data / "stray.mcap"]
    got = read_episodes(data)
    assert sorted(e.episode_id for e in got) == ["ep-0000", "ep-0001", "ep-0002"]
    assert any("stray.mcap" in n and "unexpected layout" in n for n in got.notes)
    assert load_transitions([data]).num_episodes == 3
    notes = [c for c in verify([data]) if c.status == "layout"]
    assert notes and "stray.mcap" in notes[0].detail


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("translation", (float("nan"), 0.0, 0.0), "non-finite action.translation"),
        ("rotation", float("inf"), "non-finite action.rotation"),
        ("gripper_height", float("nan"), "gripper_state.height"),
        ("step_fraction", 7.0, "step_fraction"),
    ],
)
def test_bad_values_refuse_the_episode_by_name(tmp_path, field, value, message):
    steps, result = make_episode(1)
    steps[2] = dataclasses.replace(steps[2], **{field: value})
    bag = write_bag(tmp_path / "bag", [make_episode(0), (steps, result), make_episode(2)])
    got = read_episodes(bag)
    assert [e.episode_id for e in got] == ["ep-0000", "ep-0002"]
    (skip,) = got.skipped
    assert skip.episode_id == "ep-0001" and skip.damaged and "step 2" in skip.reason
    assert message in skip.reason
    tr = load_transitions([bag])
    assert tr.num_episodes == 2 and np.isfinite(tr.action).all() and np.isfinite(tr.state).all()
    with pytest.raises(DatasetError, match=f"{bag}.*ep-0001.*{message}"):
        load_transitions([bag], strict=True, cache=False)


def test_one_episode_at_another_image_size_refuses_only_it(tmp_path):
    data = tmp_path / "data"
    write_bag(
        data / "a", [make_episode(0), make_episode(1, hw=(8, 8)), make_episode(2), make_episode(3)]
    )
    write_bag(data / "b", [make_episode(4, hw=(12, 12))])
    write_bag(data / "c", [make_episode(5)])
    tr = load_transitions([data])
    assert tr.num_episodes == 4 and tr.image.shape[1:] == (16, 20, 3)
    with pytest.raises(DatasetError, match="ep-0001"):
        load_transitions([data], strict=True, cache=False)


def test_crashed_bag_sidecar_counts_what_is_readable(tmp_path):
    rec = BagRecorder(tmp_path / "crashed", {"task": "base"}, msg_dir=MSG_DIR, fsync=False)
    for i in range(3):
        rec.write_episode(*make_episode(i))
    # Never closed (a crash): the sidecar already counts the three written episodes.
    side = yaml.safe_load((tmp_path / "crashed" / "nsl_session.yaml").read_text())
    assert side["state"] == "recording" and side["episodes_written"] == 3
    assert side["steps_written"] == 15 and len(read_episodes(tmp_path / "crashed")) == 3


def test_verify_names_a_missing_path_missing(tmp_path, capsys):
    (check,) = verify([tmp_path / "nope"])
    assert check.status == "missing"
    assert run_cli(["data", "verify", str(tmp_path / "nope")]) == 1
    out = capsys.readouterr().out
    assert "MISSING" in out and "CORRUPT" not in out and "1 missing" in out


def test_an_unclosed_bag_keeps_its_episodes_when_one_chunk_is_damaged(tmp_path):
    rec = BagRecorder(tmp_path / "bag", {"task": "base"}, msg_dir=MSG_DIR, fsync=False)
    for i in range(4):
        rec.write_episode(*make_episode(i))
    overwrite_image(tmp_path / "bag", 0)  # the first episode: the definitions are elsewhere
    got = read_episodes(tmp_path / "bag")
    assert [e.episode_id for e in got] == ["ep-0001", "ep-0002", "ep-0003"]
    assert got.unclosed and "CRC mismatch" in got.damage[0]
