"""The experiment pipeline on a tiny config, every stage end to end.

Caching, resuming, evaluation with a confidence interval, calibration, nested tiers, the
fine-tuning sweep, the continual chain and the report. ROS-free, < 90 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil

import numpy as np
import pytest
import yaml

pytest.importorskip("pybullet")
pytest.importorskip("torch")

import torch  # noqa: E402
from experiment_helpers import TINY, make_config, tiny  # noqa: E402
from nsl_collector.dataset import load_transitions, read_episodes  # noqa: E402
from nsl_experiment import cli, episodes  # noqa: E402
from nsl_experiment.cache import Context  # noqa: E402
from nsl_experiment.config import ExperimentConfig  # noqa: E402
from nsl_experiment.episodes import task_spec, wilson_interval  # noqa: E402
from nsl_experiment.pipeline import STAGES, run  # noqa: E402
from nsl_experiment.report.markdown import reproduce_commands  # noqa: E402
from nsl_experiment.report.tables import consistency_warnings, load_stamps, tables  # noqa: E402
from nsl_experiment.report.acceptance import acceptance  # noqa: E402
from nsl_experiment.seeds import CALIBRATION_SEEDS, GATE_SEEDS  # noqa: E402
from nsl_experiment.units import collect, evaluate, gate, labels  # noqa: E402
from nsl_experiment.units import calibration as calibration_unit  # noqa: E402
from nsl_experiment.units.calibration import choose_severity  # noqa: E402
from nsl_experiment.units.evaluate import evaluate_checkpoint  # noqa: E402
from nsl_experiment.units.train import fresh_network  # noqa: E402
from nsl_experiment.units.labels import (  # noqa: E402
    first_episodes,
    load_episodes,
    location_file,
    location_labels,
)
from nsl_experiment.units.collect import tier_bags  # noqa: E402
from nsl_policy.checkpoint import load_checkpoint  # noqa: E402
from nsl_sim.solvability import THRESHOLDS, SolvabilityResult  # noqa: E402


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    logs: list[str] = []
    results = run(tiny(out), out, None, logs.append)
    return out, results, logs


def test_run_writes_checkpoint_data_and_summary(first_run):
    out, results, _ = first_run
    assert (out / "checkpoints" / "base.safetensors").is_file()
    assert sorted(p.name for p in (out / "datasets" / "base" / "bootstrap").glob("chunk_???")) == [
        "chunk_000",
        "chunk_001",
    ]
    assert (out / "datasets" / "base" / "round_1" / "chunk_000" / "metadata.yaml").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert (
        list(results["stages"])
        == [
            "pretrain",
            "evaluate_base",
            "calibrate",
            "collect_targets",
            "finetune_sweep",
            "online_finetune",
            "continual",
            "report",
        ]
        == list(STAGES)
    )
    assert (
        results["stages"]["online_finetune"]["skipped"] == "online_rounds is 0"
    )  # off by default
    assert not (out / "stages" / "online_finetune.json").exists()
    assert set(summary["stages"]) == set(STAGES)
    base = summary["stages"]["evaluate_base"]["results"]["base"]
    assert base["episodes"] == 3 and base["object_split"] == "test"
    lo, hi = base["ci95"]
    assert 0.0 <= lo <= base["success_rate"] <= hi <= 1.0


def test_second_run_skips_everything(first_run):
    out, results, _ = first_run
    # Unit stamps (bags, checkpoints, evaluations); the stage stamps and the report are rewritten.
    units = [
        p
        for p in out.rglob("*.json")
        if p.parent != out / "stages" and p.parent != out / "report" and p.name != "summary.json"
    ]
    before = {p: p.read_text() for p in units}
    stage_stamps = {p.name: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mcap")}
    logs: list[str] = []
    again = run(tiny(out), out, None, logs.append)
    assert not any(
        re.search(r"collecting|training|: \d+ (evaluation|validation) episodes$", m) for m in logs
    ), logs
    assert any("bootstrap: 2 bag(s) cached" in m for m in logs)
    assert any("evaluate_base/base: cached" in m for m in logs)
    assert any("calibrate/checkerboard_severity_1: solvability cached" in m for m in logs)
    assert not any(re.search(r": (NOT )?solvable \(\d+ s\)$", m) for m in logs), logs
    assert any("sweep/checkerboard/tier_0004: cached checkpoint" in m for m in logs)
    assert any("agnostic_scenes: 5 scenes cached" in m for m in logs), logs
    assert any("agnostic_trunk: cached checkpoint" in m for m in logs), logs
    assert {p: p.read_text() for p in before} == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mcap")} == mtimes
    for p in (out / "stages").glob(
        "*.json"
    ):  # a cached re-run keeps the cost of the run that did the work
        assert json.loads(p.read_text())["provenance"] == stage_stamps[p.name]["provenance"]
    assert (
        again["stages"]["pretrain"]["checkpoint_id"]
        == results["stages"]["pretrain"]["checkpoint_id"]
    )
    assert (
        again["stages"]["evaluate_base"]["results"]
        == results["stages"]["evaluate_base"]["results"]
    )
    for stage in ("calibrate", "finetune_sweep", "continual"):
        assert again["stages"][stage]["key"] == results["stages"][stage]["key"]


def test_resume_redoes_only_missing_work_and_config_changes_invalidate(first_run, tmp_path):
    out, results, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(
        copy / "datasets" / "base" / "bootstrap" / "chunk_001"
    )  # as if killed mid-collection
    logs: list[str] = []
    run(tiny(copy), copy, ["pretrain"], logs.append)
    assert any("collecting 2 episodes in 1 bag(s) (1 cached)" in m for m in logs), logs
    # Same seeds -> same data -> same checkpoint, so the training after it is a cache hit.
    assert any("pretrain_round_0: cached" in m for m in logs), logs
    logs.clear()
    run(tiny(copy, pretrain_steps=4), copy, ["pretrain"], logs.append)
    assert any("bootstrap: 2 bag(s) cached" in m for m in logs)
    assert any("pretrain_round_0: training 4 steps" in m for m in logs), logs


def test_evaluate_gives_wilson_interval(first_run):
    out, _, _ = first_run
    cfg = make_config(**TINY)
    res = evaluate_checkpoint(
        out / "checkpoints" / "base.safetensors", "base", 2, cfg, "validation"
    )
    assert res["episodes"] == 2 and res["seed_set"] == "validation"
    assert res["ci95"] == list(wilson_interval(res["successes"], 2))
    lo, hi = wilson_interval(160, 200)
    assert lo == pytest.approx(0.7391, abs=1e-3) and hi == pytest.approx(0.8496, abs=1e-3)


def test_nsl_experiment_evaluate_json_names_the_checkpoint_it_scored(first_run, tmp_path):
    out, _, _ = first_run
    ckpt = out / "checkpoints" / "base.safetensors"
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    result = tmp_path / "eval.json"
    args = parser.parse_args(
        ["experiment", "evaluate", "--checkpoint", str(ckpt), "--episodes", "2"]
        + ["--seeds", "validation", "--json", str(result), "--config", str(out / "config.json")]
    )
    assert args.fn(args) == 0
    res = json.loads(result.read_text())
    assert res["checkpoint"] == str(ckpt.resolve()) and res["episodes"] == 2
    assert res["checkpoint_id"] == load_checkpoint(ckpt).checkpoint_id


def test_grasp_values_restart_qtopt_at_their_round(first_run, tmp_path):
    """grasp_value_steps > 0.

    At grasp_value_round a supervised grasp classifier of the data so far is trained, and QT-Opt
    starts anew from it at the pre-training rate in validated parts, each continuing the previous
    one and each a candidate base; the rounds before it are unchanged (cached), and a second run
    finds it all cached.
    """
    out, results, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    logs: list[str] = []
    cfg = tiny(
        copy,
        grasp_value_steps=4,
        grasp_value_round=1,
        grasp_value_qtopt_steps=6,
        grasp_value_checks=2,
    )
    res = run(cfg, copy, ["pretrain"], logs.append)["stages"]["pretrain"]
    assert any("pretrain_round_0: cached" in m for m in logs), logs
    assert any("grasp_values_round_1: 4 supervised steps on 6 grasps" in m for m in logs), logs
    assert any(
        re.search(
            r"pretrain_round_1_part_1: training 3 steps .*lr 0\.001, init grasp_values_round_1\.",
            m,
        )
        for m in logs
    ), logs
    assert any(
        re.search(r"pretrain_round_1_part_2: training 6 steps .*init grasp_values_round_1\.", m)
        for m in logs
    ), logs
    # one QT-Opt run: part 2 resumed part 1's run state (optimiser, targets) at step 3, and its
    # run directory is gone once the last part is written
    assert (
        load_checkpoint(copy / "checkpoints" / "pretrain_round_1_part_2.safetensors").metadata[
            "resumed_from"
        ]
        == 3
    )
    assert not list((copy / "checkpoints").glob("*.run"))
    gv = load_checkpoint(copy / "checkpoints" / "grasp_values_round_1.safetensors")
    assert (
        gv.metadata["kind"] == "grasp_values"
        and gv.checkpoint_id == res["grasp_values"]["checkpoint_id"]
    )
    assert res["grasp_values"]["grasps"] == 6 and "round_1_grasp_values_s" in res["timings"]
    assert res["rounds"][0] == results["stages"]["pretrain"]["rounds"][0]
    parts = res["rounds"][1:]
    assert [(p["round"], p["part"], p["qtopt_steps"]) for p in parts] == [(1, 1, 3), (1, 2, 6)]
    assert all(p["validation"]["episodes"] == 2 for p in parts)
    ids = {p["checkpoint_id"] for p in parts}
    assert len(ids) == 2 and gv.checkpoint_id not in ids
    assert res["checkpoint_id"] in ids | {res["rounds"][0]["checkpoint_id"]}
    logs.clear()
    again = run(cfg, copy, ["pretrain"], logs.append)["stages"]["pretrain"]
    assert any("grasp_values_round_1: cached checkpoint" in m for m in logs), logs
    assert not any("training" in m for m in logs), logs
    assert [p["checkpoint_id"] for p in again["rounds"]] == [
        p["checkpoint_id"] for p in res["rounds"]
    ]
    # Round 0: the grasp values of the bootstrap data replace the offline QT-Opt.
    logs.clear()
    zero = run(
        tiny(
            copy,
            grasp_value_steps=4,
            grasp_value_round=0,
            grasp_value_qtopt_steps=2,
            grasp_value_checks=1,
            rounds=0,
        ),
        copy,
        ["pretrain"],
        logs.append,
    )["stages"]["pretrain"]
    assert any("grasp_values_round_0: 4 supervised steps on 4 grasps" in m for m in logs), logs
    assert [(p["round"], p["part"]) for p in zero["rounds"]] == [(0, 1)]


def test_pretrain_location_weight_labels_the_bags_once(first_run, tmp_path):
    """pretrain_location_weight.

    Pre-training labels every bag it trains on (a sidecar per bag, row for row with its
    transitions, cached on the bag's key) and trains with the location loss; the fine-tunes use
    hindsight labels instead, as on a robot.
    """
    out, results, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    config = tiny(copy, pretrain_location_weight=1.0)
    assert config.qtopt_config().location_weight == 1.0
    assert config.qtopt_config().location_labels == "sim"
    fine = config.qtopt_config(finetune=True)
    assert (fine.location_weight, fine.location_labels) == (1.0, "hindsight")
    logs: list[str] = []
    res = run(config, copy, ["pretrain"], logs.append)
    assert any("bootstrap: 2 bag(s) cached" in m for m in logs), logs
    assert any("location labels: replaying the episodes of 2 bag(s)" in m for m in logs), logs
    assert any(
        re.search(r"pretrain_round_0: step \d+/\d+ loss .* location \d", m) for m in logs
    ), logs
    assert (
        res["stages"]["pretrain"]["checkpoint_id"]
        != results["stages"]["pretrain"]["checkpoint_id"]
    )
    bags = sorted(
        b for b in (copy / "datasets" / "base").glob("*/chunk_???") if b.parent.name != "targets"
    )
    assert len(bags) == 3 and all(location_file(b).is_file() for b in bags)
    ctx = Context(config, copy, logs.append)
    labels = location_labels(ctx, bags)
    assert ctx.work_done == 0  # all cached
    for bag, lab in zip(bags, labels):
        transitions = load_transitions([bag])
        assert lab.offsets.shape == (len(transitions), 2) and np.isfinite(lab.offsets).all()
        assert 0 < np.abs(lab.offsets).max() < 0.5  # metres, inside the tray
        np.testing.assert_array_equal(lab.steps, np.bincount(transitions.episode))
    with pytest.raises(ValueError, match="do not match their episodes"):
        load_episodes(bags[:2], location=labels[1:])
    # A bag collected again (a new chunk key) gets new labels; the others stay.
    stamp = bags[0].with_name(bags[0].name + ".json")
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "key": "recollected"}))
    logs.clear()
    location_labels(ctx, bags)
    assert ctx.work_done == 1 and any(
        "replaying the episodes of 1 bag(s) in the sim (2 cached)" in m for m in logs
    )
    stamp.unlink()
    with pytest.raises(ValueError, match=f"{bags[0].name}.json"):
        location_labels(ctx, bags)


def test_calibration_follows_the_rule_and_later_stages_use_it(first_run):
    out, results, _ = first_run
    cal = results["stages"]["calibrate"]["calibration"]
    base = cal["base_validation"]["success_rate"]
    assert cal["base_validation"]["seed_set"] == "calibration"
    assert cal["calibration_episodes"] == 3
    # Severities past a challenge's bounds are its bound's world: offset 3.0 is offset 1.5.
    candidates = {"offset_gripper_10cm": [1.0, 1.5], "checkerboard": [1.0, 3.0]}
    for name in TINY["challenges"]:
        c = cal["challenges"][name]
        assert all(t["solvability"]["passed"] for t in c["trials"])  # in this tiny world
        trials = [(t["severity"], t["result"]["success_rate"], True) for t in c["trials"]]
        # Calibration has its own seeds: the base policy was chosen on the validation seeds, so
        # its figure there is optimistic and would inflate every drop.
        assert [(t["result"]["seed_set"], t["result"]["first_seed"]) for t in c["trials"]] == [
            ("calibration", CALIBRATION_SEEDS)
        ] * len(trials)
        severity, reached = choose_severity(base, trials, 0.2)
        assert (c["severity"], c["reached"]) == (severity, reached)
        assert c["status"] == ("reached" if reached else "drop not reached")
        # Severities are tried in order and only until one is severe enough.
        assert [s for s, _, _ in trials] == candidates[name][: len(trials)]
        assert len(trials) == len(candidates[name]) or c["reached"]
        assert c["task"]["name"] == name and c["task"]["severity"] == c["severity"]
        # The chosen severity's solvability check, on the solvability scenes of the run's world.
        chosen = next(t for t in c["trials"] if t["severity"] == c["severity"])
        assert c["solvability"] == chosen["solvability"] and c["solvable"] is True
        assert c["solvability"]["kind"] == (
            "geometry" if name == "offset_gripper_10cm" else "appearance"
        )
        figures = c["solvability"]["figures"]
        assert figures.get("scenes", figures.get("episodes")) == 16
        table = results["stages"]["calibrate"]["table_i"][name]
        assert (table["result"]["seed_set"], table["result"]["severity"]) == (
            "evaluation",
            c["severity"],
        )
        assert table["result"]["episodes"] == 3 and table["solvable"] is True
        # The exploration grasps ran on the calibrated task; the bags' metadata says which.
        session = yaml.safe_load(
            (out / "datasets" / name / "targets" / "chunk_000" / "nsl_session.yaml").read_text()
        )
        assert (session["session"]["task"], session["session"]["severity"]) == (
            name,
            c["severity"],
        )
        assert (
            results["stages"]["finetune_sweep"]["tasks"][name]["task"]["severity"] == c["severity"]
        )


class _FakeChecker:
    """Stands in for nsl_sim's SolvabilityChecker: only the severities in SOLVABLE pass."""

    SOLVABLE = {("checkerboard", 3.0)}

    thresholds = THRESHOLDS  # the calibration keys its cache on them

    def __init__(self, config, episodes=None, seed=0, probe_steps=600):
        self.episodes, self.seed, self.probe_steps = episodes, seed, probe_steps

    def check(self, task, severity):
        passed = (task, severity) in self.SOLVABLE
        kind = "geometry" if task == "offset_gripper_10cm" else "appearance"
        figures = (
            {"aware_oracle": 0.0 if not passed else 0.8, "base_oracle": 0.8, "episodes": 16}
            if kind == "geometry"
            else {
                "pixel_share": 0.9 if passed else 0.1,
                "changed_px": 9.0 if passed else 1.0,
                "base_changed_px": 10.0,
                "probe_error_px": 2.0,
                "base_probe_error_px": 2.0,
                "chance_error_px": 7.0,
                "scenes": 16,
            }
        )
        return SolvabilityResult(task, severity, kind, passed, figures, ("object_alpha",))


def test_calibration_skips_unsolvable_severities_and_reports_them(
    first_run, tmp_path, monkeypatch
):
    out, _, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "stages" / "calibrate" / "solvability")
    monkeypatch.setattr(calibration_unit, "SolvabilityChecker", _FakeChecker)
    logs: list[str] = []
    res = run(tiny(copy), copy, ["calibrate", "report"], logs.append)["stages"]["calibrate"]
    challenges = res["calibration"]["challenges"]
    # checkerboard 1.0 is not solvable: not evaluated, not chosen; 3.0 is the only candidate.
    board = challenges["checkerboard"]
    assert [(t["severity"], t["result"] is None) for t in board["trials"]] == [
        (1.0, True),
        (3.0, False),
    ]
    assert board["trials"][0]["drop"] is None and not board["trials"][0]["solvability"]["passed"]
    assert board["severity"] == 3.0 and board["solvable"] is True
    assert not any("calibrate/checkerboard_severity_1: 3 calibration" in m for m in logs), logs
    assert any(re.search(r"checkerboard_severity_1: NOT solvable \(\d+ s\)$", m) for m in logs)
    # No severity of the offset gripper is solvable: reported as such, never evaluated on the
    # calibration episodes, and the study keeps the least severity tried, flagged.
    offset = challenges["offset_gripper_10cm"]
    assert offset["status"] == "no solvable severity" and offset["reached"] is False
    assert offset["severity"] == 1.0 and offset["solvable"] is False and offset["drop"] is None
    assert all(t["result"] is None for t in offset["trials"])
    assert res["table_i"]["offset_gripper_10cm"]["solvable"] is False
    text = (copy / "report" / "paper_reproduction.md").read_text()
    assert "**offset_gripper_10cm: no severity tried is solvable**" in text
    assert "| 1 (no solvable severity) | object_alpha |" in text
    assert "aware oracle 0.00 vs base oracle 0.80 | **NO** |" in text
    assert "- checkerboard: 1 (not solvable), 3 (solvable, Δ " in text
    summary = json.loads((copy / "report" / "summary.json").read_text())
    check = summary["acceptance"][1]
    assert (
        check["passed"] is False and "not shown solvable: offset_gripper_10cm" in check["detail"]
    )


