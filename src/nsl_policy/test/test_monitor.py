"""The learning monitor: Wilson intervals, windows, the stopped-improving rule, the entries."""

from __future__ import annotations

import random

import pytest

from nsl_policy.checkpoint import init_checkpoint
from nsl_policy.checkpoint_slot import CheckpointSlot
from nsl_policy.model import QNetworkConfig
from nsl_policy.monitor import (
    ERROR,
    OK,
    WARN,
    FineTune,
    LearningMonitor,
    MonitorSettings,
    format_entries,
    significant_gain,
    status_entries,
    stopped_improving,
    validation_score,
    wilson_interval,
)
from nsl_policy.rollout import Rollout
from nsl_policy.sequential import TrialSettings


def test_wilson_interval_known_values_and_coverage():
    low, high = wilson_interval(9, 20)
    # Reference values (Wilson 1927; e.g. statsmodels proportion_confint(9, 20, method="wilson")).
    assert low == pytest.approx(0.2582, abs=1e-4) and high == pytest.approx(0.6579, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # Coverage near 95% on simulated Bernoulli samples.
    rng = random.Random(0)
    covered = 0
    for _ in range(2000):
        s = sum(rng.random() < 0.3 for _ in range(50))
        low, high = wilson_interval(s, 50)
        covered += low <= 0.3 <= high
    assert 0.92 <= covered / 2000 <= 0.98


def test_significant_gain_is_one_sided_at_five_percent():
    assert significant_gain(30, 40, 15, 40)
    assert not significant_gain(15, 40, 30, 40)
    assert not significant_gain(22, 40, 18, 40)  # 0.55 vs 0.45: z = 0.89
    assert not significant_gain(10, 10, 10, 10) and not significant_gain(0, 0, 5, 10)
    # Under equal rates it fires about 5% of the time.
    rng = random.Random(1)
    fired = sum(
        significant_gain(
            sum(rng.random() < 0.5 for _ in range(60)),
            60,
            sum(rng.random() < 0.5 for _ in range(60)),
            60,
        )
        for _ in range(2000)
    )
    assert 0.02 <= fired / 2000 <= 0.08


def tunes(rates: list[float], episodes: int = 40) -> list[FineTune]:
    return [
        FineTune(f"c{i}", {"base": (round(r * episodes), episodes)}) for i, r in enumerate(rates)
    ]


def test_stopped_improving_on_synthetic_sequences():
    settings = MonitorSettings(patience=3, min_episodes=20)
    # Rising then flat: three fine-tunes after the last gain show none.
    flag, reason = stopped_improving(tunes([0.2, 0.5, 0.5, 0.55, 0.5]), settings)
    assert flag and "last 3 fine-tunes (c2, c3, c4)" in reason
    # Still rising significantly every other step: the last three include a gain.
    flag, reason = stopped_improving(tunes([0.2, 0.25, 0.5, 0.55, 0.8]), settings)
    assert not flag and "with a significant gain" in reason
    # Falling below the base (the paper's Fig. 6 shape): stopped.
    assert stopped_improving(tunes([0.5, 0.6, 0.45, 0.3, 0.25]), settings)[0]
    # Too few fine-tunes to say.
    assert not stopped_improving(tunes([0.2, 0.2, 0.2]), settings)[0]
    # Fine-tunes with too few episodes are not judged...
    short = tunes([0.2, 0.2, 0.2]) + tunes([0.2, 0.2], episodes=5)[:2]
    short[3].checkpoint_id, short[4].checkpoint_id = "c3", "c4"
    assert not stopped_improving(short, settings)[0]
    # ...unless the rollout rejected them: no gain went live.
    for t in short[3:]:
        t.rejected = True
    assert stopped_improving(short, settings)[0]


def test_stopped_improving_compares_rates_on_one_task_only():
    settings = MonitorSettings(patience=1, min_episodes=20)
    # The base checkpoint grasps well on the base task and badly on the challenge.
    base = FineTune("base", {"base": (32, 40), "checkerboard": (8, 40)})
    # A fine-tune that recovers on the challenge gained there (over both tasks the base's
    # rate 40/80 equals the fine-tune's 20/40: no gain).
    recovered = FineTune("tuned", {"checkerboard": (20, 40)})
    flag, reason = stopped_improving([base, recovered], settings)
    assert not flag and "1 fine-tunes judged, 1 with a significant gain" in reason
    # One as good as the base on the challenge shows no gain, though the base's record over
    # both tasks is higher.
    flat = FineTune("tuned", {"checkerboard": (9, 40)})
    assert stopped_improving([base, flat], settings)[0]
    # On a task no earlier checkpoint ran, a fine-tune is not judged.
    elsewhere = FineTune("tuned", {"harsh_light": (0, 40)})
    assert stopped_improving([base, elsewhere], settings) == (False, "no fine-tune judged yet")
    monitor = LearningMonitor()
    for k in range(4):
        monitor.episode("a", "base", k < 3, True)
        monitor.episode("a", "checkerboard", k < 1, True)
    assert monitor.fine_tunes()[0].counts == {"base": (3, 4), "checkerboard": (1, 4)}


def test_stopped_improving_on_the_validation_curve():
    settings = MonitorSettings(patience=2)
    base = FineTune("base")
    curve = [0.3, 0.5, 0.6, 0.55, 0.52]  # peaks, then two below the peak
    checkpoints = [base] + [FineTune(f"f{i}", validation=v) for i, v in enumerate(curve)]
    flag, reason = stopped_improving(checkpoints, settings)
    assert flag and "validation" in reason and "0.6" in reason
    rising = [base] + [FineTune(f"f{i}", validation=v) for i, v in enumerate([0.3, 0.5, 0.4, 0.6])]
    assert not stopped_improving(rising, settings)[0]
    assert not stopped_improving([base, FineTune("f", validation=0.1)], settings)[0]


def test_monitor_windows_counts_and_report_roles():
    monitor = LearningMonitor(MonitorSettings(window=10))
    for k in range(30):
        monitor.episode("a", "base", success=k >= 20, complete=True)  # last 10 all successes
    monitor.episode("a", "base", success=False, complete=False)  # aborted: not counted
    monitor.episode("b", "base", success=True, complete=True)
    monitor.episode("a", "harsh", success=False, complete=True)
    report = monitor.report(
        {"mode": "trial", "in_force": "a", "trial": None, "watch": None, "records": {}}
    )
    rows = {(r["checkpoint_id"], r["task"]): r for r in report["checkpoints"]}
    assert (rows["a", "base"]["successes"], rows["a", "base"]["episodes"]) == (10, 10)
    assert rows["a", "base"]["role"] == "in force" and rows["b", "base"]["role"] == ""
    assert rows["a", "harsh"]["episodes"] == 1
    assert [t.checkpoint_id for t in monitor.fine_tunes()] == ["a", "b"]
    assert monitor.fine_tunes()[0].episodes == 11  # all tasks together


def test_report_carries_the_rollouts_trial_progress(tmp_path):
    cfg = QNetworkConfig(image_size=64, width=8, embed_width=16, fc_width=16)
    init_checkpoint(tmp_path / "a.safetensors", cfg, seed=0)
    init_checkpoint(tmp_path / "b.safetensors", cfg, seed=1)
    rollout = Rollout("trial", TrialSettings(max_episodes=40), record_lineage=False)
    slot = CheckpointSlot(on_swap=lambda new, old: rollout.in_force(new, old), gate=rollout.gate)
    rollout.attach(slot)
    assert slot.stage(str(tmp_path / "a.safetensors")).in_force
    held = slot.stage(str(tmp_path / "b.safetensors"))
    assert held.held
    monitor = LearningMonitor()
    for k in range(6):
        checkpoint = slot.begin_episode(rollout.choose)
        tag = rollout.episode_role(checkpoint.checkpoint_id, "base")
        rollout.episode_done(checkpoint.checkpoint_id, "base", tag, k % 3 == 0, True)
        monitor.episode(checkpoint.checkpoint_id, "base", k % 3 == 0, True)
        slot.end_episode()
    report = monitor.report(rollout.status())
    trial = report["trial"]
    assert trial["candidate_id"] == held.checkpoint_id
    assert trial["candidate"]["episodes"] + trial["incumbent"]["episodes"] == 6
    roles = {r["checkpoint_id"]: r["role"] for r in report["checkpoints"]}
    assert roles[held.checkpoint_id] == "candidate" and roles[slot.active_id] == "in force"
    entries = status_entries(report)
    assert [e.name for e in entries][:2] == ["learning", "trial"]
    assert "/40 episodes" in entries[1].message and entries[1].values["cap"] == "40"
    assert any(e.name == f"success {held.checkpoint_id} base" for e in entries)


def test_status_entries_levels_and_terminal_format():
    report = LearningMonitor().report({"mode": "trial", "in_force": ""})
    assert status_entries(report)[0].level == ERROR
    monitor = LearningMonitor(MonitorSettings(patience=1, min_episodes=5))
    for cid, rate in (("base", 0.5), ("tuned", 0.4)):
        for k in range(10):
            monitor.episode(cid, "base", k < rate * 10, True)
    report = monitor.report({"mode": "trial", "in_force": "tuned"})
    entries = status_entries(report)
    assert entries[0].level == WARN and entries[0].values["stopped_improving"] == "true"
    assert status_entries(report, running="inactive")[0].message.startswith("inactive")
    text = format_entries([(e.level, e.name, e.message) for e in entries])
    lines = text.splitlines()
    assert lines[0].startswith("WARN  learning") and "stopped improving" in lines[0]
    assert "success base base" in text and "0.50 (5/10), 95% CI 0.24-0.76" in text
    assert entries[1].level == OK


def test_validation_score_from_checkpoint_metadata():
    assert validation_score({"metrics": {"val_success": 0.7}}) == 0.7
    assert validation_score({"metrics": {"val_loss": 0.2}}) == -0.2  # lower loss is better
    assert validation_score({"metrics": {"loss": 0.2}}) is None
    assert validation_score({}) is None and validation_score({"metrics": "x"}) is None
