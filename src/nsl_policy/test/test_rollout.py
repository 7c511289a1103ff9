"""The rollout gate (ROS-free): modes, trial decisions on the slot, roll back, lineage records."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nsl_policy.checkpoint import init_checkpoint
from nsl_policy.checkpoint_slot import CheckpointSlot
from nsl_policy.model import QNetworkConfig
from nsl_policy.monitor import LearningMonitor, status_entries
from nsl_policy.rollout import ROLLBACK, Rollout, lineage_path
from nsl_policy.sequential import TrialSettings, WatchTest

SMALL = dict(image_size=64, width=8, embed_width=16, fc_width=16)
FAST = TrialSettings(max_episodes=200, watch_episodes=40)


@pytest.fixture
def ckpts(tmp_path) -> dict[str, tuple[Path, str]]:
    """Three valid checkpoints of one architecture, in a fresh folder per test (lineage)."""
    out = {}
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        path = tmp_path / f"{name}.safetensors"
        out[name] = (path, init_checkpoint(path, QNetworkConfig(**SMALL), seed=seed))
    return out


def make(mode: str, settings: TrialSettings = FAST) -> tuple[Rollout, CheckpointSlot, list]:
    """Return a rollout wired to a slot as the policy node wires them, and its decisions."""
    decisions = []
    rollout = Rollout(mode, settings, on_decision=decisions.append)
    slot = CheckpointSlot(on_swap=rollout.in_force, gate=rollout.gate)
    rollout.attach(slot)
    return rollout, slot, decisions


def run(
    rollout: Rollout,
    slot: CheckpointSlot,
    rates: dict[str, float],
    n: int,
    seed=0,
    task: str = "base",
) -> list:
    """Run ``n`` episodes on ``task`` as the node does; return the ids they ran on."""
    rng = random.Random(seed)
    ran = []
    for _ in range(n):
        checkpoint = slot.begin_episode(rollout.choose)
        tag = rollout.episode_role(checkpoint.checkpoint_id, task)
        success = rng.random() < rates[checkpoint.checkpoint_id]
        rollout.episode_done(checkpoint.checkpoint_id, task, tag, success, complete=True)
        slot.end_episode()
        ran.append(checkpoint.checkpoint_id)
    return ran


def lineage(path: Path) -> list[dict]:
    return json.loads(lineage_path(path).read_text())


def test_immediate_puts_a_validated_checkpoint_in_force_without_a_decision(ckpts):
    rollout, slot, decisions = make("immediate")
    (pa, _), (pb, idb) = ckpts["a"], ckpts["b"]
    assert slot.stage(str(pa)).in_force and slot.stage(str(pb)).in_force
    assert slot.active_id == idb and decisions == []


def test_trial_promotes_a_better_candidate_and_records_the_evidence(ckpts):
    rollout, slot, decisions = make("trial")
    (pa, ida), (pb, idb) = ckpts["a"], ckpts["b"]
    slot.stage(str(pa))
    outcome = slot.stage(str(pb))
    assert outcome.accepted and outcome.held and "on trial" in outcome.message
    assert slot.active_id == ida and slot.held.checkpoint_id == idb
    ran = run(rollout, slot, {ida: 0.2, idb: 0.9}, 120)
    assert ran[:4] == [idb, ida, idb, ida], "trial episodes alternate, candidate first"
    assert [d.decision for d in decisions] == ["promote"]
    decision = decisions[0]
    assert decision.candidate_id == idb and decision.incumbent_id == ida and decision.trial_id
    assert decision.evidence["log_likelihood_ratio"] >= decision.evidence["promote_at"]
    assert slot.active_id == idb and slot.held is None
    assert ran[-1] == idb, "the promoted checkpoint runs after the decision"
    record = lineage(pb)
    assert record[0]["decision"] == "promote" and record[0]["evidence"]["candidate"]["episodes"]


def test_trial_rejects_a_worse_candidate_and_the_incumbent_keeps_running(ckpts):
    rollout, slot, decisions = make("trial")
    (pa, ida), (pb, idb) = ckpts["a"], ckpts["b"]
    slot.stage(str(pa))
    run(rollout, slot, {ida: 0.6}, 20)  # the incumbent's record
    slot.stage(str(pb))
    ran = run(rollout, slot, {ida: 0.6, idb: 0.0}, 60, seed=1)
    assert [d.decision for d in decisions] == ["reject"]
    trial_episodes = decisions[0].evidence["candidate"]["episodes"] * 2
    assert trial_episodes <= 30 and decisions[0].evidence["incumbent_record"]["episodes"] == 20
    assert slot.active_id == ida and slot.held is None
    assert set(ran[trial_episodes:]) == {ida}
    assert lineage(pb)[0]["decision"] == "reject"
    # Announced again (a latched topic, a restart of the trainer): refused, not retried.
    again = slot.stage(str(pb))
    assert not again.accepted and "rejected earlier" in again.message


def test_the_trial_ends_at_its_cap_with_reject(ckpts):
    rollout, slot, decisions = make("trial", TrialSettings(max_episodes=20))
    (pa, ida), (pb, idb) = ckpts["a"], ckpts["b"]
    slot.stage(str(pa))
    slot.stage(str(pb))
    run(rollout, slot, {ida: 0.5, idb: 0.5}, 20, seed=3)
    status = decisions and decisions[0]
    assert status and status.decision == "reject" and "episode cap 20" in status.reason
    assert rollout.status()["trial"] is None and slot.active_id == ida


def test_manual_holds_until_the_operator_decides(ckpts):
    rollout, slot, decisions = make("manual")
    (pa, ida), (pb, idb), (pc, idc) = ckpts["a"], ckpts["b"], ckpts["c"]
    slot.stage(str(pa))
    assert slot.stage(str(pb)).held
    assert set(run(rollout, slot, {ida: 0.5, idb: 0.5}, 6)) == {ida}
    with pytest.raises(LookupError, match="held: " + idb):
        rollout.promote(idc)
    assert rollout.promote(idb).decision == "promote" and slot.active_id == idb
    assert slot.stage(str(pc)).held
    assert rollout.reject(reason="looks wrong").reason == "looks wrong"
    assert slot.active_id == idb and [d.decision for d in decisions] == ["promote", "reject"]
    assert lineage(pc)[0]["reason"] == "looks wrong"


def test_a_promoted_checkpoint_that_turns_out_worse_rolls_back_by_itself(ckpts):
    rollout, slot, decisions = make("immediate")
    (pa, ida), (pb, idb) = ckpts["a"], ckpts["b"]
    slot.stage(str(pa))
    run(rollout, slot, {ida: 0.8}, 30, seed=4)
    slot.stage(str(pb))
    assert rollout.status()["watch"]["promoted_id"] == idb
    ran = run(rollout, slot, {ida: 0.8, idb: 0.1}, 30, seed=5)
    assert [d.decision for d in decisions] == ["rollback"]
    assert decisions[0].candidate_id == idb and decisions[0].incumbent_id == ida
    assert slot.active_id == ida and ran[-1] == ida and rollout.status()["watch"] is None
    assert lineage(pb)[0]["decision"] == "rollback"


def test_mode_changes_carry_the_held_candidate(ckpts):
    rollout, slot, decisions = make("trial")
    (pa, _), (pb, _), (pc, idc) = ckpts["a"], ckpts["b"], ckpts["c"]
    slot.stage(str(pa))
    slot.stage(str(pb))
    # A newer candidate supersedes the one on trial.
    slot.stage(str(pc))
    assert decisions[-1].decision == "reject" and "superseded" in decisions[-1].reason
    assert slot.held.checkpoint_id == idc
    rollout.set_mode("manual")
    assert rollout.status()["trial"] is None and slot.held.checkpoint_id == idc
    rollout.set_mode("trial")
    assert rollout.status()["trial"]["candidate_id"] == idc
    rollout.set_mode("immediate")
    assert decisions[-1].decision == "promote" and slot.active_id == idc
    with pytest.raises(ValueError, match="rollout mode"):
        rollout.set_mode("yolo")


def test_aborted_episodes_are_not_evidence(ckpts):
    rollout, slot, decisions = make("trial")
    (pa, _), (pb, idb) = ckpts["a"], ckpts["b"]
    slot.stage(str(pa))
    slot.stage(str(pb))
    checkpoint = slot.begin_episode(rollout.choose)
    tag = rollout.episode_role(checkpoint.checkpoint_id, "base")
    assert tag["role"] == "candidate" and checkpoint.checkpoint_id == idb
    rollout.episode_done(idb, "base", tag, success=False, complete=False)
    slot.end_episode()
    trial = rollout.status()["trial"]
    assert trial["candidate"]["episodes"] == 0 and rollout.status()["records"] == {}
    assert slot.begin_episode(rollout.choose).checkpoint_id == idb, "the candidate's turn again"


# ---- records per task -----------------------------------------------------------------------
CHALLENGE = "checkerboard"


def even(rate: float, k: int) -> bool:
    """Return the ``k``-th outcome of a sequence whose successes are spread evenly at ``rate``."""
    return round((k + 1) * rate, 9) // 1 > round(k * rate, 9) // 1


def run_even(
    rollout: Rollout, slot: CheckpointSlot, rates: dict[str, float], n: int, task: str
) -> list:
    """Run ``n`` episodes on ``task``; each checkpoint's successes spread evenly at its rate."""
    ran = []
    for _ in range(n):
        checkpoint = slot.begin_episode(rollout.choose)
        cid = checkpoint.checkpoint_id
        tag = rollout.episode_role(cid, task)
        success = even(rates[cid], ran.count(cid))
        rollout.episode_done(cid, task, tag, success, complete=True)
        slot.end_episode()
        ran.append(cid)
    return ran