def test_evaluate_accepts_a_task_dict(first_run):
    out, _, _ = first_run
    assert task_spec("checkerboard") == "checkerboard" == task_spec("checkerboard", 1.0)
    spec = task_spec("checkerboard", 2.0)
    assert spec["severity"] == 2.0 and spec["texture"] == "checkerboard"
    res = evaluate_checkpoint(
        out / "checkpoints" / "base.safetensors", spec, 2, tiny(out), "validation"
    )
    assert (res["task"], res["severity"], res["episodes"]) == ("checkerboard", 2.0, 2)


def test_tiers_are_nested_prefixes(first_run):
    out, results, _ = first_run
    bags = [out / b for b in results["stages"]["collect_targets"]["tasks"]["checkerboard"]["bags"]]
    assert len(bags) == 2  # 4 grasps in bags of 2
    small, large = load_episodes(tier_bags(bags, 2, 2), 2), load_episodes(tier_bags(bags, 4, 2), 4)
    assert (small.num_episodes, large.num_episodes) == (2, 4)
    one = first_episodes(large, 1)  # a tier smaller than a bag: a prefix of the bag's episodes
    assert one.num_episodes == 1 and one.done[-1] and not one.done[:-1].any()
    for part in (small, one):
        n = len(part)
        assert n < len(large)
        for name in ("image", "state", "action", "reward", "done", "next_index", "episode"):
            np.testing.assert_array_equal(getattr(part, name), getattr(large, name)[:n])
        assert part.next_index.max() < n
    with pytest.raises(ValueError, match="first 5 episodes"):
        first_episodes(large, 5)


