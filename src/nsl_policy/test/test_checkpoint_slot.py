"""The checkpoint slot (ROS-free): stage, validate, gate, and swap only at episode boundaries."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save as st_save

from nsl_policy.checkpoint import init_checkpoint
from nsl_policy.checkpoint_slot import CheckpointSlot
from nsl_policy.model import QNetworkConfig

SMALL = dict(image_size=64, width=8, embed_width=16, fc_width=16)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Map a name to (path, id); "nan" and "wide" are invalid for a slot that runs "a"."""
    d = tmp_path_factory.mktemp("slot")
    out = {}
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        path = d / f"{name}.safetensors"
        out[name] = (path, init_checkpoint(path, QNetworkConfig(**SMALL), seed=seed))
    wide = d / "wide.safetensors"
    out["wide"] = (wide, init_checkpoint(wide, QNetworkConfig(**{**SMALL, "width": 16}), seed=3))
    with safe_open(str(out["a"][0]), "pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["fc.4.weight"] = tensors["fc.4.weight"].clone()
    tensors["fc.4.weight"][0, 0] = float("nan")
    nan = d / "nan.safetensors"
    nan.write_bytes(st_save(tensors, metadata=header))
    out["nan"] = (nan, "")
    return out


class Recorder:
    """on_swap that records (new id, previous id) and checks no swap happens mid-episode."""

    def __init__(self) -> None:
        self.swaps: list[tuple[str, str]] = []
        self.in_episode = False

    def __call__(self, new, previous) -> None:
        assert not self.in_episode, "swapped during an episode"
        self.swaps.append((new.checkpoint_id, previous.checkpoint_id if previous else ""))


def test_a_checkpoint_goes_in_force_at_once_when_no_episode_runs(ckpts):
    swaps = Recorder()
    slot = CheckpointSlot(on_swap=swaps)
    assert slot.active is None and slot.active_id == "" and slot.begin_episode() is None
    (path_a, id_a), (path_b, id_b) = ckpts["a"], ckpts["b"]
    outcome = slot.stage(str(path_a))
    assert outcome.accepted and outcome.in_force and outcome.checkpoint_id == id_a
    assert outcome.message == f"checkpoint {id_a} in use"
    assert slot.active_id == id_a and swaps.swaps == [(id_a, "")]
    assert slot.stage(str(path_b)).in_force
    assert swaps.swaps == [(id_a, ""), (id_b, id_a)]


def test_a_candidate_staged_during_an_episode_waits_for_its_end(ckpts):
    swaps = Recorder()
    slot = CheckpointSlot(on_swap=swaps)
    (path_a, id_a), (path_b, id_b), (path_c, id_c) = ckpts["a"], ckpts["b"], ckpts["c"]
    slot.stage(str(path_a))
    assert slot.begin_episode().checkpoint_id == id_a
    swaps.in_episode = True
    outcome = slot.stage(str(path_b))
    assert outcome.accepted and not outcome.in_force and outcome.checkpoint_id == id_b
    assert "in use from the next episode" in outcome.message
    assert slot.active_id == id_a and slot.knows(id_a) and slot.knows(id_b)
    # A later candidate replaces the waiting one: only the last goes in force.
    assert slot.stage(str(path_c)).accepted
    assert not slot.knows(id_b) and slot.knows(id_c)
    swaps.in_episode = False
    slot.end_episode()
    assert slot.active_id == id_c and swaps.swaps == [(id_a, ""), (id_c, id_a)]
    assert slot.begin_episode().checkpoint_id == id_c
    slot.end_episode()
    assert len(swaps.swaps) == 2


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("nan", "non-finite"), ("wide", "width"), ("missing", "does not exist")],
)
def test_a_refused_candidate_keeps_the_checkpoint_in_force(ckpts, name, fragment):
    swaps = Recorder()
    slot = CheckpointSlot(on_swap=swaps)
    path_a, id_a = ckpts["a"]
    slot.stage(str(path_a))
    path = ckpts[name][0] if name in ckpts else path_a.parent / "nowhere.safetensors"
    outcome = slot.stage(str(path))
    assert not outcome.accepted and not outcome.in_force
    assert fragment in outcome.message and str(path) in outcome.message, outcome.message
    assert outcome.checkpoint_id == id_a and slot.active_id == id_a
    assert swaps.swaps == [(id_a, "")]


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("empty", "blank"),
        ("spaces", "blank"),
        ("nul", "NUL"),
        ("directory", "not a regular file (a directory)"),
        ("fifo", "not a regular file (a FIFO"),
        ("device", "not a regular file (a FIFO, socket or device)"),
        ("not a string", "must be a string"),
    ],
)
def test_a_bad_path_is_refused_by_field_before_any_load(ckpts, tmp_path, kind, fragment):
    """LoadCheckpoint's path field: refused with a message starting "path:", never blocking."""
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    path = {
        "empty": "",
        "spaces": " \t ",
        "nul": f"{ckpts['b'][0]}\x00",
        "directory": str(tmp_path),
        "fifo": str(fifo),
        "device": "/dev/null",
        "not a string": ckpts["b"][0],
    }[kind]
    swaps = Recorder()
    slot = CheckpointSlot(on_swap=swaps)
    path_a, id_a = ckpts["a"]
    slot.stage(str(path_a))
    outcome = slot.stage(path)
    assert not outcome.accepted and outcome.message.startswith("path: "), outcome.message
    assert fragment in outcome.message, outcome.message
    assert outcome.checkpoint_id == id_a and slot.active_id == id_a
    assert swaps.swaps == [(id_a, "")]