def test_a_watch_compares_with_the_previous_record_on_the_same_task_only(ckpts):
    rollout, slot, decisions = make("immediate")
    (pa, ida), (pb, idb) = ckpts["a"], ckpts["b"]
    slot.stage(str(pa))
    run_even(rollout, slot, {ida: 0.9}, 60, "base")
    run_even(rollout, slot, {ida: 0.3}, 30, CHALLENGE)  # the world changed: a does worse
    slot.stage(str(pb))  # a fine-tune as good as a on the challenge
    watch = rollout.status()["watch"]
    assert watch["task"] == CHALLENGE and watch["reference_rate"] == pytest.approx(0.3)
    entries = status_entries(LearningMonitor().report(rollout.status()))
    watch_entry = next(e for e in entries if e.name == "watch")
    assert f"on {CHALLENGE} against {ida}'s record 0.30 there" in watch_entry.message
    ran = run_even(rollout, slot, {ida: 0.3, idb: 0.3}, FAST.watch_episodes, CHALLENGE)
    assert decisions == [] and set(ran) == {idb}, "matching the challenge record: kept"
    records = rollout.status()["records"]
    assert records[ida] == {
        "base": {"successes": 54, "episodes": 60},
        CHALLENGE: {"successes": 9, "episodes": 30},
    }
    # The same episodes against a's record over both tasks (63/90 = 0.7) would roll b back.
    mixed = WatchTest(63 / 90, FAST)
    assert ROLLBACK in {mixed.add(even(0.3, k)) for k in range(len(ran))}