def test_sweep_and_continual_units(first_run):
    out, results, _ = first_run
    sweep = results["stages"]["finetune_sweep"]
    assert list(sweep["tasks"]) == [
        "base",
        "checkerboard",
        "offset_gripper_10cm",
    ]  # the control, then challenges
    for name, row in sweep["tasks"].items():
        for n, entry in row["tiers"].items():
            assert entry["train"]["target_episodes"] == int(n) and entry["train"]["steps"] == 2
            assert entry["train"]["learning_rate"] == pytest.approx(2.5e-4)  # 25% of pre-training
            assert entry["result"]["task"] == name and entry["result"]["episodes"] == 3
        assert row["scratch"]["train"]["transitions"]["base"] == 0  # target data only
        assert row["scratch"]["train"]["learning_rate"] == pytest.approx(1e-3)
        assert row["reinit_head"]["train"]["target_episodes"] == 4
        # The task-agnostic trunk is fine-tuned like the largest tier: base + target data.
        agnostic = row["agnostic_trunk"]
        for k in ("steps", "learning_rate", "transitions", "target_episodes"):
            assert agnostic["train"][k] == row["tiers"]["4"]["train"][k], k
        assert agnostic["result"]["task"] == name and agnostic["result"]["episodes"] == 3
    trunk = sweep["agnostic_trunk"]
    assert trunk["steps"] == 3 and trunk["trained_modules"] == ["trunk"]
    assert (trunk["metrics"]["scenes"], trunk["metrics"]["train_scenes"]) == (5, 4)
    # Its trunk was trained without RL; every other part is the fresh network's initialisation.
    fresh = fresh_network(Context(tiny(out), out)).state_dict()
    loaded = load_checkpoint(out / "checkpoints" / "agnostic_trunk.safetensors")
    assert loaded.checkpoint_id == trunk["checkpoint_id"]
    assert loaded.metadata["kind"] == "agnostic_trunk"
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, fresh[key]) == (not key.startswith("trunk.")), key
    # Its scenes: base at reset with the train objects, at the bootstrap episodes' seeds.
    with np.load(out / "datasets" / "agnostic_scenes" / "scenes.npz") as scenes:
        assert scenes["images"].shape == (5, 32, 32, 3) and scenes["positions"].shape == (5, 1, 2)
        boot = load_transitions([str(out / "datasets" / "base" / "bootstrap" / "chunk_000")])
        np.testing.assert_array_equal(scenes["images"][0], boot.image[0])  # seed 0 at reset
    # The head re-initialisation keeps the trunk and the action embedding, resets head and fc.
    base = load_checkpoint(out / "checkpoints" / "base.safetensors").model.state_dict()
    reinit = load_checkpoint(
        out / "checkpoints" / "reinit_head_init.safetensors"
    ).model.state_dict()
    for key, value in base.items():
        assert torch.equal(value, reinit[key]) == (not key.startswith(("head.", "fc."))), key
    cont = results["stages"]["continual"]
    assert cont["order"] == [
        "checkerboard",
        "offset_gripper_10cm",
    ]  # CONTINUAL_ORDER, not the config's order
    assert cont["guard"] is True  # the default: every step is gated on validation
    first, second = cont["steps"]
    # Step 0 trains exactly the sweep's largest-tier run.
    assert (
        first["candidate"]["checkpoint_id"]
        == sweep["tasks"]["checkerboard"]["tiers"]["4"]["checkpoint_id"]
    )
    in_force = cont["base_checkpoint_id"]
    for step in cont["steps"]:
        gate = step["guard"]
        assert (
            gate["previous_checkpoint_id"] == in_force
        )  # each step starts from the policy in force
        assert (
            gate["candidate_validation"]["seed_set"]
            == gate["previous_validation"]["seed_set"]
            == "validation"
        )
        assert (
            gate["candidate_validation"]["episodes"] == 2
            and gate["candidate_validation"]["task"] == step["task"]
        )
        assert step["accepted"] == (
            gate["candidate_validation"]["success_rate"]
            >= gate["previous_validation"]["success_rate"]
        )
        in_force = step["candidate"]["checkpoint_id"] if step["accepted"] else in_force
        assert step["checkpoint_id"] == in_force and step["result"]["checkpoint_id"] == in_force
    step_1 = json.loads(
        (out / "checkpoints" / "continual_guarded" / "step_1_offset_gripper_10cm.json").read_text()
    )
    assert step_1["init"] == ("tier_0004.safetensors" if first["accepted"] else "base.safetensors")
    assert cont["final_checkpoint_id"] == second["checkpoint_id"]
    assert list(cont["final"]) == ["base", "checkerboard", "offset_gripper_10cm"]
    assert cont["final"]["offset_gripper_10cm"]["success_rate"] == second["result"]["success_rate"]