def test_a_gate_that_raises_refuses_the_candidate_and_keeps_the_one_in_force(ckpts):
    path_a, id_a = ckpts["a"]

    def gate(candidate):
        if candidate.checkpoint_id != id_a:
            raise RuntimeError("the trial's record cannot be written")

    slot = CheckpointSlot(on_swap=Recorder(), gate=gate)
    assert slot.stage(str(path_a)).in_force
    outcome = slot.stage(str(ckpts["b"][0]))
    assert not outcome.accepted and "the gate failed" in outcome.message, outcome.message
    assert "record cannot be written" in outcome.message and slot.active_id == id_a


def test_the_gate_sits_between_validated_and_in_force(ckpts):
    seen = []

    def gate(candidate):
        seen.append(candidate.checkpoint_id)
        return "not evaluated yet" if candidate.checkpoint_id == ckpts["b"][1] else None

    swaps = Recorder()
    slot = CheckpointSlot(on_swap=swaps, gate=gate)
    (path_a, id_a), (path_b, id_b) = ckpts["a"], ckpts["b"]
    assert slot.stage(str(path_a)).in_force
    refused = slot.stage(str(path_b))
    assert not refused.accepted and refused.checkpoint_id == id_a
    assert refused.message == f"checkpoint {id_b} refused: not evaluated yet"
    # Invalid candidates never reach the gate.
    assert not slot.stage(str(ckpts["nan"][0])).accepted
    assert seen == [id_a, id_b] and slot.active_id == id_a


def test_an_owner_that_cannot_use_the_checkpoint_refuses_it(ckpts):
    calls = []

    def on_swap(new, previous):
        calls.append(new.checkpoint_id)
        if len(calls) == 2:
            raise RuntimeError("no memory for the policy")

    slot = CheckpointSlot(on_swap=on_swap)
    (path_a, id_a), (path_b, _) = ckpts["a"], ckpts["b"]
    slot.stage(str(path_a))
    outcome = slot.stage(str(path_b))
    assert not outcome.accepted and "no memory for the policy" in outcome.message
    assert slot.active_id == id_a and outcome.checkpoint_id == id_a


def test_concurrent_staging_never_swaps_inside_an_episode(ckpts):
    swaps = Recorder()
    slot = CheckpointSlot(on_swap=swaps)
    slot.stage(str(ckpts["a"][0]))
    stop = threading.Event()
    refusals: list[str] = []  # a swap inside an episode shows up here (on_swap's assertion)

    def stager() -> None:
        names = ("b", "c", "a")
        k = 0
        while not stop.is_set():
            outcome = slot.stage(str(ckpts[names[k % 3]][0]))
            if not outcome.accepted:
                refusals.append(outcome.message)
            k += 1

    thread = threading.Thread(target=stager)
    thread.start()
    try:
        for _ in range(30):
            checkpoint = slot.begin_episode()
            swaps.in_episode = True
            time.sleep(0.001)  # an episode in flight: staging goes on in the other thread
            assert slot.active is checkpoint
            swaps.in_episode = False
            slot.end_episode()
    finally:
        stop.set()
        thread.join()
    assert refusals == []
    assert len(swaps.swaps) > 1
    # Each swap's previous checkpoint is the one that was in force before it.
    for (_new, previous), (earlier_new, _) in zip(swaps.swaps[1:], swaps.swaps):
        assert previous == earlier_new