def test_a_watched_checkpoint_clearly_worse_on_the_same_task_still_rolls_back(ckpts):
    rollout, slot, decisions = make("immediate")
    (pa, ida), (pb, idb) = ckpts["a"], ckpts["b"]
    slot.stage(str(pa))
    run_even(rollout, slot, {ida: 0.2}, 30, "base")
    run_even(rollout, slot, {ida: 0.6}, 30, CHALLENGE)
    slot.stage(str(pb))
    ran = run_even(rollout, slot, {ida: 0.6, idb: 0.1}, 30, CHALLENGE)
    assert [d.decision for d in decisions] == ["rollback"] and slot.active_id == ida
    assert ran[-1] == ida
    decision = decisions[0]
    assert decision.evidence["task"] == CHALLENGE
    assert decision.evidence["reference_rate"] == pytest.approx(0.6)
    assert f"on task '{CHALLENGE}'" in decision.reason and "record 0.600" in decision.reason


def test_without_a_record_on_the_task_a_checkpoint_is_not_watched_and_the_status_says_so(ckpts):
    rollout, slot, decisions = make("immediate")
    (pa, ida), (pb, idb) = ckpts["a"], ckpts["b"]
    slot.stage(str(pa))
    run_even(rollout, slot, {ida: 0.9}, 30, "base")
    slot.stage(str(pb))  # watched on base, the task of the episodes so far
    assert rollout.status()["watch"]["task"] == "base"
    # The world changes from the next episode: a has no record there to watch b against.
    ran = run_even(rollout, slot, {idb: 0.0}, 30, CHALLENGE)
    status = rollout.status()
    assert status["watch"] is None and decisions == [] and set(ran) == {idb}
    assert f"not watched on task '{CHALLENGE}'" in status["unwatched"]
    assert f"{ida} has 0 complete episodes on it" in status["unwatched"]
    entries = status_entries(LearningMonitor().report(status))
    assert any(e.name == "watch" and e.message == status["unwatched"] for e in entries)
    # Back on base, b is watched against a's base record again and rolled back there.
    run_even(rollout, slot, {ida: 0.9, idb: 0.0}, 10, "base")
    assert [d.decision for d in decisions] == ["rollback"]
    assert decisions[0].evidence["task"] == "base"