def test_continual_guard_rejects_a_step_that_validates_worse(first_run, tmp_path, monkeypatch):
    """The gate keeps the policy in force when a step's checkpoint does worse on validation."""
    out, results, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    base_id = results["stages"]["continual"]["base_checkpoint_id"]
    real_validate = gate.validate

    def validate(ctx, checkpoint, checkpoint_id, task="base"):
        res = dict(real_validate(ctx, checkpoint, checkpoint_id, task))
        # The base policy validates at 1, every trained candidate at 0: every step must be
        # rejected.
        res["success_rate"] = 1.0 if checkpoint_id == base_id else 0.0
        return res

    monkeypatch.setattr(gate, "validate", validate)
    res = run(tiny(copy), copy, ["continual"], lambda m: None)["stages"]["continual"]
    assert [s["accepted"] for s in res["steps"]] == [False, False]
    assert (
        [s["checkpoint_id"] for s in res["steps"]]
        == [base_id, base_id]
        == [res["final_checkpoint_id"]] * 2
    )
    # A rejected step reports the policy in force on its task: the base policy's Table I
    # evaluation.
    table_i = results["stages"]["calibrate"]["table_i"]
    for step in res["steps"]:
        assert step["result"] == table_i[step["task"]]["result"]
        assert step["candidate"]["checkpoint_id"] != base_id  # what it trained is still reported
    # Step 1 trained from the policy in force (the base policy), not from step 0's rejected
    # checkpoint.
    step_1 = json.loads(
        (
            copy / "checkpoints" / "continual_guarded" / "step_1_offset_gripper_10cm.json"
        ).read_text()
    )
    assert step_1["init"] == "base.safetensors"


def test_continual_without_guard_accepts_every_step(first_run, tmp_path):
    out, results, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    res = run(tiny(copy, continual_guard=False), copy, ["continual"], lambda m: None)["stages"][
        "continual"
    ]
    first, second = res["steps"]
    assert (
        res["guard"] is False
        and first["accepted"]
        and second["accepted"]
        and first["guard"] is None
    )
    assert (
        first["checkpoint_id"]
        == results["stages"]["finetune_sweep"]["tasks"]["checkerboard"]["tiers"]["4"][
            "checkpoint_id"
        ]
    )
    assert (
        json.loads(
            (copy / "checkpoints" / "continual" / "step_1_offset_gripper_10cm.json").read_text()
        )["init"]
        == "tier_0004.safetensors"
    )
    assert second["checkpoint_id"] == res["final_checkpoint_id"] != first["checkpoint_id"]


def test_continual_recollect_explores_with_the_previous_step(first_run, tmp_path):
    out, results, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    logs: list[str] = []
    res = run(tiny(copy, continual_recollect=True), copy, ["continual"], logs.append)["stages"][
        "continual"
    ]
    first, second = res["steps"]
    assert (
        first == results["stages"]["continual"]["steps"][0]
    )  # step 0 still explores with the base policy
    assert any("offset_gripper_10cm/continual_step_1: collecting 4 episodes" in m for m in logs), (
        logs
    )

    episodes = read_episodes(copy / "datasets" / "offset_gripper_10cm" / "continual_step_1")
    assert {e.checkpoint_id for e in episodes} == {first["checkpoint_id"]}
    assert second["checkpoint_id"] != results["stages"]["continual"]["steps"][1]["checkpoint_id"]
    # The variants keep separate step checkpoints: going back to the paper's data retrains nothing.
    assert (
        copy
        / "checkpoints"
        / "continual_guarded_recollect"
        / "step_1_offset_gripper_10cm.safetensors"
    ).is_file()
    logs.clear()
    again = run(tiny(copy), copy, ["continual"], logs.append)["stages"]["continual"]
    assert not any("training" in m for m in logs), logs
    assert again["steps"] == results["stages"]["continual"]["steps"]