def test_trial_pairs_episodes_of_one_task_and_a_new_task_starts_it_afresh(ckpts):
    rollout, slot, decisions = make("trial")
    (pa, ida), (pb, idb) = ckpts["a"], ckpts["b"]
    slot.stage(str(pa))
    run_even(rollout, slot, {ida: 0.8}, 20, "base")
    slot.stage(str(pb))
    trial = rollout.status()["trial"]
    assert trial["task"] == "base" and trial["incumbent_record"]["episodes"] == 20
    run_even(rollout, slot, {ida: 0.8, idb: 0.8}, 5, "base")  # the fifth is unpaired
    first_id = rollout.status()["trial"]["trial_id"]
    ran = run_even(rollout, slot, {ida: 0.2, idb: 0.2}, 4, CHALLENGE)
    trial = rollout.status()["trial"]
    assert trial["task"] == CHALLENGE and trial["trial_id"] != first_id
    assert trial["incumbent_record"]["episodes"] == 0, "a has no challenge record yet"
    # Only the challenge episodes count, two of each: the base one left over is not paired.
    assert (trial["candidate"]["episodes"], trial["incumbent"]["episodes"]) == (2, 2)
    assert ran.count(idb) == ran.count(ida) == 2
    ran = run_even(rollout, slot, {ida: 0.2, idb: 0.9}, 120, CHALLENGE)
    assert [d.decision for d in decisions] == ["promote"] and slot.active_id == idb
    decision = decisions[0]
    assert decision.evidence["task"] == CHALLENGE and decision.trial_id == trial["trial_id"]
    assert f"the incumbent {ida} had no record on task '{CHALLENGE}'" in decision.reason
    trial_episodes = decision.evidence["candidate"]["episodes"]
    trial_episodes += decision.evidence["incumbent"]["episodes"]
    assert trial_episodes <= 4 + len(ran), "no base episode in the challenge trial's counts"