def test_fine_tunes_train_the_location_loss_on_hindsight_labels(first_run):
    """The study's fine-tunes run the trainer's recipe: the location loss without sim replays."""
    out, _, logs = first_run
    unit = "sweep/checkerboard/tier_0004"
    assert any(re.search(rf"{unit}: step \d+/\d+ loss .* location \d", m) for m in logs), logs
    assert not any("location labels: replaying" in m for m in logs)  # nothing replayed in the sim
    meta = load_checkpoint(out / "checkpoints" / f"{unit}.safetensors").metadata
    assert meta["qtopt_config"]["location_labels"] == "hindsight"
    assert meta["qtopt_config"]["location_weight"] == 1.0
    assert set(meta["labelled_transitions"]) == {"base", "target"}


def test_finetune_qtopt_changes_the_fine_tuning_runs_only(first_run, tmp_path):
    out, results, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # The default exports the Polyak-averaged network; {} exports the online network.
    assert tiny(copy).qtopt_config(finetune=True).policy_weights == "polyak"
    assert tiny(copy).qtopt_config().policy_weights == "online"  # pre-training is unchanged
    logs: list[str] = []
    res = run(tiny(copy, finetune_qtopt={}), copy, ["pretrain", "finetune_sweep"], logs.append)
    assert not any(re.search(r"pretrain_round_\d+: training", m) for m in logs), logs
    assert (
        res["stages"]["pretrain"]["checkpoint_id"]
        == results["stages"]["pretrain"]["checkpoint_id"]
    )
    for unit in (
        "sweep/checkerboard/tier_0004",
        "sweep/checkerboard/scratch_0004",
        "sweep/checkerboard/reinit_head_0004",
        "sweep/checkerboard/agnostic_trunk_0004",
    ):
        assert any(f"] {unit}: training" in m for m in logs), (unit, logs)
    assert any("agnostic_trunk: cached checkpoint" in m for m in logs), logs  # no QT-Opt in it
    # Polyak averaging (0.995 per step): after 2 steps the exported network sits far closer to
    # the base network than the online network does.
    base = load_checkpoint(out / "checkpoints" / "base.safetensors").model.state_dict()
    averaged = load_checkpoint(
        out / "checkpoints" / "sweep" / "checkerboard" / "tier_0004.safetensors"
    ).model.state_dict()
    online = load_checkpoint(
        copy / "checkpoints" / "sweep" / "checkerboard" / "tier_0004.safetensors"
    ).model.state_dict()

    def distance(a):
        return max(float((a[k].float() - base[k].float()).abs().max()) for k in base)

    assert distance(averaged) < 0.1 * distance(online), (distance(averaged), distance(online))
    # A stamp reproduces with the settings it was made with: the defaults are left out.
    stamp = json.loads((out / "stages" / "finetune_sweep.json").read_text())
    assert "finetune_qtopt" not in reproduce_commands({"finetune_sweep": stamp}, out)[0]
    stamp = json.loads((copy / "stages" / "finetune_sweep.json").read_text())
    assert "--set 'finetune_qtopt={}'" in reproduce_commands({"finetune_sweep": stamp}, out)[0]
    stamp = json.loads((out / "stages" / "calibrate.json").read_text())
    assert stamp["provenance"]["config"]["calibration"]["calibration_seed_set"] == "calibration"


def test_a_hard_linked_copy_keeps_the_originals_config(first_run, tmp_path):
    """Copying a run folder with hard links (cp -al) to reuse its data is safe.

    Running the copy replaces its config.json instead of writing into the file both folders share.
    """
    out, _, _ = first_run
    original = tmp_path / "original"
    shutil.copytree(out, original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, copy_function=os.link)
    before = (original / "config.json").read_text()
    run(tiny(copy, finetune_steps=3), copy, ["report"], lambda m: None)
    assert (original / "config.json").read_text() == before
    assert json.loads((copy / "config.json").read_text())["finetune"]["finetune_steps"] == 3


def test_from_run_reads_the_runs_config(first_run):
    """ExperimentConfig.from_run: a run folder's config.json, plus overrides."""
    out, _, _ = first_run
    assert ExperimentConfig.from_run(out) == tiny(out)
    config = ExperimentConfig.from_run(out, workers=3, calibration_seed_set="validation")
    assert (config.runtime.workers, config.calibration.calibration_seed_set) == (3, "validation")
    assert config.study == tiny(out).study


def test_changing_eval_episodes_only_reevaluates(first_run, tmp_path):
    out, _, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    logs: list[str] = []
    res = run(tiny(copy, eval_episodes=2), copy, ["finetune_sweep"], logs.append)
    assert not any("collecting" in m or "training" in m for m in logs), logs
    assert any("sweep/base/tier_0002 on base: 2 evaluation episodes" in m for m in logs), logs
    assert res["stages"]["finetune_sweep"]["tasks"]["base"]["scratch"]["result"]["episodes"] == 2


def test_a_sweep_without_baselines_trains_no_scratch_and_reports_them_not_run(first_run, tmp_path):
    out, _, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    logs: list[str] = []
    res = run(tiny(copy, baselines=False), copy, ["finetune_sweep", "report"], logs.append)
    assert not any("scratch" in m or "reinit_head" in m or "agnostic" in m for m in logs), logs
    rows = res["stages"]["finetune_sweep"]["tasks"]
    assert all(
        r["scratch"] is None and r["reinit_head"] is None and r["agnostic_trunk"] is None
        for r in rows.values()
    )
    assert res["stages"]["finetune_sweep"]["agnostic_trunk"] is None
    assert all(r["tiers"] for r in rows.values())  # the tiers themselves still ran (cached)
    checks = acceptance(tables(load_stamps(copy)))
    scratch = next(c for c in checks if "scratch" in c["check"])
    assert scratch["passed"] is None and "not run" in scratch["detail"], scratch
    agnostic = next(c for c in checks if "task-agnostic" in c["check"])
    assert agnostic["passed"] is None and "not run" in agnostic["detail"], agnostic
    page = (copy / "report" / "paper_reproduction.md").read_text()
    assert "Scratch and the re-initialised head were not run" in page
    assert "The task-agnostic trunk was not run (study.baselines false" in page


def test_report_comes_from_the_stamps_only(first_run, tmp_path, monkeypatch):
    out, results, _ = first_run
    assert (out / "report" / "paper_reproduction.md").is_file()  # the run's own report stage

    def no_episodes(*args, **kwargs):
        raise AssertionError("the report must not run episodes")

    for module in (episodes, collect, evaluate, labels):
        monkeypatch.setattr(module, "run_jobs", no_episodes)
    target = tmp_path / "rendered"
    assert cli.cmd_report(argparse.Namespace(output=str(out), report_dir=str(target))) == 0
    text = (target / "paper_reproduction.md").read_text()
    for heading in (
        "## Acceptance checks",
        "## Table I",
        "## Table II",
        "## Table III",
        "## Wall-clock and hardware",
    ):
        assert heading in text
    assert "./nsl experiment run --output" in text and "--set 'tiers=[2, 4]'" in text
    # Table I: severity, saturated knobs, the solvability figures against base, pass/fail.
    assert (
        "| task | type | severity | saturated knobs | solvability (challenge vs base) | solvable |"
        in text
    )
    assert re.search(
        r"\| offset_gripper_10cm \| robot morphology \| 1(\.5)?[ |].*aware oracle", text
    )
    assert re.search(r"\| checkerboard \| background \| [13][ |].*pixel share .* probe ", text)
    assert "**Not a calibration: 3 calibration episodes per severity" in text
    assert "Severities tried in order" in text and "./nsl sim gallery" in text
    assert "--task-severity offset_gripper_10cm=" in text
    assert (
        "| gate: validation, step vs in force |" in text
    )  # the guarded chain shows its decisions
    for png in ("success_vs_grasps.png", "continual_vs_single.png"):
        assert (target / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((target / "summary.json").read_text())
    assert summary["acceptance"] == acceptance(tables(load_stamps(out)))
    assert [c["passed"] is not None for c in summary["acceptance"]] == [
        True
    ] * 6  # every stage ran
    assert "| agnostic trunk (4) |" in text and "Agnostic trunk (the paper's ImageNet" in text
    agnostic = next(c for c in summary["acceptance"] if "task-agnostic" in c["check"])
    assert re.match(r"[0-2] of 2 \(needs 2\): checkerboard ", agnostic["detail"]), agnostic
    for c in summary["acceptance"]:
        assert f"**{'PASS' if c['passed'] else 'FAIL'}**" in text
    cell = summary["table_ii"]["tasks"]["checkerboard"]["tiers"]["2"]
    assert cell["episodes"] == 3 and len(cell["ci95"]) == 2
    assert summary["table_i"]["checkerboard"]["base_policy"]["episodes"] == 3
    board = summary["table_i"]["checkerboard"]
    assert board["solvable"] is True and board["calibration_episodes"] == 3
    assert board["solvability"]["kind"] == "appearance" and board["solvability"]["scenes"] == 16
    assert {"pixel_share", "probe_error_px", "base_probe_error_px"} <= set(board["solvability"])
    offset = summary["table_i"]["offset_gripper_10cm"]["solvability"]
    assert offset["kind"] == "geometry" and {"aware_oracle", "base_oracle"} <= set(offset)
    assert [t["severity"] for t in board["trials"]][0] == 1.0
    # 3 calibration episodes are a smoke test: the challenge check fails, saying why.
    assert "fewer than 100 calibration episodes" in summary["acceptance"][1]["detail"]
    assert summary["acceptance"][1]["passed"] is False
    assert set(summary["stages"]) == {
        "pretrain",
        "evaluate_base",
        "calibrate",
        "collect_targets",
        "finetune_sweep",
        "continual",
    }
    assert summary["stages"]["finetune_sweep"]["hardware"]["cpus"] >= 1
    assert summary["warnings"] == []


def test_report_flags_stamps_from_different_runs(first_run):
    out, _, _ = first_run
    stamps = load_stamps(out)
    assert consistency_warnings(stamps) == []
    stamps["continual"]["base_checkpoint_id"] = "another"
    stamps["finetune_sweep"]["tasks"]["checkerboard"]["task"]["severity"] = 7.5
    warnings = consistency_warnings(stamps)
    assert any("different base checkpoints" in w for w in warnings)
    assert any("finetune_sweep used checkerboard at severity 7.5" in w for w in warnings)


def test_imported_base_and_online_rounds(first_run, tmp_path):
    """``base_checkpoint``: the study starts from a given checkpoint.

    (no pre-training) and mixes in the base control's grasps as base data. ``online_rounds``: the
    largest tier's grasps are spent in rounds that explore with the policy in force, gated on
    validation.
    """
    out, results, _ = first_run
    given = tmp_path / "given.safetensors"
    shutil.copyfile(out / "checkpoints" / "base.safetensors", given)
    given_id = load_checkpoint(given).checkpoint_id
    run_dir = tmp_path / "imported"
    logs: list[str] = []
    cfg = tiny(
        run_dir, base_checkpoint=str(given), online_rounds=2, challenges=("offset_gripper_10cm",)
    )
    res = run(
        cfg,
        run_dir,
        ["pretrain", "calibrate", "collect_targets", "online_finetune", "report"],
        logs.append,
    )["stages"]
    assert (
        res["pretrain"]["imported_from"] == str(given)
        and res["pretrain"]["checkpoint_id"] == given_id
    )
    assert load_checkpoint(run_dir / "checkpoints" / "base.safetensors").checkpoint_id == given_id
    assert not (run_dir / "datasets" / "base" / "bootstrap").exists()  # nothing pre-trained
    assert not any("pretrain_round" in m for m in logs)
    online = res["online_finetune"]
    assert online["grasps_per_round"] == 2 and list(online["tasks"]) == [
        "base",
        "offset_gripper_10cm",
    ]
    base_transitions = len(
        load_transitions(
            [str(b) for b in sorted((run_dir / "datasets" / "base" / "targets").glob("chunk_???"))]
        )
    )
    for name, row in online["tasks"].items():
        first, second = row["rounds"]
        # Round 1 is the base policy fine-tuned on its own first grasps: the sweep's tier-2 unit.
        assert first["checkpoint"] == f"checkpoints/sweep/{name}/tier_0002.safetensors"
        assert first["train"]["init"] == "base.safetensors" and first["explored_with"] == given_id
        assert (
            first["train"]["transitions"]["base"] == base_transitions
        )  # the base control's grasps
        in_force = first["checkpoint_id"] if first["accepted"] else given_id
        assert first["accepted"] == (
            first["validation"]["success_rate"] >= first["in_force_validation"]["success_rate"]
        )
        # Round 2 explores with the policy in force, then fine-tunes it on all 4 grasps.
        assert second["explored_with"] == in_force and second["collected"]["episodes"] == 2
        recorded = read_episodes(run_dir / "datasets" / name / "online_round_2")
        assert {e.checkpoint_id for e in recorded} == {in_force}
        assert second["train"]["target_episodes"] == 4
        assert second["train"]["init"] == (
            "tier_0002.safetensors" if first["accepted"] else "base.safetensors"
        )
        assert (
            second["validation"]["seed_set"] == "validation"
            and second["validation"]["episodes"] == 2
        )
        final = second["checkpoint_id"] if second["accepted"] else in_force
        assert row["checkpoint_id"] == final == row["result"]["checkpoint_id"]
        assert row["result"]["seed_set"] == "evaluation" and row["result"]["episodes"] == 3
    assert any(
        re.search(r"online/offset_gripper_10cm/round_2: 4 grasps, validation", m) for m in logs
    ), logs
    # Cached: a second run trains and collects nothing.
    logs.clear()
    again = run(cfg, run_dir, ["pretrain", "online_finetune"], logs.append)["stages"]
    assert not any(re.search(r"collecting|training", m) for m in logs), logs
    assert again["online_finetune"]["tasks"] == online["tasks"]
    # The report shows the online column only when finetune_sweep ran as well.
    run(cfg, run_dir, ["finetune_sweep", "report"], lambda m: None)
    text = (run_dir / "report" / "paper_reproduction.md").read_text()
    assert (
        "| online (4) |" in text and "Online (4): the same 4 grasps spent in 2 rounds of 2" in text
    )
    assert f"The base policy `{given_id}` was imported from `{given}`" in text
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    assert (
        summary["table_ii"]["tasks"]["offset_gripper_10cm"]["online"]["result"]["checkpoint_id"]
        == online["tasks"]["offset_gripper_10cm"]["checkpoint_id"]
    )
    assert summary["warnings"] == []
    # gate_episodes: the gates measure on their own seed block; the fine-tunes stay cached.
    gated = run(
        tiny(
            run_dir,
            base_checkpoint=str(given),
            online_rounds=2,
            challenges=("offset_gripper_10cm",),
            gate_episodes=3,
        ),
        run_dir,
        ["online_finetune"],
        lambda m: None,
    )["stages"]["online_finetune"]
    for row in gated["tasks"].values():
        for r in row["rounds"]:
            for measured in (r["validation"], r["in_force_validation"]):
                assert measured["seed_set"] == "gate" and measured["episodes"] == 3
                assert measured["first_seed"] == GATE_SEEDS
    first_rounds = {n: r["rounds"][0]["checkpoint_id"] for n, r in online["tasks"].items()}
    assert {n: r["rounds"][0]["checkpoint_id"] for n, r in gated["tasks"].items()} == first_rounds
    # A run folder keeps its base policy: importing another one into it is refused, nothing
    # overwritten.
    other = run_dir / "checkpoints" / "sweep" / "base" / "tier_0004.safetensors"
    with pytest.raises(ValueError, match=f"already has the base policy {given_id}"):
        run(tiny(run_dir, base_checkpoint=str(other)), run_dir, ["pretrain"], lambda m: None)
    assert load_checkpoint(run_dir / "checkpoints" / "base.safetensors").checkpoint_id == given_id
    # The pipeline's checkpoints record the camera they were trained with; a base checkpoint
    # trained at another framing is refused (one without the record is from the 38 degree days).
    assert load_checkpoint(other).metadata["sim"]["camera_fov"] == 38.0
    with pytest.raises(ValueError, match="trained on images of a 38 degree camera.*renders 24"):
        run(
            tiny(tmp_path / "fov", base_checkpoint=str(given), camera_fov=24),
            tmp_path / "fov",
            ["pretrain"],
            lambda m: None,
        )
    with pytest.raises(Exception, match="does not exist"):
        run(
            tiny(tmp_path / "missing", base_checkpoint=str(tmp_path / "nope.safetensors")),
            tmp_path / "missing",
            ["pretrain"],
            lambda m: None,
        )
